"""The combination space: its size against a brute-force count, as the sampler draws it, and
as coverage, trees and gaps report it on every backend."""

from __future__ import annotations

import random
from itertools import combinations
from typing import Any

import pytest

from generators.sampling import Sampler, Strategy, combo_key
from graph.combinations import (
    INT64_MAX,
    basic_space,
    hard_space,
    join,
    log10,
    split,
    subject_space,
)
from graph.model import INSTRUCTION, SUBJECT, Status, node_id
from graph.store import Store
from tests.conftest import SMALL_TAXONOMY

PHYSICS = "Natural Sciences/Physical Sciences/Physics"
#: concepts per session of each subject written below
SYLLABI = {"Optics": [3, 1, 4], "Mechanics": [2, 6], "Acoustics": [5]}


def brute_force(sizes: list[int]) -> tuple[int, int]:
    """(basic, hard): every set of 1-5 concepts of the syllabus, by how many sessions it
    touches."""
    concepts = [(s, c) for s, n in enumerate(sizes) for c in range(n)]
    basic = hard = 0
    for k in range(1, 6):
        for chosen in combinations(concepts, k):
            touched = len({s for s, _ in chosen})
            basic += touched == 1
            hard += touched == 2
    return basic, hard


@pytest.mark.parametrize("seed", range(8))
def test_space_sizes_equal_a_brute_force_count(seed: int) -> None:
    rng = random.Random(seed)
    sizes = [rng.randint(0, 6) for _ in range(rng.randint(1, 5))]
    basic, hard = brute_force(sizes)
    assert sum(basic_space(n) for n in sizes) == basic, sizes
    assert hard_space(sizes) == hard, sizes
    assert subject_space(sizes) == basic + hard


def test_large_spaces_are_held_exactly_and_given_as_log10_beyond_int64() -> None:
    space = subject_space([40_000, 3])  # C(40000, 5) alone is about 8.5e20
    assert space > INT64_MAX
    assert join(*split(space)) == space  # two int64 limbs hold it exactly
    assert join(*split(12_345_678_901)) == 12_345_678_901
    assert log10(space) == pytest.approx(20.93, abs=0.01)
    assert log10(0) is None


def write_syllabi(store: Store, syllabi: dict[str, list[int]] = SYLLABI) -> dict[str, str]:
    """Subjects of Physics with sessions of these sizes; their ids by name."""
    store.taxonomy.load(SMALL_TAXONOMY)
    physics = store.taxonomy.node(PHYSICS)
    ids = store.syllabi.write_subjects(physics.id, [{"name": n} for n in syllabi], {})
    for sid, (name, sizes) in zip(ids, syllabi.items(), strict=True):
        sessions = [
            {"title": f"{name} {i}", "concepts": [f"{name} {i}.{j}" for j in range(n)]}
            for i, n in enumerate(sizes)
        ]
        store.syllabi.write_syllabus(sid, sessions, {})
    return dict(zip(syllabi, ids, strict=True))


def test_the_space_is_what_the_sampler_draws(embedded_store: Store) -> None:
    """Drawn until nothing new is left, a small syllabus gives exactly its space."""
    ids = write_syllabi(embedded_store, {"Tiny": [2, 1, 2]})
    stats = embedded_store.syllabi.concept_stats(list(ids.values()))
    sampler = Sampler(stats, embedded_store.syllabi.index, seed=3, prefer_uncovered=False)
    drawn = sampler.draw(500, Strategy.MIXED)
    assert len(drawn) == subject_space([2, 1, 2]) == sum(brute_force([2, 1, 2]))


def _ask(store: Store, subject: str, concepts: list[str], sessions: list[str], name: str) -> None:
    row = {"id": node_id(INSTRUCTION, name), "text": name, "strategy": "basic",
           "combo_key": combo_key(concepts), "subject_id": subject}  # fmt: skip
    store.instructions.write_instructions(
        [row], [(row["id"], c) for c in concepts], [(row["id"], s) for s in sessions]
    )


