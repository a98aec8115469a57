"""LadybugDB, in-process: the default engine. A new user needs no server.

The database is a file under the user's data dir. Only one process may open it read-write;
a second one gets `StoreLocked` naming the path. glan holds a lock of its own beside the
database (`<database>.lock`) for as long as the driver is open, so that the engine's lock
may be let go for a moment while the database is opened again (EmbeddedDriver.renew).

Inside that process, writes and transactions share one connection, one thread at a time,
while reads run on connections of their own, several at once: the engine gives each read
a snapshot of the last commit and runs it without the interpreter lock, so a server answers
queries while a job writes. A thread inside a transaction reads on the writer's connection,
and so sees its own writes.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import queue
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import ladybug
import numpy as np
import pyarrow as pa

from .. import queries as Q
from ..config import DEFAULT_BUFFER_POOL_MB
from ..driver import Dialect, Params, QueryCounter, Row, called_ahead
from ..errors import QueryError, StoreLocked, StoreMemoryExceeded, StoreSetAside
from ..memory import Moved, give_back
from ..model import NODE_KINDS, REL_KINDS, NodeKind, RelKind

#: From this many rows on, creates go through COPY FROM an Arrow table: many times faster
#: than UNWIND ... CREATE, whose cost grows with every property of every row.
COPY_MIN_ROWS = 256
_ARROW = {
    "STRING": pa.string(),
    "INT64": pa.int64(),
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
    "STRING[]": pa.list_(pa.string()),
}


#: What the engine says when a statement needs more memory than its buffer pool holds:
#: the user's setting to change, not a statement the database rejects.
_POOL_FULL = "buffer pool is full"
#: ... and when that happened in the checkpoint after a commit: the write itself was kept.
_COMMITTED = "transaction committed successfully"
T = TypeVar("T")

#: Rows of the two end tables past which edges are created by key lookups, not by COPY
#: FROM. A COPY of edges loads its end tables' keys into memory, about 70 bytes a row,
#: and keeps them until the database closes: 2.8 GB for a 2,000-pair write on a store of
#: 10M pairs. Under this bound COPY writes 1.5 times as fast.
COPY_EDGES_MAX_ROWS = 4_000_000
#: Edges created by one statement of key lookups, at most.
EDGE_ROWS = 20_000
#: Statements the connection keeps prepared, at most, before it forgets them all.
MAX_PREPARED = 256
#: Rows bound to writes after which the database is closed and opened again, once the
#: transaction in progress ends (EmbeddedDriver.renew). The engine keeps 60-80 MB outside
#: its page cache for every 100k pairs one process writes, until the database closes; the
#: benchmark's 100k pairs bind 750k rows, so this holds it to about 100 MB.
RENEW_ROWS = 1_000_000
#: Keys that COPYs of edges loaded since the database was opened (the rows of their end
#: tables) past which it is renewed after the next transaction commits: they stay in memory
#: until it closes, and the next transaction's COPYs load what they need again (450 MB for
#: the edges of a 50k-pair write on a store of 1M pairs).
RENEW_KEYS = 1_000_000
#: Beside the database: glan's own lock, held while a driver has it open.
LOCK_SUFFIX = ".lock"
#: Connections for reads outside the writer's transaction, at most, opened as needed.
DEFAULT_READERS = 4
#: What makes a statement a write (our statements: values are parameters, names quoted).
_WRITES = re.compile(
    r"\b(CREATE|MERGE|SET|DELETE|DETACH|REMOVE|COPY|ALTER|DROP|CALL|INSTALL|LOAD|BEGIN|COMMIT"
    r"|ROLLBACK|CHECKPOINT)\b",
    re.IGNORECASE,
)


def is_read(query: str) -> bool:
    """Whether a statement only reads: it may run on a reader's connection."""
    return _WRITES.search(query) is None


def _pool_full(exc: RuntimeError) -> bool:
    return _POOL_FULL in str(exc).lower()


def _rows_in(params: Params) -> int:
    """The rows a statement's parameters bind: its lists' and Arrow tables' lengths."""
    found = 0
    for value in params.values():
        if isinstance(value, pa.Table):
            found += value.num_rows
        elif isinstance(value, (list, tuple)):
            found += len(value)
    return found


