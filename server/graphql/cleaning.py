"""Benchmark decontamination through the API, and the contamination counts of a node.

The benchmark files are read by the server, from paths on its own machine: the API takes
where they are, not their text, which at 100k questions would exceed a request's size
limit. Nothing is deleted; marks are what export leaves out (generators/cleaning.py).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import strawberry
from strawberry.types import Info

from generators.cleaning import (
    BenchmarkSpec,
    ContaminationResult,
    contamination_counts,
    decontaminate,
    load_benchmarks,
)
from graph.errors import GlanError, InvalidInput
from graph.model import CONCEPT
from graph.records import Node

from ..context import Context
from .errors import InvalidInputError, NotApprovedError, NotFoundError, WrongKindError, problem

#: Bounds on the n-gram length and on containment's shortest benchmark text.
LIMITS = {"n": (1, 100), "minWords": (1, 100)}
#: Benchmarks named in one request.
MAX_BENCHMARKS = 100


@strawberry.enum(description="Which check marks a pair as overlapping a benchmark.")
class DecontaminationMethod(Enum):
    BOTH = "both"
    CONTAINMENT = "containment"
    NGRAM = "ngram"


@strawberry.input(
    description="A benchmark on the server's machine: a .jsonl, .csv or .parquet file, or a "
    "directory a datasets object was saved to."
)
class BenchmarkInput:
    path: str
    split: str | None = strawberry.field(
        default=None,
        description="The split to read from a saved DatasetDict (default: all of them), or "
        "the split a file holds (default: a split word in its name, else test).",
    )
    name: str | None = strawberry.field(
        default=None,
        description="The benchmark's name (default: the file's name without its split word, "
        "or the directory's name).",
    )


@strawberry.type(description="A benchmark split read, with its number of texts.")
class BenchmarkRead:
    benchmark: str
    split: str
    texts: int


@strawberry.type(description="A node marked as overlapping benchmarks (`name:split`).")
class MarkedNode:
    id: strawberry.ID
    benchmarks: list[str]


@strawberry.type(description="One overlap found: which benchmark, on which side, by what check.")
class ContaminationMatch:
    instruction_id: strawberry.ID
    benchmark: str
    split: str
    side: str = strawberry.field(
        description="question, answer, followup or followup_answer (a conversation's turn)"
    )
    method: str = strawberry.field(description="containment or ngram")


@strawberry.type(description="What a decontamination run read, scanned and marked.")
class DecontaminationPayload:
    scanned: int
    benchmarks: list[BenchmarkRead]
    short_texts: int = strawberry.field(
        description="Benchmark texts shorter than minWords, left out of containment."
    )
    instructions: list[MarkedNode] = strawberry.field(
        description="Instructions whose question overlaps a benchmark (export leaves them out)."
    )
    responses: list[MarkedNode] = strawberry.field(
        description="Responses that overlap a benchmark (export leaves their pairs out)."
    )
    matches: list[ContaminationMatch]

    @classmethod
    def of(cls, r: ContaminationResult) -> DecontaminationPayload:
        def marked(found: dict[str, list[str]]) -> list[MarkedNode]:
            return [MarkedNode(id=strawberry.ID(k), benchmarks=v) for k, v in sorted(found.items())]

        return cls(
            scanned=r.scanned,
            benchmarks=[
                BenchmarkRead(benchmark=s.rpartition(":")[0], split=s.rpartition(":")[2], texts=n)
                for s, n in r.benchmarks.items()
            ],
            short_texts=r.short,
            instructions=marked(r.instructions),
            responses=marked(r.responses),
            matches=[
                ContaminationMatch(
                    instruction_id=strawberry.ID(i),
                    benchmark=m.benchmark,
                    split=m.split,
                    side=m.side,
                    method=m.method,
                )
                for i, marks in sorted(r.marks.items())
                for m in marks
            ],
        )


DecontaminateResult = Annotated[
    DecontaminationPayload | NotFoundError | NotApprovedError | WrongKindError | InvalidInputError,
    strawberry.union("DecontaminateResult"),
]


async def run_decontamination(
    info: Info[Context, None],
    benchmarks: list[BenchmarkInput],
    path: str | None,
    field: str | None,
    method: DecontaminationMethod,
    n: int,
    min_words: int,
) -> Any:
    """Read the benchmarks, then mark what overlaps them under the path, off the loop."""

    def run() -> Any:
        try:
            for name, value in (("n", n), ("minWords", min_words)):
                low, high = LIMITS[name]
                if not low <= value <= high:
                    raise InvalidInput(f"{name} must be between {low} and {high}, got {value}")
            if not benchmarks or len(benchmarks) > MAX_BENCHMARKS:
                raise InvalidInput(f"name between 1 and {MAX_BENCHMARKS} benchmarks")
            specs = [BenchmarkSpec(Path(b.path), b.split, b.name) for b in benchmarks]
            store = info.context.store
            store.taxonomy.scope(path or None)  # an unknown or unapproved path, before reading
            loaded = load_benchmarks(specs, field)
            found = decontaminate(
                store, path or None, loaded, n=n, method=method.value, min_words=min_words
            )
        except GlanError as exc:
            return problem(exc)
        return DecontaminationPayload.of(found)

    return await info.context.run(run)


@strawberry.type(description="Instructions under a node that overlap one benchmark split.")
class ContaminationCount:
    benchmark: str
    split: str
    count: int = strawberry.field(description="Instructions whose question or answer overlaps it.")
    share: float = strawberry.field(description="count / the node's instructions.")


async def contamination_of(
    info: Info[Context, None], scope: Node | None, instructions: int
) -> list[ContaminationCount]:
    """The counts under one node (none below a session), shared between requests while the
    store is unchanged."""
    ctx = info.context
    if scope is not None and scope.kind is CONCEPT:
        return []

    def read() -> dict[tuple[str, str], int]:
        return contamination_counts(ctx.store, scope)

    counts = await ctx.read(("contamination", scope.id if scope else None), read)
    return [
        ContaminationCount(
            benchmark=b, split=s, count=c, share=round(c / instructions, 4) if instructions else 0.0
        )
        for (b, s), c in sorted(counts.items())
    ]
