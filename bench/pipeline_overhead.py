"""What glan's own machinery costs per generated pair, against a zero-latency model.

An OpenAI-compatible stub on loopback answers instantly, in a process of its own (in this
one it would take the interpreter lock from the pipeline it measures). First a plain
concurrent loop measures the stub's ceiling (requests/s); then the pipeline generates
questions and answers through the same stub. One pair takes two calls (question, answer),
so the figure is pipeline pairs/s against ceiling/2 pairs/s. Prints a table and a final
JSON line.

    python bench/pipeline_overhead.py --pairs 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.memory import MemoryWatch  # noqa: E402
from generators.llm import LLMClient, LLMConfig, StageParams  # noqa: E402
from generators.pipeline import PipelineOptions, run_stages  # noqa: E402
from graph.config import StoreConfig  # noqa: E402
from graph.model import SUBJECT  # noqa: E402
from graph.store import Store  # noqa: E402
from tests.conftest import SMALL_TAXONOMY  # noqa: E402


async def ceiling(base_url: str, requests: int, concurrency: int) -> float:
    """Requests per second a bare concurrent client gets from the stub."""
    body = {
        "model": "stub",
        "messages": [{"role": "user", "content": 'Answer as JSON: {"question": "..."}'}],
    }
    slots = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:

        async def one() -> None:
            async with slots:
                r = await client.post("/chat/completions", json=body)
                r.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(requests)))
        return requests / (time.perf_counter() - start)


STUB = """
import sys, time
sys.path.insert(0, {root!r})
from tests.llm_stub import fake_glan_model, run_stub
with run_stub(fake_glan_model()) as stub:
    print(stub.base_url, flush=True)
    while True:
        time.sleep(3600)
"""


@contextmanager
def stub_process() -> Iterator[str]:
    """The loopback stub in a child process; its base URL."""
    code = STUB.format(root=str(Path(__file__).resolve().parents[1]))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        yield child.stdout.readline().strip()
    finally:
        child.terminate()
        child.wait(10)


def prepare(store: Store, subjects: int) -> None:
    store.taxonomy.load(SMALL_TAXONOMY)
    disc = store.taxonomy.node("Natural Sciences/Physical Sciences/Physics")
    ids = store.syllabi.write_subjects(
        disc.id, [{"name": f"Subject {i}"} for i in range(subjects)], {"model": "bench"}
    )
    for sid in ids:
        store.syllabi.write_syllabus(
            sid,
            [
                {
                    "title": f"Session {x}",
                    "concepts": [f"concept {sid[-6:]} {x}.{c}" for c in range(5)],
                }
                for x in range(10)
            ],
            {"model": "bench"},
        )


async def pipeline(store: Store, base_url: str, pairs: int, concurrency: int) -> dict[str, Any]:
    llm = LLMClient(LLMConfig(base_url=base_url, concurrency=concurrency))
    params = StageParams(model="stub", temperature=1.0, top_p=0.95)
    try:
        start = time.perf_counter()
        results = await run_stages(
            store,
            llm,
            lambda stage: params,
            ["questions", "answers"],
            "Natural Sciences/Physical Sciences/Physics",
            PipelineOptions(n=pairs, seed=1),
            concurrency=concurrency,
        )
        seconds = time.perf_counter() - start
    finally:
        await llm.aclose()
    done = min(r.done for r in results)
    return {"pairs": done, "seconds": seconds, "pairs_per_s": done / seconds, "calls": llm.calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="glan-bench-"))
    with (
        MemoryWatch() as watch,
        stub_process() as base_url,
        Store.open(StoreConfig(db_path=folder / "p.lbug")) as store,
    ):
        prepare(store, subjects=max(10, args.pairs // 100))
        assert store.taxonomy.ids_in_scope(None, SUBJECT)
        stub_rps = asyncio.run(ceiling(base_url, args.pairs * 2, args.concurrency))
        run = asyncio.run(pipeline(store, base_url, args.pairs, args.concurrency))
    results = {
        "pairs": run["pairs"],
        "stub_ceiling_req_per_s": round(stub_rps, 1),
        "stub_ceiling_pairs_per_s": round(stub_rps / 2, 1),
        "pipeline_pairs_per_s": round(run["pairs_per_s"], 1),
        "ratio": round(run["pairs_per_s"] / (stub_rps / 2), 3),
        "concurrency": args.concurrency,
        # this process and the one it starts (bench/memory.py)
        **watch.figures(),
    }
    targets = {"ratio": 0.5, "pipeline_pairs_per_s": 1000}
    print(f"{'measure':<28}{'value':>12}{'target':>10}")
    for key, value in results.items():
        goal = targets.get(key)
        print(f"{key:<28}{value:>12,}{'' if goal is None else f'{goal:>10,}'}")
    print(json.dumps({"bench": "pipeline_overhead", **results}))


if __name__ == "__main__":
    main()
