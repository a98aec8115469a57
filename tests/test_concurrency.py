"""Serving several users at once: reads beside a write, and a server whose slow reads hold a
worker thread rather than every request.

- The embedded engine reads on connections of its own: a read from another thread runs
  while a write transaction is open and sees the last commit; the writer's own thread
  reads what it wrote.
- The API runs store calls off its event loop: while one request waits on a slow read, the
  others (and subscriptions) are answered.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from graph.config import StoreConfig
from graph.model import FIELD
from graph.store import Store
from tests.api_helpers import Api
from tests.conftest import SMALL_TAXONOMY


@pytest.fixture
def store(tmp_path: Path) -> Store:
    opened = Store.open(StoreConfig(db_path=tmp_path / "glan.lbug"))
    opened.taxonomy.load(SMALL_TAXONOMY)
    yield opened  # type: ignore[misc]
    opened.close()


def test_a_read_runs_beside_an_open_write_transaction(store: Store) -> None:
    inside, release = threading.Event(), threading.Event()
    seen_by_writer: list[int] = []

    def write() -> None:
        with store.driver.transaction() as tx:
            store.nodes.upsert_nodes(FIELD, [{"id": "fld_new", "name": "New", "key": "new"}], tx=tx)
            seen_by_writer.append(store.nodes.count_kind(FIELD))  # its own thread: sees it
            inside.set()
            release.wait(10)

    writer = threading.Thread(target=write)
    writer.start()
    assert inside.wait(10)
    started = time.monotonic()
    during = store.nodes.count_kind(FIELD)  # another thread, the transaction still open
    waited = time.monotonic() - started
    release.set()
    writer.join(10)
    assert waited < 5, "the read waited for the write transaction"
    assert during == 2 and seen_by_writer == [3]  # the last commit; the writer's own view
    assert store.nodes.count_kind(FIELD) == 3


def test_the_version_moves_with_each_committed_write(store: Store) -> None:
    before = store.driver.version
    assert before is not None
    store.coverage.report(None)  # reads leave it
    assert store.driver.version == before
    store.taxonomy.add_node(None, FIELD, "Another Field")
    assert store.driver.version is not None and store.driver.version > before


def test_one_slow_read_does_not_hold_the_other_requests(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A coverage read that takes 3 s (a cold store) holds its worker thread; a node lookup
    sent meanwhile is answered at once."""
    real = api.store.coverage.report
    slow_started = threading.Event()

    def slow(path: str | None = None) -> object:
        slow_started.set()
        time.sleep(3)
        return real(path)

    monkeypatch.setattr(api.store.coverage, "report", slow)
    coverage = "{ coverage { ... on Coverage { total { counts { subjects } } } } }"
    node = '{ node(path: "Formal Sciences") { ... on TaxonomyNode { name } } }'

    async def both() -> tuple[float, float]:
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            started = time.monotonic()
            slow_request = asyncio.create_task(client.post("/graphql", json={"query": coverage}))
            while not slow_started.is_set():
                await asyncio.sleep(0.01)
            quick = await client.post("/graphql", json={"query": node})
            quick_s = time.monotonic() - started
            assert quick.json()["data"]["node"] == {"name": "Formal Sciences"}
            answered = await slow_request
            assert answered.json()["data"]["coverage"]["total"]["counts"]["subjects"] == 0
            return quick_s, time.monotonic() - started

    quick_s, slow_s = asyncio.run(both())
    assert slow_s >= 3 and quick_s < 2, (quick_s, slow_s)


def test_requests_for_one_read_share_it_until_a_write(api: Api) -> None:
    """Twenty clients asking for the same coverage at once cost one read; a write in
    between is seen by the next request, never hidden by a shared result."""
    route = next(r for r in api.app.routes if getattr(r, "path", "") == "/graphql")
    shared = route.endpoint.shared
    query = "{ coverage { ... on Coverage { total { counts { fields disciplines } } } } }"

    async def many(n: int) -> list[dict[str, int]]:
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            replies = await asyncio.gather(
                *(client.post("/graphql", json={"query": query}) for _ in range(n))
            )
        return [r.json()["data"]["coverage"]["total"]["counts"] for r in replies]

    api.gql(query)  # the first read after loading refreshes rollups: a write of its own
    before = shared.computed
    answers = asyncio.run(many(20))
    assert len({tuple(a.values()) for a in answers}) == 1
    assert shared.computed - before <= 1  # one read at most, whatever the number of clients
    fields = answers[0]["fields"]
    added = api.gql('mutation { addNode(kind: FIELD, name: "Shared Reads") { __typename } }')
    assert added["addNode"]["__typename"] == "NodePayload"
    assert asyncio.run(many(5))[0]["fields"] == fields + 1


