"""The batch executor: a job's requests through a Files + Batches API, and offline runners.

A job's pending units become input lines, `custom_id` the unit id and `body` the exact chat
request every executor sends (ChatRequest.body), split to respect the API's limits
(MAX_REQUESTS and MAX_BYTES a file). Each file is uploaded (`files.create`, purpose
"batch") and submitted (`batches.create`, /v1/chat/completions, 24h window) with the
official SDK, through the endpoint settings the live client uses.

A batch is recorded in the store, and its units marked with it, before anything is sent,
and the API gets the record's id as metadata: a process killed at any point finds its
batches again (by that metadata when it died before storing the API's id) and polls them
instead of submitting again. When a batch ends, its output and error files are read by
`custom_id` through the stage's accept half and written as the live executor writes
(JobRunner.write_group): their order does not matter, a unit already done is skipped (so
importing a file twice changes nothing), and a request the API did not answer (an
error-file line, the unfinished part of an expired or cancelled batch, a batch that failed
validation) leaves its unit pending, with the API's reason, for the next run to submit
again. A unit whose request cannot be built fails as it does in the live executor.

Offline runners read and write the same lines: `export_requests` writes a job's input
lines to a file, `import_results` reads an output file in the API's format back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, cast

import httpx
import openai
from openai.types import Batch

from graph.errors import GlanError, InvalidInput
from graph.model import BATCH, UNIT, node_id
from graph.records import now_iso
from graph.store import Store

from .cost import CostCap, CostCapExceeded, check_cap, job_model, unit_usage
from .jobs import (
    JobRunner,
    JobStatus,
    Outcome,
    PreparedJob,
    Progress,
    ProgressCallback,
    Stage,
    StopRequest,
    UnitSpec,
    job_id_for,
)
from .llm import ChatRequest, LLMClient, LLMConfig, Reply, StageParams, Usage

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .pipeline import PipelineOptions

#: The Batch API's limits on one input file.
MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1024 * 1024
ENDPOINT: Final = "/v1/chat/completions"
COMPLETION_WINDOW: Final = "24h"
#: The metadata key that names a batch's record in the store (found again after a kill).
METADATA_KEY = "glan_batch"
#: Seconds between polls of a running batch, unless told otherwise (GLAN_BATCH_POLL_S).
POLL_S = 30.0
#: Units accepted and written together while importing a file, and units whose requests
#: are built together: each group's writes look its units up among all of a table's, so
#: fewer, larger groups go faster (importing 20,000 units 2,000 a group took 30% longer)
IMPORT_GROUP = 10_000
BUILD_CHUNK = 5_000

#: A batch recorded in the store and not yet known to the API (not created, or its id not
#: stored before a kill), and one recorded whose units were all answered elsewhere before it
#: was sent (never sent; nothing to import).
PREPARING = "preparing"
DROPPED = "dropped"
ACTIVE = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
ENDED = frozenset({"completed", "failed", "expired", "cancelled", DROPPED})


class BatchError(GlanError):
    """The Batch API refused a call, answered what cannot be read, or could not be reached."""


# ---------------------------------------------------------------------------- the API


class BatchAPI:
    """The Files + Batches API of an OpenAI-compatible endpoint, through the official SDK,
    with the live client's base URL, key and timeout; its retries are the SDK's (these are
    a few calls a batch, not one a unit). Errors leave as BatchError."""

    def __init__(self, config: LLMConfig, *, http_client: httpx.AsyncClient | None = None):
        self.base_url = config.base_url
        self._client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=config.api_key.get_secret_value(),
            timeout=config.timeout_s,
            max_retries=config.max_retries,
            http_client=cast(Any, http_client),
        )

    async def aclose(self) -> None:
        await self._client.close()

    def _failed(self, what: str, exc: openai.APIError) -> BatchError:
        detail = exc.message if isinstance(exc, openai.APIStatusError) else str(exc)
        status = f"HTTP {exc.status_code}: " if isinstance(exc, openai.APIStatusError) else ""
        return BatchError(f"the Batch API at {self.base_url} could not {what}: {status}{detail}")

    async def upload(self, name: str, data: bytes) -> str:
        """Upload a batch input file; its id."""
        try:
            made = await self._client.files.create(
                file=(name, data, "application/jsonl"), purpose="batch"
            )
        except openai.APIError as exc:
            raise self._failed(f"take the input file {name}", exc) from exc
        return made.id

    async def submit(self, input_file_id: str, metadata: Mapping[str, str]) -> Batch:
        try:
            return await self._client.batches.create(
                input_file_id=input_file_id,
                endpoint=ENDPOINT,
                completion_window=COMPLETION_WINDOW,
                metadata=dict(metadata),
            )
        except openai.APIError as exc:
            raise self._failed(f"create a batch of file {input_file_id}", exc) from exc

    async def get(self, remote_id: str) -> Batch:
        try:
            return await self._client.batches.retrieve(remote_id)
        except openai.APIError as exc:
            raise self._failed(f"tell the state of batch {remote_id}", exc) from exc

    async def cancel(self, remote_id: str) -> Batch:
        try:
            return await self._client.batches.cancel(remote_id)
        except openai.APIError as exc:
            raise self._failed(f"cancel batch {remote_id}", exc) from exc

    async def find(self, record_id: str, since: float) -> Batch | None:
        """The batch whose metadata names this record, created after `since` (a Unix time;
        listing goes back an hour before it), or None."""
        try:
            async for batch in self._client.batches.list(limit=100):
                if (batch.metadata or {}).get(METADATA_KEY) == record_id:
                    return batch
                if batch.created_at < since - 3600:
                    return None  # the list is newest first
        except openai.APIError as exc:
            raise self._failed("list its batches", exc) from exc
        return None

    async def download(self, file_id: str, into: IO[bytes]) -> None:
        """A file's content, streamed into `into`."""
        try:
            async with self._client.files.with_streaming_response.content(file_id) as got:
                async for chunk in got.iter_bytes():
                    into.write(chunk)
        except openai.APIError as exc:
            raise self._failed(f"give the content of file {file_id}", exc) from exc

    async def delete(self, file_id: str) -> bool:
        """Delete a file the API holds; whether it was there to delete."""
        try:
            await self._client.files.delete(file_id)
        except openai.NotFoundError:
            return False
        except openai.APIError as exc:
            raise self._failed(f"delete file {file_id}", exc) from exc
        return True


