"""The validators: each rule rejects the junk the bundled model and faulty endpoints really
produced, accepts a good output, and fails its unit through the stage's `accept` with a
clear reason ("rejected by <rule>: ...") and the raw text kept. The live executor shows a
JSON stage its rejection once, as it does a schema error."""

from __future__ import annotations

import json
from typing import Any

import pytest

from generators import validators as V
from generators.jobs import Outcome, UnitSpec
from generators.llm import LLMClient, LLMConfig, Reply
from generators.stages import STAGES
from generators.validators import Output, Text
from graph.store import Store
from tests.conftest import SMALL_TAXONOMY
from tests.llm_stub import fake_glan_model, first_user_message, ok, ok_json, run_stub
from tests.test_pipeline import ALGEBRA, params_for, run

ENGLISH = "Write the syllabus of the course Linear Algebra, undergraduate level."


def rejected(texts: list[Text], **kw: Any) -> str | None:
    return V.validate(Output(texts, kw.pop("prompt", ENGLISH), **kw))


def rule(texts: list[Text], **kw: Any) -> str | None:
    return V.rule_of(rejected(texts, **kw))


# ------------------------------------------------------------------ each rule, its real junk


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        # concepts the bundled model stored under Algebra
        ([Text("concept", "...", "Vectors", "c")], "punctuation_only"),
        ([Text("concept", "{{end}},", "Vectors", "c")], "template_leak"),
        ([Text("concept", "{{text}}#tutorial_1", "Vectors", "c")], "template_leak"),
        # a subject's level and subtopics
        ([Text("level", '"+1,"')], "too_short"),
        ([Text("subtopic", ",", "Group Theory", "s")], "punctuation_only"),
        ([Text("subtopic", "…", "Group Theory", "s")], "punctuation_only"),
        # a chat template's special token in an answer
        ([Text("answer", "The kernel is trivial.<|im_end|>")], "template_leak"),
        (
            [Text("question", "Explain {{ concept }} in your own words, with an example.")],
            "template_leak",
        ),
        # names repeating their parent, or each other
        ([Text("concept", "Linear Maps", "linear  maps", "c")], "repeats_parent"),
        ([Text("subject", "Algebra", "Algebra", "subjects")], "repeats_parent"),
        (
            [
                Text("subject", "Group Theory", "Algebra", "s"),
                Text("subject", "group theory", "Algebra", "s"),
            ],
            "duplicate_names",
        ),
        ([Text("question", "Why?")], "too_short"),
        ([Text("answer", "4.")], "too_short"),
        ([Text("rationale", "Fine.")], "too_short"),
        ([Text("node", "42", "Mathematics", "items")], "too_short"),
    ],
)
def test_each_rule_rejects_its_real_example(texts: list[Text], expected: str) -> None:
    error = rejected(texts)
    assert V.rule_of(error) == expected, error
    assert error is not None and error.startswith(f"rejected by {expected}: ")


def test_a_truncated_reply_is_rejected_with_or_without_finish_reason() -> None:
    cut = [Text("answer", '{"truncated": ')]
    # the endpoint said it stopped at the token limit
    error = rejected(
        [Text("answer", "The determinant is the product of")],
        finish_reason="length",
        free_text=True,
    )
    assert V.rule_of(error) == "truncated" and "GLAN_MAX_TOKENS" in (error or "")
    # a faulty endpoint that did not say so: a JSON value that stops before its end
    assert rule(cut, finish_reason="stop", free_text=True) == "truncated"
    assert rule([Text("answer", '[1, 2, "thr')], free_text=True) == "truncated"
    # JSON that is whole is an answer like any other (an answer about JSON, say)
    assert rule([Text("answer", '{"a": 1}')], free_text=True) is None
    # a JSON stage that parsed completely is not cut off, whatever came after its JSON
    assert rule([Text("question", "What is a group homomorphism?")], finish_reason="length") is None


def test_a_reply_cut_off_before_its_json_ended_says_so() -> None:
    cut = V.check(None, [], finish_reason="length", parse_error="did not match Syllabus: x")
    assert V.rule_of(cut.error) == "truncated" and "did not match Syllabus" in (cut.error or "")
    # not cut off: the parse error as it was
    assert V.check(None, [], finish_reason="stop", parse_error="no JSON").error == "no JSON"


