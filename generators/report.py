"""A quality report of the dataset under a path: what there is, what export keeps, why the
rest is left out, and where coverage is thin or thick."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from graph.combinations import log10 as combination_log10
from graph.model import DISCIPLINE, HIERARCHY, SESSION
from graph.records import Node, Scores
from graph.store import Store

from .cleaning import iter_instructions
from .cost import PriceTable, job_cost, job_model, load_prices
from .diversity import measure
from .export import Skipped, iter_pairs
from .validators import RULE_NAMES, rule_of


@dataclass
class Report:
    path: str
    instructions: int = 0
    pairs_total: int = 0
    exported: int = 0
    duplicates_exact: int = 0
    duplicates_near: int = 0
    contaminated_instructions: int = 0
    unanswered: int = 0
    failed_units: dict[str, int] = field(default_factory=dict)  # "stage: reason" -> count
    answer_length: dict[str, float] = field(default_factory=dict)  # characters
    concepts: int = 0
    covered_concepts: int = 0
    concept_coverage: float = 0.0
    combinations: int = 0
    #: the combination space under the path (graph/combinations.py), exact whatever its
    #: size, its log10, and the share of it asked about
    combination_space: int = 0
    combination_space_log10: float | None = None
    combination_share: float = 0.0
    #: the subjects with the lowest combination share: path, space, used, share
    least_combined: list[dict[str, Any]] = field(default_factory=list)
    most_covered: list[dict[str, Any]] = field(default_factory=list)
    least_covered: list[dict[str, Any]] = field(default_factory=list)
    #: distinct-n, near-duplicate rates, questions per concept (generators/diversity.py)
    diversity: dict[str, Any] = field(default_factory=dict)
    #: instructions overlapping each benchmark split, per discipline and in all
    contamination: dict[str, Any] = field(default_factory=dict)
    #: the jobs under the path: stage, scope, status, model, tokens, estimated cost
    jobs: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: the jobs' cost at the price table's prices, over those whose model has a price
    estimated_cost_usd: float = 0.0
    #: jobs that spent tokens on a model with no price: their cost is not in the sum
    unpriced_jobs: int = 0
    #: failed units a validator rejected, by rule (generators/validators.py; every rule)
    validator_rejections: dict[str, int] = field(default_factory=dict)
    #: items (a concept, a subject...) validators left out of outputs otherwise kept, by rule
    validator_drops: dict[str, int] = field(default_factory=dict)
    #: the judge's overall scores under the path: judged, mean, histogram {score: pairs}
    scores: dict[str, Any] = field(default_factory=dict)
    #: the same per discipline (when the path is above disciplines), lowest mean first
    scores_by_discipline: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _reason(error: str | None) -> str:
    """A failure reason without its specifics, so that alike failures group together."""
    text = (error or "unknown").split(":")[0]
    return text[:80]


def length_summary(lengths: Sequence[int]) -> dict[str, float]:
    """min, median, p90, max and mean of some lengths (at least one).

    The p90 interpolates between the lengths seen ("inclusive" quantiles), so that
    min <= median <= p90 <= max always holds: the default method extrapolates past the
    largest length when there are few of them, and reported a p90 above the max."""
    qs = statistics.quantiles(lengths, n=10, method="inclusive") if len(lengths) > 1 else []
    return {
        "min": min(lengths),
        "median": statistics.median(lengths),
        "p90": qs[8] if qs else lengths[0],
        "max": max(lengths),
        "mean": round(statistics.fmean(lengths), 1),
    }


def _add_job(report: Report, job: dict[str, Any], prices: PriceTable) -> None:
    """A job's line in the report, and its tokens and cost in the totals."""
    spent = (int(job.get("prompt_tokens") or 0), int(job.get("completion_tokens") or 0))
    cost = job_cost(job, prices)
    report.jobs.append(
        {
            "id": job["id"],
            "stage": job.get("kind"),
            "scope": job.get("scope") or "",
            "status": job.get("status"),
            "model": job_model(job),
            "prompt_tokens": spent[0],
            "completion_tokens": spent[1],
            "estimated_cost_usd": cost,
        }
    )
    report.prompt_tokens += spent[0]
    report.completion_tokens += spent[1]
    if cost is not None:
        report.estimated_cost_usd += cost
    elif sum(spent):
        report.unpriced_jobs += 1


def _drops(store: Store, scope_path: str) -> dict[str, int]:
    """Items the validators left out of the outputs of the jobs under the path, by rule."""
    in_scope = {
        j["id"]
        for j in store.jobs.all()
        if (j.get("scope") or "").casefold().startswith(scope_path.casefold())
    }
    counted: Counter[str] = Counter()
    for job, notes in store.jobs.dropped():
        if job in in_scope:
            counted.update(r for line in notes.splitlines() if (r := rule_of(line)))
    return {r: counted[r] for r in RULE_NAMES}


