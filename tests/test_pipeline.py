"""Every GLAN stage against an OpenAI-compatible stub on loopback, asserting what is stored."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from generators.jobs import JobStatus
from generators.llm import LLMClient, LLMConfig, StageParams
from generators.pipeline import PipelineOptions, run_stages, verdict
from graph.config import StoreConfig
from graph.errors import ScopeNotApproved, WrongKind
from graph.model import (
    ANSWERS,
    CONCEPT,
    COVERS,
    DISCIPLINE,
    FROM,
    HAS_CONCEPT,
    INSTRUCTION,
    RESPONSE,
    SESSION,
    SUBFIELD,
    SUBJECT,
    UNIT,
    Status,
)
from graph.store import Store
from tests.conftest import SMALL_TAXONOMY
from tests.llm_stub import Reply, Stub, error, fake_glan_model, first_user_message, ok, run_stub

ALGEBRA = "Formal Sciences/Mathematics/Pure Mathematics"
OPTIONS = PipelineOptions(n=8, rounds=2, per_call=3, sessions=4, seed=3)


def params_for(stage: str) -> StageParams:
    model = {"answers": "answer-model", "questions": "question-model"}.get(stage, "main-model")
    return StageParams(model=model, temperature=0.7 if stage == "answers" else 1.0, top_p=0.95)


def run(
    store: Store,
    stub: Stub,
    stages: list[str],
    path: str | None = ALGEBRA,
    options: PipelineOptions = OPTIONS,
    **config: Any,
) -> list[Any]:
    async def main() -> list[Any]:
        llm = LLMClient(LLMConfig(base_url=stub.base_url, backoff_base_s=0.01, **config))
        try:
            return await run_stages(store, llm, params_for, stages, path, options, concurrency=4)
        finally:
            await llm.aclose()

    return asyncio.run(main())


@pytest.fixture
def store(embedded_store: Store) -> Store:
    embedded_store.taxonomy.load(SMALL_TAXONOMY)
    return embedded_store


@pytest.fixture
def model() -> Iterator[Stub]:
    with run_stub(fake_glan_model()) as stub:
        yield stub


ALL = ["subjects", "syllabus", "questions", "answers"]


def test_all_stages_store_structure_and_provenance(store: Store, model: Stub) -> None:
    results = run(store, model, ALL)
    assert [r.status for r in results] == [JobStatus.COMPLETED] * 4
    subjects, syllabus, questions, answers = results
    # 2 rounds x 3 subjects, each round asked with the previous subjects listed
    assert subjects.total == 2 and store.nodes.count_kind(SUBJECT) == 6
    assert syllabus.total == 6 and store.nodes.count_kind(SESSION) == 24
    assert store.nodes.count_kind(CONCEPT) == 96
    assert questions.total == 8 and store.nodes.count_kind(INSTRUCTION) == 8
    assert answers.total == 8 and store.nodes.count_kind(RESPONSE) == 8
    # tokens: the stub reports 11 in / 7 out per call
    for r in results:
        assert (r.prompt_tokens, r.completion_tokens) == (11 * r.total, 7 * r.total)
    job = store.jobs.get(questions.job_id)
    assert job is not None and job["done"] == 8 and job["prompt_tokens"] == 88

    ids = store.instructions.ids_in_scope(store.taxonomy.scope(ALGEBRA))
    nodes = store.nodes.get_many(ids)
    covers = store.nodes.linked(COVERS, ids)
    sessions = store.nodes.linked(FROM, ids)
    responses = store.nodes.linked(ANSWERS, ids, reverse=True)
    concepts_of = store.nodes.linked(HAS_CONCEPT, [s for ss in sessions.values() for s in ss])
    for iid in ids:
        ins = nodes[iid].props
        assert ins["model"] == "question-model" and ins["prompt_name"] == "question"
        assert ins["prompt_version"] == "1" and ins["job_id"] == questions.job_id
        assert ins["strategy"] in ("basic", "hard") and ins["seed"] == 3
        assert len(sessions[iid]) == (1 if ins["strategy"] == "basic" else 2)
        owned = {c for s in sessions[iid] for c in concepts_of[s]}
        assert 1 <= len(covers[iid]) <= 5 and set(covers[iid]) <= owned
        # the question was asked with the sampled concepts, by name
        assert ins["text"].startswith("Explain how these relate:")
        assert len(responses[iid]) == 1
        rsp = store.nodes.get(responses[iid][0])
        assert rsp is not None and rsp.props["model"] == "answer-model"
        assert rsp.props["temperature"] == 0.7 and rsp.props["instruction_id"] == iid
    # the question prompt carried the whole syllabus and the sampled concepts
    asked = [b for b in model.requests if '{"question"' in first_user_message(b)]
    assert len(asked) == 8
    prompt = asked[0]["messages"][-1]["content"]
    assert "students have learned up to" in prompt and prompt.count("Session ") >= 4
    assert asked[0]["model"] == "question-model"


def test_rerun_resumes_and_duplicates_nothing(store: Store, model: Stub) -> None:
    run(store, model, ALL)
    calls = model.calls
    counts = {k.label: store.nodes.count_kind(k) for k in (SUBJECT, SESSION, INSTRUCTION, RESPONSE)}
    results = run(store, model, ALL)
    assert model.calls == calls  # nothing asked again
    assert [r.skipped for r in results] == [r.total for r in results]
    assert counts == {
        k.label: store.nodes.count_kind(k) for k in (SUBJECT, SESSION, INSTRUCTION, RESPONSE)
    }
    # a new seed asks new questions and avoids the combinations already asked
    more = run(store, model, ["questions"], options=PipelineOptions(n=8, seed=4))
    assert more[0].done == 8 and store.nodes.count_kind(INSTRUCTION) == 16
    keys = [
        n.props["combo_key"]
        for n in store.nodes.get_many(store.instructions.ids_in_scope(None)).values()
    ]
    assert len(set(keys)) == 16


def test_malformed_output_fails_the_unit_and_keeps_the_raw_text(store: Store) -> None:
    good = fake_glan_model()

    def flaky(body: dict[str, Any], n: int) -> Reply:
        # the first subject of each round gets a broken syllabus, on the retry too
        if re.search(r'course "Subject [^"]* 0"', first_user_message(body)):
            return ok("Here is your syllabus: {not json")
        return good(body, n)

    with run_stub(flaky) as stub:
        run(store, stub, ["subjects"])
        res = run(store, stub, ["syllabus"])[0]
    assert res.status == JobStatus.COMPLETED_WITH_FAILURES and res.failed == 2
    failed = [u for u in store.jobs.units(res.job_id) if u["status"] == "failed"]
    assert len(failed) == res.failed
    for u in failed:
        assert "did not match Syllabus" in u["error"]
        assert u["raw"] == "Here is your syllabus: {not json"
    with run_stub(fake_glan_model()) as stub:  # a re-run retries only the failed units
        again = run(store, stub, ["syllabus"])[0]
        assert stub.calls == res.failed
    assert again.status == JobStatus.COMPLETED and again.done == again.total


def test_an_output_the_store_refuses_fails_its_unit_alone(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finished units are written in groups; one output the store refuses (a title of
    control characters only, which the schema lets through) fails its own unit, not the
    others written with it. (The validators reject such a title before it is written: they
    are off here, to reach the store's own refusal.)"""
    from generators.stages import SyllabusStage

    monkeypatch.setattr(SyllabusStage, "texts", lambda self, unit, value: [])
    good = fake_glan_model()

    def refused(body: dict[str, Any], n: int) -> Reply:
        reply = good(body, n)
        if re.search(r'course "Subject [^"]* 1"', first_user_message(body)):
            syllabus = json.loads(reply.content)
            syllabus["sessions"][0]["title"] = "\u0001\u0002"
            reply.content = json.dumps(syllabus)
        return reply

    with run_stub(fake_glan_model()) as stub:
        run(store, stub, ["subjects"])
    with run_stub(refused) as stub:
        res = run(store, stub, ["syllabus"])[0]
    assert res.status == JobStatus.COMPLETED_WITH_FAILURES
    assert (res.total, res.done, res.failed) == (6, 4, 2)
    units = store.jobs.units(res.job_id)
    failed = [u for u in units if u["status"] == "failed"]
    assert len(failed) == 2 and sum(u["status"] == "done" for u in units) == 4
    for u in failed:
        assert u["error"].startswith("could not store the output: session title is empty")
        assert "\\u0001" in u["raw"]
        # nothing of the refused syllabus was stored
        assert store.syllabi.concept_stats([u["target_id"]]).get(u["target_id"], (0, 0))[0] == 0
    stored = store.jobs.get(res.job_id)
    assert stored is not None and (stored["done"], stored["failed"]) == (4, 2)


