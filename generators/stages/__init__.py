"""The GLAN stages as jobs, one module each: taxonomy expansion, subjects, syllabus,
questions, answers, and follow-up turns that make pairs into conversations.

Every stage builds a unit's chat request from inputs it reads in bulk (`prepare`,
`request`) and accepts the response (`accept`, `write_many`); the executors in
generators/jobs.py decide how requests travel (live, batch, cluster).
"""

from __future__ import annotations

from ..jobs import Stage
from .answers import AnswersStage
from .base import PromptStage
from .followups import FollowupsStage
from .judge import JudgeStage
from .questions import QuestionsStage
from .subjects import SubjectsStage
from .syllabus import SyllabusStage
from .taxonomy import TaxonomyStage

STAGES: dict[str, type[Stage]] = {
    s.name: s
    for s in (
        TaxonomyStage,
        SubjectsStage,
        SyllabusStage,
        QuestionsStage,
        AnswersStage,
        FollowupsStage,
        JudgeStage,
    )
}
#: what `generate all` runs; follow-ups are asked for on their own (`generate followups`),
#: as they multiply the calls per pair, and so is the judge (`generate judge`)
PIPELINE = ("subjects", "syllabus", "questions", "answers")

__all__ = [
    "PIPELINE",
    "STAGES",
    "AnswersStage",
    "FollowupsStage",
    "JudgeStage",
    "PromptStage",
    "QuestionsStage",
    "SubjectsStage",
    "SyllabusStage",
    "TaxonomyStage",
]