def test_shared_results_are_kept_within_their_weight() -> None:
    """Results kept for sharing stay under their total weight, oldest out first; one
    heavier than an eighth of it (a page of an export) is answered and not kept."""
    from server.reads import SharedReads

    shared = SharedReads(lambda: 1, size=100, max_weight=800)

    def read(key: str, weight: int) -> str:
        async def compute() -> str:
            return key

        return asyncio.run(shared.get(key, compute, weigh=lambda _: weight))

    for key in "abc":
        read(key, 100)
    computed = shared.computed
    assert read("a", 100) == "a" and shared.computed == computed  # kept: shared
    read("page", 101)  # over 800 / 8: not kept, read again next time
    read("page", 101)
    assert shared.computed == computed + 2 and shared.weight == 300
    for key in "defghi":  # 9 results of 100 would weigh 900: the oldest go
        read(key, 100)
    assert shared.weight <= 800
    computed = shared.computed
    read("b", 100)
    assert shared.computed == computed + 1  # "b" was among the oldest, dropped
    read("i", 100)
    assert shared.computed == computed + 1  # the newest is still kept


def test_a_large_page_is_answered_and_not_kept(api: Api) -> None:
    """A whole answer too heavy to keep (here, against a tiny budget) is read again by the
    next request, while a small one is shared."""
    route = next(r for r in api.app.routes if getattr(r, "path", "") == "/graphql")
    shared = route.endpoint.shared
    small = "{ coverage { ... on Coverage { total { counts { fields } } } } }"
    large = '{ search(text: "a", first: 50) { __typename } children { __typename } }'
    api.gql(small)  # the first read after loading refreshes rollups
    old = shared.max_weight
    shared.max_weight = 8 * 60  # answers over 60 bytes of JSON are not kept
    try:
        for query in (small, large):
            api.gql(query)
        before = shared.computed
        api.gql(small)
        assert shared.computed == before  # about 50 bytes: kept and shared
        api.gql(large)
        assert shared.computed == before + 1  # heavier: read again
    finally:
        shared.max_weight = old