def test_text_in_another_script_than_the_prompts() -> None:
    chinese = "线性代数是研究向量空间和线性映射的数学分支，它在物理和工程中有广泛应用。"
    assert rule([Text("answer", chinese)], free_text=True) == "wrong_script"
    assert rule([Text("concept", "Векторы", "Vectors", "c")]) == "wrong_script"
    # the same text answers a prompt in its own script (names in Chinese, template in English)
    prompt = ENGLISH + " 线性代数"
    assert rule([Text("answer", chinese)], prompt=prompt, free_text=True) is None
    # a few letters of another script inside English are not another language
    assert (
        rule([Text("answer", "The angle θ between α and β is π/2 when they are orthogonal.")])
        is None
    )
    assert rule([Text("concept", "α-helix", "Proteins", "c")]) is None
    # a prompt with no letters to compare with: nothing is told
    assert rule([Text("answer", chinese)], prompt="1 + 1 = ?") is None


def test_good_outputs_pass_every_rule() -> None:
    good = [
        Text("subject", "Group Theory", "Algebra", "subjects"),
        Text("level", "undergraduate"),
        Text("level", ""),  # optional: a subject may have no level
        Text("subtopic", "Sylow theorems", "Group Theory", "s0"),
        Text("session", "Linear Maps", "Linear Algebra", "sessions"),
        Text("description", ""),
        Text("concept", "C", "Programming Languages", "c"),  # one letter is a name
        Text("concept", "kernel", "Linear Maps", "c0"),
        Text("concept", "kernel", "Quotients", "c1"),  # the same name in another session
        Text("question", "Show that the kernel of a linear map is a subspace."),
        # LaTeX closes groups with }}, and templates inside code are code
        Text("answer", r"Since $\frac{1}{2^{n}}$ tends to 0, the series converges."),
        Text("answer", "In Jinja you write ```\n<p>{{ user.name }}</p>\n``` or `{% if x %}`."),
        Text("answer", "42"),
        Text("rationale", "The answer is correct and complete."),
    ]
    assert rejected(good) is None


def test_rules_are_named_and_errors_name_them() -> None:
    assert V.RULE_NAMES == (
        "truncated",
        "template_leak",
        "punctuation_only",
        "too_short",
        "repeats_parent",
        "duplicate_names",
        "wrong_script",
    )
    assert all(r.reason for r in V.RULES)
    assert V.rule_of('rejected by too_short: level "+1," has fewer than 2 letters') == "too_short"
    assert V.rule_of("the answer did not match Question: question: too short") is None
    assert V.rule_of("rejected by nothing: x") is None and V.rule_of(None) is None


def test_biology_under_algebra_is_the_judges_to_catch_not_a_validators() -> None:
    """A subject in the wrong discipline is a relevance judgement: the rules that could
    reject it would also reject Chemistry for Medicine. The judge scores it (on_topic)."""
    biology = [Text("subject", "Biology", "Algebra", "subjects"), Text("level", "undergraduate")]
    chemistry = [Text("subject", "Chemistry", "Medicine", "subjects")]
    assert rejected(biology) is None and rejected(chemistry) is None


# ------------------------------------------------------------------ through the stages


@pytest.fixture
def store(embedded_store: Store) -> Store:
    embedded_store.taxonomy.load(SMALL_TAXONOMY)
    with run_stub(fake_glan_model()) as model:
        run(embedded_store, model, ["subjects", "syllabus", "questions"])
    return embedded_store


def stage_unit(store: Store, name: str) -> tuple[Any, UnitSpec, Any]:
    llm = LLMClient(LLMConfig(base_url="http://127.0.0.1:9/v1"))
    options = {"rounds": 1, "per_call": 3} if name == "subjects" else {}
    if name == "questions":
        job = next(j for j in store.jobs.all() if j["kind"] == "questions")
        options = json.loads(job["params"])
    stage = STAGES[name](store, llm, params_for(name), options)
    if name == "questions":
        stage.job_id = job["id"]
    unit = stage.plan(store.taxonomy.scope(ALGEBRA))[0]
    request = stage.request(unit)
    assert not isinstance(request, Outcome), request
    return stage, unit, request


def accept(store: Store, name: str, reply: str, finish: str = "stop") -> Outcome:
    stage, unit, request = stage_unit(store, name)
    return stage.accept(unit, request, Reply(reply, finish_reason=finish))


def syllabus(concepts: list[str], title: str = "Vectors") -> str:
    return json.dumps(
        {"sessions": [{"title": title, "description": "vectors", "concepts": concepts}]}
    )


def subjects(name: str = "Group Theory", level: str = "undergraduate", topics: Any = None) -> str:
    return json.dumps(
        {"subjects": [{"name": name, "level": level, "subtopics": topics or ["groups"]}]}
    )