def test_coverage_trees_and_gaps_report_the_space(store: Store) -> None:
    ids = write_syllabi(store)
    spaces = {name: sum(brute_force(sizes)) for name, sizes in SYLLABI.items()}
    report = store.coverage.report(PHYSICS)
    assert report.total.combination_space == sum(spaces.values())
    by_name = {r.node.name: r for r in report.children if r.node}
    assert {n: by_name[n].combination_space for n in SYLLABI} == spaces
    assert store.coverage.report(None).total.combination_space == sum(spaces.values())

    optics = store.taxonomy.children(f"{PHYSICS}/Optics")
    concepts = [[c.id for c in store.taxonomy.children(s.path)] for s in optics]
    _ask(store, ids["Optics"], concepts[0][:2], [optics[0].id], "basic one")
    _ask(store, ids["Optics"], concepts[0][:1], [optics[0].id], "basic two")
    _ask(store, ids["Optics"], [concepts[0][0], concepts[2][0]], [optics[0].id, optics[2].id],
         "hard")  # fmt: skip

    subject = store.coverage.report(f"{PHYSICS}/Optics")
    assert (subject.total.combination_space, subject.total.combinations_used) == (
        spaces["Optics"],
        3,
    )
    assert subject.total.combination_share == pytest.approx(3 / spaces["Optics"])
    # a session's own space is its basic one, used by the questions asked from it alone
    sessions = {
        r.node.name: (r.combination_space, r.combinations_used) for r in subject.children if r.node
    }
    assert sessions == {"Optics 0": (7, 2), "Optics 1": (1, 0), "Optics 2": (15, 0)}
    rolled = store.coverage.report(PHYSICS)
    assert rolled.total.combinations_used == 3
    assert store.coverage.report(f"{PHYSICS}/Optics/Optics 0").total.combination_space == 7

    tree = store.coverage.tree(PHYSICS, 2, combinations=True)
    assert (tree.combination_space, tree.combinations_used) == (sum(spaces.values()), 3)
    optics_node = next(c for c in tree.children if c.path.endswith("Optics"))
    assert optics_node.combination_space == spaces["Optics"]
    assert {c.path.rsplit("/", 1)[1]: c.combination_space for c in optics_node.children} == {
        "Optics 0": 7,
        "Optics 1": 1,
        "Optics 2": 15,
    }

    gaps = store.coverage.gaps(PHYSICS, 2, min_count=1, thinnest=True)
    # Optics has combinations asked; the two others none, lowest first then by id
    assert {g.node.name for g in gaps.thinnest_subjects} == {"Mechanics", "Acoustics"}
    assert all(g.used == 0 and g.space == spaces[g.node.name] for g in gaps.thinnest_subjects)
    assert len(gaps.thinnest_sessions) == 2 and all(g.used == 0 for g in gaps.thinnest_sessions)
    every = store.coverage.gaps(PHYSICS, 100, min_count=2, thinnest=True)
    assert every.below_min_count == sum(sum(s) for s in SYLLABI.values()) - 1  # one has 2
    assert [g.node.name for g in every.thinnest_subjects][-1] == "Optics"
    assert [g.node.name for g in every.thinnest_sessions][-1] == "Optics 0"
    assert every.thinnest_sessions[-1].share == pytest.approx(2 / 7)
    # a rejected session leaves the space, and its concepts the count below the minimum
    store.taxonomy.review(optics[2].path or "", Status.REJECTED)
    assert store.coverage.report(f"{PHYSICS}/Optics").total.combination_space == sum(
        brute_force([3, 1])
    )
    assert store.coverage.gaps(PHYSICS, 1, min_count=2).below_min_count == every.below_min_count - 4


def test_subjects_without_space_are_not_thinnest(embedded_store: Store) -> None:
    write_syllabi(embedded_store, {"Empty": [], "One": [1]})
    found = embedded_store.coverage.gaps(None, 10, thinnest=True)
    assert [g.node.name for g in found.thinnest_subjects] == ["One"]
    assert found.thinnest_subjects[0].node.kind is SUBJECT


# ---------------------------------------------------------------------- through the API

ROW = (
    "path combinationSpace combinationSpaceLog10 combinationsUsed combinationShare "
    "counts { concepts }"
)


