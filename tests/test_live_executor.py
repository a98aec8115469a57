"""The live executor's worker loop: what it does while finished units are being written."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from generators import jobs
from generators.jobs import JobRunner, JobStatus, Outcome, Stage, UnitSpec, unit_id
from generators.llm import ChatRequest, LLMClient, LLMConfig, StageParams
from graph.driver import Tx
from graph.records import Node
from graph.store import Store

UNITS = 6


class SlowWrites(Stage):
    """A stage asking nothing of a model whose first write waits until every unit has been
    asked (at most a few seconds): a worker that waits for the write asks nothing meanwhile."""

    name = "slow_writes"
    scope_kinds = ()

    def __init__(self, store: Store, hold_s: float = 5.0) -> None:
        llm = LLMClient(LLMConfig(base_url="http://127.0.0.1:9/v1"))  # never sends
        super().__init__(store, llm, StageParams(model="m", temperature=1, top_p=1), {})
        self.asked = 0
        self.all_asked = threading.Event()
        self.asked_while_writing: list[bool] = []
        self.hold_s = hold_s

    def plan(self, scope: Node | None) -> list[UnitSpec]:
        return [UnitSpec(unit_id(self.name, str(i)), f"target-{i}") for i in range(UNITS)]

    def request(self, unit: UnitSpec) -> ChatRequest | Outcome:
        raise AssertionError("execute is replaced: nothing is sent")

    async def execute(self, unit: UnitSpec) -> Outcome:
        await asyncio.sleep(0)
        self.asked += 1
        if self.asked == UNITS:
            self.all_asked.set()
        return Outcome(value=unit.target_id)

    def write(self, unit: UnitSpec, outcome: Outcome, tx: Tx) -> None:
        self.write_many([(unit, outcome)], tx)

    def write_many(self, done: Sequence[tuple[UnitSpec, Outcome]], tx: Tx) -> None:
        if not self.asked_while_writing:  # the first group: hold it until all were asked
            self.asked_while_writing.append(self.all_asked.wait(self.hold_s))


def test_workers_go_on_asking_while_a_group_is_written(
    embedded_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One worker, groups of two, no timed writes: the write of the first group waits until
    the worker has asked every unit, which it can only do if it does not wait for writes."""
    monkeypatch.setattr(jobs, "WRITE_GROUP", 2)
    monkeypatch.setattr(jobs, "WRITE_AFTER_S", 30.0)
    stage = SlowWrites(embedded_store)
    state = asyncio.run(JobRunner(embedded_store, concurrency=1).run(stage, None))
    assert stage.asked_while_writing == [True]
    assert state.status == JobStatus.COMPLETED and state.done == UNITS


def test_writes_that_fall_behind_hold_the_workers(
    embedded_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finished units waiting to be written are bounded: with room for one group only, the
    worker stops asking while a write is behind, until it ends (here, after it waited in
    vain for units the worker did not ask meanwhile)."""
    monkeypatch.setattr(jobs, "WRITE_GROUP", 2)
    monkeypatch.setattr(jobs, "WRITE_BACKLOG", 2)
    monkeypatch.setattr(jobs, "WRITE_AFTER_S", 30.0)
    stage = SlowWrites(embedded_store, hold_s=0.5)
    state = asyncio.run(JobRunner(embedded_store, concurrency=1).run(stage, None))
    assert stage.asked_while_writing == [False]
    assert state.status == JobStatus.COMPLETED and state.done == UNITS
