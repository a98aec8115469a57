"""The batch executor against a Files + Batches API on loopback (tests/batch_stub.py), which
the official `openai` client talks to unchanged: every unit is asked once and done once,
whatever the order of the output, the errors in it, a batch that expires, is cancelled or
fails validation, a process killed between its steps; importing a file twice changes
nothing; a batch run ends where a live run ends."""

from __future__ import annotations

import asyncio
import io
import json
import random
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from generators import batch as batch_mod
from generators.batch import (
    ACTIVE,
    BatchAPI,
    BatchError,
    BatchExecutor,
    export_requests,
    import_results,
)
from generators.cost import CostCap, Price, PriceTable
from generators.jobs import JobRunner, JobStatus, Progress, StopRequest, UnitSpec
from generators.llm import LLMClient, LLMConfig
from generators.pipeline import PipelineOptions, run_stages
from generators.stages import STAGES
from graph.config import StoreConfig
from graph.store import Store
from tests.batch_stub import BatchStub, Plan, completion, run_batch_stub
from tests.graph_checks import integrity_problems, snapshot
from tests.llm_stub import Reply, error, fake_glan_model, first_user_message
from tests.test_pipeline import params_for
from tests.test_sampling import PHYSICS, fill

N = 24


@pytest.fixture
def store(embedded_store: Store) -> Store:
    fill(embedded_store, subjects=3, sessions=5, concepts=5)
    return embedded_store


@pytest.fixture
def other_store(tmp_path: Path) -> Iterator[Store]:
    """A second store, filled as `store` is: what a live run of the same job runs on."""
    with Store.open(StoreConfig(db_path=tmp_path / "other.lbug")) as other:
        fill(other, subjects=3, sessions=5, concepts=5)
        yield other


@pytest.fixture
def stub() -> Iterator[BatchStub]:
    with run_batch_stub(fake_glan_model()) as s:
        yield s


def stage_of(store: Store, llm: LLMClient, name: str, n: int = N) -> Any:
    options = PipelineOptions(n=n, seed=11).for_stage(name)
    return STAGES[name](store, llm, params_for(name), options)


def run_batch(
    store: Store,
    stub: BatchStub,
    name: str = "questions",
    *,
    n: int = N,
    api_class: type[BatchAPI] = BatchAPI,
    cancel: asyncio.Event | None = None,
    wait: bool = True,
    cost_cap: CostCap | None = None,
    progress: Callable[[Progress], None] | None = None,
    **kw: Any,
) -> Progress:
    async def main() -> Progress:
        config = LLMConfig(base_url=stub.base_url, max_retries=0)
        llm, api = LLMClient(config), api_class(config)
        try:
            executor = BatchExecutor(store, api, poll_s=0.005, **kw)
            stage = stage_of(store, llm, name, n)
            return await executor.run(
                stage, PHYSICS, wait=wait, cancel=cancel, cost_cap=cost_cap, progress=progress
            )
        finally:
            await api.aclose()
            await llm.aclose()

    return asyncio.run(main())


def units(store: Store, job_id: str) -> dict[str, dict[str, Any]]:
    return {str(u["id"]): u for u in store.jobs.units(job_id)}


def asked(stub: BatchStub) -> Counter[str]:
    """How many times each unit's request was answered by the stub's batches."""
    return Counter(
        line["custom_id"]
        for b in stub.batches.values()
        for line in b.answered + [e for e in b.errored if e["response"]]
    )


def input_lines(stub: BatchStub) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for b in stub.created
        for line in stub.file(b.input_file_id).data.splitlines()
    ]


# ---------------------------------------------------------------------------- the stub


