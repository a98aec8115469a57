"""The GraphQL API: the real app under uvicorn on loopback, the embedded store, an LLM stub.

Every query, mutation and the subscription is exercised over HTTP or websockets, as a client
would; the store is reached directly only to count queries or arrange a failure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from graphql import get_introspection_query
from pydantic import SecretStr
from typer.testing import CliRunner

from graph.model import FIELD
from server.auth import DENIED
from server.graphql.errors import UNEXPECTED
from server.graphql.schema import SUBSCRIPTION_OVER_HTTP
from tests.api_helpers import Api, free_port, run_api, seed_taxonomy, settings, subscribe
from tests.llm_stub import Reply, Stub, fake_glan_model, first_user_message, run_stub

ALGEBRA = "Formal Sciences/Mathematics/Algebra"
MATHEMATICS = "Formal Sciences/Mathematics"
NEW = "Formal Sciences/Mathematics/Category Theory"
SEED_DISCIPLINES = sum(len(d) for sub in seed_taxonomy()["fields"].values() for d in sub.values())


NODE = """query($path: String, $id: ID) {
  node(path: $path, id: $id) {
    __typename
    ... on TaxonomyNode { id kind name path status hidden paths counts { disciplines subjects } }
    ... on Problem { message }
    ... on NotFoundError { path }
  }
}"""

PROGRESS = """subscription($id: ID!) {
  jobProgress(id: $id) {
    __typename
    ... on Job { id status live done failed total promptTokens completionTokens }
    ... on NotFoundError { message }
  }
}"""


def start(api: Api, mutation: str, variables: dict[str, Any] | None = None, **kw: Any) -> Any:
    """Run one generation mutation; the job it started, or the problem it returned."""
    query = (
        "mutation($p: String) { "
        + mutation
        + " { __typename ... on JobPayload { job { id kind scope status live } } "
        "... on Problem { message } ... on JobConflictError { jobId } "
        "... on NotApprovedError { path status } } }"
    )
    result = next(iter(api.gql(query, variables or {}, **kw).values()))
    return result["job"] if result["__typename"] == "JobPayload" else result


# ---------------------------------------------------------------------- queries


def test_node_by_path_and_by_id(api: Api) -> None:
    node = api.gql(NODE, {"path": "formal sciences / MATHEMATICS"})["node"]
    assert node["__typename"] == "TaxonomyNode" and node["kind"] == "SUBFIELD"
    assert node["path"] == MATHEMATICS and node["status"] == "APPROVED"
    assert node["counts"] == {"disciplines": 5, "subjects": 0} and node["paths"] == [MATHEMATICS]
    assert api.gql(NODE, {"id": node["id"]})["node"] == node

    missing = api.gql(NODE, {"path": "Formal Sciences/Nope"})["node"]
    assert missing["__typename"] == "NotFoundError" and "'Nope'" in missing["message"]
    assert missing["path"] == "Formal Sciences/Nope"
    assert api.gql(NODE, {"id": "dis_0000"})["node"]["__typename"] == "NotFoundError"
    for bad in ({}, {"path": ALGEBRA, "id": node["id"]}, {"id": "not-an-id"}):
        assert api.gql(NODE, bad)["node"]["__typename"] == "InvalidInputError", bad


def test_children_pages_through_cursors(api: Api) -> None:
    query = """query($p: String, $after: String) {
      children(path: $p, first: 6, after: $after) {
        __typename
        ... on TaxonomyNodeConnection {
          totalCount pageInfo { hasNextPage endCursor } edges { cursor node { name kind } }
        }
        ... on Problem { message }
      }
    }"""
    names: list[str] = []
    after = None
    while True:
        page = api.gql(query, {"after": after})["children"]
        assert page["totalCount"] == 15
        names += [e["node"]["name"] for e in page["edges"]]
        after = page["pageInfo"]["endCursor"]
        assert after == page["edges"][-1]["cursor"]
        if not page["pageInfo"]["hasNextPage"]:
            break
    assert len(names) == len(set(names)) == 15 and names == sorted(names)

    assert api.gql(query, {"p": "Nope"})["children"]["__typename"] == "NotFoundError"
    bad = api.gql(query, {"after": "garbage"})["children"]
    assert bad["__typename"] == "InvalidInputError" and "cursor" in bad["message"]
    concept_kids = api.gql(query, {"p": ALGEBRA})["children"]
    assert concept_kids["totalCount"] == 0 and concept_kids["edges"] == []


def test_nested_counts_are_batched(api: Api) -> None:
    """Counts of a page of children cost the same for 1 child as for 5 (one grouped read
    per parent, not one per node)."""
    query = """query($first: Int!) { node(path: "Formal Sciences/Mathematics") {
      ... on TaxonomyNode { children(first: $first) { edges { node { name counts {
        subjects sessions instructions } } } } } } }"""
    counted = []
    for first in (1, 5):
        with api.counting() as counter:
            data = api.gql(query, {"first": first})
        assert len(data["node"]["children"]["edges"]) == first
        counted.append(counter.count)
    assert counted[0] == counted[1], counted


def test_subtree_with_counts(api: Api) -> None:
    query = """query($p: String, $d: Int!) { subtree(path: $p, depth: $d) {
      __typename
      ... on TreeNode { path counts { subfields disciplines }
        children { path node { kind } counts { disciplines } children { path } } }
      ... on Problem { message } } }"""
    tree = api.gql(query, {"d": 2})["subtree"]
    assert tree["path"] == "" and tree["counts"]["disciplines"] == SEED_DISCIPLINES
    assert len(tree["children"]) == 15
    assert sum(f["counts"]["disciplines"] for f in tree["children"]) == SEED_DISCIPLINES
    assert sum(len(f["children"]) for f in tree["children"]) == tree["counts"]["subfields"]
    formal = api.gql(query, {"p": "Formal Sciences", "d": 1})["subtree"]
    assert formal["children"][1]["path"] == MATHEMATICS
    assert formal["children"][1]["counts"]["disciplines"] == 5
    assert formal["children"][1]["children"] == []  # depth 1
    too_deep = api.gql(query, {"d": 4})["subtree"]
    assert too_deep["__typename"] == "InvalidInputError" and "depth" in too_deep["message"]
    assert api.gql(query, {"p": "Nope", "d": 1})["subtree"]["__typename"] == "NotFoundError"


def test_search_by_name_kind_and_cursor(api: Api) -> None:
    query = """query($t: String!, $k: NodeKind, $after: String) {
      search(text: $t, kind: $k, first: 2, after: $after) {
        __typename
        ... on TaxonomyNodeConnection { pageInfo { hasNextPage endCursor }
          edges { node { kind name path } } }
        ... on Problem { message } } }"""
    found = api.gql(query, {"t": "ALGEBRA"})["search"]
    assert {"kind": "DISCIPLINE", "name": "Algebra", "path": ALGEBRA} in [
        e["node"] for e in found["edges"]
    ]
    seen, after = [], None
    while True:
        page = api.gql(query, {"t": "science", "k": "FIELD", "after": after})["search"]
        seen += [e["node"]["name"] for e in page["edges"]]
        assert all(e["node"]["kind"] == "FIELD" for e in page["edges"])
        after = page["pageInfo"]["endCursor"]
        if not page["pageInfo"]["hasNextPage"]:
            break
    fields = [f for f in seed_taxonomy()["fields"] if "science" in f.lower()]
    assert len(seen) > 2 and sorted(seen) == sorted(fields)
    assert api.gql(query, {"t": "  "})["search"]["__typename"] == "InvalidInputError"


COVERAGE = """query($p: String) { coverage(path: $p) {
  __typename
  ... on Coverage {
    total { path counts { disciplines subjects sessions concepts instructions responses }
      coveredConcepts conceptCoverage combinations subjectsWithoutSyllabus
      disciplinesWithoutSubjects }
    children { path node { name kind counts { disciplines subjects } }
      counts { disciplines subjects } conceptCoverage disciplinesWithoutSubjects }
  }
  ... on Problem { message } } }"""


def test_coverage_on_the_seed_issues_a_bounded_number_of_queries(api: Api) -> None:
    counted = {}
    for path in (None, "Formal Sciences", ALGEBRA):
        with api.counting() as counter:
            cov = api.gql(COVERAGE, {"p": path})["coverage"]
        counted[path] = counter.count
        assert cov["total"]["path"] == (path or "")
        for row in cov["children"]:  # the node's counts come with the row, not re-read
            assert row["node"]["counts"]["disciplines"] == row["counts"]["disciplines"]
    whole = api.gql(COVERAGE, {})["coverage"]
    assert whole["total"]["counts"]["disciplines"] == SEED_DISCIPLINES
    assert whole["total"]["disciplinesWithoutSubjects"] == SEED_DISCIPLINES
    assert len(whole["children"]) == 15
    assert sum(r["counts"]["disciplines"] for r in whole["children"]) == SEED_DISCIPLINES
    # 15 fields and 140 disciplines cost no more queries than one sub-field's coverage
    assert counted[None] <= counted["Formal Sciences"] <= 20, counted
    missing = api.gql(COVERAGE, {"p": "Nope"})["coverage"]
    assert missing["__typename"] == "NotFoundError"


# ---------------------------------------------------------------------- taxonomy edits

ADD = """mutation($p: String, $k: NodeKind!, $n: String!, $d: String, $l: String,
                  $t: [String!], $s: ReviewStatus! = APPROVED) {
  addNode(parentPath: $p, kind: $k, name: $n, description: $d, level: $l, subtopics: $t,
          status: $s) {
    __typename
    ... on NodePayload { node { id path kind status source description level subtopics } }
    ... on Problem { message }
    ... on WrongKindError { kind parentKind }
  } }"""


def test_taxonomy_edits(api: Api) -> None:
    added = api.gql(
        ADD, {"p": MATHEMATICS, "k": "DISCIPLINE", "n": "Category Theory", "d": "arrows"}
    )["addNode"]
    assert added["__typename"] == "NodePayload"
    assert added["node"] | {"id": None} == {
        "id": None,
        "path": NEW,
        "kind": "DISCIPLINE",
        "status": "APPROVED",
        "source": "user",
        "description": "arrows",
        "level": None,
        "subtopics": None,
    }
    again = api.gql(ADD, {"p": MATHEMATICS, "k": "DISCIPLINE", "n": "category  theory"})
    assert again["addNode"]["node"]["id"] == added["node"]["id"]  # adding again: no copy

    subject = api.gql(
        ADD,
        {
            "p": NEW,
            "k": "SUBJECT",
            "n": "Functors",
            "l": "graduate",
            "t": ["natural transformations"],
            "s": "PROPOSED",
        },
    )["addNode"]
    assert subject["node"]["status"] == "PROPOSED" and subject["node"]["level"] == "graduate"
    functors = subject["node"]["path"]

    update = """mutation($p: String!, $d: String, $t: [String!]) {
      updateNode(path: $p, description: $d, subtopics: $t) {
        __typename ... on NodePayload { node { description level subtopics } }
        ... on Problem { message } } }"""
    changed = api.gql(update, {"p": functors, "d": "maps", "t": ["adjunctions"]})
    assert changed["updateNode"]["node"] == {
        "description": "maps",
        "level": "graduate",
        "subtopics": ["adjunctions"],
    }  # level was not given, so it stayed
    cleared = api.gql(update, {"p": functors, "d": None})["updateNode"]["node"]
    assert cleared["description"] is None and cleared["subtopics"] == ["adjunctions"]

    review = """mutation($p: String!, $d: Decision!) { reviewNode(path: $p, decision: $d) {
      __typename ... on NodePayload { node { status hidden counts { subjects } } } } }"""
    assert api.gql(review, {"p": functors, "d": "APPROVE"})["reviewNode"]["node"]["status"] == (
        "APPROVED"
    )
    rejected = api.gql(review, {"p": NEW, "d": "REJECT"})["reviewNode"]["node"]
    assert rejected == {"status": "REJECTED", "hidden": True, "counts": {"subjects": 0}}
    child = api.gql(NODE, {"path": functors})["node"]
    assert child["hidden"] and child["status"] == "APPROVED"  # hidden by its parent
    api.gql(review, {"p": NEW, "d": "APPROVE"})
    assert api.gql(NODE, {"path": MATHEMATICS})["node"]["counts"]["subjects"] == 1

    link = """mutation($p: String!, $s: String!) { linkSubject(parentPath: $p, subjectPath: $s) {
      __typename ... on NodePayload { node { path paths } } ... on Problem { message } } }"""
    linked = api.gql(link, {"p": ALGEBRA, "s": functors})["linkSubject"]["node"]
    assert linked["path"] == ALGEBRA + "/Functors"
    assert linked["paths"] == sorted([ALGEBRA + "/Functors", functors])

    delete = """mutation($p: String!) { deleteNode(path: $p) {
      __typename ... on DeletePayload { path unlinked removed { disciplines subjects } }
      ... on Problem { message } } }"""
    unlinked = api.gql(delete, {"p": ALGEBRA + "/Functors"})["deleteNode"]
    assert unlinked == {
        "__typename": "DeletePayload",
        "path": ALGEBRA + "/Functors",
        "unlinked": True,
        "removed": {"disciplines": 0, "subjects": 0},
    }
    gone = api.gql(delete, {"p": NEW})["deleteNode"]
    assert gone["removed"] == {"disciplines": 1, "subjects": 1} and not gone["unlinked"]
    assert api.gql(NODE, {"path": NEW})["node"]["__typename"] == "NotFoundError"


def test_edit_failures_are_typed_results(api: Api) -> None:
    def add(**v: Any) -> dict[str, Any]:
        return api.gql(ADD, v)["addNode"]

    wrong = add(p="Formal Sciences", k="CONCEPT", n="x")
    assert wrong["__typename"] == "WrongKindError"
    assert wrong["kind"] == "CONCEPT" and wrong["parentKind"] == "FIELD"
    assert add(k="DISCIPLINE", n="Orphan")["__typename"] == "WrongKindError"
    assert add(p="Nope", k="SUBFIELD", n="x")["__typename"] == "NotFoundError"
    empty = add(p="Formal Sciences", k="SUBFIELD", n=" \t ")
    assert empty["__typename"] == "InvalidInputError" and "empty" in empty["message"]
    long = add(p="Formal Sciences", k="SUBFIELD", n="x" * 500)
    assert long["__typename"] == "InvalidInputError" and "limit" in long["message"]
    # values only ever reach the database as parameters
    cypher = "x'}) MATCH (n) DETACH DELETE n //"
    stored = add(p="Formal Sciences", k="SUBFIELD", n=cypher)
    assert stored["node"]["path"] == "Formal Sciences/" + cypher.replace("/", "\\/")
    assert api.store.nodes.count_kind(FIELD) == 15

    bad_update = api.gql(
        'mutation { updateNode(path: "Formal Sciences/Mathematics/Algebra", '
        'level: "hard") { __typename ... on Problem { message } } }'
    )
    assert bad_update["updateNode"]["__typename"] == "InvalidInputError"
    link = api.gql(
        'mutation { linkSubject(parentPath: "Arts", subjectPath: '
        '"Formal Sciences/Mathematics") { __typename ... on Problem { message } } }'
    )
    assert link["linkSubject"]["__typename"] == "InvalidInputError"
    assert "only subjects" in link["linkSubject"]["message"]
    for mutation in (
        'reviewNode(path: "Nope", decision: APPROVE)',
        'deleteNode(path: "Nope")',
        'updateNode(path: "Nope", description: "x")',
    ):
        result = api.gql("mutation { r: " + mutation + " { __typename } }")["r"]
        assert result["__typename"] == "NotFoundError", mutation
    # a kind outside the enum is a schema error, reported before anything runs
    messages = api.errors('mutation { addNode(kind: PLANET, name: "x") { __typename } }')
    assert "PLANET" in messages[0]


# ---------------------------------------------------------------------- generation


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A discipline added through the API, then subjects, syllabus, questions and answers
    generated under it alone, each as a job started by a mutation (the first one followed
    over the subscription)."""
    db = tmp_path_factory.mktemp("generated") / "api.lbug"
    model, subscribed = fake_glan_model(), threading.Event()

    def held(body: dict[str, Any], n: int) -> Reply:
        """Subjects are answered only once the subscription is live, so that it sees the
        job running whatever the machine's speed."""
        reply = model(body, n)
        if '{"subjects"' in first_user_message(body):
            reply.hold = subscribed
        return reply

    with run_stub(held) as stub, run_api(settings(db, stub)) as api:
        api.store.taxonomy.load(seed_taxonomy())
        added = api.gql(ADD, {"p": MATHEMATICS, "k": "DISCIPLINE", "n": "Category Theory"})
        assert added["addNode"]["__typename"] == "NodePayload"
        jobs = {
            "subjects": start(api, "generateSubjects(path: $p, rounds: 2, perCall: 3)", {"p": NEW})
        }
        updates = subscribe(api, PROGRESS, {"id": jobs["subjects"]["id"]}, on_first=subscribed.set)
        for stage, mutation in (
            ("syllabus", "generateSyllabus(path: $p, sessions: 3)"),
            ("questions", "generateInstructions(path: $p, n: 6, seed: 2, strategy: MIXED)"),
            ("answers", "generateAnswers(path: $p)"),
        ):
            jobs[stage] = start(api, mutation, {"p": NEW})
            assert jobs[stage]["status"] == "RUNNING", jobs[stage]
            finished = api.wait_for(jobs[stage]["id"])
            assert finished["status"] == "COMPLETED", finished
        yield {"api": api, "stub": stub, "jobs": jobs, "updates": updates}


