"""serve: the GraphQL API, which holds the store while it runs."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import app, settings


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="default: GLAN_HOST (127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="default: GLAN_PORT (8000)")] = None,
) -> None:
    """Serve the GraphQL API (GraphiQL at /graphql); the server owns the store while it runs."""
    import uvicorn

    from ..app import create_app

    cfg = settings()
    # the app records where it listens (beside an embedded store), for the CLI to find it
    cfg = cfg.model_copy(update={"host": host or cfg.host, "port": port or cfg.port})
    uvicorn.run(create_app(cfg), host=cfg.host, port=cfg.port)
