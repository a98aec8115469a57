"""Datasets out: export, dedup, decontaminate, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ..remote import Remote
from .common import app, console, fail, reach, settings, whole_store


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
