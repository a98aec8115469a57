"""Follow-up turns: each pair becomes a conversation, a turn at a time, resumable and
idempotent like every stage; exported as multi-turn records; counted in coverage."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from generators.export import export_hf, export_jsonl
from generators.llm import FollowupParams, LLMClient, LLMConfig, StageParams
from generators.pipeline import PipelineOptions, run_stages
from generators.stages.followups import turn_id
from graph.config import StoreConfig
from graph.model import CONCEPT, INSTRUCTION, RESPONSE, SUBJECT, TURN, node_id
from graph.store import Store
from tests.llm_stub import Reply, Stub, fake_glan_model, ok_json, run_stub
from tests.real_parts import unavailable
from tests.test_cli_remote import algebra, env, stub  # noqa: F401 - fixtures used below
from tests.test_sampling import fill

ROOT = Path(__file__).parents[1]
PHYSICS = "Natural Sciences/Physical Sciences/Physics"
ANSWERS = StageParams(model="answer-model", temperature=0.7, top_p=0.95)


def params_for(stage: str) -> StageParams:
    if stage == "answers":
        return ANSWERS
    if stage == "followups":
        return FollowupParams(model="question-model", temperature=1.0, top_p=0.95, answer=ANSWERS)
    model = "question-model" if stage == "questions" else "main-model"
    return StageParams(model=model, temperature=1.0, top_p=0.95)


def run(
    store: Store, endpoint: Stub, stages: list[str], *, turns: int = 2, n: int = 4
) -> list[Any]:
    async def main() -> list[Any]:
        llm = LLMClient(LLMConfig(base_url=endpoint.base_url, backoff_base_s=0.01))
        try:
            options = PipelineOptions(n=n, seed=3, turns=turns)
            return await run_stages(store, llm, params_for, stages, PHYSICS, options, concurrency=4)
        finally:
            await llm.aclose()

    return asyncio.run(main())


def paired(store: Store, endpoint: Stub, n: int = 4) -> None:
    """Subjects and syllabi under Physics, and `n` answered questions."""
    fill(store, subjects=2, sessions=3, concepts=4)
    results = run(store, endpoint, ["questions", "answers"], n=n)
    assert [r.done for r in results] == [n, n]


def turns_of(store: Store) -> list[dict[str, Any]]:
    rows = store.driver.execute(f"MATCH (t:{TURN.label}) RETURN t")
    return sorted((r["t"] for r in rows), key=lambda t: (t["response_id"], t["position"]))


def step(body: dict[str, Any]) -> tuple[int, str]:
    """(turn, ask | answer) of a follow-up request."""
    messages = body["messages"]
    if "response_format" in body:  # an ask: its conversation names each question asked
        return messages[-1]["content"].count("\nStudent: "), "ask"
    return (len(messages) - 2) // 2, "answer"


@pytest.fixture
def model() -> Any:
    with run_stub(fake_glan_model()) as endpoint:
        yield endpoint


def test_each_pair_becomes_a_conversation_one_call_per_question_and_answer(
    embedded_store: Store, model: Stub
) -> None:
    store = embedded_store
    paired(store, model)
    before = model.calls
    (result,) = run(store, model, ["followups"], turns=2)
    assert (result.status, result.total, result.done, result.failed) == ("completed", 16, 16, 0)
    sent = model.requests[before:]
    assert len(sent) == 16  # per pair: ask, answer, ask, answer
    steps = [step(b) for b in sent]
    # a turn is asked only after the one before it is answered: rounds, in order
    assert steps == sorted(steps, key=lambda s: (s[0], s[1] == "answer"))
    for body, (k, kind) in zip(sent, steps, strict=True):
        if kind == "ask":
            assert body["model"] == "question-model" and body["temperature"] == 1.0
            assert '{"kind"' in body["messages"][-1]["content"]
        else:  # the pair's answer model, a call of its own, with the conversation so far
            assert body["model"] == "answer-model" and body["temperature"] == 0.7
            roles = [m["role"] for m in body["messages"]]
            assert roles == ["system", "user", *["assistant", "user"] * k]

    turns = turns_of(store)
    assert len(turns) == 8
    pairs = {r: i for i, r in _pairs(store).items()}
    for t in turns:
        assert t["id"] == turn_id(t["response_id"], t["position"], "question-model")
        assert pairs[t["response_id"]] == t["instruction_id"]
        assert t["kind"] in ("application", "clarification") and t["text"] and t["answer"]
        assert (t["model"], t["prompt_name"], t["prompt_version"]) == (
            "question-model",
            "followup",
            "1",
        )
        assert (t["answer_model"], t["answer_prompt_name"]) == ("answer-model", "answer")
        assert t["unit_id"] != t["answer_unit_id"] and t["job_id"] == result.job_id
    # an application reaches a concept of the pair's sessions the question did not cover
    reached = store.turns.reached([t["id"] for t in turns])
    details = store.instructions.details_of(list(pairs.values()), responses=False)
    syllabi = store.syllabi.of(store.taxonomy.ids_in_scope(None, SUBJECT))
    session_concepts = {s.id: {c.id for c in s.concepts} for ss in syllabi.values() for s in ss}
    for t in turns:
        got = [c for c, _, _ in reached[t["id"]]]
        assert len(got) == (1 if t["kind"] == "application" else 0)
        d = details[t["instruction_id"]]
        offered = set().union(*(session_concepts[s] for s, _, _ in d.sessions))
        assert set(got) <= offered - {c for c, _, _ in d.concepts}

    # run again: every step was done; nothing is asked
    calls = model.calls
    (again,) = run(store, model, ["followups"], turns=2)
    assert model.calls == calls and (again.done, again.skipped, again.total) == (16, 16, 16)
    # one more turn: only the third follow-up of each pair is asked and answered
    (more,) = run(store, model, ["followups"], turns=3)
    assert model.calls == calls + 8 and (more.done, more.skipped, more.total) == (24, 16, 24)
    assert [t["position"] for t in turns_of(store)].count(3) == 4


def _pairs(store: Store) -> dict[str, str]:
    return store.turns.pairs(store.instructions.ids_in_scope(None), "answer-model")


def test_a_concept_outside_the_sessions_is_asked_for_again(embedded_store: Store) -> None:
    good = fake_glan_model()
    wrong: list[int] = []

    def handler(body: dict[str, Any], n: int) -> Reply:
        last = body["messages"][-1]["content"]
        # of the two pairs, one has concepts left to ask about, whichever asks first: its
        # first ask names a concept outside its sessions; the other's is a clarification,
        # which adds no concept; the corrected ask is answered as the model would
        if '{"kind"' in last and not wrong and "one not used yet: " in last:
            wrong.append(n)
            return ok_json({"kind": "application", "question": "And for Jupiter's moons?",
                            "concept": "orbital resonance"})  # fmt: skip
        return good(body, n)

    with run_stub(handler) as endpoint:
        paired(embedded_store, endpoint, n=2)
        (result,) = run(embedded_store, endpoint, ["followups"], turns=1)
        retry = endpoint.requests[wrong[0] + 1 :]
    assert (result.done, result.failed) == (4, 0)
    corrected = next(b for b in retry if b["messages"][-1]["role"] == "user" and
                     "Your previous answer" in b["messages"][-1]["content"])  # fmt: skip
    assert "'orbital resonance' is not a key concept" in corrected["messages"][-1]["content"]
    kinds = sorted(t["kind"] for t in turns_of(embedded_store))
    assert kinds == ["application", "clarification"]
    reached = embedded_store.turns.reached([t["id"] for t in turns_of(embedded_store)])
    assert sorted(len(v) for v in reached.values()) == [0, 1]


def test_junk_follow_ups_are_rejected_by_the_validators(embedded_store: Store) -> None:
    good = fake_glan_model()

    def handler(body: dict[str, Any], n: int) -> Reply:
        asking = "response_format" in body and '"kind"' in body["messages"][1]["content"]
        if asking:  # an ask, or its retry: every one leaks a placeholder
            return ok_json({"kind": "harder", "question": "Now solve {{question}} for x?"})
        return good(body, n)

    with run_stub(handler) as endpoint:
        paired(embedded_store, endpoint, n=2)
        (result,) = run(embedded_store, endpoint, ["followups"], turns=1)
    assert (result.done, result.failed) == (0, 2) and turns_of(embedded_store) == []
    units = embedded_store.jobs.units(result.job_id)
    assert {u["error"].split(":")[0] for u in units} == {"rejected by template_leak"}
    assert all("{{question}}" in u["raw"] for u in units)


# ---------------------------------------------------------------------- resumed after a kill


def _generate_followups(db: Path, base_url: str) -> subprocess.Popen[str]:
    variables = {
        **os.environ,
        "GLAN_DB_PATH": str(db),
        "GLAN_LLM_BASE_URL": base_url,
        "GLAN_MODEL": "endpoint",
        "GLAN_LLM_CONCURRENCY": "2",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "server.cli", "generate", "followups", PHYSICS, "--turns", "2"],
        cwd=ROOT,
        env=variables,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stub_pairs(db: Path, endpoint: Stub) -> None:
    """A store with answered pairs, all asked of the model "endpoint" (as the CLI's runs are)."""
    with Store.open(StoreConfig(db_path=db)) as store:
        fill(store, subjects=2, sessions=3, concepts=4)

        async def main() -> None:
            llm = LLMClient(LLMConfig(base_url=endpoint.base_url, backoff_base_s=0.01))
            params = StageParams(model="endpoint", temperature=1.0, top_p=0.95)
            try:
                await run_stages(store, llm, lambda _: params, ["questions", "answers"],
                                 PHYSICS, PipelineOptions(n=5, seed=3))  # fmt: skip
            finally:
                await llm.aclose()

        asyncio.run(main())


def _conversations(db: Path) -> tuple[list[tuple[Any, ...]], list[dict[str, Any]]]:
    with Store.open(StoreConfig(db_path=db)) as store:
        turns = [(t["id"], t["position"], t["kind"], t["text"], t["answer"], t["unit_id"])
                 for t in turns_of(store)]  # fmt: skip
        job = next(j for j in store.jobs.all() if j["kind"] == "followups")
        return turns, store.jobs.units(job["id"])


def test_killed_followups_resume_without_asking_a_turn_twice(tmp_path: Path) -> None:
    """SIGKILL `glan generate followups` at several points of its rounds, then run it
    again: the conversations equal an uninterrupted run's, and no step done before a kill
    is asked again (a unit asked twice would hold the tokens of both calls)."""
    slow = fake_glan_model()

    def handler(body: dict[str, Any], call: int) -> Reply:
        reply = slow(body, call)
        reply.delay_s = 0.02
        return reply

    reference, killed = tmp_path / "reference.lbug", tmp_path / "killed.lbug"
    with run_stub(handler) as endpoint:
        _stub_pairs(reference, endpoint)
        _stub_pairs(killed, endpoint)
        done = _generate_followups(reference, endpoint.base_url)
        out, _ = done.communicate(timeout=120)
        assert done.returncode == 0, out
        kills = 0
        for after in (3, 4, 6, 5):  # calls into each run: in the first rounds and the later
            start = endpoint.calls
            proc = _generate_followups(killed, endpoint.base_url)
            deadline = time.monotonic() + 60
            while endpoint.calls - start < after and proc.poll() is None:
                assert time.monotonic() < deadline, "the run made no progress"
                time.sleep(0.002)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
            proc.wait(30)
        assert kills >= 3
        final = _generate_followups(killed, endpoint.base_url)
        out, _ = final.communicate(timeout=120)
        assert final.returncode == 0, out
        assert out.strip().splitlines()[-1] == "done: all 20 units of followups are done"
    want, _ = _conversations(reference)
    got, units = _conversations(killed)
    assert len(got) == 10 and got == want
    assert all(u["status"] == "done" for u in units) and len(units) == 20
    # each unit holds the tokens of one call (the endpoint counts 11 a call): none asked twice
    # once done; a unit in flight at a kill was never done, and its call is not counted
    assert {int(u["prompt_tokens"]) for u in units} == {11}


# ---------------------------------------------------------------------- export


def _export_store(store: Store, endpoint: Stub) -> None:
    paired(store, endpoint, n=3)
    run(store, endpoint, ["followups"], turns=2)


def _is_conversation(
    messages: list[dict[str, str]], length: int, roles: tuple[str, str] = ("user", "assistant")
) -> None:
    assert len(messages) == length
    assert [m["role"] for m in messages] == [*roles] * (length // 2)
    assert all(isinstance(m["content"], str) and m["content"] for m in messages)


def test_a_three_turn_conversation_exports_as_six_messages(
    embedded_store: Store, model: Stub, tmp_path: Path
) -> None:
    import datasets

    store = embedded_store
    _export_store(store, model)
    turns = {t["id"]: t for t in turns_of(store)}
    # a third follow-up asked but not answered yet is left out
    response = next(iter(_pairs(store).values()))
    third = turn_id(response, 3, "question-model")
    store.turns.write_turns([{"id": third, "text": "And then?", "position": 3, "kind": "harder",
                              "response_id": response, "model": "question-model"}], [])  # fmt: skip

    out = tmp_path / "chat.jsonl"
    result = export_jsonl(store, None, out, fmt="chat")
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert result.counts["train"] == len(records) == 3
    for record in records:
        messages = record["messages"]
        _is_conversation(messages, 6)  # the question, two follow-ups, each answered
        meta = record["metadata"]
        mine = sorted((t for t in turns.values() if t["response_id"] == meta["response_id"]),
                      key=lambda t: t["position"])  # fmt: skip
        assert [m["content"] for m in messages[2:]] == [
            x for t in mine for x in (t["text"], t["answer"])
        ]
        assert meta["followup_kinds"] == [t["kind"] for t in mine]
        assert meta["followup_model"] == "question-model"
        assert len(meta["followup_concepts"]) == sum(
            k == "application" for k in meta["followup_kinds"]
        )

    sharegpt = tmp_path / "sharegpt.jsonl"
    export_jsonl(store, None, sharegpt, fmt="sharegpt")
    for line in sharegpt.read_text().splitlines():
        conversation = json.loads(line)["conversations"]
        assert [c["from"] for c in conversation] == ["human", "gpt"] * 3
    alpaca = tmp_path / "alpaca.jsonl"
    export_jsonl(store, None, alpaca, fmt="alpaca")  # one exchange: the pair alone
    assert all(json.loads(x)["output"] for x in alpaca.read_text().splitlines())

    export_hf(store, None, tmp_path / "hf")
    loaded = datasets.load_from_disk(str(tmp_path / "hf"))["train"]
    assert loaded.num_rows == 3
    for row in loaded:
        _is_conversation(row["messages"], 6)


def test_a_benchmark_text_in_a_follow_up_marks_its_conversation(
    embedded_store: Store, model: Stub, tmp_path: Path
) -> None:
    from generators.cleaning import Benchmark, decontaminate, marks_of

    store = embedded_store
    _export_store(store, model)
    by_response: dict[str, list[dict[str, Any]]] = {}
    for t in turns_of(store):
        by_response.setdefault(t["response_id"], []).append(t)
    (a, turns_a), (b, turns_b), (c, _) = sorted(by_response.items())
    asked, answered = turns_a[1]["text"], turns_b[0]["answer"]  # a 2nd question, a 1st answer
    result = decontaminate(
        store, None, [Benchmark("quiz", "test", [asked, answered])], method="containment"
    )
    assert sorted(result.responses) == sorted([a, b])
    pairs = {r: i for i, r in _pairs(store).items()}
    marks = {
        r: [(m.source, m.side) for m in marks_of(store.nodes.get(pairs[r]).props)]  # type: ignore[union-attr]
        for r in (a, b, c)
    }
    assert ("quiz:test", "followup") in marks[a] and ("quiz:test", "followup_answer") in marks[b]
    assert marks[c] == []
    out = tmp_path / "chat.jsonl"
    export_jsonl(store, None, out, fmt="chat")
    kept = [json.loads(x)["metadata"]["response_id"] for x in out.read_text().splitlines()]
    assert kept == [c]  # the two conversations holding a benchmark's text are left out


def test_exported_conversations_pass_the_trl_conversational_check(
    embedded_store: Store, model: Stub, tmp_path: Path
) -> None:
    try:
        from trl import data_utils
    except ImportError as exc:  # the README's test command installs it
        unavailable(f"the trainer library's format check cannot be imported: {exc}")
    import datasets

    _export_store(embedded_store, model)
    for fmt in ("chat", "sharegpt"):
        export_hf(embedded_store, None, tmp_path / fmt, fmt=fmt)
        for row in datasets.load_from_disk(str(tmp_path / fmt))["train"]:
            roles = ("user", "assistant")
            if fmt == "sharegpt":  # its roles are its own, as the conversion keeps them
                assert data_utils.is_conversational_from_value(row)
                row, roles = data_utils.maybe_convert_to_chatml(row), ("human", "gpt")
            assert data_utils.is_conversational(row)
            _is_conversation(row["messages"], 6, roles)


# ---------------------------------------------------------------------- coverage


def test_a_concept_reached_only_in_a_followup_counts_as_covered(embedded_store: Store) -> None:
    store = embedded_store
    fill(store, subjects=1, sessions=2, concepts=3)
    (subject,) = store.taxonomy.ids_in_scope(None, SUBJECT)
    session = store.syllabi.of([subject])[subject][0]
    c0, c1, c2 = (c.id for c in session.concepts)
    iid = node_id(INSTRUCTION, "q")
    store.instructions.write_instructions(
        [{"id": iid, "text": "Why?", "subject_id": subject, "combo_key": "k"}],
        [(iid, c0)],
        [(iid, session.id)],
    )
    rid = node_id(RESPONSE, "r")
    store.instructions.write_responses([{"id": rid, "text": "Because.", "instruction_id": iid}])

    session_path = store.taxonomy.children(store.taxonomy.children(PHYSICS)[0].path)[0].path

    def covered() -> tuple[int, int, int]:
        """Covered concepts: from the rollups, walked, and in the session's own tree; each
        write leaves the rollups current (no read has any to recompute)."""
        assert store.rollups.refresh(None) == 0
        scope = store.taxonomy.node(PHYSICS)
        walked = store.coverage.report_by_walk(scope).total.covered_concepts
        tree = store.coverage.tree(session_path, depth=1, covered=True)
        summed = store.coverage.report(PHYSICS).total.covered_concepts
        return summed, walked, tree.covered_concepts

    assert covered() == (1, 1, 1)
    first = turn_id(rid, 1, "m")
    row = {"id": first, "text": "And c1?", "position": 1, "kind": "application",
           "response_id": rid, "instruction_id": iid, "subject_id": subject,
           "model": "m"}  # fmt: skip
    store.turns.write_turns([row], [(first, c1)])
    assert covered() == (2, 2, 2)  # kept current by the write: nothing was stale
    second = turn_id(rid, 2, "m")
    store.turns.write_turns([{**row, "id": second, "position": 2}], [(second, c1), (second, c0)])
    assert covered() == (2, 2, 2)  # reached again, and covered by the question: counted once
    store.turns.write_turns([row], [(first, c2)])  # written again: it reaches c2, not c1
    assert covered() == (3, 3, 3)
    assert {c for c, _, _ in store.turns.reached([first])[first]} == {c2}
    store.turns.write_turns([row], [])
    assert covered() == (2, 2, 2)  # c1 (second) and c0 (the question) remain
    removed = store.taxonomy.delete_subtree(session_path or "")
    assert removed["Turn"] == 2 and store.nodes.count_kind(TURN) == 0
    assert store.nodes.count_kind(CONCEPT) == 3


# ---------------------------------------------------------------------- CLI, server, API


def test_followups_from_the_cli_here_and_through_a_server(
    algebra: Path,  # noqa: F811 - the fixture
    stub: Stub,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.test_api import start
    from tests.test_cli_remote import ALGEBRA, twins

    with twins(algebra, stub, monkeypatch, llm_concurrency=4) as t:
        t.same("generate", "questions", ALGEBRA, "--n", "3", "--seed", "1")
        t.same("generate", "answers", ALGEBRA)
        calls = stub.calls
        out = t.same("generate", "followups", ALGEBRA, "--turns", "2")
        assert out.strip().splitlines()[-1] == "done: all 12 units of followups are done"
        assert stub.calls == calls + 24  # each step asked once here and once there
        served = t.api.store
        (job,) = [j for j in served.jobs.all() if j["kind"] == "followups"]
        assert job["status"] == "completed" and json.loads(job["params"])["turns"] == 2
        assert len(turns_of(served)) == 6 and all(x["answer"] for x in turns_of(served))
        out = t.same("generate", "followups", ALGEBRA, "--turns", "3", "--dry-run")
        assert "followups 15 units (12 done earlier, 3 to ask)" in out
        t.same("generate", "followups", ALGEBRA, "--turns", "0", code=2)

        bad = start(t.api, "generateFollowups(path: $p, turns: 0)", {"p": ALGEBRA})
        assert bad["__typename"] == "InvalidInputError" and "between" in bad["message"]
        started = start(t.api, "generateFollowups(path: $p, turns: 1)", {"p": ALGEBRA})
        assert started["kind"] == "FOLLOWUPS" and started["status"] == "RUNNING"
        ended = t.api.wait_for(started["id"])
        assert (ended["status"], ended["done"], ended["total"]) == ("COMPLETED", 6, 6)
        assert stub.calls == calls + 24  # the first turns were there: nothing asked

        # the conversations through the API: each pair's turns, in order, with what they
        # reached and who wrote each half
        pages = t.api.gql(CONVERSATIONS, {"p": ALGEBRA})["instructions"]["edges"]
        listed = [f for e in pages for r in e["node"]["responses"] for f in r["followups"]]
        assert len(pages) == 3 and len(listed) == 6
        stored = {x["id"]: x for x in turns_of(served)}
        reached = served.turns.reached(list(stored))
        for e in pages:
            for r in e["node"]["responses"]:
                assert [f["position"] for f in r["followups"]] == [1, 2]
        for f in listed:
            want = stored[f["id"]]
            assert (f["question"], f["answer"], f["kind"]) == (
                want["text"],
                want["answer"],
                want["kind"],
            )
            assert f["provenance"]["promptName"] == "followup"
            assert f["answerProvenance"]["promptName"] == "answer"
            assert [c["name"] for c in f["concepts"]] == [n for _, n, _ in reached[f["id"]]]


CONVERSATIONS = """query($p: String) { instructions(path: $p, first: 10) {
  ... on InstructionConnection { edges { node { responses { followups {
    id position kind question answer concepts { name }
    provenance { model promptName } answerProvenance { model promptName } } } } } } } }"""
