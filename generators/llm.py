"""One async client for any OpenAI-compatible endpoint: retries, limits, token accounting.

Retries happen here and only for what a retry can fix (429, 5xx, timeouts, dropped
connections), honouring Retry-After. Every provider error leaves as one `LLMError`.
Structured calls validate the answer against a pydantic model, retry once with the
validation error, and always keep the model's raw text.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import openai
from pydantic import BaseModel, SecretStr, ValidationError

from graph.errors import GlanError

T = TypeVar("T", bound=BaseModel)
Messages = list[dict[str, str]]


class LLMConfig(BaseModel):
    base_url: str = "http://127.0.0.1:8080/v1"
    api_key: SecretStr = SecretStr("not-needed")
    timeout_s: float = 120.0
    max_retries: int = 5
    concurrency: int = 8
    rpm: int | None = None
    tpm: int | None = None
    #: json_schema (OpenAI, vLLM) | json_object_schema (llama.cpp server) | prompt (anything)
    structured: Literal["json_schema", "json_object_schema", "prompt"] = "json_schema"
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0


class StageParams(BaseModel):
    model: str
    temperature: float = 1.0
    top_p: float = 0.95
    max_tokens: int | None = None
    #: asks the endpoint for reproducible sampling where it supports it
    seed: int | None = None


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


class LLMError(GlanError):
    """The endpoint could not give an answer (after the retries that made sense)."""

    def __init__(self, message: str, *, status_code: int | None = None, attempts: int = 1):
        self.status_code = status_code
        self.attempts = attempts
        super().__init__(message)


@dataclass
class StructuredResult(Generic[T]):
    value: T | None
    raw: str
    usage: Usage
    error: str | None = None
    attempts: int = 1


class _RateLimiter:
    """Requests- and tokens-per-minute budgets, refilled continuously."""

    def __init__(self, per_minute: int | None) -> None:
        self.rate = per_minute / 60.0 if per_minute else None
        self.capacity = float(per_minute or 0)
        self.level = self.capacity
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, amount: float = 1.0) -> None:
        if self.rate is None:
            return
        amount = min(amount, self.capacity)
        async with self.lock:
            while True:
                now = time.monotonic()
                self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.level >= amount:
                    self.level -= amount
                    return
                await asyncio.sleep((amount - self.level) / self.rate)


def _retry_after(headers: Mapping[str, str] | None, cap: float) -> float | None:
    """Seconds the server asked us to wait, from a Retry-After header (seconds or a date)."""
    value = headers.get("retry-after") if headers is not None else None
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), cap)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return min(max(parsed.timestamp() - time.time(), 0.0), cap)


#: Longest string bound sent to the endpoint. Grammar-constrained servers unroll a bound
#: into one rule per character, and a few thousand of them crash a llama.cpp server; longer
#: limits are still enforced when the answer is validated.
MAX_SCHEMA_STRING = 256


def grammar_safe(schema: Any) -> Any:
    """The JSON schema without string bounds too long to turn into a grammar."""
    if isinstance(schema, dict):
        return {
            k: grammar_safe(v)
            for k, v in schema.items()
            if not (k == "maxLength" and isinstance(v, int) and v > MAX_SCHEMA_STRING)
        }
    if isinstance(schema, list):
        return [grammar_safe(v) for v in schema]
    return schema


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def extract_json(text: str) -> Any:
    """The first JSON object or array in a model's text (code fences and chatter allowed)."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for candidate in candidates:
        for i, ch in enumerate(candidate):
            if ch in "{[":
                try:
                    value, _ = decoder.raw_decode(candidate[i:])
                except json.JSONDecodeError:
                    continue
                return value
    raise ValueError("no JSON object found in the answer")


