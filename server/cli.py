"""The `glan` command line: the same store and pipeline as the API, from a terminal."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.tree import Tree

from graph.errors import GlanError, InvalidInput, StoreLocked
from graph.model import HIERARCHY, Status, parse_kind, split_path
from graph.records import COUNT_NAMES
from graph.store import Store

from .discovery import read_record, record_path
from .remote import Remote, ServerError
from .settings import Settings
from .views import NodeView, TreeView, show_info

console = Console()
err = Console(stderr=True, soft_wrap=True)


class _App(typer.Typer):
    """Commands whose expected failures print one clear line and exit 1, not a traceback."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
        register = super().command(*args, **kwargs)

        def decorate(fn: Callable[..., Any]) -> Any:
            @functools.wraps(fn)
            def run(*a: Any, **kw: Any) -> Any:
                try:
                    return fn(*a, **kw)
                except GlanError as exc:
                    err.print(f"[bold red]error:[/] {escape(str(exc))}")
                    raise typer.Exit(1) from exc

            return register(run)

        return decorate


app = _App(
    help="glan: taxonomy-driven synthetic instruction data on a graph knowledge store.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def settings() -> Settings:
    return Settings()


@contextmanager
def reach(cfg: Settings | None = None) -> Iterator[Store | Remote]:
    """The store, or the glan server to send the command to: the one GLAN_SERVER_URL names,
    or the one that holds the embedded store (found by the record it leaves beside it)."""
    cfg = cfg or settings()
    if cfg.server_url:
        yield Remote(cfg.server_url, token=cfg.api_token)
        return
    try:
        store = Store.open(cfg.store_config())
    except StoreLocked as exc:
        remote = _server_holding(cfg, exc)
    else:
        try:
            yield store
        finally:
            store.close()
        return
    yield remote


def _server_holding(cfg: Settings, locked: StoreLocked) -> Remote:
    """The glan server that holds the store, answering; the lock error if none does."""
    record = read_record(cfg.db_path) if cfg.backend == "embedded" else None
    if record is None:
        raise locked
    remote = Remote(record.url, token=cfg.api_token, pid=record.pid)
    answers_by = time.monotonic() + 3  # a server records itself just before it listens
    while not remote.answers():
        if time.monotonic() < answers_by:
            time.sleep(0.2)
            continue
        raise ServerError(
            f"the glan database at {locked.path} is held by a glan server (pid {record.pid}) "
            f"that does not answer at {record.url}, the address it recorded in "
            f"{record_path(cfg.db_path)}. If it listens on another address (started by "
            "uvicorn with its own --host or --port), set GLAN_SERVER_URL to that address; "
            "or stop the server"
        )
    return remote


@contextmanager
def whole_store(command: str) -> Iterator[Store]:
    """The store itself, for a command that reads all of it (the API has no such verb): a
    clear refusal while a glan server holds it, or GLAN_SERVER_URL sends commands to one."""
    cfg = settings()
    does = f"glan {command} reads the whole store itself, which the API does not offer"
    if cfg.server_url:
        raise ServerError(
            f"{does}, and GLAN_SERVER_URL sends commands to the glan server at "
            f"{cfg.server_url}: unset GLAN_SERVER_URL to run it on the store, with no server "
            "holding it"
        )
    try:
        store = Store.open(cfg.store_config())
    except StoreLocked as exc:
        record = read_record(cfg.db_path) if cfg.backend == "embedded" else None
        if record is None:
            raise
        raise ServerError(
            f"{does}, and the glan server at {record.url} (pid {record.pid}) holds it: stop "
            f"the server, run glan {command}, and start the server again"
        ) from exc
    try:
        yield store
    finally:
        store.close()


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


def seed_taxonomy_text() -> str:
    return resources.files("graph").joinpath("seed/taxonomy.yaml").read_text(encoding="utf-8")


def read_taxonomy(path: Path | None) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8") if path else seed_taxonomy_text()
        data = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInput(f"cannot read taxonomy {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"taxonomy {path or 'seed'} is not a YAML mapping")
    return data


@app.command()
def init(
    taxonomy: Annotated[
        Path | None, typer.Option(help="YAML taxonomy to load instead of the shipped seed")
    ] = None,
    no_seed: Annotated[bool, typer.Option("--no-seed", help="only create the schema")] = False,
) -> None:
    """Create (or open) the store, ensure its schema and load the seed taxonomy.

    Safe to run again: existing nodes, and review decisions on them, are kept.
    """
    cfg = settings()
    with reach(cfg) as store:
        if isinstance(store, Remote):
            _init_through(store, taxonomy, no_seed)
            return
        console.print(f"store: {escape(store.driver.description)}")
        if no_seed:
            return
        report = store.taxonomy.load(read_taxonomy(taxonomy))
        for kind in HIERARCHY[:3]:
            console.print(
                f"  {kind.label:<11} {report.created[kind.label]:>5} new, "
                f"{report.existing[kind.label]:>5} already there"
            )


def _init_through(remote: Remote, taxonomy: Path | None, no_seed: bool) -> None:
    """`init` while a server holds the store: the server made its schema when it opened it;
    loading a taxonomy needs the store itself."""
    console.print(f"store: held by {escape(remote.name)}, which made its schema")
    if no_seed:
        return
    counts = remote.taxonomy_counts()
    if taxonomy is not None or not counts.get("fields"):
        again = f"glan init{f' --taxonomy {taxonomy}' if taxonomy else ''}"
        raise ServerError(
            f"loading a taxonomy needs the store itself, and {remote.name} holds it: stop the "
            f"server, run {again}, and start the server again"
        )
    console.print(
        f"  already initialised: {counts['fields']:,} fields, {counts['subfields']:,} "
        f"sub-fields, {counts['disciplines']:,} disciplines"
    )


def _count_text(counts: dict[str, int]) -> str:
    parts = [f"{counts[k]:,} {k}" for k in COUNT_NAMES if counts.get(k)]
    return " · ".join(parts)


def _label(t: TreeView) -> str:
    if t.node is None:
        return "[bold]glan[/]"
    text = f"[bold]{escape(t.node.name)}[/] [dim]{t.node.kind}[/]"
    if t.node.status == Status.REJECTED:
        text += " [red](rejected)[/]"
    elif t.node.status == Status.PROPOSED:
        text += " [yellow](proposed)[/]"
    elif t.node.hidden:
        text += " [red](hidden)[/]"
    counts = _count_text(t.counts)
    return text + (f"  [cyan]{counts}[/]" if counts else "") + _combination_text(t)


def _combination_text(t: TreeView) -> str:
    """`tree --combinations`: the combinations used of the node's space, and the share."""
    c = t.combinations
    if not c or c["space_log10"] is None:
        return ""
    space = f"{c['space']:,}" if c["space"] is not None else f"10^{c['space_log10']:.1f}"
    share = c["share"] * 100
    percent = f"{share:.2f}%" if share >= 0.01 or not share else f"{share:.1e}%"
    return f"  [magenta]{c['used']:,} of {space} combinations ({percent})[/]"


def _tree_json(t: TreeView) -> dict[str, Any]:
    return {
        "path": t.path,
        "kind": t.node.kind if t.node else None,
        "id": t.node.id if t.node else None,
        "status": t.node.status if t.node else None,
        "counts": t.counts,
        **({"combinations": t.combinations} if t.combinations is not None else {}),
        "children": [_tree_json(c) for c in t.children],
    }


@app.command()
def tree(
    path: Annotated[
        str | None, typer.Argument(help="e.g. 'Natural Sciences/Physical Sciences'")
    ] = None,
    depth: Annotated[int, typer.Option(min=0, max=6, help="levels to show below PATH")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a tree")] = False,
    combinations: Annotated[
        bool,
        typer.Option(
            "--combinations",
            help="also each node's combination space (1-5 concepts of a session, 2-5 across "
            "two) and the share of it asked about",
        ),
    ] = False,
) -> None:
    """Print the taxonomy below PATH with counts of what lies beneath each node."""
    with reach() as store:
        if isinstance(store, Remote):
            root = store.tree(path, depth, combinations=combinations)
        else:
            found = store.coverage.tree(path, depth, combinations=combinations)
            root = TreeView.of(found, combinations=combinations)
    if as_json:
        console.print_json(json.dumps(_tree_json(root)))
        return
    view = Tree(_label(root) + ("" if root.node else f"  [cyan]{_count_text(root.counts)}[/]"))

    def walk(t: TreeView, into: Tree) -> None:
        for c in t.children:
            walk(c, into.add(_label(c)))

    walk(root, view)
    console.print(view)


@app.command()
def add(
    path: Annotated[str, typer.Argument(help="full path of the new node, parent first")],
    kind: Annotated[
        str | None, typer.Option(help="field|subfield|discipline|subject|session|concept")
    ] = None,
    description: Annotated[str | None, typer.Option()] = None,
    level: Annotated[str | None, typer.Option(help="subjects: e.g. undergraduate")] = None,
    subtopic: Annotated[list[str] | None, typer.Option(help="subjects: repeat for each")] = None,
    proposed: Annotated[bool, typer.Option(help="add as proposed, awaiting review")] = False,
) -> None:
    """Insert a node to extend the taxonomy; generation under it then works as anywhere else.

    The depth of PATH decides the kind (Field/SubField/Discipline/Subject/Session/Concept);
    --kind, when given, must agree.
    """
    try:
        names = split_path(path)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    if not names:
        raise fail("the path is empty")
    if len(names) > len(HIERARCHY):
        raise fail(f"paths are at most {len(HIERARCHY)} deep (Field/.../Concept)")
    implied = HIERARCHY[len(names) - 1]
    if kind is not None:
        try:
            wanted = parse_kind(kind)
        except ValueError as exc:
            raise fail(str(exc)) from exc
        if wanted is not implied:
            raise fail(
                f"a {wanted.label} sits at depth {HIERARCHY.index(wanted) + 1}, but {path!r} "
                f"is {len(names)} deep: that is where a {implied.label} goes"
            )
    props: dict[str, Any] = {}
    if description:
        props["description"] = description
    if level or subtopic:
        if implied.label != "Subject":
            raise fail("--level and --subtopic apply to subjects only")
        props["level"] = level
        props["subtopics"] = list(subtopic or [])
    parent = _parent_path(path)
    status = Status.PROPOSED if proposed else Status.APPROVED
    with reach() as store:
        if isinstance(store, Remote):
            node = store.add_node(parent, implied.label, names[-1], status=status, props=props)
        else:
            added = store.taxonomy.add_node(parent, implied, names[-1], status=status, props=props)
            node = NodeView.of(added)
    console.print(f"{node.kind} [bold]{escape(node.path or '')}[/] ({node.id}, {node.status})")


def _parent_path(path: str) -> str | None:
    """The raw text of the parent path, escapes kept, so names with '/' survive."""
    i, cut = 0, -1
    while i < len(path):
        if path[i] == "\\":
            i += 2
            continue
        if path[i] == "/":
            cut = i
        i += 1
    return path[:cut] if cut >= 0 else None


@app.command()
def review(
    path: str,
    approve: Annotated[bool, typer.Option("--approve")] = False,
    reject: Annotated[bool, typer.Option("--reject", help="hide the node and its subtree")] = False,
    propose: Annotated[bool, typer.Option("--propose", help="back to awaiting review")] = False,
) -> None:
    """Approve or reject a node. Rejecting hides its whole subtree from generation and coverage."""
    chosen = [
        s
        for s, on in (
            (Status.APPROVED, approve),
            (Status.REJECTED, reject),
            (Status.PROPOSED, propose),
        )
        if on
    ]
    if len(chosen) != 1:
        raise fail("give exactly one of --approve, --reject, --propose", 2)
    with reach() as store:
        if isinstance(store, Remote):
            node = store.review(path, chosen[0])
        else:
            node = NodeView.of(store.taxonomy.review(path, chosen[0]))
    console.print(f"{escape(node.path or '')}: {node.status}")


@app.command()
def link(
    parent: Annotated[str, typer.Argument(help="a discipline path")],
    subject: Annotated[str, typer.Argument(help="an existing subject's path")],
) -> None:
    """Put an existing subject under one more discipline (shared subjects are kept once)."""
    with reach() as store:
        if isinstance(store, Remote):
            name, paths = store.link(parent, subject)
        else:
            node = store.taxonomy.link(parent, subject)
            name, paths = node.name, store.taxonomy.paths_of(node.id)
    console.print(f"{escape(name)} now under {len(paths)} discipline(s)")


@app.command()
def delete(
    path: str,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
) -> None:
    """Delete a node and what lies only beneath it (prefer `review --reject`, which keeps data)."""

    def confirm(counts: dict[str, int]) -> None:
        if not yes:
            typer.confirm(
                f"delete {path!r} and {_count_text(counts) or 'nothing below'}?", abort=True
            )

    with reach() as store:
        if isinstance(store, Remote):
            confirm(store.counts(path))
            removed = store.delete(path)
        else:
            confirm(store.coverage.counts(path))
            removed = store.taxonomy.delete_subtree(path)
    console.print(", ".join(f"{n} {k}" for k, n in removed.items() if n) or "nothing removed")


@app.command()
def show(path: str) -> None:
    """Show one node: its properties, every path that reaches it, and counts below it."""
    with reach() as store:
        if isinstance(store, Remote):
            info = store.show(path)
        else:
            node = store.taxonomy.node(path)
            paths = store.taxonomy.paths_of(node.id)
            counts = store.coverage.counts(path)
            info = show_info(node.kind.label, node.props, paths, node.hidden, counts)
    console.print_json(json.dumps(info, default=str))


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


@app.command()
def export(
    path: Annotated[str | None, typer.Argument(help="subtree to export (default: all)")] = None,
    fmt: Annotated[str, typer.Option("--format", help="chat|sharegpt|alpaca")] = "chat",
    out: Annotated[Path | None, typer.Option(help="JSONL file to write")] = None,
    hf: Annotated[Path | None, typer.Option(help="save a datasets.DatasetDict here")] = None,
    responses: Annotated[str, typer.Option(help="first|all responses per instruction")] = "first",
    test_fraction: Annotated[
        float, typer.Option(min=0, max=0.99, help="share of subjects held out for test")
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="seed of the train/test split")] = 0,
    min_score: Annotated[
        float | None,
        typer.Option(
            min=1, max=10, help="only pairs the judge scored this or higher (1-10; unjudged out)"
        ),
    ] = None,
    include_duplicates: Annotated[
        bool, typer.Option("--include-duplicates", help="keep the pairs dedup marked")
    ] = False,
    include_contaminated: Annotated[
        bool, typer.Option("--include-contaminated", help="keep the pairs decontamination marked")
    ] = False,
) -> None:
    """Write instruction/response pairs with their provenance (approved subtrees only;
    duplicates and contaminated pairs left out unless asked for)."""
    from generators.export import Keep, export_hf, export_jsonl

    keep = Keep(min_score, include_duplicates, include_contaminated)

    if (out is None) == (hf is None):
        raise fail("give exactly one of --out FILE.jsonl and --hf DIR", 2)
    if responses not in ("first", "all"):
        raise fail("--responses must be first or all", 2)
    with whole_store("export") as store:
        if out is not None:
            result = export_jsonl(
                store,
                path,
                out,
                fmt=fmt,
                responses=responses,  # type: ignore[arg-type]
                test_fraction=test_fraction,
                seed=seed,
                keep=keep,
            )
        else:
            assert hf is not None
            result = export_hf(
                store,
                path,
                hf,
                fmt=fmt,
                responses=responses,  # type: ignore[arg-type]
                test_fraction=test_fraction,
                seed=seed,
                keep=keep,
            )
    s = result.skipped
    # one line per file written, with the pairs in it; never wrapped, so paths stay whole
    if out is not None:
        for split, written in result.files.items():
            label = f"{split} " if len(result.files) > 1 else ""
            console.print(
                f"wrote {result.counts[split]:,} {label}pairs to {escape(written)}",
                soft_wrap=True,
            )
    else:
        console.print(
            f"wrote {result.counts['train']:,} train / {result.counts['test']:,} test pairs "
            f"to {escape(result.files['dataset'])}",
            soft_wrap=True,
        )
    scored = (
        f", {s.below_score:,} below the minimum score, {s.unjudged:,} not judged"
        if min_score is not None
        else ""
    )
    console.print(
        f"left out {s.duplicates:,} duplicates, {s.contaminated:,} contaminated, "
        f"{s.unanswered:,} unanswered{scored}"
    )


@app.command()
def dedup(
    path: Annotated[str | None, typer.Argument(help="subtree (default: all)")] = None,
    threshold: Annotated[float, typer.Option(min=0.01, max=1.0, help="near-dup Jaccard")] = 0.8,
    near: Annotated[bool, typer.Option(help="also find near duplicates (MinHash LSH)")] = True,
) -> None:
    """Mark exact and near-duplicate instructions (a DUPLICATE_OF edge); export skips them."""
    from generators.cleaning import dedup as run_dedup

    with whole_store("dedup") as store:
        result = run_dedup(store, path, threshold=threshold, near=near)
    console.print(
        f"scanned {result.scanned:,} instructions: {len(result.exact):,} exact and "
        f"{len(result.near):,} near duplicates marked"
    )


@app.command()
def decontaminate(
    benchmark: Annotated[
        list[str],
        typer.Option(
            help="[NAME=]PATH[:SPLIT], repeatable: a .jsonl, .csv or .parquet file (SPLIT: the "
            "split it holds; default: a split word in its name, else test), or a directory "
            "saved by datasets (SPLIT: the one to read; default: all)"
        ),
    ],
    path: Annotated[str | None, typer.Argument(help="subtree (default: all)")] = None,
    field: Annotated[
        str | None,
        typer.Option(
            "--field",
            "--column",
            help="the column holding the benchmark text (default: the first of question, "
            "prompt, problem, input, text that the data has)",
        ),
    ] = None,
    method: Annotated[str, typer.Option(help="containment|ngram|both")] = "both",
    n: Annotated[int, typer.Option(min=1, max=100, help="word n-gram length")] = 13,
    min_words: Annotated[
        int,
        typer.Option(
            min=1, max=100, help="containment leaves out benchmark texts shorter than this"
        ),
    ] = 5,
) -> None:
    """Mark pairs whose question or answer holds a benchmark text whole (after
    normalisation) or shares an n-word run with one; export leaves them out."""
    from generators.cleaning import BenchmarkSpec, load_benchmarks
    from generators.cleaning import decontaminate as run

    if method not in ("both", "containment", "ngram"):
        raise fail("--method must be containment, ngram or both", 2)
    # absolute, as the server that may read them has a working directory of its own
    specs = [BenchmarkSpec.parse(b) for b in benchmark]
    specs = [BenchmarkSpec(s.path.absolute(), s.split, s.name) for s in specs]
    with reach() as store:
        if isinstance(store, Remote):
            result = store.decontaminate(
                path, specs, field=field, method=method, n=n, min_words=min_words
            )
        else:
            loaded = load_benchmarks(specs, field)
            result = run(store, path, loaded, n=n, method=method, min_words=min_words)
    read = ", ".join(f"{source} ({texts:,} texts)" for source, texts in result.benchmarks.items())
    console.print(f"read {escape(read)}", soft_wrap=True)
    if result.short:
        console.print(
            f"{result.short:,} benchmark texts under {min_words} words left out of containment"
        )
    console.print(
        f"scanned {result.scanned:,} instructions: {len(result.instructions):,} "
        f"instructions and {len(result.responses):,} responses marked contaminated"
    )
    for iid, marks in sorted(result.marks.items()):
        sides: dict[str, set[str]] = {}
        for m in marks:
            sides.setdefault(m.source, set()).add(m.side)
        found = ", ".join(
            f"{s} ({', '.join(sorted(v, reverse=True))})" for s, v in sorted(sides.items())
        )
        console.print(f"  {iid}  {escape(found)}", soft_wrap=True)


@app.command()
def report(
    path: Annotated[str | None, typer.Argument(help="subtree (default: all)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Pairs, what export keeps and why the rest is out, failures, lengths, coverage."""
    from rich.table import Table

    from generators.cost import usd
    from generators.report import build_report

    prices = settings().price_table()
    with whole_store("report") as store:
        rep = build_report(store, path, prices=prices)
    if as_json:
        console.print_json(json.dumps(rep.as_dict()))
        return
    table = Table("measure", "value", title=f"glan report: {rep.path or 'all'}")
    for key in (
        "instructions",
        "pairs_total",
        "exported",
        "duplicates_exact",
        "duplicates_near",
        "contaminated_instructions",
        "unanswered",
        "concepts",
        "covered_concepts",
        "concept_coverage",
        "combinations",
    ):
        table.add_row(key.replace("_", " "), f"{getattr(rep, key):,}")
    table.add_row("combination space", f"{rep.combination_space:,}")
    table.add_row("combination share", f"{rep.combination_share:.4%}")
    for k, v in rep.answer_length.items():
        table.add_row(f"answer length {k}", f"{v:,}")
    for reason, count in rep.failed_units.items():
        table.add_row(f"failed: {escape(reason)}", str(count))
    table.add_row("tokens in / out", f"{rep.prompt_tokens:,} / {rep.completion_tokens:,}")
    unpriced = f" ({rep.unpriced_jobs} job(s) with no price left out)" if rep.unpriced_jobs else ""
    table.add_row("estimated cost", f"{usd(rep.estimated_cost_usd)}{unpriced}")
    console.print(table)
    if rep.jobs:
        t = Table("stage", "scope", "status", "model", "tokens in/out", "cost", title="jobs")
        for j in rep.jobs:
            t.add_row(
                j["stage"],
                escape(j["scope"] or "(all)"),
                j["status"],
                escape(j["model"] or "?"),
                f"{j['prompt_tokens']:,}/{j['completion_tokens']:,}",
                usd(j["estimated_cost_usd"]),
            )
        console.print(t)
    for title, rows in (("most covered", rep.most_covered), ("least covered", rep.least_covered)):
        if rows:
            t = Table("discipline", "instructions", "concepts", "per concept", title=title)
            for r in rows:
                t.add_row(
                    escape(r["discipline"]),
                    str(r["instructions"]),
                    str(r["concepts"]),
                    str(r["per_concept"]),
                )
            console.print(t)
    if rep.least_combined:
        t = Table("subject", "combinations used", "space", "share", title="least combined")
        for r in rep.least_combined:
            share = f"{r['share']:.4%}"
            t.add_row(escape(r["subject"]), f"{r['used']:,}", f"{r['space']:,}", share)
        console.print(t)
    _print_diversity_and_contamination(rep.diversity, rep.contamination)
    _print_quality(rep)


def _print_quality(rep: Any) -> None:
    """The report's judge scores (under the path and per discipline) and its validator
    rejections by rule."""
    from rich.table import Table

    def mean(row: dict[str, Any]) -> str:
        return "-" if row["mean"] is None else f"{row['mean']:.2f}"

    def bars(row: dict[str, Any]) -> str:
        return " ".join(f"{k}:{n}" for k, n in row["histogram"].items() if n)

    if rep.scores and rep.scores["judged"]:
        t = Table("discipline", "judged", "mean", "pairs per score", title="judge scores (1-10)")
        for row in rep.scores_by_discipline:
            t.add_row(escape(row["discipline"]), f"{row['judged']:,}", mean(row), bars(row))
        t.add_row(escape(rep.path or "all"), f"{rep.scores['judged']:,}", mean(rep.scores),
                  bars(rep.scores))  # fmt: skip
        console.print(t)
    if rep.validator_rejections or rep.validator_drops:  # every rule, zeros included
        t = Table("rule", "failed units", "items left out", title="validator rejections by rule")
        for rule in dict.fromkeys([*rep.validator_rejections, *rep.validator_drops]):
            failed, left = rep.validator_rejections.get(rule, 0), rep.validator_drops.get(rule, 0)
            t.add_row(rule, f"{failed:,}", f"{left:,}")
        console.print(t)


def _print_diversity_and_contamination(div: dict[str, Any], matrix: dict[str, Any]) -> None:
    """The report's diversity table and its discipline x benchmark contamination matrix."""
    from rich.table import Table

    if div:
        t = Table("measure", "value", title="diversity of the questions")
        approx = " (approximate)" if div["distinct_approximate"] else ""
        t.add_row("distinct-1", f"{div['distinct_1']}{approx}")
        t.add_row("distinct-2", f"{div['distinct_2']}{approx}")
        t.add_row("near-duplicate rate before dedup", str(div["near_duplicate_rate_before"]))
        t.add_row("near-duplicate rate after dedup", str(div["near_duplicate_rate_after"]))
        spread = div["questions_per_concept"]
        t.add_row(
            "questions per concept min / median / max",
            f"{spread['min']} / {spread['median']} / {spread['max']}",
        )
        t.add_row("share of concepts used", str(div["concept_share"]))
        space = div["combination_space"]
        used = f"{div['combinations_used']:,}"
        t.add_row(
            "concept combinations used",
            f"{used} of {space:,} ({div['combination_share']})" if space else used,
        )
        console.print(t)
    if matrix and matrix["benchmarks"]:
        t = Table("discipline", "instructions", *map(escape, matrix["benchmarks"]))
        t.title = "contaminated instructions per benchmark (count, share)"
        for row in [*matrix["rows"], {**matrix["total"], "discipline": "all"}]:
            cells = [
                f"{row['counts'].get(b, 0):,} ({row['shares'].get(b, 0.0):.1%})"
                for b in matrix["benchmarks"]
            ]
            t.add_row(escape(row["discipline"]), f"{row['instructions']:,}", *cells)
        console.print(t)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="default: GLAN_HOST (127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="default: GLAN_PORT (8000)")] = None,
) -> None:
    """Serve the GraphQL API (GraphiQL at /graphql); the server owns the store while it runs."""
    import uvicorn

    from .app import create_app

    cfg = settings()
    # the app records where it listens (beside an embedded store), for the CLI to find it
    cfg = cfg.model_copy(update={"host": host or cfg.host, "port": port or cfg.port})
    uvicorn.run(create_app(cfg), host=cfg.host, port=cfg.port)


batch_app = _App(
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


model_app = _App(help="The bundled offline model.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("serve")
def model_serve(
    host: str = "127.0.0.1",
    port: int = 8080,
    threads: Annotated[int, typer.Option(help="CPU threads for the model")] = 1,
) -> None:
    """Serve the bundled SmolLM2-135M-Instruct on an OpenAI-compatible endpoint, offline."""
    from generators.local_model import serve_forever

    serve_forever(host=host, port=port, n_threads=threads)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
