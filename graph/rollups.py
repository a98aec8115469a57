"""Subject rollups: what lies below each subject, kept on the subject, so coverage above
subjects sums a few thousand rollups instead of walking millions of concepts.

A rollup holds a subject's sessions, concepts, covered concepts, instructions, answers and
concept combinations. Every write below a subject marks its rollup stale in the same
transaction (`mark_stale`); `refresh` recomputes the stale ones before a coverage read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any

from . import queries as Q
from .driver import GraphDriver, Row, Tx, batched
from .model import (
    HIERARCHY,
    ROLLUPS,
    SUBJECT,
    Status,
)
from .nodes import Part
from .records import (
    Node,
)


class Rollups(Part):
    """Marks subject rollups stale as writes land, and recomputes them before reads."""

    def mark_stale(self, subject_ids: Sequence[str], *, tx: Tx | None = None) -> None:
        """Mark the rollups of these subjects stale, in the caller's transaction, so a write
        below a subject and the mark commit together (or not at all)."""
        runner: Tx | GraphDriver = tx if tx is not None else self.driver
        for batch in batched(list(dict.fromkeys(subject_ids)), self.batch_size):
            runner.execute(Q.mark_subjects_dirty(self.d), {"ids": batch})

    def refresh(self, scope: Node | None = None) -> int:
        """Recompute the stale subject rollups under a scope (everything when None); returns
        how many were stale.

        Each is stamped with the write count it was computed for, inside one transaction,
        so a write that lands meanwhile leaves it stale rather than lost.
        """
        top = scope.level if scope else None
        if top is not None and top > HIERARCHY.index(SUBJECT):
            return 0
        params: dict[str, Any] = {"id": scope.id} if scope else {}
        stale = {
            r["id"]: int(r["dirty"])
            for r in self.driver.execute(Q.stale_rollups(self.d, top), params)
        }
        ids = sorted(stale)
        values: dict[str, dict[str, Any]] = {
            i: {"id": i, **dict.fromkeys(ROLLUPS, 0), "rollup_clean": stale[i]} for i in ids
        }

        def add(rows: Iterable[Row]) -> None:
            for r in rows:
                if r["id"] in values:
                    values[r["id"]].update({k: int(v or 0) for k, v in r.items() if k != "id"})

        args = {"rejected": str(Status.REJECTED)}
        counts = (Q.rollup_syllabus, Q.rollup_generated, Q.rollup_covered)
        if self.nodes.reads_whole(ids):
            # Most subjects are stale, as after a large write: each count walks every subject
            # once (see Syllabi.index). The stamps still hold: a write that lands meanwhile
            # marks its subject again, past the stamp it gets here.
            for build in counts:
                add(self.nodes.every_subject(build(self.d, every=True), args))
            for batch in batched(ids, self.batch_size):
                with self.driver.transaction() as tx:
                    self.nodes.update_existing(SUBJECT, [values[i] for i in batch], tx=tx)
            return len(ids)
        for batch in batched(ids, self.batch_size):
            with self.driver.transaction() as tx:
                for build in counts:
                    add(self.nodes.by_ids(partial(build, self.d), batch, args, tx=tx))
                self.nodes.update_existing(SUBJECT, [values[i] for i in batch], tx=tx)
        return len(ids)
