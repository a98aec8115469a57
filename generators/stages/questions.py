"""Questions: homework questions from sampled key-concept combinations, with the syllabus."""

from __future__ import annotations

import json
from collections.abc import Sequence, Set
from typing import Any

from graph.driver import Tx
from graph.model import DISCIPLINE, FIELD, INSTRUCTION, SUBFIELD, SUBJECT, node_id, split_path
from graph.records import Node

from ..jobs import Outcome, UnitSpec, UnitStatus, unit_id
from ..sampling import (
    CoveragePlan,
    Sample,
    Sampler,
    Strategy,
    plan_coverage,
    plan_sampler,
    shares,
)
from ..validators import Text
from .base import PromptStage


class QuestionsStage(PromptStage):
    """Homework questions from sampled key-concept combinations, with the whole syllabus."""

    name = "questions"
    prompt_name = "question"
    scope_kinds = (FIELD, SUBFIELD, DISCIPLINE, SUBJECT)
    #: a coverage job's last plan, with how its concepts stand (see _coverage_units)
    coverage: CoveragePlan | None = None

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
        rows = self.store.jobs.units(self.job_id)
        stored = sorted(
            (UnitSpec(u["id"], u["target_id"], json.loads(u["payload"])) for u in rows),
            key=lambda u: u.payload["index"],
        )
        if "min_per_concept" in self.options:
            done = {u["id"] for u in rows if u.get("status") == UnitStatus.DONE}
            return stored + self._coverage_units(subjects, stored, done)
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

    def _coverage_units(
        self, subjects: list[str], stored: Sequence[UnitSpec], done: Set[str]
    ) -> list[UnitSpec]:
        """A coverage job's plan (`min_per_concept`, `until_share`): the samples still needed
        for every approved concept in scope to be covered by that many questions (see
        sampling.CoveragePlanner), after the stored units. Questions asked count, and so
        do stored units not done yet (a re-run asks them); no stored combination is drawn
        again. So a re-run plans only what is missing: nothing when the taxonomy did not
        change, the work of a subject or session added since, concepts a review brought
        back. The plan's figures are kept as `self.coverage`."""
        target = self.options.get("min_per_concept") or 1
        share = self.options.get("until_share")
        self.coverage = plan_coverage(
            self.store,
            subjects,
            target=int(target),
            until_share=float(share) if share is not None else None,
            seed=int(self.options.get("seed", 0)),
            strategy=Strategy(self.options["strategy"]),
            basic_ratio=float(self.options.get("basic_ratio", 0.5)),
            planned=[u.payload["concept_ids"] for u in stored if u.id not in done],
            taken=[u.payload["combo_key"] for u in stored],
        )
        return self._units(self.coverage.samples, len(stored))

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

    def read_inputs(self, units: Sequence[UnitSpec]) -> dict[str, Any | Outcome]:
        """The subjects of these units, the discipline each is taught in and their
        syllabi, read once for all of them."""
        ids = sorted({u.payload["subject_id"] for u in units})
        subjects = self.store.nodes.get_many(ids)
        paths = self.store.taxonomy.paths_of_many(ids)
        syllabi = self.store.syllabi.of(ids)
        found: dict[str, Any] = {}
        # what the units of one subject share, made once per subject (a job asks thousands
        # of units of each): its sessions and concepts by id, its discipline, its syllabus
        shared: dict[str, tuple[dict[str, Any], dict[str, str], str, list[Any]]] = {}
        for unit in units:
            p = unit.payload
            subject = subjects.get(p["subject_id"])
            if subject is None:
                found[unit.id] = Outcome(error="the sampled subject is no longer in the store")
                continue
            if subject.id not in shared:
                syllabus = syllabi.get(subject.id, [])
                seen = paths.get(subject.id) or []
                shared[subject.id] = (
                    {s.id: s for s in syllabus},
                    {c.id: c.name for s in syllabus for c in s.concepts},
                    split_path(seen[0])[2] if seen else "",
                    [
                        {"title": s.title, "concepts": [c.name for c in s.concepts]}
                        for s in syllabus
                    ],
                )
            by_id, names, discipline, view = shared[subject.id]
            sessions = [by_id[i] for i in p["session_ids"] if i in by_id]
            if len(sessions) != len(p["session_ids"]):
                found[unit.id] = Outcome(error="a sampled session is no longer in the syllabus")
                continue
            found[unit.id] = {
                "subject": subject.name,
                "level": subject.props.get("level") or "",
                "discipline": discipline,
                "syllabus": view,
                "sessions": [{"title": s.title, "description": s.description} for s in sessions],
                "concepts": [names[c] for c in p["concept_ids"] if c in names],
                "strategy": p["strategy"],
                "last_session_title": sessions[-1].title,
            }
        return found

    def texts(self, unit: UnitSpec, value: Any) -> list[Text]:
        return [Text("question", value.question)]

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
