"""glan model: the bundled offline model."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import App, app

model_app = App(help="The bundled offline model.", no_args_is_help=True)


app.add_typer(model_app, name="model")


@model_app.command("serve")
def model_serve(
    host: str = "127.0.0.1",
    port: int = 8080,
    threads: Annotated[int, typer.Option(help="CPU threads for the model")] = 1,
) -> None:
    """Serve the bundled SmolLM2-135M-Instruct on an OpenAI-compatible endpoint, offline."""
    from generators.local_model import serve_forever

    serve_forever(host=host, port=port, n_threads=threads)
