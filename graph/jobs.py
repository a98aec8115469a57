"""Generation jobs and their units as stored: what makes a job resumable.

A job is one stage over one scope; a unit is one model call's worth of its work, with its
status, its output's raw text when it failed, and its tokens (generators/jobs.py runs them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from . import queries as Q
from .driver import Tx, batched
from .model import (
    BATCH,
    JOB,
    UNIT,
)
from .nodes import Part
from .records import (
    Node,
)


class Jobs(Part):
    """Job and unit records: saved as a job runs, read back to resume it."""

    def save(self, row: Mapping[str, Any], *, tx: Tx | None = None) -> None:
        """Create or update a job's row."""
        self.nodes.upsert_nodes(JOB, [row], tx=tx)

    def get(self, job_id: str) -> dict[str, Any] | None:
        """A job's stored properties, or None."""
        node = self.nodes.get(job_id)
        return node.props if node else None

    def all(self) -> list[dict[str, Any]]:
        """Every job, newest first."""
        return [Node.from_row(r["j"]).props for r in self.driver.execute(Q.list_jobs(self.d))]

    def units(self, job_id: str) -> list[dict[str, Any]]:
        """A job's units, with their payloads, statuses, raw text and tokens."""
        rows = self.driver.execute(Q.job_units(self.d), {"job": job_id})
        return [Node.from_row(r["u"]).props for r in rows]

    def dropped(self) -> list[tuple[str, str]]:
        """(job id, what was left out) of each unit whose output the validators left items
        out of: one rejection a line (generators/validators.py)."""
        rows = self.driver.execute(Q.dropped_notes(self.d))
        return [(str(r["job"]), str(r["dropped"])) for r in rows]

    def unit_statuses(self, ids: Sequence[str]) -> dict[str, str]:
        """The status of each unit that exists among these ids."""
        out: dict[str, str] = {}
        for batch in batched(list(ids), self.batch_size):
            for r in self.driver.execute(Q.unit_status(self.d), {"ids": batch}):
                out[r["id"]] = r["status"]
        return out

    def jobs_of_units(self, ids: Sequence[str]) -> dict[str, str]:
        """The job of each unit that exists among these ids (what a results file names)."""
        out: dict[str, str] = {}
        for batch in batched(list(ids), self.batch_size):
            for r in self.driver.execute(Q.unit_jobs(self.d), {"ids": batch}):
                out[r["id"]] = r["job"]
        return out

    def save_units(
        self,
        rows: Sequence[Mapping[str, Any]],
        *,
        update_existing: bool = True,
        tx: Tx | None = None,
    ) -> None:
        """Create units (a job's plan) or, unless told not to, update them."""
        self.nodes.upsert_nodes(UNIT, rows, update_existing=update_existing, tx=tx)

    def batches(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """The batches a job submitted to a Batch API (every job's without one), in order."""
        query = Q.job_batches(self.d, every=job_id is None)
        rows = self.driver.execute(query, {} if job_id is None else {"job": job_id})
        return [Node.from_row(r["b"]).props for r in rows]

    def save_batches(self, rows: Sequence[Mapping[str, Any]], *, tx: Tx | None = None) -> None:
        """Record batches, or what changed about them (rows of one call share their keys)."""
        self.nodes.upsert_nodes(BATCH, rows, tx=tx)
