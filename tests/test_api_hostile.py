"""The API under concurrent writers and hostile clients.

- Concurrent `addNode` calls for one path make one node; concurrent generation mutations on
  overlapping scopes start one job and refuse the rest with a typed error naming it; a
  second process on the same embedded store is refused with a clear message.
- Hostile values (10 kB strings, control characters, Cypher-looking names) are stored
  verbatim or refused with a typed error, never executed.
- Every operation of the schema is fuzzed (schemathesis, valid and invalid inputs): no 5xx,
  no masked internal error; with GLAN_API_TOKEN set no mutation or subscription gets through
  without the token.

Bounded for CI; `--full-reliability` (or GLAN_RELIABILITY_FULL=1) fuzzes much longer.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import websockets
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from pydantic import SecretStr
from schemathesis import GenerationMode

from graph.config import StoreConfig
from graph.model import HIERARCHY, JOB, UNIT, clean_name
from graph.store import Store
from server.auth import DENIED
from server.graphql.errors import UNEXPECTED
from tests.api_helpers import Api, run_api, seed_taxonomy, settings, subscribe
from tests.conftest import SMALL_TAXONOMY
from tests.graph_checks import integrity_problems
from tests.llm_stub import Reply, Stub, error, fake_glan_model, run_stub
from tests.test_api import PROGRESS
from tests.test_sampling import fill

ROOT = Path(__file__).parents[1]
ADD = """mutation($p: String, $k: NodeKind!, $n: String!, $d: String) {
  addNode(parentPath: $p, kind: $k, name: $n, description: $d) {
    __typename ... on NodePayload { node { id name path description } }
    ... on Problem { message } } }"""
NODE_BY_ID = """query($id: ID) { node(id: $id) { __typename
  ... on TaxonomyNode { id name path description } } }"""
NODE = """query($path: String) { node(path: $path) { __typename
  ... on TaxonomyNode { id name path } ... on Problem { message } } }"""


def counts(store: Store) -> dict[str, int]:
    return {kind.label: store.nodes.count_kind(kind) for kind in (*HIERARCHY, JOB, UNIT)}


async def post_all(url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """All requests at once, each on its own connection."""
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as c:
        return list(await asyncio.gather(*(c.post(f"{url}/graphql", json=b) for b in bodies)))


# ---------------------------------------------------------------------- concurrency


def test_concurrent_adds_of_one_path_make_one_node(api: Api) -> None:
    before = counts(api.store)
    names = ["Category Theory", "category theory", "CATEGORY  THEORY"] * 10
    bodies = [
        {"query": ADD, "variables": {"p": "Formal Sciences/Mathematics", "k": "DISCIPLINE", "n": n}}
        for n in names
    ]
    responses = asyncio.run(post_all(api.url, bodies))
    assert [r.status_code for r in responses] == [200] * len(names)
    results = [r.json()["data"]["addNode"] for r in responses]
    assert {r["__typename"] for r in results} == {"NodePayload"}
    assert len({r["node"]["id"] for r in results}) == 1
    assert counts(api.store) == before | {"Discipline": before["Discipline"] + 1}
    children = api.gql(
        '{ node(path: "Formal Sciences/Mathematics") { ... on TaxonomyNode { '
        "children(first: 100) { edges { node { name } } } } } }"
    )["node"]["children"]["edges"]
    assert sum(e["node"]["name"].casefold() == "category theory" for e in children) == 1


def test_concurrent_jobs_on_overlapping_scopes_start_once(tmp_path: Path) -> None:
    model = fake_glan_model()

    def slow(body: dict[str, Any], n: int) -> Reply:
        reply = model(body, n)
        reply.delay_s = 0.05
        return reply

    start = """mutation($p: String) { generateSubjects(path: $p, rounds: 2, perCall: 2) {
      __typename ... on JobPayload { job { id } } ... on JobConflictError { jobId message } } }"""
    scopes = ["Formal Sciences", "Formal Sciences/Mathematics", "Formal Sciences/Mathematics"]
    with (
        run_stub(slow) as stub,
        run_api(settings(tmp_path / "api.lbug", stub, llm_concurrency=2)) as api,
    ):
        api.store.taxonomy.load(seed_taxonomy())
        bodies = [{"query": start, "variables": {"p": s}} for s in scopes * 4]
        results = [
            r.json()["data"]["generateSubjects"] for r in asyncio.run(post_all(api.url, bodies))
        ]
        started = [r["job"]["id"] for r in results if r["__typename"] == "JobPayload"]
        refused = [r for r in results if r["__typename"] == "JobConflictError"]
        assert len(started) == 1 and len(refused) == len(bodies) - 1
        assert {r["jobId"] for r in refused} == set(started)
        assert all("already running" in r["message"] for r in refused)
        job = api.wait_for(started[0], timeout=120)
        assert job["status"] == "COMPLETED"
        units = api.store.jobs.units(started[0])
        assert len(units) == job["total"] == len({u["id"] for u in units})
        # one model call per unit: none was generated twice
        assert stub.calls == job["total"]


def test_a_second_process_on_the_same_store_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "busy.lbug"
    with Store.open(StoreConfig(db_path=db)) as store:
        fill(store, subjects=2, sessions=4, concepts=4)
    model = fake_glan_model()

    def slow(body: dict[str, Any], n: int) -> Reply:
        reply = model(body, n)
        reply.delay_s = 0.5  # the first run lasts 5 s: the second starts well inside it
        return reply

    with run_stub(slow) as stub:
        env = {
            **os.environ,
            "GLAN_DB_PATH": str(db),
            "GLAN_LLM_BASE_URL": stub.base_url,
            "GLAN_MODEL": "stub",
            "GLAN_LLM_CONCURRENCY": "2",
        }
        command = [sys.executable, "-m", "server.cli", "generate", "questions", "--n", "20"]
        first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while stub.calls < 2:
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        out, _ = first.communicate(timeout=120)
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert "already open in another process" in second.stderr
    assert first.returncode == 0, out
    with Store.open(StoreConfig(db_path=db)) as store:
        assert integrity_problems(store) == []
        (job,) = store.jobs.all()
        assert (job["status"], job["done"]) == ("completed", 20)
    assert stub.calls == 20  # the refused run asked nothing


# ---------------------------------------------------------------------- hostile values

HOSTILE = [
    "x" * 10_000,
    "tab\there, newline\nthere, bell\a, escape\x1b[31m, delete\x7f",
    "nul \x00 inside",
    '"}) MATCH (n) DETACH DELETE n //',
    "'}) MATCH (n) DETACH DELETE n //",
    "x` }) MATCH (n) DETACH DELETE n //",
    "$name {id: $id} ${jndi:ldap://127.0.0.1/a} {{7*7}}",
    "Robert'); DROP TABLE Node;--",
    "\u202eright-to-left \u200b zero width e\u0301 🧪",
    "\\u0000 \\n backslashes \\",
    "   padded   ",
    "a/b",
    "",
]


def test_hostile_names_are_stored_verbatim_or_refused(api: Api) -> None:
    """Each value as a name and as a description: a description is kept to the character; a
    name is stored as cleaned (NFC, control characters out, spaces collapsed: documented),
    or refused; either way the node reads back by its id and by its path."""
    before = counts(api.store)
    outcomes: Counter[str] = Counter()
    for i, value in enumerate(HOSTILE):
        for name, description in ((value, f"plain {i}"), (f"Plain {i}", value)):
            response = api.post(ADD, {"p": "Arts", "k": "SUBFIELD", "n": name, "d": description})
            assert response.status_code == 200, response.text
            assert UNEXPECTED not in response.text, (value, response.text)
            result = response.json()["data"]["addNode"]
            if result["__typename"] != "NodePayload":
                assert result["__typename"] == "InvalidInputError", (value, result)
                outcomes["refused"] += 1
                continue
            outcomes["stored"] += 1
            node = result["node"]
            assert node["name"] == clean_name(name) and node["description"] == description
            assert api.gql(NODE_BY_ID, {"id": node["id"]})["node"] == node | {
                "__typename": "TaxonomyNode"
            }
            by_path = api.gql(NODE, {"path": node["path"]})["node"]
            assert by_path.get("id") == node["id"], (value, by_path)
    print(f"\nhostile values: {dict(outcomes)}")
    assert outcomes["stored"] >= len(HOSTILE)  # every value as a description at least
    after = counts(api.store)
    assert after == before | {"SubField": before["SubField"] + outcomes["stored"]}


def test_malformed_and_abusive_requests_get_a_clear_4xx_or_error(api: Api) -> None:
    """Bodies no client should send, and documents built to exhaust the parser: each is
    answered with a client error or a GraphQL error that says what was wrong."""
    url = f"{api.url}/graphql"
    deep = 100_000
    raw: dict[str, tuple[bytes, str, str]] = {
        "JSON nested past the recursion limit": (
            b"[" * deep + b"]" * deep,
            "application/json",
            "Unable to parse request body as JSON",
        ),
        "variables nested past the recursion limit": (
            b'{"query": "{ __typename }", "variables": ' + b"[" * deep + b"]" * deep + b"}",
            "application/json",
            "Unable to parse request body as JSON",
        ),
        "not JSON": (b"{not json", "application/json", "Unable to parse request body as JSON"),
        "a batch": (b'[{"query": "{ __typename }"}]', "application/json", "Batching"),
        "plain text": (b"{ __typename }", "text/plain", "Unsupported content type"),
    }
    for name, (content, kind, says) in raw.items():
        response = httpx.post(url, content=content, headers={"content-type": kind}, timeout=60)
        assert response.status_code == 400 and says in response.text, (name, response.text)

    k = 900
    documents = {
        "selections nested deeply": "{ " + "a { " * k + "b" + " }" * k + " }",
        "a list literal nested deeply": "{ node(path: " + "[" * k + '"x"' + "]" * k + ") { id } }",
        "a fragment cycle": "{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }",
        "introspection in a cycle": "{ __schema { types { "
        + "fields { type { " * 5
        + "name"
        + " } }" * 5
        + " } } }",
        "a directive flood": "{ __typename " + "@include(if: true) " * 3000 + "}",
        "a 2 MB string": '{ node(path: "' + "x" * 2_000_000 + '") { __typename } }',
    }
    for name, document in documents.items():
        response = httpx.post(url, json={"query": document}, timeout=60)
        body = response.json()
        if name == "a 2 MB string":  # over the body limit: refused before it is read
            assert response.status_code == 413 and "limit" in body["errors"][0]["message"]
            continue
        assert response.status_code in (200, 400), (name, response.status_code)
        assert body["data"] is None and body["errors"][0]["message"], (name, body)
        assert UNEXPECTED not in response.text

    async def deep_websocket_message() -> int | None:
        async with websockets.connect(api.ws_url, subprotocols=["graphql-transport-ws"]) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "connection_ack"
            await ws.send("[" * deep + "]" * deep)
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            return closed.value.rcvd.code if closed.value.rcvd else None

    assert asyncio.run(deep_websocket_message()) == 4400  # "must be valid JSON"
    assert api.gql("{ __typename }") == {"__typename": "Query"}  # still serving


# ---------------------------------------------------------------------- fuzzing


def fuzz(
    url: str, examples: int, headers: dict[str, str] | None = None, *, mutations: bool = False
) -> list[tuple[str, int, str]]:
    """Every operation of the schema (or its mutations), valid and invalid inputs;
    (operation, HTTP status, body) of each request."""
    schema = schemathesis.graphql.from_url(url, headers=headers or {})
    seen: list[tuple[str, int, str]] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if not mutations or operation.label.startswith("Mutation."):
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                seen += fuzz_one(operation, mode, examples, headers)
    return seen


def fuzz_one(
    operation: Any, mode: GenerationMode, examples: int, headers: dict[str, str] | None
) -> list[tuple[str, int, str]]:
    seen: list[tuple[str, int, str]] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis_settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests on every run
        suppress_health_check=list(HealthCheck),
    )
    def one(case: Any) -> None:
        response = case.call(headers=headers, timeout=30)
        seen.append((operation.label, response.status_code, response.text))

    one()
    return seen


@contextmanager
def fuzz_store(tmp_path: Path, stub: Stub, **kw: Any) -> Iterator[Api]:
    """A small store, so that fuzzed generation jobs stay small."""
    with run_api(settings(tmp_path / "fuzz.lbug", stub, llm_concurrency=8, **kw)) as api:
        api.store.taxonomy.load(SMALL_TAXONOMY)
        yield api


def test_fuzzing_every_operation_gives_no_server_error(
    tmp_path: Path, full_reliability: bool
) -> None:
    examples = 200 if full_reliability else 12
    started = time.monotonic()
    # generation calls fail at once (HTTP 400 is not retried), so fuzzed jobs end quickly
    with (
        run_stub(lambda body, n: error(400, "fuzzing")) as stub,
        fuzz_store(tmp_path, stub) as api,
    ):
        seen = fuzz(api.url + "/graphql", examples)
        assert api.gql("{ __typename }")  # still serving
    took = time.monotonic() - started
    statuses = Counter(status for _, status, _ in seen)
    print(
        f"\nfuzz: {len(seen)} requests over {len({o for o, _, _ in seen})} operations, "
        f"{dict(statuses)}, {took:.0f} s"
    )
    assert [s for s in seen if s[1] >= 500] == []
    assert [s for s in seen if UNEXPECTED in s[2]] == []  # no masked internal error either
    from graphql import GraphQLObjectType

    from server.graphql import schema

    operations = {
        f"{kind}.{name}"
        for kind in ("Query", "Mutation")
        if isinstance(root := schema._schema.get_type(kind), GraphQLObjectType)
        for name in root.fields
    }
    assert {o for o, _, _ in seen} == operations  # every query and mutation was fuzzed


def test_with_a_token_fuzzed_mutations_change_nothing(
    tmp_path: Path, full_reliability: bool
) -> None:
    examples = 100 if full_reliability else 8
    token = "fuzz-token-123"
    wrong = [None, "Bearer wrong", token, f"bearer {token}", f"Bearer {token}x", "Bearer "]
    with (
        run_stub(fake_glan_model()) as stub,
        fuzz_store(tmp_path, stub, api_token=SecretStr(token)) as api,
    ):
        before = counts(api.store)
        seen: list[tuple[str, int, str]] = []
        for i, header in enumerate(wrong):
            headers = {"Authorization": header} if header is not None else None
            seen += fuzz(api.url + "/graphql", examples if i == 0 else 2, headers, mutations=True)
        after = counts(api.store)
        for header in wrong:  # subscriptions: refused at connection_init
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                subscribe(api, PROGRESS, {"id": "job_0123"}, init_payload={"Authorization": header})
    assert stub.calls == 0 and after == before  # nothing generated, nothing changed
    assert [s for s in seen if s[1] >= 500] == []
    denied = 0
    for label, _, text in seen:  # refused, or invalid before permission was checked
        body = json.loads(text)
        assert body.get("data") is None and body["errors"], (label, text)
        denied += any(e["message"] == DENIED for e in body["errors"])
    print(
        f"\nauth fuzz: {len(seen)} mutations without the token, {denied} denied, the rest invalid"
    )
    assert denied >= len(seen) // 4


def test_every_free_text_input_has_a_limit(api: Api) -> None:
    """Descriptions, levels, subtopics, search text and paths are bounded: over the limit is
    a typed error naming it, and nothing is stored; at the limit is kept verbatim."""
    update = """mutation($p: String!, $d: String, $l: String, $s: [String!]) {
      updateNode(path: $p, description: $d, level: $l, subtopics: $s) {
        __typename ... on Problem { message } } }"""
    subject = "Formal Sciences/Mathematics/Algebra/Group Theory"
    added = api.gql(ADD, {"p": subject.rsplit("/", 1)[0], "k": "SUBJECT", "n": "Group Theory"})
    assert added["addNode"]["__typename"] == "NodePayload"
    before = counts(api.store)
    refused = {
        "description": (ADD, {"p": "Arts", "k": "SUBFIELD", "n": "Long", "d": "x" * 1_000_000}),
        "update description": (update, {"p": subject, "d": "y" * 10_001}),
        "level": (update, {"p": subject, "l": "z" * 201}),
        "subtopics": (update, {"p": subject, "s": ["a"] * 101}),
        "subtopic": (update, {"p": subject, "s": ["b" * 201]}),
    }
    for what, (query, variables) in refused.items():
        result = next(iter(api.gql(query, variables).values()))
        assert result["__typename"] == "InvalidInputError", (what, result)
        assert "limit" in result["message"] or "at most" in result["message"], result
        assert len(result["message"]) < 200, what  # the value is not echoed back
    assert counts(api.store) == before
    node = api.gql(NODE, {"path": subject})["node"]
    kept = api.gql(update, {"p": subject, "d": "d" * 10_000, "s": ["s" * 200] * 100})
    assert kept["updateNode"]["__typename"] == "NodePayload"
    assert api.store.nodes.get(node["id"]).props["description"] == "d" * 10_000  # type: ignore[union-attr]

    search = """query($t: String!) { search(text: $t) { __typename ... on Problem { message } } }"""
    assert "limit is 200" in api.gql(search, {"t": "q" * 201})["search"]["message"]
    far = api.gql(NODE, {"path": "a/" * 5_000})["node"]
    assert far["__typename"] == "NotFoundError" and "the limit is 1,206" in far["message"]
    assert len(far["message"]) < 500


def test_a_mutation_never_commits_while_reporting_failure(api: Api) -> None:
    """A bad argument in a mutation's payload selection (read after the write) refuses the
    whole mutation before it writes; a good one returns what was committed."""
    before = counts(api.store)
    bad = """mutation { addNode(kind: FIELD, name: "Partial Probe") {
      ... on NodePayload { node { id children(first: -1) { totalCount } } } } }"""
    body = api.post(bad).json()
    assert body["data"] is None
    (error,) = body["errors"]
    assert error["message"].startswith("nothing was changed: children: first must be between")
    assert api.gql(NODE, {"path": "Partial Probe"})["node"]["__typename"] == "NotFoundError"
    cursor = """mutation { addNode(kind: FIELD, name: "Partial Probe") {
      ... on NodePayload { node { children(after: "not-a-cursor") { totalCount } } } } }"""
    assert "invalid cursor" in api.errors(cursor)[0]
    assert counts(api.store) == before

    good = bad.replace("first: -1", "first: 5")
    node = api.gql(good)["addNode"]["node"]
    assert node["children"] == {"totalCount": 0}
    assert api.gql(NODE, {"path": "Partial Probe"})["node"]["id"] == node["id"]


def test_request_bodies_over_the_limit_are_refused(tmp_path: Path, stub: Stub) -> None:
    """A body over GLAN_API_MAX_BODY_KB gets a 413 naming the limit, declared or streamed,
    and changes nothing; one under it is served."""
    with run_api(settings(tmp_path / "limit.lbug", stub, api_max_body_kb=64)) as api:
        api.store.taxonomy.load(SMALL_TAXONOMY)
        before = counts(api.store)
        big = "x" * 70_000
        mutation = 'mutation($d: String!) { addNode(parentPath: "Formal Sciences", ' \
            'kind: SUBFIELD, name: "Big", description: $d) { __typename } }'  # fmt: skip
        declared = api.post(mutation, {"d": big})
        assert declared.status_code == 413
        assert "65,536 bytes" in declared.json()["errors"][0]["message"]

        def chunks() -> Iterator[bytes]:  # no content-length: the body is streamed
            body = json.dumps({"query": mutation, "variables": {"d": big}}).encode()
            for start in range(0, len(body), 8192):
                yield body[start : start + 8192]

        streamed = httpx.post(
            f"{api.url}/graphql",
            content=chunks(),
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert streamed.status_code == 413
        assert counts(api.store) == before
        # a body under the limit is read and answered: here, by the description's own limit
        served = api.post(mutation.replace("__typename", "__typename ... on Problem { message }"),
                          {"d": "x" * 60_000})  # fmt: skip
        assert served.status_code == 200
        assert served.json()["data"]["addNode"] == {
            "__typename": "InvalidInputError",
            "message": "description is 60,000 characters long; the limit is 10,000",
        }
        assert counts(api.store) == before
