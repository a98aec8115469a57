"""Each stage in two halves that every executor shares: the request built for a unit is
exactly what the live executor sends, and a unit's inputs are read in bulk, not one store
read per unit."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from generators.jobs import UnitSpec
from generators.llm import LLMClient, LLMConfig, Reply
from generators.stages import STAGES
from graph.store import Store
from tests.conftest import SMALL_TAXONOMY
from tests.llm_stub import fake_glan_model, run_stub
from tests.test_pipeline import ALGEBRA, params_for, run

ALL = ["subjects", "syllabus", "questions", "answers"]


@pytest.fixture
def store(embedded_store: Store) -> Store:
    embedded_store.taxonomy.load(SMALL_TAXONOMY)
    return embedded_store


def test_a_units_request_is_the_body_the_live_executor_sends(store: Store) -> None:
    with run_stub(fake_glan_model()) as model:
        results = run(store, model, ALL)
        sent = [json.dumps(b, sort_keys=True) for b in model.requests]
    by_stage: dict[str, Any] = {r.stage: r for r in results}
    for name in ALL:
        job = store.jobs.get(by_stage[name].job_id)
        assert job is not None
        llm = LLMClient(LLMConfig(base_url="http://127.0.0.1:9/v1"))
        stage = STAGES[name](store, llm, params_for(name), json.loads(job["params"]))
        stage.job_id = job["id"]
        units = [
            UnitSpec(u["id"], u["target_id"], json.loads(u["payload"]))
            for u in store.jobs.units(job["id"])
        ]
        stage.prepare(units)
        for unit in units:
            request = stage.request(unit)
            assert not hasattr(request, "ok"), request  # a request, not an error
            # built again after the run, from what the store holds now; for the stages
            # whose prompt lists what exists (subjects), that grew since, so only the
            # request's shape is compared there
            body = request.body()
            if name == "subjects":
                assert body["model"] == "main-model" and body["response_format"]
                continue
            assert json.dumps(body, sort_keys=True) in sent, (name, unit.id)


def test_accept_validates_a_reply_and_keeps_its_raw_text(store: Store) -> None:
    with run_stub(fake_glan_model()) as model:
        run(store, model, ["subjects", "syllabus", "questions"])
    llm = LLMClient(LLMConfig(base_url="http://127.0.0.1:9/v1"))
    stage = STAGES["answers"](store, llm, params_for("answers"), {})
    unit = stage.plan(store.taxonomy.scope(ALGEBRA))[0]
    request = stage.request(unit)
    assert not hasattr(request, "ok")
    good = stage.accept(unit, request, Reply("x = 2", finish_reason="stop"))
    assert good.ok and good.value.text == "x = 2" and good.finish_reason == "stop"

    stage = STAGES["syllabus"](store, llm, params_for("syllabus"), {})
    unit = stage.plan(store.taxonomy.scope(ALGEBRA))[0]
    request = stage.request(unit)
    bad = stage.accept(unit, request, Reply('{"sessions": "cut', finish_reason="length"))
    assert not bad.ok and bad.raw == '{"sessions": "cut' and bad.finish_reason == "length"
    assert "did not match" in (bad.error or "")


def test_inputs_are_read_in_bulk_not_per_unit(store: Store, monkeypatch: Any) -> None:
    with run_stub(fake_glan_model()) as model:
        run(store, model, ["subjects", "syllabus", "questions"])
        reads: Counter[str] = Counter()
        for name in ("get", "get_many"):
            real = getattr(store.nodes, name)

            def counted(*a: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
                reads[_name] += 1
                return _real(*a, **kw)

            monkeypatch.setattr(store.nodes, name, counted)
        (answers,) = run(store, model, ["answers"])
    assert answers.total == 8 and answers.done == 8
    # the job's own row, then one chunk: its 8 instructions in one read, their subjects in
    # another (a read per unit made 8 reads and more)
    assert reads["get"] <= 1 and reads["get_many"] <= 2, reads


def test_a_job_larger_than_a_chunk_reads_its_inputs_chunk_by_chunk(
    store: Store, monkeypatch: Any
) -> None:
    import generators.jobs as jobs

    monkeypatch.setattr(jobs, "PREPARE_CHUNK", 3)
    prepared: list[int] = []
    real = STAGES["answers"].prepare

    def watched(self: Any, units: Any) -> None:
        prepared.append(len(units))
        real(self, units)

    monkeypatch.setattr(STAGES["answers"], "prepare", watched)
    with run_stub(fake_glan_model()) as model:
        *_, answers = run(store, model, ALL)
    assert answers.done == 8 and prepared == [3, 3, 2]


def test_a_store_failure_while_reading_inputs_fails_the_job_and_loses_nothing(
    store: Store, monkeypatch: Any
) -> None:
    with run_stub(fake_glan_model()) as model:
        run(store, model, ["subjects", "syllabus", "questions"])

        def broken(self: Any, units: Any) -> None:
            raise RuntimeError("store went away")

        monkeypatch.setattr(STAGES["answers"], "prepare", broken)
        with pytest.raises(RuntimeError, match="store went away"):
            run(store, model, ["answers"])
        monkeypatch.undo()
        (answers,) = run(store, model, ["answers"])
    assert answers.done == 8 and answers.failed == 0
