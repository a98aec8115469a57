"""The cluster executor: a local Ray (2 CPUs) sends jobs' requests to the loopback stub.

A questions job and an answers job run through Ray Data's LLM processor give the same units
done, the same graph and the same request bodies as the live executor run of the same job
and seed; a rerun asks nothing; a run stopped partway resumes with only the pending units;
per-request errors fail their units with the error kept, as the live executor fails them.
One Ray is started for the module: it takes seconds.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from generators.jobs import JobStatus, Progress
from generators.llm import LLMClient, LLMConfig
from generators.pipeline import PipelineOptions, run_stages
from graph.config import StoreConfig
from graph.model import RESPONSE, TURN
from graph.store import Store
from server.cli import app
from tests.api_helpers import Api
from tests.conftest import SMALL_TAXONOMY
from tests.graph_checks import integrity_problems, snapshot
from tests.llm_stub import (
    Reply,
    Stub,
    error,
    fake_glan_model,
    first_user_message,
    malformed,
    run_stub,
)
from tests.real_parts import unavailable
from tests.test_pipeline import ALGEBRA, params_for

ROOT = Path(__file__).parents[1]
OPTIONS = PipelineOptions(n=12, rounds=1, per_call=3, sessions=3, seed=5)
QA = ["questions", "answers"]


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    """A local Ray with 2 CPUs for the whole module; it fails the run under CI=true if Ray
    is not installed or cannot start."""
    try:
        import ray
        import ray.data.llm  # noqa: F401
    except ImportError as exc:
        unavailable(f"Ray Data is not installed ({exc.name}): pip install 'glan[ray]'")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as exc:  # pragma: no cover - the machine cannot run Ray
        unavailable(f"a local Ray cannot start: {exc}")
    yield ray
    ray.shutdown()


def ray_options(**kw: Any) -> Any:
    from generators.cluster import RayOptions

    return RayOptions(**{"batch_size": 4, "chunk": 64, **kw})


def llm_config(stub: Stub, **kw: Any) -> LLMConfig:
    return LLMConfig(base_url=stub.base_url, backoff_base_s=0.01, backoff_max_s=0.05, **kw)


def live(store: Store, stub: Stub, stages: list[str], **kw: Any) -> list[Progress]:
    async def main() -> list[Progress]:
        llm = LLMClient(llm_config(stub, **kw))
        try:
            return await run_stages(store, llm, params_for, stages, ALGEBRA, OPTIONS)
        finally:
            await llm.aclose()

    return asyncio.run(main())


def on_ray(
    store: Store, stub: Stub, stages: list[str], progress: Any = None, **kw: Any
) -> list[Progress]:
    from generators.cluster import run_stages_on_ray

    options = kw.pop("ray", None) or ray_options()
    return run_stages_on_ray(
        store, llm_config(stub, **kw), params_for, stages, ALGEBRA, OPTIONS, options,
        progress=progress,
    )  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with subjects and syllabi under Algebra, made once, copied by each test."""
    db = tmp_path_factory.mktemp("cluster") / "base.lbug"
    with Store.open(StoreConfig(db_path=db)) as store, run_stub(fake_glan_model()) as stub:
        store.taxonomy.load(SMALL_TAXONOMY)
        live(store, stub, ["subjects", "syllabus"])
    return db


def copy_of(base: Path, tmp_path: Path, name: str) -> Store:
    target = tmp_path / f"{name}.lbug"
    for f in base.parent.glob(base.name + "*"):
        dst = tmp_path / f.name.replace(base.name, target.name, 1)
        (shutil.copytree if f.is_dir() else shutil.copy)(f, dst)
    return Store.open(StoreConfig(db_path=target))


def responses(store: Store) -> list[tuple[str, str]]:
    rows = store.driver.execute(f"MATCH (r:{RESPONSE.label}) RETURN r.id AS id, r.text AS text")
    return sorted((r["id"], r["text"]) for r in rows)


