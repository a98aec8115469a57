"""Killing `glan generate` with SIGKILL mid-run, then running it again, loses nothing and
duplicates nothing: the graph ends as an uninterrupted run's does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from graph.config import StoreConfig
from graph.model import COVERS, FROM, INSTRUCTION, SUBJECT
from graph.store import Store
from tests.llm_stub import Reply, fake_glan_model, run_stub
from tests.test_sampling import fill

ROOT = Path(__file__).parents[1]
SCOPE = "Natural Sciences/Physical Sciences/Physics"
N = 40


def prepare(db: Path) -> None:
    with Store.open(StoreConfig(db_path=db)) as store:
        fill(store, subjects=3, sessions=5, concepts=5)


def generate(db: Path, base_url: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "GLAN_DB_PATH": str(db),
        "GLAN_LLM_BASE_URL": base_url,
        "GLAN_MODEL": "stub",
        "GLAN_LLM_CONCURRENCY": "4",
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server.cli",
            "generate",
            "questions",
            SCOPE,
            "--n",
            str(N),
            "--seed",
            "11",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def snapshot(db: Path) -> dict[str, Any]:
    with Store.open(StoreConfig(db_path=db)) as store:
        ids = store.instruction_ids_in_scope(None)
        nodes = store.get_many(ids)
        jobs = [j for j in store.jobs() if j["kind"] == "questions"]
        units = [u for j in jobs for u in store.job_units(j["id"])]
        return {
            "instructions": store.count_kind(INSTRUCTION),
            "subjects": store.count_kind(SUBJECT),
            "ids": sorted(ids),
            "combos": sorted(n.props["combo_key"] for n in nodes.values()),
            "covers": {k: sorted(v) for k, v in store.linked(COVERS, ids).items()},
            "from": {k: sorted(v) for k, v in store.linked(FROM, ids).items()},
            "units": sorted((u["id"], u["status"]) for u in units),
            "jobs": [(j["status"], j["done"], j["failed"], j["total"]) for j in jobs],
        }


def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    slow = fake_glan_model()

    def handler(body: dict[str, Any], n: int) -> Reply:
        reply = slow(body, n)
        reply.delay_s = 0.05
        return reply

    reference, killed = tmp_path / "reference.lbug", tmp_path / "killed.lbug"
    prepare(reference)
    prepare(killed)
    with run_stub(handler) as stub:
        done = generate(reference, stub.base_url)
        out, _ = done.communicate(timeout=120)
        assert done.returncode == 0, out

        kills = 0
        for threshold in (8, 20):  # two kills at different points of the run
            start = stub.calls
            proc = generate(killed, stub.base_url)
            deadline = time.monotonic() + 60
            while stub.calls - start < threshold and proc.poll() is None:
                assert time.monotonic() < deadline, "the run made no progress"
                time.sleep(0.01)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
            proc.wait(30)
        assert kills == 2

        final = generate(killed, stub.base_url)
        out, _ = final.communicate(timeout=120)
        assert final.returncode == 0, out
        assert "earlier" in out

    want, got = snapshot(reference), snapshot(killed)
    assert got["instructions"] == N == len(set(got["ids"]))
    assert len(set(got["combos"])) == N
    assert got["units"] == want["units"] and all(s == "done" for _, s in got["units"])
    assert got == want
