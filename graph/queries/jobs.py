"""Jobs, their units and batches."""

from __future__ import annotations

from ..driver import Dialect
from ..model import (
    BATCH,
    JOB,
    UNIT,
)


def job_units(d: Dialect) -> str:
    return f"MATCH (u:{d.q(UNIT.label)}) WHERE u.job_id = $job RETURN u"


def dropped_notes(d: Dialect) -> str:
    """The units whose output the validators left items out of, with what they left out."""
    return (
        f"MATCH (u:{d.q(UNIT.label)}) WHERE u.{d.q('dropped')} IS NOT NULL "
        f"RETURN u.job_id AS job, u.{d.q('dropped')} AS dropped"
    )


def unit_status(d: Dialect) -> str:
    return (
        f"UNWIND $ids AS x MATCH (u:{d.q(UNIT.label)} {{id: x}}) "
        "RETURN u.id AS id, u.status AS status"
    )


def unit_jobs(d: Dialect) -> str:
    """The job of each unit among $ids that exists."""
    return (
        f"UNWIND $ids AS x MATCH (u:{d.q(UNIT.label)} {{id: x}}) RETURN u.id AS id, u.job_id AS job"
    )


def list_jobs(d: Dialect) -> str:
    return f"MATCH (j:{d.q(JOB.label)}) RETURN j ORDER BY j.created_at DESC"


def job_batches(d: Dialect, *, every: bool = False) -> str:
    """The batches of job $job (with `every`, of all jobs), by job then in submission order."""
    where = "" if every else "WHERE b.job_id = $job "
    return f"MATCH (b:{d.q(BATCH.label)}) {where}RETURN b ORDER BY b.job_id, b.seq"
