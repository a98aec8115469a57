"""The GraphQL schema: types over the store, queries, mutations and the job subscription.

Resolvers translate between GraphQL and graph/store.py or generators/; expected failures
come back as typed error results, not as stack traces.
"""

from __future__ import annotations

import base64
import random
from collections.abc import AsyncGenerator
from enum import Enum
from functools import partial
from typing import Annotated, Any

import strawberry
from strawberry.extensions import MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter
from strawberry.permission import BasePermission
from strawberry.types import Info

from generators.jobs import Progress
from generators.manager import JobConflict, JobNotFound
from generators.pipeline import PipelineOptions
from graph.errors import GlanError, InvalidInput, NodeNotFound, ScopeNotApproved, WrongKind
from graph.model import HIERARCHY, Status, parse_kind
from graph.store import Coverage as StoreCoverage
from graph.store import CoverageRow as StoreCoverageRow
from graph.store import Node
from graph.store import TreeNode as StoreTreeNode

from .context import Context

MAX_PAGE = 500


# ---------------------------------------------------------------------- errors


@strawberry.interface
class Problem:
    message: str


@strawberry.type
class NotFoundError(Problem):
    path: str | None = None


@strawberry.type
class InvalidInputError(Problem):
    pass


@strawberry.type
class WrongKindError(Problem):
    pass


@strawberry.type
class NotApprovedError(Problem):
    path: str
    status: str


@strawberry.type
class JobConflictError(Problem):
    job_id: str


def problem(exc: GlanError) -> Any:
    """The typed result for an expected failure."""
    if isinstance(exc, NodeNotFound):
        return NotFoundError(message=str(exc), path=exc.path)
    if isinstance(exc, JobNotFound):
        return NotFoundError(message=str(exc))
    if isinstance(exc, ScopeNotApproved):
        return NotApprovedError(message=str(exc), path=exc.path, status=exc.status)
    if isinstance(exc, WrongKind):
        return WrongKindError(message=str(exc))
    if isinstance(exc, JobConflict):
        return JobConflictError(message=str(exc), job_id=exc.job_id)
    return InvalidInputError(message=str(exc))


# ---------------------------------------------------------------------- types


@strawberry.type
class Counts:
    fields: int = 0
    subfields: int = 0
    disciplines: int = 0
    subjects: int = 0
    sessions: int = 0
    concepts: int = 0
    instructions: int = 0
    responses: int = 0

    @classmethod
    def of(cls, counts: dict[str, int]) -> Counts:
        return cls(**{k: v for k, v in counts.items() if k in cls.__annotations__})


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


def _cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode()


def _uncursor(cursor: str | None) -> str:
    if not cursor:
        return ""
    try:
        return base64.urlsafe_b64decode(cursor.encode()).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"invalid cursor {cursor!r}") from exc


def _first(first: int) -> int:
    if not 1 <= first <= MAX_PAGE:
        raise InvalidInput(f"first must be between 1 and {MAX_PAGE}")
    return first


@strawberry.type
class TaxonomyNode:
    id: strawberry.ID
    kind: str
    name: str
    path: str | None
    status: str | None
    source: str | None
    description: str | None
    level: str | None
    subtopics: list[str] | None
    position: int | None
    hidden: bool
    model: str | None
    prompt_name: str | None
    prompt_version: str | None

    @classmethod
    def of(cls, node: Node) -> TaxonomyNode:
        p = node.props
        return cls(
            id=strawberry.ID(node.id), kind=node.kind.label, name=node.name,
            path=node.path or p.get("path"),
            status=p.get("status"), source=p.get("source"), description=p.get("description"),
            level=p.get("level"), subtopics=p.get("subtopics"), position=p.get("position"),
            hidden=node.hidden, model=p.get("model"), prompt_name=p.get("prompt_name"),
            prompt_version=p.get("prompt_version"),
        )

    @strawberry.field(description="Every path that reaches this node (a shared subject: several).")
    async def paths(self, info: Info[Context, None]) -> list[str]:
        return await info.context.loaders.paths.load(str(self.id))

    @strawberry.field
    def counts(self, info: Info[Context, None]) -> Counts | None:
        if self.path is None:
            return None
        return Counts.of(info.context.store.counts(self.path))

    @strawberry.field
    def children(
        self, info: Info[Context, None], first: int = 100, after: str | None = None
    ) -> NodeConnection:
        return _children_page(info.context, self.path, first, after)


@strawberry.type
class NodeEdge:
    cursor: str
    node: TaxonomyNode


