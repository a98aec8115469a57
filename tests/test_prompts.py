"""Every prompt template renders, carries its inputs, and its answer model is sound."""

from __future__ import annotations

import json
from typing import Any

import jinja2
import pytest
from pydantic import ValidationError

from generators.prompting import PROMPTS, get_prompt

QUESTION: dict[str, Any] = {
    "subject": "Optics",
    "level": "undergraduate",
    "discipline": "Physics",
    "syllabus": [
        {"title": "Lenses", "concepts": ["focal length", "refraction", "thin lens equation"]},
        {"title": "Mirrors", "concepts": ["reflection", "curvature", "virtual image"]},
        {"title": "Interference", "concepts": ["coherence", "fringes", "path difference"]},
    ],
    "sessions": [
        {"title": "Lenses", "description": "thin lenses and image formation"},
        {"title": "Mirrors", "description": "plane and curved mirrors"},
    ],
    "concepts": ["focal length", "reflection"],
    "strategy": "hard",
    "last_session_title": "Mirrors",
}
VARIABLES: dict[str, dict[str, Any]] = {
    "taxonomy": {
        "path": "Natural Sciences",
        "parent_kind": "Field",
        "child_kind": "SubField",
        "existing": ["Physical Sciences", "Earth Sciences"],
        "n": 5,
    },
    "subjects": {
        "discipline": "Physics",
        "path": "Natural Sciences/Physical Sciences/Physics",
        "n": 10,
        "existing": ["Mechanics", "Thermodynamics"],
    },
    "syllabus": {
        "subject": "Optics",
        "level": "undergraduate",
        "subtopics": ["lenses", "mirrors", "interference"],
        "discipline": "Physics",
        "n_sessions": 12,
    },
    "question": QUESTION,
    "answer": {"question": "Why is the sky blue?", "subject": "Optics", "level": "undergraduate"},
    "judge": {
        "subject": "Optics",
        "level": "undergraduate",
        "discipline": "Physics",
        "concepts": ["focal length", "reflection"],
        "question": "What is the focal length of a thin lens?",
        "answer": "The distance from the lens to its focal point.",
    },
    "followup": {
        "subject": "Optics",
        "level": "undergraduate",
        "sessions": QUESTION["syllabus"][:2],
        "conversation": [
            {"role": "user", "content": "What is the focal length of a thin lens?"},
            {"role": "assistant", "content": "The distance from the lens to its focus."},
        ],
        "unused": ["refraction", "virtual image"],
    },
}
MENTIONS = {
    "taxonomy": [
        "Natural Sciences",
        "sub-field",
        "field",
        "Physical Sciences",
        "Earth Sciences",
        "up to 5",
    ],
    "subjects": [
        "Physics",
        "Natural Sciences/Physical Sciences/Physics",
        "List 10",
        "Mechanics",
        "Thermodynamics",
        "level",
        "subtopics",
    ],
    "syllabus": [
        "Optics",
        "undergraduate",
        "lenses",
        "mirrors",
        "interference",
        "Physics",
        "about 12",
        "3 to 8 key concepts",
    ],
    "question": [
        "Optics",
        "undergraduate",
        "Physics",
        "Lenses",
        "Mirrors",
        "Interference",
        "- focal length",
        "- reflection",
        "refraction",
        "challenging",
        "ONE",
        "self-contained",
    ],
    "answer": ["Why is the sky blue?", "Optics", "undergraduate"],
    "judge": [
        '"Optics"',
        "undergraduate",
        "discipline: Physics",
        "key concepts: focal length, reflection",
        "What is the focal length of a thin lens?",
        "The distance from the lens to its focal point.",
        "one-sentence rationale",
        "self_contained",
        "on_topic: the question belongs to the course and to Physics",
        "from 1 (worst) to 10 (best)",
    ],
    "followup": [
        "student of Optics at undergraduate level",
        '"Lenses": focal length, refraction, thin lens equation',
        '"Mirrors": reflection, curvature, virtual image',
        "Student: What is the focal length of a thin lens?",
        "Teacher: The distance from the lens to its focus.",
        "clarification",
        "harder",
        "one not used yet: refraction, virtual image.",
        '{"kind"',
    ],
}
SAMPLES = {
    "taxonomy": {"items": [{"name": "Acoustics", "description": "sound"}, {"name": "Optics"}]},
    "subjects": {
        "subjects": [
            {
                "name": "Optics",
                "level": "undergraduate",
                "subtopics": ["lenses"],
                "prerequisites": "ignored",
            }
        ]
    },
    "syllabus": {
        "sessions": [{"title": "Lenses", "description": "d", "concepts": ["a", "b", "c"]}]
    },
    "question": {"question": "What is the focal length of a thin lens?"},
    "answer": {"text": "Rayleigh scattering."},
    "judge": {
        "rationale": "Correct and complete.",
        "self_contained": 9,
        "answerable": 10,
        "correct": 8,
        "complete": 7,
        "uses_concepts": 6,
        "on_topic": 10,
        "overall": 8,
    },
    "followup": {
        "kind": "application",
        "question": "How is refraction used here?",
        "concept": "refraction",
    },
}


