"""The `glan` command line on a real embedded store, as a user runs it."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from server.cli import app
from tests.llm_stub import Reply, fake_glan_model, first_user_message, ok, run_stub

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    db = tmp_path / "store.lbug"
    monkeypatch.setenv("GLAN_DB_PATH", str(db))
    monkeypatch.chdir(tmp_path)  # no stray .env
    return {**os.environ, "GLAN_DB_PATH": str(db)}


def glan(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def seed_disciplines() -> int:
    path = Path(__file__).parents[1] / "graph" / "seed" / "taxonomy.yaml"
    data = yaml.safe_load(path.read_text())
    return sum(len(d) for sf in data["fields"].values() for d in sf.values())


def test_seed_taxonomy_has_100_to_150_unique_disciplines() -> None:
    path = Path(__file__).parents[1] / "graph" / "seed" / "taxonomy.yaml"
    data = yaml.safe_load(path.read_text())
    fields = data["fields"]
    disciplines = [d for sf in fields.values() for ds in sf.values() for d in ds]
    assert 100 <= len(disciplines) <= 150
    names = list(fields) + [s for sf in fields.values() for s in sf] + disciplines
    assert len(names) == len({n.casefold() for n in names})
    for skill in ("Writing", "Coding", "Reasoning", "Communication"):
        assert skill in fields  # capabilities, not only academic knowledge


def test_init_then_tree_prints_the_seed_taxonomy(env: dict[str, str]) -> None:
    code, out = glan("init")
    assert code == 0, out
    assert f"Discipline    {seed_disciplines()} new" in out
    code, out = glan("init")
    assert code == 0 and "Discipline      0 new" in out  # loading twice changes nothing
    code, out = glan("tree", "--json")
    assert code == 0, out
    tree = json.loads(out)
    assert tree["counts"]["disciplines"] == seed_disciplines()
    leaves = [d for f in tree["children"] for s in f["children"] for d in s["children"]]
    assert len(leaves) == seed_disciplines()
    code, out = glan("tree", "Formal Sciences", "--depth", "1")
    assert code == 0 and "Mathematics" in out and "disciplines" in out


def test_add_review_link_show(env: dict[str, str]) -> None:
    assert glan("init")[0] == 0
    code, out = glan("add", "Natural Sciences/Physical Sciences/Biophysics", "--kind", "discipline")
    assert code == 0, out
    assert "Discipline" in out and "approved" in out
    code, out = glan(
        "add",
        "Natural Sciences/Physical Sciences/Biophysics/Protein Folding",
        "--level",
        "graduate",
        "--subtopic",
        "energy landscapes",
    )
    assert code == 0, out
    code, out = glan(
        "link",
        "Formal Sciences/Mathematics/Algebra",
        "Natural Sciences/Physical Sciences/Biophysics/Protein Folding",
    )
    assert code == 0 and "2 discipline(s)" in out
    code, out = glan("review", "Natural Sciences/Physical Sciences/Biophysics", "--reject")
    assert code == 0 and "rejected" in out
    code, out = glan("show", "Natural Sciences/Physical Sciences/Biophysics/Protein Folding")
    info = json.loads(out)
    assert info["hidden"] is True and info["level"] == "graduate" and len(info["paths"]) == 2


def test_bad_input_exits_non_zero_with_a_message(env: dict[str, str]) -> None:
    assert glan("init")[0] == 0
    code, out = glan("add", "Natural Sciences/Entropy", "--kind", "concept")
    assert code != 0 and "depth" in out
    code, out = glan("add", "Nowhere/Sub")
    assert code != 0 and "no Field named 'Nowhere'" in out
    code, out = glan("review", "Natural Sciences")
    assert code == 2 and "exactly one" in out
    code, out = glan("tree", "Natural Sciences/Nope")
    assert code != 0 and "Nope" in out


def test_second_process_is_told_the_store_is_taken(env: dict[str, str], tmp_path: Path) -> None:
    assert glan("init")[0] == 0
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from graph.store import Store; from graph.config import StoreConfig;"
            f"s = Store.open(StoreConfig(db_path={env['GLAN_DB_PATH']!r}));"
            "print('open', flush=True); time.sleep(60)",
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        proc = subprocess.run(
            [sys.executable, "-m", "server.cli", "tree"],
            env=env,
            capture_output=True,
            text=True,
            cwd=Path(__file__).parents[1],
            timeout=60,
        )
        assert proc.returncode == 1
        assert "already open in another process" in proc.stderr
        assert env["GLAN_DB_PATH"] in proc.stderr.replace("\n", "")
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert glan("tree", "--depth", "0")[0] == 0  # free again once the holder is gone


ALGEBRA = "Formal Sciences/Mathematics/Algebra"


def free_port() -> int:
    """A loopback port nothing listens on (bound, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_generate_exits_1_when_every_unit_failed_and_says_why(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endpoint nobody answers on: no unit gets text back, so there is no raw output to
    speak of; the error itself is printed, and the exit status is 1."""
    assert glan("init")[0] == 0
    monkeypatch.setenv("GLAN_LLM_BASE_URL", f"http://127.0.0.1:{free_port()}/v1")
    monkeypatch.setenv("GLAN_LLM_MAX_RETRIES", "0")
    code, out = glan("generate", "subjects", ALGEBRA, "--rounds", "2")
    assert code == 1, out
    assert "raw output is kept" not in out
    lines = out.strip().splitlines()
    assert any(line.startswith("first error (subjects): ") for line in lines)
    assert "connection failed" in out
    assert "no failed unit got text back from the model" in out and "glan jobs --failed" in out
    assert lines[-1] == (
        "incomplete: 2 of 2 units failed (subjects 2 of 2); run the same command again to "
        "retry them"
    )


def test_generate_exit_status_follows_the_units(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """0 with every unit done; 1 when some failed, saying their raw output is kept."""
    assert glan("init")[0] == 0
    monkeypatch.setenv("GLAN_MODEL", "stub")
    good = fake_glan_model()

    def no_syllabus(body: dict[str, Any], n: int) -> Reply:
        if '{"sessions"' in first_user_message(body):
            return ok("I would rather not.")
        return good(body, n)

    with run_stub(no_syllabus) as stub:
        monkeypatch.setenv("GLAN_LLM_BASE_URL", stub.base_url)
        code, out = glan("generate", "subjects", ALGEBRA, "--rounds", "2", "--per-call", "3")
        assert code == 0, out
        assert out.strip().splitlines()[-1] == "done: all 2 units of subjects are done"
        code, out = glan("generate", "syllabus", ALGEBRA)
    assert code == 1, out
    assert "each failed unit kept the model's raw output: glan jobs --failed shows it" in out
    assert "first error (syllabus): the answer did not match Syllabus" in out
    assert out.strip().splitlines()[-1] == (
        "incomplete: 6 of 6 units failed (syllabus 6 of 6); run the same command again to "
        "retry them"
    )
    code, out = glan("jobs", "--failed")
    assert code == 0 and out.count("raw: I would rather not.") == 6


def test_generate_with_some_units_failed_exits_0_unless_strict(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some units failed, every stage made something: 0, with what failed said on the way
    out (a second run retries them); --strict makes it 1."""
    assert glan("init")[0] == 0
    monkeypatch.setenv("GLAN_MODEL", "stub")
    good = fake_glan_model()

    def some_syllabi(body: dict[str, Any], n: int) -> Reply:
        user = first_user_message(body)  # the same subjects are refused every time
        if '{"sessions"' in user and "Subject" in user and user.count("1") % 2:
            return ok("I would rather not.")
        return good(body, n)

    with run_stub(some_syllabi) as stub:
        monkeypatch.setenv("GLAN_LLM_BASE_URL", stub.base_url)
        assert glan("generate", "subjects", ALGEBRA, "--rounds", "2", "--per-call", "3")[0] == 0
        code, out = glan("generate", "syllabus", ALGEBRA, "--strict")
        last = out.strip().splitlines()[-1]
        assert code == 1, out
        assert re.fullmatch(r"incomplete: [1-5] of 6 units failed .*", last), last
        code, out = glan("generate", "syllabus", ALGEBRA)  # the same ones fail again
    assert code == 0, out
    assert out.strip().splitlines()[-1] == last
    assert "every unit of" not in out
