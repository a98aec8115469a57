"""Syllabi: one per subject, class sessions in order, each with its key concepts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from graph.driver import Tx
from graph.model import DISCIPLINE, FIELD, SUBFIELD, SUBJECT, split_path
from graph.records import Node

from ..jobs import Outcome, UnitSpec, unit_id
from ..validators import Text
from .base import PromptStage


class SyllabusStage(PromptStage):
    """One syllabus per subject: class sessions in order, each with its key concepts."""

    name = "syllabus"
    prompt_name = "syllabus"
    scope_kinds = (FIELD, SUBFIELD, DISCIPLINE, SUBJECT)
    parent_variable = "subject"

    def plan(self, scope: Node | None) -> list[UnitSpec]:
        # Subjects whose syllabus came from elsewhere (added by hand) are left alone.
        subjects = self.store.taxonomy.ids_in_scope(scope, SUBJECT)
        has_concepts = self.store.syllabi.concept_stats(subjects)
        known = self.store.jobs.unit_statuses([unit_id(self.name, s) for s in subjects])
        return [
            UnitSpec(unit_id(self.name, s), s, {"subject_id": s})
            for s in subjects
            if has_concepts.get(s, (0, 0))[0] == 0 or unit_id(self.name, s) in known
        ]

    def read_inputs(self, units: Sequence[UnitSpec]) -> dict[str, Any | Outcome]:
        ids = sorted({u.target_id for u in units})
        subjects = self.store.nodes.get_many(ids)
        paths = self.store.taxonomy.paths_of_many(ids)
        found: dict[str, Any] = {}
        for unit in units:
            subject = subjects.get(unit.target_id)
            if subject is None:
                found[unit.id] = Outcome(error="the subject is no longer in the store")
                continue
            seen = paths.get(subject.id) or []
            found[unit.id] = {
                "subject": subject.name,
                "level": subject.props.get("level") or "",
                "subtopics": subject.props.get("subtopics") or [],
                "discipline": split_path(seen[0])[2] if seen else "",
                "n_sessions": int(self.options.get("sessions", 12)),
            }
        return found

    def texts(self, unit: UnitSpec, value: Any) -> list[Text]:
        subject = self.parent_name(unit)
        out: list[Text] = []
        for i, s in enumerate(value.sessions):
            here = ("sessions", i)
            out.append(Text("session", s.title, subject, "sessions", here))
            out.append(Text("description", s.description, item=here))
            out += [
                Text("concept", c, s.title, f"concepts {i}", (*here, "concepts", j))
                for j, c in enumerate(s.concepts)
            ]
        return out

    def write(self, unit: UnitSpec, outcome: Outcome, tx: Tx) -> None:
        sessions = [s.model_dump() for s in outcome.value.sessions]
        self.store.syllabi.write_syllabus(unit.target_id, sessions, self.stamp(unit), tx=tx)
