"""Neo4j 5, Memgraph and ArcadeDB over Bolt, with the official driver.

The engines agree on the Cypher glan sends; what differs is schema DDL (and which DDL errors
mean "already there"), which lives in one Dialect subclass per engine here and nowhere else.
Every statement runs through `Session.run`: an auto-commit transaction, the only kind in
which Memgraph accepts index and constraint DDL.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import neo4j
import pyarrow as pa
from neo4j import exceptions as neo4j_errors

from .. import queries as Q
from ..driver import Dialect, Params, QueryCounter, Row
from ..errors import BackendUnavailable, QueryError
from ..model import HIERARCHY, INSTRUCTION, KIND_BY_LABEL, NODE_KINDS, UNIT, NodeKind, RelKind

#: Properties indexed besides each kind's unique id: path walks, review filters, scopes, jobs.
INDEXED: dict[str, tuple[str, ...]] = {
    **{k.label: ("key", "status") for k in HIERARCHY},
    INSTRUCTION.label: ("combo_key", "subject_id", "job_id"),
    UNIT.label: ("job_id", "status"),
}

_CHECK = (
    "Check that the server runs and listens for Bolt there, and GLAN_BOLT_URI, "
    "GLAN_BOLT_USER, GLAN_BOLT_PASSWORD and GLAN_BOLT_DATABASE."
)


def _index_name(label: str, prop: str) -> str:
    return f"glan_{label.lower()}_{prop}"


class BoltDialect(Dialect):
    """What a Bolt engine needs besides Cypher: its DDL and which DDL errors to ignore."""

    engine = "Bolt"

    def schema_error_is_benign(self, message: str) -> bool:
        """True when a schema statement failed only because what it creates exists."""
        return False


class Neo4jDialect(BoltDialect):
    name = "neo4j"
    engine = "Neo4j"
    random_fn = "rand()"

    def schema_statements(self) -> list[str]:
        q = self.q
        stmts = [
            f"CREATE CONSTRAINT {_index_name(k.label, 'id')} IF NOT EXISTS "
            f"FOR (n:{q(k.label)}) REQUIRE n.{q('id')} IS UNIQUE"
            for k in NODE_KINDS
        ]
        for label, props in INDEXED.items():
            stmts += [
                f"CREATE INDEX {_index_name(label, p)} IF NOT EXISTS "
                f"FOR (n:{q(label)}) ON (n.{q(p)})"
                for p in props
            ]
        return stmts


class ArcadeDialect(Neo4jDialect):
    """ArcadeDB takes Neo4j 5's DDL as is, IF NOT EXISTS included, and creates the vertex
    type a constraint or index names when it does not exist yet."""

    name = "arcadedb"
    engine = "ArcadeDB"


class MemgraphDialect(BoltDialect):
    """Memgraph's DDL has no IF NOT EXISTS, and a unique constraint brings no index."""

    name = "memgraph"
    engine = "Memgraph"
    random_fn = "rand()"

    def schema_statements(self) -> list[str]:
        q = self.q
        stmts = [
            f"CREATE CONSTRAINT ON (n:{q(k.label)}) ASSERT n.{q('id')} IS UNIQUE"
            for k in NODE_KINDS
        ]
        stmts += [f"CREATE INDEX ON :{q(k.label)}({q('id')})" for k in NODE_KINDS]
        for label, props in INDEXED.items():
            stmts += [f"CREATE INDEX ON :{q(label)}({q(p)})" for p in props]
        return stmts

    def schema_error_is_benign(self, message: str) -> bool:
        return "already exists" in message.lower()


DIALECTS: dict[str, type[BoltDialect]] = {
    "neo4j": Neo4jDialect,
    "memgraph": MemgraphDialect,
    "arcadedb": ArcadeDialect,
}


def flavor_of(agent: str) -> str:
    """The engine behind a Bolt agent string. ArcadeDB calls itself
    "Neo4j/5.26.0 compatible (ArcadeDB 26.10.2)", so it is looked for before Neo4j."""
    lowered = agent.lower()
    for name in ("arcadedb", "memgraph"):
        if name in lowered:
            return name
    return "neo4j"


