"""Follow-ups: conversations that go on from question-answer pairs, one turn at a time.

A turn is two units, each a call of its own:

- ask: the question model writes the student's next question from the pair's syllabus
  context (its sessions and their key concepts) and the conversation so far: a
  clarification, a harder variant, or an application to another key concept of those
  sessions, saying which kind and which concept it adds (checked against the sessions'
  concepts; a concept not among them is asked for again, as a reply off the schema is);
- answer: the model that answered the pair answers it given the whole conversation (the
  answer prompt of the pair's question, then the earlier turns as chat messages).

Turn k+1 needs turn k answered, so the stage is chained (Stage.chained): for each pair its
plan holds the steps done and the next one the store allows, and the runner plans again
after each round until a round finds nothing new. The plan is read from the store each
time, so a run killed anywhere is continued by the next one, which asks no step twice.

Ids are deterministic: a turn's is the pair's answer, its position and the asking model; its
units' are the same with the step and the model it asks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from graph.driver import Tx
from graph.model import (
    DISCIPLINE,
    FIELD,
    SESSION,
    SUBFIELD,
    SUBJECT,
    TURN,
    name_key,
    node_id,
)
from graph.records import Node, now_iso

from ..jobs import Outcome, Stage, UnitSpec, unit_id
from ..llm import ChatRequest, Messages, Reply, StageParams
from ..prompting import FollowUp, Prompt, get_prompt
from ..validators import Text

ASK, ANSWER = "ask", "answer"
#: follow-up turns a conversation gets when no number is given
DEFAULT_TURNS = 2


def turn_id(response_id: str, position: int, model: str) -> str:
    """The id of the follow-up at `position` (1 for the first) of the conversation going on
    from the answer `response_id`, asked by `model`."""
    return node_id(TURN, response_id, str(position), model)


@dataclass
class AskedTurn:
    """A follow-up question accepted: the model's reply, and the concept it adds (its id),
    None when it names none or one the conversation already used."""

    reply: FollowUp
    concept_id: str | None


class FollowupsStage(Stage):
    """Follow-up turns for every pair under a scope answered by the answer model."""

    name = "followups"
    scope_kinds = (FIELD, SUBFIELD, DISCIPLINE, SUBJECT, SESSION)
    chained = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: what `prepare` read for each unit not yet asked, dropped once its request is built
        self.inputs: dict[str, Any] = {}
        #: for asks sent: unit id -> the key concepts of its pair's sessions (name key ->
        #: (id, name)), and the ids the conversation already used
        self._offered: dict[str, tuple[dict[str, tuple[str, str]], set[str]]] = {}
        #: for units sent: unit id -> the subject its pair was asked in
        self._subject: dict[str, str | None] = {}

    @property
    def turns(self) -> int:
        return int(self.options.get("turns", DEFAULT_TURNS))

    @property
    def answer_params(self) -> StageParams:
        """The answering model's parameters: the answers stage's, where the settings give
        them (FollowupParams), else this stage's own."""
        answer = getattr(self.params, "answer", None)
        return answer if isinstance(answer, StageParams) else self.params

    @property
    def ask_prompt(self) -> Prompt:
        return get_prompt("followup")

    @property
    def answer_prompt(self) -> Prompt:
        return get_prompt("answer")

    def job_key(self) -> dict[str, Any]:
        return {
            "turns": self.turns,
            "model": self.params.model,
            "answer_model": self.answer_params.model,
        }

    # ------------------------------------------------------------------ the plan

    def plan(self, scope: Node | None) -> list[UnitSpec]:
        """For each pair under the scope answered by the answer model: the ask of each turn
        whose previous turn is answered (the first always), and the answer of each turn
        asked, up to `turns` follow-ups. What the store holds decides, so the same store
        gives the same plan, and each round's writes extend it by the next steps."""
        asker, answerer = self.params.model, self.answer_params.model
        pairs = self.store.turns.pairs(self.store.instructions.ids_in_scope(scope), answerer)
        states = self.store.turns.states(list(pairs.values()))
        units: list[UnitSpec] = []
        for instruction_id in sorted(pairs):
            response_id = pairs[instruction_id]
            stored = {t.id: t for t in states.get(response_id, []) if t.model == asker}
            for position in range(1, self.turns + 1):
                tid = turn_id(response_id, position, asker)
                payload = {
                    "instruction_id": instruction_id,
                    "response_id": response_id,
                    "turn_id": tid,
                    "position": position,
                }
                ask = unit_id(self.name, response_id, str(position), asker)
                units.append(UnitSpec(ask, response_id, {**payload, "step": ASK}))
                if tid not in stored:
                    break
                answer = unit_id(self.name, tid, ANSWER, answerer)
                units.append(UnitSpec(answer, tid, {**payload, "step": ANSWER}))
                if not stored[tid].answered:
                    break
        return units

    # ------------------------------------------------------------------ requests

    def prepare(self, units: Sequence[UnitSpec]) -> None:
        self.inputs.update(self.read_inputs(units))

    def read_inputs(self, units: Sequence[UnitSpec]) -> dict[str, Any]:
        """Each unit's conversation so far and, for asks, the key concepts of its pair's
        sessions and those the conversation used: a few reads for all of them."""
        instruction_ids = sorted({u.payload["instruction_id"] for u in units})
        response_ids = sorted({u.payload["response_id"] for u in units})
        details = self.store.instructions.details_of(instruction_ids, responses=False)
        responses = self.store.nodes.get_many(response_ids)
        turns = self.store.turns.of(response_ids)
        subject_ids = sorted(
            {d.instruction.props.get("subject_id") or "" for d in details.values()}
        )
        subjects = self.store.nodes.get_many([s for s in subject_ids if s])
        asks = [u for u in units if u.payload["step"] == ASK]
        syllabi = self.store.syllabi.of([s for s in subject_ids if s]) if asks else {}
        earlier = [t.id for ts in turns.values() for t in ts]
        reached = self.store.turns.reached(earlier) if asks else {}
        found: dict[str, Any] = {}
        for unit in units:
            p = unit.payload
            detail = details.get(p["instruction_id"])
            response = responses.get(p["response_id"])
            if detail is None or response is None:
                found[unit.id] = Outcome(error="the pair is no longer in the store")
                continue
            sid = detail.instruction.props.get("subject_id")
            self._subject[unit.id] = sid
            subject = subjects.get(sid) if sid else None
            mine = {
                int(t.props.get("position") or 0): t
                for t in turns.get(p["response_id"], [])
                if t.props.get("model") == self.params.model
            }
            position = int(p["position"])
            before = [mine.get(k) for k in range(1, position)]
            if any(t is None or t.props.get("answer") is None for t in before):
                found[unit.id] = Outcome(error="an earlier turn is no longer answered")
                continue
            conversation = [
                {"role": "user", "content": detail.instruction.props["text"]},
                {"role": "assistant", "content": response.props["text"]},
            ]
            for t in before:
                assert t is not None
                conversation += [
                    {"role": "user", "content": t.props["text"]},
                    {"role": "assistant", "content": t.props["answer"]},
                ]
            common = {
                "subject": subject.name if subject else "",
                "level": (subject.props.get("level") if subject else "") or "",
            }
            if p["step"] == ANSWER:
                this = mine.get(position)
                if this is None:
                    found[unit.id] = Outcome(error="the turn to answer is no longer there")
                    continue
                found[unit.id] = {
                    **common,
                    "question": detail.instruction.props["text"],
                    "then": [*conversation[1:], {"role": "user", "content": this.props["text"]}],
                }
                continue
            session_ids = [s for s, _, _ in detail.sessions]
            by_id = {s.id: s for s in syllabi.get(sid or "", [])}
            sessions = [by_id[s] for s in session_ids if s in by_id]
            if not sessions:
                found[unit.id] = Outcome(error="the pair's sessions are no longer in the syllabus")
                continue
            used = {c for c, _, _ in detail.concepts}
            used |= {c for t in before if t is not None for c, _, _ in reached.get(t.id, [])}
            concepts = [c for s in sessions for c in s.concepts]
            offered = {name_key(c.name): (c.id, c.name) for c in concepts}
            self._offered[unit.id] = (offered, used)
            found[unit.id] = {
                **common,
                "sessions": [
                    {"title": s.title, "concepts": [c.name for c in s.concepts]} for s in sessions
                ],
                "conversation": conversation,
                "unused": [c.name for c in concepts if c.id not in used],
            }
        return found

    def request(self, unit: UnitSpec) -> ChatRequest | Outcome:
        variables = self.inputs.pop(unit.id, None)
        if variables is None:  # asked without its inputs read first: read them alone
            variables = self.read_inputs([unit]).get(unit.id, {})
        if isinstance(variables, Outcome):
            return variables
        if unit.payload["step"] == ASK:
            messages = self.ask_prompt.render(**variables)
            return self.llm.request(messages, self.ask_prompt.response_model, self.params)
        then: Messages = variables.pop("then")
        messages = [*self.answer_prompt.render(**variables), *then]
        return self.llm.text_request(
            messages, self.answer_prompt.response_model, self.answer_params
        )

    def texts(self, unit: UnitSpec, value: Any) -> list[Text]:
        """A follow-up question is checked as a question, its answer as an answer."""
        if unit.payload["step"] == ASK:
            return [Text("question", value.question)]
        return [Text("answer", value.text)]

    def accept(self, unit: UnitSpec, request: ChatRequest, reply: Reply) -> Outcome:
        """A reply validated; an ask's concept must be one of its pair's sessions' key
        concepts (asked for again otherwise), and is kept as the concept it adds when the
        conversation had not used it."""
        outcome = super().accept(unit, request, reply)
        if unit.payload["step"] != ASK or not outcome.ok:
            return outcome
        followup: FollowUp = outcome.value
        if unit.id not in self._offered:  # accepted without its request built here
            self.read_inputs([unit])
        offered, used = self._offered.get(unit.id, ({}, set()))
        concept_id = None
        if followup.concept is not None:
            named = offered.get(name_key(followup.concept))
            if named is None:
                names = ", ".join(name for _, name in offered.values()) or "none"
                outcome.value, outcome.error = (
                    None,
                    (
                        f"the answer did not match FollowUp: concept {followup.concept!r} is not a "
                        f"key concept of the sessions; name one of: {names}, or null"
                    ),
                )
                return outcome
            concept_id = named[0]
        outcome.value = AskedTurn(followup, concept_id if concept_id not in used else None)
        return outcome

    # ------------------------------------------------------------------ writes

    def write(self, unit: UnitSpec, outcome: Outcome, tx: Tx) -> None:
        self.write_many([(unit, outcome)], tx)

    def write_many(self, done: Sequence[tuple[UnitSpec, Outcome]], tx: Tx) -> None:
        """Asks become turns (with the concept each adds), in one write; answers are set on
        their turns, in another."""
        asked = [(u, o) for u, o in done if u.payload["step"] == ASK]
        answered = [(u, o) for u, o in done if u.payload["step"] == ANSWER]
        missing = [u.payload["instruction_id"] for u, _ in asked if u.id not in self._subject]
        found = self.store.nodes.get_many(missing) if missing else {}
        rows, reaches = [], []
        for unit, outcome in asked:
            p, value = unit.payload, outcome.value
            self._offered.pop(unit.id, None)
            sid = self._subject.pop(unit.id, None)
            if unit.payload["instruction_id"] in found:
                sid = found[unit.payload["instruction_id"]].props.get("subject_id")
            rows.append(
                {
                    "id": p["turn_id"],
                    "text": value.reply.question,
                    "kind": value.reply.kind,
                    "position": int(p["position"]),
                    "response_id": p["response_id"],
                    "instruction_id": p["instruction_id"],
                    "subject_id": sid,
                    "temperature": self.params.temperature,
                    "top_p": self.params.top_p,
                    "created_at": None,
                    **self.provenance(unit, self.ask_prompt.name, self.ask_prompt.version),
                }
            )
            if value.concept_id is not None:
                reaches.append((p["turn_id"], value.concept_id))
        if rows:
            self.store.turns.write_turns(rows, reaches, tx=tx)
        answers = []
        for unit, outcome in answered:
            self._subject.pop(unit.id, None)
            answers.append(
                {
                    "id": unit.payload["turn_id"],
                    "answer": outcome.value.text,
                    "answer_model": self.answer_params.model,
                    "answer_prompt_name": self.answer_prompt.name,
                    "answer_prompt_version": self.answer_prompt.version,
                    "answer_job_id": self.job_id,
                    "answer_unit_id": unit.id,
                    "answered_at": now_iso(),
                }
            )
        if answers:
            self.store.turns.write_answers(answers, tx=tx)
