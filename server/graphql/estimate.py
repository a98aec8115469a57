"""A dry run of a generation job: what it would do and cost, with nothing stored or asked."""

from __future__ import annotations

from functools import partial
from typing import Annotated

import strawberry
from strawberry.types import Info

from generators.cost import Estimate, estimate_job
from generators.pipeline import PipelineOptions
from generators.stages import STAGES
from graph.errors import GlanError

from ..context import Context
from ..settings import Settings
from .errors import InvalidInputError, NotApprovedError, NotFoundError, WrongKindError, problem
from .instruction import Strategy
from .job import StageName
from .planning import CoverageEstimate, with_coverage


@strawberry.type(
    description="A job as a run would find it now, and what its units left would cost. "
    "Planned on the store as it is: nothing is stored and the model is not asked."
)
class JobEstimate:
    job_id: strawberry.ID = strawberry.field(description="The job a run would start or resume.")
    kind: StageName
    scope: str
    model: str
    stored: bool = strawberry.field(description="The job is in the store (an earlier run).")
    total: int = strawberry.field(description="Units in its plan.")
    done: int = strawberry.field(description="Units done by earlier runs.")
    todo: int = strawberry.field(description="Units a run would ask.")
    prompt_tokens: int = strawberry.field(description="Prompt tokens expected for the todo.")
    completion_tokens: int = strawberry.field(description="Completion tokens expected for them.")
    basis: str = strawberry.field(
        description="history: the average of done units of this stage and model; prompt: "
        "measured requests (4 characters a token) and max_tokens or a guess; none: no work."
    )
    sample: int = strawberry.field(description="Units or requests the estimate rests on.")
    estimated_cost_usd: float | None = strawberry.field(
        description="What the todo would cost at the model's price (null: no price)."
    )
    spent_cost_usd: float | None = strawberry.field(
        description="What the job has spent so far (null: no price)."
    )
    coverage: CoverageEstimate | None = strawberry.field(
        description="For questions planned with minPerConcept or untilShare: the target and "
        "the questions per discipline."
    )

    @classmethod
    def of(cls, e: Estimate) -> JobEstimate:
        return cls(
            job_id=strawberry.ID(e.job_id),
            kind=StageName(e.stage),
            scope=e.scope,
            model=e.model,
            stored=e.stored,
            total=e.total,
            done=e.done,
            todo=e.todo,
            prompt_tokens=e.tokens.prompt_tokens,
            completion_tokens=e.tokens.completion_tokens,
            basis=e.basis,
            sample=e.sample,
            estimated_cost_usd=e.estimated_usd,
            spent_cost_usd=e.spent_usd,
            coverage=CoverageEstimate.of(e.coverage, e.estimated_usd, e.todo),
        )


EstimateResult = Annotated[
    JobEstimate | NotFoundError | NotApprovedError | WrongKindError | InvalidInputError,
    strawberry.union("EstimateResult"),
]


def stage_options(
    stage: str,
    settings: Settings,
    *,
    n: int,
    strategy: str,
    seed: int,
    basic_ratio: float,
    rounds: int | None,
    per_call: int,
    sessions: int,
    turns: int = 2,
    min_per_concept: int | None = None,
    until_share: float | None = None,
) -> PipelineOptions:
    """The options a generation mutation of this stage starts its job with (so the same
    job id), bounded as the mutation bounds them; rounds not given are the server's
    GLAN_SUBJECT_ROUNDS, and a questions job may be planned for coverage."""
    from .mutation import LIMITS, _bounded, _check  # the mutations import this module's kin

    if rounds is None:
        rounds = settings.subject_rounds
    if stage == "taxonomy":
        _check("n", n, *LIMITS["taxonomy n"])
        return PipelineOptions(taxonomy_n=n, auto_approve=settings.auto_approve)
    if stage == "subjects":
        _bounded(rounds=rounds, perCall=per_call)
        return PipelineOptions(rounds=rounds, per_call=per_call)
    if stage == "syllabus":
        _bounded(sessions=sessions)
        return PipelineOptions(sessions=sessions)
    if stage == "questions":
        _bounded(n=n)
        _check("basicRatio", basic_ratio, 0.0, 1.0)
        options = PipelineOptions(n=n, strategy=strategy, seed=seed, basic_ratio=basic_ratio)
        return with_coverage(options, min_per_concept, until_share)
    if stage == "followups":
        _bounded(turns=turns)
        return PipelineOptions(turns=turns)
    return PipelineOptions()


async def job_estimate(
    info: Info[Context, None],
    stage: StageName,
    path: str | None = None,
    n: int = 10,
    strategy: Strategy = Strategy.MIXED,
    seed: int = 0,
    basic_ratio: float = 0.5,
    rounds: int | None = None,
    per_call: int = 10,
    sessions: int = 12,
    turns: int = 2,
    min_per_concept: int | None = None,
    until_share: float | None = None,
    batch: Annotated[
        bool,
        strawberry.argument(description="Priced as requests through the Batch API are."),
    ] = False,
) -> EstimateResult:
    """The query's resolver (see Query.job_estimate)."""
    ctx = info.context
    try:
        options = stage_options(
            stage.value,
            ctx.settings,
            n=n,
            strategy=strategy.value,
            seed=seed,
            basic_ratio=basic_ratio,
            rounds=rounds,
            per_call=per_call,
            sessions=sessions,
            turns=turns,
            min_per_concept=min_per_concept,
            until_share=until_share,
        )
        found = await ctx.run(partial(_estimate, ctx, stage.value, path or None, options, batch))
    except GlanError as exc:
        return problem(exc)
    return JobEstimate.of(found)


def _estimate(
    ctx: Context, stage: str, path: str | None, options: PipelineOptions, batch: bool = False
) -> Estimate:
    """On a worker thread: the stage as the server would run it (its model, its endpoint's
    request shape) planned and measured."""
    jobs = ctx.jobs
    made = STAGES[stage](ctx.store, jobs.llm, jobs.params_for(stage), options.for_stage(stage))
    prices = ctx.settings.price_table()
    return estimate_job(ctx.store, made, path, prices, batch=batch)