def bodies(stub: Stub) -> list[str]:
    return sorted(json.dumps(b, sort_keys=True) for b in stub.requests)


def test_ray_does_what_the_live_executor_does(ray_local: Any, base: Path, tmp_path: Path) -> None:
    with copy_of(base, tmp_path, "live") as a, run_stub(fake_glan_model()) as stub_a:
        done_live = live(a, stub_a, QA)
        want, want_responses = snapshot(a), responses(a)
    with copy_of(base, tmp_path, "ray") as b, run_stub(fake_glan_model()) as stub_b:
        done_ray = on_ray(b, stub_b, QA)
        got, got_responses = snapshot(b), responses(b)
        assert integrity_problems(b) == []
    assert [r.status for r in done_ray] == [JobStatus.COMPLETED] * 2
    assert [(r.job_id, r.done, r.total) for r in done_ray] == [
        (r.job_id, r.done, r.total) for r in done_live
    ]
    assert done_ray[0].total == 12 and done_ray[1].total == 12
    # tokens: the stub counts 11 in / 7 out per call
    assert [(r.prompt_tokens, r.completion_tokens) for r in done_ray] == [(132, 84)] * 2
    assert got == want  # the same unit ids done, instructions, edges and counters
    assert got_responses == want_responses
    # the exact request bodies the live client sends, structured output included
    assert stub_b.calls == 24 and bodies(stub_b) == bodies(stub_a)
    assert '"response_format"' in bodies(stub_b)[0] or '"response_format"' in bodies(stub_b)[-1]


def test_a_rerun_asks_nothing_and_a_stopped_run_resumes(
    ray_local: Any, base: Path, tmp_path: Path
) -> None:
    with copy_of(base, tmp_path, "live") as a, run_stub(fake_glan_model()) as stub:
        live(a, stub, QA)
        want = snapshot(a)
    with copy_of(base, tmp_path, "ray") as b:
        written: list[int] = []

        def stop_after_a_group(state: Progress) -> None:
            written.append(state.done)
            if state.stage == "questions" and state.done >= 4:
                raise KeyboardInterrupt  # as Ctrl-C does, once some units are written

        with run_stub(fake_glan_model()) as stub, pytest.raises(KeyboardInterrupt):
            on_ray(b, stub, QA, progress=stop_after_a_group, ray=ray_options(chunk=4))
        job = next(j for j in b.jobs.all() if j["kind"] == "questions")
        assert job["status"] == JobStatus.CANCELLED
        statuses = [u["status"] for u in b.jobs.units(job["id"])]
        done = statuses.count("done")
        assert 4 <= done < 12 and statuses.count("pending") == 12 - done
        assert integrity_problems(b) == []

        with run_stub(fake_glan_model()) as stub:
            results = on_ray(b, stub, QA)
            asked = [first_user_message(body) for body in stub.requests]
        assert results[0].skipped == done and results[0].done == 12
        assert sum('{"question"' in m for m in asked) == 12 - done  # only the pending units
        assert snapshot(b) == want | {"jobs": snapshot(b)["jobs"]}
        assert [r.status for r in results] == [JobStatus.COMPLETED] * 2

        with run_stub(fake_glan_model()) as stub:  # and a run with nothing left does nothing
            again = on_ray(b, stub, QA)
            assert stub.calls == 0
        assert [(r.skipped, r.total) for r in again] == [(12, 12)] * 2
        assert snapshot(b) == want


