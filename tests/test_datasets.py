"""Datasets out: a small store with known duplicates and benchmark overlaps, and exactly
which pairs are marked, exported and left out."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from generators.cleaning import (
    decontaminate,
    dedup,
    find_duplicates,
    iter_instructions,
    load_benchmark,
    normalize,
)
from generators.export import Skipped, export_hf, export_jsonl, in_test_split, iter_pairs
from generators.reading import iter_details
from generators.report import build_report
from graph.config import StoreConfig
from graph.errors import InvalidInput, WrongKind
from graph.model import DUPLICATE_OF, SUBJECT, Status
from graph.store import Store
from tests.test_sampling import fill

FIXTURES = Path(__file__).parent / "fixtures"
PHYSICS = "Natural Sciences/Physical Sciences/Physics"

QUESTIONS = {
    "q1": "What is the derivative of x squared with respect to x?",
    "q2": "what is the Derivative of x-squared, with respect to x??",  # exact dup of q1
    "q3": "Explain in detail why the sky appears blue during the day and red at sunset, "
    "using Rayleigh scattering and the path length of sunlight through the air.",
    "q4": "Explain in detail why the sky appears blue during the day and red at sunset, "
    "using Rayleigh scattering and the path length of sunlight through our air.",  # ~q3
    "q5": "Solve this: a train leaves the station at noon travelling at sixty miles per hour "
    "towards a city two hundred miles away. When does it arrive?",  # benchmark b1
    "q6": "Describe the water cycle and its main stages.",  # its answer is contaminated
    "q7": "State Newton's three laws of motion.",  # no answer
    "q8": "Prove that the square root of two is irrational using a proof by contradiction "
    "with integers p and q that share no factor.",  # benchmark c1 (CSV)
    "q9": "Compare the energy stored in a capacitor with that in an inductor.",
}
ANSWERS = {
    "q1": "2x",
    "q2": "2x",
    "q3": "Shorter wavelengths scatter more.",
    "q4": "Scattering.",
    "q5": "At 3:20 pm.",
    "q6": "Recall: which gas do plants absorb from the atmosphere during photosynthesis in "
    "order to build sugars? Carbon dioxide; and water evaporates.",
    "q8": "Assume sqrt 2 = p/q ...",
    "q9": "Both store energy: CV^2/2 and LI^2/2.",
}


def build(store: Store) -> dict[str, str]:
    """Write the questions above (one subject each in turn); return name -> instruction id."""
    fill(store, subjects=3, sessions=2, concepts=3)
    subjects = store.taxonomy.ids_in_scope(None, SUBJECT)
    syllabi = store.syllabi.of(subjects)
    ids: dict[str, str] = {}
    for n, (name, text) in enumerate(QUESTIONS.items()):
        sid = subjects[n % len(subjects)]
        session = syllabi[sid][0]
        iid = f"ins_{name}"
        ids[name] = iid
        store.instructions.write_instructions(
            [
                {
                    "id": iid,
                    "text": text,
                    "strategy": "basic",
                    "seed": 1,
                    "combo_key": name,
                    "subject_id": sid,
                    "model": "qm",
                    "prompt_name": "question",
                    "prompt_version": "1",
                    "created_at": f"2026-01-01T00:00:0{n}",
                }
            ],
            [(iid, session.concepts[0].id)],
            [(iid, session.id)],
        )
        if name in ANSWERS:
            store.instructions.write_responses(
                [
                    {
                        "id": f"rsp_{name}",
                        "text": ANSWERS[name],
                        "instruction_id": iid,
                        "model": "am",
                        "prompt_name": "answer",
                        "prompt_version": "1",
                    }
                ]
            )
    return ids


@pytest.fixture
def built(embedded_store: Store) -> tuple[Store, dict[str, str]]:
    return embedded_store, build(embedded_store)


def test_normalisation() -> None:
    assert normalize(QUESTIONS["q1"]) == normalize(QUESTIONS["q2"])
    assert normalize("  Hello,\tWORLD! ") == "hello world"


def test_duplicates_are_found_and_marked_not_deleted(built: tuple[Store, dict[str, str]]) -> None:
    store, ids = built
    result = dedup(store, None, threshold=0.7)
    assert result.scanned == 9
    assert result.exact == [(ids["q2"], ids["q1"])]
    # the one met first in export order (subject by subject) is kept
    order = [n.id for n in iter_instructions(store, None)]
    kept, dup = sorted((ids["q3"], ids["q4"]), key=order.index)
    assert result.near == [(dup, kept)]
    nodes = store.nodes.get_many(list(ids.values()))
    assert nodes[ids["q2"]].props["duplicate"] == "exact"
    assert nodes[dup].props["duplicate"] == "near" and not nodes[kept].props["duplicate"]
    assert store.nodes.linked(DUPLICATE_OF, [ids["q2"], dup]) == {
        ids["q2"]: [ids["q1"]],
        dup: [kept],
    }
    # a stricter threshold on a second run replaces the near mark instead of adding to it
    again = dedup(store, None, threshold=0.99)
    assert again.near == [] and store.nodes.get(dup).props["duplicate"] is None  # type: ignore[union-attr]
    assert store.nodes.count_kind(SUBJECT) == 3 and len(store.instructions.ids_in_scope(None)) == 9


def test_exact_only(built: tuple[Store, dict[str, str]]) -> None:
    store, ids = built
    result = find_duplicates(store, None, near=False)
    assert result.exact == [(ids["q2"], ids["q1"])] and result.near == []


def test_decontamination_marks_exactly_the_overlaps(built: tuple[Store, dict[str, str]]) -> None:
    store, ids = built
    result = decontaminate(
        store,
        None,
        [(FIXTURES / "benchmark.jsonl", "question"), (FIXTURES / "benchmark.csv", "prompt")],
    )
    assert result.instructions == {
        ids["q5"]: ["benchmark.jsonl:test"],
        ids["q8"]: ["benchmark.csv:test"],
    }
    assert result.responses == {"rsp_q6": ["benchmark.jsonl:test"]}
    assert store.nodes.get(ids["q5"]).props["contaminated"] == "benchmark.jsonl:test"  # type: ignore[union-attr]
    # a short benchmark question counts when it appears whole ("name the capital of france")
    subject = store.taxonomy.ids_in_scope(None, SUBJECT)[0]
    session = store.syllabi.of([subject])[subject][0].id
    store.instructions.write_instructions(
        [{"id": "ins_short", "text": "Quick: name the capital of France.", "subject_id": subject}],
        [],
        [("ins_short", session)],
    )
    short = decontaminate(store, None, [(FIXTURES / "benchmark.jsonl", "question")], n=13)
    assert "ins_short" in short.instructions


def test_bad_benchmarks_get_clear_errors(
    tmp_path: Path, built: tuple[Store, dict[str, str]]
) -> None:
    store, _ = built
    with pytest.raises(InvalidInput, match="has no column 'text'; its columns: answer, id"):
        load_benchmark(FIXTURES / "benchmark.jsonl", "text")
    with pytest.raises(InvalidInput, match="does not exist"):
        load_benchmark(tmp_path / "missing.jsonl", "question")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok"}\nnot json\n')
    with pytest.raises(InvalidInput, match="line 2 is not JSON"):
        load_benchmark(bad, "question")
    with pytest.raises(InvalidInput, match="unsupported benchmark format"):
        load_benchmark(_touch(tmp_path / "b.txt"), "q")
    # nothing is marked when one of several files is bad
    with pytest.raises(InvalidInput):
        decontaminate(store, None, [(FIXTURES / "benchmark.jsonl", "question"), (bad, "question")])
    assert all(
        not n.props.get("contaminated")
        for n in store.nodes.get_many(store.instructions.ids_in_scope(None)).values()
    )


def _touch(path: Path) -> Path:
    path.write_text("x")
    return path


def test_parquet_benchmark(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = tmp_path / "bench.parquet"
    pq.write_table(pa.table({"text": ["one two three", "four five"]}), file)
    assert load_benchmark(file, "text") == ["one two three", "four five"]


def validate(record: dict[str, Any], fmt: str) -> tuple[str, str]:
    """Check a record against its format; return (question, answer)."""
    meta = record["metadata"]
    for key in (
        "disciplines",
        "subject",
        "level",
        "sessions",
        "concepts",
        "strategy",
        "question_model",
        "answer_model",
        "question_prompt",
        "answer_prompt",
    ):
        assert key in meta
    assert meta["disciplines"] == [PHYSICS] and meta["question_prompt"] == "question@1"
    if fmt == "chat":
        assert set(record) == {"messages", "metadata"}
        user, assistant = record["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        return user["content"], assistant["content"]
    if fmt == "sharegpt":
        human, gpt = record["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        return human["value"], gpt["value"]
    assert set(record) == {"instruction", "input", "output", "metadata"}
    return record["instruction"], record["output"]


@pytest.mark.parametrize("fmt", ["chat", "sharegpt", "alpaca"])
def test_export_keeps_exactly_the_clean_answered_pairs(
    built: tuple[Store, dict[str, str]], tmp_path: Path, fmt: str
) -> None:
    store, _ = built
    dedup(store, None, threshold=0.7)
    decontaminate(
        store,
        None,
        [(FIXTURES / "benchmark.jsonl", "question"), (FIXTURES / "benchmark.csv", "prompt")],
    )
    out = tmp_path / "pairs.jsonl"
    result = export_jsonl(store, PHYSICS, out, fmt=fmt)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    questions = {validate(r, fmt)[0] for r in records}
    order = [n.id for n in iter_instructions(store, None)]
    kept = min(("q3", "q4"), key=lambda q: order.index(f"ins_{q}"))
    assert questions == {QUESTIONS[q] for q in ("q1", kept, "q9")}
    assert result.counts == {"train": 3, "test": 0}
    assert (result.skipped.duplicates, result.skipped.contaminated, result.skipped.unanswered) == (
        2,
        3,
        1,
    )


def test_split_by_subject_and_hf_dataset(
    built: tuple[Store, dict[str, str]], tmp_path: Path
) -> None:
    import datasets

    store, _ = built
    seed = next(
        s
        for s in range(100)
        if 0 < sum(in_test_split(x, 0.4, s) for x in store.taxonomy.ids_in_scope(None, SUBJECT)) < 3
    )
    result = export_jsonl(store, None, tmp_path / "d.jsonl", test_fraction=0.4, seed=seed)
    train = [json.loads(x) for x in (tmp_path / "d.train.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (tmp_path / "d.test.jsonl").read_text().splitlines()]
    assert len(train) + len(test) == 8 and train and test  # every answered pair, once
    assert not {r["metadata"]["subject"] for r in train} & {r["metadata"]["subject"] for r in test}
    assert result.counts == {"train": len(train), "test": len(test)}

    hf = export_hf(store, None, tmp_path / "hf", test_fraction=0.4, seed=seed)
    loaded = datasets.load_from_disk(str(tmp_path / "hf"))
    assert set(loaded) == {"train", "test"} and hf.counts == result.counts
    assert loaded["train"].num_rows == len(train)
    row = loaded["test"][0]
    assert row["messages"][0]["role"] == "user" and row["metadata"]["answer_model"] == "am"


def test_export_all_responses_and_only_approved(
    built: tuple[Store, dict[str, str]], tmp_path: Path
) -> None:
    store, ids = built
    store.instructions.write_responses(
        [
            {
                "id": "rsp_q9b",
                "text": "Another answer.",
                "model": "other",
                "instruction_id": ids["q9"],
                "prompt_name": "answer",
                "prompt_version": "1",
            }
        ]
    )
    out = tmp_path / "all.jsonl"
    assert export_jsonl(store, None, out, responses="all").counts["train"] == 9
    store.taxonomy.review(PHYSICS, Status.REJECTED)
    with pytest.raises(InvalidInput):
        export_jsonl(store, PHYSICS, out)
    assert export_jsonl(store, None, out).counts["train"] == 0


def test_a_subject_larger_than_a_chunk_is_read_by_id_to_the_same_pairs(
    built: tuple[Store, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a part of the store, groups of whole subjects are read walking down from them;
    a subject with more instructions than a chunk, by id in chunks. The pairs, their order
    and what is skipped are the same either way, and only reads by id need the name
    indexes."""
    store, ids = built
    monkeypatch.setattr(store.nodes, "hold_most", lambda subjects: False)  # as for a part
    dedup(store, None, threshold=0.7)
    decontaminate(store, None, [(FIXTURES / "benchmark.jsonl", "question")])
    store.instructions.write_responses(
        [{"id": "rsp_q9b", "text": "Another.", "model": "other", "instruction_id": ids["q9"]}]
    )
    calls: Counter[str] = Counter()
    for method in ("details_below", "details_of", "name_index"):
        real = getattr(store.instructions, method)

        def counted(*args: Any, _real: Any = real, _name: str = method, **kw: Any) -> Any:
            calls[_name] += 1
            return _real(*args, **kw)

        monkeypatch.setattr(store.instructions, method, counted)

    def export(chunk: int) -> tuple[list[dict[str, Any]], Skipped, Counter[str]]:
        calls.clear()
        skipped = Skipped()
        pairs = iter_pairs(store, None, responses="all", skipped=skipped, chunk=chunk)
        return [p.record("chat") for p in pairs], skipped, Counter(calls)

    # 9 questions over 3 subjects: one group, a group per subject, two chunks per subject
    whole, skipped, read = export(100)
    assert read == {"details_below": 1}
    assert len(whole) == 5 and (skipped.duplicates, skipped.contaminated, skipped.unanswered) == (
        2,
        2,
        1,
    )
    assert export(3) == (whole, skipped, {"details_below": 3})
    assert export(2) == (whole, skipped, {"details_of": 6, "name_index": 2})
    session = store.taxonomy.children(store.taxonomy.children(PHYSICS)[0].path)[0]
    with pytest.raises(WrongKind, match="is a Session; choose a subject or above"):
        next(iter_pairs(store, session.path))
    with pytest.raises(ValueError, match="chunk"):
        next(iter_pairs(store, None, chunk=0))


