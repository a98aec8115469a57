"""The embedded engine's memory is bounded by default (GLAN_DB_BUFFER_MB), a statement
that needs more than the bound is refused with an error that names the setting to raise,
and a process that keeps running statements stays within the bound."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ladybug
import pytest

from bench.graph_scale import build, write_pairs
from generators.sampling import Sampler, Strategy, plan_coverage
from graph import memory
from graph import queries as Q
from graph.backends import embedded
from graph.backends.embedded import EmbeddedDriver
from graph.config import DEFAULT_BUFFER_POOL_MB, StoreConfig
from graph.driver import QueryCounter
from graph.errors import StoreMemoryExceeded
from graph.filters import InstructionFilter
from graph.model import (
    CONCEPT,
    COVERS,
    FIELD,
    FROM,
    HIERARCHY,
    INSTRUCTION,
    SESSION,
    SUBJECT,
    Status,
    node_id,
)
from graph.store import Store
from server.settings import Settings
from tests.api_helpers import run_api, settings
from tests.llm_stub import Stub

#: 4 disciplines x 10 subjects x 10 sessions x 5 concepts: 2,000 concepts
SHAPE = (4, 10, 10, 5)


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    """A store of the benchmark's shape, small, written with the default cap."""
    db = tmp_path / "glan.lbug"
    with Store.open(StoreConfig(db_path=db)) as store:
        build(store, *SHAPE)
    return db


def test_the_default_cap_reaches_the_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GLAN_DB_BUFFER_MB", raising=False)
    config = Settings(_env_file=None, db_path=tmp_path / "glan.lbug").store_config()  # type: ignore[call-arg]
    assert config.buffer_pool_mb == DEFAULT_BUFFER_POOL_MB > 0
    with Store.open(config) as store:
        assert isinstance(store.driver, EmbeddedDriver)
        assert f"page cache up to {DEFAULT_BUFFER_POOL_MB} MB" in store.driver.description
        assert store.driver._db.buffer_pool_size == DEFAULT_BUFFER_POOL_MB * 2**20


def test_the_setting_sets_the_cap_and_zero_leaves_the_engines_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for value, description in (("64", "page cache up to 64 MB"), ("0", "the engine's default")):
        monkeypatch.setenv("GLAN_DB_BUFFER_MB", value)
        config = Settings(_env_file=None, db_path=tmp_path / "glan.lbug").store_config()  # type: ignore[call-arg]
        with Store.open(config) as store:
            assert description in store.driver.description
            assert isinstance(store.driver, EmbeddedDriver)
            assert store.driver._db.buffer_pool_size == int(value) * 2**20


def test_a_read_over_the_cap_is_refused_naming_the_setting(filled: Path) -> None:
    with Store.open(StoreConfig(db_path=filled)) as store:
        tree = store.coverage.tree(None, depth=3, covered=True)
    with Store.open(StoreConfig(db_path=filled, buffer_pool_mb=16)) as store:
        with pytest.raises(StoreMemoryExceeded) as refused:
            store.coverage.tree(None, depth=3, covered=True)
        message = str(refused.value)
        assert "GLAN_DB_BUFFER_MB=16" in message
        assert "set GLAN_DB_BUFFER_MB higher (for example 32)" in message
        assert "changed nothing" in message
        # the process goes on: a read that fits still works
        assert store.nodes.count_kind(CONCEPT) == 2000
    # and a larger cap reads what the refused read would have
    with Store.open(StoreConfig(db_path=filled, buffer_pool_mb=64)) as store:
        again = store.coverage.tree(None, depth=3, covered=True)
    assert again.counts == tree.counts
    assert [c.path for c in again.children] == [c.path for c in tree.children]


def test_opening_with_too_small_a_cap_says_so(filled: Path) -> None:
    with pytest.raises(StoreMemoryExceeded, match="to open the database.*GLAN_DB_BUFFER_MB=4"):
        Store.open(StoreConfig(db_path=filled, buffer_pool_mb=4))


def test_many_reads_stay_within_a_small_cap(filled: Path) -> None:
    """Each statement's memory is given back when it ends: the engine kept the plan of every
    statement it ran, with its memory, until a bounded cache refused the next one."""
    with Store.open(StoreConfig(db_path=filled, buffer_pool_mb=64)) as store:
        for _ in range(3):
            tree = store.coverage.tree(None, depth=3, covered=True)
            assert store.coverage.report(None).total.counts["concepts"] == 2000
            assert len(store.taxonomy.ids_in_scope(None, SUBJECT)) == 40
            assert len(store.taxonomy.children(None)) == len(tree.children)
        assert store.nodes.count_kind(FIELD) == 6


def test_many_bulk_writes_stay_within_a_small_cap(tmp_path: Path) -> None:
    """A bulk insert's statement was kept with its Arrow table for as long as the
    connection lived."""
    with Store.open(StoreConfig(db_path=tmp_path / "glan.lbug", buffer_pool_mb=32)) as store:
        for batch in range(20):
            rows = [
                {"id": f"c{batch}-{i}", "name": f"c {batch} {i}", "key": f"c {batch} {i}"}
                for i in range(1000)
            ]
            store.nodes.bulk_load(CONCEPT, rows)
        assert store.nodes.count_kind(CONCEPT) == 20_000


