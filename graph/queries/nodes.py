"""Nodes and edges of any kind: create, update, look up by id, link, count, delete."""

from __future__ import annotations

from collections.abc import Sequence

from ..driver import Dialect
from ..model import (
    NodeKind,
    RelKind,
)
from .base import each_id, props_map, walk_from_ids


def create_nodes(d: Dialect, kind: NodeKind, props: Sequence[str]) -> str:
    return f"UNWIND $rows AS r CREATE (n:{d.q(kind.label)} {props_map(d, props)})"


def update_nodes(d: Dialect, kind: NodeKind, props: Sequence[str]) -> str:
    sets = ", ".join(f"n.{d.q(p)} = r.{d.q(p)}" for p in props if p != "id")
    return f"UNWIND $rows AS r MATCH (n:{d.q(kind.label)} {{id: r.id}}) SET {sets}"


def existing_ids(d: Dialect, kind: NodeKind) -> str:
    return f"UNWIND $ids AS x MATCH (n:{d.q(kind.label)} {{id: x}}) RETURN n.id AS id"


def get_node(d: Dialect, kind: NodeKind) -> str:
    return f"MATCH (n:{d.q(kind.label)} {{id: $id}}) RETURN n"


def get_nodes(d: Dialect, kind: NodeKind) -> str:
    return f"UNWIND $ids AS x MATCH (n:{d.q(kind.label)} {{id: x}}) RETURN n"


def existing_edges(d: Dialect, rel: RelKind, one: bool = False) -> str:
    """Every `rel` edge leaving the sources $ids (or $id). Reading a source's few edges is many
    times faster on the embedded engine than matching both ends of each pair."""
    w = walk_from_ids(d, rel.src.label, "a", one, "a JOIN (e JOIN b)")
    return (
        f"{w.head}MATCH {w.start}-[e:{d.q(rel.type)}]->(b:{d.q(rel.dst.label)}){w.order} "
        "RETURN a.id AS src, b.id AS dst"
    )


def create_edges(d: Dialect, rel: RelKind) -> str:
    # Two MATCH clauses, not one with a comma: the embedded engine then looks both ends
    # up by primary key instead of joining scans (about 100x faster).
    return (
        f"UNWIND $rows AS r MATCH (a:{d.q(rel.src.label)} {{id: r.src}}) "
        f"MATCH (b:{d.q(rel.dst.label)} {{id: r.dst}}) CREATE (a)-[:{d.q(rel.type)}]->(b)"
    )


def copy_from(d: Dialect, label: str) -> str:
    """Bulk load of a node or relationship table from a table passed as $rows."""
    return f"COPY {d.q(label)} FROM $rows"


def delete_edge(d: Dialect, rel: RelKind) -> str:
    return (
        f"MATCH (a:{d.q(rel.src.label)} {{id: $src}})-[e:{d.q(rel.type)}]->"
        f"(b:{d.q(rel.dst.label)} {{id: $dst}}) DELETE e"
    )


def delete_nodes(d: Dialect, kind: NodeKind) -> str:
    return f"UNWIND $ids AS x MATCH (n:{d.q(kind.label)} {{id: x}}) DETACH DELETE n"


def set_status(d: Dialect, kind: NodeKind) -> str:
    return (
        f"MATCH (n:{d.q(kind.label)} {{id: $id}}) "
        "SET n.status = $status, n.updated_at = $now RETURN n.id AS id"
    )


def count_label(d: Dialect, kind: NodeKind) -> str:
    return f"MATCH (n:{d.q(kind.label)}) RETURN count(n) AS n"


def linked_from(d: Dialect, rel: RelKind) -> str:
    """For each source id in $ids, the ids its `rel` edges point to.

    The source is matched first and carried over, as in linked_to: matched in one pattern,
    the embedded engine hashes the targets' whole table, which for the concepts of 500
    instructions (an API page) at GLAN scale needed more than a 512 MB page cache."""
    return (
        f"UNWIND $ids AS x MATCH (a:{d.q(rel.src.label)} {{id: x}}) WITH a, x "
        f"MATCH (a)-[:{d.q(rel.type)}]->(b:{d.q(rel.dst.label)}) RETURN x AS src, b.id AS dst"
    )


def linked_from_names(d: Dialect, rel: RelKind, one: bool = False) -> str:
    """For each source id in $ids, the id, name and position of what its `rel` edges point to
    (for targets that have a name and position: sessions, concepts)."""
    head, x = each_id(one)
    return (
        f"{head}MATCH (a:{d.q(rel.src.label)} {{id: {x}}})-[:{d.q(rel.type)}]->"
        f"(b:{d.q(rel.dst.label)}) RETURN {x} AS src, b.id AS dst, b.name AS name, "
        "b.position AS position"
    )


def linked_refs(d: Dialect, rel: RelKind, ref: str, one: bool = False) -> str:
    """For each source id in $ids, the engine's references (Dialect.node_ref, given as
    `ref` over `b`) of what its `rel` edges point to."""
    head, x = each_id(one)
    return (
        f"{head}MATCH (a:{d.q(rel.src.label)} {{id: {x}}})-[:{d.q(rel.type)}]->"
        f"(b:{d.q(rel.dst.label)}) RETURN {x} AS src, {ref} AS ref"
    )


def names_by_ref(d: Dialect, kind: NodeKind, ref: str) -> str:
    """Every node of a kind: its reference (`ref` over `n`), id, name and position."""
    return (
        f"MATCH (n:{d.q(kind.label)}) "
        f"RETURN {ref} AS ref, n.id AS id, n.name AS name, n.position AS position"
    )


def linked_to(d: Dialect, rel: RelKind) -> str:
    """For each target id in $ids, the ids of the nodes whose `rel` edges point at it.

    The target is matched first and carried over: matched in one pattern, the embedded
    engine hashes the sources' whole table (all the answers of the store) per read."""
    return (
        f"UNWIND $ids AS x MATCH (b:{d.q(rel.dst.label)} {{id: x}}) WITH b, x "
        f"MATCH (a:{d.q(rel.src.label)})-[:{d.q(rel.type)}]->(b) RETURN x AS dst, a.id AS src"
    )


def delete_edges_from(d: Dialect, rel: RelKind) -> str:
    return (
        f"UNWIND $ids AS x MATCH (a:{d.q(rel.src.label)} {{id: x}})-[e:{d.q(rel.type)}]->() "
        "DELETE e"
    )


def search(d: Dialect, kind: NodeKind) -> str:
    """Nodes of a kind whose normalized name contains $text, by id after $after."""
    return (
        f"MATCH (n:{d.q(kind.label)}) WHERE n.key CONTAINS $text AND n.id > $after "
        "RETURN n ORDER BY n.id LIMIT $limit"
    )


def table_columns(d: Dialect, label: str) -> str:
    """The property columns of an embedded table, in storage order (a label from the model,
    never user input, as a string literal: the procedure takes no parameter)."""
    return f"CALL table_info('{label}') RETURN *"
