"""Taxonomy edits and generation jobs. With an API token set, each needs the bearer token.

Generation mutations start a job inside the server (an asyncio task with the server's one
LLM client) and return it at once, running; follow it with the jobProgress subscription or
the job query. A job's id is a hash of stage, scope and options, so asking again for a job
that stopped (cancelled, failed, server restarted) resumes it where it was.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from functools import partial
from typing import Annotated, Any

import strawberry
from strawberry.permission import BasePermission
from strawberry.types import Info

from generators.cleaning import MIN_WORDS
from generators.cost import CostCap
from generators.pipeline import PipelineOptions
from graph.errors import GlanError, InvalidInput
from graph.model import Status
from graph.records import COUNT_NAMES, Node

from ..auth import IsAuthorized
from ..context import Context
from .batch import (
    BatchJobResult,
    CancelBatchesResult,
    cancel_job_batches,
    generate_in_batches,
)
from .cleaning import (
    BenchmarkInput,
    DecontaminateResult,
    DecontaminationMethod,
    run_decontamination,
)
from .errors import (
    InvalidInputError,
    JobConflictError,
    NotApprovedError,
    NotFoundError,
    WrongKindError,
    problem,
)
from .instruction import Strategy
from .job import Job, JobPayload
from .node import Counts, Kind, ReviewStatus, TaxonomyNode
from .query import job_view

#: Bounds on generation options: beyond them a typo would start an enormous paid job.
LIMITS = {
    "n": (1, 100_000),
    "taxonomy n": (1, 100),
    "rounds": (1, 100),
    "perCall": (1, 100),
    "sessions": (1, 60),
    "turns": (1, 20),
    "minPerConcept": (1, 100),
}


@strawberry.enum(description="A review decision: rejecting hides the node's whole subtree.")
class Decision(Enum):
    APPROVE = Status.APPROVED.value
    REJECT = Status.REJECTED.value
    PROPOSE = Status.PROPOSED.value


@strawberry.type
class NodePayload:
    node: TaxonomyNode


@strawberry.type(description="What a delete removed; a shared subject is only unlinked.")
class DeletePayload:
    path: str
    unlinked: bool = strawberry.field(
        description="The node is a subject other disciplines keep: only this link was removed."
    )
    removed: Counts


AddNodeResult = Annotated[
    NodePayload | NotFoundError | WrongKindError | InvalidInputError,
    strawberry.union("AddNodeResult"),
]
UpdateNodeResult = Annotated[
    NodePayload | NotFoundError | InvalidInputError, strawberry.union("UpdateNodeResult")
]
ReviewNodeResult = Annotated[
    NodePayload | NotFoundError | InvalidInputError, strawberry.union("ReviewNodeResult")
]
LinkSubjectResult = Annotated[
    NodePayload | NotFoundError | WrongKindError | InvalidInputError,
    strawberry.union("LinkSubjectResult"),
]
DeleteNodeResult = Annotated[
    DeletePayload | NotFoundError | InvalidInputError, strawberry.union("DeleteNodeResult")
]
StartJobResult = Annotated[
    JobPayload
    | NotFoundError
    | NotApprovedError
    | WrongKindError
    | JobConflictError
    | InvalidInputError,
    strawberry.union("StartJobResult"),
]
CancelJobResult = Annotated[JobPayload | NotFoundError, strawberry.union("CancelJobResult")]

_REMOVED_NAMES = {
    "Field": "fields",
    "SubField": "subfields",
    "Discipline": "disciplines",
    "Subject": "subjects",
    "Session": "sessions",
    "Concept": "concepts",
    "Instruction": "instructions",
    "Response": "responses",
}


def _check(name: str, value: int | float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be between {low} and {high}, got {value}")


def _bounded(**values: int) -> None:
    for name, value in values.items():
        low, high = LIMITS[name.replace("_", " ")]
        _check(name, value, low, high)


#: the cost cap every generation mutation takes
MaxCost = Annotated[
    float | None,
    strawberry.argument(
        description="US dollars the job may cost in all, its earlier runs included, at the "
        "server's price table: it stops starting units before passing this (status "
        "COST_CAPPED); the same mutation with a higher cap goes on. Refused for a model "
        "with no price."
    ),
]


async def _start(
    info: Info[Context, None],
    stage: str,
    path: str | None,
    options: PipelineOptions,
    max_cost: float | None = None,
) -> Any:
    """Start a job (refused when an overlapping one of the same stage runs)."""
    try:
        cap = None if max_cost is None else CostCap(max_cost, info.context.settings.price_table())
        started = await info.context.jobs.start(stage, path or None, options, cost_cap=cap)
    except GlanError as exc:
        return problem(exc)
    return JobPayload(job=Job.of(started, live=True))


async def _edit(info: Info[Context, None], change: Callable[[], Node]) -> Any:
    """A taxonomy edit, run off the event loop: the node it leaves, or the problem."""
    try:
        node = await info.context.run(change)
    except GlanError as exc:
        return problem(exc)
    return NodePayload(node=TaxonomyNode.of(node))


def _props(**values: Any) -> dict[str, Any]:
    """The properties a client set (null included: it clears); omitted ones stay."""
    return {k: v for k, v in values.items() if v is not strawberry.UNSET}


AUTH: list[type[BasePermission]] = [IsAuthorized]


@strawberry.type
class Mutation:
    @strawberry.mutation(
        permission_classes=AUTH,
        description="Add a node under a parent (a Field needs none). Adding it again changes "
        "nothing; a subject that exists elsewhere is linked, not copied.",
    )
    async def add_node(
        self,
        info: Info[Context, None],
        kind: Kind,
        name: str,
        parent_path: str | None = None,
        description: str | None = None,
        level: str | None = None,
        subtopics: list[str] | None = None,
        status: ReviewStatus = ReviewStatus.APPROVED,
    ) -> AddNodeResult:
        props = {
            k: v
            for k, v in (("description", description), ("level", level), ("subtopics", subtopics))
            if v is not None
        }
        add = partial(
            info.context.store.taxonomy.add_node,
            parent_path or None,
            kind.node_kind,
            name,
            props=props,
            status=Status(status.value),
        )
        return await _edit(info, add)

    @strawberry.mutation(
        permission_classes=AUTH,
        description="Change a node's description, level or subtopics (null clears one; an "
        "omitted one stays). The name cannot change: it makes the node's id.",
    )
    async def update_node(
        self,
        info: Info[Context, None],
        path: str,
        description: str | None = strawberry.UNSET,
        level: str | None = strawberry.UNSET,
        subtopics: list[str] | None = strawberry.UNSET,
    ) -> UpdateNodeResult:
        props = _props(description=description, level=level, subtopics=subtopics)
        return await _edit(info, lambda: info.context.store.taxonomy.update_node(path, props))

    @strawberry.mutation(
        permission_classes=AUTH,
        description="Approve, reject or re-propose a node. Nothing is deleted: a rejected "
        "subtree is hidden from generation and counts until approved again.",
    )
    async def review_node(
        self, info: Info[Context, None], path: str, decision: Decision
    ) -> ReviewNodeResult:
        review = info.context.store.taxonomy.review
        return await _edit(info, lambda: review(path, Status(decision.value)))

    @strawberry.mutation(
        permission_classes=AUTH,
        description="Put an existing subject under one more discipline.",
    )
    async def link_subject(
        self, info: Info[Context, None], parent_path: str, subject_path: str
    ) -> LinkSubjectResult:
        link = info.context.store.taxonomy.link
        return await _edit(info, lambda: link(parent_path, subject_path))

    @strawberry.mutation(
        permission_classes=AUTH,
        description="Delete a node and everything below it that has no other parent, "
        "with the instructions and responses generated from it.",
    )
    async def delete_node(self, info: Info[Context, None], path: str) -> DeleteNodeResult:
        try:
            removed = await info.context.run(info.context.store.taxonomy.delete_subtree, path)
        except GlanError as exc:
            return problem(exc)
        counts = {_REMOVED_NAMES[k]: v for k, v in removed.items() if k in _REMOVED_NAMES}
        return DeletePayload(
            path=path,
            unlinked=bool(removed.get("unlinked")),
            removed=Counts.of({k: counts.get(k, 0) for k in COUNT_NAMES}),
        )

    # ------------------------------------------------------------------ generation

    @strawberry.mutation(
        permission_classes=AUTH,
        description="Propose children of a Field or SubField (or new fields at the root) "
        "for review (approved at once when the server runs with GLAN_AUTO_APPROVE).",
    )
    async def generate_taxonomy(
        self,
        info: Info[Context, None],
        path: str | None = None,
        n: int = 10,
        max_cost: MaxCost = None,
    ) -> StartJobResult:
        try:
            _check("n", n, *LIMITS["taxonomy n"])
        except InvalidInput as exc:
            return problem(exc)
        options = PipelineOptions(taxonomy_n=n, auto_approve=info.context.settings.auto_approve)
        return await _start(info, "taxonomy", path, options, max_cost)

    @strawberry.mutation(
        permission_classes=AUTH,
        description="Subjects for every approved discipline under a path: `rounds` calls per "
        "discipline (the paper: 10; default: GLAN_SUBJECT_ROUNDS), `perCall` subjects each.",
    )
    async def generate_subjects(
        self,
        info: Info[Context, None],
        path: str | None = None,
        rounds: int | None = None,
        per_call: int = 10,
        max_cost: MaxCost = None,
    ) -> StartJobResult:
        rounds = rounds if rounds is not None else info.context.settings.subject_rounds
        try:
            _bounded(rounds=rounds, perCall=per_call)
        except InvalidInput as exc:
            return problem(exc)
        options = PipelineOptions(rounds=rounds, per_call=per_call)
        return await _start(info, "subjects", path, options, max_cost)

    @strawberry.mutation(
        permission_classes=AUTH,
        description="A syllabus (class sessions with key concepts) for every subject under a "
        "path that has none yet.",
    )
    async def generate_syllabus(
        self,
        info: Info[Context, None],
        path: str | None = None,
        sessions: int = 12,
        max_cost: MaxCost = None,
    ) -> StartJobResult:
        try:
            _bounded(sessions=sessions)
        except InvalidInput as exc:
            return problem(exc)
        return await _start(info, "syllabus", path, PipelineOptions(sessions=sessions), max_cost)

    @strawberry.mutation(
        permission_classes=AUTH,
        description="`n` homework questions under a path from sampled key concepts: BASIC (one "
        "session, 1-5 concepts), HARD (two sessions, 2-5), or MIXED (`basicRatio` basic). "
        "With `minPerConcept` K instead, exactly the questions that cover every approved "
        "concept under the path K times, thinnest first, no combination asked twice (`n` is "
        "not used); with `untilShare` S, until that share of the concepts is (K times) "
        "covered. Run again after taxonomy edits, the same job plans only what is missing.",
    )
    async def generate_instructions(
        self,
        info: Info[Context, None],
        path: str | None = None,
        n: int = 10,
        strategy: Strategy = Strategy.MIXED,
        seed: int = 0,
        basic_ratio: float = 0.5,
        max_cost: MaxCost = None,
        min_per_concept: int | None = None,
        until_share: float | None = None,
    ) -> StartJobResult:
        try:
            _bounded(n=n)
            _check("basicRatio", basic_ratio, 0.0, 1.0)
            if min_per_concept is not None:
                _bounded(minPerConcept=min_per_concept)
            if until_share is not None and not 0.0 < until_share <= 1.0:
                raise InvalidInput(f"untilShare must be above 0 and at most 1, got {until_share}")
        except InvalidInput as exc:
            return problem(exc)
        options = PipelineOptions(
            n=n,
            strategy=strategy.value,
            seed=seed,
            basic_ratio=basic_ratio,
            min_per_concept=min_per_concept or 0,
            until_share=until_share,
        )
        return await _start(info, "questions", path, options, max_cost)

    @strawberry.mutation(
        permission_classes=AUTH,
        description="An answer for every instruction under a path that has none from the "
        "answer model yet.",
    )
    async def generate_answers(
        self, info: Info[Context, None], path: str | None = None, max_cost: MaxCost = None
    ) -> StartJobResult:
        return await _start(info, "answers", path, PipelineOptions(), max_cost)

    @strawberry.mutation(
        permission_classes=AUTH,
        description="Make each pair under a path (a question and its answer by the answer "
        "model) a conversation: `turns` follow-up questions, each a clarification, a harder "
        "variant or an application to another key concept of the pair's sessions (asked by "
        "the question model), each answered by the answer model given the conversation so "
        "far. The job runs in rounds, a turn at a time; asked again with more turns, it goes "
        "on from the turns there are.",
    )
    async def generate_followups(
        self,
        info: Info[Context, None],
        path: str | None = None,
        turns: int = 2,
        max_cost: MaxCost = None,
    ) -> StartJobResult:
        try:
            _bounded(turns=turns)
        except InvalidInput as exc:
            return problem(exc)
        return await _start(info, "followups", path, PipelineOptions(turns=turns), max_cost)

    @strawberry.mutation(
        permission_classes=AUTH,
        description="Score every question-answer pair under a path with the judge model "
        "(GLAN_JUDGE_MODEL): 1-10 on each criterion of the rubric and overall, with a "
        "one-sentence rationale. Pairs this judge model already scored are skipped.",
    )
    async def generate_judgements(
        self, info: Info[Context, None], path: str | None = None, max_cost: MaxCost = None
    ) -> StartJobResult:
        return await _start(info, "judge", path, PipelineOptions(), max_cost)

    @strawberry.mutation(
        permission_classes=AUTH,
        description="Mark the pairs under a path that overlap benchmarks read by the server "
        "(a question or answer holding a benchmark text whole, or sharing an n-word run with "
        "one), replacing earlier marks for the same benchmarks; export leaves them out. "
        "Nothing is deleted.",
    )
    async def decontaminate(
        self,
        info: Info[Context, None],
        benchmarks: list[BenchmarkInput],
        path: str | None = None,
        field: str | None = None,
        method: DecontaminationMethod = DecontaminationMethod.BOTH,
        n: int = 13,
        min_words: int = MIN_WORDS,
    ) -> DecontaminateResult:
        return await run_decontamination(info, benchmarks, path, field, method, n, min_words)

    @strawberry.mutation(
        permission_classes=AUTH,
        description="Stop a running job after the units in flight; what is done stays done, "
        "and starting the same job again resumes it.",
    )
    async def cancel_job(self, info: Info[Context, None], id: strawberry.ID) -> CancelJobResult:
        if await job_view(info.context, str(id)) is None:
            return NotFoundError(message=f"no job {str(id)!r} (see the jobs query)", id=id)
        try:
            info.context.jobs.cancel(str(id))
        except GlanError as exc:
            return problem(exc)
        job = await job_view(info.context, str(id))
        assert job is not None  # jobs are never deleted
        return JobPayload(job=job)

    generate_in_batches: BatchJobResult = strawberry.mutation(
        resolver=generate_in_batches,
        permission_classes=AUTH,
        description="Start (or resume) a stage's job with its requests sent through the "
        "model endpoint's Files + Batches API (at its batch price where it has one), with the "
        "arguments of jobEstimate: the server submits what no batch holds, polls them, reads "
        "their results as each ends, and ends the job when all have; follow it as any job. "
        "Requests the API did not answer stay pending for the next run.",
    )
    cancel_batches: CancelBatchesResult = strawberry.mutation(
        resolver=cancel_job_batches,
        permission_classes=AUTH,
        description="Ask the Batch API to stop a job's running batches and store the job as "
        "cancelled; what they finished is read by the next run of the job, which submits the "
        "rest again.",
    )