def test_the_official_client_drives_the_stub_through_every_state() -> None:
    with run_batch_stub(fake_glan_model(), seed=3) as stub:
        client = openai.OpenAI(base_url=stub.base_url, api_key="k", max_retries=0)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        lines = [
            {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            for i in range(30)
        ]
        data = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
        made = client.files.create(file=("in.jsonl", data), purpose="batch")
        b = client.batches.create(
            input_file_id=made.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        seen = [b.status]
        while b.status not in ("completed", "failed"):
            b = client.batches.retrieve(b.id)
            seen.append(b.status)
        assert seen == ["validating", "in_progress", "finalizing", "completed"]
        assert b.request_counts is not None and b.request_counts.completed == 30
        assert b.output_file_id is not None
        out = client.files.content(b.output_file_id).text.splitlines()
        order = [json.loads(x)["custom_id"] for x in out]
        assert sorted(order) == sorted(x["custom_id"] for x in lines)
        assert order != [x["custom_id"] for x in lines]  # shuffled

        bad = data.splitlines()
        bad[3] = b'{"custom_id": "r3", "method": "POST"'  # cut off
        bad[5] = json.dumps({**lines[5], "url": "/v1/embeddings"}).encode()
        made = client.files.create(file=("bad.jsonl", b"\n".join(bad)), purpose="batch")
        b = client.batches.create(
            input_file_id=made.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        b = client.batches.retrieve(b.id)
        assert b.status == "failed" and b.errors is not None and b.errors.data
        assert [e.line for e in b.errors.data] == [4, 6]
        client.close()


# ---------------------------------------------------------------------------- runs


def test_a_batch_run_asks_every_unit_once_with_the_live_request(
    store: Store, stub: BatchStub
) -> None:
    state = run_batch(store, stub)
    assert (state.status, state.done, state.total) == (JobStatus.COMPLETED, N, N)
    assert len(stub.created) == 1 and stub.chat_calls == 0
    lines = input_lines(stub)
    done = units(store, state.job_id)
    assert sorted(x["custom_id"] for x in lines) == sorted(done)
    assert {x["method"] for x in lines} == {"POST"}
    assert {x["url"] for x in lines} == {"/v1/chat/completions"}
    # the body is the exact request every executor sends
    llm = LLMClient(LLMConfig(base_url=stub.base_url))
    stage = stage_of(store, llm, "questions")
    stage.job_id = state.job_id
    specs = [UnitSpec(i, u["target_id"], json.loads(u["payload"])) for i, u in done.items()]
    stage.prepare(specs)
    want = {u.id: stage.request(u).body() for u in specs}
    assert {x["custom_id"]: x["body"] for x in lines} == want
    assert all(u["status"] == "done" and u["batch"] for u in done.values())
    assert asked(stub) == Counter(dict.fromkeys(done, 1))
    assert integrity_problems(store) == []
    (rec,) = store.jobs.batches(state.job_id)
    assert rec["status"] == "completed" and rec["imported"] == 1 and rec["requests"] == N
    job = store.jobs.get(state.job_id)
    assert job is not None and job["executor"] == "batch" and job["prompt_tokens"] == 11 * N
    # read into the store, the batch's files are deleted at the API
    (b,) = stub.created
    made = {b.input_file_id, b.output_file_id}
    assert b.output_file_id and made <= set(stub.deleted) and not made & set(stub.files)
    # run again: nothing to submit, nothing changes
    again = run_batch(store, stub)
    assert (again.status, again.skipped) == (JobStatus.COMPLETED, N)
    assert len(stub.created) == 1


def test_a_batch_not_read_yet_keeps_its_files_at_the_api(store: Store, stub: BatchStub) -> None:
    state = run_batch(store, stub, wait=False)  # submitted, not read
    (b,) = stub.created
    assert state.done == 0 and b.input_file_id in stub.files and not stub.deleted
    last = run_batch(store, stub)  # follows it to its end and reads it
    assert last.done == N and b.input_file_id in stub.deleted and not stub.files


def test_files_are_split_to_the_limits(store: Store, stub: BatchStub) -> None:
    llm = LLMClient(LLMConfig(base_url=stub.base_url))
    stage = stage_of(store, llm, "questions")
    lines, _ = batch_mod.build_lines(stage, JobRunner(store).prepare_job(stage, PHYSICS).todo)
    limit = 3 * max(len(line) for _, line in lines)  # three to five lines a file
    state = run_batch(store, stub, max_requests=4, max_bytes=limit)
    assert state.status == JobStatus.COMPLETED and state.done == N
    sizes = [len(b.lines) for b in stub.created]
    assert sum(sizes) == N and max(sizes) <= 4 and len(sizes) > N // 4  # bytes bound too
    assert all(len(stub.file(b.input_file_id).data) <= limit for b in stub.created)
    assert [r["seq"] for r in store.jobs.batches(state.job_id)] == list(range(len(sizes)))
    assert integrity_problems(store) == []


def test_error_lines_and_an_expired_batch_leave_units_pending_for_the_next_run(
    store: Store,
) -> None:
    good = fake_glan_model()
    broken: set[str] = set()

    def handler(body: dict[str, Any], n: int) -> Reply:
        prompt = first_user_message(body)
        if len(broken) < 3 and prompt not in broken and n % 5 == 1:
            broken.add(prompt)
        if prompt in broken and first_run:
            return error(500, "the server had an error processing this request")
        return good(body, n)

    first_run = True
    with run_batch_stub(handler, plans=lambda n: Plan(expire_after=15 if n == 0 else None)) as stub:
        state = run_batch(store, stub)
        assert state.status == JobStatus.INCOMPLETE and "no answer" in (state.error or "")
        assert state.done == 15 - 3 and state.failed == 0
        pending = {i: u for i, u in units(store, state.job_id).items() if u["status"] == "pending"}
        assert len(pending) == N - 12
        said = Counter(
            next((k for k in ("HTTP 500", "batch_expired") if k in str(u["error"])), u["error"])
            for u in pending.values()
        )
        assert said == {"HTTP 500": 3, "batch_expired": 9}
        assert integrity_problems(store) == []

        first_run = False
        again = run_batch(store, stub)
        assert (again.status, again.done, again.failed) == (JobStatus.COMPLETED, N, 0)
        second = stub.created[1]
        assert sorted(x["custom_id"] for x in second.lines) == sorted(pending)
        assert asked(stub)[next(iter(pending))] >= 1
        done_once = Counter(x["custom_id"] for b in stub.created for x in b.answered)
        assert set(done_once.values()) == {1} and len(done_once) == N
        assert integrity_problems(store) == []


def test_a_cancelled_batch_keeps_what_it_finished_and_the_next_run_asks_the_rest(
    store: Store,
) -> None:
    with run_batch_stub(fake_glan_model(), plans=lambda n: Plan(per_poll=5)) as stub:
        stop = StopRequest()

        def progress(state: Progress) -> None:
            if state.done >= 10:  # requests answered in the running batch
                stop.request(JobStatus.CANCELLED)

        state = run_batch(store, stub, cancel=stop, progress=progress)
        assert state.status == JobStatus.CANCELLED
        (rec,) = store.jobs.batches(state.job_id)
        assert rec["status"] == "cancelling"
        (b,) = stub.created
        assert b.status == "cancelling" and 10 <= len(b.answered) < N

        again = run_batch(store, stub)  # reads what the cancelled batch finished, then
        assert again.status == JobStatus.INCOMPLETE  # the rest waits for the next run
        finished = len(stub.created[0].answered)
        assert again.done == finished and stub.created[0].status == "cancelled"
        last = run_batch(store, stub)
        assert (last.status, last.done) == (JobStatus.COMPLETED, N)
        assert len(stub.created[1].lines) == N - finished
        done_once = Counter(x["custom_id"] for b in stub.created for x in b.answered)
        assert set(done_once.values()) == {1} and len(done_once) == N
        assert integrity_problems(store) == []


def test_a_batch_failed_at_validation_leaves_its_units_pending_with_the_reason(
    store: Store, stub: BatchStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = batch_mod.request_line

    def broken(unit_id: str, body: Any) -> bytes:
        return real(unit_id, body)[:-20] + b"\n"  # cut off: not JSON

    monkeypatch.setattr(batch_mod, "request_line", broken)
    state = run_batch(store, stub)
    assert state.status == JobStatus.INCOMPLETE and state.done == 0
    (rec,) = store.jobs.batches(state.job_id)
    assert rec["status"] == "failed" and "line 1: invalid_request" in rec["errors"]
    assert {u["status"] for u in units(store, state.job_id).values()} == {"pending"}
    monkeypatch.setattr(batch_mod, "request_line", real)
    again = run_batch(store, stub)
    assert (again.status, again.done, len(stub.created)) == (JobStatus.COMPLETED, N, 2)


def test_a_unit_whose_request_cannot_be_built_fails_as_in_the_live_path(
    store: Store, stub: BatchStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from generators.jobs import Outcome
    from generators.stages.questions import QuestionsStage

    real = QuestionsStage.read_inputs
    gone: set[str] = set()

    def some_gone(self: QuestionsStage, us: Any) -> dict[str, Any]:
        found = real(self, us)
        gone.update(sorted(u.id for u in us)[:2] if not gone else [])
        found.update({i: Outcome(error="the subject is no longer in the store") for i in gone})
        return found

    monkeypatch.setattr(QuestionsStage, "read_inputs", some_gone)
    state = run_batch(store, stub)
    assert state.status == JobStatus.COMPLETED_WITH_FAILURES
    assert (state.failed, state.done) == (2, N - 2)
    assert len(stub.created[0].lines) == N - 2  # never sent
    failed = [u for u in units(store, state.job_id).values() if u["status"] == "failed"]
    assert all("no longer in the store" in u["error"] for u in failed)


# ---------------------------------------------------------------------------- kills


class _KilledAfterCreate(BatchAPI):
    """Dies (as a killed process would) right after the API made the batch, before its id
    is stored."""

    async def submit(self, input_file_id: str, metadata: Any) -> Any:
        await super().submit(input_file_id, metadata)
        raise BatchError("killed")


class _KilledAfterRecord(BatchAPI):
    """Dies after the batch was recorded and before anything reached the API."""

    async def upload(self, name: str, data: bytes) -> str:
        raise BatchError("killed")


@pytest.mark.parametrize("killed", [_KilledAfterCreate, _KilledAfterRecord])
def test_a_run_killed_between_its_steps_submits_nothing_twice(
    store: Store, stub: BatchStub, killed: type[BatchAPI]
) -> None:
    with pytest.raises(BatchError):
        run_batch(store, stub, api_class=killed)
    (rec,) = store.jobs.batches()
    assert rec["status"] == "preparing" and rec["remote_id"] is None
    made = len(stub.created)
    state = run_batch(store, stub)
    assert (state.status, state.done) == (JobStatus.COMPLETED, N)
    assert len(stub.created) == 1 == made + (0 if killed is _KilledAfterCreate else 1)
    (rec,) = store.jobs.batches()
    assert rec["remote_id"] == stub.created[0].id and rec["imported"] == 1
    assert asked(stub) == Counter(dict.fromkeys(units(store, state.job_id), 1))


def test_no_wait_returns_after_submitting_and_the_next_run_finishes(
    store: Store, stub: BatchStub
) -> None:
    state = run_batch(store, stub, wait=False)
    assert state.status == JobStatus.RUNNING and state.done == 0
    (rec,) = store.jobs.batches(state.job_id)
    assert rec["status"] in ACTIVE
    job = store.jobs.get(state.job_id)
    assert job is not None and job["status"] == JobStatus.RUNNING
    state = run_batch(store, stub)
    assert (state.status, state.done, len(stub.created)) == (JobStatus.COMPLETED, N, 1)


def test_a_batch_whose_estimate_passes_the_cap_is_not_submitted(
    store: Store, stub: BatchStub
) -> None:
    prices = PriceTable({"question-model": Price(input=1000.0, output=1000.0)})
    state = run_batch(store, stub, cost_cap=CostCap(0.01, prices))
    assert state.status == JobStatus.COST_CAPPED and not stub.batches
    assert "over the cost cap" in (state.error or "") and "batch of 24" in (state.error or "")
    assert {u["status"] for u in units(store, state.job_id).values()} == {"pending"}
    state = run_batch(store, stub, cost_cap=CostCap(1000.0, prices))
    assert (state.status, state.done) == (JobStatus.COMPLETED, N)


# ---------------------------------------------------------------------------- offline


def answer_offline(requests: bytes, *, seed: int = 5) -> bytes:
    """What an offline runner makes of an input file: an output file in the API's format,
    in its own order."""
    model = fake_glan_model()
    out = []
    for n, raw in enumerate(requests.splitlines()):
        line = json.loads(raw)
        body = completion(line["body"], model(line["body"], n), f"r{n}")
        response = {"status_code": 200, "request_id": f"r{n}", "body": body}
        out.append({"id": f"b{n}", "custom_id": line["custom_id"], "response": response})
    random.Random(seed).shuffle(out)
    return b"".join(json.dumps(x).encode() + b"\n" for x in out)


def live_run(store: Store, stub: BatchStub, stages: list[str]) -> list[Progress]:
    async def main() -> list[Progress]:
        llm = LLMClient(LLMConfig(base_url=stub.base_url, max_retries=0))
        try:
            options = PipelineOptions(n=N, seed=11)
            return await run_stages(store, llm, params_for, stages, PHYSICS, options)
        finally:
            await llm.aclose()

    return asyncio.run(main())


def test_export_then_import_twice_ends_as_a_live_run(
    store: Store, stub: BatchStub, tmp_path: Path, other_store: Store
) -> None:
    llm = LLMClient(LLMConfig(base_url=stub.base_url))
    out = io.BytesIO()
    exported = export_requests(store, stage_of(store, llm, "questions"), PHYSICS, out)
    assert (exported.requests, exported.failed, exported.total) == (N, 0, N)
    job = store.jobs.get(exported.job_id)
    assert job is not None and job["status"] == JobStatus.INCOMPLETE
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert {x["url"] for x in lines} == {"/v1/chat/completions"}
    results = tmp_path / "results.jsonl"
    results.write_bytes(answer_offline(out.getvalue()))

    found, unknown = import_results(store, llm, params_for, results)
    assert unknown == 0 and len(found) == 1
    assert (found[0].state.status, found[0].counts.done) == (JobStatus.COMPLETED, N)
    before = snapshot(store)
    again, _ = import_results(store, llm, params_for, results)
    assert (again[0].counts.done, again[0].counts.skipped) == (0, N)
    assert snapshot(store) == before and integrity_problems(store) == []

    # the same job run live, on a store filled the same way: the same graph
    (live,) = live_run(other_store, stub, ["questions"])
    assert live.status == JobStatus.COMPLETED
    assert snapshot(other_store) == before


def test_a_batch_run_and_a_live_run_make_the_same_graph(
    store: Store, stub: BatchStub, other_store: Store
) -> None:
    for name in ("questions", "answers"):
        state = run_batch(store, stub, name)
        assert state.status == JobStatus.COMPLETED, state
    assert stub.chat_calls == 0
    results = live_run(other_store, stub, ["questions", "answers"])
    assert [r.status for r in results] == [JobStatus.COMPLETED] * 2
    assert stub.chat_calls == 2 * N
    assert snapshot(other_store) == snapshot(store)

    def responses(s: Store) -> list[tuple[str, str]]:
        rows = s.driver.execute("MATCH (r:Response) RETURN r.id AS id, r.text AS text")
        return sorted((r["id"], r["text"]) for r in rows)

    def done(s: Store) -> dict[str, list[str]]:
        return {
            j["kind"]: sorted(u["id"] for u in s.jobs.units(j["id"]) if u["status"] == "done")
            for j in s.jobs.all()
        }

    assert responses(other_store) == responses(store) and len(responses(store)) == N
    assert done(other_store) == done(store) and len(done(store)["answers"]) == N


def test_an_answer_off_the_schema_is_asked_again_corrected_as_a_live_run_asks_it(
    store: Store, other_store: Store
) -> None:
    good = fake_glan_model()

    def handler(body: dict[str, Any], n: int) -> Reply:
        prompt = first_user_message(body)
        corrected = "did not match the schema" in body["messages"][-1]["content"]
        # a third of the questions are first answered off the schema
        if "Answer as JSON" in prompt and not corrected and sum(map(ord, prompt)) % 3 == 0:
            return Reply(content='{"question": 42}')
        return good(body, n)

    with run_batch_stub(handler) as stub:
        state = run_batch(store, stub)
        assert (state.status, state.done, state.failed) == (JobStatus.COMPLETED, N, 0)
        first, second = stub.created  # the answers off the schema, asked again corrected
        said = [x["response"]["body"]["choices"][0]["message"]["content"] for x in first.answered]
        wrong = [x for x in said if x == '{"question": 42}']
        assert len(second.lines) == len(wrong) > 0
        assert all("did not match the schema" in x["body"]["messages"][-1]["content"]
                   for x in second.lines)  # fmt: skip
        (live,) = live_run(other_store, stub, ["questions"])
        assert (live.status, live.done) == (JobStatus.COMPLETED, N)
    assert snapshot(other_store) == snapshot(store) and integrity_problems(store) == []
    job = store.jobs.get(state.job_id)
    assert job is not None and job["failed"] == 0 and job["done"] == N


def test_a_job_run_in_batches_then_live_is_priced_and_resumed_as_live(store: Store) -> None:
    """The job's executor is what its last run sent requests through: a job a batch run
    left incomplete and a live run finished is no longer priced at the batch price, and a
    server restarted over it would not follow batches it no longer has."""
    with run_batch_stub(fake_glan_model(), plans=lambda n: Plan(per_poll=5)) as stub:
        stop = StopRequest()

        def progress(state: Progress) -> None:
            if state.done >= 10:
                stop.request(JobStatus.CANCELLED)

        state = run_batch(store, stub, cancel=stop, progress=progress)
        assert (store.jobs.get(state.job_id) or {}).get("executor") == "batch"
        run_batch(store, stub)  # reads what the cancelled batch finished
        (live,) = live_run(store, stub, ["questions"])
    assert live.job_id == state.job_id and live.status == JobStatus.COMPLETED
    assert (store.jobs.get(live.job_id) or {}).get("executor") == "live"
