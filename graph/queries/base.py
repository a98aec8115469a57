"""What the other query modules build with: walks from ids, chains down the taxonomy,
conditions (visible, approved, covered) and ranges of node references.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from ..driver import Dialect
from ..model import (
    CHILD_REL,
    COVERS,
    HIERARCHY,
    REACHES,
    NodeKind,
)


def each_id(one: bool) -> tuple[str, str]:
    """The head of a query over the ids $ids, or over the one id $id, and how its body names
    the id: `UNWIND $ids AS x ... x`, or `... $id`, which engines look up by key."""
    return ("", "$id") if one else ("UNWIND $ids AS x ", "x")


class Walk(NamedTuple):
    """How a query walks out from nodes given by id (walk_from_ids)."""

    #: what comes before the walk's MATCH
    head: str
    #: the walk's first node, as its MATCH names it
    start: str
    #: the start's id, as the rest of the query names it
    id: str
    #: what follows the walk's MATCH and its WHERE (Dialect.join_order)
    order: str


def walk_from_ids(d: Dialect, label: str, var: str, one: bool, order: str) -> Walk:
    """A walk out from the nodes $ids (or the one node $id) of `label`, as `var`; `order`
    is the join order of the walk's pattern that a list of ids takes (Dialect.join_order).

    One id stays in the walk's MATCH (`{id: $id}`), which engines look up by key and walk
    on from. A list is looked up id by id first (UNWIND, then a match on the key) and
    handed to the walk in a WITH: with `{id: x}` inside the walk, the embedded engine
    joins the list with everything the walk reaches from the whole table instead."""
    if one:
        return Walk("", f"({var}:{d.q(label)} {{id: $id}})", "$id", "")
    head = f"UNWIND $ids AS x MATCH ({var}:{d.q(label)}) WHERE {var}.id = x WITH {var}, x "
    return Walk(head, f"({var})", "x", d.join_order(order))


def props_map(d: Dialect, props: Sequence[str], var: str = "r") -> str:
    return "{" + ", ".join(f"{d.q(p)}: {var}.{d.q(p)}" for p in props) + "}"


def chain(d: Dialect, top: int, bottom: int, var: str = "n") -> str:
    """The pattern from hierarchy level `top` down to `bottom` (0 = Field), vars n<level>."""
    parts = [f"({var}{top}:{d.q(HIERARCHY[top].label)})"]
    for level in range(top + 1, bottom + 1):
        rel = CHILD_REL[HIERARCHY[level - 1].label]
        parts.append(f"-[:{d.q(rel.type)}]->({var}{level}:{d.q(HIERARCHY[level].label)})")
    return "".join(parts)


def visible(top: int, bottom: int, var: str = "n") -> str:
    """Condition: no node of the chain from `top` to `bottom` is rejected."""
    return " AND ".join(f"{var}{lv}.status <> $rejected" for lv in range(top, bottom + 1))


def approved(top: int, bottom: int, var: str = "n") -> str:
    """Condition: every node of the chain is approved (proposed nodes wait for review)."""
    return " AND ".join(f"{var}{lv}.status = $approved" for lv in range(top, bottom + 1))


def subject_range(d: Dialect, var: str) -> list[str]:
    """Conditions of a read over every node of a kind (every subject, most often) where the
    engine has node references: the node `var` is one of those from reference $lo up to $hi
    (Nodes.ranges gives them).

    The embedded engine holds a walk's groups and distinct values in its page cache until
    the walk ends: over every subject of a GLAN-scale store (1.9M concepts, 1M pairs) each
    subject rollup needed more than a 512 MB cache. A range of 2,048 subjects at a time
    peaks at about 300 MB of process memory, and the ranges together take half the time of
    the whole walk."""
    ref = d.node_ref(var)
    return [] if ref is None else [f"{ref} >= $lo", f"{ref} < $hi"]


def refs_end(d: Dialect, kind: NodeKind) -> str | None:
    """One past the largest reference of a node of `kind`, as `n` (None where the engine
    has none)."""
    ref = d.node_ref("s")
    if ref is None:
        return None
    return f"MATCH (s:{d.q(kind.label)}) RETURN max({ref}) + 1 AS n"


def node_refs(d: Dialect, kind: NodeKind) -> str | None:
    """The reference (`ref`) of each node of `kind` among $ids that exists, with its `id`,
    looked up by key (None where the engine has no references)."""
    ref = d.node_ref("s")
    if ref is None:
        return None
    return (
        f"UNWIND $ids AS x MATCH (s:{d.q(kind.label)}) WHERE s.id = x "
        f"RETURN s.id AS id, {ref} AS ref"
    )


def of_subjects(d: Dialect, one: bool, every: bool, *conditions: str) -> tuple[str, str]:
    """The head of a walk from each subject n3 of $ids (or from $id), and its WHERE clause:
    n3 is that subject, and the conditions hold. For a walk from every subject, no head,
    the conditions and the subject range (subject_range)."""
    head, x = ("", "") if every else each_id(one)
    where = [*conditions, *subject_range(d, "n3")] if every else [f"n3.id = {x}", *conditions]
    return head, f"WHERE {' AND '.join(where)} " if where else ""


def scoped_chain(
    d: Dialect, top: int | None, group: int | None, bottom: int
) -> tuple[str, str, str]:
    """Pattern, WHERE clause and grouping key for a visible chain under the scope."""
    start = 0 if top is None else top
    bottom = max(bottom, group if group is not None else start)
    where = [visible(start, bottom)]
    if top is not None:
        where.append(f"n{top}.id = $id")
    key = f"n{group}.id AS id, " if group is not None else ""
    return chain(d, start, bottom), " AND ".join(where), key


def is_covered(d: Dialect, var: str) -> str:
    """Condition: an instruction covers the concept `var`, or a follow-up turn reaches it
    (subqueries: counting the covers of every concept costs the embedded engine about twice
    as much; only instructions have COVERS edges and only turns REACHES edges, so the far
    end needs no label, which would make it read their table)."""
    return (
        f"(EXISTS {{ MATCH ({var})<-[:{d.q(COVERS.type)}]-() }} "
        f"OR EXISTS {{ MATCH ({var})<-[:{d.q(REACHES.type)}]-() }})"
    )


def each_subject(d: Dialect, one: bool, every: bool) -> tuple[str, str, list[str]]:
    """The head of a walk from each subject s of $ids (or from $id), the property map that
    finds it, and conditions on s: for a walk from every subject, only the subject range
    (subject_range)."""
    if every:
        return "", "", subject_range(d, "s")
    head, x = each_id(one)
    return head, f" {{id: {x}}}", []


def columns_of(d: Dialect, kind: NodeKind, var: str) -> str:
    """Every property of `var`, a node of `kind`, as a column of its own name."""
    return ", ".join(f"{var}.{d.q(p)} AS {d.q(p)}" for p in kind.prop_names)


def instruction_range(d: Dialect) -> tuple[str, str]:
    """The engine's reference of instruction `i`, and the condition that it lies from $lo
    up to $hi (subject_range): reads of a part of the instruction table, for engines with
    node references."""
    ref = d.node_ref("i")
    if ref is None:
        raise ValueError("this engine has no node references to read a range of")
    return ref, " AND ".join(subject_range(d, "i"))


def scope_head(top: int | None, each: bool) -> tuple[str, list[str]]:
    """What binds the scope: the node $id, or with `each` every node of $ids (an UNWIND)."""
    if top is None:
        return "", []
    if each:
        return "UNWIND $ids AS x ", [f"n{top}.id = x"]
    return "", [f"n{top}.id = $id"]
