"""What generation costs: a price table, an estimate before a run, a cap during one.

Prices are per model, in US dollars per million tokens, from generators/prices.yaml (list
prices, to be checked) with the file GLAN_PRICES names laid over it. A model in neither has
no price: its cost is unknown (None), never 0.

A job's estimate is the units it has left times what a unit is expected to take: the
average tokens per done unit of the jobs of the same stage and model already in the store,
or, before there are any, a unit's prompt measured on a sample of its requests (about four
characters a token) and its completion taken as the stage's max_tokens, or a guess per
stage. A job's cost so far is its tokens (the sum of its units') at its model's price.

A cap (`--max-cost`) bounds a job's cost: the live executor starts a unit only while the
job's cost so far plus the units in flight, this one included, stays within it (see
`CapGuard`); the batch executor checks a whole batch's estimate first (`check_cap`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from graph.errors import InvalidInput
from graph.records import Node
from graph.store import Store

from .jobs import Outcome, Progress, Stage, UnitSpec, UnitStatus, job_id_for
from .llm import LLMClient, StageParams, Usage
from .planning import plan_summary

if TYPE_CHECKING:
    from .pipeline import PipelineOptions

#: The share of the price a batch API takes off, where the table does not say.
DEFAULT_BATCH_DISCOUNT = 0.5
#: Characters per prompt token, for a prompt not yet sent (English text and JSON).
CHARS_PER_TOKEN = 4
#: Requests built to measure a job's prompts when no unit of its stage and model is done.
PROMPT_SAMPLE = 16
#: A completion's tokens when the stage has no max_tokens, from what each prompt asks for:
#: a few names with a line each, ten subjects with subtopics, a dozen sessions with their
#: concepts, one question, one worked answer.
COMPLETION_GUESS = {
    "taxonomy": 800,
    "subjects": 1000,
    "syllabus": 2500,
    "questions": 250,
    "answers": 800,
}


class CostUnknown(InvalidInput):
    """A cost was needed (a cap to keep) for a model the price table has no price for."""

    def __init__(self, model: str) -> None:
        self.model = model
        super().__init__(
            f"the price table has no price for model {model!r}, so its cost cannot be "
            "capped: add it to a YAML file named by GLAN_PRICES (see generators/prices.yaml)"
        )


class CostCapExceeded(InvalidInput):
    """Work whose estimate, with what was spent already, passes the cap it was given:
    refused before anything is sent (a batch before it is submitted)."""

    def __init__(
        self, *, estimate_usd: float, cap_usd: float, spent_usd: float = 0.0, what: str = ""
    ) -> None:
        self.estimate_usd = estimate_usd
        self.cap_usd = cap_usd
        self.spent_usd = spent_usd
        spent = f" on top of {usd(spent_usd)} already spent" if spent_usd else ""
        super().__init__(
            f"{what or 'this work'} would cost about {usd(estimate_usd)}{spent}, over the cost "
            f"cap of {usd(cap_usd)}: nothing was sent. Raise --max-cost, or narrow the scope"
        )


def usd(value: float | None) -> str:
    """A cost as printed: cents, or tenths of a cent below a dollar's hundredth; 'unknown'."""
    if value is None:
        return "unknown"
    return f"${value:,.2f}" if value >= 0.01 or value == 0 else f"${value:.4f}"


# ---------------------------------------------------------------------------- prices


@dataclass(frozen=True)
class Price:
    """A model's price: US dollars per million prompt (input) and completion (output)
    tokens, and the share a batch API takes off both."""

    input: float
    output: float
    batch_discount: float = DEFAULT_BATCH_DISCOUNT

    def cost(self, usage: Usage, *, batch: bool = False) -> float:
        full = (usage.prompt_tokens * self.input + usage.completion_tokens * self.output) / 1e6
        return full * (1 - self.batch_discount) if batch else full


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: float = Field(ge=0)
    output: float = Field(ge=0)
    batch_discount: float | None = Field(default=None, ge=0, le=1)


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch_discount: float = Field(default=DEFAULT_BATCH_DISCOUNT, ge=0, le=1)
    models: dict[str, _Entry] = Field(default_factory=dict)