def test_transient_errors_are_retried_until_done(store: Store) -> None:
    good = fake_glan_model()
    faults = [
        error(429, headers={"retry-after": "0"}),
        error(500),
        Reply(drop=True),
        Reply(delay_s=2.0),
    ]

    def unreliable(body: dict[str, Any], n: int) -> Reply:
        return faults[n % 8] if n % 8 < len(faults) else good(body, n)

    with run_stub(unreliable) as stub:
        results = run(store, stub, ["subjects", "syllabus"], timeout_s=0.5, max_retries=8)
    assert [r.status for r in results] == [JobStatus.COMPLETED] * 2
    assert store.nodes.count_kind(SUBJECT) == 6 and store.nodes.count_kind(SESSION) == 24


def test_provider_refusal_fails_units_with_the_reason(store: Store) -> None:
    with run_stub(lambda body, n: error(400, "model not found")) as stub:
        res = run(store, stub, ["subjects"])[0]
        assert stub.calls == 2  # one per unit, no retries of a 400
    assert res.failed == 2 and res.done == 0
    units = store.jobs.units(res.job_id)
    assert all("model not found" in u["error"] for u in units)


def test_generation_refuses_unapproved_scopes(store: Store, model: Stub) -> None:
    store.taxonomy.review(ALGEBRA, Status.REJECTED)
    with pytest.raises(ScopeNotApproved, match="glan review"):
        run(store, model, ["subjects"])
    store.taxonomy.review(ALGEBRA, Status.PROPOSED)
    with pytest.raises(ScopeNotApproved):
        run(store, model, ["subjects"])
    assert model.calls == 0