@strawberry.type
class NodeConnection:
    edges: list[NodeEdge]
    page_info: PageInfo
    total_count: int


def _children_page(ctx: Context, path: str | None, first: int, after: str | None
                   ) -> NodeConnection:
    kids = ctx.store.children(path)
    return _page(kids, first, after, key=lambda n: n.id)


def _page(nodes: list[Node], first: int, after: str | None, key: Any) -> NodeConnection:
    first = _first(first)
    start = _uncursor(after)
    ordered = nodes
    if start:
        ids = [key(n) for n in ordered]
        ordered = ordered[ids.index(start) + 1 :] if start in ids else []
    page = ordered[:first]
    edges = [NodeEdge(cursor=_cursor(key(n)), node=TaxonomyNode.of(n)) for n in page]
    return NodeConnection(
        edges=edges,
        page_info=PageInfo(has_next_page=len(ordered) > first,
                           end_cursor=edges[-1].cursor if edges else None),
        total_count=len(nodes),
    )


@strawberry.type
class TreeNode:
    node: TaxonomyNode | None
    path: str
    counts: Counts
    children: list[TreeNode]

    @classmethod
    def of(cls, t: StoreTreeNode) -> TreeNode:
        return cls(node=TaxonomyNode.of(t.node) if t.node else None, path=t.path,
                   counts=Counts.of(t.counts), children=[cls.of(c) for c in t.children])


@strawberry.type
class CoverageRow:
    node: TaxonomyNode | None
    path: str
    counts: Counts
    covered_concepts: int
    concept_coverage: float
    combinations: int
    subjects_without_syllabus: int
    disciplines_without_subjects: int

    @classmethod
    def of(cls, r: StoreCoverageRow) -> CoverageRow:
        return cls(
            node=TaxonomyNode.of(r.node) if r.node else None, path=r.path,
            counts=Counts.of(r.counts), covered_concepts=r.covered_concepts,
            concept_coverage=r.concept_coverage, combinations=r.combinations,
            subjects_without_syllabus=r.subjects_without_syllabus,
            disciplines_without_subjects=r.disciplines_without_subjects,
        )


@strawberry.type
class Coverage:
    total: CoverageRow
    children: list[CoverageRow]

    @classmethod
    def of(cls, c: StoreCoverage) -> Coverage:
        return cls(total=CoverageRow.of(c.total), children=[CoverageRow.of(r) for r in c.children])


@strawberry.type
class Response:
    id: strawberry.ID
    text: str
    model: str | None
    prompt_name: str | None
    prompt_version: str | None
    temperature: float | None
    top_p: float | None
    contaminated: str | None

    @classmethod
    def of(cls, n: Node) -> Response:
        p = n.props
        return cls(id=strawberry.ID(n.id), text=p.get("text") or "", model=p.get("model"),
                   prompt_name=p.get("prompt_name"), prompt_version=p.get("prompt_version"),
                   temperature=p.get("temperature"), top_p=p.get("top_p"),
                   contaminated=p.get("contaminated"))


@strawberry.type
class Instruction:
    id: strawberry.ID
    text: str
    strategy: str | None
    seed: int | None
    model: str | None
    prompt_name: str | None
    prompt_version: str | None
    job_id: str | None
    created_at: str | None
    duplicate: str | None
    contaminated: str | None
    subject_id: strawberry.Private[str]

    @classmethod
    def of(cls, n: Node) -> Instruction:
        p = n.props
        return cls(
            id=strawberry.ID(n.id), text=p.get("text") or "", strategy=p.get("strategy"),
            seed=p.get("seed"), model=p.get("model"), prompt_name=p.get("prompt_name"),
            prompt_version=p.get("prompt_version"), job_id=p.get("job_id"),
            created_at=p.get("created_at"), duplicate=p.get("duplicate"),
            contaminated=p.get("contaminated"), subject_id=p.get("subject_id") or "",
        )

    @strawberry.field
    async def subject(self, info: Info[Context, None]) -> TaxonomyNode | None:
        node = await info.context.loaders.node.load(self.subject_id) if self.subject_id else None
        return TaxonomyNode.of(node) if node else None

    @strawberry.field
    async def concepts(self, info: Info[Context, None]) -> list[TaxonomyNode]:
        return await _nodes(info, await info.context.loaders.covers.load(str(self.id)))

    @strawberry.field
    async def sessions(self, info: Info[Context, None]) -> list[TaxonomyNode]:
        return await _nodes(info, await info.context.loaders.sessions.load(str(self.id)))

    @strawberry.field
    async def responses(self, info: Info[Context, None]) -> list[Response]:
        ids = await info.context.loaders.responses.load(str(self.id))
        nodes = await info.context.loaders.node.load_many(ids)
        return [Response.of(n) for n in nodes if n is not None]


