"""Every Cypher text glan sends, built per dialect. Nothing else in the project writes Cypher.

Labels, relationship types and property names come from graph/model.py and are quoted;
every value is a `$parameter`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from .combinations import LIMB, MAX_CONCEPTS
from .driver import Dialect
from .filters import InstructionFilter
from .model import (
    ANSWERS,
    BATCH,
    CHILD_REL,
    CONTINUES,
    COVERS,
    FROM,
    HIERARCHY,
    INSTRUCTION,
    JOB,
    REACHES,
    RESPONSE,
    ROLLUPS,
    SESSION,
    SUBJECT,
    TURN,
    UNIT,
    NodeKind,
    RelKind,
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


def _props_map(d: Dialect, props: Sequence[str], var: str = "r") -> str:
    return "{" + ", ".join(f"{d.q(p)}: {var}.{d.q(p)}" for p in props) + "}"


def create_nodes(d: Dialect, kind: NodeKind, props: Sequence[str]) -> str:
    return f"UNWIND $rows AS r CREATE (n:{d.q(kind.label)} {_props_map(d, props)})"


def update_nodes(d: Dialect, kind: NodeKind, props: Sequence[str]) -> str:
    sets = ", ".join(f"n.{d.q(p)} = r.{d.q(p)}" for p in props if p != "id")
    return f"UNWIND $rows AS r MATCH (n:{d.q(kind.label)} {{id: r.id}}) SET {sets}"


def existing_ids(d: Dialect, kind: NodeKind) -> str:
    return f"UNWIND $ids AS x MATCH (n:{d.q(kind.label)} {{id: x}}) RETURN n.id AS id"


def get_node(d: Dialect, kind: NodeKind) -> str:
    return f"MATCH (n:{d.q(kind.label)} {{id: $id}}) RETURN n"


def get_nodes(d: Dialect, kind: NodeKind) -> str:
    return f"UNWIND $ids AS x MATCH (n:{d.q(kind.label)} {{id: x}}) RETURN n"


def existing_edges(d: Dialect, rel: RelKind, one: bool = False) -> str:
    """Every `rel` edge leaving the sources $ids (or $id). Reading a source's few edges is many
    times faster on the embedded engine than matching both ends of each pair."""
    w = walk_from_ids(d, rel.src.label, "a", one, "a JOIN (e JOIN b)")
    return (
        f"{w.head}MATCH {w.start}-[e:{d.q(rel.type)}]->(b:{d.q(rel.dst.label)}){w.order} "
        "RETURN a.id AS src, b.id AS dst"
    )


def create_edges(d: Dialect, rel: RelKind) -> str:
    # Two MATCH clauses, not one with a comma: the embedded engine then looks both ends
    # up by primary key instead of joining scans (about 100x faster).
    return (
        f"UNWIND $rows AS r MATCH (a:{d.q(rel.src.label)} {{id: r.src}}) "
        f"MATCH (b:{d.q(rel.dst.label)} {{id: r.dst}}) CREATE (a)-[:{d.q(rel.type)}]->(b)"
    )


def copy_from(d: Dialect, label: str) -> str:
    """Bulk load of a node or relationship table from a table passed as $rows."""
    return f"COPY {d.q(label)} FROM $rows"


def delete_edge(d: Dialect, rel: RelKind) -> str:
    return (
        f"MATCH (a:{d.q(rel.src.label)} {{id: $src}})-[e:{d.q(rel.type)}]->"
        f"(b:{d.q(rel.dst.label)} {{id: $dst}}) DELETE e"
    )


def delete_nodes(d: Dialect, kind: NodeKind) -> str:
    return f"UNWIND $ids AS x MATCH (n:{d.q(kind.label)} {{id: x}}) DETACH DELETE n"


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
    head, where = _scope_head(level, each)
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


def set_status(d: Dialect, kind: NodeKind) -> str:
    return (
        f"MATCH (n:{d.q(kind.label)} {{id: $id}}) "
        "SET n.status = $status, n.updated_at = $now RETURN n.id AS id"
    )


def count_label(d: Dialect, kind: NodeKind) -> str:
    return f"MATCH (n:{d.q(kind.label)}) RETURN count(n) AS n"


def linked_from(d: Dialect, rel: RelKind) -> str:
    """For each source id in $ids, the ids its `rel` edges point to.

    The source is matched first and carried over, as in linked_to: matched in one pattern,
    the embedded engine hashes the targets' whole table, which for the concepts of 500
    instructions (an API page) at GLAN scale needed more than a 512 MB page cache."""
    return (
        f"UNWIND $ids AS x MATCH (a:{d.q(rel.src.label)} {{id: x}}) WITH a, x "
        f"MATCH (a)-[:{d.q(rel.type)}]->(b:{d.q(rel.dst.label)}) RETURN x AS src, b.id AS dst"
    )


def linked_from_names(d: Dialect, rel: RelKind, one: bool = False) -> str:
    """For each source id in $ids, the id, name and position of what its `rel` edges point to
    (for targets that have a name and position: sessions, concepts)."""
    head, x = each_id(one)
    return (
        f"{head}MATCH (a:{d.q(rel.src.label)} {{id: {x}}})-[:{d.q(rel.type)}]->"
        f"(b:{d.q(rel.dst.label)}) RETURN {x} AS src, b.id AS dst, b.name AS name, "
        "b.position AS position"
    )


def linked_refs(d: Dialect, rel: RelKind, ref: str, one: bool = False) -> str:
    """For each source id in $ids, the engine's references (Dialect.node_ref, given as
    `ref` over `b`) of what its `rel` edges point to."""
    head, x = each_id(one)
    return (
        f"{head}MATCH (a:{d.q(rel.src.label)} {{id: {x}}})-[:{d.q(rel.type)}]->"
        f"(b:{d.q(rel.dst.label)}) RETURN {x} AS src, {ref} AS ref"
    )


def names_by_ref(d: Dialect, kind: NodeKind, ref: str) -> str:
    """Every node of a kind: its reference (`ref` over `n`), id, name and position."""
    return (
        f"MATCH (n:{d.q(kind.label)}) "
        f"RETURN {ref} AS ref, n.id AS id, n.name AS name, n.position AS position"
    )


def linked_to(d: Dialect, rel: RelKind) -> str:
    """For each target id in $ids, the ids of the nodes whose `rel` edges point at it.

    The target is matched first and carried over: matched in one pattern, the embedded
    engine hashes the sources' whole table (all the answers of the store) per read."""
    return (
        f"UNWIND $ids AS x MATCH (b:{d.q(rel.dst.label)} {{id: x}}) WITH b, x "
        f"MATCH (a:{d.q(rel.src.label)})-[:{d.q(rel.type)}]->(b) RETURN x AS dst, a.id AS src"
    )


