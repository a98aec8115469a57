"""Which instructions a listing keeps: a plain value the store turns into a WHERE clause.

It lives in graph/ because the database applies it (graph/queries renders the conditions,
every value a parameter), so a page of a large scope never reads what it then throws away.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InstructionFilter:
    """None in a field: either way.

    `duplicate` and `contaminated` are flags stored as text (how it was a repeat, which
    benchmarks it overlaps): true keeps the instructions where the text is set and not empty.
    `answered`: whether at least one response answers it.
    """

    strategy: str | None = None
    model: str | None = None
    job_id: str | None = None
    duplicate: bool | None = None
    contaminated: bool | None = None
    answered: bool | None = None
    #: at least one response the judge scored this or higher (overall, 1-10)
    min_score: float | None = None
