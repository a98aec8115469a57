"""The store contract: the same tests on every backend the matrix can start."""

from __future__ import annotations

from typing import Any

import pytest

from graph.errors import CycleError, InvalidInput, NodeNotFound, QueryError, WrongKind
from graph.filters import InstructionFilter
from graph.model import (
    CONCEPT,
    DISCIPLINE,
    FIELD,
    FROM,
    HAS_SUBJECT,
    HIERARCHY,
    NODE_KINDS,
    SESSION,
    SUBFIELD,
    SUBJECT,
    Source,
    Status,
    hierarchy_id,
)
from graph.records import Node, SyllabusIndex
from graph.store import Store
from tests.conftest import SMALL_TAXONOMY

PHYSICS = "Natural Sciences/Physical Sciences/Physics"
PURE = "Formal Sciences/Mathematics/Pure Mathematics"


def snapshot(store: Store) -> dict[str, int]:
    return {k.label: store.nodes.count_kind(k) for k in NODE_KINDS}


def build_syllabus(store: Store) -> None:
    store.taxonomy.load(SMALL_TAXONOMY)
    store.taxonomy.add_node(
        PHYSICS,
        SUBJECT,
        "Calculus",
        props={"level": "undergraduate", "subtopics": ["limits", "series"]},
    )
    store.taxonomy.add_node(PURE, SUBJECT, "calculus")  # the same subject, linked again
    for title, concepts in [
        ("Limits", ["epsilon-delta", "continuity"]),
        ("Derivatives", ["chain rule", "product rule", "mean value theorem"]),
    ]:
        session = store.taxonomy.add_node(f"{PHYSICS}/Calculus", SESSION, title)
        for c in concepts:
            store.taxonomy.add_node(session.path, CONCEPT, c)


def test_schema_is_idempotent(store: Store) -> None:
    store.ensure_schema()
    store.taxonomy.load(SMALL_TAXONOMY)
    before = snapshot(store)
    store.ensure_schema()
    store.ensure_schema()
    assert snapshot(store) == before


def test_loading_the_taxonomy_twice_changes_nothing(store: Store) -> None:
    first = store.taxonomy.load(SMALL_TAXONOMY)
    assert first.created == {"Field": 2, "SubField": 3, "Discipline": 5}
    before = snapshot(store)
    second = store.taxonomy.load(SMALL_TAXONOMY)
    assert second.created == {"Field": 0, "SubField": 0, "Discipline": 0}
    assert second.existing == {"Field": 2, "SubField": 3, "Discipline": 5}
    assert snapshot(store) == before


def test_reload_keeps_review_decisions(store: Store) -> None:
    store.taxonomy.load(SMALL_TAXONOMY)
    store.taxonomy.review(PHYSICS, Status.REJECTED)
    store.taxonomy.load(SMALL_TAXONOMY)
    assert store.taxonomy.node(PHYSICS).status == Status.REJECTED


def test_upsert_creates_then_updates_by_deterministic_id(store: Store) -> None:
    fid = hierarchy_id(FIELD, "Arts", None)
    row = {
        "id": fid,
        "name": "Arts",
        "key": "arts",
        "status": "approved",
        "source": "user",
        "path": "Arts",
    }
    res = store.nodes.upsert_nodes(FIELD, [row])
    assert (res.created, res.updated) == (1, 0)
    res = store.nodes.upsert_nodes(FIELD, [{**row, "description": "the arts"}])
    assert (res.created, res.updated) == (0, 1)
    node = store.nodes.get(fid)
    assert node is not None and node.props["description"] == "the arts"
    assert store.nodes.count_kind(FIELD) == 1
    # batches larger than one statement
    store.nodes.batch_size = 7
    rows = [
        {
            "id": hierarchy_id(FIELD, f"F{i}", None),
            "name": f"F{i}",
            "key": f"f{i}",
            "status": "approved",
            "source": "user",
            "path": f"F{i}",
        }
        for i in range(30)
    ]
    assert store.nodes.upsert_nodes(FIELD, rows).created == 30
    assert store.nodes.upsert_nodes(FIELD, rows, update_existing=False).unchanged == 30
    assert store.nodes.count_kind(FIELD) == 31


def test_edges_are_upserted_once(store: Store) -> None:
    store.taxonomy.load(SMALL_TAXONOMY)
    fid = hierarchy_id(FIELD, "Natural Sciences", None)
    sid = hierarchy_id(SUBFIELD, "Life Sciences", fid)
    from graph.model import HAS_SUBFIELD

    assert store.nodes.upsert_edges(HAS_SUBFIELD, [(fid, sid), (fid, sid)]) == 0
    assert [c.name for c in store.taxonomy.children("Natural Sciences")] == [
        "Life Sciences",
        "Physical Sciences",
    ]


def test_path_lookup_ignores_case_and_spacing(store: Store) -> None:
    store.taxonomy.load(SMALL_TAXONOMY)
    nodes = store.taxonomy.resolve("natural  sciences/PHYSICAL sciences/ physics ")
    assert [n.kind for n in nodes] == [FIELD, SUBFIELD, DISCIPLINE]
    assert nodes[-1].name == "Physics"
    assert nodes[-1].path == PHYSICS
    assert nodes[-1].id == hierarchy_id(DISCIPLINE, "Physics", nodes[1].id)
    assert store.nodes.get(nodes[-1].id).name == "Physics"  # type: ignore[union-attr]


def test_unknown_path_names_the_missing_part(store: Store) -> None:
    store.taxonomy.load(SMALL_TAXONOMY)
    with pytest.raises(NodeNotFound, match="'Natural Sciences/Nope' does not exist"):
        store.taxonomy.node("Natural Sciences/Nope/Physics")
    with pytest.raises(NodeNotFound, match="no Discipline named 'Geology'"):
        store.taxonomy.node("Natural Sciences/Physical Sciences/Geology")
    with pytest.raises(NodeNotFound):
        store.taxonomy.node("a/b/c/d/e/f/g")


def test_tree_and_counts(store: Store) -> None:
    build_syllabus(store)
    assert store.coverage.counts() == {
        "fields": 2,
        "subfields": 3,
        "disciplines": 5,
        "subjects": 1,
        "sessions": 2,
        "concepts": 5,
        "instructions": 0,
        "responses": 0,
    }
    assert store.coverage.counts("Natural Sciences")["concepts"] == 5
    tree = store.coverage.tree("Natural Sciences/Physical Sciences", depth=4)
    physics = next(c for c in tree.children if c.node and c.node.name == "Physics")
    assert physics.counts == {
        "subjects": 1,
        "sessions": 2,
        "concepts": 5,
        "instructions": 0,
        "responses": 0,
    }
    calculus = physics.children[0]
    assert [s.node.name for s in calculus.children if s.node] == ["Limits", "Derivatives"]
    assert [len(s.children) for s in calculus.children] == [2, 3]
    chem = next(c for c in tree.children if c.node and c.node.name == "Chemistry")
    assert chem.children == [] and set(chem.counts.values()) == {0}
    assert (
        store.coverage.tree("Natural Sciences/Physical Sciences", depth=3)
        .children[1]
        .children[0]
        .children[0]
        .children
        == []
    )  # depth 3 stops at sessions


def test_shared_subject_is_one_node_under_two_disciplines(store: Store) -> None:
    build_syllabus(store)
    assert store.nodes.count_kind(SUBJECT) == 1
    subject = store.taxonomy.node(f"{PURE}/Calculus")
    assert store.taxonomy.paths_of(subject.id) == [f"{PURE}/Calculus", f"{PHYSICS}/Calculus"]
    # its syllabus is reachable from either discipline
    assert [s.name for s in store.taxonomy.children(f"{PURE}/calculus")] == [
        "Limits",
        "Derivatives",
    ]
    assert store.coverage.counts()["subjects"] == 1  # counted once at the top
    assert store.coverage.counts("Formal Sciences")["concepts"] == 5


