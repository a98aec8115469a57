"""Cost: the price table, a job's cost, estimates and dry runs, and cost caps.

Generation runs against the loopback model stub, which counts 11 prompt and 7 completion
tokens a call unless a test makes it count more; the stub's model ("stub") is priced by a
GLAN_PRICES table of the test's own.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from generators.cost import (
    CostCapExceeded,
    CostUnknown,
    Price,
    PriceTable,
    check_cap,
    estimate_job,
    job_cost,
    load_prices,
    plan_job,
    usd,
)
from generators.llm import LLMClient, LLMConfig, StageParams, Usage
from generators.stages import QuestionsStage
from graph.config import StoreConfig
from graph.errors import InvalidInput
from graph.store import Store
from server.cli import app
from server.settings import Settings
from tests.api_helpers import run_api
from tests.api_helpers import settings as api_settings
from tests.llm_stub import Reply, Stub, fake_glan_model, run_stub
from tests.test_cli_remote import twins

ROOT = Path(__file__).parents[1]
ALGEBRA = "Formal Sciences/Mathematics/Algebra"
QUESTIONS = {"n": 6, "strategy": "mixed", "basic_ratio": 0.5, "seed": 1, "prefer_uncovered": True}

runner = CliRunner()


def glan(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def price_file(path: Path, **models: tuple[float, float]) -> Path:
    lines = ["models:"] + [f"  {m}: {{input: {i}, output: {o}}}" for m, (i, o) in models.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- the table


def test_the_shipped_table_prices_the_bundled_model_at_zero_and_no_unlisted_model() -> None:
    text = (ROOT / "generators" / "prices.yaml").read_text(encoding="utf-8")
    assert "LIST PRICES" in text and "GLAN_PRICES" in text  # it says what they are
    table = load_prices()
    assert table.price("smollm2-135m-instruct") == Price(0, 0, 0.5)
    assert table.cost("smollm2-135m-instruct", Usage(10**6, 10**6)) == 0.0
    mini = table.price("GPT-4o-mini")  # names match without regard to case
    assert mini is not None and (mini.input, mini.output) == (0.15, 0.60)
    assert table.price("no-such-model") is None
    assert table.cost("no-such-model", Usage(10, 10)) is None  # unknown, never 0
    assert table.cost(None, Usage(10, 10)) is None


def test_a_table_named_by_the_setting_replaces_and_adds_models(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(
        "batch_discount: 0.25\n"
        "models:\n"
        "  gpt-4o-mini: {input: 1, output: 2}\n"
        "  mine: {input: 3, output: 4, batch_discount: 0.5}\n",
        encoding="utf-8",
    )
    for table in (load_prices(path), Settings(_env_file=None, prices=path).price_table()):
        assert table.price("gpt-4o-mini") == Price(1, 2, 0.25)
        assert table.price("mine") == Price(3, 4, 0.5)
        assert table.price("gpt-4o") == load_prices().price("gpt-4o")  # the rest stays
    # read again when the file changes
    path.write_text("models:\n  mine: {input: 5, output: 6}\n", encoding="utf-8")
    os.utime(path, ns=(1, 1))
    assert load_prices(path).price("mine") == Price(5, 6, 0.5)

    path.write_text("models:\n  mine: {input: -1, output: 6}\n", encoding="utf-8")
    with pytest.raises(InvalidInput, match="prices.yaml"):
        load_prices(path)
    path.write_text("models: [1, 2]\n", encoding="utf-8")
    os.utime(path, ns=(2, 2))
    with pytest.raises(InvalidInput, match="GLAN_PRICES"):
        load_prices(path)
    with pytest.raises(InvalidInput, match="cannot read"):
        load_prices(tmp_path / "missing.yaml")


def test_a_jobs_cost_is_its_tokens_at_its_models_price() -> None:
    table = PriceTable({"m": Price(2.0, 8.0, 0.5)})
    row: dict[str, Any] = {"model": "m", "prompt_tokens": 1_500_000, "completion_tokens": 250_000}
    assert job_cost(row, table) == pytest.approx(3.0 + 2.0)
    assert job_cost({**row, "executor": "batch"}, table) == pytest.approx(2.5)
    assert job_cost({**row, "model": "other"}, table) is None
    # a job stored before its model was recorded: its key names it (answers jobs), or not
    legacy = {**row, "model": None, "params": json.dumps({"model": "m"})}
    assert job_cost(legacy, table) == pytest.approx(5.0)
    assert job_cost({**legacy, "params": "{}"}, table) is None
    assert job_cost({"model": "m"}, table) == 0.0  # priced, nothing spent yet
    assert (usd(None), usd(0.0), usd(0.0042), usd(1234.5)) == (
        "unknown",
        "$0.00",
        "$0.0042",
        "$1,234.50",
    )


def test_a_cap_refuses_work_whose_estimate_passes_it() -> None:
    check_cap(1.0, 2.0, spent_usd=0.5)  # within it: nothing to say
    with pytest.raises(CostCapExceeded) as refused:
        check_cap(1.5, 2.0, spent_usd=0.75, what="a batch of 300 requests")
    exc = refused.value
    assert (exc.estimate_usd, exc.cap_usd, exc.spent_usd) == (1.5, 2.0, 0.75)
    assert str(exc).startswith("a batch of 300 requests would cost about $1.50")
    assert "$0.75 already spent" in str(exc) and "cap of $2.00" in str(exc)
    assert isinstance(exc, InvalidInput)  # an API answers it as the caller's to fix
    with pytest.raises(CostUnknown, match="'stub'"):
        check_cap(None, 2.0, model="stub")


# ---------------------------------------------------------------------------- dry runs


@pytest.fixture
def stub() -> Iterator[Stub]:
    with run_stub(fake_glan_model(subjects=2, sessions=2, concepts=3)) as s:
        yield s


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stub: Stub) -> Path:
    """A clean environment for the CLI over a store at `store.lbug`, the stub priced at $1
    and $2 per million tokens in and out."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("GLAN_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GLAN_LLM_BASE_URL", stub.base_url)
    monkeypatch.setenv("GLAN_MODEL", "stub")
    monkeypatch.setenv("GLAN_LLM_CONCURRENCY", "4")
    monkeypatch.setenv("GLAN_PRICES", str(price_file(tmp_path / "prices.yaml", stub=(1, 2))))
    db = tmp_path / "store.lbug"
    monkeypatch.setenv("GLAN_DB_PATH", str(db))
    return db


