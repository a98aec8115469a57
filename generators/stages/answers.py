"""Answers: each question answered by the answer model in a call of its own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from graph.driver import Tx
from graph.model import DISCIPLINE, FIELD, RESPONSE, SESSION, SUBFIELD, SUBJECT, node_id
from graph.records import Node

from ..jobs import Outcome, UnitSpec, unit_id
from ..validators import Text
from .base import PromptStage


class AnswersStage(PromptStage):
    """Answers from the answer model, in a call of their own (as the paper found best)."""

    name = "answers"
    prompt_name = "answer"
    scope_kinds = (FIELD, SUBFIELD, DISCIPLINE, SUBJECT, SESSION)

    free_text = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: instruction id -> its subject's id, for instructions asked and not yet written
        self._asked_in: dict[str, str | None] = {}

    def job_key(self) -> dict[str, Any]:
        return {**self.options, "model": self.params.model}

    def plan(self, scope: Node | None) -> list[UnitSpec]:
        return [
            UnitSpec(unit_id(self.name, i, self.params.model), i, {"instruction_id": i})
            for i in self.store.instructions.ids_in_scope(scope)
        ]

    def read_inputs(self, units: Sequence[UnitSpec]) -> dict[str, Any | Outcome]:
        """The instructions to answer and their subjects, read once for all of them."""
        instructions = self.store.nodes.get_many([u.target_id for u in units])
        subject_ids = {i.props.get("subject_id") for i in instructions.values()}
        subjects = self.store.nodes.get_many(sorted(s for s in subject_ids if s))
        found: dict[str, Any] = {}
        for unit in units:
            instruction = instructions.get(unit.target_id)
            if instruction is None:
                found[unit.id] = Outcome(error="the question is no longer in the store")
                continue
            sid = instruction.props.get("subject_id")
            self._asked_in[instruction.id] = sid
            subject = subjects.get(sid) if sid else None
            found[unit.id] = {
                "question": instruction.props["text"],
                "subject": subject.name if subject else "",
                "level": (subject.props.get("level") if subject else "") or "",
            }
        return found

    def texts(self, unit: UnitSpec, value: Any) -> list[Text]:
        return [Text("answer", value.text)]

    def write(self, unit: UnitSpec, outcome: Outcome, tx: Tx) -> None:
        self.write_many([(unit, outcome)], tx)

    def write_many(self, done: Sequence[tuple[UnitSpec, Outcome]], tx: Tx) -> None:
        rows = [
            {
                "id": node_id(RESPONSE, unit.target_id, self.params.model),
                "text": outcome.value.text,
                "instruction_id": unit.target_id,
                "temperature": self.params.temperature,
                "top_p": self.params.top_p,
                "created_at": None,
                **self.stamp(unit),
            }
            for unit, outcome in done
        ]
        # the subjects were read with the questions; the store looks up any not seen here
        seen = all(unit.target_id in self._asked_in for unit, _ in done)
        asked_in = [self._asked_in.pop(unit.target_id, None) for unit, _ in done]
        subject_ids = [s for s in asked_in if s] if seen else None
        self.store.instructions.write_responses(rows, subject_ids=subject_ids, tx=tx)