async def _nodes(info: Info[Context, None], ids: list[str]) -> list[TaxonomyNode]:
    nodes = await info.context.loaders.node.load_many(ids)
    return sorted((TaxonomyNode.of(n) for n in nodes if n is not None),
                  key=lambda t: (t.position or 0, t.name))


@strawberry.type
class InstructionEdge:
    cursor: str
    node: Instruction


@strawberry.type
class InstructionConnection:
    edges: list[InstructionEdge]
    page_info: PageInfo
    total_count: int


@strawberry.input
class InstructionFilter:
    strategy: str | None = None
    model: str | None = None
    include_duplicates: bool = True
    include_contaminated: bool = True


@strawberry.type
class Job:
    id: strawberry.ID
    kind: str
    scope: str
    status: str
    total: int
    done: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    error: str | None

    @classmethod
    def of(cls, p: Progress) -> Job:
        return cls(id=strawberry.ID(p.job_id), kind=p.stage, scope=p.scope, status=p.status,
                   total=p.total, done=p.done, failed=p.failed, prompt_tokens=p.prompt_tokens,
                   completion_tokens=p.completion_tokens, error=p.error)


NodeResult = Annotated[
    TaxonomyNode | NotFoundError | InvalidInputError | WrongKindError,
    strawberry.union("NodeResult"),
]
TreeResult = Annotated[TreeNode | NotFoundError | InvalidInputError, strawberry.union("TreeResult")]
CoverageResult = Annotated[Coverage | NotFoundError, strawberry.union("CoverageResult")]
InstructionsResult = Annotated[
    InstructionConnection | NotFoundError | NotApprovedError | InvalidInputError | WrongKindError,
    strawberry.union("InstructionsResult"),
]
JobResult = Annotated[
    Job | NotFoundError | NotApprovedError | JobConflictError | InvalidInputError | WrongKindError,
    strawberry.union("JobResult"),
]


# ---------------------------------------------------------------------- queries


def _instruction_page(ctx: Context, path: str | None, flt: InstructionFilter | None,
                      first: int, after: str | None) -> InstructionConnection:
    first = _first(first)
    ids = ctx.store.instruction_ids_in_scope(ctx.store.scope(path))
    start = _uncursor(after)
    if start:
        ids = [i for i in ids if i > start]
    edges: list[InstructionEdge] = []
    # filters read the candidates a page at a time, so a large scope stays cheap
    for chunk_start in range(0, len(ids), first):
        nodes = ctx.store.get_many(ids[chunk_start : chunk_start + first])
        for iid in ids[chunk_start : chunk_start + first]:
            node = nodes[iid]
            if flt is not None and not _matches(node, flt):
                continue
            edges.append(InstructionEdge(cursor=_cursor(iid), node=Instruction.of(node)))
            if len(edges) > first:
                break
        if len(edges) > first:
            break
    has_next = len(edges) > first
    edges = edges[:first]
    return InstructionConnection(
        edges=edges,
        page_info=PageInfo(has_next_page=has_next, end_cursor=edges[-1].cursor if edges else None),
        total_count=len(ids),
    )


def _matches(node: Node, flt: InstructionFilter) -> bool:
    p = node.props
    return (
        (flt.strategy is None or p.get("strategy") == flt.strategy)
        and (flt.model is None or p.get("model") == flt.model)
        and (flt.include_duplicates or not p.get("duplicate"))
        and (flt.include_contaminated or not p.get("contaminated"))
    )


