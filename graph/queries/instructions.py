"""Instructions and their answers: pages and filters, what export and cleaning read
(by subjects, or by ranges of the instruction table), follow-up turns.
"""

from __future__ import annotations

from typing import Any

from ..driver import Dialect
from ..filters import InstructionFilter
from ..model import (
    ANSWERS,
    CHILD_REL,
    CONTINUES,
    FROM,
    HIERARCHY,
    INSTRUCTION,
    RESPONSE,
    SESSION,
    SUBJECT,
    TURN,
    RelKind,
)
from .base import approved, chain, columns_of, instruction_range, walk_from_ids


def instructions_in_scope(d: Dialect, top: int | None) -> str:
    """Instructions FROM approved sessions under the scope."""
    pattern, where = _instruction_scope(d, top, InstructionFilter())
    return f"MATCH {pattern} WHERE {where} RETURN DISTINCT i.id AS id"


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


def first_instruction_ids(d: Dialect, flt: InstructionFilter, *, after: bool) -> str:
    """Up to $limit ids of instructions the filter keeps, in id order, after $after if
    given, wherever they were asked from: candidates for a page of the whole store, which
    the engine keeps as a running top list however large the table (a page keeps those
    asked from an approved session: instruction_session_refs)."""
    where = instruction_conditions(d, flt) + (["i.id > $after"] if after else [])
    head = f"MATCH (i:{d.q(INSTRUCTION.label)}) "
    if where:
        head += f"WHERE {' AND '.join(where)} "
    return f"{head}RETURN i.id AS id ORDER BY id LIMIT $limit"


def instruction_session_refs(d: Dialect, one: bool = False) -> str:
    """The reference of each session each instruction of $ids (or $id) was asked from, by
    the instruction's id: what a page of the whole store checks its candidates against
    approved_session_refs with. Read an id at a time where the engine looks ids up by key
    (Nodes.by_ids): from a list, the embedded engine hashed every FROM edge, and at 10M
    pairs that needed more than its 512 MB page cache."""
    w = walk_from_ids(d, INSTRUCTION.label, "i", one, "i JOIN (f JOIN ss)")
    return (
        f"{w.head}MATCH {w.start}-[f:{d.q(FROM.type)}]->(ss:{d.q(SESSION.label)}){w.order} "
        f"RETURN {w.id} AS id, {d.node_ref('ss')} AS session"
    )


def approved_session_refs(d: Dialect) -> str:
    """The reference of every approved session of an approved chain."""
    ref = d.node_ref(f"n{_SESSION}")
    return (
        f"MATCH {chain(d, 0, _SESSION)} WHERE {approved(0, _SESSION)} RETURN DISTINCT {ref} AS ref"
    )


def instruction_sessions_in_range(d: Dialect, flt: InstructionFilter) -> str:
    """For each instruction from reference $lo up to $hi that the filter keeps: its
    reference (`ref`) and that of each session it was asked from (`session`). The
    whole-store count is summed from these: counted in one read, the embedded engine
    needed more than 1 GB of page cache for the distinct instructions of 10M pairs."""
    ref, where = instruction_range(d)
    conds = " AND ".join([where, *instruction_conditions(d, flt)])
    return (
        f"MATCH (i:{d.q(INSTRUCTION.label)})-[:{d.q(FROM.type)}]->(ss:{d.q(SESSION.label)}) "
        f"WHERE {conds} RETURN {ref} AS ref, {d.node_ref('ss')} AS session"
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


def instructions_below(d: Dialect) -> str:
    """The instructions of `instructions_of_subjects`, a column per property (once per
    session they are reached through)."""
    return _below_subjects(d) + f"RETURN s.id AS subject, {columns_of(d, INSTRUCTION, 'i')}"


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
        f"RETURN DISTINCT i.id AS answers, {columns_of(d, RESPONSE, 'r')}"
    )


def instruction_ids_in_range(d: Dialect) -> str:
    """The id of each instruction from reference $lo up to $hi, with its reference (`ref`).

    The embedded engine reads a property of a range's rows for the whole table before
    keeping the range: this read costs a scan of every instruction's id (0.7 s at 10M
    pairs) however narrow the range, so callers read the ids of many ranges at once."""
    ref, where = instruction_range(d)
    return f"MATCH (i:{d.q(INSTRUCTION.label)}) WHERE {where} RETURN {ref} AS ref, i.id AS id"


def instructions_in_range(d: Dialect) -> str:
    """Each instruction from reference $lo up to $hi (`ref`), with each session it was asked
    from and that session's subject.

    It reads no property of an instruction: the engine would read it for the whole table
    before keeping the range (instruction_ids_in_range, instruction_columns)."""
    ref, where = instruction_range(d)
    return (
        f"MATCH (i:{d.q(INSTRUCTION.label)})-[:{d.q(FROM.type)}]->(ss:{d.q(SESSION.label)})"
        f"<-[:{d.q(CHILD_REL[SUBJECT.label].type)}]-(s:{d.q(SUBJECT.label)}) WHERE {where} "
        f"RETURN {ref} AS ref, ss.id AS session, ss.name AS name, "
        "ss.position AS position, ss.status AS status, s.id AS subject"
    )


def instruction_columns(d: Dialect) -> str:
    """The instructions $ids, looked up by key, a column per property."""
    return (
        f"UNWIND $ids AS x MATCH (i:{d.q(INSTRUCTION.label)}) WHERE i.id = x "
        f"RETURN {columns_of(d, INSTRUCTION, 'i')}"
    )


def linked_names_in_range(d: Dialect, rel: RelKind) -> str:
    """What each instruction from reference $lo up to $hi points to through `rel`, by the
    instruction's reference (`ref`)."""
    ref, where = instruction_range(d)
    return (
        f"MATCH (i:{d.q(INSTRUCTION.label)})-[:{d.q(rel.type)}]->(b:{d.q(rel.dst.label)}) "
        f"WHERE {where} RETURN {ref} AS ref, b.id AS dst, b.name AS name, b.position AS position"
    )


def responses_in_range(d: Dialect) -> str:
    """The responses to the instructions from reference $lo up to $hi, a column per
    property, and `ref`: the instruction's reference."""
    ref, where = instruction_range(d)
    return (
        f"MATCH (i:{d.q(INSTRUCTION.label)})<-[:{d.q(ANSWERS.type)}]-(r:{d.q(RESPONSE.label)}) "
        f"WHERE {where} RETURN {ref} AS ref, {columns_of(d, RESPONSE, 'r')}"
    )


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
