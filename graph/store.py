"""The domain API of the knowledge store. Everything outside graph/ goes through `Store`.

It knows the GLAN hierarchy (Field > SubField > Discipline > Subject > Session > Concept),
review states and deterministic ids; it never asks which engine it runs on.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import queries as Q
from .backends import open_driver
from .config import StoreConfig
from .driver import GraphDriver, Row, Tx, batched
from .errors import CycleError, InvalidInput, NodeNotFound, ScopeNotApproved, WrongKind
from .filters import InstructionFilter
from .model import (
    ANSWERS,
    CHILD_REL,
    CONCEPT,
    COVERS,
    DUPLICATE_OF,
    FIELD,
    FROM,
    HIERARCHY,
    INSTRUCTION,
    JOB,
    MAX_LIST_ITEMS,
    MAX_NAME_LENGTH,
    MAX_TEXT_LENGTH,
    NODE_KINDS,
    PARENT_REL,
    RESPONSE,
    ROLLUPS,
    SESSION,
    SHARED_KINDS,
    SUBJECT,
    UNIT,
    NodeKind,
    RelKind,
    Source,
    Status,
    child_kind,
    clean_name,
    hierarchy_id,
    join_path,
    name_key,
    split_path,
)

_KIND_BY_PREFIX = {k.id_prefix: k for k in NODE_KINDS}
#: Count names filled from subject rollups, and the rollup each sums.
_ROLLUP_COUNTS = {
    "sessions": "rollup_sessions",
    "concepts": "rollup_concepts",
    "instructions": "rollup_instructions",
    "responses": "rollup_responses",
}
#: Names of the count columns, by level below a node (6 = instructions, 7 = responses).
COUNT_NAMES = (
    "fields",
    "subfields",
    "disciplines",
    "subjects",
    "sessions",
    "concepts",
    "instructions",
    "responses",
)
LEVEL_INSTRUCTION = len(HIERARCHY)
LEVEL_RESPONSE = len(HIERARCHY) + 1


def zero_counts(level: int) -> dict[str, int]:
    """The counts of a node at `level` with nothing below it (or hidden): every name 0."""
    return dict.fromkeys(COUNT_NAMES[level + 1 :], 0)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class Node:
    kind: NodeKind
    props: dict[str, Any]
    #: the path this node was reached by (hierarchy nodes only)
    path: str | None = None
    #: rejected here or on the way down from its Field
    hidden: bool = False

    def __repr__(self) -> str:
        return f"Node({self.kind.label} {self.id} {self.name!r} path={self.path!r})"

    @property
    def id(self) -> str:
        return str(self.props["id"])

    @property
    def name(self) -> str:
        return str(self.props.get("name") or "")

    @property
    def status(self) -> str | None:
        return self.props.get("status")

    @property
    def level(self) -> int:
        return HIERARCHY.index(self.kind)

    @classmethod
    def from_row(cls, value: Mapping[str, Any], path: str | None = None) -> Node:
        props = dict(value)
        label = props.pop("_label", None)
        kind = kind_of_id(str(props["id"])) if label is None else _kind_by_label(label)
        return cls(kind, props, path)


@dataclass
class TreeNode:
    node: Node | None  # None: the root above all fields
    path: str
    counts: dict[str, int] = field(default_factory=dict)
    children: list[TreeNode] = field(default_factory=list)
    #: concepts below with at least one instruction (set when tree() is asked for coverage)
    covered_concepts: int = 0


@dataclass(slots=True)  # millions of them when the sampler reads a whole store
class ConceptView:
    id: str
    name: str
    position: int
    #: instructions already covering this concept
    covered: int = 0


@dataclass(slots=True)
class SessionView:
    id: str
    title: str
    description: str
    position: int
    concepts: list[ConceptView] = field(default_factory=list)


@dataclass(frozen=True)
class SyllabusIndex:
    """The syllabi of many subjects as flat lists in syllabus order, for sampling: subject
    i's sessions are `session_start[i]` up to `session_start[i + 1]`, session j's concepts
    `concept_start[j]` up to `concept_start[j + 1]`. Only approved sessions with approved
    concepts are in it. One list per field, not an object per concept: at GLAN scale a
    scope has millions of concepts."""

    subject_ids: list[str]
    session_start: list[int]
    session_ids: list[str]
    concept_start: list[int]
    concept_ids: list[str]
    #: instructions covering each concept
    covered: list[int]

    @classmethod
    def empty(cls) -> SyllabusIndex:
        return cls([], [0], [], [0], [], [])


class NameIndex:
    """Id, name and position of every node of a kind by the engine's reference of each
    (Dialect.node_ref), held as Arrow arrays (about 70 bytes a node): what `linked_names`
    looks the far ends of edges up in, where the engine would join their whole table."""

    def __init__(self, table: pa.Table) -> None:
        table = table.take(pc.sort_indices(table["ref"]))
        self._refs = table["ref"].to_numpy()
        self._rows = table.select(["id", "name", "position"])

    def __len__(self) -> int:
        return len(self._refs)

    def lookup(self, refs: Sequence[int]) -> tuple[list[str], list[str], list[int]] | None:
        """(ids, names, positions) of these references; None if one is not in the index
        (a node made since it was read)."""
        want = np.asarray(refs, dtype=np.int64)
        if not len(want):
            return [], [], []
        at = np.searchsorted(self._refs, want)
        if (at >= len(self._refs)).any() or (self._refs[at] != want).any():
            return None
        rows = self._rows.take(at)
        position = pc.fill_null(rows["position"].cast(pa.int64()), 0)
        return rows["id"].to_pylist(), rows["name"].to_pylist(), position.to_pylist()


@dataclass
class InstructionDetail:
    """An instruction with what an export reads of its links: the sessions it was asked from
    and the concepts it covers, as sorted (id, name, position), and its responses, oldest
    first."""

    instruction: Node
    sessions: list[tuple[str, str, int]] = field(default_factory=list)
    concepts: list[tuple[str, str, int]] = field(default_factory=list)
    responses: list[Node] = field(default_factory=list)

    def sort(self) -> InstructionDetail:
        self.sessions.sort()
        self.concepts.sort()
        self.responses.sort(key=lambda n: (n.props.get("created_at") or "", n.id))
        return self


@dataclass
class CoverageRow:
    node: Node | None  # None: the whole store
    path: str
    counts: dict[str, int] = field(default_factory=dict)
    covered_concepts: int = 0
    combinations: int = 0
    subjects_without_syllabus: int = 0
    disciplines_without_subjects: int = 0

    @property
    def concept_coverage(self) -> float:
        """Fraction of concepts at least one instruction covers."""
        concepts = self.counts.get("concepts", 0)
        return self.covered_concepts / concepts if concepts else 0.0


@dataclass
class Coverage:
    total: CoverageRow
    children: list[CoverageRow]


@dataclass
class ConceptGap:
    """A concept and how many instructions cover it (see Store.gaps)."""

    node: Node
    subject: str
    session: str
    instructions: int


@dataclass
class Gaps:
    """What is missing under a node: the least covered concepts, subjects with no syllabus."""

    path: str  # the node's path as stored ("" for the whole store)
    least_covered: list[ConceptGap]
    subjects_without_syllabus: list[Node]


@dataclass
class UpsertResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    new_ids: set[str] = field(default_factory=set)


@dataclass
class LoadReport:
    created: dict[str, int] = field(default_factory=dict)
    existing: dict[str, int] = field(default_factory=dict)


def _kind_by_label(label: str) -> NodeKind:
    for k in NODE_KINDS:
        if k.label == label:
            return k
    raise KeyError(label)


def kind_of_id(node_id: str) -> NodeKind:
    prefix, _, rest = node_id.partition("_")
    kind = _KIND_BY_PREFIX.get(prefix)
    if kind is None or not rest:
        raise InvalidInput(f"{node_id!r} is not a glan node id")
    return kind


def validate_name(name: Any, what: str = "name") -> str:
    if not isinstance(name, str):
        raise InvalidInput(f"{what} must be a string, got {type(name).__name__}")
    cleaned = clean_name(name)
    if not cleaned:
        raise InvalidInput(f"{what} is empty")
    if len(cleaned) > MAX_NAME_LENGTH:
        raise InvalidInput(
            f"{what} is {len(cleaned)} characters long; the limit is {MAX_NAME_LENGTH}"
        )
    return cleaned


def validate_text(props: Mapping[str, Any]) -> None:
    """Bounds on the free text a user sets on a node: a description of up to
    MAX_TEXT_LENGTH characters, a level and each subtopic as long as a name, and up to
    MAX_LIST_ITEMS subtopics. Kept verbatim otherwise; raises InvalidInput."""
    limits = {"description": MAX_TEXT_LENGTH, "level": MAX_NAME_LENGTH}
    for key, limit in limits.items():
        value = props.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InvalidInput(f"{key} must be a string, got {type(value).__name__}")
        if len(value) > limit:
            raise InvalidInput(f"{key} is {len(value):,} characters long; the limit is {limit:,}")
    subtopics = props.get("subtopics")
    if subtopics is None:
        return
    if not isinstance(subtopics, list | tuple):
        raise InvalidInput(f"subtopics must be a list, got {type(subtopics).__name__}")
    if len(subtopics) > MAX_LIST_ITEMS:
        raise InvalidInput(f"{len(subtopics)} subtopics; the limit is {MAX_LIST_ITEMS}")
    for item in subtopics:
        if not isinstance(item, str) or len(item) > MAX_NAME_LENGTH:
            raise InvalidInput(f"each subtopic is a string of at most {MAX_NAME_LENGTH} characters")


def _ranks(values: pa.Array) -> pa.Array:
    """Each value's rank among the distinct values (equal values, equal ranks): integers
    that sort as the values do."""
    encoded = pc.dictionary_encode(values)
    ranks = pc.rank(encoded.dictionary, sort_keys="ascending", tiebreaker="first")
    return ranks.take(encoded.indices)


def _session_order(session: pa.Array, subject: pa.Array, position: pa.Array) -> pa.Array:
    """Per row of a syllabus read, a key that orders the sessions of one subject and one
    position by their ids.

    The engines hand over each session's rows one after another, and within a subject,
    positions seldom repeat. Then the number of each row's run of one session serves, and
    it costs one pass. Ids are ranked only when two runs share a subject and a position:
    two sessions at one position, or a session whose rows came apart."""
    if len(session) < 2:
        return pa.array(np.zeros(len(session), np.int64))
    moves = pc.not_equal(session[1:], session[:-1]).to_numpy(zero_copy_only=False)
    run = np.r_[0, np.cumsum(moves)]
    starts = np.flatnonzero(np.r_[True, moves])
    of_subject, at = subject.to_numpy()[starts], position.to_numpy()[starts]
    order = np.lexsort((at, of_subject))
    same = (of_subject[order][1:] == of_subject[order][:-1]) & (at[order][1:] == at[order][:-1])
    return _ranks(session) if same.any() else pa.array(run)


class Store:
    """Upserts, lookups, review and views over one graph database."""

    def __init__(
        self, driver: GraphDriver, *, batch_size: int = 5000, bulk_batch_size: int = 200_000
    ) -> None:
        self.driver = driver
        self.d = driver.dialect
        self.batch_size = batch_size
        self.bulk_batch_size = bulk_batch_size
        #: a read for at least this share of the store's subjects walks all of them
        self.whole_read_share = 0.5

    @classmethod
    def open(cls, config: StoreConfig, *, ensure_schema: bool = True) -> Store:
        store = cls(open_driver(config))
        if ensure_schema:
            store.ensure_schema()
        return store

    def ensure_schema(self) -> None:
        self.driver.ensure_schema()

    def close(self) -> None:
        self.driver.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    def _by_ids(
        self,
        build: Callable[..., str],
        ids: Iterable[str],
        params: Mapping[str, Any] | None = None,
        *,
        tx: Tx | None = None,
        few: int | None = None,
    ) -> list[Row]:
        """Rows of a read from nodes given by id (see `_id_reads`), in batches of batch_size.

        `few=1` keeps a read to one query per batch whatever the number of ids (a single id
        is still looked up by key): what the API's per-request loaders want, so that a page's
        cost in queries does not grow with its size."""
        runner: Tx | GraphDriver = tx if tx is not None else self.driver
        few = self.d.few_ids if few is None else min(few, self.d.few_ids or 1)
        reads = self._id_reads(build, ids, params, few=few, batch=self.batch_size)
        return [r for query, args in reads for r in runner.execute(query, args)]

    def _columns_by_ids(
        self,
        build: Callable[..., str],
        ids: Iterable[str],
        params: Mapping[str, Any] | None = None,
    ) -> dict[str, list[Any]]:
        """`_by_ids` for reads of plain values, by column (see GraphDriver.columns); a column
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

    def _table_by_ids(
        self,
        build: Callable[..., str],
        ids: Iterable[str],
        params: Mapping[str, Any] | None = None,
    ) -> pa.Table | None:
        """`_columns_by_ids` as one Arrow table (GraphDriver.table); None for no rows."""
        reads = self._id_reads(build, ids, params, few=self.d.few_ids, batch=self.bulk_batch_size)
        parts = [t for query, args in reads if (t := self.driver.table(query, args)).num_rows]
        return pa.concat_tables(parts, promote_options="permissive") if parts else None

    # ------------------------------------------------------------------ batch writes

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
        found = self._by_ids(partial(Q.existing_edges, self.d, rel), sources, tx=tx)
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

    # ------------------------------------------------------------------ lookups

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
            kind = _kind_by_label(label)
            for batch in batched(kind_ids, self.batch_size):
                for row in self.driver.execute(Q.get_nodes(self.d, kind), {"ids": batch}):
                    node = Node.from_row(row["n"])
                    out[node.id] = node
        return out

    def resolve(self, path: str) -> list[Node]:
        """The nodes named by a path, top down. Raises NodeNotFound naming the missing part."""
        names = _path_names(path)
        params: dict[str, Any] = {f"k{i}": name_key(n) for i, n in enumerate(names)}
        rows = self.driver.execute(Q.resolve_path(self.d, len(names)), params)
        if not rows:
            raise NodeNotFound(path, self._missing_part(names))
        row = rows[0]
        nodes: list[Node] = []
        hidden = False
        for i in range(len(names)):
            node = Node.from_row(row[f"n{i}"])
            hidden = hidden or node.status == Status.REJECTED
            node.path = join_path([n.name for n in nodes] + [node.name])
            node.hidden = hidden
            nodes.append(node)
        return nodes

    def _missing_part(self, names: list[str]) -> str:
        """Find the first segment that does not exist, for the error message."""
        for depth in range(1, len(names)):
            params = {f"k{i}": name_key(n) for i, n in enumerate(names[:depth])}
            if not self.driver.execute(Q.resolve_path(self.d, depth), params):
                return f"{join_path(names[:depth])!r} does not exist"
        kind = HIERARCHY[len(names) - 1]
        return f"no {kind.label} named {names[-1]!r} under {join_path(names[:-1]) or 'the root'}"

    def node(self, path: str) -> Node:
        return self.resolve(path)[-1]

    def children(self, path: str | None = None) -> list[Node]:
        """Children of the node at `path` (fields when None), in syllabus or name order."""
        if not path:
            rows = self.driver.execute(Q.roots(self.d))
            parent_path, hidden = "", False
        else:
            parent = self.node(path)
            if child_kind(parent.kind) is None:
                return []
            rows = self.driver.execute(Q.children(self.d, parent.kind), {"id": parent.id})
            parent_path, hidden = parent.path or "", parent.hidden
        nodes = [Node.from_row(r["c" if "c" in r else "n"]) for r in rows]
        for n in nodes:
            n.path = (
                join_path([*split_path(parent_path), n.name])
                if parent_path
                else join_path([n.name])
            )
            n.hidden = hidden or n.status == Status.REJECTED
        return sorted(nodes, key=_order)

    def children_of_many(self, paths: Sequence[str]) -> dict[str, list[Node]]:
        """Children of each path ("": the fields) as `children` gives them, paths and hidden
        flags included: one query per depth of the parents, each resolving its paths and
        reading their children in the same walk. A path that names nothing raises
        NodeNotFound, as `children` does."""
        out: dict[str, list[Node]] = {}
        by_depth: dict[int, dict[str, list[str]]] = {}
        for path in dict.fromkeys(paths):
            names = _path_names(path) if path else []
            by_depth.setdefault(len(names), {})[path] = names
        if 0 in by_depth:
            fields = self.children(None)
            out.update(dict.fromkeys(by_depth.pop(0), fields))
        for depth, named in sorted(by_depth.items()):
            found: dict[str, list[Node]] = {}
            for batch in batched(list(named.items()), self.batch_size):
                rows = [
                    {"path": path, **{f"k{i}": name_key(n) for i, n in enumerate(names)}}
                    for path, names in batch
                ]
                query = Q.children_at_paths(self.d, depth)
                for r in self.driver.execute(query, {"rows": rows}):
                    kids = found.setdefault(r["path"], [])
                    if r.get("c") is None:
                        continue
                    child = Node.from_row(r["c"])
                    levels = range(depth)
                    child.path = join_path([*(r[f"name{lv}"] for lv in levels), child.name])
                    child.hidden = child.status == Status.REJECTED or any(
                        r[f"status{lv}"] == Status.REJECTED for lv in levels
                    )
                    kids.append(child)
            for path, names in named.items():
                if path not in found:
                    raise NodeNotFound(path, self._missing_part(names))
                out[path] = sorted(found[path], key=_order)
        return {path: out[path] for path in dict.fromkeys(paths)}

    def paths_of(self, node_id: str) -> list[str]:
        """Every path that reaches a hierarchy node (several for a shared subject)."""
        return self.paths_of_many([node_id])[node_id]

    def paths_of_many(self, ids: Sequence[str]) -> dict[str, list[str]]:
        """Every path of each hierarchy node, sorted; [] for an id that names no node or a
        node outside the hierarchy. One query per level present, however many ids."""
        return {i: sorted(found) for i, found in self._paths_seen(ids).items()}

    def _paths_seen(self, ids: Sequence[str]) -> dict[str, dict[str, _PathSeen]]:
        """For each id: each of its paths -> whether it is hidden there, and its parent."""
        out: dict[str, dict[str, _PathSeen]] = {i: {} for i in ids}
        by_level: dict[int, list[str]] = {}
        for i in out:
            level = _hierarchy_level(i)
            if level is not None:
                by_level.setdefault(level, []).append(i)
        for level, level_ids in sorted(by_level.items()):
            build = partial(_many, Q.paths_of_many, self.d, level)
            for r in self._by_ids(build, level_ids, few=1):
                levels = range(level + 1)
                path = join_path([r[f"name{lv}"] for lv in levels])
                hidden = any(r[f"status{lv}"] == Status.REJECTED for lv in levels)
                out[r["id"]][path] = _PathSeen(hidden, r.get("parent"))
        return out

    # ------------------------------------------------------------------ taxonomy edits

    def add_node(
        self,
        parent_path: str | None,
        kind: NodeKind,
        name: str,
        *,
        source: Source = Source.USER,
        status: Status = Status.APPROVED,
        props: Mapping[str, Any] | None = None,
    ) -> Node:
        """Insert one node under a parent, checking the kind fits. Adding it again is a no-op.

        A subject that already exists under another discipline is linked, not duplicated.
        """
        name = validate_name(name, f"{kind.label} name")
        extra = dict(props or {})
        bad = set(extra) - set(kind.prop_names) | ({"id", "key", "name"} & set(extra))
        if bad:
            raise InvalidInput(f"{kind.label} cannot take properties {sorted(bad)}")
        validate_text(extra)
        if kind not in HIERARCHY:
            raise WrongKind(f"{kind.label} is not part of the knowledge hierarchy", kind=kind.label)
        parent: Node | None = None
        above: list[Node] = []
        if parent_path:
            above = self.resolve(parent_path)
            parent = above[-1]
            expected = child_kind(parent.kind)
            if expected is not kind:
                raise WrongKind(
                    f"a {kind.label} cannot go under the {parent.kind.label} {parent.path!r}: "
                    + (
                        f"only a {expected.label} can"
                        if expected
                        else f"a {parent.kind.label} has no children"
                    ),
                    parent_kind=parent.kind.label,
                    kind=kind.label,
                )
        elif kind is not FIELD:
            raise WrongKind(
                f"a {kind.label} needs a parent path; only a Field sits at the top",
                kind=kind.label,
            )
        node_id = hierarchy_id(kind, name, parent.id if parent else None)
        row: dict[str, Any] = {
            "id": node_id,
            "name": name,
            "key": name_key(name),
            "status": str(status),
            "source": str(source),
            **extra,
        }
        if "path" in kind.prop_names:
            row["path"] = join_path([*(split_path(parent.path or "") if parent else []), name])
        with self.driver.transaction() as tx:
            if "position" in kind.prop_names and row.get("position") is None and parent:
                row["position"] = len(self._children_ids(parent, tx))
            self.upsert_nodes(kind, [row], update_existing=False, tx=tx)
            if parent is not None:
                self.upsert_edges(CHILD_REL[parent.kind.label], [(parent.id, node_id)], tx=tx)
            self._rollups_stale(_subject_above(above, len(above)), tx=tx)
        path = join_path([*(split_path(parent.path or "") if parent else []), name])
        return self.node(path)

    def _children_ids(self, parent: Node, tx: Tx) -> list[str]:
        rows = tx.execute(Q.children(self.d, parent.kind), {"id": parent.id})
        return [r["c"]["id"] for r in rows]

    def update_node(self, path: str, props: Mapping[str, Any]) -> Node:
        """Change a node's descriptive properties (not its name: the name makes its id)."""
        node = self.node(path)
        allowed = {"description", "level", "subtopics"} & set(node.kind.prop_names)
        bad = set(props) - allowed
        if bad:
            raise InvalidInput(
                f"cannot update {sorted(bad)} on a {node.kind.label}; "
                f"updatable: {', '.join(sorted(allowed))}"
            )
        validate_text(props)
        if props:
            self.upsert_nodes(node.kind, [{"id": node.id, **props}])
        return self.node(path)

    def search(
        self,
        text: str,
        kinds: Sequence[NodeKind] = HIERARCHY,
        *,
        limit: int = 50,
        after: str = "",
    ) -> list[Node]:
        """Nodes whose name contains `text` (case and spacing ignored), ordered by id."""
        if len(text) > MAX_NAME_LENGTH:
            raise InvalidInput(
                f"search text is {len(text):,} characters long; the limit is {MAX_NAME_LENGTH}"
            )
        needle = name_key(text)
        if not needle:
            raise InvalidInput("search text is empty")
        found: list[Node] = []
        for kind in kinds:
            params = {"text": needle, "after": after, "limit": limit}
            found += [
                Node.from_row(r["n"]) for r in self.driver.execute(Q.search(self.d, kind), params)
            ]
        found.sort(key=lambda n: n.id)
        return found[:limit]

    def link(self, parent_path: str, child_path: str) -> Node:
        """Put an existing subject under one more discipline (the paper keeps such repeats)."""
        parent = self.node(parent_path)
        child = self.node(child_path)
        ancestors = {n.id for n in self.resolve(parent_path)}
        for p in self.paths_of(parent.id):
            ancestors.update(n.id for n in self.resolve(p))
        if child.id in ancestors:
            raise CycleError(
                f"cannot put {child.path!r} under {parent.path!r}: it is that node or one of "
                "its ancestors, which would make a cycle"
            )
        if child_kind(parent.kind) is not child.kind:
            raise WrongKind(
                f"a {child.kind.label} cannot go under a {parent.kind.label}",
                parent_kind=parent.kind.label,
                kind=child.kind.label,
            )
        if child.kind.label not in SHARED_KINDS:
            raise InvalidInput(
                f"only subjects may belong to several parents; {child.path!r} is a "
                f"{child.kind.label}"
            )
        self.upsert_edges(CHILD_REL[parent.kind.label], [(parent.id, child.id)])
        return self.node(join_path([*split_path(parent.path or ""), child.name]))

    def review(self, path: str, status: Status) -> Node:
        """Approve, reject or re-propose a node. Rejecting hides its subtree; nothing is lost."""
        nodes = self.resolve(path)
        node = nodes[-1]
        with self.driver.transaction() as tx:
            tx.execute(
                Q.set_status(self.d, node.kind),
                {"id": node.id, "status": str(status), "now": now_iso()},
            )
            self._rollups_stale(_subject_above(nodes, len(nodes) - 1), tx=tx)
        return self.node(path)

    def delete_subtree(self, path: str) -> dict[str, int]:
        """Delete a node and everything below it that has no other parent.

        A shared subject reached through this path is only unlinked from it.
        """
        nodes = self.resolve(path)
        node = nodes[-1]
        top = node.level
        if node.kind.label in SHARED_KINDS and len(nodes) > 1:
            parents = self.driver.execute(Q.parents(self.d, node.kind), {"id": node.id})
            if len(parents) > 1:
                rel = PARENT_REL[node.kind.label]
                self.driver.execute(
                    Q.delete_edge(self.d, rel), {"src": nodes[-2].id, "dst": node.id}
                )
                return {"unlinked": 1}
        doomed: dict[int, list[str]] = {top: [node.id]}
        for level in range(top + 1, len(HIERARCHY)):
            kind = HIERARCHY[level]
            ids = self._ids_below(doomed[level - 1], HIERARCHY[level - 1])
            if kind.label in SHARED_KINDS and ids:
                keep = {
                    r["id"]
                    for r in self.driver.execute(
                        Q.other_parent_ids(self.d, kind), {"ids": ids, "parents": doomed[level - 1]}
                    )
                }
                ids = [i for i in ids if i not in keep]
            doomed[level] = ids
        session_ids = doomed.get(HIERARCHY.index(SESSION), [])
        instruction_ids = self._column(Q.instruction_ids_from_sessions(self.d), session_ids)
        response_ids = self._column(Q.response_ids_for(self.d), instruction_ids)
        counts: dict[str, int] = {}
        with self.driver.transaction() as tx:
            for kind, ids in [
                (RESPONSE, response_ids),
                (INSTRUCTION, instruction_ids),
                *[(HIERARCHY[lv], doomed[lv]) for lv in sorted(doomed, reverse=True)],
            ]:
                for batch in batched(ids, self.batch_size):
                    tx.execute(Q.delete_nodes(self.d, kind), {"ids": batch})
                counts[kind.label] = len(ids)
            self._rollups_stale(_subject_above(nodes, len(nodes) - 1), tx=tx)
        return counts

    def _ids_below(self, parent_ids: list[str], parent_kind: NodeKind) -> list[str]:
        out: list[str] = []
        for batch in batched(parent_ids, self.batch_size):
            rows = self.driver.execute(Q.children_of_many(self.d, parent_kind), {"ids": batch})
            out.extend(r["c"]["id"] for r in rows)
        return list(dict.fromkeys(out))

    def _column(self, query: str, ids: list[str]) -> list[str]:
        out: list[str] = []
        for batch in batched(ids, self.batch_size):
            out.extend(r["id"] for r in self.driver.execute(query, {"ids": batch}))
        return list(dict.fromkeys(out))

    # ------------------------------------------------------------------ seed taxonomy

    def load_taxonomy(self, data: Mapping[str, Any], *, source: Source = Source.SEED) -> LoadReport:
        """Load fields > sub-fields > disciplines. Existing nodes are left as they are, so a
        second load changes nothing and a node a reviewer rejected stays rejected."""
        fields = data.get("fields") if isinstance(data, Mapping) else None
        if not isinstance(fields, Mapping) or not fields:
            raise InvalidInput("a taxonomy file needs a non-empty 'fields:' mapping")
        rows: dict[str, list[dict[str, Any]]] = {k.label: [] for k in HIERARCHY[:3]}
        edges: dict[str, list[tuple[str, str]]] = {k.label: [] for k in HIERARCHY[:2]}
        for fname, subfields in fields.items():
            fname = validate_name(fname, "field name")
            fid = hierarchy_id(HIERARCHY[0], fname, None)
            rows[HIERARCHY[0].label].append(self._seed_row(fid, fname, [fname], source))
            if not isinstance(subfields, Mapping):
                raise InvalidInput(f"field {fname!r} must map sub-field names to disciplines")
            for sname, disciplines in subfields.items():
                sname = validate_name(sname, f"sub-field name under {fname!r}")
                sid = hierarchy_id(HIERARCHY[1], sname, fid)
                rows[HIERARCHY[1].label].append(self._seed_row(sid, sname, [fname, sname], source))
                edges[HIERARCHY[0].label].append((fid, sid))
                if not isinstance(disciplines, list):
                    raise InvalidInput(f"sub-field {sname!r} must list its disciplines")
                for dname in disciplines:
                    dname = validate_name(dname, f"discipline name under {sname!r}")
                    did = hierarchy_id(HIERARCHY[2], dname, sid)
                    rows[HIERARCHY[2].label].append(
                        self._seed_row(did, dname, [fname, sname, dname], source)
                    )
                    edges[HIERARCHY[1].label].append((sid, did))
        report = LoadReport()
        with self.driver.transaction() as tx:
            for kind in HIERARCHY[:3]:
                res = self.upsert_nodes(kind, rows[kind.label], update_existing=False, tx=tx)
                report.created[kind.label] = res.created
                report.existing[kind.label] = res.unchanged
            for kind in HIERARCHY[:2]:
                self.upsert_edges(CHILD_REL[kind.label], edges[kind.label], tx=tx)
        return report

    @staticmethod
    def _seed_row(node_id: str, name: str, names: list[str], source: Source) -> dict[str, Any]:
        return {
            "id": node_id,
            "name": name,
            "key": name_key(name),
            "path": join_path(names),
            "status": str(Status.APPROVED),
            "source": str(source),
        }

    # ------------------------------------------------------------------ views

    def counts(self, path: str | None = None) -> dict[str, int]:
        """Visible descendants of each kind below a node (or in the whole store)."""
        node = self.node(path) if path else None
        first = node.level + 1 if node else 0
        if node is not None and node.hidden:
            return {COUNT_NAMES[t]: 0 for t in range(first, len(COUNT_NAMES))}
        return self._counts(node, None, first)[""]

    def counts_by_child(self, scope: Node | None, group_level: int) -> dict[str, dict[str, int]]:
        """For every visible node at `group_level` under scope: its descendant counts.

        Two queries (the hierarchy in one traversal, generated data in another), however
        large the subtree.
        """
        return self._counts(scope, group_level, group_level + 1)

    def counts_many(
        self, nodes: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, int]]:
        """Descendant counts of many nodes, each given as (id, path): what `counts(path)`
        gives, all zero when a node on that path is rejected (or the path does not reach
        the node). Keyed by path as well as id because a shared subject can be hidden along
        one path and not the other.

        At most three queries per level present, however many nodes: their paths (review
        states and parents), then the hierarchy and the generated data below every visible
        one (see _counts_at). A Concept has nothing below it to count: concepts cost none.
        """
        keys = list(dict.fromkeys(nodes))
        last = len(HIERARCHY) - 1
        level_of = {i: _hierarchy_level(i) for i, _ in keys}
        countable = [i for i, lv in level_of.items() if lv is not None and lv < last]
        seen = self._paths_seen(countable)
        shown: dict[tuple[str, str], str | None] = {}  # visible key -> its parent's id
        for node_id, path in keys:
            where = seen.get(node_id, {}).get(path)
            if where is not None and not where.hidden:
                shown[(node_id, path)] = where.parent
        by_level: dict[int, dict[str, str | None]] = {}
        for (node_id, _), parent in shown.items():
            by_level.setdefault(level_of[node_id] or 0, {})[node_id] = parent
        found: dict[str, dict[str, int]] = {}
        for level, parent_of in sorted(by_level.items()):
            found.update(self._counts_at(level, parent_of))
        out: dict[tuple[str, str], dict[str, int]] = {}
        for key in keys:
            at = level_of[key[0]]
            if at is None:  # not a hierarchy node: nothing lies below it
                out[key] = {}
            else:
                below = found.get(key[0], {}) if key in shown else {}
                out[key] = {**zero_counts(at), **below}
        return out

    def _counts_at(
        self, level: int, parent_of: Mapping[str, str | None]
    ) -> dict[str, dict[str, int]]:
        """Counts below visible nodes of one level (id -> parent id on the path they were
        reached by). Nodes that share one parent, as a node's children do, are counted
        under it as counts_by_child does: a walk down from one node every engine finds by
        index. Any other set is one UNWIND over the ids, which the embedded engine answers
        by expanding the level and joining, slower for a few nodes but a fixed cost for
        many."""
        parents = set(parent_of.values())
        top, ids = level, list(parent_of)
        if len(parents) == 1 and None not in parents:
            (parent,) = parents
            top, ids = level - 1, [str(parent)]
        params = {"rejected": str(Status.REJECTED)}
        last = len(HIERARCHY) - 1
        out: dict[str, dict[str, int]] = {}
        build = partial(_many, Q.count_levels, self.d, top, level, last)
        _add_counts(out, self._by_ids(build, ids, params, few=1), range(level + 1, last + 1))
        if level <= HIERARCHY.index(SESSION):
            build = partial(_many, Q.count_generated, self.d, top, level)
            rows = self._by_ids(build, ids, params, few=1)
            _add_counts(out, rows, range(LEVEL_INSTRUCTION, len(COUNT_NAMES)))
        return {i: c for i, c in out.items() if i in parent_of}

    def _counts(
        self, scope: Node | None, group: int | None, first: int
    ) -> dict[str, dict[str, int]]:
        top = scope.level if scope else None
        params: dict[str, Any] = {"rejected": str(Status.REJECTED)}
        if scope:
            params["id"] = scope.id
        out: dict[str, dict[str, int]] = {}
        last = len(HIERARCHY) - 1
        if first <= last:
            query = Q.count_levels(self.d, top, group, last)
            _add_counts(out, self.driver.execute(query, params), range(first, last + 1))
        generated = range(max(first, len(HIERARCHY)), len(COUNT_NAMES))
        session = HIERARCHY.index(SESSION)
        if generated and (top is None or top <= session) and (group is None or group <= session):
            query = Q.count_generated(self.d, top, group)
            _add_counts(out, self.driver.execute(query, params), generated)
        if group is None:
            total = out.setdefault("", {})
            for lv in range(first, len(COUNT_NAMES)):
                total.setdefault(COUNT_NAMES[lv], 0)
        return out

    def tree(self, path: str | None = None, depth: int = 3, *, covered: bool = False) -> TreeNode:
        """The subtree below a path (or all fields), `depth` levels deep, with counts.

        With `covered`, every node also gets its covered concepts: one more grouped query
        per level, so a chart can colour a whole tree by coverage without a query per node.
        """
        if depth < 0:
            raise InvalidInput("depth must be 0 or more")
        scope = self.node(path) if path else None
        root = TreeNode(scope, scope.path or "" if scope else "")
        root.counts = self.counts(path)
        top_level = scope.level if scope else -1
        top = scope.level if scope else None
        params: dict[str, Any] = {"rejected": str(Status.REJECTED)}
        if scope:
            params["id"] = scope.id
        shown = not (scope and scope.hidden)
        subject = HIERARCHY.index(SUBJECT)
        if covered and shown and (top is None or top <= subject):
            self.refresh_rollups(scope)

        def covered_by(group: int | None) -> dict[str, int]:
            """Covered concepts per node at `group` (or of the scope): summed from subject
            rollups down to subjects, walked below them."""
            if (top is None or top <= subject) and (group is None or group <= subject):
                query, column = Q.sum_rollups(self.d, top, group), "rollup_covered"
            else:
                query, column = Q.covered_concepts(self.d, top, group), "n"
            rows = self.driver.execute(query, params)
            return {str(r.get("id", "")): int(r[column] or 0) for r in rows}

        if covered and shown:
            root.covered_concepts = covered_by(None).get("", 0)
        frontier: list[TreeNode] = [root]
        for level in range(top_level + 1, min(top_level + 1 + depth, len(HIERARCHY))):
            if not frontier:
                break
            kids: list[TreeNode] = []
            if level == 0:
                children = {"": self.children(None)}
            else:
                parent_kind = HIERARCHY[level - 1]
                ids = list(
                    dict.fromkeys(t.node.id for t in frontier if t.node and not t.node.hidden)
                )
                children = {}
                for batch in batched(ids, self.batch_size):
                    q = Q.children_of_many(self.d, parent_kind)
                    for r in self.driver.execute(q, {"ids": batch}):
                        children.setdefault(r["parent"], []).append(Node.from_row(r["c"]))
            counts = self.counts_by_child(scope, level) if shown else {}
            covers: dict[str, int] = {}
            if covered and shown and level <= HIERARCHY.index(CONCEPT):
                covers = covered_by(level)
            for t in frontier:
                key = t.node.id if t.node else ""
                for shared in sorted(children.get(key, []), key=_order):
                    # a shared subject appears once per parent, each with its own path
                    child = Node(shared.kind, shared.props)
                    child.path = (
                        join_path([*split_path(t.path), child.name])
                        if t.path
                        else (join_path([child.name]))
                    )
                    child.hidden = (t.node.hidden if t.node else False) or (
                        child.status == Status.REJECTED
                    )
                    node = TreeNode(child, child.path)
                    if not child.hidden:
                        found = counts.get(child.id, {})
                        node.counts = {
                            COUNT_NAMES[t]: found.get(COUNT_NAMES[t], 0)
                            for t in range(level + 1, len(COUNT_NAMES))
                        }
                        node.covered_concepts = covers.get(child.id, 0)
                    t.children.append(node)
                    kids.append(node)
            frontier = kids
        return root

    def count_kind(self, kind: NodeKind) -> int:
        rows = self.driver.execute(Q.count_label(self.d, kind))
        return int(rows[0]["n"]) if rows else 0

    def coverage(self, path: str | None = None) -> Coverage:
        """Where a dataset stands: counts, concept and combination coverage, gaps.

        For the node and each child, computed in the database with a fixed number of
        grouped queries whatever the size of the subtree. Above subjects, what lies below
        each subject comes from its rollup (recomputed first where a write made it stale),
        so the queries walk the taxonomy down to subjects, not every concept and
        instruction; a subject or session is small enough to walk whole.
        """
        scope = self.node(path) if path else None
        if scope is not None and scope.level >= HIERARCHY.index(SUBJECT):
            return self._coverage_walk(scope)
        self.refresh_rollups(scope)
        top = scope.level if scope else None
        group = top + 1 if top is not None else 0
        total = CoverageRow(scope, scope.path or "" if scope else "")
        children = self.children(path)
        rows = {c.id: CoverageRow(c, c.path or "") for c in children if not c.hidden}
        hidden = scope is not None and scope.hidden
        if hidden:
            rows = {}
        params: dict[str, Any] = {"rejected": str(Status.REJECTED)}
        if scope:
            params["id"] = scope.id
        subject = HIERARCHY.index(SUBJECT)
        found: dict[str, dict[str, int]] = {}
        if not hidden:
            levels = range(group, subject + 1)
            query = Q.count_levels(self.d, top, None, subject)
            found[""] = {
                f"c{lv}": r[f"c{lv}"] for r in self.driver.execute(query, params) for lv in levels
            }
            for r in self.driver.execute(Q.sum_rollups(self.d, top, None), params):
                found[""].update(r)
            if rows and group < subject:
                for r in self.driver.execute(Q.count_levels(self.d, top, group, subject), params):
                    found.setdefault(r["id"], {}).update(r)
            if rows:
                for r in self.driver.execute(Q.sum_rollups(self.d, top, group), params):
                    found.setdefault(r["id"], {}).update(r)
        for key, row in [("", total), *rows.items()]:
            values = found.get(key, {})
            first = (row.node.level + 1) if row.node else 0
            row.counts = {
                COUNT_NAMES[lv]: int(values.get(f"c{lv}") or 0) for lv in range(first, subject + 1)
            }
            for name, rollup in _ROLLUP_COUNTS.items():
                row.counts[name] = int(values.get(rollup) or 0)
            row.covered_concepts = int(values.get("rollup_covered") or 0)
            row.combinations = int(values.get("rollup_combos") or 0)
        if not hidden:
            self._extras(self._childless(top), top, group, params, total, rows)
        ordered = [CoverageRow(c, c.path or "") for c in children if c.hidden]
        return Coverage(total, sorted([*rows.values(), *ordered], key=_row_order))

    def _extras(
        self,
        extras: Sequence[tuple[str, Callable[[int | None], str], int]],
        top: int | None,
        group: int,
        params: Mapping[str, Any],
        total: CoverageRow,
        rows: Mapping[str, CoverageRow],
    ) -> None:
        """Fill coverage figures that each take one query for the total and one grouped by
        child: (attribute, query builder for a grouping level, deepest level it applies to)."""
        for name, build, deepest in extras:
            if top is not None and top > deepest:
                continue
            found = self.driver.execute(build(None), params)
            setattr(total, name, int(found[0]["n"]) if found else 0)
            if rows and group <= deepest:
                for r in self.driver.execute(build(group), params):
                    if r["id"] in rows:
                        setattr(rows[r["id"]], name, int(r["n"]))

    def _childless(self, top: int | None) -> list[tuple[str, Callable[[int | None], str], int]]:
        """Subjects without a syllabus and disciplines without subjects: whether a node has
        children at all, which no rollup holds."""
        return [
            ("subjects_without_syllabus", partial(Q.childless, self.d, top, level=3), 3),
            ("disciplines_without_subjects", partial(Q.childless, self.d, top, level=2), 2),
        ]

    def _coverage_walk(self, scope: Node | None) -> Coverage:
        """Coverage by walking every node and instruction below the scope: what the rollups
        must add up to, and how a subject or session is covered."""
        path = scope.path if scope else None
        top = scope.level if scope else None
        group = scope.level + 1 if scope else 0
        params: dict[str, Any] = {"rejected": str(Status.REJECTED)}
        if scope:
            params["id"] = scope.id
        total = CoverageRow(scope, scope.path or "" if scope else "", self.counts(path))
        children = self.children(path) if group < len(HIERARCHY) else []
        zeros = {COUNT_NAMES[t]: 0 for t in range(group + 1, len(COUNT_NAMES))}
        rows = {c.id: CoverageRow(c, c.path or "", dict(zeros)) for c in children if not c.hidden}
        if scope is not None and scope.hidden:
            rows = {}
        else:
            if rows:
                for cid, counts in self.counts_by_child(scope, group).items():
                    if cid in rows:
                        rows[cid].counts.update(counts)
            walked: list[tuple[str, Callable[[int | None], str], int]] = [
                ("covered_concepts", partial(Q.covered_concepts, self.d, top), 5),
                ("combinations", partial(Q.covered_combos, self.d, top), 5),
            ]
            self._extras(walked + self._childless(top), top, group, params, total, rows)
        ordered = [CoverageRow(c, c.path or "") for c in children if c.hidden]
        return Coverage(total, sorted([*rows.values(), *ordered], key=_row_order))

    # ------------------------------------------------------------------ subject rollups

    def _rollups_stale(self, subject_ids: Sequence[str], *, tx: Tx | None = None) -> None:
        """Mark the rollups of these subjects stale, in the caller's transaction, so a write
        below a subject and the mark commit together (or not at all)."""
        runner: Tx | GraphDriver = tx if tx is not None else self.driver
        for batch in batched(list(dict.fromkeys(subject_ids)), self.batch_size):
            runner.execute(Q.mark_subjects_dirty(self.d), {"ids": batch})

    def refresh_rollups(self, scope: Node | None = None) -> int:
        """Recompute the stale subject rollups under a scope (everything when None); returns
        how many were stale.

        Each is stamped with the write count it was computed for, inside one transaction,
        so a write that lands meanwhile leaves it stale rather than lost.
        """
        top = scope.level if scope else None
        if top is not None and top > HIERARCHY.index(SUBJECT):
            return 0
        params: dict[str, Any] = {"id": scope.id} if scope else {}
        stale = {
            r["id"]: int(r["dirty"])
            for r in self.driver.execute(Q.stale_rollups(self.d, top), params)
        }
        ids = sorted(stale)
        values: dict[str, dict[str, Any]] = {
            i: {"id": i, **dict.fromkeys(ROLLUPS, 0), "rollup_clean": stale[i]} for i in ids
        }

        def add(rows: Iterable[Row]) -> None:
            for r in rows:
                if r["id"] in values:
                    values[r["id"]].update({k: int(v or 0) for k, v in r.items() if k != "id"})

        args = {"rejected": str(Status.REJECTED)}
        counts = (Q.rollup_syllabus, Q.rollup_generated, Q.rollup_covered)
        if self._reads_whole(ids):
            # Most subjects are stale, as after a large write: each count walks every subject
            # once (see syllabus_index). The stamps still hold: a write that lands meanwhile
            # marks its subject again, past the stamp it gets here.
            for build in counts:
                add(self.driver.execute(build(self.d, every=True), args))
            for batch in batched(ids, self.batch_size):
                with self.driver.transaction() as tx:
                    self.update_existing(SUBJECT, [values[i] for i in batch], tx=tx)
            return len(ids)
        for batch in batched(ids, self.batch_size):
            with self.driver.transaction() as tx:
                for build in counts:
                    add(self._by_ids(partial(build, self.d), batch, args, tx=tx))
                self.update_existing(SUBJECT, [values[i] for i in batch], tx=tx)
        return len(ids)

    def gaps(self, path: str | None = None, limit: int = 10) -> Gaps:
        """The least covered concepts under a path and its subjects without a syllabus,
        `limit` of each, in two queries whatever the size of the subtree: what a reviewer
        looks at to decide where to generate next."""
        if limit < 1:
            raise InvalidInput("limit must be 1 or more")
        scope = self.node(path) if path else None
        where = scope.path or "" if scope else ""
        if scope is not None and scope.hidden:
            return Gaps(where, [], [])
        top = scope.level if scope else None
        params: dict[str, Any] = {"rejected": str(Status.REJECTED), "limit": limit}
        if scope:
            params["id"] = scope.id
        least = [
            ConceptGap(Node.from_row(r["c"]), r["subject"] or "", r["session"] or "", int(r["k"]))
            for r in self.driver.execute(Q.least_covered_concepts(self.d, top), params)
        ]
        without: list[Node] = []
        if top is None or top <= HIERARCHY.index(SUBJECT):
            rows = self.driver.execute(Q.subjects_without_syllabus(self.d, top), params)
            without = [Node.from_row(r["s"]) for r in rows]
        return Gaps(where, least, without)

    # ------------------------------------------------------------------ generation

    def scope(self, path: str | None) -> Node | None:
        """The node a generation job runs under (None: everything).

        Generation only uses approved nodes, so a path through a proposed or rejected node
        is refused with the node to review.
        """
        if not path:
            return None
        nodes = self.resolve(path)
        for n in nodes:
            if n.status != Status.APPROVED:
                raise ScopeNotApproved(n.path or path, str(n.status))
        return nodes[-1]

    def _scope_params(self, scope: Node | None) -> dict[str, Any]:
        params: dict[str, Any] = {"approved": str(Status.APPROVED)}
        if scope is not None:
            params["id"] = scope.id
        return params

    def ids_in_scope(self, scope: Node | None, kind: NodeKind) -> list[str]:
        """Ids of `kind` under the scope reachable through approved nodes, sorted."""
        level = HIERARCHY.index(kind)
        top = scope.level if scope else None
        if scope is not None and scope.level > level:
            raise WrongKind(f"{scope.path!r} is a {scope.kind.label}: no {kind.label} below it")
        if scope is not None and scope.level == level:
            return [scope.id]
        rows = self.driver.execute(Q.scope_ids(self.d, top, level), self._scope_params(scope))
        return sorted(r["id"] for r in rows)

    def subject_names(self, discipline_id: str) -> list[str]:
        rows = self.driver.execute(Q.subject_names(self.d), {"id": discipline_id})
        return sorted(r["name"] for r in rows)

    def write_subjects(
        self,
        discipline_id: str,
        subjects: Sequence[Mapping[str, Any]],
        provenance: Mapping[str, Any],
        *,
        tx: Tx | None = None,
    ) -> list[str]:
        """Store subjects under a discipline; a subject already known anywhere is linked.

        Repeats are merged by normalized name; the first description of a subject is kept.
        """
        rows: dict[str, dict[str, Any]] = {}
        for s in subjects:
            name = validate_name(s["name"], "subject name")
            sid = hierarchy_id(SUBJECT, name, None)
            rows.setdefault(
                sid,
                {
                    "id": sid,
                    "name": name,
                    "key": name_key(name),
                    "level": s.get("level"),
                    "subtopics": [str(t) for t in s.get("subtopics") or []],
                    "status": str(Status.APPROVED),
                    "source": str(Source.LLM),
                    **provenance,
                },
            )
        self.upsert_nodes(SUBJECT, list(rows.values()), update_existing=False, tx=tx)
        self.upsert_edges(
            CHILD_REL[HIERARCHY[2].label], [(discipline_id, sid) for sid in rows], tx=tx
        )
        return list(rows)

    def write_syllabus(
        self,
        subject_id: str,
        sessions: Sequence[Mapping[str, Any]],
        provenance: Mapping[str, Any],
        *,
        tx: Tx | None = None,
    ) -> list[str]:
        """Store a syllabus: sessions in order, each with its key concepts."""
        session_rows: list[dict[str, Any]] = []
        concept_rows: dict[str, dict[str, Any]] = {}
        has_session: list[tuple[str, str]] = []
        has_concept: list[tuple[str, str]] = []
        seen_titles: set[str] = set()
        for pos, sess in enumerate(sessions):
            title = validate_name(sess["title"], "session title")
            if name_key(title) in seen_titles:  # keep both sessions of a repeated title
                title = f"{title} ({pos + 1})"
            seen_titles.add(name_key(title))
            ses_id = hierarchy_id(SESSION, title, subject_id)
            session_rows.append(
                {
                    "id": ses_id,
                    "name": title,
                    "key": name_key(title),
                    "description": sess.get("description") or None,
                    "position": pos,
                    "status": str(Status.APPROVED),
                    "source": str(Source.LLM),
                    **provenance,
                }
            )
            has_session.append((subject_id, ses_id))
            for cpos, concept in enumerate(sess.get("concepts") or []):
                cname = validate_name(concept, "concept name")
                cid = hierarchy_id(CONCEPT, cname, ses_id)
                if cid in concept_rows:
                    continue
                concept_rows[cid] = {
                    "id": cid,
                    "name": cname,
                    "key": name_key(cname),
                    "position": cpos,
                    "status": str(Status.APPROVED),
                    "source": str(Source.LLM),
                    **provenance,
                }
                has_concept.append((ses_id, cid))
        self.upsert_nodes(SESSION, session_rows, tx=tx)
        self.upsert_nodes(CONCEPT, list(concept_rows.values()), tx=tx)
        self.upsert_edges(CHILD_REL[SUBJECT.label], has_session, tx=tx)
        self.upsert_edges(CHILD_REL[SESSION.label], has_concept, tx=tx)
        self._rollups_stale([subject_id], tx=tx)
        return [r["id"] for r in session_rows]

    def concept_stats(self, subject_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """Per subject: (approved concepts, concepts covered by an instruction)."""
        params = {"approved": str(Status.APPROVED)}
        ids = list(dict.fromkeys(subject_ids))
        if self._reads_whole(ids):  # see syllabus_index
            wanted = set(ids)
            every = self.driver.execute(Q.subject_concept_stats(self.d, every=True), params)
            rows = [r for r in every if r["id"] in wanted]
        else:
            rows = self._by_ids(partial(Q.subject_concept_stats, self.d), ids, params)
        return {r["id"]: (int(r["concepts"]), int(r["covered"] or 0)) for r in rows}

    def syllabi(self, subject_ids: Sequence[str]) -> dict[str, list[SessionView]]:
        """The approved sessions (in order, those with approved concepts) and concepts of
        each subject, with coverage.

        Three reads by column (sessions, concepts, coverage): the sampler reads every
        syllabus of a scope at once, millions of concepts at GLAN scale."""
        approved = {"approved": str(Status.APPROVED)}
        s = self._columns_by_ids(partial(Q.syllabus_sessions, self.d), subject_ids, approved)
        c = self._columns_by_ids(partial(Q.syllabus_concepts, self.d), subject_ids, approved)
        k = self._columns_by_ids(partial(Q.syllabus_coverage, self.d), subject_ids)
        covered = dict(zip(k["concept"], k["covered"], strict=True))
        concepts: dict[str, list[ConceptView]] = {}
        for session, cid, name, position in zip(
            c["session"], c["concept"], c["name"], c["position"], strict=True
        ):
            concepts.setdefault(session, []).append(
                ConceptView(cid, name, position or 0, int(covered.get(cid, 0)))
            )
        out: dict[str, list[SessionView]] = {}
        for subject, sid, title, description, position in zip(
            s["subject"], s["session"], s["title"], s["description"], s["position"], strict=True
        ):
            if sid in concepts:
                view = SessionView(sid, title, description or "", position or 0, concepts[sid])
                out.setdefault(subject, []).append(view)
        for views in out.values():
            views.sort(key=lambda v: (v.position, v.id))
            for v in views:
                v.concepts.sort(key=lambda c: (c.position, c.id))
        return out

    def syllabus_index(self, subject_ids: Sequence[str]) -> SyllabusIndex:
        """The syllabi of these subjects for sampling (see SyllabusIndex): two reads by
        column, sorted and joined as Arrow arrays, so that no Python object is made per
        concept but its id.

        For most of the store's subjects (`whole_read_share`), the reads walk every subject
        and keep those asked for: the embedded engine joins a list of ids with the whole walk
        anyway, which costs more than the walk alone."""
        ids = list(dict.fromkeys(subject_ids))
        if not ids:
            return SyllabusIndex.empty()
        approved = {"approved": str(Status.APPROVED)}
        if self._reads_whole(ids):
            rows = self.driver.table(Q.syllabus_outline(self.d, every=True), approved)
            if rows.num_rows:
                wanted = pa.array(ids, pa.string())
                rows = rows.filter(pc.is_in(rows["subject"], value_set=wanted))
            counts: pa.Table | None = self.driver.table(Q.syllabus_coverage(self.d, every=True))
        else:
            rows = self._table_by_ids(partial(Q.syllabus_outline, self.d), ids, approved)
            counts = self._table_by_ids(partial(Q.syllabus_coverage, self.d), ids)
        if rows is None or not rows.num_rows:
            return SyllabusIndex.empty()
        subject, session = rows["subject"].combine_chunks(), rows["session"].combine_chunks()
        concept = rows["concept"].combine_chunks()
        # Sorted by subject, session position, session, concept position, concept (a missing
        # position sorts as 0). Subjects sort by their ids' ranks, sessions by their runs in
        # the read (_session_order): sorting millions of rows by integers costs a fraction
        # of sorting them by strings.
        subject_rank = _ranks(subject)
        session_position = pc.fill_null(rows["session_position"].cast(pa.int64()), 0)
        keys = pa.table(
            {
                "subject": subject_rank,
                "session_position": session_position,
                "session": _session_order(session, subject_rank, session_position),
                "position": pc.fill_null(rows["position"].cast(pa.int64()), 0),
                "concept": concept,
            }
        )
        ascending = [(name, "ascending") for name in keys.column_names]
        order = pc.sort_indices(keys, ascending).to_numpy()
        by_subject = keys["subject"].to_numpy()[order]
        by_session = keys["session"].to_numpy()[order]
        # rows where a subject (or a session) starts: the first, and each whose subject (or
        # subject or session) differs from the row before it
        subject_moves = by_subject[1:] != by_subject[:-1]
        new_subject = np.flatnonzero(np.r_[True, subject_moves])
        new_session = np.flatnonzero(
            np.r_[True, subject_moves | (by_session[1:] != by_session[:-1])]
        )
        covered = pa.nulls(len(concept), pa.int64())
        if counts is not None and counts.num_rows:
            found = pc.index_in(concept, value_set=counts["concept"].combine_chunks())
            covered = counts["covered"].combine_chunks().take(found)
        return SyllabusIndex(
            subject_ids=subject.take(order[new_subject]).to_pylist(),
            session_start=np.r_[np.searchsorted(new_session, new_subject), len(new_session)]
            .astype(int)
            .tolist(),
            session_ids=session.take(order[new_session]).to_pylist(),
            concept_start=np.r_[new_session, len(concept)].astype(int).tolist(),
            concept_ids=concept.take(order).to_pylist(),
            covered=pc.fill_null(covered, 0).cast(pa.int64()).take(order).to_pylist(),
        )

    def _reads_whole(self, subject_ids: Sequence[str]) -> bool:
        """Whether a read for these subjects walks every subject and keeps theirs (see
        syllabus_index)."""
        many = len(subject_ids) > max(self.d.few_ids, 1)
        return many and len(subject_ids) >= self.whole_read_share * self.count_kind(SUBJECT)

    def combo_keys(self, subject_ids: Sequence[str]) -> set[str]:
        """Concept combinations (sorted-id hashes) already asked about in these subjects."""
        ids = list(dict.fromkeys(subject_ids))
        if self._reads_whole(ids):  # see syllabus_index
            table = self.driver.table(Q.combo_keys_of_subjects(self.d, every=True))
            if not table.num_rows:
                return set()
            asked = table.filter(pc.is_in(table["subject"], value_set=pa.array(ids, pa.string())))
            return {key for key in asked["key"].to_pylist() if key}
        keys: set[str] = set()
        for batch in batched(ids, self.batch_size):
            rows = self.driver.execute(Q.combo_keys_of_subjects(self.d), {"ids": batch})
            keys.update(r["key"] for r in rows if r["key"])
        return keys

    def write_instructions(
        self,
        rows: Sequence[Mapping[str, Any]],
        covers: Sequence[tuple[str, str]],
        sessions: Sequence[tuple[str, str]],
        *,
        tx: Tx | None = None,
    ) -> UpsertResult:
        res = self.upsert_nodes(INSTRUCTION, rows, tx=tx)
        self.upsert_edges(COVERS, covers, new_sources=res.new_ids, tx=tx)
        self.upsert_edges(FROM, sessions, new_sources=res.new_ids, tx=tx)
        self._rollups_stale([str(r["subject_id"]) for r in rows if r.get("subject_id")], tx=tx)
        return res

    def write_responses(
        self,
        rows: Sequence[Mapping[str, Any]],
        *,
        subject_ids: Sequence[str] | None = None,
        tx: Tx | None = None,
    ) -> UpsertResult:
        """Store answers. `subject_ids`, the subjects their instructions were asked in, saves
        looking them up when the caller already knows them."""
        res = self.upsert_nodes(RESPONSE, rows, tx=tx)
        pairs = [(r["id"], r["instruction_id"]) for r in rows]
        self.upsert_edges(ANSWERS, pairs, new_sources=res.new_ids, tx=tx)
        if subject_ids is None:
            runner: Tx | GraphDriver = tx if tx is not None else self.driver
            subject_ids = []
            for batch in batched(list(dict.fromkeys(i for _, i in pairs)), self.batch_size):
                found = runner.execute(Q.subjects_of_instructions(self.d), {"ids": batch})
                subject_ids += [r["id"] for r in found if r["id"]]
        self._rollups_stale(subject_ids, tx=tx)
        return res

    def instruction_ids_in_scope(self, scope: Node | None) -> list[str]:
        top = self._instruction_top(scope)
        rows = self.driver.execute(Q.instructions_in_scope(self.d, top), self._scope_params(scope))
        return sorted(r["id"] for r in rows)

    @staticmethod
    def _instruction_top(scope: Node | None) -> int | None:
        """The level instructions are listed under: a session or above (None: everything)."""
        if scope is not None and scope.level > HIERARCHY.index(SESSION):
            raise WrongKind(f"{scope.path!r} is a {scope.kind.label}; choose a session or above")
        return scope.level if scope else None

    def instructions_page(
        self,
        scope: Node | None,
        flt: InstructionFilter | None = None,
        first: int = 50,
        after: str | None = None,
    ) -> tuple[list[Node], bool]:
        """Instructions under a scope (as instruction_ids_in_scope finds them) that the filter
        keeps, in id order after the id `after`: up to `first`, and whether more follow.

        One query: the filter is part of its WHERE clause and it asks for first + 1 rows,
        so a page costs about a page of rows however large the scope.
        """
        if first < 0:
            raise InvalidInput(f"first must be 0 or more, got {first}")
        flt = flt or InstructionFilter()
        top = self._instruction_top(scope)
        params = {**self._scope_params(scope), **Q.instruction_params(flt), "limit": first + 1}
        if after:
            params["after"] = after
        query = Q.instructions_page(self.d, top, flt, after=bool(after))
        nodes = [Node.from_row(r["x"]) for r in self.driver.execute(query, params)]
        return nodes[:first], len(nodes) > first

    def count_instructions(self, scope: Node | None, flt: InstructionFilter | None = None) -> int:
        """How many instructions under a scope the filter keeps: one COUNT query."""
        flt = flt or InstructionFilter()
        top = self._instruction_top(scope)
        params = {**self._scope_params(scope), **Q.instruction_params(flt)}
        rows = self.driver.execute(Q.count_instructions(self.d, top, flt), params)
        return int(rows[0]["n"]) if rows else 0

    def sample_instructions(self, scope: Node | None, n: int, seed: int) -> list[Node]:
        """`n` instructions under a scope drawn without replacement (all of them when there
        are fewer), in the order drawn: the same ones for the same seed and data.

        Two queries, and no id list in Python: count the scope, draw that many positions
        with `random.Random(seed)` (over a range, so nothing the size of the scope is built
        here), then pick the instructions at those positions of the scope's sorted ids,
        which the database gathers and indexes itself (pick_instructions). A seeded order
        in the database (ORDER BY random()) would not repeat; a SKIP per position would
        sort the scope once per pick. The positions are those `random.sample` would draw
        from the sorted id list, so the sample is the one the API always gave for a seed.
        """
        if n < 0:
            raise InvalidInput(f"n must be 0 or more, got {n}")
        top = self._instruction_top(scope)
        total = self.count_instructions(scope)
        offsets = random.Random(seed).sample(range(total), min(n, total))
        picked: dict[int, Node] = {}
        for batch in batched(offsets, self.batch_size):
            params = {**self._scope_params(scope), "offsets": batch}
            for r in self.driver.execute(Q.pick_instructions(self.d, top), params):
                picked[int(r["o"])] = Node.from_row(r["x"])
        return [picked[o] for o in offsets if o in picked]

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

    def name_index(self, kind: NodeKind) -> NameIndex | None:
        """Every node of a kind by reference, for `linked_names`: one scan of its table.
        None where the engine has no node references (Dialect.node_ref)."""
        ref = self.d.node_ref("n")
        if ref is None:
            return None
        table = self.driver.table(Q.names_by_ref(self.d, kind, ref))
        if not table.num_rows:
            table = pa.table({"ref": [], "id": [], "name": [], "position": []})
        return NameIndex(table.set_column(0, "ref", table["ref"].cast(pa.int64())))

    def linked_names(
        self, rel: RelKind, ids: Sequence[str], names: NameIndex | None = None
    ) -> dict[str, list[tuple[str, str, int]]]:
        """What each id points to through `rel`, as (id, name, position), sorted: `linked`
        with the names the caller would otherwise read node by node (sessions, concepts).

        Given `names` (name_index of rel's target kind), only the edges are read, and the
        names looked up there: a caller reading many batches reads the names once."""
        out: dict[str, list[tuple[str, str, int]]] = {i: [] for i in ids}
        found = None
        if names is not None and (ref := self.d.node_ref("b")) is not None:
            edges = self._columns_by_ids(partial(Q.linked_refs, self.d, rel, ref), ids)
            src, found = edges["src"], names.lookup(edges["ref"])
        if found is None:  # no index, or nodes made since it was read
            cols = self._columns_by_ids(partial(Q.linked_from_names, self.d, rel), ids)
            src = cols["src"]
            found = cols["dst"], cols["name"], [p or 0 for p in cols["position"]]
        for s, dst, name, position in zip(src, *found, strict=True):
            out[s].append((dst, name, position))
        for v in out.values():
            v.sort()
        return out

    # ------------------------------------------------------------------ datasets

    def instructions_by_subject(self, subject_ids: Sequence[str]) -> dict[str, list[str]]:
        """Instruction ids of each subject (from approved sessions), sorted."""
        out: dict[str, list[str]] = {s: [] for s in subject_ids}
        params: dict[str, Any] = {"approved": str(Status.APPROVED)}
        for batch in batched(list(dict.fromkeys(subject_ids)), self.batch_size):
            for r in self.driver.execute(
                Q.instructions_of_subjects(self.d), {**params, "ids": batch}
            ):
                out[r["subject"]].append(r["id"])
        for v in out.values():
            v.sort()
        return out

    def details_below(
        self, subject_ids: Sequence[str], *, links: bool = True, responses: bool = True
    ) -> dict[str, list[InstructionDetail]]:
        """The instructions of each subject (as `instructions_by_subject` finds them, in the
        same order) with their sessions and concepts (unless not `links`) and responses
        (unless not `responses`): up to four reads walked down from the subjects, whatever
        the number of instructions. They are all held at once: a caller sizes its list of
        subjects by their number of instructions."""
        params = {"ids": list(dict.fromkeys(subject_ids)), "approved": str(Status.APPROVED)}
        # read by column: whole nodes, row by row, took most of an export's time
        cols = self.driver.columns(Q.instructions_below(self.d), params)
        found: dict[str, InstructionDetail] = {}
        below: dict[str, set[str]] = {s: set() for s in subject_ids}
        for subject, node in zip(cols.get("subject", []), _nodes(INSTRUCTION, cols), strict=True):
            if node.id not in found:  # else reached through another of its sessions
                found[node.id] = InstructionDetail(node)
            below[subject].add(node.id)
        for rel in (FROM, COVERS) if links else ():
            cols = self.driver.columns(Q.linked_names_below(self.d, rel), params)
            link_cols = (cols.get(c, []) for c in ("src", "dst", "name", "position"))
            for src, dst, name, position in zip(*link_cols, strict=True):
                if (detail := found.get(src)) is not None:  # else asked since
                    linked = detail.sessions if rel is FROM else detail.concepts
                    linked.append((dst, name, position or 0))
        if responses:
            cols = self.driver.columns(Q.responses_below(self.d), params)
            for answers, node in zip(cols.get("answers", []), _nodes(RESPONSE, cols), strict=True):
                if (detail := found.get(answers)) is not None:
                    detail.responses.append(node)
        for detail in found.values():
            detail.sort()
        return {s: [found[i] for i in sorted(ids)] for s, ids in below.items()}

    def details_of(
        self,
        ids: Sequence[str],
        concepts: NameIndex | None = None,
        sessions: NameIndex | None = None,
        *,
        links: bool = True,
        responses: bool = True,
    ) -> dict[str, InstructionDetail]:
        """`details_below` for instructions given by id (unknown ids are left out): each
        read is a join over the whole instruction table on the embedded engine. Given name
        indexes of concepts and sessions, their names are looked up there (`linked_names`)."""
        instructions = self.get_many(ids)
        found = {i: InstructionDetail(instructions[i]) for i in ids if i in instructions}
        known = list(found)
        if links:
            for i, linked in self.linked_names(COVERS, known, concepts).items():
                found[i].concepts = linked
            for i, linked in self.linked_names(FROM, known, sessions).items():
                found[i].sessions = linked
        if responses:
            answers = self.linked(ANSWERS, known, reverse=True)
            nodes = self.get_many(sorted({r for v in answers.values() for r in v}))
            for i, rs in answers.items():
                found[i].responses = [nodes[r] for r in rs if r in nodes]
        for detail in found.values():
            detail.sort()
        return found

    def discipline_paths(self, subject_ids: Sequence[str]) -> dict[str, list[str]]:
        """The approved discipline paths each subject sits under."""
        out: dict[str, list[str]] = {s: [] for s in subject_ids}
        params: dict[str, Any] = {"approved": str(Status.APPROVED)}
        for batch in batched(list(dict.fromkeys(subject_ids)), self.batch_size):
            for r in self.driver.execute(Q.discipline_paths(self.d), {**params, "ids": batch}):
                out[r["id"]].append(join_path([r["f"], r["s"], r["d"]]))
        for v in out.values():
            v.sort()
        return out

    def mark_duplicates(self, pairs: Sequence[tuple[str, str, str]]) -> None:
        """Mark (duplicate, kept, how) triples: a DUPLICATE_OF edge and the `duplicate` flag."""
        with self.driver.transaction() as tx:
            rows = [{"id": dup, "duplicate": how} for dup, _, how in pairs]
            self.upsert_nodes(INSTRUCTION, rows, tx=tx)
            self.upsert_edges(DUPLICATE_OF, [(dup, kept) for dup, kept, _ in pairs], tx=tx)

    def clear_duplicates(self, instruction_ids: Sequence[str]) -> None:
        with self.driver.transaction() as tx:
            for batch in batched(list(instruction_ids), self.batch_size):
                tx.execute(Q.delete_edges_from(self.d, DUPLICATE_OF), {"ids": batch})
                rows = [{"id": i, "duplicate": None} for i in batch]
                self.upsert_nodes(INSTRUCTION, rows, tx=tx)

    def set_property(self, kind: NodeKind, prop: str, values: Mapping[str, Any]) -> None:
        """Set one property on many existing nodes (flags such as `contaminated`)."""
        if prop not in kind.prop_names or prop in ("id", "key"):
            raise InvalidInput(f"{kind.label} has no settable property {prop!r}")
        rows = [{"id": i, prop: v} for i, v in values.items()]
        for batch in batched(rows, self.batch_size):
            self.driver.execute(Q.update_nodes(self.d, kind, ["id", prop]), {"rows": batch})

    # ------------------------------------------------------------------ jobs and units

    def save_job(self, row: Mapping[str, Any], *, tx: Tx | None = None) -> None:
        self.upsert_nodes(JOB, [row], tx=tx)

    def job(self, job_id: str) -> dict[str, Any] | None:
        node = self.get(job_id)
        return node.props if node else None

    def jobs(self) -> list[dict[str, Any]]:
        return [Node.from_row(r["j"]).props for r in self.driver.execute(Q.list_jobs(self.d))]

    def job_units(self, job_id: str) -> list[dict[str, Any]]:
        rows = self.driver.execute(Q.job_units(self.d), {"job": job_id})
        return [Node.from_row(r["u"]).props for r in rows]

    def unit_statuses(self, ids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for batch in batched(list(ids), self.batch_size):
            for r in self.driver.execute(Q.unit_status(self.d), {"ids": batch}):
                out[r["id"]] = r["status"]
        return out

    def save_units(
        self,
        rows: Sequence[Mapping[str, Any]],
        *,
        update_existing: bool = True,
        tx: Tx | None = None,
    ) -> None:
        self.upsert_nodes(UNIT, rows, update_existing=update_existing, tx=tx)

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


def _subject_above(path: Sequence[Node], level: int) -> list[str]:
    """The subject on a resolved path whose rollup a change at `level` makes stale: a change
    to a session or concept; none for a change at the subject or above."""
    subject = HIERARCHY.index(SUBJECT)
    return [path[subject].id] if level > subject else []


@dataclass(frozen=True)
class _PathSeen:
    """A node as one of its paths sees it."""

    hidden: bool
    #: id of the node above it on that path (None for a Field)
    parent: str | None


def _nodes(kind: NodeKind, columns: Mapping[str, list[Any]]) -> Iterator[Node]:
    """Nodes of a kind read a column per property (a column no row named is empty)."""
    names = kind.prop_names
    for values in zip(*(columns.get(n, []) for n in names), strict=True):
        yield Node(kind, dict(zip(names, values, strict=True)))


def _hierarchy_level(node_id: str) -> int | None:
    """0 (Field) .. 5 (Concept) for the id of a hierarchy node; None for any other kind."""
    kind = kind_of_id(node_id)
    return HIERARCHY.index(kind) if kind in HIERARCHY else None


def _many(build: Callable[..., str], *args: Any, one: bool) -> str:
    """A builder taking `each` (an UNWIND over $ids) as Store._by_ids calls one: with `one`
    (the single node $id)."""
    return build(*args, each=not one)


def _add_counts(out: dict[str, dict[str, int]], rows: list[Row], levels: range) -> None:
    """Put the c<level> columns of count rows under their node's id ("" without one)."""
    for row in rows:
        counts = out.setdefault(str(row.get("id", "")), {})
        for lv in levels:
            counts[COUNT_NAMES[lv]] = int(row.get(f"c{lv}") or 0)


def _path_names(path: str) -> list[str]:
    """The names of a path, or NodeNotFound saying why it cannot name a node."""
    try:
        names = split_path(path)
    except ValueError as exc:
        raise NodeNotFound(path, str(exc)) from exc
    if not names:
        raise NodeNotFound(path, "the path is empty")
    if len(names) > len(HIERARCHY):
        raise NodeNotFound(path, f"paths are at most {len(HIERARCHY)} deep (Field/.../Concept)")
    return names


def _row_order(row: CoverageRow) -> tuple[int, str]:
    return _order(row.node) if row.node else (0, "")


def _order(node: Node) -> tuple[int, str]:
    pos = node.props.get("position")
    return (pos if isinstance(pos, int) else 1 << 30, name_key(node.name))


__all__ = [
    "COUNT_NAMES",
    "InstructionFilter",
    "LoadReport",
    "Node",
    "Row",
    "Store",
    "TreeNode",
    "UpsertResult",
    "kind_of_id",
    "validate_name",
    "zero_counts",
    "SUBJECT",
]
