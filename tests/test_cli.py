"""The `glan` command line on a real embedded store, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from server.cli import app

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
