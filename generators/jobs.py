"""Resumable, idempotent generation jobs.

A job is one stage over one scope (a subtree path) with its parameters; its id is a hash of
those, so running the same command again finds the same job. The job is split into units
with deterministic ids. Finished units are written in small groups: their outputs, their own
states and the job's counters in one transaction, so a process killed at any point leaves
either all of a unit or none of it, and the next run does exactly the units not yet done
(a kill loses at most the group still waiting to be written, whose units run again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from graph.driver import Tx, calls_ahead
from graph.errors import GlanError, WrongKind
from graph.model import JOB, UNIT, NodeKind, node_id
from graph.records import Node, now_iso
from graph.store import Store

from . import validators
from .llm import ChatRequest, LLMClient, LLMError, Reply, StageParams, Usage

if TYPE_CHECKING:
    from .cost import CapGuard, CostCap

#: How often the job node's counters are written while units finish (each unit's own state
#: is written with its output, always).
JOB_SAVE_EVERY_S = 0.5
#: Finished units wait at most this long to be written, and are written at once when this
#: many are waiting: one transaction per group instead of one per unit.
WRITE_AFTER_S = 0.1
WRITE_GROUP = 64
#: Workers go on asking while a group is written (one writer writes them all), unless this
#: many finished units are waiting: then writes are behind and the workers wait for them.
WRITE_BACKLOG = 4 * WRITE_GROUP
#: Units whose inputs are read from the store together, ahead of the workers that ask them.
PREPARE_CHUNK = 512


class JobStatus:
    RUNNING = "running"
    COMPLETED = "completed"
    COMPLETED_WITH_FAILURES = "completed_with_failures"
    CANCELLED = "cancelled"
    #: stopped by its process stopping (a server shut down), not by anyone asking: a server
    #: resumes these when it starts again, like those it was running when it was killed
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    #: stopped before its cost cap (--max-cost) would be passed: what is done stays done, and
    #: running it again with a higher cap goes on
    COST_CAPPED = "cost_capped"
    #: ended with units still pending that no run is asking: its batches ended with requests
    #: the API did not answer (error-file lines, the unfinished part of an expired or
    #: cancelled batch), or its requests were exported for an offline runner. Running it
    #: again submits them again; a server does not resume it by itself
    INCOMPLETE = "incomplete"


class StopRequest(asyncio.Event):
    """Asks a running job to stop after its units in flight, and says what it is stored as
    then: cancelled (someone asked) or interrupted (its process is stopping). A plain
    asyncio.Event does the same and stores the job as cancelled."""

    def __init__(self, status: str = JobStatus.CANCELLED) -> None:
        super().__init__()
        self.status = status

    def request(self, status: str) -> None:
        self.status = status
        self.set()


class UnitStatus:
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


@dataclass
class UnitSpec:
    id: str
    target_id: str
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """What one unit's model calls gave: a value to write, or an error with the raw text."""

    value: Any = None
    raw: str = ""
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    #: why the model stopped ("length": cut off at max_tokens), where the endpoint said
    finish_reason: str | None = None
    #: what the validators left out of the value, each as "rejected by <rule>: ..."
    dropped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Progress:
    job_id: str
    stage: str
    scope: str
    status: str
    total: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0  # done by an earlier run
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    #: of the units failed in this run, those that kept the model's raw text (the rest got
    #: no answer at all), and the error of one of them: what a run's summary reports
    failed_raw: int = 0
    first_error: str | None = None
    #: the model its units ask (what its tokens are priced at), and the cost cap in US
    #: dollars this run keeps, if any: stored with the job, so a resumed job keeps its cap
    model: str | None = None
    max_cost: float | None = None

    @property
    def finished(self) -> int:
        return self.done + self.failed

    def as_row(self, params: str) -> dict[str, Any]:
        return {
            "id": self.job_id,
            "kind": self.stage,
            "scope": self.scope,
            "params": params,
            "status": self.status,
            "total": self.total,
            "done": self.done,
            "failed": self.failed,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "error": self.error,
            "updated_at": now_iso(),
            "model": self.model,
            # 0 for none: the embedded engine takes no null into a number in a batch update
            "max_cost": self.max_cost or 0.0,
        }


