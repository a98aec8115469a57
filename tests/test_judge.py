"""The judge stage against the loopback stub: every pair scored with its provenance, scores
readable by node, resumable (again, and after SIGKILL) without judging a stored pair twice,
and `glan export --min-score N` exporting exactly the pairs at or above N."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from generators.jobs import JobStatus
from generators.prompting import get_prompt
from generators.validators import RULE_NAMES
from graph.config import StoreConfig
from graph.model import ANSWERS, DISCIPLINE, HIERARCHY, RESPONSE, SCORE_CRITERIA, SUBJECT
from graph.store import Store
from tests.conftest import SMALL_TAXONOMY
from tests.llm_stub import (
    Reply,
    _digest,
    fake_glan_model,
    fake_judgement,
    first_user_message,
    run_stub,
)
from tests.test_pipeline import ALGEBRA, params_for, run
from tests.test_sampling import fill

ROOT = Path(__file__).parents[1]
PAIRS = ["subjects", "syllabus", "questions", "answers"]


@pytest.fixture
def store(embedded_store: Store) -> Store:
    embedded_store.taxonomy.load(SMALL_TAXONOMY)
    return embedded_store


def judged(store: Store) -> dict[str, dict[str, Any]]:
    """Every response's properties, by id."""
    rows = store.driver.execute(f"MATCH (r:{RESPONSE.label}) RETURN r")
    return {r["r"]["id"]: dict(r["r"]) for r in rows}


def judge_prompts(bodies: list[dict[str, Any]]) -> list[str]:
    return [u for b in bodies if '{"rationale"' in (u := first_user_message(b))]


def test_the_judge_scores_every_pair_with_provenance(store: Store) -> None:
    with run_stub(fake_glan_model()) as model:
        *_, answers = run(store, model, PAIRS)
        start = len(model.requests)
        (judge,) = run(store, model, ["judge"])
        asked = judge_prompts(model.requests[start:])
    assert judge.status == JobStatus.COMPLETED and judge.total == judge.done == 8
    assert len(asked) == 8
    responses = judged(store)
    assert len(responses) == 8
    prompt = get_prompt("judge")
    by_answer = {r["text"]: r for r in responses.values()}
    for user in asked:
        # the prompt carries the pair, its sampled concepts, its subject and discipline
        answer = next(t for t in by_answer if t in user)
        r = by_answer[answer]
        question = store.nodes.get(r["instruction_id"])
        assert question is not None and question.props["text"] in user
        assert "Pure Mathematics" in user and "key concepts: concept " in user
        want = fake_judgement(_digest(user))
        assert r["score"] == want["overall"] and r["rationale"] == want["rationale"]
        assert all(r[f"score_{c}"] == want[c] for c in SCORE_CRITERIA)
        assert r["judge_model"] == params_for("judge").model
        assert (r["judge_prompt_name"], r["judge_prompt_version"]) == ("judge", prompt.version)
        assert r["judge_job_id"] == judge.job_id and r["judge_unit_id"] and r["judged_at"]
        # the answer's own provenance is untouched
        assert r["model"] == "answer-model" and r["prompt_name"] == "answer"
    assert answers.done == 8


def test_a_rerun_judges_nothing_and_another_judge_model_judges_again(store: Store) -> None:
    with run_stub(fake_glan_model()) as model:
        run(store, model, PAIRS)
        (first,) = run(store, model, ["judge"])
        calls = model.calls
        (again,) = run(store, model, ["judge"])
        assert model.calls == calls  # every pair judged by this model: nothing asked
        assert (again.total, again.done, again.skipped) == (8, 8, 8)
        # a wider scope finds the pairs this judge model scored under the narrower one
        (wider,) = run(store, model, ["judge"], path="Formal Sciences")
        assert model.calls == calls and wider.skipped == 8

        import tests.test_pipeline as tp

        real = tp.params_for

        def other_judge(stage: str) -> Any:
            p = real(stage)
            return p.model_copy(update={"model": "judge-2"}) if stage == "judge" else p

        tp.params_for = other_judge
        try:
            (second,) = run(store, model, ["judge"])
        finally:
            tp.params_for = real
        assert second.job_id != first.job_id and second.done == 8 and model.calls == calls + 8
    assert {r["judge_model"] for r in judged(store).values()} == {"judge-2"}


