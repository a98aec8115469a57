"""Read-only queries. They stay open when an API token is set."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Annotated, Any

import strawberry
from strawberry.types import Info

from graph.errors import GlanError, InvalidInput
from graph.filters import InstructionFilter as Filter
from graph.model import HIERARCHY
from graph.records import Node

from ..context import Context
from .batch import BatchRecord, job_batches
from .coverage import Coverage
from .errors import (
    InvalidInputError,
    NotApprovedError,
    NotFoundError,
    WrongKindError,
    problem,
)
from .estimate import EstimateResult, job_estimate
from .gaps import Gaps
from .instruction import Instruction, InstructionFilter, InstructionSample
from .job import Job, JobState, StageName
from .node import Kind, TaxonomyNode
from .pagination import (
    MAX_PAGE,
    Connection,
    connection,
    decode_cursor,
    page_size,
    paginate,
)
from .tree import TreeNode

#: How many levels `subtree` returns at once: from the root, fields to disciplines; from a
#: discipline, subjects to concepts. Deeper views page through `children`.
MAX_SUBTREE_DEPTH = 3

NodeResult = Annotated[
    TaxonomyNode | NotFoundError | InvalidInputError, strawberry.union("NodeResult")
]
ChildrenResult = Annotated[
    Connection[TaxonomyNode] | NotFoundError | InvalidInputError,
    strawberry.union("ChildrenResult"),
]
SubtreeResult = Annotated[
    TreeNode | NotFoundError | InvalidInputError, strawberry.union("SubtreeResult")
]
SearchResult = Annotated[
    Connection[TaxonomyNode] | InvalidInputError, strawberry.union("SearchResult")
]
CoverageResult = Annotated[
    Coverage | NotFoundError | InvalidInputError, strawberry.union("CoverageResult")
]
InstructionsResult = Annotated[
    Connection[Instruction] | NotFoundError | NotApprovedError | WrongKindError | InvalidInputError,
    strawberry.union("InstructionsResult"),
]
SampleResult = Annotated[
    InstructionSample | NotFoundError | NotApprovedError | WrongKindError | InvalidInputError,
    strawberry.union("SampleResult"),
]
GapsResult = Annotated[Gaps | NotFoundError | InvalidInputError, strawberry.union("GapsResult")]
JobsResult = Annotated[Connection[Job] | InvalidInputError, strawberry.union("JobsResult")]
JobResult = Annotated[Job | NotFoundError, strawberry.union("JobResult")]


async def job_view(ctx: Context, job_id: str) -> Job | None:
    """A job as it stands: live progress while this server runs it, else the stored row."""
    entry = ctx.jobs.running.get(job_id)
    if entry is not None:
        return Job.of(entry.latest, live=True)
    row = await ctx.run(ctx.store.jobs.get, job_id) if job_id.startswith("job_") else None
    return Job.of_row(row) if row else None


def _node_by_id(ctx: Context, node_id: str) -> TaxonomyNode | NotFoundError:
    node = ctx.store.nodes.get(node_id)
    if node is None or node.kind not in HIERARCHY:
        return NotFoundError(
            message=f"no taxonomy node with id {node_id!r}", id=strawberry.ID(node_id)
        )
    paths = ctx.store.taxonomy.paths_of(node.id)
    # reached by its first path, so `hidden` and `path` are as that path sees them
    return TaxonomyNode.of(ctx.store.taxonomy.node(paths[0]) if paths else node)


@strawberry.type
class Query:
    @strawberry.field(description="A node by id or by path (give exactly one).")
    async def node(
        self, info: Info[Context, None], id: strawberry.ID | None = None, path: str | None = None
    ) -> NodeResult:
        ctx = info.context

        def read() -> NodeResult:
            try:
                if (id is None) == (path is None):
                    raise InvalidInput("give exactly one of id and path")
                if path is not None:
                    return TaxonomyNode.of(ctx.store.taxonomy.node(path))
                return _node_by_id(ctx, str(id))
            except GlanError as exc:
                return problem(exc)

        return await ctx.run(read)

    @strawberry.field(description="Children of a path in syllabus or name order (no path: fields).")
    async def children(
        self,
        info: Info[Context, None],
        path: str | None = None,
        first: int = 100,
        after: str | None = None,
    ) -> ChildrenResult:
        ctx = info.context

        def read() -> ChildrenResult:
            try:
                kids = ctx.store.taxonomy.children(path or None)
                return paginate(kids, first, after, key=lambda n: n.id, wrap=TaxonomyNode.of)
            except GlanError as exc:
                return problem(exc)

        return await ctx.run(read)

    @strawberry.field(
        description=f"The tree below a path with counts at every node, up to "
        f"{MAX_SUBTREE_DEPTH} levels deep."
    )
    async def subtree(
        self, info: Info[Context, None], path: str | None = None, depth: int = 2
    ) -> SubtreeResult:
        ctx = info.context
        # coverage costs a query per level: only when the selection asks for it
        covered = _selects(info.selected_fields, {"coveredConcepts", "conceptCoverage"})
        combinations = _selects(info.selected_fields, COMBINATION_FIELDS)

        def read() -> SubtreeResult:
            try:
                if not 0 <= depth <= MAX_SUBTREE_DEPTH:
                    raise InvalidInput(
                        f"depth must be between 0 and {MAX_SUBTREE_DEPTH}; for deeper levels "
                        "ask for the subtree of a lower path"
                    )
                tree = ctx.store.coverage.tree(
                    path or None, depth, covered=covered, combinations=combinations
                )
                return TreeNode.of(tree)
            except GlanError as exc:
                return problem(exc)

        return await ctx.read(("subtree", path or None, depth, covered, combinations), read)

    @strawberry.field(description="Nodes whose name contains the text, case ignored, by id.")
    async def search(
        self,
        info: Info[Context, None],
        text: str,
        kind: Kind | None = None,
        first: int = 50,
        after: str | None = None,
    ) -> SearchResult:
        ctx = info.context

        def read() -> SearchResult:
            try:
                size = page_size(first)
                kinds = [kind.node_kind] if kind else list(HIERARCHY)
                found = ctx.store.taxonomy.search(
                    text, kinds, limit=size + 1, after=decode_cursor(after) or ""
                )
                return connection(
                    found[:size], has_next=len(found) > size, key=_id, wrap=TaxonomyNode.of
                )
            except GlanError as exc:
                return problem(exc)

        return await ctx.run(read)

    @strawberry.field(
        description="Where the data stands under a path and under each of its children: "
        "counts, concept and combination coverage, gaps."
    )
    async def coverage(self, info: Info[Context, None], path: str | None = None) -> CoverageResult:
        ctx = info.context

        def read() -> CoverageResult:
            try:
                return Coverage.of(ctx.store.coverage.report(path or None))
            except GlanError as exc:
                return problem(exc)

        return await ctx.read(("coverage", path or None), read)

    @strawberry.field(
        description="Under a path: the `first` least covered concepts and the first subjects "
        "without a syllabus, the subjects and sessions with the lowest share of their "
        "combination space asked about, and the approved concepts fewer than `minCount` "
        "instructions cover (each list at most `first` long)."
    )
    async def gaps(
        self,
        info: Info[Context, None],
        path: str | None = None,
        first: int = 10,
        min_count: int = 0,
    ) -> GapsResult:
        ctx = info.context
        # the thinnest sessions walk every session below: only when the selection asks
        thinnest = _selects(info.selected_fields, {"thinnestSubjects", "thinnestSessions"})

        def read() -> GapsResult:
            try:
                found = ctx.store.coverage.gaps(
                    path or None, page_size(first), min_count=min_count, thinnest=thinnest
                )
                return Gaps.of(found)
            except GlanError as exc:
                return problem(exc)

        return await ctx.read(("gaps", path or None, first, min_count, thinnest), read)

    @strawberry.field(description="Instructions under an approved path (session or above), by id.")
    async def instructions(
        self,
        info: Info[Context, None],
        path: str | None = None,
        filter: InstructionFilter | None = None,
        first: int = 50,
        after: str | None = None,
        min_score: Annotated[
            float | None,
            strawberry.argument(
                description="Only instructions with an answer the judge scored this or higher "
                "(overall, 1-10); unjudged ones are left out."
            ),
        ] = None,
    ) -> InstructionsResult:
        ctx = info.context
        store = ctx.store

        def read() -> InstructionsResult:
            try:
                size = page_size(first)
                flt = filter.to_filter() if filter else Filter()
                if min_score is not None:
                    if not 1 <= min_score <= 10:
                        raise InvalidInput(f"minScore must be between 1 and 10, got {min_score}")
                    flt = replace(flt, min_score=min_score)
                scope = store.taxonomy.scope(path)
                page, more = store.instructions.page(scope, flt, size, decode_cursor(after))
                return connection(
                    page,
                    has_next=more,
                    key=_id,
                    wrap=Instruction.of,
                    count=lambda: store.instructions.count(scope, flt),
                )
            except GlanError as exc:
                return problem(exc)

        return await ctx.run(read)

    @strawberry.field(
        description="A random sample of the instructions under a path: the same seed gives "
        "the same sample while the data is unchanged."
    )
    async def sample_instructions(
        self, info: Info[Context, None], path: str | None = None, n: int = 5, seed: int = 0
    ) -> SampleResult:
        ctx = info.context
        store = ctx.store

        def read() -> SampleResult:
            try:
                if not 1 <= n <= MAX_PAGE:
                    raise InvalidInput(f"n must be between 1 and {MAX_PAGE}, got {n}")
                chosen = store.instructions.sample(store.taxonomy.scope(path), n, seed)
                return InstructionSample(
                    seed=seed, instructions=[Instruction.of(i) for i in chosen]
                )
            except GlanError as exc:
                return problem(exc)

        return await ctx.run(read)

    @strawberry.field(description="Jobs, newest first; those this server runs show live progress.")
    async def jobs(
        self,
        info: Info[Context, None],
        status: JobState | None = None,
        kind: StageName | None = None,
        first: int = 50,
        after: str | None = None,
    ) -> JobsResult:
        ctx = info.context
        rows = await ctx.run(ctx.store.jobs.all)
        try:
            stored = {str(r["id"]): r for r in rows}
            live = ctx.jobs.running
            # a job just started may not have written its row yet: newest, so first
            jobs = [Job.of(e.latest, live=True) for i, e in live.items() if i not in stored]
            jobs += [
                Job.of(live[i].latest, live=True, row=row) if i in live else Job.of_row(row)
                for i, row in stored.items()
            ]
            jobs = [
                j
                for j in jobs
                if (status is None or j.status == status) and (kind is None or j.kind == kind)
            ]
            return paginate(jobs, first, after, key=lambda j: str(j.id), wrap=lambda j: j)
        except GlanError as exc:
            return problem(exc)

    @strawberry.field
    async def job(self, info: Info[Context, None], id: strawberry.ID) -> JobResult:
        found = await job_view(info.context, str(id))
        if found is None:
            return NotFoundError(message=f"no job {str(id)!r} (see the jobs query)", id=id)
        return found

    job_estimate: EstimateResult = strawberry.field(
        resolver=job_estimate,
        description="A dry run: the job a generation mutation with these arguments would start "
        "or resume, its units left and what they would cost; nothing is stored or asked.",
    )

    batches: list[BatchRecord] = strawberry.field(
        resolver=job_batches,
        description="The batches jobs submitted to the Batch API (those of `jobId` only, given "
        "one), by job then in order, as last recorded.",
    )


def _id(node: Node) -> str:
    return node.id


#: TreeNode fields that need tree(combinations=True)
COMBINATION_FIELDS = {
    "combinationSpace",
    "combinationSpaceLog10",
    "combinationsUsed",
    "combinationShare",
}


def _selects(selections: Sequence[Any], names: set[str]) -> bool:
    """Whether any field named in `names` is selected anywhere below (fragments included)."""
    for sel in selections:
        if getattr(sel, "name", None) in names:
            return True
        if _selects(getattr(sel, "selections", None) or [], names):
            return True
    return False
