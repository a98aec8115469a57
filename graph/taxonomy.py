"""The taxonomy: fields > sub-fields > disciplines > subjects > sessions > concepts.

Paths and how they resolve (case and spacing ignored, `\\/` inside a name), children in
syllabus or name order, every path of a shared subject, and the edits a reviewer makes:
add, update, link, review (approve/reject hides a subtree) and delete. Also the seed load,
and the scope a generation job runs under (approved nodes only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from . import queries as Q
from .driver import Tx, batched
from .errors import CycleError, InvalidInput, NodeNotFound, ScopeNotApproved, WrongKind
from .model import (
    CHILD_REL,
    FIELD,
    HIERARCHY,
    INSTRUCTION,
    MAX_NAME_LENGTH,
    PARENT_REL,
    RESPONSE,
    SESSION,
    SHARED_KINDS,
    SUBJECT,
    TURN,
    NodeKind,
    Source,
    Status,
    child_kind,
    hierarchy_id,
    join_path,
    name_key,
    split_path,
)
from .nodes import Nodes, Part, each
from .records import (
    LoadReport,
    Node,
    display_order,
    hierarchy_level,
    now_iso,
    validate_name,
    validate_text,
)
from .rollups import EMPTY_ROLLUP, Rollups


class Taxonomy(Part):
    """Paths, children and the edits to the hierarchy; edits below a subject recompute its
    rollup in their own transaction."""

    def __init__(self, nodes: Nodes, rollups: Rollups) -> None:
        super().__init__(nodes)
        self.rollups = rollups

    def resolve(self, path: str) -> list[Node]:
        """The nodes named by a path, top down. Raises NodeNotFound naming the missing part."""
        names = _path_names(path)
        params: dict[str, Any] = {f"k{i}": name_key(n) for i, n in enumerate(names)}
        rows = self.driver.execute(Q.resolve_path(self.d, len(names)), params)
        if not rows:
            raise NodeNotFound(path, self._missing_part(names))
        row = rows[0]
        nodes: list[Node] = []
        hidden = False
        for i in range(len(names)):
            node = Node.from_row(row[f"n{i}"])
            hidden = hidden or node.status == Status.REJECTED
            node.path = join_path([n.name for n in nodes] + [node.name])
            node.hidden = hidden
            nodes.append(node)
        return nodes

    def _missing_part(self, names: list[str]) -> str:
        """Find the first segment that does not exist, for the error message."""
        for depth in range(1, len(names)):
            params = {f"k{i}": name_key(n) for i, n in enumerate(names[:depth])}
            if not self.driver.execute(Q.resolve_path(self.d, depth), params):
                return f"{join_path(names[:depth])!r} does not exist"
        kind = HIERARCHY[len(names) - 1]
        return f"no {kind.label} named {names[-1]!r} under {join_path(names[:-1]) or 'the root'}"

    def node(self, path: str) -> Node:
        return self.resolve(path)[-1]

    def children(self, path: str | None = None) -> list[Node]:
        """Children of the node at `path` (fields when None), in syllabus or name order."""
        if not path:
            rows = self.driver.execute(Q.roots(self.d))
            parent_path, hidden = "", False
        else:
            parent = self.node(path)
            if child_kind(parent.kind) is None:
                return []
            rows = self.driver.execute(Q.children(self.d, parent.kind), {"id": parent.id})
            parent_path, hidden = parent.path or "", parent.hidden
        nodes = [Node.from_row(r["c" if "c" in r else "n"]) for r in rows]
        for n in nodes:
            n.path = (
                join_path([*split_path(parent_path), n.name])
                if parent_path
                else join_path([n.name])
            )
            n.hidden = hidden or n.status == Status.REJECTED
        return sorted(nodes, key=display_order)

    def children_of_many(self, paths: Sequence[str]) -> dict[str, list[Node]]:
        """Children of each path ("": the fields) as `children` gives them, paths and hidden
        flags included: one query per depth of the parents, each resolving its paths and
        reading their children in the same walk. A path that names nothing raises
        NodeNotFound, as `children` does."""
        out: dict[str, list[Node]] = {}
        by_depth: dict[int, dict[str, list[str]]] = {}
        for path in dict.fromkeys(paths):
            names = _path_names(path) if path else []
            by_depth.setdefault(len(names), {})[path] = names
        if 0 in by_depth:
            fields = self.children(None)
            out.update(dict.fromkeys(by_depth.pop(0), fields))
        for depth, named in sorted(by_depth.items()):
            found: dict[str, list[Node]] = {}
            for batch in batched(list(named.items()), self.batch_size):
                rows = [
                    {"path": path, **{f"k{i}": name_key(n) for i, n in enumerate(names)}}
                    for path, names in batch
                ]
                query = Q.children_at_paths(self.d, depth)
                for r in self.driver.execute(query, {"rows": rows}):
                    kids = found.setdefault(r["path"], [])
                    if r.get("c") is None:
                        continue
                    child = Node.from_row(r["c"])
                    levels = range(depth)
                    child.path = join_path([*(r[f"name{lv}"] for lv in levels), child.name])
                    child.hidden = child.status == Status.REJECTED or any(
                        r[f"status{lv}"] == Status.REJECTED for lv in levels
                    )
                    kids.append(child)
            for path, names in named.items():
                if path not in found:
                    raise NodeNotFound(path, self._missing_part(names))
                out[path] = sorted(found[path], key=display_order)
        return {path: out[path] for path in dict.fromkeys(paths)}

    def paths_of(self, node_id: str) -> list[str]:
        """Every path that reaches a hierarchy node (several for a shared subject)."""
        return self.paths_of_many([node_id])[node_id]

    def paths_of_many(self, ids: Sequence[str]) -> dict[str, list[str]]:
        """Every path of each hierarchy node, sorted; [] for an id that names no node or a
        node outside the hierarchy. One query per level present, however many ids."""
        return {i: sorted(found) for i, found in self.paths_seen(ids).items()}

    def paths_seen(self, ids: Sequence[str]) -> dict[str, dict[str, PathSeen]]:
        """For each id: each of its paths -> whether it is hidden there, and its parent."""
        out: dict[str, dict[str, PathSeen]] = {i: {} for i in ids}
        by_level: dict[int, list[str]] = {}
        for i in out:
            level = hierarchy_level(i)
            if level is not None:
                by_level.setdefault(level, []).append(i)
        for level, level_ids in sorted(by_level.items()):
            build = partial(each, Q.paths_of_many, self.d, level)
            for r in self.nodes.by_ids(build, level_ids, few=1):
                levels = range(level + 1)
                path = join_path([r[f"name{lv}"] for lv in levels])
                hidden = any(r[f"status{lv}"] == Status.REJECTED for lv in levels)
                out[r["id"]][path] = PathSeen(hidden, r.get("parent"))
        return out

    def add_node(
        self,
        parent_path: str | None,
        kind: NodeKind,
        name: str,
        *,
        source: Source = Source.USER,
        status: Status = Status.APPROVED,
        props: Mapping[str, Any] | None = None,
    ) -> Node:
        """Insert one node under a parent, checking the kind fits. Adding it again is a no-op.

        A subject that already exists under another discipline is linked, not duplicated.
        """
        name = validate_name(name, f"{kind.label} name")
        extra = dict(props or {})
        bad = set(extra) - set(kind.prop_names) | ({"id", "key", "name"} & set(extra))
        if bad:
            raise InvalidInput(f"{kind.label} cannot take properties {sorted(bad)}")
        validate_text(extra)
        if kind not in HIERARCHY:
            raise WrongKind(f"{kind.label} is not part of the knowledge hierarchy", kind=kind.label)
        parent: Node | None = None
        above: list[Node] = []
        if parent_path:
            above = self.resolve(parent_path)
            parent = above[-1]
            expected = child_kind(parent.kind)
            if expected is not kind:
                raise WrongKind(
                    f"a {kind.label} cannot go under the {parent.kind.label} {parent.path!r}: "
                    + (
                        f"only a {expected.label} can"
                        if expected
                        else f"a {parent.kind.label} has no children"
                    ),
                    parent_kind=parent.kind.label,
                    kind=kind.label,
                )
        elif kind is not FIELD:
            raise WrongKind(
                f"a {kind.label} needs a parent path; only a Field sits at the top",
                kind=kind.label,
            )
        node_id = hierarchy_id(kind, name, parent.id if parent else None)
        row: dict[str, Any] = {
            "id": node_id,
            "name": name,
            "key": name_key(name),
            "status": str(status),
            "source": str(source),
            **extra,
        }
        if "path" in kind.prop_names:
            row["path"] = join_path([*(split_path(parent.path or "") if parent else []), name])
        if kind is SUBJECT:  # nothing below it yet (a subject already there keeps its own)
            row.update(EMPTY_ROLLUP)
        with self.driver.transaction() as tx:
            if "position" in kind.prop_names and row.get("position") is None and parent:
                row["position"] = len(self._children_ids(parent, tx))
            self.nodes.upsert_nodes(kind, [row], update_existing=False, tx=tx)
            if parent is not None:
                self.nodes.upsert_edges(CHILD_REL[parent.kind.label], [(parent.id, node_id)], tx=tx)
            self.rollups.recompute(_subject_above(above, len(above)), tx=tx)
        path = join_path([*(split_path(parent.path or "") if parent else []), name])
        return self.node(path)

    def _children_ids(self, parent: Node, tx: Tx) -> list[str]:
        rows = tx.execute(Q.children(self.d, parent.kind), {"id": parent.id})
        return [r["c"]["id"] for r in rows]

    def update_node(self, path: str, props: Mapping[str, Any]) -> Node:
        """Change a node's descriptive properties (not its name: the name makes its id)."""
        node = self.node(path)
        allowed = {"description", "level", "subtopics"} & set(node.kind.prop_names)
        bad = set(props) - allowed
        if bad:
            raise InvalidInput(
                f"cannot update {sorted(bad)} on a {node.kind.label}; "
                f"updatable: {', '.join(sorted(allowed))}"
            )
        validate_text(props)
        if props:
            self.nodes.upsert_nodes(node.kind, [{"id": node.id, **props}])
        return self.node(path)

    def search(
        self,
        text: str,
        kinds: Sequence[NodeKind] = HIERARCHY,
        *,
        limit: int = 50,
        after: str = "",
    ) -> list[Node]:
        """Nodes whose name contains `text` (case and spacing ignored), ordered by id."""
        if len(text) > MAX_NAME_LENGTH:
            raise InvalidInput(
                f"search text is {len(text):,} characters long; the limit is {MAX_NAME_LENGTH}"
            )
        needle = name_key(text)
        if not needle:
            raise InvalidInput("search text is empty")
        found: list[Node] = []
        for kind in kinds:
            params = {"text": needle, "after": after, "limit": limit}
            found += [
                Node.from_row(r["n"]) for r in self.driver.execute(Q.search(self.d, kind), params)
            ]
        found.sort(key=lambda n: n.id)
        return found[:limit]

    def link(self, parent_path: str, child_path: str) -> Node:
        """Put an existing subject under one more discipline (the paper keeps such repeats)."""
        parent = self.node(parent_path)
        child = self.node(child_path)
        ancestors = {n.id for n in self.resolve(parent_path)}
        for p in self.paths_of(parent.id):
            ancestors.update(n.id for n in self.resolve(p))
        if child.id in ancestors:
            raise CycleError(
                f"cannot put {child.path!r} under {parent.path!r}: it is that node or one of "
                "its ancestors, which would make a cycle"
            )
        if child_kind(parent.kind) is not child.kind:
            raise WrongKind(
                f"a {child.kind.label} cannot go under a {parent.kind.label}",
                parent_kind=parent.kind.label,
                kind=child.kind.label,
            )
        if child.kind.label not in SHARED_KINDS:
            raise InvalidInput(
                f"only subjects may belong to several parents; {child.path!r} is a "
                f"{child.kind.label}"
            )
        self.nodes.upsert_edges(CHILD_REL[parent.kind.label], [(parent.id, child.id)])
        return self.node(join_path([*split_path(parent.path or ""), child.name]))

    def review(self, path: str, status: Status) -> Node:
        """Approve, reject or re-propose a node. Rejecting hides its subtree; nothing is lost."""
        nodes = self.resolve(path)
        node = nodes[-1]
        with self.driver.transaction() as tx:
            tx.execute(
                Q.set_status(self.d, node.kind),
                {"id": node.id, "status": str(status), "now": now_iso()},
            )
            self.rollups.recompute(_subject_above(nodes, len(nodes) - 1), tx=tx)
        return self.node(path)

    def delete_subtree(self, path: str) -> dict[str, int]:
        """Delete a node and everything below it that has no other parent.

        A shared subject reached through this path is only unlinked from it.
        """
        nodes = self.resolve(path)
        node = nodes[-1]
        top = node.level
        if node.kind.label in SHARED_KINDS and len(nodes) > 1:
            parents = self.driver.execute(Q.parents(self.d, node.kind), {"id": node.id})
            if len(parents) > 1:
                rel = PARENT_REL[node.kind.label]
                self.driver.execute(
                    Q.delete_edge(self.d, rel), {"src": nodes[-2].id, "dst": node.id}
                )
                return {"unlinked": 1}
        doomed: dict[int, list[str]] = {top: [node.id]}
        for level in range(top + 1, len(HIERARCHY)):
            kind = HIERARCHY[level]
            ids = self._ids_below(doomed[level - 1], HIERARCHY[level - 1])
            if kind.label in SHARED_KINDS and ids:
                keep = {
                    r["id"]
                    for r in self.driver.execute(
                        Q.other_parent_ids(self.d, kind), {"ids": ids, "parents": doomed[level - 1]}
                    )
                }
                ids = [i for i in ids if i not in keep]
            doomed[level] = ids
        session_ids = doomed.get(HIERARCHY.index(SESSION), [])
        instruction_ids = self.nodes.column(Q.instruction_ids_from_sessions(self.d), session_ids)
        response_ids = self.nodes.column(Q.response_ids_for(self.d), instruction_ids)
        turn_ids = self.nodes.column(Q.turn_ids_for(self.d), response_ids)
        counts: dict[str, int] = {}
        with self.driver.transaction() as tx:
            for kind, ids in [
                (TURN, turn_ids),
                (RESPONSE, response_ids),
                (INSTRUCTION, instruction_ids),
                *[(HIERARCHY[lv], doomed[lv]) for lv in sorted(doomed, reverse=True)],
            ]:
                for batch in batched(ids, self.batch_size):
                    tx.execute(Q.delete_nodes(self.d, kind), {"ids": batch})
                counts[kind.label] = len(ids)
            self.rollups.recompute(_subject_above(nodes, len(nodes) - 1), tx=tx)
        return counts

    def _ids_below(self, parent_ids: list[str], parent_kind: NodeKind) -> list[str]:
        out: list[str] = []
        for batch in batched(parent_ids, self.batch_size):
            rows = self.driver.execute(Q.children_of_many(self.d, parent_kind), {"ids": batch})
            out.extend(r["c"]["id"] for r in rows)
        return list(dict.fromkeys(out))

    def load(self, data: Mapping[str, Any], *, source: Source = Source.SEED) -> LoadReport:
        """Load fields > sub-fields > disciplines. Existing nodes are left as they are, so a
        second load changes nothing and a node a reviewer rejected stays rejected."""
        fields = data.get("fields") if isinstance(data, Mapping) else None
        if not isinstance(fields, Mapping) or not fields:
            raise InvalidInput("a taxonomy file needs a non-empty 'fields:' mapping")
        rows: dict[str, list[dict[str, Any]]] = {k.label: [] for k in HIERARCHY[:3]}
        edges: dict[str, list[tuple[str, str]]] = {k.label: [] for k in HIERARCHY[:2]}
        for fname, subfields in fields.items():
            fname = validate_name(fname, "field name")
            fid = hierarchy_id(HIERARCHY[0], fname, None)
            rows[HIERARCHY[0].label].append(self._seed_row(fid, fname, [fname], source))
            if not isinstance(subfields, Mapping):
                raise InvalidInput(f"field {fname!r} must map sub-field names to disciplines")
            for sname, disciplines in subfields.items():
                sname = validate_name(sname, f"sub-field name under {fname!r}")
                sid = hierarchy_id(HIERARCHY[1], sname, fid)
                rows[HIERARCHY[1].label].append(self._seed_row(sid, sname, [fname, sname], source))
                edges[HIERARCHY[0].label].append((fid, sid))
                if not isinstance(disciplines, list):
                    raise InvalidInput(f"sub-field {sname!r} must list its disciplines")
                for dname in disciplines:
                    dname = validate_name(dname, f"discipline name under {sname!r}")
                    did = hierarchy_id(HIERARCHY[2], dname, sid)
                    rows[HIERARCHY[2].label].append(
                        self._seed_row(did, dname, [fname, sname, dname], source)
                    )
                    edges[HIERARCHY[1].label].append((sid, did))
        report = LoadReport()
        with self.driver.transaction() as tx:
            for kind in HIERARCHY[:3]:
                res = self.nodes.upsert_nodes(kind, rows[kind.label], update_existing=False, tx=tx)
                report.created[kind.label] = res.created
                report.existing[kind.label] = res.unchanged
            for kind in HIERARCHY[:2]:
                self.nodes.upsert_edges(CHILD_REL[kind.label], edges[kind.label], tx=tx)
        return report

    @staticmethod
    def _seed_row(node_id: str, name: str, names: list[str], source: Source) -> dict[str, Any]:
        return {
            "id": node_id,
            "name": name,
            "key": name_key(name),
            "path": join_path(names),
            "status": str(Status.APPROVED),
            "source": str(source),
        }

    def scope(self, path: str | None) -> Node | None:
        """The node a generation job runs under (None: everything).

        Generation only uses approved nodes, so a path through a proposed or rejected node
        is refused with the node to review.
        """
        if not path:
            return None
        nodes = self.resolve(path)
        for n in nodes:
            if n.status != Status.APPROVED:
                raise ScopeNotApproved(n.path or path, str(n.status))
        return nodes[-1]

    def scope_params(self, scope: Node | None) -> dict[str, Any]:
        """The parameters of a read confined to approved nodes under a scope."""
        params: dict[str, Any] = {"approved": str(Status.APPROVED)}
        if scope is not None:
            params["id"] = scope.id
        return params

    def ids_in_scope(self, scope: Node | None, kind: NodeKind) -> list[str]:
        """Ids of `kind` under the scope reachable through approved nodes, sorted."""
        level = HIERARCHY.index(kind)
        top = scope.level if scope else None
        if scope is not None and scope.level > level:
            raise WrongKind(f"{scope.path!r} is a {scope.kind.label}: no {kind.label} below it")
        if scope is not None and scope.level == level:
            return [scope.id]
        rows = self.driver.execute(Q.scope_ids(self.d, top, level), self.scope_params(scope))
        return sorted(r["id"] for r in rows)


def _subject_above(path: Sequence[Node], level: int) -> list[str]:
    """The subject on a resolved path whose rollup a change at `level` changes: a change to
    a session or concept; none for a change at the subject or above."""
    subject = HIERARCHY.index(SUBJECT)
    return [path[subject].id] if level > subject else []


@dataclass(frozen=True)
class PathSeen:
    """A node as one of its paths sees it."""

    hidden: bool
    #: id of the node above it on that path (None for a Field)
    parent: str | None


def _path_names(path: str) -> list[str]:
    """The names of a path, or NodeNotFound saying why it cannot name a node."""
    try:
        names = split_path(path)
    except ValueError as exc:
        raise NodeNotFound(path, str(exc)) from exc
    if not names:
        raise NodeNotFound(path, "the path is empty")
    if len(names) > len(HIERARCHY):
        raise NodeNotFound(path, f"paths are at most {len(HIERARCHY)} deep (Field/.../Concept)")
    return names
