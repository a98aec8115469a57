"""A subtree with counts at every node, as Coverage.tree builds it in a few grouped queries."""

from __future__ import annotations

import strawberry

from graph.records import TreeNode as StoreTreeNode

from .combinations import SHARE, SPACE, SPACE_LOG10, USED, Int64, figures
from .node import Counts, TaxonomyNode
from .scores import Place, ScoreSummary, scores_field


@strawberry.type(description="A node of a subtree (node is null for the root above all fields).")
class TreeNode:
    node: TaxonomyNode | None
    path: str
    counts: Counts
    children: list[TreeNode]
    covered_concepts: int = strawberry.field(
        description="Concepts below at least one instruction covers (as `coverage` counts them)."
    )
    combination_space: Int64 | None = strawberry.field(description=SPACE)
    combination_space_log10: float | None = strawberry.field(description=SPACE_LOG10)
    combinations_used: int = strawberry.field(description=USED)
    combination_share: float = strawberry.field(description=SHARE)
    scores: ScoreSummary | None = scores_field()
    #: where its scores are read: its node, with its siblings under the subtree's root
    place: strawberry.Private[Place | None] = None

    @strawberry.field(description="coveredConcepts / concepts (0 when there are no concepts).")
    def concept_coverage(self) -> float:
        return self.covered_concepts / self.counts.concepts if self.counts.concepts else 0.0

    @classmethod
    def of(cls, t: StoreTreeNode, root: StoreTreeNode | None = None) -> TreeNode:
        top = root or t
        return cls(
            node=TaxonomyNode.of(t.node, t.counts) if t.node else None,
            path=t.path,
            counts=Counts.of(t.counts),
            children=[cls.of(c, top) for c in t.children],
            covered_concepts=t.covered_concepts,
            place=Place(t.node, top.node, grouped=root is not None),
            **figures(t.combination_space, t.combinations_used),
        )
