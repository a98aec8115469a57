"""Decontamination as the GLAN paper did it (a pair holding a benchmark question whole,
question or answer side, test and train splits, from JSONL, Parquet and saved datasets),
the contamination matrix of the report and of the API, and the report's diversity figures,
each against what a hand count of a tiny store gives."""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from generators.cleaning import (
    Benchmark,
    BenchmarkSpec,
    ContainmentIndex,
    Mark,
    contamination_counts,
    decontaminate,
    dedup,
    load_benchmarks,
    marks_of,
    normalize,
)
from generators.diversity import DistinctCounter, per_concept
from generators.export import export_jsonl
from generators.report import build_report
from graph.config import StoreConfig
from graph.errors import InvalidInput
from graph.model import SUBJECT
from graph.store import Store
from tests.api_helpers import run_api
from tests.api_helpers import settings as api_settings
from tests.conftest import SMALL_TAXONOMY
from tests.llm_stub import fake_glan_model, run_stub
from tests.test_sampling import fill

PHYSICS = "Natural Sciences/Physical Sciences/Physics"
CHEMISTRY = "Natural Sciences/Physical Sciences/Chemistry"

#: benchmark questions: one planted in a question (test split), one in an answer (train)
IN_QUESTION = "A ball is thrown straight up at twenty metres per second; how high does it rise?"
IN_ANSWER = "How many moles of oxygen are needed to burn two moles of methane completely?"
#: near misses: one word differs; a benchmark word is only part of a word in the pair
NEAR = "The quick brown fox jumps over the lazy dog beside the quiet river bank"
BOUNDARY = "cat sat on the warm mat by the door"

#: (subject, instruction, question, answer or None)
PAIRS = [
    ("Mechanics", "ins_q", "Homework: a BALL is thrown straight up at twenty metres per second "
     "-- how high does it rise? Show each step.", "About 20 m."),
    ("Mechanics", "ins_near", "Translate: the quick brown fox jumps over the lazy cat beside the "
     "quiet river bank.", "Done."),
    ("Mechanics", "ins_clean", "Describe Newton's second law.", "F = ma."),
    ("Reactions", "ins_a", "Explain the stoichiometry of burning methane.", "Consider: how many "
     "moles of oxygen are needed to burn two moles of methane completely? Four."),
    ("Reactions", "ins_boundary", "Why is it that the concat sat on the warm mat by the door?",
     None),
    ("Thermo", "ins_t", "Warm-up. A ball is thrown straight up at twenty metres per second; how "
     "high does it rise?", "20 m."),
]  # fmt: skip


def seed(store: Store) -> None:
    """Physics (Mechanics, Thermo) and Chemistry (Reactions, and Thermo linked there too)."""
    store.taxonomy.load(SMALL_TAXONOMY)
    subjects: dict[str, str] = {}
    for discipline, names in ((PHYSICS, ["Mechanics", "Thermo"]), (CHEMISTRY, ["Reactions"])):
        parent = store.taxonomy.node(discipline)
        ids = store.syllabi.write_subjects(parent.id, [{"name": n} for n in names], {"model": "t"})
        subjects.update(zip(names, ids, strict=True))
    store.taxonomy.link(CHEMISTRY, f"{PHYSICS}/Thermo")
    for name, sid in subjects.items():
        store.syllabi.write_syllabus(
            sid, [{"title": f"{name} 1", "concepts": [f"{name} c{j}" for j in range(3)]}], {}
        )
    syllabi = store.syllabi.of(list(subjects.values()))
    for subject, iid, question, answer in PAIRS:
        sid = subjects[subject]
        session = syllabi[sid][0]
        row = {"id": iid, "text": question, "subject_id": sid, "combo_key": iid}
        store.instructions.write_instructions(
            [row], [(iid, session.concepts[0].id)], [(iid, session.id)]
        )
        if answer is not None:
            rsp = {"id": f"rsp_{iid[4:]}", "text": answer, "instruction_id": iid}
            store.instructions.write_responses([rsp])


@pytest.fixture
def store(embedded_store: Store) -> Store:
    seed(embedded_store)
    return embedded_store