def test_the_embedded_driver_gives_freed_memory_back_as_rows_move(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every memory.ROWS rows bound to statements or read from them, and when the store
    closes, the driver hands back what the allocators hold free (graph/memory.py): a
    benchmark process held 550 MB so before its next large read."""
    given: list[str] = []
    monkeypatch.setattr(memory, "ROWS", 1000)
    monkeypatch.setattr(memory, "give_back", lambda: given.append("moved") or True)
    monkeypatch.setattr(embedded, "give_back", lambda: given.append("closed") or True)
    with Store.open(StoreConfig(db_path=tmp_path / "glan.lbug")) as store:
        driver = store.driver
        assert isinstance(driver, EmbeddedDriver)
        given.clear()  # opening read the schema
        store.nodes.bulk_load(
            CONCEPT, [{"id": f"c{i}", "name": f"c {i}", "key": f"c {i}"} for i in range(600)]
        )
        assert given == []
        assert len(driver.execute("UNWIND range(1, 500) AS x RETURN x")) == 500
        assert given == ["moved"]  # 1,100 rows
        driver.table("UNWIND range(1, 2500) AS x RETURN x")
        assert given == ["moved", "moved"]  # one call gives back once
    assert given[-1] == "closed"


def test_a_writing_process_opens_the_database_again_after_many_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine keeps memory for what a process wrote (60-80 MB per 100k pairs) until the
    database closes. After embedded.RENEW_ROWS rows written, the driver closes it and opens
    it again between two writes; reads on other threads go on throughout and never see a
    count go back."""
    monkeypatch.setattr(embedded, "RENEW_ROWS", 1000)
    with Store.open(StoreConfig(db_path=tmp_path / "glan.lbug")) as store:
        driver = store.driver
        assert isinstance(driver, EmbeddedDriver)
        stop = threading.Event()
        seen: list[list[int]] = [[] for _ in range(3)]
        failed: list[BaseException] = []

        def read(into: list[int]) -> None:
            while not stop.is_set():
                try:
                    into.append(store.nodes.count_kind(CONCEPT))
                except BaseException as exc:  # noqa: BLE001 - the test reports it
                    failed.append(exc)
                    return

        readers = [threading.Thread(target=read, args=(into,)) for into in seen]
        for reader in readers:
            reader.start()
        try:
            for batch in range(10):
                store.nodes.bulk_load(
                    CONCEPT,
                    [
                        {"id": f"c{batch}-{i}", "name": f"c {batch} {i}", "key": f"c{batch}-{i}"}
                        for i in range(600)
                    ],
                )
                time.sleep(0.02)
        finally:
            stop.set()
            for reader in readers:
                reader.join(30)
        assert failed == []
        assert driver.renewals == 5 and driver.written == 0  # every 1,200 rows
        assert all(counts and counts == sorted(counts) for counts in seen)
        assert store.nodes.count_kind(CONCEPT) == 6000


OPEN_SAME = """
import sys
sys.path.insert(0, {root!r})
from graph.backends.embedded import EmbeddedDriver

EmbeddedDriver({db!r}).close()
print("opened")
"""


def test_no_other_process_opens_the_database_while_it_is_opened_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the database is closed and opened again the engine's lock is let go; glan's
    own lock beside it keeps another glan process out, and says which process holds it."""
    root = str(Path(__file__).resolve().parents[1])
    db = tmp_path / "glan.lbug"
    tried: list[subprocess.CompletedProcess[str]] = []
    with Store.open(StoreConfig(db_path=db)) as store:
        driver = store.driver
        assert isinstance(driver, EmbeddedDriver)
        open_again = driver._open

        def others_try_first() -> Any:
            code = OPEN_SAME.format(root=root, db=str(db))
            tried.append(
                subprocess.run(
                    [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
                )
            )
            return open_again()

        monkeypatch.setattr(driver, "_open", others_try_first)
        store.taxonomy.add_node(None, FIELD, "Before")
        driver.renew()
        store.taxonomy.add_node(None, FIELD, "After")
        assert store.nodes.count_kind(FIELD) == 2
    assert "opened" not in tried[0].stdout
    assert "already open in another process" in tried[0].stderr
    assert f"held by process {os.getpid()}" in tried[0].stderr
    # closed, it is free again
    code = OPEN_SAME.format(root=root, db=str(db))
    after = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert after.stdout.strip() == "opened", after.stderr[-2000:]


@pytest.mark.parametrize("bound", [10**9, 800])
def test_edges_between_large_tables_are_created_by_key_lookups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bound: int
) -> None:
    """A COPY of edges loads the keys of its end tables into memory and keeps them until the
    database closes: 2.8 GB for a 2,000-pair write on a store of 10M pairs. Past
    embedded.COPY_EDGES_MAX_ROWS rows in its end tables, a write creates its edges by key
    lookups instead, embedded.EDGE_ROWS at a time; under it, by COPY (1.5 times as fast)."""
    monkeypatch.setattr(embedded, "COPY_EDGES_MAX_ROWS", bound)
    monkeypatch.setattr(embedded, "EDGE_ROWS", 300)
    with Store.open(StoreConfig(db_path=tmp_path / "glan.lbug")) as store:
        store.nodes.bulk_load(INSTRUCTION, [{"id": f"ins_{i:04x}"} for i in range(300)])
        store.nodes.bulk_load(
            CONCEPT, [{"id": f"con_{i:04x}", "name": f"c {i}", "key": f"c{i}"} for i in range(600)]
        )
        counter = QueryCounter()
        store.driver.counter = counter
        store.driver.create_edges(
            COVERS, [(f"ins_{i % 300:04x}", f"con_{i:04x}") for i in range(600)]
        )
        store.driver.counter = None
        creates = [q for q in counter.queries if "COVERS" in q]
        if bound > 900:  # 300 instructions and 600 concepts
            assert len(creates) == 1 and creates[0].startswith("COPY")
        else:
            assert len(creates) == 2 and all(q.startswith("UNWIND") for q in creates)
        (row,) = store.driver.execute(
            f"MATCH (:{INSTRUCTION.label})-[e:{COVERS.type}]->(c:{CONCEPT.label}) "
            "RETURN count(e) AS n, count(DISTINCT c) AS concepts"
        )
        assert row == {"n": 600, "concepts": 600}


def test_a_transaction_whose_edges_loaded_many_keys_is_followed_by_a_renewal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keys a COPY of edges loads stay in memory until the database closes, 450 MB for
    a 50k-pair write on a store of 1M pairs: once a transaction's COPYs loaded
    embedded.RENEW_KEYS of them, the database is renewed after it commits. A bulk load
    outside a transaction (the taxonomy's, batch after batch) is not renewed for them."""
    monkeypatch.setattr(embedded, "RENEW_KEYS", 1000)
    with Store.open(StoreConfig(db_path=tmp_path / "glan.lbug")) as store:
        driver = store.driver
        assert isinstance(driver, EmbeddedDriver)
        store.nodes.bulk_load(INSTRUCTION, [{"id": f"ins_{i:04x}"} for i in range(300)])
        store.nodes.bulk_load(
            CONCEPT, [{"id": f"con_{i:04x}", "name": f"c {i}", "key": f"c{i}"} for i in range(900)]
        )
        for start in (0, 300):  # two COPYs, 1,200 rows at their ends each
            pairs = [(f"ins_{i:04x}", f"con_{start + i:04x}") for i in range(300)]
            driver.create_edges(COVERS, pairs)
        assert driver.renewals == 0 and driver.keys_loaded == 2400
        with driver.transaction() as tx:
            tx.create_edges(COVERS, [(f"ins_{i:04x}", f"con_{600 + i:04x}") for i in range(300)])
            assert driver.renewals == 0  # not inside it
        assert driver.renewals == 1 and driver.keys_loaded == 0
        with driver.transaction() as tx:  # a few edges: looked up, no keys loaded
            tx.create_edges(COVERS, [("ins_0000", "con_0001")])
        assert driver.renewals == 1
        (row,) = driver.execute(f"MATCH ()-[e:{COVERS.type}]->() RETURN count(e) AS n")
        assert row["n"] == 901


def test_memory_is_given_back_to_the_system_on_this_machine() -> None:
    """The C allocator is found and asked (glibc, as on every machine glan runs on here)."""
    assert memory.give_back() is (sys.platform == "linux")


def test_a_write_walks_from_its_ids_by_key(filled: Path) -> None:
    """What a write reads to keep rollups current walks from a list of ids. Matched inside
    the walk (`{id: x}`), the engine hashed what the walk reaches from every node of the
    start's table (every FROM edge, for a few instructions): at 1M pairs more than 384 MB
    of page cache for 10 instructions, and a write refused at 1.05M pairs under the
    default cap. The ids are looked up by key first."""
    with Store.open(StoreConfig(db_path=filled)) as store:
        stats = store.syllabi.concept_stats(store.taxonomy.ids_in_scope(None, SUBJECT))
        write_pairs(store, Sampler(stats, store.syllabi.index, seed=1).draw(200, Strategy.MIXED))
        d = store.driver.dialect
        instructions = store.instructions.ids_in_scope(None)
        sessions = store.taxonomy.ids_in_scope(None, SESSION)
    assert len(instructions) >= 100
    walks = {
        Q.subjects_asking(d): instructions,
        Q.existing_edges(d, COVERS): instructions,
        Q.existing_edges(d, FROM): instructions,
        Q.sessions_below(d): sessions,
    }
    db = ladybug.Database(str(filled), buffer_pool_size=64 * 2**20)
    conn = ladybug.Connection(db)
    args = {"rejected": str(Status.REJECTED)}
    for query, ids in walks.items():
        plan = conn.execute(f"EXPLAIN {query}", {**args, "ids": ids}).get_next()[0]
        assert "QUERY_PRIMARY_KEY_LOOKUP" in plan, query
        assert conn.execute(query, {**args, "ids": ids}).get_all(), query


def test_the_combinations_of_every_subject_are_read_a_range_at_a_time(
    filled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Made distinct over every instruction in one read, the combinations a whole-store
    plan avoids were refused by the default page cache at 3M pairs. They are read a range
    of instructions at a time, as they come, and made distinct in the reader."""
    with Store.open(StoreConfig(db_path=filled)) as store:
        subjects = store.taxonomy.ids_in_scope(None, SUBJECT)
        drawn = Sampler(store.syllabi.concept_stats(subjects), store.syllabi.index, seed=1).draw(
            200, Strategy.MIXED
        )
        write_pairs(store, drawn + drawn[:50])  # some asked twice
        monkeypatch.setattr(store.nodes, "instructions_per_read", 60)
        reads: list[dict[str, Any]] = []
        table = store.driver.table
        monkeypatch.setattr(
            store.driver, "table", lambda q, p=None: reads.append(dict(p or {})) or table(q, p)
        )
        assert store.nodes.reads_whole(subjects)
        keys = store.syllabi.combo_keys(subjects)
    assert keys == {s.combo_key for s in drawn} and len(keys) == 200
    assert len(reads) == 4 and all(r.keys() == {"lo", "hi"} for r in reads)


def test_a_write_finds_the_combinations_asked_a_range_of_instructions_at_a_time(
    filled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write of questions looks up which of its combinations were asked already, by a
    property that is no key: the engine hashed every instruction for it, and a write was
    refused at 3.2M pairs under the default cache. It reads a range at a time, and the
    rollups it keeps still add up to a walk of everything."""
    with Store.open(StoreConfig(db_path=filled)) as store:
        subjects = store.taxonomy.ids_in_scope(None, SUBJECT)
        stats = store.syllabi.concept_stats(subjects)
        drawn = Sampler(stats, store.syllabi.index, seed=1).draw(200, Strategy.MIXED)
        write_pairs(store, drawn)
        monkeypatch.setattr(store.nodes, "instructions_per_read", 60)
        ranges: list[tuple[str, int]] = []
        real = store.nodes.ranges
        monkeypatch.setattr(
            store.nodes,
            "ranges",
            lambda kind, step: ranges.append((kind.label, step)) or real(kind, step),
        )
        # new questions: 40 asking combinations asked already, 40 asking new ones
        again = drawn[:40] + Sampler(stats, store.syllabi.index, seed=2).draw(40, Strategy.MIXED)
        rows, covers, froms = [], [], []
        for s in again:
            iid = node_id(INSTRUCTION, "again", s.combo_key)
            rows.append(
                {"id": iid, "text": "Again?", "combo_key": s.combo_key, "subject_id": s.subject_id}
            )
            covers += [(iid, c) for c in s.concept_ids]
            froms += [(iid, x) for x in s.session_ids]
        store.instructions.write_instructions(rows, covers, froms)
        kept, walked = store.coverage.report(None).total, store.coverage.report_by_walk(None).total
    assert ("Instruction", 60) in ranges
    assert kept.combinations == walked.combinations and kept.counts == walked.counts
    assert kept.counts["instructions"] == 280


def test_a_write_of_new_combinations_reads_no_instructions_key(
    filled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding which of a write's combinations were asked costs a pass over every
    instruction's key, for each group of units a job writes. Where one process writes,
    it keeps the keys of every instruction and looks up only those it holds: a write of
    new combinations reads none, one that repeats some reads them (and a write that was
    rolled back leaves only keys looked up for nothing). The rollups add up either way."""
    with Store.open(StoreConfig(db_path=filled)) as store:
        stats = store.syllabi.concept_stats(store.taxonomy.ids_in_scope(None, SUBJECT))
        drawn = Sampler(stats, store.syllabi.index, seed=1).draw(300, Strategy.MIXED)
        write_pairs(store, drawn[:100])
        lost = drawn[100:150]
        rows = [
            {"id": node_id(INSTRUCTION, "lost", s.combo_key), "combo_key": s.combo_key}
            for s in lost
        ]
        with pytest.raises(RuntimeError, match="rolled back"), store.driver.transaction() as tx:
            store.instructions.write_instructions(rows, [], [], tx=tx)
            raise RuntimeError("rolled back")
        counter = QueryCounter()
        monkeypatch.setattr(store.driver, "counter", counter)
        asked = Q.asked_combos(store.driver.dialect)
        write_pairs(store, drawn[150:])
        assert asked not in counter.queries
        write_pairs(store, drawn[:10] + lost)  # 10 asked before, 50 looked up for nothing
        assert counter.queries.count(asked) == 1
        kept, walked = store.coverage.report(None).total, store.coverage.report_by_walk(None).total
    assert kept.combinations == walked.combinations and kept.counts == walked.counts
    assert kept.counts["instructions"] == 300


def test_pairs_written_again_are_not_looked_up_over_the_whole_store(
    filled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job written again over pairs it wrote (a resumed run) brings instructions that
    are there already, with their keys: that needs no pass over every instruction's key
    (31.8 s per 2,000 pairs on the 10M-pair store). A new instruction with a combination
    asked before, or one there before given another combination, still takes the pass,
    and the rollups add up to a walk of everything in each case."""
    with Store.open(StoreConfig(db_path=filled)) as store:
        stats = store.syllabi.concept_stats(store.taxonomy.ids_in_scope(None, SUBJECT))
        drawn = Sampler(stats, store.syllabi.index, seed=3).draw(100, Strategy.MIXED)
        write_pairs(store, drawn)
        counter = QueryCounter()
        monkeypatch.setattr(store.driver, "counter", counter)
        asked = Q.asked_combos(store.driver.dialect)
        write_pairs(store, drawn[:40])
        assert asked not in counter.queries

        def question(i: str, key: str) -> dict[str, Any]:
            return {"id": i, "text": "Again?", "combo_key": key, "subject_id": ""}

        first = drawn[0]
        again = node_id(INSTRUCTION, "again", first.combo_key)
        store.instructions.write_instructions(
            [question(again, first.combo_key)],
            [(again, c) for c in first.concept_ids],
            [(again, x) for x in first.session_ids],
        )
        assert counter.queries.count(asked) == 1
        # there before, given the combination of another question of its subject
        one, other = next(
            (a, b) for a in drawn for b in drawn if a is not b and a.subject_id == b.subject_id
        )
        changed = node_id(INSTRUCTION, other.combo_key)
        store.instructions.write_instructions([question(changed, one.combo_key)], [], [])
        assert counter.queries.count(asked) == 2
        kept, walked = store.coverage.report(None).total, store.coverage.report_by_walk(None).total
    assert kept.combinations == walked.combinations == 99
    assert kept.counts == walked.counts and kept.counts["instructions"] == 101


def test_a_page_and_a_count_of_the_whole_store_are_not_one_walk_of_everything(
    filled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listed or counted by a walk down from every field, the whole store's instructions
    were made distinct in one hash of all of them: at 10M pairs the 512 MB page cache
    refused both. A page now takes the first ids of the instruction table and keeps those
    asked from an approved session; a count adds up ranges of the table. Both give what
    the walk gives, with part of the store rejected, with a filter, page after page."""
    with Store.open(StoreConfig(db_path=filled)) as store:
        stats = store.syllabi.concept_stats(store.taxonomy.ids_in_scope(None, SUBJECT))
        write_pairs(store, Sampler(stats, store.syllabi.index, seed=4).draw(400, Strategy.MIXED))
        disciplines = store.taxonomy.ids_in_scope(None, HIERARCHY[2])
        rejected = store.taxonomy.paths_of(disciplines[0])[0]
        store.taxonomy.review(rejected, Status.REJECTED)
        d, scope = store.driver.dialect, store.taxonomy.scope_params(None)
        some = InstructionFilter(model="bench")
        none = InstructionFilter(model="another")

        def walked(flt: InstructionFilter) -> list[str]:
            params = {**scope, **Q.instruction_params(flt), "limit": 10_000}
            query = Q.instructions_page(d, None, flt, after=False)
            return [r["x"]["id"] for r in store.driver.execute(query, params)]

        expected = walked(InstructionFilter())
        assert 0 < len(expected) < 400 and walked(some) == expected and not walked(none)
        counter = QueryCounter()
        monkeypatch.setattr(store.driver, "counter", counter)
        for flt, want in ((InstructionFilter(), expected), (some, expected), (none, [])):
            assert store.instructions.count(None, flt) == len(want)
            for size in (7, 60):  # 60: more than a first read of ids holds visible
                paged: list[str] = []
                after = None
                while True:
                    page, more = store.instructions.page(None, flt, first=size, after=after)
                    paged += [n.id for n in page]
                    if not more:
                        break
                    after = page[-1].id
                assert paged == want
        walks = {
            q(d, None, flt, **kw)
            for flt in (InstructionFilter(), some, none)
            for q, kw in ((Q.count_instructions, {}), (Q.instructions_page, {"after": False}))
        } | {Q.instructions_page(d, None, f, after=True) for f in (InstructionFilter(), some)}
        assert not walks & set(counter.queries)


def test_a_write_walks_to_open_concepts_only_under_subjects_that_have_some(
    filled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write of questions walked every concept of the sessions asked from, to find those
    it covers first: 1.2 s for 60,000 sessions at 1M pairs and 2.2 s at 10M, where every
    concept was covered already. Under a subject whose current rollup counts every concept
    covered none is open, and only the sessions of other subjects are walked. The rollups
    still add up to a walk of everything."""
    with Store.open(StoreConfig(db_path=filled)) as store:
        subjects = store.taxonomy.ids_in_scope(None, SUBJECT)
        write_pairs(store, plan_coverage(store, subjects, target=1, seed=1).samples)
        total = store.coverage.report(None).total
        assert total.covered_concepts == total.counts["concepts"] == 2000
        d = store.driver.dialect
        walks = {Q.sessions_below(d, one=flag) for flag in (True, False)}
        counter = QueryCounter()
        monkeypatch.setattr(store.driver, "counter", counter)
        stats = store.syllabi.concept_stats(subjects)
        more = Sampler(stats, store.syllabi.index, seed=5, prefer_uncovered=False).draw(50)
        write_pairs(store, more)
        assert Q.session_subjects(d, one=False) in counter.queries
        assert not walks & set(counter.queries)
        # a concept added below a session: its subject has one open again
        subject = store.taxonomy.paths_of(subjects[0])[0]
        session = store.taxonomy.children(subject)[0]
        fresh = store.taxonomy.add_node(session.path, CONCEPT, "a concept added later")
        stats = store.syllabi.concept_stats(subjects[:1])
        drawn = Sampler(stats, store.syllabi.index, seed=6).draw_shares({subjects[0]: 3})
        assert fresh.id in {c for s in drawn for c in s.concept_ids}
        write_pairs(store, drawn)
        assert walks & set(counter.queries)
        kept, walked = store.coverage.report(None).total, store.coverage.report_by_walk(None).total
    assert kept.covered_concepts == walked.covered_concepts == 2001
    assert kept.combinations == walked.combinations and kept.counts == walked.counts


def test_a_write_again_reads_the_edges_already_there_id_by_id(
    filled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Questions written again (a job resumed, a batch imported twice) have their COVERS
    and FROM edges read first. Walked from a list of ids, the engine hashed every COVERS
    edge of the store: refused by the default cache at 3M pairs. Each id is looked up by
    key instead, and nothing is written twice."""
    with Store.open(StoreConfig(db_path=filled)) as store:
        subjects = store.taxonomy.ids_in_scope(None, SUBJECT)
        stats = store.syllabi.concept_stats(subjects)
        drawn = Sampler(stats, store.syllabi.index, seed=1).draw(100, Strategy.MIXED)
        write_pairs(store, drawn)
        before = store.coverage.report_by_walk(None).total
        counter = QueryCounter()
        monkeypatch.setattr(store.driver, "counter", counter)
        write_pairs(store, drawn[:60])
        after = store.coverage.report_by_walk(None).total
        d = store.driver.dialect
        one, many = (Q.existing_edges(d, COVERS, one=flag) for flag in (True, False))
    assert counter.queries.count(one) == 60 and many not in counter.queries
    assert after.counts == before.counts and after.covered_concepts == before.covered_concepts


def test_a_write_finds_its_instructions_subjects_by_ranges_that_hold_them(
    filled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write of answers (and of questions asked before) finds the subjects its
    instructions count in. Walked from a list of their ids, the engine hashed every FROM
    edge of the store: a write of answers was refused by the default cache at 4M pairs.
    They are read by the ranges of the instruction table that hold them (a write's own
    instructions lie together at its end), and the rollups still add up to a walk."""
    with Store.open(StoreConfig(db_path=filled)) as store:
        subjects = store.taxonomy.ids_in_scope(None, SUBJECT)
        stats = store.syllabi.concept_stats(subjects)
        write_pairs(store, Sampler(stats, store.syllabi.index, seed=1).draw(300, Strategy.MIXED))
        counter = QueryCounter()
        monkeypatch.setattr(store.driver, "counter", counter)
        write_pairs(store, Sampler(stats, store.syllabi.index, seed=2).draw(100, Strategy.MIXED))
        kept, walked = store.coverage.report(None).total, store.coverage.report_by_walk(None).total
        d = store.driver.dialect
    ranged, listed = Q.subjects_asking_in_range(d), Q.subjects_asking(d)
    assert counter.queries.count(ranged) == 1 and listed not in counter.queries
    assert kept.counts == walked.counts and kept.counts["responses"] >= 390


def test_the_api_shows_a_refused_read_naming_the_setting(filled: Path, stub: Stub) -> None:
    """Not the generic internal error: the operator can act on it, and it names no query."""
    with run_api(settings(filled, stub, db_buffer_mb=16)) as api:
        messages = api.errors("{ subtree(depth: 3) { __typename } }")
        # the server goes on: a read that fits still works
        found = api.gql('{ node(path: "Field 0") { ... on TaxonomyNode { name } } }')
        assert found["node"] == {"name": "Field 0"}
    assert any("GLAN_DB_BUFFER_MB=16" in m and "MATCH" not in m for m in messages), messages


def test_walks_over_every_subject_read_in_ranges_give_the_one_walk(filled: Path) -> None:
    """Rollups, concept stats and the syllabi for sampling read every subject a range of
    subjects at a time (`Nodes.subjects_per_walk`), which bounds the engine's memory; any
    range gives what one walk over all of them gives."""
    with Store.open(StoreConfig(db_path=filled)) as store:
        subjects = store.taxonomy.ids_in_scope(None, SUBJECT)
        sampler = Sampler(store.syllabi.concept_stats(subjects), store.syllabi.index, seed=1)
        write_pairs(store, sampler.draw(300, Strategy.MIXED))
    found = []
    for per_walk in (100_000, 7):
        with Store.open(StoreConfig(db_path=filled)) as store:
            store.nodes.subjects_per_walk = per_walk
            assert len(store.nodes.subject_ranges()) == (1 if per_walk > 40 else 6)
            store.rollups.mark_stale(subjects)
            assert store.rollups.refresh(None) == 40
            report = store.coverage.report(None)
            index = store.syllabi.index(subjects)
            found.append(
                (
                    report.total.counts,
                    report.total.covered_concepts,
                    report.total.combinations,
                    [(row.path, row.counts, row.covered_concepts) for row in report.children],
                    store.syllabi.concept_stats(subjects),
                    (index.subject_ids, index.session_ids, index.concept_ids, index.covered),
                )
            )
    whole, ranged = found
    assert ranged == whole
    assert whole[0]["instructions"] == 300 and whole[1] > 0


def test_reads_of_some_subjects_walk_ranges_that_hold_them(
    filled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sampler reading a few dozen syllabi by a list of subject ids made the engine hash
    what it reaches from every subject: refused by the default cache at 3.1M pairs. Reads of
    some subjects (their syllabi, concept counts and combinations asked) walk ranges of
    subjects that hold them and few others, and give what their own syllabi hold."""
    with Store.open(StoreConfig(db_path=filled)) as store:
        subjects = sorted(store.taxonomy.ids_in_scope(None, SUBJECT))
        stats = store.syllabi.concept_stats(subjects)
        drawn = Sampler(stats, store.syllabi.index, seed=1).draw(200, Strategy.MIXED)
        write_pairs(store, drawn)
        some = subjects[::4] + subjects[1:3]  # 12 of 40, in runs and apart
        assert not store.nodes.reads_whole(some)
        monkeypatch.setattr(store.nodes, "subjects_per_walk", 5)
        monkeypatch.setattr(store.nodes, "subjects_read_through", 2)
        parts = store.nodes.subject_parts(some)
        assert parts is not None
        refs = {
            int(r["ref"])
            for r in store.driver.execute(
                Q.node_refs(store.driver.dialect, SUBJECT) or "", {"ids": some}
            )
        }
        spans = [set(range(p["lo"], p["hi"])) for p in parts]
        assert set().union(*spans) >= refs and all(s & refs and len(s) <= 5 for s in spans)
        assert sum(map(len, spans)) < 20  # few besides the 12
        lookup = Q.node_refs(store.driver.dialect, SUBJECT)
        walks: list[dict[str, Any]] = []  # the parameters of each read but the lookup

        def recorded(real: Any) -> Any:
            def read(query: str, params: dict[str, Any] | None = None) -> Any:
                if query != lookup:
                    walks.append(dict(params or {}))
                return real(query, params)

            return read

        for name in ("table", "execute"):
            monkeypatch.setattr(store.driver, name, recorded(getattr(store.driver, name)))
        index = store.syllabi.index(some)
        counts = store.syllabi.concept_stats(some)
        keys = store.syllabi.combo_keys(some)
        assert walks and all("ids" not in p and "id" not in p for p in walks), walks
        syllabi = store.syllabi.of(some)
        assert store.syllabi.index(["no such subject"]).subject_ids == []
        assert store.syllabi.concept_stats(["no such subject"]) == {}
    assert sorted(index.subject_ids) == sorted(syllabi) == sorted(some)
    for sid, views in syllabi.items():
        i = index.subject_ids.index(sid)
        sessions = index.session_ids[index.session_start[i] : index.session_start[i + 1]]
        assert sessions == [v.id for v in views]
        concepts = [c for v in views for c in v.concepts]
        assert counts[sid] == (len(concepts), sum(c.covered > 0 for c in concepts))
        first = index.concept_start[index.session_start[i]]
        assert index.concept_ids[first : first + len(concepts)] == [c.id for c in concepts]
        assert index.covered[first : first + len(concepts)] == [c.covered for c in concepts]
    assert keys == {s.combo_key for s in drawn if s.subject_id in some}


#: what the engine says when its page cache cannot give a statement the memory it needs
POOL_FULL = (
    "Buffer manager exception: Unable to allocate memory! The buffer pool is full and no "
    "memory could be freed!"
)


def test_a_read_refused_beside_other_reads_runs_again_alone(
    filled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads share the page cache: several at once can need more than it holds where each
    alone fits. The engine is made to refuse a read whenever another runs beside it."""
    query = "MATCH (n:Concept) RETURN count(n) AS crowded"
    real = ladybug.Connection.execute
    guard = threading.Lock()
    seen = {"now": 0, "refused": 0}

    def execute(self: ladybug.Connection, text: Any, *args: Any, **kwargs: Any) -> Any:
        if text != query:
            return real(self, text, *args, **kwargs)
        with guard:
            seen["now"] += 1
        try:
            time.sleep(0.1)  # long enough for the others to start
            with guard:
                if seen["now"] > 1:
                    seen["refused"] += 1
                    raise RuntimeError(POOL_FULL)
            return real(self, text, *args, **kwargs)
        finally:
            with guard:
                seen["now"] -= 1

    monkeypatch.setattr(ladybug.Connection, "execute", execute)
    with Store.open(StoreConfig(db_path=filled)) as store, ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(lambda _: store.driver.execute(query), range(4)))
    assert counts == [[{"crowded": 2000}]] * 4
    assert seen["refused"] > 0  # they did run side by side, and were refused there


def test_a_read_refused_alone_says_so(filled: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    query = "MATCH (n:Concept) RETURN count(n) AS alone"
    real = ladybug.Connection.execute

    def execute(self: ladybug.Connection, text: Any, *args: Any, **kwargs: Any) -> Any:
        if text == query:
            raise RuntimeError(POOL_FULL)
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(ladybug.Connection, "execute", execute)
    with Store.open(StoreConfig(db_path=filled)) as store:
        with pytest.raises(StoreMemoryExceeded, match="GLAN_DB_BUFFER_MB=512"):
            store.driver.execute(query)
        assert store.nodes.count_kind(CONCEPT) == 2000


REFUSED_MIDWAY = """
import sys
sys.path.insert(0, {root!r})
from graph.config import StoreConfig
from graph.errors import StoreMemoryExceeded, StoreSetAside
from graph.model import CONCEPT
from graph.store import Store

store = Store.open(StoreConfig(db_path={db!r}, buffer_pool_mb=32))
rows = [{{"id": f"new-{{i}}", "name": f"new {{i}}", "key": f"new {{i}}"}} for i in range(30000)]
try:
    with store.driver.transaction() as tx:
        tx.create_nodes(CONCEPT, rows)  # a bulk write, then a statement refused for memory
        tx.execute({big!r})
except StoreMemoryExceeded:
    print("refused", flush=True)
try:
    store.nodes.count_kind(CONCEPT)
except StoreSetAside as exc:
    print("set aside:", exc, flush=True)
store.close()
print("closed", flush=True)
"""
#: a read no 32 MB page cache holds
BIG = (
    "UNWIND range(1, 3000000) AS i WITH 'padding padding padding padding ' + string(i) AS s "
    "RETURN size(collect(s)) AS n"
)


def _folder_mb(db: Path) -> float:
    return sum(f.stat().st_size for f in db.parent.iterdir() if f.is_file()) / 2**20


def test_a_write_refused_part_way_sets_the_database_aside_unclosed(tmp_path: Path) -> None:
    """The engine refuses a statement for memory after a bulk write in the same
    transaction: the engine's close after that wrote a shadow file beside the database
    without bound (gigabytes in seconds, until the disk was full). The process says the
    database is set aside, refuses every later call, and ends without closing it; the
    next process finds what was committed before and writes as usual."""
    root = str(Path(__file__).resolve().parents[1])
    db = tmp_path / "glan.lbug"
    with Store.open(StoreConfig(db_path=db)) as store:
        store.nodes.bulk_load(
            CONCEPT, [{"id": f"c-{i}", "name": f"c {i}", "key": f"c {i}"} for i in range(1000)]
        )
    code = REFUSED_MIDWAY.format(root=root, db=str(db), big=BIG)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "refused" in run.stdout, run.stderr[-2000:]
    assert "set aside: the embedded database at" in run.stdout
    assert "GLAN_DB_BUFFER_MB=32" in run.stdout and "start glan again" in run.stdout
    assert "closed" in run.stdout and run.returncode == 1  # it ended without closing it
    # the next process writes; a shadow file growing without bound is stopped at 200 MB
    after = subprocess.Popen(
        [sys.executable, "-c", WRITE_AFTER.format(root=root, db=str(db))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        while after.poll() is None:
            assert _folder_mb(db) < 200, "the database's folder grew without bound"
            time.sleep(0.05)
    finally:
        after.kill()
    out, _ = after.communicate()
    assert after.returncode == 0 and out.strip() == "1100", out
    assert _folder_mb(db) < 50


WRITE_AFTER = """
import sys
sys.path.insert(0, {root!r})
from graph.config import StoreConfig
from graph.model import CONCEPT
from graph.store import Store

with Store.open(StoreConfig(db_path={db!r})) as store:
    store.nodes.bulk_load(
        CONCEPT, [{{"id": f"d-{{i}}", "name": f"d {{i}}", "key": f"d {{i}}"}} for i in range(100)]
    )
    print(store.nodes.count_kind(CONCEPT))
"""
