"""Asking for coverage instead of a count: a questions job planned so that every approved
concept in scope is covered by K questions, against a loopback model stub."""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from generators.jobs import JobStatus
from generators.llm import LLMClient, LLMConfig, StageParams
from generators.pipeline import PipelineOptions, run_stages
from generators.sampling import CoveragePlanner, Strategy
from graph.model import CONCEPT, SUBJECT, Status
from graph.records import SyllabusIndex
from graph.store import Store
from tests.graph_checks import integrity_problems
from tests.llm_stub import Stub, fake_glan_model, run_stub
from tests.test_combinations import PHYSICS, write_syllabi

#: concepts per session: a one-session subject, a one-concept session, sessions above five
SIZES = {"Optics": [3, 1, 7], "Mechanics": [5, 6, 2, 4], "Acoustics": [4], "Heat": [8, 3]}


@pytest.fixture
def model() -> Iterator[Stub]:
    with run_stub(fake_glan_model()) as stub:
        yield stub


@pytest.fixture
def physics(embedded_store: Store) -> Store:
    write_syllabi(embedded_store, SIZES)
    return embedded_store


def run(store: Store, stub: Stub, options: PipelineOptions, path: str | None = PHYSICS) -> Any:
    def params_for(stage: str) -> StageParams:
        return StageParams(model="stub", temperature=1.0, top_p=0.95)

    async def main() -> Any:
        llm = LLMClient(LLMConfig(base_url=stub.base_url, backoff_base_s=0.01))
        try:
            found = await run_stages(
                store, llm, params_for, ["questions"], path, options, concurrency=4
            )
        finally:
            await llm.aclose()
        return found[0]

    return asyncio.run(main())


def covers_per_concept(store: Store) -> dict[str, int]:
    """Questions covering each approved concept (0 for none)."""
    rows = store.driver.execute(
        "MATCH (c:Concept) WHERE c.status = $a OPTIONAL MATCH (i:Instruction)-[:COVERS]->(c) "
        "RETURN c.id AS id, count(i) AS k",
        {"a": str(Status.APPROVED)},
    )
    return {r["id"]: int(r["k"]) for r in rows}


def units(store: Store, job_id: str) -> list[dict[str, Any]]:
    found = [{**u, "payload": json.loads(u["payload"])} for u in store.jobs.units(job_id)]
    return sorted(found, key=lambda u: u["payload"]["index"])


@pytest.mark.parametrize("strategy", ["basic", "hard", "mixed"])
def test_min_per_concept_two_leaves_no_concept_below_two_and_no_combination_twice(
    physics: Store, model: Stub, strategy: str
) -> None:
    options = PipelineOptions(min_per_concept=2, strategy=strategy, seed=5)
    job = run(physics, model, options)
    assert job.status == JobStatus.COMPLETED and job.done == job.total > 0
    counts = covers_per_concept(physics)
    plan = units(physics, job.job_id)
    assert integrity_problems(physics) == []  # among them: no combination asked twice
    short = 0
    if strategy == "hard":  # a one-session syllabus has no hard combinations
        acoustics = physics.taxonomy.children(f"{PHYSICS}/Acoustics/Acoustics 0")
        assert all(counts.pop(c.id) == 0 for c in acoustics)
        assert {u["payload"]["strategy"] for u in plan} == {"hard"}
        short = len(acoustics)
    if strategy == "basic":  # a one-concept session has one basic combination
        (alone,) = physics.taxonomy.children(f"{PHYSICS}/Optics/Optics 1")
        assert counts.pop(alone.id) == 1
        assert {u["payload"]["strategy"] for u in plan} == {"basic"}
        short = 1
    assert min(counts.values()) >= 2
    assert physics.coverage.gaps(PHYSICS, 1, min_count=2).below_min_count == short
    # every sample raised a concept that was short when it was drawn: none is wasted
    seen: Counter[str] = Counter()
    for u in plan:
        concepts = u["payload"]["concept_ids"]
        assert min(seen[c] for c in concepts) < 2
        seen.update(concepts)
        assert 1 <= len(concepts) <= 5


def test_one_question_per_concept_takes_the_fewest_samples(physics: Store, model: Stub) -> None:
    """Basic samples of up to five concepts: a session of n concepts needs ceil(n / 5)."""
    job = run(physics, model, PipelineOptions(min_per_concept=1, strategy="basic", seed=2))
    fewest = sum(math.ceil(n / 5) for sizes in SIZES.values() for n in sizes)
    assert job.total == fewest
    assert min(covers_per_concept(physics).values()) == 1


def test_a_rerun_plans_only_what_is_missing(physics: Store, model: Stub) -> None:
    options = PipelineOptions(min_per_concept=2, seed=1)
    first = run(physics, model, options)
    again = run(physics, model, options)
    assert (again.job_id, again.total, again.skipped) == (first.job_id, first.total, first.total)

    # a subject added since, with a syllabus: the rerun plans its work alone
    added = write_syllabi(physics, {"Optics": [3, 1, 7], "Plasmas": [4, 3]})["Plasmas"]
    third = run(physics, model, options)
    new = units(physics, first.job_id)[first.total :]
    assert new and {u["target_id"] for u in new} == {added}
    assert third.total == first.total + len(new) and third.skipped == first.total
    assert min(covers_per_concept(physics).values()) >= 2

    # a concept added by hand to a session: only questions holding it are planned
    session = physics.taxonomy.children(f"{PHYSICS}/Heat")[0]
    concept = physics.taxonomy.add_node(session.path, CONCEPT, "entropy by hand")
    fourth = run(physics, model, options)
    newest = units(physics, first.job_id)[third.total :]
    assert len(newest) == fourth.total - third.total >= 1
    assert all(concept.id in u["payload"]["concept_ids"] for u in newest)
    assert covers_per_concept(physics)[concept.id] >= 2
    assert integrity_problems(physics) == []