def write_benchmarks(root: Path, fmt: str) -> list[BenchmarkSpec]:
    """The same benchmark, `mmlu`, as a test split (questions in `question`) and a train
    split (in `problem`), in one of three forms; the specs that name them."""
    test = {"question": [IN_QUESTION, NEAR, BOUNDARY], "answer": ["a", "b", "c"]}
    train = {"problem": [IN_ANSWER, "What is the boiling point of water at sea level?"]}
    if fmt == "jsonl":
        for split, cols in (("test", test), ("train", train)):
            rows = [dict(zip(cols, v, strict=True)) for v in zip(*cols.values(), strict=True)]
            (root / f"mmlu_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return [BenchmarkSpec.parse(str(root / f"mmlu_{s}.jsonl")) for s in ("test", "train")]
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        (root / "mmlu").mkdir()
        pq.write_table(pa.table(test), root / "mmlu" / "test-00000-of-00001.parquet")
        pq.write_table(pa.table(train), root / "mmlu" / "data.parquet")
        return [
            BenchmarkSpec.parse(str(root / "mmlu" / "test-00000-of-00001.parquet")),
            BenchmarkSpec.parse(f"mmlu={root / 'mmlu' / 'data.parquet'}:train"),
        ]
    import datasets

    saved = datasets.DatasetDict(
        {"test": datasets.Dataset.from_dict(test), "train": datasets.Dataset.from_dict(train)}
    )
    saved.save_to_disk(str(root / "mmlu"))
    return [BenchmarkSpec.parse(str(root / "mmlu"))]  # every split it holds


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "hf"])
def test_containment_finds_a_planted_question_in_a_question_and_in_an_answer(
    store: Store, tmp_path: Path, fmt: str
) -> None:
    specs = write_benchmarks(tmp_path, fmt)
    loaded = load_benchmarks(specs)
    assert {(b.source, len(b.texts)) for b in loaded} == {("mmlu:test", 3), ("mmlu:train", 2)}
    result = decontaminate(store, None, loaded, method="containment")
    assert result.scanned == 6
    # the test split's question inside two questions (one of a subject in two disciplines)
    assert result.instructions == {"ins_q": ["mmlu:test"], "ins_t": ["mmlu:test"]}
    # the train split's question inside an answer
    assert result.responses == {"rsp_a": ["mmlu:train"]}
    assert result.marks == {
        "ins_q": [Mark("mmlu", "test", "question", "containment")],
        "ins_t": [Mark("mmlu", "test", "question", "containment")],
        "ins_a": [Mark("mmlu", "train", "answer", "containment")],
    }
    nodes = store.nodes.get_many(["ins_q", "ins_a", "ins_near", "ins_boundary", "rsp_a"])
    assert nodes["ins_q"].props["contaminated"] == "mmlu:test"
    assert not nodes["ins_a"].props["contaminated"]  # its question is clean: its answer is not
    assert nodes["rsp_a"].props["contaminated"] == "mmlu:train"
    assert json.loads(nodes["ins_a"].props["contamination"]) == [
        {"benchmark": "mmlu", "split": "train", "side": "answer", "method": "containment"}
    ]
    assert marks_of(nodes["ins_q"].props) == [Mark("mmlu", "test", "question", "containment")]
    # near misses are not flagged: a word differs, or a word only contains a benchmark word
    for near in ("ins_near", "ins_boundary"):
        assert not nodes[near].props["contaminated"] and not nodes[near].props["contamination"]
    # export leaves both contaminated pairs out, and the two questions; nothing is deleted
    out = export_jsonl(store, None, tmp_path / "out.jsonl")
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    exported = {json.loads(x)["metadata"]["instruction_id"] for x in lines}
    assert exported == {"ins_near", "ins_clean"}
    assert (out.skipped.contaminated, out.skipped.unanswered) == (3, 1)
    assert len(store.instructions.ids_in_scope(None)) == 6


def test_one_split_of_a_saved_dataset_and_the_n_gram_check_beside_containment(
    store: Store, tmp_path: Path
) -> None:
    write_benchmarks(tmp_path, "hf")
    (train,) = load_benchmarks([BenchmarkSpec.parse(f"{tmp_path / 'mmlu'}:train")])
    assert train.source == "mmlu:train" and train.field == "problem"
    result = decontaminate(store, None, [train])  # both checks
    assert result.instructions == {} and result.responses == {"rsp_a": ["mmlu:train"]}
    assert result.marks == {
        "ins_a": [
            Mark("mmlu", "train", "answer", "containment"),
            Mark("mmlu", "train", "answer", "ngram"),
        ]
    }
    # an n-gram overlap short of containment: 13 words of the question, not the whole of it
    partial = "Given that a ball is thrown straight up at twenty metres per second how high"
    bench = Benchmark("quiz", "test", [partial + " above the roof of the school does it go?"])
    result = decontaminate(store, None, [bench], method="both")
    assert {m.method for marks in result.marks.values() for m in marks} == {"ngram"}
    assert decontaminate(store, None, [bench], method="containment").marks == {}