@pytest.mark.parametrize(
    ("stage", "reply", "expected"),
    [
        ("syllabus", syllabus(["...", "norm", "basis"]), "punctuation_only"),
        ("syllabus", syllabus(["{{end}},", "norm", "basis"]), "template_leak"),
        ("syllabus", syllabus(["{{text}}#tutorial_1", "norm", "basis"]), "template_leak"),
        ("syllabus", syllabus(["vectors", "norm", "basis"]), "repeats_parent"),
        ("syllabus", syllabus(["norm", "Norm", "basis"]), "duplicate_names"),
        ("subjects", subjects(level='"+1,"'), "too_short"),
        ("subjects", subjects(topics=[","]), "punctuation_only"),
        ("subjects", subjects(name="Rings", topics=["rings"]), "repeats_parent"),
        ("answers", '{"truncated": ', "truncated"),
        (
            "answers",
            "Векторное пространство — это множество векторов с операциями.",
            "wrong_script",
        ),
        ("questions", json.dumps({"question": "What is {{ concept }} and why?"}), "template_leak"),
    ],
)
def test_a_stage_fails_a_junk_reply_with_the_rule_and_keeps_the_raw_text(
    store: Store, stage: str, reply: str, expected: str
) -> None:
    outcome = accept(store, stage, reply)
    assert not outcome.ok and outcome.value is None
    assert V.rule_of(outcome.error) == expected, outcome.error
    assert outcome.raw == reply


@pytest.mark.parametrize(
    ("stage", "reply"),
    [
        ("syllabus", syllabus(["norm", "basis", "span"])),
        ("subjects", subjects()),
        ("answers", "A vector space is closed under addition and scalar multiplication."),
        ("questions", json.dumps({"question": "Show that every subspace contains zero."})),
    ],
)
def test_a_stage_accepts_a_good_reply(store: Store, stage: str, reply: str) -> None:
    outcome = accept(store, stage, reply)
    assert outcome.ok, outcome.error


def test_an_answer_cut_off_at_the_token_limit_fails(store: Store) -> None:
    outcome = accept(store, "answers", "A vector space is closed under", finish="length")
    assert V.rule_of(outcome.error) == "truncated" and outcome.finish_reason == "length"


def test_a_taxonomy_proposal_is_checked_too(store: Store) -> None:
    llm = LLMClient(LLMConfig(base_url="http://127.0.0.1:9/v1"))
    stage = STAGES["taxonomy"](store, llm, params_for("taxonomy"), {"n": 3, "rounds": 1})
    unit = stage.plan(store.taxonomy.scope("Formal Sciences"))[0]
    request = stage.request(unit)
    assert not isinstance(request, Outcome)
    junk = json.dumps({"items": [{"name": "Formal Sciences"}]})
    mixed = json.dumps({"items": [{"name": "Formal Sciences"}, {"name": "Logic"}]})
    assert V.rule_of(stage.accept(unit, request, Reply(junk)).error) == "repeats_parent"
    kept = stage.accept(unit, request, Reply(mixed))
    assert kept.ok and [i.name for i in kept.value.items] == ["Logic"]
    assert [V.rule_of(d) for d in kept.dropped] == ["repeats_parent"]


def test_the_live_executor_shows_a_json_stage_its_rejection_once(embedded_store: Store) -> None:
    """A rejected syllabus is asked for again with the reason (like a schema error): the
    model can fix a name it is told about, and one call is cheaper than a failed unit."""
    embedded_store.taxonomy.load(SMALL_TAXONOMY)
    fine = fake_glan_model()
    asked: list[dict[str, Any]] = []

    def handler(body: dict[str, Any], n: int) -> Any:
        if '{"sessions"' not in first_user_message(body):
            return fine(body, n)
        asked.append(body)
        if len(body["messages"]) <= 2:  # the first ask: junk
            return ok(syllabus(["...", "norm", "basis"]))
        return ok_json(json.loads(syllabus(["norm", "basis", "span"])))

    with run_stub(handler) as model:
        _, result = run(embedded_store, model, ["subjects", "syllabus"])
    assert result.total == 6 and result.done == 6 and result.failed == 0
    assert len(asked) == 12  # each subject: the junk, then the fix
    retries = [b["messages"] for b in asked if len(b["messages"]) > 2]
    assert len(retries) == 6
    for messages in retries:
        assert messages[-2]["role"] == "assistant"
        assert messages[-1]["content"].startswith("Your previous answer was rejected: concept")
        assert "punctuation" in messages[-1]["content"]


def test_answers_are_not_asked_again_within_a_run(embedded_store: Store) -> None:
    """A rejected answer fails its unit at once (the next run asks it afresh): an answer is
    the costliest call, and the judge, not a second ask, gauges answer quality."""
    embedded_store.taxonomy.load(SMALL_TAXONOMY)
    fine = fake_glan_model()

    def handler(body: dict[str, Any], n: int) -> Any:
        if "Answer as JSON" in first_user_message(body):
            return fine(body, n)
        return ok("<|im_start|>assistant")

    with run_stub(handler) as model:
        *_, answers = run(embedded_store, model, ["subjects", "syllabus", "questions", "answers"])
        answer_calls = sum("Answer as JSON" not in first_user_message(b) for b in model.requests)
    assert answers.failed == answers.total == answer_calls == 8
    units = embedded_store.jobs.units(answers.job_id)
    assert {V.rule_of(u["error"]) for u in units} == {"template_leak"}
    assert all(u["raw"] == "<|im_start|>assistant" for u in units)


