"""Prompts as files, each with the pydantic model of the answer it expects.

A template (generators/prompts/NAME.jinja2) has two blocks, `system` and `user`, rendered
with StrictUndefined so a missing variable fails loudly. Every node a prompt produces
records the prompt's name and version: change a template's meaning, bump its version.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Annotated, Any

import jinja2
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# Bounds keep a grammar-constrained small model from rambling inside one string.
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=120)]
Description = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ProposedNode(_Model):
    name: Name
    description: Description = ""


class TaxonomyProposal(_Model):
    items: list[ProposedNode] = Field(min_length=1, max_length=50)


class SubjectItem(_Model):
    name: Name
    level: Annotated[str, StringConstraints(strip_whitespace=True, max_length=60)] = ""
    subtopics: list[Name] = Field(default_factory=list, max_length=20)


class SubjectList(_Model):
    subjects: list[SubjectItem] = Field(min_length=1, max_length=50)


class SessionItem(_Model):
    title: Name
    description: Description = ""
    concepts: list[Name] = Field(min_length=3, max_length=8)


class Syllabus(_Model):
    sessions: list[SessionItem] = Field(min_length=1, max_length=30)


class Question(_Model):
    question: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=10, max_length=4000)
    ]


class Answer(_Model):
    text: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=20000)]


@dataclass(frozen=True)
class Prompt:
    name: str
    version: str
    response_model: type[BaseModel]

    @property
    def filename(self) -> str:
        return f"{self.name}.jinja2"

    def render(self, **variables: Any) -> list[dict[str, str]]:
        """Chat messages: the system block, then the user block."""
        template = _environment().get_template(self.filename)
        context = template.new_context(variables)
        messages = []
        for role in ("system", "user"):
            text = "".join(template.blocks[role](context)).strip()
            if text:
                messages.append({"role": role, "content": text})
        return messages


@cache
def _environment() -> jinja2.Environment:
    folder = resources.files("generators").joinpath("prompts")
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: folder.joinpath(name).read_text("utf-8")),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


PROMPTS: dict[str, Prompt] = {
    p.name: p
    for p in (
        Prompt("taxonomy", "1", TaxonomyProposal),
        Prompt("subjects", "1", SubjectList),
        Prompt("syllabus", "1", Syllabus),
        Prompt("question", "1", Question),
        Prompt("answer", "1", Answer),
    )
}


def get_prompt(name: str) -> Prompt:
    try:
        return PROMPTS[name]
    except KeyError:
        raise KeyError(f"no prompt {name!r}; known: {', '.join(PROMPTS)}") from None
