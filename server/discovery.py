"""Where a running `glan serve` answers, recorded beside the embedded database it holds.

The embedded engine lets one process open a database read-write. While a server holds it,
the CLI reaches the store through the server's API instead (server/remote.py), and finds
the server by this record: `<database>.server.json`, with the server's address, its
process id and when it started. The server writes it once the store is open and removes it
when it stops; a record left by a server that was killed names a process that is gone, and
is ignored.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from graph.records import now_iso

from .settings import Settings

log = logging.getLogger("glan.server")

SUFFIX = ".server.json"


@dataclass(frozen=True)
class ServerRecord:
    """A server that holds an embedded database: where it answers, and which process it is."""

    url: str
    pid: int
    started_at: str
    db_path: str


def record_path(db_path: Path | str) -> Path:
    """The record beside a database: `store.lbug` -> `store.lbug.server.json`."""
    db = Path(db_path).expanduser()
    return db.with_name(db.name + SUFFIX)


def client_url(host: str, port: int) -> str:
    """The address a client on this machine uses for a server listening on host:port: a
    server on every interface (0.0.0.0, ::) answers on loopback."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def announce(settings: Settings) -> Path | None:
    """Record a server that holds an embedded store (a Bolt server takes many clients: no
    record). Its address is GLAN_HOST and GLAN_PORT, which `glan serve` listens on."""
    if settings.backend != "embedded":
        return None
    return write_record(settings.db_path, client_url(settings.host, settings.port))


def write_record(db_path: Path | str, url: str) -> Path | None:
    """Record this process as the server holding the database; None when it cannot be
    written (the server still runs; the CLI then says the store is held)."""
    path = record_path(db_path)
    record = ServerRecord(url, os.getpid(), now_iso(), str(Path(db_path).expanduser()))
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        partial.write_text(json.dumps(asdict(record), indent=1), encoding="utf-8")
        os.replace(partial, path)  # whole or not at all: a reader never sees half a record
    except OSError as exc:
        log.warning("could not record the server's address in %s: %s", path, exc)
        with contextlib.suppress(OSError):
            partial.unlink()
        return None
    return path


def remove_record(path: Path | None) -> None:
    """Remove the record this process wrote (and only that: not one a newer server wrote)."""
    if path is None:
        return
    found = _read(path)
    if found is not None and found.pid != os.getpid():
        return
    with contextlib.suppress(OSError):
        path.unlink()


def read_record(db_path: Path | str) -> ServerRecord | None:
    """The server holding the database, if one recorded itself and its process is alive."""
    found = _read(record_path(db_path))
    return found if found is not None and process_alive(found.pid) else None


def _read(path: Path) -> ServerRecord | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ServerRecord(
            url=str(data["url"]),
            pid=int(data["pid"]),
            started_at=str(data.get("started_at") or ""),
            db_path=str(data.get("db_path") or ""),
        )
    except (OSError, ValueError, TypeError, KeyError):
        return None


def process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return False
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A process that has ended but whose parent has not collected it yet (Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]
