"""Per-request context: the store, the job manager, auth, and DataLoaders that batch the
nested fields of a query into one database read per kind."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any

from strawberry.dataloader import DataLoader

from generators.manager import JobManager
from graph.model import ANSWERS, COVERS, FROM
from graph.store import Node, Store

from .settings import Settings


def _by_id(store: Store) -> DataLoader[str, Node | None]:
    async def load(ids: list[str]) -> list[Node | None]:
        found = store.get_many(ids)
        return [found.get(i) for i in ids]

    return DataLoader(load_fn=load)


def _linked(store: Store, rel: Any, reverse: bool = False) -> DataLoader[str, list[str]]:
    async def load(ids: list[str]) -> list[list[str]]:
        found = store.linked(rel, ids, reverse=reverse)
        return [found.get(i, []) for i in ids]

    return DataLoader(load_fn=load)


def _paths(store: Store) -> DataLoader[str, list[str]]:
    async def load(ids: list[str]) -> list[list[str]]:
        return [store.paths_of(i) for i in ids]

    return DataLoader(load_fn=load)


@dataclass
class Loaders:
    node: DataLoader[str, Node | None]
    covers: DataLoader[str, list[str]]
    sessions: DataLoader[str, list[str]]
    responses: DataLoader[str, list[str]]
    paths: DataLoader[str, list[str]]

    @classmethod
    def for_request(cls, store: Store) -> Loaders:
        return cls(
            node=_by_id(store),
            covers=_linked(store, COVERS),
            sessions=_linked(store, FROM),
            responses=_linked(store, ANSWERS, reverse=True),
            paths=_paths(store),
        )


@dataclass
class Context:
    store: Store
    jobs: JobManager
    settings: Settings
    loaders: Loaders
    authorization: str | None = None
    connection_params: dict[str, Any] | None = field(default=None)
    request: Any = None
    response: Any = None

    @property
    def authorized(self) -> bool:
        """Whether this request may change things (always, when no API token is set)."""
        token = self.settings.api_token
        if token is None or not token.get_secret_value():
            return True
        offered = self.authorization
        if offered is None and self.connection_params:
            value = self.connection_params.get("Authorization") or self.connection_params.get(
                "authorization"
            )
            offered = str(value) if value is not None else None
        if not offered or not offered.startswith("Bearer "):
            return False
        return hmac.compare_digest(offered[7:].encode(), token.get_secret_value().encode())
