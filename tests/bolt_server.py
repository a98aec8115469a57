"""A real Bolt server for the contract tests: ArcadeDB with its Bolt plugin, from PyPI.

ArcadeDB runs on a JVM inside this process, and a process can start one JVM only, with its
heap and logging fixed at that start. The server itself can stop and start again on that
JVM, so:

- `arcadedb_bolt_server(tmp_path)` starts a server (loopback, free ports, 512 MB heap, root
  under tmp_path) unless one is already running in this process, yields a fresh empty
  database on it, and stops the server when the last user leaves;
- `arcadedb_target()` hands out a fresh database on a server kept for the whole process,
  until `shutdown()` (pytest calls it at session end) or exit.

A Bolt connection left open keeps a non-daemon server thread alive after the server stops,
and the process then cannot exit; stopping here closes such leftover connections.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HEAP = "512m"
USER = "root"
#: the server's own log: console only, warnings up (the engine's default also writes ./log/)
_LOG_CONFIG = """\
handlers = java.util.logging.ConsoleHandler
.level = WARNING
java.util.logging.ConsoleHandler.level = WARNING
java.util.logging.ConsoleHandler.formatter = com.arcadedb.log.LogFormatter
"""
_START_ATTEMPTS = 3  # a free port can be taken by someone else before the server binds it


class BoltServerUnavailable(RuntimeError):
    """The test Bolt server could not start: the tests that need it are skipped, or fail
    under CI."""


@dataclass(frozen=True)
class BoltTarget:
    """Where a test's database is: what BoltDriver (or StoreConfig) needs to open it."""

    uri: str
    user: str
    password: str
    database: str
    flavor: str = "arcadedb"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_jvm(root: Path) -> None:
    """Start the JVM with a small heap and quiet, file-less logging (no-op if it runs)."""
    import jpype
    from arcadedb_embedded.jvm import start_jvm

    if jpype.isJVMStarted():
        return  # settings are fixed by whoever started it; join as is
    log_config = root / "arcadedb-log.properties"
    log_config.write_text(_LOG_CONFIG)
    # A crash report goes next to the server, not into the working directory.
    previous = os.environ.get("ARCADEDB_JVM_ERROR_FILE")
    os.environ["ARCADEDB_JVM_ERROR_FILE"] = str(root / "hs_err_pid%p.log")
    try:
        start_jvm(heap_size=HEAP, jvm_args=[f"-Djava.util.logging.config.file={log_config}"])
    finally:
        if previous is None:
            del os.environ["ARCADEDB_JVM_ERROR_FILE"]
        else:
            os.environ["ARCADEDB_JVM_ERROR_FILE"] = previous


def _close_stray_connections() -> None:
    """Close server-side sockets of Bolt connections still open after a stop, so their
    non-daemon threads end (the engine leaves them running until the client hangs up)."""
    import jpype

    if not jpype.isJVMStarted():
        return
    # An engine without that field has nothing to close this way.
    with contextlib.suppress(Exception):
        thread_class = jpype.JClass("java.lang.Thread")
        executor = jpype.JClass("com.arcadedb.bolt.BoltNetworkExecutor")
        field = executor.class_.getDeclaredField("socket")
        field.setAccessible(True)
        for thread in list(thread_class.getAllStackTraces().keySet()):
            if isinstance(thread, executor):
                sock = field.get(thread)
                if sock is not None:
                    sock.close()


