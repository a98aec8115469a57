"""Nodes and edges by id: the one layer between the domain modules and the driver.

Upserts that create in bulk and update the rest, lookups by id and by edge, and the reads
that walk out from many ids, split the way the engine answers them best (one id at a time
up to `Dialect.few_ids`, else in batches). Every other module of the store reads and writes
through a `Nodes` (see `Part`), never the driver's bulk calls directly.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import pyarrow as pa

from . import queries as Q
from .driver import GraphDriver, Row, Tx, batched
from .errors import InvalidInput
from .model import (
    INSTRUCTION,
    SUBJECT,
    NodeKind,
    RelKind,
)
from .records import (
    Node,
    UpsertResult,
    kind_by_label,
    kind_of_id,
    now_iso,
)


class Nodes:
    """Upserts and reads by id over one driver, in batches sized for its engine."""

    def __init__(
        self, driver: GraphDriver, *, batch_size: int = 5000, bulk_batch_size: int = 200_000
    ) -> None:
        self.driver = driver
        self.d = driver.dialect
        #: ids per statement for reads and updates of whole rows
        self.batch_size = batch_size
        #: rows per bulk create, and ids per read by column
        self.bulk_batch_size = bulk_batch_size

    def _id_reads(
        self,
        build: Callable[..., str],
        ids: Iterable[str],
        params: Mapping[str, Any] | None,
        *,
        few: int,
        batch: int,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """The statements of a read that walks out from nodes given by id, `build(one=...)`
        giving its text over one $id or a list of $ids: up to `few` ids go one at a time
        (where the engine looks one up by key but scans for a list: `Dialect.few_ids`),
        more go `batch` at a time."""
        unique = list(dict.fromkeys(ids))
        base = dict(params or {})
        if len(unique) <= few:
            query = build(one=True)
            for i in unique:
                yield query, {**base, "id": i}
        else:
            query = build(one=False)
            for part in batched(unique, batch):
                yield query, {**base, "ids": part}

    def by_ids(
        self,
        build: Callable[..., str],
        ids: Iterable[str],
        params: Mapping[str, Any] | None = None,
        *,
        tx: Tx | None = None,
        few: int | None = None,
        by_key: bool = False,
    ) -> list[Row]:
        """Rows of a read from nodes given by id (see `_id_reads`), in batches of batch_size.

        `few=1` keeps a read to one query per batch whatever the number of ids (a single id
        is still looked up by key): what the API's per-request loaders want, so that a page's
        cost in queries does not grow with its size.

        `by_key` reads every id on its own where the engine looks single ids up by key
        (`Dialect.few_ids`): for a walk whose list form hashes a far side that grows with
        the store (the COVERS edges of existing instructions: refused by a 512 MB page cache
        at 3M pairs, where one id takes about 0.3 ms)."""
        runner: Tx | GraphDriver = tx if tx is not None else self.driver
        few = self.d.few_ids if few is None else min(few, self.d.few_ids or 1)
        if by_key and self.d.few_ids:
            few = sys.maxsize
        reads = self._id_reads(build, ids, params, few=few, batch=self.batch_size)
        return [r for query, args in reads for r in runner.execute(query, args)]

    def columns_by_ids(
        self,
        build: Callable[..., str],
        ids: Iterable[str],
        params: Mapping[str, Any] | None = None,
    ) -> dict[str, list[Any]]:
        """`by_ids` for reads of plain values, by column (see GraphDriver.columns); a column
        of no values is an empty list whether or not the engine named it.

        These are reads of many rows, whose batches of ids each cost the embedded engine a
        scan of the tables on the way: they take as many ids at once as bulk writes do."""
        reads = self._id_reads(build, ids, params, few=self.d.few_ids, batch=self.bulk_batch_size)
        # a column no part names is empty (a Bolt server may name none when no row is found)
        merged: defaultdict[str, list[Any]] = defaultdict(list)
        for query, args in reads:
            for name, values in self.driver.columns(query, args).items():
                merged[name] += values
        return merged

    def table_by_ids(
        self,
        build: Callable[..., str],
        ids: Iterable[str],
        params: Mapping[str, Any] | None = None,
    ) -> pa.Table | None:
        """`columns_by_ids` as one Arrow table (GraphDriver.table); None for no rows."""
        reads = self._id_reads(build, ids, params, few=self.d.few_ids, batch=self.bulk_batch_size)
        parts = [t for query, args in reads if (t := self.driver.table(query, args)).num_rows]
        return pa.concat_tables(parts, promote_options="permissive") if parts else None

    def upsert_nodes(
        self,
        kind: NodeKind,
        rows: Sequence[Mapping[str, Any]],
        *,
        update_existing: bool = True,
        tx: Tx | None = None,
    ) -> UpsertResult:
        """Create rows whose id is new; update (or keep, if told) the others.

        Creating is many times faster than MERGE on the embedded engine, so existing ids are
        looked up first and the rest are created in bulk. Rows of one call share their keys.
        """
        result = UpsertResult()
        if not rows:
            return result
        keys = list(rows[0].keys())
        if "id" not in keys:
            raise InvalidInput(f"{kind.label} rows need an id")
        unknown = set(keys) - set(kind.prop_names)
        if unknown:
            raise InvalidInput(f"{kind.label} has no properties {sorted(unknown)}")
        runner: Tx | GraphDriver = tx if tx is not None else self.driver
        stamp = now_iso()
        by_id = {str(r["id"]): r for r in rows}  # the last row of an id wins, as with any upsert
        found: set[str] = set()
        # In batches as large as creates: where the engine answers a list of ids by joining
        # it with the whole table (LadybugDialect.few_ids), each batch costs a pass over it.
        for batch in batched(list(by_id), self.bulk_batch_size):
            found.update(
                r["id"] for r in runner.execute(Q.existing_ids(self.d, kind), {"ids": batch})
            )
        blank = dict.fromkeys(kind.prop_names)
        new = [self._full_row(blank, r, stamp) for i, r in by_id.items() if i not in found]
        # Creating costs the engine about as much for 100 rows as for 100,000 once a table is
        # large (a bulk insert rewrites every storage group it touches), so creates go in
        # batches as large as bulk loads.
        for batch in batched(new, self.bulk_batch_size):
            runner.create_nodes(kind, batch)
        result.created = len(new)
        result.new_ids.update(r["id"] for r in new)
        old = [dict(r) for i, r in by_id.items() if i in found]
        if old and update_existing and len(keys) > 1:
            props = list(keys)
            if "updated_at" in kind.prop_names and "updated_at" not in props:
                props.append("updated_at")
                for r in old:
                    r["updated_at"] = stamp
            for batch in batched(old, self.batch_size):
                runner.execute(Q.update_nodes(self.d, kind, props), {"rows": batch})
            result.updated = len(old)
        else:
            result.unchanged = len(old)
        return result

    @staticmethod
    def _full_row(blank: dict[str, Any], row: Mapping[str, Any], stamp: str) -> dict[str, Any]:
        """A row with every property of its kind (`blank`: all of them None)."""
        full = {**blank, **row}
        for ts in ("created_at", "updated_at"):
            if ts in full and full[ts] is None:
                full[ts] = stamp
        return full

    def upsert_edges(
        self,
        rel: RelKind,
        pairs: Iterable[tuple[str, str]],
        *,
        new_sources: frozenset[str] | set[str] = frozenset(),
        tx: Tx | None = None,
    ) -> int:
        """Create the edges not already there; returns how many were created.

        Edges from `new_sources` (nodes this write just created) cannot exist yet, so they
        are not looked up.
        """
        runner: Tx | GraphDriver = tx if tx is not None else self.driver
        unique = list(dict.fromkeys(pairs))
        sources = [s for s in dict.fromkeys(s for s, _ in unique) if s not in new_sources]
        found = self.by_ids(partial(Q.existing_edges, self.d, rel), sources, tx=tx, by_key=True)
        have = {(r["src"], r["dst"]) for r in found}
        todo = [p for p in unique if p not in have] if have else unique
        for batch in batched(todo, self.bulk_batch_size):  # as upsert_nodes creates
            runner.create_edges(rel, batch)
        return len(todo)

    def bulk_load(self, kind: NodeKind, rows: Sequence[Mapping[str, Any]]) -> int:
        """Create nodes known to be new (a fresh load), skipping the existence check that
        makes an upsert safe. An id already present fails its batch."""
        stamp, blank = now_iso(), dict.fromkeys(kind.prop_names)
        for batch in batched(list(rows), self.bulk_batch_size):
            self.driver.create_nodes(kind, [self._full_row(blank, r, stamp) for r in batch])
        return len(rows)

    def bulk_load_edges(self, rel: RelKind, pairs: Sequence[tuple[str, str]]) -> int:
        """Create edges known to be new (see bulk_load)."""
        for batch in batched(list(pairs), self.bulk_batch_size):
            self.driver.create_edges(rel, batch)
        return len(pairs)

    def get(self, node_id: str) -> Node | None:
        kind = kind_of_id(node_id)
        rows = self.driver.execute(Q.get_node(self.d, kind), {"id": node_id})
        return Node.from_row(rows[0]["n"]) if rows else None

    def get_many(self, ids: Sequence[str]) -> dict[str, Node]:
        """Nodes by id, one query per kind present."""
        by_kind: dict[str, list[str]] = {}
        for i in dict.fromkeys(ids):
            by_kind.setdefault(kind_of_id(i).label, []).append(i)
        out: dict[str, Node] = {}
        for label, kind_ids in by_kind.items():
            kind = kind_by_label(label)
            for batch in batched(kind_ids, self.batch_size):
                for row in self.driver.execute(Q.get_nodes(self.d, kind), {"ids": batch}):
                    node = Node.from_row(row["n"])
                    out[node.id] = node
        return out

    def column(self, query: str, ids: list[str]) -> list[str]:
        """The `id` column of a read over $ids, batch by batch, without repeats."""
        out: list[str] = []
        for batch in batched(ids, self.batch_size):
            out.extend(r["id"] for r in self.driver.execute(query, {"ids": batch}))
        return list(dict.fromkeys(out))

    def count_kind(self, kind: NodeKind) -> int:
        rows = self.driver.execute(Q.count_label(self.d, kind))
        return int(rows[0]["n"]) if rows else 0

    def reads_whole(self, subject_ids: Sequence[str]) -> bool:
        """Whether a read for these subjects walks every subject and keeps theirs, rather
        than walking from their ids: for at least `Dialect.whole_read_share` of the store's
        subjects (see Syllabi.index)."""
        many = len(subject_ids) > max(self.d.few_ids, 1)
        return many and self.hold_most(subject_ids)

    def hold_most(self, subject_ids: Sequence[str]) -> bool:
        """Whether these are at least `Dialect.whole_read_share` of the store's subjects."""
        return len(subject_ids) >= self.d.whole_read_share * self.count_kind(SUBJECT)

    #: subjects a walk from every subject reads at once (Q.subject_range)
    subjects_per_walk = 2048
    #: instructions a read over every instruction takes at once (Q.subject_range, on
    #: instructions): about 50 MB of the embedded engine's page cache, where one read of
    #: all of them was refused by 512 MB at 3M pairs
    instructions_per_read = 500_000
    #: instructions a read of some instructions by range reads through between two of them
    #: rather than starting a new range (see spans): each range costs a pass over the
    #: table's references, about 4 ms per 1M instructions
    instructions_read_through = 20_000

    #: subjects a read of some subjects by range reads through between two of them rather
    #: than starting a new range (subject_parts)
    subjects_read_through = 32

    @property
    def has_refs(self) -> bool:
        """Whether the engine has node references, by whose ranges reads can go
        (Dialect.node_ref)."""
        return self.d.node_ref("n") is not None

    def subject_ranges(self) -> list[dict[str, int]]:
        """The parameters of each part of a walk from every subject: a range of subject
        references (Q.subject_range), or the whole walk at once where the engine has none."""
        return self.ranges(SUBJECT, self.subjects_per_walk)

    def subject_parts(self, subject_ids: Sequence[str]) -> list[dict[str, int]] | None:
        """The parts of a walk from these subjects as a walk from every subject (a query
        built with `every=True`) whose rows the caller filters: every range of subjects
        where they are most of the store (reads_whole), else ranges of references that
        hold them and few others. None where the engine has no references and they are
        not most of the store: the walk goes from their ids.

        A walk from a list of subject ids makes the embedded engine hash what it reaches
        from every subject: a sampler's read of a few dozen syllabi was refused by a 512 MB
        page cache at 3.1M pairs."""
        if self.reads_whole(subject_ids):
            return self.subject_ranges()
        if not self.has_refs:
            return None
        refs = self.refs_of(SUBJECT, subject_ids)
        return spans(refs, self.subjects_per_walk, self.subjects_read_through)

    def refs_of(
        self, kind: NodeKind, ids: Iterable[str], *, tx: Tx | None = None
    ) -> dict[int, str]:
        """The engine's reference of each node of `kind` among `ids` that exists, looked up
        by key: reference -> id (engines with references only, see has_refs)."""
        query = Q.node_refs(self.d, kind)
        if query is None:
            raise ValueError("this engine has no node references")
        runner: Tx | GraphDriver = tx if tx is not None else self.driver
        out: dict[int, str] = {}
        for batch in batched(list(dict.fromkeys(ids)), self.bulk_batch_size):
            # by column: 100k ids took 0.9 s row by row
            found = runner.columns(query, {"ids": batch})
            out.update(zip(map(int, found.get("ref", [])), found.get("id", []), strict=True))
        return out

    def ranges(self, kind: NodeKind, step: int) -> list[dict[str, int]]:
        """The parameters of each part of a read over every node of `kind`, `step` nodes
        at a time: a range of their references ($lo, $hi), or one part where the engine has
        none."""
        query = Q.refs_end(self.d, kind)
        if query is None:
            return [{}]
        end = int(self.driver.execute(query)[0]["n"] or 0)
        return [{"lo": lo, "hi": lo + step} for lo in range(0, max(end, 1), step)]

    def every_instruction(self, query: str) -> Iterator[pa.Table]:
        """The Arrow tables of a read over every instruction (a query over references $lo up
        to $hi), `instructions_per_read` at a time, those with rows."""
        for part in self.ranges(INSTRUCTION, self.instructions_per_read):
            table = self.driver.table(query, part)
            if table.num_rows:
                yield table

    def every_subject(
        self,
        query: str,
        params: Mapping[str, Any] | None = None,
        ranges: Sequence[Mapping[str, int]] | None = None,
    ) -> list[Row]:
        """The rows of a walk from every subject (a query built with `every=True`), a range
        of subjects at a time: a subject's rows all come from one range. `ranges`: those
        ranges only (subject_parts), rather than all of them."""
        return [
            row
            for part in (self.subject_ranges() if ranges is None else ranges)
            for row in self.driver.execute(query, {**(params or {}), **part})
        ]

    def every_subject_table(
        self,
        query: str,
        params: Mapping[str, Any] | None = None,
        keep: Callable[[pa.Table], pa.Table] | None = None,
        ranges: Sequence[Mapping[str, int]] | None = None,
    ) -> pa.Table | None:
        """every_subject as one Arrow table, each range filtered by `keep` as it comes (None
        for no ranges)."""
        parts = []
        for part in self.subject_ranges() if ranges is None else ranges:
            table = self.driver.table(query, {**(params or {}), **part})
            parts.append(keep(table) if keep is not None and table.num_rows else table)
        return pa.concat_tables([t for t in parts if t.num_rows] or parts[:1]) if parts else None

    def linked(
        self, rel: RelKind, ids: Sequence[str], *, reverse: bool = False
    ) -> dict[str, list[str]]:
        """Edges of many nodes in one query per batch: what each id points to through `rel`
        (or, reversed, what points at it). For views and DataLoaders."""
        out: dict[str, list[str]] = {i: [] for i in ids}
        query = Q.linked_to(self.d, rel) if reverse else Q.linked_from(self.d, rel)
        mine, other = ("dst", "src") if reverse else ("src", "dst")
        for batch in batched(list(dict.fromkeys(ids)), self.batch_size):
            for r in self.driver.execute(query, {"ids": batch}):
                out[r[mine]].append(r[other])
        for v in out.values():
            v.sort()
        return out

    def set_property(self, kind: NodeKind, prop: str, values: Mapping[str, Any]) -> None:
        """Set one property on many existing nodes (flags such as `contaminated`)."""
        if prop not in kind.prop_names or prop in ("id", "key"):
            raise InvalidInput(f"{kind.label} has no settable property {prop!r}")
        rows = [{"id": i, prop: v} for i, v in values.items()]
        for batch in batched(rows, self.batch_size):
            self.driver.execute(Q.update_nodes(self.d, kind, ["id", prop]), {"rows": batch})

    def update_existing(
        self, kind: NodeKind, rows: Sequence[Mapping[str, Any]], *, tx: Tx | None = None
    ) -> None:
        """Set properties of nodes known to exist (one statement; no existence check).
        Rows share their keys."""
        if not rows:
            return
        runner: Tx | GraphDriver = tx if tx is not None else self.driver
        for batch in batched([dict(r) for r in rows], self.batch_size):
            runner.execute(Q.update_nodes(self.d, kind, list(batch[0])), {"rows": batch})


def each(build: Callable[..., str], *args: Any, one: bool) -> str:
    """A builder taking `each` (an UNWIND over $ids), as Nodes.by_ids calls one: with `one`
    (the single node $id)."""
    return build(*args, each=not one)


class Part:
    """One concern of the store (taxonomy, coverage, syllabi, ...) over the shared `Nodes`."""

    def __init__(self, nodes: Nodes) -> None:
        self.nodes = nodes
        self.driver = nodes.driver
        self.d = nodes.d

    @property
    def batch_size(self) -> int:
        return self.nodes.batch_size


def spans(refs: Iterable[int], longest: int, through: int) -> list[dict[str, int]]:
    """Ranges ($lo up to $hi) that hold the references `refs`, in order: a range goes on to
    the next reference while fewer than `through` lie between them and it spans fewer than
    `longest`."""
    out: list[dict[str, int]] = []
    for ref in sorted(refs):
        if out and ref - out[-1]["hi"] < through and ref - out[-1]["lo"] < longest:
            out[-1]["hi"] = ref + 1
        else:
            out.append({"lo": ref, "hi": ref + 1})
    return out
