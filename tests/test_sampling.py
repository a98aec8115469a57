"""Invariants of the two GLAN sampling strategies, on syllabi read from a real store."""

from __future__ import annotations

import sys
import tracemalloc
from collections import Counter

import pyarrow as pa
import pytest

from generators import sampling
from generators.sampling import Sample, Sampler, Strategy, combo_key, plan_sampler, shares
from graph.model import SUBJECT
from graph.records import Ids, KeySet, SyllabusIndex
from graph.store import Store
from tests.conftest import SMALL_TAXONOMY

PHYSICS = "Natural Sciences/Physical Sciences/Physics"


def fill(store: Store, subjects: int = 3, sessions: int = 4, concepts: int = 5) -> None:
    store.taxonomy.load(SMALL_TAXONOMY)
    disc = store.taxonomy.node(PHYSICS)
    names = [{"name": f"Subject {s}"} for s in range(subjects)]
    ids = store.syllabi.write_subjects(disc.id, names, {"model": "test"})
    for s, sid in enumerate(ids):
        syllabus = [
            {"title": f"S{s} session {i}", "concepts": [f"s{s} c{i}.{j}" for j in range(concepts)]}
            for i in range(sessions)
        ]
        store.syllabi.write_syllabus(sid, syllabus, {"model": "test"})


def sampler(store: Store, seed: int, **kw: object) -> Sampler:
    subjects = store.taxonomy.ids_in_scope(None, SUBJECT)
    return Sampler(store.syllabi.concept_stats(subjects), store.syllabi.index, seed=seed, **kw)  # type: ignore[arg-type]


@pytest.fixture
def filled(embedded_store: Store) -> Store:
    fill(embedded_store)
    return embedded_store


def test_basic_samples_one_session_and_one_to_five_of_its_concepts(filled: Store) -> None:
    syllabi = filled.syllabi.of(filled.taxonomy.ids_in_scope(None, SUBJECT))
    owner = {c.id: s.id for ss in syllabi.values() for s in ss for c in s.concepts}
    samples = sampler(filled, 1).draw(200, Strategy.BASIC)
    assert len(samples) == 200
    sizes = Counter(len(s.concept_ids) for s in samples)
    assert set(sizes) <= {1, 2, 3, 4, 5} and len(sizes) >= 4  # the whole range is used
    for s in samples:
        assert s.strategy is Strategy.BASIC and len(s.session_ids) == 1
        assert {owner[c] for c in s.concept_ids} == set(s.session_ids)
        assert len(set(s.concept_ids)) == len(s.concept_ids)


def test_hard_samples_span_two_sessions_of_one_syllabus(filled: Store) -> None:
    syllabi = filled.syllabi.of(filled.taxonomy.ids_in_scope(None, SUBJECT))
    owner = {c.id: s.id for ss in syllabi.values() for s in ss for c in s.concepts}
    subject_of = {s.id: sid for sid, ss in syllabi.items() for s in ss}
    position = {s.id: s.position for ss in syllabi.values() for s in ss}
    samples = sampler(filled, 2).draw(200, Strategy.HARD)
    assert len(samples) == 200
    for s in samples:
        assert s.strategy is Strategy.HARD and len(s.session_ids) == 2
        assert 2 <= len(s.concept_ids) <= 5
        assert {owner[c] for c in s.concept_ids} == set(s.session_ids)  # both sessions used
        assert {subject_of[x] for x in s.session_ids} == {s.subject_id}  # same syllabus
        assert position[s.session_ids[0]] < position[s.session_ids[1]]  # syllabus order


def test_no_combination_twice_in_a_job(filled: Store) -> None:
    samples = sampler(filled, 3).draw(500, Strategy.MIXED)
    keys = [combo_key(s.concept_ids) for s in samples]
    assert len(samples) == 500 and len(set(keys)) == len(keys)
    assert {s.strategy for s in samples} == {Strategy.BASIC, Strategy.HARD}


def test_reproducible_with_a_seed(filled: Store) -> None:
    assert sampler(filled, 7).draw(100) == sampler(filled, 7).draw(100)
    assert sampler(filled, 7).draw(100) != sampler(filled, 8).draw(100)