# ---------------------------------------------------------------------- generation


def approved(top: int, bottom: int, var: str = "n") -> str:
    """Condition: every node of the chain is approved (proposed nodes wait for review)."""
    return " AND ".join(f"{var}{lv}.status = $approved" for lv in range(top, bottom + 1))


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


def _of_subjects(d: Dialect, one: bool, every: bool, *conditions: str) -> tuple[str, str]:
    """The head of a walk from each subject n3 of $ids (or from $id), and its WHERE clause:
    n3 is that subject, and the conditions hold. For a walk from every subject, no head,
    the conditions and the subject range (subject_range)."""
    head, x = ("", "") if every else each_id(one)
    where = [*conditions, *subject_range(d, "n3")] if every else [f"n3.id = {x}", *conditions]
    return head, f"WHERE {' AND '.join(where)} " if where else ""


def subject_concept_stats(d: Dialect, one: bool = False, every: bool = False) -> str:
    """Per subject of $ids (or every subject): approved concepts, and how many an
    instruction already covers."""
    head, where = _of_subjects(d, one, every, approved(4, 5))
    # Concepts are grouped by the engine's integer reference where it has one: the
    # embedded engine grouping the 1.9M concepts of a GLAN-scale store by their string ids
    # peaked at 1.0 GB and needed more than a 512 MB cache; by reference, 0.74 GB.
    concept = d.node_ref("n5") or "n5.id"
    return (
        f"{head}MATCH {chain(d, 3, 5)} {where}"
        f"OPTIONAL MATCH (i:{d.q(INSTRUCTION.label)})-[:{d.q(COVERS.type)}]->(n5) "
        f"WITH n3.id AS x, {concept} AS c, count(i) AS k "
        "RETURN x AS id, count(c) AS concepts, sum(CASE WHEN k > 0 THEN 1 ELSE 0 END) AS covered"
    )


def syllabus_sessions(d: Dialect, one: bool = False) -> str:
    """The approved sessions of the subjects $ids."""
    head, x = each_id(one)
    return (
        f"{head}MATCH {chain(d, 3, 4)} WHERE n3.id = {x} AND {approved(4, 4)} "
        "RETURN n3.id AS subject, n4.id AS session, n4.name AS title, "
        "n4.description AS description, n4.position AS position"
    )


def _approved_concepts(d: Dialect, one: bool, returns: str, every: bool = False) -> str:
    """`returns` of the approved concepts (n5) of the approved sessions (n4) of the
    subjects (n3) $ids, or of every subject."""
    head, where = _of_subjects(d, one, every, approved(4, 5))
    return f"{head}MATCH {chain(d, 3, 5)} {where}RETURN {returns}"


def syllabus_concepts(d: Dialect, one: bool = False) -> str:
    """The approved concepts of the approved sessions of the subjects $ids."""
    return _approved_concepts(
        d, one, "n4.id AS session, n5.id AS concept, n5.name AS name, n5.position AS position"
    )


def syllabus_outline(d: Dialect, one: bool = False, every: bool = False) -> str:
    """syllabus_concepts by id and position only, with their subject: what sampling needs
    of a syllabus, without its text. `every`: of all subjects, not those of $ids."""
    return _approved_concepts(
        d,
        one,
        "n3.id AS subject, n4.id AS session, n4.position AS session_position, "
        "n5.id AS concept, n5.position AS position",
        every,
    )


def syllabus_coverage(d: Dialect, one: bool = False, every: bool = False) -> str:
    """How many instructions cover each covered concept of the subjects $ids, or of all
    subjects (a separate read: counting in the read of the concepts groups by every column
    of every row)."""
    head, where = _of_subjects(d, one, every)
    return (
        f"{head}MATCH {chain(d, 3, 5)}<-[:{d.q(COVERS.type)}]-(i:{d.q(INSTRUCTION.label)}) "
        f"{where}RETURN n5.id AS concept, count(i) AS covered"
    )


def combo_keys_in_range(d: Dialect) -> str:
    """The combination of each instruction from reference $lo up to $hi (Nodes.ranges), as
    they come: what a process that alone writes keeps of them (Rollups._maybe_asked)."""
    where = " AND ".join(subject_range(d, "i"))
    return (
        f"MATCH (i:{d.q(INSTRUCTION.label)}) {f'WHERE {where} ' if where else ''}"
        "RETURN i.combo_key AS key"
    )


def combo_keys_of_subjects(d: Dialect, every: bool = False) -> str:
    """The combinations asked about in the subjects $ids, or those of every instruction with
    its subject: of the instructions from reference $lo up to $hi where the engine has node
    references (Nodes.ranges), and as they come (the reader drops repeats). Made distinct
    over every instruction at once, this read was refused by a 512 MB page cache at 3M
    pairs."""
    if every:
        where = " AND ".join(subject_range(d, "i"))
        return (
            f"MATCH (i:{d.q(INSTRUCTION.label)}) {f'WHERE {where} ' if where else ''}"
            "RETURN i.subject_id AS subject, i.combo_key AS key"
        )
    return (
        f"UNWIND $ids AS x MATCH (i:{d.q(INSTRUCTION.label)}) WHERE i.subject_id = x "
        "RETURN DISTINCT i.combo_key AS key"
    )


def job_units(d: Dialect) -> str:
    return f"MATCH (u:{d.q(UNIT.label)}) WHERE u.job_id = $job RETURN u"


def dropped_notes(d: Dialect) -> str:
    """The units whose output the validators left items out of, with what they left out."""
    return (
        f"MATCH (u:{d.q(UNIT.label)}) WHERE u.{d.q('dropped')} IS NOT NULL "
        f"RETURN u.job_id AS job, u.{d.q('dropped')} AS dropped"
    )


def unit_status(d: Dialect) -> str:
    return (
        f"UNWIND $ids AS x MATCH (u:{d.q(UNIT.label)} {{id: x}}) "
        "RETURN u.id AS id, u.status AS status"
    )


def unit_jobs(d: Dialect) -> str:
    """The job of each unit among $ids that exists."""
    return (
        f"UNWIND $ids AS x MATCH (u:{d.q(UNIT.label)} {{id: x}}) RETURN u.id AS id, u.job_id AS job"
    )


def instructions_in_scope(d: Dialect, top: int | None) -> str:
    """Instructions FROM approved sessions under the scope."""
    pattern, where = _instruction_scope(d, top, InstructionFilter())
    return f"MATCH {pattern} WHERE {where} RETURN DISTINCT i.id AS id"


# ---------------------------------------------------------------------- instruction listings

