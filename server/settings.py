"""The one settings object: read once from GLAN_* environment variables and `.env`.

It is built by the CLI or the ASGI app at start and passed down as plain config objects;
nothing else in glan reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from generators.cost import PriceTable, load_prices
from generators.llm import FollowupParams, LLMConfig, StageParams
from graph.config import DEFAULT_BUFFER_POOL_MB, StoreConfig, default_db_path

DEFAULT_MAX_BODY_KB = 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GLAN_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- the store
    backend: Literal["embedded", "bolt"] = "embedded"
    db_path: Path = Field(default_factory=default_db_path)
    #: the embedded engine's page cache in MB (0: the engine's default, most of memory)
    db_buffer_mb: int = Field(default=DEFAULT_BUFFER_POOL_MB, ge=0)
    #: connections the embedded engine reads on beside its writer's (0: one connection)
    db_readers: int = Field(default=4, ge=0, le=64)
    bolt_uri: str = "bolt://localhost:7687"
    bolt_user: str | None = "neo4j"
    bolt_password: SecretStr | None = None
    bolt_database: str | None = None
    bolt_flavor: Literal["auto", "neo4j", "memgraph", "arcadedb"] = "auto"

    # --- the server
    api_token: SecretStr | None = None
    #: threads the API runs store calls on, off the event loop
    api_workers: int = Field(default=8, ge=1, le=64)
    #: the largest request body the API reads; bigger ones are refused with 413
    api_max_body_kb: int = Field(default=DEFAULT_MAX_BODY_KB, ge=1)
    host: str = "127.0.0.1"
    port: int = 8000
    #: on start, resume the jobs the server was running when it stopped (killed or shut
    #: down; not those cancelled); off, those are stored as interrupted
    resume_jobs: bool = True
    #: the CLI: send commands to the glan server at this address (http://host:port) instead
    #: of opening the store (unset: only while a server holds the embedded store, found
    #: by the record it leaves beside the database)
    server_url: str | None = None

    # --- LLM endpoint (any OpenAI-compatible server)
    llm_base_url: str = "http://127.0.0.1:8080/v1"
    llm_api_key: SecretStr = SecretStr("not-needed")
    llm_timeout_s: float = 120.0
    llm_max_retries: int = 5
    llm_concurrency: int = 8
    llm_rpm: int | None = None
    llm_tpm: int | None = None
    #: json_schema (OpenAI, vLLM) | json_object_schema (llama.cpp server) | prompt (anything)
    llm_structured: Literal["json_schema", "json_object_schema", "prompt"] = "json_schema"

    # --- models per stage (the paper answers with a cheaper model than it asks with)
    model: str = "gpt-4o-mini"
    question_model: str | None = None
    answer_model: str | None = None
    #: the model that scores question-answer pairs (glan generate judge); unset: GLAN_MODEL
    judge_model: str | None = None
    temperature: float = 1.0
    top_p: float = 0.95
    answer_temperature: float = 0.7
    answer_top_p: float = 0.95
    max_tokens: int | None = None
    #: sampling seed sent to the endpoint (reproducible output where supported)
    llm_seed: int | None = None

    # --- generation defaults
    auto_approve: bool = False
    subject_rounds: int = 10
    #: a YAML price table laid over the shipped one (generators/prices.yaml)
    prices: Path | None = None

    # --- the batch executor (glan generate --batch: the endpoint's Files + Batches API)
    #: seconds between polls of a job's running batches
    batch_poll_s: float = Field(default=30.0, gt=0)

    # --- the cluster executor (glan generate --executor ray; pip install 'glan[ray]')
    #: the Ray cluster to join ("auto", "ray://head:10001"); unset, a local Ray for the run
    ray_address: str | None = None
    #: Ray workers that send requests, each with up to ray_batch_size of them in flight
    ray_actors: int = Field(default=1, ge=1)
    ray_batch_size: int = Field(default=64, ge=1)
    #: a model for vLLM engines on the cluster to load and answer with, instead of the
    #: cluster's workers calling GLAN_LLM_BASE_URL (needs vLLM and GPUs on the cluster)
    ray_vllm_model: str | None = None
    #: vLLM engine arguments as JSON, e.g. {"tensor_parallel_size": 2}
    ray_vllm_engine_kwargs: dict[str, Any] = Field(default_factory=dict)

    def store_config(self, *, read_only: bool = False) -> StoreConfig:
        return StoreConfig(
            backend=self.backend,
            db_path=self.db_path,
            read_only=read_only,
            buffer_pool_mb=self.db_buffer_mb,
            readers=self.db_readers,
            bolt_uri=self.bolt_uri,
            bolt_user=self.bolt_user,
            bolt_password=self.bolt_password,
            bolt_database=self.bolt_database,
            bolt_flavor=self.bolt_flavor,
        )

    def price_table(self) -> PriceTable:
        """What models cost: the shipped list prices with GLAN_PRICES's table over them."""
        return load_prices(self.prices)

    def llm_config(self) -> LLMConfig:
        return LLMConfig(
            base_url=self.llm_base_url,
            api_key=self.llm_api_key,
            timeout_s=self.llm_timeout_s,
            max_retries=self.llm_max_retries,
            concurrency=self.llm_concurrency,
            rpm=self.llm_rpm,
            tpm=self.llm_tpm,
            structured=self.llm_structured,
        )

    def stage_params(self, stage: str) -> StageParams:
        """Model and sampling for one stage: taxonomy, subjects, syllabus, questions, answers,
        followups (asked as questions are, answered as answers are)."""
        if stage == "followups":
            asks = self.stage_params("questions")
            return FollowupParams(**asks.model_dump(), answer=self.stage_params("answers"))
        if stage == "judge":  # a judge should score the same pair the same way: no sampling
            return StageParams(
                model=self.judge_model or self.model,
                temperature=0.0,
                top_p=1.0,
                max_tokens=self.max_tokens,
                seed=self.llm_seed,
            )
        if stage == "answers":
            return StageParams(
                model=self.answer_model or self.model,
                temperature=self.answer_temperature,
                top_p=self.answer_top_p,
                max_tokens=self.max_tokens,
                seed=self.llm_seed,
            )
        model = self.question_model or self.model if stage == "questions" else self.model
        return StageParams(
            model=model,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            seed=self.llm_seed,
        )
