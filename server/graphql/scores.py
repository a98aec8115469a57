"""The judge's scores through the API: a pair's judgement, and the scores below a node.

Scores below a node are one grouped read over its scope (Instructions.scores), shared
between requests while the store is unchanged. The rows of a coverage report's children,
and the nodes of a subtree, are read together: one read per level under their parent or
root, grouped by node, not one per node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import strawberry
from strawberry.types import Info

from graph.model import HIERARCHY, SESSION
from graph.records import Node, Scores

from ..context import Context

#: the deepest level scores are read for: pairs hang under sessions, not under concepts
_DEEPEST = HIERARCHY.index(SESSION)


@strawberry.type(description="How many pairs the judge gave one overall score.")
class ScoreBin:
    score: int
    count: int


@strawberry.type(description="The judge's overall scores (1-10) of the pairs below a node.")
class ScoreSummary:
    judged: int = strawberry.field(description="Pairs with a score (unjudged ones are left out).")
    mean: float | None = strawberry.field(description="Their mean score; null when none.")
    histogram: list[ScoreBin] = strawberry.field(
        description="Pairs per score, 1 to 10, zeros included."
    )

    @classmethod
    def of(cls, s: Scores) -> ScoreSummary:
        mean = s.mean
        return cls(
            judged=s.judged,
            mean=round(mean, 3) if mean is not None else None,
            histogram=[ScoreBin(score=k, count=s.histogram.get(k, 0)) for k in range(1, 11)],
        )


@strawberry.type(description="A judge's scores of a question-answer pair, each 1-10.")
class Judgement:
    score: int = strawberry.field(description="The overall score.")
    self_contained: int | None
    answerable: int | None
    correct: int | None
    complete: int | None
    uses_concepts: int | None
    on_topic: int | None
    rationale: str | None
    model: str | None = strawberry.field(description="The judge model.")
    prompt_name: str | None
    prompt_version: str | None
    job_id: strawberry.ID | None
    judged_at: str | None

    @classmethod
    def of(cls, props: dict[str, object]) -> Judgement | None:
        score = props.get("score")
        if not isinstance(score, int):
            return None

        def num(key: str) -> int | None:
            value = props.get(key)
            return value if isinstance(value, int) else None

        def text(key: str) -> str | None:
            value = props.get(key)
            return str(value) if value else None

        job = text("judge_job_id")
        return cls(
            score=score,
            self_contained=num("score_self_contained"),
            answerable=num("score_answerable"),
            correct=num("score_correct"),
            complete=num("score_complete"),
            uses_concepts=num("score_uses_concepts"),
            on_topic=num("score_on_topic"),
            rationale=text("rationale"),
            model=text("judge_model"),
            prompt_name=text("judge_prompt_name"),
            prompt_version=text("judge_prompt_version"),
            job_id=strawberry.ID(job) if job else None,
            judged_at=text("judged_at"),
        )


@dataclass(frozen=True)
class Place:
    """Where a coverage row or tree node sits, for its scores: the node (None: the whole
    store) and, for one read with its siblings, the parent or root it was read under."""

    node: Node | None
    under: Node | None = None
    grouped: bool = False


def _level(node: Node) -> int:
    return HIERARCHY.index(node.kind)


async def scores_at(info: Info[Context, None], place: Place | None) -> ScoreSummary | None:
    """The scores below a place; null below sessions (a concept: pairs hang under sessions)."""
    if place is None:
        return None
    ctx = info.context
    node, under = place.node, place.under
    if node is not None and _level(node) > _DEEPEST:
        return None
    if place.grouped and node is not None:
        level = _level(node)

        def grouped() -> dict[str, Scores]:
            return ctx.store.instructions.scores(under, level)

        found = await ctx.read(("scores", under.id if under else None, level), grouped)
        return ScoreSummary.of(found.get(node.id, Scores()))

    def whole() -> dict[str, Scores]:
        return ctx.store.instructions.scores(node)

    found = await ctx.read(("scores", node.id if node else None, None), whole)
    return ScoreSummary.of(found.get("", Scores()))


async def _place_scores(root: Any, info: Info[Context, None]) -> ScoreSummary | None:
    return await scores_at(info, root.place)


def scores_field() -> Any:
    """The `scores` field of a type with a private `place` (a coverage row, a tree node)."""
    return strawberry.field(
        resolver=_place_scores,
        description="The judge's overall scores of the pairs below: how many are judged, "
        "their mean and histogram (null below sessions, where no pair hangs).",
    )
