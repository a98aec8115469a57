"""Reads the API needs that graph/store.py does not offer yet.

Each is composed from Store's public methods only (never Cypher) and names the Store method
that should replace it (they are listed in the API hand-over). Until then they give the
right answers, but some cost a query per key or read a whole scope's instruction ids.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from graph.model import ANSWERS, join_path, split_path
from graph.store import COUNT_NAMES, Node, Store

#: Instructions read per query while filtering a page.
CHUNK = 500


def paths_of_many(store: Store, ids: Sequence[str]) -> dict[str, list[str]]:
    """Every path of each node. To become `Store.paths_of_many(ids)` (one query per level)."""
    return {i: store.paths_of(i) for i in dict.fromkeys(ids)}


def children_of_many(store: Store, paths: Sequence[str]) -> dict[str, list[Node]]:
    """Children of each path. To become `Store.children_of_many(paths)` (one query per level
    of the parents, as Store.tree already does internally)."""
    return {p: store.children(p or None) for p in dict.fromkeys(paths)}


def zero_counts(level: int) -> dict[str, int]:
    """The counts of a node at `level` that has nothing below it (or is hidden)."""
    return dict.fromkeys(COUNT_NAMES[level + 1 :], 0)


def counts_of_many(
    store: Store, nodes: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, int]]:
    """Descendant counts of many visible nodes given as (id, path): one `counts_by_child`
    call per distinct parent rather than one `counts` per node. To become
    `Store.counts_many(ids)`."""
    by_parent: dict[str, list[tuple[str, str]]] = {}
    for node_id, path in dict.fromkeys(nodes):
        parent_path = join_path(split_path(path)[:-1])
        by_parent.setdefault(parent_path, []).append((node_id, path))
    out: dict[tuple[str, str], dict[str, int]] = {}
    for parent_path, members in by_parent.items():
        level = len(split_path(members[0][1])) - 1
        parent = store.node(parent_path) if parent_path else None
        found: dict[str, dict[str, int]] = {}
        if parent is None or not parent.hidden:
            found = store.counts_by_child(parent, level)
        for key in members:
            out[key] = {**zero_counts(level), **found.get(key[0], {})}
    return out


@dataclass(frozen=True)
class InstructionFilter:
    """Which instructions a page keeps. None: either way."""

    strategy: str | None = None
    model: str | None = None
    job_id: str | None = None
    duplicate: bool | None = None
    contaminated: bool | None = None
    answered: bool | None = None

    @property
    def empty(self) -> bool:
        return self == InstructionFilter()

    def keeps(self, node: Node, answered: bool) -> bool:
        p = node.props
        return (
            (self.strategy is None or p.get("strategy") == self.strategy)
            and (self.model is None or p.get("model") == self.model)
            and (self.job_id is None or p.get("job_id") == self.job_id)
            and (self.duplicate is None or bool(p.get("duplicate")) == self.duplicate)
            and (self.contaminated is None or bool(p.get("contaminated")) == self.contaminated)
            and (self.answered is None or answered == self.answered)
        )


def _matching(store: Store, ids: list[str], flt: InstructionFilter) -> Iterator[Node]:
    """The instructions among `ids` (in order) that the filter keeps, read a chunk at a time
    so a page of a large scope reads about one page of nodes."""
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        nodes = store.get_many(chunk)
        answered: dict[str, list[str]] = {}
        if flt.answered is not None:
            answered = store.linked(ANSWERS, chunk, reverse=True)
        for i in chunk:
            node = nodes.get(i)
            if node is not None and flt.keeps(node, bool(answered.get(i))):
                yield node


def instruction_page(
    store: Store, scope: Node | None, flt: InstructionFilter, first: int, after: str | None
) -> tuple[list[Node], bool]:
    """Instructions under a scope in id order after the cursor id: up to `first`, and
    whether more follow. To become `Store.instructions_page(scope, filter, first, after)`
    (ORDER BY id, `id > $after`, LIMIT first + 1, the filter in the WHERE clause)."""
    ids = store.instruction_ids_in_scope(scope)
    if after:
        ids = ids[bisect.bisect_right(ids, after) :]
    page: list[Node] = []
    for node in _matching(store, ids, flt):
        if len(page) == first:
            return page, True
        page.append(node)
    return page, False


def instruction_count(store: Store, scope: Node | None, flt: InstructionFilter) -> int:
    """How many instructions under a scope the filter keeps. To become
    `Store.count_instructions(scope, filter)` (one COUNT query)."""
    ids = store.instruction_ids_in_scope(scope)
    if flt.empty:
        return len(ids)
    return sum(1 for _ in _matching(store, ids, flt))


def sample_instructions(store: Store, scope: Node | None, n: int, seed: int) -> list[Node]:
    """`n` instructions drawn without replacement, the same ones for the same seed and data.
    To become `Store.sample_instructions(scope, n, seed)` (count, draw offsets, then fetch
    them with ORDER BY id SKIP in one UNWIND query)."""
    ids = store.instruction_ids_in_scope(scope)
    chosen = random.Random(seed).sample(ids, min(n, len(ids)))
    nodes = store.get_many(chosen)
    return [nodes[i] for i in chosen if i in nodes]
