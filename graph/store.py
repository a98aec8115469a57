"""The knowledge store: one database, one driver, and a module for each concern.

Everything outside graph/ reaches the database through a `Store`, by concern:

    store.taxonomy      taxonomy.py      paths, children, add/link/review/delete, scopes
    store.coverage      coverage.py      counts, trees, coverage reports, gaps
    store.rollups       rollups.py       subject rollups: marked stale by writes, refreshed
    store.syllabi       syllabi.py       subjects and syllabi: written, read, sampled from
    store.instructions  instructions.py  questions and answers, pages, exports, dedup marks
    store.turns         turns.py         follow-up turns: conversations going on from pairs
    store.jobs          jobs.py          generation jobs and their units
    store.nodes         nodes.py         upserts and reads by id, for all of the above

The records they take and return (Node, CoverageReport, SyllabusIndex, ...) are in
graph/records.py; every Cypher text is in graph/queries/ (a module per concern, as here);
how an engine is spoken to, and its tuning, is in graph/backends/; handing freed memory
back to the system, in graph/memory.py. The store knows the GLAN hierarchy, review states
and deterministic ids; it never asks which engine it runs on.
"""

from __future__ import annotations

from .backends import open_driver
from .config import StoreConfig
from .coverage import Coverage
from .driver import GraphDriver
from .instructions import Instructions
from .jobs import Jobs
from .nodes import Nodes
from .records import (
    COUNT_NAMES,
    CoverageReport,
    CoverageRow,
    InstructionDetail,
    LoadReport,
    NameIndex,
    Node,
    SessionView,
    SyllabusIndex,
    TreeNode,
    UpsertResult,
    kind_of_id,
    now_iso,
    validate_name,
    zero_counts,
)
from .rollups import Rollups
from .syllabi import Syllabi
from .taxonomy import Taxonomy
from .turns import Turns


class Store:
    """One graph database, by concern (see the module docstring)."""

    def __init__(
        self, driver: GraphDriver, *, batch_size: int = 5000, bulk_batch_size: int = 200_000
    ) -> None:
        self.driver = driver
        self.nodes = Nodes(driver, batch_size=batch_size, bulk_batch_size=bulk_batch_size)
        self.rollups = Rollups(self.nodes)
        self.taxonomy = Taxonomy(self.nodes, self.rollups)
        self.coverage = Coverage(self.nodes, self.taxonomy, self.rollups)
        self.syllabi = Syllabi(self.nodes, self.rollups)
        self.instructions = Instructions(self.nodes, self.taxonomy, self.rollups)
        self.turns = Turns(self.nodes, self.rollups)
        self.jobs = Jobs(self.nodes)

    @classmethod
    def open(cls, config: StoreConfig, *, ensure_schema: bool = True) -> Store:
        store = cls(open_driver(config))
        if ensure_schema:
            store.ensure_schema()
        return store

    def ensure_schema(self) -> None:
        self.driver.ensure_schema()

    def close(self) -> None:
        self.driver.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "COUNT_NAMES",
    "CoverageReport",
    "CoverageRow",
    "InstructionDetail",
    "LoadReport",
    "NameIndex",
    "Node",
    "SessionView",
    "Store",
    "SyllabusIndex",
    "TreeNode",
    "UpsertResult",
    "kind_of_id",
    "now_iso",
    "validate_name",
    "zero_counts",
]