def test_reject_hides_subtree_and_approve_restores(store: Store) -> None:
    build_syllabus(store)
    store.taxonomy.review("Natural Sciences", Status.REJECTED)
    assert store.taxonomy.node(PHYSICS).hidden
    counts = store.coverage.counts()
    assert counts["fields"] == 1 and counts["disciplines"] == 2
    assert counts["concepts"] == 5  # still reachable through Pure Mathematics
    store.taxonomy.review(PURE, Status.REJECTED)
    assert store.coverage.counts()["concepts"] == 0
    assert store.coverage.counts(PHYSICS)["concepts"] == 0
    tree = store.coverage.tree(None, depth=2)
    ns = next(c for c in tree.children if c.node and c.node.name == "Natural Sciences")
    assert ns.node is not None and ns.node.status == Status.REJECTED and ns.children == []
    store.taxonomy.review("Natural Sciences", Status.APPROVED)
    store.taxonomy.review(PURE, Status.APPROVED)
    assert store.coverage.counts()["concepts"] == 5
    assert snapshot(store)["Concept"] == 5  # rejecting deleted nothing


def test_bad_input_is_refused_and_changes_nothing(store: Store) -> None:
    build_syllabus(store)
    before = snapshot(store)
    with pytest.raises(WrongKind, match="a Concept cannot go under the Field"):
        store.taxonomy.add_node("Natural Sciences", CONCEPT, "entropy")
    with pytest.raises(WrongKind):
        store.taxonomy.add_node(None, DISCIPLINE, "Orphans")
    with pytest.raises(NodeNotFound):
        store.taxonomy.add_node("No Such Field/Sub", DISCIPLINE, "X")
    with pytest.raises(InvalidInput, match="empty"):
        store.taxonomy.add_node("Natural Sciences", SUBFIELD, "  \t ")
    with pytest.raises(InvalidInput, match="limit is 200"):
        store.taxonomy.add_node("Natural Sciences", SUBFIELD, "x" * 201)
    with pytest.raises(InvalidInput):
        store.taxonomy.add_node("Natural Sciences", SUBFIELD, 42)  # type: ignore[arg-type]
    with pytest.raises(CycleError):
        store.taxonomy.link(f"{PHYSICS}/Calculus", PHYSICS)
    with pytest.raises(CycleError):
        store.taxonomy.link(PHYSICS, PHYSICS)
    with pytest.raises(InvalidInput, match="only subjects"):
        store.taxonomy.link("Formal Sciences/Mathematics", PHYSICS)
    with pytest.raises(InvalidInput):
        store.taxonomy.load({"fields": {"Ok": {"Sub": ["Fine", ""]}}})
    with pytest.raises(InvalidInput):
        store.taxonomy.load({"nothing": 1})
    assert snapshot(store) == before


def test_hostile_names_are_stored_verbatim(store: Store) -> None:
    store.taxonomy.load(SMALL_TAXONOMY)
    names = [
        "Input/Output Systems",
        "x'}) MATCH (n) DETACH DELETE n //",
        'Quote " and \\ back',
        "Ünïcödé 数学",
    ]
    for name in names:
        node = store.taxonomy.add_node("Formal Sciences/Mathematics", DISCIPLINE, name)
        assert node.name == name
        assert store.taxonomy.node(node.path or "").id == node.id
    assert store.nodes.count_kind(DISCIPLINE) == 5 + len(names)
    assert (
        store.taxonomy.node("Formal Sciences/Mathematics/Input\\/Output Systems").name == names[0]
    )


def test_adding_twice_is_an_upsert(store: Store) -> None:
    store.taxonomy.load(SMALL_TAXONOMY)
    a = store.taxonomy.add_node(PHYSICS, SUBJECT, "Optics", source=Source.USER)
    b = store.taxonomy.add_node(PHYSICS, SUBJECT, " optics ")
    assert a.id == b.id and store.nodes.count_kind(SUBJECT) == 1
    s1 = store.taxonomy.add_node(f"{PHYSICS}/Optics", SESSION, "Lenses")
    s2 = store.taxonomy.add_node(f"{PHYSICS}/Optics", SESSION, "Mirrors")
    assert (s1.props["position"], s2.props["position"]) == (0, 1)


def test_delete_subtree_keeps_subjects_shared_elsewhere(store: Store) -> None:
    build_syllabus(store)
    removed = store.taxonomy.delete_subtree("Natural Sciences")
    assert removed["Field"] == 1 and removed["Discipline"] == 3 and removed["Subject"] == 0
    assert store.coverage.counts(PURE) == {
        "subjects": 1,
        "sessions": 2,
        "concepts": 5,
        "instructions": 0,
        "responses": 0,
    }
    removed = store.taxonomy.delete_subtree(PURE)
    assert removed["Subject"] == 1 and removed["Concept"] == 5
    assert store.nodes.count_kind(CONCEPT) == 0 and store.nodes.count_kind(SESSION) == 0


def test_delete_shared_subject_through_one_path_unlinks_it(store: Store) -> None:
    build_syllabus(store)
    assert store.taxonomy.delete_subtree(f"{PHYSICS}/Calculus") == {"unlinked": 1}
    assert store.nodes.count_kind(SUBJECT) == 1
    with pytest.raises(NodeNotFound):
        store.taxonomy.node(f"{PHYSICS}/Calculus")


def test_transaction_rolls_back(store: Store) -> None:
    store.taxonomy.load(SMALL_TAXONOMY)
    before = snapshot(store)
    row = {
        "id": hierarchy_id(FIELD, "Temp", None),
        "name": "Temp",
        "key": "temp",
        "status": "approved",
        "source": "user",
        "path": "Temp",
    }
    with pytest.raises(RuntimeError), store.driver.transaction() as tx:
        store.nodes.upsert_nodes(FIELD, [row], tx=tx)
        raise RuntimeError("boom")
    assert snapshot(store) == before


def test_bad_query_becomes_query_error(store: Store) -> None:
    with pytest.raises(QueryError):
        store.driver.execute("THIS IS NOT CYPHER")


def test_a_read_by_column_gives_the_rows_of_execute(store: Store) -> None:
    build_syllabus(store)
    label = store.driver.dialect.q(CONCEPT.label)
    query = f"MATCH (c:{label}) RETURN c.id AS id, c.name AS name, c.position AS position"
    rows = sorted(store.driver.execute(query), key=lambda r: r["id"])
    cols = store.driver.columns(query)
    assert len(rows) > 3
    values = zip(*cols.values(), strict=True)
    by_column = [dict(zip(cols, row, strict=True)) for row in values]
    assert sorted(by_column, key=lambda r: r["id"]) == rows
    assert store.driver.table(query).to_pydict() == cols
    with pytest.raises(QueryError):
        store.driver.columns("THIS IS NOT CYPHER")


def test_hierarchy_levels_match_paths(store: Store) -> None:
    build_syllabus(store)
    concept = store.taxonomy.node(f"{PHYSICS}/Calculus/Derivatives/Chain Rule")
    assert concept.kind is CONCEPT and concept.level == len(HIERARCHY) - 1
    assert store.taxonomy.paths_of(concept.id) == [
        f"{PURE}/Calculus/Derivatives/chain rule",
        f"{PHYSICS}/Calculus/Derivatives/chain rule",
    ]


