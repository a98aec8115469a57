"""Per-request context: the store, the job manager, who is asking, and DataLoaders.

The loaders are built fresh for each request (each websocket connection for subscriptions)
so their caches never serve one client's stale read to another. Nested fields of a page
(the concepts, sessions, subject and responses of 50 instructions) each become one batched
read per kind instead of one query per node.

Store calls never run on the event loop: `Context.run` hands each to the server's bounded
pool of worker threads, so a slow read holds a thread, not every request, subscription
and job of the server. The embedded engine reads on connections of its own, several at
once, and serialises writes (graph/backends/embedded.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from strawberry.dataloader import DataLoader

from generators.manager import JobManager
from graph.model import ANSWERS, COVERS, FROM, RelKind
from graph.records import Node
from graph.store import Store

from .auth import authorized, offered_token
from .reads import SharedReads
from .settings import Settings

CountsKey = tuple[str, str]  # (node id, path)
T = TypeVar("T")
#: runs a blocking call off the event loop and awaits its result
Runner = Callable[..., Awaitable[Any]]


def off_loop(pool: Executor | None) -> Runner:
    """A runner over `pool` (None: the loop's default executor)."""

    async def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, partial(fn, *args, **kwargs))

    return run


def _nodes(store: Store, run: Runner) -> DataLoader[str, Node | None]:
    async def load(ids: list[str]) -> list[Node | None]:
        found = await run(store.nodes.get_many, ids)
        return [found.get(i) for i in ids]

    return DataLoader(load_fn=load)


def _linked(
    store: Store, run: Runner, rel: RelKind, *, reverse: bool = False
) -> DataLoader[str, list[str]]:
    async def load(ids: list[str]) -> list[list[str]]:
        found = await run(store.nodes.linked, rel, ids, reverse=reverse)
        return [found.get(i, []) for i in ids]

    return DataLoader(load_fn=load)


def _paths(store: Store, run: Runner) -> DataLoader[str, list[str]]:
    async def load(ids: list[str]) -> list[list[str]]:
        found = await run(store.taxonomy.paths_of_many, ids)
        return [found[i] for i in ids]

    return DataLoader(load_fn=load)


def _children(store: Store, run: Runner) -> DataLoader[str, list[Node]]:
    async def load(paths: list[str]) -> list[list[Node]]:
        found = await run(store.taxonomy.children_of_many, paths)
        return [found[p] for p in paths]

    return DataLoader(load_fn=load)


def _counts(store: Store, run: Runner) -> DataLoader[CountsKey, dict[str, int]]:
    async def load(keys: list[CountsKey]) -> list[dict[str, int]]:
        found = await run(store.coverage.counts_many, keys)
        return [found[k] for k in keys]

    return DataLoader(load_fn=load)


def _turns(store: Store, run: Runner) -> DataLoader[str, list[Node]]:
    async def load(ids: list[str]) -> list[list[Node]]:
        found = await run(store.turns.of, ids)
        return [found.get(i, []) for i in ids]

    return DataLoader(load_fn=load)


def _reached(store: Store, run: Runner) -> DataLoader[str, list[str]]:
    async def load(ids: list[str]) -> list[list[str]]:
        found = await run(store.turns.reached, ids)
        return [[concept for concept, _, _ in found.get(i, [])] for i in ids]

    return DataLoader(load_fn=load)


@dataclass
class Loaders:
    node: DataLoader[str, Node | None]
    #: instruction id -> ids of the concepts it covers
    concepts: DataLoader[str, list[str]]
    #: instruction id -> ids of the sessions it was sampled from
    sessions: DataLoader[str, list[str]]
    #: instruction id -> ids of its responses
    responses: DataLoader[str, list[str]]
    #: hierarchy node id -> every path that reaches it
    paths: DataLoader[str, list[str]]
    #: path -> children (fields for "")
    children: DataLoader[str, list[Node]]
    #: (id, path) of a visible node -> counts of what lies below it
    counts: DataLoader[CountsKey, dict[str, int]]
    #: response id -> the follow-up turns going on from it, in order
    turns: DataLoader[str, list[Node]]
    #: turn id -> ids of the concepts it reaches
    reached: DataLoader[str, list[str]]

    @classmethod
    def for_request(cls, store: Store, run: Runner) -> Loaders:
        return cls(
            node=_nodes(store, run),
            concepts=_linked(store, run, COVERS),
            sessions=_linked(store, run, FROM),
            responses=_linked(store, run, ANSWERS, reverse=True),
            paths=_paths(store, run),
            children=_children(store, run),
            counts=_counts(store, run),
            turns=_turns(store, run),
            reached=_reached(store, run),
        )


@dataclass
class Context:
    store: Store
    jobs: JobManager
    settings: Settings
    loaders: Loaders
    #: the Authorization header of the request (or of the websocket upgrade)
    authorization: str | None = None
    #: the connection_init payload of a websocket; strawberry sets it
    connection_params: dict[str, Any] | None = field(default=None)
    request: Any = None
    response: Any = None
    #: runs a store call on the server's worker threads (see the module docstring)
    run: Runner = field(default_factory=lambda: off_loop(None))
    #: whole reads (coverage, subtrees, gaps) shared between requests at one store version
    shared: SharedReads | None = None

    async def read(self, key: Hashable, fn: Callable[[], T]) -> T:
        """`fn` run off the loop, its result shared with other requests for `key` while the
        store is unchanged (see server/reads.py)."""
        if self.shared is None:
            return await self.run(fn)
        return await self.shared.get(key, lambda: self.run(fn))

    @property
    def authorized(self) -> bool:
        """Whether this request may run mutations and subscriptions."""
        offered = offered_token(self.authorization, self.connection_params)
        return authorized(self.settings.api_token, offered)