@pytest.fixture
def algebra(env: Path) -> Path:
    """The seed taxonomy with subjects and syllabi under Algebra, made by the CLI."""
    assert glan("init")[0] == 0
    code, out = glan("generate", "subjects", ALGEBRA, "--rounds", "1", "--per-call", "2")
    assert code == 0, out
    code, out = glan("generate", "syllabus", ALGEBRA, "--sessions", "2")
    assert code == 0, out
    return env


def opened(db: Path) -> Store:
    return Store.open(StoreConfig(db_path=db))


def questions_stage(store: Store, llm: LLMClient, **params: Any) -> QuestionsStage:
    return QuestionsStage(store, llm, StageParams(model="stub", temperature=1, top_p=1, **params),
                          QUESTIONS)  # fmt: skip


def stored_jobs(db: Path) -> list[dict[str, Any]]:
    store = opened(db)
    try:
        return sorted(store.jobs.all(), key=lambda r: str(r["id"]))
    finally:
        store.close()


def test_a_dry_run_stores_nothing_and_plans_what_the_run_does(algebra: Path, stub: Stub) -> None:
    before, calls = stored_jobs(algebra), stub.calls
    code, out = glan("generate", "questions", ALGEBRA, "--n", "6", "--seed", "1", "--dry-run")
    assert code == 0, out
    text = " ".join(out.split())
    assert "dry run: nothing was stored and the model was not asked" in text
    assert "questions 6 units (0 done earlier, 6 to ask) on stub" in text
    assert stub.calls == calls and stored_jobs(algebra) == before  # no job row, no units

    store = opened(algebra)
    try:
        llm = LLMClient(LLMConfig(base_url=stub.base_url))
        stage = questions_stage(store, llm)
        _, planned = plan_job(store, stage, ALGEBRA)
        assert store.jobs.get(stage.job_id) is None and store.jobs.units(stage.job_id) == []
    finally:
        store.close()
    code, out = glan("generate", "questions", ALGEBRA, "--n", "6", "--seed", "1")
    assert code == 0, out
    store = opened(algebra)
    try:
        units = store.jobs.units(stage.job_id)  # the run planned what the dry run did
        assert sorted(u["id"] for u in units) == sorted(u.id for u in planned)
        assert {u["status"] for u in units} == {"done"}
        row = store.jobs.get(stage.job_id)
    finally:
        store.close()

    # a dry run of a stored job reads its plan back and changes nothing of it
    code, out = glan("generate", "questions", ALGEBRA, "--n", "6", "--seed", "1", "--dry-run")
    text = " ".join(out.split())
    assert code == 0 and "6 units (6 done earlier, 0 to ask)" in text, out
    assert "estimated cost $0.00, $0.0001 spent by earlier runs" in text  # 6 x (11 + 2 x 7)
    store = opened(algebra)
    try:
        assert store.jobs.get(stage.job_id) == row
    finally:
        store.close()