def test_large_writes_take_the_bulk_path_and_stay_upserts(store: Store) -> None:
    store.taxonomy.load(SMALL_TAXONOMY)
    physics = store.taxonomy.node(PHYSICS)
    subjects = [
        {"name": f"Topic {i}", "level": "undergraduate", "subtopics": [f"t{i}", "x"]}
        for i in range(600)
    ]
    ids = store.syllabi.write_subjects(physics.id, subjects, {"model": "m"})
    assert len(ids) == 600 and store.coverage.counts(PHYSICS)["subjects"] == 600
    node = store.taxonomy.node(f"{PHYSICS}/Topic 599")
    assert node.props["subtopics"] == ["t599", "x"] and node.props["level"] == "undergraduate"
    assert node.props["model"] == "m" and node.props["status"] == "approved"
    # the same write again creates nothing and links nothing twice
    store.syllabi.write_subjects(physics.id, subjects, {"model": "m"})
    assert (
        store.nodes.count_kind(SUBJECT) == 600 and store.coverage.counts(PHYSICS)["subjects"] == 600
    )
    assert len(store.nodes.linked(HAS_SUBJECT, [physics.id])[physics.id]) == 600


def _coverage_rows(store: Store, path: str | None) -> list[tuple[object, ...]]:
    cov = store.coverage.report(path)
    return [
        (r.path, r.counts, r.covered_concepts, r.combinations, r.subjects_without_syllabus,
         r.disciplines_without_subjects, r.combination_space, r.combinations_used)
        for r in [cov.total, *cov.children]
    ]  # fmt: skip


def _walked_rows(store: Store, path: str | None) -> list[tuple[object, ...]]:
    cov = store.coverage.report_by_walk(store.taxonomy.node(path) if path else None)
    return [
        (r.path, r.counts, r.covered_concepts, r.combinations, r.subjects_without_syllabus,
         r.disciplines_without_subjects, r.combination_space, r.combinations_used)
        for r in [cov.total, *cov.children]
    ]  # fmt: skip


def _ask(store: Store, subject: str, concepts: list[str], n: int, answered: bool) -> None:
    """Store `n` instructions over these concepts of one subject (one combination)."""
    from generators.sampling import combo_key
    from graph.model import INSTRUCTION, RESPONSE, node_id

    sessions = sorted({store.taxonomy.paths_of(c)[0].rsplit("/", 1)[0] for c in concepts})
    session_ids = [store.taxonomy.node(p).id for p in sessions]
    rows = [
        {"id": node_id(INSTRUCTION, subject, str(k), *concepts), "text": f"q{k}",
         "combo_key": combo_key(concepts), "subject_id": subject, "strategy": "basic"}
        for k in range(n)
    ]  # fmt: skip
    store.instructions.write_instructions(
        rows,
        [(r["id"], c) for r in rows for c in concepts],
        [(r["id"], s) for r in rows for s in session_ids],
    )
    if answered:
        store.instructions.write_responses(
            [{"id": node_id(RESPONSE, r["id"]), "text": "a", "instruction_id": r["id"]}
             for r in rows]
        )  # fmt: skip


@pytest.mark.parametrize("whole", [False, True], ids=["by-id", "every-subject"])
def test_coverage_from_subject_rollups_equals_a_full_walk(
    store: Store, monkeypatch: pytest.MonkeyPatch, whole: bool
) -> None:
    """Coverage above subjects sums rollups kept on each subject; every kind of write below a
    subject must leave them equal to what walking every node and instruction finds. Stale
    rollups are counted from their subjects' ids, or by walking every subject (as when most
    are stale): both must."""
    from tests.test_sampling import fill

    monkeypatch.setattr(store.driver.dialect, "few_ids", 0)
    monkeypatch.setattr(store.driver.dialect, "whole_read_share", 0.0 if whole else float("inf"))
    fill(store, subjects=3, sessions=3, concepts=4)
    # Formal Sciences has no subject until one is linked there: sums over nothing are zeros
    scopes = [None, "Natural Sciences", "Natural Sciences/Physical Sciences", PHYSICS,
              "Formal Sciences"]  # fmt: skip

    def check() -> None:
        for path in scopes:
            assert _coverage_rows(store, path) == _walked_rows(store, path), path

    physics = store.taxonomy.children(PHYSICS)
    s0, s1 = physics[0], physics[1]
    sessions = store.taxonomy.children(s0.path)
    c00 = [c.id for c in store.taxonomy.children(sessions[0].path)]
    c01 = [c.id for c in store.taxonomy.children(sessions[1].path)]
    check()
    assert store.coverage.report(PHYSICS).total.counts["concepts"] == 36

    _ask(store, s0.id, c00[:2], 2, answered=True)
    _ask(store, s0.id, [c00[0], c01[0]], 1, answered=False)
    first_session = store.taxonomy.children(s1.path)[0].path
    _ask(store, s1.id, [c.id for c in store.taxonomy.children(first_session)][:1], 1,
         answered=True)  # fmt: skip
    check()
    total = store.coverage.report(PHYSICS).total
    assert (total.counts["instructions"], total.counts["responses"]) == (4, 3)
    assert (total.covered_concepts, total.combinations) == (4, 3)

    store.taxonomy.review(
        sessions[1].path, Status.REJECTED
    )  # its concepts and the hard question go
    check()
    after = store.coverage.report(PHYSICS).total
    assert after.counts["concepts"] == 32 and after.covered_concepts == 3
    store.taxonomy.review(
        store.taxonomy.children(sessions[0].path)[0].path, Status.REJECTED
    )  # one concept
    check()
    assert store.coverage.report(PHYSICS).total.covered_concepts == 2
    store.taxonomy.review(sessions[1].path, Status.APPROVED)
    store.taxonomy.add_node(sessions[1].path, CONCEPT, "a concept added by hand")
    check()
    store.taxonomy.delete_subtree(sessions[2].path)
    check()
    store.taxonomy.link(
        PURE, s0.path
    )  # a shared subject counts under both, once in their common total
    check()
    assert store.coverage.report(None).total.counts["subjects"] == 3
    assert store.rollups.refresh(None) == 0  # every read above left them current


# ---------------------------------------------------------------------- rollups kept by writes

ROLLUP_SCOPES = [None, "Natural Sciences", PHYSICS, "Formal Sciences", PURE]


def _stale_subjects(store: Store) -> list[str]:
    """The subjects whose rollups a coverage read would have to recompute first."""
    from graph import queries as Q

    return [r["id"] for r in store.driver.execute(Q.stale_rollups(store.driver.dialect, None))]


def _rollups_current(store: Store) -> None:
    """No rollup is stale, so coverage recomputes nothing; and coverage summed from them is
    what walking every node and instruction finds."""
    assert _stale_subjects(store) == []
    for path in ROLLUP_SCOPES:
        assert _coverage_rows(store, path) == _walked_rows(store, path), path


def _questions(
    store: Store,
    subject: str,
    asked: list[tuple[str, list[str], list[str]]],
    *,
    key: str | None = None,
    tx: Any = None,
) -> list[str]:
    """Store instructions (name, concept ids, session ids) of one subject in one write;
    the combination is that of the concepts unless `key` says otherwise. Returns their ids."""
    from generators.sampling import combo_key
    from graph.model import INSTRUCTION, node_id

    rows = [
        {"id": node_id(INSTRUCTION, subject, name), "text": name, "strategy": "basic",
         "combo_key": key or combo_key(concepts), "subject_id": subject}
        for name, concepts, _ in asked
    ]  # fmt: skip
    store.instructions.write_instructions(
        rows,
        [(r["id"], c) for r, (_, concepts, _) in zip(rows, asked, strict=True) for c in concepts],
        [(r["id"], s) for r, (_, _, sessions) in zip(rows, asked, strict=True) for s in sessions],
        tx=tx,
    )
    return [r["id"] for r in rows]


def _answer(store: Store, pairs: list[tuple[str, str]], tx: Any = None) -> None:
    """Store one answer per (name, instruction id)."""
    from graph.model import RESPONSE, node_id

    store.instructions.write_responses(
        [
            {"id": node_id(RESPONSE, i, name), "text": name, "instruction_id": i}
            for name, i in pairs
        ],
        tx=tx,
    )


