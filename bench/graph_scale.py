"""The knowledge store at GLAN scale, on a synthetic taxonomy made here with a fixed seed.

Full scale is the paper's shape: 126 disciplines x 150 subjects x 20 sessions x 5 concepts
(about 1.9M concepts), then 1M instructions with their COVERS edges and 1M answers.
`--scale 0.01` runs a smoke version in seconds. Prints a table and a final JSON line.

    python bench/graph_scale.py --scale 1
    python bench/graph_scale.py --scale 1 --pairs 10000000   # in steps: 1M, 2M, 5M, 10M

`--plan-coverage` builds the taxonomy and measures only what a coverage-driven questions
job plans over the whole store (`glan generate questions --min-per-concept 1`): reading
every syllabus and the combinations asked, and drawing the samples; a plain run measures
it too, on the empty store and after the pairs.

With `--pairs`, the store grows in steps (a tenth, a fifth, half, all of it, or
`--steps`), and each step reports what a growing store costs: the step's writes, what
writing 64 pairs costs as a job's writer writes them (the step's last ten groups: the
first, and their median), the first coverage after the writes and the next, planning a
100k-question job, an export of every pair (in a process of its own: pairs/s and its peak
memory) and the database's size. The rate of the last step's writes is set against the
first's: a store that fills must not slow down as it grows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.memory import MemoryWatch, phase_peak_mb, rss_mb  # noqa: E402
from generators.cleaning import decontaminate, iter_instructions  # noqa: E402
from generators.sampling import (  # noqa: E402
    CoveragePlanner,
    Sampler,
    Strategy,
    plan_coverage,
    plan_sampler,
)
from graph.config import StoreConfig  # noqa: E402
from graph.errors import GlanError  # noqa: E402
from graph.model import (  # noqa: E402
    CONCEPT,
    DISCIPLINE,
    FIELD,
    HAS_CONCEPT,
    HAS_DISCIPLINE,
    HAS_SESSION,
    HAS_SUBFIELD,
    HAS_SUBJECT,
    INSTRUCTION,
    RESPONSE,
    SESSION,
    SUBFIELD,
    SUBJECT,
    hierarchy_id,
    node_id,
)
from graph.store import Store  # noqa: E402

TARGETS = {  # name -> (target, "lower" or "higher" is better)
    "load_s": (60.0, "lower"),
    "coverage_s": (0.5, "lower"),
    "coverage_after_pairs_s": (0.5, "lower"),
    "sample_basic_s": (2.0, "lower"),
    "sample_hard_s": (2.0, "lower"),
    "write_pairs_per_s": (20_000.0, "higher"),
    "export_peak_rss_mb": (1024.0, "lower"),
    # the benchmark's process and the export's, together at their largest (bench/memory.py)
    "tree_peak_rss_mb": (1536.0, "lower"),
}


class Results(dict[str, Any]):
    """The figures, each also printed to stderr as soon as it is measured, with the memory
    the benchmark holds then and its peak since the figure before: a full-scale run takes
    a while, and what it measured survives it being stopped."""

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        memory = f"rss {rss_mb():,.0f} MB, peak since the last figure {phase_peak_mb():,.0f} MB"
        print(f"  {key} = {value}  ({memory})", file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


#: rows handed to one bulk load (what Nodes.bulk_load writes at once anyway)
LOAD_BATCH = 200_000


def batches(rows: Iterable[Any], size: int = LOAD_BATCH) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def build(
    store: Store, disciplines: int, subjects: int, sessions: int, concepts: int
) -> dict[str, int]:
    """Write the synthetic taxonomy through the store's bulk paths, a batch of rows at a
    time: the same bulk loads, in the same order, as building every row first, which held
    2 GB of rows at GLAN scale. Only the ids stay, for the edges."""
    stamp = {"status": "approved", "source": "seed"}
    fields = [f"Field {i}" for i in range(6)]
    f_rows, sf_rows, d_rows = [], [], []
    e_sf, e_d, e_s = [], [], []
    subject_ids: list[str] = []
    for f in fields:
        fid = hierarchy_id(FIELD, f, None)
        f_rows.append({"id": fid, "name": f, "key": f.lower(), "path": f, **stamp})
    for d in range(disciplines):
        f = fields[d % len(fields)]
        fid = hierarchy_id(FIELD, f, None)
        sf = f"{f} Sub {d % 4}"
        sfid = hierarchy_id(SUBFIELD, sf, fid)
        if not any(r["id"] == sfid for r in sf_rows):
            sf_rows.append(
                {"id": sfid, "name": sf, "key": sf.lower(), "path": f"{f}/{sf}", **stamp}
            )
            e_sf.append((fid, sfid))
        dn = f"Discipline {d}"
        did = hierarchy_id(DISCIPLINE, dn, sfid)
        d_rows.append({"id": did, "name": dn, "key": dn.lower(), "path": f"{f}/{sf}/{dn}", **stamp})
        e_d.append((sfid, did))
        for s in range(subjects):
            subject_ids.append(hierarchy_id(SUBJECT, f"Subject {d}.{s}", None))
            e_s.append((did, subject_ids[-1]))
    session_ids: list[str] = []
    concept_ids: list[str] = []

    def subject_rows() -> Iterator[dict[str, Any]]:
        for d in range(disciplines):
            for s in range(subjects):
                sn = f"Subject {d}.{s}"
                yield {
                    "id": subject_ids[d * subjects + s],
                    "name": sn,
                    "key": sn.lower(),
                    "level": "undergraduate",
                    **stamp,
                }

    def session_rows() -> Iterator[dict[str, Any]]:
        for sid in subject_ids:
            for x in range(sessions):
                tn = f"Session {x}"
                session_ids.append(hierarchy_id(SESSION, tn, sid))
                yield {"id": session_ids[-1], "name": tn, "key": tn.lower(), "position": x, **stamp}

    def concept_rows() -> Iterator[dict[str, Any]]:
        for i, xid in enumerate(session_ids):
            d, s, x = i // (subjects * sessions), i // sessions % subjects, i % sessions
            for c in range(concepts):
                cn = f"concept {d}.{s}.{x}.{c}"
                concept_ids.append(hierarchy_id(CONCEPT, cn, xid))
                yield {"id": concept_ids[-1], "name": cn, "key": cn, "position": c, **stamp}

    store.nodes.bulk_load(FIELD, f_rows)
    store.nodes.bulk_load(SUBFIELD, sf_rows)
    store.nodes.bulk_load(DISCIPLINE, d_rows)
    for kind, rows in (
        (SUBJECT, subject_rows()),
        (SESSION, session_rows()),
        (CONCEPT, concept_rows()),
    ):
        for batch in batches(rows):
            store.nodes.bulk_load(kind, batch)
    for rel, pairs in (
        (HAS_SUBFIELD, iter(e_sf)),
        (HAS_DISCIPLINE, iter(e_d)),
        (HAS_SUBJECT, iter(e_s)),
        (HAS_SESSION, ((subject_ids[i // sessions], x) for i, x in enumerate(session_ids))),
        (HAS_CONCEPT, ((session_ids[i // concepts], c) for i, c in enumerate(concept_ids))),
    ):
        for batch in batches(pairs):
            store.nodes.bulk_load_edges(rel, batch)
    return {
        "subjects": len(subject_ids),
        "sessions": len(session_ids),
        "concepts": len(concept_ids),
    }


def write_pairs(store: Store, samples: list[Any], batch: int = 50_000) -> int:
    """Instructions with COVERS and FROM edges, and one answer each, in batches."""
    written = 0
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        rows, covers, froms, answers = [], [], [], []
        for s in chunk:
            iid = node_id(INSTRUCTION, s.combo_key)
            rows.append(
                {
                    "id": iid,
                    "text": f"Question about {len(s.concept_ids)} concepts {s.combo_key[:8]}",
                    "strategy": str(s.strategy),
                    "seed": 1,
                    "combo_key": s.combo_key,
                    "subject_id": s.subject_id,
                    "model": "bench",
                    "prompt_name": "question",
                    "prompt_version": "1",
                }
            )
            covers += [(iid, c) for c in s.concept_ids]
            froms += [(iid, x) for x in s.session_ids]
            answers.append(
                {
                    "id": node_id(RESPONSE, iid),
                    "text": "An answer. " * 20,
                    "instruction_id": iid,
                    "model": "bench",
                    "prompt_name": "answer",
                    "prompt_version": "1",
                }
            )
        store.instructions.write_instructions(rows, covers, froms)
        store.instructions.write_responses(answers, subject_ids=[s.subject_id for s in chunk])
        written += len(chunk)
    return written


EXPORT = """
import json, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from generators.export import export_jsonl
from graph.config import StoreConfig
from graph.store import Store
with Store.open(StoreConfig.model_validate_json({config!r})) as store:
    result = export_jsonl(store, None, Path({out!r}))
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child would report the
# peak of the benchmark process that started it
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status")
               if line.startswith("VmHWM:"))
