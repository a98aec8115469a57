"""The `glan` command line while a server holds the embedded store: through its API.

Most tests build one store, copy it, and run each command twice: on one copy as a local
run, and through a server that holds the other copy. Both runs must print the same (and
exit the same). One test starts a real `glan serve` and finds it only by the record it
leaves beside the database.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from graph.filters import InstructionFilter
from server.cli import app
from server.discovery import record_path
from tests.api_helpers import Api, free_port, run_api, subscribe
from tests.api_helpers import settings as api_settings
from tests.llm_stub import Reply, Stub, fake_glan_model, first_user_message, ok, run_stub

ROOT = Path(__file__).parents[1]
ALGEBRA = "Formal Sciences/Mathematics/Algebra"
BIO = "Natural Sciences/Physical Sciences/Biophysics"
FOLDING = f"{BIO}/Protein Folding"
#: node timestamps: a node added in each copy is added at a different moment
STAMP = re.compile(r'"(created_at|updated_at)": "[^"]*"')

runner = CliRunner()


def glan(*args: str, input: str | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), input=input)
    return result.exit_code, result.output


def copy_store(src: Path, dst: Path) -> None:
    for f in src.parent.glob(src.name + "*"):
        if not f.name.endswith(".server.json"):
            shutil.copy(f, dst.parent / f.name.replace(src.name, dst.name, 1))


@pytest.fixture
def stub() -> Iterator[Stub]:
    with run_stub(fake_glan_model(subjects=2, sessions=2, concepts=3)) as s:
        yield s


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stub: Stub) -> Path:
    """A clean environment for the CLI (no .env, no server named) over a store at `local`."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("GLAN_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GLAN_LLM_BASE_URL", stub.base_url)
    monkeypatch.setenv("GLAN_MODEL", "stub")
    monkeypatch.setenv("GLAN_LLM_CONCURRENCY", "4")
    db = tmp_path / "local.lbug"
    monkeypatch.setenv("GLAN_DB_PATH", str(db))
    return db


@pytest.fixture
def algebra(env: Path) -> Path:
    """The seed taxonomy, with subjects and syllabi under Algebra (made by the CLI)."""
    assert glan("init")[0] == 0
    code, out = glan("generate", "subjects", ALGEBRA, "--rounds", "1", "--per-call", "2")
    assert code == 0, out
    code, out = glan("generate", "syllabus", ALGEBRA, "--sessions", "2")
    assert code == 0, out
    return env


