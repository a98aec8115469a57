"""Running GLAN stages one after another over a scope, as resumable jobs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from graph.store import Store

from .cost import CostCap
from .jobs import JobRunner, JobStatus, Progress, ProgressCallback
from .llm import LLMClient, LLMConfig, StageParams
from .stages import STAGES


@dataclass(frozen=True)
class PipelineOptions:
    n: int = 10  # questions to sample
    rounds: int = 10  # subject rounds per discipline (paper: 10)
    per_call: int = 10  # subjects asked for per call
    sessions: int = 12  # class sessions asked for per syllabus
    strategy: str = "mixed"
    basic_ratio: float = 0.5
    seed: int = 0
    prefer_uncovered: bool = True
    taxonomy_n: int = 10  # children proposed per taxonomy call
    auto_approve: bool = False
    turns: int = 2  # follow-up turns per conversation (followups)
    #: questions: coverage instead of a count, each approved concept covered by this many
    #: questions (0: off), or this share of them at least (None: all)
    min_per_concept: int = 0
    until_share: float | None = None

    @property
    def coverage_target(self) -> bool:
        """Questions are planned for coverage (min_per_concept, until_share), not n."""
        return self.min_per_concept > 0 or self.until_share is not None

    def for_stage(self, stage: str) -> dict[str, Any]:
        """The options a stage uses; they are also what identifies its job."""
        if stage == "taxonomy":
            return {"n": self.taxonomy_n, "rounds": 1, "auto_approve": self.auto_approve}
        if stage == "subjects":
            return {"rounds": self.rounds, "per_call": self.per_call}
        if stage == "syllabus":
            return {"sessions": self.sessions}
        if stage == "followups":
            return {"turns": self.turns}
        if stage == "questions" and self.coverage_target:
            # a coverage job is known by its target, not by a count it does not use
            return {
                "min_per_concept": self.min_per_concept or 1,
                "until_share": self.until_share,
                "strategy": self.strategy,
                "basic_ratio": self.basic_ratio,
                "seed": self.seed,
            }
        if stage == "questions":
            return {
                "n": self.n,
                "strategy": self.strategy,
                "basic_ratio": self.basic_ratio,
                "seed": self.seed,
                "prefer_uncovered": self.prefer_uncovered,
            }
        return {}

    @classmethod
    def from_stage(cls, stage: str, options: Mapping[str, Any]) -> PipelineOptions:
        """The options whose for_stage(stage) gives back `options` (a stored job's key):
        what a job is started with again. Keys the stage does not take are left out, so the
        job's id, checked against the stored one, tells whether it really is the same job."""
        # for_stage's keys that are not the option of their name (taxonomy's rounds is fixed)
        renamed: dict[str, str | None] = {"n": "taxonomy_n", "rounds": None}
        values: dict[str, Any] = {}
        keys = dict.fromkeys([*cls().for_stage(stage), *cls(min_per_concept=1).for_stage(stage)])
        for key in keys:
            name = renamed.get(key, key) if stage == "taxonomy" else key
            if name is not None and key in options:
                values[name] = options[key]
        return cls(**values)


@dataclass(frozen=True)
class Verdict:
    """What a run of stages amounts to: its exit status and the lines that say why.

    0 when every stage completed with every unit done (a stage with nothing to do counts
    as done), and also, unless strict, when some units failed but every stage that had
    work made something: a run at scale always has a few failures, and running the same
    command again retries them. 1 when a stage did not finish, when every unit of a stage
    failed (an unreachable endpoint, a wrong model name), or, when strict, when any unit
    failed. The last line is the verdict itself."""

    exit_code: int
    lines: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return self.lines[-1].startswith("done:")


def verdict(results: Sequence[Progress], *, strict: bool = False) -> Verdict:
    """Judge a run from its jobs' results, in the order the stages ran."""
    total = sum(r.total for r in results)
    failed = sum(r.failed for r in results)
    unfinished = [r for r in results if r.status not in _FINISHED]
    if not failed and not unfinished:
        return Verdict(0, (f"done: all {total:,} units of {_names(results)} are done",))
    barren = [r for r in results if r.failed and not r.done]
    code = 1 if unfinished or barren or strict else 0
    lines: list[str] = []
    first = next((r for r in results if r.first_error), None)
    if first is not None:
        lines.append(f"first error ({first.stage}): {first.first_error}")
    kept = sum(r.failed_raw for r in results)
    if failed and kept == failed:
        lines.append("each failed unit kept the model's raw output: glan jobs --failed shows it")
    elif failed and not kept:
        lines.append(
            "no failed unit got text back from the model, so there is no raw output to "
            "keep; glan jobs --failed lists each one's error"
        )
    elif failed:
        lines.append(
            f"{kept:,} failed unit(s) kept the model's raw output and {failed - kept:,} got "
            "no text back; glan jobs --failed shows each with its error"
        )
    for r in unfinished:
        lines.append(f"{r.stage} did not finish ({r.status}){f': {r.error}' if r.error else ''}")
    for r in barren:
        lines.append(f"every unit of {r.stage} failed: {r.failed:,} of {r.total:,}")
    first_bad = next(i for i, r in enumerate(results) if r.failed or r in unfinished)
    if after := results[first_bad + 1 :]:
        lines.append(
            f"{_names(after)} ran on what {results[first_bad].stage} had made so far; "
            "running the same command again retries the failed units and extends the "
            "later stages to what they make"
        )
    if any(r.status == JobStatus.COST_CAPPED for r in results):
        lines.append(
            "incomplete: stopped at the cost cap, with nothing lost; run the same command "
            "again with a higher --max-cost to go on"
        )
    elif failed:
        stages = ", ".join(f"{r.stage} {r.failed:,} of {r.total:,}" for r in results if r.failed)
        last = f"incomplete: {failed:,} of {total:,} units failed ({stages})"
        lines.append(f"{last}; run the same command again to retry them")
    else:
        lines.append("incomplete: run the same command again to resume")
    return Verdict(code, tuple(lines))


_FINISHED = (JobStatus.COMPLETED, JobStatus.COMPLETED_WITH_FAILURES)


def _names(results: Sequence[Progress]) -> str:
    names = [r.stage for r in results]
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


async def run_stages(
    store: Store,
    llm: LLMClient,
    params_for: Callable[[str], StageParams],
    stages: Sequence[str],
    path: str | None,
    options: PipelineOptions,
    *,
    concurrency: int = 8,
    progress: ProgressCallback | None = None,
    cancel: asyncio.Event | None = None,
    cost_cap: CostCap | None = None,
) -> list[Progress]:
    """Run each stage as a job under `path`; stops early when cancelled, or when a job
    stops at its cost cap (each job keeps `cost_cap` on its own cost)."""
    if cost_cap is not None:  # refused before any stage runs when one cannot be capped
        for name in stages:
            cost_cap.check_model(params_for(name).model)
    runner = JobRunner(store, concurrency=concurrency)
    results: list[Progress] = []
    for name in stages:
        stage = STAGES[name](store, llm, params_for(name), options.for_stage(name))
        results.append(
            await runner.run(stage, path, progress=progress, cancel=cancel, cost_cap=cost_cap)
        )
        if cancel is not None and cancel.is_set():
            break
        if results[-1].status == JobStatus.COST_CAPPED:
            break  # later stages would run on part of its output
    return results


def run_pipeline(
    store: Store,
    llm_config: LLMConfig,
    params_for: Callable[[str], StageParams],
    stages: Sequence[str],
    path: str | None,
    options: PipelineOptions,
    *,
    concurrency: int = 8,
    progress: ProgressCallback | None = None,
    cost_cap: CostCap | None = None,
) -> list[Progress]:
    """Synchronous entry for the CLI: one event loop, one client, closed at the end."""

    async def main() -> list[Progress]:
        llm = LLMClient(llm_config)
        try:
            return await run_stages(
                store,
                llm,
                params_for,
                stages,
                path,
                options,
                concurrency=concurrency,
                progress=progress,
                cost_cap=cost_cap,
            )
        finally:
            await llm.aclose()

    return asyncio.run(main())
