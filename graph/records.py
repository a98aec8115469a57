"""The store's records: what its reads return and its writes take, as plain data.

Nodes with their kind and properties, the views built from them (trees, syllabi, coverage
rows, instruction details), and the checks on names and texts users give. No reads or
writes here: those live in the module of their concern (see graph/store.py).
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import combinations
from .errors import InvalidInput
from .model import (
    HIERARCHY,
    MAX_LIST_ITEMS,
    MAX_NAME_LENGTH,
    MAX_TEXT_LENGTH,
    NODE_KINDS,
    NodeKind,
    clean_name,
    name_key,
)

_KIND_BY_PREFIX = {k.id_prefix: k for k in NODE_KINDS}

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
        kind = kind_of_id(str(props["id"])) if label is None else kind_by_label(label)
        return cls(kind, props, path)


@dataclass
class TreeNode:
    node: Node | None  # None: the root above all fields
    path: str
    counts: dict[str, int] = field(default_factory=dict)
    children: list[TreeNode] = field(default_factory=list)
    #: concepts below with at least one instruction (set when tree() is asked for coverage)
    covered_concepts: int = 0
    #: the combination space below and the combinations used in it (set when tree() is
    #: asked for combinations; see CoverageRow)
    combination_space: int = 0
    combinations_used: int = 0

    @property
    def combination_share(self) -> float:
        return combinations.share(self.combinations_used, self.combination_space)


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


class Ids(Sequence[str]):
    """Strings held as one UTF-8 buffer and where each ends: about the bytes of the text,
    where a list of Python strings costs 85 bytes a 28-character id (1.9M concept ids: 53 MB
    against 160 MB). Read by index, as a list is; added to at the end; compared equal to any
    sequence of the same strings. Made from an Arrow column with no Python string per item."""

    __slots__ = ("_data", "_ends")

    def __init__(self, items: Iterable[str] = ()) -> None:
        self._data = bytearray()
        self._ends = array("q", [0])
        self.extend(items)

    @classmethod
    def of_arrow(cls, column: pa.Array | pa.ChunkedArray) -> Ids:
        """The strings of an Arrow column, copied from its buffers (a null is "")."""
        found = cls()
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        for chunk in chunks:
            found._add_arrow(chunk)
        return found

    def _add_arrow(self, chunk: pa.Array) -> None:
        if not len(chunk):
            return
        chunk = pc.fill_null(chunk.cast(pa.large_string()), "")  # 64-bit offsets
        offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int64)[
            chunk.offset : chunk.offset + len(chunk) + 1
        ]
        data = chunk.buffers()[2]
        first, last = int(offsets[0]), int(offsets[-1])
        base = len(self._data) - first
        self._data += memoryview(data)[first:last] if data is not None else b""
        self._ends.frombytes((offsets[1:] + base).astype(np.int64).tobytes())

    def extend(self, items: Iterable[str]) -> None:
        if isinstance(items, Ids):
            base = len(self._data)
            self._data += items._data
            self._ends.frombytes((np.frombuffer(items._ends, dtype=np.int64)[1:] + base).tobytes())
            return
        data, ends = self._data, self._ends
        for item in items:
            data += item.encode()
            ends.append(len(data))

    def append(self, item: str) -> None:
        self._data += item.encode()
        self._ends.append(len(self._data))

    def __len__(self) -> int:
        return len(self._ends) - 1

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        ends, n = self._ends, len(self._ends) - 1
        if not -n <= i < n:
            raise IndexError("Ids index out of range")
        if i < 0:
            i += n
        return self._data[ends[i] : ends[i + 1]].decode()

    def __iter__(self) -> Iterator[str]:
        text, ends = self._data, self._ends
        for i in range(len(ends) - 1):
            yield text[ends[i] : ends[i + 1]].decode()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Ids):
            return self._ends == other._ends and self._data == other._data
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Ids({list(self)!r})"


@dataclass(frozen=True)
class SyllabusIndex:
    """The syllabi of many subjects as flat lists in syllabus order, for sampling: subject
    i's sessions are `session_start[i]` up to `session_start[i + 1]`, session j's concepts
    `concept_start[j]` up to `concept_start[j + 1]`. Only approved sessions with approved
    concepts are in it. One list per field, not an object per concept: at GLAN scale a
    scope has millions of concepts. The store gives the ids as Ids, not lists of strings."""

    subject_ids: Sequence[str]
    session_start: list[int]
    session_ids: Sequence[str]
    concept_start: list[int]
    concept_ids: Sequence[str]
    #: instructions covering each concept
    covered: list[int]

    @classmethod
    def empty(cls) -> SyllabusIndex:
        return cls([], [0], [], [0], [], [])


#: the hex digits of a combination key that KeySet keeps: 64 bits
_KEY_DIGITS = 16
#: each byte's value as a hex digit (lowercase, as stable_hash writes them), else 255
_HEX = np.full(256, 255, dtype=np.uint8)
_HEX[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)


class KeySet:
    """Combination keys (sampling's combo_key, a hex digest) for membership tests, each held
    as the 64-bit integer of its first 16 hex digits in one sorted array: 8 bytes a key,
    where a set of a GLAN-scale store's strings took about 110 MB at 1M pairs and would
    take ten times that at 10M. Two keys sharing those 64 bits (about one chance in 10^8
    for a draw against 10M keys) count as one: a combination taken for asked is not drawn,
    which is all a plan does with it. Keys added later go to a second sorted array (those
    added many at once: the questions a write stores) or to a set of those integers (those
    added one at a time: a plan's own draws), folded into the big array as they grow. A key
    that is not such a digest is hashed to 64 bits instead."""

    __slots__ = ("_values", "_added", "_more")

    #: keys added one at a time are sorted into the added ones past this many (a set holds
    #: about 90 bytes a key)
    fold_at = 65_536
    #: the added ones are folded into the array past this share of it: sorting them in costs
    #: a sort of the array, a few times in all
    fold_share = 4

    def __init__(self, keys: pa.Array | pa.ChunkedArray | Iterable[str] = ()) -> None:
        if not isinstance(keys, (pa.Array, pa.ChunkedArray)):
            keys = pa.array([k for k in keys if k], pa.string())
        self._values = _distinct(_key_values(keys))
        self._added = self._values[:0]
        self._more: set[int] = set()

    @classmethod
    def of_parts(cls, parts: Iterable[pa.Array | pa.ChunkedArray]) -> KeySet:
        """The keys of columns read one part at a time, each made 64-bit as it comes."""
        found = KeySet()
        values = [_key_values(part) for part in parts]
        found._values = _distinct(np.concatenate(values)) if values else found._values
        found._added = found._values[:0]
        return found

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str) or not key:
            return False
        return self._has(_key_value(key))

    def _has(self, value: np.uint64) -> bool:
        if int(value) in self._more:
            return True
        for held in (self._values, self._added):
            at = np.searchsorted(held, value)
            if at < len(held) and held[at] == value:
                return True
        return False

    def __len__(self) -> int:
        return len(self._values) + len(self._added) + len(self._more)

    def _all(self) -> np.ndarray:
        more = np.fromiter(self._more, dtype=np.uint64, count=len(self._more))
        if not len(more) and not len(self._added):
            return self._values
        return _distinct(np.concatenate([self._values, self._added, more]))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, KeySet):
            return np.array_equal(self._all(), other._all())
        if isinstance(other, (set, frozenset)):
            return len(self) == len(other) and all(k in self for k in other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def copy(self) -> KeySet:
        """A KeySet with these keys whose additions are its own (the array is shared: a fold
        makes a new one)."""
        twin = KeySet()
        twin._values, twin._added, twin._more = self._values, self._added, set(self._more)
        return twin

    def add(self, key: str) -> None:
        if not key:
            return
        value = _key_value(key)
        if not self._has(value):
            self._more.add(int(value))
            self._fold_if_grown()

    def update(self, keys: Iterable[str]) -> list[str]:
        """add, for many keys at once (their 64 bits made together, as KeySet makes them);
        the keys it held already, in their order."""
        given = [k for k in keys if k]
        if not given:
            return []
        values = _key_values(pa.array(given, pa.string()))
        held = self._holds(values)
        new = _distinct(values[~held])
        # merged in, not sorted again: a copy of what was added, a few ms at its largest
        self._added = np.insert(self._added, np.searchsorted(self._added, new), new)
        self._fold_if_grown()
        return [k for k, h in zip(given, held.tolist(), strict=True) if h]

    def _fold_if_grown(self) -> None:
        """Sort the keys added one by one in with those added many at once past fold_at, and
        those into the array past its fold_share."""
        if len(self._more) > self.fold_at:
            more = np.fromiter(self._more, dtype=np.uint64, count=len(self._more))
            self._added, self._more = _distinct(np.concatenate([self._added, more])), set()
        if len(self._added) > max(self.fold_at, len(self._values) // self.fold_share):
            self._values = _distinct(np.concatenate([self._values, self._added]))
            self._added = self._values[:0]

    def _holds(self, values: np.ndarray) -> np.ndarray:
        """Whether each 64-bit value is in the set."""
        held = np.zeros(len(values), dtype=bool)
        for sorted_values in (self._values, self._added):
            at = np.searchsorted(sorted_values, values)
            inside = at < len(sorted_values)
            held[inside] |= sorted_values[at[inside]] == values[inside]
        if self._more:
            more = np.fromiter(self._more, dtype=np.uint64, count=len(self._more))
            held |= np.isin(values, more)
        return held


def _distinct(values: np.ndarray) -> np.ndarray:
    """The values sorted, each once (np.unique took a hundred times as long here)."""
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


def _key_value(key: str) -> np.uint64:
    """A key's 64 bits (see KeySet)."""
    head = key[:_KEY_DIGITS]
    if len(head) == _KEY_DIGITS and all(c in "0123456789abcdef" for c in head):
        return np.uint64(int(head, 16))
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "big"))


