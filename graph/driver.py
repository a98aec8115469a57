"""The one interface every graph engine implements, and the dialect each one speaks.

Domain code (graph/store.py) only ever sees a `GraphDriver`. What differs between engines,
DDL and a few function names, lives in a `Dialect` subclass in graph/backends/.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa

from .model import NODE_KINDS, REL_KINDS, NodeKind, RelKind

Row = dict[str, Any]
Params = Mapping[str, Any]


class Dialect:
    """Cypher differences between engines. Queries are built from these; values stay params."""

    name = "cypher"
    #: function returning a uniform random float in [0, 1)
    random_fn = "rand()"
    #: Up to this many ids, a query that walks out from nodes given by id runs once per id.
    #: Some engines look a single `{id: $id}` up by key but plan a list of ids as a scan of
    #: every table on the way: cheap for thousands of ids, ruinous for one in a hot path.
    few_ids = 0
    #: A read for at least this share of the store's subjects walks every subject and keeps
    #: those asked for: an engine that joins a list of ids with the whole walk anyway pays
    #: less for the walk alone (see Nodes.reads_whole).
    whole_read_share = 0.5
    #: Whether one process alone writes a database (the embedded engine's rule): what that
    #: process wrote is all there is, so it may keep an account of it instead of reading it
    #: again (Rollups.before_questions).
    one_writer = False

    def join_order(self, order: str) -> str:
        """A clause after a MATCH telling the engine in which order to join its pattern (the
        pattern's variables, grouped by JOIN), for an engine whose planner needs telling;
        nothing for the others."""
        return ""

    def node_ref(self, var: str) -> str | None:
        """An expression giving the engine's own integer reference of node `var`, unique in
        its table, where reading it costs no join (None where the engine has none): for
        reads that would otherwise join a whole table to fetch a few of its properties."""
        return None

    @staticmethod
    def q(identifier: str) -> str:
        """Quote a label, relationship type or property name taken from graph/model.py."""
        return "`" + identifier.replace("`", "``") + "`"

    def sorted_list(self, value: str, alias: str) -> str:
        """Clauses gathering the rows' `value` into one list `alias`, in ascending order.

        Neo4j-style engines keep the order of an ORDER BY in the `collect` after it.
        """
        return f"WITH {value} AS v ORDER BY v WITH collect(v) AS {alias}"

    def list_item(self, items: str, index: str) -> str:
        """The element of list `items` at the 0-based position `index`."""
        return f"{items}[{index}]"

    def schema_statements(self) -> list[str]:
        """DDL that makes the schema exist; each statement safe to run at every start."""
        raise NotImplementedError

    def node_tables(self) -> tuple[NodeKind, ...]:
        return NODE_KINDS

    def rel_tables(self) -> tuple[Any, ...]:
        return REL_KINDS


@runtime_checkable
class Tx(Protocol):
    def execute(self, query: str, params: Params | None = None) -> list[Row]: ...

    def columns(self, query: str, params: Params | None = None) -> dict[str, list[Any]]:
        """GraphDriver.columns, in the transaction."""
        ...

    def create_nodes(self, kind: NodeKind, rows: Sequence[Mapping[str, Any]]) -> None:
        """Create nodes known to be new; rows carry every property of the kind."""

    def create_edges(self, rel: RelKind, pairs: Sequence[tuple[str, str]]) -> None:
        """Create edges known to be new, between existing nodes."""


_AHEAD: ContextVar[bool] = ContextVar("glan_store_calls_ahead", default=False)


@contextmanager
def calls_ahead() -> Iterator[None]:
    """Store calls made in this context, and in the tasks and `asyncio.to_thread` calls it
    starts, go ahead of the others waiting for one of a driver's bounded connections.

    Jobs run in it: their reads are few and bulk (a chunk of units' inputs, a plan), and
    while one waits the model endpoint waits with it, so they are not queued behind a
    crowd of API requests that each delay one client. The embedded engine's readers honour
    it (a few connections, see EmbeddedDriver); Bolt drivers pool sessions enough."""
    token = _AHEAD.set(True)
    try:
        yield
    finally:
        _AHEAD.reset(token)


def called_ahead() -> bool:
    """Whether this context's store calls go ahead (see calls_ahead)."""
    return _AHEAD.get()


@runtime_checkable
class GraphDriver(Protocol):
    """A connection to one graph database.

    `execute` runs one statement in its own transaction and returns rows as plain dicts
    (nodes become dicts of their properties); `create_nodes` / `create_edges` write rows
    known to be new by the engine's fastest path; `transaction()` groups statements that
    must commit or roll back together, and offers the same three.
    """

    dialect: Dialect
    description: str

    @property
    def version(self) -> int | None:
        """A number that changes with every write committed through this driver, where it
        is the database's only writer (a read cached at one version is current while it
        stays the same); None where other processes may write too."""
        ...

    def execute(self, query: str, params: Params | None = None) -> list[Row]: ...

    def columns(self, query: str, params: Params | None = None) -> dict[str, list[Any]]:
        """A read of plain values (no nodes) as one list per column, every column present
        even when no row is: for reads of many rows, which engines hand over by column
        many times faster than row by row."""
        ...

    def table(self, query: str, params: Params | None = None) -> pa.Table:
        """`columns` as an Arrow table: for reads the caller sorts and joins by column, with
        no Python object per value. A read of no rows may have no columns."""
        ...

    def create_nodes(self, kind: NodeKind, rows: Sequence[Mapping[str, Any]]) -> None: ...

    def create_edges(self, rel: RelKind, pairs: Sequence[tuple[str, str]]) -> None: ...

    def transaction(self) -> AbstractContextManager[Tx]: ...

    def ensure_schema(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class QueryCounter:
    """Counts statements sent to the database: how tests prove a view is O(1) in queries."""

    count: int = 0
    queries: list[str] = field(default_factory=list)

    def add(self, query: str) -> None:
        self.count += 1
        self.queries.append(query)


def batched(rows: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]
