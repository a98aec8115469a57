"""What the quality gate costs: the judge stage and the validators, beside the answers stage.

A loopback OpenAI-compatible stub (bench/loopback_stub.py) in a process of its own answers
at once. Questions are generated first (not timed); then the answers stage and the judge
stage each run over the same pairs, in this process, with the same concurrency: their
pairs/s side by side (each is one request per pair, so the judge's figure against the
answers' is what its bigger prompt, carrying the question and the answer, and its JSON
reply cost glan). Then the validators alone: every stored question, answer and judgement
checked again as `accept` checks it (the stage's request rebuilt, its prompt scanned),
in pairs/s, once with the stub's short answers and once with answers of about 2,000
characters, the length of a real one.

    python bench/quality.py --pairs 2000

Prints a table and a final JSON line.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.memory import MemoryWatch  # noqa: E402
from bench.pipeline_overhead import SCOPE, prepare, stub_process  # noqa: E402
from generators.jobs import Stage, UnitSpec  # noqa: E402
from generators.llm import LLMClient, LLMConfig, Reply, StageParams  # noqa: E402
from generators.pipeline import PipelineOptions, run_stages  # noqa: E402
from generators.stages import STAGES  # noqa: E402
from graph.config import StoreConfig  # noqa: E402
from graph.store import Store  # noqa: E402

PARAMS = StageParams(model="stub", temperature=1.0, top_p=0.95)


def params_for(stage: str) -> StageParams:
    return PARAMS


async def run(store: Store, base_url: str, stages: list[str], n: int, concurrency: int) -> Any:
    llm = LLMClient(LLMConfig(base_url=base_url, concurrency=concurrency))
    try:
        return await run_stages(
            store,
            llm,
            params_for,
            stages,
            SCOPE,
            PipelineOptions(n=n, seed=1),
            concurrency=concurrency,
        )
    finally:
        await llm.aclose()


def timed(store: Store, base_url: str, stage: str, n: int, concurrency: int) -> dict[str, Any]:
    start = time.perf_counter()
    (result,) = asyncio.run(run(store, base_url, [stage], n, concurrency))
    seconds = time.perf_counter() - start
    return {"done": result.done, "failed": result.failed, "pairs_per_s": result.done / seconds}


def replies(store: Store, stage_name: str) -> tuple[Stage, list[tuple[UnitSpec, Any, Reply]]]:
    """The stage's done units with their requests rebuilt and their replies as stored."""
    (job,) = [j for j in store.jobs.all() if j["kind"] == stage_name]
    llm = LLMClient(LLMConfig(base_url="http://127.0.0.1:9/v1"))  # builds requests, sends none
    stage = STAGES[stage_name](store, llm, PARAMS, json.loads(job["params"]))
    stage.job_id = job["id"]
    rows = [u for u in store.jobs.units(job["id"]) if u["status"] == "done"]
    units = [UnitSpec(u["id"], u["target_id"], json.loads(u["payload"])) for u in rows]
    stage.prepare(units)
    out = []
    for unit, row in zip(units, rows, strict=True):
        request = stage.request(unit)
        out.append((unit, request, Reply(row["raw"] or "", finish_reason="stop")))
    return stage, out


def validate_rate(stage: Stage, found: list[tuple[UnitSpec, Any, Reply]], repeat: int) -> float:
    """Checks per second: `accept`'s validation of each stored reply, parsed beforehand."""
    parsed = [(u, r, reply, r.parse(reply.text)[0]) for u, r, reply in found]
    start = time.perf_counter()
    for _ in range(repeat):
        for unit, request, reply, value in parsed:
            _, error, dropped = stage.check(unit, request, reply, value, None)
            assert error is None and not dropped, (error, dropped)
    return len(parsed) * repeat / (time.perf_counter() - start)


def long_answer(reply: Reply) -> Reply:
    text = " ".join([reply.text] * (2000 // max(1, len(reply.text)) + 1))[:2000]
    return Reply(text, finish_reason="stop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="glan-bench-quality-"))
    with (
        MemoryWatch() as watch,
        stub_process() as base_url,
        Store.open(StoreConfig(db_path=folder / "q.lbug")) as store,
    ):
        prepare(store, subjects=max(10, args.pairs // 100))
        asyncio.run(run(store, base_url, ["questions"], args.pairs, args.concurrency))
        answers = timed(store, base_url, "answers", args.pairs, args.concurrency)
        judge = timed(store, base_url, "judge", args.pairs, args.concurrency)
        repeat = max(1, 2000 // max(1, args.pairs))  # enough checks to time
        rates = {}
        for name in ("questions", "answers", "judge"):
            stage, found = replies(store, name)
            rates[name] = validate_rate(stage, found, repeat)
            if name == "answers":
                longer = [(u, r, long_answer(reply)) for u, r, reply in found]
                rates["answers_2k"] = validate_rate(stage, longer, repeat)
    # one pair is checked three times: its question, its answer and its judgement
    per_pair = sum(1 / rates[n] for n in ("questions", "answers", "judge"))
    per_pair_2k = sum(1 / rates[n] for n in ("questions", "answers_2k", "judge"))
    results = {
        "pairs": min(answers["done"], judge["done"]),
        "concurrency": args.concurrency,
        "answers_pairs_per_s": round(answers["pairs_per_s"], 1),
        "judge_pairs_per_s": round(judge["pairs_per_s"], 1),
        "judge_vs_answers": round(judge["pairs_per_s"] / answers["pairs_per_s"], 3),
        "failed_units": answers["failed"] + judge["failed"],
        "validate_question_per_s": round(rates["questions"]),
        "validate_answer_per_s": round(rates["answers"]),
        "validate_answer_2k_per_s": round(rates["answers_2k"]),
        "validate_judgement_per_s": round(rates["judge"]),
        "validate_pairs_per_s": round(1 / per_pair),
        "validate_pairs_2k_per_s": round(1 / per_pair_2k),
        # the validators' CPU per pair against the answers stage's wall time per pair
        "validator_share_of_answers": round(per_pair_2k * answers["pairs_per_s"], 4),
        **watch.figures(),
    }
    print(f"{'measure':<30}{'value':>14}")
    for key, value in results.items():
        print(f"{key:<30}{value:>14,}" if not isinstance(value, str) else f"{key:<30}{value:>14}")
    print(json.dumps({"bench": "quality", **results}))


if __name__ == "__main__":
    main()
