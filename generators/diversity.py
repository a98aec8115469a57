"""How varied the questions under a path are, and which benchmarks they overlap by
discipline: what the report shows beside its counts, from one walk of the instructions.

Every figure is cheap and deterministic, with no embedding model:
- distinct-1 and distinct-2: distinct words and distinct pairs of adjacent words over all
  the questions, each divided by how many there are in all (counted exactly up to
  EXACT_LIMIT distinct items, then by a HyperLogLog++ sketch, which the figures say);
- the near-duplicate rate: the share of questions that repeat an earlier one exactly or
  nearly (MinHash, as `glan dedup` finds them, at its default threshold) among all the
  questions ("before dedup"), and among those dedup left unmarked ("after dedup");
- questions per concept (min, median, max over every concept under the path, uncovered
  ones as 0), the share of concepts used and the concept combinations used;
- the contamination matrix: per discipline and benchmark split, the instructions whose
  question or answer overlaps it (as decontamination recorded it) and their share.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from graph.filters import InstructionFilter
from graph.records import CoverageRow
from graph.store import Store

from .cleaning import DuplicateFinder, marks_of, words
from .reading import iter_details

#: Distinct n-grams held exactly, per n; past it they are counted by a sketch (~1% error).
EXACT_LIMIT = 1_000_000


class DistinctCounter:
    """How many distinct items among all those added, and how many were added."""

    def __init__(self, limit: int = EXACT_LIMIT) -> None:
        self.limit = limit
        self.total = 0
        self.exact: set[str] | None = set()
        self.sketch: Any = None

    def add(self, items: Iterable[str]) -> None:
        items = list(items)
        self.total += len(items)
        if self.exact is not None:
            self.exact.update(items)
            if len(self.exact) <= self.limit:
                return
            from datasketch import HyperLogLogPlusPlus

            self.sketch = HyperLogLogPlusPlus(p=14)
            items, self.exact = list(self.exact), None
        for item in items:
            self.sketch.update(item.encode())

    @property
    def approximate(self) -> bool:
        return self.exact is None

    @property
    def distinct(self) -> int:
        return len(self.exact) if self.exact is not None else round(self.sketch.count())

    @property
    def ratio(self) -> float:
        return round(min(self.distinct, self.total) / self.total, 4) if self.total else 0.0


@dataclass
class Diversity:
    questions: int = 0
    distinct_1: float = 0.0
    distinct_2: float = 0.0
    #: distinct n-grams past EXACT_LIMIT, counted by a sketch
    distinct_approximate: bool = False
    near_duplicate_rate_before: float = 0.0
    near_duplicate_rate_after: float = 0.0
    #: min, median and max questions per concept under the path (uncovered concepts: 0)
    questions_per_concept: dict[str, float] = field(default_factory=dict)
    concept_share: float = 0.0
    #: distinct concept combinations the questions were written for (combo_key)
    combinations_used: int = 0
    #: the combinations the sampler can draw under the path, where the store counts them
    combination_space: int | None = None
    combination_share: float | None = None


@dataclass
class ContaminationMatrix:
    #: benchmark splits (`name:split`) with at least one overlap, sorted
    benchmarks: list[str] = field(default_factory=list)
    #: per discipline: {"discipline", "instructions", "counts": {source: n}, "shares"}
    rows: list[dict[str, Any]] = field(default_factory=list)
    #: the same over the whole path, each instruction once
    total: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def combination_space(total: CoverageRow) -> int | None:
    """The number of concept combinations sampling can draw under the path: the coverage
    row's figure where the store computes one (graph/combinations.py), else None."""
    space = getattr(total, "combination_space", None)
    return int(space) if space else None


def per_concept(counts: Counter[str], concepts: int) -> dict[str, float]:
    """min, median and max of questions per concept, over `concepts` concepts of which
    those not in `counts` have none."""
    zeros = max(0, concepts - len(counts))
    values = [0] * zeros + sorted(counts.values())
    if not values:
        return {"min": 0, "median": 0, "max": 0}
    return {"min": values[0], "median": statistics.median(values), "max": values[-1]}