def test_generation_under_a_new_discipline_end_to_end(generated: dict[str, Any]) -> None:
    api, jobs, updates = generated["api"], generated["jobs"], generated["updates"]
    assert jobs["subjects"] | {"id": None} == {
        "id": None,
        "kind": "SUBJECTS",
        "scope": NEW,
        "status": "RUNNING",
        "live": True,
    }
    events = [u["data"]["jobProgress"] for u in updates]
    assert all(not u.get("errors") for u in updates)
    assert [e["done"] for e in events] == sorted(e["done"] for e in events)
    assert events[0]["status"] == "RUNNING" and events[-1]["status"] == "COMPLETED"
    assert events[-1]["done"] == events[-1]["total"] == 2 and not events[-1]["live"]
    assert events[-1]["promptTokens"] == 2 * 11 and events[-1]["completionTokens"] == 2 * 7

    cov = api.gql(COVERAGE, {"p": NEW})["coverage"]
    total = cov["total"]
    # the stub writes 4 sessions of 4 concepts whatever it is asked
    assert total["counts"] == {
        "disciplines": 0,
        "subjects": 6,
        "sessions": 24,
        "concepts": 96,
        "instructions": 6,
        "responses": 6,
    }
    assert total["combinations"] == 6 and total["subjectsWithoutSyllabus"] == 0
    assert 0 < total["coveredConcepts"] <= 6 * 5
    assert total["conceptCoverage"] == pytest.approx(total["coveredConcepts"] / 96)
    assert len(cov["children"]) == 6
    # nothing was generated outside the new discipline
    assert api.gql(NODE, {"path": ALGEBRA})["node"]["counts"]["subjects"] == 0
    whole = api.gql(COVERAGE, {})["coverage"]["total"]["counts"]
    assert whole["instructions"] == 6 and whole["subjects"] == 6


