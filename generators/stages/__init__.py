"""The GLAN stages as jobs, one module each: taxonomy expansion, subjects, syllabus,
questions, answers.

Every stage builds a unit's chat request from inputs it reads in bulk (`prepare`,
`request`) and accepts the response (`accept`, `write_many`); the executors in
generators/jobs.py decide how requests travel (live, batch, cluster).
"""

from __future__ import annotations

from ..jobs import Stage
from .answers import AnswersStage
from .base import PromptStage
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
        JudgeStage,
    )
}
PIPELINE = ("subjects", "syllabus", "questions", "answers")

__all__ = [
    "PIPELINE",
    "STAGES",
    "AnswersStage",
    "JudgeStage",
    "PromptStage",
    "QuestionsStage",
    "SubjectsStage",
    "SyllabusStage",
    "TaxonomyStage",
]
