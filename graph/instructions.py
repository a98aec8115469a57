"""Instructions and their answers: writes with provenance, pages, samples, and the reads
that export, dedup and decontamination walk (a subject at a time, or by id).

An instruction covers the concepts it was sampled from (COVERS) and comes from their
sessions (FROM); a response ANSWERS it. Duplicate marks are DUPLICATE_OF edges.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence, Set
from contextlib import nullcontext
from functools import partial
from operator import itemgetter
from typing import Any

import numpy as np
import pyarrow as pa

from . import queries as Q
from .driver import Tx, batched
from .errors import InvalidInput, WrongKind
from .filters import InstructionFilter
from .model import (
    ANSWERS,
    COVERS,
    DUPLICATE_OF,
    FROM,
    HIERARCHY,
    INSTRUCTION,
    RESPONSE,
    SESSION,
    NodeKind,
    RelKind,
    Status,
    join_path,
)
from .nodes import Nodes, Part
from .records import (
    InstructionDetail,
    NameIndex,
    Node,
    RangeIds,
    Scores,
    UpsertResult,
)
from .rollups import Rollups
from .taxonomy import Taxonomy


class Instructions(Part):
    """Generated questions and answers, with their links to the taxonomy."""

    def __init__(self, nodes: Nodes, taxonomy: Taxonomy, rollups: Rollups) -> None:
        super().__init__(nodes)
        self.taxonomy = taxonomy
        self.rollups = rollups

    def write_instructions(
        self,
        rows: Sequence[Mapping[str, Any]],
        covers: Sequence[tuple[str, str]],
        sessions: Sequence[tuple[str, str]],
        *,
        tx: Tx | None = None,
    ) -> UpsertResult:
        """Store instructions, the concepts each covers and the sessions it was asked from,
        and bring their subjects' rollups up to date: all in one transaction (the caller's,
        or one of its own), so a reader sees the whole batch or none of it."""
        with self.driver.transaction() if tx is None else nullcontext(tx) as t:
            before = self.rollups.before_questions(rows, sessions, tx=t)
            res = self.nodes.upsert_nodes(INSTRUCTION, rows, tx=t)
            made_covers = self._link(COVERS, covers, res.new_ids, tx=t)
            made_from = self._link(FROM, sessions, res.new_ids, tx=t)
            self.rollups.questions_written(before, res.new_ids, made_covers, made_from, tx=t)
        return res

    def write_responses(
        self,
        rows: Sequence[Mapping[str, Any]],
        *,
        subject_ids: Sequence[str] | None = None,
        tx: Tx | None = None,
    ) -> UpsertResult:
        """Store answers and bring the rollups of their instructions' subjects up to date, in
        one transaction (the caller's, or one of its own).

        `subject_ids`, the subjects their instructions were asked in, is no longer needed:
        a rollup counts an answer under the subjects of the visible sessions its question was
        asked from, which the write reads itself. It is accepted, and unused."""
        del subject_ids
        with self.driver.transaction() if tx is None else nullcontext(tx) as t:
            res = self.nodes.upsert_nodes(RESPONSE, rows, tx=t)
            pairs = list(dict.fromkeys((str(r["id"]), str(r["instruction_id"])) for r in rows))
            made = self._link(ANSWERS, pairs, res.new_ids, tx=t)
            self.rollups.answers_written(res.new_ids, made, tx=t)
        return res

    def _link(
        self,
        rel: RelKind,
        pairs: Sequence[tuple[str, str]],
        new_sources: Set[str],
        *,
        tx: Tx,
    ) -> Sequence[tuple[str, str]]:
        """Create the `rel` edges not already there, as Nodes.upsert_edges does, and return
        them (a pair may repeat): what the rollups count. Edges from nodes this write
        created cannot exist yet; those of the others are read first."""
        sources = set(map(itemgetter(0), pairs))
        old = sources - new_sources
        todo = pairs
        if old:
            found = self.nodes.by_ids(
                partial(Q.existing_edges, self.d, rel), sorted(old), tx=tx, by_key=True
            )
            have = {(r["src"], r["dst"]) for r in found}
            todo = [p for p in pairs if p not in have]
        self.nodes.upsert_edges(rel, todo, new_sources=sources, tx=tx)
        return todo

    def ids_in_scope(self, scope: Node | None) -> list[str]:
        top = self._instruction_top(scope)
        rows = self.driver.execute(
            Q.instructions_in_scope(self.d, top), self.taxonomy.scope_params(scope)
        )
        return sorted(r["id"] for r in rows)

    @staticmethod
    def _instruction_top(scope: Node | None) -> int | None:
        """The level instructions are listed under: a session or above (None: everything)."""
        if scope is not None and scope.level > HIERARCHY.index(SESSION):
            raise WrongKind(f"{scope.path!r} is a {scope.kind.label}; choose a session or above")
        return scope.level if scope else None

    def page(
        self,
        scope: Node | None,
        flt: InstructionFilter | None = None,
        first: int = 50,
        after: str | None = None,
    ) -> tuple[list[Node], bool]:
        """Instructions under a scope (as ids_in_scope finds them) that the filter
        keeps, in id order after the id `after`: up to `first`, and whether more follow.

        One query: the filter is part of its WHERE clause and it asks for first + 1 rows,
        so a page costs about a page of rows however large the scope. The whole store, where
        the engine has node references, is paged from the instruction table's first ids
        (_page_of_store) unless the filter is on answers.
        """
        if first < 0:
            raise InvalidInput(f"first must be 0 or more, got {first}")
        flt = flt or InstructionFilter()
        top = self._instruction_top(scope)
        # a filter on answers is left to the walk: checked on each candidate, one that
        # keeps few instructions would look most of the store up id by id
        if top is None and self.nodes.has_refs and flt.answered is None and flt.min_score is None:
            return self._page_of_store(flt, first, after)
        params = {
            **self.taxonomy.scope_params(scope),
            **Q.instruction_params(flt),
            "limit": first + 1,
        }
        if after:
            params["after"] = after
        query = Q.instructions_page(self.d, top, flt, after=bool(after))
        nodes = [Node.from_row(r["x"]) for r in self.driver.execute(query, params)]
        return nodes[:first], len(nodes) > first

    def count(self, scope: Node | None, flt: InstructionFilter | None = None) -> int:
        """How many instructions under a scope the filter keeps: one COUNT query."""
        flt = flt or InstructionFilter()
        top = self._instruction_top(scope)
        if top is None and self.nodes.has_refs:
            return self._count_of_store(flt)
        params = {**self.taxonomy.scope_params(scope), **Q.instruction_params(flt)}
        rows = self.driver.execute(Q.count_instructions(self.d, top, flt), params)
        return int(rows[0]["n"]) if rows else 0

    # A page or a count of the whole store, where the engine has node references. Read as a
    # walk down from every field, the instructions are made distinct in one hash of all of
    # them: at 10M pairs the embedded engine needed more than 1 GB of page cache for it
    # (and 2 GB for the count), and refused both under the default 512 MB.

    def _page_of_store(
        self, flt: InstructionFilter, first: int, after: str | None
    ) -> tuple[list[Node], bool]:
        """`page` over the whole store: the instructions' first ids in order, kept where
        asked from an approved session (most are), and more of them until the page is
        full."""
        want, ask = first + 1, max(first + 1, 64)
        approved: np.ndarray | None = None
        kept: list[str] = []
        while len(kept) < want:
            params: dict[str, Any] = {**Q.instruction_params(flt), "limit": ask}
            if after:
                params["after"] = after
            query = Q.first_instruction_ids(self.d, flt, after=bool(after))
            ids = [str(r["id"]) for r in self.driver.execute(query, params)]
            if ids:
                approved = self._approved_sessions() if approved is None else approved
                read = partial(Q.instruction_session_refs, self.d)
                rows = self.nodes.by_ids(read, ids, by_key=True)
                shown = np.isin(np.asarray([r["session"] for r in rows], np.int64), approved)
                visible = {r["id"] for r, ok in zip(rows, shown, strict=True) if ok}
                kept += [i for i in ids if i in visible]
            if len(ids) < ask:
                break
            after, ask = ids[-1], min(ask * 4, 100_000)
        found = self.nodes.get_many(kept[:want])
        nodes = [found[i] for i in kept[:want] if i in found]  # unless deleted since
        return nodes[:first], len(nodes) > first

    def _approved_sessions(self) -> np.ndarray:
        """The references of the approved sessions of approved chains, sorted."""
        params = self.taxonomy.scope_params(None)
        table = self.driver.table(Q.approved_session_refs(self.d), params)
        return np.sort(np.asarray(table["ref"].to_numpy() if table.num_rows else [], np.int64))

    def _count_of_store(self, flt: InstructionFilter) -> int:
        """`count` over the whole store: the instructions asked from an approved session
        of an approved chain, a range of the instruction table at a time."""
        approved = self._approved_sessions()
        query = Q.instruction_sessions_in_range(self.d, flt)
        params = Q.instruction_params(flt)
        n = 0
        for part in self.nodes.ranges(INSTRUCTION, self.nodes.instructions_per_read):
            table = self.driver.table(query, {**params, **part})
            if table.num_rows:
                shown = np.isin(table["session"].to_numpy(), approved)
                n += len(np.unique(table["ref"].to_numpy()[shown]))
        return n

    def contamination_marks(self, scope: Node | None) -> list[tuple[str | None, str | None, int]]:
        """(contamination record, contaminated flag, instructions) for each distinct pair
        of them among the marked instructions under a scope (session or above): one grouped
        read, whose rows are as few as the distinct marks."""
        top = self._instruction_top(scope)
        params = {**self.taxonomy.scope_params(scope), "blank": ""}
        rows = self.driver.execute(Q.contamination_marks(self.d, top), params)
        return [(r["record"], r["flag"], int(r["n"])) for r in rows]

    def responses_in_scope(self, scope: Node | None) -> list[tuple[str, str]]:
        """(response id, instruction id) of every answer to an instruction under a scope
        (session or above), by response id: what a judge job plans over."""
        top = self._instruction_top(scope)
        rows = self.driver.execute(
            Q.responses_in_scope(self.d, top), self.taxonomy.scope_params(scope)
        )
        return sorted((str(r["id"]), str(r["instruction"])) for r in rows)

    def scores(self, scope: Node | None, group_level: int | None = None) -> dict[str, Scores]:
        """The judge's overall scores of the pairs under a scope (session or above), in one
        grouped read: under "" for the scope itself, or with `group_level` (the scope's
        level or below, down to sessions) under the id of each node of that level that has
        a judged pair. Unjudged pairs are not counted."""
        top = self._instruction_top(scope)
        if group_level is not None and not (top or 0) <= group_level <= HIERARCHY.index(SESSION):
            raise InvalidInput("scores are grouped from the scope's level down to sessions")
        params = self.taxonomy.scope_params(scope)
        found: dict[str, Scores] = {}
        for r in self.driver.execute(Q.score_counts(self.d, top, group_level), params):
            key = str(r["id"]) if group_level is not None else ""
            found.setdefault(key, Scores()).add(int(r["score"]), int(r["n"]))
        return found

    def write_judgements(self, rows: Sequence[Mapping[str, Any]], *, tx: Tx | None = None) -> None:
        """Set the judge's scores, rationale and provenance on responses (an answer deleted
        since is left alone). Counts and rollups do not change."""
        self.nodes.update_existing(RESPONSE, rows, tx=tx)

    def sample(self, scope: Node | None, n: int, seed: int) -> list[Node]:
        """`n` instructions under a scope drawn without replacement (all of them when there
        are fewer), in the order drawn: the same ones for the same seed and data.

        Two queries, and no id list in Python: count the scope, draw that many positions
        with `random.Random(seed)` (over a range, so nothing the size of the scope is built
        here), then pick the instructions at those positions of the scope's sorted ids,
        which the database gathers and indexes itself (pick_instructions). A seeded order
        in the database (ORDER BY random()) would not repeat; a SKIP per position would
        sort the scope once per pick. The positions are those `random.sample` would draw
        from the sorted id list, so the sample is the one the API always gave for a seed.
        """
        if n < 0:
            raise InvalidInput(f"n must be 0 or more, got {n}")
        top = self._instruction_top(scope)
        total = self.count(scope)
        offsets = random.Random(seed).sample(range(total), min(n, total))
        picked: dict[int, Node] = {}
        for batch in batched(offsets, self.batch_size):
            params = {**self.taxonomy.scope_params(scope), "offsets": batch}
            for r in self.driver.execute(Q.pick_instructions(self.d, top), params):
                picked[int(r["o"])] = Node.from_row(r["x"])
        return [picked[o] for o in offsets if o in picked]

    def name_index(self, kind: NodeKind) -> NameIndex | None:
        """Every node of a kind by reference, for `linked_names`: one scan of its table.
        None where the engine has no node references (Dialect.node_ref)."""
        ref = self.d.node_ref("n")
        if ref is None:
            return None
        table = self.driver.table(Q.names_by_ref(self.d, kind, ref))
        if not table.num_rows:
            table = pa.table({"ref": [], "id": [], "name": [], "position": []})
        return NameIndex(table.set_column(0, "ref", table["ref"].cast(pa.int64())))

    def linked_names(
        self, rel: RelKind, ids: Sequence[str], names: NameIndex | None = None
    ) -> dict[str, list[tuple[str, str, int]]]:
        """What each id points to through `rel`, as (id, name, position), sorted: `linked`
        with the names the caller would otherwise read node by node (sessions, concepts).

        Given `names` (name_index of rel's target kind), only the edges are read, and the
        names looked up there: a caller reading many batches reads the names once."""
        out: dict[str, list[tuple[str, str, int]]] = {i: [] for i in ids}
        found = None
        if names is not None and (ref := self.d.node_ref("b")) is not None:
            edges = self.nodes.columns_by_ids(partial(Q.linked_refs, self.d, rel, ref), ids)
            src, found = edges["src"], names.lookup(edges["ref"])
        if found is None:  # no index, or nodes made since it was read
            cols = self.nodes.columns_by_ids(partial(Q.linked_from_names, self.d, rel), ids)
            src = cols["src"]
            found = cols["dst"], cols["name"], [p or 0 for p in cols["position"]]
        for s, dst, name, position in zip(src, *found, strict=True):
            out[s].append((dst, name, position))
        for v in out.values():
            v.sort()
        return out

    def instructions_by_subject(self, subject_ids: Sequence[str]) -> dict[str, list[str]]:
        """Instruction ids of each subject (from approved sessions), sorted."""
        out: dict[str, list[str]] = {s: [] for s in subject_ids}
        params: dict[str, Any] = {"approved": str(Status.APPROVED)}
        for batch in batched(list(dict.fromkeys(subject_ids)), self.batch_size):
            for r in self.driver.execute(
                Q.instructions_of_subjects(self.d), {**params, "ids": batch}
            ):
                out[r["subject"]].append(r["id"])
        for v in out.values():
            v.sort()
        return out

    def details_below(
        self, subject_ids: Sequence[str], *, links: bool = True, responses: bool = True
    ) -> dict[str, list[InstructionDetail]]:
        """The instructions of each subject (as `instructions_by_subject` finds them, in the
        same order) with their sessions and concepts (unless not `links`) and responses
        (unless not `responses`): up to four reads walked down from the subjects, whatever
        the number of instructions. They are all held at once: a caller sizes its list of
        subjects by their number of instructions."""
        params = {"ids": list(dict.fromkeys(subject_ids)), "approved": str(Status.APPROVED)}
        # read by column: whole nodes, row by row, took most of an export's time
        cols = self.driver.columns(Q.instructions_below(self.d), params)
        found: dict[str, InstructionDetail] = {}
        below: dict[str, set[str]] = {s: set() for s in subject_ids}
        for subject, node in zip(cols.get("subject", []), _nodes(INSTRUCTION, cols), strict=True):
            if node.id not in found:  # else reached through another of its sessions
                found[node.id] = InstructionDetail(node)
            below[subject].add(node.id)
        for rel in (FROM, COVERS) if links else ():
            cols = self.driver.columns(Q.linked_names_below(self.d, rel), params)
            link_cols = (cols.get(c, []) for c in ("src", "dst", "name", "position"))
            for src, dst, name, position in zip(*link_cols, strict=True):
                if (detail := found.get(src)) is not None:  # else asked since
                    linked = detail.sessions if rel is FROM else detail.concepts
                    linked.append((dst, name, position or 0))
        if responses:
            cols = self.driver.columns(Q.responses_below(self.d), params)
            for answers, node in zip(cols.get("answers", []), _nodes(RESPONSE, cols), strict=True):
                if (detail := found.get(answers)) is not None:
                    detail.responses.append(node)
        for detail in found.values():
            detail.sort()
        return {s: [found[i] for i in sorted(ids)] for s, ids in below.items()}

    def ids_in_range(self, part: Mapping[str, int]) -> RangeIds:
        """The ids of the instructions of a range of the instruction table (Nodes.ranges),
        by reference. Each read costs the embedded engine a scan of every id, however
        narrow the range: read the ids of many `details_in_range` parts at once."""
        return RangeIds(self.driver.table(Q.instruction_ids_in_range(self.d), part))

    def details_in_range(
        self,
        part: Mapping[str, int],
        subjects: Set[str],
        *,
        ids: RangeIds | None = None,
        links: bool = True,
        responses: bool = True,
    ) -> list[tuple[str, InstructionDetail]]:
        """(subject id, instruction with its links) for each instruction of a range of the
        instruction table (Nodes.ranges) asked from an approved session of one of
        `subjects`, in the order of the table: the order they were written. Links and
        responses as `details_below`; engines with node references only. `ids`: the ids of
        the range's instructions by reference (ids_in_range, of this range or a wider one),
        else read here.

        Each read starts from a contiguous part of the table. Read a group of subjects at a
        time instead, a group's instructions lie all over the table, and the embedded engine
        visits most of it for each group: an export's rate fell from 13,215 pairs/s at 1M
        pairs to 7,422 at 3M."""
        approved = str(Status.APPROVED)
        id_of = (self.ids_in_range(part) if ids is None else ids).of(part["lo"], part["hi"])
        cols = self.driver.columns(Q.instructions_in_range(self.d), part)
        subject_of: dict[int, str] = {}
        sessions: dict[int, list[tuple[str, str, int]]] = {}
        rows = zip(
            *(cols.get(c, []) for c in ("ref", "session", "name", "position")),
            *(cols.get(c, []) for c in ("status", "subject")),
            strict=True,
        )
        for ref, session, name, position, status, subject in rows:
            sessions.setdefault(ref, []).append((session, name, position or 0))
            if status == approved and subject in subjects and ref in id_of:
                subject_of.setdefault(ref, subject)
        kept = sorted(subject_of)
        if not kept:
            return []
        found: dict[int, InstructionDetail] = {}
        by_id = {id_of[ref]: ref for ref in kept}
        for batch in batched(list(by_id), self.nodes.bulk_batch_size):
            columns = self.driver.columns(Q.instruction_columns(self.d), {"ids": batch})
            for node in _nodes(INSTRUCTION, columns):
                ref = by_id[node.id]
                found[ref] = InstructionDetail(node, sessions[ref] if links else [])
        if links:
            cols = self.driver.columns(Q.linked_names_in_range(self.d, COVERS), part)
            link_cols = (cols.get(c, []) for c in ("ref", "dst", "name", "position"))
            for ref, dst, name, position in zip(*link_cols, strict=True):
                if (detail := found.get(ref)) is not None:
                    detail.concepts.append((dst, name, position or 0))
        if responses:
            cols = self.driver.columns(Q.responses_in_range(self.d), part)
            for ref, node in zip(cols.get("ref", []), _nodes(RESPONSE, cols), strict=True):
                if (detail := found.get(ref)) is not None:
                    detail.responses.append(node)
        return [(subject_of[ref], found[ref].sort()) for ref in kept if ref in found]

    def details_of(
        self,
        ids: Sequence[str],
        concepts: NameIndex | None = None,
        sessions: NameIndex | None = None,
        *,
        links: bool = True,
        responses: bool = True,
    ) -> dict[str, InstructionDetail]:
        """`details_below` for instructions given by id (unknown ids are left out): each
        read is a join over the whole instruction table on the embedded engine. Given name
        indexes of concepts and sessions, their names are looked up there (`linked_names`)."""
        instructions = self.nodes.get_many(ids)
        found = {i: InstructionDetail(instructions[i]) for i in ids if i in instructions}
        known = list(found)
        if links:
            for i, linked in self.linked_names(COVERS, known, concepts).items():
                found[i].concepts = linked
            for i, linked in self.linked_names(FROM, known, sessions).items():
                found[i].sessions = linked
        if responses:
            answers = self.nodes.linked(ANSWERS, known, reverse=True)
            nodes = self.nodes.get_many(sorted({r for v in answers.values() for r in v}))
            for i, rs in answers.items():
                found[i].responses = [nodes[r] for r in rs if r in nodes]
        for detail in found.values():
            detail.sort()
        return found

    def discipline_paths(self, subject_ids: Sequence[str]) -> dict[str, list[str]]:
        """The approved discipline paths each subject sits under."""
        out: dict[str, list[str]] = {s: [] for s in subject_ids}
        params: dict[str, Any] = {"approved": str(Status.APPROVED)}
        for batch in batched(list(dict.fromkeys(subject_ids)), self.batch_size):
            for r in self.driver.execute(Q.discipline_paths(self.d), {**params, "ids": batch}):
                out[r["id"]].append(join_path([r["f"], r["s"], r["d"]]))
        for v in out.values():
            v.sort()
        return out

    def mark_duplicates(self, pairs: Sequence[tuple[str, str, str]]) -> None:
        """Mark (duplicate, kept, how) triples: a DUPLICATE_OF edge and the `duplicate` flag."""
        with self.driver.transaction() as tx:
            rows = [{"id": dup, "duplicate": how} for dup, _, how in pairs]
            self.nodes.upsert_nodes(INSTRUCTION, rows, tx=tx)
            self.nodes.upsert_edges(DUPLICATE_OF, [(dup, kept) for dup, kept, _ in pairs], tx=tx)

    def clear_duplicates(self, instruction_ids: Sequence[str]) -> None:
        with self.driver.transaction() as tx:
            for batch in batched(list(instruction_ids), self.batch_size):
                tx.execute(Q.delete_edges_from(self.d, DUPLICATE_OF), {"ids": batch})
                rows = [{"id": i, "duplicate": None} for i in batch]
                self.nodes.upsert_nodes(INSTRUCTION, rows, tx=tx)


def _nodes(kind: NodeKind, columns: Mapping[str, list[Any]]) -> Iterator[Node]:
    """Nodes of a kind read a column per property (a column no row named is empty)."""
    names = kind.prop_names
    for values in zip(*(columns.get(n, []) for n in names), strict=True):
        yield Node(kind, dict(zip(names, values, strict=True)))