print(json.dumps({{"exported": result.counts["train"], "peak_rss_mb": peak_kb / 1024}}))
"""


def export_in_subprocess(config: StoreConfig, out: Path) -> dict[str, Any]:
    root = str(Path(__file__).resolve().parents[1])
    code = EXPORT.format(root=root, config=config.model_dump_json(), out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


#: a step's last pairs are written GROUPS times GROUP_PAIRS at a time, as a job's writer
#: writes the units its workers finished (the first group, and the median of them)
GROUP_PAIRS = 64
GROUPS = 10
#: targets of a run in steps, per step (see run_steps)
STEP_TARGETS = {
    "coverage_cold_s": (1.0, "lower"),
    "export_pairs_per_s": (10_000.0, "higher"),
    "export_peak_rss_mb": (1024.0, "lower"),
}
#: the last step's write rate against the first's, at least
WRITE_RATE_KEPT = 0.5


def _setup(args: argparse.Namespace) -> tuple[Path, Path, StoreConfig, Results]:
    """A folder for the run, the database's path in it (or --keep), the store's settings
    and the results, which start with the machine and the page cache."""
    folder = Path(tempfile.mkdtemp(prefix="glan-bench-"))
    db = args.keep or folder / "bench.lbug"
    config = StoreConfig(db_path=db)
    if args.buffer_mb is not None:
        config = config.model_copy(update={"buffer_pool_mb": args.buffer_mb})
    results = Results(
        scale=args.scale, machine=f"{os.cpu_count()} cores", buffer_mb=config.buffer_pool_mb
    )
    return folder, db, config, results


def run_steps(args: argparse.Namespace) -> Results:
    """The taxonomy at this scale, then pairs written in steps up to args.pairs, with a
    store's costs measured after each (see the module docstring). A step the store cannot
    take ends the run there: the figures so far are reported, with what stopped it."""
    fractions = [float(f) for f in args.steps.split(",")] if args.steps else [0.1, 0.2, 0.5, 1]
    totals = sorted({max(1, int(args.pairs * f)) for f in fractions})
    samples_n = max(1000, min(100_000, args.pairs // 10))
    folder, db, config, results = _setup(args)
    steps: list[dict[str, Any]] = []
    opened = [Store.open(config)]  # the store is closed for each export and opened again
    try:
        store = opened[0]
        results["load_s"], found = timed(lambda: build(store, *shape(args.scale)))
        results.update(found)
        # a bulk load writes no subject rollups: the first read computes them all, so that
        # each step's first coverage measures what the step's writes left it to do
        results["coverage_after_load_s"], _ = timed(lambda: store.coverage.report(None))

        def syllabi(ids: Sequence[str]) -> Any:
            return opened[0].syllabi.index(ids)

        stats = store.syllabi.concept_stats(store.taxonomy.ids_in_scope(None, SUBJECT))
        sampler = Sampler(stats, syllabi, seed=2)
        written = 0
        try:
            for total in totals:
                step: dict[str, Any] = {"pairs": total}
                seconds = 0.0
                # the step's last pairs are written as a job writes them, a group at a time
                tail = GROUP_PAIRS * GROUPS if total - written >= 2 * GROUP_PAIRS * GROUPS else 0
                while written < total - tail:
                    chunk = sampler.draw(min(100_000, total - tail - written), Strategy.MIXED)
                    if not chunk:
                        break
                    seconds += timed(partial(write_pairs, opened[0], chunk))[0]
                    written += len(chunk)
                step["write_pairs_per_s"] = round(
                    (written - _before(steps)) / max(seconds, 1e-9), 1
                )
                groups: list[float] = []
                while tail and written < total:
                    chunk = sampler.draw(min(GROUP_PAIRS, total - written), Strategy.MIXED)
                    if not chunk:
                        break
                    groups.append(timed(partial(write_pairs, opened[0], chunk))[0])
                    written += len(chunk)
                if groups:
                    step["group_write_first_s"] = groups[0]
                    step["group_write_s"] = sorted(groups)[len(groups) // 2]
                step["pairs"] = written
                step.update(_reads_after_writes(opened[0], samples_n))
                opened[0].close()
                if not args.no_export:
                    step["export_s"], exported = timed(
                        lambda: export_in_subprocess(config, folder / "p.jsonl")
                    )
                    step["export_pairs_per_s"] = round(exported["exported"] / step["export_s"], 1)
                    step["export_peak_rss_mb"] = round(exported["peak_rss_mb"], 1)
                    (folder / "p.jsonl").unlink(missing_ok=True)
                step["db_size_mb"] = _db_size_mb(db)
                # what else the machine ran meanwhile: figures of one step compare only so far
                step["load_average"] = os.getloadavg()[0]
                opened[0] = Store.open(config)
                steps.append(step)
                for key, value in step.items():
                    if key != "pairs":
                        results[f"at_{written}_{key}"] = round(value, 3)
                if written < total:
                    break  # the taxonomy has no more new combinations to draw
        except GlanError as exc:  # what stopped the store growing is a figure too
            results["stopped_after_pairs"] = _before(steps)  # the last step measured
            results["pairs_when_stopped"] = written
            results["stopped_by"] = f"{type(exc).__name__}: {exc}"[:600]
            results["stopped_in"] = _glan_calls(exc)
    finally:
        opened[0].close()
    if steps:
        first, last = steps[0]["write_pairs_per_s"], steps[-1]["write_pairs_per_s"]
        results["write_rate_kept"] = round(last / first, 3) if first else 0.0
        results["steps_met"] = {
            key: all(_meets(s[key], *goal) for s in steps)
            for key, goal in STEP_TARGETS.items()
            if key in steps[0]
        } | {"write_rate_kept": results["write_rate_kept"] >= WRITE_RATE_KEPT}
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return results


def _reads_after_writes(store: Store, samples_n: int) -> dict[str, float]:
    """The first coverage after a step's writes and the next, and planning a question job
    of samples_n over the whole store."""

    def plan() -> int:
        subjects = store.taxonomy.ids_in_scope(None, SUBJECT)
        drawn = plan_sampler(store, subjects, samples_n, seed=3)
        return len(drawn.draw(samples_n, Strategy.MIXED))

    return {
        "coverage_cold_s": timed(lambda: store.coverage.report(None))[0],
        "coverage_s": timed(lambda: store.coverage.report(None))[0],
        "plan_s": timed(plan)[0],
    }


def _glan_calls(exc: BaseException) -> str:
    """The calls into glan's packages that an exception came through, outermost first:
    which read or write of the step stopped it."""
    packages = {Path(__file__).resolve().parents[1] / name for name in ("graph", "generators")}
    return " > ".join(
        frame.name
        for frame in traceback.extract_tb(exc.__traceback__)
        if any(parent in packages for parent in Path(frame.filename).resolve().parents)
    )


def _before(steps: list[dict[str, Any]]) -> int:
    return int(steps[-1]["pairs"]) if steps else 0


def _meets(value: float, goal: float, better: str) -> bool:
    return value <= goal if better == "lower" else value >= goal


def _db_size_mb(db: Path) -> float:
    files = (f for f in Path(db).parent.rglob("*") if f.is_file())
    return round(
        sum(f.stat().st_size for f in files if f.name.startswith(Path(db).name)) / 2**20, 1
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1 = GLAN scale")
    parser.add_argument(
        "--pairs", type=int, help="grow the store to this many pairs, in steps (see --steps)"
    )
    parser.add_argument("--steps", help="the steps, as shares of --pairs (default 0.1,0.2,0.5,1)")
    parser.add_argument("--keep", type=Path, help="keep the database here")
    parser.add_argument(
        "--no-export",
        action="store_true",
        help="with --pairs: no export at each step (the longest part of a run past 2M pairs)",
    )
    parser.add_argument(
        "--plan-coverage",
        action="store_true",
        help="only the taxonomy and a --min-per-concept 1 plan over all of it",
    )
    parser.add_argument(
        "--buffer-mb",
        type=int,
        help="the embedded engine's page cache (GLAN_DB_BUFFER_MB); 0: the engine's own "
        "default, most of the machine's memory; unset: glan's default",
    )
    args = parser.parse_args()
    with MemoryWatch() as watch:
        if args.plan_coverage:
            results = run_plan_coverage(args)
        else:
            results = run_steps(args) if args.pairs else run(args)
    results.update(watch.figures())
    report(results)


def shape(scale: float) -> tuple[int, int, int, int]:
    """Disciplines, subjects per discipline, sessions per subject, concepts per session."""
    side = min(scale, 1) ** (1 / 3)
    return max(2, round(126 * side)), max(2, round(150 * side)), max(2, round(20 * side)), 5


def pairs_at(scale: float) -> int:
    return max(1000, int(1_000_000 * scale))


def write_store(store: Store, pairs: int) -> tuple[int, float]:
    """Draw pairs over every subject and write them, 100k at a time so that memory stays
    bounded; (pairs written, seconds spent writing). The sampler goes when it returns."""
    sampler = Sampler(
        store.syllabi.concept_stats(store.taxonomy.ids_in_scope(None, SUBJECT)),
        store.syllabi.index,
        seed=2,
    )
    written, seconds = 0, 0.0
    while written < pairs:
        chunk = sampler.draw(min(100_000, pairs - written), Strategy.MIXED)
        if not chunk:
            break
        spent, _ = timed(lambda chunk=chunk: write_pairs(store, chunk))  # type: ignore[misc]
        seconds += spent
        written += len(chunk)
    return written, seconds


def fill(store: Store, scale: float) -> dict[str, int]:
    """The benchmark's store at this scale: the taxonomy, then its pairs."""
    found = build(store, *shape(scale))
    found["pairs_written"], _ = write_store(store, pairs_at(scale))
    return found


