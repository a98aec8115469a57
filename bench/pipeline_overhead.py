"""What glan's own machinery costs per generated pair, against a model that answers at once.

A loopback OpenAI-compatible stub (bench/loopback_stub.py) runs in a process of its own and
answers the GLAN prompts with next to no work. Each round first measures the stub's ceiling
with bare client loops (requests/s a bare aiohttp loop gets, as an HTTP client that costs
little; and a raw-socket loop, what the stub itself can serve), then runs the pipeline the
way a user does: `glan generate questions SCOPE --n N` and then `glan generate answers
SCOPE`, each a process of its own on a store on disk, with a terminal (a pty) for its
progress bars. A third `glan generate answers`, with nothing left to do, is the fixed cost
of starting a command (imports, opening the store, planning).

Figures per round: the stub's ceilings, each stage's wall time and the CPU time of its glan
process (user + system, from the kernel when the process ends) per request served, and the
pipeline's pairs/s (one pair is two requests) against the ceiling in pairs/s (half the
requests/s). The machine is shared: CPU time per request is the steadier figure, and with
--rounds the rounds interleave the ceiling and the pipeline, and alternate the checkouts
given with --code (another tree of this project, for a before/after on the same stub).

    python bench/pipeline_overhead.py --pairs 2000 --rounds 3
    python bench/pipeline_overhead.py --pairs 2000 --rounds 3 --code /tmp/old-checkout
    python bench/pipeline_overhead.py --pairs 500 --profile /tmp/prof   # cProfile each stage

Prints a table and a final JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import pty
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loopback_stub import ceiling as raw_ceiling  # noqa: E402
from bench.memory import MemoryWatch  # noqa: E402
from graph.store import Store  # noqa: E402
from tests.conftest import SMALL_TAXONOMY  # noqa: E402

SCOPE = "Natural Sciences/Physical Sciences/Physics"
#: what the ceiling loops send: an answer request of the pipeline's size
CEILING_BODY = {
    "model": "stub",
    "messages": [
        {"role": "system", "content": "You are an expert tutor. " * 12},
        {"role": "user", "content": "Answer this homework question in full. " * 8},
    ],
    "temperature": 0.7,
    "top_p": 0.95,
}
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


def prepare(store: Store, subjects: int) -> None:
    store.taxonomy.load(SMALL_TAXONOMY)
    disc = store.taxonomy.node(SCOPE)
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


def child_env(code: Path, pycache: Path) -> dict[str, str]:
    """The environment glan runs in: no GLAN_* settings but those the bench sets, the
    checkout `code` first on the path, and its bytecode cached (in `pycache`, outside the
    tree) as an installed glan's is, even where PYTHONDONTWRITEBYTECODE is set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLAN_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return {**env, "PYTHONPATH": str(code), "PYTHONPYCACHEPREFIX": str(pycache)}


def make_store(code: Path, db_path: Path, subjects: int, pycache: Path) -> None:
    """The store every round starts from, made by the checkout that runs on it (its schema
    may differ from this one's); this also fills the checkout's bytecode cache."""
    script = "\n".join(
        [
            "import server.cli, generators.pipeline",
            "from graph.config import StoreConfig",
            "from graph.store import Store",
            "from tests.conftest import SMALL_TAXONOMY",
            f"SCOPE = {SCOPE!r}",
            inspect.getsource(prepare),
            f"with Store.open(StoreConfig(db_path={str(db_path)!r})) as store:",
            f"    prepare(store, {subjects})",
        ]
    )
    subprocess.run([sys.executable, "-c", script], env=child_env(code, pycache), check=True)


@contextmanager
def stub_process() -> Iterator[str]:
    """The loopback stub in a child process; its base URL."""
    child = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "loopback_stub.py")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        yield child.stdout.readline().strip()
    finally:
        child.terminate()
        child.wait(10)


def stub_stats(base_url: str) -> dict[str, float]:
    return dict(httpx.get(f"{base_url}/stats", timeout=10).json())


async def _aiohttp_loop(base_url: str, requests: int, concurrency: int) -> float:
    import aiohttp

    left = [requests]
    url = f"{base_url}/chat/completions"
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def loop() -> None:
            while left[0] > 0:
                left[0] -= 1
                async with session.post(url, json=CEILING_BODY) as r:
                    r.raise_for_status()
                    await r.json()

        start = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return requests / (time.perf_counter() - start)


