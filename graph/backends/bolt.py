"""Neo4j 5, Memgraph and ArcadeDB over Bolt, with the official driver.

The engines agree on the Cypher glan sends; what differs is schema DDL, which lives in
one Dialect subclass per engine here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import neo4j
from neo4j import exceptions as neo4j_errors

from .. import queries as Q
from ..driver import Dialect, Params, QueryCounter, Row
from ..errors import BackendUnavailable, QueryError
from ..model import HIERARCHY, INSTRUCTION, KIND_BY_LABEL, NODE_KINDS, UNIT, NodeKind, RelKind

#: Properties indexed besides each kind's unique id, for path walks, scopes and jobs.
INDEXED: dict[str, tuple[str, ...]] = {
    **{k.label: ("key", "status") for k in HIERARCHY},
    INSTRUCTION.label: ("combo_key", "subject_id", "job_id"),
    UNIT.label: ("job_id", "status"),
}


def _index_name(kind: NodeKind, prop: str) -> str:
    return f"glan_{kind.label.lower()}_{prop}"


class Neo4jDialect(Dialect):
    name = "neo4j"
    random_fn = "rand()"
    #: error codes meaning "already there", safe to ignore when ensuring the schema
    tolerated: tuple[str, ...] = ()

    def schema_statements(self) -> list[str]:
        q = self.q
        stmts = [
            f"CREATE CONSTRAINT {_index_name(k, 'id')} IF NOT EXISTS "
            f"FOR (n:{q(k.label)}) REQUIRE n.id IS UNIQUE"
            for k in NODE_KINDS
        ]
        for label, props in INDEXED.items():
            kind = KIND_BY_LABEL[label]
            stmts += [
                f"CREATE INDEX {_index_name(kind, p)} IF NOT EXISTS "
                f"FOR (n:{q(label)}) ON (n.{q(p)})"
                for p in props
            ]
        return stmts


class ArcadeDialect(Neo4jDialect):
    """ArcadeDB speaks Neo4j 5's DDL (CREATE CONSTRAINT/INDEX ... IF NOT EXISTS)."""

    name = "arcadedb"


class MemgraphDialect(Dialect):
    """Memgraph's DDL has no IF NOT EXISTS: an existing constraint or index is an error."""

    name = "memgraph"
    random_fn = "rand()"

    def schema_statements(self) -> list[str]:
        q = self.q
        stmts = [f"CREATE CONSTRAINT ON (n:{q(k.label)}) ASSERT n.id IS UNIQUE" for k in NODE_KINDS]
        stmts += [f"CREATE INDEX ON :{q(k.label)}(id)" for k in NODE_KINDS]
        for label, props in INDEXED.items():
            stmts += [f"CREATE INDEX ON :{q(label)}({q(p)})" for p in props]
        return stmts


DIALECTS: dict[str, type[Dialect]] = {
    "neo4j": Neo4jDialect,
    "memgraph": MemgraphDialect,
    "arcadedb": ArcadeDialect,
}


def _flavor_of(agent: str) -> str:
    agent = agent.lower()
    for name in ("memgraph", "arcadedb"):
        if name in agent:
            return name
    return "neo4j"


def _plain(value: Any) -> Any:
    """Nodes become dicts of their properties, every property of their kind present."""
    if isinstance(value, neo4j.graph.Node):
        label = next(iter(value.labels), "")
        kind = KIND_BY_LABEL.get(label)
        out: dict[str, Any] = dict.fromkeys(kind.prop_names) if kind else {}
        out.update(dict(value))
        out["_label"] = label
        return out
    return value


def _rows(result: neo4j.Result) -> list[Row]:
    return [{k: _plain(v) for k, v in record.items()} for record in result]


class _Tx:
    def __init__(self, driver: BoltDriver, tx: neo4j.Transaction) -> None:
        self._driver = driver
        self._tx = tx

    def execute(self, query: str, params: Params | None = None) -> list[Row]:
        self._driver._count(query)
        with self._driver._errors(query):
            return _rows(self._tx.run(query, dict(params or {})))

    def create_nodes(self, kind: NodeKind, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            self.execute(
                Q.create_nodes(self._driver.dialect, kind, kind.prop_names),
                {"rows": [dict(r) for r in rows]},
            )

    def create_edges(self, rel: RelKind, pairs: Sequence[tuple[str, str]]) -> None:
        if pairs:
            self.execute(
                Q.create_edges(self._driver.dialect, rel),
                {"rows": [{"src": s, "dst": t} for s, t in pairs]},
            )


class BoltDriver:
    def __init__(
        self,
        uri: str,
        *,
        user: str | None,
        password: str | None,
        database: str | None = None,
        flavor: str = "auto",
    ) -> None:
        self.uri = uri
        self.database = database
        self.counter: QueryCounter | None = None
        auth = (user or "", password or "") if user or password else None
        try:
            self._driver = neo4j.GraphDatabase.driver(uri, auth=auth)
            agent = self._driver.get_server_info().agent
        except (neo4j_errors.ServiceUnavailable, neo4j_errors.AuthError, ValueError) as exc:
            raise BackendUnavailable(
                f"cannot reach the Bolt server at {uri}: {exc}. Check that it runs "
                "(docker compose up -d), and GLAN_BOLT_URI / GLAN_BOLT_USER / "
                "GLAN_BOLT_PASSWORD."
            ) from exc
        self.flavor = _flavor_of(agent) if flavor == "auto" else flavor
        self.dialect: Dialect = DIALECTS[self.flavor]()
        engine = {"neo4j": "Neo4j", "memgraph": "Memgraph", "arcadedb": "ArcadeDB"}[self.flavor]
        self.description = f"{engine} over Bolt at {uri} ({agent})"

    def _count(self, query: str) -> None:
        if self.counter is not None:
            self.counter.add(query)

    @contextmanager
    def _errors(self, query: str) -> Iterator[None]:
        try:
            yield
        except neo4j_errors.Neo4jError as exc:
            raise QueryError(f"{exc.message or exc} (query: {query[:200]})") from exc
        except neo4j_errors.ServiceUnavailable as exc:
            raise BackendUnavailable(f"lost the Bolt server at {self.uri}: {exc}") from exc

    def _session(self) -> neo4j.Session:
        return (
            self._driver.session(database=self.database)
            if self.database
            else (self._driver.session())
        )

    def execute(self, query: str, params: Params | None = None) -> list[Row]:
        self._count(query)
        with self._errors(query), self._session() as session:
            return _rows(session.run(query, dict(params or {})))

    def create_nodes(self, kind: NodeKind, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            self.execute(
                Q.create_nodes(self.dialect, kind, kind.prop_names),
                {"rows": [dict(r) for r in rows]},
            )

    def create_edges(self, rel: RelKind, pairs: Sequence[tuple[str, str]]) -> None:
        if pairs:
            self.execute(
                Q.create_edges(self.dialect, rel),
                {"rows": [{"src": s, "dst": t} for s, t in pairs]},
            )

    @contextmanager
    def transaction(self) -> Iterator[_Tx]:
        with self._session() as session:
            tx = session.begin_transaction()
            try:
                yield _Tx(self, tx)
            except BaseException:
                tx.rollback()
                raise
            else:
                with self._errors("COMMIT"):
                    tx.commit()

    def ensure_schema(self) -> None:
        for stmt in self.dialect.schema_statements():
            try:
                self.execute(stmt)
            except QueryError as exc:
                if self.flavor == "memgraph" and "already exists" in str(exc).lower():
                    continue  # Memgraph's DDL is not idempotent; the schema is there
                raise

    def close(self) -> None:
        self._driver.close()
