"""LadybugDB, in-process: the default engine. A new user needs no server.

The database is a file under the user's data dir. Only one process may open it read-write;
a second one gets `StoreLocked` naming the path.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ladybug

from ..driver import Dialect, Params, QueryCounter, Row
from ..errors import QueryError, StoreLocked
from ..model import NODE_KINDS, REL_KINDS


class LadybugDialect(Dialect):
    name = "ladybug"
    random_fn = "random()"

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


class _Tx:
    def __init__(self, driver: EmbeddedDriver) -> None:
        self._driver = driver

    def execute(self, query: str, params: Params | None = None) -> list[Row]:
        return self._driver._run(query, params)


class EmbeddedDriver:
    dialect: Dialect = LadybugDialect()

    def __init__(self, path: Path | str, *, read_only: bool = False) -> None:
        self.path = Path(path).expanduser()
        self.description = f"embedded LadybugDB at {self.path}"
        self.counter: QueryCounter | None = None
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = ladybug.Database(str(self.path), read_only=read_only)
        except RuntimeError as exc:
            text = str(exc)
            if "lock" in text.lower():
                raise StoreLocked(str(self.path), text.split("\n")[0]) from exc
            raise QueryError(f"cannot open {self.path}: {text}") from exc
        self._conn = ladybug.Connection(self._db)
        # One connection, used by one thread at a time; transactions hold it throughout.
        self._lock = threading.RLock()

    def _run(self, query: str, params: Params | None = None) -> list[Row]:
        if self.counter is not None:
            self.counter.add(query)
        try:
            result = self._conn.execute(query, dict(params) if params else {})
        except RuntimeError as exc:
            raise QueryError(f"{exc} (query: {query[:200]})") from exc
        if isinstance(result, list):  # several statements: keep the last result
            result = result[-1]
        cols = result.get_column_names()
        rows: list[Row] = []
        while result.has_next():
            values = result.get_next()
            rows.append({c: _plain(v) for c, v in zip(cols, values, strict=True)})
        return rows

    def execute(self, query: str, params: Params | None = None) -> list[Row]:
        with self._lock:
            return self._run(query, params)

    @contextmanager
    def transaction(self) -> Iterator[_Tx]:
        with self._lock:
            self._conn.execute("BEGIN TRANSACTION")
            try:
                yield _Tx(self)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")

    def ensure_schema(self) -> None:
        with self._lock:
            for stmt in self.dialect.schema_statements():
                self._run(stmt)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            self._db.close()