class _Server:
    """One ArcadeDB server with the Bolt plugin on loopback; hands out fresh databases."""

    def __init__(self, root: Path) -> None:
        try:
            from arcadedb_embedded.server import ArcadeDBServer
        except ImportError as exc:
            raise BoltServerUnavailable(
                f"arcadedb-embedded is not installed ({exc}); pip install -e '.[dev]'"
            ) from exc
        self.root = root
        self.password = secrets.token_hex(12)
        self._names = itertools.count(1)
        root.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        last: Exception | None = None
        for attempt in range(_START_ATTEMPTS):
            self.bolt_port = _free_port()
            try:
                _start_jvm(root)
                self._server: Any = ArcadeDBServer(
                    root_path=str(root / f"server{attempt}"),
                    root_password=self.password,
                    config={
                        "host": "127.0.0.1",
                        "http_port": _free_port(),
                        "server_httpsIncomingPort": _free_port(),
                        "server_plugins": "Bolt:com.arcadedb.bolt.BoltProtocolPlugin",
                        "bolt_port": self.bolt_port,
                    },
                )
                self._server.start()
                break
            except Exception as exc:  # any start failure becomes a skip reason
                last = exc
        else:
            raise BoltServerUnavailable(
                f"ArcadeDB with its Bolt plugin could not start under {root} "
                f"(tried {_START_ATTEMPTS} times): {last}"
            ) from last
        self.start_seconds = time.monotonic() - started
        self.uri = f"bolt://127.0.0.1:{self.bolt_port}"
        self.running = True
        _stop_at_exit()

    def fresh(self) -> BoltTarget:
        name = f"glan{next(self._names)}"
        try:
            self._server.create_database(name)
        except Exception as exc:
            raise BoltServerUnavailable(
                f"ArcadeDB could not create database {name}: {exc}"
            ) from exc
        return BoltTarget(self.uri, USER, self.password, name)

    def drop(self, name: str) -> None:
        """Free a database nobody uses any more, as the server's own "drop database" does
        (best effort: a leftover database only costs disk and a little heap)."""
        with contextlib.suppress(Exception):
            server = self._server._java_server
            server.getDatabase(name).getEmbedded().drop()
            server.removeDatabase(name)

    def stop(self) -> None:
        if self.running:
            self.running = False
            self._server.stop()
            _close_stray_connections()


_lock = threading.Lock()
_exit_hook = False
_server: _Server | None = None
_users = 0  # arcadedb_bolt_server blocks open on _server
_pinned = False  # arcadedb_target() keeps _server until shutdown()
_own_root: Path | None = None  # root made here for a pinned server: removed at shutdown
_failure: BoltServerUnavailable | None = None


def _stop_at_exit() -> None:
    """Register `shutdown` once, after the JVM's own exit hook, so that it runs first."""
    global _exit_hook
    if not _exit_hook:
        _exit_hook = True
        atexit.register(shutdown)


def _acquire(root: Path) -> _Server:
    global _server, _failure
    if _failure is not None:
        raise _failure  # one failed start per process is enough to know
    if _server is None or not _server.running:
        try:
            _server = _Server(root)
        except BoltServerUnavailable as exc:
            _failure = exc
            raise
    return _server


def _release_if_unused() -> None:
    global _server, _own_root
    if _server is not None and _users == 0 and not _pinned:
        _server.stop()
        _server = None
        if _own_root is not None:
            shutil.rmtree(_own_root, ignore_errors=True)
            _own_root = None


@contextmanager
def arcadedb_bolt_server(tmp_path: Path) -> Iterator[BoltTarget]:
    """A fresh empty ArcadeDB database over Bolt, on loopback, for the block's duration.

    Starts the server under tmp_path (about 2 s with the JVM, 0.2 s after) unless this
    process already runs one, in which case that one serves the new database. The server
    stops when the last block using it ends. Raises BoltServerUnavailable when it cannot
    start. Close every driver before the block ends.
    """
    global _users
    with _lock:
        server = _acquire(Path(tmp_path) / "arcadedb")
        target = server.fresh()
        _users += 1
    try:
        yield target
    finally:
        with _lock:
            _users -= 1
            if _users or _pinned:
                server.drop(target.database)
            _release_if_unused()


def arcadedb_target() -> BoltTarget:
    """A new empty database on the process's ArcadeDB server (started on first use, kept
    until `shutdown()` or exit)."""
    global _pinned, _own_root
    with _lock:
        if _failure is not None:
            raise _failure
        if _server is None or not _server.running:
            _own_root = Path(tempfile.mkdtemp(prefix="glan-arcadedb-"))
            _acquire(_own_root)
        assert _server is not None
        _pinned = True
        return _server.fresh()


def shutdown() -> None:
    """Stop the process's server now unless a block still uses it (pytest calls this at
    session end, before its summary)."""
    global _pinned
    with _lock:
        _pinned = False
        _release_if_unused()


def detach_jvm() -> None:
    """Leave the JVM now, from the main thread, instead of from the interpreter's exit hooks.

    Left to the exit hooks, leaving it runs while the interpreter is half torn down, and a
    JVM thread waiting for the interpreter lock then crashes the process now and then, after
    every test has passed. It is detached, not destroyed (destroying waits for the engine's
    leftover non-daemon threads); the process's exit ends it. Call it once, last.
    """
    try:
        import jpype
        import jpype.config
    except ImportError:  # arcadedb-embedded (which brings the JVM bridge) is not installed
        return

    with _lock:
        if not jpype.isJVMStarted() or _server is not None:
            return
        jpype.config.destroy_jvm = False
        jpype.shutdownJVM()
        jpype.config.onexit = False  # nothing is left for the exit hook to do
