"""`glan tree --combinations` and `glan generate questions --min-per-concept`, on the store
itself and through a running server: both print the same."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from graph.combinations import subject_space
from graph.config import StoreConfig
from graph.model import Status
from graph.store import Store
from tests.llm_stub import Stub
from tests.test_cli_remote import ALGEBRA, algebra, env, glan, stub, twins

__all__ = ["algebra", "env", "stub"]  # the fixtures this module borrows

#: the stub's syllabi in these tests: two sessions of three concepts each
SPACE = subject_space([3, 3])


def concepts_below(db: Path, k: int) -> int:
    """Approved concepts under Algebra fewer than k questions cover, in the store at db."""
    with Store.open(StoreConfig(db_path=db)) as store:
        return store.coverage.gaps(ALGEBRA, 1, min_count=k).below_min_count


def test_tree_combinations_prints_the_same_both_ways(
    algebra: Path, stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    with twins(algebra, stub, monkeypatch) as t:
        found = json.loads(t.same("tree", ALGEBRA, "--depth", "2", "--combinations", "--json"))
        subjects = found["children"]
        assert len(subjects) == 2
        assert found["combinations"] == {
            "space": 2 * SPACE,
            "space_log10": pytest.approx(math.log10(2 * SPACE)),
            "used": 0,
            "share": 0.0,
        }
        assert all(s["combinations"]["space"] == SPACE for s in subjects)
        sessions = [c["combinations"]["space"] for s in subjects for c in s["children"]]
        assert sessions == [7] * 4  # a session's own: subsets of 1-5 of its 3 concepts
        out = " ".join(t.same("tree", ALGEBRA, "--combinations").split())
        assert f"0 of {2 * SPACE:,} combinations (0.00%)" in out
        assert "combinations" not in t.same("tree", ALGEBRA)  # only when asked
        t.same("generate", "questions", ALGEBRA, "--n", "4", "--seed", "2")
        out = " ".join(t.same("tree", "Formal Sciences", "--depth", "3", "--combinations").split())
        share = 4 / (2 * SPACE) * 100
        assert f"4 of {2 * SPACE:,} combinations ({share:.2f}%)" in out


def test_min_per_concept_plans_coverage_both_ways(
    algebra: Path, stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    with twins(algebra, stub, monkeypatch) as t:
        calls = stub.calls
        dry = ("generate", "questions", ALGEBRA, "--min-per-concept", "2", "--dry-run")
        out = " ".join(t.same(*dry).split())
        assert stub.calls == calls  # a dry run asks nothing
        head = "coverage: 2 question(s) per concept for all of 12 approved concepts, 0 at it"
        assert head in out
        planned = int(re.findall(r"(\d+) questions bring 12 to it", out)[0])
        assert f"{ALGEBRA}: {planned} questions" in out and planned >= 24 / 5
        assert concepts_below(algebra, 1) == 12  # nothing was asked or stored
        assert not [j for j in t.api.store.jobs.all() if j["kind"] == "questions"]

        out = t.same("generate", "questions", ALGEBRA, "--min-per-concept", "2")
        assert out.strip().splitlines()[-1] == f"done: all {planned} units of questions are done"
        assert stub.calls == calls + 2 * planned  # each asked once here and once there
        assert concepts_below(algebra, 2) == 0
        assert t.api.store.coverage.gaps(ALGEBRA, 1, min_count=2).below_min_count == 0
        # again: nothing is missing, nothing is planned
        out = " ".join(t.same(*dry).split())
        assert "0 to ask" in out and "12 at it already: 0 questions bring 12" in out
        t.same("generate", "questions", ALGEBRA, "--until-share", "0", code=2)
        t.same("generate", "questions", ALGEBRA, "--min-per-concept", "0", code=2)


def test_a_rejected_session_leaves_the_space(algebra: Path) -> None:
    found = json.loads(glan("tree", ALGEBRA, "--depth", "1", "--combinations", "--json")[1])
    subject = found["children"][0]["path"]
    session = json.loads(glan("tree", subject, "--depth", "1", "--json")[1])["children"][0]
    assert glan("review", session["path"], "--reject")[0] == 0
    again = json.loads(glan("tree", subject, "--depth", "0", "--combinations", "--json")[1])
    assert again["combinations"]["space"] == 7  # one session of three concepts left
    assert session["status"] == str(Status.APPROVED)