def test_scores_by_node_count_each_pair_once(store: Store) -> None:
    with run_stub(fake_glan_model()) as model:
        run(store, model, [*PAIRS, "judge"])
    scores = sorted(r["score"] for r in judged(store).values())
    whole = store.instructions.scores(None)[""]
    assert (
        whole.judged == 8
        and sorted(s for s, n in whole.histogram.items() for _ in range(n)) == scores
    )
    assert whole.mean == pytest.approx(sum(scores) / 8)
    scope = store.taxonomy.scope(ALGEBRA)
    assert store.instructions.scores(scope)[""].histogram == whole.histogram
    by_subject = store.instructions.scores(scope, HIERARCHY.index(SUBJECT))
    assert sum(s.judged for s in by_subject.values()) == 8  # a hard pair counts once
    by_discipline = store.instructions.scores(None, HIERARCHY.index(DISCIPLINE))
    assert list(by_discipline) == [scope.id]
    # nothing judged elsewhere
    assert store.instructions.scores(store.taxonomy.scope("Natural Sciences")) == {}


# ------------------------------------------------------------------ killed, then run again

PHYSICS = "Natural Sciences/Physical Sciences/Physics"


def pairs_store(db: Path, n: int) -> None:
    """A store with n answered questions under Physics, made in this process."""
    from generators.pipeline import PipelineOptions

    with Store.open(StoreConfig(db_path=db)) as store, run_stub(fake_glan_model()) as model:
        fill(store, subjects=3, sessions=5, concepts=5)
        run(store, model, ["questions", "answers"], PHYSICS, PipelineOptions(n=n, seed=5))