def ceilings(base_url: str, requests: int, concurrency: int) -> dict[str, float]:
    """The stub's requests/s to a bare aiohttp loop and to a raw-socket loop, and what each
    loop's client spent per request (ms of CPU)."""
    found: dict[str, float] = {}
    try:
        cpu = time.process_time()
        found["stub_ceiling_req_per_s"] = asyncio.run(
            _aiohttp_loop(base_url, requests, concurrency)
        )
        found["ceiling_client_cpu_ms"] = (time.process_time() - cpu) / requests * 1e3
    except ImportError:  # no aiohttp: the raw loop's figure stands for both
        pass
    rate, cpu_per = raw_ceiling(base_url, CEILING_BODY, requests, concurrency)
    found["stub_raw_ceiling_req_per_s"] = rate
    found["raw_client_cpu_ms"] = cpu_per * 1e3
    found.setdefault("stub_ceiling_req_per_s", rate)
    found.setdefault("ceiling_client_cpu_ms", cpu_per * 1e3)
    return found


def glan(
    args: list[str],
    env: dict[str, str],
    cwd: Path,
    profile: Path | None = None,
) -> dict[str, Any]:
    """Run `glan ARGS` in `env` (child_env) on a terminal of its own; its wall time, the CPU
    time of its process and the text it printed."""
    run = "import sys; sys.argv[0] = 'glan'; from server.cli import main; main()"
    if profile is not None:
        run = (
            "import cProfile, sys; sys.argv[0] = 'glan'; "
            f"cProfile.run('from server.cli import main; main()', {str(profile)!r})"
        )
    master, slave = pty.openpty()
    try:
        import fcntl
        import struct
        import termios

        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    except (ImportError, OSError):
        pass
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", run, *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=cwd,
    )
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the terminal closed with the process
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    reader.join(10)
    os.close(master)
    text = _ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))
    if child.returncode != 0:
        raise RuntimeError(f"glan {' '.join(args)} exited {child.returncode}:\n{text[-3000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "text": text}


def done_of(text: str, stage: str) -> int:
    found = re.findall(rf"^{stage}\s+\S+\s+(\d+)/(\d+) done", text, re.MULTILINE)
    if not found:
        raise RuntimeError(f"no summary line for {stage} in:\n{text[-2000:]}")
    return int(found[-1][0])


def one_round(
    code: Path,
    template: Path,
    folder: Path,
    base_url: str,
    args: argparse.Namespace,
    profile: Path | None = None,
) -> dict[str, float]:
    """A ceiling, then the two stages and a run with nothing left, on a fresh copy of the store."""
    found = ceilings(base_url, max(1000, args.pairs * 2), args.concurrency)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=folder))
    shutil.copytree(template, work / "db")
    env = child_env(code, args.pycache)
    env.update(
        GLAN_DB_PATH=str(work / "db" / "p.lbug"),
        GLAN_LLM_BASE_URL=base_url,
        GLAN_MODEL="stub",
        GLAN_LLM_CONCURRENCY=str(args.concurrency),
        TERM="xterm-256color",
        COLUMNS="200",
    )
    commands = {
        "questions": ["generate", "questions", SCOPE, "--n", str(args.pairs), "--seed", "1"],
        "answers": ["generate", "answers", SCOPE],
    }
    cpu = wall = 0.0
    requests = 0
    for stage, command in commands.items():
        before = stub_stats(base_url)
        out = glan(command, env, work, profile and profile / f"{stage}.prof")
        after = stub_stats(base_url)
        served = int(after["calls"] - before["calls"])
        found[f"{stage}_done"] = done_of(out["text"], stage)
        found[f"{stage}_requests"] = served
        found[f"{stage}_wall_s"] = out["wall_s"]
        found[f"{stage}_cpu_s"] = out["cpu_s"]
        found[f"{stage}_cpu_ms_per_request"] = out["cpu_s"] / max(1, served) * 1e3
        found[f"{stage}_stub_cpu_ms_per_request"] = (
            (after["cpu_s"] - before["cpu_s"]) / max(1, served) * 1e3
        )
        cpu, wall, requests = cpu + out["cpu_s"], wall + out["wall_s"], requests + served
    idle = glan(commands["answers"], env, work)  # nothing left: the fixed cost
    found["noop_cpu_s"] = idle["cpu_s"]
    found["noop_wall_s"] = idle["wall_s"]
    pairs = found["answers_done"]
    found["pairs"] = pairs
    found["pipeline_pairs_per_s"] = pairs / wall
    found["client_cpu_ms_per_request"] = cpu / max(1, requests) * 1e3
    # what each request costs beyond a command's fixed cost (two commands ran)
    found["client_cpu_ms_per_request_beyond_start"] = (
        (cpu - 2 * idle["cpu_s"]) / max(1, requests) * 1e3
    )
    found["stub_ceiling_pairs_per_s"] = found["stub_ceiling_req_per_s"] / 2
    found["ratio"] = found["pipeline_pairs_per_s"] / found["stub_ceiling_pairs_per_s"]
    found["ratio_to_raw_ceiling"] = found["pipeline_pairs_per_s"] / (
        found["stub_raw_ceiling_req_per_s"] / 2
    )
    shutil.rmtree(work, ignore_errors=True)
    return found