def sample(store: Store, results: Results, n: int) -> None:
    """n basic and n hard samples over every subject, each from a fresh sampler."""
    stats = store.syllabi.concept_stats(store.taxonomy.ids_in_scope(None, SUBJECT))
    for strategy in (Strategy.BASIC, Strategy.HARD):
        reading = [0.0]

        def read(ids: Sequence[str], spent: list[float] = reading) -> Any:
            seconds, syllabi = timed(partial(store.syllabi.index, ids))
            spent[0] += seconds
            return syllabi

        sampler = Sampler(stats, read, seed=1)
        results[f"sample_{strategy}_s"], drawn = timed(partial(sampler.draw, n, strategy))
        # of which reading the syllabi the draws need (one pass over their concepts)
        results[f"sample_{strategy}_read_s"] = reading[0]
        results[f"sample_{strategy}_n"] = len(drawn)
        del sampler, drawn  # before the next sampler reads every syllabus again


def plan_for_coverage(store: Store, results: Results, prefix: str, target: int = 1) -> None:
    """What `--min-per-concept target` plans over the whole store: the whole planning (the
    subjects in scope, every syllabus with its coverage, the combinations asked, the draws),
    then the draws alone on the same syllabi, with how many samples and concepts."""
    subjects = store.taxonomy.ids_in_scope(None, SUBJECT)
    results[f"{prefix}_s"], plan = timed(
        lambda: plan_coverage(store, subjects, target=target, seed=3, strategy=Strategy.MIXED)
    )
    results[f"{prefix}_samples"] = len(plan.samples)
    results[f"{prefix}_concepts"] = plan.concepts
    results[f"{prefix}_wanted"] = plan.wanted
    results[f"{prefix}_reached"] = plan.reached
    results[f"{prefix}_short"] = plan.short
    del plan
    index = store.syllabi.index(subjects)
    asked = store.syllabi.combo_keys(subjects)
    planner = CoveragePlanner(index, target=target, seed=3, asked=asked)
    results[f"{prefix}_draws_s"], _ = timed(planner.plan)
    del planner, index, asked


