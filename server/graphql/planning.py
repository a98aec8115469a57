"""A coverage-driven questions job in a dry run: its target, how the concepts stand, and the
questions it would ask per discipline (generators/planning.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import strawberry

from generators.pipeline import PipelineOptions
from generators.planning import coverage_costs
from graph.errors import InvalidInput


@strawberry.type(description="The questions a coverage job would ask under one discipline.")
class DisciplineQuestions:
    path: str
    questions: int
    estimated_cost_usd: float | None = strawberry.field(
        description="Their share of the job's estimate (null: no price)."
    )


@strawberry.type(
    description="What a questions job with minPerConcept (or untilShare) would do: every "
    "approved concept in scope covered by `target` questions (or `untilShare` of them)."
)
class CoverageEstimate:
    target: int = strawberry.field(description="Questions per concept.")
    until_share: float | None = strawberry.field(description="The share of concepts asked for.")
    concepts: int = strawberry.field(description="Approved concepts in scope.")
    reached_before: int = strawberry.field(
        description="Concepts at the target already (questions asked or planned before)."
    )
    wanted: int = strawberry.field(description="Concepts the plan is to bring to the target.")
    reached: int = strawberry.field(description="Concepts at the target once it is asked.")
    short: int = strawberry.field(
        description="Concepts no new combination can bring to the target with the strategy."
    )
    questions: int = strawberry.field(description="Questions left to ask.")
    by_discipline: list[DisciplineQuestions] = strawberry.field(
        description="Those questions per discipline (a shared subject's under its first)."
    )

    @classmethod
    def of(
        cls, summary: dict[str, Any] | None, estimated_usd: float | None, todo: int
    ) -> CoverageEstimate | None:
        if summary is None:
            return None
        costs = coverage_costs(summary, estimated_usd, todo)
        return cls(
            target=summary["target"],
            until_share=summary["until_share"],
            concepts=summary["concepts"],
            reached_before=summary["reached_before"],
            wanted=summary["wanted"],
            reached=summary["reached"],
            short=summary["short"],
            questions=summary["questions"],
            by_discipline=[
                DisciplineQuestions(path=p, questions=n, estimated_cost_usd=costs[p])
                for p, n in summary["by_discipline"].items()
            ],
        )


def with_coverage(
    options: PipelineOptions, min_per_concept: int | None, until_share: float | None
) -> PipelineOptions:
    """Questions options planned for coverage, bounded as generateInstructions bounds them
    (unchanged when neither is given)."""
    from .mutation import LIMITS, _check  # the mutations import this module's kin

    if min_per_concept is None and until_share is None:
        return options
    if min_per_concept is not None:
        _check("minPerConcept", min_per_concept, *LIMITS["minPerConcept"])
    if until_share is not None and not 0.0 < until_share <= 1.0:
        raise InvalidInput(f"untilShare must be above 0 and at most 1, got {until_share}")
    return replace(options, min_per_concept=min_per_concept or 0, until_share=until_share)
