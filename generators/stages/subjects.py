"""Subjects: per discipline, N rounds of "which subjects should a student of X learn"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from graph.driver import Tx
from graph.model import DISCIPLINE, FIELD, SUBFIELD
from graph.records import Node

from ..jobs import Outcome, UnitSpec, unit_id
from ..validators import Text
from .base import PromptStage


class SubjectsStage(PromptStage):
    """Per discipline, N rounds of "which subjects should a student of X learn" (paper: 10)."""

    name = "subjects"
    prompt_name = "subjects"
    scope_kinds = (FIELD, SUBFIELD, DISCIPLINE)

    def plan(self, scope: Node | None) -> list[UnitSpec]:
        rounds = int(self.options.get("rounds", 10))
        return [
            UnitSpec(unit_id(self.name, d, str(r)), d, {"discipline_id": d, "round": r})
            for d in self.store.taxonomy.ids_in_scope(scope, DISCIPLINE)
            for r in range(rounds)
        ]

    def read_inputs(self, units: Sequence[UnitSpec]) -> dict[str, Any | Outcome]:
        disciplines = self.store.nodes.get_many(sorted({u.target_id for u in units}))
        existing = {d: self.store.syllabi.subject_names(d) for d in disciplines}
        found: dict[str, Any] = {}
        for unit in units:
            discipline = disciplines.get(unit.target_id)
            if discipline is None:
                found[unit.id] = Outcome(error="the discipline is no longer in the store")
                continue
            found[unit.id] = {
                "discipline": discipline.name,
                "path": discipline.props.get("path") or discipline.name,
                "n": int(self.options.get("per_call", 10)),
                "existing": existing[discipline.id],
            }
        return found

    def texts(self, unit: UnitSpec, value: Any) -> list[Text]:
        out: list[Text] = []
        for i, s in enumerate(value.subjects):
            here = ("subjects", i)
            # no parent to repeat: a course named as its discipline is a course like any
            # other ("Algebra" in Algebra, "Microbiology" in Microbiology), where a session
            # named as its course, or a concept as its session, says nothing
            out.append(Text("subject", s.name, None, "subjects", here))
            out.append(Text("level", s.level, item=here))
            out += [
                Text("subtopic", t, s.name, f"subtopics {i}", (*here, "subtopics", j))
                for j, t in enumerate(s.subtopics)
            ]
        return out

    def write(self, unit: UnitSpec, outcome: Outcome, tx: Tx) -> None:
        subjects = [s.model_dump() for s in outcome.value.subjects]
        self.store.syllabi.write_subjects(unit.target_id, subjects, self.stamp(unit), tx=tx)
