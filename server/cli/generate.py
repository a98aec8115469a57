"""Generation from a terminal: generate (here, in a running server, on a cluster or as
batches), with progress bars and dry-run estimates, and jobs.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.markup import escape

from graph.errors import GlanError
from graph.store import Store

from ..remote import Remote, ServerError
from ..settings import Settings
from .common import app, console, err, fail, reach, settings

STAGE_CHOICES = (
    "taxonomy",
    "subjects",
    "syllabus",
    "questions",
    "answers",
    "followups",
    "judge",
    "all",
)


#: what installs the cluster executor (generators/cluster.py says the same)
RAY_EXTRA = "pip install 'glan[ray]'"


@app.command()
def generate(
    stage: Annotated[str, typer.Argument(help="|".join(STAGE_CHOICES))],
    path: Annotated[str | None, typer.Argument(help="scope: a subtree path (default: all)")] = None,
    n: Annotated[int, typer.Option(min=0, help="questions to sample (questions, all)")] = 10,
    rounds: Annotated[
        int | None, typer.Option(min=1, help="subject rounds per discipline (paper: 10)")
    ] = None,
    per_call: Annotated[int, typer.Option(min=1, help="subjects asked for per call")] = 10,
    sessions: Annotated[int, typer.Option(min=1, help="class sessions to ask for")] = 12,
    turns: Annotated[
        int, typer.Option(min=1, max=20, help="follow-up turns per conversation (followups)")
    ] = 2,
    strategy: Annotated[str, typer.Option(help="basic|hard|mixed")] = "mixed",
    basic_ratio: Annotated[float, typer.Option(min=0, max=1, help="share of basic in mixed")] = 0.5,
    seed: Annotated[int, typer.Option(help="sampling seed: same seed, same questions")] = 0,
    min_per_concept: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=100,
            help="questions: instead of --n, exactly the questions that cover every approved "
            "concept under PATH this many times, thinnest first, no combination twice",
        ),
    ] = None,
    until_share: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="questions: instead of --n, until this share of the approved concepts is "
            "covered (--min-per-concept times, or once)",
        ),
    ] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="parallel model calls")] = None,
    local: Annotated[
        bool, typer.Option("--local", help="start the bundled offline model for this run")
    ] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="exit 1 when any unit failed, not only a whole stage")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="print each stage's units and estimated cost; store and ask nothing"
        ),
    ] = False,
    max_cost: Annotated[
        float | None,
        typer.Option(
            min=0.000001,
            help="US dollars a job may cost in all (its earlier runs too): it stops starting "
            "units before passing this, and a run with a higher cap goes on",
        ),
    ] = None,
    executor: Annotated[
        str,
        typer.Option(
            help="live: this process sends the requests; ray: a Ray cluster sends them and "
            f"this process writes the results (needs {RAY_EXTRA})"
        ),
    ] = "live",
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="the Ray cluster to join with --executor ray (default: GLAN_RAY_ADDRESS; "
            "unset, a local Ray started for the run)"
        ),
    ] = None,
    batch: Annotated[
        bool,
        typer.Option(
            "--batch",
            help="send the requests through the endpoint's Files + Batches API (where it "
            "offers one, at its batch price) and wait for the batches to end; the same "
            "command again resumes them",
        ),
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait",
            help="with --batch: wait until the batches end, or return once they are "
            "submitted (the same command, or a server, imports them later)",
        ),
    ] = True,
) -> None:
    """Run GLAN stages under PATH as resumable jobs; run the same command again to resume.

    Exits 0 when the run made its output: every unit done, or some failed while every
    stage with work made something (it then says what failed, and a second run retries
    them); 1 when a stage did not finish or all its units failed, or with --strict when
    any unit failed. The last line says which."""
    from generators.pipeline import PipelineOptions, run_pipeline, verdict
    from generators.stages import PIPELINE

    if stage not in STAGE_CHOICES:
        raise fail(f"unknown stage {stage!r}; choose one of {', '.join(STAGE_CHOICES)}", 2)
    if strategy not in ("basic", "hard", "mixed"):
        raise fail("--strategy must be basic, hard or mixed", 2)
    if until_share is not None and until_share <= 0:
        raise fail("--until-share must be above 0", 2)
    if executor not in ("live", "ray"):
        raise fail("--executor must be live or ray", 2)
    if ray_address is not None and executor != "ray":
        raise fail("--ray-address joins a Ray cluster for --executor ray", 2)
    if batch and (executor != "live" or local):
        raise fail(
            "--batch sends the requests through the endpoint's Batch API: not with "
            "--executor ray, nor --local (the bundled model's server has no Batch API; "
            "`glan batch export` writes the requests for an offline runner)",
            2,
        )
    if not wait and not batch:
        raise fail("--no-wait returns once a --batch run's batches are submitted", 2)
    cfg = settings()
    options = PipelineOptions(
        n=n,
        min_per_concept=min_per_concept or 0,
        until_share=until_share,
        rounds=rounds or cfg.subject_rounds,
        per_call=per_call,
        sessions=sessions,
        strategy=strategy,
        basic_ratio=basic_ratio,
        seed=seed,
        auto_approve=cfg.auto_approve,
        turns=turns,
    )
    stages = list(PIPELINE) if stage == "all" else [stage]
    if dry_run:
        _dry_run(
            cfg, stages, path, options, rounds_given=rounds is not None, local=local, batch=batch
        )
        return
    with reach(cfg) as store:
        if isinstance(store, Remote):
            if executor == "ray":
                raise ServerError(
                    f"--executor ray writes what the cluster answers to the store from this "
                    f"process, but {store.name} holds the store: stop the server to run on "
                    "Ray, or drop --executor ray to run the job in the server"
                )
            results = _generate_through(
                store, stages, path, options, rounds_given=rounds is not None, local=local,
                concurrency=concurrency, max_cost=max_cost, batch=batch, wait=wait,
            )  # fmt: skip
        elif batch:
            from generators.batch import run_batch_pipeline

            with _progress_bars() as bar:
                results = run_batch_pipeline(
                    store, cfg.llm_config(), cfg.stage_params, stages, path, options,
                    wait=wait, poll_s=cfg.batch_poll_s, progress=bar,
                    cost_cap=_cost_cap(cfg, max_cost),
                )  # fmt: skip
        elif executor == "ray":
            with _llm_endpoint(cfg, local) as run_cfg, _progress_bars() as bar:
                results = _run_on_ray(
                    store, run_cfg, stages, path, options, ray_address=ray_address,
                    concurrency=concurrency, progress=bar, cost_cap=_cost_cap(run_cfg, max_cost),
                )  # fmt: skip
        else:
            with _llm_endpoint(cfg, local) as run_cfg, _progress_bars() as bar:
                results = run_pipeline(
                    store,
                    run_cfg.llm_config(),
                    run_cfg.stage_params,
                    stages,
                    path,
                    options,
                    concurrency=concurrency or run_cfg.llm_concurrency,
                    progress=bar,
                    cost_cap=_cost_cap(run_cfg, max_cost),
                )
    if not wait:
        _print_submitted(results, server=store.name if isinstance(store, Remote) else None)
        return
    for r in results:
        console.print(
            f"{r.stage:<9} {r.status:<24} {r.done}/{r.total} done ({r.skipped} earlier), "
            f"{r.failed} failed, tokens {r.prompt_tokens:,} in / {r.completion_tokens:,} out",
            soft_wrap=True,
        )
    judged = verdict(results, strict=strict)
    if judged.complete:
        console.print(judged.lines[-1], soft_wrap=True)
        return
    for line in judged.lines:
        err.print(f"[yellow]{escape(line)}[/]")
    if judged.exit_code:
        raise typer.Exit(judged.exit_code)


def _run_on_ray(
    store: Store,
    cfg: Settings,
    stages: list[str],
    path: str | None,
    options: Any,
    *,
    ray_address: str | None,
    concurrency: int | None,
    progress: Callable[[Any], None],
    cost_cap: Any,
) -> list[Any]:
    """The stages as jobs whose requests a Ray cluster sends (generators/cluster.py)."""
    from generators.cluster import RayOptions, run_stages_on_ray

    ray_options = RayOptions(
        address=ray_address or cfg.ray_address,
        actors=cfg.ray_actors,
        batch_size=concurrency or cfg.ray_batch_size,
        vllm_model=cfg.ray_vllm_model,
        vllm_engine_kwargs=cfg.ray_vllm_engine_kwargs,
    )
    return run_stages_on_ray(
        store, cfg.llm_config(), cfg.stage_params, stages, path, options, ray_options,
        progress=progress, cost_cap=cost_cap,
    )  # fmt: skip


def _print_submitted(results: list[Any], *, server: str | None = None) -> None:
    """What a --batch --no-wait run left running at the API (or in the server)."""
    for r in results:
        if server is not None:
            console.print(
                f"{r.stage:<9} job {r.job_id} started in {escape(server)}, which submits its "
                "batches and follows them to their end; `glan batch status` shows them",
                soft_wrap=True,
            )
            continue
        waiting = r.total - r.done - r.failed
        console.print(
            f"{r.stage:<9} {r.status:<24} {waiting:,} units wait in batches, {r.done}/{r.total} "
            f"done, {r.failed} failed; job {r.job_id}: `glan batch status {r.job_id}` shows "
            "its batches, and the same command again (or a server holding the store) waits "
            "for them and imports their results",
            soft_wrap=True,
        )


def _cost_cap(cfg: Settings, max_cost: float | None) -> Any:
    from generators.cost import CostCap

    return CostCap(max_cost, cfg.price_table()) if max_cost is not None else None


def _dry_run(
    cfg: Settings,
    stages: list[str],
    path: str | None,
    options: Any,
    *,
    rounds_given: bool,
    local: bool,
    batch: bool = False,
) -> None:
    """Print what each stage's job would do and cost, with nothing stored or asked: planned
    here on the store, or by the server that holds it (with its model and prices); with
    `batch`, at the batch price."""
    with reach(cfg) as store:
        if isinstance(store, Remote):
            if local:
                raise ServerError(
                    f"--local runs the bundled model in this process, but {store.name} "
                    "holds the store and runs its jobs with its own model: drop --local to "
                    "estimate the server's run"
                )
            found = [
                store.estimate(s, path, options, rounds_given=rounds_given, batch=batch)
                for s in stages
            ]
        else:
            found = _estimate_here(store, _local_settings(cfg) if local else cfg, stages, path,
                                   options, batch=batch)  # fmt: skip
    _print_estimates(found)


def _estimate_here(
    store: Store,
    cfg: Settings,
    stages: list[str],
    path: str | None,
    options: Any,
    *,
    batch: bool = False,
) -> list[dict[str, Any]]:
    import asyncio

    from generators.cost import estimate_stages
    from generators.llm import LLMClient

    llm = LLMClient(cfg.llm_config())  # shapes the requests measured; never sends one
    try:
        prices = cfg.price_table()
        found = estimate_stages(
            store, llm, cfg.stage_params, stages, path, options, prices, batch=batch
        )
    finally:
        asyncio.run(llm.aclose())
    return [e.as_dict() for e in found]


def _print_coverage(e: dict[str, Any]) -> None:
    """A coverage-driven questions job in a dry run: its target, and the questions it asks
    per discipline with their share of the estimated cost."""
    from generators.cost import usd
    from generators.planning import coverage_costs

    c = e["coverage"]
    share = f"{c['until_share']:.0%}" if c["until_share"] else "all"
    short = f"; {c['short']:,} cannot be (no new combination left)" if c["short"] else ""
    console.print(
        f"  coverage: {c['target']} question(s) per concept for {share} of {c['concepts']:,} "
        f"approved concepts, {c['reached_before']:,} at it already: {c['questions']:,} "
        f"questions bring {c['reached']:,} to it{short}",
        soft_wrap=True,
    )
    costs = coverage_costs(c, e["estimated_usd"], e["todo"])
    for path, n in c["by_discipline"].items():
        cost = f", about {usd(costs[path])}" if costs[path] is not None else ""
        where = escape(path or "(no discipline)")
        console.print(f"  {where}: {n:,} questions{cost}", soft_wrap=True)


def _print_estimates(found: list[dict[str, Any]]) -> None:
    from generators.cost import usd

    console.print("dry run: nothing was stored and the model was not asked")
    for e in found:
        if e["basis"] == "history":
            basis = f"from the average of {e['sample']:,} done units of {e['stage']} on this model"
        elif e["basis"] == "prompt":
            basis = f"from {e['sample']:,} measured prompts, about 4 characters a token"
        else:
            basis = "nothing to ask"
        cost = usd(e["estimated_usd"]) if e["estimated_usd"] is not None else (
            f"unknown (no price for model {e['model']!r}: add it to a GLAN_PRICES table)"
        )  # fmt: skip
        spent = f", {usd(e['spent_usd'])} spent by earlier runs" if e["spent_usd"] else ""
        console.print(
            f"{e['stage']:<9} {e['total']:,} units ({e['done']:,} done earlier, {e['todo']:,} "
            f"to ask) on {escape(e['model'])}: about {e['prompt_tokens']:,} tokens in / "
            f"{e['completion_tokens']:,} out ({basis}); estimated cost {escape(cost)}{spent}",
            soft_wrap=True,
        )
        if e.get("coverage"):
            _print_coverage(e)
    known = [e["estimated_usd"] for e in found if e["estimated_usd"] is not None]
    unknown = len(found) - len(known)
    if len(found) > 1:
        console.print(
            "later stages are planned on what the store holds now; each also runs on what "
            "the stages before it make, which is not counted here",
            soft_wrap=True,
        )
    total = f"estimated total: {usd(sum(known))}" if known else "estimated total: unknown"
    if known and unknown:
        total += f" for the stages with a price; {unknown} without one"
    console.print(total, soft_wrap=True)


def _generate_through(
    remote: Remote,
    stages: list[str],
    path: str | None,
    options: Any,
    *,
    rounds_given: bool,
    local: bool,
    concurrency: int | None,
    max_cost: float | None = None,
    batch: bool = False,
    wait: bool = True,
) -> list[Any]:
    """Run the stages as jobs in the server that holds the store, one after another, each
    followed to its end with the same progress bars; the last state of each. A --batch job
    the server submits and follows itself: without waiting, its first state."""
    from generators.jobs import JobStatus

    if not wait and len(stages) > 1:
        raise ServerError(
            "without waiting, one stage's batches are submitted; a later stage runs on what "
            "the one before made: run the stages one at a time"
        )

    if local:
        raise ServerError(
            f"--local starts the bundled model for a run in this process, but {remote.name} "
            "holds the store and runs its jobs with its own model endpoint: stop the server "
            "to run with --local, or start it with GLAN_LLM_BASE_URL pointing at `glan model "
            "serve`"
        )
    if concurrency is not None:
        err.print(
            f"[yellow]note:[/] --concurrency is not used: {escape(remote.name)} runs jobs with "
            "its own GLAN_LLM_CONCURRENCY"
        )
    results = []
    with _progress_bars() as bar:
        for stage in stages:
            try:
                state = remote.generate(
                    stage, path, options, rounds_given=rounds_given, progress=bar,
                    max_cost=max_cost, batch=batch, wait=wait,
                )  # fmt: skip
            except KeyboardInterrupt:
                # as a local run does on Ctrl-C: the job stops (what is done stays done); a
                # batch job's batches go on, followed by the server
                if remote.started is not None and not batch:
                    with contextlib.suppress(GlanError):
                        remote.cancel(remote.started)
                        err.print(f"cancelled job {remote.started} in {escape(remote.name)}")
                raise
            if state.status == JobStatus.FAILED and not state.total and state.error:
                raise ServerError(state.error)  # it could not plan: as a local run says it
            results.append(state)
            if state.status not in (JobStatus.COMPLETED, JobStatus.COMPLETED_WITH_FAILURES):
                break  # stopped in the server: later stages would run on part of its output
    return results


@contextmanager
def _progress_bars() -> Iterator[Callable[[Any], None]]:
    """One bar per job, fed by the runner's progress callback."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bars = Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed · {task.fields[tokens]} tok"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    tasks: dict[str, Any] = {}

    def update(state: Any) -> None:
        if state.job_id not in tasks:
            tasks[state.job_id] = bars.add_task(state.stage, total=state.total, failed=0, tokens=0)
        bars.update(
            tasks[state.job_id],
            total=state.total,
            completed=state.done + state.failed,
            failed=state.failed,
            tokens=f"{state.prompt_tokens + state.completion_tokens:,}",
        )

    with bars:
        yield update


