"""Resumable, idempotent generation jobs.

A job is one stage over one scope (a subtree path) with its parameters; its id is a hash of
those, so running the same command again finds the same job. The job is split into units
with deterministic ids. Each unit's outputs, its own state and the job's counters are
written in one transaction, so a process killed at any point leaves either all of a unit
or none of it, and the next run does exactly the units not yet done.
"""

from __future__ import annotations

import asyncio
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from graph.driver import Tx
from graph.errors import GlanError, WrongKind
from graph.model import JOB, UNIT, NodeKind, node_id
from graph.store import Node, Store, now_iso

from .llm import LLMClient, LLMError, StageParams, Usage

#: How often the job node's counters are written while units finish (each unit's own state
#: is written with its output, always).
JOB_SAVE_EVERY_S = 0.5


class JobStatus:
    RUNNING = "running"
    COMPLETED = "completed"
    COMPLETED_WITH_FAILURES = "completed_with_failures"
    CANCELLED = "cancelled"
    FAILED = "failed"


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
        }


ProgressCallback = Callable[[Progress], None]


class Stage(ABC):
    """One GLAN stage: how to split a scope into units, run one, and store its output."""

    name: ClassVar[str]
    #: the kinds of node this stage may run under (None, the whole store, always may)
    scope_kinds: ClassVar[tuple[NodeKind, ...]]

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

    @abstractmethod
    async def execute(self, unit: UnitSpec) -> Outcome:
        """Call the model for one unit. Never writes to the store."""

    @abstractmethod
    def write(self, unit: UnitSpec, outcome: Outcome, tx: Tx) -> None:
        """Store a successful unit's output (inside the unit's transaction)."""

    def provenance(self, unit: UnitSpec, prompt_name: str, prompt_version: str) -> dict[str, Any]:
        return {
            "model": self.params.model,
            "prompt_name": prompt_name,
            "prompt_version": prompt_version,
            "job_id": self.job_id,
            "unit_id": unit.id,
        }


def job_id_for(stage: str, scope_path: str, key: Mapping[str, Any]) -> str:
    return node_id(JOB, stage, scope_path.casefold(), json.dumps(key, sort_keys=True))