def test_a_run_replaces_the_marks_of_its_benchmarks_and_keeps_the_others(
    store: Store, tmp_path: Path
) -> None:
    specs = write_benchmarks(tmp_path, "jsonl")
    decontaminate(store, None, load_benchmarks(specs), method="containment")
    other = Benchmark("gsm8k", "test", ["Describe Newton's second law of motion please"])
    other.texts.append("Describe Newton's second law.")
    decontaminate(store, None, [other], method="containment")
    clean = store.nodes.get("ins_clean")
    assert clean is not None and clean.props["contaminated"] == "gsm8k:test"
    assert store.nodes.get("ins_q").props["contaminated"] == "mmlu:test"  # type: ignore[union-attr]
    # mmlu's test split again, without the planted question: its marks go, the rest stay
    (tmp_path / "mmlu_test.jsonl").write_text(json.dumps({"question": NEAR}) + "\n")
    decontaminate(store, None, load_benchmarks([specs[0]]), method="containment")
    nodes = store.nodes.get_many(["ins_q", "ins_t", "ins_a", "ins_clean", "rsp_a"])
    assert not nodes["ins_q"].props["contaminated"] and not nodes["ins_q"].props["contamination"]
    assert nodes["rsp_a"].props["contaminated"] == "mmlu:train"
    assert marks_of(nodes["ins_a"].props) == [Mark("mmlu", "train", "answer", "containment")]
    assert nodes["ins_clean"].props["contaminated"] == "gsm8k:test"


def test_containment_equals_a_plain_substring_search() -> None:
    """Against `" b " in " p "` over normalised texts, on random texts over a small
    vocabulary (so that anchors repeat and partial matches abound)."""
    rng = random.Random(7)
    vocab = [f"w{i}" for i in range(12)]
    benchmarks = [" ".join(rng.choices(vocab, k=rng.randint(5, 9))) for _ in range(300)]
    pairs = []
    for _ in range(400):
        text = rng.choices(vocab, k=rng.randint(10, 60))
        if rng.random() < 0.3:  # plant one, in another case and punctuation
            at = rng.randint(0, len(text))
            text[at:at] = [rng.choice(benchmarks).upper().replace(" ", ", ")]
        pairs.append(" ".join(text))
    index = ContainmentIndex(min_words=5)
    for n, b in enumerate(benchmarks):
        index.add(b, f"b{n % 7}:test")
    found = planted = 0
    for p in pairs:
        spaced = f" {normalize(p)} "
        naive = {f"b{n % 7}:test" for n, b in enumerate(benchmarks) if f" {b} " in spaced}
        assert index.hits(p) == naive, p
        found += bool(naive)
        planted += "," in p
    assert found >= planted > 50


