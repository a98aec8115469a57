"""Batch jobs: a job's requests through the endpoint's Files + Batches API, and its batches."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import strawberry
from strawberry.types import Info

from generators.batch import BatchAPI, BatchError, cancel_batches
from generators.cost import CostCap
from graph.errors import GlanError

from ..context import Context
from .errors import (
    InvalidInputError,
    JobConflictError,
    NotApprovedError,
    NotFoundError,
    WrongKindError,
    problem,
)
from .estimate import stage_options
from .instruction import Strategy
from .job import Job, JobPayload, StageName

#: how long cancelBatches waits for a job the server runs to ask the API to stop its batches
STOPPING_S = 30.0


@strawberry.type(
    name="Batch",
    description="One batch of a job's requests at the endpoint's Files + Batches API, as the "
    "store last recorded it (a job the server runs has it polled as it goes).",
)
class BatchRecord:
    id: strawberry.ID
    job_id: strawberry.ID
    seq: int = strawberry.field(description="Its place among the job's batches, from 0.")
    remote_id: str | None = strawberry.field(description="The API's id (null: not yet sent).")
    status: str = strawberry.field(
        description="The API's status (validating, in_progress, finalizing, completed, failed, "
        "expired, cancelling, cancelled), or preparing (recorded, not yet known to the API)."
    )
    requests: int
    completed: int = strawberry.field(description="Requests the API has answered.")
    failed: int = strawberry.field(description="Requests the API could not answer.")
    imported: bool = strawberry.field(description="Its output and error files were read.")
    errors: str | None = strawberry.field(description="Why the API refused or failed it.")
    input_file_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    created_at: str | None
    updated_at: str | None

    @classmethod
    def of(cls, row: dict[str, Any]) -> BatchRecord:
        return cls(
            id=strawberry.ID(str(row["id"])),
            job_id=strawberry.ID(str(row.get("job_id") or "")),
            seq=int(row.get("seq") or 0),
            remote_id=row.get("remote_id"),
            status=str(row.get("status") or ""),
            requests=int(row.get("requests") or 0),
            completed=int(row.get("completed") or 0),
            failed=int(row.get("failed") or 0),
            imported=bool(row.get("imported")),
            errors=row.get("errors"),
            input_file_id=row.get("input_file_id"),
            output_file_id=row.get("output_file_id"),
            error_file_id=row.get("error_file_id"),
            created_at=row.get("created_at"),
            updated_at=row.get("updated_at"),
        )


@strawberry.type(description="A job's batches after a change.")
class BatchesPayload:
    batches: list[BatchRecord]


BatchJobResult = Annotated[
    JobPayload
    | NotFoundError
    | NotApprovedError
    | WrongKindError
    | JobConflictError
    | InvalidInputError,
    strawberry.union("BatchJobResult"),
]
CancelBatchesResult = Annotated[
    BatchesPayload | NotFoundError | InvalidInputError, strawberry.union("CancelBatchesResult")
]


async def job_batches(
    info: Info[Context, None], job_id: strawberry.ID | None = None
) -> list[BatchRecord]:
    """The query's resolver (see Query.batches)."""
    ctx = info.context
    rows = await ctx.run(ctx.store.jobs.batches, str(job_id) if job_id else None)
    return [BatchRecord.of(r) for r in rows]


async def generate_in_batches(
    info: Info[Context, None],
    stage: StageName,
    path: str | None = None,
    n: int = 10,
    strategy: Strategy = Strategy.MIXED,
    seed: int = 0,
    basic_ratio: float = 0.5,
    rounds: int | None = None,
    per_call: int = 10,
    sessions: int = 12,
    turns: int = 2,
    min_per_concept: int | None = None,
    until_share: float | None = None,
    max_cost: float | None = None,
) -> BatchJobResult:
    """The mutation's resolver (see Mutation.generate_in_batches)."""
    ctx = info.context
    try:
        options = stage_options(
            stage.value,
            ctx.settings,
            n=n,
            strategy=strategy.value,
            seed=seed,
            basic_ratio=basic_ratio,
            rounds=rounds,
            per_call=per_call,
            sessions=sessions,
            turns=turns,
            min_per_concept=min_per_concept,
            until_share=until_share,
        )
        cap = None if max_cost is None else CostCap(max_cost, ctx.settings.price_table())
        started = await ctx.jobs.start(stage.value, path or None, options, cost_cap=cap, batch=True)
    except GlanError as exc:
        return problem(exc)
    return JobPayload(job=Job.of(started, live=True))


async def cancel_job_batches(
    info: Info[Context, None], job_id: strawberry.ID
) -> CancelBatchesResult:
    """The mutation's resolver (see Mutation.cancel_batches)."""
    ctx = info.context
    entry = ctx.jobs.running.get(str(job_id))
    try:
        if entry is not None:  # it cancels its batches at the API as it stops
            ctx.jobs.cancel(str(job_id))
            await asyncio.wait({entry.task}, timeout=STOPPING_S)
            rows = await ctx.run(ctx.store.jobs.batches, str(job_id))
        else:
            api = BatchAPI(ctx.jobs.llm.config)
            try:
                rows = await cancel_batches(ctx.store, api, str(job_id))
            finally:
                await api.aclose()
    except BatchError as exc:  # the API refused or could not be reached: said as it is
        return InvalidInputError(message=str(exc))
    except GlanError as exc:
        return problem(exc)
    return BatchesPayload(batches=[BatchRecord.of(r) for r in rows])
