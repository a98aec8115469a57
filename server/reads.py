"""Whole reads shared between requests: one computation per store version.

A coverage report or a subtree with counts reads the whole scope. Two hundred people
asking for it at once need not cost two hundred reads: while the store has not changed,
they are answered from the one result; asked for together, they wait for the one read in
flight. A write moves the store's version (GraphDriver.version) and so retires every
result. Where the version is unknown (a Bolt server other processes write to), nothing
is cached, and each request reads.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

#: Results kept, at most (each the answer to one query with its arguments).
MAX_RESULTS = 256
#: What the kept results may weigh together, in the units `weigh` gives (for whole
#: GraphQL answers: bytes of their JSON, which take several times that as Python objects).
#: A result heavier than an eighth of it is given to those waiting for it and not kept: a
#: page of an export is read once, while the answers worth sharing (coverage, subtrees,
#: gaps asked for by many at once) are small.
MAX_WEIGHT = 16 * 1024 * 1024


class SharedReads:
    def __init__(
        self,
        version: Callable[[], int | None],
        size: int = MAX_RESULTS,
        max_weight: int = MAX_WEIGHT,
    ) -> None:
        self.version = version
        self.size = size
        self.max_weight = max_weight
        self.weight = 0  # of the results kept
        self._done: OrderedDict[Hashable, tuple[int, Any, int]] = OrderedDict()
        self._flying: dict[tuple[Hashable, int], asyncio.Future[Any]] = {}
        #: reads computed and reads answered from another's result, for tests and benches
        self.computed = 0
        self.shared = 0

    async def get(
        self,
        key: Hashable,
        compute: Callable[[], Awaitable[T]],
        keep: Callable[[T], bool] = lambda _: True,
        weigh: Callable[[T], int] = lambda _: 0,
    ) -> T:
        """The result of `compute` for `key` at the store's current version; one that `keep`
        refuses (an answer with errors), or that `weigh`s more than an eighth of what the
        kept results may weigh together, is given to those waiting for it, not kept."""
        version = self.version()
        if version is None:
            self.computed += 1
            return await compute()
        done = self._done.get(key)
        if done is not None and done[0] == version:
            self._done.move_to_end(key)
            self.shared += 1
            return done[1]
        flying = self._flying.get((key, version))
        if flying is not None:
            self.shared += 1
            return await asyncio.shield(flying)
        future: asyncio.Future[T] = asyncio.ensure_future(compute())
        self._flying[(key, version)] = future
        self.computed += 1
        try:
            value = await asyncio.shield(future)
        finally:
            self._flying.pop((key, version), None)
        if not keep(value):
            return value
        weight = weigh(value)
        if weight > self.max_weight // 8:
            return value
        # kept under the version it was read at: a write since (this read's own refresh of
        # stale rollups included) makes the next request read again
        old = self._done.pop(key, None)
        self.weight -= old[2] if old else 0
        self._done[key] = (version, value, weight)
        self.weight += weight
        while len(self._done) > self.size or self.weight > self.max_weight:
            self.weight -= self._done.popitem(last=False)[1][2]
        return value