def _key_values(keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The 64 bits of each non-empty key (see KeySet), read from the Arrow buffers with no
    Python object per key when every key is a digest, as the store's are."""
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    keys = keys.cast(pa.string())  # 32-bit offsets, read below
    keys = keys.filter(pc.greater(pc.utf8_length(keys), 0)) if len(keys) else keys
    if not len(keys):
        return np.zeros(0, dtype=np.uint64)
    head = pc.utf8_slice_codeunits(keys, 0, _KEY_DIGITS)
    if pc.all(pc.equal(pc.utf8_length(head), _KEY_DIGITS)).as_py() and not head.null_count:
        offsets = np.frombuffer(head.buffers()[1], dtype=np.int32)[
            head.offset : head.offset + len(head) + 1
        ]
        data = np.frombuffer(head.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
        digits = _HEX[data].reshape(-1, _KEY_DIGITS)
        if not (digits == 255).any():
            values = np.zeros(len(digits), dtype=np.uint64)
            for i in range(_KEY_DIGITS):
                values = (values << np.uint64(4)) | digits[:, i].astype(np.uint64)
            return values
    return np.array([_key_value(k) for k in keys.to_pylist()], dtype=np.uint64)


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


class RangeIds:
    """The ids of a range of the instruction table by the engine's reference of each, held
    as Arrow arrays (a few bytes an id, where a dict of them takes about 150): what a read
    of a wider range keeps for the narrower parts read after it (Instructions.ids_in_range)."""

    def __init__(self, table: pa.Table) -> None:
        if not table.num_rows:  # an empty read may name no columns
            table = pa.table({"ref": pa.array([], pa.int64()), "id": pa.array([], pa.string())})
        table = table.take(pc.sort_indices(table["ref"]))
        self._refs = table["ref"].to_numpy()
        self._ids = table["id"]

    @property
    def end(self) -> int:
        """One past the last reference held; 0 when none is."""
        return int(self._refs[-1]) + 1 if len(self._refs) else 0

    def of(self, lo: int, hi: int) -> dict[int, str]:
        """The ids of the references from `lo` up to `hi`, by reference."""
        start, stop = np.searchsorted(self._refs, [lo, hi])
        refs = self._refs[start:stop].tolist()
        return dict(zip(refs, self._ids[start:stop].to_pylist(), strict=True))


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
    #: the combination space below (graph/combinations.py): a subject's basic and hard
    #: combinations, summed over the subjects below; a session's own basic ones. An exact
    #: integer of any size: the API gives it while it fits int64, and its log10 always
    combination_space: int = 0
    #: distinct combinations asked within that space: all those of the subjects below; for a
    #: session, those asked from it alone
    combinations_used: int = 0

    @property
    def concept_coverage(self) -> float:
        """Fraction of concepts at least one instruction covers."""
        concepts = self.counts.get("concepts", 0)
        return self.covered_concepts / concepts if concepts else 0.0

    @property
    def combination_share(self) -> float:
        """Fraction of the combination space asked about (0 for an empty space)."""
        return combinations.share(self.combinations_used, self.combination_space)


@dataclass
class Scores:
    """The judge's overall scores (1-10) of the pairs below a node: how many have each."""

    histogram: dict[int, int] = field(default_factory=dict)

    @property
    def judged(self) -> int:
        return sum(self.histogram.values())

    @property
    def mean(self) -> float | None:
        """The mean overall score, None when no pair below is judged."""
        n = self.judged
        return sum(s * c for s, c in self.histogram.items()) / n if n else None

    def add(self, score: int, count: int) -> None:
        self.histogram[score] = self.histogram.get(score, 0) + count


@dataclass
class CoverageReport:
    total: CoverageRow
    children: list[CoverageRow]


@dataclass
class ConceptGap:
    """A concept and how many instructions cover it (see Coverage.gaps)."""

    node: Node
    subject: str
    session: str
    instructions: int


@dataclass
class CombinationGap:
    """A subject or session and how much of its combination space was asked about (see
    Coverage.gaps): a subject's basic and hard space, a session's basic one."""

    node: Node
    subject: str  # for a session, its subject's name; for a subject, ""
    space: int
    used: int

    @property
    def share(self) -> float:
        return combinations.share(self.used, self.space)


@dataclass
class Gaps:
    """What is missing under a node: the least covered concepts, subjects with no syllabus,
    and (when asked for) the thinnest combination shares and concepts below a count."""

    path: str  # the node's path as stored ("" for the whole store)
    least_covered: list[ConceptGap]
    subjects_without_syllabus: list[Node]
    #: subjects and sessions with the lowest share of their combination space asked
    thinnest_subjects: list[CombinationGap] = field(default_factory=list)
    thinnest_sessions: list[CombinationGap] = field(default_factory=list)
    #: approved concepts fewer than `min_count` instructions cover (at most the limit), and
    #: how many there are in all
    min_count: int = 0
    below_min: list[ConceptGap] = field(default_factory=list)
    below_min_count: int = 0


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


def kind_by_label(label: str) -> NodeKind:
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


def hierarchy_level(node_id: str) -> int | None:
    """0 (Field) .. 5 (Concept) for the id of a hierarchy node; None for any other kind."""
    kind = kind_of_id(node_id)
    return HIERARCHY.index(kind) if kind in HIERARCHY else None


def display_order(node: Node) -> tuple[int, str]:
    pos = node.props.get("position")
    return (pos if isinstance(pos, int) else 1 << 30, name_key(node.name))
