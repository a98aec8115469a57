"""The judge: each question-answer pair scored by a judge model against a rubric.

A unit per response and judge model, so a rerun judges only what is left, a judge job over
a larger scope skips the pairs a smaller one judged, and another judge model judges afresh.
The judgement is kept on the Response itself (graph/model.py): export, the `minScore`
filter and the score reads of coverage find it on the node they already read, with no hop
to another node; a pair has one current judgement, the newest, with the judge model, prompt
and job that gave it (each judging's reply stays on its unit). The rubric's `on_topic`
catches what no deterministic validator can: a question that does not belong to the
subject and discipline it was filed under (a subject "Biology" proposed under Algebra).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from graph.driver import Tx
from graph.model import (
    COVERS,
    DISCIPLINE,
    FIELD,
    SCORE_CRITERIA,
    SESSION,
    SUBFIELD,
    SUBJECT,
    split_path,
)
from graph.records import Node, now_iso

from ..jobs import Outcome, UnitSpec, unit_id
from ..validators import Text
from .base import PromptStage


class JudgeStage(PromptStage):
    """Score each question-answer pair: question self-contained and answerable; answer
    correct, complete and using the sampled concepts; on topic; overall, 1-10 each."""

    name = "judge"
    prompt_name = "judge"
    scope_kinds = (FIELD, SUBFIELD, DISCIPLINE, SUBJECT, SESSION)

    def job_key(self) -> dict[str, Any]:
        return {**self.options, "model": self.params.model}

    def plan(self, scope: Node | None) -> list[UnitSpec]:
        return [
            UnitSpec(unit_id(self.name, r, self.params.model), r, {"instruction_id": i})
            for r, i in self.store.instructions.responses_in_scope(scope)
        ]

    def read_inputs(self, units: Sequence[UnitSpec]) -> dict[str, Any | Outcome]:
        """The pairs, the concepts each question was sampled from, and their subjects and
        disciplines, read once for all of them."""
        responses = self.store.nodes.get_many([u.target_id for u in units])
        asked = sorted({u.payload["instruction_id"] for u in units})
        instructions = self.store.nodes.get_many(asked)
        concepts = self.store.instructions.linked_names(COVERS, list(instructions))
        subject_ids = sorted({s for i in instructions.values() if (s := i.props.get("subject_id"))})
        subjects = self.store.nodes.get_many(subject_ids)
        paths = self.store.instructions.discipline_paths(subject_ids)
        found: dict[str, Any] = {}
        for unit in units:
            response = responses.get(unit.target_id)
            instruction = instructions.get(unit.payload["instruction_id"])
            if response is None or instruction is None:
                found[unit.id] = Outcome(error="the pair is no longer in the store")
                continue
            sid = instruction.props.get("subject_id")
            subject = subjects.get(sid) if sid else None
            disciplines = [split_path(p)[-1] for p in paths.get(sid, [])] if sid else []
            found[unit.id] = {
                "subject": subject.name if subject else "",
                "level": (subject.props.get("level") if subject else "") or "",
                "discipline": ", ".join(dict.fromkeys(disciplines)),
                "concepts": [name for _, name, _ in concepts.get(instruction.id, [])],
                "question": instruction.props.get("text") or "",
                "answer": response.props.get("text") or "",
            }
        return found

    def texts(self, unit: UnitSpec, value: Any) -> list[Text]:
        return [Text("rationale", value.rationale)]

    def write(self, unit: UnitSpec, outcome: Outcome, tx: Tx) -> None:
        self.write_many([(unit, outcome)], tx)

    def write_many(self, done: Sequence[tuple[UnitSpec, Outcome]], tx: Tx) -> None:
        stamp = now_iso()
        rows = []
        for unit, outcome in done:
            judged = outcome.value
            rows.append(
                {
                    "id": unit.target_id,
                    "score": judged.overall,
                    **{f"score_{c}": getattr(judged, c) for c in SCORE_CRITERIA},
                    "rationale": judged.rationale,
                    "judge_model": self.params.model,
                    "judge_prompt_name": self.prompt.name,
                    "judge_prompt_version": self.prompt.version,
                    "judge_job_id": self.job_id,
                    "judge_unit_id": unit.id,
                    "judged_at": stamp,
                }
            )
        self.store.instructions.write_judgements(rows, tx=tx)
