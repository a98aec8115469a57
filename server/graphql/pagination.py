"""Relay-style cursor connections: edges { cursor node }, pageInfo { hasNextPage endCursor }.

Cursors are opaque to clients (base64 of the sort key: a node id), so the store can change
how it pages without breaking them. Every list that can grow with the data is one of these,
with a bounded page size.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import strawberry
from strawberry.types import Info

from graph.errors import InvalidInput

from ..context import Context

MAX_PAGE = 500
_PREFIX = "glan:"

T = TypeVar("T")
S = TypeVar("S")


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class Edge(Generic[T]):
    cursor: str
    node: T


@strawberry.type
class Connection(Generic[T]):
    edges: list[Edge[T]]
    page_info: PageInfo
    count: strawberry.Private[Callable[[], int | None]]

    @strawberry.field(
        description="How many items the whole list has (null where counting is not offered)."
    )
    async def total_count(self, info: Info[Context, None]) -> int | None:
        return await info.context.run(self.count)  # a count may be a query: off the loop


def encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode((_PREFIX + key).encode()).decode()


def decode_cursor(cursor: str | None) -> str | None:
    """The sort key in a cursor; a cursor not made here is an input error."""
    if cursor is None or cursor == "":
        return None
    try:
        text = base64.urlsafe_b64decode(cursor.encode()).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        text = ""
    if not text.startswith(_PREFIX):
        raise InvalidInput(f"invalid cursor {cursor!r}: pass an endCursor from an earlier page")
    return text[len(_PREFIX) :]


def page_size(first: int) -> int:
    if not 1 <= first <= MAX_PAGE:
        raise InvalidInput(f"first must be between 1 and {MAX_PAGE}, got {first}")
    return first


def connection(
    page: Sequence[S],
    *,
    has_next: bool,
    key: Callable[[S], str],
    wrap: Callable[[S], T],
    count: Callable[[], int | None] = lambda: None,
) -> Connection[T]:
    edges = [Edge(cursor=encode_cursor(key(item)), node=wrap(item)) for item in page]
    return Connection(
        edges=edges,
        page_info=PageInfo(has_next_page=has_next, end_cursor=edges[-1].cursor if edges else None),
        count=count,
    )


def paginate(
    items: Sequence[S],
    first: int,
    after: str | None,
    *,
    key: Callable[[S], str],
    wrap: Callable[[S], T],
) -> Connection[T]:
    """A page of a list already in memory, resuming after the item the cursor names."""
    first = page_size(first)
    start_key = decode_cursor(after)
    start = 0
    if start_key is not None:
        keys = [key(i) for i in items]
        if start_key not in keys:
            raise InvalidInput(
                "the item this cursor points to is gone; start again without `after`"
            )
        start = keys.index(start_key) + 1
    page = items[start : start + first]
    total = len(items)
    return connection(page, has_next=start + first < total, key=key, wrap=wrap, count=lambda: total)