_SESSION = HIERARCHY.index(SESSION)
#: filter fields compared for equality with a parameter of the same name
_EQUAL = ("strategy", "model", "job_id")
#: filter fields that test whether a text flag is set (not null, not empty)
_FLAGS = ("duplicate", "contaminated")


def instruction_conditions(d: Dialect, flt: InstructionFilter, var: str = "i") -> list[str]:
    """The filter as conditions on the instruction `var`; instruction_params gives their
    values. A flag counts as set when not null and not empty, as Python's truth does."""
    conds = [f"{var}.{d.q(name)} = ${name}" for name in _EQUAL if getattr(flt, name) is not None]
    for name in _FLAGS:
        flag = getattr(flt, name)
        if flag is not None:
            conds.append(f"coalesce({var}.{d.q(name)}, $blank) {'<>' if flag else '='} $blank")
    if flt.answered is not None:
        exists = f"EXISTS {{ MATCH (:{d.q(RESPONSE.label)})-[:{d.q(ANSWERS.type)}]->({var}) }}"
        conds.append(exists if flt.answered else f"NOT {exists}")
    if flt.min_score is not None:  # a response the judge scored at least this
        conds.append(
            f"EXISTS {{ MATCH (js:{d.q(RESPONSE.label)})-[:{d.q(ANSWERS.type)}]->({var}) "
            f"WHERE js.{d.q('score')} >= $min_score }}"
        )
    return conds


def instruction_params(flt: InstructionFilter) -> dict[str, Any]:
    """The parameters instruction_conditions refers to."""
    params: dict[str, Any] = {n: getattr(flt, n) for n in _EQUAL if getattr(flt, n) is not None}
    if any(getattr(flt, n) is not None for n in _FLAGS):
        params["blank"] = ""
    if flt.min_score is not None:
        params["min_score"] = float(flt.min_score)
    return params


def _instruction_scope(d: Dialect, top: int | None, flt: InstructionFilter) -> tuple[str, str]:
    """Pattern and WHERE clause of the instructions (var i) FROM approved sessions under the
    scope $id (top: its level; None: every Field) that the filter keeps. An instruction
    from two sessions matches twice: callers take DISTINCT i."""
    start = 0 if top is None else top
    where = [approved(start, _SESSION)]
    if top is not None:
        where.append(f"n{top}.id = $id")
    where += instruction_conditions(d, flt)
    pattern = (
        f"{chain(d, start, _SESSION)}, "
        f"(i:{d.q(INSTRUCTION.label)})-[:{d.q(FROM.type)}]->(n{_SESSION})"
    )
    return pattern, " AND ".join(where)


def instructions_page(d: Dialect, top: int | None, flt: InstructionFilter, *, after: bool) -> str:
    """Up to $limit instructions under the scope in id order, after the id $after if given.

    Only ids are sorted; the page's nodes are then read by id (about 2x faster on the
    embedded engine than sorting whole nodes), and sorted again, as a MATCH keeps no order.
    """
    pattern, where = _instruction_scope(d, top, flt)
    walk = f"MATCH {pattern} WHERE {where} WITH DISTINCT i.id AS id "
    if after:
        # on the distinct ids, not in the walk: as a condition of the walk it made the
        # embedded engine join the instructions' whole table, which at GLAN scale took 1.3 GB
        # (more than the 512 MB page cache) and twice the time of the first page
        walk += "WHERE id > $after WITH id "
    return (
        f"{walk}ORDER BY id LIMIT $limit "
        f"MATCH (x:{d.q(INSTRUCTION.label)} {{id: id}}) RETURN x ORDER BY x.id"
    )


def count_instructions(d: Dialect, top: int | None, flt: InstructionFilter) -> str:
    pattern, where = _instruction_scope(d, top, flt)
    return f"MATCH {pattern} WHERE {where} RETURN count(DISTINCT i.id) AS n"


def contamination_marks(d: Dialect, top: int | None) -> str:
    """The contamination record and flag of the instructions under the scope that have
    either, grouped: each distinct (record, flag) with how many instructions carry it."""
    pattern, where = _instruction_scope(d, top, InstructionFilter())
    marked = " OR ".join(
        f"coalesce(i.{d.q(name)}, $blank) <> $blank" for name in ("contamination", "contaminated")
    )
    return (
        f"MATCH {pattern} WHERE {where} AND ({marked}) "
        f"WITH DISTINCT i.id AS id, i.{d.q('contamination')} AS record, "
        f"i.{d.q('contaminated')} AS flag RETURN record, flag, count(*) AS n"
    )


def responses_in_scope(d: Dialect, top: int | None) -> str:
    """The responses of the instructions under the scope, each with its instruction."""
    pattern, where = _instruction_scope(d, top, InstructionFilter())
    return (
        f"MATCH {pattern}, (r:{d.q(RESPONSE.label)})-[:{d.q(ANSWERS.type)}]->(i) "
        f"WHERE {where} RETURN DISTINCT r.id AS id, i.id AS instruction"
    )


def score_counts(d: Dialect, top: int | None, group: int | None) -> str:
    """How many judged responses under the scope have each overall score: rows of `score`
    and `n`; with a group level (the scope's or below, down to sessions), per node of that
    level (`id`). A response counts once per group, however many of its sessions it is in."""
    pattern, where = _instruction_scope(d, top, InstructionFilter())
    key = f"n{group}.id AS gid, " if group is not None else ""
    out = "gid AS id, " if group is not None else ""
    return (
        f"MATCH {pattern}, (r:{d.q(RESPONSE.label)})-[:{d.q(ANSWERS.type)}]->(i) "
        f"WHERE {where} AND r.{d.q('score')} IS NOT NULL "
        f"WITH DISTINCT {key}r.id AS rid, r.{d.q('score')} AS score "
        f"RETURN {out}score, count(*) AS n"
    )


def pick_instructions(d: Dialect, top: int | None) -> str:
    """The instructions at the 0-based positions $offsets of the scope's ids in ascending
    order, each with its position `o`. The ids are gathered and sorted inside the database,
    so only the picked nodes travel; a position past the end (the scope shrank since it was
    counted) picks nothing."""
    pattern, where = _instruction_scope(d, top, InstructionFilter())
    return (
        f"MATCH {pattern} WHERE {where} WITH DISTINCT i.id AS id "
        f"{d.sorted_list('id', 'ids')} "
        "UNWIND $offsets AS o WITH o, ids WHERE o < size(ids) "
        f"WITH o, {d.list_item('ids', 'o')} AS pick "
        f"MATCH (x:{d.q(INSTRUCTION.label)} {{id: pick}}) RETURN o, x"
    )


def list_jobs(d: Dialect) -> str:
    return f"MATCH (j:{d.q(JOB.label)}) RETURN j ORDER BY j.created_at DESC"