def local_threads() -> int:
    """Threads for the bundled model: all cores but one, at least one."""
    return max(1, (os.cpu_count() or 2) - 1)


@contextmanager
def _llm_endpoint(cfg: Settings, local: bool) -> Iterator[Settings]:
    """The settings to call the model with; with --local, the bundled model on loopback."""
    if not local:
        yield cfg
        return
    from generators.local_model import start_local_model

    console.print("starting the bundled model (SmolLM2-135M-Instruct) on loopback ...")
    with start_local_model(n_threads=local_threads()) as server:
        yield _local_settings(cfg, server.base_url, server.model)


def _local_settings(
    cfg: Settings, base_url: str | None = None, model: str | None = None
) -> Settings:
    """The settings a --local run calls the bundled model with (at `base_url`, once started)."""
    from generators.local_model import MODEL_ALIAS

    return cfg.model_copy(
        update={
            "llm_base_url": base_url or cfg.llm_base_url,
            "model": model or MODEL_ALIAS,
            "question_model": None,
            "answer_model": None,
            "judge_model": None,
            "llm_structured": "json_object_schema",
            # a small model can ramble: bound every answer
            "max_tokens": cfg.max_tokens or 768,
        }
    )


@app.command()
def jobs(
    failed: Annotated[
        bool, typer.Option("--failed", help="list failed units with reasons")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Generation jobs with their progress, token usage and estimated cost (their tokens at
    the price table's prices: 'unknown' for a model without a price)."""
    from rich.table import Column, Table

    from generators.cost import usd

    cfg = settings()
    prices = cfg.price_table()
    units: dict[str, Any] = {}
    with reach(cfg) as store:
        if isinstance(store, Remote):
            # all units for --json, which prints them; else only the failed ones it lists
            rows, units = store.jobs(units=("all" if as_json else "failed") if failed else None)
        else:
            rows = [_priced(j, prices) for j in store.jobs.all()]
            if failed:
                units = {j["id"]: _by_id(store.jobs.units(j["id"])) for j in rows}
    if as_json:
        console.print_json(json.dumps({"jobs": rows, "units": units}, default=str))
        return
    cost = Column("cost", no_wrap=True, min_width=7)  # 'unknown', or dollars
    table = Table(
        "job", "stage", "scope", "status", "done", "failed", "total", "tokens in/out", cost
    )  # fmt: skip
    for j in rows:
        table.add_row(
            j["id"],
            j["kind"],
            escape(j["scope"] or "(all)"),
            j["status"],
            str(j["done"]),
            str(j["failed"]),
            str(j["total"]),
            f"{j['prompt_tokens'] or 0:,}/{j['completion_tokens'] or 0:,}",
            usd(j.get("estimated_cost_usd")),
        )
    console.print(table)
    for job_id, us in units.items():
        for u in us:
            if u["status"] == "failed":
                raw = (u.get("raw") or "").replace("\n", " ")[:120]
                console.print(
                    f"[red]{u['id']}[/] ({job_id}): {escape(u.get('error') or '')}"
                    f"\n  raw: {escape(raw)}"
                )


def _priced(row: dict[str, Any], prices: Any) -> dict[str, Any]:
    """A stored job's row with its model (as the API names it) and its cost so far."""
    from generators.cost import job_cost, job_model

    return {
        **row,
        "model": job_model(row),
        "max_cost": row.get("max_cost") or None,  # stored as 0 when there is none
        "estimated_cost_usd": job_cost(row, prices),
    }


def _by_id(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: str(r["id"]))
