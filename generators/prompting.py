"""Prompts as files, each with the pydantic model of the answer it expects.

A template (generators/prompts/NAME.jinja2) holds two Jinja blocks, `system` (optional)
and `user`, and `Prompt.render` turns them into chat messages in that order. One file per
call keeps the two halves of a prompt side by side, where a reviewer reads them together.
Templates render with StrictUndefined, so a variable the caller forgot fails loudly instead
of leaving a hole in the prompt. Every node a prompt produces records the prompt's name and
version: change what a template asks for, bump its version.

Prompt texts stay short and literal: the bundled 135M-parameter model must follow them too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Annotated, Any, Literal

import jinja2
import jinja2.meta
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

# Bounds up to 256 characters also reach grammar-constrained servers (see llm.grammar_safe),
# where they keep a small model from rambling inside one string.
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=120)]
Description = Annotated[str, StringConstraints(strip_whitespace=True, max_length=1000)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")  # models add keys; what we need is checked


class ProposedNode(_Model):
    name: Name
    description: Description = ""


class TaxonomyProposal(_Model):
    items: list[ProposedNode] = Field(min_length=1, max_length=50)


class SubjectItem(_Model):
    name: Name
    level: Annotated[str, StringConstraints(strip_whitespace=True, max_length=120)]
    subtopics: list[Name] = Field(min_length=1, max_length=20)


class SubjectList(_Model):
    subjects: list[SubjectItem] = Field(min_length=1, max_length=50)


class SessionItem(_Model):
    title: Name
    description: Description
    #: the method's "3-8 key concepts" per class session
    concepts: list[Name] = Field(min_length=3, max_length=8)


class Syllabus(_Model):
    sessions: list[SessionItem] = Field(min_length=1, max_length=40)


class Question(_Model):
    question: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=10, max_length=4000)
    ]


class Answer(_Model):
    """A free-text answer: the model's whole reply, not JSON."""

    text: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=20000)]


class FollowUp(_Model):
    """The student's next question in a conversation: what kind of question it is, and the
    key concept of the pair's sessions it brings in, if any (an application names one)."""

    kind: Literal["clarification", "harder", "application"]
    question: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=10, max_length=4000)
    ]
    concept: Annotated[str, StringConstraints(strip_whitespace=True, max_length=120)] | None = None

    @field_validator("kind", mode="before")
    @classmethod
    def _plain_kind(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("concept", mode="before")
    @classmethod
    def _no_concept(cls, value: Any) -> Any:
        """Models write "none" or "" for no concept as often as null."""
        if isinstance(value, str) and value.strip().lower() in ("", "none", "null", "n/a"):
            return None
        return value

    @model_validator(mode="after")
    def _application_names_its_concept(self) -> FollowUp:
        if self.kind == "application" and not self.concept:
            raise ValueError("an application must name the key concept it applies")
        return self


#: a judge's score of one criterion: 1 (worst) to 10 (best)
Score = Annotated[int, Field(ge=1, le=10)]


class Judgement(_Model):
    """A judge's scores of a question-answer pair (generators/stages/judge.py). The
    rationale comes first, so that the scores follow from it."""

    rationale: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)
    ]
    self_contained: Score
    answerable: Score
    correct: Score
    complete: Score
    uses_concepts: Score
    on_topic: Score
    overall: Score


@dataclass(frozen=True)
class Prompt:
    name: str
    version: str
    template: str
    response_model: type[BaseModel]

    def render(self, **variables: Any) -> list[dict[str, str]]:
        """Chat messages: the system block (if the template has one), then the user block."""
        template = _environment().get_template(self.template)
        context = template.new_context(variables)
        messages = []
        for role in ("system", "user"):
            block = template.blocks.get(role)
            text = "".join(block(context)).strip() if block else ""
            if text:
                messages.append({"role": role, "content": text})
        return messages

    @property
    def variables(self) -> frozenset[str]:
        """The names the template reads: what a caller must pass."""
        source = _load(self.template)
        assert source is not None, self.template
        return frozenset(jinja2.meta.find_undeclared_variables(_environment().parse(source)))


def _load(name: str) -> str | None:
    path = resources.files("generators").joinpath("prompts", name)
    return path.read_text("utf-8") if path.is_file() else None  # None: TemplateNotFound


def _kind(label: str) -> str:
    """A node kind as prose: "SubField" -> "sub-field", "Discipline" -> "discipline"."""
    # str() first, so a missing variable raises UndefinedError here like anywhere else
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "-", str(label)).lower()


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_load),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # chat text, not HTML
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["kind"] = _kind
    return env


PROMPTS: dict[str, Prompt] = {
    p.name: p
    for p in (
        Prompt("taxonomy", "1", "taxonomy.jinja2", TaxonomyProposal),
        Prompt("subjects", "1", "subjects.jinja2", SubjectList),
        Prompt("syllabus", "1", "syllabus.jinja2", Syllabus),
        Prompt("question", "1", "question.jinja2", Question),
        Prompt("answer", "1", "answer.jinja2", Answer),
        Prompt("judge", "1", "judge.jinja2", Judgement),
        Prompt("followup", "1", "followup.jinja2", FollowUp),
    )
}


def get_prompt(name: str) -> Prompt:
    """The prompt registered as `name`; the error lists the known ones."""
    try:
        return PROMPTS[name]
    except KeyError:
        raise KeyError(f"no prompt {name!r}; known: {', '.join(PROMPTS)}") from None
