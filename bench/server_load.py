"""One store, many users: the GraphQL API under N concurrent clients while a job runs.

Builds a store through the `glan` CLI (init, then subjects, syllabi, questions and answers
for a few disciplines) against an OpenAI-compatible stub on loopback, in a process of its
own so that its CPU is not the benchmark's; or reuses one with --db. Then starts `glan
serve` over it on a free port, as a process of its own, and talks to it only over HTTP
and websockets:

1. one whole-store `coverage` right after start (cold: the first read after the writes),
   the same query again alone (warm), then N clients sending one `coverage` each at once;
2. N clients looping for --duration seconds over a mix of `coverage` (whole store and a
   discipline), `subtree(depth: 2)`, `instructions` pages (first 50, then the next page
   by its endCursor) and `node(path)` lookups;
3. a generation job (`generateInstructions`, then `generateAnswers`, on a discipline of
   its own, followed by the `jobProgress` subscription) once alone and once while the
   mixed load runs: pairs/s from the first mutation until the answers job leaves RUNNING,
   planning included, counting half a pair per question and per answer written (a job
   still running after --job-timeout is cancelled, and its progress so far counts). "Plan
   seen at" is when the subscription first reported a job's total: under load, when the
   client heard of the plan, which is late when the server is. The job is started and
   followed on an event loop of its own, as a user's client would be: this process's own
   loop is busy with the load's clients and would hear of it late.

With --model-latency S the server's model answers each request S seconds after it came (the
store is built without it): the job is then paced by its model, as against a real endpoint,
and not by this machine's CPU, which the load's clients, the server and the stub share.

Prints a table (measure, value, target, met) and a final JSON line with every figure,
including the server's and this process's peak RSS. Latencies are measured by this
process, which shares the machine's cores with the server: its CPU time is reported too.

    python bench/server_load.py --clients 200 --duration 10
    python bench/server_load.py --clients 200 --model-latency 0.5 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------ the operations

COUNTS = "counts { subjects sessions concepts instructions responses }"
COVERAGE = """query($p: String) { coverage(path: $p) { __typename
  ... on Coverage {
    total { path COUNTS coveredConcepts conceptCoverage combinations
            subjectsWithoutSyllabus disciplinesWithoutSubjects }
    children { path conceptCoverage counts { instructions } } }
  ... on Problem { message } } }""".replace("COUNTS", COUNTS)
# what the dashboard asks of a subtree, two levels down
TREE_NODE = "path coveredConcepts COUNTS node { id kind name status hidden }".replace(
    "COUNTS", COUNTS
)
SUBTREE = """query($p: String) { subtree(path: $p, depth: 2) { __typename
  ... on TreeNode { NODE children { NODE children { NODE } } }
  ... on Problem { message } } }""".replace("NODE", TREE_NODE)
CHILDREN = """query($p: String) { subtree(path: $p, depth: 1) { __typename
  ... on TreeNode { children { path } } ... on Problem { message } } }"""
INSTRUCTIONS = """query($p: String, $after: String) {
  instructions(path: $p, first: 50, after: $after) { __typename
    ... on InstructionConnection {
      edges { node { id text strategy concepts { name } subject { name }
                     responses { text } } }
      pageInfo { hasNextPage endCursor } }
    ... on Problem { message } } }"""
NODE = """query($p: String) { node(path: $p) { __typename
  ... on TaxonomyNode { id kind name path status level subtopics COUNTS }
  ... on Problem { message } } }""".replace("COUNTS", COUNTS)
GENERATE_QUESTIONS = """mutation($p: String, $n: Int!, $seed: Int!) {
  generateInstructions(path: $p, n: $n, seed: $seed) { __typename
    ... on JobPayload { job { id status } } ... on Problem { message } } }"""
GENERATE_ANSWERS = """mutation($p: String) { generateAnswers(path: $p) { __typename
    ... on JobPayload { job { id status } } ... on Problem { message } } }"""
CANCEL = """mutation($id: ID!) { cancelJob(id: $id) { __typename } }"""
PROGRESS = """subscription($id: ID!) { jobProgress(id: $id) { __typename
  ... on Job { id status done failed total error } ... on Problem { message } } }"""

# ------------------------------------------------------------------ processes


STUB = """
import dataclasses, sys, time
sys.path.insert(0, {root!r})
from tests.llm_stub import fake_glan_model, run_stub
glan_model = fake_glan_model(subjects={subjects}, sessions={sessions}, concepts={concepts})
def model(body, n):
    return dataclasses.replace(glan_model(body, n), delay_s={latency!r})