def test_every_prompt_is_covered_here() -> None:
    assert set(PROMPTS) == set(VARIABLES) == set(SAMPLES) == set(MENTIONS)


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_the_variables_here_are_the_ones_the_template_reads(name: str) -> None:
    assert get_prompt(name).variables == set(VARIABLES[name])


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_renders_with_its_inputs(name: str) -> None:
    messages = get_prompt(name).render(**VARIABLES[name])
    assert [m["role"] for m in messages] == ["system", "user"]
    assert all(m["content"] == m["content"].strip() != "" for m in messages)
    text = "\n".join(m["content"] for m in messages)
    for expected in MENTIONS[name]:
        assert expected in text, f"{expected!r} missing from the {name} prompt"
    assert "{{" not in text and "{%" not in text


def test_taxonomy_root_asks_for_fields() -> None:
    variables = {**VARIABLES["taxonomy"], "parent_kind": "root", "existing": []}
    user = get_prompt("taxonomy").render(**variables)[1]["content"]
    assert "top-level fields of human knowledge and capabilities" in user
    assert "already exist" not in user


def test_question_prompt_follows_the_method() -> None:
    prompt = get_prompt("question")
    hard = prompt.render(**QUESTION)[1]["content"]
    assert 'learned up to the session "Mirrors"' in hard
    for i, session in enumerate(QUESTION["syllabus"], 1):  # the whole syllabus
        assert f"{i}. {session['title']}: {', '.join(session['concepts'])}" in hard
    assert '"Lenses" (thin lenses and image formation)' in hard
    assert '"Mirrors" (plane and curved mirrors)' in hard and "both" in hard
    basic = prompt.render(
        **{
            **QUESTION,
            "strategy": "basic",
            "sessions": QUESTION["sessions"][:1],
            "concepts": ["focal length"],
            "last_session_title": "Lenses",
        }
    )
    user = basic[1]["content"]
    assert 'about the session "Lenses"' in user and "challenging" not in user
    assert "- focal length" in user and "- reflection" not in user


def test_empty_optional_inputs_leave_no_holes() -> None:
    user = get_prompt("syllabus").render(
        **{**VARIABLES["syllabus"], "level": "", "discipline": "", "subtopics": []}
    )[1]["content"]
    assert 'course "Optics".' in user and "()" not in user and "It covers" not in user


@pytest.mark.parametrize(
    ("name", "missing"), [(n, v) for n in sorted(VARIABLES) for v in sorted(VARIABLES[n])]
)
def test_a_missing_variable_fails_loudly(name: str, missing: str) -> None:
    variables = {k: v for k, v in VARIABLES[name].items() if k != missing}
    with pytest.raises(jinja2.UndefinedError, match=missing):
        get_prompt(name).render(**variables)


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_response_model_schema_and_sample(name: str) -> None:
    model = get_prompt(name).response_model
    schema = json.loads(json.dumps(model.model_json_schema()))
    assert schema["type"] == "object" and schema["properties"]
    value = model.model_validate(SAMPLES[name])
    assert model.model_validate_json(value.model_dump_json()) == value


def test_response_models_enforce_the_method() -> None:
    syllabus = get_prompt("syllabus").response_model
    for concepts in (["a", "b"], list("abcdefghi")):  # 3-8 key concepts per session
        with pytest.raises(ValidationError):
            syllabus.model_validate(
                {"sessions": [{"title": "t", "description": "", "concepts": concepts}]}
            )
    with pytest.raises(ValidationError):
        get_prompt("subjects").response_model.model_validate(
            {"subjects": [{"name": "Optics", "level": "undergraduate", "subtopics": []}]}
        )
    with pytest.raises(ValidationError):
        get_prompt("taxonomy").response_model.model_validate({"items": [{"name": "x" * 121}]})
    with pytest.raises(ValidationError):
        get_prompt("question").response_model.model_validate({"question": "  why?  "})
    with pytest.raises(ValidationError):
        get_prompt("answer").response_model.model_validate({"text": " \n "})
    answer = get_prompt("answer").response_model.model_validate({"text": "  Blue.\n"})
    assert answer.model_dump() == {"text": "Blue."}
    followup = get_prompt("followup").response_model
    with pytest.raises(ValidationError, match="must name the key concept"):
        followup.model_validate({"kind": "application", "question": "And for mirrors then?"})
    with pytest.raises(ValidationError):
        followup.model_validate({"kind": "digression", "question": "And for mirrors then?"})
    plain = followup.model_validate(
        {"kind": " Harder ", "question": "And for two lenses?", "concept": "none"}
    )
    assert (plain.kind, plain.concept) == ("harder", None)  # type: ignore[attr-defined]


def test_the_judges_scores_are_1_to_10_each_with_a_rationale() -> None:
    judge = get_prompt("judge").response_model
    scores = SAMPLES["judge"]
    for bad in ({**scores, "overall": 0}, {**scores, "correct": 11}, {**scores, "rationale": " "}):
        with pytest.raises(ValidationError):
            judge.model_validate(bad)
    missing = {k: v for k, v in scores.items() if k != "on_topic"}
    with pytest.raises(ValidationError):
        judge.model_validate(missing)


def test_the_judge_prompt_without_concepts_or_discipline_leaves_no_holes() -> None:
    variables = {**VARIABLES["judge"], "concepts": [], "discipline": ""}
    user = get_prompt("judge").render(**variables)[1]["content"]
    assert "key concepts:" not in user and "discipline" not in user
    assert "uses the key concepts of the course" in user and "belongs to the course." in user


def test_unknown_prompt() -> None:
    with pytest.raises(KeyError, match="known: taxonomy"):
        get_prompt("nope")
