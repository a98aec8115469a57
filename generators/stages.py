"""The GLAN stages as jobs: taxonomy expansion, subjects, syllabus, questions, answers.

Each stage reads its inputs from the graph, calls the model through one prompt file, and
writes its outputs back with provenance (model, prompt name and version, job, unit).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any, ClassVar

from graph.driver import Tx
from graph.model import (
    CHILD_REL,
    DISCIPLINE,
    FIELD,
    INSTRUCTION,
    RESPONSE,
    SESSION,
    SUBFIELD,
    SUBJECT,
    NodeKind,
    Source,
    Status,
    child_kind,
    hierarchy_id,
    join_path,
    name_key,
    node_id,
    split_path,
)
from graph.records import Node, SessionView, validate_name

from .jobs import Outcome, Stage, UnitSpec, unit_id
from .prompting import Prompt, get_prompt
from .sampling import Sample, Sampler, Strategy, plan_sampler, shares


class PromptStage(Stage):
    """A stage with one prompt; calls it and turns the result into an Outcome."""

    prompt_name: ClassVar[str]

    @property
    def prompt(self) -> Prompt:
        return get_prompt(self.prompt_name)

    async def ask(self, **variables: Any) -> Outcome:
        prompt = self.prompt
        messages = prompt.render(**variables)
        result = await self.llm.structured(messages, prompt.response_model, self.params)
        return Outcome(value=result.value, raw=result.raw, error=result.error, usage=result.usage)

    def stamp(self, unit: UnitSpec) -> dict[str, Any]:
        return self.provenance(unit, self.prompt.name, self.prompt.version)


class TaxonomyStage(PromptStage):
    """Propose children of a taxonomy node (fields, sub-fields or disciplines) for review."""

    name = "taxonomy"
    prompt_name = "taxonomy"
    scope_kinds = (FIELD, SUBFIELD)

    def plan(self, scope: Node | None) -> list[UnitSpec]:
        target = scope.id if scope else "root"
        rounds = int(self.options.get("rounds", 1))
        return [
            UnitSpec(
                unit_id(self.name, target, str(r)),
                target,
                {"path": scope.path if scope else "", "round": r},
            )
            for r in range(rounds)
        ]

    async def execute(self, unit: UnitSpec) -> Outcome:
        path = unit.payload["path"]

        def inputs() -> tuple[NodeKind | None, list[str]]:
            parent_kind = self.store.taxonomy.node(path).kind if path else None
            return parent_kind, [c.name for c in self.store.taxonomy.children(path or None)]

        parent_kind, existing = await asyncio.to_thread(inputs)
        kind = child_kind(parent_kind) if parent_kind else FIELD
        assert kind is not None
        return await self.ask(
            path=path or "all human knowledge and capabilities",
            parent_kind=parent_kind.label if parent_kind else "root",
            child_kind=kind.label,
            existing=existing,
            n=int(self.options.get("n", 10)),
        )

    def write(self, unit: UnitSpec, outcome: Outcome, tx: Tx) -> None:
        path = unit.payload["path"]
        parent = self.store.taxonomy.node(path) if path else None
        kind = child_kind(parent.kind) if parent else FIELD
        assert kind is not None
        status = Status.APPROVED if self.options.get("auto_approve") else Status.PROPOSED
        rows: dict[str, dict[str, Any]] = {}
        parent_names = split_path(parent.path or "") if parent else []
        for item in outcome.value.items:
            name = validate_name(item.name, f"proposed {kind.label} name")
            nid = hierarchy_id(kind, name, parent.id if parent else None)
            rows.setdefault(
                nid,
                {
                    "id": nid,
                    "name": name,
                    "key": name_key(name),
                    "path": join_path([*parent_names, name]),
                    "description": item.description or None,
                    "status": str(status),
                    "source": str(Source.LLM),
                    **self.stamp(unit),
                },
            )
        self.store.nodes.upsert_nodes(kind, list(rows.values()), update_existing=False, tx=tx)
        if parent is not None:
            rel = CHILD_REL[parent.kind.label]
            self.store.nodes.upsert_edges(rel, [(parent.id, nid) for nid in rows], tx=tx)


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

    async def execute(self, unit: UnitSpec) -> Outcome:
        def inputs() -> tuple[Node | None, list[str]]:
            return (
                self.store.nodes.get(unit.target_id),
                self.store.syllabi.subject_names(unit.target_id),
            )

        discipline, existing = await asyncio.to_thread(inputs)
        assert discipline is not None
        return await self.ask(
            discipline=discipline.name,
            path=discipline.props.get("path") or discipline.name,
            n=int(self.options.get("per_call", 10)),
            existing=existing,
        )

    def write(self, unit: UnitSpec, outcome: Outcome, tx: Tx) -> None:
        subjects = [s.model_dump() for s in outcome.value.subjects]
        self.store.syllabi.write_subjects(unit.target_id, subjects, self.stamp(unit), tx=tx)


class SyllabusStage(PromptStage):
    """One syllabus per subject: class sessions in order, each with its key concepts."""

    name = "syllabus"
    prompt_name = "syllabus"
    scope_kinds = (FIELD, SUBFIELD, DISCIPLINE, SUBJECT)

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

    async def execute(self, unit: UnitSpec) -> Outcome:
        def inputs() -> tuple[Node | None, list[str]]:
            return (
                self.store.nodes.get(unit.target_id),
                self.store.taxonomy.paths_of(unit.target_id),
            )

        subject, paths = await asyncio.to_thread(inputs)
        assert subject is not None
        discipline = split_path(paths[0])[2] if paths else ""
        return await self.ask(
            subject=subject.name,
            level=subject.props.get("level") or "",
            subtopics=subject.props.get("subtopics") or [],
            discipline=discipline,
            n_sessions=int(self.options.get("sessions", 12)),
        )

    def write(self, unit: UnitSpec, outcome: Outcome, tx: Tx) -> None:
        sessions = [s.model_dump() for s in outcome.value.sessions]
        self.store.syllabi.write_syllabus(unit.target_id, sessions, self.stamp(unit), tx=tx)


class QuestionsStage(PromptStage):
    """Homework questions from sampled key-concept combinations, with the whole syllabus."""

    name = "questions"
    prompt_name = "question"
    scope_kinds = (FIELD, SUBFIELD, DISCIPLINE, SUBJECT)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._syllabi: dict[str, list[SessionView]] = {}
        self._subjects: dict[str, tuple[Node, str]] = {}

    def _subject(self, subject_id: str) -> tuple[Node, str]:
        """A subject and the name of a discipline it is taught in, read once per job."""
        if subject_id not in self._subjects:
            subject = self.store.nodes.get(subject_id)
            assert subject is not None
            paths = self.store.taxonomy.paths_of(subject_id)
            self._subjects[subject_id] = (subject, split_path(paths[0])[2] if paths else "")
        return self._subjects[subject_id]

    def plan(self, scope: Node | None) -> list[UnitSpec]:
        """The job's samples: n split over the subjects in scope that have a syllabus
        (sampling.shares), each subject's share drawn from its syllabus.

        A sampled plan depends on coverage at the time, so it is stored with the job and
        read back on a re-run rather than drawn again. But the subjects with a syllabus
        may have grown since (a subjects or syllabus stage that failed before did its
        work on this re-run): each of those with no sample in the stored plan gets the
        share it has now, drawn after the stored units. Nothing stored is redrawn, so
        done units stay done and no combination is planned twice; a re-run with no new
        subjects plans nothing new. The job then holds more than n samples: the ones
        drawn before, and the new subjects' shares."""
        subjects = self.store.taxonomy.ids_in_scope(scope, SUBJECT)
        stored = sorted(
            (
                UnitSpec(u["id"], u["target_id"], json.loads(u["payload"]))
                for u in self.store.jobs.units(self.job_id)
            ),
            key=lambda u: u.payload["index"],
        )
        n, seed = int(self.options.get("n", 10)), int(self.options.get("seed", 0))
        strategy = Strategy(self.options["strategy"])
        if not stored:
            sampler = self._sampler(subjects, n)
            samples = sampler.draw_shares(shares(n, sampler.all_ids, seed), strategy)
            if len(samples) < n:  # subjects that ran out of combinations: others make up
                samples += sampler.draw(n - len(samples), strategy)
            return self._units(samples, 0)
        planned = {u.payload["subject_id"] for u in stored}
        stats = self.store.syllabi.concept_stats(subjects)
        now = shares(n, [s for s in subjects if stats.get(s, (0, 0))[0] > 0], seed)
        new = {s: k for s, k in now.items() if k and s not in planned}
        if not new:
            return stored
        sampler = self._sampler(
            sorted(new), sum(new.values()), taken=[u.payload["combo_key"] for u in stored]
        )
        return stored + self._units(sampler.draw_shares(new, strategy), len(stored))

    def _sampler(self, subjects: list[str], n: int, taken: Sequence[str] = ()) -> Sampler:
        return plan_sampler(
            self.store,
            subjects,
            n,
            seed=int(self.options.get("seed", 0)),
            prefer_uncovered=bool(self.options.get("prefer_uncovered", True)),
            basic_ratio=float(self.options.get("basic_ratio", 0.5)),
            taken_keys=taken,
        )

    def _units(self, samples: Sequence[Sample], first: int) -> list[UnitSpec]:
        """Units for samples, indexed from `first` (the plan's order when read back)."""
        return [
            UnitSpec(
                unit_id(self.name, self.job_id, s.combo_key),
                s.subject_id,
                {
                    "index": first + i,
                    "subject_id": s.subject_id,
                    "strategy": str(s.strategy),
                    "session_ids": list(s.session_ids),
                    "concept_ids": list(s.concept_ids),
                    "combo_key": s.combo_key,
                },
            )
            for i, s in enumerate(samples)
        ]

    def _syllabus(self, subject_id: str) -> list[SessionView]:
        if subject_id not in self._syllabi:
            self._syllabi.update(self.store.syllabi.of([subject_id]))
        return self._syllabi.get(subject_id, [])

    async def execute(self, unit: UnitSpec) -> Outcome:
        p = unit.payload
        subject, discipline = await asyncio.to_thread(self._subject, p["subject_id"])
        syllabus = await asyncio.to_thread(self._syllabus, subject.id)
        by_id = {s.id: s for s in syllabus}
        names = {c.id: c.name for s in syllabus for c in s.concepts}
        sessions = [by_id[i] for i in p["session_ids"] if i in by_id]
        if len(sessions) != len(p["session_ids"]):
            return Outcome(error="a sampled session is no longer in the syllabus")
        return await self.ask(
            subject=subject.name,
            level=subject.props.get("level") or "",
            discipline=discipline,
            syllabus=[
                {"title": s.title, "concepts": [c.name for c in s.concepts]} for s in syllabus
            ],
            sessions=[{"title": s.title, "description": s.description} for s in sessions],
            concepts=[names[c] for c in p["concept_ids"] if c in names],
            strategy=p["strategy"],
            last_session_title=sessions[-1].title,
        )

    def write(self, unit: UnitSpec, outcome: Outcome, tx: Tx) -> None:
        self.write_many([(unit, outcome)], tx)

    def write_many(self, done: Sequence[tuple[UnitSpec, Outcome]], tx: Tx) -> None:
        rows, covers, sessions = [], [], []
        for unit, outcome in done:
            p = unit.payload
            iid = node_id(INSTRUCTION, unit.id)
            rows.append(
                {
                    "id": iid,
                    "text": outcome.value.question.strip(),
                    "strategy": p["strategy"],
                    "seed": int(self.options.get("seed", 0)),
                    "combo_key": p["combo_key"],
                    "subject_id": p["subject_id"],
                    "temperature": self.params.temperature,
                    "top_p": self.params.top_p,
                    "created_at": None,
                    **self.stamp(unit),
                }
            )
            covers += [(iid, c) for c in p["concept_ids"]]
            sessions += [(iid, s) for s in p["session_ids"]]
        self.store.instructions.write_instructions(rows, covers, sessions, tx=tx)


