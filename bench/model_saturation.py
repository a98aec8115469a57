"""Does the pipeline keep a real model server busy? The bundled model, served by llama.cpp.

The pipeline generates questions and answers against the bundled SmolLM2-135M-Instruct on
loopback while every request it sends is recorded. Then a plain concurrent loop replays
exactly those requests (same prompts, schema, max_tokens and seed, so the server decodes
the same tokens) at the same parallelism. The figure is the pipeline's tokens/s over the
replay's: what glan's own work between calls (sampling, rendering, validation, one
transaction per unit) costs a model that is never idle in the replay. Target: >= 0.9.
Prints a table and a final JSON line.

    python bench/model_saturation.py --pairs 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.memory import MemoryWatch  # noqa: E402
from bench.pipeline_overhead import prepare  # noqa: E402
from generators.llm import LLMClient, LLMConfig, StageParams  # noqa: E402
from generators.local_model import start_local_model  # noqa: E402
from generators.pipeline import PipelineOptions, run_stages  # noqa: E402
from graph.config import StoreConfig  # noqa: E402
from graph.store import Store  # noqa: E402

SCOPE = "Natural Sciences/Physical Sciences/Physics"


async def run_pipeline(
    store: Store, base_url: str, model: str, pairs: int, concurrency: int, max_tokens: int
) -> tuple[dict[str, Any], list[bytes]]:
    """Questions then answers through the pipeline; the bodies of the requests it sent."""
    sent: list[bytes] = []
    busy = {"s": 0.0, "since": 0.0, "in_flight": 0}

    async def record(request: httpx.Request) -> None:
        if request.url.path.endswith("/chat/completions"):
            sent.append(request.content)
            if busy["in_flight"] == 0:
                busy["since"] = time.perf_counter()
            busy["in_flight"] += 1

    async def answered(response: httpx.Response) -> None:
        if response.request.url.path.endswith("/chat/completions"):
            busy["in_flight"] -= 1
            if busy["in_flight"] == 0:
                busy["s"] += time.perf_counter() - busy["since"]

    http = httpx.AsyncClient(timeout=600, event_hooks={"request": [record], "response": [answered]})
    llm = LLMClient(
        LLMConfig(base_url=base_url, concurrency=concurrency, structured="json_object_schema"),
        http_client=http,
    )

    def params(stage: str) -> StageParams:
        temperature = 0.7 if stage == "answers" else 1.0
        return StageParams(
            model=model, temperature=temperature, top_p=0.95, max_tokens=max_tokens, seed=1
        )

    try:
        start = time.perf_counter()
        results = await run_stages(
            store,
            llm,
            params,
            ["questions", "answers"],
            SCOPE,
            PipelineOptions(n=pairs, seed=1),
            concurrency=concurrency,
        )
        seconds = time.perf_counter() - start
    finally:
        await http.aclose()
    return {
        "seconds": seconds,
        "model_busy_s": busy["s"],
        "requests": llm.calls,
        "pairs": min(r.done for r in results),
        "prompt_tokens": llm.usage.prompt_tokens,
        "completion_tokens": llm.usage.completion_tokens,
    }, sent


async def warm_up(base_url: str, model: str) -> None:
    """One short request first, so neither run pays for the server's cold start."""
    async with httpx.AsyncClient(timeout=600) as client:
        body = {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
        (await client.post(f"{base_url}/chat/completions", json=body)).raise_for_status()


async def replay(base_url: str, bodies: list[bytes], concurrency: int) -> dict[str, Any]:
    """The same requests from a bare client: the server's own throughput for this work."""
    slots = asyncio.Semaphore(concurrency)
    prompt = completion = 0
    url = f"{base_url}/chat/completions"
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(timeout=600) as client:

        async def one(body: bytes) -> None:
            nonlocal prompt, completion
            async with slots:
                r = await client.post(url, content=body, headers=headers)
                r.raise_for_status()
                usage = r.json().get("usage") or {}
                prompt += int(usage.get("prompt_tokens") or 0)
                completion += int(usage.get("completion_tokens") or 0)

        start = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "prompt_tokens": prompt, "completion_tokens": completion}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=8, help="question+answer pairs")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight")
    parser.add_argument("--threads", type=int, default=1, help="the model server's threads")
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="glan-bench-"))
    with (
        MemoryWatch() as watch,
        start_local_model(n_threads=args.threads) as server,
        Store.open(StoreConfig(db_path=folder / "m.lbug")) as store,
    ):
        prepare(store, subjects=2)
        asyncio.run(warm_up(server.base_url, server.model))
        run, bodies = asyncio.run(
            run_pipeline(
                store, server.base_url, server.model, args.pairs, args.concurrency, args.max_tokens
            )
        )
        bare = asyncio.run(replay(server.base_url, bodies, args.concurrency))
    pipe_tps = run["completion_tokens"] / run["seconds"]
    bare_tps = bare["completion_tokens"] / bare["seconds"]
    results = {
        "pairs": run["pairs"],
        "requests": run["requests"],
        "replayed_requests": len(bodies),
        "concurrency": args.concurrency,
        "server_threads": args.threads,
        "pipeline_s": round(run["seconds"], 2),
        "pipeline_model_busy_s": round(run["model_busy_s"], 2),
        "replay_s": round(bare["seconds"], 2),
        "pipeline_completion_tokens": run["completion_tokens"],
        "replay_completion_tokens": bare["completion_tokens"],
        "pipeline_tokens_per_s": round(pipe_tps, 1),
        "server_tokens_per_s": round(bare_tps, 1),
        "ratio": round(pipe_tps / bare_tps, 3) if bare_tps else 0.0,
        # this process and the one it starts (bench/memory.py)
        **watch.figures(),
    }
    print(f"{'measure':<30}{'value':>12}{'target':>10}")
    for key, value in results.items():
        goal = 0.9 if key == "ratio" else None
        print(f"{key:<30}{value:>12,}{'' if goal is None else f'{goal:>10}'}")
    print(json.dumps({"bench": "model_saturation", **results}))


if __name__ == "__main__":
    main()