class Twins:
    """The same command on the local copy and through a server holding the other copy."""

    def __init__(self, api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
        self.api = api
        self.monkeypatch = monkeypatch

    def local(self, *args: str, **kw: Any) -> tuple[int, str]:
        self.monkeypatch.delenv("GLAN_SERVER_URL", raising=False)
        return glan(*args, **kw)

    def remote(self, *args: str, **kw: Any) -> tuple[int, str]:
        """Through the server. The CLI is given no store of its own: one it opened would
        appear here (and it would print what an empty store holds)."""
        with self.monkeypatch.context() as m:
            m.setenv("GLAN_SERVER_URL", self.api.url)
            m.setenv("GLAN_DB_PATH", str(self.nowhere))
            found = glan(*args, **kw)
        assert not self.nowhere.exists(), "the CLI opened a store of its own"
        return found

    @property
    def nowhere(self) -> Path:
        return Path.cwd() / "not-a-store.lbug"

    def same(self, *args: str, code: int = 0, **kw: Any) -> str:
        """Run both ways: the same exit status (`code`) and the same output."""
        here, out_here = self.local(*args, **kw)
        there, out_there = self.remote(*args, **kw)
        assert (here, there) == (code, code), f"{out_here}\n---\n{out_there}"
        assert STAMP.sub("", out_there) == STAMP.sub("", out_here), (
            f"local:\n{out_here}\nthrough the server:\n{out_there}"
        )
        return out_here


@contextmanager
def twins(db: Path, stub: Stub, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> Iterator[Twins]:
    served = db.with_name("served.lbug")
    copy_store(db, served)
    with run_api(api_settings(served, stub, **kw)) as api:
        yield Twins(api, monkeypatch)


def test_taxonomy_commands_print_the_same_through_the_server(
    algebra: Path, stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    with twins(algebra, stub, monkeypatch) as t:
        out = t.same("tree", "--depth", "2")
        assert "Formal Sciences" in out and "Algebra" not in out
        assert '"path": "Formal Sciences"' in t.same("tree", "Formal Sciences", "--json")
        # deeper than one subtree query goes: the server is asked again below its answer
        out = t.same("tree", "Formal Sciences", "--depth", "5", "--json")
        concepts = [c for c in json.loads(out)["children"] if c["path"].endswith("Mathematics")]
        assert "Session 0" in json.dumps(concepts) and "concept" in json.dumps(concepts)
        t.same("tree", "Formal Sciences/Mathematics", "--depth", "6")
        assert "Subject" in t.same("tree", "--depth", "4")  # below 141 disciplines, in batches
        t.same("tree", "Formal Sciences/Nope", code=1)

        assert "Discipline" in t.same("add", BIO, "--kind", "discipline")
        assert t.api.store.taxonomy.node(BIO).name == "Biophysics"  # added in the server
        t.same("add", FOLDING, "--level", "graduate", "--subtopic", "energy landscapes")
        t.same("add", "Nowhere/Sub", code=1)
        assert "2 discipline(s)" in t.same("link", ALGEBRA, FOLDING)
        assert "rejected" in t.same("review", BIO, "--reject")
        info = json.loads(STAMP.sub('"x": 0', t.same("show", FOLDING)))
        assert info["hidden"] is True and info["level"] == "graduate"
        assert len(info["paths"]) == 2
        t.same("show", ALGEBRA)
        t.same("tree", "Natural Sciences/Physical Sciences", "--json")
        assert "approved" in t.same("review", BIO, "--approve")
        t.same("review", BIO, code=2)

        subject = json.loads(STAMP.sub('"x": 0', t.same("tree", ALGEBRA, "--json")))
        first = next(c["path"] for c in subject["children"] if "Folding" not in c["path"])
        t.same("delete", first, input="n\n", code=1)  # asked, and refused: nothing changes
        assert "Subject" in t.same("delete", first, input="y\n")
        assert "1 unlinked" in t.same("delete", f"{ALGEBRA}/Protein Folding", "--yes")
        t.same("tree", ALGEBRA, "--depth", "3")
        t.same("jobs")
        t.same("jobs", "--failed", "--json")


def test_generate_runs_in_the_server_and_prints_the_same(
    algebra: Path, stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    with twins(algebra, stub, monkeypatch, llm_concurrency=4) as t:
        calls = stub.calls
        out = t.same("generate", "questions", ALGEBRA, "--n", "6", "--seed", "1")
        assert stub.calls == calls + 12  # each question asked once here and once there
        (job,) = [j for j in t.api.store.jobs.all() if j["kind"] == "questions"]
        assert (job["status"], job["done"]) == ("completed", 6)  # run in the server
        assert out.strip().splitlines()[-1] == "done: all 6 units of questions are done"
        # run again: every unit was done by the run before; it says so, as a local run does
        out = t.same("generate", "questions", ALGEBRA, "--n", "6", "--seed", "1")
        assert "6/6 done (6 earlier)" in out
        # a job that ended before its watcher came still gives what its run knew
        query = "subscription($id: ID!) { jobProgress(id: $id) { ... on Job { skipped } } }"
        (event,) = subscribe(t.api, query, {"id": job["id"]})
        assert event["data"]["jobProgress"]["skipped"] == 6
        out = t.same("generate", "answers", ALGEBRA)
        assert "done: all 6 units of answers are done" in out
        t.same("jobs")
        t.same("generate", "questions", "Formal Sciences/Nope", code=1)
        t.same("generate", "taxonomy", ALGEBRA, code=1)  # the wrong kind of scope
        out = t.same("generate", "all", ALGEBRA, "--rounds", "1", "--per-call", "2", "--n", "3")
        assert out.strip().splitlines()[-1].startswith("done: all ")


def test_generate_through_the_server_reports_failures_as_a_local_run(
    algebra: Path, stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = fake_glan_model()

    def no_questions(body: dict[str, Any], n: int) -> Reply:
        if '{"question"' in first_user_message(body):
            return ok("I would rather not.")
        return good(body, n)

    stub.handler = no_questions
    with twins(algebra, stub, monkeypatch) as t:
        out = t.same("generate", "questions", ALGEBRA, "--n", "4", code=1)
        assert "each failed unit kept the model's raw output" in out
        assert "first error (questions): " in out
        assert out.strip().splitlines()[-1] == (
            "incomplete: 4 of 4 units failed (questions 4 of 4); run the same command again "
            "to retry them"
        )
        out = t.same("jobs", "--failed")
        assert out.count("raw: I would rather not.") == 4
        out = t.same("generate", "questions", ALGEBRA, "--n", "4", "--strict", code=1)
        assert "0 earlier" in out


def test_a_server_with_a_token_tells_a_cli_without_it_to_set_it(
    algebra: Path, stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    with twins(algebra, stub, monkeypatch, api_token="s3cret") as t:
        code, out = t.remote("add", BIO)
        assert code == 1 and "set GLAN_API_TOKEN" in out.replace("\n", " ")
        code, out = t.remote("generate", "questions", ALGEBRA, "--n", "2")
        assert code == 1 and "set GLAN_API_TOKEN" in out.replace("\n", " ")
        assert "Traceback" not in out
        monkeypatch.setenv("GLAN_API_TOKEN", "wrong")
        code, out = t.remote("add", BIO)
        assert code == 1 and "refused the token in GLAN_API_TOKEN" in out.replace("\n", " ")
        monkeypatch.setenv("GLAN_API_TOKEN", "s3cret")
        code, out = t.remote("add", BIO)
        assert code == 0 and "Discipline" in out
        code, out = t.remote("generate", "questions", ALGEBRA, "--n", "2")
        assert code == 0, out
        code, out = t.remote("tree", "--depth", "1")  # reading needs no token anyway
        assert code == 0


def test_whole_store_commands_name_the_server_instead_of_running(
    algebra: Path, stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    with twins(algebra, stub, monkeypatch) as t:
        for args in (
            ("export", "--out", "data.jsonl"),
            ("dedup",),
            ("report",),
        ):
            code, out = t.remote(*args)
            text = out.replace("\n", " ")
            assert code == 1 and "reads the whole store itself" in text, out
            assert "unset GLAN_SERVER_URL" in text and t.api.url in text
        code, out = t.remote("generate", "questions", ALGEBRA, "--local")
        assert code == 1 and "--local" in out and "Traceback" not in out


def test_decontaminate_prints_the_same_through_the_server(
    algebra: Path, stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server reads the benchmark files (given by a path relative to here) and marks
    its own copy; the CLI prints what a local run prints."""
    assert glan("generate", "questions", ALGEBRA, "--n", "3")[0] == 0
    assert glan("generate", "answers", ALGEBRA)[0] == 0
    code, out = glan("export", "--out", "pairs.jsonl")
    assert code == 0, out
    pairs = [json.loads(line) for line in Path("pairs.jsonl").read_text().splitlines()]
    question = pairs[0]["messages"][0]["content"]
    answer = pairs[1]["messages"][1]["content"]
    Path("quiz_test.jsonl").write_text(json.dumps({"question": question.upper()}) + "\n")
    Path("quiz_train.jsonl").write_text(json.dumps({"prompt": answer}) + "\n")
    args = ("decontaminate", "--benchmark", "quiz_test.jsonl", "--benchmark", "quiz_train.jsonl")
    with twins(algebra, stub, monkeypatch) as t:
        out = t.same(*args, "--min-words", "1")
        assert "read quiz:test (1 texts), quiz:train (1 texts)" in out
        assert "(question)" in out and "(answer)" in out
        marked = t.api.store.instructions.page(None, InstructionFilter(contaminated=True))[0]
        assert [n.props["text"] for n in marked] == [question]
        t.same("decontaminate", "--benchmark", "missing.jsonl", code=1)
        t.same(*args, "--field", "nope", code=1)


def _serve(db: Path, port: int, **env: str) -> subprocess.Popen[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GLAN_")}
    environ.update(GLAN_DB_PATH=str(db), GLAN_LLM_BASE_URL="http://127.0.0.1:9/v1", **env)
    return subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(port)],
        cwd=db.parent,
        env={**environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_record(db: Path, server: subprocess.Popen[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        assert server.poll() is None, server.stderr.read() if server.stderr else ""
        assert time.monotonic() < deadline, "the server did not record itself"
        try:
            record: dict[str, Any] = json.loads(record_path(db).read_text())
            httpx.post(record["url"] + "/graphql", json={"query": "{ __typename }"}, timeout=5)
            return record
        except (OSError, ValueError, httpx.HTTPError):
            time.sleep(0.1)


def test_glan_serve_is_found_beside_the_store_and_used(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real `glan serve`: it records itself beside the database; the CLI, given nothing,
    finds it there and works through it; a clean stop removes the record."""
    assert glan("init")[0] == 0
    code, before = glan("tree", "Formal Sciences", "--depth", "2")
    assert code == 0
    port = free_port()
    server = _serve(env, port, GLAN_API_TOKEN="s3cret")
    try:
        record = _wait_for_record(env, server)
        assert record["url"] == f"http://127.0.0.1:{port}" and record["pid"] == server.pid
        assert Path(record["db_path"]) == env

        code, out = glan("tree", "Formal Sciences", "--depth", "2")
        assert (code, out) == (0, before)  # through the server, the same
        code, out = glan("add", BIO)
        assert code == 1 and "set GLAN_API_TOKEN" in out.replace("\n", " "), out
        monkeypatch.setenv("GLAN_API_TOKEN", "s3cret")
        code, out = glan("add", BIO)
        assert code == 0 and f"Discipline {BIO} " in out.replace("\n", " ")
        code, out = glan("export", "--out", "data.jsonl")
        text = out.replace("\n", " ")
        assert code == 1 and f"pid {server.pid}" in text and record["url"] in text
        assert "stop the server" in text and not Path("data.jsonl").exists()
        code, out = glan("init")
        assert code == 0 and "held by the glan server" in out and "already initialised" in out
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    assert not record_path(env).exists()
    code, out = glan("show", BIO)  # the store is free again: opened here, the node is there
    assert code == 0 and '"kind": "Discipline"' in out


def test_a_stale_record_is_ignored(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record left by a server that was killed names a process that is gone: the CLI opens
    the store itself, and while another process holds the lock it says so, not that a
    server holds it."""
    assert glan("init")[0] == 0
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True)  # fmt: skip
    stale = {"url": f"http://127.0.0.1:{free_port()}", "pid": int(gone.stdout), "started_at": ""}
    record_path(env).write_text(json.dumps({**stale, "db_path": str(env)}))
    code, out = glan("tree", "--depth", "0")
    assert code == 0, out

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from graph.store import Store; from graph.config import StoreConfig;"
            f"s = Store.open(StoreConfig(db_path={str(env)!r}));"
            "print('open', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        code, out = glan("tree", "--depth", "0")
        assert code == 1 and "already open in another process" in out
        assert "glan server" not in out
        # a live process that does not answer where its record says: told what to set
        record_path(env).write_text(json.dumps({**stale, "pid": holder.pid}))
        code, out = glan("tree", "--depth", "0")
        text = out.replace("\n", " ")
        assert code == 1 and f"pid {holder.pid}" in text and "does not answer" in text
        assert "set GLAN_SERVER_URL" in text
    finally:
        holder.kill()
        holder.wait()


def test_judge_runs_in_the_server_and_prints_the_same(
    algebra: Path, stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert glan("generate", "questions", ALGEBRA, "--n", "4")[0] == 0
    assert glan("generate", "answers", ALGEBRA)[0] == 0
    monkeypatch.setenv("GLAN_JUDGE_MODEL", "judge-stub")
    with twins(algebra, stub, monkeypatch, judge_model="judge-stub") as t:
        out = t.same("generate", "judge", ALGEBRA)
        assert out.strip().splitlines()[-1] == "done: all 4 units of judge are done"
        (job,) = [j for j in t.api.store.jobs.all() if j["kind"] == "judge"]
        assert (job["status"], job["done"]) == ("completed", 4)  # run in the server
        scope = t.api.store.taxonomy.scope(ALGEBRA)
        assert t.api.store.instructions.scores(scope)[""].judged == 4
        assert "4/4 done (4 earlier)" in t.same("generate", "judge", ALGEBRA)