class _Syllabi:
    """What the rollup tests write below: subjects s0..s2 of Physics, each with sessions
    (ids, then paths) and each session's concept ids."""

    def __init__(self, store: Store) -> None:
        self.subjects = store.taxonomy.children(PHYSICS)
        self.sessions = [store.taxonomy.children(s.path) for s in self.subjects]
        self.concepts = [
            [[c.id for c in store.taxonomy.children(x.path)] for x in ss] for ss in self.sessions
        ]


def _write_syllabus_again(store: Store, s: _Syllabi) -> None:
    """A syllabus written again: a session a reviewer rejected comes back, one gains a
    concept, one is new."""
    store.taxonomy.review(s.sessions[0][1].path, Status.REJECTED)
    syllabus = [
        {"title": x.name, "concepts": [c.name for c in store.taxonomy.children(x.path)]}
        for x in s.sessions[0]
    ]
    syllabus[0]["concepts"].append("one more idea")
    syllabus.append({"title": "A late session", "concepts": ["late idea"]})
    store.syllabi.write_syllabus(s.subjects[0].id, syllabus, {"model": "test"})


def _ask_overlapping(store: Store, s: _Syllabi) -> None:
    """Instructions whose concepts overlap, two with one combination in one write, and in a
    later write a new instruction with a combination asked before, a hard one over two
    sessions, and one written again as it was."""
    sid, x, c = s.subjects[0].id, s.sessions[0], s.concepts[0]
    _questions(store, sid, [("a", c[0][:2], [x[0].id]), ("b", c[0][:2], [x[0].id]),
                            ("c", c[0][1:3], [x[0].id])])  # fmt: skip
    _questions(store, sid, [("d", c[0][:2], [x[0].id]), ("a", c[0][:2], [x[0].id]),
                            ("e", [c[0][3], c[1][0]], [x[0].id, x[1].id])])  # fmt: skip
    _questions(store, s.subjects[1].id, [("f", s.concepts[1][2][:1], [s.sessions[1][2].id])])


def _ask_again_otherwise(store: Store, s: _Syllabi) -> None:
    """An instruction written again with another combination, and asked from one more
    session."""
    sid, x, c = s.subjects[0].id, s.sessions[0], s.concepts[0]
    _questions(store, sid, [("g", c[2][:1], [x[2].id])], key="another combination")
    _questions(store, sid, [("g", c[2][:2], [x[2].id, x[1].id])])


def _link_beyond(store: Store, s: _Syllabi) -> None:
    """Edges the stages do not write: a concept of another session of the write than the
    instruction's own, and edges from an instruction the write does not bring."""
    sid, x, c = s.subjects[1].id, s.sessions[1], s.concepts[1]
    iid, _ = _questions(store, sid, [("o", [c[0][0], c[2][3]], [x[0].id]),
                                     ("p", [c[2][0]], [x[2].id])])  # fmt: skip
    _rollups_current(store)
    store.instructions.write_instructions([], [(iid, c[1][1])], [(iid, x[1].id)])


def _ask_from_rejected(store: Store, s: _Syllabi) -> None:
    """Instructions asked from a rejected session: alone, and with a visible one; then the
    session comes back."""
    sid, x, c = s.subjects[2].id, s.sessions[2], s.concepts[2]
    store.taxonomy.review(x[1].path, Status.REJECTED)
    _questions(store, sid, [("h", c[1][:2], [x[1].id]), ("i", [c[1][2], c[2][0]],
                            [x[1].id, x[2].id])])  # fmt: skip
    _rollups_current(store)
    store.taxonomy.review(x[1].path, Status.APPROVED)


def _answer_all_ways(store: Store, s: _Syllabi) -> None:
    """Answers: one each, then a second answer to one instruction, then two answers to one
    instruction in one write, and one written again."""
    sid, x, c = s.subjects[1].id, s.sessions[1], s.concepts[1]
    ids = _questions(store, sid, [("j", c[0][:1], [x[0].id]), ("k", c[1][:2], [x[1].id])])
    _answer(store, [("first", ids[0]), ("first", ids[1])])
    _rollups_current(store)
    _answer(store, [("second", ids[0])])
    _rollups_current(store)
    _answer(store, [("third", ids[1]), ("fourth", ids[1]), ("first", ids[0])])


def _review(level: int) -> Any:
    """Reject a session (level 4) or a concept (5) of s0, then approve it again."""

    def review(store: Store, s: _Syllabi) -> None:
        node = s.sessions[0][0] if level == 4 else store.taxonomy.children(s.sessions[0][0].path)[0]
        store.taxonomy.review(node.path or "", Status.REJECTED)
        _rollups_current(store)
        store.taxonomy.review(node.path or "", Status.APPROVED)

    return review


def _add_below(store: Store, s: _Syllabi) -> None:
    session = store.taxonomy.add_node(s.subjects[0].path, SESSION, "Added by hand")
    store.taxonomy.add_node(session.path, CONCEPT, "a concept added by hand")
    store.taxonomy.add_node(s.sessions[0][0].path, CONCEPT, "another by hand")
    store.taxonomy.add_node(PHYSICS, SUBJECT, "A subject added by hand")
    store.taxonomy.add_node(PURE, SUBJECT, "A subject added by hand")  # linked


def _delete_session(store: Store, s: _Syllabi) -> None:
    store.taxonomy.delete_subtree(s.sessions[0][0].path or "")
    _rollups_current(store)
    store.taxonomy.delete_subtree(store.taxonomy.children(s.sessions[1][0].path)[0].path or "")


def _link(store: Store, s: _Syllabi) -> None:
    store.taxonomy.link(PURE, s.subjects[0].path or "")


def _mark(store: Store, s: _Syllabi) -> None:
    """Duplicate and contamination marks change nothing a rollup counts."""
    from graph.model import INSTRUCTION

    _ask_overlapping(store, s)
    _rollups_current(store)
    ids = store.instructions.ids_in_scope(None)
    store.instructions.mark_duplicates([(ids[1], ids[0], "exact")])
    store.nodes.set_property(INSTRUCTION, "contaminated", {ids[2]: "a benchmark"})
    store.instructions.clear_duplicates([ids[1]])


def _one_transaction(store: Store, s: _Syllabi) -> None:
    """Two writes of instructions and their answers in one transaction of the caller's:
    the second sees what the first wrote."""
    sid, x, c = s.subjects[2].id, s.sessions[2], s.concepts[2]
    with store.driver.transaction() as tx:
        first = _questions(store, sid, [("l", c[0][:2], [x[0].id])], tx=tx)
        second = _questions(store, sid, [("m", c[0][:2], [x[0].id]), ("n", c[0][1:],
                            [x[0].id])], tx=tx)  # fmt: skip
        _answer(store, [("one", first[0]), ("one", second[0])], tx=tx)
        _answer(store, [("two", first[0])], tx=tx)


def _followup_turns(store: Store, s: _Syllabi) -> None:
    """Follow-up turns: one reaches a concept no question covers, one a covered concept and
    one reached twice in one write, one a concept of a rejected session; then a turn
    written again reaches another concept, and one written again reaches none."""
    from graph.model import RESPONSE, node_id

    sid, x, c = s.subjects[1].id, s.sessions[1], s.concepts[1]
    (iid,) = _questions(store, sid, [("t", c[0][:1], [x[0].id])])
    _answer(store, [("t", iid)])
    rid = node_id(RESPONSE, iid, "t")

    def turn(n: int) -> dict[str, Any]:
        return {"id": f"trn_{n}", "text": f"turn {n}", "position": n, "response_id": rid,
                "instruction_id": iid, "subject_id": sid}  # fmt: skip

    store.turns.write_turns([turn(1)], [("trn_1", c[0][1])])
    _rollups_current(store)
    store.taxonomy.review(x[2].path or "", Status.REJECTED)
    store.turns.write_turns(
        [turn(2), turn(3)],
        [("trn_2", c[0][0]), ("trn_2", c[0][2]), ("trn_3", c[0][2]), ("trn_3", c[2][0])],
    )
    _rollups_current(store)
    store.taxonomy.review(x[2].path or "", Status.APPROVED)
    _rollups_current(store)
    store.turns.write_turns([turn(1)], [("trn_1", c[1][0])])
    _rollups_current(store)
    store.turns.write_turns([turn(2)], [])