@dataclass(frozen=True)
class PriceTable:
    """Prices by model name (matched without regard to case)."""

    models: Mapping[str, Price] = field(default_factory=dict)

    def price(self, model: str | None) -> Price | None:
        return self.models.get(model.casefold()) if model else None

    def cost(self, model: str | None, usage: Usage, *, batch: bool = False) -> float | None:
        """What these tokens cost on this model; None when it has no price."""
        price = self.price(model)
        return price.cost(usage, batch=batch) if price is not None else None

    def require(self, model: str) -> Price:
        price = self.price(model)
        if price is None:
            raise CostUnknown(model)
        return price

    def over(self, other: PriceTable) -> PriceTable:
        """This table with `other`'s models laid over it."""
        return PriceTable({**self.models, **other.models})

    @classmethod
    def parse(cls, text: str, source: str) -> PriceTable:
        """A table from YAML in the shape of generators/prices.yaml; `source` names it in
        the error when it is not."""
        try:
            data = yaml.safe_load(text) or {}
            table = _File.model_validate(data)
        except (yaml.YAMLError, ValidationError) as exc:
            raise InvalidInput(f"the price table {source} is not valid: {exc}") from exc
        return cls(
            {
                name.casefold(): Price(
                    e.input,
                    e.output,
                    table.batch_discount if e.batch_discount is None else e.batch_discount,
                )
                for name, e in table.models.items()
            }
        )


def bundled_prices() -> PriceTable:
    text = resources.files("generators").joinpath("prices.yaml").read_text(encoding="utf-8")
    return PriceTable.parse(text, "generators/prices.yaml")


def load_prices(override: Path | None = None) -> PriceTable:
    """The shipped table, with the one in `override` (GLAN_PRICES) laid over it. Read again
    only when the file changes."""
    if override is None:
        return _load(None, 0)
    try:
        stamp = os.stat(override).st_mtime_ns
    except OSError as exc:
        raise InvalidInput(f"cannot read the price table {override} (GLAN_PRICES): {exc}") from exc
    return _load(str(override), stamp)


@lru_cache(maxsize=8)
def _load(override: str | None, stamp: int) -> PriceTable:
    table = bundled_prices()
    if override is None:
        return table
    try:
        text = Path(override).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read the price table {override} (GLAN_PRICES): {exc}") from exc
    return table.over(PriceTable.parse(text, f"{override} (GLAN_PRICES)"))


# ---------------------------------------------------------------------------- jobs


def job_model(row: Mapping[str, Any]) -> str | None:
    """The model a stored job ran on: recorded on it, or (jobs stored before that was
    recorded) in its key, where a stage keys its jobs by model."""
    if row.get("model"):
        return str(row["model"])
    try:
        key = json.loads(str(row.get("params") or "{}"))
    except ValueError:
        return None
    model = key.get("model") if isinstance(key, dict) else None
    return str(model) if model else None


def job_cost(row: Mapping[str, Any], prices: PriceTable) -> float | None:
    """What a stored job's tokens cost at its model's price; None when that is unknown.
    A job an executor marks as run in batches (`executor: batch`) pays the batch price."""
    spent = Usage(int(row.get("prompt_tokens") or 0), int(row.get("completion_tokens") or 0))
    return prices.cost(job_model(row), spent, batch=row.get("executor") == "batch")


def history_usage(store: Store, stage: str, model: str) -> tuple[Usage, int] | None:
    """The tokens per done unit of the jobs of this stage and model in the store (all their
    tokens, failed attempts' too, over their done units), and how many units that is; None
    before any unit is done. Read from the jobs' own counters: no unit is read."""
    spent, done = Usage(), 0
    for row in store.jobs.all():
        if row.get("kind") == stage and job_model(row) == model:
            done += int(row.get("done") or 0)
            spent = spent + Usage(
                int(row.get("prompt_tokens") or 0), int(row.get("completion_tokens") or 0)
            )
    if not done:
        return None
    return Usage(round(spent.prompt_tokens / done), round(spent.completion_tokens / done)), done


def completion_guess(stage: str, params: StageParams) -> int:
    return params.max_tokens or COMPLETION_GUESS.get(stage, 1000)


def prompt_usage(stage: Stage, units: Sequence[UnitSpec]) -> tuple[Usage, int]:
    """A unit's expected tokens from its request: the prompt measured on up to PROMPT_SAMPLE
    of these units (spread over them), the completion as max_tokens or the stage's guess;
    and how many requests were measured. Reads the sample's inputs from the store."""
    step = max(1, math.ceil(len(units) / PROMPT_SAMPLE))
    sample = list(units[::step])[:PROMPT_SAMPLE]
    stage.prepare(sample)
    chars: list[int] = []
    for unit in sample:
        request = stage.request(unit)
        if isinstance(request, Outcome):
            continue  # it cannot be asked: it would fail without a call
        text = sum(len(m.get("content") or "") for m in request.messages)
        if request.response_format is not None:
            text += len(json.dumps(request.response_format))
        chars.append(text)
    prompt = math.ceil(sum(chars) / len(chars) / CHARS_PER_TOKEN) if chars else 0
    return Usage(prompt, completion_guess(stage.name, stage.params)), len(chars)