INSTRUCTIONS = """query($p: String, $f: InstructionFilter, $first: Int!, $after: String) {
  instructions(path: $p, filter: $f, first: $first, after: $after) {
    __typename
    ... on InstructionConnection {
      totalCount pageInfo { hasNextPage endCursor }
      edges { cursor node {
        id text strategy seed
        provenance { model promptName promptVersion jobId strategy seed }
        subject { kind name }
        sessions { kind name }
        concepts { kind name }
        responses { text provenance { model promptName jobId } }
      } }
    }
    ... on Problem { message }
  } }"""


def test_instructions_with_their_concepts_sessions_and_responses(
    generated: dict[str, Any],
) -> None:
    api, jobs = generated["api"], generated["jobs"]
    seen: list[str] = []
    after = None
    while True:
        page = api.gql(INSTRUCTIONS, {"p": NEW, "first": 4, "after": after})["instructions"]
        assert page["totalCount"] == 6
        seen += [e["node"]["id"] for e in page["edges"]]
        after = page["pageInfo"]["endCursor"]
        if not page["pageInfo"]["hasNextPage"]:
            break
    assert len(seen) == len(set(seen)) == 6 and seen == sorted(seen)

    page = api.gql(INSTRUCTIONS, {"p": NEW, "first": 6})["instructions"]
    for edge in page["edges"]:
        ins = edge["node"]
        prov = ins["provenance"]
        assert prov["promptName"] == "question" and prov["model"] == "stub"
        assert prov["jobId"] == jobs["questions"]["id"] and prov["promptVersion"]
        assert ins["seed"] == prov["seed"] == 2 and ins["strategy"] in ("BASIC", "HARD")
        assert ins["subject"]["kind"] == "SUBJECT"
        sessions = 1 if ins["strategy"] == "BASIC" else 2
        assert [s["kind"] for s in ins["sessions"]] == ["SESSION"] * sessions
        assert sessions <= len(ins["concepts"]) <= 5
        assert all(c["name"] in ins["text"] for c in ins["concepts"])
        (response,) = ins["responses"]
        assert response["provenance"] == {
            "model": "stub",
            "promptName": "answer",
            "jobId": jobs["answers"]["id"],
        }

    basic = api.gql(INSTRUCTIONS, {"p": NEW, "first": 10, "f": {"strategy": "BASIC"}})
    strategies = [e["node"]["strategy"] for e in page["edges"]]
    assert basic["instructions"]["totalCount"] == strategies.count("BASIC")
    none = api.gql(INSTRUCTIONS, {"first": 10, "f": {"answered": False}})["instructions"]
    assert none["totalCount"] == 0 and none["edges"] == []
    by_job = {"jobId": jobs["questions"]["id"], "duplicate": False, "contaminated": False}
    assert api.gql(INSTRUCTIONS, {"first": 10, "f": by_job})["instructions"]["totalCount"] == 6

    assert api.gql(INSTRUCTIONS, {"p": ALGEBRA, "first": 5})["instructions"]["totalCount"] == 0
    tree = api.gql(
        "query($p: String) { subtree(path: $p, depth: 3) { ... on TreeNode { "
        "children { children { children { path } } } } } }",
        {"p": NEW},
    )["subtree"]
    concept = tree["children"][0]["children"][0]["children"][0]["path"]
    for variables, typename in (
        ({"p": "Nope", "first": 5}, "NotFoundError"),
        ({"p": concept, "first": 5}, "WrongKindError"),
        ({"p": NEW, "first": 0}, "InvalidInputError"),
        ({"p": NEW, "first": 5, "after": "garbage"}, "InvalidInputError"),
    ):
        result = api.gql(INSTRUCTIONS, variables)["instructions"]
        assert result["__typename"] == typename, (variables, result)