ROLLUP_WRITES = {
    "syllabus-again": _write_syllabus_again,
    "overlapping-questions": _ask_overlapping,
    "question-again-otherwise": _ask_again_otherwise,
    "from-a-rejected-session": _ask_from_rejected,
    "edges-beyond-the-rows": _link_beyond,
    "answers": _answer_all_ways,
    "review-session": _review(4),
    "review-concept": _review(5),
    "add-below-and-subjects": _add_below,
    "delete-session-and-concept": _delete_session,
    "link-shared-subject": _link,
    "duplicate-and-contamination-marks": _mark,
    "one-transaction": _one_transaction,
    "followup-turns": _followup_turns,
}


@pytest.mark.parametrize("write", list(ROLLUP_WRITES))
def test_writes_keep_subject_rollups_current(store: Store, write: str) -> None:
    """Every kind of write below a subject leaves its rollup equal to a count from scratch,
    and current: no coverage read after it recomputes a rollup (before, writes marked them
    stale and the first read after a large write recomputed thousands)."""
    from tests.test_sampling import fill

    fill(store, subjects=3, sessions=3, concepts=4)  # subjects and syllabi, written
    s = _Syllabi(store)
    _questions(store, s.subjects[0].id, [("base", s.concepts[0][0][:1], [s.sessions[0][0].id])])
    _answer(store, [("base", store.instructions.ids_in_scope(None)[0])])
    _rollups_current(store)
    ROLLUP_WRITES[write](store, s)
    _rollups_current(store)
    assert store.rollups.refresh(None) == 0