class LLMClient:
    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        self._client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=config.api_key.get_secret_value(),
            timeout=config.timeout_s,
            max_retries=0,  # retried below, where the policy lives
        )
        self._slots = asyncio.Semaphore(max(1, config.concurrency))
        self._rpm = _RateLimiter(config.rpm)
        self._tpm = _RateLimiter(config.tpm)
        self.usage = Usage()
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def aclose(self) -> None:
        await self._client.close()

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.config.backoff_max_s, self.config.backoff_base_s * 2**attempt)
        return random.uniform(0, ceiling)  # full jitter

    async def complete(
        self,
        messages: Messages,
        params: StageParams,
        *,
        response_format: dict[str, Any] | None = None,
    ) -> tuple[str, Usage]:
        """One chat completion, retried on transient failures; returns text and usage."""
        extra: dict[str, Any] = {}
        if params.max_tokens is not None:
            extra["max_tokens"] = params.max_tokens
        if params.seed is not None:
            extra["seed"] = params.seed
        if response_format is not None:
            extra["response_format"] = response_format
        estimate = sum(len(m.get("content", "")) for m in messages) / 4 + (params.max_tokens or 0)
        attempts = self.config.max_retries + 1
        for attempt in range(attempts):
            await self._rpm.take()
            await self._tpm.take(estimate)
            wait: float | None = None
            try:
                async with self._slots:
                    self.in_flight += 1
                    self.max_in_flight = max(self.max_in_flight, self.in_flight)
                    try:
                        self.calls += 1
                        reply = await self._client.chat.completions.create(
                            model=params.model,
                            messages=messages,  # type: ignore[arg-type]
                            temperature=params.temperature,
                            top_p=params.top_p,
                            **extra,
                        )
                    finally:
                        self.in_flight -= 1
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status != 429 and status < 500:
                    raise LLMError(
                        f"the endpoint refused the request ({status}): {_message(exc)}",
                        status_code=status,
                        attempts=attempt + 1,
                    ) from exc
                if attempt + 1 == attempts:
                    raise LLMError(
                        f"gave up after {attempts} attempts; last answer {status}: {_message(exc)}",
                        status_code=status,
                        attempts=attempts,
                    ) from exc
                wait = _retry_after(exc.response.headers, self.config.backoff_max_s)
            except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                if attempt + 1 == attempts:
                    kind = "timed out" if isinstance(exc, openai.APITimeoutError) else "failed"
                    raise LLMError(
                        f"the request {kind} {attempts} times ({self.config.base_url}): {exc}",
                        attempts=attempts,
                    ) from exc
            else:
                usage = Usage(
                    reply.usage.prompt_tokens if reply.usage else 0,
                    reply.usage.completion_tokens if reply.usage else 0,
                )
                self.usage = self.usage + usage
                text = reply.choices[0].message.content if reply.choices else None
                return text or "", usage
            await asyncio.sleep(wait if wait is not None else self._backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _response_format(self, model_cls: type[BaseModel]) -> dict[str, Any] | None:
        schema = grammar_safe(model_cls.model_json_schema())
        if self.config.structured == "json_schema":
            return {
                "type": "json_schema",
                "json_schema": {"name": model_cls.__name__, "schema": schema, "strict": False},
            }
        if self.config.structured == "json_object_schema":
            return {"type": "json_object", "schema": schema}
        return None

    async def structured(
        self, messages: Messages, model_cls: type[T], params: StageParams
    ) -> StructuredResult[T]:
        """Ask for JSON matching `model_cls`; one retry that shows the model its mistake."""
        messages = list(messages)
        if self.config.structured == "prompt":
            schema = json.dumps(model_cls.model_json_schema())
            messages.insert(
                0,
                {
                    "role": "system",
                    "content": f"Reply with JSON only, matching this JSON schema: {schema}",
                },
            )
        fmt = self._response_format(model_cls)
        usage = Usage()
        raw, error = "", None
        for attempt in (1, 2):
            raw, used = await self.complete(messages, params, response_format=fmt)
            usage = usage + used
            try:
                return StructuredResult(
                    model_cls.model_validate(extract_json(raw)), raw, usage, None, attempt
                )
            except (ValueError, ValidationError) as exc:
                error = f"the answer did not match {model_cls.__name__}: {_short(exc)}"
            messages = [
                *messages,
                {"role": "assistant", "content": raw},
                {
                    "role": "user",
                    "content": f"Your previous answer did not match the schema: "
                    f"{_short_error(error)}. Reply with JSON only.",
                },
            ]
        return StructuredResult(None, raw, usage, error, 2)

    async def text(
        self, messages: Messages, model_cls: type[T], params: StageParams
    ) -> StructuredResult[T]:
        """Free text (an answer), validated as `model_cls(text=...)`."""
        raw, usage = await self.complete(messages, params)
        try:
            return StructuredResult(model_cls.model_validate({"text": raw}), raw, usage)
        except ValidationError as exc:
            error = f"the answer did not match {model_cls.__name__}: {_short(exc)}"
            return StructuredResult(None, raw, usage, error)


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and "message" in inner:
            return str(inner["message"])[:500]
    return str(exc.message)[:500]


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'answer'}: {e['msg']}"
            for e in exc.errors()[:5]
        )
    return str(exc)[:300]


def _short_error(error: str | None) -> str:
    return (error or "")[:600]