def test_instruction_fields_are_batched(generated: dict[str, Any]) -> None:
    """A page of 6 instructions with every nested field costs what a page of 1 does."""
    api = generated["api"]
    counted = []
    for first in (1, 6):
        with api.counting() as counter:
            page = api.gql(INSTRUCTIONS, {"p": NEW, "first": first})["instructions"]
        assert len(page["edges"]) == first
        counted.append(counter.count)
    assert counted[0] == counted[1], counted


def test_an_instruction_page_is_read_in_the_database(generated: dict[str, Any]) -> None:
    """The page, its filter and its totalCount are one query each after the path's lookup,
    whatever the filter; a sample is a count and a pick. Of the whole store, the count
    adds up ranges of the instruction table: the approved sessions, where the table ends,
    and a read per range (one here)."""
    api, jobs = generated["api"], generated["jobs"]
    query = """query($p: String, $f: InstructionFilter) { instructions(path: $p, filter: $f,
      first: 2) { ... on InstructionConnection { totalCount edges { node { id } } } } }"""
    every = {
        "strategy": "HARD",
        "model": "stub",
        "jobId": jobs["questions"]["id"],
        "duplicate": False,
        "contaminated": False,
        "answered": True,
    }
    for f in (None, {"answered": True}, every):
        with api.counting() as counter:
            api.gql(query, {"p": NEW, "f": f})
        assert counter.count == 3, (f, counter.queries)  # path, page, count
    sample = "query { sampleInstructions(n: 3, seed: 1) { __typename } }"
    with api.counting() as counter:
        api.gql(sample)
    assert counter.count == 4, counter.queries  # count (3), pick (no path)