def test_benchmark_specs_and_their_errors(tmp_path: Path) -> None:
    assert BenchmarkSpec.parse("data/gsm8k:train") == BenchmarkSpec(Path("data/gsm8k"), "train")
    assert BenchmarkSpec.parse("gsm=a/b.jsonl") == BenchmarkSpec(Path("a/b.jsonl"), None, "gsm")
    odd = tmp_path / "x:y.jsonl"  # a path that exists is taken whole, colon and all
    odd.write_text('{"prompt": "one two three four five"}\n')
    assert BenchmarkSpec.parse(str(odd)) == BenchmarkSpec(odd)
    (bench,) = load_benchmarks([BenchmarkSpec.parse(str(odd))])
    assert (bench.name, bench.split, bench.field) == ("x y", "test", "prompt")
    with pytest.raises(InvalidInput, match="without ',' or ':'"):
        BenchmarkSpec.parse("a,b=x.jsonl")
    with pytest.raises(InvalidInput, match="has no column 'text'; its columns: prompt"):
        load_benchmarks([BenchmarkSpec(odd)], "text")
    nothing = tmp_path / "n.jsonl"
    nothing.write_text('{"id": 1, "answer": "x"}\n')
    with pytest.raises(InvalidInput, match="none of the columns question, prompt.*--field"):
        load_benchmarks([BenchmarkSpec(nothing)])
    write_benchmarks(tmp_path, "hf")
    with pytest.raises(InvalidInput, match="has no split 'dev'; its splits: test, train"):
        load_benchmarks([BenchmarkSpec.parse(f"{tmp_path / 'mmlu'}:dev")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="not a saved dataset"):
        load_benchmarks([BenchmarkSpec(tmp_path / "empty")])
    # a saved Dataset (no dict): the split given, else the dataset's own, else test
    import datasets

    datasets.Dataset.from_dict({"input": ["a b c d e"]}).save_to_disk(str(tmp_path / "one"))
    (one,) = load_benchmarks([BenchmarkSpec(tmp_path / "one")])
    assert (one.source, one.field, one.texts) == ("one:test", "input", ["a b c d e"])


def test_the_contamination_matrix_in_the_report(store: Store, tmp_path: Path) -> None:
    decontaminate(store, None, load_benchmarks(write_benchmarks(tmp_path, "jsonl")))
    matrix = build_report(store, None).contamination
    assert matrix["benchmarks"] == ["mmlu:test", "mmlu:train"]
    # Thermo is under both disciplines: its instruction counts in each row, once in all
    assert matrix["rows"] == [
        {
            "discipline": CHEMISTRY,
            "instructions": 3,
            "counts": {"mmlu:test": 1, "mmlu:train": 1},
            "shares": {"mmlu:test": 0.3333, "mmlu:train": 0.3333},
        },
        {
            "discipline": PHYSICS,
            "instructions": 4,
            "counts": {"mmlu:test": 2},
            "shares": {"mmlu:test": 0.5},
        },
    ]
    assert matrix["total"] == {
        "instructions": 6,
        "counts": {"mmlu:test": 2, "mmlu:train": 1},
        "shares": {"mmlu:test": 0.3333, "mmlu:train": 0.1667},
    }
    # under one discipline, the other discipline of a shared subject is outside the path
    physics = build_report(store, PHYSICS).contamination
    assert [r["discipline"] for r in physics["rows"]] == [PHYSICS]
    assert physics["total"]["counts"] == {"mmlu:test": 2}
    # what the API counts per node, from the marked instructions alone
    chemistry = store.taxonomy.node(CHEMISTRY)
    assert contamination_counts(store, chemistry) == {("mmlu", "test"): 1, ("mmlu", "train"): 1}
    assert contamination_counts(store, None) == {("mmlu", "test"): 2, ("mmlu", "train"): 1}


def test_diversity_equals_a_hand_count(embedded_store: Store) -> None:
    store = embedded_store
    fill(store, subjects=1, sessions=1, concepts=5)
    (sid,) = store.taxonomy.ids_in_scope(None, SUBJECT)
    (session,) = store.syllabi.of([sid])[sid]
    c = [x.id for x in session.concepts]
    rows = [  # (id, text, concepts, combo)
        ("ins_1", "The cat sat.", [c[0]], "k1"),
        ("ins_2", "the CAT sat", [c[0]], "k1"),  # an exact repeat of ins_1
        ("ins_3", "A dog ran far", [c[1], c[2]], "k2"),
    ]
    for iid, text, concepts, combo in rows:
        row = {"id": iid, "text": text, "subject_id": sid, "combo_key": combo}
        store.instructions.write_instructions(
            [row], [(iid, x) for x in concepts], [(iid, session.id)]
        )
    div = build_report(store, None).diversity
    # words: the cat sat | the cat sat | a dog ran far: 7 distinct of 10
    # pairs: the cat, cat sat (twice), a dog, dog ran, ran far: 5 distinct of 7
    assert (div["distinct_1"], div["distinct_2"]) == (0.7, round(5 / 7, 4))
    assert div["questions"] == 3 and not div["distinct_approximate"]
    assert div["near_duplicate_rate_before"] == div["near_duplicate_rate_after"] == 0.3333
    # concepts c0: 2, c1: 1, c2: 1, c3 and c4: none
    assert div["questions_per_concept"] == {"min": 0, "median": 1, "max": 2}
    assert div["concept_share"] == 0.6 and div["combinations_used"] == 2
    dedup(store, None)
    after = build_report(store, None).diversity
    assert (after["near_duplicate_rate_before"], after["near_duplicate_rate_after"]) == (
        0.3333,
        0.0,
    )


def test_distinct_counts_past_the_exact_limit_are_estimated() -> None:
    exact, sketched = DistinctCounter(), DistinctCounter(limit=100)
    for counter in (exact, sketched):
        counter.add(str(i % 3000) for i in range(6000))
    assert (exact.distinct, exact.ratio, exact.approximate) == (3000, 0.5, False)
    assert sketched.approximate and abs(sketched.distinct - 3000) < 90
    assert per_concept(Counter({"a": 3}), 1) == {"min": 3, "median": 3, "max": 3}


# ---------------------------------------------------------------------- CLI and API


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "s.lbug"
    with Store.open(StoreConfig(db_path=path)) as s:
        seed(s)
    return path


def test_cli_decontaminate_and_report(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.cli import app

    for name in [n for n in os.environ if n.startswith("GLAN_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("GLAN_DB_PATH", str(db))
    monkeypatch.chdir(tmp_path)
    write_benchmarks(tmp_path, "hf")
    runner = CliRunner()
    out = runner.invoke(app, ["decontaminate", "--benchmark", "mmlu:train", "--method", "ngram"])
    assert out.exit_code == 0, out.output
    assert "read mmlu:train (2 texts)" in out.output
    assert "  ins_a  mmlu:train (answer)" in out.output
    out = runner.invoke(app, ["decontaminate", "--benchmark", "mmlu", "--min-words", "12"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0] == "read mmlu:test (3 texts), mmlu:train (2 texts)"
    assert lines[1] == "2 benchmark texts under 12 words left out of containment"
    assert lines[2] == "scanned 6 instructions: 2 instructions and 1 responses marked contaminated"
    assert lines[3:] == [
        "  ins_a  mmlu:train (answer)",
        "  ins_q  mmlu:test (question)",
        "  ins_t  mmlu:test (question)",
    ]
    out = runner.invoke(app, ["decontaminate", "--benchmark", "mmlu", "--field", "nope"])
    assert out.exit_code == 1 and "has no column 'nope'" in out.output
    out = runner.invoke(app, ["report"])
    assert out.exit_code == 0, out.output
    text = out.output
    assert "contaminated instructions per benchmark" in text and "mmlu:train" in text
    assert "1 (33.3%)" in text and "2 (33.3%)" in text  # Chemistry's train, all's test
    assert "distinct-2" in text and "near-duplicate rate after dedup" in text
    rep = json.loads(runner.invoke(app, ["report", "--json"]).output)
    assert rep["contamination"]["total"]["counts"] == {"mmlu:test": 2, "mmlu:train": 1}


@pytest.fixture
def api(db: Path) -> Iterator[Any]:
    with run_stub(fake_glan_model()) as stub, run_api(api_settings(db, stub)) as running:
        yield running


def test_api_decontaminates_and_counts_contamination_per_node(api: Any, tmp_path: Path) -> None:
    write_benchmarks(tmp_path, "parquet")
    folder = tmp_path / "mmlu"
    mutation = """mutation($b: [BenchmarkInput!]!) { decontaminate(benchmarks: $b,
        method: CONTAINMENT) { __typename ... on Problem { message }
        ... on DecontaminationPayload { scanned shortTexts benchmarks { benchmark split texts }
          instructions { id benchmarks } responses { id benchmarks }
          matches { instructionId benchmark split side method } } } }"""
    benchmarks = [
        {"path": str(folder / "test-00000-of-00001.parquet")},
        {"path": str(folder / "data.parquet"), "split": "train", "name": "mmlu"},
    ]
    got = api.gql(mutation, {"b": benchmarks})["decontaminate"]
    assert got["__typename"] == "DecontaminationPayload", got
    assert got["scanned"] == 6 and got["instructions"] == [
        {"id": "ins_q", "benchmarks": ["mmlu:test"]},
        {"id": "ins_t", "benchmarks": ["mmlu:test"]},
    ]
    assert got["responses"] == [{"id": "rsp_a", "benchmarks": ["mmlu:train"]}]
    assert {"instructionId": "ins_a", "benchmark": "mmlu", "split": "train", "side": "answer",
            "method": "containment"} in got["matches"]  # fmt: skip
    missing = api.gql(mutation, {"b": [{"path": str(tmp_path / "none.jsonl")}]})["decontaminate"]
    assert missing["__typename"] == "InvalidInputError" and "does not exist" in missing["message"]

    coverage = """{ coverage(path: "Natural Sciences/Physical Sciences") { ... on Coverage {
        total { contamination { benchmark split count share } }
        children { path contamination { benchmark split count share } } } } }"""
    found = api.gql(coverage)["coverage"]
    assert found["total"]["contamination"] == [
        {"benchmark": "mmlu", "split": "test", "count": 2, "share": 0.3333},
        {"benchmark": "mmlu", "split": "train", "count": 1, "share": 0.1667},
    ]
    children = {c["path"]: c["contamination"] for c in found["children"]}
    assert children[CHEMISTRY] == [
        {"benchmark": "mmlu", "split": "test", "count": 1, "share": 0.3333},
        {"benchmark": "mmlu", "split": "train", "count": 1, "share": 0.3333},
    ]
    assert children[PHYSICS] == [{"benchmark": "mmlu", "split": "test", "count": 2, "share": 0.5}]
