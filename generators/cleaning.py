"""Cleaning a dataset in place: duplicates and benchmark contamination are marked on the
graph (never deleted) and skipped by export.

- exact duplicates: the same text after normalisation (case, whitespace, punctuation);
- near duplicates: MinHash LSH over word shingles, at a configurable Jaccard threshold;
- contamination: any word n-gram (13 by default, as is usual for decontamination) shared
  with a benchmark question; a benchmark text shorter than n words counts when it appears
  whole.
"""

from __future__ import annotations

import csv
import json
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasketch import MinHash, MinHashLSH

from graph.errors import InvalidInput
from graph.model import INSTRUCTION, RESPONSE, stable_hash
from graph.records import Node
from graph.store import Store

from .reading import iter_details

_WORD = re.compile(r"\w+", re.UNICODE)


def normalize(text: str) -> str:
    """Text as compared for exact duplicates: no case, punctuation or extra spacing."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return " ".join(text.split())


def words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def iter_instructions(store: Store, path: str | None) -> Iterator[Node]:
    """Instructions under an approved path, subject by subject, in a stable order."""
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
    if not 0.0 < threshold <= 1.0:
        raise InvalidInput("the near-duplicate threshold must be in (0, 1]")
    result = DedupResult()
    seen: dict[str, str] = {}
    # LSH only proposes candidates (each is checked against `threshold` below); above ~0.9
    # it cannot form enough bands, so it proposes at 0.9 at most.
    lsh = MinHashLSH(threshold=min(threshold, 0.9), num_perm=num_perm) if near else None
    template = MinHash(num_perm=num_perm, seed=1)
    # the kept instructions' sketch values, which is all a similarity needs
    sketches: dict[str, np.ndarray] = {}
    order: dict[str, int] = {}
    for node in iter_instructions(store, path):
        order[node.id] = result.scanned
        result.scanned += 1
        result.ids.append(node.id)
        text = node.props.get("text") or ""
        key = stable_hash("norm", normalize(text))
        if key in seen:
            result.exact.append((node.id, seen[key]))
            continue
        seen[key] = node.id
        if lsh is None:
            continue
        sketch = _minhash(text, template, shingle)
        # LSH gives candidates; keep only those whose estimated similarity passes (the share
        # of equal values: MinHash.jaccard)
        values = sketch.hashvalues
        matches = [
            c
            for c in lsh.query(sketch)
            if np.count_nonzero(sketches[c] == values) / len(values) >= threshold
        ]
        if matches:
            result.near.append((node.id, min(matches, key=order.__getitem__)))
            continue
        lsh.insert(node.id, sketch)
        sketches[node.id] = values
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


def load_benchmark(file: Path, column: str) -> list[str]:
    """Texts of one column of a JSONL, CSV or Parquet benchmark file."""
    if not file.is_file():
        raise InvalidInput(f"benchmark file {file} does not exist")
    suffix = file.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = _jsonl_rows(file)
    elif suffix == ".csv":
        with file.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(file).to_pylist()
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several unrelated types
            raise InvalidInput(f"{file} is not a readable Parquet file: {exc}") from exc
    else:
        raise InvalidInput(
            f"{file}: unsupported benchmark format {suffix!r} (use .jsonl, .csv or .parquet)"
        )
    if not rows:
        raise InvalidInput(f"benchmark file {file} has no rows")
    columns = sorted({k for r in rows[:100] for k in r})
    if column not in columns:
        raise InvalidInput(
            f"benchmark file {file} has no column {column!r}; its columns: {', '.join(columns)}"
        )
    return [str(r[column]) for r in rows if r.get(column) not in (None, "")]


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
        for size in {self.n, *self.short_lengths}:
            for i in range(len(tokens) - size + 1):
                found |= self.grams.get(tokens[i : i + size], set())
        return found


@dataclass
class ContaminationResult:
    scanned: int = 0
    instructions: dict[str, list[str]] = field(default_factory=dict)  # id -> benchmarks
    responses: dict[str, list[str]] = field(default_factory=dict)


def decontaminate(
    store: Store,
    path: str | None,
    benchmarks: Sequence[tuple[Path, str]],
    *,
    n: int = 13,
) -> ContaminationResult:
    """Mark instructions and responses sharing an n-gram with any benchmark text."""
    if not benchmarks:
        raise InvalidInput("name at least one benchmark file")
    index = NgramIndex(n)
    for file, column in benchmarks:  # all files are read before anything is marked
        for text in load_benchmark(file, column):
            index.add(text, file.name)
    result = ContaminationResult()
    for found in iter_details(store, path, links=False):
        for _, detail in found:
            node = detail.instruction
            result.scanned += 1
            hits = index.hits(node.props.get("text") or "")
            if hits:
                result.instructions[node.id] = sorted(hits)
            for response in detail.responses:
                rhits = index.hits(response.props.get("text") or "")
                if rhits:
                    result.responses[response.id] = sorted(rhits)
    store.nodes.set_property(
        INSTRUCTION, "contaminated", {k: ",".join(v) for k, v in result.instructions.items()}
    )
    store.nodes.set_property(
        RESPONSE, "contaminated", {k: ",".join(v) for k, v in result.responses.items()}
    )
    return result