def job_batches(d: Dialect, *, every: bool = False) -> str:
    """The batches of job $job (with `every`, of all jobs), by job then in submission order."""
    where = "" if every else "WHERE b.job_id = $job "
    return f"MATCH (b:{d.q(BATCH.label)}) {where}RETURN b ORDER BY b.job_id, b.seq"


# ---------------------------------------------------------------------- coverage


def _scoped(d: Dialect, top: int | None, group: int | None, bottom: int) -> tuple[str, str, str]:
    """Pattern, WHERE clause and grouping key for a visible chain under the scope."""
    start = 0 if top is None else top
    bottom = max(bottom, group if group is not None else start)
    where = [visible(start, bottom)]
    if top is not None:
        where.append(f"n{top}.id = $id")
    key = f"n{group}.id AS id, " if group is not None else ""
    return chain(d, start, bottom), " AND ".join(where), key


def covered_concepts(d: Dialect, top: int | None, group: int | None) -> str:
    """Visible concepts an instruction covers or a follow-up turn reaches."""
    pattern, where, key = _scoped(d, top, group, 5)
    return (
        f"MATCH {pattern} WHERE {where} AND {_covered(d, 'n5')} "
        f"RETURN {key}count(DISTINCT n5.id) AS n"
    )


def covered_combos(d: Dialect, top: int | None, group: int | None) -> str:
    """Distinct concept combinations asked about under the scope."""
    pattern, where, key = _scoped(d, top, group, 4)
    return (
        f"MATCH {pattern}, (i:{d.q(INSTRUCTION.label)})-[:{d.q(FROM.type)}]->(n4) "
        f"WHERE {where} RETURN {key}count(DISTINCT i.combo_key) AS n"
    )


def childless(d: Dialect, top: int | None, group: int | None, *, level: int) -> str:
    """Visible nodes at `level` with no child yet (subjects without a syllabus, ...)."""
    pattern, where, _ = _scoped(d, top, group, level)
    rel = CHILD_REL[HIERARCHY[level].label]
    grouped, keep = (f"n{group}.id AS id, ", "id, ") if group is not None else ("", "")
    return (
        f"MATCH {pattern} WHERE {where} "
        f"OPTIONAL MATCH (n{level})-[:{d.q(rel.type)}]->(x:{d.q(rel.dst.label)}) "
        f"WITH {grouped}n{level}.id AS node, count(x) AS k WHERE k = 0 "
        f"RETURN {keep}count(DISTINCT node) AS n"
    )


# ---------------------------------------------------------------------- subject rollups


def _rollup_dirty(var: str) -> str:
    return f"{var}.rollup_dirty = coalesce({var}.rollup_dirty, 0) + 1"


def mark_subjects_dirty(d: Dialect) -> str:
    """Say that something below the subjects $ids changed: their rollups are stale."""
    return f"UNWIND $ids AS x MATCH (s:{d.q(SUBJECT.label)} {{id: x}}) SET {_rollup_dirty('s')}"


def _rollup_sets(d: Dialect, var: str, value: str, names: Sequence[str] = ROLLUPS) -> str:
    """SET items giving the rollups `names` of `var` the value `value` builds from each name."""
    return ", ".join(f"{var}.{d.q(r)} = {value.format(r=d.q(r))}" for r in names)


def add_to_rollups(d: Dialect, names: Sequence[str] = ROLLUPS) -> str:
    """Add to the rollups `names` of the subjects `ids` of each group of $groups the group's
    columns of those names: what a write below the subjects changed, in the write's
    transaction. Subjects with the same additions share a group: a batch that touches every
    subject of a GLAN-scale store sends a few hundred groups, not a row per subject (which
    took the embedded engine a second a write).

    A current rollup stays current (its clean stamp moves with its write count); a stale
    one stays stale for `refresh`, and a refresh that read before this write stamps it with
    a count this write has moved past."""
    # each group's list of ids is dropped once unwound: carried on every row, the lists of a
    # batch touching every subject outgrew the embedded engine's 512 MB page cache
    values = ", ".join(f"g.{d.q(r)} AS {r}" for r in names)
    kept = ", ".join(names)
    return (
        f"UNWIND $groups AS g WITH g.ids AS ids, {values} UNWIND ids AS x WITH x, {kept} "
        f"MATCH (s:{d.q(SUBJECT.label)} {{id: x}}) WITH s, {kept}, "
        "coalesce(s.rollup_dirty, 0) AS dirty, coalesce(s.rollup_clean, -1) AS clean "
        f"SET {_rollup_sets(d, 's', 'coalesce(s.{r}, 0) + {r}', names)}, "
        "s.rollup_dirty = dirty + 1, "
        "s.rollup_clean = CASE WHEN clean = dirty THEN dirty + 1 ELSE clean END"
    )


def set_rollups(d: Dialect) -> str:
    """Give each subject `id` of $rows the rollup_* columns of its row, current as of now:
    a rollup recomputed inside the transaction of the write that changed it."""
    return (
        f"UNWIND $rows AS r MATCH (s:{d.q(SUBJECT.label)} {{id: r.id}}) "
        "WITH s, r, coalesce(s.rollup_dirty, 0) + 1 AS stamp "
        f"SET {_rollup_sets(d, 's', 'r.{r}')}, s.rollup_dirty = stamp, s.rollup_clean = stamp"
    )


def _covered(d: Dialect, var: str) -> str:
    """Condition: an instruction covers the concept `var`, or a follow-up turn reaches it
    (subqueries: counting the covers of every concept costs the embedded engine about twice
    as much; only instructions have COVERS edges and only turns REACHES edges, so the far
    end needs no label, which would make it read their table)."""
    return (
        f"(EXISTS {{ MATCH ({var})<-[:{d.q(COVERS.type)}]-() }} "
        f"OR EXISTS {{ MATCH ({var})<-[:{d.q(REACHES.type)}]-() }})"
    )


def sessions_below(d: Dialect, one: bool = False) -> str:
    """For each visible session of $ids (or $id): its subject, and its visible concepts that
    no instruction covers yet (`open`): a COVERS edge to one of them adds a covered concept
    to the subject.

    The concepts are filtered before their ids are read: reading the id of every concept of
    the sessions as well took the embedded engine twice the time at three tenths of GLAN
    scale (it hashes the whole concept table to read them)."""
    w = walk_from_ids(d, SESSION.label, "ss", one, "ss JOIN (h JOIN s)")
    return (
        f"{w.head}MATCH (s:{d.q(SUBJECT.label)})-[h:{d.q(CHILD_REL[SUBJECT.label].type)}]->"
        f"{w.start} WHERE ss.status <> $rejected{w.order} "
        f"OPTIONAL MATCH (ss)-[:{d.q(CHILD_REL[SESSION.label].type)}]->"
        f"(c:{d.q(HIERARCHY[5].label)}) WHERE NOT {_covered(d, 'c')} AND c.status <> $rejected "
        "RETURN ss.id AS id, s.id AS subject, collect(c.id) AS open"
    )


