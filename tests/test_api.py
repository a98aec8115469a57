"""The GraphQL API: the real app under uvicorn on loopback, the embedded store, an LLM stub."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from pydantic import SecretStr

from graph.driver import QueryCounter
from graph.model import FIELD, Status
from graph.store import Store
from server.settings import Settings
from tests.api_server import Api, run_api
from tests.llm_stub import Reply, Stub, fake_glan_model, run_stub
from tests.test_cli import seed_disciplines

ALGEBRA = "Formal Sciences/Mathematics/Algebra"


def settings(tmp_path: Path, stub: Stub, **kw: Any) -> Settings:
    values: dict[str, Any] = {"db_path": tmp_path / "api.lbug", "llm_base_url": stub.base_url,
                              "model": "stub", "llm_concurrency": 4, **kw}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def stub() -> Iterator[Stub]:
    with run_stub(fake_glan_model()) as s:
        yield s


@pytest.fixture
def api(tmp_path: Path, stub: Stub) -> Iterator[Api]:
    with run_api(settings(tmp_path, stub)) as running:
        store(running).load_taxonomy(_seed())
        yield running


def _seed() -> dict[str, Any]:
    import yaml

    return yaml.safe_load((Path(__file__).parents[1] / "graph/seed/taxonomy.yaml").read_text())


def store(api: Api) -> Store:
    return api.app.state.glan.store


def wait_for(api: Api, job_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = api.gql("query($id: ID!) { job(id: $id) { id status done failed total } }",
                      {"id": job_id})["job"]
        if job["status"] != "running":
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


NODE = """
query($path: String) {
  node(path: $path) {
    __typename
    ... on TaxonomyNode { id kind name path status paths counts { disciplines subjects } }
    ... on Problem { message }
  }
}"""


def test_node_children_subtree_search(api: Api) -> None:
    data = api.gql(NODE, {"path": "formal sciences/mathematics"})["node"]
    assert data["__typename"] == "TaxonomyNode" and data["kind"] == "SubField"
    assert data["path"] == "Formal Sciences/Mathematics" and data["counts"]["disciplines"] == 5
    by_id = api.gql("query($id: ID) { node(id: $id) { ... on TaxonomyNode { name path } } }",
                    {"id": data["id"]})["node"]
    assert by_id == {"name": "Mathematics", "path": "Formal Sciences/Mathematics"}

    first = api.gql("{ children(first: 10) { totalCount edges { cursor node { name } } "
                    "pageInfo { hasNextPage endCursor } } }")["children"]
    assert first["totalCount"] == 15 and len(first["edges"]) == 10
    assert first["pageInfo"]["hasNextPage"]
    rest = api.gql("query($a: String) { children(first: 10, after: $a) { edges { node { name } } "
                   "pageInfo { hasNextPage } } }", {"a": first["pageInfo"]["endCursor"]})
    names = [e["node"]["name"] for e in first["edges"] + rest["children"]["edges"]]
    assert len(names) == len(set(names)) == 15 and not rest["children"]["pageInfo"]["hasNextPage"]

    tree = api.gql("{ subtree(depth: 2) { ... on TreeNode { counts { disciplines } "
                   "children { path children { path } } } } }")["subtree"]
    assert tree["counts"]["disciplines"] == seed_disciplines()
    assert sum(len(f["children"]) for f in tree["children"]) == 40

    found = api.gql('{ search(text: "ALGEBRA") { edges { node { kind path } } } }')["search"]
    assert {"kind": "Discipline", "path": ALGEBRA} in [e["node"] for e in found["edges"]]


def test_expected_failures_are_typed_results(api: Api) -> None:
    missing = api.gql(NODE, {"path": "Formal Sciences/Nope"})["node"]
    assert missing["__typename"] == "NotFoundError" and "Nope" in missing["message"]
    wrong = api.gql('mutation { addNode(parentPath: "Formal Sciences", kind: "concept", '
                    'name: "x") { __typename ... on Problem { message } } }')["addNode"]
    assert wrong["__typename"] == "WrongKindError" and "Concept" in wrong["message"]
    empty = api.gql('mutation { addNode(parentPath: "Formal Sciences", kind: "subfield", '
                    'name: "  ") { __typename ... on Problem { message } } }')["addNode"]
    assert empty["__typename"] == "InvalidInputError"
    store(api).review(ALGEBRA, Status.REJECTED)
    refused = api.gql('mutation($p: String) { generateSubjects(path: $p) { __typename '
                      '... on NotApprovedError { path status message } } }', {"p": ALGEBRA})
    assert refused["generateSubjects"]["__typename"] == "NotApprovedError"
    assert refused["generateSubjects"]["status"] == "rejected"
    bad_kind = api.gql('mutation { addNode(parentPath: "Formal Sciences", kind: "planet", '
                       'name: "x") { __typename ... on Problem { message } } }')["addNode"]
    assert bad_kind["__typename"] == "InvalidInputError" and "unknown kind" in bad_kind["message"]
    cypher = "x'}) MATCH (n) DETACH DELETE n //"
    added = api.gql('mutation($n: String!) { addNode(parentPath: "Formal Sciences", '
                    'kind: "subfield", name: $n) { ... on TaxonomyNode { name } } }', {"n": cypher})
    assert added["addNode"]["name"] == cypher and store(api).count_kind(FIELD) == 15


def test_taxonomy_edits(api: Api) -> None:
    add = """mutation($p: String, $k: String!, $n: String!) {
      addNode(parentPath: $p, kind: $k, name: $n, description: "new") {
        __typename ... on TaxonomyNode { path status description } } }"""
    node = api.gql(add, {"p": "Formal Sciences/Mathematics", "k": "discipline",
                         "n": "Category Theory"})["addNode"]
    assert node == {"__typename": "TaxonomyNode", "path": "Formal Sciences/Mathematics/Category "
                    "Theory", "status": "approved", "description": "new"}
    path = node["path"]
    subject = api.gql(add, {"p": path, "k": "subject", "n": "Functors"})["addNode"]["path"]
    upd = api.gql('mutation($p: String!) { updateNode(path: $p, level: "graduate", '
                  'subtopics: ["adjunctions"]) { ... on TaxonomyNode { level subtopics } } }',
                  {"p": subject})["updateNode"]
    assert upd == {"level": "graduate", "subtopics": ["adjunctions"]}
    linked = api.gql('mutation($p: String!, $s: String!) { linkSubject(parentPath: $p, '
                     'subjectPath: $s) { ... on TaxonomyNode { paths } } }',
                     {"p": ALGEBRA, "s": subject})
    assert len(linked["linkSubject"]["paths"]) == 2
    rej = api.gql('mutation($p: String!) { reviewNode(path: $p, decision: REJECT) '
                  '{ ... on TaxonomyNode { status hidden } } }', {"p": path})["reviewNode"]
    assert rej == {"status": "rejected", "hidden": True}
    gone = api.gql('mutation($p: String!) { deleteNode(path: $p) { __typename '
                   '... on Counts { disciplines subjects } } }', {"p": path})["deleteNode"]
    assert gone == {"__typename": "Counts", "disciplines": 1, "subjects": 0}  # kept: shared


SUBSCRIBE = "subscription($id: ID!) { jobProgress(id: $id) { status done failed total " \
            "promptTokens } }"


async def subscribe(api: Api, job_id: str, token: str | None = None) -> list[dict[str, Any]]:
    """Every jobProgress message over graphql-transport-ws until the server completes."""
    payload = {"Authorization": f"Bearer {token}"} if token else {}
    async with websockets.connect(api.ws_url, subprotocols=["graphql-transport-ws"]) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe",
                                  "payload": {"query": SUBSCRIBE, "variables": {"id": job_id}}}))
        seen = []
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if msg["type"] == "complete":
                return seen
            assert msg["type"] == "next", msg
            assert not msg["payload"].get("errors"), msg
            seen.append(msg["payload"]["data"]["jobProgress"])


def test_generation_under_a_new_discipline_end_to_end(api: Api, stub: Stub) -> None:
    api.gql('mutation { addNode(parentPath: "Formal Sciences/Mathematics", kind: "discipline", '
            'name: "Category Theory") { __typename } }')
    path = "Formal Sciences/Mathematics/Category Theory"
    job = api.gql('mutation($p: String) { generateSubjects(path: $p, rounds: 2, perCall: 3) '
                  '{ ... on Job { id status kind scope } } }', {"p": path})["generateSubjects"]
    assert job["status"] == "running" and job["scope"] == path
    updates = asyncio.run(subscribe(api, job["id"]))
    assert updates[-1]["status"] == "completed" and updates[-1]["done"] == 2
    assert [u["done"] for u in updates] == sorted(u["done"] for u in updates)
    for mutation in ('generateSyllabus(path: $p, sessions: 3)',
                     'generateInstructions(path: $p, n: 6, seed: 2, strategy: "mixed")',
                     'generateAnswers(path: $p)'):
        started = api.gql("mutation($p: String) { " + mutation + " { ... on Job { id } } }",
                          {"p": path})
        finished = wait_for(api, next(iter(started.values()))["id"])
        assert finished["status"] == "completed", finished
    cov = api.gql('query($p: String) { coverage(path: $p) { ... on Coverage { total { '
                  'counts { subjects concepts instructions responses } coveredConcepts '
                  'conceptCoverage combinations subjectsWithoutSyllabus } children { path } } } }',
                  {"p": path})["coverage"]
    total = cov["total"]
    assert total["counts"]["subjects"] == 6 and total["counts"]["instructions"] == 6
    assert total["counts"]["responses"] == 6 and total["combinations"] == 6
    assert 0 < total["conceptCoverage"] <= 1 and total["subjectsWithoutSyllabus"] == 0
    assert len(cov["children"]) == 6
    # nothing was generated outside the new discipline
    assert api.gql(NODE, {"path": ALGEBRA})["node"]["counts"]["subjects"] == 0

    page = api.gql('query($p: String) { instructions(path: $p, first: 4) { ... on '
                   'InstructionConnection { totalCount pageInfo { hasNextPage endCursor } edges '
                   '{ node { text strategy model promptName promptVersion seed subject { name } '
                   'sessions { kind } concepts { kind name } responses { text model } } } } } }',
                   {"p": path})["instructions"]
    assert page["totalCount"] == 6 and page["pageInfo"]["hasNextPage"]
    for edge in page["edges"]:
        ins = edge["node"]
        assert ins["promptName"] == "question" and ins["seed"] == 2 and ins["subject"]["name"]
        assert {s["kind"] for s in ins["sessions"]} == {"Session"}
        assert 1 <= len(ins["concepts"]) <= 5 and len(ins["responses"]) == 1
    sample = api.gql('{ sampleInstructions(n: 3, seed: 5) { id } }')["sampleInstructions"]
    assert len(sample) == 3
    assert sample == api.gql('{ sampleInstructions(n: 3, seed: 5) { id } }')["sampleInstructions"]
    jobs = api.gql("{ jobs { kind status promptTokens } }")["jobs"]
    assert sorted(j["kind"] for j in jobs) == ["answers", "questions", "subjects", "syllabus"]


def test_nested_fields_are_batched(api: Api) -> None:
    st = store(api)
    st.driver.counter = QueryCounter()  # type: ignore[attr-defined]
    api.gql("{ search(text: \"a\", kind: \"discipline\", first: 50) { edges { node { paths } } } }")
    counted = st.driver.counter.count  # type: ignore[attr-defined]
    # one search query per kind plus per-node path lookups, not more
    assert counted <= 1 + 2 * 50


def test_coverage_issues_a_bounded_number_of_queries(api: Api) -> None:
    st = store(api)
    counts = []
    for path in (None, "Formal Sciences", ALGEBRA):
        st.driver.counter = QueryCounter()  # type: ignore[attr-defined]
        data = api.gql("query($p: String) { coverage(path: $p) { ... on Coverage { total "
                       "{ path counts { disciplines } } children { path coveredConcepts } } } }",
                       {"p": path})
        assert data["coverage"]["total"]["path"] == (path or "")
        counts.append(st.driver.counter.count)  # type: ignore[attr-defined]
    # the whole seed taxonomy (15 fields, 140 disciplines) takes no more queries than one node
    assert max(counts) <= 30, counts


def test_job_conflict_and_cancel(tmp_path: Path) -> None:
    slow = fake_glan_model()

    def handler(body: dict[str, Any], n: int) -> Reply:
        reply = slow(body, n)
        reply.delay_s = 0.2
        return reply

    with run_stub(handler) as stub, run_api(settings(tmp_path, stub, llm_concurrency=1)) as api:
        store(api).load_taxonomy(_seed())
        start = 'mutation($p: String) { generateSubjects(path: $p, rounds: 20) { __typename ' \
                '... on Job { id } ... on JobConflictError { jobId message } } }'
        first = api.gql(start, {"p": "Formal Sciences"})["generateSubjects"]
        inner = api.gql(start, {"p": ALGEBRA})["generateSubjects"]
        assert inner["__typename"] == "JobConflictError" and inner["jobId"] == first["id"]
        other = api.gql('mutation { generateSubjects(path: "Arts", rounds: 1) { __typename } }')
        assert other["generateSubjects"]["__typename"] == "Job"  # a disjoint scope may run
        cancelled = api.gql('mutation($id: ID!) { cancelJob(id: $id) { ... on Job { id } } }',
                            {"id": first["id"]})
        assert cancelled["cancelJob"]["id"] == first["id"]
        final = wait_for(api, first["id"])
        assert final["status"] == "cancelled" and final["done"] < final["total"]
        unknown = api.gql('mutation { cancelJob(id: "job_nope") { __typename } }')
        assert unknown["cancelJob"]["__typename"] == "NotFoundError"


def test_auth_on(tmp_path: Path, stub: Stub) -> None:
    token = "s3cret-token"
    with run_api(settings(tmp_path, stub, api_token=SecretStr(token))) as api:
        store(api).load_taxonomy(_seed())
        mutation = 'mutation { addNode(parentPath: "Arts", kind: "subfield", name: "Opera") ' \
                   '{ __typename } }'
        for bearer in (None, "wrong"):
            body = api.post(mutation, token=bearer).json()
            assert body["data"] is None and "Bearer" in body["errors"][0]["message"]
        assert api.gql(NODE, {"path": "Arts"})["node"]["name"] == "Arts"  # queries stay open
        assert api.gql(mutation, token=token)["addNode"]["__typename"] == "TaxonomyNode"
        job = api.gql('mutation { generateSubjects(path: "Arts/Performing Arts/Music", rounds: 1)'
                      ' { ... on Job { id } } }', token=token)["generateSubjects"]["id"]
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            asyncio.run(subscribe(api, job))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
        assert asyncio.run(subscribe(api, job, token=token))[-1]["status"] == "completed"


def test_auth_off_allows_mutations(api: Api) -> None:
    body = api.post('mutation { addNode(parentPath: "Arts", kind: "subfield", name: "Opera") '
                    '{ __typename } }').json()
    assert body["data"]["addNode"]["__typename"] == "TaxonomyNode"


def test_abusive_queries_are_rejected(api: Api) -> None:
    deep = "{ node(path: \"Arts\") { ... on TaxonomyNode { " + \
        "children { edges { node { " * 6 + "name" + " } } }" * 6 + " } } }"
    body = api.post(deep).json()
    assert body["data"] is None
    assert "exceeds maximum operation depth" in body["errors"][0]["message"]
    aliases = "{ " + " ".join(f"a{i}: jobs {{ id }}" for i in range(30)) + " }"
    body = api.post(aliases).json()
    assert "aliases" in body["errors"][0]["message"].lower()
    body = api.post("{ children(first: 100000) { totalCount } }").json()
    assert "first must be between 1 and 500" in body["errors"][0]["message"]


def test_graphiql_is_served(api: Api) -> None:
    import httpx

    page = httpx.get(f"{api.url}/graphql", headers={"accept": "text/html"})
    assert page.status_code == 200 and "graphiql" in page.text.lower()
