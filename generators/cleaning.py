"""Cleaning a dataset in place: duplicates and benchmark contamination are marked on the
graph (never deleted) and skipped by export.

- exact duplicates: the same text after normalisation (case, whitespace, punctuation);
- near duplicates: MinHash LSH over word shingles, at a configurable Jaccard threshold;
- contamination: a pair whose question or answer holds a benchmark question whole
  (normalised containment, as the GLAN paper did it), or shares a word n-gram with one (13
  by default, as is usual for decontamination; a benchmark text shorter than n words counts
  when it appears whole). Benchmarks are read from files or saved datasets, by split.
"""

from __future__ import annotations

import csv
import functools
import json
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from graph.errors import InvalidInput
from graph.model import INSTRUCTION, RESPONSE, TURN, stable_hash
from graph.records import Node
from graph.store import Store

from .reading import iter_details

if TYPE_CHECKING:  # datasketch takes half a second to import: only dedup needs it
    from datasketch import MinHash

_WORD = re.compile(r"\w+", re.UNICODE)


@functools.cache
def _punctuation() -> dict[int, str]:
    """Every punctuation character (Unicode category P*) mapped to a space: one
    str.translate does what a test of each character's category did, 17 times faster."""
    return {
        c: " " for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)).startswith("P")
    }