def asked_combos(d: Dialect) -> str:
    """The instructions that carry a combination of $keys, each with its key: of those from
    reference $lo up to $hi where the engine has node references (Nodes.ranges).

    Found by key alone: walking on from all of them to their sessions and subjects made the
    embedded engine join whole tables (1.0 s a batch at GLAN scale, against 0.1 s when no
    key is found); the few found are walked from by id (subjects_asking). The key is no
    node key, so the engine hashes the instructions it reads: all of them at once needed
    more than 256 MB at 3M pairs, and a write was refused at 3.2M under 512 MB."""
    where = " AND ".join(["i.combo_key = k", *subject_range(d, "i")])
    return (
        f"UNWIND $keys AS k MATCH (i:{d.q(INSTRUCTION.label)}) WHERE {where} "
        "RETURN i.id AS id, k AS key"
    )


def subjects_asking(d: Dialect, one: bool = False) -> str:
    """For each instruction of $ids (or $id): the subjects of the visible sessions it was
    asked from, the subjects whose rollups count it."""
    walk, x = _from_instructions(d, one)
    return f"{walk}RETURN DISTINCT {x} AS id, s.id AS subject"


def subjects_asking_in_range(d: Dialect) -> str:
    """subjects_asking for each instruction from reference $lo up to $hi, by its reference
    (`ref`). Walked from a list of ids, the embedded engine hashed every FROM edge of the
    store: a write of answers was refused by a 512 MB page cache at 4M pairs."""
    ref, where = _in_range(d)
    return (
        f"MATCH (i:{d.q(INSTRUCTION.label)})-[:{d.q(FROM.type)}]->(ss:{d.q(SESSION.label)})"
        f"<-[:{d.q(CHILD_REL[SUBJECT.label].type)}]-(s:{d.q(SUBJECT.label)}) "
        f"WHERE {where} AND ss.status <> $rejected RETURN DISTINCT {ref} AS ref, s.id AS subject"
    )


#: the join order of a walk from instructions to their subjects (see Dialect.join_order)
_ASKING = "i JOIN ((f JOIN ss) JOIN (h JOIN s))"


def _from_instructions(d: Dialect, one: bool) -> tuple[str, str]:
    """A walk from the instructions $ids (or $id) to the visible sessions they were asked
    from (ss) and those sessions' subjects (s), and how it names an instruction's id."""
    w = walk_from_ids(d, INSTRUCTION.label, "i", one, _ASKING)
    walk = (
        f"{w.head}MATCH {w.start}-[f:{d.q(FROM.type)}]->"
        f"(ss:{d.q(SESSION.label)})<-[h:{d.q(CHILD_REL[SUBJECT.label].type)}]-"
        f"(s:{d.q(SUBJECT.label)}) WHERE ss.status <> $rejected{w.order} "
    )
    return walk, w.id


def stale_rollups(d: Dialect, top: int | None) -> str:
    """Subjects under the scope whose rollup is missing or older than their last write, with
    the write count it will be current for."""
    where = "coalesce(n3.rollup_clean, -1) <> coalesce(n3.rollup_dirty, 0)"
    # a rollup kept by a glan from before combination spaces has none: counted once
    where = f"({where} OR n3.rollup_space_lo IS NULL)"
    # the whole store: one pass over the subjects' table, where writes keep every rollup
    # current and this finds none
    pattern = f"(n3:{d.q(SUBJECT.label)})"
    if top is not None:
        pattern, where = chain(d, top, 3), f"n{top}.id = $id AND {where}"
    return (
        f"MATCH {pattern} WHERE {where} "
        "RETURN DISTINCT n3.id AS id, coalesce(n3.rollup_dirty, 0) AS dirty"
    )


def _each_subject(d: Dialect, one: bool, every: bool) -> tuple[str, str, list[str]]:
    """The head of a walk from each subject s of $ids (or from $id), the property map that
    finds it, and conditions on s: for a walk from every subject, only the subject range
    (subject_range)."""
    if every:
        return "", "", subject_range(d, "s")
    head, x = each_id(one)
    return head, f" {{id: {x}}}", []


def rollup_syllabus(d: Dialect, one: bool = False, every: bool = False) -> str:
    """Visible sessions and concepts of each subject of $ids, or of every subject (a subject
    with none gives a row of zeros); and in the same walk, the approved concepts of each
    approved session (`sizes`), what its combination space counts (graph/combinations.py)."""
    has_session = d.q(CHILD_REL[SUBJECT.label].type)
    has_concept = d.q(CHILD_REL[SESSION.label].type)
    head, key, where = _each_subject(d, one, every)
    return (
        f"{head}MATCH (s:{d.q(SUBJECT.label)}{key}) "
        + (f"WHERE {' AND '.join(where)} " if where else "")
        + f"OPTIONAL MATCH (s)-[:{has_session}]->(ss:{d.q(SESSION.label)}) "
        "WHERE ss.status <> $rejected "
        f"OPTIONAL MATCH (ss)-[:{has_concept}]->(c:{d.q(HIERARCHY[5].label)}) "
        "WHERE c.status <> $rejected "
        # per session, then per subject: counting distinct concepts of the whole subject
        # instead took the embedded engine as long again
        "WITH s, ss, count(c) AS n, sum(CASE WHEN c.status = $approved THEN 1 ELSE 0 END) AS k "
        "RETURN s.id AS id, count(DISTINCT ss.id) AS rollup_sessions, sum(n) AS rollup_concepts, "
        "collect(CASE WHEN ss.status = $approved AND k > 0 THEN k END) AS sizes"
    )


def rollup_generated(d: Dialect, one: bool = False, every: bool = False) -> str:
    """Per subject of $ids (or any subject) that has any: instructions asked from its visible
    sessions, their responses and distinct concept combinations."""
    has_session = d.q(CHILD_REL[SUBJECT.label].type)
    head, key, where = _each_subject(d, one, every)
    return (
        f"{head}MATCH (s:{d.q(SUBJECT.label)}{key})-[:{has_session}]->"
        f"(ss:{d.q(SESSION.label)})<-[:{d.q(FROM.type)}]-(i:{d.q(INSTRUCTION.label)}) "
        f"WHERE {' AND '.join(['ss.status <> $rejected', *where])} "
        f"OPTIONAL MATCH (r:{d.q(RESPONSE.label)})-[:{d.q(ANSWERS.type)}]->(i) "
        "RETURN s.id AS id, count(DISTINCT i.id) AS rollup_instructions, "
        "count(DISTINCT r.id) AS rollup_responses, count(DISTINCT i.combo_key) AS rollup_combos"
    )


