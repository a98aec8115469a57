"""Taxonomy nodes (Field .. Concept), their counts and the provenance of generated data."""

from __future__ import annotations

from enum import Enum
from typing import Any

import strawberry
from strawberry.types import Info

from graph.model import KIND_BY_LABEL, NodeKind, Status
from graph.records import COUNT_NAMES, Node, zero_counts

from ..context import Context
from .pagination import Connection, paginate


@strawberry.enum(name="NodeKind", description="A level of the knowledge hierarchy.")
class Kind(Enum):
    FIELD = "Field"
    SUBFIELD = "SubField"
    DISCIPLINE = "Discipline"
    SUBJECT = "Subject"
    SESSION = "Session"
    CONCEPT = "Concept"

    @property
    def node_kind(self) -> NodeKind:
        return KIND_BY_LABEL[self.value]

    @classmethod
    def parse(cls, label: str | None) -> Kind | None:
        try:
            return cls(label)
        except ValueError:
            return None


@strawberry.enum(description="Review state. Rejecting a node hides its whole subtree.")
class ReviewStatus(Enum):
    PROPOSED = Status.PROPOSED.value
    APPROVED = Status.APPROVED.value
    REJECTED = Status.REJECTED.value


def review_status(value: Any) -> ReviewStatus | None:
    try:
        return ReviewStatus(value)
    except ValueError:
        return None


@strawberry.type(description="What lies below a node (levels above it count 0).")
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
        return cls(**{k: int(v) for k, v in counts.items() if k in COUNT_NAMES})


@strawberry.type(description="Where a piece of generated data came from.")
class Provenance:
    model: str | None
    prompt_name: str | None
    prompt_version: str | None
    job_id: strawberry.ID | None
    unit_id: str | None
    strategy: str | None = None
    seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    created_at: str | None = None

    @classmethod
    def of(cls, props: dict[str, Any]) -> Provenance:
        job = props.get("job_id")
        return cls(
            model=props.get("model"),
            prompt_name=props.get("prompt_name"),
            prompt_version=props.get("prompt_version"),
            job_id=strawberry.ID(job) if job else None,
            unit_id=props.get("unit_id"),
            strategy=props.get("strategy"),
            seed=props.get("seed"),
            temperature=props.get("temperature"),
            top_p=props.get("top_p"),
            created_at=props.get("created_at"),
        )


@strawberry.type(description="A Field, SubField, Discipline, Subject, Session or Concept.")
class TaxonomyNode:
    id: strawberry.ID
    kind: Kind
    name: str
    path: str | None = strawberry.field(
        description="The path this node was reached by (see `paths` for a shared subject)."
    )
    status: ReviewStatus | None
    source: str | None
    description: str | None
    level: str | None
    subtopics: list[str] | None
    position: int | None
    hidden: bool = strawberry.field(
        description="Rejected here or above on the way down: left out of generation and counts."
    )
    created_at: str | None
    updated_at: str | None
    provenance: Provenance | None = strawberry.field(
        description="Set on nodes a model proposed (subjects, syllabus sessions, concepts...)."
    )
    known_counts: strawberry.Private[dict[str, int] | None] = None

    @classmethod
    def of(cls, node: Node, counts: dict[str, int] | None = None) -> TaxonomyNode:
        p = node.props
        return cls(
            id=strawberry.ID(node.id),
            kind=Kind(node.kind.label),
            name=node.name,
            path=node.path or p.get("path"),
            status=review_status(p.get("status")),
            source=p.get("source"),
            description=p.get("description"),
            level=p.get("level"),
            subtopics=p.get("subtopics"),
            position=p.get("position"),
            hidden=node.hidden,
            created_at=p.get("created_at"),
            updated_at=p.get("updated_at"),
            provenance=Provenance.of(p) if p.get("model") else None,
            known_counts=counts,
        )

    @property
    def depth(self) -> int:
        return list(Kind).index(self.kind)

    async def some_path(self, info: Info[Context, None]) -> str | None:
        if self.path:
            return self.path
        paths = await info.context.loaders.paths.load(str(self.id))
        return paths[0] if paths else None

    @strawberry.field(description="Every path that reaches this node (several: a shared subject).")
    async def paths(self, info: Info[Context, None]) -> list[str]:
        return await info.context.loaders.paths.load(str(self.id))

    @strawberry.field(description="What lies below this node (all zero when it is hidden).")
    async def counts(self, info: Info[Context, None]) -> Counts:
        if self.known_counts is not None:
            return Counts.of(self.known_counts)
        path = await self.some_path(info)
        if self.hidden or path is None:
            return Counts.of(zero_counts(self.depth))
        return Counts.of(await info.context.loaders.counts.load((str(self.id), path)))

    @strawberry.field(description="Children in syllabus or name order.")
    async def children(
        self, info: Info[Context, None], first: int = 100, after: str | None = None
    ) -> Connection[TaxonomyNode]:
        path = await self.some_path(info)
        kids = await info.context.loaders.children.load(path) if path else []
        return paginate(kids, first, after, key=lambda n: n.id, wrap=TaxonomyNode.of)
