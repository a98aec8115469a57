"""The cluster executor's pairs/s beside the live executor's, against the same loopback stub.

The stub (tests/llm_stub.py's `fake_glan_model`) runs in a process of its own; a bare
aiohttp loop first measures what it serves (its ceiling, requests/s). Then, for each
executor, on a fresh copy of one store, the pipeline runs as a user runs it: `glan generate
questions SCOPE --n N` and `glan generate answers SCOPE`, each a process of its own, with
`--executor ray` for the cluster executor (each command starts a local Ray on this machine:
`ray.init()` with all its CPUs, then sends its requests from Ray's workers). A third
`glan generate answers` with nothing left to do is each executor's fixed cost of a command
(a Ray is not started when nothing is left to send); starting and stopping a local Ray,
which each command with work does, is timed on its own. Figures: pairs/s (one pair is two
requests) over the two commands, and over what they took beyond those fixed costs.

No target: on a 2-core machine the local Ray's processes share the cores with the stub and
the writer; a cluster's figure is its workers' and endpoints', not this one.

    python bench/cluster_throughput.py --pairs 2000

Prints a table and a final JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.memory import MemoryWatch  # noqa: E402
from graph.config import StoreConfig  # noqa: E402
from graph.store import Store  # noqa: E402
from tests.conftest import SMALL_TAXONOMY  # noqa: E402

SCOPE = "Natural Sciences/Physical Sciences/Physics"
STUB = """
import sys, threading
sys.path.insert(0, {root!r})
from tests.llm_stub import fake_glan_model, run_stub
with run_stub(fake_glan_model()) as stub:
    print(stub.base_url, flush=True)
    sys.stdin.read()  # until the bench closes it
"""


def prepare(db: Path, subjects: int) -> None:
    with Store.open(StoreConfig(db_path=db)) as store:
        store.taxonomy.load(SMALL_TAXONOMY)
        disc = store.taxonomy.node(SCOPE)
        ids = store.syllabi.write_subjects(
            disc.id, [{"name": f"Subject {i}"} for i in range(subjects)], {"model": "bench"}
        )
        for sid in ids:
            sessions = [
                {"title": f"Session {x}", "concepts": [f"c {sid[-6:]} {x}.{c}" for c in range(5)]}
                for x in range(10)
            ]
            store.syllabi.write_syllabus(sid, sessions, {"model": "bench"})


@contextmanager
def stub_process() -> Iterator[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", STUB.format(root=str(ROOT))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        yield child.stdout.readline().strip()
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)


def ceiling(base_url: str, requests: int, concurrency: int) -> float:
    """Requests/s a bare aiohttp loop gets from the stub."""
    import aiohttp

    body = {
        "model": "stub",
        "messages": [{"role": "user", "content": "Answer this homework question. " * 8}],
        "temperature": 0.7,
        "top_p": 0.95,
    }

    async def run() -> float:
        left = requests
        async with aiohttp.ClientSession() as session:

            async def loop() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    async with session.post(f"{base_url}/chat/completions", json=body) as r:
                        await r.read()

            start = time.perf_counter()
            await asyncio.gather(*(loop() for _ in range(concurrency)))
            return requests / (time.perf_counter() - start)

    return asyncio.run(run())


def glan(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"glan {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return wall, done.stdout


def done_of(text: str, stage: str) -> int:
    found = re.findall(rf"^{stage}\s+\S+\s+(\d+)/(\d+) done", text, re.MULTILINE)
    if not found:
        raise RuntimeError(f"no summary line for {stage} in:\n{text[-2000:]}")
    return int(found[-1][0])


RAY_START = """
import logging, time
import ray
start = time.perf_counter()
ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
ray.shutdown()
print(time.perf_counter() - start)
"""


def ray_start_s() -> float:
    """What starting and stopping a local Ray takes here, as each command with work does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    done = subprocess.run(
        [sys.executable, "-c", RAY_START], env=env, capture_output=True, text=True, check=True
    )
    return float(done.stdout.strip().splitlines()[-1])


def one_executor(
    executor: str, template: Path, folder: Path, base_url: str, args: argparse.Namespace
) -> dict[str, float]:
    work = folder / executor
    shutil.copytree(template, work)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GLAN_", "RAY_"))}
    env.update(
        GLAN_DB_PATH=str(work / "p.lbug"),
        GLAN_LLM_BASE_URL=base_url,
        GLAN_MODEL="stub",
        GLAN_LLM_CONCURRENCY=str(args.concurrency),
        GLAN_RAY_ACTORS=str(args.actors),
        GLAN_RAY_BATCH_SIZE=str(args.concurrency),
    )
    flags = ["--executor", "ray"] if executor == "ray" else []
    questions = ["generate", "questions", SCOPE, "--n", str(args.pairs), "--seed", "1", *flags]
    answers = ["generate", "answers", SCOPE, *flags]
    q_wall, q_out = glan(questions, env)
    a_wall, a_out = glan(answers, env)
    noop_wall, _ = glan(answers, env)  # nothing left: the fixed cost of a command
    pairs = done_of(a_out, "answers")
    if done_of(q_out, "questions") != pairs or pairs != args.pairs:
        raise RuntimeError(f"{executor}: {pairs} pairs done of {args.pairs}")
    wall = q_wall + a_wall
    # beyond the fixed cost of two commands (for Ray, its start and stop too)
    fixed = 2 * noop_wall + (2 * ray_start_s() if executor == "ray" else 0.0)
    return {
        f"{executor}_pairs": pairs,
        f"{executor}_questions_wall_s": q_wall,
        f"{executor}_answers_wall_s": a_wall,
        f"{executor}_noop_wall_s": noop_wall,
        f"{executor}_pairs_per_s": pairs / wall,
        f"{executor}_fixed_s": fixed,
        f"{executor}_pairs_per_s_beyond_start": pairs / max(1e-3, wall - fixed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--actors", type=int, default=1, help="Ray workers sending requests")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="glan-cluster-bench-"))
    template = folder / "template"
    template.mkdir()
    prepare(template / "p.lbug", max(10, args.pairs // 100))
    found: dict[str, float] = {}
    try:
        with MemoryWatch() as watch, stub_process() as base_url:
            found["stub_ceiling_req_per_s"] = ceiling(
                base_url, max(1000, args.pairs), args.concurrency
            )
            for executor in ("live", "ray"):
                found.update(one_executor(executor, template, folder, base_url, args))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    found["ray_to_live"] = found["ray_pairs_per_s"] / found["live_pairs_per_s"]
    found.update(watch.figures())  # the workers and the stub are children of this process
    print(f"{'measure':<36}{'value':>12}")
    for key, value in found.items():
        print(f"{key:<36}{value:>12,.3f}")
    figures: dict[str, Any] = {k: round(v, 4) for k, v in found.items()}
    figures.update(concurrency=args.concurrency, actors=args.actors)
    print(json.dumps({"bench": "cluster_throughput", **figures}))


if __name__ == "__main__":
    main()
