"""Killing the server while a job that a mutation started runs, then starting it again.

The server runs as its own process (`python -m uvicorn server.app:app`, settings from GLAN_*
variables). It is killed with SIGKILL at seeded points of a job; after each kill the store
is opened directly and must hold every unit the server had reported done, and nothing
broken. Then a clean stop (SIGTERM) mid-job: the job is stored as interrupted, with every
unit reported done.

A server that starts again resumes by itself the job it was running when it was killed or
stopped, with its counters recounted from its units, and ends with the graph of an
uninterrupted run; a job cancelled through cancelJob stays cancelled. With
GLAN_RESUME_JOBS=false it resumes nothing and reports the job as interrupted; asking for
the same job again resumes it, to the same graph. CI kills three times (twice in the run
that resumes by itself); `--full-reliability` ten (and five).
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from generators.jobs import Progress, job_id_for
from generators.pipeline import PipelineOptions
from generators.stages import STAGES
from graph.config import StoreConfig
from graph.model import Status
from graph.records import now_iso
from graph.store import Store
from tests.api_helpers import free_port, run_api, settings
from tests.graph_checks import integrity_problems, snapshot, units_by_job
from tests.llm_stub import Reply, Stub, fake_glan_model, run_stub
from tests.test_sampling import fill

ROOT = Path(__file__).parents[1]
SCOPE = "Natural Sciences/Physical Sciences/Physics"
N = 60

START = """mutation($p: String, $seed: Int!) { generateInstructions(path: $p, n: %d, seed: $seed)
  { __typename ... on JobPayload { job { id live } } ... on Problem { message } } }"""
JOB = """query($id: ID!) { job(id: $id) { __typename ... on Job { status live done failed total
  error units(status: DONE, first: 500) { edges { node { id } } } } } }"""
CANCEL = """mutation($id: ID!) { cancelJob(id: $id) {
  __typename ... on JobPayload { job { id } } } }"""


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str

    def gql(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        response = httpx.post(self.url, json={"query": query, "variables": variables}, timeout=30)
        assert response.status_code == 200, response.text
        body = response.json()
        assert not body.get("errors"), body
        return body["data"]

    def start_job(self, seed: int = 11) -> str:
        started = self.gql(START % N, {"p": SCOPE, "seed": seed})["generateInstructions"]
        assert started["__typename"] == "JobPayload", started
        return str(started["job"]["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return self.gql(JOB, {"id": job_id})["job"]

    def wait(self, job_id: str, until: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The job as the server reports it once `until` holds (a few seconds at most)."""
        deadline = time.monotonic() + 20
        while not until(job := self.job(job_id)):
            assert time.monotonic() < deadline, job
            time.sleep(0.02)
        return job

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)


@contextmanager
def serve(db: Path, stub: Stub, *, log: Path | None = None, **settings: str) -> Iterator[Server]:
    """The server as a process of its own; killed at the end if the test has not stopped it.
    Its stderr is appended to `log`; `settings` are more GLAN_* variables, by setting name
    (resume_jobs="false")."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLAN_")}
    env.update(
        GLAN_DB_PATH=str(db),
        GLAN_LLM_BASE_URL=stub.base_url,
        GLAN_MODEL="stub",
        GLAN_LLM_CONCURRENCY="4",
        PYTHONPATH=str(ROOT),
        **{f"GLAN_{name.upper()}": value for name, value in settings.items()},
    )
    command = ["-m", "uvicorn", "server.app:app", "--port", str(port), "--log-level", "warning"]
    with open(log or os.devnull, "ab") as stderr:
        proc = subprocess.Popen(
            [sys.executable, *command], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )
    server = Server(proc, f"http://127.0.0.1:{port}/graphql")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.post(server.url, json={"query": "{ __typename }"}, timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None, "the server exited while starting"
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.05)
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def wait_for_done(server: Server, job_id: str, done: int) -> None:
    """Until the server reports `done` units of the job done."""
    deadline = time.monotonic() + 60
    while server.job(job_id)["done"] < done:
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.005)


def done_ids(server: Server, job_id: str) -> set[str]:
    return {e["node"]["id"] for e in server.job(job_id)["units"]["edges"]}


def stored(db: Path) -> tuple[dict[str, Any], list[str], set[str], str]:
    """Snapshot, problems, done unit ids and the job's status, read from the closed store."""
    with Store.open(StoreConfig(db_path=db)) as store:
        units = [u for us in units_by_job(store).values() for u in us]
        (job,) = store.jobs.all()
        return (
            snapshot(store),
            integrity_problems(store),
            {u["id"] for u in units if u["status"] == "done"},
            str(job["status"]),
        )


