"""The taxonomy: paths, children and parents, scopes, subjects' names and paths."""

from __future__ import annotations

from ..driver import Dialect
from ..model import (
    ANSWERS,
    CHILD_REL,
    FROM,
    HIERARCHY,
    INSTRUCTION,
    RESPONSE,
    SESSION,
    NodeKind,
)
from .base import approved, chain, each_id, scope_head


def resolve_path(d: Dialect, depth: int) -> str:
    """Walk names from a Field down `depth` levels; returns each node on the way."""
    pattern = chain(d, 0, depth - 1)
    where = " AND ".join(f"n{lv}.key = $k{lv}" for lv in range(depth))
    ret = ", ".join(f"n{lv}" for lv in range(depth))
    return f"MATCH {pattern} WHERE {where} RETURN {ret}"


def _names_and_states(levels: range) -> str:
    return ", ".join(f"n{lv}.name AS name{lv}, n{lv}.status AS status{lv}" for lv in levels)


def paths_of_many(d: Dialect, level: int, *, each: bool = True) -> str:
    """Every chain from a Field down to each node of $ids at `level` (several for a shared
    subject), one row per chain: the names and review states on the way, the node's own last,
    and the id of its `parent` on that chain. Without `each`, the chains of the one node $id
    (an index lookup on every engine, where an UNWIND makes the embedded engine join a scan
    of the level)."""
    head, where = scope_head(level, each)
    node = "x" if each else "$id"
    parent = f"n{level - 1}.id AS parent, " if level else ""
    return (
        f"{head}MATCH {chain(d, 0, level)} WHERE {where[0]} "
        f"RETURN {node} AS id, {parent}{_names_and_states(range(level + 1))}"
    )


def children_at_paths(d: Dialect, depth: int) -> str:
    """For each row of $rows (its `path`, and the name keys k0.. of the nodes on it), the
    names and review states on that path and, a row each, the children of its last node
    (c: null when it has none; no c at all for a Concept). resolve_path's walk, batched."""
    where = " AND ".join(f"n{lv}.key = r.k{lv}" for lv in range(depth))
    ret = _names_and_states(range(depth))
    rel = CHILD_REL.get(HIERARCHY[depth - 1].label)
    children = ""
    if rel is not None:
        children = f" OPTIONAL MATCH (n{depth - 1})-[:{d.q(rel.type)}]->(c:{d.q(rel.dst.label)})"
        ret += ", c"
    return (
        f"UNWIND $rows AS r MATCH {chain(d, 0, depth - 1)} WHERE {where}{children} "
        f"RETURN r.path AS path, {ret}"
    )


def children(d: Dialect, parent: NodeKind) -> str:
    rel = CHILD_REL[parent.label]
    return (
        f"MATCH (p:{d.q(parent.label)} {{id: $id}})-[:{d.q(rel.type)}]->"
        f"(c:{d.q(rel.dst.label)}) RETURN c"
    )


def roots(d: Dialect) -> str:
    return f"MATCH (c:{d.q(HIERARCHY[0].label)}) RETURN c"


def parents(d: Dialect, kind: NodeKind) -> str:
    rel = next(r for r in CHILD_REL.values() if r.dst is kind)
    return (
        f"MATCH (p:{d.q(rel.src.label)})-[:{d.q(rel.type)}]->"
        f"(c:{d.q(kind.label)} {{id: $id}}) RETURN p"
    )


def descendant_ids(d: Dialect, top: int, bottom: int) -> str:
    """Ids at level `bottom` under the node $id at level `top` (all of them, any status)."""
    return f"MATCH {chain(d, top, bottom)} WHERE n{top}.id = $id RETURN DISTINCT n{bottom}.id AS id"


def other_parent_ids(d: Dialect, kind: NodeKind) -> str:
    """For shared nodes among $ids: those that keep a parent outside $parents."""
    rel = next(r for r in CHILD_REL.values() if r.dst is kind)
    return (
        f"UNWIND $ids AS x MATCH (p:{d.q(rel.src.label)})-[:{d.q(rel.type)}]->"
        f"(c:{d.q(kind.label)} {{id: x}}) WHERE NOT p.id IN $parents RETURN DISTINCT c.id AS id"
    )


def instruction_ids_from_sessions(d: Dialect) -> str:
    return (
        f"UNWIND $ids AS x MATCH (i:{d.q(INSTRUCTION.label)})-[:{d.q(FROM.type)}]->"
        f"(s:{d.q(SESSION.label)} {{id: x}}) RETURN DISTINCT i.id AS id"
    )


def response_ids_for(d: Dialect) -> str:
    return (
        f"UNWIND $ids AS x MATCH (r:{d.q(RESPONSE.label)})-[:{d.q(ANSWERS.type)}]->"
        f"(i:{d.q(INSTRUCTION.label)} {{id: x}}) RETURN DISTINCT r.id AS id"
    )


def children_of_many(d: Dialect, parent: NodeKind, one: bool = False) -> str:
    """The children of each parent of $ids (or of $id), with its id as `parent`."""
    rel = CHILD_REL[parent.label]
    head, x = each_id(one)
    return (
        f"{head}MATCH (p:{d.q(parent.label)} {{id: {x}}})-[:{d.q(rel.type)}]->"
        f"(c:{d.q(rel.dst.label)}) RETURN {x} AS parent, c"
    )


def scope_ids(d: Dialect, top: int | None, level: int) -> str:
    """Ids at `level` reachable from the scope $id (or any Field) through approved nodes only."""
    start = 0 if top is None else top
    where = [approved(start, level)]
    if top is not None:
        where.append(f"n{top}.id = $id")
    return (
        f"MATCH {chain(d, start, level)} WHERE {' AND '.join(where)} "
        f"RETURN DISTINCT n{level}.id AS id"
    )


def subject_names(d: Dialect) -> str:
    rel = CHILD_REL[HIERARCHY[2].label]
    return (
        f"MATCH (p:{d.q(HIERARCHY[2].label)} {{id: $id}})-[:{d.q(rel.type)}]->"
        f"(c:{d.q(HIERARCHY[3].label)}) RETURN c.name AS name"
    )


def discipline_paths(d: Dialect) -> str:
    """The approved Field/SubField/Discipline names above each subject of $ids."""
    return (
        f"UNWIND $ids AS x MATCH {chain(d, 0, 3)} WHERE n3.id = x AND {approved(0, 2)} "
        "RETURN x AS id, n0.name AS f, n1.name AS s, n2.name AS d"
    )