class JobRunner:
    """Runs a stage's units with bounded concurrency and stores progress as it goes."""

    def __init__(self, store: Store, *, concurrency: int = 8) -> None:
        self.store = store
        self.concurrency = max(1, concurrency)
        self._last_job_save = 0.0

    async def run(
        self,
        stage: Stage,
        scope_path: str | None,
        *,
        progress: ProgressCallback | None = None,
        cancel: asyncio.Event | None = None,
    ) -> Progress:
        scope = self.store.scope(scope_path)
        stage.check_scope(scope)
        scope_text = scope.path or "" if scope else ""
        key = stage.job_key()
        params = json.dumps(key, sort_keys=True)
        stage.job_id = job_id_for(stage.name, scope_text, key)
        state = Progress(stage.job_id, stage.name, scope_text, JobStatus.RUNNING)
        if self.store.job(stage.job_id) is None:
            self.store.save_job({**state.as_row(params), "created_at": now_iso()})
        # Tokens are counted from the units, which store theirs with their output: the job's
        # own counters are saved only now and then, so after a crash they lag behind.
        spent = {
            u["id"]: Usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
            for u in self.store.job_units(stage.job_id)
        }
        state.prompt_tokens = sum(u.prompt_tokens for u in spent.values())
        state.completion_tokens = sum(u.completion_tokens for u in spent.values())

        try:
            units = stage.plan(scope)
        except GlanError as exc:  # stored as failed, so the job does not look alive forever
            state.status, state.error = JobStatus.FAILED, str(exc)
            self.store.save_job(state.as_row(params))
            if progress:
                progress(state)
            raise
        statuses = self.store.unit_statuses([u.id for u in units])
        todo = [u for u in units if statuses.get(u.id) != UnitStatus.DONE]
        state.total = len(units)
        state.skipped = state.done = len(units) - len(todo)
        # The plan is stored whole or not at all: a re-run reads it back instead of drawing
        # a new sample.
        with self.store.driver.transaction() as tx:
            new = [u for u in units if u.id not in statuses]
            rows = [self._unit_row(stage, u, UnitStatus.PENDING) for u in new]
            self.store.save_units(rows, update_existing=False, tx=tx)
            self.store.save_job(state.as_row(params), tx=tx)
        if progress:
            progress(state)

        queue: asyncio.Queue[UnitSpec] = asyncio.Queue()
        for u in todo:
            queue.put_nowait(u)

        async def worker() -> None:
            while not queue.empty():
                if cancel is not None and cancel.is_set():
                    return
                unit = queue.get_nowait()
                try:
                    outcome = await stage.execute(unit)
                except LLMError as exc:
                    outcome = Outcome(error=str(exc), raw=getattr(exc, "raw", "") or "")
                self._finish(stage, unit, outcome, state, params, spent.get(unit.id, Usage()))
                if progress:
                    progress(state)

        workers = [asyncio.create_task(worker()) for _ in range(min(self.concurrency, len(todo)))]
        try:
            await asyncio.gather(*workers)
        except BaseException as exc:
            for w in workers:
                w.cancel()
            state.status = (
                JobStatus.CANCELLED
                if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt)
                else JobStatus.FAILED
            )
            state.error = None if state.status == JobStatus.CANCELLED else repr(exc)
            self.store.save_job(state.as_row(params))
            raise
        if cancel is not None and cancel.is_set() and state.finished < state.total:
            state.status = JobStatus.CANCELLED
        elif state.failed:
            state.status = JobStatus.COMPLETED_WITH_FAILURES
        else:
            state.status = JobStatus.COMPLETED
        self.store.save_job(state.as_row(params))
        if progress:
            progress(state)
        return state

    def _finish(
        self,
        stage: Stage,
        unit: UnitSpec,
        outcome: Outcome,
        state: Progress,
        params: str,
        earlier: Usage,
    ) -> None:
        """Write a unit's output, its state and the job counters in one transaction.

        The unit keeps the tokens of all its attempts (`earlier` ones, by runs before this),
        so a job's tokens are always the sum of its units'."""
        state.prompt_tokens += outcome.usage.prompt_tokens
        state.completion_tokens += outcome.usage.completion_tokens
        outcome.usage = earlier + outcome.usage
        status = UnitStatus.DONE if outcome.ok else UnitStatus.FAILED
        try:
            with self.store.driver.transaction() as tx:
                if outcome.ok:
                    stage.write(unit, outcome, tx)
                self._count(state, status)
                self._save_unit(stage, unit, status, outcome, state, params, tx)
        except GlanError as exc:  # the output could not be stored (e.g. an empty name)
            self._uncount(state, status)
            outcome.error = f"could not store the output: {exc}"
            with self.store.driver.transaction() as tx:
                self._count(state, UnitStatus.FAILED)
                self._save_unit(stage, unit, UnitStatus.FAILED, outcome, state, params, tx)

    def _save_unit(
        self,
        stage: Stage,
        unit: UnitSpec,
        status: str,
        outcome: Outcome,
        state: Progress,
        params: str,
        tx: Tx,
    ) -> None:
        """The unit's new state (its node exists since planning) and, at most every
        JOB_SAVE_EVERY_S, the job's counters: a re-run recounts them from the units."""
        self.store.update_existing(UNIT, [self._unit_row(stage, unit, status, outcome)], tx=tx)
        now = time.monotonic()
        if now - self._last_job_save >= JOB_SAVE_EVERY_S:
            self.store.update_existing(JOB, [state.as_row(params)], tx=tx)
            self._last_job_save = now

    @staticmethod
    def _count(state: Progress, status: str) -> None:
        if status == UnitStatus.DONE:
            state.done += 1
        else:
            state.failed += 1

    @staticmethod
    def _uncount(state: Progress, status: str) -> None:
        if status == UnitStatus.DONE:
            state.done -= 1
        else:
            state.failed -= 1

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
                raw=outcome.raw or None,
                prompt_tokens=outcome.usage.prompt_tokens,
                completion_tokens=outcome.usage.completion_tokens,
            )
        return row


def unit_id(stage: str, *parts: str) -> str:
    return node_id(UNIT, stage, *parts)
