"""The real glan app under uvicorn on a free loopback port, and clients for it.

The server runs in a background thread of the test process, so a test can reach its store
(`api.store`) to count queries or arrange data the API has no verb for.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import websockets
import yaml

from graph.driver import QueryCounter
from graph.store import Store
from server.app import Resources, create_app
from server.settings import Settings
from tests.llm_stub import Stub

SEED = Path(__file__).parents[1] / "graph" / "seed" / "taxonomy.yaml"


def seed_taxonomy() -> dict[str, Any]:
    return yaml.safe_load(SEED.read_text())


@dataclass
class Api:
    url: str
    app: Any

    @property
    def resources(self) -> Resources:
        return self.app.state.glan

    @property
    def store(self) -> Store:
        return self.resources.store

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/graphql"

    def post(
        self, query: str, variables: dict[str, Any] | None = None, *, token: str | None = None
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = {"query": query, "variables": variables or {}}
        return httpx.post(f"{self.url}/graphql", json=body, headers=headers, timeout=30)

    def gql(
        self, query: str, variables: dict[str, Any] | None = None, *, token: str | None = None
    ) -> dict[str, Any]:
        """The data of an operation that must succeed without errors."""
        response = self.post(query, variables, token=token)
        assert response.status_code == 200, response.text
        body = response.json()
        assert not body.get("errors"), json.dumps(body["errors"], indent=1)
        return body["data"]

    def errors(self, query: str, variables: dict[str, Any] | None = None, **kw: Any) -> list[str]:
        """The error messages of an operation that must fail as a whole."""
        body = self.post(query, variables, **kw).json()
        assert body.get("errors"), body
        return [e["message"] for e in body["errors"]]

    @contextmanager
    def counting(self) -> Iterator[QueryCounter]:
        """Count the database statements issued inside the block, each request reading for
        itself (no answer shared from another: what one read costs)."""
        counter = QueryCounter()
        driver: Any = self.store.driver
        driver.counter = counter
        try:
            with self.unshared():
                yield counter
        finally:
            driver.counter = None

    @contextmanager
    def unshared(self) -> Iterator[None]:
        """Every request of the block reads the store itself, none answered from another's
        result (server/reads.py): for counting what one read costs."""
        route = next(r for r in self.app.routes if getattr(r, "path", "") == "/graphql")
        shared = route.endpoint.shared
        version = shared.version
        shared.version = lambda: None
        try:
            yield
        finally:
            shared.version = version

    def wait_for(self, job_id: str, timeout: float = 30) -> dict[str, Any]:
        """Poll the job query until the job is no longer running in the server."""
        deadline = time.monotonic() + timeout
        query = (
            "query($id: ID!) { job(id: $id) { ... on Job { id status live done failed total "
            "error } } }"
        )
        while True:
            job = self.gql(query, {"id": job_id})["job"]
            if not job["live"]:
                return job
            assert time.monotonic() < deadline, job
            time.sleep(0.05)


def subscribe(
    api: Api,
    query: str,
    variables: dict[str, Any],
    *,
    init_payload: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    on_first: Callable[[], object] | None = None,
) -> list[dict[str, Any]]:
    """Every `next` payload of one subscription over graphql-transport-ws, until `complete`;
    `on_first` is called once the first payload has arrived."""

    async def run() -> list[dict[str, Any]]:
        async with websockets.connect(
            api.ws_url, subprotocols=["graphql-transport-ws"], additional_headers=headers
        ) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": init_payload or {}}))
            ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert ack["type"] == "connection_ack", ack
            payload = {"query": query, "variables": variables}
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
            seen: list[dict[str, Any]] = []
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if msg["type"] == "complete":
                    return seen
                assert msg["type"] == "next", msg
                seen.append(msg["payload"])
                if on_first is not None and len(seen) == 1:
                    on_first()

    return asyncio.run(run())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def run_api(settings: Settings) -> Iterator[Api]:
    """Serve create_app(settings) with uvicorn (lifespan on) until the block ends."""
    app = create_app(settings)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=free_port(), log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="glan-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start")
        time.sleep(0.01)
    try:
        yield Api(f"http://127.0.0.1:{config.port}", app)
    finally:
        server.should_exit = True
        thread.join(30)


def settings(db: Path, stub: Stub, **kw: Any) -> Settings:
    """Settings for a test server over `db` that calls the model stub."""
    values: dict[str, Any] = {
        "db_path": db,
        "llm_base_url": stub.base_url,
        "model": "stub",
        "llm_concurrency": 4,
        "api_token": None,
        "auto_approve": False,
        **kw,
    }
    return Settings(_env_file=None, **values)
