"""What every command group shares: the app, its consoles, the settings, and how a command
reaches the store (here, or through the server that holds it).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from graph.errors import GlanError, InvalidInput, StoreLocked
from graph.store import Store

from ..discovery import read_record, record_path
from ..remote import Remote, ServerError
from ..settings import Settings

console = Console()


err = Console(stderr=True, soft_wrap=True)


class App(typer.Typer):
    """Commands whose expected failures print one clear line and exit 1, not a traceback."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
        register = super().command(*args, **kwargs)

        def decorate(fn: Callable[..., Any]) -> Any:
            @functools.wraps(fn)
            def run(*a: Any, **kw: Any) -> Any:
                try:
                    return fn(*a, **kw)
                except GlanError as exc:
                    err.print(f"[bold red]error:[/] {escape(str(exc))}")
                    raise typer.Exit(1) from exc

            return register(run)

        return decorate


app = App(
    help="glan: taxonomy-driven synthetic instruction data on a graph knowledge store.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def settings() -> Settings:
    return Settings()


@contextmanager
def reach(cfg: Settings | None = None) -> Iterator[Store | Remote]:
    """The store, or the glan server to send the command to: the one GLAN_SERVER_URL names,
    or the one that holds the embedded store (found by the record it leaves beside it)."""
    cfg = cfg or settings()
    if cfg.server_url:
        yield Remote(cfg.server_url, token=cfg.api_token)
        return
    try:
        store = Store.open(cfg.store_config())
    except StoreLocked as exc:
        remote = _server_holding(cfg, exc)
    else:
        try:
            yield store
        finally:
            store.close()
        return
    yield remote


def _server_holding(cfg: Settings, locked: StoreLocked) -> Remote:
    """The glan server that holds the store, answering; the lock error if none does."""
    record = read_record(cfg.db_path) if cfg.backend == "embedded" else None
    if record is None:
        raise locked
    remote = Remote(record.url, token=cfg.api_token, pid=record.pid)
    answers_by = time.monotonic() + 3  # a server records itself just before it listens
    while not remote.answers():
        if time.monotonic() < answers_by:
            time.sleep(0.2)
            continue
        raise ServerError(
            f"the glan database at {locked.path} is held by a glan server (pid {record.pid}) "
            f"that does not answer at {record.url}, the address it recorded in "
            f"{record_path(cfg.db_path)}. If it listens on another address (started by "
            "uvicorn with its own --host or --port), set GLAN_SERVER_URL to that address; "
            "or stop the server"
        )
    return remote


@contextmanager
def whole_store(command: str) -> Iterator[Store]:
    """The store itself, for a command that reads all of it (the API has no such verb): a
    clear refusal while a glan server holds it, or GLAN_SERVER_URL sends commands to one."""
    cfg = settings()
    does = f"glan {command} reads the whole store itself, which the API does not offer"
    if cfg.server_url:
        raise ServerError(
            f"{does}, and GLAN_SERVER_URL sends commands to the glan server at "
            f"{cfg.server_url}: unset GLAN_SERVER_URL to run it on the store, with no server "
            "holding it"
        )
    try:
        store = Store.open(cfg.store_config())
    except StoreLocked as exc:
        record = read_record(cfg.db_path) if cfg.backend == "embedded" else None
        if record is None:
            raise
        raise ServerError(
            f"{does}, and the glan server at {record.url} (pid {record.pid}) holds it: stop "
            f"the server, run glan {command}, and start the server again"
        ) from exc
    try:
        yield store
    finally:
        store.close()


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


def seed_taxonomy_text() -> str:
    return resources.files("graph").joinpath("seed/taxonomy.yaml").read_text(encoding="utf-8")


def read_taxonomy(path: Path | None) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8") if path else seed_taxonomy_text()
        data = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInput(f"cannot read taxonomy {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"taxonomy {path or 'seed'} is not a YAML mapping")
    return data