def test_questions_asked_before_count(physics: Store, model: Stub) -> None:
    """A job of n questions first: the coverage job covers what it left."""
    run(physics, model, PipelineOptions(n=12, seed=4))
    before = covers_per_concept(physics)
    job = run(physics, model, PipelineOptions(min_per_concept=1, seed=4))
    asked = Counter(c for u in units(physics, job.job_id) for c in u["payload"]["concept_ids"])
    assert set(asked) >= {c for c, k in before.items() if k == 0}
    assert min(covers_per_concept(physics).values()) >= 1
    assert integrity_problems(physics) == []


def test_until_share_covers_that_share(physics: Store, model: Stub) -> None:
    total = sum(sum(s) for s in SIZES.values())
    job = run(physics, model, PipelineOptions(until_share=0.5, seed=3))
    covered = sum(k >= 1 for k in covers_per_concept(physics).values())
    assert math.ceil(total / 2) <= covered < total
    assert job.total <= math.ceil(total / 2)  # each question covers one more at least
    rest = run(physics, model, PipelineOptions(min_per_concept=1, seed=3))
    assert rest.total and min(covers_per_concept(physics).values()) == 1


def test_the_plan_is_the_same_for_a_seed(embedded_store: Store, tmp_path: Any) -> None:
    from graph.config import StoreConfig

    write_syllabi(embedded_store, SIZES)
    other = Store.open(StoreConfig(db_path=tmp_path / "other.lbug"))
    try:
        write_syllabi(other, SIZES)
        subjects = sorted(embedded_store.taxonomy.ids_in_scope(None, SUBJECT))
        assert subjects == sorted(other.taxonomy.ids_in_scope(None, SUBJECT))
        from generators.sampling import plan_coverage

        def plan(store: Store, seed: int) -> list[tuple[str, ...]]:
            found = plan_coverage(store, subjects, target=3, seed=seed)
            return [s.concept_ids for s in found.samples]

        assert plan(embedded_store, 7) == plan(other, 7)
        assert plan(embedded_store, 7) != plan(embedded_store, 8)
    finally:
        other.close()


def index(sizes: list[list[int]], covered: int = 0) -> SyllabusIndex:
    """A syllabus index of subjects with sessions of these sizes."""
    subjects, session_start, sessions, concept_start, concepts = [], [0], [], [0], []
    for i, syllabus in enumerate(sizes):
        subjects.append(f"s{i}")
        for j, n in enumerate(syllabus):
            sessions.append(f"s{i}.{j}")
            concepts += [f"c{i}.{j}.{k}" for k in range(n)]
            concept_start.append(len(concepts))
        session_start.append(len(sessions))
    return SyllabusIndex(
        subjects, session_start, sessions, concept_start, concepts, [covered] * len(concepts)
    )


def test_thinnest_concepts_come_first() -> None:
    """Pass by pass: every concept gets its first question before any gets a second."""
    ix = index([[5, 5], [4], [6, 2]])
    plan = CoveragePlanner(ix, target=2, seed=1, strategy=Strategy.MIXED).plan()
    seen: Counter[str] = Counter()
    first_round = True
    for s in plan.samples:
        short = [c for c in s.concept_ids if seen[c] == 0]
        if not short:
            first_round = False
        else:
            assert first_round, "a concept's first question came after another's second"
        seen.update(s.concept_ids)
    assert (plan.reached, plan.short, plan.concepts) == (22, 0, 22)


def test_a_combination_asked_before_is_never_drawn() -> None:
    ix = index([[2]])
    from generators.sampling import combo_key

    asked = {combo_key(["c0.0.0", "c0.0.1"]), combo_key(["c0.0.0"])}
    plan = CoveragePlanner(ix, target=2, seed=1, strategy=Strategy.BASIC, asked=asked).plan()
    # {c1} and nothing else holding c0 is left: c0 stays short
    assert [s.concept_ids for s in plan.samples] == [("c0.0.1",)]
    assert (plan.short, plan.reached) == (2, 0)


def test_a_coverage_job_is_known_by_its_target_and_resumed_with_it() -> None:
    """A coverage job's key holds its target, not n; a server resuming it from the stored
    key (PipelineOptions.from_stage) starts the same job."""
    for options in (
        PipelineOptions(min_per_concept=2, seed=3, strategy="hard"),
        PipelineOptions(until_share=0.5),
        PipelineOptions(n=7),
    ):
        key = options.for_stage("questions")
        assert ("n" in key) is not options.coverage_target
        assert PipelineOptions.from_stage("questions", key).for_stage("questions") == key
    # n does not make another coverage job
    assert PipelineOptions(min_per_concept=2, n=5).for_stage("questions") == PipelineOptions(
        min_per_concept=2, n=500
    ).for_stage("questions")
