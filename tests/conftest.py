"""Shared fixtures: the backend matrix every contract test runs on.

- embedded: a real LadybugDB database in a temp dir (always);
- arcadedb: the Bolt backend against a real ArcadeDB server started here (skipped, with the
  reason, when it cannot start; a failure under CI=true);
- neo4j / memgraph: the Bolt backend against servers named by GLAN_NEO4J_URI /
  GLAN_MEMGRAPH_URI (user/password from GLAN_NEO4J_USER/_PASSWORD and GLAN_MEMGRAPH_USER/
  _PASSWORD). The tests wipe those databases: point them at throwaway instances.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from graph.config import StoreConfig
from graph.store import Store
from tests.api_helpers import Api, run_api, seed_taxonomy, settings
from tests.llm_stub import Stub, fake_glan_model, run_stub
from tests.real_parts import unavailable

BACKENDS = ["embedded", "arcadedb", "neo4j", "memgraph"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full-reliability",
        action="store_true",
        default=False,
        help="run the reliability tests at full size (many kills, long fuzzing); "
        "GLAN_RELIABILITY_FULL=1 does the same",
    )


@pytest.fixture(scope="session")
def full_reliability(request: pytest.FixtureRequest) -> bool:
    """Whether the reliability tests run at full size rather than CI's bounded one."""
    flag = bool(request.config.getoption("--full-reliability"))
    return flag or os.environ.get("GLAN_RELIABILITY_FULL", "") not in ("", "0")


def _external(name: str) -> StoreConfig:
    prefix = f"GLAN_{name.upper()}_"
    uri = os.environ.get(prefix + "URI")
    if not uri:
        pytest.skip(f"{prefix}URI is not set: no {name} server to test against")
    from pydantic import SecretStr

    password = os.environ.get(prefix + "PASSWORD")
    return StoreConfig(
        backend="bolt",
        bolt_uri=uri,
        bolt_user=os.environ.get(prefix + "USER", "neo4j" if name == "neo4j" else ""),
        bolt_password=SecretStr(password) if password else None,
        bolt_flavor=name,  # type: ignore[arg-type]
    )


def make_store(backend: str, tmp_path: Path) -> Iterator[Store]:
    if backend == "embedded":
        store = Store.open(StoreConfig(db_path=tmp_path / "glan.lbug"))
        yield store
        store.close()
        return
    if backend == "arcadedb":
        from tests.bolt_server import BoltServerUnavailable, arcadedb_target

        try:
            target = arcadedb_target()
        except BoltServerUnavailable as exc:
            unavailable(str(exc))
        from pydantic import SecretStr

        cfg = StoreConfig(
            backend="bolt",
            bolt_uri=target.uri,
            bolt_user=target.user,
            bolt_password=SecretStr(target.password),
            bolt_database=target.database,
            bolt_flavor="arcadedb",
        )
        store = Store.open(cfg)
        yield store
        store.close()
        return
    cfg = _external(backend)
    store = Store.open(cfg)
    store.driver.execute("MATCH (n) DETACH DELETE n")
    yield store
    store.driver.execute("MATCH (n) DETACH DELETE n")
    store.close()


@pytest.fixture(scope="session", autouse=True)
def _stop_bolt_server_at_the_end() -> Iterator[None]:
    yield
    from tests.bolt_server import detach_jvm, shutdown

    shutdown()
    detach_jvm()


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh, empty store on each backend that can start."""
    yield from make_store(request.param, tmp_path)


@pytest.fixture
def embedded_store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(StoreConfig(db_path=tmp_path / "glan.lbug"))
    yield store
    store.close()


SMALL_TAXONOMY = {
    "fields": {
        "Natural Sciences": {
            "Physical Sciences": ["Physics", "Chemistry"],
            "Life Sciences": ["Biology"],
        },
        "Formal Sciences": {"Mathematics": ["Pure Mathematics", "Applied Mathematics"]},
    }
}


@pytest.fixture
def stub() -> Iterator[Stub]:
    """An OpenAI-compatible model stub on loopback that answers every glan prompt."""
    with run_stub(fake_glan_model()) as s:
        yield s


@pytest.fixture
def api(tmp_path: Path, stub: Stub) -> Iterator[Api]:
    """The real app under uvicorn over a fresh store holding the seed taxonomy."""
    with run_api(settings(tmp_path / "api.lbug", stub)) as running:
        running.store.taxonomy.load(seed_taxonomy())
        yield running