def test_request_errors_fail_their_units_with_the_error_kept(
    ray_local: Any, base: Path, tmp_path: Path
) -> None:
    good = fake_glan_model()
    role: dict[str, int] = {}  # each question prompt's order of first arrival
    asked: dict[str, int] = {}

    def faulty(body: dict[str, Any], n: int) -> Reply:
        prompt = first_user_message(body)
        k = role.setdefault(prompt, len(role))
        asked[prompt] = asked.get(prompt, 0) + 1
        if k == 0:
            return error(400, "no such model")  # refused: not retried
        if k == 1:
            return error(503, "overloaded")  # transient: retried, then failed
        if k == 2 and asked[prompt] == 1:
            return malformed()  # asked once more, corrected, and then answered
        return good(body, n)

    with copy_of(base, tmp_path, "ray") as b:
        with run_stub(faulty) as stub:
            (questions,) = on_ray(b, stub, ["questions"], max_retries=2)
            requests = list(stub.requests)
        assert questions.status == JobStatus.COMPLETED_WITH_FAILURES
        assert (questions.done, questions.failed) == (10, 2)
        failed = [u for u in b.jobs.units(questions.job_id) if u["status"] == "failed"]
        refused, overloaded = sorted(failed, key=lambda u: "HTTP 400" not in u["error"])
        assert "refused the request with HTTP 400" in refused["error"]
        assert "no such model" in refused["error"]
        assert "failed after 3 attempts; last error: HTTP 503: overloaded" in overloaded["error"]
        assert all(u["error"].startswith("question-model at http://127.0.0.1") for u in failed)
        # the refused request was sent once, the overloaded one three times, the malformed
        # answer twice, the second time showing the model its mistake
        assert sorted(asked.values()) == [1] * 10 + [2, 3]
        corrected = [r for r in requests if len(r["messages"]) > 2]
        assert len(corrected) == 1
        assert "did not match the schema" in corrected[0]["messages"][-1]["content"]
        malformed_unit = next(
            u for u in b.jobs.units(questions.job_id) if u["prompt_tokens"] == 22
        )  # both attempts' tokens are the unit's
        assert malformed_unit["status"] == "done"
        with run_stub(fake_glan_model()) as stub:  # a rerun asks the failed units again
            (again,) = on_ray(b, stub, ["questions"])
            assert stub.calls == 2
        assert (again.status, again.done, again.failed) == (JobStatus.COMPLETED, 12, 0)