def unit_usage(store: Store, stage: Stage, todo: Sequence[UnitSpec]) -> tuple[Usage, str, int]:
    """What one of these units is expected to take, the basis of that ("history": done
    units of this stage and model; "prompt": measured requests; "none": nothing to do)
    and how many units or requests it rests on."""
    if not todo:
        return Usage(), "none", 0
    seen = history_usage(store, stage.name, stage.params.model)
    if seen is not None:
        return seen[0], "history", seen[1]
    usage, measured = prompt_usage(stage, todo)
    return usage, "prompt", measured


@dataclass
class Estimate:
    """A job as a run would find it, with what its units left would cost."""

    stage: str
    scope: str
    job_id: str
    model: str
    total: int  # units in its plan
    done: int  # done by earlier runs
    per_unit: Usage  # tokens a unit left is expected to take
    basis: str  # history | prompt | none
    sample: int  # units or requests per_unit rests on
    spent: Usage  # the job's tokens so far (none before it is stored)
    price: Price | None
    batch: bool = False
    stored: bool = False  # the job is in the store already (an earlier run)
    #: a coverage-driven questions job: its target and questions per discipline
    #: (generators/planning.py, plan_summary); None for any other job
    coverage: dict[str, Any] | None = None

    @property
    def todo(self) -> int:
        return self.total - self.done

    @property
    def tokens(self) -> Usage:
        """The tokens the units left are expected to take."""
        return Usage(
            self.per_unit.prompt_tokens * self.todo, self.per_unit.completion_tokens * self.todo
        )

    @property
    def estimated_usd(self) -> float | None:
        return self.price.cost(self.tokens, batch=self.batch) if self.price else None

    @property
    def spent_usd(self) -> float | None:
        return self.price.cost(self.spent, batch=self.batch) if self.price else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "scope": self.scope,
            "job_id": self.job_id,
            "model": self.model,
            "total": self.total,
            "done": self.done,
            "todo": self.todo,
            "prompt_tokens": self.tokens.prompt_tokens,
            "completion_tokens": self.tokens.completion_tokens,
            "basis": self.basis,
            "sample": self.sample,
            "estimated_usd": self.estimated_usd,
            "spent_usd": self.spent_usd,
            "coverage": self.coverage,
        }


def plan_job(store: Store, stage: Stage, scope_path: str | None) -> tuple[str, list[UnitSpec]]:
    """The job's scope path and its units, as a run would plan them, without storing
    anything: no job row (a stored one would look started, and a server would resume it),
    no units. A sampled plan (questions) drawn here is drawn the same by the run; a job
    stored by an earlier run gives back its stored plan, as the run reads it."""
    scope: Node | None = store.taxonomy.scope(scope_path)
    stage.check_scope(scope)
    scope_text = scope.path or "" if scope else ""
    stage.job_id = job_id_for(stage.name, scope_text, stage.job_key())
    return scope_text, stage.plan(scope)


def estimate_job(
    store: Store, stage: Stage, scope_path: str | None, prices: PriceTable, *, batch: bool = False
) -> Estimate:
    """What a run of this stage under this scope would do and cost. Reads only."""
    scope_text, units = plan_job(store, stage, scope_path)
    statuses = store.jobs.unit_statuses([u.id for u in units])
    todo = [u for u in units if statuses.get(u.id) != UnitStatus.DONE]
    row = store.jobs.get(stage.job_id)
    spent = Usage(
        int((row or {}).get("prompt_tokens") or 0), int((row or {}).get("completion_tokens") or 0)
    )
    per_unit, basis, sample = unit_usage(store, stage, todo)
    return Estimate(
        stage=stage.name,
        scope=scope_text,
        job_id=stage.job_id,
        model=stage.params.model,
        total=len(units),
        done=len(units) - len(todo),
        per_unit=per_unit,
        basis=basis,
        sample=sample,
        spent=spent,
        price=prices.price(stage.params.model),
        batch=batch,
        stored=row is not None,
        coverage=plan_summary(store, stage, scope_text, todo),
    )