ProgressCallback = Callable[[Progress], None]


class Stage(ABC):
    """One GLAN stage: how to split a scope into units, run one, and store its output."""

    name: ClassVar[str]
    #: the kinds of node this stage may run under (None, the whole store, always may)
    scope_kinds: ClassVar[tuple[NodeKind, ...]]
    #: whether its units need the outputs of others of its units (a conversation's next turn
    #: needs the one before answered): its plan holds what can be asked now, and a run plans
    #: again after each round of units until a round plans nothing new
    chained: ClassVar[bool] = False

    def __init__(
        self, store: Store, llm: LLMClient, params: StageParams, options: Mapping[str, Any]
    ) -> None:
        self.store = store
        self.llm = llm
        self.params = params
        self.options = dict(options)
        self.job_id = ""

    def check_scope(self, scope: Node | None) -> None:
        """Refuse a scope this stage cannot run under, before any job is stored or started."""
        if scope is not None and scope.kind not in self.scope_kinds:
            wanted = ", ".join(k.label for k in self.scope_kinds)
            raise WrongKind(
                f"{scope.path!r} is a {scope.kind.label}; {self.name} generation runs under "
                f"the whole store or a {wanted}"
            )

    def job_key(self) -> dict[str, Any]:
        """The parameters that identify a job of this stage (besides stage and scope)."""
        return dict(self.options)

    @abstractmethod
    def plan(self, scope: Node | None) -> list[UnitSpec]:
        """The units of this job. Must give the same units when run again."""

    def prepare(self, units: Sequence[UnitSpec]) -> None:
        """Read what these units' requests need from the store, in bulk, before any of them
        is built. Called off the event loop, a chunk of units at a time. By default
        nothing: `request` then reads what it needs itself."""
        return None

    @abstractmethod
    def request(self, unit: UnitSpec) -> ChatRequest | Outcome:
        """The unit's chat request, exactly as any executor sends it, built from what
        `prepare` read; an Outcome with the error when the unit cannot be asked."""

    def accept(self, unit: UnitSpec, request: ChatRequest, reply: Reply) -> Outcome:
        """A response to the unit's request, validated: the value to write, or the reason it
        cannot be used, with the raw text kept either way. Every executor ends here."""
        value, error = request.parse(reply.text)
        value, error, dropped = self.check(unit, request, reply, value, error)
        value = value if error is None else None
        return Outcome(value, reply.text, error, reply.usage, reply.finish_reason, dropped)

    def check(
        self,
        unit: UnitSpec,
        request: ChatRequest,
        reply: Reply,
        value: Any,
        error: str | None,
    ) -> tuple[Any, str | None, list[str]]:
        """A parsed reply (`value`, or None with its parse `error`) as the validators leave
        it (generators/validators.py), over the texts the stage lists (`texts`): the value
        to write, or why the reply cannot be used; and the items they left out of it, each
        as "rejected by <rule>: ..."."""
        texts = self.texts(unit, value) if error is None and value is not None else []
        verdict = validators.check(
            value,
            texts,
            prompt=validators.prompt_text(request.messages),
            finish_reason=reply.finish_reason,
            free_text=request.free_text,
            parse_error=error,
        )
        return verdict.value, verdict.error, verdict.dropped

    def texts(self, unit: UnitSpec, value: Any) -> list[validators.Text]:
        """The texts of a parsed reply the validators check, each with its kind, the name
        it sits under and the group its name must be unique in (none by default: a reply
        is then checked as a whole only, cut off or not)."""
        return []

    async def execute(self, unit: UnitSpec) -> Outcome:
        """The live executor's unit: send the request, accept the reply; a JSON answer that
        cannot be used is asked for once more, showing the model its mistake. Never writes
        to the store."""
        request = self.request(unit)
        if isinstance(request, Outcome):
            return request
        usage = Usage()
        for attempt in (1, 2):
            reply = await self.llm.send(request)
            usage = usage + reply.usage
            outcome = self.accept(unit, request, reply)
            if outcome.ok or request.free_text or attempt == 2:
                break
            request = request.corrected(reply.text, outcome.error or "")
        outcome.usage = usage
        return outcome

    @abstractmethod
    def write(self, unit: UnitSpec, outcome: Outcome, tx: Tx) -> None:
        """Store a successful unit's output (inside the unit's transaction)."""

    def write_many(self, done: Sequence[tuple[UnitSpec, Outcome]], tx: Tx) -> None:
        """Store the outputs of several successful units in one transaction. Stages whose
        outputs batch well write them in a few statements; by default, one unit at a time."""
        for unit, outcome in done:
            self.write(unit, outcome, tx)

    def provenance(self, unit: UnitSpec, prompt_name: str, prompt_version: str) -> dict[str, Any]:
        return {
            "model": self.params.model,
            "prompt_name": prompt_name,
            "prompt_version": prompt_version,
            "job_id": self.job_id,
            "unit_id": unit.id,
        }