def test_an_estimate_rests_on_done_units_or_else_on_measured_prompts(
    algebra: Path, stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = opened(algebra)
    try:
        llm = LLMClient(LLMConfig(base_url=stub.base_url))
        prices = PriceTable({"stub": Price(1000.0, 2000.0)})
        # before any question is done: the prompts measured, max_tokens for the completion
        stage = questions_stage(store, llm, max_tokens=100)
        e = estimate_job(store, stage, ALGEBRA, prices)
        assert (e.basis, e.total, e.todo, e.sample, e.stored) == ("prompt", 6, 6, 6, False)
        _, units = plan_job(store, questions_stage(store, llm, max_tokens=100), ALGEBRA)
        measure = questions_stage(store, llm, max_tokens=100)
        measure.prepare(units)
        chars = []
        for unit in units:
            request = measure.request(unit)
            assert not hasattr(request, "error")
            text = sum(len(m["content"]) for m in request.messages)  # type: ignore[union-attr]
            chars.append(text + len(json.dumps(request.response_format)))  # type: ignore[union-attr]
        prompt = math.ceil(sum(chars) / len(chars) / 4)
        assert e.per_unit == Usage(prompt, 100)
        assert e.tokens == Usage(6 * prompt, 600)
        assert e.estimated_usd == pytest.approx((6 * prompt * 1000 + 600 * 2000) / 1e6)
        # without max_tokens: the stage's own guess
        e = estimate_job(store, questions_stage(store, llm), ALGEBRA, prices)
        assert e.per_unit.completion_tokens == 250
        assert (
            estimate_job(store, questions_stage(store, llm), ALGEBRA, PriceTable()).estimated_usd
            is None
        )
    finally:
        store.close()

    code, out = glan("generate", "questions", ALGEBRA, "--n", "6", "--seed", "1")
    assert code == 0, out
    # once units of the stage and model are done: their average (the stub's 11 and 7)
    code, out = glan("generate", "questions", ALGEBRA, "--n", "4", "--seed", "2", "--dry-run")
    text = " ".join(out.split())
    assert code == 0, out
    assert "4 units (0 done earlier, 4 to ask) on stub: about 44 tokens in / 28 out" in text
    assert "from the average of 6 done units of questions on this model" in text
    assert "estimated total: $0.0001" in text  # (44 x 1 + 28 x 2) / 1e6
    # no price: unknown, and said so
    monkeypatch.delenv("GLAN_PRICES")
    code, out = glan("generate", "questions", ALGEBRA, "--n", "4", "--seed", "2", "--dry-run")
    text = " ".join(out.split())
    assert "estimated cost unknown (no price for model 'stub'" in text
    assert "estimated total: unknown" in text


def test_jobs_and_the_report_show_tokens_and_cost(algebra: Path) -> None:
    code, out = glan("jobs", "--json")
    assert code == 0, out
    jobs = {j["kind"]: j for j in json.loads(out)["jobs"]}
    subjects, syllabus = jobs["subjects"], jobs["syllabus"]
    assert (subjects["prompt_tokens"], subjects["completion_tokens"]) == (11, 7)
    assert (syllabus["prompt_tokens"], syllabus["completion_tokens"]) == (22, 14)
    assert subjects["model"] == "stub"
    assert subjects["estimated_cost_usd"] == pytest.approx((11 + 2 * 7) / 1e6)
    code, out = glan("jobs")
    assert code == 0 and "cost" in out and "$0.00" in out, out

    code, out = glan("report", "--json")
    assert code == 0, out
    rep = json.loads(out)
    assert (rep["prompt_tokens"], rep["completion_tokens"]) == (33, 21)
    assert rep["estimated_cost_usd"] == pytest.approx((33 + 2 * 21) / 1e6)
    assert rep["unpriced_jobs"] == 0
    assert {j["stage"] for j in rep["jobs"]} == {"subjects", "syllabus"}
    code, out = glan("report")
    assert code == 0 and "estimated cost" in out and "tokens in / out" in out


def test_a_model_with_no_price_shows_an_unknown_cost(
    algebra: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GLAN_PRICES")
    code, out = glan("jobs", "--json")
    assert code == 0, out
    assert {j["estimated_cost_usd"] for j in json.loads(out)["jobs"]} == {None}
    assert "unknown" in glan("jobs")[1]
    code, out = glan("report", "--json")
    rep = json.loads(out)
    assert rep["unpriced_jobs"] == 2 and rep["estimated_cost_usd"] == 0.0
    assert {j["estimated_cost_usd"] for j in rep["jobs"]} == {None}
    assert "2 job(s) with no price left out" in " ".join(glan("report")[1].split())


# ---------------------------------------------------------------------------- caps


def costly(stub: Stub, tokens: int = 1000) -> None:
    """Every call of the stub now counts `tokens` in and `tokens` out."""
    good = fake_glan_model(subjects=2, sessions=2, concepts=3)

    def handler(body: dict[str, Any], n: int) -> Reply:
        return replace(good(body, n), prompt_tokens=tokens, completion_tokens=tokens)

    stub.handler = handler


def questions_job(db: Path) -> dict[str, Any]:
    (job,) = [j for j in stored_jobs(db) if j["kind"] == "questions"]
    return job


def test_a_cost_cap_stops_a_job_before_it_and_a_higher_cap_finishes_it(
    algebra: Path, stub: Stub
) -> None:
    costly(stub)  # $0.003 a unit: 1,000 tokens in at $1 and 1,000 out at $2 a million
    calls = stub.calls
    args = ("generate", "questions", ALGEBRA, "--n", "8", "--seed", "1", "--concurrency", "1")
    code, out = glan(*args, "--max-cost", "0.007")
    text = " ".join(out.split())
    assert code == 1, out
    assert "questions did not finish (cost_capped): stopped at the cost cap: $0.0060 spent" in text
    assert "of $0.0070, and the next unit would take about $0.0030; 2 of 8 units are done" in text
    assert text.endswith(
        "incomplete: stopped at the cost cap, with nothing lost; run the same command again "
        "with a higher --max-cost to go on"
    )
    job = questions_job(algebra)
    assert (job["status"], job["done"], job["total"], job["max_cost"]) == (
        "cost_capped",
        2,
        8,
        0.007,
    )
    assert job_cost(job, load_prices(Path(os.environ["GLAN_PRICES"]))) == pytest.approx(0.006)
    assert stub.calls == calls + 2  # a third unit would have passed the cap: not asked

    # the same cap again: nothing more fits, nothing is asked
    code, out = glan(*args, "--max-cost", "0.007")
    assert code == 1 and "stopped at the cost cap" in out and stub.calls == calls + 2

    code, out = glan(*args, "--max-cost", "1")
    assert code == 0, out
    assert "8/8 done (2 earlier)" in out
    job = questions_job(algebra)
    assert (job["status"], job["done"], job["max_cost"]) == ("completed", 8, 1.0)
    assert stub.calls == calls + 8  # every unit asked once, over the three runs
    store = opened(algebra)
    try:
        units = store.jobs.units(job["id"])
        assert len(units) == 8 and {u["status"] for u in units} == {"done"}
        assert store.coverage.counts(ALGEBRA)["instructions"] == 8
    finally:
        store.close()
    code, out = glan(*args)  # no cap: none is kept
    assert code == 0 and "8/8 done (8 earlier)" in out
    assert json.loads(glan("jobs", "--json")[1])["jobs"][0]["max_cost"] is None


def test_a_cap_on_a_model_with_no_price_is_refused_before_anything_runs(
    algebra: Path, stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GLAN_PRICES")
    calls, before = stub.calls, stored_jobs(algebra)
    code, out = glan("generate", "questions", ALGEBRA, "--n", "4", "--max-cost", "1")
    text = " ".join(out.split())
    assert code == 1 and "no price for model 'stub'" in text and "GLAN_PRICES" in text, out
    assert stub.calls == calls and stored_jobs(algebra) == before


# ---------------------------------------------------------------------------- the API


JOBS = (
    "{ jobs { ... on JobConnection { edges { node { kind status model promptTokens "
    "completionTokens estimatedCostUsd maxCostUsd } } } } }"
)


def api_jobs(api: Any) -> dict[str, dict[str, Any]]:
    return {e["node"]["kind"].lower(): e["node"] for e in api.gql(JOBS)["jobs"]["edges"]}


def test_dry_runs_caps_and_costs_through_the_server_print_as_a_local_run(
    algebra: Path, stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GLAN_LLM_CONCURRENCY", "1")
    prices = Path(os.environ["GLAN_PRICES"])
    with twins(algebra, stub, monkeypatch, prices=prices, llm_concurrency=1) as t:
        calls = stub.calls
        dry = ("generate", "questions", ALGEBRA, "--n", "6", "--seed", "1", "--dry-run")
        out = " ".join(t.same(*dry).split())
        assert "questions 6 units (0 done earlier, 6 to ask) on stub" in out
        out = t.same("generate", "all", ALGEBRA, "--rounds", "1", "--per-call", "2", "--dry-run")
        assert "later stages are planned on what the store holds now" in " ".join(out.split())
        assert stub.calls == calls and "questions" not in api_jobs(t.api)  # nothing stored

        costly(stub)
        run = ("generate", "questions", ALGEBRA, "--n", "8", "--seed", "1")
        out = " ".join(t.same(*run, "--max-cost", "0.007", code=1).split())
        assert "stopped at the cost cap: $0.0060 spent of $0.0070" in out
        assert stub.calls == calls + 4  # two units here, two in the server
        job = api_jobs(t.api)["questions"]
        assert job == {
            "kind": "QUESTIONS",
            "status": "COST_CAPPED",
            "model": "stub",
            "promptTokens": 2000,
            "completionTokens": 2000,
            "estimatedCostUsd": pytest.approx(0.006),
            "maxCostUsd": 0.007,
        }
        t.same("jobs")
        out = " ".join(t.same(*run, "--max-cost", "1").split())
        assert "8/8 done (2 earlier)" in out and stub.calls == calls + 16
        assert api_jobs(t.api)["questions"]["status"] == "COMPLETED"
        # the dry run of a job done, from the units it did
        out = " ".join(t.same(*run, "--dry-run").split())
        assert "8 units (8 done earlier, 0 to ask)" in out
        assert "$0.02 spent by earlier runs" in out  # 8 x $0.003

        gql = t.api.post(
            'mutation { generateAnswers(path: "Formal Sciences/Mathematics/Algebra", '
            "maxCost: -1) { __typename ... on Problem { message } } }"
        ).json()["data"]["generateAnswers"]
        assert gql["__typename"] == "InvalidInputError" and "above 0" in gql["message"]


def test_the_api_prices_jobs_with_its_own_table_and_refuses_an_unpriced_cap(
    algebra: Path, stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    with twins(algebra, stub, monkeypatch, prices=None) as t:  # no price for "stub" there
        jobs = api_jobs(t.api)
        assert {j["estimatedCostUsd"] for j in jobs.values()} == {None}  # unknown, not 0
        assert jobs["subjects"]["model"] == "stub" and jobs["subjects"]["maxCostUsd"] is None
        calls = stub.calls
        got = t.api.post(
            'mutation { generateInstructions(path: "Formal Sciences/Mathematics/Algebra", n: 4, '
            "maxCost: 1.0) { __typename ... on Problem { message } } }"
        ).json()["data"]["generateInstructions"]
        assert got["__typename"] == "InvalidInputError"
        assert "no price for model 'stub'" in got["message"]
        code, out = t.remote("generate", "questions", ALGEBRA, "--n", "4", "--max-cost", "1")
        assert code == 1 and "no price for model 'stub'" in " ".join(out.split())
        assert stub.calls == calls and "questions" not in api_jobs(t.api)
        est = t.api.gql(
            '{ jobEstimate(stage: QUESTIONS, path: "Formal Sciences/Mathematics/Algebra", '
            "n: 4) { ... on JobEstimate { todo basis estimatedCostUsd } } }"
        )["jobEstimate"]
        assert est == {"todo": 4, "basis": "prompt", "estimatedCostUsd": None}


def test_a_resumed_job_keeps_its_cost_cap(algebra: Path, stub: Stub) -> None:
    """A server resumes a job it was running with the cap the job was started with."""
    costly(stub)
    args = ("generate", "questions", ALGEBRA, "--n", "8", "--seed", "1", "--concurrency", "1")
    assert glan(*args, "--max-cost", "0.007")[0] == 1  # 2 units done, $0.006
    job = questions_job(algebra)
    store = opened(algebra)
    try:  # as a server killed while running it (with a cap of $0.013) leaves it
        store.jobs.save({"id": job["id"], "status": "interrupted", "max_cost": 0.013})
    finally:
        store.close()
    prices = Path(os.environ["GLAN_PRICES"])
    with run_api(api_settings(algebra, stub, prices=prices, llm_concurrency=1)) as api:
        deadline = time.monotonic() + 60
        while api_jobs(api)["questions"]["status"] in ("RUNNING", "INTERRUPTED"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        resumed = api_jobs(api)["questions"]
    # two more units fit under $0.013 ($0.012); a third would pass it
    assert (resumed["status"], resumed["maxCostUsd"]) == ("COST_CAPPED", 0.013)
    assert resumed["estimatedCostUsd"] == pytest.approx(0.012)
