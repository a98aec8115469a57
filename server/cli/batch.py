"""glan batch: a job's requests as batches, at an endpoint's Files + Batches API or as
files for an offline runner.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from graph.store import Store

from ..remote import Remote, ServerError
from ..settings import Settings
from .common import App, app, console, err, fail, reach, settings

batch_app = App(
    help="A job's requests as batches: at the endpoint's Files + Batches API (glan generate "
    "--batch submits them), or as files for an offline runner.",
    no_args_is_help=True,
)


app.add_typer(batch_app, name="batch")


def _batch_api(cfg: Settings) -> Any:
    from generators.batch import BatchAPI

    return BatchAPI(cfg.llm_config())


@batch_app.command("status")
def batch_status(
    job: Annotated[str | None, typer.Argument(help="a job id (default: every job's)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The batches of a job (of every job): their state at the API, asked now for those
    still running, and their request counts."""
    import asyncio

    from generators.batch import BatchError, refresh_batches

    cfg = settings()
    with reach(cfg) as store:
        if isinstance(store, Remote):
            rows = store.batches(job)
        else:

            async def ask() -> list[dict[str, Any]]:
                api = _batch_api(cfg)
                try:
                    return await refresh_batches(store, api, job)
                finally:
                    await api.aclose()

            try:
                rows = asyncio.run(ask())
            except BatchError as exc:
                err.print(f"[yellow]note:[/] {escape(str(exc))}; as last recorded:")
                rows = store.jobs.batches(job)
    _print_batches(rows, as_json)


def _print_batches(rows: list[dict[str, Any]], as_json: bool) -> None:
    keys = ("id", "job_id", "seq", "remote_id", "status", "requests", "completed", "failed",
            "imported", "errors", "input_file_id", "output_file_id", "error_file_id",
            "created_at", "updated_at")  # fmt: skip
    rows = [{k: r.get(k) for k in keys} for r in rows]
    if as_json:
        console.print_json(json.dumps({"batches": rows}, default=str))
        return
    if not rows:
        console.print("no batches")
    for r in rows:
        read = "read" if r["imported"] else "not read yet"
        console.print(
            f"{r['id']} of job {r['job_id']} ({r['remote_id'] or 'not sent'} at the API): "
            f"{r['status']}, {r['completed'] or 0:,}/{r['requests'] or 0:,} answered, "
            f"{r['failed'] or 0:,} failed, {read}"
            + (f"; [red]{escape(str(r['errors']))}[/]" if r["errors"] else ""),
            soft_wrap=True,
        )


@batch_app.command("cancel")
def batch_cancel(job: Annotated[str, typer.Argument(help="the job whose batches to stop")]) -> None:
    """Ask the API to stop a job's running batches, and store the job as cancelled. What they
    finished is read by the next `glan generate ... --batch` of the job, which submits the
    rest again."""
    import asyncio

    from generators.batch import ACTIVE, cancel_batches

    cfg = settings()
    with reach(cfg) as store:
        if isinstance(store, Remote):
            rows = store.cancel_batches(job)
        else:

            async def stop() -> list[dict[str, Any]]:
                api = _batch_api(cfg)
                try:
                    return await cancel_batches(store, api, job)
                finally:
                    await api.aclose()

            rows = asyncio.run(stop())
    stopping = [r for r in rows if r["status"] in ("cancelling", "cancelled")]
    running = [r for r in rows if r["status"] in ACTIVE and r["status"] != "cancelling"]
    console.print(
        f"job {job}: {len(stopping)} batch(es) cancelling or cancelled, {len(running)} still "
        "running; the same `glan generate ... --batch` command reads what they finished and "
        "submits the rest again",
        soft_wrap=True,
    )


def _offline_here(store: Store | Remote, command: str) -> Store:
    if isinstance(store, Remote):
        raise ServerError(
            f"glan batch {command} reads and writes the store and a file on this machine, and "
            f"{store.name} holds the store: stop the server to run it, or run the job in the "
            "server with `glan generate ... --batch`"
        )
    return store