def test_an_ascii_texts_scripts_are_counted_as_one_letter_at_a_time_counts_them() -> None:
    """ASCII text is counted in bulk (every prompt is scanned on every reply); the counts are
    those of the letter-by-letter path, which other text still takes."""
    import random
    import string

    draw = random.Random(7)
    texts = ["", "42.", "Hello, World!", "Переход à la ligne", "量子力学 and physics"]
    texts += ["".join(draw.choice(string.printable) for _ in range(200)) for _ in range(300)]
    for text in texts:
        one_by_one: dict[str, int] = {}
        for ch in text:
            script = V.script_of(ch)
            if script is not None:
                one_by_one[script] = one_by_one.get(script, 0) + 1
        assert V.scripts(text) == one_by_one, text
        assert V._letters(text) == sum(ch.isalpha() for ch in text), text
        assert V._alnum(text) == sum(ch.isalnum() for ch in text), text


# ------------------------------------------------------------------ junk items left out


def test_junk_items_are_left_out_and_the_rest_kept(store: Store) -> None:
    """A list with junk in it is not junk as a whole: the items that break a rule are left
    out (an item then too small goes too), the rest is written, and the unit records what
    it left out, by rule."""
    reply = json.dumps(
        {
            "sessions": [
                {
                    "title": "Vectors",
                    "description": "d",
                    "concepts": ["norm", "...", "basis", "span"],
                },
                {"title": "Maps", "description": "d", "concepts": ["kernel", "{{x}}", "maps"]},
                {"title": "Bases", "description": "d", "concepts": ["basis", "dimension", "rank"]},
            ]
        }
    )
    outcome = accept(store, "syllabus", reply)
    assert outcome.ok, outcome.error
    kept = outcome.value.sessions
    assert [(s.title, s.concepts) for s in kept] == [
        ("Vectors", ["norm", "basis", "span"]),
        ("Bases", ["basis", "dimension", "rank"]),
    ]
    assert [V.rule_of(d) for d in outcome.dropped] == [
        "template_leak",
        "punctuation_only",
        "repeats_parent",
    ]
    assert 'concept "..."' in outcome.dropped[1]
    # a reply with one good subject among junk keeps it
    mixed = json.dumps(
        {
            "subjects": [
                {"name": "Pure Mathematics", "level": "undergraduate", "subtopics": ["proofs"]},
                {"name": "Group Theory", "level": "graduate", "subtopics": ["groups", ","]},
                {"name": "Rings", "level": '"+1,"', "subtopics": ["ideals"]},
            ]
        }
    )
    outcome = accept(store, "subjects", mixed)
    assert outcome.ok, outcome.error
    # a course named as its discipline is kept: it is a course like any other
    assert [(s.name, s.subtopics) for s in outcome.value.subjects] == [
        ("Pure Mathematics", ["proofs"]),
        ("Group Theory", ["groups"]),
    ]
    assert sorted(V.rule_of(d) or "" for d in outcome.dropped) == ["punctuation_only", "too_short"]


def test_what_was_left_out_is_stored_on_the_unit_and_the_rest_written(
    embedded_store: Store,
) -> None:
    embedded_store.taxonomy.load(SMALL_TAXONOMY)
    fine = fake_glan_model()

    def handler(body: dict[str, Any], n: int) -> Any:
        reply = fine(body, n)
        if '{"sessions"' in first_user_message(body):
            data = json.loads(reply.content)
            data["sessions"][0]["concepts"].append("...")  # four good ones and a junk one
            reply.content = json.dumps(data)
        return reply

    with run_stub(handler) as model:
        _, syllabi = run(embedded_store, model, ["subjects", "syllabus"])
    assert syllabi.done == syllabi.total == 6 and syllabi.failed == 0
    units = embedded_store.jobs.units(syllabi.job_id)
    assert all(V.rule_of(u["dropped"]) == "punctuation_only" for u in units)
    assert all(u["error"] is None for u in units)
    # each syllabus was written without the junk concept: 4 sessions of 4 concepts
    stats = embedded_store.syllabi.concept_stats([u["target_id"] for u in units])
    assert {s[0] for s in stats.values()} == {16}
    # the report counts them by rule, apart from the units rejected whole
    from generators.report import build_report

    report = build_report(embedded_store, None)
    assert {r: n for r, n in report.validator_drops.items() if n} == {"punctuation_only": 6}
    assert not any(report.validator_rejections.values())
