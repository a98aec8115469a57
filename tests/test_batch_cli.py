"""`glan generate --batch` and `glan batch ...` on the store, through a running server, and
killed with SIGKILL while it waits on a batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from graph.config import StoreConfig
from graph.store import Store
from server.cli import app
from tests.api_helpers import run_api
from tests.api_helpers import settings as api_settings
from tests.batch_stub import BatchStub, run_batch_stub
from tests.graph_checks import integrity_problems
from tests.llm_stub import fake_glan_model
from tests.test_batch import answer_offline
from tests.test_sampling import PHYSICS, fill

ROOT = Path(__file__).parents[1]
runner = CliRunner()


def glan(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def stub() -> Iterator[BatchStub]:
    with run_batch_stub(fake_glan_model()) as s:
        yield s


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stub: BatchStub) -> Path:
    """A store with syllabi under Physics, and the CLI's environment pointing at it and at
    the batch stub."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("GLAN_"):
            monkeypatch.delenv(name)
    db = tmp_path / "glan.lbug"
    for name, value in env(db, stub).items():
        monkeypatch.setenv(name, value)
    with Store.open(StoreConfig(db_path=db)) as store:
        fill(store, subjects=3, sessions=5, concepts=5)
    return db


def env(db: Path, stub: BatchStub) -> dict[str, str]:
    return {
        "GLAN_DB_PATH": str(db),
        "GLAN_LLM_BASE_URL": stub.base_url,
        "GLAN_MODEL": "stub",
        "GLAN_BATCH_POLL_S": "0.01",
        "GLAN_LLM_MAX_RETRIES": "0",
    }


def job_of(db: Path, kind: str) -> dict[str, Any]:
    with Store.open(StoreConfig(db_path=db)) as store:
        (job,) = [j for j in store.jobs.all() if j["kind"] == kind]
        return job


def test_generate_in_batches_status_cancel_and_resume(db: Path, stub: BatchStub) -> None:
    code, out = glan("generate", "questions", PHYSICS, "--n", "12", "--seed", "3", "--batch")
    assert code == 0, out
    assert out.strip().splitlines()[-1] == "done: all 12 units of questions are done"
    assert len(stub.created) == 1 and stub.chat_calls == 0
    code, out = glan("batch", "status", "--json")
    (rec,) = json.loads(out)["batches"]
    assert (rec["status"], rec["requests"], rec["completed"], rec["imported"]) == (
        "completed", 12, 12, 1
    )  # fmt: skip

    code, out = glan("generate", "answers", PHYSICS, "--batch", "--no-wait")
    assert code == 0, out
    job = job_of(db, "answers")
    assert "12 units wait in batches" in out and job["id"] in out
    assert job["status"] == "running"
    code, out = glan("batch", "status", job["id"])  # asks the API: now in progress
    assert code == 0 and "in_progress" in out, out
    code, out = glan("batch", "cancel", job["id"])
    assert code == 0 and "1 batch(es) cancelling or cancelled" in out, out
    assert job_of(db, "answers")["status"] == "cancelled"

    # the next run reads what the cancelled batch did (nothing) and ends incomplete; the
    # one after submits its requests again
    code, out = glan("generate", "answers", PHYSICS, "--batch")
    assert code == 1 and "answers did not finish (incomplete)" in out, out
    code, out = glan("generate", "answers", PHYSICS, "--batch")
    assert code == 0 and "done: all 12 units of answers are done" in out, out
    assert len(stub.created) == 3
    code, out = glan("batch", "status", job["id"])
    assert "cancelled" in out and "completed" in out
    code, out = glan("generate", "answers", PHYSICS, "--batch", "--executor", "ray")
    assert code == 2 and "--batch" in out


def test_export_and_import_for_an_offline_runner(db: Path, tmp_path: Path) -> None:
    requests = tmp_path / "requests.jsonl"
    args = ("questions", PHYSICS, "--n", "10", "--seed", "4", "--out", str(requests))
    code, out = glan("batch", "export", *args)
    assert code == 0 and "10 requests written" in out, out
    lines = [json.loads(x) for x in requests.read_bytes().splitlines()]
    assert len(lines) == 10 and {x["method"] for x in lines} == {"POST"}
    assert job_of(db, "questions")["status"] == "incomplete"
    results = tmp_path / "results.jsonl"
    results.write_bytes(answer_offline(requests.read_bytes()))
    code, out = glan("batch", "import", str(results))
    assert code == 0 and "completed" in out and "10 done" in out, out
    code, out = glan("batch", "import", str(results))  # again: nothing changes
    assert code == 0 and "0 done" in out and "10 lines skipped" in out, out
    job = job_of(db, "questions")
    assert (job["status"], job["done"]) == ("completed", 10)
    # the same job generated again has nothing left to do
    code, out = glan("generate", "questions", PHYSICS, "--n", "10", "--seed", "4", "--batch")
    assert code == 0 and "10/10 done (10 earlier)" in out, out
    code, out = glan("batch", "import", str(tmp_path / "missing.jsonl"))
    assert code == 2


