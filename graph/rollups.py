"""Subject rollups: what lies below each subject, kept on the subject, so coverage above
subjects sums a few thousand rollups instead of walking millions of concepts.

A rollup holds a subject's visible sessions and concepts, its covered concepts, the
instructions asked from its visible sessions, their answers and their distinct concept
combinations. Writes keep it current in their own transaction:

- a write of instructions or answers adds what it changed (`questions_written`,
  `answers_written`), from what it wrote and a few reads: the subjects of the visible
  sessions asked from, the concepts no instruction covered yet, the combinations already
  asked, the instructions answered. A batch of 50,000 pairs touching every subject costs a
  few grouped reads, not a walk of every subject. They rely on one rule of the model,
  which the stages keep: an instruction covers concepts of the sessions it is asked from;
- a write that can change more than it knows (a syllabus written again, a session or
  concept reviewed, added or deleted, an instruction asked from one more session)
  recomputes the few subjects it touched (`recompute`).

Each rollup also carries a write count (`rollup_dirty`) and the count it is current for
(`rollup_clean`). A subject whose rollup is missing or behind (a store written by an older
glan, a bulk load, `mark_stale`) is recomputed by `refresh` before a coverage read; after
the writes above none is, and that read costs one pass over the subjects' table.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field
from functools import partial
from operator import itemgetter
from typing import Any

from . import queries as Q
from .combinations import split, subject_space
from .driver import GraphDriver, Row, Tx, batched
from .model import (
    HIERARCHY,
    INSTRUCTION,
    ROLLUPS,
    SUBJECT,
    Status,
)
from .nodes import Nodes, Part, spans
from .records import KeySet, Node

#: What each rollup counts, by short name.
_SESSIONS, _CONCEPTS, _INSTRUCTIONS, _RESPONSES, _COVERED, _COMBOS, _SPACE_HI, _SPACE_LO = ROLLUPS
#: The properties of a subject with nothing below it: a rollup of zeros, current.
EMPTY_ROLLUP: dict[str, int] = {**dict.fromkeys(ROLLUPS, 0), "rollup_dirty": 0, "rollup_clean": 0}


@dataclass
class Before:
    """What a write of instructions reads before it writes (see Rollups.before_questions)."""

    #: session id -> its subject, for the visible sessions asked from
    sessions: dict[str, str] = field(default_factory=dict)
    #: concept id -> its subject, for the visible concepts no instruction covered yet
    uncovered: dict[str, str] = field(default_factory=dict)
    #: (subject, combination) already asked from a visible session of that subject
    asked: set[tuple[str, str]] = field(default_factory=set)
    #: (instruction id, combination) of the instructions those were asked by
    asked_by: set[tuple[str, str]] = field(default_factory=set)
    #: instruction id -> its combination, for the rows written
    keys: dict[str, str | None] = field(default_factory=dict)
    #: whether the rows set combinations (else those of instructions there before stay)
    sets_keys: bool = False


class Rollups(Part):
    """Keeps subject rollups current as writes land, and recomputes stale ones before reads."""

    def __init__(self, nodes: Nodes) -> None:
        super().__init__(nodes)
        #: where this process alone writes (Dialect.one_writer): the combination of every
        #: instruction, read at its first write of questions and kept by each write after
        #: it (see before_questions)
        self._asked: KeySet | None = None

    # ------------------------------------------------------------------ writes keep them

    def before_questions(
        self,
        rows: Sequence[Mapping[str, Any]],
        sessions: Sequence[tuple[str, str]],
        *,
        tx: Tx | None = None,
    ) -> Before:
        """What a write of instructions must read before it writes, to know what it changes:
        two grouped reads whatever the size of the batch. The visible sessions asked from,
        with their subjects and their visible concepts no instruction covers yet (walked only
        for subjects whose current rollup leaves some uncovered); and the instructions
        already asked with one of the batch's combinations.

        An instruction covers concepts of the sessions it is asked from (the model's rule,
        which the stages keep): a concept first covered here counts when it is under one
        of the batch's sessions. One under none of them is not looked up (reading every
        concept of the sessions to find it would double the cost of this read); its
        subject's rollup counts it when next recomputed (`mark_stale` and `refresh`)."""
        runner: Tx | GraphDriver = tx if tx is not None else self.driver
        args = {"rejected": str(Status.REJECTED)}
        before = Before()
        before.keys = {str(r["id"]): str(k) if (k := r.get("combo_key")) else None for r in rows}
        before.sets_keys = bool(rows) and "combo_key" in rows[0]  # rows share their keys
        session_ids = list(dict.fromkeys(s for _, s in sessions))
        asked_from = self._read(partial(Q.session_subjects, self.d), session_ids, args, tx=tx)
        walk: list[str] = []  # the sessions of subjects with open concepts, walked to them
        for r in asked_from:
            before.sessions[r["id"]] = r["subject"]
            if not r["full"]:
                walk.append(r["id"])
        below = self._read(partial(Q.sessions_below, self.d), walk, args, tx=tx) if walk else ()
        before.uncovered = {c: r["subject"] for r in below for c in r["open"] or () if c}
        keys = self._maybe_asked({k for k in before.keys.values() if k})
        found: dict[str, str] = {}  # instruction with one of those keys -> its key
        if keys:
            keys, found = self._asked_here(before.keys, keys, tx=tx)
        parts = self.nodes.ranges(INSTRUCTION, self.nodes.instructions_per_read) if keys else []
        for batch in batched(keys, self.nodes.bulk_batch_size):
            for part in parts:  # a range of instructions at a time (Q.asked_combos)
                for r in runner.execute(Q.asked_combos(self.d), {"keys": batch, **part}):
                    found[r["id"]] = r["key"]
        for i, subjects in self._asking(list(found), tx=tx).items():
            before.asked_by.add((i, found[i]))
            before.asked.update((s, found[i]) for s in subjects)
        return before

    def _asked_here(
        self, rows: Mapping[str, str | None], keys: Sequence[str], *, tx: Tx | None
    ) -> tuple[list[str], dict[str, str]]:
        """Of the `keys` an instruction may carry already: those still to look up over every
        instruction, and the instructions of `rows` (id -> key) there before that carry one.

        A key only the rows there before carry needs no pass over the store: what a
        combination asked before changes (Before.asked) counts only for new instructions,
        and an instruction written again needs only its own key (Before.asked_by). A job
        written again over pairs it wrote, on the 10M-pair store, took 31.8 s per 2,000 pairs
        in the pass (Q.asked_combos), for each range of the instruction table a scan of
        every instruction's key."""
        wanted = set(keys)
        mine = [i for i, k in rows.items() if k in wanted]
        stored = {
            str(r["id"]): str(r["key"])
            for r in self._read(partial(Q.stored_combos, self.d), mine, {}, tx=tx)
        }
        found = {i: k for i, k in stored.items() if k in wanted}
        # a key one of the rows brings new (or with another key) may be another's
        unsure = {k for i, k in rows.items() if k in wanted and stored.get(i) != k}
        return [k for k in keys if k in unsure], found

    def _maybe_asked(self, keys: set[str]) -> list[str]:
        """The keys among these that an instruction may carry already, which a write must
        look up: a pass over every instruction's key (Q.asked_combos), 0.2-0.3 s at 1.2M
        pairs and growing with the store, for each group of units a job writes.

        Where this process alone writes, it keeps every key written (those of writes that
        were rolled back too: a key looked up and not found costs only time), and only the
        keys found there are looked up. They are read once, at its first write of
        questions: 8 bytes a key (KeySet)."""
        if not self.d.one_writer:
            return sorted(keys)
        if self._asked is None:
            every = self.nodes.every_instruction(Q.combo_keys_in_range(self.d))
            self._asked = KeySet.of_parts(t["key"] for t in every)
        return sorted(self._asked.update(keys))  # those held before these were added

    def questions_written(
        self,
        before: Before,
        new_ids: Iterable[str],
        covers: Sequence[tuple[str, str]],
        sessions: Sequence[tuple[str, str]],
        *,
        tx: Tx | None = None,
    ) -> None:
        """Bring rollups up to date after a write of instructions: `before` as read before
        it, the ids it created, and the COVERS and FROM edges it created.

        The rollups count as their reads do: an instruction once per subject of a visible
        session it was asked from, a combination once per subject, a visible concept once
        when the first instruction covers it. An instruction that was there before counts
        as it did, unless it was asked from one more session or its combination changed:
        then its subjects are recomputed."""
        new = new_ids if isinstance(new_ids, Set) else set(new_ids)
        keys, asked, uncovered = before.keys, before.asked, before.uncovered
        shown = before.sessions
        again: set[str] = set()  # subjects to recompute
        # (new instruction, a subject it counts in); an instruction there before asked from
        # one more session, or one this write did not bring, has that subject recomputed
        asked_in = {(i, shown[x]) for i, x in sessions if x in shown and i in new}
        if set(map(itemgetter(0), sessions)) - new:
            again.update(shown[x] for i, x in sessions if x in shown and i not in new)
        combos = {(s, k) for i, s in asked_in if (k := keys.get(i)) and (s, k) not in asked}
        # concepts no instruction covered before: covered now, by an instruction of the
        # rows; an edge from one the write did not bring (it may not exist) has the
        # concept's subject recomputed
        firsts = uncovered.keys() & set(map(itemgetter(1), covers))
        if firsts and not set(map(itemgetter(0), covers)) <= keys.keys():
            again.update(uncovered[c] for i, c in covers if c in firsts and i not in keys)
            firsts = {c for i, c in covers if c in firsts and i in keys}
        # an instruction written again counts as before if it was asked with this
        # combination; otherwise its combination changed, or it counted nowhere: its
        # subjects (if any) are recomputed
        if before.sets_keys and len(new) < len(keys):
            unsure = [i for i, k in keys.items() if i not in new and (i, k) not in before.asked_by]
            again.update(s for found in self._asking(unsure, tx=tx).values() for s in found)
        adds: defaultdict[str, dict[str, int]] = defaultdict(dict)
        for name, counts in (
            (_INSTRUCTIONS, Counter(s for _, s in asked_in)),
            (_COMBOS, Counter(s for s, _ in combos)),
            (_COVERED, Counter(map(uncovered.__getitem__, firsts))),
        ):
            for subject, n in counts.items():
                adds[subject][name] = n
        self.add({s: a for s, a in adds.items() if s not in again}, tx=tx)
        self.recompute(sorted(again), tx=tx)

    def answers_written(
        self, new_ids: Iterable[str], answers: Sequence[tuple[str, str]], *, tx: Tx | None = None
    ) -> None:
        """Bring rollups up to date after a write of answers: the ids it created, and the
        ANSWERS edges (answer, instruction) it created. A new answer counts once in each
        subject its instruction counts in; an answer there before that answers one more
        instruction, or one of several new answers to one instruction, has those subjects
        recomputed."""
        new = set(new_ids)
        answering: defaultdict[str, int] = defaultdict(int)  # new answers per instruction
        per_answer: defaultdict[str, int] = defaultdict(int)  # edges per answer
        for r, i in answers:
            per_answer[r] += 1
            if r in new:
                answering[i] += 1
        # one new answer to an instruction, with one edge: a count per subject in the
        # database; anything else (an answer there before given one more instruction, two
        # answers to one instruction, an answer to two) is read instruction by instruction
        unsure = {r for r, n in per_answer.items() if r not in new or n > 1}
        odd = {i for r, i in answers if r in unsure} | {i for i, n in answering.items() if n > 1}
        plain = [i for i in answering if i not in odd]
        adds: defaultdict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(ROLLUPS, 0))
        for subjects in self._asking(plain, tx=tx).values():
            for subject in subjects:
                adds[subject][_RESPONSES] += 1
        again = {s for found in self._asking(sorted(odd), tx=tx).values() for s in found}
        self.add({s: a for s, a in adds.items() if s not in again}, tx=tx)
        self.recompute(sorted(again), tx=tx)

    def syllabus_written(
        self, subject_id: str, sizes: Sequence[int], *, tx: Tx | None = None
    ) -> None:
        """After a syllabus was written whose sessions are all new (and so its concepts,
        all approved; `sizes`: each session's concepts): they add to the subject's rollup,
        and nothing can be asked from them yet. Its combination space adds up only when
        the subject had no session before (its hard combinations pair old sessions with
        new ones): otherwise the subject is recomputed."""
        if not sizes:
            return
        runner: Tx | GraphDriver = tx if tx is not None else self.driver
        found = runner.execute(Q.subject_sessions(self.d), {"id": subject_id})
        if found and int(found[0]["n"] or 0):
            self.recompute([subject_id], tx=tx)
            return
        hi, lo = split(subject_space(sizes))
        row = {
            **dict.fromkeys(ROLLUPS, 0),
            _SESSIONS: len(sizes),
            _CONCEPTS: sum(sizes),
            _SPACE_HI: hi,
            _SPACE_LO: lo,
        }
        self.add({subject_id: row}, tx=tx)

    def _asking(self, instruction_ids: Sequence[str], *, tx: Tx | None) -> dict[str, set[str]]:
        """For each instruction: the subjects whose rollups count it (those of the visible
        sessions it was asked from).

        More than a few are read by the ranges of the instruction table that hold them
        (Q.subjects_asking_in_range): those a write just made, or answers, lie close
        together at its end."""
        out: defaultdict[str, set[str]] = defaultdict(set)
        args = {"rejected": str(Status.REJECTED)}
        unique = list(dict.fromkeys(instruction_ids))
        if len(unique) <= self.d.few_ids or not self.nodes.has_refs:
            for r in self._read(partial(Q.subjects_asking, self.d), unique, args, tx=tx):
                out[r["id"]].add(r["subject"])
            return out
        runner: Tx | GraphDriver = tx if tx is not None else self.driver
        refs = self.nodes.refs_of(INSTRUCTION, unique, tx=tx)
        per_read, through = self.nodes.instructions_per_read, self.nodes.instructions_read_through
        for part in spans(refs, per_read, through):
            for r in runner.execute(Q.subjects_asking_in_range(self.d), {**args, **part}):
                if (i := refs.get(r["ref"])) is not None:
                    out[i].add(r["subject"])
        return out

    def _read(
        self,
        build: Callable[..., str],
        ids: Sequence[str],
        params: Mapping[str, Any],
        *,
        tx: Tx | None,
    ) -> Iterator[Row]:
        """Rows of a read from nodes given by id, `build(one=...)` its text over one $id or
        a list of $ids: one id at a time up to `Dialect.few_ids`, else as many at once as a
        bulk write takes. A write's batch names up to hundreds of thousands of concepts, and
        the embedded engine answers each list by a pass over the tables on the way."""
        runner: Tx | GraphDriver = tx if tx is not None else self.driver
        unique = list(dict.fromkeys(ids))
        if len(unique) <= self.d.few_ids:
            query = build(one=True)
            for i in unique:
                yield from runner.execute(query, {**params, "id": i})
            return
        query = build(one=False)
        for batch in batched(unique, self.nodes.bulk_batch_size):
            yield from runner.execute(query, {**params, "ids": batch})

    def add(self, adds: Mapping[str, Mapping[str, int]], *, tx: Tx | None = None) -> None:
        """Add to the rollups of subjects (id -> rollup name -> how much), in the caller's
        transaction. A current rollup stays current, a stale one stale (see add_to_rollups).
        Only the rollups some subject changes are sent, and subjects with the same
        additions go as one group."""
        names = [r for r in ROLLUPS if any(a.get(r) for a in adds.values())]
        groups: defaultdict[tuple[int, ...], list[str]] = defaultdict(list)
        for subject, a in adds.items():
            values = tuple(int(a.get(r) or 0) for r in names)
            if any(values):
                groups[values].append(subject)
        rows = [{"ids": ids, **dict(zip(names, v, strict=True))} for v, ids in groups.items()]
        runner: Tx | GraphDriver = tx if tx is not None else self.driver
        for batch in batched(rows, self.batch_size):
            runner.execute(Q.add_to_rollups(self.d, names), {"groups": batch})

    def recompute(self, subject_ids: Sequence[str], *, tx: Tx | None = None) -> None:
        """Count the rollups of these subjects again and store them current, in the caller's
        transaction: for a write below a few subjects that can change more than it knows."""
        ids = list(dict.fromkeys(s for s in subject_ids if s))
        if not ids:
            return
        values = self._count(ids, tx=tx)
        runner: Tx | GraphDriver = tx if tx is not None else self.driver
        for batch in batched([values[i] for i in ids], self.batch_size):
            runner.execute(Q.set_rollups(self.d), {"rows": batch})

    def _count(self, ids: Sequence[str], *, tx: Tx | None = None) -> dict[str, dict[str, Any]]:
        """The rollups of these subjects, counted by walking below each (from their ids)."""
        values: dict[str, dict[str, Any]] = {i: {"id": i, **dict.fromkeys(ROLLUPS, 0)} for i in ids}
        args = {"rejected": str(Status.REJECTED), "approved": str(Status.APPROVED)}
        for build in (Q.rollup_syllabus, Q.rollup_generated, Q.rollup_covered):
            _merge(values, self.nodes.by_ids(partial(build, self.d), ids, args, tx=tx))
        return values

    # ------------------------------------------------------------------ the fallback

    def mark_stale(self, subject_ids: Sequence[str], *, tx: Tx | None = None) -> None:
        """Mark the rollups of these subjects stale, in the caller's transaction, for a write
        that cannot say what it changed: the next coverage read recomputes them."""
        runner: Tx | GraphDriver = tx if tx is not None else self.driver
        for batch in batched(list(dict.fromkeys(subject_ids)), self.batch_size):
            runner.execute(Q.mark_subjects_dirty(self.d), {"ids": batch})

    def refresh(self, scope: Node | None = None) -> int:
        """Recompute the stale subject rollups under a scope (everything when None); returns
        how many were stale. One read finds them: with none stale, it is all a read pays.

        Each is stamped with the write count it was computed for, inside one transaction,
        so a write that lands meanwhile leaves it stale rather than lost.
        """
        top = scope.level if scope else None
        if top is not None and top > HIERARCHY.index(SUBJECT):
            return 0
        params: dict[str, Any] = {"id": scope.id} if scope else {}
        stale = {
            r["id"]: int(r["dirty"])
            for r in self.driver.execute(Q.stale_rollups(self.d, top), params)
        }
        ids = sorted(stale)
        if not ids:
            return 0
        values: dict[str, dict[str, Any]] = {
            i: {"id": i, **dict.fromkeys(ROLLUPS, 0), "rollup_clean": stale[i]} for i in ids
        }
        args = {"rejected": str(Status.REJECTED), "approved": str(Status.APPROVED)}
        counts = (Q.rollup_syllabus, Q.rollup_generated, Q.rollup_covered)
        if self.nodes.reads_whole(ids):
            # Most subjects are stale, as after a bulk load: each count walks every subject
            # once (see Syllabi.index). The stamps still hold: a write that lands meanwhile
            # moves its subject's write count past the stamp it gets here.
            for build in counts:
                _merge(values, self.nodes.every_subject(build(self.d, every=True), args))
            for batch in batched(ids, self.batch_size):
                with self.driver.transaction() as tx:
                    self.nodes.update_existing(SUBJECT, [values[i] for i in batch], tx=tx)
            return len(ids)
        for batch in batched(ids, self.batch_size):
            with self.driver.transaction() as tx:
                for build in counts:
                    _merge(values, self.nodes.by_ids(partial(build, self.d), batch, args, tx=tx))
                self.nodes.update_existing(SUBJECT, [values[i] for i in batch], tx=tx)
        return len(ids)


def _merge(values: dict[str, dict[str, Any]], rows: Iterable[Row]) -> None:
    """Put the rollup columns of count rows into the values of their subjects; session
    `sizes` (Q.rollup_syllabus) as the subject's combination space, in its two rollups."""
    for r in rows:
        if r["id"] in values:
            found = values[r["id"]]
            found.update({k: int(v or 0) for k, v in r.items() if k not in ("id", "sizes")})
            if "sizes" in r:
                hi, lo = split(subject_space(int(n or 0) for n in r["sizes"] or ()))
                found.update({_SPACE_HI: hi, _SPACE_LO: lo})
