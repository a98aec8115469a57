"""A real Bolt server for the contract tests: ArcadeDB with its Bolt plugin, from PyPI.

The server runs on a JVM inside this process, and a process can start one JVM only, so
the server is started once (on loopback, free ports, a temp dir, 512 MB heap) and each
test gets a fresh empty database on it.
"""

from __future__ import annotations

import atexit
import itertools
import secrets
import socket
import tempfile
from dataclasses import dataclass
from typing import Any


class BoltServerUnavailable(RuntimeError):
    """The test Bolt server could not start; the tests that need it are skipped."""


@dataclass(frozen=True)
class BoltTarget:
    uri: str
    user: str
    password: str
    database: str
    flavor: str = "arcadedb"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server:
    def __init__(self) -> None:
        try:
            from arcadedb_embedded.server import ArcadeDBServer
        except ImportError as exc:
            raise BoltServerUnavailable(
                f"arcadedb-embedded is not installed ({exc}); pip install -e '.[dev]'"
            ) from exc
        self.password = secrets.token_hex(12)
        self.bolt_port = _free_port()
        self.root = tempfile.mkdtemp(prefix="glan-arcadedb-")
        self.names = itertools.count()
        try:
            self.server: Any = ArcadeDBServer(
                root_path=self.root,
                root_password=self.password,
                config={
                    "host": "127.0.0.1",
                    "http_port": _free_port(),
                    "server_plugins": "Bolt:com.arcadedb.bolt.BoltProtocolPlugin",
                    "bolt_port": self.bolt_port,
                },
                jvm_kwargs={"heap_size": "512m"},
            )
            self.server.start()
        except Exception as exc:  # noqa: BLE001 - any JVM start failure makes a skip reason
            raise BoltServerUnavailable(f"ArcadeDB could not start: {exc}") from exc
        atexit.register(self.stop)
        self.stopped = False

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.server.stop()

    def fresh(self) -> BoltTarget:
        name = f"glan{next(self.names)}"
        self.server.create_database(name)
        return BoltTarget(f"bolt://127.0.0.1:{self.bolt_port}", "root", self.password, name)


_server: _Server | None = None
_failure: BoltServerUnavailable | None = None


def arcadedb_target() -> BoltTarget:
    """A new empty database on the process's ArcadeDB server (started on first use)."""
    global _server, _failure
    if _failure is not None:
        raise _failure
    if _server is None:
        try:
            _server = _Server()
        except BoltServerUnavailable as exc:
            _failure = exc
            raise
    return _server.fresh()


def shutdown() -> None:
    """Stop the server now (pytest calls this at session end, before its summary)."""
    if _server is not None:
        _server.stop()
