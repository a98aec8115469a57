"""What is missing under a node, as Coverage.gaps finds it: where to generate next."""

from __future__ import annotations

import strawberry

from graph.records import ConceptGap as StoreConceptGap
from graph.records import Gaps as StoreGaps

from .combinations import CombinationGap
from .node import TaxonomyNode


@strawberry.type(description="A concept and how many instructions cover it.")
class ConceptGap:
    concept: TaxonomyNode
    subject: str = strawberry.field(description="The subject whose syllabus holds the concept.")
    session: str = strawberry.field(description="The syllabus session that lists it.")
    instructions: int = strawberry.field(description="Instructions covering the concept.")

    @classmethod
    def of(cls, g: StoreConceptGap) -> ConceptGap:
        return cls(
            concept=TaxonomyNode.of(g.node),
            subject=g.subject,
            session=g.session,
            instructions=g.instructions,
        )


@strawberry.type(description="The least covered concepts and the subjects without a syllabus.")
class Gaps:
    path: str = strawberry.field(description="The node's path as stored (empty: everything).")
    least_covered_concepts: list[ConceptGap] = strawberry.field(
        description="Fewest instructions first (uncovered ones first of all), then by id."
    )
    subjects_without_syllabus: list[TaxonomyNode] = strawberry.field(
        description="By name; their number is coverage's subjectsWithoutSyllabus."
    )
    thinnest_subjects: list[CombinationGap] = strawberry.field(
        description="Subjects with a combination space whose share asked about is lowest, "
        "lowest first then by id."
    )
    thinnest_sessions: list[CombinationGap] = strawberry.field(
        description="Sessions whose basic combination space is least asked about, lowest "
        "share first then by id."
    )
    concepts_below_min: list[ConceptGap] = strawberry.field(
        description="Approved concepts fewer than `minCount` instructions cover (none when "
        "minCount is 0), fewest first then by id."
    )
    concepts_below_min_count: int = strawberry.field(
        description="How many approved concepts fewer than `minCount` instructions cover."
    )

    @classmethod
    def of(cls, g: StoreGaps) -> Gaps:
        return cls(
            path=g.path,
            least_covered_concepts=[ConceptGap.of(c) for c in g.least_covered],
            subjects_without_syllabus=[TaxonomyNode.of(n) for n in g.subjects_without_syllabus],
            thinnest_subjects=[CombinationGap.of(x) for x in g.thinnest_subjects],
            thinnest_sessions=[CombinationGap.of(x) for x in g.thinnest_sessions],
            concepts_below_min=[ConceptGap.of(c) for c in g.below_min],
            concepts_below_min_count=g.below_min_count,
        )
