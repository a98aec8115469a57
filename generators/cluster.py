"""The cluster executor: a job's pending requests through Ray Data's LLM processor.

The job is planned and stored as the live executor plans it (`JobRunner.prepare_job`), its
units are built into their exact chat requests a chunk at a time (`Stage.prepare`,
`Stage.request`), and each chunk becomes one Ray dataset of request bodies (two under
way at once, so that one's start hides behind the other's requests), sent by
`ray.data.llm.build_processor`:

- with `HttpRequestProcessorConfig` (the default) to the OpenAI-compatible endpoint of the
  settings (GLAN_LLM_BASE_URL), from the cluster's workers: one endpoint, or a load
  balancer in front of many model servers. The workers post through
  `generators.cluster_wire.Wire`, which sends each body exactly as the live client does and
  answers every request with a row (the reply or the error), never failing the run;
- with `vLLMEngineProcessorConfig` where the cluster runs vLLM itself (GLAN_RAY_VLLM_MODEL
  names the model it loads): the messages go through the model's chat template and a JSON
  schema becomes vLLM's structured output. This path needs GPUs and vLLM on the cluster
  and is not exercised by the tests.

Results stream back to this process, the one writer: each group of rows is accepted by the
stage (parse, validate, keep the raw text) and written with its units' states in one
transaction (`JobRunner.write_group`), as the live executor writes. A JSON answer that does
not validate is asked once more, showing the model its mistake, with other corrections in
a chunk of their own. An error for one request fails that unit with the error kept (after the same
retries as the live client, for what waiting can fix), as in the live executor, and a rerun
asks it again. A run stopped by anything else (the cluster lost, Ctrl-C) leaves every unit
not yet written pending: the rerun sends only those.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import os
import queue
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from graph.errors import GlanError
from graph.store import Store

from . import cluster_wire
from .jobs import (
    WRITE_GROUP,
    JobRunner,
    JobStatus,
    Outcome,
    Progress,
    ProgressCallback,
    Stage,
    UnitSpec,
)
from .llm import ChatRequest, LLMClient, LLMConfig, Reply, StageParams, Usage
from .stages import STAGES

if TYPE_CHECKING:
    from .cost import CapGuard, CostCap
    from .pipeline import PipelineOptions

#: What installs the cluster executor's packages.
INSTALL_HINT = "pip install 'glan[ray]'"
#: Units built into requests and sent as one Ray dataset, and the datasets sent at once:
#: what this process holds is about their product.
RAY_CHUNK = 4096
CHUNKS_IN_FLIGHT = 2


class RayMissing(GlanError):
    """The cluster executor was asked for without Ray Data's LLM processor installed."""

    def __init__(self, missing: str) -> None:
        super().__init__(
            f"--executor ray needs Ray Data and its LLM processor, which are not installed "
            f"here ({missing} is missing): {INSTALL_HINT}"
        )


class ClusterError(GlanError):
    """The cluster stopped a run; what it had answered is stored, the rest stays pending."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how a job runs on Ray."""

    #: the cluster to join ("auto", "ray://host:10001", ...); None starts a local Ray here
    address: str | None = None
    #: workers that send requests (the processor's concurrency); each keeps up to
    #: `batch_size` requests in flight
    actors: int = 1
    batch_size: int = 64
    #: units per Ray dataset
    chunk: int = RAY_CHUNK
    #: CPUs of a local Ray started here (None: all of this machine's)
    num_cpus: int | None = None
    #: run the model in vLLM engines on the cluster instead of calling the endpoint
    vllm_model: str | None = None
    vllm_engine_kwargs: dict[str, Any] = field(default_factory=dict)


def require_ray() -> ModuleType:
    """The `ray` module, with Ray Data's LLM processor and aiohttp importable; RayMissing
    with the install hint if they are not."""
    try:
        import aiohttp  # noqa: F401  (the HTTP stage's client)
        import ray
        import ray.data.llm  # noqa: F401
    except ImportError as exc:
        raise RayMissing(exc.name or str(exc)) from exc
    return ray