def test_the_api_gives_the_space_and_plans_for_coverage(api: Any) -> None:
    """coverage, subtree and gaps give the figures; generateInstructions(minPerConcept)
    covers every concept that many times."""
    from graph.records import Node

    store: Store = api.store
    physics: Node = store.taxonomy.node("Natural Sciences/Physical Sciences/Physics")
    store.syllabi.write_subjects(physics.id, [{"name": n} for n in SYLLABI], {})
    for name, sizes in SYLLABI.items():
        sid = store.taxonomy.node(f"{physics.path}/{name}").id
        store.syllabi.write_syllabus(
            sid,
            [
                {"title": f"{name} {i}", "concepts": [f"{name} {i}.{j}" for j in range(n)]}
                for i, n in enumerate(sizes)
            ],  # fmt: skip
            {},
        )
    path = physics.path
    spaces = {n: sum(brute_force(s)) for n, s in SYLLABI.items()}
    found = api.gql(
        f"query($p: String) {{ coverage(path: $p) {{ ... on Coverage {{ total {{ {ROW} }} "
        f"children {{ {ROW} }} }} }} }}",
        {"p": path},
    )["coverage"]
    assert found["total"]["combinationSpace"] == str(sum(spaces.values()))  # an Int64 string
    assert found["total"]["combinationSpaceLog10"] == pytest.approx(log10(sum(spaces.values())))
    assert (found["total"]["combinationsUsed"], found["total"]["combinationShare"]) == (0, 0.0)
    by_name = {c["path"].rsplit("/", 1)[1]: c["combinationSpace"] for c in found["children"]}
    assert {n: by_name[n] for n in SYLLABI} == {n: str(s) for n, s in spaces.items()}

    started = api.gql(
        "mutation($p: String) { generateInstructions(path: $p, minPerConcept: 2, seed: 1) { "
        "__typename ... on JobPayload { job { id } } ... on Problem { message } } }",
        {"p": path},
    )["generateInstructions"]
    assert started["__typename"] == "JobPayload", started
    job = api.wait_for(started["job"]["id"])
    assert job["status"] == "COMPLETED" and job["total"] > 0
    gaps = api.gql(
        "query($p: String) { gaps(path: $p, first: 3, minCount: 2) { ... on Gaps { "
        "conceptsBelowMinCount conceptsBelowMin { concept { name } } "
        "thinnestSubjects { node { name } combinationSpace combinationsUsed combinationShare } "
        "thinnestSessions { node { name } subject combinationShare } } } }",
        {"p": path},
    )["gaps"]
    assert (gaps["conceptsBelowMinCount"], gaps["conceptsBelowMin"]) == (0, [])
    assert len(gaps["thinnestSubjects"]) == 3 and len(gaps["thinnestSessions"]) == 3
    shares = [g["combinationShare"] for g in gaps["thinnestSubjects"]]
    assert shares == sorted(shares) and all(0 < s <= 1 for s in shares)
    tree = api.gql(
        "query($p: String) { subtree(path: $p, depth: 1) { ... on TreeNode { "
        "combinationSpace combinationsUsed children { path combinationShare } } } }",
        {"p": path},
    )["subtree"]
    assert tree["combinationSpace"] == str(sum(spaces.values()))
    assert tree["combinationsUsed"] == job["total"]  # every question a new combination
    assert all(c["combinationShare"] > 0 for c in tree["children"])

    bad = api.gql(
        "mutation($p: String) { generateInstructions(path: $p, minPerConcept: 0) { "
        "__typename ... on Problem { message } } }",
        {"p": path},
    )["generateInstructions"]
    assert bad["__typename"] == "InvalidInputError" and "between" in bad["message"]


def test_the_report_gives_the_space_and_the_least_combined_subjects(
    embedded_store: Store,
) -> None:
    from generators.report import build_report

    ids = write_syllabi(embedded_store)
    optics = embedded_store.taxonomy.children(f"{PHYSICS}/Optics")
    first = [c.id for c in embedded_store.taxonomy.children(optics[0].path)]
    _ask(embedded_store, ids["Optics"], first[:1], [optics[0].id], "one")
    report = build_report(embedded_store, PHYSICS, top=2)
    spaces = {name: sum(brute_force(sizes)) for name, sizes in SYLLABI.items()}
    assert report.combination_space == sum(spaces.values())
    assert report.combination_space_log10 == pytest.approx(log10(sum(spaces.values())))
    assert report.combination_share == pytest.approx(1 / sum(spaces.values()))
    assert [r["subject"].rsplit("/", 1)[1] for r in report.least_combined] == sorted(
        ["Mechanics", "Acoustics"], key=lambda n: ids[n]
    )
    assert report.as_dict()["least_combined"][0]["used"] == 0