def rollup_covered(d: Dialect, one: bool = False, every: bool = False) -> str:
    """Per subject of $ids (or any subject) that has any: visible concepts an instruction
    covers or a follow-up turn reaches."""
    head, where = _of_subjects(d, one, every, visible(4, 5), _covered(d, "n5"))
    return (
        f"{head}MATCH {chain(d, 3, 5)} {where}"
        "RETURN n3.id AS id, count(DISTINCT n5.id) AS rollup_covered"
    )


def subject_sessions(d: Dialect) -> str:
    """The sessions the rollup of subject $id counts (null when it has none yet)."""
    return f"MATCH (s:{d.q(SUBJECT.label)} {{id: $id}}) RETURN s.rollup_sessions AS n"


def sum_rollups(d: Dialect, top: int | None, group: int | None) -> str:
    """The rollups of the distinct visible subjects under the scope, summed (per group node
    with a group). A subject under two disciplines of one group counts once for it."""
    pattern, where, _ = _scoped(d, top, group, 3)
    keep = f"n{group}.id AS id, " if group is not None else ""
    head = "id, " if group is not None else ""
    sums = ", ".join(f"sum(coalesce(n3.{d.q(r)}, 0)) AS {r}" for r in ROLLUPS)
    return f"MATCH {pattern} WHERE {where} WITH DISTINCT {keep}n3 RETURN {head}{sums}"


def least_covered_concepts(d: Dialect, top: int | None) -> str:
    """The visible concepts under the scope covered by the fewest instructions, with the
    subject and session they belong to; at most $limit, fewest first then by id."""
    start = 0 if top is None else top
    where = [visible(start, 5)]
    if top is not None:
        where.append(f"n{top}.id = $id")
    # a shared subject reaches its concepts by several paths: grouping by concept (and its
    # subject and session) counts each instruction once
    subject = "n3.name" if start <= 3 else "''"
    session = "n4.name" if start <= 4 else "''"
    return (
        f"MATCH {chain(d, start, 5)} WHERE {' AND '.join(where)} "
        f"OPTIONAL MATCH (i:{d.q(INSTRUCTION.label)})-[:{d.q(COVERS.type)}]->(n5) "
        f"WITH n5, {subject} AS subject, {session} AS session, count(DISTINCT i.id) AS k "
        "RETURN n5 AS c, subject, session, k ORDER BY k, n5.id LIMIT $limit"
    )


def subjects_without_syllabus(d: Dialect, top: int | None) -> str:
    """Visible subjects under the scope (a Discipline or above) with no session yet, by
    name; at most $limit."""
    start = 0 if top is None else top
    where = [visible(start, 3)]
    if top is not None:
        where.append(f"n{top}.id = $id")
    rel = CHILD_REL[SUBJECT.label]
    return (
        f"MATCH {chain(d, start, 3)} WHERE {' AND '.join(where)} "
        f"OPTIONAL MATCH (n3)-[:{d.q(rel.type)}]->(x:{d.q(rel.dst.label)}) "
        "WITH n3, count(x) AS k WHERE k = 0 "
        "RETURN n3 AS s ORDER BY n3.name, n3.id LIMIT $limit"
    )


def concepts_below(d: Dialect, top: int | None, *, count: bool = False) -> str:
    """Approved concepts under the scope (reached through approved nodes, as generation
    reaches them) that fewer than $min instructions cover, with their subject and session:
    at most $limit, fewest first then by id; with `count`, how many there are (`n`)."""
    start = 0 if top is None else top
    where = [approved(start, 5)]
    if top is not None:
        where.append(f"n{top}.id = $id")
    covers = (
        f"MATCH {chain(d, start, 5)} WHERE {' AND '.join(where)} "
        f"OPTIONAL MATCH (i:{d.q(INSTRUCTION.label)})-[:{d.q(COVERS.type)}]->(n5) "
    )
    if count:
        return f"{covers}WITH n5, count(DISTINCT i.id) AS k WHERE k < $min RETURN count(n5) AS n"
    subject = "n3.name" if start <= 3 else "''"
    session = "n4.name" if start <= 4 else "''"
    return (
        f"{covers}WITH n5, {subject} AS subject, {session} AS session, count(DISTINCT i.id) AS k "
        "WHERE k < $min RETURN n5 AS c, subject, session, k ORDER BY k, n5.id LIMIT $limit"
    )


def _basic_space(x: str) -> str:
    """graph/combinations.basic_space of the float `x`, as arithmetic: each term is
    C(x, k), which is 0 for a whole x below k."""
    terms, product, factorial = [], x, 1
    for k in range(1, MAX_CONCEPTS + 1):
        if k > 1:
            product, factorial = f"{product} * ({x} - {k - 1})", factorial * k
        terms.append(f"{product} / {factorial}.0")
    return " + ".join(terms)


def session_combinations(
    d: Dialect, top: int | None, group: int | None, *, thinnest: bool = False
) -> str:
    """Per approved session under the scope (below visible nodes): its approved concepts
    `n` (its basic combination space is basic_space(n)) and `used`, the distinct
    combinations of the instructions asked from it alone; with the `subject` id, and the
    group node's `id` with a group (at most the session level).

    With `thinnest`: the $limit sessions with concepts whose basic space is least asked
    about, as nodes `s` with their subject's name, lowest share first then by id."""
    start = 0 if top is None else top
    where = [visible(start, 3)] if start <= 3 else []
    where.append("n4.status = $approved")
    if top is not None:
        where.append(f"n{top}.id = $id")
    keys = ([f"n{group}.id AS id"] if group is not None else []) + (["n3"] if start <= 3 else [])
    kept = (["id"] if group is not None else []) + (["n3"] if start <= 3 else [])
    carry = "".join(f"{k}, " for k in kept)
    has_concept = d.q(CHILD_REL[SESSION.label].type)
    walk = (
        f"MATCH {chain(d, start, 4)} WHERE {' AND '.join(where)} "
        f"WITH DISTINCT {''.join(f'{k}, ' for k in keys)}n4 "
        f"OPTIONAL MATCH (n4)-[:{has_concept}]->(c:{d.q(HIERARCHY[5].label)}) "
        "WHERE c.status = $approved "
        f"WITH {carry}n4, count(DISTINCT c.id) AS n "
        f"OPTIONAL MATCH (n4)<-[:{d.q(FROM.type)}]-(i:{d.q(INSTRUCTION.label)}) "
        f"OPTIONAL MATCH (i)-[:{d.q(FROM.type)}]->(x:{d.q(SESSION.label)}) "
        f"WITH {carry}n4, n, i, count(x) AS k "
        f"WITH {carry}n4, n, count(DISTINCT CASE WHEN k = 1 THEN i.combo_key END) AS used "
    )
    if thinnest:
        subject = "n3.name" if start <= 3 else "''"
        return (
            f"{walk}WHERE n > 0 WITH {carry}n4, n, used, n * 1.0 AS x "
            f"WITH {carry}n4, n, used, used / ({_basic_space('x')}) AS share "
            f"RETURN n4 AS s, {subject} AS subject, n, used ORDER BY share, n4.id LIMIT $limit"
        )
    subject = "n3.id" if start <= 3 else "''"
    head = "id, " if group is not None else ""
    return f"{walk}RETURN {head}{subject} AS subject, n4.id AS session, n, used"