class AnswersStage(PromptStage):
    """Answers from the answer model, in a call of their own (as the paper found best)."""

    name = "answers"
    prompt_name = "answer"
    scope_kinds = (FIELD, SUBFIELD, DISCIPLINE, SUBJECT, SESSION)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subjects: dict[str, Node | None] = {}
        self._asked_in: dict[str, str | None] = {}  # instruction id -> its subject's id

    def job_key(self) -> dict[str, Any]:
        return {**self.options, "model": self.params.model}

    def plan(self, scope: Node | None) -> list[UnitSpec]:
        return [
            UnitSpec(unit_id(self.name, i, self.params.model), i, {"instruction_id": i})
            for i in self.store.instructions.ids_in_scope(scope)
        ]

    def _inputs(self, instruction_id: str) -> tuple[Node | None, Node | None]:
        """An instruction and its subject (each subject read once per job)."""
        instruction = self.store.nodes.get(instruction_id)
        if instruction is None:
            return None, None
        sid = instruction.props["subject_id"]
        self._asked_in[instruction.id] = sid
        if sid not in self._subjects:
            self._subjects[sid] = self.store.nodes.get(sid) if sid else None
        return instruction, self._subjects[sid]

    async def execute(self, unit: UnitSpec) -> Outcome:
        instruction, subject = await asyncio.to_thread(self._inputs, unit.target_id)
        assert instruction is not None
        prompt = self.prompt
        messages = prompt.render(
            question=instruction.props["text"],
            subject=subject.name if subject else "",
            level=(subject.props.get("level") if subject else "") or "",
        )
        result = await self.llm.text(messages, prompt.response_model, self.params)
        return Outcome(value=result.value, raw=result.raw, error=result.error, usage=result.usage)

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
        asked_in = [self._asked_in.get(unit.target_id) for unit, _ in done]
        subject_ids = [s for s in asked_in if s] if seen else None
        self.store.instructions.write_responses(rows, subject_ids=subject_ids, tx=tx)


STAGES: dict[str, type[Stage]] = {
    s.name: s for s in (TaxonomyStage, SubjectsStage, SyllabusStage, QuestionsStage, AnswersStage)
}
PIPELINE = ("subjects", "syllabus", "questions", "answers")
