"""Commands on the taxonomy: init, tree, add, review, link, delete, show."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.tree import Tree

from graph.model import HIERARCHY, Status, parse_kind, split_path
from graph.records import COUNT_NAMES

from ..remote import Remote, ServerError
from ..views import NodeView, TreeView, show_info
from .common import app, console, fail, reach, read_taxonomy, settings


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