def test_sample_instructions_is_reproducible(generated: dict[str, Any]) -> None:
    api = generated["api"]
    query = """query($p: String, $n: Int!, $seed: Int!) { sampleInstructions(path: $p, n: $n,
      seed: $seed) { __typename ... on InstructionSample { seed instructions { id
      concepts { name } responses { text } } } ... on Problem { message } } }"""
    one = api.gql(query, {"p": NEW, "n": 3, "seed": 5})["sampleInstructions"]
    assert one["seed"] == 5 and len(one["instructions"]) == 3
    assert len({i["id"] for i in one["instructions"]}) == 3
    assert all(i["concepts"] and i["responses"] for i in one["instructions"])
    assert api.gql(query, {"p": NEW, "n": 3, "seed": 5})["sampleInstructions"] == one
    other_seeds = [
        [i["id"] for i in api.gql(query, {"n": 3, "seed": s})["sampleInstructions"]["instructions"]]
        for s in range(6, 10)
    ]
    assert any(ids != [i["id"] for i in one["instructions"]] for ids in other_seeds)
    everything = api.gql(query, {"n": 50, "seed": 1})["sampleInstructions"]["instructions"]
    assert len(everything) == 6  # n above the population: all of them
    assert api.gql(query, {"n": 0, "seed": 1})["sampleInstructions"]["__typename"] == (
        "InvalidInputError"
    )
    assert (
        api.gql(query, {"p": "Nope", "n": 1, "seed": 1})["sampleInstructions"]["__typename"]
        == "NotFoundError"
    )


def test_jobs_job_and_units(generated: dict[str, Any]) -> None:
    api, jobs = generated["api"], generated["jobs"]
    listing = api.gql("""{ jobs(first: 10) { ... on JobConnection { totalCount edges { node {
      id kind scope status live done total promptTokens params createdAt } } } } }""")["jobs"]
    assert listing["totalCount"] == 4
    by_kind = {e["node"]["kind"]: e["node"] for e in listing["edges"]}
    assert set(by_kind) == {"SUBJECTS", "SYLLABUS", "QUESTIONS", "ANSWERS"}
    for stage, job in jobs.items():
        row = by_kind[stage.upper()]
        assert row["id"] == job["id"] and row["scope"] == NEW and row["status"] == "COMPLETED"
        assert not row["live"] and row["done"] == row["total"] > 0 and row["createdAt"]
    assert '"seed": 2' in by_kind["QUESTIONS"]["params"]
    only = api.gql("{ jobs(kind: ANSWERS) { ... on JobConnection { edges { node { id } } } } }")
    assert [e["node"]["id"] for e in only["jobs"]["edges"]] == [jobs["answers"]["id"]]
    done = api.gql("{ jobs(status: FAILED) { ... on JobConnection { totalCount } } }")
    assert done["jobs"]["totalCount"] == 0

    one = api.gql(
        """query($id: ID!) { job(id: $id) { __typename ... on Job { kind
      units(first: 1) { totalCount pageInfo { hasNextPage } edges { node { status targetId
      promptTokens } } } failed: units(status: FAILED) { totalCount } } } }""",
        {"id": jobs["subjects"]["id"]},
    )["job"]
    assert one["kind"] == "SUBJECTS" and one["units"]["totalCount"] == 2
    assert one["units"]["pageInfo"]["hasNextPage"] and one["failed"]["totalCount"] == 0
    unit = one["units"]["edges"][0]["node"]
    assert unit["status"] == "DONE" and unit["targetId"].startswith("dis_")
    assert unit["promptTokens"] == 11
    unknown = api.gql('{ job(id: "job_nope") { __typename ... on NotFoundError { id } } }')
    assert unknown["job"] == {"__typename": "NotFoundError", "id": "job_nope"}


