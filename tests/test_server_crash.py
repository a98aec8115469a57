"""Killing the server while a job that a mutation started runs, then starting it again.

The server runs as its own process (`python -m uvicorn server.app:app`, settings from GLAN_*
variables). It is killed with SIGKILL at seeded points of a job; after each kill the store
is opened directly and must hold every unit the server had reported done, and nothing
broken. Then a clean stop (SIGTERM) mid-job: the job is stored as cancelled, with every
unit reported done. At the end, asking for the same job resumes it, and the graph equals
that of an uninterrupted run. CI kills three times; `--full-reliability` ten.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from graph.config import StoreConfig
from graph.store import Store
from tests.api_helpers import free_port
from tests.graph_checks import integrity_problems, snapshot, units_by_job
from tests.llm_stub import Reply, Stub, fake_glan_model, run_stub
from tests.test_sampling import fill

ROOT = Path(__file__).parents[1]
SCOPE = "Natural Sciences/Physical Sciences/Physics"
N = 60

START = """mutation($p: String) { generateInstructions(path: $p, n: %d, seed: 11) {
  __typename ... on JobPayload { job { id live } } ... on Problem { message } } }"""
JOB = """query($id: ID!) { job(id: $id) { __typename ... on Job { status live done total
  units(status: DONE, first: 500) { edges { node { id } } } } } }"""


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

    def start_job(self) -> str:
        started = self.gql(START % N, {"p": SCOPE})["generateInstructions"]
        assert started["__typename"] == "JobPayload", started
        return str(started["job"]["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return self.gql(JOB, {"id": job_id})["job"]


@contextmanager
def serve(db: Path, stub: Stub) -> Iterator[Server]:
    """The server as a process of its own; killed at the end if the test has not stopped it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLAN_")}
    env.update(
        GLAN_DB_PATH=str(db),
        GLAN_LLM_BASE_URL=stub.base_url,
        GLAN_MODEL="stub",
        GLAN_LLM_CONCURRENCY="4",
        PYTHONPATH=str(ROOT),
    )
    command = ["-m", "uvicorn", "server.app:app", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(
        [sys.executable, *command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
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


def run_to_the_end(db: Path, stub: Stub) -> None:
    with serve(db, stub) as server:
        job_id = server.start_job()
        deadline = time.monotonic() + 120
        while (job := server.job(job_id))["live"]:
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
        assert job["status"] == "COMPLETED" and job["done"] == N, job
        stop(server)


def test_server_killed_during_a_job_resumes_to_the_same_graph(
    tmp_path: Path, full_reliability: bool
) -> None:
    kills = 10 if full_reliability else 3
    model = fake_glan_model()

    def slow(body: dict[str, Any], n: int) -> Reply:
        reply = model(body, n)
        reply.delay_s = 0.2  # slow enough that a kill lands between a few units
        return reply

    reference, killed = tmp_path / "reference.lbug", tmp_path / "killed.lbug"
    for db in (reference, killed):
        with Store.open(StoreConfig(db_path=db)) as store:
            fill(store, subjects=3, sessions=5, concepts=5)
    draw = random.Random(99)
    started = time.monotonic()
    with run_stub(slow) as stub:
        run_to_the_end(reference, stub)
        job_ids, reported_done, durable, after_kills = set(), 0, 0, []
        for _ in range(kills):  # forced stops
            with serve(killed, stub) as server:
                job_id = server.start_job()
                job_ids.add(job_id)
                wait_for_done(server, job_id, durable + draw.randint(1, N // (3 * (kills + 1))))
                reported = done_ids(server, job_id)
                time.sleep(draw.uniform(0, 0.05))  # anywhere in the units in flight
                server.proc.send_signal(signal.SIGKILL)
                server.proc.wait(30)
            _, problems, done, status = stored(killed)
            assert problems == [] and reported <= done and status == "running"
            reported_done += len(reported)
            durable = len(done)
            after_kills.append(durable)
            assert len(done) < N

        with serve(killed, stub) as server:  # a clean stop in the middle of the job
            job_id = server.start_job()
            job_ids.add(job_id)
            wait_for_done(server, job_id, durable + 2)
            reported = done_ids(server, job_id)
            stop(server)
        _, problems, done, status = stored(killed)
        assert problems == [] and reported <= done and status == "cancelled"

        run_to_the_end(killed, stub)
    print(
        f"\nserver: {kills} SIGKILLs and a SIGTERM during a {N}-unit job (units done after "
        f"each kill: {after_kills}), {time.monotonic() - started:.0f} s"
    )

    assert reported_done > 0  # durability was checked on something
    assert len(job_ids) == 1  # the same mutation found the same job every time
    want, want_problems, _, _ = stored(reference)
    got, problems, done, status = stored(killed)
    assert want_problems == [] and problems == []
    assert status == "completed" and len(done) == N
    assert got == want