def test_prefers_uncovered_concepts(filled: Store) -> None:
    total = sum(
        n
        for n, _ in filled.syllabi.concept_stats(
            filled.taxonomy.ids_in_scope(None, SUBJECT)
        ).values()
    )
    samples = sampler(filled, 4).draw(60, Strategy.BASIC)
    # preferring uncovered concepts, every draw brings at least one new concept while any
    # is left, so at most 60 draws reach all 60
    seen: set[str] = set()
    for s in samples:
        if len(seen) < total:
            assert set(s.concept_ids) - seen, "a draw repeated only covered concepts"
        seen.update(s.concept_ids)
    assert len(seen) == total == 60


def test_avoids_combinations_already_covered(filled: Store) -> None:
    first = sampler(filled, 5).draw(30, Strategy.BASIC)
    existing = {s.combo_key for s in first}
    again = sampler(filled, 5, existing_keys=existing).draw(30, Strategy.BASIC)
    assert not existing & {s.combo_key for s in again}


def test_stops_when_the_scope_runs_out(embedded_store: Store) -> None:
    fill(embedded_store, subjects=1, sessions=1, concepts=2)
    # one session of two concepts has three combinations: {a}, {b}, {a, b}
    samples = sampler(embedded_store, 1).draw(10, Strategy.BASIC)
    assert len(samples) == 3
    assert sampler(embedded_store, 1).draw(5, Strategy.HARD) == []  # needs two sessions


def test_mixed_ratio(filled: Store) -> None:
    samples = sampler(filled, 9, basic_ratio=0.8).draw(400, Strategy.MIXED)
    basic = sum(s.strategy is Strategy.BASIC for s in samples)
    assert 0.7 < basic / len(samples) < 0.9