def thinnest_subjects(d: Dialect, top: int | None) -> str:
    """The $limit visible subjects under the scope with a combination space whose share
    asked about (their rollups) is lowest, lowest first then by id."""
    pattern, where, _ = _scoped(d, top, None, 3)
    names = ("rollup_space_hi", "rollup_space_lo", "rollup_combos")
    hi, lo, used = (f"coalesce(n3.{d.q(r)}, 0)" for r in names)
    return (
        f"MATCH {pattern} WHERE {where} WITH DISTINCT n3 "
        f"WITH n3, {hi} * {float(2**LIMB)!r} + {lo} AS space WHERE space > 0 "
        f"WITH n3, {used} / space AS share "
        "RETURN n3 AS s ORDER BY share, n3.id LIMIT $limit"
    )


# ---------------------------------------------------------------------- datasets


def _below_subjects(d: Dialect) -> str:
    """Match `i`, each instruction asked from an approved session `ss` of a subject `s` of
    $ids, walking down from the subjects.

    Walked this way, from a list matched in the subjects' small table and out along edges,
    the embedded engine reads only what the walk reaches. Matched by id instead, each
    instruction is a key of a join that the engine probes with its whole table (all the
    instructions and answers of the store) on every read. An instruction asked from two of
    a subject's sessions is reached twice."""
    has_session = d.q(CHILD_REL[SUBJECT.label].type)
    return (
        f"MATCH (s:{d.q(SUBJECT.label)})-[:{has_session}]->(ss:{d.q(SESSION.label)})"
        f"<-[:{d.q(FROM.type)}]-(i:{d.q(INSTRUCTION.label)}) "
        "WHERE s.id IN $ids AND ss.status = $approved "
    )


def instructions_of_subjects(d: Dialect) -> str:
    """Instructions asked from approved sessions of the subjects $ids."""
    return _below_subjects(d) + "RETURN DISTINCT s.id AS subject, i.id AS id"


def _columns_of(d: Dialect, kind: NodeKind, var: str) -> str:
    """Every property of `var`, a node of `kind`, as a column of its own name."""
    return ", ".join(f"{var}.{d.q(p)} AS {d.q(p)}" for p in kind.prop_names)


def instructions_below(d: Dialect) -> str:
    """The instructions of `instructions_of_subjects`, a column per property (once per
    session they are reached through)."""
    return _below_subjects(d) + f"RETURN s.id AS subject, {_columns_of(d, INSTRUCTION, 'i')}"


def linked_names_below(d: Dialect, rel: RelKind) -> str:
    """`linked_from_names` for the instructions of `instructions_of_subjects`."""
    return (
        _below_subjects(d) + f"MATCH (i)-[:{d.q(rel.type)}]->(b:{d.q(rel.dst.label)}) "
        "RETURN DISTINCT i.id AS src, b.id AS dst, b.name AS name, b.position AS position"
    )


def responses_below(d: Dialect) -> str:
    """The responses to the instructions of `instructions_of_subjects`, a column per
    property, and `answers`: the instruction's id."""
    return (
        _below_subjects(d) + f"MATCH (i)<-[:{d.q(ANSWERS.type)}]-(r:{d.q(RESPONSE.label)}) "
        f"RETURN DISTINCT i.id AS answers, {_columns_of(d, RESPONSE, 'r')}"
    )


def _in_range(d: Dialect) -> tuple[str, str]:
    """The engine's reference of instruction `i`, and the condition that it lies from $lo
    up to $hi (subject_range): reads of a part of the instruction table, for engines with
    node references."""
    ref = d.node_ref("i")
    if ref is None:
        raise ValueError("this engine has no node references to read a range of")
    return ref, " AND ".join(subject_range(d, "i"))


def instructions_in_range(d: Dialect) -> str:
    """Each instruction from reference $lo up to $hi (`ref`, and its `id`), with each
    session it was asked from and that session's subject.

    It reads no property of an instruction but its id: the engine reads what a range's
    rows return for the whole table before keeping the range (instruction_columns)."""
    ref, where = _in_range(d)
    return (
        f"MATCH (i:{d.q(INSTRUCTION.label)})-[:{d.q(FROM.type)}]->(ss:{d.q(SESSION.label)})"
        f"<-[:{d.q(CHILD_REL[SUBJECT.label].type)}]-(s:{d.q(SUBJECT.label)}) WHERE {where} "
        f"RETURN {ref} AS ref, i.id AS id, ss.id AS session, ss.name AS name, "
        "ss.position AS position, ss.status AS status, s.id AS subject"
    )


def instruction_columns(d: Dialect) -> str:
    """The instructions $ids, looked up by key, a column per property."""
    return (
        f"UNWIND $ids AS x MATCH (i:{d.q(INSTRUCTION.label)}) WHERE i.id = x "
        f"RETURN {_columns_of(d, INSTRUCTION, 'i')}"
    )


def linked_names_in_range(d: Dialect, rel: RelKind) -> str:
    """What each instruction from reference $lo up to $hi points to through `rel`, by the
    instruction's reference (`ref`)."""
    ref, where = _in_range(d)
    return (
        f"MATCH (i:{d.q(INSTRUCTION.label)})-[:{d.q(rel.type)}]->(b:{d.q(rel.dst.label)}) "
        f"WHERE {where} RETURN {ref} AS ref, b.id AS dst, b.name AS name, b.position AS position"
    )


def responses_in_range(d: Dialect) -> str:
    """The responses to the instructions from reference $lo up to $hi, a column per
    property, and `ref`: the instruction's reference."""
    ref, where = _in_range(d)
    return (
        f"MATCH (i:{d.q(INSTRUCTION.label)})<-[:{d.q(ANSWERS.type)}]-(r:{d.q(RESPONSE.label)}) "
        f"WHERE {where} RETURN {ref} AS ref, {_columns_of(d, RESPONSE, 'r')}"
    )