def test_a_stage_refuses_a_scope_below_its_targets(store: Store, model: Stub) -> None:
    with pytest.raises(WrongKind, match="taxonomy generation runs under"):
        run(store, model, ["taxonomy"], path=ALGEBRA)
    assert model.calls == 0 and store.jobs.all() == []  # refused before a job is stored


def test_taxonomy_proposals_wait_for_review(store: Store, model: Stub) -> None:
    res = run(store, model, ["taxonomy"], path="Formal Sciences/Mathematics")[0]
    assert res.status == JobStatus.COMPLETED
    proposed = [
        c
        for c in store.taxonomy.children("Formal Sciences/Mathematics")
        if c.status == Status.PROPOSED
    ]
    assert len(proposed) == 3 and all(c.props["source"] == "llm" for c in proposed)
    assert all(c.kind is DISCIPLINE for c in proposed)
    # subjects are generated only under approved disciplines
    run(
        store,
        model,
        ["subjects"],
        path="Formal Sciences/Mathematics",
        options=PipelineOptions(rounds=1),
    )
    assert store.nodes.count_kind(SUBJECT) == 6  # 2 seed disciplines x 3, none under proposals
    store.taxonomy.review(proposed[0].path or "", Status.APPROVED)
    run(
        store,
        model,
        ["subjects"],
        path="Formal Sciences/Mathematics",
        options=PipelineOptions(rounds=1),
    )
    assert store.nodes.count_kind(SUBJECT) == 9
    # a root expansion proposes fields
    run(store, model, ["taxonomy"], path=None)
    assert sum(c.status == Status.PROPOSED for c in store.taxonomy.children(None)) == 3
    assert store.nodes.count_kind(SUBFIELD) == 3


