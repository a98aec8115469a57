"""Jobs running inside a long-lived process (the server): start, watch, cancel, resume.

One job per stage and scope at a time: a second request for a stage on a scope that
overlaps a running one (the same subtree, or one inside the other) is refused, so two
jobs never generate the same unit at once.

Jobs survive the server: one it stops when it shuts down is stored as interrupted, and one
it was running when it was killed is still stored as running. When it starts again it
resumes both (resume_interrupted), with their counters recounted from their units first;
a job cancelled through `cancel` stays cancelled.

Jobs run on an event loop of their own, in a thread of their own (`JobLoop`), with the
model client they call through: a server busy answering hundreds of requests on its own
loop still gives its jobs their turn, rather than queueing each of their steps behind
every request. Progress comes back to the server's loop, where watchers follow it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

from graph.driver import calls_ahead
from graph.errors import GlanError
from graph.model import name_key, split_path
from graph.records import now_iso
from graph.store import Store

from .cost import CostCap, PriceTable, load_prices
from .jobs import (
    JobRunner,
    JobStatus,
    Progress,
    Stage,
    StopRequest,
    UnitStatus,
    job_id_for,
)
from .llm import LLMClient, StageParams
from .pipeline import PipelineOptions
from .stages import STAGES

#: one line per job resumed (or not) when the server starts, as warnings: shown by a server
#: whose logging is not set up (uvicorn sets up only its own)
log = logging.getLogger("glan.jobs")

#: stored states of a job that no one stopped on purpose: what a starting server resumes
RESUMABLE = (JobStatus.RUNNING, JobStatus.INTERRUPTED)
#: why a job is stored as interrupted when the server starts with resuming off
NOT_RESUMED = (
    "the server stopped while this job ran and does not resume jobs (GLAN_RESUME_JOBS is "
    "off): start the same job again, or start the server with resuming on, to resume it"
)


class JobConflict(GlanError):
    def __init__(self, job_id: str, stage: str, scope: str) -> None:
        self.job_id = job_id
        super().__init__(
            f"a {stage} job ({job_id}) is already running on {scope or 'the whole store'}, "
            "which overlaps this scope; wait for it or cancel it"
        )


class JobNotFound(GlanError):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job {job_id!r} (see the jobs query)")


class CannotResume(GlanError):
    """A stored job that cannot be started again as it was (its stage or options)."""


#: finished jobs whose last state a manager keeps (see JobManager.finished)
KEEP_FINISHED = 256


def _overlaps(a: str, b: str) -> bool:
    """Whether two scope paths share nodes: equal, or one is inside the other."""
    pa = [name_key(x) for x in split_path(a)] if a else []
    pb = [name_key(x) for x in split_path(b)] if b else []
    n = min(len(pa), len(pb))
    return pa[:n] == pb[:n]


class JobLoop:
    """An event loop in a thread of its own, for jobs: their model calls and waits never
    queue behind a busy server's requests (each store call of theirs goes to a worker
    thread as it does in the CLI)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="glan-jobs", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, work: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(work, self.loop)

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self.loop.is_running():
            self.loop.close()


@dataclass
class _Running:
    stage: str
    scope: str
    task: asyncio.Future[Progress]
    cancel: StopRequest
    latest: Progress
    watchers: list[asyncio.Queue[Progress]] = field(default_factory=list)


