"""The batch executor's own cost: a job's requests written as batch input lines, and an
output file in the Batch API's format read back into the store, units per second each way.

A questions job of `--units` units over a synthetic syllabus index is planned (and stored),
then its pending units become input lines (`export_requests`: bulk reads of their inputs,
the exact chat request of each, one JSON line each), which is what the batch executor
uploads. An output file answering every line is made here (shuffled, as the API returns
it; not timed) and imported (`import_results`: each answer accepted by the stage and
written with its edges, groups of units a transaction), then imported again (every unit
done already: nothing changes). No API is called: this is what glan adds on either side
of one. Each way is timed on the wall clock and in CPU seconds of this process (its
threads together: the figure a machine shared with other work still gives). Prints a
table and a final JSON line.

    python bench/batch_roundtrip.py --units 100000
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.memory import MemoryWatch  # noqa: E402
from generators.batch import export_requests, import_results  # noqa: E402
from generators.jobs import JobRunner  # noqa: E402
from generators.llm import LLMClient, LLMConfig, StageParams  # noqa: E402
from generators.pipeline import PipelineOptions  # noqa: E402
from generators.stages import STAGES  # noqa: E402
from graph.config import StoreConfig  # noqa: E402
from graph.store import Store  # noqa: E402

SCOPE = "Natural Sciences/Physical Sciences/Physics"
TAXONOMY = {"fields": {"Natural Sciences": {"Physical Sciences": ["Physics"]}}}
#: import units/s this machine should reach (2 cores)
TARGETS = {"questions_import_units_per_s": 2000.0, "answers_import_units_per_s": 2000.0}


def params_for(stage: str) -> StageParams:
    return StageParams(model="bench-model", temperature=1.0, top_p=0.95)


def fill(store: Store, subjects: int, sessions: int, concepts: int) -> None:
    """Subjects with syllabi under Physics: enough combinations for the units asked."""
    store.taxonomy.load(TAXONOMY)
    physics = store.taxonomy.node(SCOPE)
    names = [{"name": f"Subject {s}", "level": "undergraduate"} for s in range(subjects)]
    ids = store.syllabi.write_subjects(physics.id, names, {"model": "bench"})
    for s, sid in enumerate(ids):
        syllabus = [
            {
                "title": f"Subject {s} session {i}",
                "description": f"what session {i} of subject {s} teaches",
                "concepts": [f"concept {s}.{i}.{j}" for j in range(concepts)],
            }
            for i in range(sessions)
        ]
        store.syllabi.write_syllabus(sid, syllabus, {"model": "bench"})


def answered(requests: Path, out: Path, seed: int = 0) -> int:
    """An output file answering every input line (a question, or an answer), in shuffled
    order; its line count."""
    lines = []
    with requests.open("rb") as f:
        for n, raw in enumerate(f):
            line = json.loads(raw)
            if line["body"].get("response_format"):  # a question, as JSON
                text = json.dumps({"question": f"How do the concepts of question {n} relate?"})
            else:
                text = f"Answer {n}: the concepts relate through their definitions. " * 8
            body = {
                "id": f"chatcmpl-{n}",
                "object": "chat.completion",
                "model": line["body"]["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": text},
                    }
                ],
                "usage": {"prompt_tokens": 900, "completion_tokens": 40, "total_tokens": 940},
            }
            response = {"status_code": 200, "request_id": f"r{n}", "body": body}
            lines.append(
                json.dumps({"id": f"b{n}", "custom_id": line["custom_id"], "response": response})
            )
    random.Random(seed).shuffle(lines)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def roundtrip(store: Store, llm: LLMClient, name: str, n: int, work: Path) -> dict[str, Any]:
    """One stage's job planned, exported, answered, imported and imported again."""
    found: dict[str, Any] = {}

    def stage() -> Any:
        options = PipelineOptions(n=n, seed=1).for_stage(name)
        return STAGES[name](store, llm, params_for(name), options)

    start = time.perf_counter()
    prepared = JobRunner(store).prepare_job(stage(), SCOPE)
    found["plan_s"] = time.perf_counter() - start
    found["planned"] = len(prepared.todo)

    requests = work / f"{name}-requests.jsonl"
    start, cpu = time.perf_counter(), time.process_time()
    with requests.open("wb") as f:
        exported = export_requests(store, stage(), SCOPE, f)
    took, cpu = time.perf_counter() - start, time.process_time() - cpu
    found["prepare_s"] = took
    found["prepare_units_per_s"] = exported.requests / took
    found["prepare_units_per_cpu_s"] = exported.requests / cpu
    found["exported"] = exported.requests
    found["input_mb"] = requests.stat().st_size / 1e6

    output = work / f"{name}-output.jsonl"
    found["answered"] = answered(requests, output)

    start, cpu = time.perf_counter(), time.process_time()
    (first,), unknown = import_results(store, llm, params_for, output)
    took, cpu = time.perf_counter() - start, time.process_time() - cpu
    found["import_s"] = took
    found["import_units_per_s"] = first.counts.done / took
    found["import_units_per_cpu_s"] = first.counts.done / cpu
    found["imported"] = first.counts.done
    found["import_failed"] = first.counts.failed
    found["status"] = first.state.status
    found["unknown_lines"] = unknown

    start = time.perf_counter()
    (again,), _ = import_results(store, llm, params_for, output)
    took = time.perf_counter() - start
    found["reimport_s"] = took
    found["reimport_units_per_s"] = again.counts.skipped / took
    found["reimport_done"] = again.counts.done
    return found


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"units": args.units}
    with tempfile.TemporaryDirectory() as tmp, MemoryWatch() as memory:
        work = Path(tmp)
        store = Store.open(StoreConfig(db_path=work / "glan.lbug"))
        try:
            fill(store, args.subjects, args.sessions, args.concepts)
            llm = LLMClient(LLMConfig(base_url="http://127.0.0.1:9/v1"))  # never called
            for name in args.stages.split(","):
                got = roundtrip(store, llm, name, args.units, work)
                results.update({f"{name}_{k}": v for k, v in got.items()})
            for label in ("Instruction", "Response"):
                rows = store.driver.execute(f"MATCH (x:{label}) RETURN count(x) AS n")
                results[f"{label.lower()}s"] = int(rows[0]["n"])
        finally:
            store.close()
    results["peak_rss_mb"] = memory.figures()["peak_rss_mb"]
    met = [results[k] >= goal for k, goal in TARGETS.items() if k in results]
    results["targets_met"] = all(met)
    return results


def report(results: dict[str, Any]) -> None:
    print(f"{'measure':<34}{'value':>14}{'target':>12}  ok")
    for key, value in results.items():
        goal = TARGETS.get(key)
        if goal is not None:
            mark = "yes" if value >= goal else "NO"
            print(f"{key:<34}{value:>14,.1f}{goal:>12,.1f}  {mark}")
        elif isinstance(value, float):
            print(f"{key:<34}{value:>14,.3f}")
        else:
            print(f"{key:<34}{value!s:>14}")
    print(json.dumps({"bench": "batch_roundtrip", **results}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=100_000)
    parser.add_argument("--subjects", type=int, default=40)
    parser.add_argument("--sessions", type=int, default=12)
    parser.add_argument("--concepts", type=int, default=6)
    parser.add_argument("--stages", default="questions,answers", help="questions, answers")
    report(run(parser.parse_args()))


if __name__ == "__main__":
    main()