@dataclass
class PreparedJob:
    """A job ready to run, whatever executor runs it: its state, stored key, units left and
    tokens spent so far, or the error its planning met (stored on the job as its failure)."""

    state: Progress
    params: str
    todo: list[UnitSpec]
    spent: dict[str, Usage]
    error: GlanError | None = None


def job_id_for(stage: str, scope_path: str, key: Mapping[str, Any]) -> str:
    return node_id(JOB, stage, scope_path.casefold(), json.dumps(key, sort_keys=True))


class JobRunner:
    """Runs a stage's units with bounded concurrency and stores progress as it goes."""

    def __init__(self, store: Store, *, concurrency: int = 8) -> None:
        self.store = store
        self.concurrency = max(1, concurrency)
        self._last_job_save = 0.0
        self._writing = threading.RLock()

    async def run(
        self,
        stage: Stage,
        scope_path: str | None,
        *,
        progress: ProgressCallback | None = None,
        cancel: asyncio.Event | None = None,
        cost_cap: CostCap | None = None,
    ) -> Progress:
        """Run the job's units and store its end. A chained stage runs in rounds, each on
        what the rounds before it wrote (see Stage.chained), until a round plans nothing
        new, and ends once, after its last round."""
        if cost_cap is not None:  # a model with no price cannot be capped: refused first
            cost_cap.check_model(stage.params.model)
        asked: set[str] = set()  # the units this run's rounds have asked
        earlier: Progress | None = None
        # its reads go ahead of a server's requests waiting for a connection (calls_ahead)
        with calls_ahead():
            while True:
                state, params, stopped, ran = await self._round(
                    stage, scope_path, asked, earlier, progress, cancel, cost_cap
                )
                if stopped is not None or not stage.chained or not ran:
                    break
                earlier = state
            # stored off the event loop, which a server shares with its requests
            await asyncio.to_thread(self.finish, state, params, stopped)
        if progress:
            progress(state)
        return state

    async def _round(
        self,
        stage: Stage,
        scope_path: str | None,
        asked: set[str],
        earlier: Progress | None,
        progress: ProgressCallback | None,
        cancel: asyncio.Event | None,
        cost_cap: CostCap | None,
    ) -> tuple[Progress, str, str | None, bool]:
        """Plan the job and run what is left of it: its state, its stored key, how it
        stopped early (None: it did not) and whether it asked any unit. A later round of a
        chained stage asks only units no round of this run asked: one that failed in this
        run stays failed until the next run."""
        # planning reads (a question job's draws read every syllabus of its scope) and the
        # plan's write run off the event loop, which a server shares with its requests
        prepared = await asyncio.to_thread(self.prepare_job, stage, scope_path)
        state, params, todo, spent = prepared.state, prepared.params, prepared.todo, prepared.spent
        if earlier is not None:
            todo = [u for u in todo if u.id not in asked]
            state.skipped, state.failed = earlier.skipped, earlier.failed
            state.failed_raw, state.first_error = earlier.failed_raw, earlier.first_error
        asked.update(u.id for u in todo)
        if progress:
            progress(state)
        if prepared.error is not None:
            raise prepared.error
        if todo and earlier is None:  # what its tokens are priced at, what a server resumes
            await asyncio.to_thread(self.store.jobs.save, {"id": state.job_id, "executor": "live"})
        guard: CapGuard | None = None
        if cost_cap is not None:
            guard = await asyncio.to_thread(cost_cap.guard, self.store, stage, todo)
            state.max_cost = cost_cap.limit_usd
            await asyncio.to_thread(
                self.store.jobs.save, {"id": state.job_id, "max_cost": state.max_cost}
            )
        in_flight = 0  # units started and not finished: what a cost cap counts ahead

        # Units are read for (`Stage.prepare`, off the loop) a chunk at a time as the
        # workers need them: a million-unit job never holds all its inputs at once.
        queue: asyncio.Queue[UnitSpec | None] = asyncio.Queue()
        wanted = asyncio.Event()  # the queue ran low: read the next chunk
        n_workers = min(self.concurrency, len(todo))
        fed: list[BaseException] = []  # what stopped the feeder, if anything did
        waiting: list[tuple[UnitSpec, Outcome]] = []  # finished, not yet written
        full = asyncio.Event()  # a group is waiting (or the workers ended): write it now
        taken = asyncio.Event()  # the writer took what was waiting: room for more

        async def feed() -> None:
            try:
                for start in range(0, len(todo), PREPARE_CHUNK):
                    while queue.qsize() > PREPARE_CHUNK // 2:
                        wanted.clear()
                        await wanted.wait()
                    if cancel is not None and cancel.is_set():
                        return
                    chunk = todo[start : start + PREPARE_CHUNK]
                    await asyncio.to_thread(stage.prepare, chunk)
                    for u in chunk:
                        queue.put_nowait(u)
            except Exception as exc:
                fed.append(exc)
            finally:
                for _ in range(n_workers):
                    queue.put_nowait(None)

        async def write_waiting() -> None:
            group = waiting[:]
            waiting.clear()  # a group that fails to write is not tried again: it runs again
            taken.set()
            if group:
                await asyncio.to_thread(self.write_group, stage, group, state, params)
                if progress:
                    progress(state)

        async def worker() -> None:
            nonlocal in_flight
            while True:
                if cancel is not None and cancel.is_set():
                    return
                unit = await queue.get()
                if queue.qsize() <= PREPARE_CHUNK // 2:
                    wanted.set()
                if unit is None:
                    return
                if guard is not None and not guard.allows(state, in_flight):
                    return  # the unit stays pending: a run with a higher cap asks it
                in_flight += 1
                try:
                    outcome = await stage.execute(unit)
                except LLMError as exc:
                    outcome = Outcome(error=str(exc), raw=getattr(exc, "raw", "") or "")
                finally:
                    in_flight -= 1
                # the unit keeps the tokens of all its attempts, by earlier runs too, so a
                # job's tokens are always the sum of its units'
                state.prompt_tokens += outcome.usage.prompt_tokens
                state.completion_tokens += outcome.usage.completion_tokens
                if guard is not None:
                    guard.record(outcome.usage)
                outcome.usage = spent.get(unit.id, Usage()) + outcome.usage
                waiting.append((unit, outcome))
                if len(waiting) >= WRITE_GROUP:
                    full.set()  # the writer writes it; this worker asks its next unit
                while len(waiting) >= WRITE_BACKLOG:  # writes fall behind: wait for them
                    taken.clear()
                    await taken.wait()

        feeder = asyncio.create_task(feed())
        workers = [asyncio.create_task(worker()) for _ in range(n_workers)]
        for w in workers:
            w.add_done_callback(lambda _: full.set())

        async def writer() -> None:
            """The one writer of the run's groups: a group as soon as one is full, what
            is waiting at least every WRITE_AFTER_S, the rest when the workers end."""
            while not all(w.done() for w in workers):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(full.wait(), WRITE_AFTER_S)
                full.clear()
                await write_waiting()

        tasks = [*workers, asyncio.create_task(writer())]

        def stopped() -> str:  # read when the job stops: a request may change it until then
            return cancel.status if isinstance(cancel, StopRequest) else JobStatus.CANCELLED

        try:
            await asyncio.gather(*tasks)
            await write_waiting()
            if fed:
                raise fed[0]
        except BaseException as exc:
            for t in [*tasks, feeder]:
                t.cancel()
            # what the model already answered is kept if it can be (here, on this thread: the
            # loop may be stopping; a group still being written in a worker thread is waited
            # for); if not, the error that stopped the job is still the one reported
            with contextlib.suppress(Exception):
                group = waiting[:]
                waiting.clear()
                if group:
                    self.write_group(stage, group, state, params)
            stopping = isinstance(exc, asyncio.CancelledError | KeyboardInterrupt)
            state.status = stopped() if stopping else JobStatus.FAILED
            state.error = None if stopping else repr(exc)
            self.store.jobs.save(state.as_row(params))
            raise
        finally:
            feeder.cancel()  # stopped early, it may still wait for the queue to run low
        stopped_early = cancel is not None and cancel.is_set() and state.finished < state.total
        if not stopped_early and guard is not None and guard.reached:
            state.error = guard.message(state)
            return state, params, JobStatus.COST_CAPPED, bool(todo)
        return state, params, stopped() if stopped_early else None, bool(todo)

    def finish(
        self,
        state: Progress,
        params: str,
        stopped: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> Progress:
        """Store a job's end: `stopped` (cancelled, interrupted) when it stopped before all
        its units finished, else completed, with failures or without."""
        if stopped is not None:
            state.status = stopped
        elif state.failed:
            state.status = JobStatus.COMPLETED_WITH_FAILURES
        else:
            state.status = JobStatus.COMPLETED
        self.store.jobs.save(state.as_row(params))
        if progress:
            progress(state)
        return state

    def prepare_job(self, stage: Stage, scope_path: str | None) -> PreparedJob:
        """The job's row, its plan and what is left of it, stored before any unit runs.
        Executors other than the live one start here too, and end in `write_group`."""
        scope = self.store.taxonomy.scope(scope_path)
        stage.check_scope(scope)
        scope_text = scope.path or "" if scope else ""
        key = stage.job_key()
        params = json.dumps(key, sort_keys=True)
        stage.job_id = job_id_for(stage.name, scope_text, key)
        state = Progress(
            stage.job_id, stage.name, scope_text, JobStatus.RUNNING, model=stage.params.model
        )
        if self.store.jobs.get(stage.job_id) is None:
            self.store.jobs.save({**state.as_row(params), "created_at": now_iso()})
        # Tokens are counted from the units, which store theirs with their output: the job's
        # own counters are saved only now and then, so after a crash they lag behind.
        spent = {
            u["id"]: Usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
            for u in self.store.jobs.units(stage.job_id)
        }
        state.prompt_tokens = sum(u.prompt_tokens for u in spent.values())
        state.completion_tokens = sum(u.completion_tokens for u in spent.values())
        try:
            units = stage.plan(scope)
        except GlanError as exc:  # stored as failed, so the job does not look alive forever
            state.status, state.error = JobStatus.FAILED, str(exc)
            self.store.jobs.save(state.as_row(params))
            return PreparedJob(state, params, [], spent, exc)
        statuses = self.store.jobs.unit_statuses([u.id for u in units])
        todo = [u for u in units if statuses.get(u.id) != UnitStatus.DONE]
        state.total = len(units)
        state.skipped = state.done = len(units) - len(todo)
        # The plan is stored whole or not at all: a re-run reads it back instead of drawing
        # a new sample.
        with self.store.driver.transaction() as tx:
            new = [u for u in units if u.id not in statuses]
            rows = [self._unit_row(stage, u, UnitStatus.PENDING) for u in new]
            self.store.jobs.save_units(rows, update_existing=False, tx=tx)
            self.store.jobs.save(state.as_row(params), tx=tx)
        return PreparedJob(state, params, todo, spent)

    def write_group(
        self,
        stage: Stage,
        group: Sequence[tuple[UnitSpec, Outcome]],
        state: Progress,
        params: str,
    ) -> None:
        """Write finished units' outputs, their states and the job's counters in one
        transaction, one group at a time (groups come from worker threads). A group the
        store refuses (e.g. an empty name in one output) is written again a unit at a time,
        so only the unit at fault fails."""
        with self._writing:
            self._write_group_now(stage, group, state, params)

    def _write_group_now(
        self,
        stage: Stage,
        group: Sequence[tuple[UnitSpec, Outcome]],
        state: Progress,
        params: str,
    ) -> None:
        counted = [(unit, outcome, _status(outcome)) for unit, outcome in group]
        for _, outcome, status in counted:
            self._count(state, status, +1, outcome)
        try:
            with self.store.driver.transaction() as tx:
                stage.write_many([(u, o) for u, o, _ in counted if o.ok], tx)
                self._save_units(stage, counted, state, params, tx)
        except GlanError as exc:
            for _, outcome, status in counted:
                self._count(state, status, -1, outcome)
            if len(group) > 1:
                for one in group:
                    self._write_group_now(stage, [one], state, params)
                return
            unit, outcome = group[0]
            outcome.error = f"could not store the output: {exc}"
            self._count(state, UnitStatus.FAILED, +1, outcome)
            with self.store.driver.transaction() as tx:
                self._save_units(stage, [(unit, outcome, UnitStatus.FAILED)], state, params, tx)

    def _save_units(
        self,
        stage: Stage,
        counted: Sequence[tuple[UnitSpec, Outcome, str]],
        state: Progress,
        params: str,
        tx: Tx,
    ) -> None:
        """The units' new states (their nodes exist since planning) and, at most every
        JOB_SAVE_EVERY_S, the job's counters: a re-run recounts them from the units."""
        rows = [self._unit_row(stage, u, status, o) for u, o, status in counted]
        self.store.nodes.update_existing(UNIT, rows, tx=tx)
        now = time.monotonic()
        if now - self._last_job_save >= JOB_SAVE_EVERY_S:
            self.store.nodes.update_existing(JOB, [state.as_row(params)], tx=tx)
            self._last_job_save = now

    @staticmethod
    def _count(state: Progress, status: str, by: int, outcome: Outcome) -> None:
        if status == UnitStatus.DONE:
            state.done += by
            return
        state.failed += by
        state.failed_raw += by if outcome.raw else 0
        if by > 0 and state.first_error is None:
            state.first_error = outcome.error

    @staticmethod
    def _unit_row(
        stage: Stage, unit: UnitSpec, status: str, outcome: Outcome | None = None
    ) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": unit.id,
            "job_id": stage.job_id,
            "stage": stage.name,
            "target_id": unit.target_id,
            "status": status,
            "payload": json.dumps(unit.payload, sort_keys=True),
            "updated_at": now_iso(),
        }
        if outcome is not None:
            row.update(
                error=outcome.error,
                dropped="\n".join(outcome.dropped) or None,
                raw=outcome.raw or None,
                prompt_tokens=outcome.usage.prompt_tokens,
                completion_tokens=outcome.usage.completion_tokens,
            )
        return row


def _status(outcome: Outcome) -> str:
    return UnitStatus.DONE if outcome.ok else UnitStatus.FAILED


def unit_id(stage: str, *parts: str) -> str:
    return node_id(UNIT, stage, *parts)