class JobManager:
    def __init__(
        self,
        store: Store,
        llm: LLMClient,
        params_for: Callable[[str], StageParams],
        *,
        concurrency: int = 8,
        prices: Callable[[], PriceTable] | None = None,
        batch_poll_s: float = 30.0,
    ) -> None:
        self.store = store
        self.llm = llm
        self.params_for = params_for
        #: what models cost, read when a job with a cost cap is resumed (None: the shipped
        #: table)
        self.prices = prices or load_prices
        #: seconds between polls of a batch job's running batches (GLAN_BATCH_POLL_S)
        self.batch_poll_s = batch_poll_s
        self.runner = JobRunner(store, concurrency=concurrency)
        self.running: dict[str, _Running] = {}
        #: the last state of jobs this process ran, newest last (at most KEEP_FINISHED): it
        #: has what only a run knows (units an earlier run had done, failures that kept the
        #: model's text, the first error), for a watcher that comes after the job ended
        self.finished: dict[str, Progress] = {}
        self._resuming: set[asyncio.Task[None]] = set()  # resume_interrupted's tasks
        #: where jobs run; made with the first job (the server's loop is running by then)
        self._jobs: JobLoop | None = None

    async def start(
        self,
        stage_name: str,
        path: str | None,
        options: PipelineOptions,
        *,
        cost_cap: CostCap | None = None,
        batch: bool = False,
    ) -> Progress:
        """Start a job in the background and return its first state at once; with a cost
        cap, one whose model has no price is refused. With `batch`, its requests go through
        the endpoint's Batch API (generators/batch.py), followed here until the batches end."""

        def prepare() -> tuple[Stage, str, str]:
            # the scope is read off the event loop, which the server's requests share, and
            # ahead of their reads waiting for a connection (calls_ahead)
            with calls_ahead():
                return self._prepare(stage_name, path, options)

        # on the jobs' own threads: the server's pool may be queued with a crowd's reads
        on_jobs_loop = self._job_loop().submit(asyncio.to_thread(prepare))
        stage, scope_text, job_id = await asyncio.wrap_future(on_jobs_loop)
        if cost_cap is not None:
            cost_cap.check_model(stage.params.model)
        other = self._overlapping(stage_name, scope_text)
        if other is not None:
            raise JobConflict(other, stage_name, self.running[other].scope)
        first = Progress(job_id, stage_name, scope_text, JobStatus.RUNNING)
        return self._launch(stage, path, first, cost_cap, batch=batch)

    def _prepare(
        self, stage_name: str, path: str | None, options: PipelineOptions
    ) -> tuple[Stage, str, str]:
        """The stage to run, the scope's path and the job's id; refuses unknown, unapproved
        and wrong-kind scopes."""
        scope = self.store.taxonomy.scope(path)  # refuses unknown and unapproved paths
        scope_text = scope.path or "" if scope else ""
        stage = STAGES[stage_name](
            self.store, self.llm, self.params_for(stage_name), options.for_stage(stage_name)
        )
        stage.check_scope(scope)
        return stage, scope_text, job_id_for(stage_name, scope_text, stage.job_key())

    def _overlapping(self, stage_name: str, scope_text: str) -> str | None:
        """The running job of this stage whose scope overlaps this one, if any."""
        for other_id, other in self.running.items():
            if other.stage == stage_name and _overlaps(other.scope, scope_text):
                return other_id
        return None

    def _job_loop(self) -> JobLoop:
        if self._jobs is None:
            self._jobs = JobLoop()
        return self._jobs

    def _launch(
        self,
        stage: Stage,
        path: str | None,
        first: Progress,
        cost_cap: CostCap | None = None,
        *,
        batch: bool = False,
    ) -> Progress:
        job_id = first.job_id
        # stopped from outside (the server shutting down) unless cancel() says otherwise
        cancel = StopRequest(JobStatus.INTERRUPTED)
        entry: _Running
        here = asyncio.get_running_loop()

        def show(snapshot: Progress) -> None:  # on the server's loop
            if entry.task.done():
                return  # the end is told by _finished
            entry.latest = snapshot
            for q in entry.watchers:
                q.put_nowait(snapshot)

        def progress(state: Progress) -> None:  # on the jobs' loop
            here.call_soon_threadsafe(show, replace(state))

        run = (
            self._in_batches(stage, path, progress, cancel, cost_cap)
            if batch
            else self.runner.run(stage, path, progress=progress, cancel=cancel, cost_cap=cost_cap)
        )
        task = asyncio.wrap_future(self._job_loop().submit(run), loop=here)
        entry = _Running(stage.name, first.scope, task, cancel, first)
        self.running[job_id] = entry
        task.add_done_callback(lambda t: self._finished(job_id, t))
        return first

    async def _in_batches(
        self,
        stage: Stage,
        path: str | None,
        progress: Callable[[Progress], None],
        cancel: StopRequest,
        cost_cap: CostCap | None,
    ) -> Progress:
        """A job run by the batch executor, on the jobs' loop: submitted (or resumed) and
        followed until its batches end. Cancelled, it cancels them at the API; stopped by
        the server stopping, it leaves them running for the next start to follow."""
        from .batch import BatchAPI, BatchExecutor

        api = BatchAPI(self.llm.config)
        try:
            executor = BatchExecutor(self.store, api, runner=self.runner, poll_s=self.batch_poll_s)
            return await executor.run(
                stage, path, progress=progress, cancel=cancel, cost_cap=cost_cap
            )
        finally:
            await api.aclose()

    def _finished(self, job_id: str, task: asyncio.Future[Progress]) -> None:
        entry = self.running.pop(job_id, None)
        if entry is None:
            return
        error = None if task.cancelled() else task.exception()
        if not task.cancelled() and error is None:
            entry.latest = replace(task.result())
        elif entry.latest.status == JobStatus.RUNNING:
            entry.latest = replace(
                entry.latest, status=JobStatus.FAILED, error=str(error) if error else None
            )
        self.finished.pop(job_id, None)
        self.finished[job_id] = entry.latest
        while len(self.finished) > KEEP_FINISHED:
            self.finished.pop(next(iter(self.finished)))
        for q in entry.watchers:
            q.put_nowait(entry.latest)

    def cancel(self, job_id: str) -> Progress:
        """Stop a job for good: a running one after its units in flight, and one waiting to
        be resumed (interrupted, or left running by a server that was killed) at once. Either
        is stored as cancelled, which a starting server does not resume."""
        entry = self.running.get(job_id)
        if entry is None:
            stored = self.store.jobs.get(job_id)
            if stored is None:
                raise JobNotFound(job_id)
            if stored.get("status") in RESUMABLE:
                change = {"id": job_id, "status": JobStatus.CANCELLED, "updated_at": now_iso()}
                self.store.jobs.save(change)
                stored = {**stored, **change}
            return _from_row(stored)
        self._stop(entry, JobStatus.CANCELLED)
        return entry.latest

    def _stop(self, entry: _Running, status: str) -> None:
        """Ask a running job to stop, on the loop it runs on."""
        entry.cancel.status = status  # seen at once here; the request reaches the job next
        if self._jobs is not None:
            self._jobs.call(entry.cancel.request, status)

    def state(self, job_id: str) -> Progress | None:
        entry = self.running.get(job_id)
        if entry is not None:
            return entry.latest
        stored = self.store.jobs.get(job_id)
        return _from_row(stored) if stored else None

    async def watch(self, job_id: str) -> AsyncIterator[Progress]:
        """The job's state now, then every change until it ends."""
        entry = self.running.get(job_id)
        if entry is None:
            state = self.state(job_id)
            if state is None:
                raise JobNotFound(job_id)
            yield self._as_run(state)
            return
        queue: asyncio.Queue[Progress] = asyncio.Queue()
        entry.watchers.append(queue)
        try:
            yield entry.latest
            while True:
                state = await queue.get()
                yield state
                if state.status != JobStatus.RUNNING:
                    return
        finally:
            entry.watchers.remove(queue)

    def resume_interrupted(self, *, resume: bool = True) -> asyncio.Task[None]:
        """Resume, in the background, the jobs the server was running when it stopped: those
        stored as interrupted (a clean stop) or still as running while none runs here (a
        kill). Without `resume`, those left running are stored as interrupted, with why."""
        task = asyncio.create_task(self._resume_all(resume), name="resume jobs")
        self._resuming.add(task)
        task.add_done_callback(self._resuming.discard)
        return task

    async def _resume_all(self, resume: bool) -> None:
        rows = sorted(
            (
                r
                for r in self.store.jobs.all()
                if r.get("status") in RESUMABLE and r["id"] not in self.running
            ),
            key=lambda r: str(r.get("created_at") or ""),  # in the order they were started
        )
        for row in rows:
            job_id = str(row["id"])
            # counters from the units first: the job's own are saved only now and then (read
            # off the event loop: a big job has many units, and the server answers meanwhile)
            counted = {**await asyncio.to_thread(self._recount, job_id), "updated_at": now_iso()}
            now = self.store.jobs.get(job_id) or {}
            if job_id in self.running or now.get("status") not in RESUMABLE:
                continue  # started again or cancelled meanwhile
            if not resume:
                if now.get("status") == JobStatus.RUNNING:
                    counted.update(status=JobStatus.INTERRUPTED, error=NOT_RESUMED)
                    log.warning("not resuming %s job %s: resuming is off", now.get("kind"), job_id)
                self.store.jobs.save(counted)
                continue
            self.store.jobs.save(counted)
            task = asyncio.create_task(self._resume_one(job_id), name=f"resume {job_id}")
            self._resuming.add(task)
            task.add_done_callback(self._resuming.discard)

    async def _resume_one(self, job_id: str) -> None:
        """Start a stored job again as it was: same stage, scope and options, so the same id
        and, for a sampled plan, the same plan. Waits while an overlapping job of its stage
        runs; a job that cannot run as it was any more is stored as failed, with why."""
        while True:
            row = self.store.jobs.get(job_id)
            if job_id in self.running or row is None or row.get("status") not in RESUMABLE:
                return  # started again, cancelled or finished meanwhile
            stage_name, scope = str(row.get("kind") or ""), str(row.get("scope") or "")
            try:
                stage, scope_text, again = self._prepare(
                    stage_name, scope or None, _options_of(row)
                )
                if again != job_id:
                    raise CannotResume(_changed(row, stage))
                # the cap its last run kept, kept again
                cap = row.get("max_cost")
                cost_cap = CostCap(float(cap), self.prices()) if cap else None
                if cost_cap is not None:
                    cost_cap.check_model(stage.params.model)
            except Exception as exc:  # nothing else would report it: stored with the job
                error = f"could not be resumed when the server started: {exc}"
                failed = {"id": job_id, "status": JobStatus.FAILED, "error": error}
                self.store.jobs.save({**failed, "updated_at": now_iso()})
                log.warning("not resuming %s job %s: %s", stage_name, job_id, exc)
                return
            other = self._overlapping(stage_name, scope_text)
            if other is None:
                break
            await asyncio.wait({self.running[other].task})
        first = replace(_from_row(row), status=JobStatus.RUNNING, error=None)
        # a job last run in batches follows them again
        self._launch(stage, scope or None, first, cost_cap, batch=row.get("executor") == "batch")
        log.warning(
            "resuming %s job %s on %s: %d of %d units done",
            stage_name,
            job_id,
            scope_text or "the whole store",
            first.done,
            first.total,
        )

    def _recount(self, job_id: str) -> dict[str, Any]:
        """A job's counters as its units say: what it has done, not what it last saved."""
        units = self.store.jobs.units(job_id)
        return {
            "id": job_id,
            "total": len(units),
            "done": sum(u.get("status") == UnitStatus.DONE for u in units),
            "failed": sum(u.get("status") == UnitStatus.FAILED for u in units),
            "prompt_tokens": sum(int(u.get("prompt_tokens") or 0) for u in units),
            "completion_tokens": sum(int(u.get("completion_tokens") or 0) for u in units),
        }

    def _as_run(self, stored: Progress) -> Progress:
        """A stored job's state with what its last run here knew, if that run is what the
        store holds (nothing has changed the job since)."""
        last = self.finished.get(stored.job_id)
        same = ("status", "total", "done", "failed", "prompt_tokens", "completion_tokens")
        if last is not None and all(getattr(last, k) == getattr(stored, k) for k in same):
            return last
        return stored

    async def shutdown(self) -> None:
        """Stop what runs after its units in flight, as interrupted: each unit already stored
        stays, and the next start resumes the job (a job being cancelled stays cancelled)."""
        for waiting in list(self._resuming):
            waiting.cancel()
        for entry in list(self.running.values()):
            if not entry.cancel.is_set() and entry.cancel.status != JobStatus.CANCELLED:
                self._stop(entry, JobStatus.INTERRUPTED)
        tasks: list[asyncio.Future[Any]] = [
            *self._resuming,
            *(e.task for e in self.running.values()),
        ]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._jobs is not None:
            # the model client's connections were made on the jobs' loop: closed there
            await asyncio.wrap_future(self._jobs.submit(self.llm.aclose()))
            self._jobs.close()
            self._jobs = None