# ---------------------------------------------------------------------------- lines


def request_line(unit_id: str, body: Mapping[str, Any]) -> bytes:
    """One batch input line: the unit's request as the API (and offline runners) read it."""
    line = {"custom_id": unit_id, "method": "POST", "url": ENDPOINT, "body": body}
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def build_lines(
    stage: Stage,
    units: Sequence[UnitSpec],
    max_bytes: int = MAX_BYTES,
    corrections: Mapping[str, tuple[str, str]] | None = None,
) -> tuple[list[tuple[UnitSpec, bytes]], list[tuple[UnitSpec, Outcome]]]:
    """The input lines of these units (their inputs read in bulk first), and the units whose
    request cannot be built, with why: they fail as they do in the live executor. A unit in
    `corrections` (its last answer and what was wrong with it) is asked again showing the
    model its mistake, as the live executor asks a JSON answer that does not validate."""
    stage.prepare(units)
    lines: list[tuple[UnitSpec, bytes]] = []
    failed: list[tuple[UnitSpec, Outcome]] = []
    for unit in units:
        request = stage.request(unit)
        if isinstance(request, Outcome):
            failed.append((unit, request))
            continue
        if corrections and unit.id in corrections:
            request = request.corrected(*corrections[unit.id])
        line = request_line(unit.id, request.body())
        if len(line) > max_bytes:
            error = f"its request is {len(line):,} bytes, more than a batch file may hold"
            failed.append((unit, Outcome(error=error)))
            continue
        lines.append((unit, line))
    return lines, failed


def reply_of(body: Mapping[str, Any]) -> Reply:
    """A chat completion's body, as a batch output line carries it, as the live client's
    Reply: its text, tokens and finish reason."""
    used = body.get("usage") or {}
    usage = Usage(int(used.get("prompt_tokens") or 0), int(used.get("completion_tokens") or 0))
    choices = body.get("choices") or []
    if not choices:
        return Reply("", usage)
    choice = choices[0] or {}
    message = choice.get("message") or {}
    return Reply(str(message.get("content") or ""), usage, choice.get("finish_reason"))


def _line_error(item: Mapping[str, Any]) -> str | None:
    """Why an output or error-file line holds no answer to use; None when it holds one."""
    error = item.get("error")
    response = item.get("response") or {}
    status = response.get("status_code") if isinstance(response, dict) else None
    body = response.get("body") if isinstance(response, dict) else None
    if not error and status == 200 and isinstance(body, dict):
        return None
    if isinstance(error, dict):
        said = f"{error.get('code') or 'error'}: {error.get('message') or ''}".strip()
    elif error:
        said = str(error)
    elif isinstance(body, dict) and isinstance(body.get("error"), dict):
        said = str(body["error"].get("message") or body["error"])
    else:
        said = "no response body"
    http = f"HTTP {status}, " if status else ""
    return (
        f"the Batch API did not answer this request ({http}{said[:500]}); the next run asks again"
    )