def test_a_query_text_is_parsed_and_validated_once(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same text again skips parsing and validation, and keeps its answer: a valid
    query its data, a query the rules refuse the same refusal."""
    from collections import OrderedDict

    import strawberry.schema.schema as executing

    from server.graphql import limits

    monkeypatch.setattr(limits, "_PARSED", OrderedDict())  # nothing from earlier tests
    monkeypatch.setattr(limits, "_VALIDATED", OrderedDict())
    validated: list[int] = []
    real = executing.validate_document

    def counted(*args: object) -> object:
        validated.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(executing, "validate_document", counted)
    good = '{ node(path: "Arts") { ... on TaxonomyNode { name } } }'
    deep = "{ children { edges { node { children { edges { node { children { edges { node {"
    deep += " children { edges { node { name } } } } } } } } } } } } }"
    answers = [api.post(good).json() for _ in range(3)]
    refusals = [api.post(deep).json() for _ in range(3)]
    assert answers == [{"data": {"node": {"name": "Arts"}}}] * 3
    assert refusals[0]["errors"] and refusals == [refusals[0]] * 3
    assert len(validated) == 2  # once per text


def test_a_query_of_the_store_alone_is_answered_once_per_version(api: Api) -> None:
    """Ten clients sending the same node query at once cost the statements of one; a query
    that shows live job progress is never shared, and a write is seen at once."""
    from graph.driver import QueryCounter
    from server.graphql.schema import reads_store_only

    query = '{ node(path: "Arts") { ... on TaxonomyNode { name children { totalCount } } } }'
    assert reads_store_only(query, None)
    live = '{ jobs { __typename } node(path: "Arts") { __typename } }'
    assert not reads_store_only(live, None)
    assert not reads_store_only('mutation { cancelJob(id: "x") { __typename } }', None)

    async def many(n: int) -> list[object]:
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            replies = await asyncio.gather(
                *(client.post("/graphql", json={"query": query}) for _ in range(n))
            )
        return [r.json() for r in replies]

    one = api.post(query).json()
    counter = QueryCounter()
    api.store.driver.counter = counter  # type: ignore[attr-defined]
    try:
        answers = asyncio.run(many(10))
    finally:
        api.store.driver.counter = None  # type: ignore[attr-defined]
    assert answers == [one] * 10 and counter.count == 0  # all ten from the one answer
    api.gql('mutation { addNode(parentPath: "Arts", kind: SUBFIELD, name: "New Arts") '
            "{ __typename } }")  # fmt: skip
    after = api.post(query).json()
    total = after["data"]["node"]["children"]["totalCount"]
    assert total == one["data"]["node"]["children"]["totalCount"] + 1  # type: ignore[index]


def test_jobs_run_on_a_loop_of_their_own(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job's model calls run on the jobs' own thread and loop, not the server's: a busy
    server still gives them their turn."""
    from generators.llm import ChatRequest, LLMClient, Reply
    from tests.test_api import start

    threads: set[str] = set()
    send = LLMClient.send

    async def recorded(self: LLMClient, request: ChatRequest) -> Reply:
        threads.add(threading.current_thread().name)
        return await send(self, request)

    monkeypatch.setattr(LLMClient, "send", recorded)
    job = start(api, "generateSubjects(path: $p, rounds: 2, perCall: 2)", {"p": "Arts"})
    assert api.wait_for(job["id"])["status"] == "COMPLETED"
    assert threads == {"glan-jobs"}


def test_a_refused_statement_in_a_transaction_reports_its_own_error(store: Store) -> None:
    """A statement the engine refuses inside a transaction may end the transaction itself:
    the caller is told what that statement did wrong, not that there was nothing to roll
    back, and the store takes the next transaction as usual."""
    from graph.errors import QueryError

    with (
        pytest.raises(QueryError, match="(?i)parser|syntax|not exist|cannot"),
        store.driver.transaction() as tx,
    ):
        tx.execute("MATCH (n:NoSuchTable) RETURN n")
    store.taxonomy.add_node(None, FIELD, "After The Refusal")
    assert store.nodes.count_kind(FIELD) == 3


def test_a_waiter_whose_calls_go_ahead_takes_the_next_free_slot() -> None:
    """Three reads wait for the one reader connection, then a job's read comes: the job's
    read gets the connection first, and the others keep their turns after it."""
    from contextlib import nullcontext

    from graph.backends.embedded import Slots
    from graph.driver import calls_ahead

    slots = Slots(1)
    order: list[str] = []
    release = threading.Event()
    holding = threading.Event()

    def holder() -> None:
        with slots.taken():
            holding.set()
            release.wait(10)

    def waiter(name: str, ahead: bool) -> None:
        with calls_ahead() if ahead else nullcontext(), slots.taken():
            order.append(name)

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    assert holding.wait(10)
    for n, name in enumerate(["request 1", "request 2", "request 3"], start=1):
        threads.append(threading.Thread(target=waiter, args=(name, False)))
        threads[-1].start()
        assert _until(lambda n=n: slots.waiting == n)
    threads.append(threading.Thread(target=waiter, args=("job", True)))
    threads[-1].start()
    assert _until(lambda: slots.waiting == 4)
    release.set()
    for t in threads:
        t.join(10)
    assert order[0] == "job"
    assert sorted(order[1:]) == ["request 1", "request 2", "request 3"]


def _until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


def test_a_jobs_store_calls_go_ahead_of_the_apis_own(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started through the API, a job's reads for a reader connection (the scope the
    mutation checks, its plan, its units' inputs, its end) are marked to go ahead of the
    requests' reads, which are not: a crowd of clients does not stall a running job."""
    from graph.backends import embedded
    from graph.driver import called_ahead
    from tests.test_api import start

    taken: list[tuple[str, bool]] = []
    real = embedded.Slots.taken

    def recorded(self: embedded.Slots) -> Any:
        taken.append((threading.current_thread().name, called_ahead()))
        return real(self)

    monkeypatch.setattr(embedded.Slots, "taken", recorded)
    job = start(api, "generateSubjects(path: $p, rounds: 2, perCall: 2)", {"p": "Arts"})
    assert api.wait_for(job["id"])["status"] == "COMPLETED"
    requests = [ahead for name, ahead in taken if name.startswith("glan-store")]
    jobs = [ahead for name, ahead in taken if not name.startswith("glan-store")]
    assert requests and not any(requests)
    assert jobs and all(jobs)
