"""Every prompt template renders, carries its inputs, and its answer model is sound."""

from __future__ import annotations

import json

import jinja2
import pytest

from generators.prompting import PROMPTS, get_prompt

VARIABLES = {
    "taxonomy": {"path": "Natural Sciences", "parent_kind": "Field", "child_kind": "SubField",
                 "existing": ["Physical Sciences"], "n": 5},
    "subjects": {"discipline": "Physics", "path": "Natural Sciences/Physical Sciences/Physics",
                 "n": 10, "existing": ["Mechanics"]},
    "syllabus": {"subject": "Optics", "level": "undergraduate", "subtopics": ["lenses"],
                 "discipline": "Physics", "n_sessions": 12},
    "question": {"subject": "Optics", "level": "undergraduate", "discipline": "Physics",
                 "syllabus": [{"title": "Lenses", "concepts": ["focal length", "refraction"]},
                              {"title": "Mirrors", "concepts": ["reflection"]}],
                 "sessions": [{"title": "Lenses", "description": "thin lenses"},
                              {"title": "Mirrors", "description": "curved mirrors"}],
                 "concepts": ["focal length", "reflection"], "strategy": "hard",
                 "last_session_title": "Mirrors"},
    "answer": {"question": "Why is the sky blue?", "subject": "Optics", "level": "undergraduate"},
}
SAMPLES = {
    "taxonomy": {"items": [{"name": "Acoustics", "description": "sound"}]},
    "subjects": {"subjects": [{"name": "Optics", "level": "undergraduate",
                               "subtopics": ["lenses"]}]},
    "syllabus": {"sessions": [{"title": "Lenses", "description": "d",
                               "concepts": ["a", "b", "c"]}]},
    "question": {"question": "What is the focal length of a thin lens?"},
    "answer": {"text": "Rayleigh scattering."},
}


def test_every_prompt_is_covered_here() -> None:
    assert set(PROMPTS) == set(VARIABLES) == set(SAMPLES) == set(MENTIONS)


MENTIONS = {
    "taxonomy": ["Natural Sciences", "SubField", "Physical Sciences", "5"],
    "subjects": ["Physics", "Natural Sciences/Physical Sciences/Physics", "10", "Mechanics"],
    "syllabus": ["Optics", "undergraduate", "lenses", "Physics", "12", "3 to 8 key concepts"],
    "question": ["Optics", "undergraduate", "Physics", "Lenses", "Mirrors", "focal length",
                 "reflection", "refraction", "challenging"],
    "answer": ["Why is the sky blue?", "Optics", "undergraduate"],
}


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_renders_with_its_inputs(name: str) -> None:
    messages = get_prompt(name).render(**VARIABLES[name])
    assert [m["role"] for m in messages] == ["system", "user"]
    assert all(m["content"].strip() for m in messages)
    text = "\n".join(m["content"] for m in messages)
    for expected in MENTIONS[name]:
        assert expected in text, f"{expected!r} missing from the {name} prompt"


def test_question_prompt_follows_the_method() -> None:
    text = get_prompt("question").render(**VARIABLES["question"])[1]["content"]
    assert "learned up to the session \"Mirrors\"" in text
    assert "1. Lenses: focal length, refraction" in text  # the whole syllabus
    assert "- focal length" in text and "- reflection" in text
    basic = get_prompt("question").render(**{**VARIABLES["question"], "strategy": "basic"})
    assert "about the session \"Lenses\"" in basic[1]["content"]


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_missing_variable_fails_loudly(name: str) -> None:
    variables = dict(VARIABLES[name])
    variables.pop(next(iter(variables)))
    with pytest.raises(jinja2.UndefinedError):
        get_prompt(name).render(**variables)


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_response_model_schema_and_sample(name: str) -> None:
    model = get_prompt(name).response_model
    json.dumps(model.model_json_schema())
    assert model.model_validate(SAMPLES[name])


def test_syllabus_sessions_need_three_to_eight_concepts() -> None:
    model = get_prompt("syllabus").response_model
    with pytest.raises(ValueError):
        model.model_validate({"sessions": [{"title": "t", "concepts": ["a", "b"]}]})
    with pytest.raises(ValueError):
        model.model_validate({"sessions": [{"title": "t", "concepts": list("abcdefghi")}]})


def test_unknown_prompt() -> None:
    with pytest.raises(KeyError, match="known"):
        get_prompt("nope")