@strawberry.type
class Query:
    @strawberry.field(description="A node by id or by path.")
    def node(self, info: Info[Context, None], id: strawberry.ID | None = None,
             path: str | None = None) -> NodeResult:
        store = info.context.store
        try:
            if (id is None) == (path is None):
                raise InvalidInput("give exactly one of id and path")
            if path is not None:
                return TaxonomyNode.of(store.node(path))
            node = store.get(str(id))
            if node is None:
                return NotFoundError(message=f"no node with id {id!r}")
            paths = store.paths_of(node.id)
            node.path = paths[0] if paths else None
            return TaxonomyNode.of(node)
        except GlanError as exc:
            return problem(exc)

    @strawberry.field(description="Children of a path (fields when no path is given).")
    def children(self, info: Info[Context, None], path: str | None = None, first: int = 100,
                 after: str | None = None) -> NodeConnection:
        return _children_page(info.context, path, first, after)

    @strawberry.field(description="The tree below a path with counts, `depth` levels deep.")
    def subtree(self, info: Info[Context, None], path: str | None = None,
                depth: int = 2) -> TreeResult:
        try:
            if not 0 <= depth <= len(HIERARCHY):
                raise InvalidInput(f"depth must be between 0 and {len(HIERARCHY)}")
            return TreeNode.of(info.context.store.tree(path, depth))
        except GlanError as exc:
            return problem(exc)

    @strawberry.field(description="Nodes whose name contains the text (case ignored).")
    def search(self, info: Info[Context, None], text: str, kind: str | None = None,
               first: int = 50, after: str | None = None) -> NodeConnection:
        kinds = [parse_kind(kind)] if kind else list(HIERARCHY)
        found = info.context.store.search(text, kinds, limit=_first(first) + 1,
                                          after=_uncursor(after))
        page = found[:first]
        edges = [NodeEdge(cursor=_cursor(n.id), node=TaxonomyNode.of(n)) for n in page]
        return NodeConnection(edges=edges, total_count=len(page),
                              page_info=PageInfo(has_next_page=len(found) > first,
                                                 end_cursor=edges[-1].cursor if edges else None))

    @strawberry.field(description="Where the dataset stands under a path, and for each child.")
    def coverage(self, info: Info[Context, None], path: str | None = None) -> CoverageResult:
        try:
            return Coverage.of(info.context.store.coverage(path))
        except NodeNotFound as exc:
            return NotFoundError(message=str(exc), path=exc.path)

    @strawberry.field
    def instructions(self, info: Info[Context, None], path: str | None = None,
                     filter: InstructionFilter | None = None, first: int = 50,
                     after: str | None = None) -> InstructionsResult:
        try:
            return _instruction_page(info.context, path, filter, first, after)
        except GlanError as exc:
            return problem(exc)

    @strawberry.field(description="A reproducible random sample of instructions under a path.")
    def sample_instructions(self, info: Info[Context, None], path: str | None = None,
                            n: int = 5, seed: int = 0) -> list[Instruction]:
        store = info.context.store
        ids = store.instruction_ids_in_scope(store.scope(path))
        chosen = random.Random(seed).sample(ids, min(max(n, 0), len(ids), MAX_PAGE))
        nodes = store.get_many(chosen)
        return [Instruction.of(nodes[i]) for i in chosen]

    @strawberry.field
    def jobs(self, info: Info[Context, None]) -> list[Job]:
        out = []
        for row in info.context.store.jobs():
            state = info.context.jobs.state(row["id"])
            if state is not None:
                out.append(Job.of(state))
        return out

    @strawberry.field
    def job(self, info: Info[Context, None], id: strawberry.ID) -> Job | None:
        state = info.context.jobs.state(str(id))
        return Job.of(state) if state else None


# ---------------------------------------------------------------------- mutations


class IsAuthorized(BasePermission):
    message = "this server needs `Authorization: Bearer <token>` (GLAN_API_TOKEN) to change things"

    def has_permission(self, source: Any, info: Info[Context, None], **kwargs: Any) -> bool:
        return info.context.authorized


@strawberry.enum
class Decision(Enum):
    APPROVE = "approved"
    REJECT = "rejected"
    PROPOSE = "proposed"