def test_coverage_read_while_batches_are_written_sees_whole_batches(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader on another thread, as the server reads while a job writes, sees coverage as
    it stood after some batch, never halfway through one, and never recomputes a rollup."""
    import threading
    import time

    from tests.test_sampling import fill

    fill(store, subjects=3, sessions=3, concepts=4)
    s = _Syllabi(store)
    refreshed: list[int] = []
    refresh = store.rollups.refresh

    def counted(scope: Node | None = None) -> int:
        refreshed.append(refresh(scope))
        return refreshed[-1]

    monkeypatch.setattr(store.rollups, "refresh", counted)

    def state() -> tuple[int, ...]:
        total = store.coverage.report_by_walk(None).total
        return (total.counts["instructions"], total.counts["responses"],
                total.covered_concepts, total.combinations, total.counts["concepts"])  # fmt: skip

    states = [state()]
    seen: list[tuple[int, ...]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            for b in range(6):
                with store.driver.transaction() as tx:
                    asked = []
                    for n, subject in enumerate(s.subjects):
                        x, c = s.sessions[n][b % 3], s.concepts[n][b % 3]
                        asked += _questions(store, subject.id, [(f"w{b}", c[: 1 + b % 4], [x.id]),
                                            (f"v{b}", c[b % 4 :], [x.id])], tx=tx)  # fmt: skip
                    _answer(store, [("w", i) for i in asked], tx=tx)
                states.append(state())
                time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
            errors.append(exc)
        finally:
            done.set()

    def read() -> None:
        try:
            while not done.is_set():
                total = store.coverage.report(None).total
                seen.append((total.counts["instructions"], total.counts["responses"],
                             total.covered_concepts, total.combinations,
                             total.counts["concepts"]))  # fmt: skip
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert seen and len(states) == 7 and states[-1][0] == states[0][0] + 6 * 6
    assert set(seen) <= set(states), (sorted(set(seen) - set(states)), states)
    assert refreshed and not any(refreshed)  # every read found every rollup current
    _rollups_current(store)


def test_lookups_by_id_agree_one_at_a_time_and_in_batches(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some engines get walks from a few ids one id at a time (Dialect.few_ids); both ways
    must give the same rows."""
    from tests.test_sampling import fill

    fill(store, subjects=3, sessions=3, concepts=4)
    subjects = store.taxonomy.children(PHYSICS)
    for s in subjects[:2]:
        session = store.taxonomy.children(s.path)[0]
        _ask(
            store, s.id, [c.id for c in store.taxonomy.children(session.path)][:2], 1, answered=True
        )
    ids = [s.id for s in subjects]
    seen = []
    for few in (0, 1000):
        monkeypatch.setattr(store.driver.dialect, "few_ids", few)
        store.rollups.mark_stale(ids)
        assert store.rollups.refresh(None) == len(ids)
        seen.append(
            (
                store.syllabi.of(ids),
                store.syllabi.index(ids),
                store.syllabi.concept_stats(ids),
                _coverage_rows(store, None),
            )
        )
        # an edge already there is found, so writing it again creates nothing
        assert (
            store.nodes.upsert_edges(
                HAS_SUBJECT, [(store.taxonomy.node(PHYSICS).id, i) for i in ids]
            )
            == 0
        )
    assert seen[0] == seen[1]
    assert seen[0][2][subjects[0].id] == (12, 2)


def test_edge_reads_agree_with_or_without_a_name_index(store: Store) -> None:
    """linked_names gives the same with the names read once (name_index) as joined per read,
    and an index read before a node was made still finds it; reverse reads of linked too."""
    from graph.driver import QueryCounter
    from graph.model import ANSWERS, COVERS, FROM, RESPONSE, node_id
    from tests.test_sampling import fill

    fill(store, subjects=2, sessions=2, concepts=3)
    concepts, sessions = (
        store.instructions.name_index(CONCEPT),
        store.instructions.name_index(SESSION),
    )
    disc = store.taxonomy.node(PHYSICS)
    late = store.syllabi.write_subjects(disc.id, [{"name": "Late"}], {"model": "test"})[0]
    store.syllabi.write_syllabus(
        late, [{"title": "New", "concepts": ["fresh idea"]}], {"model": "test"}
    )
    asked = []
    for subject in [*store.taxonomy.children(PHYSICS), store.nodes.get(late)]:
        assert subject is not None
        session = store.taxonomy.children(store.taxonomy.paths_of(subject.id)[0])[-1]
        names = [c.id for c in store.taxonomy.children(session.path)][:2]
        _ask(store, subject.id, names, 1, answered=True)
        asked.append((subject.id, session, names))
    ids = sorted(store.instructions.ids_in_scope(None))
    early = [i for i in ids if store.nodes.get_many([i])[i].props["subject_id"] != late]
    assert len(ids) == 3 and len(early) == 2
    for rel, index in ((COVERS, concepts), (FROM, sessions)):
        plain = store.instructions.linked_names(rel, ids)
        assert (
            store.instructions.linked_names(rel, ids, index) == plain
        )  # a late node: joined instead
        store.driver.counter = counter = QueryCounter()
        try:
            assert store.instructions.linked_names(rel, early, index) == {
                i: plain[i] for i in early
            }
        finally:
            store.driver.counter = None
        if index is not None:  # the names came from the index: no read joined them
            assert not any("name" in q for q in counter.queries), counter.queries
    covered = store.instructions.linked_names(COVERS, ids, concepts)
    for subject, session, names in asked:
        (iid,) = [i for i in ids if store.nodes.get_many([i])[i].props["subject_id"] == subject]
        assert [c for c, _, _ in covered[iid]] == sorted(names)
        assert all(name for _, name, _ in covered[iid])
        assert [(s, n) for s, n, _ in store.instructions.linked_names(FROM, [iid])[iid]] == [
            (session.id, session.name)
        ]
    answers = store.nodes.linked(ANSWERS, ids, reverse=True)
    assert answers == {i: [node_id(RESPONSE, i)] for i in ids}
    assert store.nodes.linked(ANSWERS, ["ins_unknown"], reverse=True) == {"ins_unknown": []}


def test_instruction_details_walked_from_subjects_equal_those_read_by_id(store: Store) -> None:
    """details_below finds each subject's instructions as instructions_by_subject does, in
    its order, with the same sessions, concepts and responses as details_of reads by id:
    a question asked from two sessions once, one from a rejected session not at all."""
    from graph.model import RESPONSE, node_id
    from tests.test_sampling import fill

    fill(store, subjects=2, sessions=3, concepts=3)
    first, second = store.taxonomy.children(PHYSICS)
    s0, s1, s2 = store.taxonomy.children(first.path)
    concepts = {s.id: [c.id for c in store.taxonomy.children(s.path)] for s in (s0, s1, s2)}
    _ask(store, first.id, concepts[s0.id][:2], 2, answered=False)
    _ask(store, first.id, [concepts[s0.id][2], concepts[s1.id][0]], 1, answered=True)  # hard
    _ask(store, first.id, [concepts[s2.id][0]], 1, answered=True)
    _ask(store, first.id, [concepts[s1.id][1], concepts[s2.id][1]], 1, answered=True)
    other = store.taxonomy.children(store.taxonomy.children(second.path)[0].path)[0].id
    _ask(store, second.id, [other], 1, answered=True)
    ids = store.instructions.ids_in_scope(None)
    late = next(i for i in ids if store.nodes.linked(FROM, [i])[i] == sorted([s1.id, s2.id]))
    store.instructions.write_responses(
        [{"id": node_id(RESPONSE, late, "again"), "text": "b", "instruction_id": late}]
    )
    store.taxonomy.review(s2.path, Status.REJECTED)  # the question asked from s2 alone drops out

    subjects = [first.id, second.id, "sub_unknown"]
    below = store.instructions.details_below(subjects)
    listed = store.instructions.instructions_by_subject(subjects)
    assert {s: [d.instruction.id for d in below[s]] for s in subjects} == listed
    assert [len(v) for v in listed.values()] == [4, 1, 0]

    def plain(detail: Any) -> tuple[Any, ...]:  # an engine may store a missing value as null
        def props(n: Node) -> dict[str, Any]:
            return {k: v for k, v in n.props.items() if v is not None}

        return (
            props(detail.instruction),
            detail.sessions,
            detail.concepts,
            [props(r) for r in detail.responses],
        )

    for subject in subjects:
        by_id = store.instructions.details_of(listed[subject])
        assert [plain(d) for d in below[subject]] == [plain(by_id[i]) for i in listed[subject]]
    details = {d.instruction.id: d for d in below[first.id]}
    both = sorted([(s1.id, s1.name), (s2.id, s2.name)])
    assert [(s, n) for s, n, _ in details[late].sessions] == both  # though one is rejected
    assert [c for c, _, _ in details[late].concepts] == sorted(
        [concepts[s1.id][1], concepts[s2.id][1]]
    )
    assert len(details[late].responses) == 2
    assert sum(not d.responses for d in details.values()) == 2
    assert store.instructions.details_of(["ins_unknown"]) == {}
    bare = store.instructions.details_below(subjects, links=False, responses=False)[first.id]
    assert [plain(d) for d in bare] == [
        (props, [], [], []) for props, *_ in map(plain, below[first.id])
    ]
    by_id = store.instructions.details_of(listed[first.id], links=False, responses=False)
    assert [plain(by_id[i]) for i in listed[first.id]] == [plain(d) for d in bare]


def test_the_sampling_index_is_the_syllabi_without_their_text(store: Store) -> None:
    """SyllabusIndex lays out what syllabi() gives, in the same order, with coverage."""
    from tests.test_sampling import fill

    fill(store, subjects=3, sessions=3, concepts=4)
    subjects = store.taxonomy.children(PHYSICS)
    session = store.taxonomy.children(subjects[0].path)[1]
    concepts = [c.id for c in store.taxonomy.children(session.path)]
    _ask(store, subjects[0].id, concepts[:2], 1, answered=False)
    _ask(store, subjects[0].id, concepts[1:3], 2, answered=False)
    store.taxonomy.review(store.taxonomy.children(subjects[1].path)[0].path, Status.REJECTED)
    ids = [s.id for s in reversed(subjects)] + ["sub_unknown"]
    syllabi = store.syllabi.of(ids)
    index = store.syllabi.index(ids)
    flat = SyllabusIndex.empty()
    for sid in sorted(syllabi):
        flat.subject_ids.append(sid)
        for view in syllabi[sid]:
            flat.session_ids.append(view.id)
            flat.concept_ids.extend(c.id for c in view.concepts)
            flat.covered.extend(c.covered for c in view.concepts)
            flat.concept_start.append(len(flat.concept_ids))
        flat.session_start.append(len(flat.session_ids))
    assert index == flat
    assert len(index.subject_ids) == 3 and len(index.session_ids) == 8  # one rejected
    assert sorted(index.covered)[-4:] == [0, 1, 2, 3]
    assert store.syllabi.index([]) == store.syllabi.index(["sub_unknown"]) == flat.empty()
    # two sessions at one position come in the order of their ids, as in syllabi()
    tied = store.taxonomy.add_node(subjects[2].path, SESSION, "Tied", props={"position": 1})
    store.taxonomy.add_node(tied.path, CONCEPT, "tied concept")
    views = store.syllabi.of([subjects[2].id])[subjects[2].id]
    assert [v.position for v in views] == [0, 1, 1, 2]
    assert store.syllabi.index([subjects[2].id]).session_ids == [v.id for v in views]


def test_the_sampling_index_orders_tied_or_scattered_sessions_by_id() -> None:
    """The rows of a syllabus read number each run of one session, unless two runs share a
    subject and a position: then sessions are ranked by id."""
    import pyarrow as pa

    from graph.syllabi import _session_order

    subject, position = pa.array([0, 0, 0, 1]), pa.array([1, 1, 0, 0])
    assert _session_order(pa.array(["b", "b", "a", "c"]), subject, position).to_pylist() == [
        0, 0, 1, 2
    ]  # fmt: skip
    # "b" comes apart, and "a" shares its position: ranks by id
    subject, position = pa.array([0, 0, 0, 0, 1, 0]), pa.array([0, 0, 0, 0, 0, 0])
    session = pa.array(["b", "b", "a", "a", "c", "b"])
    assert _session_order(session, subject, position).to_pylist() == [2, 2, 1, 1, 3, 2]
    assert _session_order(pa.array([], pa.string()), pa.array([]), pa.array([])).to_pylist() == []


def test_what_sampling_reads_is_the_same_walked_from_every_subject_or_from_those_asked(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For most of the store's subjects, the reads a sampler needs walk all of them and
    keep those asked for; for a few they walk from their ids. Both give the same."""
    from generators.sampling import combo_key, concept_counts
    from tests.test_sampling import fill

    fill(store, subjects=4, sessions=3, concepts=4)
    subjects = store.taxonomy.children(PHYSICS)
    session = store.taxonomy.children(subjects[0].path)[0]
    concepts = [c.id for c in store.taxonomy.children(session.path)]
    _ask(store, subjects[0].id, concepts[:2], 1, answered=False)
    _ask(store, subjects[3].id, [c.id for c in _concepts_of(store, subjects[3])][:3], 2, False)
    store.taxonomy.review(store.taxonomy.children(subjects[1].path)[2].path, Status.REJECTED)
    ids = [s.id for s in subjects[:3]] + ["sub_unknown"]
    monkeypatch.setattr(store.driver.dialect, "few_ids", 0)
    seen = []
    for share, whole in ((0.0, True), (float("inf"), False)):
        monkeypatch.setattr(store.driver.dialect, "whole_read_share", share)
        assert store.nodes.reads_whole(ids) is whole
        seen.append(
            (
                store.syllabi.index(ids),
                store.syllabi.concept_stats(ids),
                store.syllabi.combo_keys(ids),
            )
        )
    assert seen[0] == seen[1]
    # the walk over every subject keeps only those asked for, with their coverage
    index, stats, keys = seen[0]
    assert sorted(index.subject_ids) == sorted(stats) == sorted(ids[:3])
    assert len(index.session_ids) == 8 and len(index.concept_ids) == 32
    assert sorted(index.covered)[-2:] == [1, 1]
    assert stats[subjects[0].id] == (12, 2) and stats[subjects[1].id] == (8, 0)
    assert keys == {combo_key(concepts[:2])}
    # what a job's plan counts from the syllabi when it reads them all (plan_sampler)
    assert concept_counts(index) == stats


def _concepts_of(store: Store, subject: Node) -> list[Node]:
    return [
        c for s in store.taxonomy.children(subject.path) for c in store.taxonomy.children(s.path)
    ]


# ---------------------------------------------------------------------- listings for the API

CALCULUS = f"{PHYSICS}/Calculus"
#: twelve instructions under Calculus, one under Optics; some answered
ANSWERED = {"ins_01", "ins_04", "ins_07", "ins_20"}


def build_instructions(store: Store) -> dict[str, dict[str, Any]]:
    """build_syllabus, a second Physics subject, and instructions whose properties cover
    every filter field both ways (an empty flag text counts as unset). Every third one is
    asked from both Calculus sessions, as a hard one is."""
    build_syllabus(store)
    calculus = store.taxonomy.node(CALCULUS)
    limits, derivatives = store.taxonomy.children(CALCULUS)
    store.taxonomy.add_node(PHYSICS, SUBJECT, "Optics")
    lenses = store.taxonomy.add_node(f"{PHYSICS}/Optics", SESSION, "Lenses")
    rows: dict[str, dict[str, Any]] = {}
    froms: list[tuple[str, str]] = []
    for i in [*range(12), 20]:
        iid = f"ins_{i:02d}"
        rows[iid] = {
            "id": iid,
            "text": f"question {i}",
            "strategy": "hard" if i % 3 == 0 else "basic",
            "model": "m1" if i % 2 else "m2",
            "job_id": "job_a" if i < 6 else "job_b",
            "duplicate": "exact" if i % 4 == 1 else ("" if i == 2 else None),
            "contaminated": "gsm8k" if i % 5 == 0 else None,
            "subject_id": calculus.id,
        }
        if i == 20:
            froms.append((iid, lenses.id))
            continue
        froms.append((iid, (limits if i % 2 == 0 else derivatives).id))
        if i % 3 == 0:
            froms.append((iid, (derivatives if i % 2 == 0 else limits).id))
    store.instructions.write_instructions(list(rows.values()), [], froms)
    store.instructions.write_responses(
        [{"id": f"rsp_{i[4:]}", "text": "answer", "instruction_id": i} for i in sorted(ANSWERED)]
    )
    return rows


def kept(rows: dict[str, dict[str, Any]], flt: InstructionFilter) -> list[str]:
    """The filter's meaning, spelled out in Python: the reference the store must match."""
    return sorted(
        i
        for i, p in rows.items()
        if (flt.strategy is None or p["strategy"] == flt.strategy)
        and (flt.model is None or p["model"] == flt.model)
        and (flt.job_id is None or p["job_id"] == flt.job_id)
        and (flt.duplicate is None or bool(p["duplicate"]) == flt.duplicate)
        and (flt.contaminated is None or bool(p["contaminated"]) == flt.contaminated)
        and (flt.answered is None or (i in ANSWERED) == flt.answered)
    )


def all_pages(store: Store, scope: Node | None, flt: InstructionFilter, first: int) -> list[str]:
    seen: list[str] = []
    after: str | None = None
    while True:
        page, more = store.instructions.page(scope, flt, first, after)
        assert len(page) <= first
        seen += [n.id for n in page]
        if not more:
            return seen
        assert len(page) == first
        after = page[-1].id


def test_instructions_page_by_id_cursor(store: Store) -> None:
    rows = build_instructions(store)
    calculus = store.taxonomy.node(CALCULUS)
    everything = InstructionFilter()
    page, more = store.instructions.page(calculus, everything, 5)
    assert [n.id for n in page] == [f"ins_{i:02d}" for i in range(5)] and more
    assert page[0].props["text"] == "question 0" and page[0].kind.label == "Instruction"
    page, more = store.instructions.page(calculus, everything, 5, after="ins_04")
    assert [n.id for n in page] == [f"ins_{i:02d}" for i in range(5, 10)] and more
    page, more = store.instructions.page(calculus, everything, 5, after="ins_09")
    assert [n.id for n in page] == ["ins_10", "ins_11"] and not more
    assert store.instructions.page(calculus, everything, 2, after="ins_11") == (
        [],
        False,
    )
    # a page that ends exactly at the last one says nothing follows
    page, more = store.instructions.page(calculus, everything, 12)
    assert len(page) == 12 and not more
    # an instruction from two sessions is listed once; the cursor needs no stored id
    assert all_pages(store, calculus, everything, 5) == sorted(set(rows) - {"ins_20"})
    assert [n.id for n in store.instructions.page(None, everything, 3, "ins_105")[0]] == [
        "ins_11",
        "ins_20",
    ]
    for scope in (
        None,
        store.taxonomy.node("Natural Sciences"),
        store.taxonomy.node(PHYSICS),
        calculus,
    ):
        listed = all_pages(store, scope, everything, 4)
        assert listed == store.instructions.ids_in_scope(scope)
        assert store.instructions.count(scope, everything) == len(listed)
    session = store.taxonomy.children(CALCULUS)[0]
    assert all_pages(store, session, everything, 50) == [
        f"ins_{i:02d}" for i in (0, 2, 3, 4, 6, 8, 9, 10)
    ]
    with pytest.raises(WrongKind):
        store.instructions.page(store.taxonomy.node(f"{CALCULUS}/Limits/continuity"), everything, 5)
    with pytest.raises(WrongKind):
        store.instructions.count(store.taxonomy.node(f"{CALCULUS}/Limits/continuity"), everything)


@pytest.mark.parametrize(
    "flt",
    [
        InstructionFilter(strategy="hard"),
        InstructionFilter(strategy="basic"),
        InstructionFilter(model="m1"),
        InstructionFilter(job_id="job_b"),
        InstructionFilter(job_id="job_none"),
        InstructionFilter(duplicate=True),
        InstructionFilter(duplicate=False),
        InstructionFilter(contaminated=True),
        InstructionFilter(contaminated=False),
        InstructionFilter(answered=True),
        InstructionFilter(answered=False),
        InstructionFilter(strategy="basic", model="m1", duplicate=False, answered=True),
        InstructionFilter(job_id="job_a", contaminated=False, answered=False),
    ],
    ids=repr,
)
def test_instruction_filters_run_in_the_query(store: Store, flt: InstructionFilter) -> None:
    rows = build_instructions(store)
    expected = kept(rows, flt)
    assert 0 < len(expected) < len(rows) or flt.job_id == "job_none", expected
    assert all_pages(store, None, flt, 3) == expected
    assert store.instructions.count(None, flt) == len(expected)
    physics = store.taxonomy.node(PHYSICS)
    assert store.instructions.count(physics, flt) == len(expected)
    calculus = [i for i in expected if i != "ins_20"]
    assert all_pages(store, store.taxonomy.node(CALCULUS), flt, 2) == calculus


def test_hidden_subtrees_leave_instruction_listings(store: Store) -> None:
    build_instructions(store)
    everything = InstructionFilter()
    store.taxonomy.review(f"{CALCULUS}/Limits", Status.REJECTED)
    from_derivatives = [f"ins_{i:02d}" for i in (0, 1, 3, 5, 6, 7, 9, 11)]
    assert all_pages(store, None, everything, 5) == [*from_derivatives, "ins_20"]
    assert store.instructions.count(None, everything) == 9
    assert {n.id for n in store.instructions.sample(None, 50, 1)} == {
        *from_derivatives,
        "ins_20",
    }
    store.taxonomy.review(f"{CALCULUS}/Limits", Status.APPROVED)
    # Calculus stays reachable through Pure Mathematics when Physics is rejected
    store.taxonomy.review(PHYSICS, Status.REJECTED)
    assert store.instructions.count(None, everything) == 12
    assert store.instructions.count(store.taxonomy.node("Natural Sciences"), everything) == 0
    assert store.instructions.page(store.taxonomy.node("Natural Sciences"), everything, 5) == (
        [],
        False,
    )
    assert len(all_pages(store, store.taxonomy.node(PURE), everything, 5)) == 12
    store.taxonomy.review(PURE, Status.REJECTED)
    assert store.instructions.count(None, everything) == 0
    assert store.instructions.page(None, everything, 5) == ([], False)
    assert store.instructions.sample(None, 5, 1) == []


def test_sample_instructions_is_reproducible_without_repeats(store: Store) -> None:
    rows = build_instructions(store)
    calculus = store.taxonomy.node(CALCULUS)
    first = [n.id for n in store.instructions.sample(calculus, 5, seed=7)]
    assert len(first) == len(set(first)) == 5
    assert set(first) <= set(rows) - {"ins_20"}
    assert [n.id for n in store.instructions.sample(calculus, 5, seed=7)] == first
    others = [[n.id for n in store.instructions.sample(calculus, 5, seed=s)] for s in range(8, 14)]
    assert any(o != first for o in others)
    # more than there are: every one, once; the order is the draw's
    every = [n.id for n in store.instructions.sample(None, 100, seed=3)]
    assert sorted(every) == sorted(rows) and len(every) == len(set(every))
    assert [n.id for n in store.instructions.sample(None, 100, seed=3)] == every
    assert store.instructions.sample(calculus, 0, seed=1) == []
    session = store.taxonomy.children(CALCULUS)[1]
    picked = store.instructions.sample(session, 3, seed=2)
    assert {n.id for n in picked} <= set(store.instructions.ids_in_scope(session))
    assert all(n.props["text"] == rows[n.id]["text"] for n in picked)
    with pytest.raises(InvalidInput):
        store.instructions.sample(None, -1, seed=1)


def test_paths_of_many_one_call_for_every_level(store: Store) -> None:
    build_syllabus(store)
    subject = store.taxonomy.node(CALCULUS)
    concept = store.taxonomy.node(f"{CALCULUS}/Derivatives/chain rule")
    field = store.taxonomy.node("Natural Sciences")
    found = store.taxonomy.paths_of_many([subject.id, concept.id, field.id, "sbj_nope", subject.id])
    assert found == {
        subject.id: [f"{PURE}/Calculus", CALCULUS],
        concept.id: [
            f"{PURE}/Calculus/Derivatives/chain rule",
            f"{CALCULUS}/Derivatives/chain rule",
        ],
        field.id: ["Natural Sciences"],
        "sbj_nope": [],
    }
    assert store.taxonomy.paths_of_many([]) == {}
    # several of one level are read together, one alone by its id: the same answers
    disciplines = [store.taxonomy.node(PHYSICS).id, store.taxonomy.node(PURE).id]
    assert store.taxonomy.paths_of_many(disciplines) == {
        disciplines[0]: [PHYSICS],
        disciplines[1]: [PURE],
    }
    assert (
        store.taxonomy.paths_of_many([subject.id, concept.id, field.id])[subject.id]
        == found[subject.id]
    )
    # a rejected parent hides a path, it does not remove it
    store.taxonomy.review(PHYSICS, Status.REJECTED)
    assert store.taxonomy.paths_of_many([subject.id])[subject.id] == [f"{PURE}/Calculus", CALCULUS]


def test_children_of_many_matches_children(store: Store) -> None:
    build_syllabus(store)
    store.taxonomy.review(PURE, Status.REJECTED)
    paths = [
        "",
        "Natural Sciences",
        PURE,
        CALCULUS,
        f"{PURE}/calculus",
        f"{CALCULUS}/Limits/continuity",
    ]
    found = store.taxonomy.children_of_many(paths)
    assert list(found) == paths
    for path in paths:
        expected = store.taxonomy.children(path or None)
        assert [(n.id, n.path, n.hidden) for n in found[path]] == [
            (n.id, n.path, n.hidden) for n in expected
        ], path
    # the shared subject's sessions, by each of its paths: hidden along one only
    assert {n.path for n in found[f"{PURE}/calculus"]} == {
        f"{PURE}/Calculus/Limits",
        f"{PURE}/Calculus/Derivatives",
    }
    assert all(n.hidden for n in found[f"{PURE}/calculus"])
    assert not any(n.hidden for n in found[CALCULUS])
    assert [n.name for n in found[CALCULUS]] == ["Limits", "Derivatives"]
    assert found[f"{CALCULUS}/Limits/continuity"] == []
    with pytest.raises(NodeNotFound):
        store.taxonomy.children_of_many([PURE, "Natural Sciences/Nope"])


def test_counts_many_matches_counts(store: Store) -> None:
    build_instructions(store)
    store.taxonomy.review(f"{CALCULUS}/Limits", Status.REJECTED)
    store.taxonomy.review(PURE, Status.REJECTED)
    subject = store.taxonomy.node(CALCULUS)
    paths = [
        "Natural Sciences",
        PHYSICS,
        PURE,
        CALCULUS,
        f"{PURE}/Calculus",
        f"{CALCULUS}/Limits",
        f"{CALCULUS}/Derivatives",
        f"{CALCULUS}/Derivatives/chain rule",
        f"{PHYSICS}/Optics",
    ]
    keys = [(store.taxonomy.node(p).id, p) for p in paths]
    found = store.coverage.counts_many([*keys, keys[0]])
    assert list(found) == keys
    for node_id, path in keys:
        assert found[(node_id, path)] == store.coverage.counts(path), path
    # the shared subject: counted along its visible path, zero along the rejected one
    assert found[(subject.id, CALCULUS)]["instructions"] == 8
    assert found[(subject.id, CALCULUS)]["responses"] == 2
    assert set(found[(subject.id, f"{PURE}/Calculus")].values()) == {0}
    # a path that does not reach the node counts nothing
    assert set(store.coverage.counts_many([(subject.id, PURE)])[(subject.id, PURE)].values()) == {0}
    assert store.coverage.counts_many([]) == {}
    # nodes of one level under different parents (one query over them all), and alone
    scattered = [
        "Natural Sciences",
        "Formal Sciences",
        PHYSICS,
        "Formal Sciences/Mathematics/Applied Mathematics",
        "Natural Sciences/Life Sciences/Biology",
        CALCULUS,
        f"{PHYSICS}/Optics",
    ]
    keys = [(store.taxonomy.node(p).id, p) for p in scattered]
    together = store.coverage.counts_many(keys)
    for key in keys:
        assert (
            together[key] == store.coverage.counts(key[1]) == store.coverage.counts_many([key])[key]
        ), key
