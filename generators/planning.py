"""What a coverage-driven questions job would ask, as a dry run reports it.

A questions job with `min_per_concept` (or `until_share`) plans its samples from coverage
(generators/sampling.py, CoveragePlanner). Before it runs, a dry run says how many
questions that takes, per discipline, with how the scope's concepts stand; the cost of
those questions is generators/cost.py's (`coverage_costs` splits its estimate over the
disciplines).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from graph.store import Store

from .jobs import Stage, UnitSpec
from .sampling import CoveragePlan


def plan_summary(
    store: Store, stage: Stage, scope: str, todo: Sequence[UnitSpec]
) -> dict[str, Any] | None:
    """For a stage that planned for coverage (a questions stage with min_per_concept):
    the target, how the approved concepts in scope stand before and after the plan, and
    the questions left to ask (the units not done: those planned now and any left from
    an earlier run) per discipline. None for any other stage.

    A subject taught in several disciplines counts under the first of them (by path) that
    lies in the scope, so the disciplines add up to the total."""
    plan: CoveragePlan | None = getattr(stage, "coverage", None)
    if plan is None:
        return None
    per_subject = Counter(str(u.payload["subject_id"]) for u in todo)
    paths = store.instructions.discipline_paths(sorted(per_subject))
    inside = scope.casefold()
    by_discipline: Counter[str] = Counter()
    for subject, n in per_subject.items():
        found = [p for p in paths.get(subject, []) if p.casefold().startswith(inside)]
        by_discipline[(found or paths.get(subject) or [""])[0]] += n
    return {
        "target": plan.target,
        "until_share": stage.options.get("until_share"),
        "concepts": plan.concepts,
        "reached_before": plan.reached_before,
        "wanted": plan.wanted,
        "reached": plan.reached,
        "short": plan.short,
        "questions": sum(per_subject.values()),
        "by_discipline": dict(sorted(by_discipline.items())),
    }


def coverage_costs(
    summary: dict[str, Any], estimated_usd: float | None, todo: int
) -> dict[str, float | None]:
    """The estimated cost of each discipline's questions: the job's estimate split by its
    units (None without a price)."""
    share = estimated_usd / todo if estimated_usd is not None and todo else None
    return {
        path: (share * n if share is not None else None)
        for path, n in summary["by_discipline"].items()
    }