def test_new_discipline_then_generation_only_under_it(store: Store, model: Stub) -> None:
    store.taxonomy.add_node("Formal Sciences/Mathematics", DISCIPLINE, "Category Theory")
    path = "Formal Sciences/Mathematics/Category Theory"
    results = run(store, model, ALL, path=path, options=PipelineOptions(n=4, rounds=1))
    assert [r.status for r in results] == [JobStatus.COMPLETED] * 4
    assert store.coverage.counts(path)["instructions"] == 4
    assert store.coverage.counts(ALGEBRA)["subjects"] == 0
    assert store.coverage.counts()["responses"] == 4


def test_units_record_their_inputs(store: Store, model: Stub) -> None:
    run(store, model, ["subjects", "syllabus", "questions"])
    questions = [u for u in _all_units(store) if u["stage"] == "questions"]
    assert len(questions) == 8
    payload = json.loads(questions[0]["payload"])
    assert {"subject_id", "session_ids", "concept_ids", "strategy", "combo_key"} <= set(payload)


def _all_units(store: Store) -> list[dict[str, Any]]:
    return [u for j in store.jobs.all() for u in store.jobs.units(j["id"])] or [
        {"stage": "none"} for _ in range(store.nodes.count_kind(UNIT))
    ]


def _kind(body: dict[str, Any]) -> str:
    """Which GLAN prompt a request is (by the JSON shape it asks for)."""
    user = first_user_message(body)
    for kind in ("subjects", "sessions", "question"):
        if f'{{"{kind}"' in user:
            return kind
    return "answer"


def counting(handler: Any, calls: Counter[str]) -> Any:
    def count(body: dict[str, Any], n: int) -> Reply:
        calls[_kind(body)] += 1
        return handler(body, n)

    return count


def questions_per_subject(store: Store) -> dict[str, int]:
    """Per subject in scope with a syllabus: the instructions asked about it (0 if none)."""
    subjects = store.taxonomy.ids_in_scope(store.taxonomy.scope(ALGEBRA), SUBJECT)
    with_syllabus = [s for s, (c, _) in store.syllabi.concept_stats(subjects).items() if c]
    asked = Counter(
        n.props["subject_id"]
        for n in store.nodes.get_many(
            store.instructions.ids_in_scope(store.taxonomy.scope(ALGEBRA))
        ).values()
    )
    return {s: asked[s] for s in with_syllabus}


