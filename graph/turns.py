"""Conversations: follow-up turns that go on from a question-answer pair.

A turn is the student's next question after a pair (or after the turn before it), with its
answer once the pair's answer model gave it. Each turn CONTINUES the pair's answer and holds
its position (1 for the first follow-up), so a conversation is the pair then its turns in
order; a turn REACHES the concept of the pair's sessions it brings in, if any.

Coverage counts a concept reached by any turn as covered, as it counts one an instruction
covers: a write of turns brings the rollups of their subjects up to date in its own
transaction (a concept no instruction covered and no turn reached before counts once).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

from . import queries as Q
from .driver import Tx, batched
from .model import CONTINUES, REACHES, ROLLUPS, TURN, Status
from .nodes import Nodes, Part
from .records import Node, UpsertResult
from .rollups import Rollups

_COVERED = ROLLUPS[4]  # rollup_covered


@dataclass(frozen=True)
class TurnState:
    """A stored turn as planning sees it: where it stands in its conversation, who asked it
    and whether it is answered."""

    id: str
    position: int
    model: str
    answered: bool


class Turns(Part):
    """Follow-up turns: written with the concepts they reach, read by the pairs they follow."""

    def __init__(self, nodes: Nodes, rollups: Rollups) -> None:
        super().__init__(nodes)
        self.rollups = rollups

    def pairs(self, instruction_ids: Sequence[str], answer_model: str) -> dict[str, str]:
        """Instruction id -> the id of its answer by `answer_model`, for the instructions
        that model answered: the pairs conversations go on from."""
        out: dict[str, str] = {}
        for batch in batched(list(dict.fromkeys(instruction_ids)), self.batch_size):
            params = {"ids": batch, "model": answer_model}
            for r in self.driver.execute(Q.answers_by_model(self.d), params):
                out.setdefault(r["instruction"], r["response"])
        return out

    def states(self, response_ids: Sequence[str]) -> dict[str, list[TurnState]]:
        """The turns going on from each of these answers, by position, without their text."""
        out: dict[str, list[TurnState]] = {}
        for batch in batched(list(dict.fromkeys(response_ids)), self.batch_size):
            for r in self.driver.execute(Q.turn_states(self.d), {"ids": batch}):
                state = TurnState(
                    r["id"], int(r["position"] or 0), r["model"] or "", bool(r["answered"])
                )
                out.setdefault(r["response"], []).append(state)
        for found in out.values():
            found.sort(key=lambda t: (t.position, t.model, t.id))
        return out

    def of(self, response_ids: Sequence[str]) -> dict[str, list[Node]]:
        """The whole turns going on from each of these answers, by position (then by the
        model that asked them)."""
        out: dict[str, list[Node]] = {}
        for batch in batched(list(dict.fromkeys(response_ids)), self.batch_size):
            for r in self.driver.execute(Q.turns_of(self.d), {"ids": batch}):
                out.setdefault(r["response"], []).append(Node.from_row(r["t"]))
        for found in out.values():
            found.sort(
                key=lambda t: (t.props.get("position") or 0, t.props.get("model") or "", t.id)
            )
        return out

    def reached(self, turn_ids: Sequence[str]) -> dict[str, list[tuple[str, str, int]]]:
        """The concepts each of these turns reaches, as sorted (id, name, position)."""
        out: dict[str, list[tuple[str, str, int]]] = {i: [] for i in turn_ids}
        cols = self.nodes.columns_by_ids(partial(Q.linked_from_names, self.d, REACHES), turn_ids)
        link_cols = (cols.get(c, []) for c in ("src", "dst", "name", "position"))
        for src, dst, name, position in zip(*link_cols, strict=True):
            out.setdefault(src, []).append((dst, name, position or 0))
        for v in out.values():
            v.sort()
        return out

    def write_turns(
        self,
        rows: Sequence[Mapping[str, Any]],
        reaches: Sequence[tuple[str, str]],
        *,
        tx: Tx | None = None,
    ) -> UpsertResult:
        """Store follow-up questions (rows of TURN, each naming its `response_id`), each
        continuing its pair's answer, and the concepts they reach (turn id, concept id),
        with the rollups of their subjects brought up to date: all in one transaction (the
        caller's, or one of its own).

        A turn written again reaches what this write says, not what it reached before: its
        old edges go, and its subject is recomputed."""
        with self.driver.transaction() if tx is None else nullcontext(tx) as t:
            args = {"rejected": str(Status.REJECTED)}
            concepts = list(dict.fromkeys(c for _, c in reaches))
            found = self.nodes.by_ids(partial(Q.open_concepts, self.d), concepts, args, tx=t)
            open_in = {r["id"]: r["subject"] for r in found}
            res = self.nodes.upsert_nodes(TURN, rows, tx=t)
            again = [str(r["id"]) for r in rows if str(r["id"]) not in res.new_ids]
            for batch in batched(again, self.batch_size):
                t.execute(Q.delete_edges_from(self.d, REACHES), {"ids": batch})
            continues = [(str(r["id"]), str(r["response_id"])) for r in rows]
            self.nodes.upsert_edges(CONTINUES, continues, new_sources=res.new_ids, tx=t)
            self.nodes.upsert_edges(REACHES, reaches, new_sources=res.new_ids, tx=t)
            # a concept open before this write counts once, however many turns reach it
            firsts = Counter(open_in[c] for c in {c for _, c in reaches} if c in open_in)
            recount = {str(r.get("subject_id") or "") for r in rows if str(r["id"]) in again}
            recount.discard("")
            adds = {s: {_COVERED: n} for s, n in firsts.items() if s not in recount}
            self.rollups.add(adds, tx=t)
            self.rollups.recompute(sorted(recount), tx=t)
        return res

    def write_answers(self, rows: Sequence[Mapping[str, Any]], *, tx: Tx | None = None) -> None:
        """Store the answers to turns already written (rows: the turn's id and its answer_*
        properties). An answer changes nothing a rollup counts."""
        self.nodes.update_existing(TURN, rows, tx=tx)