def normalize(text: str) -> str:
    """Text as compared for exact duplicates and benchmark containment: no case,
    punctuation or extra spacing (words joined by single spaces)."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_punctuation())
    return " ".join(text.split())


def words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def iter_instructions(store: Store, path: str | None) -> Iterator[Node]:
    """Instructions under an approved path, in a stable order (`iter_details`)."""
    for found in iter_details(store, path, links=False, responses=False):
        yield from (detail.instruction for _, detail in found)


@dataclass
class DedupResult:
    scanned: int = 0
    ids: list[str] = field(default_factory=list)
    exact: list[tuple[str, str]] = field(default_factory=list)  # (duplicate, kept)
    near: list[tuple[str, str]] = field(default_factory=list)


def _minhash(text: str, template: MinHash, shingle: int) -> MinHash:
    """The sketch of a text's word shingles.

    Every sketch shares the template's permutations: made anew for each, they took most of
    the time of a near-duplicate pass and 1 kB of memory per instruction kept."""
    tokens = words(text)
    from datasketch import MinHash

    grams = {" ".join(tokens[i : i + shingle]) for i in range(max(1, len(tokens) - shingle + 1))}
    m = MinHash(
        num_perm=len(template.hashvalues),
        seed=template.seed,
        permutations=template.permutations,
        scheme=template.scheme,
    )
    for g in grams:
        m.update(g.encode())
    return m


class DuplicateFinder:
    """Exact and near duplicates among texts given one at a time: the first text met is
    kept, and each later one is checked against those kept."""

    def __init__(
        self, *, near: bool = True, threshold: float = 0.8, num_perm: int = 128, shingle: int = 3
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise InvalidInput("the near-duplicate threshold must be in (0, 1]")
        from datasketch import MinHash, MinHashLSH

        self.threshold = threshold
        self.shingle = shingle
        self.seen: dict[str, str] = {}
        # LSH only proposes candidates (each is checked against `threshold` below); above
        # ~0.9 it cannot form enough bands, so it proposes at 0.9 at most.
        self.lsh = MinHashLSH(threshold=min(threshold, 0.9), num_perm=num_perm) if near else None
        self.template = MinHash(num_perm=num_perm, seed=1)
        # the kept texts' sketch values, which is all a similarity needs
        self.sketches: dict[str, np.ndarray] = {}
        self.order: dict[str, int] = {}

    def add(self, key: str, text: str) -> tuple[str, str] | None:
        """("exact" or "near", the kept key it repeats), or None when `text` is kept."""
        self.order[key] = len(self.order)
        norm = stable_hash("norm", normalize(text))
        if norm in self.seen:
            return "exact", self.seen[norm]
        self.seen[norm] = key
        if self.lsh is None:
            return None
        sketch = _minhash(text, self.template, self.shingle)
        # LSH gives candidates; keep only those whose estimated similarity passes (the
        # share of equal values: MinHash.jaccard)
        values = sketch.hashvalues
        matches = [
            c
            for c in self.lsh.query(sketch)
            if np.count_nonzero(self.sketches[c] == values) / len(values) >= self.threshold
        ]
        if matches:
            return "near", min(matches, key=self.order.__getitem__)
        self.lsh.insert(key, sketch)
        # the values fit 32 bits (MinHash keeps them below 2**32): half the memory
        self.sketches[key] = values.astype(np.uint32)
        return None


def find_duplicates(
    store: Store,
    path: str | None,
    *,
    near: bool = True,
    threshold: float = 0.8,
    num_perm: int = 128,
    shingle: int = 3,
) -> DedupResult:
    """Exact and near duplicates; the first instruction met (in stable order) is kept."""
    finder = DuplicateFinder(near=near, threshold=threshold, num_perm=num_perm, shingle=shingle)
    result = DedupResult()
    for node in iter_instructions(store, path):
        result.scanned += 1
        result.ids.append(node.id)
        found = finder.add(node.id, node.props.get("text") or "")
        if found is not None:
            how, kept = found
            (result.exact if how == "exact" else result.near).append((node.id, kept))
    return result


def dedup(store: Store, path: str | None, **options: float | int | bool) -> DedupResult:
    """Find duplicates under a path and mark them, replacing earlier marks there."""
    result = find_duplicates(store, path, **options)  # type: ignore[arg-type]
    store.instructions.clear_duplicates(result.ids)
    store.instructions.mark_duplicates(
        [(d, k, "exact") for d, k in result.exact] + [(d, k, "near") for d, k in result.near]
    )
    return result


# ---------------------------------------------------------------------- decontamination
#
# A benchmark is read from a JSONL, CSV or Parquet file, or from a directory a `datasets`
# object was saved to, and named `name:split`. Two checks mark what overlaps it:
# - containment, as the GLAN paper did it: the pair's question or answer holds a benchmark
#   text whole, both compared after `normalize`, at word boundaries;
# - word n-grams (13 by default): any n words in a row shared with a benchmark text, or the
#   whole of a benchmark text shorter than n words.
# Marks are kept on the graph, never deleting: an instruction's `contaminated` flag (the
# benchmarks its question overlaps, `name:split,...`; export leaves it out), a response's
# `contaminated` flag (the same for its text; export leaves that pair out), and the
# instruction's `contamination` record, a JSON list of every overlap of the question or
# its answers: [{"benchmark", "split", "side" (question | answer), "method"}].

#: columns tried in turn for a benchmark's text when none is named
TEXT_FIELDS = ("question", "prompt", "problem", "input", "text")
#: words in a benchmark file's name that say which split it holds (`mmlu_test.jsonl`)
SPLIT_WORDS = ("train", "test", "validation", "valid", "val", "dev")
#: the split of a file that names none
DEFAULT_SPLIT = "test"
METHODS = ("both", "containment", "ngram")
#: benchmark texts shorter than this (in words) are left out of containment: a whole
#: benchmark "question" of a few words ("Which of these is true?") is in many good ones
MIN_WORDS = 5
_NAME = re.compile(r"^[^,:]+$")


@dataclass(frozen=True)
class BenchmarkSpec:
    """A benchmark to read: `[NAME=]PATH[:SPLIT]`.

    PATH is a .jsonl, .csv or .parquet file, or a directory a `datasets` Dataset or
    DatasetDict was saved to (`load_from_disk`). SPLIT is the split to read from a saved
    DatasetDict (all of them when not given), and the split a file or a saved Dataset is
    recorded as (when not given: a split word in the file's name, as in `mmlu_test.jsonl`,
    else the dataset's own split, else `test`). NAME defaults to the file's name without
    its split word (`mmlu`), or the directory's name."""

    path: Path
    split: str | None = None
    name: str | None = None

    @classmethod
    def parse(cls, spec: str) -> BenchmarkSpec:
        """A spec as the command line gives it; a path that exists as written is whole."""
        if Path(spec).exists():
            return cls(Path(spec))
        name = None
        head, eq, rest = spec.partition("=")
        if eq and head and "/" not in head:
            name, spec = head, rest
        split = None
        base, colon, tail = spec.rpartition(":")
        if colon and base and "/" not in tail and not Path(spec).exists():
            spec, split = base, tail
        if not spec:
            raise InvalidInput(f"benchmark {spec!r}: give it as [NAME=]PATH[:SPLIT]")
        return cls(Path(spec), split, name).checked()

    def checked(self) -> BenchmarkSpec:
        for what, value in (("name", self.name), ("split", self.split)):
            if value is not None and not _NAME.match(value):
                raise InvalidInput(
                    f"benchmark {what} {value!r} must be non-empty, without ',' or ':'"
                )
        return self


@dataclass
class Benchmark:
    """The texts of one split of a benchmark, as checked against."""

    name: str
    split: str
    texts: list[str]
    field: str = ""
    read_from: str = ""

    @property
    def source(self) -> str:
        """How marks name it: `name:split`."""
        return f"{self.name}:{self.split}"


def load_benchmark(file: Path, column: str) -> list[str]:
    """Texts of one column of a JSONL, CSV or Parquet benchmark file."""
    return _file_texts(file, column)[0]


def load_benchmarks(specs: Sequence[BenchmarkSpec], field: str | None = None) -> list[Benchmark]:
    """Every benchmark split the specs name, each file read whole before anything else is
    done (a bad one stops all); splits named alike (shards of one split) are merged. The
    text of each row is in `field`, or else in the first of TEXT_FIELDS the data has."""
    merged: dict[str, Benchmark] = {}
    for spec in specs:
        for bench in _load(spec.checked(), field):
            if bench.source in merged:
                merged[bench.source].texts += bench.texts
            else:
                merged[bench.source] = bench
    return list(merged.values())


def _load(spec: BenchmarkSpec, field: str | None) -> list[Benchmark]:
    path = spec.path
    if path.is_dir():
        return _load_saved(spec, field)
    name, split = _name_and_split(path, spec)
    texts, used = _file_texts(path, field)
    return [Benchmark(name, split, texts, used, str(path))]


def _name_and_split(path: Path, spec: BenchmarkSpec) -> tuple[str, str]:
    """A file's benchmark name and split: as given, else read from its name."""
    parts = [p for p in re.split(r"[-_.\s]+", path.stem) if p]
    at = next((i for i, p in enumerate(parts) if p.casefold() in SPLIT_WORDS), None)
    split = spec.split or (parts[at].casefold() if at is not None else DEFAULT_SPLIT)
    if spec.name:
        name = spec.name
    elif at is None:
        name = path.stem
    elif at == 0:  # `test.jsonl`, `test-00000-of-00001.parquet`: the folder names it
        name = path.parent.resolve().name or path.stem
    else:
        name = "_".join(parts[:at])
    name = name.replace(",", " ").replace(":", " ")
    BenchmarkSpec(path, split, name).checked()
    return name, split


def _load_saved(spec: BenchmarkSpec, field: str | None) -> list[Benchmark]:
    """The splits of a directory a `datasets` object was saved to."""
    import datasets

    path = spec.path
    try:
        saved = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as exc:
        raise InvalidInput(
            f"benchmark {path} is a directory but not a saved dataset (datasets.save_to_disk): "
            f"{exc}"
        ) from exc
    name = spec.name or path.resolve().name
    if isinstance(saved, datasets.DatasetDict):
        if spec.split is not None and spec.split not in saved:
            raise InvalidInput(
                f"benchmark {path} has no split {spec.split!r}; its splits: {', '.join(saved)}"
            )
        splits = [spec.split] if spec.split is not None else list(saved)
        parts = [(s, saved[s]) for s in splits]
    else:
        own = str(saved.split) if saved.split is not None else None
        parts = [(spec.split or own or DEFAULT_SPLIT, saved)]
    out = []
    for split, data in parts:
        where = f"benchmark {path} split {split}"
        used = _pick_field(list(data.column_names), field, where)
        texts = [str(v) for v in data[used] if v not in (None, "")]
        out.append(Benchmark(name, split, texts, used, f"{path}:{split}"))
    return out


def _pick_field(columns: Sequence[str], field: str | None, where: str) -> str:
    if field is not None:
        if field not in columns:
            raise InvalidInput(
                f"{where} has no column {field!r}; its columns: {', '.join(sorted(columns))}"
            )
        return field
    for name in TEXT_FIELDS:
        if name in columns:
            return name
    raise InvalidInput(
        f"{where} has none of the columns {', '.join(TEXT_FIELDS)}; name the one holding the "
        f"text with --field. Its columns: {', '.join(sorted(columns))}"
    )


def _file_texts(file: Path, field: str | None) -> tuple[list[str], str]:
    """The texts of a JSONL, CSV or Parquet file, and the column they were read from."""
    if not file.is_file():
        raise InvalidInput(f"benchmark file {file} does not exist")
    where = f"benchmark file {file}"
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            columns = pq.read_schema(file).names
            used = _pick_field(columns, field, where)
            values = pq.read_table(file, columns=[used]).column(0).to_pylist()
        except InvalidInput:
            raise
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several unrelated types
            raise InvalidInput(f"{file} is not a readable Parquet file: {exc}") from exc
        if not values:
            raise InvalidInput(f"{where} has no rows")
        return [str(v) for v in values if v not in (None, "")], used
    rows: list[dict[str, object]]
    if suffix in (".jsonl", ".json"):
        rows = _jsonl_rows(file)
    elif suffix == ".csv":
        with file.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        raise InvalidInput(
            f"{file}: unsupported benchmark format {suffix!r} (use .jsonl, .csv or .parquet, "
            "or a directory saved by datasets)"
        )
    if not rows:
        raise InvalidInput(f"{where} has no rows")
    used = _pick_field(sorted({k for r in rows[:100] for k in r}), field, where)
    return [str(r[used]) for r in rows if r.get(used) not in (None, "")], used


def _jsonl_rows(file: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    with file.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"{file} line {n} is not JSON: {exc.msg}") from exc
            if not isinstance(row, dict):
                raise InvalidInput(f"{file} line {n} is not a JSON object")
            rows.append(row)
    return rows


class NgramIndex:
    """Word n-grams of benchmark texts, and the whole of texts shorter than n."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise InvalidInput("n must be at least 1")
        self.n = n
        self.grams: dict[tuple[str, ...], set[str]] = {}
        self.short_lengths: set[int] = set()

    def add(self, text: str, source: str) -> None:
        tokens = tuple(words(text))
        if not tokens:
            return
        size = min(self.n, len(tokens))
        if size < self.n:
            self.short_lengths.add(size)
        for i in range(len(tokens) - size + 1):
            self.grams.setdefault(tokens[i : i + size], set()).add(source)

    def hits(self, text: str) -> set[str]:
        tokens = tuple(words(text))
        found: set[str] = set()
        grams = self.grams
        for size in {self.n, *self.short_lengths}:
            for i in range(len(tokens) - size + 1):
                if (sources := grams.get(tokens[i : i + size])) is not None:
                    found |= sources
        return found


class ContainmentIndex:
    """Normalised benchmark texts, found where one lies whole inside another normalised text
    (at word boundaries).

    A substring search per benchmark text costs n benchmark texts x m texts. Instead each
    benchmark text is anchored by a run of `anchor` words around its rarest word; a text to
    check is cut into its own runs of that length, a set whose intersection with the set of
    anchors is nearly always empty, and only an anchor found is checked in place against the
    benchmark texts it anchors. One pass over each text, whatever the number of benchmark
    texts (bench/decontamination.py measures it)."""

    def __init__(self, min_words: int = MIN_WORDS, anchor: int = 4) -> None:
        if min_words < 1:
            raise InvalidInput("min_words must be at least 1")
        self.min_words = min_words
        self.k = min(anchor, min_words)
        self.texts: dict[tuple[str, ...], set[str]] = {}
        self.short = 0  # texts added that were too short
        self._anchors: dict[tuple[str, ...], list[tuple[int, tuple[str, ...], frozenset[str]]]]
        self._anchors = {}
        self._keys: frozenset[tuple[str, ...]] | None = None

    def add(self, text: str, source: str) -> bool:
        """Index a benchmark text; False when it is shorter than min_words (left out)."""
        tokens = tuple(normalize(text).split())
        if len(tokens) < self.min_words:
            self.short += 1
            return False
        self.texts.setdefault(tokens, set()).add(source)
        self._keys = None
        return True

    def _build(self) -> frozenset[tuple[str, ...]]:
        k = self.k
        freq: Counter[str] = Counter()
        for tokens in self.texts:
            freq.update(set(tokens))
        anchors: dict[tuple[str, ...], list[tuple[int, tuple[str, ...], frozenset[str]]]] = {}
        for tokens, sources in self.texts.items():
            rare = min(range(len(tokens)), key=lambda i: freq[tokens[i]])
            at = max(0, min(rare - k // 2, len(tokens) - k))
            anchors.setdefault(tokens[at : at + k], []).append((at, tokens, frozenset(sources)))
        self._anchors = anchors
        self._keys = frozenset(anchors)
        return self._keys

    def hits(self, text: str) -> set[str]:
        """The sources of the benchmark texts that `text` holds whole."""
        keys = self._keys if self._keys is not None else self._build()
        tokens = tuple(normalize(text).split())
        k = self.k
        ends = len(tokens) - k + 1
        if len(tokens) < self.min_words or not keys:
            return set()
        common = {tokens[i : i + k] for i in range(ends)} & keys
        found: set[str] = set()
        if not common:
            return found
        for i in range(ends):
            run = tokens[i : i + k]
            if run not in common:
                continue
            for offset, whole, sources in self._anchors[run]:
                start = i - offset
                if start >= 0 and tokens[start : start + len(whole)] == whole:
                    found |= sources
        return found


@dataclass(frozen=True, order=True)
class Mark:
    """One overlap recorded on an instruction."""

    benchmark: str
    split: str
    side: str  # question | answer | followup | followup_answer (a conversation's turn)
    method: str  # containment | ngram ("" for a mark older than the record)

    @property
    def source(self) -> str:
        return f"{self.benchmark}:{self.split}" if self.split else self.benchmark


def marks_of(props: Mapping[str, Any]) -> list[Mark]:
    """The overlaps an instruction records (`contamination`); for one marked before the
    record was kept, what its `contaminated` flag says (its question side)."""
    raw = props.get("contamination")
    if raw:
        try:
            return sorted({Mark(**m) for m in json.loads(raw)})
        except (ValueError, TypeError):
            pass  # not a record this module wrote: read the flag instead
    flag = props.get("contaminated") or ""
    out = set()
    for source in filter(None, flag.split(",")):
        bench, _, split = source.partition(":")
        out.add(Mark(bench, split, "question", ""))
    return sorted(out)


def _record(marks: Iterable[Mark]) -> str | None:
    found = sorted(set(marks))
    return json.dumps([asdict(m) for m in found]) if found else None


def _flag(old: str | None, checked: Set[str], new: Iterable[str]) -> str | None:
    """A flag's sources: those from benchmarks not checked now, and those found now."""
    kept = {s for s in (old or "").split(",") if s and s not in checked}
    joined = ",".join(sorted(kept | set(new)))
    return joined or None


@dataclass
class ContaminationResult:
    scanned: int = 0
    #: instruction id -> the benchmarks (`name:split`) its question overlaps
    instructions: dict[str, list[str]] = field(default_factory=dict)
    #: response id -> the benchmarks its text overlaps
    responses: dict[str, list[str]] = field(default_factory=dict)
    #: instruction id -> every overlap found now, question and answer side
    marks: dict[str, list[Mark]] = field(default_factory=dict)
    #: `name:split` -> its texts read
    benchmarks: dict[str, int] = field(default_factory=dict)
    #: benchmark texts left out of containment as shorter than min_words
    short: int = 0


def decontaminate(
    store: Store,
    path: str | None,
    benchmarks: Sequence[Benchmark | tuple[Path, str]],
    *,
    n: int = 13,
    method: str = "both",
    min_words: int = MIN_WORDS,
) -> ContaminationResult:
    """Mark the instructions and responses under a path that overlap a benchmark (by
    containment, by n-grams, or both), replacing the marks an earlier run left for the
    same benchmarks and keeping those of others. Nothing is deleted.

    `benchmarks`: as load_benchmarks reads them; a (file, column) pair reads that file,
    named by its whole name (`benchmark.jsonl:test`)."""
    if not benchmarks:
        raise InvalidInput("name at least one benchmark file")
    if method not in METHODS:
        raise InvalidInput(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    loaded: list[Benchmark] = []
    for b in benchmarks:  # all files are read before anything is marked
        if isinstance(b, Benchmark):
            loaded.append(b)
        else:  # a file and its column, named by the file's whole name
            loaded += load_benchmarks([BenchmarkSpec(b[0], name=b[0].name)], b[1])
    checks: list[tuple[str, NgramIndex | ContainmentIndex]] = []
    if method in ("both", "containment"):
        checks.append(("containment", ContainmentIndex(min_words)))
    if method in ("both", "ngram"):
        checks.append(("ngram", NgramIndex(n)))
    result = ContaminationResult()
    for bench in loaded:
        result.benchmarks[bench.source] = result.benchmarks.get(bench.source, 0) + len(bench.texts)
        for text in bench.texts:
            for _, index in checks:
                index.add(text, bench.source)
    result.short = sum(i.short for _, i in checks if isinstance(i, ContainmentIndex))
    checked = set(result.benchmarks)
    by_source = {b.source: b for b in loaded}

    def overlaps(text: str, side: str) -> list[Mark]:
        found = []
        for how, index in checks:
            for source in index.hits(text):
                b = by_source[source]
                found.append(Mark(b.name, b.split, side, how))
        return found

    flags: dict[str, str | None] = {}
    records: dict[str, str | None] = {}
    response_flags: dict[str, str | None] = {}
    has_turns = store.nodes.count_kind(TURN) > 0  # a store with no conversations reads none
    for found in iter_details(store, path, links=False):
        answered = [r.id for _, d in found for r in d.responses]
        turns = store.turns.of(answered) if has_turns and answered else {}
        for _, detail in found:
            node = detail.instruction
            result.scanned += 1
            marks = overlaps(node.props.get("text") or "", "question")
            question = sorted({m.source for m in marks})
            if question:
                result.instructions[node.id] = question
            flag = _flag(node.props.get("contaminated"), checked, question)
            if flag != (node.props.get("contaminated") or None):
                flags[node.id] = flag
            for response in detail.responses:
                answer = overlaps(response.props.get("text") or "", "answer")
                # a conversation going on from the pair is the pair's: its follow-up
                # questions and their answers mark the response (and export leaves it out)
                for turn in turns.get(response.id, []):
                    answer += overlaps(turn.props.get("text") or "", "followup")
                    answer += overlaps(turn.props.get("answer") or "", "followup_answer")
                sources = sorted({m.source for m in answer})
                if sources:
                    result.responses[response.id] = sources
                marks += answer
                rflag = _flag(response.props.get("contaminated"), checked, sources)
                if rflag != (response.props.get("contaminated") or None):
                    response_flags[response.id] = rflag
            if marks:
                result.marks[node.id] = sorted(set(marks))
            old = node.props.get("contamination") or None
            kept = [m for m in marks_of({"contamination": old}) if m.source not in checked]
            record = _record(kept + marks) if old else _record(marks)
            if record != old:
                records[node.id] = record
    store.nodes.set_property(INSTRUCTION, "contaminated", flags)
    store.nodes.set_property(INSTRUCTION, "contamination", records)
    store.nodes.set_property(RESPONSE, "contaminated", response_flags)
    return result


def contamination_counts(store: Store, scope: Node | None) -> dict[tuple[str, str], int]:
    """(benchmark, split) -> instructions under a scope that overlap it (question or answer
    side): one grouped read of the contaminated instructions only."""
    counts: Counter[tuple[str, str]] = Counter()
    for record, flag, n in store.instructions.contamination_marks(scope):
        for key in {
            (m.benchmark, m.split)
            for m in marks_of({"contamination": record, "contaminated": flag})
        }:
            counts[key] += n
    return dict(counts)