def test_starting_a_finished_job_again_resumes_it(generated: dict[str, Any]) -> None:
    """Same stage, scope and options: the same job id, and nothing is asked twice."""
    api, stub, jobs = generated["api"], generated["stub"], generated["jobs"]
    calls = stub.calls
    again = start(api, "generateSubjects(path: $p, rounds: 2, perCall: 3)", {"p": NEW})
    assert again["id"] == jobs["subjects"]["id"]
    assert api.wait_for(again["id"])["status"] == "COMPLETED" and stub.calls == calls


def test_generation_refusals_are_typed_results(api: Api) -> None:
    api.gql(
        'mutation { reviewNode(path: "Formal Sciences/Mathematics/Algebra", '
        "decision: REJECT) { __typename } }"
    )
    refused = start(api, "generateSubjects(path: $p)", {"p": ALGEBRA + "/"})
    assert refused["__typename"] == "NotFoundError"  # an empty segment names no node
    refused = start(api, "generateSubjects(path: $p)", {"p": ALGEBRA})
    assert refused["__typename"] == "NotApprovedError"
    assert refused == refused | {"path": ALGEBRA, "status": "rejected"}
    assert "approve" in refused["message"].lower()
    api.gql(ADD, {"p": MATHEMATICS, "k": "DISCIPLINE", "n": "Topology", "s": "PROPOSED"})
    proposed = start(api, "generateSyllabus(path: $p)", {"p": MATHEMATICS + "/Topology"})
    assert proposed["__typename"] == "NotApprovedError" and proposed["status"] == "proposed"
    assert start(api, "generateAnswers(path: $p)", {"p": "Nope"})["__typename"] == ("NotFoundError")
    for mutation in (
        "generateSubjects(path: $p, rounds: 0)",
        "generateSubjects(path: $p, perCall: 1000)",
        "generateSyllabus(path: $p, sessions: 0)",
        "generateInstructions(path: $p, n: 0)",
        "generateInstructions(path: $p, basicRatio: 1.5)",
        "generateTaxonomy(path: $p, n: 0)",
    ):
        bad = start(api, mutation, {"p": MATHEMATICS})
        assert bad["__typename"] == "InvalidInputError", (mutation, bad)
        assert "between" in bad["message"]
    assert api.gql("{ jobs { ... on JobConnection { totalCount } } }")["jobs"]["totalCount"] == 0


def test_a_stage_that_refuses_its_scope_is_reported(api: Api) -> None:
    from graph.model import SUBJECT

    api.store.taxonomy.add_node(ALGEBRA, SUBJECT, "Linear Algebra")
    for mutation, path in (
        ("generateTaxonomy(path: $p)", ALGEBRA),
        ("generateSubjects(path: $p)", ALGEBRA + "/Linear Algebra"),
    ):
        result = start(api, mutation, {"p": path})
        assert result["__typename"] == "WrongKindError", result
        assert "runs under" in result["message"]
    assert api.gql("{ jobs { ... on JobConnection { totalCount } } }")["jobs"]["totalCount"] == 0


def test_job_conflict_and_cancel(tmp_path: Path) -> None:
    slow = fake_glan_model()

    def handler(body: dict[str, Any], n: int) -> Reply:
        reply = slow(body, n)
        reply.delay_s = 0.1
        return reply

    with (
        run_stub(handler) as stub,
        run_api(settings(tmp_path / "api.lbug", stub, llm_concurrency=1)) as api,
    ):
        api.store.taxonomy.load(seed_taxonomy())
        first = start(api, "generateSubjects(path: $p, rounds: 20)", {"p": "Formal Sciences"})
        assert first["live"]
        inner = start(api, "generateSubjects(path: $p, rounds: 1)", {"p": ALGEBRA})
        assert inner["__typename"] == "JobConflictError" and inner["jobId"] == first["id"]
        assert "cancel" in inner["message"]
        other = start(api, "generateSubjects(path: $p, rounds: 1)", {"p": "Arts"})
        assert other["live"]  # a disjoint scope may run at the same time
        syllabus = start(api, "generateSyllabus(path: $p)", {"p": "Formal Sciences"})
        assert syllabus["live"]  # another stage on the same scope too

        cancel = """mutation($id: ID!) { cancelJob(id: $id) { __typename
          ... on JobPayload { job { id } } ... on NotFoundError { id } } }"""
        assert api.gql(cancel, {"id": first["id"]})["cancelJob"]["job"]["id"] == first["id"]
        final = api.wait_for(first["id"])
        assert final["status"] == "CANCELLED" and final["done"] < final["total"]
        assert api.gql(cancel, {"id": "job_nope"})["cancelJob"]["__typename"] == "NotFoundError"
        assert api.gql(cancel, {"id": "zzz"})["cancelJob"]["__typename"] == "NotFoundError"
        done = api.wait_for(other["id"])
        assert done["status"] == "COMPLETED"
        # once cancelled, the scope is free again: the same job resumes
        resumed = start(api, "generateSubjects(path: $p, rounds: 20)", {"p": "Formal Sciences"})
        assert resumed["id"] == first["id"] and resumed["live"]


