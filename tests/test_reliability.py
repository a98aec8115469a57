"""Generation under a faulty model endpoint, and what survives a stop.

A job of a few hundred units runs against a loopback endpoint that answers a fifth of the
calls with a fault (429 with Retry-After, 500, a hang past the client's timeout, a dropped
connection, malformed JSON, JSON off the schema) and some prompts always off the schema.
Every unit must end done or failed with its reason and the model's raw text, nothing
generated twice, and the token counts of job, units and client must agree; after the
store is closed and opened again, every unit reported done is still done.

Bounded for CI; `--full-reliability` (or GLAN_RELIABILITY_FULL=1) runs the full size.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from pathlib import Path
from typing import Any

from generators.jobs import JobRunner, Progress
from generators.llm import LLMClient, LLMConfig, StageParams
from generators.stages import QuestionsStage
from graph.config import StoreConfig
from graph.model import JOB
from graph.store import Store
from tests.graph_checks import integrity_problems, snapshot, units_by_job
from tests.llm_stub import (
    Reply,
    fake_glan_model,
    first_user_message,
    glan_faults,
    malformed,
    off_schema,
    run_stub,
    with_faults,
)
from tests.test_sampling import fill

SCOPE = "Natural Sciences/Physical Sciences/Physics"
PARAMS = StageParams(model="stub", temperature=1.0, top_p=0.95)
FAULT_RATE = 0.2
TIMEOUT_S = 1.0  # a hang lasts three times this; a loaded machine still answers in time


def always_off_schema(prompt: str) -> bool:
    """About one prompt in 40 gets JSON off the schema every time it is asked."""
    return int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 40 == 0


def faulty_model(tally: Counter[str], seed: int) -> Any:
    good = fake_glan_model()

    def model(body: dict[str, Any], n: int) -> Reply:
        if always_off_schema(first_user_message(body)):
            tally["always off schema"] += 1
            return off_schema()
        return good(body, n)

    return with_faults(model, FAULT_RATE, glan_faults(TIMEOUT_S), seed=seed, tally=tally)


async def run_questions(store: Store, base_url: str, n: int) -> tuple[Progress, LLMClient]:
    llm = LLMClient(
        LLMConfig(
            base_url=base_url,
            timeout_s=TIMEOUT_S,
            max_retries=5,
            concurrency=16,
            backoff_base_s=0.01,
            backoff_max_s=0.05,  # caps Retry-After too, to keep the test short
        )
    )
    try:
        stage = QuestionsStage(store, llm, PARAMS, {"n": n, "strategy": "mixed", "seed": 3})
        result = await JobRunner(store, concurrency=16).run(stage, SCOPE)
    finally:
        await llm.aclose()
    return result, llm


def test_a_job_at_twenty_percent_faults_loses_and_duplicates_nothing(
    tmp_path: Path, full_reliability: bool
) -> None:
    n = 2000 if full_reliability else 300
    db = tmp_path / "faults.lbug"
    tally: Counter[str] = Counter()
    started = time.monotonic()
    with run_stub(faulty_model(tally, seed=7)) as stub:
        with Store.open(StoreConfig(db_path=db)) as store:
            fill(store, subjects=6 if full_reliability else 3, sessions=6, concepts=6)
            result, llm = asyncio.run(run_questions(store, stub.base_url, n))
            before = snapshot(store)
            problems = integrity_problems(store)
            (units,) = units_by_job(store).values()
        took = time.monotonic() - started
    print(
        f"\nfaults: {n} units, {stub.calls} calls, {dict(tally)}; {result.done} done, "
        f"{result.failed} failed in {took:.1f} s"
    )
    assert problems == []
    injected = sum(v for k, v in tally.items() if k not in ("ok", "always off schema"))
    assert 0.15 < injected / stub.calls < 0.25  # the rate asked for was served
    assert {k for k in tally if k != "ok"} >= {*glan_faults(TIMEOUT_S), "always off schema"}

    assert len(units) == result.total == n
    statuses = Counter(u["status"] for u in units)
    assert statuses == {"done": result.done, "failed": result.failed}  # none left pending
    failed = [u for u in units if u["status"] == "failed"]
    assert failed  # the prompts that are always off the schema
    bad_answers = {malformed().content, off_schema().content}
    transport = 0
    for u in failed:  # each with its reason, and what the model said when it said something
        if "did not match" in u["error"]:
            assert u["raw"] in bad_answers  # verbatim
        else:  # no answer at all, after every retry: nothing to keep but the reason
            assert "failed after 6 attempts" in u["error"] and not u["raw"], u
            transport += 1
    print(f"failed units: {len(failed) - transport} on bad answers, {transport} unanswered")
    assert transport <= n // 100
    assert result.done >= 0.9 * n  # transient faults were retried away

    assert result.prompt_tokens == sum(u["prompt_tokens"] for u in units) == llm.usage.prompt_tokens
    assert (
        result.completion_tokens
        == sum(u["completion_tokens"] for u in units)
        == llm.usage.completion_tokens
    )

    # durability after a clean stop: reopened, the store holds every unit reported done
    with Store.open(StoreConfig(db_path=db)) as store:
        assert snapshot(store) == before
        done = [u for us in units_by_job(store).values() for u in us if u["status"] == "done"]
        assert len(done) == result.done


def test_a_resumed_job_counts_the_tokens_its_units_spent(tmp_path: Path) -> None:
    """The job row's counters are saved now and then, so a crash leaves them behind the
    units (each unit stores its tokens with its output). A re-run counts from the units:
    here the stored counters are set back to zero, as a crash right after the job started
    would leave them, and a failed unit retried keeps the tokens of both its attempts."""
    good = fake_glan_model()
    bad: Counter[str] = Counter()

    def model(body: dict[str, Any], n: int) -> Reply:
        prompt = first_user_message(body)
        if (len(bad) < 2 or prompt in bad) and bad[prompt] < 2:
            bad[prompt] += 1  # the first two prompts: answer and correction off the schema
            return off_schema()
        return good(body, n)

    with run_stub(model) as stub, Store.open(StoreConfig(db_path=tmp_path / "t.lbug")) as store:
        fill(store, subjects=2, sessions=4, concepts=4)
        first, _ = asyncio.run(run_questions(store, stub.base_url, 20))
        assert first.failed == 2 and first.prompt_tokens == 11 * stub.calls
        store.nodes.update_existing(JOB, [{"id": first.job_id, "prompt_tokens": 0}])
        second, _ = asyncio.run(run_questions(store, stub.base_url, 20))
        (units,) = units_by_job(store).values()
    assert second.done == 20 and second.failed == 0
    assert second.prompt_tokens == 11 * stub.calls == sum(u["prompt_tokens"] for u in units)
    spent = Counter(u["prompt_tokens"] for u in units)
    assert spent == {11: 18, 33: 2}  # a retried unit: two calls that failed, one that did not


def test_the_integrity_check_finds_what_it_looks_for(tmp_path: Path) -> None:
    """The checks the crash tests rely on report a lost output, a stray edge, a second copy
    and counters that disagree, so an empty list from them means something."""
    with (
        run_stub(fake_glan_model()) as stub,
        Store.open(StoreConfig(db_path=tmp_path / "c.lbug")) as store,
    ):
        fill(store, subjects=2, sessions=4, concepts=4)
        result, _ = asyncio.run(run_questions(store, stub.base_url, 10))
        assert integrity_problems(store) == []
        rows = list(store.driver.execute("MATCH (i:Instruction) RETURN i.id AS id ORDER BY id"))
        first, second = rows[0]["id"], rows[1]["id"]

        store.driver.execute("MATCH (i:Instruction {id: $id}) DETACH DELETE i", {"id": first})
        assert any("done but has no instruction" in p for p in integrity_problems(store))

        concept = next(iter(store.driver.execute("MATCH (c:Concept) RETURN c.id AS id")))["id"]
        store.driver.execute(
            "MATCH (a:Instruction {id: $a}), (b:Concept {id: $b}) CREATE (a)-[:COVERS]->(b)",
            {"a": second, "b": concept},
        )
        assert any("COVERS edges differ" in p for p in integrity_problems(store))

        store.nodes.update_existing(JOB, [{"id": result.job_id, "done": result.done + 1}])
        assert any(f"job {result.job_id} says" in p for p in integrity_problems(store))