def _options_of(row: dict[str, Any]) -> PipelineOptions:
    """The options a stored job was started with, from its key (its `params`)."""
    try:
        key = json.loads(str(row.get("params") or "{}"))
    except ValueError as exc:
        raise CannotResume(f"its stored options are not JSON ({exc})") from exc
    stage = str(row.get("kind") or "")
    if stage not in STAGES or not isinstance(key, dict):
        raise CannotResume(f"it is not a job of a known stage ({stage!r}, {key!r})")
    return PipelineOptions.from_stage(stage, key)


def _changed(row: dict[str, Any], stage: Stage) -> str:
    """What differs between a stored job's key and the one it would be started with now."""
    stored = json.loads(str(row.get("params") or "{}"))
    now = stage.job_key()
    diff = ", ".join(
        f"{k} was {stored.get(k)!r}, now {now.get(k)!r}"
        for k in sorted(set(stored) | set(now))
        if stored.get(k) != now.get(k)
    )
    return f"it would not be the same job ({diff or 'its id differs'})"


def _from_row(row: dict[str, object]) -> Progress:
    def num(key: str) -> int:
        value = row.get(key)
        return int(value) if isinstance(value, int | float | str) and str(value) else 0

    return Progress(
        job_id=str(row["id"]),
        stage=str(row.get("kind") or ""),
        scope=str(row.get("scope") or ""),
        status=str(row.get("status") or ""),
        total=num("total"),
        done=num("done"),
        failed=num("failed"),
        prompt_tokens=num("prompt_tokens"),
        completion_tokens=num("completion_tokens"),
        error=str(row["error"]) if row.get("error") else None,
    )