def discipline_paths(d: Dialect) -> str:
    """The approved Field/SubField/Discipline names above each subject of $ids."""
    return (
        f"UNWIND $ids AS x MATCH {chain(d, 0, 3)} WHERE n3.id = x AND {approved(0, 2)} "
        "RETURN x AS id, n0.name AS f, n1.name AS s, n2.name AS d"
    )


def delete_edges_from(d: Dialect, rel: RelKind) -> str:
    return (
        f"UNWIND $ids AS x MATCH (a:{d.q(rel.src.label)} {{id: x}})-[e:{d.q(rel.type)}]->() "
        "DELETE e"
    )


def search(d: Dialect, kind: NodeKind) -> str:
    """Nodes of a kind whose normalized name contains $text, by id after $after."""
    return (
        f"MATCH (n:{d.q(kind.label)}) WHERE n.key CONTAINS $text AND n.id > $after "
        "RETURN n ORDER BY n.id LIMIT $limit"
    )


def table_columns(d: Dialect, label: str) -> str:
    """The property columns of an embedded table, in storage order (a label from the model,
    never user input, as a string literal: the procedure takes no parameter)."""
    return f"CALL table_info('{label}') RETURN *"


def _scope_head(top: int | None, each: bool) -> tuple[str, list[str]]:
    """What binds the scope: the node $id, or with `each` every node of $ids (an UNWIND)."""
    if top is None:
        return "", []
    if each:
        return "UNWIND $ids AS x ", [f"n{top}.id = x"]
    return "", [f"n{top}.id = $id"]


def count_levels(
    d: Dialect, top: int | None, group: int | None, bottom: int, *, each: bool = False
) -> str:
    """Distinct visible nodes of every level from below the group down to `bottom`, in one
    traversal: the levels under the group are OPTIONAL MATCHes, so a node without children
    still counts, and a rejected node drops out with everything under it.

    Returns columns c<level>; with a group, one row per group node (its `id`). With `each`,
    the scopes are the nodes $ids (group them by themselves: group = top).
    """
    start = 0 if top is None else top
    first = start if group is None else group
    head, where = _scope_head(top, each)
    where.insert(0, visible(start, first))
    parts = [f"{head}MATCH {chain(d, start, first)} WHERE {' AND '.join(where)}"]
    for level in range(first + 1, bottom + 1):
        rel = CHILD_REL[HIERARCHY[level - 1].label]
        parts.append(
            f"OPTIONAL MATCH (n{level - 1})-[:{d.q(rel.type)}]->"
            f"(n{level}:{d.q(HIERARCHY[level].label)}) WHERE n{level}.status <> $rejected"
        )
    counted = range(first + (0 if group is None else 1), bottom + 1)
    cols = ", ".join(f"count(DISTINCT n{lv}.id) AS c{lv}" for lv in counted)
    head = f"n{group}.id AS id, " if group is not None else ""
    return " ".join(parts) + f" RETURN {head}{cols}"


def count_generated(d: Dialect, top: int | None, group: int | None, *, each: bool = False) -> str:
    """Distinct instructions (asked from visible sessions) and their responses, in one query.
    Columns c6 (instructions) and c7 (responses); with a group, per group node `id`. `each`:
    as in count_levels."""
    start = 0 if top is None else top
    session = HIERARCHY.index(SESSION)
    unwind, where = _scope_head(top, each)
    where.insert(0, visible(start, session))
    head = f"n{group}.id AS id, " if group is not None else ""
    return (
        f"{unwind}MATCH {chain(d, start, session)}, "
        f"(i:{d.q(INSTRUCTION.label)})-[:{d.q(FROM.type)}]->(n{session}) "
        f"WHERE {' AND '.join(where)} "
        f"OPTIONAL MATCH (r:{d.q(RESPONSE.label)})-[:{d.q(ANSWERS.type)}]->(i) "
        f"RETURN {head}count(DISTINCT i.id) AS c6, count(DISTINCT r.id) AS c7"
    )


# ---------------------------------------------------------------------- conversations


def answers_by_model(d: Dialect) -> str:
    """For each instruction of $ids: its answer by the model $model, if any (the pair a
    conversation goes on from). The instruction is matched first and carried over, as in
    linked_to."""
    return (
        f"UNWIND $ids AS x MATCH (i:{d.q(INSTRUCTION.label)} {{id: x}}) WITH i, x "
        f"MATCH (r:{d.q(RESPONSE.label)})-[:{d.q(ANSWERS.type)}]->(i) WHERE r.model = $model "
        "RETURN x AS instruction, r.id AS response"
    )


def turn_states(d: Dialect) -> str:
    """For each answer of $ids: the follow-up turns that go on from it, without their text:
    what planning a conversation's next step needs."""
    return (
        f"UNWIND $ids AS x MATCH (r:{d.q(RESPONSE.label)} {{id: x}}) WITH r, x "
        f"MATCH (t:{d.q(TURN.label)})-[:{d.q(CONTINUES.type)}]->(r) "
        "RETURN x AS response, t.id AS id, t.position AS position, t.model AS model, "
        "t.answer IS NOT NULL AS answered"
    )


def turns_of(d: Dialect) -> str:
    """For each answer of $ids: the whole follow-up turns that go on from it."""
    return (
        f"UNWIND $ids AS x MATCH (r:{d.q(RESPONSE.label)} {{id: x}}) WITH r, x "
        f"MATCH (t:{d.q(TURN.label)})-[:{d.q(CONTINUES.type)}]->(r) RETURN x AS response, t"
    )


def turn_ids_for(d: Dialect) -> str:
    """The follow-up turns that go on from the answers $ids."""
    return (
        f"UNWIND $ids AS x MATCH (t:{d.q(TURN.label)})-[:{d.q(CONTINUES.type)}]->"
        f"(r:{d.q(RESPONSE.label)} {{id: x}}) RETURN DISTINCT t.id AS id"
    )


def open_concepts(d: Dialect, one: bool = False) -> str:
    """Of the concepts $ids (or $id): those visible, in a visible session, that no
    instruction covers and no turn reaches yet, with their subject: a REACHES edge to one
    of them adds a covered concept to that subject."""
    head, x = each_id(one)
    return (
        f"{head}MATCH (s:{d.q(SUBJECT.label)})-[:{d.q(CHILD_REL[SUBJECT.label].type)}]->"
        f"(ss:{d.q(SESSION.label)})-[:{d.q(CHILD_REL[SESSION.label].type)}]->"
        f"(c:{d.q(HIERARCHY[5].label)} {{id: {x}}}) "
        f"WHERE ss.status <> $rejected AND c.status <> $rejected AND NOT {_covered(d, 'c')} "
        "RETURN c.id AS id, s.id AS subject"
    )