def test_batch_commands_through_a_running_server(
    db: Path, stub: BatchStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    with run_api(api_settings(db, stub, batch_poll_s=0.01)) as api:  # type: ignore[arg-type]
        monkeypatch.setenv("GLAN_SERVER_URL", api.url)
        code, out = glan("generate", "questions", PHYSICS, "--n", "8", "--seed", "2", "--batch")
        assert code == 0 and "done: all 8 units of questions are done" in out, out
        (job,) = [j for j in api.store.jobs.all() if j["kind"] == "questions"]
        assert job["executor"] == "batch" and len(stub.created) == 1
        code, out = glan("batch", "status", job["id"], "--json")
        (rec,) = json.loads(out)["batches"]
        assert rec["status"] == "completed" and rec["imported"] == 1

        stub.hold = threading.Event()  # batches stay in progress until set
        code, out = glan("generate", "answers", PHYSICS, "--batch", "--no-wait")
        assert code == 0 and "which submits its batches" in out, out
        deadline = time.monotonic() + 30
        while True:  # the server plans, submits and polls the job's batch
            assert time.monotonic() < deadline, "the server did not follow its batch"
            answers = [j for j in api.store.jobs.all() if j["kind"] == "answers"]
            if (
                answers
                and answers[0]["id"] in out
                and [
                    b
                    for b in api.store.jobs.batches(answers[0]["id"])
                    if b["status"] == "in_progress"
                ]
            ):
                break
            time.sleep(0.02)
        job_id = answers[0]["id"]
        assert glan("batch", "status", job_id)[1].count("in_progress") == 1
        code, out = glan("batch", "cancel", job_id)
        assert code == 0 and "cancelling or cancelled" in out, out
        assert stub.created[-1].status in ("cancelling", "cancelled")
        assert api.store.jobs.get(job_id)["status"] == "cancelled"  # type: ignore[index]
        code, out = glan("batch", "export", "answers", PHYSICS)
        assert code == 1 and "holds the store" in out

        # the coverage options make the same job through the server as here
        stub.hold.set()
        args = ("generate", "questions", PHYSICS, "--min-per-concept", "1", "--batch")
        code, out = glan(*args)
        assert code == 0 and "done: all" in out, out
        (covering,) = [j for j in api.store.jobs.all() if '"min_per_concept": 1' in j["params"]]
        assert covering["executor"] == "batch" and covering["status"] == "completed"


def test_a_batch_dry_run_is_priced_at_the_batch_price(
    db: Path, stub: BatchStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text("models:\n  stub: {input: 4000, output: 8000}\n", encoding="utf-8")
    monkeypatch.setenv("GLAN_PRICES", str(prices))
    args = ("generate", "questions", PHYSICS, "--n", "10", "--dry-run")

    def cost(out: str) -> float:
        return float(out.split("estimated total: $", 1)[1].split()[0].replace(",", ""))

    live, batch = cost(glan(*args)[1]), cost(glan(*args, "--batch")[1])
    assert batch == pytest.approx(live / 2, rel=0.02) and live > 0
    with run_api(api_settings(db, stub, prices=prices)) as api:  # type: ignore[arg-type]
        monkeypatch.setenv("GLAN_SERVER_URL", api.url)
        assert cost(glan(*args, "--batch")[1]) == pytest.approx(batch, rel=0.02)
    assert not stub.batches


def test_sigkill_while_waiting_on_a_batch_then_rerun_submits_nothing_twice(
    db: Path, stub: BatchStub
) -> None:
    stub.hold = threading.Event()
    command = ["generate", "questions", PHYSICS, "--n", "20", "--seed", "11", "--batch"]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GLAN_")}
    environment.update(env(db, stub))
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", *command], cwd=ROOT, env=environment,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while stub.polls < 3:  # submitted, and polled while it waits
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the run never waited on its batch"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    with Store.open(StoreConfig(db_path=db)) as store:
        (rec,) = store.jobs.batches()
        assert rec["remote_id"] == stub.created[0].id and rec["status"] == "in_progress"
        assert integrity_problems(store) == []

    stub.hold.set()
    again = subprocess.run(
        [sys.executable, "-m", "server.cli", *command], cwd=ROOT, env=environment,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert "done: all 20 units of questions are done" in again.stdout
    assert len(stub.created) == 1  # polled again, not submitted again
    answered = Counter(x["custom_id"] for x in stub.created[0].answered)
    assert len(answered) == 20 and set(answered.values()) == {1}
    with Store.open(StoreConfig(db_path=db)) as store:
        assert integrity_problems(store) == []
        units = [u for j in store.jobs.all() for u in store.jobs.units(j["id"])]
        assert sorted(u["id"] for u in units) == sorted(answered)
        assert {u["status"] for u in units} == {"done"}


def test_a_server_stopped_while_it_follows_batches_follows_them_again_when_it_starts(
    db: Path, stub: BatchStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub.hold = threading.Event()  # in progress until set
    with run_api(api_settings(db, stub, batch_poll_s=0.01)) as api:  # type: ignore[arg-type]
        monkeypatch.setenv("GLAN_SERVER_URL", api.url)
        args = ("generate", "questions", PHYSICS, "--n", "12", "--seed", "5", "--batch")
        code, out = glan(*args, "--no-wait")
        assert code == 0, out
        deadline = time.monotonic() + 30
        while not [b for b in api.store.jobs.batches() if b["status"] == "in_progress"]:
            assert time.monotonic() < deadline, "the server did not submit the batch"
            time.sleep(0.02)
    # stopped while it followed the batch: the job waits as interrupted, its batch goes on
    with Store.open(StoreConfig(db_path=db)) as store:
        (job,) = store.jobs.all()
        assert (job["status"], job["executor"]) == ("interrupted", "batch")
    stub.hold.set()
    with run_api(api_settings(db, stub, batch_poll_s=0.01)) as api:  # type: ignore[arg-type]
        deadline = time.monotonic() + 60
        while api.store.jobs.get(job["id"])["status"] != "completed":  # type: ignore[index]
            assert time.monotonic() < deadline, "the server did not resume the batch job"
            time.sleep(0.05)
        assert len(stub.created) == 1  # followed again, not submitted again
        assert stub.chat_calls == 0  # nor run live
        assert api.store.jobs.get(job["id"])["done"] == 12  # type: ignore[index]
        assert integrity_problems(api.store) == []