def _start(info: Info[Context, None], stage: str, path: str | None,
           options: PipelineOptions) -> JobResult:
    try:
        return Job.of(info.context.jobs.start(stage, path, options))
    except GlanError as exc:
        return problem(exc)


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=[IsAuthorized])
    def add_node(self, info: Info[Context, None], name: str, kind: str,
                 parent_path: str | None = None, description: str | None = None,
                 level: str | None = None, subtopics: list[str] | None = None,
                 proposed: bool = False) -> NodeResult:
        try:
            node_kind = parse_kind(kind)
        except ValueError as exc:
            return InvalidInputError(message=str(exc))
        props: dict[str, Any] = {k: v for k, v in
                                 (("description", description), ("level", level),
                                  ("subtopics", subtopics)) if v is not None}
        try:
            node = info.context.store.add_node(
                parent_path, node_kind, name, props=props,
                status=Status.PROPOSED if proposed else Status.APPROVED,
            )
            return TaxonomyNode.of(node)
        except GlanError as exc:
            return problem(exc)

    @strawberry.mutation(permission_classes=[IsAuthorized])
    def update_node(self, info: Info[Context, None], path: str, description: str | None = None,
                    level: str | None = None, subtopics: list[str] | None = None) -> NodeResult:
        props = {k: v for k, v in (("description", description), ("level", level),
                                   ("subtopics", subtopics)) if v is not None}
        try:
            return TaxonomyNode.of(info.context.store.update_node(path, props))
        except GlanError as exc:
            return problem(exc)

    @strawberry.mutation(permission_classes=[IsAuthorized])
    def review_node(self, info: Info[Context, None], path: str, decision: Decision) -> NodeResult:
        try:
            return TaxonomyNode.of(info.context.store.review(path, Status(decision.value)))
        except GlanError as exc:
            return problem(exc)

    @strawberry.mutation(permission_classes=[IsAuthorized])
    def link_subject(self, info: Info[Context, None], parent_path: str,
                     subject_path: str) -> NodeResult:
        try:
            return TaxonomyNode.of(info.context.store.link(parent_path, subject_path))
        except GlanError as exc:
            return problem(exc)

    @strawberry.mutation(permission_classes=[IsAuthorized])
    def delete_node(
        self, info: Info[Context, None], path: str
    ) -> Annotated[Counts | NotFoundError, strawberry.union("DeleteResult")]:
        try:
            removed = info.context.store.delete_subtree(path)
        except NodeNotFound as exc:
            return NotFoundError(message=str(exc), path=exc.path)
        names = {k.label: f"{k.label.lower()}s" for k in HIERARCHY}
        names.update(SubField="subfields", Instruction="instructions", Response="responses")
        return Counts.of({names.get(k, k): v for k, v in removed.items()})

    @strawberry.mutation(permission_classes=[IsAuthorized])
    def generate_taxonomy(self, info: Info[Context, None], path: str | None = None,
                          n: int = 10) -> JobResult:
        approve = info.context.settings.auto_approve
        return _start(info, "taxonomy", path, PipelineOptions(taxonomy_n=n, auto_approve=approve))

    @strawberry.mutation(permission_classes=[IsAuthorized])
    def generate_subjects(self, info: Info[Context, None], path: str | None = None,
                          rounds: int = 10, per_call: int = 10) -> JobResult:
        return _start(info, "subjects", path, PipelineOptions(rounds=rounds, per_call=per_call))

    @strawberry.mutation(permission_classes=[IsAuthorized])
    def generate_syllabus(self, info: Info[Context, None], path: str | None = None,
                          sessions: int = 12) -> JobResult:
        return _start(info, "syllabus", path, PipelineOptions(sessions=sessions))

    @strawberry.mutation(permission_classes=[IsAuthorized])
    def generate_instructions(self, info: Info[Context, None], path: str | None = None,
                              n: int = 10, strategy: str = "mixed", seed: int = 0,
                              basic_ratio: float = 0.5) -> JobResult:
        if strategy not in ("basic", "hard", "mixed"):
            return InvalidInputError(message="strategy must be basic, hard or mixed")
        if n < 1 or not 0 <= basic_ratio <= 1:
            return InvalidInputError(message="n must be positive and basicRatio in [0, 1]")
        return _start(info, "questions", path, PipelineOptions(
            n=n, strategy=strategy, seed=seed, basic_ratio=basic_ratio))

    @strawberry.mutation(permission_classes=[IsAuthorized])
    def generate_answers(self, info: Info[Context, None], path: str | None = None) -> JobResult:
        return _start(info, "answers", path, PipelineOptions())

    @strawberry.mutation(permission_classes=[IsAuthorized])
    def cancel_job(self, info: Info[Context, None], id: strawberry.ID) -> JobResult:
        try:
            return Job.of(info.context.jobs.cancel(str(id)))
        except GlanError as exc:
            return problem(exc)


# ---------------------------------------------------------------------- subscriptions


@strawberry.type
class Subscription:
    @strawberry.subscription(permission_classes=[IsAuthorized])
    async def job_progress(self, info: Info[Context, None],
                           id: strawberry.ID) -> AsyncGenerator[Job, None]:
        """Done/failed/total and tokens as the job runs; ends when the job does."""
        try:
            async for state in info.context.jobs.watch(str(id)):
                yield Job.of(state)
        except JobNotFound:
            return


schema = strawberry.Schema(
    query=Query,
    mutation=Mutation,
    subscription=Subscription,
    extensions=[
        partial(QueryDepthLimiter, max_depth=12),
        partial(MaxAliasesLimiter, max_alias_count=20),
        partial(MaxTokensLimiter, max_token_count=2000),
    ],
)