@batch_app.command("export")
def batch_export(
    stage: Annotated[str, typer.Argument(help="taxonomy|subjects|syllabus|questions|answers")],
    path: Annotated[str | None, typer.Argument(help="scope: a subtree path (default: all)")] = None,
    out: Annotated[Path, typer.Option(help="the JSONL file of batch input lines to write")] = Path(
        "requests.jsonl"
    ),
    n: Annotated[int, typer.Option(min=0, help="questions to sample (questions)")] = 10,
    rounds: Annotated[int | None, typer.Option(min=1, help="subject rounds per discipline")] = None,
    per_call: Annotated[int, typer.Option(min=1, help="subjects asked for per call")] = 10,
    sessions: Annotated[int, typer.Option(min=1, help="class sessions to ask for")] = 12,
    strategy: Annotated[str, typer.Option(help="basic|hard|mixed")] = "mixed",
    basic_ratio: Annotated[float, typer.Option(min=0, max=1, help="share of basic in mixed")] = 0.5,
    seed: Annotated[int, typer.Option(help="sampling seed: same seed, same questions")] = 0,
) -> None:
    """Write a job's pending requests as batch input lines (custom_id = the unit id, the
    exact chat request as body) for an offline runner; the job and its plan are stored, so
    `glan batch import` of the runner's output file finishes the same job. The options are
    those of `glan generate`: the same ones make the same job."""
    from generators.batch import export_requests
    from generators.llm import LLMClient
    from generators.pipeline import PipelineOptions
    from generators.stages import STAGES

    if stage not in STAGES:
        raise fail(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}", 2)
    cfg = settings()
    options = PipelineOptions(
        n=n, rounds=rounds or cfg.subject_rounds, per_call=per_call, sessions=sessions,
        strategy=strategy, basic_ratio=basic_ratio, seed=seed, auto_approve=cfg.auto_approve,
    )  # fmt: skip
    with reach(cfg) as found:
        store = _offline_here(found, "export")
        llm = LLMClient(cfg.llm_config())  # shapes the requests; never sends one
        job = STAGES[stage](store, llm, cfg.stage_params(stage), options.for_stage(stage))
        with out.open("wb") as f:
            done = export_requests(store, job, path, f)
    console.print(
        f"{stage} job {done.job_id}: {done.requests:,} requests written to {out} "
        f"({done.done:,} of {done.total:,} units done earlier, {done.failed:,} that cannot be "
        "asked failed); `glan batch import` the runner's output file to finish the job",
        soft_wrap=True,
    )


@batch_app.command("import")
def batch_import(
    results: Annotated[Path, typer.Argument(help="an output file in the Batch API's format")],
) -> None:
    """Read a batch output file (from an offline runner, or downloaded from a Batch API)
    into the jobs its custom_ids name, as the batch executor does; importing the same file
    again changes nothing."""
    import asyncio

    from generators.batch import import_results
    from generators.llm import LLMClient

    if not results.is_file():
        raise fail(f"no file {results}", 2)
    cfg = settings()
    with reach(cfg) as found:
        store = _offline_here(found, "import")
        llm = LLMClient(cfg.llm_config())  # shapes the requests; never sends one
        try:
            jobs, unknown = import_results(store, llm, cfg.stage_params, results)
        finally:
            asyncio.run(llm.aclose())
    for j in jobs:
        c, r = j.counts, j.state
        console.print(
            f"{r.stage:<9} {r.status:<24} job {r.job_id}: {c.done:,} done and {c.failed:,} "
            f"failed by this file, {c.errors:,} not answered (left pending), {c.skipped:,} "
            f"lines skipped (done already); {r.done}/{r.total} done in all",
            soft_wrap=True,
        )
    if unknown:
        err.print(f"[yellow]{unknown:,} line(s) name no unit in this store: skipped[/]")
    if not jobs:
        raise fail(f"{results} answers no unit of a job in this store")