def print_profiles(folder: Path) -> None:
    import pstats

    for prof in sorted(folder.glob("*.prof")):
        out = prof.with_suffix(".txt")
        with out.open("w") as f:
            stats = pstats.Stats(str(prof), stream=f)
            stats.sort_stats("cumulative").print_stats(60)
            stats.sort_stats("tottime").print_stats(40)
        print(f"profile: {prof} (top functions in {out})", file=sys.stderr)


#: the figures printed, in order, with their targets where there are any
SHOWN: dict[str, float | None] = {
    "pairs": None,
    "stub_ceiling_req_per_s": 1000,  # the stub must not be the limit
    "stub_raw_ceiling_req_per_s": None,
    "ceiling_client_cpu_ms": None,
    "pipeline_pairs_per_s": None,
    "ratio": 0.4,
    "ratio_to_raw_ceiling": None,
    "client_cpu_ms_per_request": 2.0,
    "client_cpu_ms_per_request_beyond_start": None,
    "questions_cpu_ms_per_request": None,
    "answers_cpu_ms_per_request": None,
    "questions_wall_s": None,
    "answers_wall_s": None,
    "questions_stub_cpu_ms_per_request": None,
    "noop_cpu_s": None,
    "noop_wall_s": None,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; medians")
    parser.add_argument(
        "--code",
        action="append",
        type=Path,
        default=[],
        help="a checkout of glan to run (default: this one); given more than once, the "
        "checkouts run alternately, round by round ('.' for this one)",
    )
    parser.add_argument("--profile", type=Path, help="also run each stage under cProfile here")
    args = parser.parse_args()
    given = [p.resolve() for p in args.code] or [ROOT]
    codes = {("this" if p == ROOT else f"code{i + 1}"): p for i, p in enumerate(given)}
    first = next(iter(codes))
    folder = Path(tempfile.mkdtemp(prefix="glan-bench-"))
    templates = {label: folder / f"template-{label}" for label in codes}
    args.pycache = folder / "pycache"
    for label, code in codes.items():
        make_store(code, templates[label] / "p.lbug", max(10, args.pairs // 100), args.pycache)
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in codes}
    with MemoryWatch() as watch, stub_process() as base_url:
        for _ in range(args.rounds):
            for label, code in codes.items():
                runs[label].append(one_round(code, templates[label], folder, base_url, args))
        if args.profile is not None:
            for label, code in codes.items():
                where = args.profile / label
                where.mkdir(parents=True, exist_ok=True)
                one_round(code, templates[label], folder, base_url, args, profile=where)
                print_profiles(where)
    shutil.rmtree(folder, ignore_errors=True)
    medians = {
        label: {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        for label, rounds in runs.items()
    }
    print(f"{'measure':<42}" + "".join(f"{label:>14}" for label in codes) + f"{'target':>10}")
    for key, goal in SHOWN.items():
        row = "".join(f"{medians[label].get(key, 0):>14,.3f}" for label in codes)
        print(f"{key:<42}{row}{'' if goal is None else f'{goal:>10,}'}")
    mine = {k: round(v, 4) for k, v in medians[first].items()}
    mine["pairs"] = int(mine["pairs"])
    results: dict[str, Any] = {
        **mine,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "rounds_ratio": [round(r["ratio"], 3) for r in runs[first]],
        "rounds_client_cpu_ms_per_request": [
            round(r["client_cpu_ms_per_request"], 3) for r in runs[first]
        ],
        # this process, and the stub and glan processes it starts (bench/memory.py)
        **watch.figures(),
    }
    for label in list(codes)[1:]:
        results[label] = {k: round(v, 4) for k, v in medians[label].items()}
    print(json.dumps({"bench": "pipeline_overhead", **results}))


if __name__ == "__main__":
    main()