def test_the_cli_runs_a_job_on_ray(
    ray_local: Any, base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy_of(base, tmp_path, "cli").close()
    env_for_cli(monkeypatch, tmp_path / "cli.lbug")
    with run_stub(fake_glan_model()) as stub:
        monkeypatch.setenv("GLAN_LLM_BASE_URL", stub.base_url)
        args = ["generate", "questions", ALGEBRA, "--n", "6", "--executor", "ray"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "questions completed" in result.output and "6/6 done" in result.output
        assert stub.calls == 6
        result = CliRunner().invoke(app, args)  # run again: nothing left to ask
        assert result.exit_code == 0 and "6/6 done (6 earlier)" in result.output
        assert stub.calls == 6


def env_for_cli(monkeypatch: pytest.MonkeyPatch, db: Path) -> None:
    monkeypatch.chdir(db.parent)
    for name in list(os.environ):
        if name.startswith("GLAN_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GLAN_DB_PATH", str(db))
    monkeypatch.setenv("GLAN_MODEL", "stub")


def test_without_ray_the_flag_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from generators.cluster import RayMissing, require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(RayMissing, match=r"pip install 'glan\[ray\]'"):
        require_ray()
    env_for_cli(monkeypatch, tmp_path / "none.lbug")
    with run_stub(fake_glan_model()) as stub:
        monkeypatch.setenv("GLAN_LLM_BASE_URL", stub.base_url)
        assert CliRunner().invoke(app, ["init"]).exit_code == 0
        result = CliRunner().invoke(app, ["generate", "questions", "--executor", "ray"])
        assert stub.calls == 0
    assert result.exit_code == 1
    assert "pip install 'glan[ray]'" in " ".join(result.output.split())
    with Store.open(StoreConfig(db_path=tmp_path / "none.lbug")) as store:
        assert store.jobs.all() == []  # refused before any job was stored


def test_executor_flags_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_for_cli(monkeypatch, tmp_path / "flags.lbug")
    result = CliRunner().invoke(app, ["generate", "questions", "--executor", "spark"])
    assert result.exit_code == 2 and "live or ray" in result.output
    result = CliRunner().invoke(app, ["generate", "questions", "--ray-address", "auto"])
    assert result.exit_code == 2 and "--executor ray" in result.output


def test_sigkill_then_rerun_sends_only_the_pending_units(
    ray_local: Any, base: Path, tmp_path: Path
) -> None:
    """`glan generate --executor ray` killed with its own local Ray mid-run: what it wrote
    stays done, and the rerun sends only the units still pending."""
    with copy_of(base, tmp_path, "live") as a, run_stub(fake_glan_model()) as stub:
        live(a, stub, ["questions"])
        want = snapshot(a)
    copy_of(base, tmp_path, "killed").close()
    db = tmp_path / "killed.lbug"
    good, held = fake_glan_model(), threading.Event()

    def half(body: dict[str, Any], n: int) -> Reply:
        reply = good(body, n)
        if n >= 6:
            reply.hold = held  # answered only after the kill
        return reply

    with run_stub(half) as stub:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("GLAN_", "RAY_"))},
            "GLAN_DB_PATH": str(db),
            "GLAN_LLM_BASE_URL": stub.base_url,
            "GLAN_MODEL": "question-model",
        }
        command = ["generate", "questions", ALGEBRA, "--executor", "ray", "--concurrency", "2"]
        command += ["--n", str(OPTIONS.n), "--seed", str(OPTIONS.seed)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", *command],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its Ray's processes with it
        )
        try:
            deadline = time.monotonic() + 120
            while stub.calls < 8 and proc.poll() is None:
                assert time.monotonic() < deadline, "the run sent too few requests"
                time.sleep(0.05)
            time.sleep(3)  # the answered requests' rows come back and are written
            assert proc.poll() is None, proc.communicate()[0]
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
            held.set()
    with Store.open(StoreConfig(db_path=db)) as store:
        assert integrity_problems(store) == []
        (job,) = [j for j in store.jobs.all() if j["kind"] == "questions"]
        statuses = [u["status"] for u in store.jobs.units(job["id"])]
        done = statuses.count("done")
        assert done < 12 and statuses.count("pending") == 12 - done
        with run_stub(fake_glan_model()) as stub:
            (again,) = on_ray(store, stub, ["questions"])
            assert stub.calls == 12 - done  # only what was pending
        assert (again.skipped, again.done, again.status) == (done, 12, JobStatus.COMPLETED)
        got = snapshot(store)
    print(f"\nkilled with {done} of 12 units written")
    assert got["instructions"] == want["instructions"] and got["units"] == want["units"]
    assert got["covers"] == want["covers"] and got["from"] == want["from"]


def test_through_a_server_it_says_to_stop_the_server(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stub: Stub
) -> None:
    """A server holds the store, and the store has one writer: a Ray run, which writes
    from the CLI's process, is refused with what to do instead; the server starts nothing."""
    env_for_cli(monkeypatch, tmp_path / "not-a-store.lbug")
    monkeypatch.setenv("GLAN_SERVER_URL", api.url)
    result = CliRunner().invoke(app, ["generate", "questions", "--executor", "ray"])
    said = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert "--executor ray" in said and "stop the server" in said and api.url in said
    assert api.store.jobs.all() == [] and stub.calls == 0
    assert not (tmp_path / "not-a-store.lbug").exists()


def test_a_cost_cap_holds_back_the_units_that_would_pass_it(
    ray_local: Any, base: Path, tmp_path: Path
) -> None:
    """With questions of the same model done before (11 tokens in and 7 out each at $1,000
    and $2,000 a million: $0.025 a unit), a cap of $0.06 lets two units start and stops
    there, nothing lost; a higher cap asks only the rest."""
    from generators.cost import CostCap, Price, PriceTable

    prices = PriceTable({"question-model": Price(1000.0, 2000.0)})
    with copy_of(base, tmp_path, "capped") as b:
        with run_stub(fake_glan_model()) as stub:  # the history the estimate comes from
            earlier = PipelineOptions(n=4, seed=99)
            asyncio.run(_live_with(b, stub, ["questions"], earlier))
        with run_stub(fake_glan_model()) as stub:
            (capped,) = run_capped(b, stub, CostCap(0.06, prices))
            assert stub.calls == 2
        assert (capped.status, capped.done, capped.total) == (JobStatus.COST_CAPPED, 2, 12)
        assert capped.error is not None and "stopped at the cost cap" in capped.error
        with run_stub(fake_glan_model()) as stub:
            (rest,) = run_capped(b, stub, CostCap(1.0, prices))
            assert stub.calls == 10
        assert (rest.status, rest.skipped, rest.done) == (JobStatus.COMPLETED, 2, 12)


