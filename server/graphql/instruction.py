"""Generated instructions (homework questions) and their responses, with provenance.

Their concepts, sessions, subject and responses come through the request's DataLoaders:
a page of instructions costs one batched read per relation, not one per instruction.
"""

from __future__ import annotations

from enum import Enum

import strawberry
from strawberry.types import Info

from graph.filters import InstructionFilter as Filter
from graph.records import Node

from ..context import Context
from .node import Provenance, TaxonomyNode
from .scores import Judgement


@strawberry.enum(description="How an instruction's concepts were sampled (GLAN section 2.4).")
class Strategy(Enum):
    BASIC = "basic"
    HARD = "hard"
    MIXED = "mixed"

    @classmethod
    def parse(cls, value: object) -> Strategy | None:
        try:
            return cls(value)
        except ValueError:
            return None


@strawberry.type(
    description="A follow-up turn of a conversation (glan generate followups): the student's "
    "next question, by the question model, and its answer, by the model that answered the pair."
)
class Turn:
    id: strawberry.ID
    position: int = strawberry.field(description="1 for the first follow-up, and so on.")
    kind: str | None = strawberry.field(description="clarification | harder | application")
    question: str
    answer: str | None = strawberry.field(description="Null until the turn is answered.")
    provenance: Provenance = strawberry.field(description="Of the question.")
    answer_provenance: Provenance | None

    @classmethod
    def of(cls, n: Node) -> Turn:
        p = n.props
        answered = {k[len("answer_") :]: v for k, v in p.items() if k.startswith("answer_")}
        answered["created_at"] = p.get("answered_at")
        return cls(
            id=strawberry.ID(n.id),
            position=int(p.get("position") or 0),
            kind=p.get("kind"),
            question=p.get("text") or "",
            answer=p.get("answer"),
            provenance=Provenance.of(p),
            answer_provenance=Provenance.of(answered) if p.get("answer") else None,
        )

    @strawberry.field(description="The key concept the turn brings into the conversation.")
    async def concepts(self, info: Info[Context, None]) -> list[TaxonomyNode]:
        ids = await info.context.loaders.reached.load(str(self.id))
        return _ordered(await _nodes(info, ids))


@strawberry.type
class Response:
    id: strawberry.ID
    text: str
    contaminated: str | None
    provenance: Provenance
    judgement: Judgement | None = strawberry.field(
        description="The judge's scores of the pair (glan generate judge); null if not judged."
    )

    @classmethod
    def of(cls, n: Node) -> Response:
        p = n.props
        return cls(
            id=strawberry.ID(n.id),
            text=p.get("text") or "",
            contaminated=p.get("contaminated"),
            provenance=Provenance.of(p),
            judgement=Judgement.of(p),
        )

    @strawberry.field(
        description="The conversation going on from this pair: its follow-up turns in order "
        "(several models' turns, when several asked, each in its own order)."
    )
    async def followups(self, info: Info[Context, None]) -> list[Turn]:
        return [Turn.of(n) for n in await info.context.loaders.turns.load(str(self.id))]


async def _nodes(info: Info[Context, None], ids: list[str]) -> list[Node]:
    found = await info.context.loaders.node.load_many(ids)
    return [n for n in found if n is not None]


def _ordered(nodes: list[Node]) -> list[TaxonomyNode]:
    nodes = sorted(nodes, key=lambda n: (n.props.get("position") or 0, n.name))
    return [TaxonomyNode.of(n) for n in nodes]


@strawberry.type(description="A homework question generated from sampled key concepts.")
class Instruction:
    id: strawberry.ID
    text: str
    strategy: Strategy | None
    seed: int | None
    duplicate: str | None = strawberry.field(
        description="exact | near when dedup marked it a repeat of another instruction."
    )
    contaminated: str | None = strawberry.field(
        description="The benchmarks it overlaps, when decontamination flagged it."
    )
    provenance: Provenance
    subject_id: strawberry.Private[str | None]

    @classmethod
    def of(cls, n: Node) -> Instruction:
        p = n.props
        return cls(
            id=strawberry.ID(n.id),
            text=p.get("text") or "",
            strategy=Strategy.parse(p.get("strategy")),
            seed=p.get("seed"),
            duplicate=p.get("duplicate"),
            contaminated=p.get("contaminated"),
            provenance=Provenance.of(p),
            subject_id=p.get("subject_id"),
        )

    @strawberry.field(description="The key concepts it was written to cover.")
    async def concepts(self, info: Info[Context, None]) -> list[TaxonomyNode]:
        ids = await info.context.loaders.concepts.load(str(self.id))
        return _ordered(await _nodes(info, ids))

    @strawberry.field(description="The class sessions its concepts came from (two: hard).")
    async def sessions(self, info: Info[Context, None]) -> list[TaxonomyNode]:
        ids = await info.context.loaders.sessions.load(str(self.id))
        return _ordered(await _nodes(info, ids))

    @strawberry.field
    async def subject(self, info: Info[Context, None]) -> TaxonomyNode | None:
        if not self.subject_id:
            return None
        node = await info.context.loaders.node.load(self.subject_id)
        return TaxonomyNode.of(node) if node else None

    @strawberry.field
    async def responses(self, info: Info[Context, None]) -> list[Response]:
        ids = await info.context.loaders.responses.load(str(self.id))
        return [Response.of(n) for n in await _nodes(info, ids)]


@strawberry.input(description="Which instructions to list; a null field matches either way.")
class InstructionFilter:
    strategy: Strategy | None = strawberry.field(default=None, description="MIXED: either.")
    model: str | None = None
    job_id: strawberry.ID | None = None
    duplicate: bool | None = strawberry.field(
        default=None, description="true: only repeats dedup marked; false: none of them."
    )
    contaminated: bool | None = None
    answered: bool | None = None

    def to_filter(self) -> Filter:
        return Filter(
            strategy=None if self.strategy in (None, Strategy.MIXED) else self.strategy.value,
            model=self.model,
            job_id=str(self.job_id) if self.job_id else None,
            duplicate=self.duplicate,
            contaminated=self.contaminated,
            answered=self.answered,
        )


@strawberry.type(description="A reproducible random sample of the instructions under a path.")
class InstructionSample:
    seed: int
    instructions: list[Instruction]
