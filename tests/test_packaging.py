"""The package as a user installs it: a wheel built from the tree, in a fresh virtualenv
outside the source tree, so nothing can be imported from the checkout by accident.

This is what the Dockerfile's `pip install .` does; the docker-compose glan service is that
wheel's `glan serve`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).parents[1]

pytestmark = pytest.mark.slow
QUERY = '{ node(path: "Formal Sciences") { ... on TaxonomyNode { kind name } } }'


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of what a clone holds: the tracked files (and new ones not ignored), copied
    out, so nothing left in the checkout (a build/ folder, caches) can slip into it."""
    source = tmp_path_factory.mktemp("source")
    listed = _run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT
    ).stdout.splitlines()
    for name in listed:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)])
    (built,) = out.glob("glan-*.whl")
    return built


def test_the_wheel_holds_every_package_and_its_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    # every package in the tree, found by its __init__.py, is in the wheel
    for init in ROOT.glob("[!.]*/**/__init__.py"):
        rel = init.relative_to(ROOT)
        if rel.parts[0] in ("graph", "generators", "server"):
            assert rel.as_posix() in names, f"{rel} is missing from the wheel"
    # and so is every data file beside the code that reads it
    for folder in ("graph/seed", "generators/prompts", "server/static"):
        for f in (ROOT / folder).rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts:
                rel = f.relative_to(ROOT).as_posix()
                assert rel in names, f"{rel} is missing from the wheel"
    # the price table the cost estimates read (generators/cost.py)
    assert "generators/prices.yaml" in names
    assert not any(n.startswith("tests/") for n in names)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_fresh_venv_from_the_wheel_serves_the_api(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / "bin"
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel)], cwd=tmp_path)

    work = tmp_path / "user"  # not the checkout: nothing there to import from
    work.mkdir()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("GLAN_", "PYTHON", "VIRTUAL_ENV"))
    }
    env |= {"GLAN_DB_PATH": str(work / "store.lbug"), "PATH": f"{bin_dir}:{env['PATH']}"}
    glan = str(bin_dir / "glan")
    init = _run([glan, "init"], cwd=work, env=env)
    assert "Field" in init.stdout

    port = _free_port()
    server = subprocess.Popen(
        [glan, "serve", "--port", str(port)],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"glan serve exited:\n{server.stdout.read()}"  # type: ignore[union-attr]
            try:
                reply = httpx.post(f"{url}/graphql", json={"query": QUERY}, timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "glan serve did not answer within 60 s"
                time.sleep(0.25)
        assert reply.status_code == 200, reply.text
        found = json.loads(reply.text)["data"]["node"]
        assert found == {"kind": "FIELD", "name": "Formal Sciences"}
        # the page assets ship as package data too
        page = httpx.get(f"{url}/dashboard", timeout=10)
        assert page.status_code == 200
        script = httpx.get(f"{url}/static/dashboard.js", timeout=10)
        assert script.status_code == 200 and len(script.content) > 1000
    finally:
        server.terminate()
        server.wait(timeout=30)