def test_a_plan_over_most_subjects_reads_every_syllabus_once(
    filled: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """plan_sampler: a job of many draws per subject reads every syllabus first and counts
    concepts from it, instead of asking the store to count them; one of few draws lets the
    sampler read what it picks. Both draw the same, and avoid what was asked already."""
    subjects = filled.taxonomy.ids_in_scope(None, SUBJECT)
    asked = sampler(filled, 5).draw(20, Strategy.BASIC)
    fill_asked(filled, asked)
    n = 30
    assert n >= sampling.WHOLE_READ_DRAWS * len(subjects)
    lazy = Sampler(
        filled.syllabi.concept_stats(subjects),
        filled.syllabi.index,
        seed=6,
        existing_keys=filled.syllabi.combo_keys(subjects),
    ).draw(n, Strategy.MIXED)
    reads: list[int] = []
    read = filled.syllabi.index
    monkeypatch.setattr(filled.syllabi, "index", lambda ids: reads.append(len(ids)) or read(ids))
    with monkeypatch.context() as m:
        m.setattr(filled.syllabi, "concept_stats", lambda ids: pytest.fail("counted apart"))
        whole = plan_sampler(filled, subjects, n, seed=6).draw(n, Strategy.MIXED)
    assert reads == [len(subjects)]  # one read, before drawing
    assert whole == lazy and len(whole) == n
    assert not {s.combo_key for s in asked} & {s.combo_key for s in whole}
    # a few draws over the same subjects read only the syllabi they pick
    reads.clear()
    few = plan_sampler(filled, subjects, 1, seed=6).draw(1, Strategy.BASIC)
    assert len(few) == 1 and reads == [1]


def fill_asked(store: Store, samples: list[sampling.Sample]) -> None:
    """Store an instruction for each sample, covering its concepts."""
    from graph.model import INSTRUCTION, node_id

    rows = [
        {"id": node_id(INSTRUCTION, s.combo_key), "text": "q", "combo_key": s.combo_key,
         "subject_id": s.subject_id, "strategy": str(s.strategy)}
        for s in samples
    ]  # fmt: skip
    store.instructions.write_instructions(
        rows,
        [(r["id"], c) for r, s in zip(rows, samples, strict=True) for c in s.concept_ids],
        [(r["id"], x) for r, s in zip(rows, samples, strict=True) for x in s.session_ids],
    )


def test_shares_split_n_evenly_and_never_shrink_when_subjects_leave() -> None:
    ids = [f"sub_{i}" for i in range(7)]
    split = shares(24, ids, seed=1)
    assert sum(split.values()) == 24 and set(split.values()) == {3, 4}
    assert split == shares(24, reversed(ids), seed=1)  # the set decides, not its order
    assert shares(24, ids, seed=2) != split  # the remainder goes elsewhere for a seed
    fewer = shares(24, ids[:4], seed=1)
    assert all(fewer[s] >= split[s] for s in fewer)
    few = shares(3, ids, seed=1)  # fewer samples than subjects: one each, to three
    assert sorted(few.values()) == [0, 0, 0, 0, 1, 1, 1]
    assert all(shares(3, ids[:5], seed=1)[s] >= few[s] for s in ids[:5])
    assert shares(5, [], seed=1) == {}


def test_draw_shares_gives_each_subject_its_share(filled: Store) -> None:
    subjects = filled.taxonomy.ids_in_scope(None, SUBJECT)
    wanted = dict(zip(subjects, [5, 0, 2], strict=True))
    drawn = sampler(filled, 4).draw_shares(wanted, Strategy.MIXED)
    assert Counter(s.subject_id for s in drawn) == {subjects[0]: 5, subjects[2]: 2}
    assert len({s.combo_key for s in drawn}) == 7
    again = sampler(filled, 4).draw_shares(wanted, Strategy.MIXED)
    assert again == drawn  # the same seed and graph, the same samples
    taken = {s.combo_key for s in drawn}
    more = sampler(filled, 4, taken_keys=taken).draw_shares(wanted, Strategy.MIXED)
    assert len(more) == 7 and not taken & {s.combo_key for s in more}


def test_a_key_set_holds_combination_keys_in_eight_bytes_each() -> None:
    """What a plan avoids (the combinations asked in its scope) is read as Arrow columns
    into 64-bit integers: a set of the strings took about 350 MB at 1M pairs."""
    keys = [combo_key([f"c{i}", f"d{i}"]) for i in range(200_000)]
    column = pa.array(keys + [None, ""], pa.string())
    tracemalloc.start()
    found = KeySet(column)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 * 2**20  # the strings as Python objects would take about 20 MB
    assert len(found) == len(keys)
    assert all(k in found for k in keys[:1000])
    assert combo_key(["someone", "else"]) not in found and "" not in found
    assert found == set(keys) and found == KeySet(keys)
    # keys that are not digests, as a caller may give, are hashed instead
    other = KeySet(["k1", "k2"])
    assert "k1" in other and "k3" not in other and other == {"k1", "k2"}
    # a copy's additions are its own
    mine = found.copy()
    mine.update(["k9", keys[0]])
    assert "k9" in mine and "k9" not in found and len(mine) == len(found) + 1


def test_keys_added_to_a_key_set_are_folded_into_its_array(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Keys added one at a time (a plan's draws, a store's writes) are held as integers and
    folded into the sorted array as they grow, so a long-lived set stays 8 bytes a key."""
    monkeypatch.setattr(KeySet, "fold_at", 100)
    keys = [combo_key([f"c{i}"]) for i in range(1000)]
    found = KeySet(keys[:400])
    twin = found.copy()
    found.update([*keys[400:], *keys[:10], "not a digest"])
    assert len(found._more) <= 100 and len(found._values) >= 900  # folded
    assert len(found) == 1001 and all(k in found for k in keys) and "not a digest" in found
    assert found == {*keys, "not a digest"} and found == KeySet([*keys, "not a digest"])
    assert len(twin) == 400 and keys[500] not in twin  # the copy kept its own array


def test_keys_a_store_adds_write_by_write_stay_eight_bytes_each() -> None:
    """A store adds the keys of every write's questions to the set of those asked (a
    server's or a long `glan generate`'s for as long as it runs). Held in a set of integers
    until a quarter of the array's, they took about 90 bytes a key: 230 MB between two folds
    at 10M pairs."""
    keys = [combo_key([f"c{i}"]) for i in range(240_000)]
    found = KeySet(keys[:200_000])
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for start in range(200_000, 240_000, 64):  # a job's writes, 64 questions each
        assert found.update([*keys[start : start + 64], keys[start - 200_000]]) == [
            keys[start - 200_000]
        ]
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 40_000 * 16  # 8 bytes a key, and the array's slack
    found.add(combo_key(["one", "more"]))
    assert len(found) == 240_001 and all(k in found for k in keys[::997])
    assert combo_key(["one", "more"]) in found and combo_key(["never"]) not in found
    assert found == KeySet([*keys, combo_key(["one", "more"])])


def test_ids_hold_strings_as_one_buffer_and_read_back_as_a_list_does() -> None:
    """Ids, how the store gives a syllabus index's ids: made from an Arrow column (chunked,
    sliced, with nulls) or strings, added to, read by index and slice, equal to a list."""
    words = [f"con_{i:024x}" for i in range(1000)] + ["", "ünïcode ✓"]
    column = pa.chunked_array([pa.array(words[:500]), pa.array(words[500:] + [None])])
    ids = Ids.of_arrow(column.slice(3))
    expected = [*words[3:], ""]
    assert len(ids) == len(expected) and list(ids) == expected and ids == expected
    assert ids[0] == words[3] and ids[-2] == "ünïcode ✓" and ids[10:13] == words[13:16]
    more = Ids(["a", "bc"])
    more.extend(ids)
    more.append("z")
    more.extend(iter(["y"]))
    assert more == ["a", "bc", *expected, "z", "y"] and more != ["a"] and more == Ids(more)
    for outside in (len(ids), -len(ids) - 1):
        with pytest.raises(IndexError):
            ids[outside]
    assert Ids.of_arrow(pa.array([], pa.string())) == [] == Ids()


def _index(subjects: int, sessions: int, concepts: int) -> SyllabusIndex:
    """A syllabus index as the store gives it, made here: its ids as Ids."""
    n_sessions, n_concepts = subjects * sessions, subjects * sessions * concepts
    return SyllabusIndex(
        subject_ids=Ids.of_arrow(pa.array([f"sub_{i:024x}" for i in range(subjects)])),
        session_start=list(range(0, n_sessions + 1, sessions)),
        session_ids=Ids.of_arrow(pa.array([f"ses_{i:024x}" for i in range(n_sessions)])),
        concept_start=list(range(0, n_concepts + 1, concepts)),
        concept_ids=Ids.of_arrow(pa.array([f"con_{i:024x}" for i in range(n_concepts)])),
        covered=[0] * n_concepts,
    )


def test_a_sampler_holds_a_read_syllabus_in_tens_of_bytes_a_concept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a sampler keeps of the syllabi it read (a whole GLAN-scale store: 1.9M concepts)
    and of what it drew: its lists of Python strings and integers took about 170 bytes a
    concept (300 MB for 1.9M) and 110 bytes a draw."""
    monkeypatch.setattr(KeySet, "fold_at", 1000)  # as 65,536 is to a million draws
    index = _index(200, 10, 10)  # 20,000 concepts
    subjects = {s: (100, 0) for s in index.subject_ids}
    tracemalloc.start()
    # read as from the store: the index goes once the sampler has taken it in
    sampler = Sampler(subjects, lambda ids: _index(200, 10, 10), seed=1)
    first = sampler.draw(1, Strategy.BASIC)  # its read gives every subject
    held, _ = tracemalloc.get_traced_memory()
    drawn = first + sampler.draw(9_999, Strategy.MIXED)
    kept = tracemalloc.get_traced_memory()[0] - held - _traced(drawn)
    tracemalloc.stop()
    assert len(sampler.concept_ids) == 20_000 and len(drawn) == 10_000
    assert held / 20_000 < 80
    assert kept / 10_000 < 40
    assert {c for s in drawn for c in s.concept_ids} <= set(index.concept_ids)


def _traced(samples: list[Sample]) -> int:
    """Memory the samples themselves hold (their tuples and strings), which the caller
    keeps, not the sampler."""
    seen: set[int] = set()
    total = sys.getsizeof(samples)
    for s in samples:
        for item in (
            s,
            s.subject_id,
            s.session_ids,
            s.concept_ids,
            s.combo_key,
            *s.session_ids,
            *s.concept_ids,
        ):
            if id(item) not in seen:
                seen.add(id(item))
                total += sys.getsizeof(item)
    return total
