"""What the CLI prints, as plain data built either from the store or from the API's answers.

The CLI runs on the store itself, or through a running server's GraphQL API when the server
holds the store (server/remote.py). Both build these views, and the CLI prints a view one
way whichever built it, so a command prints the same either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from graph import combinations
from graph.model import HIERARCHY
from graph.records import COUNT_NAMES, Node, TreeNode

#: A node's properties `glan show` prints, in this order (those set): what the API exposes
#: too. Bookkeeping the store keeps on nodes (name keys, rollups) is left out.
SHOWN = (
    "id",
    "name",
    "status",
    "source",
    "description",
    "created_at",
    "updated_at",
    "level",
    "subtopics",
    "position",
    "model",
    "prompt_name",
    "prompt_version",
    "job_id",
    "unit_id",
)

#: The order `delete` lists what it removed: generated data first, then the hierarchy from
#: the bottom up (as the store deletes them).
REMOVED_ORDER = ("Response", "Instruction", *(k.label for k in reversed(HIERARCHY)))


def counts_below(level: int | None, counts: Mapping[str, int]) -> dict[str, int]:
    """The counts that mean something below a node at `level` (None: above all fields)."""
    first = 0 if level is None else level + 1
    return {name: int(counts.get(name) or 0) for name in COUNT_NAMES[first:]}


def level_of(kind: str) -> int:
    return [k.label for k in HIERARCHY].index(kind)


@dataclass
class NodeView:
    id: str
    kind: str  # a label: Field, SubField, ...
    name: str
    status: str | None
    hidden: bool = False
    path: str | None = None

    @classmethod
    def of(cls, node: Node) -> NodeView:
        return cls(node.id, node.kind.label, node.name, node.status, node.hidden, node.path)


@dataclass
class TreeView:
    """A subtree with counts: the root above all fields has no node."""

    path: str
    node: NodeView | None
    counts: dict[str, int] = field(default_factory=dict)
    children: list[TreeView] = field(default_factory=list)
    #: with `tree --combinations`: the node's combination space (None past int64), its
    #: log10, the combinations used in it and the share, as the API gives them
    combinations: dict[str, Any] | None = None

    @classmethod
    def of(cls, t: TreeNode, *, combinations: bool = False) -> TreeView:
        return cls(
            t.path,
            NodeView.of(t.node) if t.node else None,
            dict(t.counts),
            [cls.of(c, combinations=combinations) for c in t.children],
            combination_view(t.combination_space, t.combinations_used) if combinations else None,
        )


def combination_view(space: int, used: int) -> dict[str, Any]:
    """A space and the combinations used in it, as the API gives them
    (server/graphql/combinations.py): the space only while it fits int64."""
    return {
        "space": space if space <= combinations.INT64_MAX else None,
        "space_log10": combinations.log10(space),
        "used": used,
        "share": combinations.share(used, space),
    }


def show_info(
    kind: str,
    props: Mapping[str, Any],
    paths: list[str],
    hidden: bool,
    counts: Mapping[str, int],
) -> dict[str, Any]:
    """What `glan show` prints for a node."""
    return {
        "kind": kind,
        **{k: props[k] for k in SHOWN if props.get(k) not in (None, "", [])},
        "paths": paths,
        "hidden": hidden,
        "counts": counts_below(level_of(kind), counts),
    }


def removed_view(removed: Mapping[str, int]) -> dict[str, int]:
    """What a delete removed, by label in REMOVED_ORDER ({"unlinked": 1} for a shared
    subject that was only unlinked)."""
    if removed.get("unlinked"):
        return {"unlinked": 1}
    return {k: int(removed[k]) for k in REMOVED_ORDER if k in removed}