def _version(engine: str, agent: str) -> str:
    """The engine's version in the agent string ("Neo4j/5.26.0" -> "5.26.0"), or ""."""
    found = re.search(rf"{engine}[/ ]v?(\d[\w.\-]*)", agent, re.IGNORECASE)
    return found.group(1) if found else ""


def _first_label(labels: frozenset[str]) -> str:
    """A node's label: the one glan's model knows (labels are an unordered set)."""
    known = sorted(label for label in labels if label in KIND_BY_LABEL)
    return (known or sorted(labels) or [""])[0]


def _plain(value: Any) -> Any:
    """Nodes become dicts of their properties plus "_label", every property of their kind
    present (unset ones as None), as the embedded engine returns them."""
    if isinstance(value, neo4j.graph.Node):
        label = _first_label(value.labels)
        kind = KIND_BY_LABEL.get(label)
        out: dict[str, Any] = dict.fromkeys(kind.prop_names) if kind else {}
        out.update(value.items())
        out["_label"] = label
        return out
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _rows(result: neo4j.Result) -> list[Row]:
    return [{k: _plain(v) for k, v in record.items()} for record in result]


def _columns(result: neo4j.Result) -> dict[str, list[Any]]:
    """A result's plain values by column, every column present even when no row is."""
    keys = list(result.keys())
    out: dict[str, list[Any]] = {k: [] for k in keys}
    for record in result:
        for k in keys:
            out[k].append(_plain(record[k]))
    return out