with run_stub(model) as stub:
    print(stub.base_url, flush=True)
    while True:
        time.sleep(3600)
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def stub_process(
    subjects: int, sessions: int, concepts: int, latency: float = 0.0
) -> Iterator[str]:
    """The loopback model stub in a child process, answering each request `latency`
    seconds after it came; its base URL."""
    code = STUB.format(
        root=str(ROOT), subjects=subjects, sessions=sessions, concepts=concepts, latency=latency
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        url = child.stdout.readline().strip()
        if not url:
            raise RuntimeError("the model stub did not start")
        yield url
    finally:
        child.terminate()
        child.wait(10)


def glan_command() -> list[str]:
    """The `glan` entry point of this interpreter's environment."""
    script = Path(sys.executable).with_name("glan")
    if script.exists():
        return [str(script)]
    found = shutil.which("glan")
    if found:
        return [found]
    return [sys.executable, "-c", "from server.cli import main; main()"]


def glan_env(db: Path, base_url: str, concurrency: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLAN_")}
    env.update(
        GLAN_DB_PATH=str(db),
        GLAN_LLM_BASE_URL=base_url,
        GLAN_MODEL="stub",
        GLAN_LLM_CONCURRENCY=str(concurrency),
        PYTHONPATH=str(ROOT),
    )
    return env


def cli(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(
        [*glan_command(), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        raise RuntimeError(f"glan {' '.join(args)} failed:\n{proc.stdout[-2000:]}{proc.stderr}")
    return proc.stdout


def discipline_paths(env: dict[str, str]) -> list[str]:
    """Every discipline of the store, in the tree's order."""
    tree = json.loads(cli(env, "tree", "--json", "--depth", "3"))
    found: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if node.get("kind") == "Discipline":
            found.append(node["path"])
        for child in node.get("children", []):
            walk(child)

    walk(tree)
    return found


def build_store(env: dict[str, str], args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Init the store (unless it exists) and fill the disciplines the bench uses; returns the
    data disciplines (read by the load) and the two job disciplines (one job each)."""
    db = Path(env["GLAN_DB_PATH"])
    fresh = not db.exists()
    if fresh:
        log(f"building a store at {db}")
        cli(env, "init")
    disciplines = discipline_paths(env)
    if len(disciplines) < args.disciplines + 2:
        raise SystemExit(
            f"the store has {len(disciplines)} disciplines; need {args.disciplines + 2}"
        )
    data, jobs = disciplines[: args.disciplines], disciplines[args.disciplines :][:2]
    if fresh:
        shape = [
            "--rounds",
            str(args.rounds),
            "--per-call",
            str(args.subjects),
            "--sessions",
            str(args.sessions),
            "--concurrency",
            str(args.concurrency),
        ]
        for path in data:
            log(f"  generate all {path}")
            cli(env, "generate", "all", path, *shape, "--n", str(args.questions), "--seed", "1")
        for path in jobs:  # syllabi only: the jobs write the questions and answers
            log(f"  generate subjects, syllabus {path}")
            cli(env, "generate", "subjects", path, *shape)
            cli(env, "generate", "syllabus", path, *shape)
    return data, jobs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str  # http://127.0.0.1:port
    start_s: float = 0.0

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/graphql"

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process so far (every thread)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        return vm_hwm_mb(f"/proc/{self.proc.pid}/status")


def vm_hwm_mb(status: str) -> float:
    for line in Path(status).read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def serve(env: dict[str, str], folder: Path) -> Iterator[Server]:
    """`glan serve` on a free port over the store; stopped cleanly at the end."""
    port = free_port()
    out = (folder / "server.log").open("wb")
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*glan_command(), "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    server = Server(proc, f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                r = httpx.post(f"{server.url}/graphql", json={"query": "{ __typename }"}, timeout=5)
                if r.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited while starting; see {folder}/server.log")
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        server.start_s = time.perf_counter() - start
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        out.close()


# ------------------------------------------------------------------ measuring


def pct(values: list[float], q: float) -> float:
    """The q-quantile by nearest rank (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Tally:
    """Latencies of answered requests by operation, and failures."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter[str] = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)

    def fail(self, name: str, why: str) -> None:
        self.errors[name] += 1
        if len(self.first_errors) < 5:
            self.first_errors.append(f"{name}: {why}")
            log(f"  error: {name}: {why[:300]}")

    @property
    def answered(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    def all(self) -> list[float]:
        return [s for v in self.latencies.values() for s in v]


async def call(
    client: httpx.AsyncClient,
    tally: Tally,
    name: str,
    query: str,
    variables: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """One GraphQL operation: its data, or None after counting the failure."""
    start = time.perf_counter()
    try:
        r = await client.post("/graphql", json={"query": query, "variables": variables or {}})
    except httpx.HTTPError as exc:
        tally.fail(name, f"{type(exc).__name__}: {exc}")
        return None
    seconds = time.perf_counter() - start
    if r.status_code != 200:
        tally.fail(name, f"HTTP {r.status_code}: {r.text[:300]}")
        return None
    body = r.json()
    if body.get("errors"):
        tally.fail(name, json.dumps(body["errors"])[:300])
        return None
    data: dict[str, Any] = body["data"]
    for value in data.values():
        if isinstance(value, dict) and str(value.get("__typename", "")).endswith("Error"):
            tally.fail(name, f"{value['__typename']}: {value.get('message')}")
            return None
    tally.latencies[name].append(seconds)
    return data


@dataclass
class Targets:
    """What the load reads: data disciplines and subjects in them."""

    disciplines: list[str]
    subjects: list[str]


def mixed_ops(
    client: httpx.AsyncClient, tally: Tally, targets: Targets, rng: random.Random
) -> list[Callable[[], Awaitable[object]]]:
    def discipline() -> str:
        return rng.choice(targets.disciplines)

    async def coverage_store() -> None:
        await call(client, tally, "coverage_store", COVERAGE, {"p": None})

    async def coverage_discipline() -> None:
        await call(client, tally, "coverage_discipline", COVERAGE, {"p": discipline()})

    async def subtree() -> None:
        await call(client, tally, "subtree", SUBTREE, {"p": discipline()})

    async def instructions() -> None:
        path = discipline()
        data = await call(client, tally, "instructions", INSTRUCTIONS, {"p": path})
        if data is None:
            return
        info = data["instructions"]["pageInfo"]
        if info["hasNextPage"]:
            variables = {"p": path, "after": info["endCursor"]}
            await call(client, tally, "instructions_next", INSTRUCTIONS, variables)

    async def node() -> None:
        await call(client, tally, "node", NODE, {"p": rng.choice(targets.subjects)})

    return [coverage_store, coverage_discipline, subtree, instructions, node]


async def mixed_load(
    client: httpx.AsyncClient, tally: Tally, targets: Targets, clients: int, stop: asyncio.Event
) -> None:
    """`clients` clients, each looping over the mix from its own place until `stop` is set."""

    async def one(index: int) -> None:
        ops = mixed_ops(client, tally, targets, random.Random(index))
        i = index
        while not stop.is_set():
            await ops[i % len(ops)]()
            i += 1

    await asyncio.gather(*(one(i) for i in range(clients)))


@dataclass
class Meter:
    """Wall, server CPU and this process's CPU over a phase."""

    server: Server
    wall: float = 0.0
    server_cpu: float = 0.0
    own_cpu: float = 0.0

    def __enter__(self) -> Meter:
        self.wall, self.server_cpu, self.own_cpu = (
            time.perf_counter(),
            self.server.cpu_s(),
            time.process_time(),
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.server_cpu = self.server.cpu_s() - self.server_cpu
        self.own_cpu = time.process_time() - self.own_cpu

    def figures(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}_wall_s": round(self.wall, 3),
            f"{prefix}_server_cpu_s": round(self.server_cpu, 2),
            f"{prefix}_bench_cpu_s": round(self.own_cpu, 2),
        }


def latency_figures(prefix: str, values: list[float]) -> dict[str, float]:
    return {
        f"{prefix}_p50_s": round(pct(values, 0.5), 4),
        f"{prefix}_p95_s": round(pct(values, 0.95), 4),
        f"{prefix}_max_s": round(max(values, default=0.0), 4),
    }


def per_op_figures(prefix: str, tally: Tally) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in sorted(tally.latencies):
        values = tally.latencies[name]
        out[f"{prefix}_{name}_n"] = len(values)
        out[f"{prefix}_{name}_p50_s"] = round(pct(values, 0.5), 4)
        out[f"{prefix}_{name}_p95_s"] = round(pct(values, 0.95), 4)
    return out


async def counts_under(client: httpx.AsyncClient, path: str) -> dict[str, int]:
    tally = Tally()
    data = await call(client, tally, "counts", COVERAGE, {"p": path})
    if data is None:
        raise RuntimeError(f"coverage of {path} failed: {tally.first_errors}")
    return dict(data["coverage"]["total"]["counts"])


async def start_job(
    control: httpx.AsyncClient, mutation: str, field_name: str, variables: dict[str, Any]
) -> str:
    r = await control.post("/graphql", json={"query": mutation, "variables": variables})
    body = r.json()
    started = (body.get("data") or {}).get(field_name) or {}
    if r.status_code != 200 or body.get("errors") or started.get("__typename") != "JobPayload":
        raise RuntimeError(f"{field_name} did not start: {r.text[:500]}")
    return str(started["job"]["id"])


@dataclass
class Watch:
    """One job followed over the jobProgress subscription: its last state, and the seconds
    from `started` (just before its mutation was sent) until its plan was known (total > 0)
    and until it left RUNNING."""

    job_id: str
    started: float
    state: dict[str, Any] = field(default_factory=dict)
    planned_s: float | None = None
    ended_s: float | None = None

    async def run(self, ws_url: str) -> None:
        """Until the job is no longer running (at once when it has already ended)."""
        # no handshake time-out and no pings: an overloaded server answers both late, and
        # only the job's own deadline may end the watch
        async with websockets.connect(
            ws_url, subprotocols=["graphql-transport-ws"], open_timeout=None, ping_interval=None
        ) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
            ack = json.loads(await ws.recv())
            if ack.get("type") != "connection_ack":
                raise RuntimeError(f"websocket refused: {ack}")
            payload = {"query": PROGRESS, "variables": {"id": self.job_id}}
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
            while True:
                msg = json.loads(await ws.recv())
                if msg["type"] == "complete":
                    return
                if msg["type"] != "next" or msg["payload"].get("errors"):
                    raise RuntimeError(f"jobProgress: {msg}")
                job = msg["payload"]["data"]["jobProgress"]
                if job.get("__typename") != "Job":
                    raise RuntimeError(f"jobProgress: {job}")
                self.state.update(job)
                now = time.perf_counter() - self.started
                if self.planned_s is None and job["total"] > 0:
                    self.planned_s = now
                if job["status"] != "RUNNING":
                    self.ended_s = now
                    return


async def generation_job(
    control: httpx.AsyncClient,
    ws_url: str,
    path: str,
    n: int,
    budget: float,
    at_deadline: Callable[[], Awaitable[None]],
) -> dict[str, Any]:
    """`generateInstructions` (n questions), then `generateAnswers`, under `path`.

    Timed from the first mutation until the answers job leaves RUNNING. A job still running
    `budget` seconds after the start is cut short: `at_deadline` runs (it stops the load),
    then the job is cancelled and followed until it stops. Its throughput counts half a pair
    for each question and each answer it added, so a job cut short still shows its progress.
    """
    before = await counts_under(control, path)
    # a seed not used on this scope before, so the job is new rather than a resumed one
    seed = 1 + before["instructions"]
    stages = [
        (GENERATE_QUESTIONS, "generateInstructions", {"p": path, "n": n, "seed": seed}),
        (GENERATE_ANSWERS, "generateAnswers", {"p": path}),
    ]
    start = time.perf_counter()
    deadline = start + budget
    watches: list[Watch] = []
    cut = False
    for mutation, name, variables in stages:
        watch = Watch(await start_job(control, mutation, name, variables), time.perf_counter())
        watches.append(watch)
        try:
            await asyncio.wait_for(watch.run(ws_url), max(0.0, deadline - time.perf_counter()))
        except TimeoutError:
            cut = True
            log(f"  {name} still running {budget:.0f} s after the job's start: cancelling it")
            await at_deadline()
            variables = {"id": watch.job_id}
            await control.post("/graphql", json={"query": CANCEL, "variables": variables})
            await watch.run(ws_url)
            break
    wall = time.perf_counter() - start
    after = await counts_under(control, path)
    questions = after["instructions"] - before["instructions"]
    pairs = after["responses"] - before["responses"]
    q, a = watches[0], watches[1] if len(watches) > 1 else None
    return {
        "scope": path,
        "pairs": pairs,
        "questions": questions,
        "wall_s": wall,
        "pairs_per_s": (questions + pairs) / 2 / wall,
        "cut_short": cut,
        "questions_plan_s": q.planned_s,
        "questions_s": q.ended_s,
        "answers_plan_s": a.planned_s if a else None,
        "answers_s": a.ended_s if a else None,
        "status": "/".join(str(w.state.get("status")) for w in watches),
        "failed_units": sum(int(w.state.get("failed") or 0) for w in watches),
    }


async def job_apart(
    server: Server, path: str, args: argparse.Namespace, at_deadline: Callable[[], Awaitable[None]]
) -> dict[str, Any]:
    """`generation_job` on an event loop of its own, in a thread, its mutations and counts
    sent by a client without a time-out (under load they wait their turn like any
    request); `at_deadline` runs on this loop."""
    here = asyncio.get_running_loop()

    async def deadline_here() -> None:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(at_deadline(), here))

    async def job() -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=server.url, timeout=None) as control:
            return await generation_job(
                control, server.ws_url, path, args.job_n, args.job_timeout, deadline_here
            )

    return await asyncio.to_thread(asyncio.run, job())


def job_figures(prefix: str, job: dict[str, Any]) -> dict[str, Any]:
    def r(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return {
        f"{prefix}_pairs": job["pairs"],
        f"{prefix}_questions": job["questions"],
        f"{prefix}_s": r(job["wall_s"]),
        f"{prefix}_pairs_per_s": round(job["pairs_per_s"], 1),
        f"{prefix}_cut_short": job["cut_short"],
        f"{prefix}_questions_plan_s": r(job["questions_plan_s"]),
        f"{prefix}_questions_s": r(job["questions_s"]),
        f"{prefix}_answers_plan_s": r(job["answers_plan_s"]),
        f"{prefix}_answers_s": r(job["answers_s"]),
        f"{prefix}_status": job["status"],
        f"{prefix}_failed_units": job["failed_units"],
    }


async def measure(
    server: Server, data: list[str], jobs: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    res: dict[str, Any] = {}
    connections = max(args.clients, args.job_clients) + 8
    # A connection idle in the pool is dropped before the server's keep-alive time-out (5 s)
    # would close it: else a request sent on it as the server closes it fails, which is the
    # client pool's race, not an answer of the server.
    limits = httpx.Limits(
        max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=2
    )
    async with httpx.AsyncClient(
        base_url=server.url, limits=limits, timeout=args.request_timeout
    ) as client:
        # Phase 1: cold, warm, then N at once
        log("phase 1: coverage cold, warm, then a burst")
        first = Tally()
        start = time.perf_counter()
        found = await call(client, first, "coverage_cold", COVERAGE, {"p": None})
        res["coverage_cold_s"] = round(time.perf_counter() - start, 4)
        if found is None:
            raise RuntimeError(f"the first coverage failed: {first.first_errors}")
        total = found["coverage"]["total"]["counts"]
        res.update({f"store_{k}": v for k, v in total.items()})
        start = time.perf_counter()
        await call(client, first, "coverage_warm", COVERAGE, {"p": None})
        res["coverage_warm_s"] = round(time.perf_counter() - start, 4)

        burst = Tally()
        with Meter(server) as meter:
            await asyncio.gather(
                *(
                    call(client, burst, "coverage", COVERAGE, {"p": None})
                    for _ in range(args.clients)
                )
            )
        values = burst.all()
        res["burst_clients"] = args.clients
        res["burst_answered"] = len(values)
        res["burst_errors"] = sum(burst.errors.values())
        res["burst_req_per_s"] = round(len(values) / meter.wall, 1)
        res.update(latency_figures("burst", values))
        res.update(meter.figures("burst"))

        # the load's targets: subjects of the data disciplines
        subjects: list[str] = []
        for path in data:
            tree = await call(client, first, "children", CHILDREN, {"p": path})
            if tree is not None:
                subjects += [c["path"] for c in tree["subtree"]["children"]]
        if not subjects:
            raise RuntimeError(f"no subjects under {data}: {first.first_errors}")
        targets = Targets(data, subjects)

        # Phase 2: the mix for a while
        log(f"phase 2: {args.clients} clients, mixed, {args.duration} s")
        mixed = Tally()
        stop = asyncio.Event()
        with Meter(server) as meter:
            running = asyncio.create_task(mixed_load(client, mixed, targets, args.clients, stop))
            await asyncio.sleep(args.duration)
            stop.set()
            await running
        res["mixed_clients"] = args.clients
        res["mixed_requests"] = mixed.answered
        res["mixed_errors"] = sum(mixed.errors.values())
        res["mixed_req_per_s"] = round(mixed.answered / meter.wall, 1)
        res.update(latency_figures("mixed", mixed.all()))
        res.update(per_op_figures("mixed", mixed))
        res.update(meter.figures("mixed"))

        # Phase 3: the job alone, then with the mix running. The job is started and followed
        # on an event loop of its own (job_apart), as a user's client would be: this
        # process's loop, busy with the load's clients, would hear of it late.
        log(f"phase 3: a {args.job_n}-pair job on {jobs[0]} alone")

        async def nothing() -> None:
            return None

        with Meter(server) as meter:
            alone = await job_apart(server, jobs[0], args, nothing)
        res.update(job_figures("job_unloaded", alone))
        res.update(meter.figures("job_unloaded_phase"))

        log(f"phase 3: a {args.job_n}-pair job on {jobs[1]} under {args.job_clients} clients")
        during = Tally()
        stop = asyncio.Event()
        load_wall = [time.perf_counter(), 0.0]
        with Meter(server) as meter:
            running = asyncio.create_task(
                mixed_load(client, during, targets, args.job_clients, stop)
            )

            async def stop_load() -> None:
                stop.set()
                await running
                load_wall[1] = load_wall[1] or time.perf_counter()

            try:
                loaded = await job_apart(server, jobs[1], args, stop_load)
            finally:
                await stop_load()
        res.update(job_figures("job_loaded", loaded))
        res.update(meter.figures("job_loaded_phase"))
        res["job_load_clients"] = args.job_clients
        res["job_load_requests"] = during.answered
        res["job_load_errors"] = sum(during.errors.values())
        res["job_load_s"] = round(load_wall[1] - load_wall[0], 3)
        res["job_load_req_per_s"] = round(during.answered / (load_wall[1] - load_wall[0]), 1)
        res.update(latency_figures("job_load", during.all()))
        res.update(per_op_figures("job_load", during))
        unloaded = alone["pairs_per_s"]
        res["job_ratio"] = round(loaded["pairs_per_s"] / unloaded, 3) if unloaded else 0.0
        res["first_errors"] = (
            first.first_errors + burst.first_errors + mixed.first_errors + during.first_errors
        )[:5]
    return res


# ------------------------------------------------------------------ report

#: (key, label, target text, check) for the table; rows whose key is missing are skipped.
ROWS: list[tuple[str, str, str, Callable[[float], bool] | None]] = [
    ("store_instructions", "store: instructions", "", None),
    ("store_concepts", "store: concepts", "", None),
    ("server_start_s", "server start (s)", "", None),
    ("coverage_cold_s", "coverage, first read after start (s)", "", None),
    ("coverage_warm_s", "coverage, warm, alone (s)", "", None),
    ("burst_req_per_s", "N concurrent coverage: req/s", ">= 200", lambda v: v >= 200),
    ("burst_p50_s", "N concurrent coverage: p50 (s)", "", None),
    ("burst_p95_s", "N concurrent coverage: p95 (s)", "< 1", lambda v: v < 1),
    ("burst_max_s", "N concurrent coverage: max (s)", "", None),
    ("mixed_req_per_s", "mixed load: req/s", "", None),
    ("mixed_p50_s", "mixed load: p50 (s)", "", None),
    ("mixed_p95_s", "mixed load: p95 (s)", "", None),
    ("job_unloaded_questions_plan_s", "job alone: questions plan seen at (s)", "", None),
    ("job_unloaded_answers_plan_s", "job alone: answers plan seen at (s)", "", None),
    ("job_unloaded_pairs_per_s", "job alone: pairs/s, (q + a) / 2 / s", "", None),
    ("job_unloaded_status", "job alone: questions/answers status", "", None),
    ("job_loaded_questions_plan_s", "job under load: questions plan seen at (s)", "", None),
    ("job_loaded_answers_plan_s", "job under load: answers plan seen at (s)", "", None),
    ("job_loaded_pairs_per_s", "job under load: pairs/s, (q + a) / 2 / s", "", None),
    ("job_loaded_status", "job under load: questions/answers status", "", None),
    ("job_ratio", "job: loaded / alone pairs/s", ">= 0.8", lambda v: v >= 0.8),
    ("job_load_req_per_s", "load during the job: req/s", "", None),
    ("job_load_p95_s", "load during the job: p95 (s)", "", None),
    ("errors", "failed requests", "0", lambda v: v == 0),
    ("server_peak_rss_mb", "server peak RSS (MB)", "", None),
    ("bench_peak_rss_mb", "bench peak RSS (MB)", "", None),
]


def table(results: dict[str, Any]) -> None:
    print(f"{'measure':<48}{'value':>14}  {'target':<8}{'met'}")
    for key, label, target, check in ROWS:
        value = results.get(key)
        if value is None:
            continue
        met = "" if check is None else ("met" if check(value) else "missed")
        if isinstance(value, bool | str):
            shown = str(value)
        else:
            shown = f"{value:,.3f}" if isinstance(value, float) else f"{value:,}"
        print(f"{label:<48}{shown:>14}  {target:<8}{met}".rstrip())
    for name in ("coverage_store", "coverage_discipline", "subtree", "instructions", "node"):
        key = f"mixed_{name}_p95_s"
        if key in results:
            p50, p95 = results[f"mixed_{name}_p50_s"], results[key]
            label = f"mixed load: {name} p50 / p95 (s)"
            print(f"{label:<48}{f'{p50:.3f} / {p95:.3f}':>14}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--db", type=Path, help="store to use (built there when missing)")
    parser.add_argument("--disciplines", type=int, default=4, help="disciplines the load reads")
    parser.add_argument("--rounds", type=int, default=2, help="subject rounds per discipline")
    parser.add_argument("--subjects", type=int, default=3, help="subjects the stub gives a round")
    parser.add_argument("--sessions", type=int, default=6, help="sessions per syllabus")
    parser.add_argument("--concepts", type=int, default=5, help="concepts per session")
    parser.add_argument("--questions", type=int, default=250, help="pairs per data discipline")
    parser.add_argument("--concurrency", type=int, default=16, help="model calls in flight")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of mixed load")
    parser.add_argument("--job-n", type=int, default=300, help="questions (pairs) per job")
    parser.add_argument("--job-clients", type=int, help="clients while the job runs (--clients)")
    parser.add_argument(
        "--job-timeout", type=float, default=120.0, help="a job still running then is cut short (s)"
    )
    parser.add_argument("--request-timeout", type=float, default=120.0)
    parser.add_argument(
        "--model-latency",
        type=float,
        default=0.0,
        help="seconds the server's model takes to answer each request (the store is "
        "built without it): a job paced by its model, as against a real endpoint, instead "
        "of by this machine's CPU",
    )
    args = parser.parse_args()
    args.job_clients = args.job_clients or args.clients

    folder = Path(tempfile.mkdtemp(prefix="glan-bench-"))
    db = args.db or folder / "store.lbug"
    results: dict[str, Any] = {}
    ok = False
    try:
        with stub_process(args.subjects, args.sessions, args.concepts) as base_url:
            env = glan_env(db, base_url, args.concurrency)
            start = time.perf_counter()
            reused = db.exists()
            data, jobs = build_store(env, args)
            results["store_reused"] = reused
            results["build_s"] = round(time.perf_counter() - start, 1)
            results["model_latency_s"] = args.model_latency
            with (
                stub_process(args.subjects, args.sessions, args.concepts, args.model_latency)
                if args.model_latency
                else nullcontext(base_url)
            ) as model_url:
                env = glan_env(db, model_url, args.concurrency)
                with serve(env, folder) as server:
                    results["server_start_s"] = round(server.start_s, 3)
                    results.update(asyncio.run(measure(server, data, jobs, args)))
                    results["server_peak_rss_mb"] = round(server.peak_rss_mb(), 1)
        ok = True
    finally:
        if ok:
            shutil.rmtree(folder, ignore_errors=True)  # the store too, unless --db put it elsewhere
        else:
            log(f"kept {folder} (the server's log, and the store unless --db)")
    results["errors"] = sum(
        int(results.get(k, 0)) for k in ("burst_errors", "mixed_errors", "job_load_errors")
    )
    results["bench_peak_rss_mb"] = round(
        max(
            vm_hwm_mb("/proc/self/status"),
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        ),
        1,
    )
    results["cores"] = os.cpu_count()
    table(results)
    print(json.dumps({"bench": "server_load", **results}))


if __name__ == "__main__":
    main()