def _hold(path: Path, *, shared: bool) -> int:
    """Take glan's lock beside the database, without waiting: its file descriptor.

    The engine locks the database too, but only while it is open; this one is held from the
    driver's open to its close, renewals included. The holder's process id is written in it,
    for the message another process gets."""
    lock = path.with_name(path.name + LOCK_SUFFIX)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        raise StoreLocked(str(path), f"held by process {holder}" if holder else "") from None
    if not shared:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _memory_error(exc: RuntimeError, buffer_mb: int) -> StoreMemoryExceeded:
    return StoreMemoryExceeded(buffer_mb, saved=str(exc).lower().startswith(_COMMITTED))


log = logging.getLogger(__name__)
#: databases set aside (EmbeddedDriver.set_aside), held so that nothing closes them
_SET_ASIDE: list[Any] = []


def _leave_unclosed() -> None:
    """At exit, with a database set aside: end the process before the engine closes it.

    The engine closes every open database as the interpreter ends, and after a write it
    refused part-way for memory its close (a checkpoint) writes a shadow file without
    bound. The data it had committed is in its write-ahead log, replayed at the next open.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(1)


class LadybugDialect(Dialect):
    name = "ladybug"
    random_fn = "random()"
    # A walk from a list of ids (Q.walk_from_ids) still hashes what it reaches from its far
    # end (0.2-0.4 s a call on a 1M-pair store, growing with it); `{id: $id}` is a key
    # lookup and a walk from it (under 1 ms).
    few_ids = 32
    one_writer = True  # the database's lock (EmbeddedDriver.open)

    def join_order(self, order: str) -> str:
        # Left to itself, this engine answers a walk from a list of ids by hashing everything
        # the walk reaches from the far end, for every node of the start's table (every FROM
        # edge of the store, for a few instructions), and then joining the ids in: its
        # memory grows with the store. Told to join the key lookups last, it hashes about
        # half as much and takes a third to a half of the time (Q.walk_from_ids).
        return f" HINT {order}"

    def node_ref(self, var: str) -> str:
        # Returning a property of the far end of an edge read from a list of ids makes this
        # engine scan and hash the far end's whole table (about 1 GB for the concepts of a
        # GLAN-scale store, whatever the number of ids); its offset is read off the edge.
        return f"offset(id({var}))"

    def sorted_list(self, value: str, alias: str) -> str:
        # ORDER BY in a WITH needs a SKIP or LIMIT here, and `collect` promises no order:
        # the list is sorted as a list instead.
        return f"WITH list_sort(collect({value})) AS {alias}"

    def list_item(self, items: str, index: str) -> str:
        return f"{items}[{index} + 1]"  # lists are 1-based here

    def schema_statements(self) -> list[str]:
        q = self.q
        stmts: list[str] = []
        for kind in NODE_KINDS:
            cols = ", ".join(f"{q(p.name)} {p.type.value}" for p in kind.props)
            stmts.append(
                f"CREATE NODE TABLE IF NOT EXISTS {q(kind.label)}({cols}, PRIMARY KEY(id))"
            )
            # Databases made by an older glan gain the properties added since.
            for p in kind.props:
                stmts.append(
                    f"ALTER TABLE {q(kind.label)} ADD IF NOT EXISTS {q(p.name)} {p.type.value}"
                )
        for rel in REL_KINDS:
            stmts.append(
                f"CREATE REL TABLE IF NOT EXISTS {q(rel.type)}"
                f"(FROM {q(rel.src.label)} TO {q(rel.dst.label)})"
            )
        return stmts


def _plain(value: Any) -> Any:
    """Nodes come back as dicts with engine-internal keys; keep only our properties."""
    if isinstance(value, dict) and "_LABEL" in value:
        out = {k: v for k, v in value.items() if not k.startswith("_")}
        out["_label"] = value["_LABEL"]
        return out
    return value


class Slots:
    """At most n holders at once; a waiter whose calls go ahead (`calls_ahead`) takes the
    next free slot before any other waiter."""

    def __init__(self, n: int) -> None:
        self._free = n
        self._changed = threading.Condition()
        self._ahead_waiting = 0
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """How many are waiting for a slot."""
        return self._waiting

    @contextmanager
    def taken(self) -> Iterator[None]:
        ahead = called_ahead()
        with self._changed:
            self._ahead_waiting += ahead
            self._waiting += 1
            try:
                while not self._free or (not ahead and self._ahead_waiting):
                    self._changed.wait()
            finally:
                self._ahead_waiting -= ahead
                self._waiting -= 1
            self._free -= 1
        try:
            yield
        finally:
            with self._changed:
                self._free += 1
                self._changed.notify_all()


def _by_column(table: pa.Table) -> dict[str, list[Any]]:
    """An Arrow table as one list of plain values per column (GraphDriver.columns)."""
    return {name: table.column(name).to_pylist() for name in table.column_names}


class _Tx:
    def __init__(self, driver: EmbeddedDriver) -> None:
        self._driver = driver

    def execute(self, query: str, params: Params | None = None) -> list[Row]:
        return self._driver._run(query, params)

    def columns(self, query: str, params: Params | None = None) -> dict[str, list[Any]]:
        return _by_column(self._driver._table(query, params, self._driver._conn))

    def create_nodes(self, kind: NodeKind, rows: Sequence[Mapping[str, Any]]) -> None:
        self._driver._create_nodes(kind, rows)

    def create_edges(self, rel: RelKind, pairs: Sequence[tuple[str, str]]) -> None:
        self._driver._create_edges(rel, pairs)


class EmbeddedDriver:
    dialect: Dialect = LadybugDialect()

    def __init__(
        self,
        path: Path | str,
        *,
        read_only: bool = False,
        buffer_pool_mb: int = DEFAULT_BUFFER_POOL_MB,
        readers: int = DEFAULT_READERS,
    ) -> None:
        self.path = Path(path).expanduser()
        cache = f"up to {buffer_pool_mb} MB" if buffer_pool_mb else "the engine's default"
        self.description = f"embedded LadybugDB at {self.path} (page cache {cache})"
        self.counter: QueryCounter | None = None
        #: the engine's buffer pool in MB (0: the engine's own default, most of memory)
        self.buffer_pool_mb = buffer_pool_mb
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._options: dict[str, Any] = {"read_only": read_only}
        if buffer_pool_mb:
            self._options["buffer_pool_size"] = buffer_pool_mb * 2**20
        self._held = _hold(self.path, shared=read_only)
        try:
            self._db = self._open()
        except BaseException:
            os.close(self._held)
            raise
        self._conn = self._connect()
        # One connection for writes, used by one thread at a time; transactions hold it
        # throughout, and the thread holding one is its owner.
        self._lock = threading.RLock()
        self._tx_owner: int | None = None
        self._column_cache: dict[str, list[tuple[str, str]]] = {}
        #: reads outside the writer's transaction: idle connections, and how many exist
        self._readers: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._reader_slots = Slots(max(readers, 1))
        self._reader_count = 0
        self._reads_apart = readers > 0
        #: why the database was set aside (see set_aside); None while it is in use
        self._set_aside: StoreSetAside | None = None
        #: reads in flight on readers, and whether one is running alone (see _read_apart)
        self._reads = threading.Condition()
        self._reading = 0
        self._alone = False
        self._writes = 0
        #: rows bound to statements and read from them, to give freed memory back by
        self.moved = Moved()
        #: rows bound to writes since the database was opened (see renew)
        self.written = 0
        #: keys that COPYs of edges loaded since the database was opened (see RENEW_KEYS)
        self.keys_loaded = 0
        #: how many times the database was opened again (see renew)
        self.renewals = 0

    def _open(self) -> Any:
        try:
            return ladybug.Database(str(self.path), **self._options)
        except RuntimeError as exc:
            text = str(exc)
            if "lock" in text.lower():
                raise StoreLocked(str(self.path), text.split("\n")[0]) from exc
            if _pool_full(exc):
                raise StoreMemoryExceeded(self.buffer_pool_mb, "to open the database") from exc
            raise QueryError(f"cannot open {self.path}: {text}") from exc

    def _connect(self) -> Any:
        conn = ladybug.Connection(self._db)
        # The engine keeps the plan of every statement it has run, with the memory its
        # operators took, in the buffer pool, where nothing can evict it: each whole-store
        # count held about 70 MB of a tenth-scale store, until a bounded pool refused the
        # next statement and an unbounded one grew for as long as the process ran. Planning
        # again costs about a millisecond a statement.
        conn.execute("CALL enable_cached_prepared_statement='NONE'")
        return conn

    @property
    def version(self) -> int:
        """How many writes this driver has committed: a read cached at one version is
        current while it stays the same (this process is the database's only writer)."""
        return self._writes

    def _apart(self, query: str) -> bool:
        """Whether a statement runs on a reader: a read, not from inside a transaction."""
        return self._reads_apart and self._tx_owner != threading.get_ident() and is_read(query)

    @contextmanager
    def _reader(self) -> Iterator[Any]:
        """A reader connection for one statement: an idle one, a new one up to the limit,
        or the next to come back."""
        with self._reader_slots.taken():
            try:
                conn = self._readers.get_nowait()
            except queue.Empty:
                conn = self._connect()
                self._reader_count += 1
            try:
                yield conn
            finally:
                self._readers.put(conn)

    def _read_apart(self, read: Callable[[Any], T]) -> T:
        """`read` on a reader connection. One the page cache refused is run once more alone:
        no other read starts until it ends, and it waits for those in flight.

        Reads running side by side share the page cache, so several large ones at once can
        need more than it holds where each alone fits: at GLAN scale under the 512 MB cache,
        the concepts, sessions and answers of an API page of 500 instructions. Refused
        alone too, the read really needs more, and StoreMemoryExceeded says so."""
        try:
            with self._shared_read(), self._reader() as conn:
                return read(conn)
        except StoreMemoryExceeded:
            pass
        with self._read_alone(), self._reader() as conn:
            return read(conn)

    @contextmanager
    def _shared_read(self) -> Iterator[None]:
        with self._reads:
            while self._alone:
                self._reads.wait()
            self._reading += 1
        try:
            yield
        finally:
            with self._reads:
                self._reading -= 1
                self._reads.notify_all()

    @contextmanager
    def _read_alone(self) -> Iterator[None]:
        with self._reads:
            while self._alone:
                self._reads.wait()
            self._alone = True
            while self._reading:
                self._reads.wait()
        try:
            yield
        finally:
            with self._reads:
                self._alone = False
                self._reads.notify_all()

    def _result(self, query: str, params: Params | None, conn: Any = None) -> Any:
        """The engine's result of one statement (of the last, given several), on `conn`
        (the writer's connection by default)."""
        conn = self._conn if conn is None else conn
        if self._set_aside is not None:
            raise self._set_aside
        if self.counter is not None:
            self.counter.add(query)
        writes = conn is self._conn and not is_read(query)
        try:
            result = conn.execute(query, dict(params) if params else {})
        except RuntimeError as exc:
            if _pool_full(exc):
                error = _memory_error(exc, self.buffer_pool_mb)
                in_write = writes or (conn is self._conn and self._tx_owner is not None)
                if in_write and not error.saved:
                    self.set_aside()  # a write, or a statement of one, refused part-way
                raise error from exc
            raise QueryError(f"{exc} (query: {query[:200]})") from exc
        finally:
            self._forget_prepared(params, conn)
            if params:
                rows = _rows_in(params)
                self.moved.add(rows)
                if writes:
                    self.written += rows
        if writes and self._tx_owner is None:
            self._writes += 1
        return result[-1] if isinstance(result, list) else result

    def _forget_prepared(self, params: Params | None, conn: Any) -> None:
        """Drop the statements the client library keeps prepared, after one bound to an
        Arrow table and whenever there are many of them.

        The library keeps every statement it prepares, keyed by its text and by each Arrow
        table given to it, for as long as the connection lives: every bulk insert would
        stay in memory with its table (1 GB a million pairs written). A statement bound
        to a table is never run again, and the others are prepared again in about a
        millisecond. The cache is the library's own attribute; without it there is
        nothing to drop."""
        cache = getattr(conn, "_pybind_implicit_prepared_cache", None)
        if not isinstance(cache, dict) or not cache:
            return
        if len(cache) > MAX_PREPARED or (
            params and any(isinstance(v, pa.Table) for v in params.values())
        ):
            cache.clear()

    def _run(self, query: str, params: Params | None = None, conn: Any = None) -> list[Row]:
        result = self._result(query, params, conn)
        try:
            cols = result.get_column_names()
            rows: list[Row] = [dict(zip(cols, v, strict=True)) for v in result.get_all()]
            types = result.get_column_data_types()
        finally:
            result.close()  # at once, not whenever the collector gets to it
        self.moved.add(len(rows))
        # Only columns holding nodes or relationships need their engine-internal keys
        # dropped; checking the column types once spares a call per value of a large read.
        graph_cols = [c for c, t in zip(cols, types, strict=True) if t.startswith(("NODE", "REL"))]
        for row in rows:
            for c in graph_cols:
                row[c] = _plain(row[c])
        return rows

    def execute(self, query: str, params: Params | None = None) -> list[Row]:
        if self._apart(query):
            return self._read_apart(lambda conn: self._run(query, params, conn))
        with self._lock:
            rows = self._run(query, params)
            self._renew_if_due()
            return rows

    def columns(self, query: str, params: Params | None = None) -> dict[str, list[Any]]:
        return _by_column(self.table(query, params))

    def table(self, query: str, params: Params | None = None) -> pa.Table:
        if self._apart(query):
            return self._read_apart(lambda conn: self._table(query, params, conn))
        with self._lock:
            return self._table(query, params, self._conn)

    def _table(self, query: str, params: Params | None, conn: Any) -> pa.Table:
        result = self._result(query, params, conn)
        try:
            table: pa.Table = result.get_as_arrow(chunk_size=-1)
        finally:
            result.close()
        self.moved.add(table.num_rows)
        return table

    def create_nodes(self, kind: NodeKind, rows: Sequence[Mapping[str, Any]]) -> None:
        with self._lock:
            self._create_nodes(kind, rows)
            self._renew_if_due()

    def create_edges(self, rel: RelKind, pairs: Sequence[tuple[str, str]]) -> None:
        with self._lock:
            self._create_edges(rel, pairs)
            self._renew_if_due()

    def _columns(self, label: str) -> list[tuple[str, str]]:
        """A table's columns in storage order, which is what COPY maps by."""
        if label not in self._column_cache:
            rows = self._run(Q.table_columns(self.dialect, label))
            self._column_cache[label] = [(r["name"], r["type"]) for r in rows]
        return self._column_cache[label]

    def _create_nodes(self, kind: NodeKind, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        if len(rows) < COPY_MIN_ROWS:
            self._run(Q.create_nodes(self.dialect, kind, kind.prop_names), {"rows": list(rows)})
            return
        table = pa.table(
            {
                name: pa.array([r.get(name) for r in rows], type=_ARROW[typ])
                for name, typ in self._columns(kind.label)
            }
        )
        self._run(Q.copy_from(self.dialect, kind.label), {"rows": table})

    def _create_edges(self, rel: RelKind, pairs: Sequence[tuple[str, str]]) -> None:
        if not pairs:
            return
        end_rows = self._ends_rows(rel) if len(pairs) >= COPY_MIN_ROWS else 0
        if len(pairs) < COPY_MIN_ROWS or end_rows > COPY_EDGES_MAX_ROWS:
            for start in range(0, len(pairs), EDGE_ROWS):
                rows = [{"src": s, "dst": t} for s, t in pairs[start : start + EDGE_ROWS]]
                self._run(Q.create_edges(self.dialect, rel), {"rows": rows})
            return
        # Arrow reads the pairs in one call, as lists of two, and splits them: no Python
        # object is made per end.
        ends = pa.array(pairs, pa.list_(pa.string(), 2)).flatten()
        sources = np.arange(0, len(ends), 2)
        table = pa.table({"from": ends.take(sources), "to": ends.take(sources + 1)})
        self._run(Q.copy_from(self.dialect, rel.type), {"rows": table})
        self.keys_loaded += end_rows

    def _ends_rows(self, rel: RelKind) -> int:
        """The rows of an edge table's two end tables (a count is read off the table)."""
        return sum(
            int(self._run(Q.count_label(self.dialect, kind))[0]["n"])
            for kind in dict.fromkeys((rel.src, rel.dst))
        )

    @contextmanager
    def transaction(self) -> Iterator[_Tx]:
        with self._lock:
            if self._set_aside is not None:
                raise self._set_aside
            self._conn.execute("BEGIN TRANSACTION")
            self._tx_owner = threading.get_ident()
            try:
                yield _Tx(self)
            except BaseException:
                self._tx_owner = None
                # a statement the engine refused (one out of memory, say) may have ended the
                # transaction already: the error to report is that statement's, not this one
                with contextlib.suppress(RuntimeError):
                    self._conn.execute("ROLLBACK")
                raise
            else:
                self._tx_owner = None
                try:
                    self._conn.execute("COMMIT")
                except RuntimeError as exc:
                    if _pool_full(exc):
                        error = _memory_error(exc, self.buffer_pool_mb)
                        if not error.saved:  # refused before the commit was saved
                            self.set_aside()
                        raise error from exc
                    raise QueryError(f"{exc} (commit)") from exc
                finally:
                    self._writes += 1
            self._renew_if_due(committed=True)

    def _renew_if_due(self, *, committed: bool = False) -> None:
        """Renew the database once RENEW_ROWS rows were written, or, after a transaction
        `committed`, once COPYs of edges loaded RENEW_KEYS keys since it was opened; between
        transactions (the caller holds the writer's lock)."""
        due = self.written >= RENEW_ROWS or (committed and self.keys_loaded >= RENEW_KEYS)
        if due and self._tx_owner is None and self._set_aside is None:
            self.renew()

    def renew(self) -> None:
        """Close the database and open it again, keeping glan's lock throughout.

        The engine keeps memory for what one process wrote, outside its page cache, until
        the database closes (60-80 MB per 100k pairs; closing returns it in about 0.3 s).
        A process that writes for a day, a server or a whole-field `glan generate`, would
        carry gigabytes. Renewing waits for the transaction and the reads in flight to end
        and lets no new one start until the database is open again; results already read
        are the caller's own copies, and the committed data is the same after it. While the
        engine's lock is let go, glan's lock (`<database>.lock`) keeps other glan processes
        out."""
        with self._lock, self._read_alone():
            if self._set_aside is not None:
                raise self._set_aside
            self._close_connections()
            self._db.close()
            give_back()
            self._db = self._open()
            self._conn = self._connect()
            self.written = self.keys_loaded = 0
            self.renewals += 1

    def _close_connections(self) -> None:
        while True:
            try:
                self._readers.get_nowait().close()
            except queue.Empty:
                break
        self._reader_count = 0
        self._conn.close()

    def ensure_schema(self) -> None:
        with self._lock:
            for stmt in self.dialect.schema_statements():
                self._run(stmt)
            self._column_cache.clear()

    def set_aside(self) -> None:
        """Stop using the database after the engine refused a write part-way for memory.

        The engine then ends the transaction itself, and its state in this process cannot
        be trusted: closing the database after it (its checkpoint at close) wrote a shadow
        file beside it without bound, gigabytes a minute until the disk was full, and a
        write after it failed on a damaged index. So every later call is refused with
        StoreSetAside, and the database is never closed: the process ends without closing
        it (_leave_unclosed), and the next open replays what was committed before."""
        if self._set_aside is not None:
            return
        self._set_aside = StoreSetAside(str(self.path), self.buffer_pool_mb)
        log.error("%s", self._set_aside)
        if not _SET_ASIDE:
            atexit.register(_leave_unclosed)
        _SET_ASIDE.append(self)

    def close(self) -> None:
        if self._set_aside is not None:
            return  # never closed (see set_aside)
        with self._lock:
            self._close_connections()
            self._db.close()
            os.close(self._held)
        give_back()
