"""Taxonomy expansion: proposed children of a field or sub-field (or of the root), kept for
review unless auto-approved."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from graph.driver import Tx
from graph.model import (
    CHILD_REL,
    FIELD,
    SUBFIELD,
    Source,
    Status,
    child_kind,
    hierarchy_id,
    join_path,
    name_key,
    split_path,
)
from graph.records import Node, validate_name

from ..jobs import Outcome, UnitSpec, unit_id
from ..validators import Text
from .base import PromptStage


class TaxonomyStage(PromptStage):
    """Propose children of a taxonomy node (fields, sub-fields or disciplines) for review."""

    name = "taxonomy"
    prompt_name = "taxonomy"
    scope_kinds = (FIELD, SUBFIELD)

    def plan(self, scope: Node | None) -> list[UnitSpec]:
        target = scope.id if scope else "root"
        rounds = int(self.options.get("rounds", 1))
        return [
            UnitSpec(
                unit_id(self.name, target, str(r)),
                target,
                {"path": scope.path if scope else "", "round": r},
            )
            for r in range(rounds)
        ]

    def read_inputs(self, units: Sequence[UnitSpec]) -> dict[str, Any | Outcome]:
        found: dict[str, Any] = {}
        for unit in units:
            path = unit.payload["path"]
            parent_kind = self.store.taxonomy.node(path).kind if path else None
            kind = child_kind(parent_kind) if parent_kind else FIELD
            assert kind is not None
            found[unit.id] = {
                "path": path or "all human knowledge and capabilities",
                "parent_kind": parent_kind.label if parent_kind else "root",
                "child_kind": kind.label,
                "existing": [c.name for c in self.store.taxonomy.children(path or None)],
                "n": int(self.options.get("n", 10)),
            }
        return found

    def texts(self, unit: UnitSpec, value: Any) -> list[Text]:
        path = unit.payload["path"]
        parent = split_path(path)[-1] if path else None
        out: list[Text] = []
        for i, item in enumerate(value.items):
            out.append(Text("node", item.name, parent, "items", ("items", i)))
            out.append(Text("description", item.description, item=("items", i)))
        return out

    def write(self, unit: UnitSpec, outcome: Outcome, tx: Tx) -> None:
        path = unit.payload["path"]
        parent = self.store.taxonomy.node(path) if path else None
        kind = child_kind(parent.kind) if parent else FIELD
        assert kind is not None
        status = Status.APPROVED if self.options.get("auto_approve") else Status.PROPOSED
        rows: dict[str, dict[str, Any]] = {}
        parent_names = split_path(parent.path or "") if parent else []
        for item in outcome.value.items:
            name = validate_name(item.name, f"proposed {kind.label} name")
            nid = hierarchy_id(kind, name, parent.id if parent else None)
            rows.setdefault(
                nid,
                {
                    "id": nid,
                    "name": name,
                    "key": name_key(name),
                    "path": join_path([*parent_names, name]),
                    "description": item.description or None,
                    "status": str(status),
                    "source": str(Source.LLM),
                    **self.stamp(unit),
                },
            )
        self.store.nodes.upsert_nodes(kind, list(rows.values()), update_existing=False, tx=tx)
        if parent is not None:
            rel = CHILD_REL[parent.kind.label]
            self.store.nodes.upsert_edges(rel, [(parent.id, nid) for nid in rows], tx=tx)