def _share(count: int, of: int) -> float:
    return round(count / of, 4) if of else 0.0


def measure(
    store: Store, path: str | None, total: CoverageRow, *, threshold: float = 0.8
) -> tuple[Diversity, ContaminationMatrix]:
    """Diversity and the contamination matrix under an approved path (one walk); `total`
    is the path's coverage row (its concepts and covered concepts)."""
    scope = store.taxonomy.scope(path)
    unigrams, bigrams = DistinctCounter(), DistinctCounter()
    before = DuplicateFinder(threshold=threshold)
    # "after dedup" differs from "before" only where dedup marked something
    marked = store.instructions.count(scope, InstructionFilter(duplicate=True)) > 0
    after = DuplicateFinder(threshold=threshold) if marked else None
    repeats_before = repeats_after = unmarked = 0
    concept_uses: Counter[str] = Counter()
    combos: set[str] = set()
    by_subject: dict[str, Counter[str]] = {}
    subject_instructions: Counter[str] = Counter()
    overall: Counter[str] = Counter()
    div = Diversity()
    for found in iter_details(store, path, responses=False):
        for subject, detail in found:
            node = detail.instruction
            # an instruction is asked from the sessions of one subject: met once
            sources = {m.source for m in marks_of(node.props)}
            subject_instructions[subject] += 1
            if sources:
                by_subject.setdefault(subject, Counter()).update(sources)
            overall.update(sources)
            div.questions += 1
            text = node.props.get("text") or ""
            tokens = words(text)
            unigrams.add(tokens)
            bigrams.add(f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False))
            repeats_before += before.add(node.id, text) is not None
            if after is not None and not node.props.get("duplicate"):
                unmarked += 1
                repeats_after += after.add(node.id, text) is not None
            concept_uses.update({c for c, _, _ in detail.concepts})
            if key := node.props.get("combo_key"):
                combos.add(key)
    div.distinct_1, div.distinct_2 = unigrams.ratio, bigrams.ratio
    div.distinct_approximate = unigrams.approximate or bigrams.approximate
    div.near_duplicate_rate_before = _share(repeats_before, div.questions)
    div.near_duplicate_rate_after = (
        _share(repeats_after, unmarked) if after is not None else div.near_duplicate_rate_before
    )
    concepts = total.counts.get("concepts", 0)
    div.questions_per_concept = per_concept(concept_uses, concepts)
    div.concept_share = _share(len(concept_uses), concepts)
    div.combinations_used = len(combos)
    div.combination_space = combination_space(total)
    if div.combination_space:
        div.combination_share = _share(div.combinations_used, div.combination_space)

    matrix = ContaminationMatrix(benchmarks=sorted(overall))
    within = scope.path if scope is not None and scope.path else ""
    rows: dict[str, tuple[int, Counter[str]]] = {}
    paths = store.instructions.discipline_paths(list(subject_instructions))
    for subject, n in subject_instructions.items():
        for discipline in paths.get(subject, []):
            if within and not (
                discipline.startswith(within + "/")
                or discipline == within
                or within.startswith(discipline + "/")
            ):
                continue  # a shared subject's other discipline, outside the path
            held, counts = rows.get(discipline, (0, Counter()))
            rows[discipline] = (held + n, counts + by_subject.get(subject, Counter()))
    for discipline, (n, counts) in sorted(rows.items()):
        matrix.rows.append(_matrix_row(n, counts, discipline=discipline))
    matrix.total = _matrix_row(div.questions, overall)
    return div, matrix


def _matrix_row(n: int, counts: Counter[str], **label: str) -> dict[str, Any]:
    return {
        **label,
        "instructions": n,
        "counts": dict(sorted(counts.items())),
        "shares": {s: _share(c, n) for s, c in sorted(counts.items())},
    }
