"""docker-compose.yml's safe defaults, checked without a Docker engine.

Compose substitutes `${...}` variables across the whole file before it picks the services of
a profile; `interpolate` does the same here, with the forms the file uses, so the tests see
what `docker compose --profile X up` would see.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

COMPOSE = Path(__file__).parents[1] / "docker-compose.yml"
VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


class MissingVariable(Exception):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's substitution: ${V}, ${V:-default}, ${V-default}, ${V:?error}, ${V?error}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg") or ""
        found = env.get(name)
        unset = found is None or (op is not None and op.startswith(":") and found == "")
        if op and op.endswith("?") and unset:
            raise MissingVariable(f"required variable {name} is missing a value: {arg}")
        if op and op.endswith("-") and unset:
            return arg
        return found or ""

    return VARIABLE.sub(one, value)


def services(env: dict[str, str], profile: str) -> dict[str, Any]:
    model = interpolate(yaml.safe_load(COMPOSE.read_text()), env)
    return {n: s for n, s in model["services"].items() if profile in s.get("profiles", [])}


def test_no_profile_starts_without_an_api_token() -> None:
    for profile in ("neo4j", "memgraph"):
        with pytest.raises(MissingVariable, match="GLAN_API_TOKEN"):
            services({"NEO4J_PASSWORD": "pw-12345678"}, profile)
        with pytest.raises(MissingVariable, match="GLAN_API_TOKEN"):
            services({"GLAN_API_TOKEN": "", "NEO4J_PASSWORD": "pw-12345678"}, profile)


def test_each_profile_runs_glan_on_its_own_database() -> None:
    env = {"GLAN_API_TOKEN": "t0ken"}  # no Neo4j password: the memgraph profile needs none
    memgraph = services(env, "memgraph")
    assert set(memgraph) == {"memgraph", "glan-memgraph"}
    glan = memgraph["glan-memgraph"]
    assert glan["environment"]["GLAN_BOLT_URI"] == "bolt://memgraph:7687"
    assert glan["environment"]["GLAN_API_TOKEN"] == "t0ken"
    assert set(glan["depends_on"]) == {"memgraph"}

    neo4j = services({**env, "NEO4J_PASSWORD": "pw-12345678"}, "neo4j")
    assert set(neo4j) == {"neo4j", "glan"}
    assert neo4j["glan"]["environment"]["GLAN_BOLT_PASSWORD"] == "pw-12345678"
    assert set(neo4j["glan"]["depends_on"]) == {"neo4j"}
    # every service belongs to a profile, so no database starts unasked
    model = yaml.safe_load(COMPOSE.read_text())
    assert all(s.get("profiles") for s in model["services"].values())


def _neo4j_entrypoint(tmp_path: Path, password: str) -> subprocess.CompletedProcess[str]:
    """Run the neo4j service's entrypoint with a stand-in for the image's own one."""
    entry = services({"GLAN_API_TOKEN": "t", "NEO4J_PASSWORD": password}, "neo4j")["neo4j"]
    fake = tmp_path / "tini"
    fake.write_text('#!/bin/sh\necho "started with NEO4J_AUTH=$NEO4J_AUTH: $*"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {
        "PATH": f"{tmp_path}:{os.environ['PATH']}",
        **{k: str(v) for k, v in entry["environment"].items()},
    }
    return subprocess.run(entry["entrypoint"], env=env, capture_output=True, text=True)


def test_neo4j_refuses_to_start_without_a_password(tmp_path: Path) -> None:
    refused = _neo4j_entrypoint(tmp_path, "")
    assert refused.returncode == 1 and "set NEO4J_PASSWORD" in refused.stderr
    assert "started" not in refused.stdout

    started = _neo4j_entrypoint(tmp_path, "pw-12345678")
    assert started.returncode == 0, started.stderr
    assert "NEO4J_AUTH=neo4j/pw-12345678" in started.stdout
    assert "/startup/docker-entrypoint.sh neo4j" in started.stdout
