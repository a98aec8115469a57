"""Jobs running inside a long-lived process (the server): start, watch, cancel.

One job per stage and scope at a time: a second request for a stage on a scope that
overlaps a running one (the same subtree, or one inside the other) is refused, so two
jobs never generate the same unit at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

from graph.errors import GlanError
from graph.model import name_key, split_path
from graph.store import Store

from .jobs import JobRunner, JobStatus, Progress, job_id_for
from .llm import LLMClient, StageParams
from .pipeline import PipelineOptions
from .stages import STAGES


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


#: finished jobs whose last state a manager keeps (see JobManager.finished)
KEEP_FINISHED = 256


def _overlaps(a: str, b: str) -> bool:
    """Whether two scope paths share nodes: equal, or one is inside the other."""
    pa = [name_key(x) for x in split_path(a)] if a else []
    pb = [name_key(x) for x in split_path(b)] if b else []
    n = min(len(pa), len(pb))
    return pa[:n] == pb[:n]


@dataclass
class _Running:
    stage: str
    scope: str
    task: asyncio.Task[Progress]
    cancel: asyncio.Event
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
    ) -> None:
        self.store = store
        self.llm = llm
        self.params_for = params_for
        self.runner = JobRunner(store, concurrency=concurrency)
        self.running: dict[str, _Running] = {}
        #: the last state of jobs this process ran, newest last (at most KEEP_FINISHED): it
        #: has what only a run knows (units an earlier run had done, failures that kept the
        #: model's text, the first error), for a watcher that comes after the job ended
        self.finished: dict[str, Progress] = {}

    def start(self, stage_name: str, path: str | None, options: PipelineOptions) -> Progress:
        """Start a job in the background and return its first state at once."""
        scope = self.store.taxonomy.scope(path)  # refuses unknown and unapproved paths
        scope_text = scope.path or "" if scope else ""
        stage = STAGES[stage_name](
            self.store, self.llm, self.params_for(stage_name), options.for_stage(stage_name)
        )
        stage.check_scope(scope)
        job_id = job_id_for(stage_name, scope_text, stage.job_key())
        for other_id, other in self.running.items():
            if other.stage == stage_name and _overlaps(other.scope, scope_text):
                raise JobConflict(other_id, stage_name, other.scope)
        cancel = asyncio.Event()
        first = Progress(job_id, stage_name, scope_text, JobStatus.RUNNING)
        entry: _Running

        def progress(state: Progress) -> None:
            snapshot = replace(state)
            entry.latest = snapshot
            for q in entry.watchers:
                q.put_nowait(snapshot)

        task = asyncio.create_task(
            self.runner.run(stage, path, progress=progress, cancel=cancel), name=job_id
        )
        entry = _Running(stage_name, scope_text, task, cancel, first)
        self.running[job_id] = entry
        task.add_done_callback(lambda t: self._finished(job_id, t))
        return first

    def _finished(self, job_id: str, task: asyncio.Task[Progress]) -> None:
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
        entry = self.running.get(job_id)
        if entry is None:
            stored = self.store.jobs.get(job_id)
            if stored is None:
                raise JobNotFound(job_id)
            return _from_row(stored)
        entry.cancel.set()
        return entry.latest

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

    def _as_run(self, stored: Progress) -> Progress:
        """A stored job's state with what its last run here knew, if that run is what the
        store holds (nothing has changed the job since)."""
        last = self.finished.get(stored.job_id)
        same = ("status", "total", "done", "failed", "prompt_tokens", "completion_tokens")
        if last is not None and all(getattr(last, k) == getattr(stored, k) for k in same):
            return last
        return stored

    async def shutdown(self) -> None:
        """Cancel what runs (each unit already stored stays; a restart resumes)."""
        for entry in list(self.running.values()):
            entry.cancel.set()
        tasks = [e.task for e in self.running.values()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


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