def run_plan_coverage(args: argparse.Namespace) -> Results:
    """The taxonomy at this scale, its combination space, and a coverage plan over it."""
    folder, db, config, results = _setup(args)
    store = Store.open(config)
    try:
        results["load_s"], found = timed(lambda: build(store, *shape(args.scale)))
        results.update(found)
        results["coverage_cold_s"], report = timed(lambda: store.coverage.report(None))
        results["combination_space"] = report.total.combination_space
        results["tree_with_combinations_s"], _ = timed(
            lambda: store.coverage.tree(None, 3, covered=True, combinations=True)
        )
        plan_for_coverage(store, results, "plan_coverage")
    finally:
        store.close()
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return results


def run(args: argparse.Namespace) -> Results:
    """Every measure, in order."""
    pairs = pairs_at(args.scale)
    samples_n = max(1000, int(100_000 * min(args.scale * 10, 1)))

    folder, db, config, results = _setup(args)
    store = Store.open(config)
    try:
        results["load_s"], found = timed(lambda: build(store, *shape(args.scale)))
        results.update(found)
        # the first read computes every subject's rollup; later ones sum them
        results["coverage_cold_s"], _ = timed(lambda: store.coverage.report(None))
        results["coverage_s"], _ = timed(lambda: store.coverage.report(None))
        plan_for_coverage(store, results, "plan_coverage")
        sample(store, results, samples_n)
        written, seconds = write_store(store, pairs)
        results["pairs_written"] = written
        results["write_pairs_per_s"] = round(written / seconds, 1)
        store.close()
        # export runs in a process of its own, so its peak memory is its own
        results["export_s"], exported = timed(
            lambda: export_in_subprocess(config, folder / "p.jsonl")
        )
        results["exported"] = exported["exported"]
        results["export_peak_rss_mb"] = round(exported["peak_rss_mb"], 1)  # as the tree's
        store = Store.open(config)
        # what dedup and the report walk (every instruction), and decontamination (with
        # its answers), against a benchmark of 1,000 questions none of which is in the store
        results["read_instructions_s"], _ = timed(
            lambda: sum(1 for _ in iter_instructions(store, None))
        )
        benchmark = folder / "benchmark.jsonl"
        benchmark.write_text(
            "".join(
                json.dumps({"question": f"Benchmark question {i} on a topic of its own."}) + "\n"
                for i in range(1000)
            )
        )
        results["decontaminate_s"], _ = timed(
            lambda: decontaminate(store, None, [(benchmark, "question")])
        )
        results["coverage_after_pairs_cold_s"], _ = timed(lambda: store.coverage.report(None))
        results["coverage_after_pairs_s"], _ = timed(lambda: store.coverage.report(None))

        def plan() -> int:
            """What planning a question job over the whole store reads and draws."""
            subjects = store.taxonomy.ids_in_scope(None, SUBJECT)
            sampler = plan_sampler(store, subjects, samples_n, seed=3)
            return len(sampler.draw(samples_n, Strategy.MIXED))

        results["plan_after_pairs_s"], _ = timed(plan)
        plan_for_coverage(store, results, "plan_coverage_after_pairs")
        # what the API's instructions query and sampleInstructions cost on the whole store
        results["instructions_page_s"], _ = timed(lambda: store.instructions.page(None, first=50))
        results["instructions_count_s"], _ = timed(lambda: store.instructions.count(None))
        results["sample_100_s"], _ = timed(lambda: store.instructions.sample(None, 100, seed=1))
    finally:
        store.close()
    results["db_size_mb"] = _db_size_mb(db)
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return results


def report(results: Results) -> None:
    """The table, then the figures as one JSON line."""
    print(f"{'measure':<30}{'value':>14}{'target':>12}  ok")
    for key, value in results.items():
        target = TARGETS.get(key)
        mark = ""
        if target is not None and isinstance(value, int | float):
            goal, better = target
            mark = "yes" if (value <= goal if better == "lower" else value >= goal) else "NO"
            print(f"{key:<30}{value:>14,.3f}{goal:>12,.1f}  {mark}")
        elif isinstance(value, float):
            print(f"{key:<30}{value:>14,.3f}")
        else:
            print(f"{key:<30}{value!s:>14}")
    print(json.dumps({"bench": "graph_scale", **results}))


if __name__ == "__main__":
    main()
