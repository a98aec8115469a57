"""Killing `glan generate` with SIGKILL mid-run, then running it again, loses nothing and
duplicates nothing: the graph ends as an uninterrupted run's does.

The kill points are drawn from a seed: some before the first model call (while the store
opens and the job is planned), the rest after a random number of calls. CI runs a bounded
number of kills; `--full-reliability` (or GLAN_RELIABILITY_FULL=1) runs many more.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from graph.config import StoreConfig
from graph.store import Store
from tests.graph_checks import integrity_problems, snapshot
from tests.llm_stub import Reply, fake_glan_model, run_stub
from tests.test_sampling import fill

ROOT = Path(__file__).parents[1]
SCOPE = "Natural Sciences/Physical Sciences/Physics"


def prepare(db: Path) -> None:
    with Store.open(StoreConfig(db_path=db)) as store:
        fill(store, subjects=3, sessions=5, concepts=5)


def generate(db: Path, base_url: str, n: int) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "GLAN_DB_PATH": str(db),
        "GLAN_LLM_BASE_URL": base_url,
        "GLAN_MODEL": "stub",
        "GLAN_LLM_CONCURRENCY": "4",
    }
    command = ["generate", "questions", SCOPE, "--n", str(n), "--seed", "11"]
    return subprocess.Popen(
        [sys.executable, "-m", "server.cli", *command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read(db: Path) -> tuple[dict[str, Any], list[str]]:
    with Store.open(StoreConfig(db_path=db)) as store:
        return snapshot(store), integrity_problems(store)


def test_sigkill_at_seeded_points_then_rerun_equals_an_uninterrupted_run(
    tmp_path: Path, full_reliability: bool
) -> None:
    kills_wanted, n = (40, 400) if full_reliability else (10, 40)
    slow = fake_glan_model()

    def handler(body: dict[str, Any], call: int) -> Reply:
        reply = slow(body, call)
        reply.delay_s = 0.02
        return reply

    reference, killed = tmp_path / "reference.lbug", tmp_path / "killed.lbug"
    prepare(reference)
    prepare(killed)
    draw = random.Random(2024)
    started = time.monotonic()
    with run_stub(handler) as stub:
        done = generate(reference, stub.base_url, n)
        out, _ = done.communicate(timeout=120)
        assert done.returncode == 0, out

        kills, runs, at_calls = 0, 0, []
        while kills < kills_wanted:
            runs += 1  # a run that finishes before its kill point is not a kill
            assert runs <= kills_wanted * 3, f"only {kills} of {runs} runs were killed"
            # a few units per kill, so that the runs before the last leave work to do
            after_calls = 0 if draw.random() < 0.2 else draw.randint(1, n // (kills_wanted + 1))
            start = stub.calls
            proc = generate(killed, stub.base_url, n)
            deadline = time.monotonic() + 60
            if after_calls == 0:  # while starting: opening the store, planning
                time.sleep(draw.uniform(0.05, 1.0))
            while stub.calls - start < after_calls and proc.poll() is None:
                assert time.monotonic() < deadline, "the run made no progress"
                time.sleep(0.002)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
                at_calls.append(stub.calls - start)
            proc.wait(30)
            assert read(killed)[1] == [], f"after the kill at {at_calls[-1:]} calls"

        final = generate(killed, stub.base_url, n)
        out, _ = final.communicate(timeout=120)
        assert final.returncode == 0, out
    took = time.monotonic() - started
    print(
        f"\nSIGKILL: {kills} kills of `glan generate` ({n} units) at calls {at_calls}, {took:.0f} s"
    )

    want, want_problems = read(reference)
    got, problems = read(killed)
    assert want_problems == [] and problems == []
    assert len(got["instructions"]) == n
    assert all(status == "done" for _, status in got["units"])
    assert got == want
