"""Coverage and the subject rollups that writes keep current: what a write reads to
know what it changes, recomputing a subject, and the sums a coverage report reads.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..driver import Dialect
from ..model import (
    ANSWERS,
    CHILD_REL,
    FROM,
    HIERARCHY,
    INSTRUCTION,
    RESPONSE,
    ROLLUPS,
    SESSION,
    SUBJECT,
)
from .base import (
    chain,
    each_id,
    each_subject,
    instruction_range,
    is_covered,
    of_subjects,
    scope_head,
    scoped_chain,
    subject_range,
    visible,
    walk_from_ids,
)


def covered_concepts(d: Dialect, top: int | None, group: int | None) -> str:
    """Visible concepts an instruction covers or a follow-up turn reaches."""
    pattern, where, key = scoped_chain(d, top, group, 5)
    return (
        f"MATCH {pattern} WHERE {where} AND {is_covered(d, 'n5')} "
        f"RETURN {key}count(DISTINCT n5.id) AS n"
    )


def covered_combos(d: Dialect, top: int | None, group: int | None) -> str:
    """Distinct concept combinations asked about under the scope."""
    pattern, where, key = scoped_chain(d, top, group, 4)
    return (
        f"MATCH {pattern}, (i:{d.q(INSTRUCTION.label)})-[:{d.q(FROM.type)}]->(n4) "
        f"WHERE {where} RETURN {key}count(DISTINCT i.combo_key) AS n"
    )


def childless(d: Dialect, top: int | None, group: int | None, *, level: int) -> str:
    """Visible nodes at `level` with no child yet (subjects without a syllabus, ...)."""
    pattern, where, _ = scoped_chain(d, top, group, level)
    rel = CHILD_REL[HIERARCHY[level].label]
    grouped, keep = (f"n{group}.id AS id, ", "id, ") if group is not None else ("", "")
    return (
        f"MATCH {pattern} WHERE {where} "
        f"OPTIONAL MATCH (n{level})-[:{d.q(rel.type)}]->(x:{d.q(rel.dst.label)}) "
        f"WITH {grouped}n{level}.id AS node, count(x) AS k WHERE k = 0 "
        f"RETURN {keep}count(DISTINCT node) AS n"
    )


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


def session_subjects(d: Dialect, one: bool = False) -> str:
    """For each visible session of $ids (or $id): its subject, and whether that subject's
    rollup is current and counts every visible concept covered (`full`): then none of the
    session's concepts is open, and sessions_below need not walk them. Past the first
    million pairs of a GLAN-scale store every subject is so, and this read costs a third
    of that walk."""
    w = walk_from_ids(d, SESSION.label, "ss", one, "ss JOIN (h JOIN s)")
    current = "coalesce(s.rollup_clean, -1) = coalesce(s.rollup_dirty, 0)"
    covered = "coalesce(s.rollup_covered, 0) >= coalesce(s.rollup_concepts, 0)"
    return (
        f"{w.head}MATCH (s:{d.q(SUBJECT.label)})-[h:{d.q(CHILD_REL[SUBJECT.label].type)}]->"
        f"{w.start} WHERE ss.status <> $rejected{w.order} "
        f"RETURN ss.id AS id, s.id AS subject, {current} AND {covered} AS full"
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
        f"(c:{d.q(HIERARCHY[5].label)}) WHERE NOT {is_covered(d, 'c')} AND c.status <> $rejected "
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


def stored_combos(d: Dialect, one: bool = False) -> str:
    """The combination each instruction of $ids (or $id) that exists carries, looked up by
    key: a write's own instructions, whatever the size of the store."""
    head, x = each_id(one)
    return (
        f"{head}MATCH (i:{d.q(INSTRUCTION.label)} {{id: {x}}}) "
        "RETURN i.id AS id, i.combo_key AS key"
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
    ref, where = instruction_range(d)
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


def rollup_syllabus(d: Dialect, one: bool = False, every: bool = False) -> str:
    """Visible sessions and concepts of each subject of $ids, or of every subject (a subject
    with none gives a row of zeros); and in the same walk, the approved concepts of each
    approved session (`sizes`), what its combination space counts (graph/combinations.py)."""
    has_session = d.q(CHILD_REL[SUBJECT.label].type)
    has_concept = d.q(CHILD_REL[SESSION.label].type)
    head, key, where = each_subject(d, one, every)
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
    head, key, where = each_subject(d, one, every)
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
    head, where = of_subjects(d, one, every, visible(4, 5), is_covered(d, "n5"))
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
    pattern, where, _ = scoped_chain(d, top, group, 3)
    keep = f"n{group}.id AS id, " if group is not None else ""
    head = "id, " if group is not None else ""
    sums = ", ".join(f"sum(coalesce(n3.{d.q(r)}, 0)) AS {r}" for r in ROLLUPS)
    return f"MATCH {pattern} WHERE {where} WITH DISTINCT {keep}n3 RETURN {head}{sums}"


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
    head, where = scope_head(top, each)
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
    unwind, where = scope_head(top, each)
    where.insert(0, visible(start, session))
    head = f"n{group}.id AS id, " if group is not None else ""
    return (
        f"{unwind}MATCH {chain(d, start, session)}, "
        f"(i:{d.q(INSTRUCTION.label)})-[:{d.q(FROM.type)}]->(n{session}) "
        f"WHERE {' AND '.join(where)} "
        f"OPTIONAL MATCH (r:{d.q(RESPONSE.label)})-[:{d.q(ANSWERS.type)}]->(i) "
        f"RETURN {head}count(DISTINCT i.id) AS c6, count(DISTINCT r.id) AS c7"
    )