def test_a_rerun_after_failures_gives_every_new_subject_its_questions(
    store: Store, tmp_path: Path
) -> None:
    """A first run where one subjects round and most syllabi fail draws its questions over
    the one subject with a syllabus; run again against a healthy model, the subjects and
    syllabi that arrive get the share of questions a clean run gives each subject, nothing
    done is asked again and no combination is asked twice."""
    options = PipelineOptions(n=12, rounds=2, per_call=3, sessions=4, seed=5)
    good = fake_glan_model()
    asked_subjects = Counter[str]()

    def failing(body: dict[str, Any], n: int) -> Reply:
        if _kind(body) == "subjects" and not asked_subjects:
            asked_subjects["refused"] += 1
            return error(400, "overloaded")  # not retried: the round fails, no raw text
        if re.search(r'course "Subject [^"]* [12]"', first_user_message(body)):
            return ok("Sorry, the syllabus is not ready.")  # off the schema: raw text kept
        return good(body, n)

    with run_stub(failing) as stub:
        first = run(store, stub, ALL, options=options)
    assert [(r.stage, r.status, r.done, r.failed) for r in first] == [
        ("subjects", JobStatus.COMPLETED_WITH_FAILURES, 1, 1),
        ("syllabus", JobStatus.COMPLETED_WITH_FAILURES, 1, 2),
        ("questions", JobStatus.COMPLETED, 12, 0),
        ("answers", JobStatus.COMPLETED, 12, 0),
    ]
    assert sorted(questions_per_subject(store).values()) == [12]
    judged = verdict(first)  # the questions were complete, the run was not
    assert (judged.exit_code, judged.complete) == (0, False)  # each stage made something
    assert verdict(first, strict=True).exit_code == 1
    assert judged.lines[-1] == (
        "incomplete: 3 of 29 units failed (subjects 1 of 2, syllabus 2 of 3); "
        "run the same command again to retry them"
    )
    assert "questions and answers ran on what subjects had made so far" in judged.lines[-2]
    assert "2 failed unit(s) kept the model's raw output and 1 got no text back" in "".join(
        judged.lines
    )

    calls = Counter[str]()
    with run_stub(counting(fake_glan_model(), calls)) as stub:
        second = run(store, stub, ALL, options=options)
    assert [r.status for r in second] == [JobStatus.COMPLETED] * 4
    assert verdict(second).exit_code == 0
    per_subject = questions_per_subject(store)
    assert len(per_subject) == 6  # 2 rounds of 3 subjects, each with its syllabus
    # a clean run splits 12 questions over 6 subjects, 2 each: every subject that arrived
    # got its 2; the first keeps the 12 it was asked, which are not asked again
    assert sorted(per_subject.values()) == [2, 2, 2, 2, 2, 12]
    assert calls == {"subjects": 1, "sessions": 5, "question": 10, "answer": 10}
    questions = second[2]
    assert (questions.total, questions.skipped, questions.done) == (22, 12, 22)
    instructions = store.nodes.get_many(
        store.instructions.ids_in_scope(store.taxonomy.scope(ALGEBRA))
    )
    keys = [n.props["combo_key"] for n in instructions.values()]
    assert len(keys) == len(set(keys)) == 22  # no combination asked twice

    with run_stub(counting(fake_glan_model(), calls)) as stub:  # nothing left to do
        third = run(store, stub, ALL, options=options)
        assert stub.calls == 0
    assert [r.skipped for r in third] == [r.total for r in third] == [2, 6, 22, 22]

    # the same command on a fresh store against a healthy model: every subject, 2 each
    with (
        run_stub(fake_glan_model()) as stub,
        Store.open(StoreConfig(db_path=tmp_path / "clean.lbug")) as clean,
    ):
        clean.taxonomy.load(SMALL_TAXONOMY)
        run(clean, stub, ALL, options=options)
        assert sorted(questions_per_subject(clean).values()) == [2] * 6


def test_the_plan_is_extended_the_same_way_for_the_same_graph(tmp_path: Path) -> None:
    """Determinism of an extended plan: two stores in the same state, the same job run
    again after a new subject got its syllabus, plan the same new samples."""
    options = PipelineOptions(n=6, rounds=1, per_call=3, sessions=4, seed=2)

    def new_units(db: Path) -> list[tuple[str, str]]:
        with Store.open(StoreConfig(db_path=db)) as s, run_stub(fake_glan_model()) as stub:
            s.taxonomy.load(SMALL_TAXONOMY)
            run(s, stub, ["subjects", "syllabus"], options=options)
            subjects = s.taxonomy.ids_in_scope(s.taxonomy.scope(ALGEBRA), SUBJECT)
            kept = s.syllabi.of(subjects[:1])  # the questions see one subject's syllabus
            hidden = {sid: s.syllabi.of([sid])[sid] for sid in subjects[1:]}
            for sid in hidden:
                for session in hidden[sid]:
                    s.taxonomy.review(
                        f"{s.taxonomy.paths_of(sid)[0]}/{_escape(session.title)}", Status.REJECTED
                    )
            job = run(s, stub, ["questions"], options=options)[0]
            assert kept and {u["target_id"] for u in s.jobs.units(job.job_id)} == {subjects[0]}
            for sid in hidden:
                for session in hidden[sid]:
                    s.taxonomy.review(
                        f"{s.taxonomy.paths_of(sid)[0]}/{_escape(session.title)}", Status.APPROVED
                    )
            again = run(s, stub, ["questions"], options=options)[0]
            units = s.jobs.units(again.job_id)
        return sorted(
            (json.loads(u["payload"])["index"], json.loads(u["payload"])["combo_key"])
            for u in units
        )

    a, b = new_units(tmp_path / "a.lbug"), new_units(tmp_path / "b.lbug")
    assert len(a) == 6 + 2 * 2 and a == b


def _escape(name: str) -> str:
    return name.replace("/", "\\/")