def cli(db: Path, base_url: str, *args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "GLAN_DB_PATH": str(db),
        "GLAN_LLM_BASE_URL": base_url,
        "GLAN_MODEL": "stub",
        "GLAN_JUDGE_MODEL": "judge-stub",
        "GLAN_LLM_CONCURRENCY": "4",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "server.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def scored(db: Path) -> dict[str, dict[str, Any]]:
    with Store.open(StoreConfig(db_path=db)) as store:
        return {i: r for i, r in judged(store).items() if r["score"] is not None}


def test_a_judge_killed_with_sigkill_resumes_without_judging_a_stored_pair_twice(
    tmp_path: Path,
) -> None:
    db, n = tmp_path / "judge.lbug", 80
    pairs_store(db, n)
    fine = fake_glan_model()

    def slow(body: dict[str, Any], call: int) -> Reply:
        reply = fine(body, call)
        reply.delay_s = 0.05
        return reply

    kills, runs, stored_by_kills = 0, 0, 0
    with run_stub(slow) as stub:
        # killed a few units in, until three kills have left judgements stored between them
        while kills < 3:
            runs += 1
            assert runs <= 12, f"only {kills} of {runs} runs were killed with work stored"
            before = scored(db)
            start = stub.calls
            proc = cli(db, stub.base_url, "generate", "judge", PHYSICS)
            deadline = time.monotonic() + 60
            while stub.calls - start < 10 and proc.poll() is None:
                assert time.monotonic() < deadline, "the judge made no progress"
                time.sleep(0.002)
            time.sleep(0.15)  # past a write group (written every 0.1 s)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            # what this run asked: none of the pairs an earlier run had stored
            texts = {r["text"] for r in before.values()}
            asked = judge_prompts(stub.requests[start:])
            assert asked and not [u for u in asked if any(t in u for t in texts)]
            now = len(scored(db))
            assert now >= len(before)
            if proc.returncode == -signal.SIGKILL and now > len(before):
                kills += 1
                stored_by_kills = now
            assert now < n, "a run finished before it was killed: fewer units per run"
        start = stub.calls
        final = cli(db, stub.base_url, "generate", "judge", PHYSICS)
        out, _ = final.communicate(timeout=120)
        assert final.returncode == 0, out
        assert f"done: all {n} units of judge are done" in out
        before_last = len(judge_prompts(stub.requests[start:]))
    got = scored(db)
    # the last run asked what was left, at most (a unit in flight at a kill is asked again)
    assert len(got) == n and before_last <= n - stored_by_kills
    with Store.open(StoreConfig(db_path=db)) as store:
        (job,) = [j for j in store.jobs.all() if j["kind"] == "judge"]
        units = store.jobs.units(job["id"])
        assert len(units) == n and all(u["status"] == "done" for u in units)
        assert (job["done"], job["failed"], job["total"]) == (n, 0, n)
        assert {r["judge_unit_id"] for r in got.values()} == {u["id"] for u in units}
        assert {r["judge_model"] for r in got.values()} == {"judge-stub"}
        # each pair's score is the one its own prompt was answered with
        responses = store.nodes.linked(
            ANSWERS, sorted({r["instruction_id"] for r in got.values()}), reverse=True
        )
        assert sum(len(v) for v in responses.values()) == n


# ------------------------------------------------------------------ export --min-score


def test_export_min_score_exports_exactly_the_pairs_at_or_above_it(tmp_path: Path) -> None:
    db, n = tmp_path / "export.lbug", 30
    pairs_store(db, n)
    with run_stub(fake_glan_model()) as stub:
        done = cli(db, stub.base_url, "generate", "judge", PHYSICS)
        out, _ = done.communicate(timeout=120)
        assert done.returncode == 0, out
    scores = {r["id"]: r["score"] for r in scored(db).values()}
    assert len(scores) == n and len(set(scores.values())) > 3  # spread over the scale
    for threshold in (1, 5, 8, 10):
        out_file = tmp_path / f"min{threshold}.jsonl"
        proc = cli(db, "http://127.0.0.1:9/v1", "export", PHYSICS, "--out", str(out_file),
                   "--min-score", str(threshold))  # fmt: skip
        printed, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, printed
        records = [json.loads(line) for line in out_file.read_text().splitlines()]
        got = {r["metadata"]["response_id"] for r in records}
        want = {rid for rid, s in scores.items() if s >= threshold}
        assert got == want, threshold
        assert all(r["metadata"]["score"] >= threshold for r in records)
        assert f"{n - len(want):,} below the minimum score" in printed
    # without the flag every pair, each record with its score and judge
    proc = cli(db, "http://127.0.0.1:9/v1", "export", PHYSICS, "--out", str(tmp_path / "all.jsonl"))
    assert proc.wait(120) == 0
    records = [json.loads(x) for x in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert len(records) == n
    assert {r["metadata"]["judge_model"] for r in records} == {"judge-stub"}
    assert {r["metadata"]["score"] for r in records} == set(scores.values())


def test_export_leaves_duplicates_and_contaminated_out_unless_asked(tmp_path: Path) -> None:
    from generators.export import Keep, export_jsonl
    from graph.model import INSTRUCTION

    db = tmp_path / "flags.lbug"
    pairs_store(db, 6)
    with Store.open(StoreConfig(db_path=db)) as store:
        ids = store.instructions.ids_in_scope(store.taxonomy.scope(PHYSICS))
        store.instructions.mark_duplicates([(ids[0], ids[1], "exact")])
        store.nodes.upsert_nodes(INSTRUCTION, [{"id": ids[2], "contaminated": "gsm8k:test"}])

        def exported(keep: Keep | None = None) -> set[str]:
            out = tmp_path / "flags.jsonl"
            result = export_jsonl(store, PHYSICS, out, keep=keep)
            assert sum(result.counts.values()) == len(out.read_text().splitlines())
            lines = out.read_text().splitlines()
            return {json.loads(x)["metadata"]["instruction_id"] for x in lines}

        assert exported() == set(ids) - {ids[0], ids[2]}
        assert exported(Keep(duplicates=True)) == set(ids) - {ids[2]}
        assert exported(Keep(contaminated=True)) == set(ids) - {ids[0]}
        assert exported(Keep(duplicates=True, contaminated=True)) == set(ids)
    proc = cli(db, "http://127.0.0.1:9/v1", "export", PHYSICS, "--out", str(tmp_path / "x.jsonl"),
               "--include-duplicates", "--include-contaminated")  # fmt: skip
    printed, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "wrote 6 pairs" in printed, printed
    assert "left out 0 duplicates, 0 contaminated" in printed
    refused = cli(db, "http://127.0.0.1:9/v1", "export", PHYSICS, "--out", "y.jsonl",
                  "--min-score", "11")  # fmt: skip
    assert refused.wait(60) == 2


# ------------------------------------------------------------------ through the API


def test_judgements_through_the_api(api: Any, stub: Any) -> None:
    algebra = "Formal Sciences/Mathematics/Algebra"
    run(api.store, stub, PAIRS, path=algebra)
    start = """mutation($p: String) { generateJudgements(path: $p) {
        __typename ... on JobPayload { job { id kind } } } }"""
    started = api.gql(start, {"p": algebra})["generateJudgements"]
    assert started["__typename"] == "JobPayload" and started["job"]["kind"] == "JUDGE"
    job = api.wait_for(started["job"]["id"])
    assert (job["status"], job["done"], job["failed"]) == ("COMPLETED", job["total"], 0)
    store = api.store
    scope = store.taxonomy.scope(algebra)
    scores = {r["id"]: r["score"] for r in judged(store).values()}
    assert len(scores) == job["total"] == 8

    page = """query($p: String, $m: Float) { instructions(path: $p, minScore: $m, first: 50) {
        __typename ... on Problem { message }
        ... on InstructionConnection { totalCount edges { node { id responses {
            id judgement { score rationale model promptName promptVersion jobId
                           selfContained answerable correct complete usesConcepts onTopic } } } } }
    } }"""
    for m in (None, 1, 6, 10):
        found = api.gql(page, {"p": algebra, "m": m})["instructions"]
        rids = {r["id"] for e in found["edges"] for r in e["node"]["responses"]}
        want = {r for r, s in scores.items() if m is None or s >= m}
        assert rids == want and found["totalCount"] == len(want), m
        for e in found["edges"]:
            (r,) = e["node"]["responses"]
            j = r["judgement"]
            assert j["score"] == scores[r["id"]] and j["model"] == "stub"
            assert j["promptName"] == "judge" and j["jobId"] == job["id"] and j["rationale"]
            assert all(1 <= j[k] <= 10 for k in ("selfContained", "onTopic", "usesConcepts"))
    refused = api.gql(page, {"p": algebra, "m": 11})["instructions"]
    assert refused["__typename"] == "InvalidInputError" and "minScore" in refused["message"]

    coverage = """query($p: String) { coverage(path: $p) { ... on Coverage {
        total { scores { judged mean histogram { score count } } }
        children { path node { id } scores { judged mean histogram { score count } } } } } }"""
    cov = api.gql(coverage, {"p": algebra})["coverage"]
    total = cov["total"]["scores"]
    assert total["judged"] == 8
    assert total["mean"] == pytest.approx(sum(scores.values()) / 8, abs=1e-3)
    assert [b["score"] for b in total["histogram"]] == list(range(1, 11))
    assert {b["score"]: b["count"] for b in total["histogram"] if b["count"]} == dict(
        store.instructions.scores(scope)[""].histogram
    )
    by_subject = store.instructions.scores(scope, HIERARCHY.index(SUBJECT))
    for child in cov["children"]:
        want_child = by_subject.get(child["node"]["id"])
        assert child["scores"]["judged"] == (want_child.judged if want_child else 0)
    assert sum(c["scores"]["judged"] for c in cov["children"]) == 8

    level = "path scores { judged mean }"
    tree = f"""query {{ subtree(path: "Formal Sciences", depth: 3) {{ ... on TreeNode {{
        {level} children {{ {level} children {{ {level} children {{ {level} }} }} }} }} }} }}"""
    root = api.gql(tree)["subtree"]
    assert root["scores"]["judged"] == 8
    (maths,) = [c for c in root["children"] if c["path"].endswith("Mathematics")]
    assert maths["scores"]["judged"] == 8
    by_path = {d["path"]: d for d in maths["children"]}
    assert by_path[algebra]["scores"]["mean"] == pytest.approx(total["mean"], abs=1e-3)
    assert all(d["scores"]["judged"] == 0 and d["scores"]["mean"] is None
               for p, d in by_path.items() if p != algebra)  # fmt: skip
    subjects = by_path[algebra]["children"]
    assert sum(s["scores"]["judged"] for s in subjects) == 8


def test_a_junk_judgement_fails_its_unit(store: Store) -> None:
    """A score off the scale is a schema error; a rationale of dots, a validator's."""
    from generators.validators import rule_of
    from tests.llm_stub import ok_json

    fine = fake_glan_model()
    bad = [
        {**fake_judgement("a1b2c3"), "overall": 11},
        {**fake_judgement("a1b2c3"), "rationale": "..."},
    ]

    def handler(body: dict[str, Any], n: int) -> Reply:
        user = first_user_message(body)
        if '{"rationale"' not in user:
            return fine(body, n)
        return ok_json(bad[int(_digest(user), 16) % 2])

    with run_stub(handler) as model:
        run(store, model, PAIRS)
        (judge,) = run(store, model, ["judge"])
    assert judge.failed == judge.total == 8
    errors = [u["error"] for u in store.jobs.units(judge.job_id)]
    assert {rule_of(e) for e in errors} <= {"punctuation_only", None}
    assert any("did not match Judgement" in e for e in errors)
    assert any(rule_of(e) == "punctuation_only" for e in errors)
    assert all(r["score"] is None for r in judged(store).values())


def test_the_judge_sees_where_a_pair_was_filed(store: Store) -> None:
    """A subject proposed in the wrong discipline ("Biology" under a mathematics
    discipline) passes the validators; its pairs reach the judge with the subject and the
    discipline they were filed under, for its on_topic score."""
    biology = {"subjects": [{"name": "Biology", "level": "undergraduate", "subtopics": ["cells"]}]}
    fine = fake_glan_model()

    def handler(body: dict[str, Any], n: int) -> Reply:
        if '{"subjects"' in first_user_message(body):
            from tests.llm_stub import ok_json

            return ok_json(biology)
        return fine(body, n)

    with run_stub(handler) as model:
        run(store, model, PAIRS)
        start = len(model.requests)
        (judge,) = run(store, model, ["judge"])
        asked = judge_prompts(model.requests[start:])
    assert judge.done == 8 and len(asked) == 8
    for user in asked:
        assert 'from the course "Biology"' in user and "discipline: Pure Mathematics" in user
        assert "on_topic: the question belongs to the course and to Pure Mathematics" in user


def test_the_report_prints_scores_per_discipline_and_rejections_by_rule(tmp_path: Path) -> None:
    from generators.pipeline import PipelineOptions
    from tests.llm_stub import ok

    db = tmp_path / "report.lbug"
    fine = fake_glan_model()

    def answers(body: dict[str, Any], n: int) -> Reply:
        user = first_user_message(body)
        if "Answer as JSON" in user:
            return fine(body, n)
        junk = ("<|im_end|>", "...", None)[int(_digest(user), 16) % 3]
        return ok(junk) if junk is not None else fine(body, n)

    with Store.open(StoreConfig(db_path=db)) as store:
        fill(store, subjects=3, sessions=5, concepts=5)
        with run_stub(answers) as model:
            run(store, model, ["questions", "answers"], PHYSICS, PipelineOptions(n=24, seed=5))
        with run_stub(fake_glan_model()) as model:
            (judge,) = run(store, model, ["judge"], PHYSICS)
        units = [u for j in store.jobs.all() if j["kind"] == "answers"
                 for u in store.jobs.units(j["id"])]  # fmt: skip
        want = {
            "template_leak": sum("template_leak" in (u["error"] or "") for u in units),
            "punctuation_only": sum("punctuation_only" in (u["error"] or "") for u in units),
        }
        assert all(want.values()) and judge.done == 24 - sum(want.values())
        scores = store.instructions.scores(None)[""]
    proc = cli(db, "http://127.0.0.1:9/v1", "report", "--json")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    rep = json.loads(out)
    assert {r: n for r, n in rep["validator_rejections"].items() if n} == want
    assert set(rep["validator_rejections"]) == set(rep["validator_drops"]) == set(RULE_NAMES)
    assert rep["scores"]["judged"] == judge.done == scores.judged
    assert rep["scores"]["mean"] == round(scores.mean or 0, 2)
    (physics,) = rep["scores_by_discipline"]
    assert physics["discipline"] == PHYSICS and physics["judged"] == judge.done
    assert sum(physics["histogram"].values()) == judge.done
    proc = cli(db, "http://127.0.0.1:9/v1", "report")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "judge scores (1-10)" in out and "validator rejections by rule" in out
    assert f"{scores.mean:.2f}" in out
    for rule, count in want.items():
        assert re.search(rf"{rule}\s*│\s*{count}\b", out), out