def stop(server: Server) -> None:
    """A clean stop: uvicorn shuts the app down, then exits by the signal it caught."""
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) in (0, -signal.SIGTERM)


def run_to_the_end(db: Path, stub: Stub, **settings: str) -> None:
    with serve(db, stub, **settings) as server:
        job_id = server.start_job()
        deadline = time.monotonic() + 120
        while (job := server.job(job_id))["live"]:
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
        assert job["status"] == "COMPLETED" and job["done"] == N, job
        stop(server)


def slow_model() -> Callable[[dict[str, Any], int], Reply]:
    model = fake_glan_model()

    def slow(body: dict[str, Any], n: int) -> Reply:
        reply = model(body, n)
        reply.delay_s = 0.2  # slow enough that a kill lands between a few units
        return reply

    return slow


def filled(*dbs: Path) -> None:
    for db in dbs:
        with Store.open(StoreConfig(db_path=db)) as store:
            fill(store, subjects=3, sessions=5, concepts=5)


def jobs_stored(db: Path) -> dict[str, dict[str, Any]]:
    with Store.open(StoreConfig(db_path=db)) as store:
        return {str(j["id"]): j for j in store.jobs.all()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store where the job ran to the end without a stop: what the others must equal."""
    reference = tmp_path_factory.mktemp("reference") / "reference.lbug"
    filled(reference)
    with run_stub(slow_model()) as stub:
        run_to_the_end(reference, stub)
    return reference


def test_server_killed_during_a_job_resumes_to_the_same_graph(
    tmp_path: Path, full_reliability: bool, uninterrupted: Path
) -> None:
    """With resuming off: each start leaves the job alone, and the same mutation resumes it."""
    kills = 10 if full_reliability else 3
    killed = tmp_path / "killed.lbug"
    filled(killed)
    off = {"resume_jobs": "false"}
    draw = random.Random(99)
    started = time.monotonic()
    with run_stub(slow_model()) as stub:
        job_ids, reported_done, durable, after_kills = set(), 0, 0, []
        for _ in range(kills):  # forced stops
            with serve(killed, stub, **off) as server:
                job_id = server.start_job()
                job_ids.add(job_id)
                wait_for_done(server, job_id, durable + draw.randint(1, N // (3 * (kills + 1))))
                reported = done_ids(server, job_id)
                time.sleep(draw.uniform(0, 0.05))  # anywhere in the units in flight
                server.kill()
            _, problems, done, status = stored(killed)
            assert problems == [] and reported <= done and status == "running"
            reported_done += len(reported)
            durable = len(done)
            after_kills.append(durable)
            assert len(done) < N

        with serve(killed, stub, **off) as server:  # a clean stop in the middle of the job
            job_id = server.start_job()
            job_ids.add(job_id)
            wait_for_done(server, job_id, durable + 2)
            reported = done_ids(server, job_id)
            stop(server)
        _, problems, done, status = stored(killed)
        assert problems == [] and reported <= done and status == "interrupted"

        run_to_the_end(killed, stub, **off)
    print(
        f"\nserver: {kills} SIGKILLs and a SIGTERM during a {N}-unit job (units done after "
        f"each kill: {after_kills}), {time.monotonic() - started:.0f} s"
    )

    assert reported_done > 0  # durability was checked on something
    assert len(job_ids) == 1  # the same mutation found the same job every time
    want, want_problems, _, _ = stored(uninterrupted)
    got, problems, done, status = stored(killed)
    assert want_problems == [] and problems == []
    assert status == "completed" and len(done) == N
    assert got == want


def test_a_killed_server_resumes_its_job_by_itself_to_the_same_graph(
    tmp_path: Path, full_reliability: bool, uninterrupted: Path
) -> None:
    """Started once by a mutation, then never again: each start of the server resumes the
    job (killed again while it runs, but the last time), with counters from its units."""
    kills = 5 if full_reliability else 2
    killed = tmp_path / "killed.lbug"
    filled(killed)
    draw = random.Random(7)
    with run_stub(slow_model()) as stub:
        with serve(killed, stub) as server:
            job_id = server.start_job()
            wait_for_done(server, job_id, draw.randint(1, N // (3 * (kills + 1))))
            server.kill()
        lagging, log = [], tmp_path / "server.log"
        for k in range(kills):
            _, problems, done, status = stored(killed)
            assert problems == [] and status == "running" and len(done) < N
            lagging.append((int(jobs_stored(killed)[job_id]["done"] or 0), len(done)))
            with serve(killed, stub, log=log) as server:  # no mutation: the server resumes it
                job = server.wait(job_id, lambda j: j["live"])
                # counted from its units, not from the job's own counters saved before the kill
                assert job["status"] == "RUNNING" and job["total"] == N, job
                assert job["done"] >= len(done), (job, len(done))
                if k < kills - 1:
                    step = draw.randint(1, N // (3 * (kills + 1)))
                    wait_for_done(server, job_id, len(done) + step)
                    time.sleep(draw.uniform(0, 0.05))
                    server.kill()
                    continue
                job = server.wait(job_id, lambda j: not j["live"])
                assert job["status"] == "COMPLETED" and job["done"] == N, job
                stop(server)
    print(f"\nresumed by itself after {kills} kills (job's done, units done: {lagging})")
    said = [line for line in log.read_text().splitlines() if "resuming questions job" in line]
    assert len(said) == kills and all(job_id in line for line in said), said

    want, want_problems, _, _ = stored(uninterrupted)
    got, problems, done, status = stored(killed)
    assert want_problems == [] and problems == []  # counters and tokens equal the units'
    assert status == "completed" and len(done) == N
    assert got == want


def test_with_resuming_off_the_killed_job_is_reported_interrupted(tmp_path: Path) -> None:
    db = tmp_path / "off.lbug"
    filled(db)
    with run_stub(slow_model()) as stub:
        with serve(db, stub) as server:
            job_id = server.start_job()
            wait_for_done(server, job_id, 3)
            server.kill()
        _, _, done, status = stored(db)
        assert status == "running"
        calls = stub.calls
        with serve(db, stub, resume_jobs="false") as server:
            job = server.wait(job_id, lambda j: j["status"] != "RUNNING")
            assert job["status"] == "INTERRUPTED" and not job["live"], job
            assert "GLAN_RESUME_JOBS" in job["error"], job
            assert (job["done"], job["failed"], job["total"]) == (len(done), 0, N)
            time.sleep(0.5)
            assert server.job(job_id) == job and stub.calls == calls  # nothing ran
            stop(server)
        _, problems, still, status = stored(db)
        assert problems == [] and still == done and status == "interrupted"
        with serve(db, stub) as server:  # resuming on: the interrupted job resumes
            server.wait(job_id, lambda j: j["live"])
            server.kill()
        with serve(db, stub, resume_jobs="false") as server:  # cancelled while not running
            assert server.gql(CANCEL, {"id": job_id})["cancelJob"]["__typename"] == "JobPayload"
            cancelled = server.job(job_id)
            assert cancelled["status"] == "CANCELLED" and not cancelled["live"], cancelled
            stop(server)
        calls = stub.calls
        with serve(db, stub) as server:  # so resuming on leaves it alone
            time.sleep(0.5)
            assert server.job(job_id) == cancelled and stub.calls == calls
            stop(server)


def test_a_cancelled_job_stays_cancelled_and_a_stopped_one_resumes(tmp_path: Path) -> None:
    """A job cancelled through cancelJob is not resumed on restart; one the server stopped
    as it shut down (SIGTERM) is."""
    db = tmp_path / "cancel.lbug"
    filled(db)
    with run_stub(slow_model()) as stub:
        with serve(db, stub) as server:
            cancelled = server.start_job(seed=11)
            wait_for_done(server, cancelled, 3)
            assert server.gql(CANCEL, {"id": cancelled})["cancelJob"]["__typename"] == "JobPayload"
            server.wait(cancelled, lambda j: not j["live"])
            stopped = server.start_job(seed=12)  # the scope is free again
            wait_for_done(server, stopped, 3)
            stop(server)
        rows = jobs_stored(db)
        assert rows[cancelled]["status"] == "cancelled" and rows[stopped]["status"] == "interrupted"
        with serve(db, stub) as server:
            job = server.wait(stopped, lambda j: j["status"] != "INTERRUPTED" and not j["live"])
            assert job["status"] == "COMPLETED" and job["done"] == N, job
            assert server.job(cancelled)["status"] == "CANCELLED"
            stop(server)
    after = jobs_stored(db)
    assert after[cancelled] == rows[cancelled]  # not touched


def test_options_rebuilt_from_a_stored_key_give_the_same_key() -> None:
    chosen = PipelineOptions(
        n=7, rounds=3, per_call=4, sessions=5, strategy="hard", basic_ratio=0.25, seed=9,
        prefer_uncovered=False, taxonomy_n=6, auto_approve=True,
    )  # fmt: skip
    for stage in STAGES:
        key = json.loads(json.dumps(chosen.for_stage(stage)))  # as stored
        assert PipelineOptions.from_stage(stage, key).for_stage(stage) == key, stage


def stored_job(store: Store, stage: str, scope: str, key: dict[str, Any], status: str) -> str:
    """A job row as a server left it (no units: it was stopped before it planned)."""
    job_id = job_id_for(stage, scope, key)
    row = Progress(job_id, stage, scope, status).as_row(json.dumps(key, sort_keys=True))
    store.jobs.save({**row, "created_at": now_iso()})
    time.sleep(0.002)  # resumed in the order they were made
    return job_id


JOBS = """{ jobs(first: 50) { ... on JobConnection { edges { node {
  id kind status live done total error } } } } }"""


def test_jobs_resumed_on_start_are_the_same_jobs_or_fail_saying_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In-process, no kill: stored jobs a server was running when it stopped. Those it can
    start again as they were resume, one at a time on overlapping scopes, in the order they
    were made; one whose scope is gone or no longer approved, or whose model is no longer
    the server's, is stored as failed with why."""
    db = tmp_path / "resume.lbug"
    chemistry = "Natural Sciences/Physical Sciences/Chemistry"
    maths = "Formal Sciences/Mathematics"

    def questions(n: int, seed: int) -> dict[str, Any]:
        return PipelineOptions(n=n, seed=seed).for_stage("questions")

    with Store.open(StoreConfig(db_path=db)) as store:
        fill(store, subjects=3, sessions=5, concepts=5)
        gone = stored_job(store, "questions", chemistry, questions(4, 1), "running")
        rejected = stored_job(store, "syllabus", maths, {"sessions": 12}, "interrupted")
        renamed = stored_job(store, "answers", SCOPE, {"model": "old-model"}, "running")
        first = stored_job(store, "questions", SCOPE, questions(6, 3), "running")
        then = stored_job(store, "questions", "", questions(4, 5), "interrupted")
        store.taxonomy.delete_subtree(chemistry)
        store.taxonomy.review(maths, Status.REJECTED)

    caplog.set_level(logging.WARNING, logger="glan.jobs")
    with run_stub(fake_glan_model()) as stub, run_api(settings(db, stub)) as api:
        deadline = time.monotonic() + 30
        while True:
            jobs = {e["node"]["id"]: e["node"] for e in api.gql(JOBS)["jobs"]["edges"]}
            assert sum(j["live"] for j in jobs.values() if j["kind"] == "QUESTIONS") <= 1
            if all(j["status"] not in ("RUNNING", "INTERRUPTED") for j in jobs.values()):
                break
            assert time.monotonic() < deadline, jobs
            time.sleep(0.01)

    for job_id, n in ((first, 6), (then, 4)):
        assert jobs[job_id]["status"] == "COMPLETED" and jobs[job_id]["done"] == n, jobs[job_id]
    for job_id, why in (
        (gone, "Chemistry"),
        (rejected, "rejected"),
        (renamed, "model was 'old-model', now 'stub'"),
    ):
        job = jobs[job_id]
        assert job["status"] == "FAILED" and "could not be resumed" in job["error"], job
        assert why in job["error"], job
    said = [r.getMessage() for r in caplog.records if r.name == "glan.jobs"]
    resumed = [line for line in said if line.startswith("resuming")]
    assert [first in resumed[0], then in resumed[1]] == [True, True], said  # in their order
    assert len(resumed) == 2 and len(said) == 5, said