def estimate_stages(
    store: Store,
    llm: LLMClient,
    params_for: Callable[[str], StageParams],
    stages: Sequence[str],
    path: str | None,
    options: PipelineOptions,
    prices: PriceTable,
    *,
    batch: bool = False,
) -> list[Estimate]:
    """A dry run: each stage's job planned on what the store holds now, and its estimate.
    Nothing is stored and the model is not called (`llm` only shapes the requests measured).
    A later stage of a pipeline runs on what the earlier ones make, which is not there yet:
    its estimate covers only what it would find now."""
    from .stages import STAGES

    found = []
    for name in stages:
        stage = STAGES[name](store, llm, params_for(name), options.for_stage(name))
        found.append(estimate_job(store, stage, path, prices, batch=batch))
    return found


# ---------------------------------------------------------------------------- caps


def check_cap(
    estimate_usd: float | None,
    cap_usd: float,
    *,
    spent_usd: float = 0.0,
    model: str = "",
    what: str = "",
) -> None:
    """Refuse work whose estimate, on top of what was spent, passes the cap (a batch before
    it is submitted): CostCapExceeded, with the figures; CostUnknown when the model has no
    price, since then nothing can be said to keep within the cap."""
    if estimate_usd is None:
        raise CostUnknown(model or "(unnamed)")
    if spent_usd + estimate_usd > cap_usd:
        raise CostCapExceeded(
            estimate_usd=estimate_usd, cap_usd=cap_usd, spent_usd=spent_usd, what=what
        )


@dataclass(frozen=True)
class CostCap:
    """A bound on a job's cost, in US dollars, with the prices to keep it by."""

    limit_usd: float
    prices: PriceTable
    batch: bool = False

    def __post_init__(self) -> None:
        if not self.limit_usd > 0:
            raise InvalidInput(f"a cost cap must be above 0 dollars, got {self.limit_usd}")

    def check_model(self, model: str) -> Price:
        """The model's price; CostUnknown before anything starts when it has none."""
        return self.prices.require(model)

    def guard(self, store: Store, stage: Stage, todo: Sequence[UnitSpec]) -> CapGuard:
        """The cap for one run of a job, with what a unit is expected to cost before any
        of its units has shown it. Reads the store: call it off the event loop."""
        price = self.check_model(stage.params.model)
        per_unit, _, _ = unit_usage(store, stage, todo)
        return CapGuard(self.limit_usd, price, per_unit, self.batch)


@dataclass
class CapGuard:
    """Keeps one run of a job within its cap: a unit starts only while the job's cost so far
    plus the units in flight, this one included, stays within it. A unit in flight is
    expected to cost what this run's units have cost on average once some have finished
    (`record`), and what the estimate says before."""

    limit_usd: float
    price: Price
    planned: Usage
    batch: bool = False
    #: set when a unit was not started for the cap: the job is then stored as stopped at it
    reached: bool = False
    #: units this run has finished, and their tokens
    seen_units: int = 0
    seen: Usage = field(default_factory=Usage)

    def record(self, usage: Usage) -> None:
        """A unit of this run finished, with these tokens (all its attempts')."""
        self.seen_units += 1
        self.seen = self.seen + usage

    def spent_usd(self, state: Progress) -> float:
        return self.price.cost(
            Usage(state.prompt_tokens, state.completion_tokens), batch=self.batch
        )

    def unit_usd(self) -> float:
        if self.seen_units:
            per_unit = Usage(
                math.ceil(self.seen.prompt_tokens / self.seen_units),
                math.ceil(self.seen.completion_tokens / self.seen_units),
            )
            return self.price.cost(per_unit, batch=self.batch)
        return self.price.cost(self.planned, batch=self.batch)

    def allows(self, state: Progress, in_flight: int) -> bool:
        """Whether one more unit may start now, `in_flight` others being under way."""
        if self.spent_usd(state) + (in_flight + 1) * self.unit_usd() <= self.limit_usd:
            return True
        self.reached = True
        return False

    def message(self, state: Progress) -> str:
        """Why the job stopped, stored as its error and shown by the CLI."""
        return (
            f"stopped at the cost cap: {usd(self.spent_usd(state))} spent of "
            f"{usd(self.limit_usd)}, and the next unit would take about "
            f"{usd(self.unit_usd())}; {state.done:,} of {state.total:,} units are done, "
            "and running it again with a higher --max-cost goes on from there"
        )