def test_progress_of_an_unknown_or_finished_job(api: Api) -> None:
    (event,) = subscribe(api, PROGRESS, {"id": "job_0123"})
    assert event["data"]["jobProgress"]["__typename"] == "NotFoundError"
    (event,) = subscribe(api, PROGRESS, {"id": "nonsense"})
    assert event["data"]["jobProgress"]["__typename"] == "NotFoundError"
    job = start(api, "generateSubjects(path: $p, rounds: 1)", {"p": ALGEBRA})
    api.wait_for(job["id"])
    (event,) = subscribe(api, PROGRESS, {"id": job["id"]})  # stored state, once
    assert event["data"]["jobProgress"]["status"] == "COMPLETED"


# ---------------------------------------------------------------------- security, limits


def test_auth_on_protects_mutations_and_subscriptions(tmp_path: Path, stub: Stub) -> None:
    token = "s3cret-token"
    with run_api(settings(tmp_path / "api.lbug", stub, api_token=SecretStr(token))) as api:
        api.store.taxonomy.load(seed_taxonomy())
        add = (
            'mutation { addNode(parentPath: "Arts", kind: SUBFIELD, name: "Opera") { __typename } }'
        )
        for bearer in (None, "wrong", token + "x"):
            body = api.post(add, token=bearer).json()
            assert body["data"] is None and "Bearer" in body["errors"][0]["message"]
        assert api.gql(NODE, {"path": "Arts"})["node"]["name"] == "Arts"  # queries stay open
        assert api.gql(add, token=token)["addNode"]["__typename"] == "NodePayload"

        job = start(api, "generateSubjects(path: $p, rounds: 1)", {"p": ALGEBRA}, token=token)
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            subscribe(api, PROGRESS, {"id": job["id"]})
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            subscribe(
                api, PROGRESS, {"id": job["id"]}, init_payload={"Authorization": "Bearer wrong"}
            )
        by_payload = subscribe(
            api, PROGRESS, {"id": job["id"]}, init_payload={"Authorization": f"Bearer {token}"}
        )
        assert by_payload[-1]["data"]["jobProgress"]["status"] == "COMPLETED"
        by_header = subscribe(
            api, PROGRESS, {"id": job["id"]}, headers={"Authorization": f"Bearer {token}"}
        )
        assert by_header[-1]["data"]["jobProgress"]["status"] == "COMPLETED"


def legacy_subscribe(
    api: Api, query: str, variables: dict[str, Any], *, init_payload: dict[str, Any] | None = None
) -> tuple[str | None, list[dict[str, Any]]]:
    """One subscription over the legacy graphql-ws protocol (connection_init, connection_ack,
    start, data..., complete): the subprotocol the server chose and every `data` payload. A
    connection_error or error message raises AssertionError with it."""

    async def run() -> tuple[str | None, list[dict[str, Any]]]:
        async with websockets.connect(api.ws_url, subprotocols=["graphql-ws"]) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": init_payload or {}}))
            ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert ack["type"] == "connection_ack", ack
            payload = {"query": query, "variables": variables}
            await ws.send(json.dumps({"id": "1", "type": "start", "payload": payload}))
            seen: list[dict[str, Any]] = []
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if msg["type"] == "ka":
                    continue
                if msg["type"] == "complete":
                    return ws.subprotocol, seen
                assert msg["type"] == "data" and msg["id"] == "1", msg
                seen.append(msg["payload"])

    return asyncio.run(run())


def test_legacy_graphql_ws_clients_subscribe(api: Api) -> None:
    protocol, events = legacy_subscribe(api, PROGRESS, {"id": "job_0123"})
    assert protocol == "graphql-ws"
    assert [e["data"]["jobProgress"]["__typename"] for e in events] == ["NotFoundError"]
    job = start(api, "generateSubjects(path: $p, rounds: 1)", {"p": ALGEBRA})
    _, events = legacy_subscribe(api, PROGRESS, {"id": job["id"]})
    progress = [e["data"]["jobProgress"] for e in events]
    assert progress and all(p["id"] == job["id"] for p in progress)
    assert progress[-1]["status"] == "COMPLETED" and not progress[-1]["live"]
    assert progress[-1]["done"] == progress[-1]["total"] > 0