async def _live_with(store: Store, stub: Stub, stages: list[str], options: Any) -> None:
    llm = LLMClient(llm_config(stub))
    try:
        await run_stages(store, llm, params_for, stages, ALGEBRA, options)
    finally:
        await llm.aclose()


def run_capped(store: Store, stub: Stub, cap: Any) -> list[Progress]:
    from generators.cluster import run_stages_on_ray

    return run_stages_on_ray(
        store, llm_config(stub), params_for, ["questions"], ALGEBRA, OPTIONS,
        ray_options(chunk=4), cost_cap=cap,
    )  # fmt: skip


def test_the_workers_code_needs_no_glan(tmp_path: Path) -> None:
    """What the cluster's workers run (the wire, the pre- and postprocess) is shipped by
    value: it unpickles and runs in a Python that cannot import glan's packages."""
    try:
        from ray import cloudpickle
    except ImportError as exc:
        unavailable(f"Ray is not installed ({exc.name}): pip install 'glan[ray]'")
    from generators import cluster_wire

    cloudpickle.register_pickle_by_value(cluster_wire)
    shipped = tmp_path / "shipped.pkl"
    wire = functools.partial(cluster_wire.Wire, timeout_s=5.0, limit=4)
    pre, post = cluster_wire.http_payload, cluster_wire.http_result
    shipped.write_bytes(cloudpickle.dumps((wire, pre, post)))
    script = f"""
import pickle, sys
for name in ("generators", "graph", "server"):
    sys.modules[name] = None  # an import of any of them fails
wire, pre, post = pickle.loads(open({str(shipped)!r}, "rb").read())
print(pre({{"body": "{{}}"}}), post({{"unit": "u1", "http_response": {{"text": "hi"}}}}))
print(type(wire()).__name__, wire().limit)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "{'payload': {'glan_body': '{}'}} {'unit': 'u1', 'text': 'hi'}",
        "Wire 4",
    ]


def test_a_request_body_becomes_a_vllm_engine_input() -> None:
    """The vLLM path (not run here: it needs vLLM and a GPU): a JSON schema asked for
    becomes vLLM's structured output as JSON text, the sampling parameters carry over, and
    an engine's output becomes a reply row."""
    from generators import cluster_wire
    from generators.llm import LLMClient, LLMConfig, StageParams
    from generators.prompting import get_prompt

    async def requests() -> tuple[Any, Any]:
        llm = LLMClient(LLMConfig(base_url="http://127.0.0.1:1/v1"))
        params = StageParams(model="m", temperature=0.5, top_p=0.9, max_tokens=64, seed=7)
        messages = [{"role": "user", "content": "Ask a question"}]
        model = get_prompt("question").response_model
        try:
            return llm.request(messages, model, params), llm.text_request(messages, model, params)
        finally:
            await llm.aclose()

    structured, text = asyncio.run(requests())
    row = cluster_wire.vllm_payload({"unit": "u", "body": json.dumps(structured.body())})
    assert row["messages"] == structured.messages
    sampling = row["sampling_params"]
    assert {k: sampling[k] for k in ("temperature", "top_p", "max_tokens", "seed")} == {
        "temperature": 0.5,
        "top_p": 0.9,
        "max_tokens": 64,
        "seed": 7,
    }
    schema = structured.response_format["json_schema"]["schema"]
    assert json.loads(sampling["structured_outputs"]["json"]) == schema
    free = cluster_wire.vllm_payload({"unit": "u", "body": json.dumps(text.body())})
    assert "structured_outputs" not in free["sampling_params"]
    out = {"unit": "u", "generated_text": "Why?", "num_input_tokens": 9, "num_generated_tokens": 2}
    assert cluster_wire.vllm_result(out) == {
        "unit": "u",
        **cluster_wire.reply_row("Why?", prompt_tokens=9, completion_tokens=2, status=200),
    }