def start_ray(options: RayOptions) -> tuple[ModuleType, bool]:
    """Ray joined or started for a run, and whether it was started here (then it is this
    run's to shut down): a Ray already running in this process (a test's, a notebook's) is
    used as it is."""
    ray = require_ray()
    started = False
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing sent home
        try:
            ray.init(
                address=options.address,
                num_cpus=options.num_cpus if options.address is None else None,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        except Exception as exc:  # an address with no cluster, a cluster that refuses us
            where = f"the Ray cluster at {options.address}" if options.address else "a local Ray"
            raise ClusterError(f"could not start or join {where}: {exc}") from exc
        started = True
    quiet_ray_data(ray)
    # the workers run the wire from this module's code: no glan needed on the cluster
    ray.cloudpickle.register_pickle_by_value(cluster_wire)
    return ray, started


def probe(address: str, timeout_s: float = 5.0) -> None:
    """Refuse at once a cluster address where nothing answers, rather than let Ray retry it
    for minutes ("auto" and other addresses without a port are left to Ray)."""
    where = address.split("://", 1)[-1]
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ClusterError(
            f"nothing answers at the Ray cluster address {address} ({exc}): check "
            "--ray-address or GLAN_RAY_ADDRESS"
        ) from exc


def quiet_ray_data(ray: ModuleType) -> None:
    """No progress bars or per-dataset log lines on the terminal: glan draws its own."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # it warns that the bars it would draw are off: they are, on purpose
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


class RayExecutor:
    """Runs stages' pending units through a Ray Data LLM processor. Ray is joined or started
    when a job first has units to send (a run with nothing left starts none), and one
    started here is shut down by `close`."""

    def __init__(self, store: Store, llm_config: LLMConfig, options: RayOptions) -> None:
        require_ray()  # before any job is stored: the install hint, not a half-made job
        if options.address:
            probe(options.address)
        self.store = store
        self.llm_config = llm_config
        self.options = options
        self.runner = JobRunner(store)
        self._ray: ModuleType | None = None
        self._processor: Any = None
        self._started = False
        self._connecting = threading.Lock()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._started and self._ray is not None:
            self._ray.shutdown()
        self._started = False

    def _connect(self) -> tuple[ModuleType, Any]:
        with self._connecting:  # chunks are sent from two threads
            if self._ray is None:
                self._ray, self._started = start_ray(self.options)
            if self._processor is None:
                self._processor = self._build_processor()
            return self._ray, self._processor

    @property
    def url(self) -> str:
        return self.llm_config.base_url.rstrip("/") + "/chat/completions"

    def _build_processor(self) -> Any:
        from ray.data.llm import (
            HttpRequestProcessorConfig,
            build_processor,
            vLLMEngineProcessorConfig,
        )

        o, c = self.options, self.llm_config
        if o.vllm_model:
            config: Any = vLLMEngineProcessorConfig(
                model_source=o.vllm_model,
                engine_kwargs=o.vllm_engine_kwargs,
                concurrency=o.actors,
                batch_size=o.batch_size,
                should_continue_on_error=True,
            )
            return build_processor(
                config, preprocess=cluster_wire.vllm_payload, postprocess=cluster_wire.vllm_result
            )
        config = HttpRequestProcessorConfig(
            url=self.url,
            headers={"Authorization": f"Bearer {c.api_key.get_secret_value()}"},
            concurrency=o.actors,
            batch_size=o.batch_size,
            qps=max(1, c.rpm // 60) if c.rpm else None,
            max_retries=0,  # the wire retries, honouring Retry-After, as the live client
            session_factory=functools.partial(
                cluster_wire.Wire,
                timeout_s=c.timeout_s,
                max_retries=c.max_retries,
                backoff_base_s=c.backoff_base_s,
                backoff_max_s=c.backoff_max_s,
                limit=o.batch_size,
            ),
            # a worker waits on the network: a fraction of a CPU lets several share a core
            http_request_stage={"num_cpus": 0.25},
        )
        return build_processor(
            config, preprocess=cluster_wire.http_payload, postprocess=cluster_wire.http_result
        )

    def run(
        self,
        stage: Stage,
        scope_path: str | None,
        *,
        progress: ProgressCallback | None = None,
        cost_cap: CostCap | None = None,
    ) -> Progress:
        """Run the stage's job under `scope_path` to its end: what is left of it, chunk by
        chunk. Raises ClusterError when the cluster stops it (the job is stored as failed,
        its unanswered units pending); Ctrl-C stores it as cancelled."""
        if cost_cap is not None:
            cost_cap.check_model(stage.params.model)
        prepared = self.runner.prepare_job(stage, scope_path)
        state, params = prepared.state, prepared.params
        if progress:
            progress(state)
        if prepared.error is not None:
            raise prepared.error
        if not prepared.todo:  # nothing left to send: no Ray needed
            return self.runner.finish(state, params, None, progress)
        guard: CapGuard | None = None
        if cost_cap is not None:
            guard = cost_cap.guard(self.store, stage, prepared.todo)
            state.max_cost = cost_cap.limit_usd
            self.store.jobs.save({"id": state.job_id, "max_cost": state.max_cost})
        # priced as requests sent one by one; a server holding the store resumes it live
        self.store.jobs.save({"id": state.job_id, "executor": "cluster"})
        job = _Job(self.runner, stage, state, params, prepared.spent, guard, progress)
        try:
            self._connect()  # here, on the main thread, as Ray wants to be started
            self._run_rounds(job, scope_path, prepared.todo)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                job.flush()
            # Ctrl-C, or a SIGTERM Ray turns into SystemExit: stopped, not failed
            stopping = isinstance(exc, KeyboardInterrupt | SystemExit)
            state.status = JobStatus.CANCELLED if stopping else JobStatus.FAILED
            state.error = None if stopping else f"the cluster run stopped: {exc!r}"
            self.store.jobs.save(state.as_row(params))
            if stopping or isinstance(exc, GlanError):
                raise
            raise ClusterError(
                f"the Ray run of {stage.name} stopped: {exc}; {state.done:,} of "
                f"{state.total:,} units are done and the rest stay pending: run the same "
                "command again to go on"
            ) from exc
        if guard is not None and guard.reached and state.finished < state.total:
            state.error = guard.message(state)
            return self.runner.finish(state, params, JobStatus.COST_CAPPED, progress)
        return self.runner.finish(state, params, None, progress)

    def _run_rounds(self, job: _Job, scope_path: str | None, todo: list[UnitSpec]) -> None:
        """Send the job's units; a chained stage (Stage.chained) goes on in rounds, as the
        live executor's does, each planned on what the rounds before it wrote, until a
        round plans nothing new. A later round sends only units no round of this run sent:
        one that failed in this run stays failed until the next run."""
        asked = {u.id for u in todo}
        while todo:
            self._run_chunks(job, todo)
            if not job.stage.chained or (job.guard is not None and job.guard.reached):
                return
            again = self.runner.prepare_job(job.stage, scope_path)
            if again.error is not None:
                raise again.error
            todo = [u for u in again.todo if u.id not in asked]
            asked.update(u.id for u in todo)
            # the plan grew by this round's units; those done are counted by the store (the
            # skipped and failed counts stay this run's, as in the live executor's rounds)
            job.state.total, job.state.done = again.state.total, again.state.done
            job.spent.update(again.spent)

    def _run_chunks(self, job: _Job, todo: Sequence[UnitSpec]) -> None:
        """Send the units a chunk at a time, CHUNKS_IN_FLIGHT chunks at once (each Ray
        dataset starts its own workers, which takes seconds: the next chunk's start hides
        behind the last one's requests), and accept and write what comes back on this
        thread as it comes. JSON answers that do not validate go again, corrected, in a
        chunk of their own."""
        size = self.options.chunk
        chunks = (todo[i : i + size] for i in range(0, len(todo), size))
        out: queue.Queue[tuple[int, str, Any]] = queue.Queue(maxsize=2 * CHUNKS_IN_FLIGHT)
        stop = threading.Event()
        asks: dict[str, _Ask] = {}  # sent, not answered
        again: dict[str, _Ask] = {}  # corrected, not yet sent
        running: dict[int, int] = {}  # a chunk being sent -> its units not answered yet
        tags = itertools.count()
        more = True
        held: Sequence[UnitSpec] = ()  # units of a chunk the cost cap held back
        senders: list[threading.Thread] = []

        def start(units: Sequence[UnitSpec] | dict[str, _Ask]) -> None:
            tag = next(tags)
            running[tag] = len(units)
            sender = threading.Thread(
                target=self._feed,
                args=(job.stage, units, tag, out, stop),
                name=f"glan-ray-{tag}",
                daemon=True,  # one stopped mid-chunk must not hold the process open
            )
            senders.append(sender)
            sender.start()

        try:
            while True:
                while len(running) < CHUNKS_IN_FLIGHT:
                    if len(again) >= size or (again and not more):
                        asks.update(again)
                        start(dict(again))
                        again.clear()
                        continue
                    chunk: Sequence[UnitSpec] | None = held
                    if not held:
                        chunk = next(chunks, None) if more else None
                    held = ()
                    if not chunk:
                        more = False
                        break
                    if job.guard is not None:  # what the cost cap lets start
                        n = _allowed(job.guard, job.state, sum(running.values()), len(chunk))
                        chunk, held = chunk[:n], chunk[n:]
                        if not chunk and not running:  # and nothing under way will change it
                            more, held = False, ()
                        if not chunk:
                            break
                    start(chunk)
                    if held:  # the rest waits for what is under way to say what units cost
                        break
                if not running:
                    break
                tag, kind, payload = out.get()
                if kind == "error":
                    raise payload
                if kind == "asks":
                    asks.update(payload)
                elif kind == "unasked":  # cannot be asked: fail as in the live executor
                    for unit, outcome in payload:
                        job.done(unit, outcome)
                    running[tag] -= len(payload)
                elif kind == "rows":
                    for row in payload:
                        self._receive(job, asks, row, again)
                    running[tag] -= len(payload)
                elif kind == "end" and running.pop(tag):  # never expected, never lost
                    raise ClusterError("a chunk's requests came back without an answer")
                job.flush()  # what came back is written as it comes
        except BaseException:
            stop.set()  # the senders stop at their next block; Ray may be shut down first
            for sender in senders:
                sender.join(timeout=1)
            raise
        for sender in senders:  # each has handed over its last rows: done with Ray
            sender.join()

    def _feed(
        self,
        stage: Stage,
        units: Sequence[UnitSpec] | dict[str, _Ask],
        tag: int,
        out: queue.Queue[tuple[int, str, Any]],
        stop: threading.Event,
    ) -> None:
        """One chunk, on a thread of its own: its requests built (unless they come built,
        corrected) and sent, and what comes back handed to the writer through `out`."""

        def put(kind: str, payload: Any) -> bool:
            while not stop.is_set():
                with contextlib.suppress(queue.Full):
                    out.put((tag, kind, payload), timeout=0.2)
                    return True
            return False

        try:
            if isinstance(units, dict):
                asks = units
            else:
                stage.prepare(units)
                asks, unasked = {}, []
                for unit in units:
                    request = stage.request(unit)
                    if isinstance(request, Outcome):
                        unasked.append((unit, request))
                    else:
                        asks[unit.id] = _Ask(unit, request)
                if not put("asks", asks) or (unasked and not put("unasked", unasked)):
                    return
            for rows in self._send(asks):
                if not put("rows", rows):
                    return
            put("end", None)
        except BaseException as exc:
            put("error", exc)

    def _receive(
        self, job: _Job, asks: dict[str, _Ask], row: dict[str, Any], again: dict[str, _Ask]
    ) -> None:
        """One result row: the unit's outcome, or, for a first answer that is JSON and does
        not validate, its corrected request (in `again`, to send)."""
        ask = asks.pop(str(row["unit"]))
        # a vLLM engine's failed row skips the postprocess and says so in this column
        reply_error = row.get("error") or row.get("__inference_error__")
        if reply_error:
            outcome = Outcome(error=f"{ask.request.params.model} at {self._where()} {reply_error}")
        else:
            tokens = Usage(
                int(row.get("prompt_tokens") or 0), int(row.get("completion_tokens") or 0)
            )
            reply = Reply(str(row.get("text") or ""), tokens, row.get("finish_reason") or None)
            outcome = job.stage.accept(ask.unit, ask.request, reply)
        outcome.usage = ask.usage + outcome.usage
        if ask.first and not reply_error and not outcome.ok and not ask.request.free_text:
            corrected = ask.request.corrected(outcome.raw, outcome.error or "")
            again[ask.unit.id] = _Ask(ask.unit, corrected, outcome.usage, first=False)
            return
        job.done(ask.unit, outcome)

    def _where(self) -> str:
        if self.options.vllm_model:
            return f"the cluster's vLLM engines ({self.options.vllm_model})"
        return self.llm_config.base_url

    def _send(self, asks: dict[str, _Ask]) -> Iterator[list[dict[str, Any]]]:
        """The requests' result rows, a block at a time as blocks finish."""
        if not asks:
            return
        items = [{"unit": uid, "body": json.dumps(a.request.body())} for uid, a in asks.items()]
        ray, processor = self._connect()
        blocks = max(1, -(-len(items) // self.options.batch_size))
        dataset = processor(ray.data.from_items(items, override_num_blocks=blocks))
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield batch.to_pylist()


@dataclass
class _Ask:
    unit: UnitSpec
    request: ChatRequest
    usage: Usage = field(default_factory=Usage)  # of its earlier attempts
    first: bool = True  # its first attempt (a second is a correction, and the last)


class _Job:
    """A job's finished units, counted and written in groups as they come back."""

    def __init__(
        self,
        runner: JobRunner,
        stage: Stage,
        state: Progress,
        params: str,
        spent: dict[str, Usage],
        guard: CapGuard | None,
        progress: ProgressCallback | None,
    ) -> None:
        self.runner, self.stage, self.state, self.params = runner, stage, state, params
        self.spent, self.guard, self.progress = spent, guard, progress
        self.waiting: list[tuple[UnitSpec, Outcome]] = []

    def done(self, unit: UnitSpec, outcome: Outcome) -> None:
        # as the live executor counts: the run's tokens, then the unit's over all its runs
        self.state.prompt_tokens += outcome.usage.prompt_tokens
        self.state.completion_tokens += outcome.usage.completion_tokens
        if self.guard is not None:
            self.guard.record(outcome.usage)
        outcome.usage = self.spent.get(unit.id, Usage()) + outcome.usage
        self.waiting.append((unit, outcome))
        if len(self.waiting) >= WRITE_GROUP:
            self.flush()

    def flush(self) -> None:
        group, self.waiting = self.waiting, []
        if group:
            self.runner.write_group(self.stage, group, self.state, self.params)
            if self.progress:
                self.progress(self.state)


def _allowed(guard: CapGuard, state: Progress, in_flight: int, wanted: int) -> int:
    """How many of `wanted` units may start, `in_flight` others being under way, within
    the cost cap."""
    n = 0
    while n < wanted and guard.allows(state, in_flight + n):
        n += 1
    return n


def run_stages_on_ray(
    store: Store,
    llm_config: LLMConfig,
    params_for: Callable[[str], StageParams],
    stages: Sequence[str],
    path: str | None,
    options: PipelineOptions,
    ray_options: RayOptions,
    *,
    progress: ProgressCallback | None = None,
    cost_cap: CostCap | None = None,
) -> list[Progress]:
    """Run each stage as a job under `path` on Ray, one after another, as `run_stages` does
    with the live executor: the same jobs, units and outputs."""
    if cost_cap is not None:
        for name in stages:
            cost_cap.check_model(params_for(name).model)
    llm = LLMClient(llm_config)  # builds the requests (their structured-output mode)
    results: list[Progress] = []
    try:
        with RayExecutor(store, llm_config, ray_options) as executor:
            for name in stages:
                stage = STAGES[name](store, llm, params_for(name), options.for_stage(name))
                results.append(executor.run(stage, path, progress=progress, cost_cap=cost_cap))
                if results[-1].status == JobStatus.COST_CAPPED:
                    break  # later stages would run on part of its output
    finally:
        asyncio.run(llm.aclose())
    return results