class _Tx:
    """One explicit transaction: what `BoltDriver.transaction()` yields."""

    def __init__(self, driver: BoltDriver, tx: neo4j.Transaction) -> None:
        self._driver = driver
        self._tx = tx

    def execute(self, query: str, params: Params | None = None) -> list[Row]:
        self._driver._count(query)
        with self._driver._errors(query):
            return _rows(self._tx.run(query, dict(params or {})))

    def columns(self, query: str, params: Params | None = None) -> dict[str, list[Any]]:
        self._driver._count(query)
        with self._driver._errors(query):
            return _columns(self._tx.run(query, dict(params or {})))

    def create_nodes(self, kind: NodeKind, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            self.execute(*_create_nodes(self._driver.dialect, kind, rows))

    def create_edges(self, rel: RelKind, pairs: Sequence[tuple[str, str]]) -> None:
        if pairs:
            self.execute(*_create_edges(self._driver.dialect, rel, pairs))


def _create_nodes(
    d: Dialect, kind: NodeKind, rows: Sequence[Mapping[str, Any]]
) -> tuple[str, dict[str, Any]]:
    return Q.create_nodes(d, kind, kind.prop_names), {"rows": [dict(r) for r in rows]}


def _create_edges(
    d: Dialect, rel: RelKind, pairs: Sequence[tuple[str, str]]
) -> tuple[str, dict[str, Any]]:
    return Q.create_edges(d, rel), {"rows": [{"src": s, "dst": t} for s, t in pairs]}


class BoltDriver:
    """A GraphDriver over one Bolt server and database (thread-safe: a session per call)."""

    #: other clients of the server may write at any time: no read is known to be current
    version: int | None = None

    def __init__(
        self,
        uri: str,
        *,
        user: str | None,
        password: str | None,
        database: str | None = None,
        flavor: str = "auto",
    ) -> None:
        if flavor != "auto" and flavor not in DIALECTS:
            choices = ", ".join(["auto", *DIALECTS])
            raise ValueError(f"unknown Bolt flavor {flavor!r}; choose one of {choices}")
        self.uri = uri
        self.database = database or None
        self.counter: QueryCounter | None = None
        auth = neo4j.basic_auth(user or "", password or "") if user or password else None
        try:
            self._driver = neo4j.GraphDatabase.driver(uri, auth=auth)
        except (neo4j_errors.ConfigurationError, ValueError) as exc:
            raise BackendUnavailable(f"bad Bolt URI {uri!r}: {exc}. {_CHECK}") from exc
        try:
            agent = self._driver.get_server_info().agent
        except neo4j_errors.AuthError as exc:
            self._driver.close()
            raise BackendUnavailable(
                f"the Bolt server at {uri} refused the credentials of user {user!r}: "
                f"{exc.message}. Check GLAN_BOLT_USER and GLAN_BOLT_PASSWORD."
            ) from exc
        except (neo4j_errors.DriverError, neo4j_errors.Neo4jError, OSError) as exc:
            self._driver.close()
            raise BackendUnavailable(
                f"cannot reach a Bolt server at {uri}: {exc}. {_CHECK}"
            ) from exc
        self.agent = agent
        self.flavor = flavor_of(agent) if flavor == "auto" else flavor
        self._dialect: BoltDialect = DIALECTS[self.flavor]()
        self.dialect: Dialect = self._dialect
        engine = self._dialect.engine
        version = _version(engine, agent)
        name = f"{engine} {version}" if version else engine
        where = f"{uri}, database {self.database}" if self.database else uri
        self.description = f"{name} over Bolt at {where}"

    def _count(self, query: str) -> None:
        if self.counter is not None:
            self.counter.add(query)

    @contextmanager
    def _errors(self, query: str) -> Iterator[None]:
        """Driver exceptions become glan's: lost server or bad login -> BackendUnavailable,
        anything the database rejected -> QueryError with its message and code."""
        try:
            yield
        except neo4j_errors.AuthError as exc:
            raise BackendUnavailable(
                f"the Bolt server at {self.uri} refused the credentials: {exc.message}. "
                "Check GLAN_BOLT_USER and GLAN_BOLT_PASSWORD."
            ) from exc
        except neo4j_errors.Neo4jError as exc:
            if exc.code and exc.code.endswith("DatabaseNotFound"):
                raise BackendUnavailable(
                    f"the Bolt server at {self.uri} has no database {self.database!r}: "
                    f"{exc.message}. Create it, or check GLAN_BOLT_DATABASE."
                ) from exc
            raise QueryError(f"{exc.message} [{exc.code}] (query: {query[:200]})") from exc
        except (neo4j_errors.ServiceUnavailable, neo4j_errors.SessionExpired) as exc:
            raise BackendUnavailable(
                f"lost the Bolt server at {self.uri}: {exc}. {_CHECK}"
            ) from exc
        except neo4j_errors.DriverError as exc:
            raise QueryError(f"{exc} (query: {query[:200]})") from exc

    def _session(self) -> neo4j.Session:
        return self._driver.session(database=self.database)

    def execute(self, query: str, params: Params | None = None) -> list[Row]:
        """One statement in its own auto-committed transaction."""
        self._count(query)
        with self._errors(query), self._session() as session:
            return _rows(session.run(query, dict(params or {})))

    def columns(self, query: str, params: Params | None = None) -> dict[str, list[Any]]:
        self._count(query)
        with self._errors(query), self._session() as session:
            return _columns(session.run(query, dict(params or {})))

    def table(self, query: str, params: Params | None = None) -> pa.Table:
        return pa.table(self.columns(query, params))

    def create_nodes(self, kind: NodeKind, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            self.execute(*_create_nodes(self.dialect, kind, rows))

    def create_edges(self, rel: RelKind, pairs: Sequence[tuple[str, str]]) -> None:
        if pairs:
            self.execute(*_create_edges(self.dialect, rel, pairs))

    @contextmanager
    def transaction(self) -> Iterator[_Tx]:
        """Statements that commit together when the block ends, or roll back on an error."""
        with self._session() as session:
            with self._errors("BEGIN"):
                tx = session.begin_transaction()
            try:
                yield _Tx(self, tx)
            except BaseException:
                # The block's error is the one to see; a failed rollback (a lost server,
                # a transaction the server already ended) only ends it sooner.
                with suppress(neo4j_errors.Neo4jError, neo4j_errors.DriverError, OSError):
                    tx.rollback()
                raise
            with self._errors("COMMIT"):
                tx.commit()

    def ensure_schema(self) -> None:
        """Unique ids and lookup indexes; safe at every start (idempotent DDL, or, where
        the engine has none, "already exists" errors ignored)."""
        for stmt in self._dialect.schema_statements():
            try:
                self.execute(stmt)
            except QueryError as exc:
                if not self._dialect.schema_error_is_benign(str(exc)):
                    raise

    def close(self) -> None:
        self._driver.close()