def test_legacy_graphql_ws_clients_need_the_token(tmp_path: Path, stub: Stub) -> None:
    token = "s3cret-token"

    async def refused(api: Api, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        """What the server answers to these messages before it closes the socket."""
        async with websockets.connect(api.ws_url, subprotocols=["graphql-ws"]) as ws:
            for message in messages:
                await ws.send(json.dumps(message))
            answers = []
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                while True:
                    answers.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            assert closed.value.rcvd is not None
            return answers, closed.value.rcvd.code

    start_progress = {
        "id": "1",
        "type": "start",
        "payload": {"query": PROGRESS, "variables": {"id": "job_0123"}},
    }
    with run_api(settings(tmp_path / "api.lbug", stub, api_token=SecretStr(token))) as api:
        for init in ({}, {"Authorization": "Bearer wrong"}):
            init_message = {"type": "connection_init", "payload": init}
            answers, code = asyncio.run(refused(api, [init_message, start_progress]))
            assert answers == [{"type": "connection_error", "payload": {"message": DENIED}}]
            assert code == 1011
        # a start without connection_init is no way around it
        answers, code = asyncio.run(refused(api, [start_progress]))
        assert answers == [] and code == 4401

        _, events = legacy_subscribe(
            api, PROGRESS, {"id": "job_0123"}, init_payload={"Authorization": f"Bearer {token}"}
        )
        assert events[0]["data"]["jobProgress"]["__typename"] == "NotFoundError"


def test_a_subscription_over_http_says_where_to_send_it(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        posted = api.post(PROGRESS, {"id": "job_0123"})
        got = httpx.get(
            f"{api.url}/graphql",
            params={"query": 'subscription { jobProgress(id: "job_0123") { __typename } }'},
        )
    for response in (posted, got):
        assert response.status_code == 200
        assert response.json() == {"data": None, "errors": [{"message": SUBSCRIPTION_OVER_HTTP}]}
    assert "websocket" in SUBSCRIPTION_OVER_HTTP and "/graphql" in SUBSCRIPTION_OVER_HTTP
    assert caplog.records == []  # the caller's mistake: nothing for the server's log
    # queries and mutations over HTTP are as before
    assert api.gql(NODE, {"path": "Arts"})["node"]["kind"] == "FIELD"
    mutation = httpx.get(
        f"{api.url}/graphql",
        params={"query": 'mutation { cancelJob(id: "job_0123") { __typename } }'},
    )
    assert mutation.status_code == 400 and "mutations are not allowed" in mutation.text


def test_auth_off_lets_anyone_change_things(api: Api) -> None:
    body = api.post(
        'mutation { addNode(parentPath: "Arts", kind: SUBFIELD, name: "Opera") { __typename } }'
    ).json()
    assert body == {"data": {"addNode": {"__typename": "NodePayload"}}}
    (event,) = subscribe(api, PROGRESS, {"id": "job_0123"})
    assert event["data"]["jobProgress"]["__typename"] == "NotFoundError"


def test_abusive_queries_are_rejected(api: Api) -> None:
    nested = (
        "{ children { ... on TaxonomyNodeConnection { edges { node { name "
        + ("children { edges { node { name " * 4)
        + "} } } " * 4
        + "} } } } }"
    )
    with api.counting() as counter:
        messages = api.errors(nested)
    assert "exceeds maximum operation depth" in messages[0] and counter.count == 0

    aliases = "{ " + " ".join(f"a{i}: jobs {{ __typename }}" for i in range(40)) + " }"
    assert "aliases" in api.errors(aliases)[0].lower()

    tokens = "{ " + " ".join(f"a{i}: __typename" for i in range(2000)) + " }"
    assert "token" in api.errors(tokens)[0].lower()

    wide = """query($n: Int!) { children(first: $n) { ... on TaxonomyNodeConnection { edges {
      node { children(first: $n) { edges { node { name kind } } } } } } } }"""
    with api.counting() as counter:
        messages = api.errors(wide, {"n": 500})
    assert "too large" in messages[0] and "first" in messages[0]
    assert counter.count == 0  # refused before anything ran
    assert api.gql(wide, {"n": 20})["children"]["edges"]  # the same shape, smaller pages

    page = api.gql("{ children(first: 1000) { __typename ... on Problem { message } } }")
    assert page["children"]["__typename"] == "InvalidInputError"
    assert "between 1 and 500" in page["children"]["message"]
    # GraphiQL's introspection query is not abuse
    schema = api.gql(get_introspection_query(descriptions=True))["__schema"]
    assert {"Query", "Mutation", "Subscription"} <= {t["name"] for t in schema["types"]}


def test_unexpected_errors_are_logged_not_leaked(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(path: str | None = None) -> Any:
        raise RuntimeError("secret detail /var/lib/glan MATCH (n)")

    monkeypatch.setattr(api.store.coverage, "report", broken)
    with caplog.at_level(logging.ERROR, logger="glan.server"):
        body = api.post(COVERAGE, {"p": ALGEBRA}).json()
    assert body["data"] is None
    assert [e["message"] for e in body["errors"]] == [UNEXPECTED]
    assert "secret" not in str(body) and "Traceback" not in str(body)
    assert any("secret detail" in str(r.exc_info) for r in caplog.records)
    assert api.gql(NODE, {"path": ALGEBRA})["node"]["name"] == "Algebra"  # still serving


# ---------------------------------------------------------------------- serving


def test_graphiql_and_the_root_redirect(api: Api) -> None:
    page = httpx.get(f"{api.url}/graphql", headers={"accept": "text/html"})
    assert page.status_code == 200 and "graphiql" in page.text.lower()
    root = httpx.get(api.url + "/", follow_redirects=False)
    assert root.status_code in (302, 307) and root.headers["location"] == "/dashboard"
    got = httpx.get(
        f"{api.url}/graphql",
        params={"query": '{ node(path: "Arts") { ... on TaxonomyNode { kind } } }'},
    )
    assert got.json() == {"data": {"node": {"kind": "FIELD"}}}


def test_uvicorn_serves_the_module_app_with_settings_from_the_environment(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLAN_")}
    env.update(
        GLAN_DB_PATH=str(tmp_path / "env.lbug"),
        GLAN_API_TOKEN="from-env",
        PYTHONPATH=str(Path(__file__).parents[1]),
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "server.app:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}/graphql"
        deadline = time.monotonic() + 30
        while True:
            try:
                body = httpx.post(
                    url,
                    json={
                        "query": "{ children { __typename "
                        "... on TaxonomyNodeConnection { totalCount } } }"
                    },
                )
                break
            except httpx.ConnectError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert body.json() == {
            "data": {"children": {"__typename": "TaxonomyNodeConnection", "totalCount": 0}}
        }
        denied = httpx.post(
            url, json={"query": 'mutation { addNode(kind: FIELD, name: "X") { __typename } }'}
        )
        assert "Bearer" in denied.json()["errors"][0]["message"]  # GLAN_API_TOKEN was read
    finally:
        proc.terminate()
        proc.wait(10)
    assert (tmp_path / "env.lbug").exists()


def test_glan_serve_runs_uvicorn_on_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn
    from starlette.applications import Starlette

    from server.cli import app as cli

    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: calls.append((target, kw)))
    result = CliRunner().invoke(cli, ["serve", "--host", "127.0.0.2", "--port", "8123"])
    assert result.exit_code == 0, result.output
    ((target, kw),) = calls
    assert isinstance(target, Starlette)
    assert kw["host"] == "127.0.0.2" and kw["port"] == 8123
