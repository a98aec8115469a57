"""The CLI's way to the store while a server holds it: the server's GraphQL API.

The embedded engine lets one process open a database. While `glan serve` holds it, the CLI
finds the server by the record it leaves beside the database (server/discovery.py), or is
told where it is by GLAN_SERVER_URL, and sends its commands to the API: reads as queries,
edits as mutations, and `generate` as a generation mutation whose job it then follows over
a websocket (graphql-transport-ws) to its end. Each answer becomes the view the local run
builds (server/views.py), so a command prints the same either way.

With GLAN_API_TOKEN set here, every request carries `Authorization: Bearer <token>`; a
server that wants a token and gets none (or another) is reported as such.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import SecretStr

from generators.cleaning import BenchmarkSpec, ContaminationResult, Mark
from generators.jobs import Progress
from generators.pipeline import PipelineOptions
from graph.errors import GlanError
from graph.model import HIERARCHY, Status
from graph.records import COUNT_NAMES

from .denial import DENIED
from .views import NodeView, TreeView, counts_below, level_of, removed_view, show_info

#: How many levels one `subtree` query returns (the API's limit); deeper trees are asked for
#: below the deepest nodes of the first answer, level by level.
SUBTREE_DEPTH = 3
#: Subtrees asked for in one request when paging a deep tree (each under its own alias).
SUBTREES_PER_REQUEST = 20
#: The largest page the API serves.
PAGE = 500

_KIND_LABEL = {k.label.upper(): k.label for k in HIERARCHY}
_COUNTS = " ".join(COUNT_NAMES)
#: A subtree's levels, as deep as one answer goes; its nodes' fields are the fragment below.
_TREE = "...T children { ...T children { ...T children { ...T } } }"
_TREE_NODE = (
    f"fragment T on TreeNode {{ path node {{ id kind name status hidden path }} "
    f"counts {{ {_COUNTS} }} }}"
)
_PROBLEM = "__typename ... on Problem { message }"
_COMBINATIONS = "combinationSpace combinationSpaceLog10 combinationsUsed combinationShare"
_NODE = (
    "id kind name path status source description level subtopics position hidden "
    "createdAt updatedAt paths provenance { model promptName promptVersion jobId unitId } "
    f"counts {{ {_COUNTS} }}"
)
_JOB = (
    "id kind scope status live total done failed promptTokens completionTokens error "
    "skipped failedRaw firstError"
)
_STORED_JOB = (
    "id kind scope params status total done failed promptTokens completionTokens error "
    "createdAt updatedAt model maxCostUsd executor estimatedCostUsd"
)
_ESTIMATE = (
    "jobId kind scope model stored total done todo promptTokens completionTokens basis sample "
    "estimatedCostUsd spentCostUsd coverage { target untilShare concepts reachedBefore wanted "
    "reached short questions byDiscipline { path questions } }"
)
_UNIT = "id targetId status error raw dropped payload promptTokens completionTokens updatedAt batch"
_BATCH = (
    "id jobId seq remoteId status requests completed failed imported errors inputFileId "
    "outputFileId errorFileId createdAt updatedAt"
)
_DECONTAMINATION = (
    "scanned shortTexts benchmarks { benchmark split texts } "
    "instructions { id benchmarks } responses { id benchmarks } "
    "matches { instructionId benchmark split side method }"
)

#: The generation mutation of each stage, with the variables it takes.
_START = {
    "taxonomy": ("generateTaxonomy", "$path: String, $n: Int!", "path: $path, n: $n"),
    "subjects": (
        "generateSubjects",
        "$path: String, $rounds: Int, $perCall: Int!",
        "path: $path, rounds: $rounds, perCall: $perCall",
    ),
    "syllabus": (
        "generateSyllabus",
        "$path: String, $sessions: Int!",
        "path: $path, sessions: $sessions",
    ),
    "questions": (
        "generateInstructions",
        "$path: String, $n: Int!, $strategy: Strategy!, $seed: Int!, $basicRatio: Float!",
        "path: $path, n: $n, strategy: $strategy, seed: $seed, basicRatio: $basicRatio",
    ),
    "answers": ("generateAnswers", "$path: String", "path: $path"),
    "followups": ("generateFollowups", "$path: String, $turns: Int!", "path: $path, turns: $turns"),
    "judge": ("generateJudgements", "$path: String", "path: $path"),
}

ProgressCallback = Callable[[Progress], None]


class ServerError(GlanError):
    """The server could not be reached, refused a request, or answered with a problem."""


def _stage_variables(
    stage: str, path: str | None, options: PipelineOptions, rounds_given: bool
) -> dict[str, Any]:
    """The variables of generateInBatches and jobEstimate that say which job of a stage:
    the same options make the same job in the server as here."""
    variables: dict[str, Any] = {
        "stage": stage.upper(),
        "path": path,
        "n": options.taxonomy_n if stage == "taxonomy" else options.n,
        "strategy": options.strategy.upper(),
        "seed": options.seed,
        "basicRatio": options.basic_ratio,
        # without --rounds, the server's own GLAN_SUBJECT_ROUNDS, as its jobs use
        "rounds": options.rounds if rounds_given else None,
        "perCall": options.per_call,
        "sessions": options.sessions,
        "turns": options.turns,
    }
    if stage == "questions" and options.coverage_target:
        variables.update(
            minPerConcept=options.min_per_concept or None, untilShare=options.until_share
        )
    return variables


class Remote:
    """A running glan server, spoken to through its GraphQL API."""

    def __init__(
        self,
        url: str,
        *,
        token: SecretStr | None = None,
        pid: int | None = None,
        timeout_s: float = 300.0,
    ) -> None:
        self.url = url.rstrip("/")
        if self.url.endswith("/graphql"):
            self.url = self.url[: -len("/graphql")]
        self.token = token.get_secret_value() if token is not None else None
        self.pid = pid
        self.timeout_s = timeout_s
        self.started: str | None = None  # the job `generate` is following, for a Ctrl-C

    @property
    def name(self) -> str:
        return f"the glan server at {self.url}" + (f" (pid {self.pid})" if self.pid else "")

    @property
    def endpoint(self) -> str:
        return f"{self.url}/graphql"

    @property
    def ws_endpoint(self) -> str:
        return "ws" + self.endpoint[len("http") :]

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _denied(self) -> ServerError:
        if self.token:
            return ServerError(
                f"{self.name} refused the token in GLAN_API_TOKEN: set GLAN_API_TOKEN to the "
                "token the server was started with"
            )
        return ServerError(
            f"{self.name} needs its API token to change things: set GLAN_API_TOKEN to the "
            "token the server was started with"
        )

    # ------------------------------------------------------------------ transport

    def answers(self, timeout_s: float = 5.0) -> bool:
        """Whether a glan API answers at this address."""
        import httpx  # here, not at import: a command run on the store never needs it

        try:
            response = httpx.post(
                self.endpoint, json={"query": "{ __typename }"}, timeout=timeout_s
            )
            return response.json().get("data", {}).get("__typename") == "Query"
        except (httpx.HTTPError, ValueError, AttributeError):
            return False

    def gql(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The data of one operation; an error if the server refused it as a whole."""
        import httpx

        try:
            response = httpx.post(
                self.endpoint,
                json={"query": query, "variables": dict(variables or {})},
                headers=self._headers(),
                timeout=self.timeout_s,
            )
        except httpx.HTTPError as exc:
            raise ServerError(f"cannot reach {self.name}: {exc}") from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ServerError(f"{self.name} answered {response.status_code}: {response.text[:300]}")
        return self._data(body)

    def _data(self, body: Mapping[str, Any]) -> dict[str, Any]:
        errors = body.get("errors") or []
        messages = [str(e.get("message")) for e in errors if isinstance(e, dict)]
        if any(m == DENIED for m in messages):
            raise self._denied()
        if messages or not isinstance(body.get("data"), dict):
            raise ServerError(f"{self.name} refused the request: {'; '.join(messages)}")
        return body["data"]

    @staticmethod
    def _result(value: Any) -> dict[str, Any]:
        """A typed result, or the problem it is, raised with the server's message (the
        message the same failure has in a local run)."""
        if not isinstance(value, dict):
            raise ServerError(f"unexpected answer from the server: {value!r}")
        if "message" in value and str(value.get("__typename", "")).endswith("Error"):
            raise ServerError(str(value["message"]))
        return value

    # ------------------------------------------------------------------ the taxonomy

    def tree(self, path: str | None, depth: int, *, combinations: bool = False) -> TreeView:
        """The subtree below a path, `depth` levels deep, as `glan tree` prints it; with
        `combinations`, each node's combination figures too."""
        fragment = f"{_TREE_NODE[:-1]}{_COMBINATIONS} }}" if combinations else _TREE_NODE
        query = (
            f"query($path: String, $depth: Int!) {{ subtree(path: $path, depth: $depth) "
            f"{{ {_PROBLEM} ... on TreeNode {{ {_TREE} }} }} }} {fragment}"
        )
        got = self._result(
            self.gql(query, {"path": path, "depth": min(depth, SUBTREE_DEPTH)})["subtree"]
        )
        root = _tree_view(got, root=True)
        # deeper than one answer goes: below each visible node of the last level given
        top = level_of(root.node.kind) if root.node else -1
        reached, frontier = min(depth, SUBTREE_DEPTH), [root]
        for _ in range(reached):
            frontier = [c for t in frontier for c in t.children]
        while reached < depth and top + reached < len(HIERARCHY) - 1:
            step = min(depth - reached, SUBTREE_DEPTH)
            open_ = [t for t in frontier if t.node is not None and not t.node.hidden]
            for start in range(0, len(open_), SUBTREES_PER_REQUEST):
                batch = open_[start : start + SUBTREES_PER_REQUEST]
                params = ", ".join(f"$p{i}: String" for i in range(len(batch)))
                parts = " ".join(
                    f"t{i}: subtree(path: $p{i}, depth: $depth) "
                    f"{{ {_PROBLEM} ... on TreeNode {{ {_TREE} }} }}"
                    for i in range(len(batch))
                )
                data = self.gql(
                    f"query($depth: Int!, {params}) {{ {parts} }} {fragment}",
                    {"depth": step, **{f"p{i}": t.path for i, t in enumerate(batch)}},
                )
                for i, t in enumerate(batch):
                    t.children = _tree_view(self._result(data[f"t{i}"]), root=True).children
            reached += step
            for _ in range(step):
                frontier = [c for t in frontier for c in t.children]
        return root

    def _node(self, path: str) -> dict[str, Any]:
        query = (
            f"query($path: String) {{ node(path: $path) {{ {_PROBLEM} "
            f"... on TaxonomyNode {{ {_NODE} }} }} }}"
        )
        return self._result(self.gql(query, {"path": path})["node"])

    def show(self, path: str) -> dict[str, Any]:
        """What `glan show` prints for a node."""
        n = self._node(path)
        kind = _KIND_LABEL[n["kind"]]
        props = {
            "id": n["id"],
            "name": n["name"],
            "status": _status(n["status"]),
            "source": n["source"],
            "description": n["description"],
            "created_at": n["createdAt"],
            "updated_at": n["updatedAt"],
            "level": n["level"],
            "subtopics": n["subtopics"],
            "position": n["position"],
        }
        prov = n.get("provenance") or {}
        for name, key in (
            ("model", "model"),
            ("prompt_name", "promptName"),
            ("prompt_version", "promptVersion"),
            ("job_id", "jobId"),
            ("unit_id", "unitId"),
        ):
            props[name] = prov.get(key)
        return show_info(kind, props, list(n["paths"]), bool(n["hidden"]), n["counts"])

    def counts(self, path: str) -> dict[str, int]:
        """What lies below a node, as the store counts it."""
        n = self._node(path)
        return counts_below(level_of(_KIND_LABEL[n["kind"]]), n["counts"])

    def add_node(
        self,
        parent: str | None,
        kind: str,
        name: str,
        *,
        status: Status,
        props: Mapping[str, Any],
    ) -> NodeView:
        query = (
            "mutation($parent: String, $kind: NodeKind!, $name: String!, $description: String,"
            " $level: String, $subtopics: [String!], $status: ReviewStatus!) {"
            " addNode(parentPath: $parent, kind: $kind, name: $name, description: $description,"
            " level: $level, subtopics: $subtopics, status: $status) {"
            f" {_PROBLEM} ... on NodePayload {{ node {{ id kind name status hidden path }} }} }} }}"
        )
        variables = {
            "parent": parent,
            "kind": kind.upper(),
            "name": name,
            "description": props.get("description"),
            "level": props.get("level"),
            "subtopics": props.get("subtopics"),
            "status": status.name,
        }
        return _node_view(self._result(self.gql(query, variables)["addNode"])["node"])

    def review(self, path: str, status: Status) -> NodeView:
        decision = {Status.APPROVED: "APPROVE", Status.REJECTED: "REJECT"}.get(status, "PROPOSE")
        query = (
            "mutation($path: String!, $decision: Decision!) { reviewNode(path: $path, "
            f"decision: $decision) {{ {_PROBLEM} ... on NodePayload "
            "{ node { id kind name status hidden path } } } }"
        )
        got = self.gql(query, {"path": path, "decision": decision})["reviewNode"]
        return _node_view(self._result(got)["node"])

    def link(self, parent: str, subject: str) -> tuple[str, list[str]]:
        """The subject's name and every path that reaches it now."""
        query = (
            "mutation($parent: String!, $subject: String!) { linkSubject(parentPath: $parent, "
            f"subjectPath: $subject) {{ {_PROBLEM} "
            "... on NodePayload { node { name paths } } } }"
        )
        got = self._result(self.gql(query, {"parent": parent, "subject": subject})["linkSubject"])
        return str(got["node"]["name"]), list(got["node"]["paths"])

    def delete(self, path: str) -> dict[str, int]:
        query = (
            f"mutation($path: String!) {{ deleteNode(path: $path) {{ {_PROBLEM} "
            f"... on DeletePayload {{ unlinked removed {{ {_COUNTS} }} }} }} }}"
        )
        got = self._result(self.gql(query, {"path": path})["deleteNode"])
        if got["unlinked"]:
            return {"unlinked": 1}
        names = {"Response": "responses", "Instruction": "instructions"}
        names.update(zip([k.label for k in HIERARCHY], COUNT_NAMES, strict=False))
        return removed_view({label: got["removed"][name] for label, name in names.items()})

    def taxonomy_counts(self) -> dict[str, int]:
        """Counts of the whole store (fields, disciplines...)."""
        query = (
            f"{{ subtree(depth: 0) {{ {_PROBLEM} ... on TreeNode {{ counts {{ {_COUNTS} }} }} }} }}"
        )
        return dict(self._result(self.gql(query)["subtree"])["counts"])

    # ------------------------------------------------------------------ jobs

    def jobs(self, *, units: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Every job, newest first, as the store holds it (live figures for those the server
        runs); with `units` ("all" or "failed"), each job's units too."""
        query = (
            f"query($after: String) {{ jobs(first: {PAGE}, after: $after) {{ {_PROBLEM} "
            f"... on JobConnection {{ {_page(_STORED_JOB)} }} }} }}"
        )
        rows = [_job_row(j) for j in self._pages(query, {}, lambda d: self._result(d["jobs"]))]
        found: dict[str, Any] = {}
        if units is not None:
            status = ", status: FAILED" if units == "failed" else ""
            query = (
                f"query($id: ID!, $after: String) {{ job(id: $id) {{ {_PROBLEM} ... on Job {{ "
                f"units(first: {PAGE}, after: $after{status}) {{ {_page(_UNIT)} }} }} }} }}"
            )
            for row in rows:
                pages = self._pages(
                    query, {"id": row["id"]}, lambda d: self._result(d["job"])["units"]
                )
                found[row["id"]] = [_unit_row(u, row) for u in pages]
        return rows, found

    def _pages(
        self,
        query: str,
        variables: Mapping[str, Any],
        pick: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """Every item of a connection (what `pick` finds in the answer), a page at a time."""
        items: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            got = pick(self.gql(query, {**variables, "after": after}))
            items += [edge["node"] for edge in got["edges"]]
            if not got["pageInfo"]["hasNextPage"]:
                return items
            after = got["pageInfo"]["endCursor"]

    # ------------------------------------------------------------------ cleaning

    def decontaminate(
        self,
        path: str | None,
        specs: Sequence[BenchmarkSpec],
        *,
        field: str | None,
        method: str,
        n: int,
        min_words: int,
    ) -> ContaminationResult:
        """Decontamination run by the server, reading the benchmark files on its machine:
        each path is made absolute here, as the server's working directory is its own."""
        query = (
            "mutation($benchmarks: [BenchmarkInput!]!, $path: String, $field: String, "
            "$method: DecontaminationMethod!, $n: Int!, $minWords: Int!) { "
            "decontaminate(benchmarks: $benchmarks, path: $path, field: $field, "
            "method: $method, n: $n, minWords: $minWords) "
            f"{{ {_PROBLEM} ... on DecontaminationPayload {{ {_DECONTAMINATION} }} }} }}"
        )
        variables = {
            "benchmarks": [
                {"path": str(s.path.absolute()), "split": s.split, "name": s.name} for s in specs
            ],
            "path": path,
            "field": field,
            "method": method.upper(),
            "n": n,
            "minWords": min_words,
        }
        # it reads the whole scope and the benchmarks: longer than a request's usual wait
        waited, self.timeout_s = self.timeout_s, max(self.timeout_s, 3600.0)
        try:
            data = self._result(self.gql(query, variables)["decontaminate"])
        finally:
            self.timeout_s = waited
        return _decontamination(data)

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        stage: str,
        path: str | None,
        options: PipelineOptions,
        *,
        rounds_given: bool,
        progress: ProgressCallback | None = None,
        max_cost: float | None = None,
        batch: bool = False,
        wait: bool = True,
    ) -> Progress:
        """Start a stage's job in the server and follow it to its end: its last state. With
        `batch`, its requests go through the endpoint's Batch API; without `wait`, the
        job's first state (the server follows its batches)."""
        if batch:
            return self._in_batches(stage, path, options, rounds_given, progress, max_cost, wait)
        name, params, args = _START[stage]
        if max_cost is not None:  # a cap on the job's cost, kept by the server
            params, args = f"{params}, $maxCost: Float", f"{args}, maxCost: $maxCost"
        if stage == "questions" and options.coverage_target:
            params += ", $minPerConcept: Int, $untilShare: Float"
            args += ", minPerConcept: $minPerConcept, untilShare: $untilShare"
        mutation = (
            f"mutation({params}) {{ {name}({args}) {{ {_PROBLEM} "
            f"... on JobPayload {{ job {{ id }} }} }} }}"
        )
        variables: dict[str, Any] = {"path": path}
        if max_cost is not None:
            variables["maxCost"] = max_cost
        if stage == "taxonomy":
            variables["n"] = options.taxonomy_n
        elif stage == "subjects":
            # without --rounds, the server's own GLAN_SUBJECT_ROUNDS, as its jobs use
            variables.update(rounds=options.rounds if rounds_given else None)
            variables.update(perCall=options.per_call)
        elif stage == "syllabus":
            variables["sessions"] = options.sessions
        elif stage == "questions":
            variables.update(
                n=options.n,
                strategy=options.strategy.upper(),
                seed=options.seed,
                basicRatio=options.basic_ratio,
            )
            if options.coverage_target:
                variables.update(
                    minPerConcept=options.min_per_concept or None, untilShare=options.until_share
                )
        elif stage == "followups":
            variables["turns"] = options.turns
        return asyncio.run(self._run_job(name, mutation, variables, progress))

    def _in_batches(
        self,
        stage: str,
        path: str | None,
        options: PipelineOptions,
        rounds_given: bool,
        progress: ProgressCallback | None,
        max_cost: float | None,
        wait: bool,
    ) -> Progress:
        mutation = (
            "mutation($stage: Stage!, $path: String, $n: Int!, $strategy: Strategy!, $seed: Int!,"
            " $basicRatio: Float!, $rounds: Int, $perCall: Int!, $sessions: Int!, $turns: Int!,"
            " $minPerConcept: Int, $untilShare: Float, $maxCost: Float) { generateInBatches("
            "stage: $stage, path: $path, n: $n, strategy: $strategy, seed: $seed, basicRatio: "
            "$basicRatio, rounds: $rounds, perCall: $perCall, sessions: $sessions, turns: $turns,"
            " minPerConcept: $minPerConcept, untilShare: $untilShare, maxCost: $maxCost) "
            f"{{ {_PROBLEM} "
            f"... on JobPayload {{ job {{ {_JOB} }} }} }} }}"
        )
        variables = {
            **_stage_variables(stage, path, options, rounds_given),
            "maxCost": max_cost,
        }
        if not wait:
            started = self._result(self.gql(mutation, variables)["generateInBatches"])
            return _progress(started["job"])
        return asyncio.run(self._run_job("generateInBatches", mutation, variables, progress))

    def batches(self, job_id: str | None) -> list[dict[str, Any]]:
        """The batches of a job (of every job), as the server's store records them."""
        query = f"query($job: ID) {{ batches(jobId: $job) {{ {_BATCH} }} }}"
        return [_batch_row(b) for b in self.gql(query, {"job": job_id})["batches"]]

    def cancel_batches(self, job_id: str) -> list[dict[str, Any]]:
        """Have the server ask the API to stop a job's running batches; the job's batches."""
        query = (
            f"mutation($job: ID!) {{ cancelBatches(jobId: $job) {{ {_PROBLEM} "
            f"... on BatchesPayload {{ batches {{ {_BATCH} }} }} }} }}"
        )
        got = self._result(self.gql(query, {"job": job_id})["cancelBatches"])
        return [_batch_row(b) for b in got["batches"]]

    def estimate(
        self,
        stage: str,
        path: str | None,
        options: PipelineOptions,
        *,
        rounds_given: bool,
        batch: bool = False,
    ) -> dict[str, Any]:
        """A dry run of a stage's job in the server (its model, its prices): the keys of
        generators.cost.Estimate.as_dict."""
        query = (
            "query($stage: Stage!, $path: String, $minPerConcept: Int, $untilShare: Float, "
            "$n: Int!, $strategy: Strategy!, $seed: Int!, "
            "$basicRatio: Float!, $rounds: Int, $perCall: Int!, $sessions: Int!, $turns: Int!, "
            "$batch: Boolean!) { "
            "jobEstimate(stage: $stage, path: $path, minPerConcept: $minPerConcept, "
            "untilShare: $untilShare, n: $n, strategy: $strategy, seed: $seed, "
            "basicRatio: $basicRatio, rounds: $rounds, perCall: $perCall, sessions: $sessions, "
            "turns: $turns, batch: $batch) "
            f"{{ {_PROBLEM} ... on JobEstimate {{ {_ESTIMATE} }} }} }}"
        )
        variables = {**_stage_variables(stage, path, options, rounds_given), "batch": batch}
        e = self._result(self.gql(query, variables)["jobEstimate"])
        return {
            "stage": str(e["kind"]).lower(),
            "scope": e["scope"],
            "job_id": e["jobId"],
            "model": e["model"],
            "total": e["total"],
            "done": e["done"],
            "todo": e["todo"],
            "prompt_tokens": e["promptTokens"],
            "completion_tokens": e["completionTokens"],
            "basis": e["basis"],
            "sample": e["sample"],
            "estimated_usd": e["estimatedCostUsd"],
            "spent_usd": e["spentCostUsd"],
            "coverage": _coverage_estimate(e["coverage"]),
        }

    def cancel(self, job_id: str) -> None:
        query = "mutation($id: ID!) { cancelJob(id: $id) { __typename } }"  # best effort
        self.gql(query, {"id": job_id})

    async def _run_job(
        self,
        name: str,
        mutation: str,
        variables: dict[str, Any],
        progress: ProgressCallback | None,
    ) -> Progress:
        import websockets
        from websockets.asyncio.client import connect
        from websockets.typing import Subprotocol

        follow = (
            f"subscription($id: ID!) {{ jobProgress(id: $id) {{ {_PROBLEM} "
            f"... on Job {{ {_JOB} }} }} }}"
        )
        init = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        last: Progress | None = None
        try:
            async with connect(
                self.ws_endpoint,
                subprotocols=[Subprotocol("graphql-transport-ws")],
                additional_headers=self._headers(),
                open_timeout=30,
                max_size=None,
            ) as ws:

                async def receive() -> dict[str, Any]:
                    while True:
                        message = json.loads(await ws.recv())
                        if message.get("type") == "ping":
                            await ws.send(json.dumps({"type": "pong"}))
                            continue
                        return dict(message)

                async def operation(op_id: str, query: str, args: dict[str, Any]) -> None:
                    payload = {"query": query, "variables": args}
                    await ws.send(
                        json.dumps({"id": op_id, "type": "subscribe", "payload": payload})
                    )

                await ws.send(json.dumps({"type": "connection_init", "payload": init}))
                ack = await receive()
                if ack.get("type") != "connection_ack":
                    raise ServerError(f"{self.name} did not accept the connection: {ack}")
                await operation("start", mutation, variables)
                while True:
                    message = await receive()
                    if message.get("id") != "start":
                        continue
                    if message.get("type") == "error":
                        raise ServerError(_ws_errors(self, message.get("payload")))
                    if message.get("type") == "next":
                        started = self._result(self._data(message["payload"])[name])
                        break
                job_id = str(started["job"]["id"])
                self.started = job_id
                await operation("follow", follow, {"id": job_id})
                while True:
                    message = await receive()
                    if message.get("id") != "follow":
                        continue
                    kind = message.get("type")
                    if kind == "error":
                        raise ServerError(_ws_errors(self, message.get("payload")))
                    if kind == "complete":
                        break
                    if kind == "next":
                        event = self._result(self._data(message["payload"])["jobProgress"])
                        last = _progress(event)
                        if progress is not None:
                            progress(last)
        except websockets.ConnectionClosed as exc:
            if exc.rcvd is not None and exc.rcvd.code == 4403:
                raise self._denied() from exc
            where = f" while following job {self.started}" if self.started else ""
            raise ServerError(
                f"lost the connection to {self.name}{where}: {exc}. A job the server runs "
                "goes on without this command; `glan jobs` shows where it stands"
            ) from exc
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            raise ServerError(f"cannot reach {self.name} over a websocket: {exc}") from exc
        if last is None:
            raise ServerError(f"{self.name} ended job {self.started} without its state")
        self.started = None
        return last


def _ws_errors(remote: Remote, payload: Any) -> str:
    errors = payload if isinstance(payload, list) else [payload]
    messages = [str(e.get("message")) if isinstance(e, dict) else str(e) for e in errors]
    if any(m == DENIED for m in messages):
        return str(remote._denied())
    return f"{remote.name} refused the request: {'; '.join(messages)}"


def _status(name: str | None) -> str | None:
    return name.lower() if name else None


def _node_view(n: Mapping[str, Any]) -> NodeView:
    return NodeView(
        id=str(n["id"]),
        kind=_KIND_LABEL[n["kind"]],
        name=str(n["name"]),
        status=_status(n.get("status")),
        hidden=bool(n.get("hidden")),
        path=n.get("path"),
    )


def _coverage_estimate(c: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A dry run's coverage figures as generators.planning.plan_summary gives them."""
    if c is None:
        return None
    return {
        "target": c["target"],
        "until_share": c["untilShare"],
        "concepts": c["concepts"],
        "reached_before": c["reachedBefore"],
        "wanted": c["wanted"],
        "reached": c["reached"],
        "short": c["short"],
        "questions": c["questions"],
        "by_discipline": {d["path"]: d["questions"] for d in c["byDiscipline"]},
    }


def _tree_view(t: Mapping[str, Any], *, root: bool = False) -> TreeView:
    node = _node_view(t["node"]) if t.get("node") else None
    level = level_of(node.kind) if node else None
    # a hidden node below the root counts nothing: the local tree leaves its counts empty
    counts = {} if node and node.hidden and not root else counts_below(level, t["counts"])
    children = [_tree_view(c) for c in t.get("children") or []]
    found = None
    if "combinationsUsed" in t:  # asked for: as TreeView.of gives them
        space = t["combinationSpace"]
        found = {
            "space": int(space) if space is not None else None,
            "space_log10": t["combinationSpaceLog10"],
            "used": t["combinationsUsed"],
            "share": t["combinationShare"],
        }
    return TreeView(str(t["path"]), node, counts, children, found)


def _progress(job: Mapping[str, Any]) -> Progress:
    return Progress(
        job_id=str(job["id"]),
        stage=str(job["kind"]).lower(),
        scope=str(job.get("scope") or ""),
        status=str(job["status"]).lower(),
        total=int(job["total"]),
        done=int(job["done"]),
        failed=int(job["failed"]),
        skipped=int(job.get("skipped") or 0),
        prompt_tokens=int(job["promptTokens"]),
        completion_tokens=int(job["completionTokens"]),
        error=job.get("error"),
        failed_raw=int(job.get("failedRaw") or 0),
        first_error=job.get("firstError"),
    )


def _batch_row(b: Mapping[str, Any]) -> dict[str, Any]:
    """A batch as the API gives it, keyed as the store's record is."""
    keys = {
        "jobId": "job_id", "remoteId": "remote_id", "inputFileId": "input_file_id",
        "outputFileId": "output_file_id", "errorFileId": "error_file_id",
        "createdAt": "created_at", "updatedAt": "updated_at",
    }  # fmt: skip
    row = {keys.get(k, k): v for k, v in b.items()}
    row["imported"] = 1 if row.get("imported") else 0
    return row


def _job_row(job: Mapping[str, Any]) -> dict[str, Any]:
    """A job as the store's row has it (the keys `glan jobs --json` prints)."""
    return {
        "id": job["id"],
        "kind": str(job["kind"]).lower(),
        "scope": job["scope"],
        "params": job.get("params"),
        "status": str(job["status"]).lower(),
        "total": job["total"],
        "done": job["done"],
        "failed": job["failed"],
        "prompt_tokens": job["promptTokens"],
        "completion_tokens": job["completionTokens"],
        "error": job.get("error"),
        "created_at": job.get("createdAt"),
        "updated_at": job.get("updatedAt"),
        "model": job.get("model"),
        "max_cost": job.get("maxCostUsd"),
        "executor": job.get("executor"),
        "estimated_cost_usd": job.get("estimatedCostUsd"),
    }


def _unit_row(unit: Mapping[str, Any], job: Mapping[str, Any]) -> dict[str, Any]:
    """A unit as the store's row has it."""
    return {
        "id": unit["id"],
        "job_id": job["id"],
        "stage": job["kind"],
        "target_id": unit.get("targetId") or None,
        "status": _status(unit.get("status")),
        "attempts": None,
        "error": unit.get("error"),
        "raw": unit.get("raw"),
        "dropped": unit.get("dropped"),
        "payload": unit.get("payload"),
        "prompt_tokens": unit.get("promptTokens"),
        "completion_tokens": unit.get("completionTokens"),
        "updated_at": unit.get("updatedAt"),
        "batch": unit.get("batch"),
    }


def _decontamination(data: Mapping[str, Any]) -> ContaminationResult:
    """A local run's result from the server's answer (the CLI prints either the same way)."""
    result = ContaminationResult(scanned=int(data["scanned"]), short=int(data["shortTexts"]))
    for b in data["benchmarks"]:
        result.benchmarks[f"{b['benchmark']}:{b['split']}"] = int(b["texts"])
    result.instructions = {m["id"]: list(m["benchmarks"]) for m in data["instructions"]}
    result.responses = {m["id"]: list(m["benchmarks"]) for m in data["responses"]}
    for m in data["matches"]:
        mark = Mark(m["benchmark"], m["split"], m["side"], m["method"])
        result.marks.setdefault(m["instructionId"], []).append(mark)
    return result


def _page(fields: str) -> str:
    return f"edges {{ node {{ {fields} }} }} pageInfo {{ hasNextPage endCursor }}"