def test_a_job_may_switch_executor_between_runs(ray_local: Any, base: Path, tmp_path: Path) -> None:
    """Begun on Ray and stopped, finished by the live executor: the graph of a live run."""
    with copy_of(base, tmp_path, "live") as a, run_stub(fake_glan_model()) as stub:
        live(a, stub, ["questions"])
        want = snapshot(a)
    with copy_of(base, tmp_path, "switch") as b:

        def stop(state: Progress) -> None:
            if state.done >= 4:
                raise KeyboardInterrupt

        with run_stub(fake_glan_model()) as stub, pytest.raises(KeyboardInterrupt):
            on_ray(b, stub, ["questions"], progress=stop, ray=ray_options(chunk=4))
        (job,) = [j for j in b.jobs.all() if j["kind"] == "questions"]
        done = sum(u["status"] == "done" for u in b.jobs.units(job["id"]))
        assert 4 <= done < 12
        with run_stub(fake_glan_model()) as stub:
            (rest,) = live(b, stub, ["questions"])
            assert stub.calls == 12 - done
        assert (rest.status, rest.skipped, rest.done) == (JobStatus.COMPLETED, done, 12)
        assert snapshot(b) == want


def test_an_address_where_nothing_answers_is_refused_at_once(
    ray_local: Any, base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy_of(base, tmp_path, "nowhere").close()
    env_for_cli(monkeypatch, tmp_path / "nowhere.lbug")
    with run_stub(fake_glan_model()) as stub:
        monkeypatch.setenv("GLAN_LLM_BASE_URL", stub.base_url)
        args = ["generate", "questions", ALGEBRA, "--executor", "ray"]
        result = CliRunner().invoke(app, [*args, "--ray-address", "127.0.0.1:1"])
        assert stub.calls == 0
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "nothing answers at the Ray cluster address" in said
    with Store.open(StoreConfig(db_path=tmp_path / "nowhere.lbug")) as store:
        assert [j for j in store.jobs.all() if j["kind"] == "questions"] == []


def test_follow_ups_on_ray_go_on_in_rounds_to_the_last_turn(
    ray_local: Any, base: Path, tmp_path: Path
) -> None:
    """Turn k+1 needs turn k answered: one run on the cluster asks every turn, as a live
    run does, and a second run asks nothing."""
    from generators.cluster import run_stages_on_ray
    from tests.test_followups import params_for as followup_params

    options = replace(OPTIONS, turns=2)
    with copy_of(base, tmp_path, "turns") as store, run_stub(fake_glan_model()) as stub:
        live(store, stub, QA)
        before = stub.calls
        (result,) = run_stages_on_ray(
            store, llm_config(stub), followup_params, ["followups"], ALGEBRA, options,
            ray_options(),
        )  # fmt: skip
        asked = stub.calls - before
        turns = store.driver.execute(f"MATCH (t:{TURN.label}) RETURN t.position AS p")
        (again,) = run_stages_on_ray(
            store, llm_config(stub), followup_params, ["followups"], ALGEBRA, options,
            ray_options(),
        )  # fmt: skip
    pairs = OPTIONS.n
    # per pair: ask and answer for each of 2 turns
    assert (result.status, result.total, result.done) == ("completed", 4 * pairs, 4 * pairs)
    assert asked == 4 * pairs and sorted(r["p"] for r in turns) == [1] * pairs + [2] * pairs
    assert (again.done, again.skipped) == (4 * pairs, 4 * pairs) and stub.calls == before + asked
