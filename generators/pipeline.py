"""Running GLAN stages one after another over a scope, as resumable jobs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from graph.store import Store

from .jobs import JobRunner, Progress, ProgressCallback
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

    def for_stage(self, stage: str) -> dict[str, Any]:
        """The options a stage uses; they are also what identifies its job."""
        if stage == "taxonomy":
            return {"n": self.taxonomy_n, "rounds": 1, "auto_approve": self.auto_approve}
        if stage == "subjects":
            return {"rounds": self.rounds, "per_call": self.per_call}
        if stage == "syllabus":
            return {"sessions": self.sessions}
        if stage == "questions":
            return {
                "n": self.n,
                "strategy": self.strategy,
                "basic_ratio": self.basic_ratio,
                "seed": self.seed,
                "prefer_uncovered": self.prefer_uncovered,
            }
        return {}


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
) -> list[Progress]:
    """Run each stage as a job under `path`; stops early when cancelled."""
    runner = JobRunner(store, concurrency=concurrency)
    results: list[Progress] = []
    for name in stages:
        stage = STAGES[name](store, llm, params_for(name), options.for_stage(name))
        results.append(await runner.run(stage, path, progress=progress, cancel=cancel))
        if cancel is not None and cancel.is_set():
            break
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
            )
        finally:
            await llm.aclose()

    return asyncio.run(main())
