"""The ASGI app: GraphQL (with GraphiQL) at /graphql, over one store opened at start.

`uvicorn server.app:app` serves it with settings from GLAN_* variables, read when the
server starts (not at import). The embedded engine allows one process: while the server
runs it owns the store and runs generation jobs in-process.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from graphql import GraphQLError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.types import ExecutionContext

from generators.llm import LLMClient
from generators.manager import JobManager
from graph.store import Store

from .context import Context, Loaders
from .schema import schema
from .settings import Settings

log = logging.getLogger("glan.server")


class _State:
    """What lives as long as the server: built in the lifespan, shared by requests."""

    store: Store
    jobs: JobManager
    llm: LLMClient
    settings: Settings


class GlanGraphQL(GraphQL[Context, None]):
    def __init__(self, state: _State) -> None:
        super().__init__(schema, graphql_ide="graphiql")
        self.state = state

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        return Context(
            store=self.state.store,
            jobs=self.state.jobs,
            settings=self.state.settings,
            loaders=Loaders.for_request(self.state.store),
            authorization=request.headers.get("authorization"),
            request=request,
            response=response,
        )

    async def on_ws_connect(self, context: Context) -> Any:
        """Subscriptions need the token too: refuse the socket at once without it."""
        if not context.authorized:
            raise ConnectionRejectionError({"message": "missing or wrong API token"})
        return await super().on_ws_connect(context)

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        for error in errors:
            if error.original_error is not None and not isinstance(
                error.original_error, PermissionError
            ):
                log.error("unexpected error in %s", error.path, exc_info=error.original_error)


def create_app(settings: Settings | None = None) -> Starlette:
    state = _State()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        cfg = settings or Settings()
        state.settings = cfg
        state.store = Store.open(cfg.store_config())
        state.llm = LLMClient(cfg.llm_config())
        state.jobs = JobManager(
            state.store, state.llm, cfg.stage_params, concurrency=cfg.llm_concurrency
        )
        try:
            yield
        finally:
            await state.jobs.shutdown()
            await state.llm.aclose()
            state.store.close()

    graphql = GlanGraphQL(state)
    starlette = Starlette(
        routes=[
            Route("/", lambda request: RedirectResponse("/graphql")),
            Route("/graphql", graphql, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", graphql),
        ],
        lifespan=lifespan,
    )
    starlette.state.glan = state  # for tests and tools that run the app in-process
    return starlette


app = create_app()
