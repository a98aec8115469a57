"""What the reliability tests compare and check in a store after generation.

`snapshot` is the generated graph without timestamps or token counts (a killed run spends
tokens twice on the units in flight), for comparing a run with an uninterrupted one.
`integrity_problems` lists what must never be there after any run, killed or not: an
instruction without a done unit, a done unit without its instruction, a combination
generated twice, edges that differ from what the unit sampled, counters that disagree
with the units.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from graph.store import Store


def _rows(store: Store, query: str) -> list[dict[str, Any]]:
    return list(store.driver.execute(query))


def _edges(store: Store, rel: str, dst: str) -> list[tuple[str, str]]:
    rows = _rows(store, f"MATCH (a:Instruction)-[:{rel}]->(b:{dst}) RETURN a.id AS a, b.id AS b")
    return sorted((r["a"], r["b"]) for r in rows)


def units_by_job(store: Store) -> dict[str, list[dict[str, Any]]]:
    return {j["id"]: store.jobs.units(j["id"]) for j in store.jobs.all()}


def snapshot(store: Store) -> dict[str, Any]:
    instructions = _rows(
        store,
        "MATCH (i:Instruction) RETURN i.id AS id, i.combo_key AS combo, i.text AS text, "
        "i.unit_id AS unit",
    )
    counts = {
        label: _rows(store, f"MATCH (n:{label}) RETURN count(n) AS n")[0]["n"]
        for label in ("Field", "Discipline", "Subject", "Session", "Concept", "Response")
    }
    jobs = store.jobs.all()
    return {
        "counts": counts,
        "instructions": sorted((r["id"], r["combo"], r["text"], r["unit"]) for r in instructions),
        "covers": _edges(store, "COVERS", "Concept"),
        "from": _edges(store, "FROM", "Session"),
        "units": sorted(
            (u["id"], u["status"]) for units in units_by_job(store).values() for u in units
        ),
        "jobs": sorted(
            (j["kind"], j["scope"], j["status"], j["done"], j["failed"], j["total"]) for j in jobs
        ),
    }


def integrity_problems(store: Store) -> list[str]:
    """Everything wrong with the generated questions in `store`; empty when all is well."""
    problems: list[str] = []
    units = {u["id"]: u for us in units_by_job(store).values() for u in us}
    questions = {k: u for k, u in units.items() if u["stage"] == "questions"}
    instructions = _rows(
        store, "MATCH (i:Instruction) RETURN i.id AS id, i.combo_key AS combo, i.unit_id AS unit"
    )
    by_unit = Counter(r["unit"] for r in instructions)
    for unit_id, n in by_unit.items():
        if n > 1:
            problems.append(f"unit {unit_id} has {n} instructions")
        if unit_id not in questions:
            problems.append(f"instruction of unknown unit {unit_id}")
        elif questions[unit_id]["status"] != "done":
            problems.append(
                f"instruction of unit {unit_id}, which is {questions[unit_id]['status']}"
            )
    for unit_id, u in questions.items():
        if u["status"] == "done" and unit_id not in by_unit:
            problems.append(f"unit {unit_id} is done but has no instruction")
        if u["status"] == "failed" and not u.get("error"):
            problems.append(f"unit {unit_id} failed without saying why")
        if u["status"] not in ("done", "failed", "pending"):
            problems.append(f"unit {unit_id} is {u['status']!r}")
    combos = Counter(r["combo"] for r in instructions)
    problems += [f"combination {c} generated {n} times" for c, n in combos.items() if n > 1]

    covers, froms = (
        Counter(_edges(store, "COVERS", "Concept")),
        Counter(_edges(store, "FROM", "Session")),
    )
    want_covers: Counter[tuple[str, str]] = Counter()
    want_from: Counter[tuple[str, str]] = Counter()
    for r in instructions:
        payload = json.loads(questions[r["unit"]]["payload"]) if r["unit"] in questions else {}
        want_covers.update((r["id"], c) for c in payload.get("concept_ids", []))
        want_from.update((r["id"], s) for s in payload.get("session_ids", []))
    if covers != want_covers:
        extra, missing = covers - want_covers, want_covers - covers
        problems.append(f"COVERS edges differ from the sampled concepts: +{extra} -{missing}")
    if froms != want_from:
        extra, missing = froms - want_from, want_from - froms
        problems.append(f"FROM edges differ from the sampled sessions: +{extra} -{missing}")

    for job in store.jobs.all():
        mine = [u for u in units.values() if u["job_id"] == job["id"]]
        if job["status"] == "running":
            continue  # counters are saved every half second while running
        done = sum(u["status"] == "done" for u in mine)
        failed = sum(u["status"] == "failed" for u in mine)
        if (job["done"], job["failed"], job["total"]) != (done, failed, len(mine)):
            problems.append(
                f"job {job['id']} says {job['done']} done, {job['failed']} failed of "
                f"{job['total']}; its units: {done}, {failed} of {len(mine)}"
            )
        for key in ("prompt_tokens", "completion_tokens"):
            spent = sum(int(u.get(key) or 0) for u in mine)
            if int(job.get(key) or 0) != spent:
                problems.append(f"job {job['id']} counts {job.get(key)} {key}, its units {spent}")
    return problems
