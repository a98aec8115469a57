"""Where the data stands: counts below nodes, trees with counts, coverage and gaps.

Every figure comes from a fixed number of grouped queries, whatever the size of the
subtree. Above subjects they sum subject rollups (graph/rollups.py), which writes keep
current (one left stale, as by a bulk load, is recomputed first); at a subject or below
they walk the nodes themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from . import queries as Q
from .combinations import basic_space, join, subject_space
from .driver import Row
from .errors import InvalidInput
from .model import (
    CONCEPT,
    HIERARCHY,
    SESSION,
    SUBJECT,
    Status,
    join_path,
    split_path,
)
from .nodes import Nodes, Part, each
from .records import (
    COUNT_NAMES,
    LEVEL_INSTRUCTION,
    CombinationGap,
    ConceptGap,
    CoverageReport,
    CoverageRow,
    Gaps,
    Node,
    TreeNode,
    display_order,
    hierarchy_level,
    zero_counts,
)
from .rollups import Rollups
from .taxonomy import Taxonomy

#: Count names filled from subject rollups, and the rollup each sums.
_ROLLUP_COUNTS = {
    "sessions": "rollup_sessions",
    "concepts": "rollup_concepts",
    "instructions": "rollup_instructions",
    "responses": "rollup_responses",
}


class Coverage(Part):
    """Counts, trees, coverage reports and gaps over the taxonomy and what was generated."""

    def __init__(self, nodes: Nodes, taxonomy: Taxonomy, rollups: Rollups) -> None:
        super().__init__(nodes)
        self.taxonomy = taxonomy
        self.rollups = rollups

    def counts(self, path: str | None = None) -> dict[str, int]:
        """Visible descendants of each kind below a node (or in the whole store)."""
        node = self.taxonomy.node(path) if path else None
        first = node.level + 1 if node else 0
        if node is not None and node.hidden:
            return {COUNT_NAMES[t]: 0 for t in range(first, len(COUNT_NAMES))}
        return self._counts(node, None, first)[""]

    def counts_by_child(self, scope: Node | None, group_level: int) -> dict[str, dict[str, int]]:
        """For every visible node at `group_level` under scope: its descendant counts.

        Two queries (the hierarchy in one traversal, generated data in another), however
        large the subtree.
        """
        return self._counts(scope, group_level, group_level + 1)

    def counts_many(
        self, nodes: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, int]]:
        """Descendant counts of many nodes, each given as (id, path): what `counts(path)`
        gives, all zero when a node on that path is rejected (or the path does not reach
        the node). Keyed by path as well as id because a shared subject can be hidden along
        one path and not the other.

        At most three queries per level present, however many nodes: their paths (review
        states and parents), then the hierarchy and the generated data below every visible
        one (see _counts_at). A Concept has nothing below it to count: concepts cost none.
        """
        keys = list(dict.fromkeys(nodes))
        last = len(HIERARCHY) - 1
        level_of = {i: hierarchy_level(i) for i, _ in keys}
        countable = [i for i, lv in level_of.items() if lv is not None and lv < last]
        seen = self.taxonomy.paths_seen(countable)
        shown: dict[tuple[str, str], str | None] = {}  # visible key -> its parent's id
        for node_id, path in keys:
            where = seen.get(node_id, {}).get(path)
            if where is not None and not where.hidden:
                shown[(node_id, path)] = where.parent
        by_level: dict[int, dict[str, str | None]] = {}
        for (node_id, _), parent in shown.items():
            by_level.setdefault(level_of[node_id] or 0, {})[node_id] = parent
        found: dict[str, dict[str, int]] = {}
        for level, parent_of in sorted(by_level.items()):
            found.update(self._counts_at(level, parent_of))
        out: dict[tuple[str, str], dict[str, int]] = {}
        for key in keys:
            at = level_of[key[0]]
            if at is None:  # not a hierarchy node: nothing lies below it
                out[key] = {}
            else:
                below = found.get(key[0], {}) if key in shown else {}
                out[key] = {**zero_counts(at), **below}
        return out

    def _counts_at(
        self, level: int, parent_of: Mapping[str, str | None]
    ) -> dict[str, dict[str, int]]:
        """Counts below visible nodes of one level (id -> parent id on the path they were
        reached by). Nodes that share one parent, as a node's children do, are counted
        under it as counts_by_child does: a walk down from one node every engine finds by
        index. Any other set is one UNWIND over the ids, which the embedded engine answers
        by expanding the level and joining, slower for a few nodes but a fixed cost for
        many."""
        parents = set(parent_of.values())
        top, ids = level, list(parent_of)
        if len(parents) == 1 and None not in parents:
            (parent,) = parents
            top, ids = level - 1, [str(parent)]
        params = {"rejected": str(Status.REJECTED)}
        last = len(HIERARCHY) - 1
        out: dict[str, dict[str, int]] = {}
        build = partial(each, Q.count_levels, self.d, top, level, last)
        _add_counts(out, self.nodes.by_ids(build, ids, params, few=1), range(level + 1, last + 1))
        if level <= HIERARCHY.index(SESSION):
            build = partial(each, Q.count_generated, self.d, top, level)
            rows = self.nodes.by_ids(build, ids, params, few=1)
            _add_counts(out, rows, range(LEVEL_INSTRUCTION, len(COUNT_NAMES)))
        return {i: c for i, c in out.items() if i in parent_of}

    def _counts(
        self, scope: Node | None, group: int | None, first: int
    ) -> dict[str, dict[str, int]]:
        top = scope.level if scope else None
        subject = HIERARCHY.index(SUBJECT)
        if (top is None or top < subject) and (group is None or group <= subject):
            return self._counts_from_rollups(scope, group, first)
        params: dict[str, Any] = {"rejected": str(Status.REJECTED)}
        if scope:
            params["id"] = scope.id
        out: dict[str, dict[str, int]] = {}
        last = len(HIERARCHY) - 1
        if first <= last:
            query = Q.count_levels(self.d, top, group, last)
            _add_counts(out, self.driver.execute(query, params), range(first, last + 1))
        generated = range(max(first, len(HIERARCHY)), len(COUNT_NAMES))
        session = HIERARCHY.index(SESSION)
        if generated and (top is None or top <= session) and (group is None or group <= session):
            query = Q.count_generated(self.d, top, group)
            _add_counts(out, self.driver.execute(query, params), generated)
        if group is None:
            total = out.setdefault("", {})
            for lv in range(first, len(COUNT_NAMES)):
                total.setdefault(COUNT_NAMES[lv], 0)
        return out

    def tree(
        self,
        path: str | None = None,
        depth: int = 3,
        *,
        covered: bool = False,
        combinations: bool = False,
    ) -> TreeNode:
        """The subtree below a path (or all fields), `depth` levels deep, with counts.

        With `covered`, every node also gets its covered concepts: one more grouped query
        per level, so a chart can colour a whole tree by coverage without a query per node.
        With `combinations`, its combination space and the combinations used in it (see
        CoverageRow): summed from subject rollups down to subjects, walked for sessions.
        """
        if depth < 0:
            raise InvalidInput("depth must be 0 or more")
        scope = self.taxonomy.node(path) if path else None
        root = TreeNode(scope, scope.path or "" if scope else "")
        root.counts = self.counts(path)
        top_level = scope.level if scope else -1
        top = scope.level if scope else None
        params: dict[str, Any] = {"rejected": str(Status.REJECTED)}
        if scope:
            params["id"] = scope.id
        shown = not (scope and scope.hidden)
        subject = HIERARCHY.index(SUBJECT)
        if (covered or combinations) and shown and (top is None or top <= subject):
            self.rollups.refresh(scope)

        summed: dict[int | None, list[Row]] = {}

        def rollups_by(group: int | None) -> list[Row] | None:
            """The subject rollups summed per node at `group` (or of the scope), read once
            for covered concepts and combinations alike; None below subjects."""
            if not ((top is None or top <= subject) and (group is None or group <= subject)):
                return None
            if group not in summed:
                summed[group] = self.driver.execute(Q.sum_rollups(self.d, top, group), params)
            return summed[group]

        def covered_by(group: int | None) -> dict[str, int]:
            """Covered concepts per node at `group` (or of the scope): summed from subject
            rollups down to subjects, walked below them."""
            rows = rollups_by(group)
            if rows is not None:
                return {str(r.get("id", "")): int(r["rollup_covered"] or 0) for r in rows}
            rows = self.driver.execute(Q.covered_concepts(self.d, top, group), params)
            return {str(r.get("id", "")): int(r["n"] or 0) for r in rows}

        def combinations_by(group: int | None) -> dict[str, tuple[int, int]]:
            """(space, used) per node at `group` (or of the scope, keyed "")."""
            if top is not None and top > HIERARCHY.index(SESSION):
                return {}
            rows = rollups_by(group)
            if rows is not None:
                return {
                    str(r.get("id", "")): (_space_of(r), int(r["rollup_combos"] or 0)) for r in rows
                }
            if group is not None and group > HIERARCHY.index(SESSION):
                return {}
            query = Q.session_combinations(self.d, top, group)
            found = self.driver.execute(query, self._params(top, **params))
            return {str(r.get("id", "")): (basic_space(int(r["n"])), int(r["used"])) for r in found}

        if covered and shown:
            root.covered_concepts = covered_by(None).get("", 0)
        if combinations and shown:
            root.combination_space, root.combinations_used = combinations_by(None).get("", (0, 0))
        frontier: list[TreeNode] = [root]
        for level in range(top_level + 1, min(top_level + 1 + depth, len(HIERARCHY))):
            if not frontier:
                break
            kids: list[TreeNode] = []
            if level == 0:
                children = {"": self.taxonomy.children(None)}
            else:
                parent_kind = HIERARCHY[level - 1]
                ids = list(
                    dict.fromkeys(t.node.id for t in frontier if t.node and not t.node.hidden)
                )
                children = {}
                # a few parents (a subject's sessions) one at a time, by key: the embedded
                # engine joins a list of ids with the whole child table, the 1.9M concepts
                # of a GLAN-scale store, which needed more than a 512 MB page cache
                build = partial(Q.children_of_many, self.d, parent_kind)
                for r in self.nodes.by_ids(build, ids):
                    children.setdefault(r["parent"], []).append(Node.from_row(r["c"]))
            counts = self.counts_by_child(scope, level) if shown else {}
            covers: dict[str, int] = {}
            if covered and shown and level <= HIERARCHY.index(CONCEPT):
                covers = covered_by(level)
            spaces = combinations_by(level) if combinations and shown else {}
            for t in frontier:
                key = t.node.id if t.node else ""
                for shared in sorted(children.get(key, []), key=display_order):
                    # a shared subject appears once per parent, each with its own path
                    child = Node(shared.kind, shared.props)
                    child.path = (
                        join_path([*split_path(t.path), child.name])
                        if t.path
                        else (join_path([child.name]))
                    )
                    child.hidden = (t.node.hidden if t.node else False) or (
                        child.status == Status.REJECTED
                    )
                    node = TreeNode(child, child.path)
                    if not child.hidden:
                        found = counts.get(child.id, {})
                        node.counts = {
                            COUNT_NAMES[t]: found.get(COUNT_NAMES[t], 0)
                            for t in range(level + 1, len(COUNT_NAMES))
                        }
                        node.covered_concepts = covers.get(child.id, 0)
                        space, used = spaces.get(child.id, (0, 0))
                        node.combination_space, node.combinations_used = space, used
                    t.children.append(node)
                    kids.append(node)
            frontier = kids
        return root

    def _counts_from_rollups(
        self, scope: Node | None, group: int | None, first: int
    ) -> dict[str, dict[str, int]]:
        """_counts above subjects, as `report` counts: the levels down to subjects walked,
        what lies below each subject summed from the rollups (recomputed first where one is
        stale).

        Walking every concept and instruction instead, grouped by the nodes of a level, the
        embedded engine needed more than a 512 MB page cache at GLAN scale for each level of
        a three-level tree (13 s when it had the memory); the walk to subjects takes a
        fraction of it."""
        top = scope.level if scope else None
        params: dict[str, Any] = {"rejected": str(Status.REJECTED)}
        if scope:
            params["id"] = scope.id
        self.rollups.refresh(scope)
        subject = HIERARCHY.index(SUBJECT)
        out: dict[str, dict[str, int]] = {}
        if first <= subject:
            query = Q.count_levels(self.d, top, group, subject)
            _add_counts(out, self.driver.execute(query, params), range(first, subject + 1))
        for row in self.driver.execute(Q.sum_rollups(self.d, top, group), params):
            counts = out.setdefault(str(row.get("id", "")), {})
            for name, rollup in _ROLLUP_COUNTS.items():
                counts[name] = int(row.get(rollup) or 0)
        if group is None:
            total = out.setdefault("", {})
            for lv in range(first, len(COUNT_NAMES)):
                total.setdefault(COUNT_NAMES[lv], 0)
        return out

    def report(self, path: str | None = None) -> CoverageReport:
        """Where a dataset stands: counts, concept and combination coverage, gaps.

        For the node and each child, computed in the database with a fixed number of
        grouped queries whatever the size of the subtree. Above subjects, what lies below
        each subject comes from its rollup (which writes keep current; one left stale is
        recomputed first, and finding none costs one pass over the subjects),
        so the queries walk the taxonomy down to subjects, not every concept and
        instruction; a subject or session is small enough to walk whole.
        """
        scope = self.taxonomy.node(path) if path else None
        if scope is not None and scope.level >= HIERARCHY.index(SUBJECT):
            return self.report_by_walk(scope)
        self.rollups.refresh(scope)
        top = scope.level if scope else None
        group = top + 1 if top is not None else 0
        total = CoverageRow(scope, scope.path or "" if scope else "")
        children = self.taxonomy.children(path)
        rows = {c.id: CoverageRow(c, c.path or "") for c in children if not c.hidden}
        hidden = scope is not None and scope.hidden
        if hidden:
            rows = {}
        params: dict[str, Any] = {"rejected": str(Status.REJECTED)}
        if scope:
            params["id"] = scope.id
        subject = HIERARCHY.index(SUBJECT)
        found: dict[str, dict[str, int]] = {}
        if not hidden:
            levels = range(group, subject + 1)
            query = Q.count_levels(self.d, top, None, subject)
            found[""] = {
                f"c{lv}": r[f"c{lv}"] for r in self.driver.execute(query, params) for lv in levels
            }
            for r in self.driver.execute(Q.sum_rollups(self.d, top, None), params):
                found[""].update(r)
            if rows and group < subject:
                for r in self.driver.execute(Q.count_levels(self.d, top, group, subject), params):
                    found.setdefault(r["id"], {}).update(r)
            if rows:
                for r in self.driver.execute(Q.sum_rollups(self.d, top, group), params):
                    found.setdefault(r["id"], {}).update(r)
        for key, row in [("", total), *rows.items()]:
            values = found.get(key, {})
            first = (row.node.level + 1) if row.node else 0
            row.counts = {
                COUNT_NAMES[lv]: int(values.get(f"c{lv}") or 0) for lv in range(first, subject + 1)
            }
            for name, rollup in _ROLLUP_COUNTS.items():
                row.counts[name] = int(values.get(rollup) or 0)
            row.covered_concepts = int(values.get("rollup_covered") or 0)
            row.combinations = int(values.get("rollup_combos") or 0)
            row.combination_space = _space_of(values)
            row.combinations_used = row.combinations
        if not hidden:
            self._extras(self._childless(top), top, group, params, total, rows)
        ordered = [CoverageRow(c, c.path or "") for c in children if c.hidden]
        return CoverageReport(total, sorted([*rows.values(), *ordered], key=_row_order))

    def _extras(
        self,
        extras: Sequence[tuple[str, Callable[[int | None], str], int]],
        top: int | None,
        group: int,
        params: Mapping[str, Any],
        total: CoverageRow,
        rows: Mapping[str, CoverageRow],
    ) -> None:
        """Fill coverage figures that each take one query for the total and one grouped by
        child: (attribute, query builder for a grouping level, deepest level it applies to)."""
        for name, build, deepest in extras:
            if top is not None and top > deepest:
                continue
            found = self.driver.execute(build(None), params)
            setattr(total, name, int(found[0]["n"]) if found else 0)
            if rows and group <= deepest:
                for r in self.driver.execute(build(group), params):
                    if r["id"] in rows:
                        setattr(rows[r["id"]], name, int(r["n"]))

    def _childless(self, top: int | None) -> list[tuple[str, Callable[[int | None], str], int]]:
        """Subjects without a syllabus and disciplines without subjects: whether a node has
        children at all, which no rollup holds."""
        return [
            ("subjects_without_syllabus", partial(Q.childless, self.d, top, level=3), 3),
            ("disciplines_without_subjects", partial(Q.childless, self.d, top, level=2), 2),
        ]

    def report_by_walk(self, scope: Node | None) -> CoverageReport:
        """Coverage by walking every node and instruction below the scope: what the rollups
        must add up to, and how a subject or session is covered."""
        path = scope.path if scope else None
        top = scope.level if scope else None
        group = scope.level + 1 if scope else 0
        params: dict[str, Any] = {"rejected": str(Status.REJECTED)}
        if scope:
            params["id"] = scope.id
        total = CoverageRow(scope, scope.path or "" if scope else "", self.counts(path))
        children = self.taxonomy.children(path) if group < len(HIERARCHY) else []
        zeros = {COUNT_NAMES[t]: 0 for t in range(group + 1, len(COUNT_NAMES))}
        rows = {c.id: CoverageRow(c, c.path or "", dict(zeros)) for c in children if not c.hidden}
        if scope is not None and scope.hidden:
            rows = {}
        else:
            if rows:
                for cid, counts in self.counts_by_child(scope, group).items():
                    if cid in rows:
                        rows[cid].counts.update(counts)
            walked: list[tuple[str, Callable[[int | None], str], int]] = [
                ("covered_concepts", partial(Q.covered_concepts, self.d, top), 5),
                ("combinations", partial(Q.covered_combos, self.d, top), 5),
            ]
            self._extras(walked + self._childless(top), top, group, params, total, rows)
            self._walked_combinations(top, group, self._params(top, **params), total, rows)
        ordered = [CoverageRow(c, c.path or "") for c in children if c.hidden]
        return CoverageReport(total, sorted([*rows.values(), *ordered], key=_row_order))

    def _walked_combinations(
        self,
        top: int | None,
        group: int,
        params: Mapping[str, Any],
        total: CoverageRow,
        rows: Mapping[str, CoverageRow],
    ) -> None:
        """The combination space of the scope and of each child, walked from the sessions
        (what the subject rollups must add up to): a subject's space from its sessions'
        sizes, a session's its own basic one with the combinations asked from it alone."""
        total_row = total.node.id if total.node else ""
        session = HIERARCHY.index(SESSION)
        if top is not None and top >= session:  # a session: its own basic combinations
            if top == session:
                found = self.driver.execute(Q.session_combinations(self.d, top, None), params)
                for r in found:
                    total.combination_space = basic_space(int(r["n"]))
                    total.combinations_used = int(r["used"])
            return
        sizes: dict[str, dict[str, list[int]]] = {}  # group node -> subject -> its sizes
        for r in self.driver.execute(Q.session_combinations(self.d, top, None), params):
            sizes.setdefault(total_row, {}).setdefault(r["subject"], []).append(int(r["n"]))
        if rows and group <= session:
            query = Q.session_combinations(self.d, top, group)
            for r in self.driver.execute(query, params):
                if r["id"] not in rows:
                    continue
                if group == session:
                    rows[r["id"]].combination_space = basic_space(int(r["n"]))
                    rows[r["id"]].combinations_used = int(r["used"])
                else:
                    sizes.setdefault(r["id"], {}).setdefault(r["subject"], []).append(int(r["n"]))
        for key, row in [(total_row, total), *rows.items()]:
            if key in sizes:
                row.combination_space = sum(subject_space(s) for s in sizes[key].values())
                row.combinations_used = row.combinations

    @staticmethod
    def _params(top: int | None, **more: Any) -> dict[str, Any]:
        """The parameters of a read under a scope at `top` (its id, if any, in `more`)."""
        return {"rejected": str(Status.REJECTED), "approved": str(Status.APPROVED), **more}

    def gaps(
        self,
        path: str | None = None,
        limit: int = 10,
        *,
        min_count: int = 0,
        thinnest: bool = False,
    ) -> Gaps:
        """The least covered concepts under a path and its subjects without a syllabus,
        `limit` of each, in two queries whatever the size of the subtree: what a reviewer
        looks at to decide where to generate next.

        With `min_count`, also the approved concepts fewer instructions cover (`limit` of
        them, fewest first, and their number); with `thinnest`, the subjects (from their
        rollups) and sessions (walked) whose combination space is least asked about."""
        if limit < 1:
            raise InvalidInput("limit must be 1 or more")
        if min_count < 0:
            raise InvalidInput("min_count must be 0 or more")
        scope = self.taxonomy.node(path) if path else None
        where = scope.path or "" if scope else ""
        if scope is not None and scope.hidden:
            return Gaps(where, [], [], min_count=min_count)
        top = scope.level if scope else None
        params: dict[str, Any] = {"rejected": str(Status.REJECTED), "limit": limit}
        if scope:
            params["id"] = scope.id
        least = [
            ConceptGap(Node.from_row(r["c"]), r["subject"] or "", r["session"] or "", int(r["k"]))
            for r in self.driver.execute(Q.least_covered_concepts(self.d, top), params)
        ]
        without: list[Node] = []
        if top is None or top <= HIERARCHY.index(SUBJECT):
            rows = self.driver.execute(Q.subjects_without_syllabus(self.d, top), params)
            without = [Node.from_row(r["s"]) for r in rows]
        gaps = Gaps(where, least, without, min_count=min_count)
        wider = self._params(top, limit=limit, min=min_count, **({"id": scope.id} if scope else {}))
        if min_count > 0:
            found = self.driver.execute(Q.concepts_below(self.d, top), wider)
            gaps.below_min = [
                ConceptGap(
                    Node.from_row(r["c"]), r["subject"] or "", r["session"] or "", int(r["k"])
                )
                for r in found
            ]
            counted = self.driver.execute(Q.concepts_below(self.d, top, count=True), wider)
            gaps.below_min_count = int(counted[0]["n"]) if counted else 0
        if thinnest:
            self._thinnest(scope, top, wider, gaps)
        return gaps

    def _thinnest(
        self, scope: Node | None, top: int | None, params: Mapping[str, Any], gaps: Gaps
    ) -> None:
        """The subjects and sessions under the scope whose combination space is least asked
        about: subjects from their rollups (brought up to date first), sessions walked."""
        session = HIERARCHY.index(SESSION)
        if top is None or top <= HIERARCHY.index(SUBJECT):
            self.rollups.refresh(scope)
            for r in self.driver.execute(Q.thinnest_subjects(self.d, top), params):
                node = Node.from_row(r["s"])
                space = _space_of(node.props)
                used = int(node.props.get("rollup_combos") or 0)
                gaps.thinnest_subjects.append(CombinationGap(node, "", space, used))
        if top is None or top <= session:
            query = Q.session_combinations(self.d, top, None, thinnest=True)
            for r in self.driver.execute(query, params):
                space = basic_space(int(r["n"]))
                gaps.thinnest_sessions.append(
                    CombinationGap(Node.from_row(r["s"]), r["subject"] or "", space, int(r["used"]))
                )


def _add_counts(out: dict[str, dict[str, int]], rows: list[Row], levels: range) -> None:
    """Put the c<level> columns of count rows under their node's id ("" without one)."""
    for row in rows:
        counts = out.setdefault(str(row.get("id", "")), {})
        for lv in levels:
            counts[COUNT_NAMES[lv]] = int(row.get(f"c{lv}") or 0)


def _space_of(values: Mapping[str, Any]) -> int:
    """The combination space summed rollups hold (see graph/combinations.py)."""
    return join(int(values.get("rollup_space_hi") or 0), int(values.get("rollup_space_lo") or 0))


def _row_order(row: CoverageRow) -> tuple[int, str]:
    return display_order(row.node) if row.node else (0, "")
