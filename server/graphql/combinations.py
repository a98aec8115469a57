"""The combination space in the API: its size, the combinations used in it, the share.

A space can pass GraphQL's 32-bit Int by far (a subject of ten 10-concept sessions has about
a million combinations; the whole GLAN taxonomy tens of billions), and past what a JSON
number holds exactly (2^53). It is given as `Int64`, a decimal string, while it fits a
signed 64-bit integer, and always as its log10, a float; beyond int64 only the log10 is
given (`combinationSpace` is null). The share is a float.
"""

from __future__ import annotations

from typing import Any, NewType

import strawberry
from strawberry.types.scalar import ScalarDefinition

from graph.combinations import INT64_MAX, log10, share
from graph.records import CombinationGap as StoreCombinationGap

from .node import TaxonomyNode

Int64 = NewType("Int64", int)
#: the schema's scalars beyond GraphQL's own (StrawberryConfig.scalar_map)
SCALARS: dict[object, ScalarDefinition] = {
    Int64: strawberry.scalar(
        name="Int64",
        serialize=str,
        parse_value=int,
        description="A signed 64-bit integer, written as a decimal string (GraphQL's Int is "
        "32-bit, and JSON numbers hold integers exactly only up to 2^53).",
    )
}

SPACE = (
    "The combination space below: subsets of 1-5 concepts of one session (basic) and of "
    "2-5 concepts spanning two sessions of a subject, one of each at least (hard), as the "
    "sampler draws them, over approved sessions and concepts; for a session, its basic ones. "
    "Null when it passes int64 (see combinationSpaceLog10)."
)
SPACE_LOG10 = "log10 of combinationSpace, whatever its size (null for an empty space)."
USED = (
    "Distinct combinations asked within the space: all those of the subjects below; for a "
    "session, those of the questions asked from it alone."
)
SHARE = "combinationsUsed / combinationSpace, at most 1 (0 for an empty space)."


def figures(space: int, used: int) -> dict[str, Any]:
    """The API's combination fields of a space and the combinations used in it."""
    return {
        "combination_space": space if space <= INT64_MAX else None,
        "combination_space_log10": log10(space),
        "combinations_used": used,
        "combination_share": share(used, space),
    }


@strawberry.type(description="A subject or session and how much of its space was asked about.")
class CombinationGap:
    node: TaxonomyNode
    subject: str = strawberry.field(description="For a session, its subject's name; else empty.")
    combination_space: Int64 | None = strawberry.field(description=SPACE)
    combination_space_log10: float | None = strawberry.field(description=SPACE_LOG10)
    combinations_used: int = strawberry.field(description=USED)
    combination_share: float = strawberry.field(description=SHARE)

    @classmethod
    def of(cls, g: StoreCombinationGap) -> CombinationGap:
        return cls(node=TaxonomyNode.of(g.node), subject=g.subject, **figures(g.space, g.used))