# ---------------------------------------------------------------------------- one job


@dataclass
class ImportCounts:
    """What reading one results file did to a job."""

    done: int = 0  # units written done
    failed: int = 0  # units whose answer could not be used (kept with their raw text)
    errors: int = 0  # requests the API did not answer: their units stay pending
    skipped: int = 0  # lines for units done already, not in this job, or seen before
    unreadable: int = 0  # lines that are not JSON

    def __add__(self, other: ImportCounts) -> ImportCounts:
        return ImportCounts(
            self.done + other.done,
            self.failed + other.failed,
            self.errors + other.errors,
            self.skipped + other.skipped,
            self.unreadable + other.unreadable,
        )


@dataclass
class JobRun:
    """One job as an executor other than the live one holds it: its stage, its state and
    the units not done (what a results file may answer)."""

    stage: Stage
    prepared: PreparedJob
    pending: dict[str, UnitSpec] = field(default_factory=dict)
    #: units whose JSON answer did not validate in this run: their raw text and why, for a
    #: corrective ask (a batch executor's second round, as the live executor's retry)
    correctable: dict[str, tuple[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pending = {u.id: u for u in self.prepared.todo}

    @property
    def state(self) -> Progress:
        return self.prepared.state


def import_lines(runner: JobRunner, run: JobRun, lines: Iterable[bytes]) -> ImportCounts:
    """Read output (or error) file lines into the job by custom_id, through the stage's
    accept half, a group of units a transaction. Lines for units done already (by this
    import or before) change nothing; lines the API did not answer leave their unit pending
    with the API's reason. Runs off the event loop."""
    counts = ImportCounts()
    group: list[tuple[UnitSpec, Reply]] = []
    in_group: set[str] = set()
    unanswered: list[tuple[str, str]] = []
    for raw in lines:
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
            custom_id = item.get("custom_id")
        except (ValueError, AttributeError):
            counts.unreadable += 1
            continue
        unit = run.pending.get(custom_id) if isinstance(custom_id, str) else None
        if unit is None or unit.id in in_group:
            counts.skipped += 1
            continue
        error = _line_error(item)
        if error is not None:
            unanswered.append((unit.id, error))
            continue
        group.append((unit, reply_of(item["response"]["body"])))
        in_group.add(unit.id)
        if len(group) >= IMPORT_GROUP:
            counts = counts + _accept(runner, run, group)
            group, in_group = [], set()
    if group:
        counts = counts + _accept(runner, run, group)
    if unanswered:
        counts.errors += len(unanswered)
        stamp = now_iso()
        rows = [{"id": i, "error": e, "updated_at": stamp} for i, e in unanswered]
        runner.store.nodes.update_existing(UNIT, rows)
    return counts


def _accept(
    runner: JobRunner, run: JobRun, group: Sequence[tuple[UnitSpec, Reply]]
) -> ImportCounts:
    stage, state = run.stage, run.state
    stage.prepare([u for u, _ in group])
    finished: list[tuple[UnitSpec, Outcome]] = []
    for unit, reply in group:
        request = stage.request(unit)
        outcome = request if isinstance(request, Outcome) else stage.accept(unit, request, reply)
        json_asked = isinstance(request, ChatRequest) and not request.free_text
        if json_asked and not outcome.ok and reply.text:
            run.correctable[unit.id] = (reply.text, outcome.error or "")
        # as in the live executor: the unit keeps the tokens of all its attempts
        state.prompt_tokens += reply.usage.prompt_tokens
        state.completion_tokens += reply.usage.completion_tokens
        outcome.usage = run.prepared.spent.get(unit.id, Usage()) + reply.usage
        finished.append((unit, outcome))
    done_before, failed_before = state.done, state.failed
    runner.write_group(stage, finished, state, run.prepared.params)
    for unit, _ in finished:
        run.pending.pop(unit.id, None)
    return ImportCounts(done=state.done - done_before, failed=state.failed - failed_before)


def read_lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        yield from f


def end_status(
    runner: JobRunner, run: JobRun, progress: ProgressCallback | None = None
) -> Progress:
    """Store the job's end: incomplete while units are left pending (to submit again),
    else completed, with failures or without."""
    state = run.state
    left = state.total - state.done - state.failed
    if left > 0:
        state.error = (
            f"{left:,} of {state.total:,} units got no answer from the batches (requests in "
            "an error file, or in a batch that failed, expired or was cancelled: `glan batch "
            "status` says why); run the same command again to submit them again"
        )
        return runner.finish(state, run.prepared.params, JobStatus.INCOMPLETE, progress)
    state.error = None
    return runner.finish(state, run.prepared.params, None, progress)


# ---------------------------------------------------------------------------- the executor


@dataclass
class _RoundEnd:
    """How one round of a batch run ended."""

    submitted: bool = False  # it submitted new requests
    waiting: bool = False  # it returned with batches running (not told to wait)
    stopped: str | None = None  # the status to store: asked to stop (cancelled, interrupted)
    capped: str | None = None  # why a batch was not submitted: over the cost cap


@dataclass
class _Part:
    ids: list[str] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    size: int = 0

    def fits(self, line: bytes, max_requests: int, max_bytes: int) -> bool:
        return len(self.ids) < max_requests and self.size + len(line) <= max_bytes


class BatchExecutor:
    """Runs a job's pending units as batches of a Files + Batches API (see the module
    docstring): submits what no batch holds yet, polls every `poll_s` seconds until its
    batches end (unless told not to wait), imports their files as each ends."""

    def __init__(
        self,
        store: Store,
        api: BatchAPI,
        *,
        runner: JobRunner | None = None,
        poll_s: float = POLL_S,
        max_requests: int = MAX_REQUESTS,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.store = store
        self.api = api
        self.runner = runner or JobRunner(store)
        self.poll_s = poll_s
        self.max_requests = max_requests
        self.max_bytes = max_bytes

    async def run(
        self,
        stage: Stage,
        scope_path: str | None,
        *,
        wait: bool = True,
        progress: ProgressCallback | None = None,
        cancel: asyncio.Event | None = None,
        cost_cap: CostCap | None = None,
    ) -> Progress:
        """Submit the job's units that no batch holds (resuming the batches it has), then,
        with `wait`, poll until every batch has ended and its files are read: the job's end
        state. Without `wait`, the job's state once its batches are submitted (still
        running: a later run, or a server that resumes it, polls and imports them).

        Waiting, units whose JSON answer did not validate are asked once more in a round of
        their own, showing the model its mistake, as the live executor asks them; and a
        chained stage (Stage.chained) goes on in rounds, each planned on what the ones
        before wrote, until a round submits nothing."""
        if cost_cap is not None:
            cost_cap.check_model(stage.params.model)
        asked: set[str] = set()  # the units this run's rounds have submitted
        corrected: set[str] = set()  # those asked again corrected (once a run)
        earlier: Progress | None = None
        corrections: dict[str, tuple[str, str]] = {}
        while True:
            run, end = await self._round(
                stage, scope_path, asked, earlier, wait, progress, cancel, cost_cap, corrections
            )
            state, params = run.state, run.prepared.params
            if end.waiting:
                return replace(state)
            if end.stopped is not None:
                return self.runner.finish(state, params, end.stopped, progress)
            if end.capped is not None:
                state.error = end.capped
                return self.runner.finish(state, params, JobStatus.COST_CAPPED, progress)
            corrections = {i: c for i, c in run.correctable.items() if i not in corrected}
            corrected.update(corrections)
            if not corrections and (not stage.chained or not end.submitted):
                return end_status(self.runner, run, progress)
            earlier = state

    async def _round(
        self,
        stage: Stage,
        scope_path: str | None,
        asked: set[str],
        earlier: Progress | None,
        wait: bool,
        progress: ProgressCallback | None,
        cancel: asyncio.Event | None,
        cost_cap: CostCap | None,
        corrections: Mapping[str, tuple[str, str]],
    ) -> tuple[JobRun, _RoundEnd]:
        """Plan the job, resume its batches, submit what no batch holds (in a later round
        of a chained stage, only units no round of this run submitted; in a corrective
        round, only the `corrections`) and, with `wait`, follow its batches to their end."""
        prepared = await asyncio.to_thread(self.runner.prepare_job, stage, scope_path)
        state = prepared.state
        if earlier is not None:  # the failures of earlier rounds, less those asked again
            state.skipped, state.failed = earlier.skipped, earlier.failed - len(corrections)
            state.failed_raw = earlier.failed_raw - len(corrections)
            state.first_error = earlier.first_error
        if progress:
            progress(state)
        if prepared.error is not None:
            raise prepared.error
        run, end = JobRun(stage, prepared), _RoundEnd()
        try:
            records = await asyncio.to_thread(self._begin, run, cost_cap)
            await self._recover(run, records)
            for rec in records:  # ended before a kill, or while no one waited
                if rec["status"] in ENDED and not rec.get("imported"):
                    await self._import(run, rec)
            busy = {r["id"] for r in records if r["status"] in ACTIVE}
            batch_of = await asyncio.to_thread(self._batch_of, state.job_id)
            fresh = [
                u
                for u in run.pending.values()
                if batch_of.get(u.id) not in busy
                and (u.id in corrections if corrections else u.id not in asked)
            ]
            asked.update(u.id for u in fresh)
            if fresh and not (cancel is not None and cancel.is_set()):
                try:
                    await self._check_cap(run, fresh, len(run.pending) - len(fresh), cost_cap)
                except CostCapExceeded as exc:
                    end.capped = str(exc)
                else:
                    await self._submit(run, records, fresh, corrections)
                    end.submitted = True
            if progress:
                progress(self._shown(run, records))
            if not wait and any(r["status"] in ACTIVE for r in records):
                end.waiting = True
                return run, end
            end.stopped = await self._follow(run, records, progress, cancel)
        except (asyncio.CancelledError, KeyboardInterrupt):
            # stopped waiting (Ctrl-C, a task cancelled): the batches go on at the API, and
            # a later run (or a server resuming the job) polls them
            state.status = JobStatus.INTERRUPTED
            self.store.jobs.save(state.as_row(prepared.params))
            raise
        except Exception as exc:
            state.status, state.error = JobStatus.FAILED, str(exc)
            self.store.jobs.save(state.as_row(prepared.params))
            raise
        return run, end

    # -- the steps of a run

    def _begin(self, run: JobRun, cost_cap: CostCap | None) -> list[dict[str, Any]]:
        """Mark the job as run in batches (what its tokens are priced at) and read its
        batches."""
        row: dict[str, Any] = {"id": run.state.job_id, "executor": "batch"}
        if cost_cap is not None:
            run.state.max_cost = cost_cap.limit_usd
            row["max_cost"] = cost_cap.limit_usd
        self.store.jobs.save(row)
        return self.store.jobs.batches(run.state.job_id)

    def _batch_of(self, job_id: str) -> dict[str, str | None]:
        return {str(u["id"]): u.get("batch") for u in self.store.jobs.units(job_id)}

    async def _recover(self, run: JobRun, records: list[dict[str, Any]]) -> None:
        """Batches recorded and not known to be submitted (a kill came between): found at
        the API by their metadata, or sent now with the units they hold that are still
        pending; none left, they are dropped."""
        preparing = [r for r in records if r["status"] == PREPARING]
        if not preparing:
            return
        batch_of = await asyncio.to_thread(self._batch_of, run.state.job_id)
        for rec in preparing:
            since = datetime.fromisoformat(str(rec["created_at"])).timestamp()
            found = await self.api.find(str(rec["id"]), since)
            if found is not None:
                await self._save(_adopt(rec, found))
                continue
            units = [u for i, u in run.pending.items() if batch_of.get(i) == rec["id"]]
            lines, failed = await asyncio.to_thread(build_lines, run.stage, units, self.max_bytes)
            if failed:
                await asyncio.to_thread(self._write_failed, run, failed)
            if not lines:
                rec.update(status=DROPPED, imported=1, requests=0)
                await self._save(rec)
                continue
            rec["requests"] = len(lines)
            await self._send(run, rec, b"".join(line for _, line in lines))

    async def _check_cap(
        self, run: JobRun, fresh: Sequence[UnitSpec], in_flight: int, cost_cap: CostCap | None
    ) -> None:
        """Refuse to submit when the batch's estimate, with what the job spent and what its
        batches in flight are expected to cost, passes the cap (at the batch price)."""
        if cost_cap is None:
            return
        stage, state = run.stage, run.state
        price = cost_cap.check_model(stage.params.model)
        per_unit, _, _ = await asyncio.to_thread(unit_usage, self.store, stage, fresh)

        def cost(n: int) -> float:
            tokens = Usage(per_unit.prompt_tokens * n, per_unit.completion_tokens * n)
            return price.cost(tokens, batch=True)

        spent = price.cost(Usage(state.prompt_tokens, state.completion_tokens), batch=True)
        check_cap(
            cost(len(fresh)),
            cost_cap.limit_usd,
            spent_usd=spent + cost(in_flight),
            model=stage.params.model,
            what=f"a batch of {len(fresh):,} {stage.name} requests",
        )

    async def _submit(
        self,
        run: JobRun,
        records: list[dict[str, Any]],
        units: Sequence[UnitSpec],
        corrections: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        """The units as input files within the API's limits, each recorded, uploaded and
        submitted in turn; their inputs read a chunk at a time, not all at once."""
        part = _Part()
        for start in range(0, len(units), BUILD_CHUNK):
            chunk = units[start : start + BUILD_CHUNK]
            lines, failed = await asyncio.to_thread(
                build_lines, run.stage, chunk, self.max_bytes, corrections
            )
            if failed:
                await asyncio.to_thread(self._write_failed, run, failed)
            for unit, line in lines:
                if part.ids and not part.fits(line, self.max_requests, self.max_bytes):
                    records.append(await self._flush(run, len(records), part))
                    part = _Part()
                part.ids.append(unit.id)
                part.lines.append(line)
                part.size += len(line)
        if part.ids:
            records.append(await self._flush(run, len(records), part))

    async def _flush(self, run: JobRun, seq: int, part: _Part) -> dict[str, Any]:
        stamp = now_iso()
        rec: dict[str, Any] = {
            "id": node_id(BATCH, run.state.job_id, str(seq)),
            "job_id": run.state.job_id,
            "seq": seq,
            "endpoint": self.api.base_url,
            "status": PREPARING,
            "remote_id": None,
            "input_file_id": None,
            "output_file_id": None,
            "error_file_id": None,
            "requests": len(part.ids),
            "completed": 0,
            "failed": 0,
            "errors": None,
            "imported": 0,
            "created_at": stamp,
            "updated_at": stamp,
        }
        await asyncio.to_thread(self._record, rec, part.ids)
        await self._send(run, rec, b"".join(part.lines))
        return rec

    def _record(self, rec: dict[str, Any], unit_ids: Sequence[str]) -> None:
        """The batch and which units it holds, in one transaction, before it is sent."""
        stamp = rec["updated_at"]
        with self.store.driver.transaction() as tx:
            self.store.jobs.save_batches([rec], tx=tx)
            rows = [{"id": i, "batch": rec["id"], "updated_at": stamp} for i in unit_ids]
            self.store.nodes.update_existing(UNIT, rows, tx=tx)

    async def _send(self, run: JobRun, rec: dict[str, Any], data: bytes) -> None:
        rec["input_file_id"] = await self.api.upload(f"glan-{rec['id']}.jsonl", data)
        await self._save(rec)
        metadata = {METADATA_KEY: str(rec["id"]), "glan_job": run.state.job_id}
        await self._save(_adopt(rec, await self.api.submit(rec["input_file_id"], metadata)))

    async def _save(self, rec: dict[str, Any]) -> None:
        rec["updated_at"] = now_iso()
        await asyncio.to_thread(self.store.jobs.save_batches, [rec])

    def _write_failed(self, run: JobRun, failed: Sequence[tuple[UnitSpec, Outcome]]) -> None:
        self.runner.write_group(run.stage, failed, run.state, run.prepared.params)
        for unit, _ in failed:
            run.pending.pop(unit.id, None)

    async def _follow(
        self,
        run: JobRun,
        records: list[dict[str, Any]],
        progress: ProgressCallback | None,
        cancel: asyncio.Event | None,
    ) -> str | None:
        """Poll the job's running batches until they end, importing each as it does; the
        status to store when asked to stop first (then cancelled batches are asked to stop
        at the API too; an interrupted job leaves them running)."""
        while True:
            for rec in [r for r in records if r["status"] in ACTIVE]:
                if await self._refresh(rec) and rec["status"] in ENDED:
                    await self._import(run, rec)
            if not any(r["status"] in ACTIVE for r in records):
                return None
            if progress:
                progress(self._shown(run, records))
            if cancel is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cancel.wait(), self.poll_s)
                if cancel.is_set():
                    status = cancel.status if isinstance(cancel, StopRequest) else None
                    status = status or JobStatus.CANCELLED
                    if status == JobStatus.CANCELLED:
                        for rec in [r for r in records if r["status"] in ACTIVE]:
                            await self._save(_adopt(rec, await self.api.cancel(rec["remote_id"])))
                    return status
            else:
                await asyncio.sleep(self.poll_s)

    async def _refresh(self, rec: dict[str, Any]) -> bool:
        """The batch's state at the API, stored when it changed; whether it did."""
        seen = {k: rec.get(k) for k in _REMOTE}
        _adopt(rec, await self.api.get(str(rec["remote_id"])))
        if all(rec.get(k) == v for k, v in seen.items()):
            return False
        await self._save(rec)
        return True

    async def _import(self, run: JobRun, rec: dict[str, Any]) -> ImportCounts:
        """An ended batch's output and error files read into the store; the batch is then
        marked imported (a kill before that reads them again, which changes nothing)."""
        counts = ImportCounts()
        for key in ("output_file_id", "error_file_id"):
            file_id = rec.get(key)
            if not file_id:
                continue
            with tempfile.TemporaryFile() as f:
                await self.api.download(str(file_id), f)
                f.seek(0)
                got = await asyncio.to_thread(import_lines, self.runner, run, f)
            counts = counts + got
        rec["imported"] = 1
        await self._save(rec)
        await self._clean_up(rec)
        return counts

    async def _clean_up(self, rec: Mapping[str, Any]) -> None:
        """Once a batch is read into the store (each reply's raw text is kept on its unit),
        its input, output and error files are deleted at the API, where they would count
        against the account's storage. A file that cannot be deleted is left there and
        said in the log; nothing of the run depends on it."""
        for key in ("input_file_id", "output_file_id", "error_file_id"):
            if file_id := rec.get(key):
                try:
                    await self.api.delete(str(file_id))
                except BatchError as exc:
                    log.warning("%s; it is left at the API", exc)

    @staticmethod
    def _shown(run: JobRun, records: Sequence[Mapping[str, Any]]) -> Progress:
        """The job's state as its progress shows it while batches run: units done, and the
        requests the API has answered in the batches not read yet."""
        answered = sum(int(r.get("completed") or 0) for r in records if r["status"] in ACTIVE)
        return replace(run.state, done=run.state.done + answered)


#: What the API tells about a batch, as a record stores it.
_REMOTE = (
    "remote_id",
    "status",
    "output_file_id",
    "error_file_id",
    "completed",
    "failed",
    "errors",
)


def _adopt(rec: dict[str, Any], batch: Batch) -> dict[str, Any]:
    """The record with what the API says of its batch."""
    counts = batch.request_counts
    errors = batch.errors.data if batch.errors and batch.errors.data else []
    rec.update(
        remote_id=batch.id,
        status=batch.status,
        output_file_id=batch.output_file_id,
        error_file_id=batch.error_file_id,
        completed=counts.completed if counts else 0,
        failed=counts.failed if counts else 0,
        errors="; ".join(
            f"{f'line {e.line}: ' if e.line is not None else ''}{e.code or 'error'}: {e.message}"
            for e in errors[:20]
        )
        or None,
    )
    return rec


# ---------------------------------------------------------------------------- status, cancel


async def refresh_batches(store: Store, api: BatchAPI, job_id: str | None) -> list[dict[str, Any]]:
    """The batches of a job (of every job without one), those still running asked for their
    state at the API first (and stored)."""
    records = await asyncio.to_thread(store.jobs.batches, job_id)
    for rec in records:
        if rec["status"] in ACTIVE and rec.get("remote_id"):
            seen = {k: rec.get(k) for k in _REMOTE}
            _adopt(rec, await api.get(str(rec["remote_id"])))
            if any(rec.get(k) != v for k, v in seen.items()):
                rec["updated_at"] = now_iso()
                await asyncio.to_thread(store.jobs.save_batches, [rec])
    return records


async def cancel_batches(store: Store, api: BatchAPI, job_id: str) -> list[dict[str, Any]]:
    """Ask the API to stop a job's running batches, and store the job as cancelled (a
    starting server does not resume it). What they finished is read by the next run, which
    then submits the rest again."""
    row = await asyncio.to_thread(store.jobs.get, job_id)
    if row is None:
        from .manager import JobNotFound

        raise JobNotFound(job_id)
    records = await asyncio.to_thread(store.jobs.batches, job_id)
    for rec in records:
        if rec["status"] in ACTIVE and rec.get("remote_id"):
            _adopt(rec, await api.cancel(str(rec["remote_id"])))
            rec["updated_at"] = now_iso()
            await asyncio.to_thread(store.jobs.save_batches, [rec])
    if row.get("status") in (JobStatus.RUNNING, JobStatus.INTERRUPTED):
        change = {"id": job_id, "status": JobStatus.CANCELLED, "updated_at": now_iso()}
        await asyncio.to_thread(store.jobs.save, change)
    return records


# ---------------------------------------------------------------------------- several stages


def run_batch_pipeline(
    store: Store,
    llm_config: LLMConfig,
    params_for: Callable[[str], StageParams],
    stages: Sequence[str],
    path: str | None,
    options: PipelineOptions,
    *,
    wait: bool = True,
    poll_s: float = POLL_S,
    progress: ProgressCallback | None = None,
    cost_cap: CostCap | None = None,
) -> list[Progress]:
    """The CLI's batch run: each stage's job through the Batch API at `llm_config`'s
    endpoint, one after another (a later stage runs on what the one before made, so each is
    waited for); stops at a stage that does not complete. Without `wait`, one stage, and
    its state once its batches are submitted."""
    from .stages import STAGES

    if not wait and len(stages) > 1:
        raise InvalidInput(
            "without waiting, one stage's batches are submitted; a later stage runs on what "
            "the one before made: run the stages one at a time"
        )

    async def main() -> list[Progress]:
        llm, api = LLMClient(llm_config), BatchAPI(llm_config)
        executor = BatchExecutor(store, api, poll_s=poll_s)
        results: list[Progress] = []
        try:
            for name in stages:
                stage = STAGES[name](store, llm, params_for(name), options.for_stage(name))
                state = await executor.run(
                    stage, path, wait=wait, progress=progress, cost_cap=cost_cap
                )
                results.append(state)
                if state.status not in (JobStatus.COMPLETED, JobStatus.COMPLETED_WITH_FAILURES):
                    break
        finally:
            await api.aclose()
            await llm.aclose()
        return results

    return asyncio.run(main())


# ---------------------------------------------------------------------------- offline runners


@dataclass
class Exported:
    job_id: str
    requests: int  # lines written
    failed: int  # units whose request could not be built (failed, as the live executor does)
    done: int  # units done before, not exported
    total: int


def export_requests(store: Store, stage: Stage, scope_path: str | None, out: IO[bytes]) -> Exported:
    """Write the job's pending units as batch input lines, for an offline runner (a server's
    own batch runner reads exactly these). The job and its plan are stored, so the results
    file comes back to the same units; the job waits as incomplete until it does."""
    runner = JobRunner(store)
    prepared = runner.prepare_job(stage, scope_path)
    if prepared.error is not None:
        raise prepared.error
    run = JobRun(stage, prepared)
    store.jobs.save({"id": prepared.state.job_id, "executor": "offline"})
    written = failed = 0
    todo = prepared.todo
    for start in range(0, len(todo), BUILD_CHUNK):
        lines, bad = build_lines(stage, todo[start : start + BUILD_CHUNK])
        if bad:
            runner.write_group(stage, bad, run.state, prepared.params)
            failed += len(bad)
        for _, line in lines:
            out.write(line)
        written += len(lines)
    state = end_status(runner, run)
    if state.status == JobStatus.INCOMPLETE:
        state.error = (
            f"{written:,} requests were exported for an offline run; `glan batch import` "
            "its output file to finish the job"
        )
        store.jobs.save({"id": state.job_id, "error": state.error})
    return Exported(state.job_id, written, failed, state.skipped, state.total)


@dataclass
class Imported:
    state: Progress
    counts: ImportCounts


def import_results(
    store: Store,
    llm: LLMClient,
    params_for: Callable[[str], StageParams],
    path: Path,
) -> tuple[list[Imported], int]:
    """Read an output file in the Batch API's format (from an offline runner, or downloaded
    by hand) into the jobs its custom_ids name: each job's stage is rebuilt from its stored
    key, the answers accepted and written as the batch executor does; importing the same file
    again changes nothing. Also the lines that name no unit in the store."""
    from .pipeline import PipelineOptions
    from .stages import STAGES

    ids: set[str] = set()
    for raw in read_lines(path):
        if raw.strip():
            try:
                custom_id = json.loads(raw).get("custom_id")
            except (ValueError, AttributeError):
                continue
            if isinstance(custom_id, str):
                ids.add(custom_id)
    units = store.jobs.jobs_of_units(sorted(i for i in ids if i.startswith(UNIT.id_prefix + "_")))
    jobs = sorted({job for job in units.values() if job})
    runner = JobRunner(store)
    found: list[Imported] = []
    for job_id in jobs:
        row = store.jobs.get(job_id)
        if row is None:
            continue
        name = str(row.get("kind") or "")
        if name not in STAGES:
            raise InvalidInput(f"job {job_id} is of no known stage ({name!r})")
        key = json.loads(str(row.get("params") or "{}"))
        params = params_for(name)
        model = job_model(row)
        if model:  # the job's own model, whatever the settings name now
            params = params.model_copy(update={"model": model})
        options = PipelineOptions.from_stage(name, key)
        stage = STAGES[name](store, llm, params, options.for_stage(name))
        scope = str(row.get("scope") or "")
        if job_id_for(name, scope, stage.job_key()) != job_id:
            raise InvalidInput(
                f"job {job_id} cannot be rebuilt from its stored options ({row.get('params')}): "
                "its results cannot be imported"
            )
        prepared = runner.prepare_job(stage, scope or None)
        if prepared.error is not None:
            raise prepared.error
        run = JobRun(stage, prepared)
        counts = import_lines(runner, run, read_lines(path))
        found.append(Imported(end_status(runner, run), counts))
    return found, len(ids) - len(units)
