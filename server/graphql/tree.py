"""A subtree with counts at every node, as Store.tree builds it in a few grouped queries."""

from __future__ import annotations

import strawberry

from graph.store import TreeNode as StoreTreeNode

from .node import Counts, TaxonomyNode


@strawberry.type(description="A node of a subtree (node is null for the root above all fields).")
class TreeNode:
    node: TaxonomyNode | None
    path: str
    counts: Counts
    children: list[TreeNode]

    @classmethod
    def of(cls, t: StoreTreeNode) -> TreeNode:
        return cls(
            node=TaxonomyNode.of(t.node, t.counts) if t.node else None,
            path=t.path,
            counts=Counts.of(t.counts),
            children=[cls.of(c) for c in t.children],
        )
