"""Coverage of a node and of each child, as graph/coverage.py computes it in the database."""

from __future__ import annotations

import strawberry
from strawberry.types import Info

from graph.records import CoverageReport, Node
from graph.records import CoverageRow as StoreCoverageRow

from ..context import Context
from .cleaning import ContaminationCount, contamination_of
from .combinations import SHARE, SPACE, SPACE_LOG10, USED, Int64, figures
from .node import Counts, TaxonomyNode
from .scores import Place, ScoreSummary, scores_field


@strawberry.type(description="Where the data under one node stands.")
class CoverageRow:
    node: TaxonomyNode | None = strawberry.field(description="Null for the whole store.")
    path: str
    counts: Counts
    covered_concepts: int = strawberry.field(
        description="Concepts at least one instruction covers."
    )
    concept_coverage: float = strawberry.field(
        description="coveredConcepts / concepts (0 when there are no concepts)."
    )
    combinations: int = strawberry.field(
        description="Distinct concept combinations instructions were written for."
    )
    subjects_without_syllabus: int
    disciplines_without_subjects: int
    combination_space: Int64 | None = strawberry.field(description=SPACE)
    combination_space_log10: float | None = strawberry.field(description=SPACE_LOG10)
    combinations_used: int = strawberry.field(description=USED)
    combination_share: float = strawberry.field(description=SHARE)
    scores: ScoreSummary | None = scores_field()
    place: strawberry.Private[Place | None] = None
    scope: strawberry.Private[Node | None] = None

    @strawberry.field(
        description="Instructions under the node that overlap each benchmark split, as "
        "decontamination marked them (question or answer side), and their share."
    )
    async def contamination(self, info: Info[Context, None]) -> list[ContaminationCount]:
        return await contamination_of(info, self.scope, self.counts.instructions or 0)

    @classmethod
    def of(cls, r: StoreCoverageRow) -> CoverageRow:
        return cls(
            node=TaxonomyNode.of(r.node, r.counts) if r.node else None,
            path=r.path,
            counts=Counts.of(r.counts),
            covered_concepts=r.covered_concepts,
            concept_coverage=r.concept_coverage,
            combinations=r.combinations,
            subjects_without_syllabus=r.subjects_without_syllabus,
            disciplines_without_subjects=r.disciplines_without_subjects,
            **figures(r.combination_space, r.combinations_used),
            scope=r.node,
        )


@strawberry.type
class Coverage:
    total: CoverageRow
    children: list[CoverageRow]

    @classmethod
    def of(cls, c: CoverageReport) -> Coverage:
        covered = cls(
            total=CoverageRow.of(c.total), children=[CoverageRow.of(r) for r in c.children]
        )
        # the children's scores are read together, grouped under the node (server/graphql/scores)
        covered.total.place = Place(c.total.node)
        for row, r in zip(covered.children, c.children, strict=True):
            row.place = Place(r.node, c.total.node, grouped=True)
        return covered
