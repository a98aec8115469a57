"""The ASGI app: GraphQL at /graphql (GraphiQL in a browser, websockets for subscriptions over
graphql-transport-ws or the legacy graphql-ws), and the coverage dashboard at /dashboard (`/`
leads there), a static page over that API.

`uvicorn server.app:app` serves it with settings from GLAN_* variables, read when the server
starts, not at import. The embedded engine allows one process, so the server opens the store
once in the lifespan and owns it while it runs: generation jobs run inside it, sharing one
LLM client, and everything else goes through its API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL

from generators.llm import LLMClient
from generators.manager import JobManager
from graph.store import Store

from .auth import DENIED
from .body_limit import BodyLimit
from .context import Context, Loaders, off_loop
from .discovery import announce, remove_record
from .graphql import schema
from .reads import SharedReads
from .settings import DEFAULT_MAX_BODY_KB, Settings

log = logging.getLogger("glan.server")

#: The dashboard (plain HTML, CSS and JS with vendored d3 modules) and the GraphiQL page (with
#: vendored GraphiQL and React builds), shipped as package data so an installed glan serves
#: both offline.
STATIC = Path(__file__).parent / "static"


@dataclass
class Resources:
    """What lives as long as the server: built in the lifespan, shared by every request."""

    settings: Settings
    store: Store
    llm: LLMClient
    jobs: JobManager
    #: the threads store calls run on, off the event loop (also the loop's default executor,
    #: so the jobs' reads and writes run there too)
    pool: ThreadPoolExecutor


class GlanGraphQL(GraphQL[Context, None]):
    def __init__(self, app: Starlette) -> None:
        super().__init__(
            schema,
            graphql_ide="graphiql",
            # the legacy protocol too: older clients (and GraphQL tools built on them) speak
            # only graphql-ws; the token is checked at connection_init in both
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL),
        )
        self.app = app
        self.shared = SharedReads(self._store_version)

    def _store_version(self) -> int | None:
        running: Resources | None = getattr(self.app.state, "glan", None)
        return running.store.driver.version if running else None

    @property
    def resources(self) -> Resources:
        found: Resources | None = getattr(self.app.state, "glan", None)
        if found is None:
            raise RuntimeError("the glan app was not started through its lifespan")
        return found

    async def render_graphql_ide(self, request: Request) -> Response:
        """Our GraphiQL page, not strawberry's: that one loads GraphiQL and React from a CDN,
        so offline it never gets past "Loading...". Ours loads the same builds from
        /static/vendor/."""
        return FileResponse(STATIC / "graphiql.html", headers={"cache-control": "no-cache"})

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        res = self.resources
        run = off_loop(res.pool)
        return Context(
            store=res.store,
            jobs=res.jobs,
            settings=res.settings,
            loaders=Loaders.for_request(res.store, run),
            authorization=request.headers.get("authorization"),
            request=request,
            response=response,
            run=run,
            shared=self.shared,
        )

    def decode_json(self, data: str | bytes) -> object:
        """JSON nested past Python's recursion limit is as unreadable as invalid JSON: the
        client gets a 400 (over HTTP) or a 4400 close (over websockets), not a 500."""
        try:
            return super().decode_json(data)
        except RecursionError as exc:
            raise json.JSONDecodeError("nested too deeply", "", 0) from exc

    async def on_ws_connect(self, context: Context) -> Any:
        """Refuse a websocket without the token at connection_init, so a client learns at once
        rather than at its first subscription: graphql-transport-ws closes with 4403, the
        legacy graphql-ws answers connection_error and closes (1011)."""
        if not context.authorized:
            raise ConnectionRejectionError({"message": DENIED})
        return await super().on_ws_connect(context)


def create_app(settings: Settings | None = None) -> Starlette:
    """The app, with the store, LLM client and job manager made when it starts.

    Without `settings`, they are read from the environment at start (not here), so importing
    this module never touches the environment or the database.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        cfg = settings or Settings()
        pool = ThreadPoolExecutor(cfg.api_workers, thread_name_prefix="glan-store")
        asyncio.get_running_loop().set_default_executor(pool)
        store = Store.open(cfg.store_config())
        llm = LLMClient(cfg.llm_config())
        jobs = JobManager(
            store,
            llm,
            cfg.stage_params,
            concurrency=cfg.llm_concurrency,
            prices=cfg.price_table,
            batch_poll_s=cfg.batch_poll_s,
        )
        app.state.glan = Resources(cfg, store, llm, jobs, pool)
        log.info("glan API on %s", store.driver.description)
        # the jobs it was running when it stopped, in the background: it answers at once
        jobs.resume_interrupted(resume=cfg.resume_jobs)
        record = announce(cfg)  # beside an embedded store: how the CLI finds this server
        try:
            yield
        finally:
            remove_record(record)
            # running jobs stop after their units in flight; a restart resumes them
            await jobs.shutdown()
            await llm.aclose()
            pool.shutdown(wait=True)
            store.close()
            app.state.glan = None

    async def home(request: Request) -> Response:
        return RedirectResponse("/dashboard")

    async def dashboard(request: Request) -> Response:
        # no-cache: a browser revalidates, so a new glan's page never runs with stale scripts
        return FileResponse(STATIC / "dashboard.html", headers={"cache-control": "no-cache"})

    app = Starlette(lifespan=lifespan)

    def body_limit() -> int:
        running: Resources | None = getattr(app.state, "glan", None)
        return 1024 * (running.settings.api_max_body_kb if running else DEFAULT_MAX_BODY_KB)

    app.add_middleware(BodyLimit, limit=body_limit)
    graphql = GlanGraphQL(app)
    app.router.routes.extend(
        [
            Route("/", home),
            Route("/dashboard", dashboard),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
            Route("/graphql", graphql, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", graphql),
        ]
    )
    return app


app = create_app()