def _score_row(s: Scores) -> dict[str, Any]:
    mean = s.mean
    return {
        "judged": s.judged,
        "mean": round(mean, 2) if mean is not None else None,
        "histogram": {k: s.histogram.get(k, 0) for k in range(1, 11)},
    }


def _add_scores(report: Report, store: Store, scope: Node | None) -> None:
    """The judge's scores under the scope, and per discipline below it: one grouped read
    each (Instructions.scores)."""
    if scope is not None and scope.level > HIERARCHY.index(SESSION):
        return
    report.scores = _score_row(store.instructions.scores(scope).get("", Scores()))
    level = HIERARCHY.index(DISCIPLINE)
    if scope is not None and scope.level >= level:
        return
    found = store.instructions.scores(scope, level)
    names = store.nodes.get_many(sorted(found))
    rows = [
        {"discipline": names[i].props.get("path") or names[i].name, **_score_row(s)}
        for i, s in found.items()
        if i in names
    ]
    rows.sort(key=lambda r: (r["mean"], r["discipline"]))
    report.scores_by_discipline = rows


def least_combined(store: Store, path: str | None, top: int) -> list[dict[str, Any]]:
    """The `top` subjects under the path with the lowest share of their combination space
    asked about (from their rollups)."""
    found = store.coverage.gaps(path, top, thinnest=True).thinnest_subjects
    paths = store.taxonomy.paths_of_many([g.node.id for g in found])
    return [
        {
            "subject": (paths.get(g.node.id) or [g.node.name])[0],
            "space": g.space,
            "used": g.used,
            "share": round(g.share, 6),
        }
        for g in found
    ]


def build_report(
    store: Store, path: str | None, *, top: int = 5, prices: PriceTable | None = None
) -> Report:
    """The report; `prices` (default: the shipped table) prices the jobs' tokens."""
    report = Report(path or "")
    for node in iter_instructions(store, path):
        report.instructions += 1
        dup = node.props.get("duplicate")
        if dup == "exact":
            report.duplicates_exact += 1
        elif dup == "near":
            report.duplicates_near += 1
        if node.props.get("contaminated"):
            report.contaminated_instructions += 1
    skipped = Skipped()
    lengths: list[int] = []
    for pair in iter_pairs(store, path, responses="first", skipped=skipped):
        lengths.append(len(pair.response.props.get("text") or ""))
    report.exported = len(lengths)
    report.unanswered = skipped.unanswered
    coverage = store.coverage.report(path)
    report.pairs_total = coverage.total.counts.get("responses", 0)
    if lengths:
        report.answer_length = length_summary(lengths)
    total = coverage.total
    report.concepts = total.counts.get("concepts", 0)
    report.covered_concepts = total.covered_concepts
    report.concept_coverage = round(total.concept_coverage, 4)
    report.combinations = total.combinations
    report.combination_space = total.combination_space
    report.combination_space_log10 = combination_log10(total.combination_space)
    report.combination_share = total.combination_share
    report.least_combined = least_combined(store, path, top)
    diversity, matrix = measure(store, path, total)
    report.diversity = asdict(diversity)
    report.contamination = matrix.as_dict()

    scope_path = path or ""
    failures: Counter[str] = Counter()
    rejections: Counter[str] = Counter()
    prices = prices if prices is not None else load_prices()
    for job in store.jobs.all():
        if scope_path and not (job.get("scope") or "").casefold().startswith(scope_path.casefold()):
            continue
        _add_job(report, job, prices)
        if not job.get("failed"):
            continue
        for unit in store.jobs.units(job["id"]):
            if unit.get("status") == "failed":
                failures[f"{job['kind']}: {_reason(unit.get('error'))}"] += 1
                if (rule := rule_of(unit.get("error"))) is not None:
                    rejections[rule] += 1
    report.failed_units = dict(failures.most_common())
    # every rule, so that a clean run says so
    report.validator_rejections = {r: rejections[r] for r in RULE_NAMES}
    report.validator_drops = _drops(store, scope_path)

    scope = store.taxonomy.node(path) if path else None
    level = HIERARCHY.index(DISCIPLINE)
    if scope is None or scope.level < level:
        rows: list[dict[str, Any]] = []
        for did, counts in store.coverage.counts_by_child(scope, level).items():
            concepts = counts.get("concepts", 0)
            if concepts:
                rows.append(
                    {
                        "id": did,
                        "instructions": counts.get("instructions", 0),
                        "concepts": concepts,
                        "per_concept": round(counts.get("instructions", 0) / concepts, 4),
                    }
                )
        names = store.nodes.get_many([r["id"] for r in rows])
        for r in rows:
            r["discipline"] = names[r["id"]].props.get("path") or names[r["id"]].name
        rows.sort(key=lambda r: (r["per_concept"], r["discipline"]))
        report.least_covered = rows[:top]
        report.most_covered = rows[::-1][:top]
    _add_scores(report, store, scope)
    return report