def test_most_of_the_store_is_read_a_range_of_the_instruction_table_at_a_time(
    built: tuple[Store, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under most of the store's subjects, reads go a range of the instruction table at a
    time, in the order the instructions were written: a group of subjects' instructions
    lie all over the table, and each group's read visited most of it (an export fell from
    13,215 pairs/s at 1M pairs to 7,422 at 3M). The pairs, their links and what is skipped
    are those of the walk down from the subjects."""
    store, ids = built
    dedup(store, None, threshold=0.7)
    decontaminate(store, None, [(FIXTURES / "benchmark.jsonl", "question")])
    store.instructions.write_responses(
        [{"id": "rsp_q9b", "text": "Another.", "model": "other", "instruction_id": ids["q9"]}]
    )
    ranges: list[dict[str, int]] = []
    real = store.instructions.details_in_range
    monkeypatch.setattr(
        store.instructions,
        "details_in_range",
        lambda part, *a, **kw: ranges.append(dict(part)) or real(part, *a, **kw),
    )

    def export(chunk: int = 4) -> tuple[list[dict[str, Any]], Skipped, dict[str, Any]]:
        skipped = Skipped()
        pairs = iter_pairs(store, None, responses="all", skipped=skipped, chunk=chunk)
        records = [p.record("chat") for p in pairs]
        details = {d.instruction.id: d for found in iter_details(store, None) for _, d in found}
        return records, skipped, details

    ranged, skipped, details = export()
    assert ranges[:3] == [{"lo": 0, "hi": 4}, {"lo": 4, "hi": 8}, {"lo": 8, "hi": 12}]
    written = list(ids.values())  # q1 to q9, one at a time
    order = [r["metadata"]["instruction_id"] for r in ranged]
    assert order == sorted(order, key=written.index) and len(ranged) == 5
    with monkeypatch.context() as m:
        m.setattr(store.nodes, "hold_most", lambda subjects: False)
        walked, walked_skipped, walked_details = export()
    assert sorted(ranged, key=repr) == sorted(walked, key=repr) and skipped == walked_skipped
    assert details.keys() == walked_details.keys() == set(written)
    assert all(details[i] == walked_details[i] for i in written)
    assert sum(len(d.responses) for d in details.values()) == len(ANSWERS) + 1
    # a rejected subject's instructions are left out as the walk leaves them out
    store.taxonomy.review(store.taxonomy.children(PHYSICS)[0].path, Status.REJECTED)
    ranges.clear()
    left, _, left_details = export()
    assert ranges and 0 < len(left_details) < 9
    with monkeypatch.context() as m:
        m.setattr(store.nodes, "hold_most", lambda subjects: False)
        assert export()[2].keys() == left_details.keys()


def test_a_range_read_takes_the_ids_of_several_parts_at_once(
    built: tuple[Store, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded engine reads every instruction's id for a range however narrow it is
    (0.7 s of a 20,000-instruction part's 1.4 s of reads at 10M pairs): the ids are read a
    span of several parts at a time, and what each part yields is unchanged."""
    store, ids = built
    spans: list[dict[str, int]] = []
    parts: list[dict[str, int]] = []
    real_ids, real_details = store.instructions.ids_in_range, store.instructions.details_in_range
    monkeypatch.setattr(
        store.instructions,
        "ids_in_range",
        lambda part: spans.append(dict(part)) or real_ids(part),
    )
    monkeypatch.setattr(
        store.instructions,
        "details_in_range",
        lambda part, *a, **kw: parts.append(dict(part)) or real_details(part, *a, **kw),
    )
    found = [
        (s, d.instruction.id, d.concepts, d.sessions, [r.id for r in d.responses])
        for group in iter_details(store, None, chunk=2, ids_per_read=6)
        for s, d in group
    ]
    assert spans == [{"lo": 0, "hi": 6}, {"lo": 6, "hi": 12}]
    # nine instructions: the second span's parts stop after the last of them
    assert parts == [{"lo": lo, "hi": lo + 2} for lo in range(0, 10, 2)]
    one_by_one = [
        (s, d.instruction.id, d.concepts, d.sessions, [r.id for r in d.responses])
        for group in iter_details(store, None, chunk=2, ids_per_read=1)
        for s, d in group
    ]
    assert found == one_by_one and {i for _, i, *_ in found} == set(ids.values())
    assert len(spans) == 2 + 5


def test_report(built: tuple[Store, dict[str, str]]) -> None:
    store, _ = built
    dedup(store, None, threshold=0.7)
    decontaminate(store, None, [(FIXTURES / "benchmark.jsonl", "question")])
    rep = build_report(store, None)
    assert (rep.instructions, rep.pairs_total, rep.exported) == (9, 8, 4)
    assert (rep.duplicates_exact, rep.duplicates_near, rep.contaminated_instructions) == (1, 1, 1)
    assert rep.unanswered == 1 and rep.answer_length["min"] == 2
    assert rep.most_covered[0]["discipline"] == PHYSICS
    assert rep.concepts == 18 and rep.covered_concepts == 3


def test_cli_export_and_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from server.cli import app

    db = tmp_path / "s.lbug"
    with Store.open(StoreConfig(db_path=db)) as store:
        build(store)
    monkeypatch.setenv("GLAN_DB_PATH", str(db))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    out = runner.invoke(
        app, ["decontaminate", "--benchmark", str(FIXTURES / "benchmark.jsonl"), "--column", "nope"]
    )
    assert out.exit_code == 1 and "its columns: answer, id, question" in out.output
    out = runner.invoke(app, ["dedup"])
    assert out.exit_code == 0 and "1 exact" in out.output
    out = runner.invoke(app, ["export", "--format", "alpaca", "--out", str(tmp_path / "a.jsonl")])
    assert out.exit_code == 0, out.output
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 6
    out = runner.invoke(app, ["report", "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["exported"] == 6


def test_report_answer_length_p90_stays_within_the_lengths(embedded_store: Store) -> None:
    """With a few answers and one much longer, the p90 lies between the median and the
    longest answer: the default quantile method put it past the max (1,396 here)."""
    store = embedded_store
    fill(store, subjects=1, sessions=1, concepts=5)
    (sid,) = store.taxonomy.ids_in_scope(None, SUBJECT)
    (session,) = store.syllabi.of([sid])[sid]
    for n, length in enumerate([10, 10, 10, 10, 1000]):
        iid = f"ins_{n}"
        store.instructions.write_instructions(
            [
                {
                    "id": iid,
                    "text": f"Question {n}?",
                    "strategy": "basic",
                    "seed": 1,
                    "combo_key": iid,
                    "subject_id": sid,
                    "model": "qm",
                    "prompt_name": "question",
                    "prompt_version": "1",
                    "created_at": None,
                }
            ],
            [(iid, session.concepts[n].id)],
            [(iid, session.id)],
        )
        store.instructions.write_responses(
            [
                {
                    "id": f"rsp_{n}",
                    "text": "a" * length,
                    "instruction_id": iid,
                    "model": "am",
                    "prompt_name": "answer",
                    "prompt_version": "1",
                }
            ]
        )
    lengths = build_report(store, None).answer_length
    assert (lengths["min"], lengths["median"], lengths["max"]) == (10, 10, 1000)
    assert lengths["median"] <= lengths["p90"] <= lengths["max"]
    assert lengths["p90"] == 604.0  # between the two longest answers, 60% of the way


def test_cli_export_names_each_file_it_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.cli import app

    db = tmp_path / "s.lbug"
    with Store.open(StoreConfig(db_path=db)) as store:
        build(store)
        subjects = store.taxonomy.ids_in_scope(None, SUBJECT)
    seed = next(s for s in range(100) if 0 < sum(in_test_split(x, 0.4, s) for x in subjects) < 3)
    monkeypatch.setenv("GLAN_DB_PATH", str(db))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "a much longer folder name than a terminal line holds" / "data.jsonl"
    result = CliRunner().invoke(
        app, ["export", "--out", str(out), "--test-fraction", "0.4", "--seed", str(seed)]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    written = {}
    for split in ("train", "test"):
        path = out.with_name(f"data.{split}.jsonl")
        pairs = len(path.read_text().splitlines())
        assert f"wrote {pairs} {split} pairs to {path}" in lines
        written[split] = pairs
    assert sum(written.values()) == 8 and all(written.values())
    assert not out.exists()  # the name given is the stem of the two files, not a file
    assert lines[-1] == "left out 0 duplicates, 0 contaminated, 1 unanswered"
