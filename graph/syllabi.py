"""Subjects and their syllabi: what the subjects and syllabus stages write, and what the
questions stage samples from.

A syllabus is a subject's class sessions in order, each with its key concepts. The reads
here are sized for GLAN scale (millions of concepts): by column, as Arrow tables, and for
most of the store's subjects as one walk over all of them (`Nodes.reads_whole`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import queries as Q
from .driver import Tx, batched
from .memory import give_back
from .model import (
    CHILD_REL,
    CONCEPT,
    HIERARCHY,
    SESSION,
    SUBJECT,
    Source,
    Status,
    hierarchy_id,
    name_key,
)
from .nodes import Nodes, Part
from .records import (
    ConceptView,
    Ids,
    KeySet,
    SessionView,
    SyllabusIndex,
    validate_name,
)
from .rollups import EMPTY_ROLLUP, Rollups


class Syllabi(Part):
    """Writes subjects and syllabi; reads syllabi, their coverage and the combinations asked."""

    def __init__(self, nodes: Nodes, rollups: Rollups) -> None:
        super().__init__(nodes)
        self.rollups = rollups

    def subject_names(self, discipline_id: str) -> list[str]:
        rows = self.driver.execute(Q.subject_names(self.d), {"id": discipline_id})
        return sorted(r["name"] for r in rows)

    def write_subjects(
        self,
        discipline_id: str,
        subjects: Sequence[Mapping[str, Any]],
        provenance: Mapping[str, Any],
        *,
        tx: Tx | None = None,
    ) -> list[str]:
        """Store subjects under a discipline; a subject already known anywhere is linked.

        Repeats are merged by normalized name; the first description of a subject is kept.
        """
        rows: dict[str, dict[str, Any]] = {}
        for s in subjects:
            name = validate_name(s["name"], "subject name")
            sid = hierarchy_id(SUBJECT, name, None)
            rows.setdefault(
                sid,
                {
                    "id": sid,
                    "name": name,
                    "key": name_key(name),
                    "level": s.get("level"),
                    "subtopics": [str(t) for t in s.get("subtopics") or []],
                    "status": str(Status.APPROVED),
                    "source": str(Source.LLM),
                    **provenance,
                    # nothing below it yet: its rollup is current (only new subjects get
                    # these, as a subject already known keeps its properties)
                    **EMPTY_ROLLUP,
                },
            )
        self.nodes.upsert_nodes(SUBJECT, list(rows.values()), update_existing=False, tx=tx)
        self.nodes.upsert_edges(
            CHILD_REL[HIERARCHY[2].label], [(discipline_id, sid) for sid in rows], tx=tx
        )
        return list(rows)

    def write_syllabus(
        self,
        subject_id: str,
        sessions: Sequence[Mapping[str, Any]],
        provenance: Mapping[str, Any],
        *,
        tx: Tx | None = None,
    ) -> list[str]:
        """Store a syllabus: sessions in order, each with its key concepts."""
        session_rows: list[dict[str, Any]] = []
        concept_rows: dict[str, dict[str, Any]] = {}
        has_session: list[tuple[str, str]] = []
        has_concept: list[tuple[str, str]] = []
        seen_titles: set[str] = set()
        for pos, sess in enumerate(sessions):
            title = validate_name(sess["title"], "session title")
            if name_key(title) in seen_titles:  # keep both sessions of a repeated title
                title = f"{title} ({pos + 1})"
            seen_titles.add(name_key(title))
            ses_id = hierarchy_id(SESSION, title, subject_id)
            session_rows.append(
                {
                    "id": ses_id,
                    "name": title,
                    "key": name_key(title),
                    "description": sess.get("description") or None,
                    "position": pos,
                    "status": str(Status.APPROVED),
                    "source": str(Source.LLM),
                    **provenance,
                }
            )
            has_session.append((subject_id, ses_id))
            for cpos, concept in enumerate(sess.get("concepts") or []):
                cname = validate_name(concept, "concept name")
                cid = hierarchy_id(CONCEPT, cname, ses_id)
                if cid in concept_rows:
                    continue
                concept_rows[cid] = {
                    "id": cid,
                    "name": cname,
                    "key": name_key(cname),
                    "position": cpos,
                    "status": str(Status.APPROVED),
                    "source": str(Source.LLM),
                    **provenance,
                }
                has_concept.append((ses_id, cid))
        with self.driver.transaction() if tx is None else nullcontext(tx) as t:
            made = self.nodes.upsert_nodes(SESSION, session_rows, tx=t)
            self.nodes.upsert_nodes(CONCEPT, list(concept_rows.values()), tx=t)
            self.nodes.upsert_edges(CHILD_REL[SUBJECT.label], has_session, tx=t)
            self.nodes.upsert_edges(CHILD_REL[SESSION.label], has_concept, tx=t)
            if made.created == len(session_rows):
                # all new: so are their concepts, approved, and nothing was asked from them
                per_session = Counter(ses for ses, _ in has_concept)
                sizes = [per_session[r["id"]] for r in session_rows]
                self.rollups.syllabus_written(subject_id, sizes, tx=t)
            else:  # written again: a session may come back from review, or gain concepts
                self.rollups.recompute([subject_id], tx=t)
        return [r["id"] for r in session_rows]

    def concept_stats(self, subject_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """Per subject: (approved concepts, concepts covered by an instruction)."""
        params = {"approved": str(Status.APPROVED)}
        ids = list(dict.fromkeys(subject_ids))
        parts = self.nodes.subject_parts(ids) if ids else None
        if parts is not None:  # see index
            wanted = set(ids)
            query = Q.subject_concept_stats(self.d, every=True)
            rows = [r for r in self.nodes.every_subject(query, params, parts) if r["id"] in wanted]
        else:
            rows = self.nodes.by_ids(partial(Q.subject_concept_stats, self.d), ids, params)
        return {r["id"]: (int(r["concepts"]), int(r["covered"] or 0)) for r in rows}

    def of(self, subject_ids: Sequence[str]) -> dict[str, list[SessionView]]:
        """The approved sessions (in order, those with approved concepts) and concepts of
        each subject, with coverage.

        Three reads by column (sessions, concepts, coverage): the sampler reads every
        syllabus of a scope at once, millions of concepts at GLAN scale."""
        approved = {"approved": str(Status.APPROVED)}
        s = self.nodes.columns_by_ids(partial(Q.syllabus_sessions, self.d), subject_ids, approved)
        c = self.nodes.columns_by_ids(partial(Q.syllabus_concepts, self.d), subject_ids, approved)
        k = self.nodes.columns_by_ids(partial(Q.syllabus_coverage, self.d), subject_ids)
        covered = dict(zip(k["concept"], k["covered"], strict=True))
        concepts: dict[str, list[ConceptView]] = {}
        for session, cid, name, position in zip(
            c["session"], c["concept"], c["name"], c["position"], strict=True
        ):
            concepts.setdefault(session, []).append(
                ConceptView(cid, name, position or 0, int(covered.get(cid, 0)))
            )
        out: dict[str, list[SessionView]] = {}
        for subject, sid, title, description, position in zip(
            s["subject"], s["session"], s["title"], s["description"], s["position"], strict=True
        ):
            if sid in concepts:
                view = SessionView(sid, title, description or "", position or 0, concepts[sid])
                out.setdefault(subject, []).append(view)
        for views in out.values():
            views.sort(key=lambda v: (v.position, v.id))
            for v in views:
                v.concepts.sort(key=lambda c: (c.position, c.id))
        return out

    def index(self, subject_ids: Sequence[str]) -> SyllabusIndex:
        """The syllabi of these subjects for sampling (see SyllabusIndex): two reads by
        column, sorted and joined as Arrow arrays, so that no Python object is made per
        concept but its id.

        Arrow's allocator would keep what the sorting and joining freed for its next
        allocation: 600 MB for the 1.9M concepts of a GLAN-scale store, which a process
        that plans a job and then serves or writes for hours would carry along. It is
        handed back to the system once the index is made (graph/memory.py)."""
        try:
            return self._index(subject_ids)
        finally:
            give_back()

    def _index(self, subject_ids: Sequence[str]) -> SyllabusIndex:
        """Syllabi.index, whose arrays are all freed when it returns.

        The reads walk from ranges of subjects and keep those asked for (Nodes.subject_parts):
        the embedded engine joins a list of ids with the walk from every subject, which
        costs more than the walk alone, and its page cache grows with the store."""
        ids = list(dict.fromkeys(subject_ids))
        if not ids:
            return SyllabusIndex.empty()
        approved = {"approved": str(Status.APPROVED)}
        parts = self.nodes.subject_parts(ids)
        if parts is not None:
            wanted = pa.array(ids, pa.string())
            rows = self.nodes.every_subject_table(
                Q.syllabus_outline(self.d, every=True),
                approved,
                lambda part: part.filter(pc.is_in(part["subject"], value_set=wanted)),
                parts,
            )
        else:
            rows = self.nodes.table_by_ids(partial(Q.syllabus_outline, self.d), ids, approved)
        if rows is None or not rows.num_rows:
            return SyllabusIndex.empty()
        # At GLAN scale these are 1.9M rows of Arrow strings. Each intermediate goes as soon
        # as it has been used, and Arrow's pool gives its memory back before the Python
        # lists are made: kept to the end, they took another 300 MB at the peak.
        pool = pa.default_memory_pool()
        subject, session = rows["subject"].combine_chunks(), rows["session"].combine_chunks()
        concept = rows["concept"].combine_chunks()
        session_position = pc.fill_null(rows["session_position"].cast(pa.int64()), 0)
        position = pc.fill_null(rows["position"].cast(pa.int64()), 0)
        del rows  # the columns above are copies
        # Sorted by subject, session position, session, concept position, concept (a missing
        # position sorts as 0). Subjects sort by their ids' ranks, sessions by their runs in
        # the read (_session_order): sorting millions of rows by integers costs a fraction
        # of sorting them by strings.
        subject_rank = _ranks(subject)
        keys = pa.table(
            {
                "subject": subject_rank,
                "session_position": session_position,
                "session": _session_order(session, subject_rank, session_position),
                "position": position,
                "concept": concept,
            }
        )
        del subject_rank, session_position, position
        ascending = [(name, "ascending") for name in keys.column_names]
        order = pc.sort_indices(keys, ascending).to_numpy()
        by_subject = keys["subject"].to_numpy()[order]
        by_session = keys["session"].to_numpy()[order]
        del keys
        # rows where a subject (or a session) starts: the first, and each whose subject (or
        # subject or session) differs from the row before it
        subject_moves = by_subject[1:] != by_subject[:-1]
        new_subject = np.flatnonzero(np.r_[True, subject_moves])
        session_moves = subject_moves | (by_session[1:] != by_session[:-1])
        new_session = np.flatnonzero(np.r_[True, session_moves])
        del by_subject, by_session, subject_moves, session_moves
        subject = subject.take(order[new_subject])
        session = session.take(order[new_session])
        concept = concept.take(order)
        del order
        pool.release_unused()
        # How many instructions cover each concept, read once the outline is down to its
        # sorted columns: read beside it, the two reads and the lookup between them set the
        # peak of planning over the whole store.
        if parts is not None:
            counts = self.nodes.every_subject_table(
                Q.syllabus_coverage(self.d, every=True), ranges=parts
            )
        else:
            counts = self.nodes.table_by_ids(partial(Q.syllabus_coverage, self.d), ids)
        covered = pa.nulls(len(concept), pa.int64())
        if counts is not None and counts.num_rows:
            found = pc.index_in(concept, value_set=counts["concept"].combine_chunks())
            covered = counts["covered"].combine_chunks().take(found)
            del found
        del counts
        covered = pc.fill_null(covered, 0).cast(pa.int64())
        pool.release_unused()
        return SyllabusIndex(
            subject_ids=Ids.of_arrow(subject),
            session_start=np.r_[np.searchsorted(new_session, new_subject), len(new_session)]
            .astype(int)
            .tolist(),
            session_ids=Ids.of_arrow(session),
            concept_start=np.r_[new_session, len(concept)].astype(int).tolist(),
            concept_ids=Ids.of_arrow(concept),
            covered=covered.to_pylist(),
        )

    def combo_keys(self, subject_ids: Sequence[str]) -> KeySet:
        """Concept combinations (sorted-id hashes) already asked about in these subjects, read
        as Arrow columns into a KeySet: no Python object per key."""
        ids = list(dict.fromkeys(subject_ids))
        if not ids:
            return KeySet()
        # Every instruction, a range at a time, where the engine has ranges or most subjects
        # are asked for (see index). The subject is no node key: a list of them took the
        # embedded engine's page cache past 128 MB at 1M pairs, however few they were.
        if self.nodes.has_refs or self.nodes.reads_whole(ids):
            wanted = pa.array(ids, pa.string())
            every = self.nodes.every_instruction(Q.combo_keys_of_subjects(self.d, every=True))
            return KeySet.of_parts(
                t.filter(pc.is_in(t["subject"], value_set=wanted))["key"] for t in every
            )
        tables = (
            self.driver.table(Q.combo_keys_of_subjects(self.d), {"ids": batch})
            for batch in batched(ids, self.batch_size)
        )
        return KeySet.of_parts(t["key"] for t in tables if t.num_rows)


def _ranks(values: pa.Array) -> pa.Array:
    """Each value's rank among the distinct values (equal values, equal ranks): integers
    that sort as the values do."""
    encoded = pc.dictionary_encode(values)
    ranks = pc.rank(encoded.dictionary, sort_keys="ascending", tiebreaker="first")
    return ranks.take(encoded.indices)


def _session_order(session: pa.Array, subject: pa.Array, position: pa.Array) -> pa.Array:
    """Per row of a syllabus read, a key that orders the sessions of one subject and one
    position by their ids.

    The engines hand over each session's rows one after another, and within a subject,
    positions seldom repeat. Then the number of each row's run of one session serves, and
    it costs one pass. Ids are ranked only when two runs share a subject and a position:
    two sessions at one position, or a session whose rows came apart."""
    if len(session) < 2:
        return pa.array(np.zeros(len(session), np.int64))
    moves = pc.not_equal(session[1:], session[:-1]).to_numpy(zero_copy_only=False)
    run = np.r_[0, np.cumsum(moves)]
    starts = np.flatnonzero(np.r_[True, moves])
    of_subject, at = subject.to_numpy()[starts], position.to_numpy()[starts]
    order = np.lexsort((at, of_subject))
    same = (of_subject[order][1:] == of_subject[order][:-1]) & (at[order][1:] == at[order][:-1])
    return _ranks(session) if same.any() else pa.array(run)
