"""Syllabi for sampling: sessions and concepts of subjects, their coverage, the
combinations asked, and the concepts and sessions a coverage plan draws from.
"""

from __future__ import annotations

from ..combinations import LIMB, MAX_CONCEPTS
from ..driver import Dialect
from ..model import (
    CHILD_REL,
    COVERS,
    FROM,
    HIERARCHY,
    INSTRUCTION,
    SESSION,
    SUBJECT,
)
from .base import (
    approved,
    chain,
    each_id,
    is_covered,
    of_subjects,
    scoped_chain,
    subject_range,
    visible,
)


def subject_concept_stats(d: Dialect, one: bool = False, every: bool = False) -> str:
    """Per subject of $ids (or every subject): approved concepts, and how many an
    instruction already covers."""
    head, where = of_subjects(d, one, every, approved(4, 5))
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
    head, where = of_subjects(d, one, every, approved(4, 5))
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
    head, where = of_subjects(d, one, every)
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
    pattern, where, _ = scoped_chain(d, top, None, 3)
    names = ("rollup_space_hi", "rollup_space_lo", "rollup_combos")
    hi, lo, used = (f"coalesce(n3.{d.q(r)}, 0)" for r in names)
    return (
        f"MATCH {pattern} WHERE {where} WITH DISTINCT n3 "
        f"WITH n3, {hi} * {float(2**LIMB)!r} + {lo} AS space WHERE space > 0 "
        f"WITH n3, {used} / space AS share "
        "RETURN n3 AS s ORDER BY share, n3.id LIMIT $limit"
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
        f"WHERE ss.status <> $rejected AND c.status <> $rejected AND NOT {is_covered(d, 'c')} "
        "RETURN c.id AS id, s.id AS subject"
    )
