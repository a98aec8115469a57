"""One async client for any OpenAI-compatible endpoint: retries, limits, token accounting.

Retries live here, and only for what waiting can fix (429, 5xx, timeouts, dropped
connections), honouring Retry-After. Requests travel by generators/http.py: a POST of the
exact body, not the `openai` SDK, whose request path cost more than all the rest of a
request's handling. Every provider or transport error leaves as one `LLMError`. Structured
calls validate the answer against a pydantic model, retry once showing the model its
mistake, and always keep the model's raw text so a failed unit can be inspected.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field, SecretStr, ValidationError

from graph.errors import GlanError

from .http import Answer, TransportFailure, TransportTimeout, make_transport, request_headers

if TYPE_CHECKING:
    import httpx

T = TypeVar("T", bound=BaseModel)
Messages = list[dict[str, str]]


class LLMConfig(BaseModel):
    base_url: str
    api_key: SecretStr = SecretStr("not-needed")  # local servers ignore it; the SDK needs one
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=5, ge=0)
    concurrency: int = Field(default=8, ge=1)
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    #: json_schema (OpenAI, vLLM) | json_object_schema (llama.cpp server) | prompt (anything)
    structured: Literal["json_schema", "json_object_schema", "prompt"] = "json_schema"
    backoff_base_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)


class StageParams(BaseModel):
    model: str
    temperature: float
    top_p: float
    max_tokens: int | None = None
    #: asks the endpoint for reproducible sampling where it supports it
    seed: int | None = None


class FollowupParams(StageParams):
    """A stage that asks with one model and answers with another (follow-up turns): the
    asking model's parameters, and those of the model that answers, as the answers stage's."""

    answer: StageParams


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
    """The endpoint gave no answer, after the retries that could have helped."""

    def __init__(self, message: str, *, status_code: int | None = None, attempts: int = 1):
        self.status_code = status_code
        self.attempts = attempts
        super().__init__(message)


@dataclass
class StructuredResult(Generic[T]):
    """A validated value, or None with the reason; `raw` is the model's last text either way."""

    value: T | None
    raw: str
    usage: Usage
    error: str | None = None
    attempts: int = 1
    finish_reason: str | None = None


@dataclass
class Reply:
    """What the endpoint sent back for one request: the text ("" if none), the tokens it
    counted and why generation stopped ("length" when it hit max_tokens)."""

    text: str
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None


@dataclass(frozen=True)
class ChatRequest:
    """One unit's chat completion, exactly as it is sent: the live client posts `body()`,
    a batch input line carries the same body, a cluster executor sends it too. `reply` is
    the pydantic model its answer must validate against; `free_text` answers are taken
    whole as `reply(text=...)`, the others are read as JSON."""

    messages: Messages
    params: StageParams
    reply: type[BaseModel]
    response_format: dict[str, Any] | None = None
    free_text: bool = False

    def body(self) -> dict[str, Any]:
        """The /v1/chat/completions request body."""
        p = self.params
        body: dict[str, Any] = {
            "model": p.model,
            "messages": self.messages,
            "temperature": p.temperature,
            "top_p": p.top_p,
        }
        if p.max_tokens is not None:
            body["max_tokens"] = p.max_tokens
        if p.seed is not None:
            body["seed"] = p.seed
        if self.response_format is not None:
            body["response_format"] = self.response_format
        return body

    def parse(self, text: str) -> tuple[BaseModel | None, str | None]:
        """The answer validated against `reply`, or None and what was wrong with it."""
        try:
            if self.free_text:
                return self.reply.model_validate({"text": text}), None
            return self.reply.model_validate(extract_json(text)), None
        except ValueError as exc:  # no JSON, or a pydantic ValidationError
            return None, f"the answer did not match {self.reply.__name__}: {_describe(exc)}"

    def corrected(self, raw: str, error: str) -> ChatRequest:
        """The same request again, showing the model its last answer and what was wrong."""
        detail = error.split(": ", 1)[-1]
        # a validator's rejection ("rejected by <rule>: ...", generators/validators.py) is
        # not a schema error: the model is told what was wrong with what it wrote
        wrong = "was rejected" if error.startswith("rejected by ") else "did not match the schema"
        messages = [
            *self.messages,
            {"role": "assistant", "content": raw},
            {
                "role": "user",
                "content": f"Your previous answer {wrong}: {detail}. Reply with JSON only.",
            },
        ]
        return ChatRequest(messages, self.params, self.reply, self.response_format, False)


class _Bucket:
    """A per-minute budget refilled continuously; it holds one second of budget so the
    limit is kept over any window, and may go negative when actual usage exceeds the
    estimate, which makes later calls wait."""

    def __init__(self, per_minute: int | None) -> None:
        self.rate = per_minute / 60.0 if per_minute else 0.0
        self.capacity = self.level = max(1.0, self.rate)
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, amount: float) -> float:
        """Wait until `amount` (at most a full bucket) is available; returns what was taken."""
        if not self.rate:
            return 0.0
        amount = min(amount, self.capacity)
        async with self.lock:
            while True:
                now = time.monotonic()
                self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.level >= amount:
                    self.level -= amount
                    return amount
                await asyncio.sleep((amount - self.level) / self.rate)

    def settle(self, taken: float, used: float) -> None:
        if self.rate:
            self.level = min(self.capacity, self.level + taken - used)


def retry_after(headers: Mapping[str, str], cap: float) -> float | None:
    """Seconds a Retry-After header asks for (seconds or an HTTP date), capped; None if absent."""
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None  # unreadable: fall back to our own backoff
    return min(max(seconds, 0.0), cap)


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


_FENCE = re.compile(r"```[\w-]*[ \t]*\n?(.*?)```", re.DOTALL)
_OPENING = re.compile(r"[{\[]")


def extract_json(text: str) -> Any:
    """The first JSON object in a model's text: small models wrap JSON in prose or code
    fences even when told not to. A bare array is returned only when there is no object.

    Defects models commonly make are repaired rather than failed on: raw newlines, tabs
    and other control characters inside strings (the decoder is not strict about them)
    and trailing commas before a closing bracket. JSON that is cut off is not guessed at,
    and an object nested in JSON that cannot be read is not taken for the answer (a cut
    off syllabus is not its first session). When nothing can be read, the ValueError
    gives the decoder's complaint, with its line and column, where it read furthest."""
    decoder = json.JSONDecoder(strict=False)
    array: Any = None
    furthest: tuple[int, str] | None = None  # (characters read, what was wrong there)
    for candidate in [*(m.group(1) for m in _FENCE.finditer(text)), text]:
        resume = 0  # openings before this lie inside a value that could not be read
        for opening in _OPENING.finditer(candidate):
            start = opening.start()
            if start < resume:
                continue
            try:
                value = _decode(decoder, candidate, start)
            except json.JSONDecodeError as exc:
                resume = len(candidate) if _cut_off(exc) else exc.pos
                if furthest is None or exc.pos - start > furthest[0]:
                    furthest = (exc.pos - start, _decode_error(exc))
                continue
            if isinstance(value, dict):
                return value
            array = value if array is None else array
    if array is not None:
        return array
    if furthest is None:
        raise ValueError("no JSON object found in the answer")
    raise ValueError(f"no valid JSON object in the answer: {furthest[1]}")


def _decode(decoder: json.JSONDecoder, text: str, start: int) -> Any:
    """The JSON value at `start`, read again without its trailing commas if it has any;
    raises the decoder's error of the last reading."""
    try:
        return decoder.raw_decode(text, start)[0]
    except json.JSONDecodeError:
        fixed = _without_trailing_commas(text, start)
        if fixed == text:
            raise
    return decoder.raw_decode(fixed, start)[0]


def _cut_off(exc: json.JSONDecodeError) -> bool:
    """Whether the JSON stops before it is complete: a string never closed, or nothing
    left where the decoder wanted more."""
    return exc.msg.startswith("Unterminated string") or not exc.doc[exc.pos :].strip()


def _decode_error(exc: json.JSONDecodeError) -> str:
    where = f"{exc.msg} (line {exc.lineno}, column {exc.colno})"
    if _cut_off(exc):
        return f"{where}: the JSON stops before it is complete (was the answer cut off?)"
    return where


def _without_trailing_commas(text: str, start: int) -> str:
    """`text` with each comma followed only by whitespace and a closing bracket turned into
    a space, from `start` on, so that positions (and the decoder's line and column) stay
    those of the original; commas inside strings are kept. Scanning starts at an opening
    bracket, so quotes in prose before it cannot confuse the tracking of strings."""
    out: list[str] = [text[:start]]
    in_string = escaped = False
    pending = ""  # a comma and the whitespace after it, until we know what follows
    for ch in text[start:]:
        if in_string:
            out.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if pending:
            if ch.isspace():
                pending += ch
                continue
            out.append(" " + pending[1:] if ch in "}]" else pending)
            pending = ""
        if ch == ",":
            pending = ch
            continue
        out.append(ch)
        if ch == '"':
            in_string = True
    out.append(pending)
    return "".join(out)


@functools.cache
def _schema(model_cls: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema asked of the model for `model_cls` (made once per class; read only)."""
    return grammar_safe(model_cls.model_json_schema())


class LLMClient:
    """Shared by all stages of a run, so its limits and usage totals cover the whole run."""

    def __init__(self, config: LLMConfig, *, http_client: httpx.AsyncClient | None = None):
        """`http_client`, if given, carries the requests instead of the client's own
        connections, and is left open by `aclose`."""
        self.config = config
        self._http = make_transport(config.timeout_s, config.concurrency, http_client)
        self._url = config.base_url.rstrip("/") + "/chat/completions"
        self._headers = request_headers(config.api_key.get_secret_value())
        self._slots = asyncio.Semaphore(config.concurrency)
        self._rpm, self._tpm = _Bucket(config.rpm), _Bucket(config.tpm)
        self.usage = Usage()
        self.calls = 0  # HTTP requests sent, retries included
        self.in_flight = self.max_in_flight = 0

    async def aclose(self) -> None:
        """Close the connections, unless the caller lent them (then they are theirs to close)."""
        await self._http.aclose()

    async def _send(self, data: bytes, where: str) -> Reply:
        """One request, no retries: the single place that talks to the endpoint. Raises
        `_Retry` for a failure waiting may fix, `LLMError` for the rest."""
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            answer = await self._http.post(self._url, data, self._headers)
        except TransportTimeout as exc:
            raise _Retry(None, f"no answer within {self.config.timeout_s:g} s") from exc
        except TransportFailure as exc:
            raise _Retry(None, f"connection failed: {exc}") from exc
        finally:
            self.in_flight -= 1
        status = answer.status
        if 200 <= status < 300:
            return _reply_of(answer, where)
        detail = _provider_message(answer)
        if status == 429 or status >= 500:
            wait = retry_after(answer.headers, self.config.backoff_max_s)
            raise _Retry(status, f"HTTP {status}: {detail}", wait)
        raise LLMError(
            f"{where} refused the request with HTTP {status} (not retried; check the model "
            f"name, endpoint and key): {detail}",
            status_code=status,
        )

    async def send(self, request: ChatRequest) -> Reply:
        """One unit's request, its `body()` as it is, retried on transient failures."""
        return await self._complete(request)

    async def complete(
        self,
        messages: Messages,
        params: StageParams,
        *,
        response_format: dict[str, Any] | None = None,
    ) -> tuple[str, Usage]:
        """One chat completion, retried on transient failures; its text ("" if none) and usage."""
        reply = await self._complete(ChatRequest(messages, params, BaseModel, response_format))
        return reply.text, reply.usage

    async def _complete(self, request: ChatRequest) -> Reply:
        body = request.body()
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        params = request.params
        chars = sum(len(m.get("content", "")) for m in request.messages)
        estimate = chars / 4 + (params.max_tokens or 0)
        where = f"{params.model} at {self.config.base_url}"
        attempts = self.config.max_retries + 1
        for attempt in range(1, attempts + 1):
            await self._rpm.take(1)
            taken = await self._tpm.take(estimate)
            try:
                async with self._slots:
                    reply = await self._send(data, where)
            except _Retry as exc:
                if attempt == attempts:
                    raise LLMError(
                        f"{where} failed after {attempts} attempts; last error: {exc.failure}",
                        status_code=exc.status,
                        attempts=attempts,
                    ) from exc
                await asyncio.sleep(exc.wait if exc.wait is not None else self._backoff(attempt))
                continue
            self._tpm.settle(taken, reply.usage.total or taken)
            self.usage = self.usage + reply.usage
            return reply
        raise AssertionError("unreachable")  # pragma: no cover

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)  # full jitter: retries from many units spread out

    def request(
        self, messages: Messages, model_cls: type[BaseModel], params: StageParams
    ) -> ChatRequest:
        """A request for JSON matching `model_cls`, in this endpoint's structured-output mode."""
        schema = _schema(model_cls)
        fmt: dict[str, Any] | None = None
        if self.config.structured == "json_schema":
            fmt = {
                "type": "json_schema",
                "json_schema": {"name": model_cls.__name__, "schema": schema, "strict": False},
            }
        elif self.config.structured == "json_object_schema":
            fmt = {"type": "json_object", "schema": schema}
        else:
            messages = _with_system(
                messages, f"Reply with JSON only, matching this JSON schema: {json.dumps(schema)}"
            )
        return ChatRequest(messages, params, model_cls, fmt)

    @staticmethod
    def text_request(
        messages: Messages, model_cls: type[BaseModel], params: StageParams
    ) -> ChatRequest:
        """A request for free text (an answer), taken whole as `model_cls(text=...)`."""
        return ChatRequest(messages, params, model_cls, None, free_text=True)

    async def ask(self, request: ChatRequest) -> StructuredResult[Any]:
        """Send a request and validate its answer; a JSON answer that does not validate is
        asked for once more, showing the model its mistake.

        Transport failures raise `LLMError`; an answer that does not validate is returned
        with value None, the reason and the raw text, for the caller to record."""
        usage = Usage()
        for attempt in (1, 2):
            reply = await self.send(request)
            usage = usage + reply.usage
            value, error = request.parse(reply.text)
            if value is not None or request.free_text or attempt == 2:
                return StructuredResult(
                    value, reply.text, usage, error, attempt, reply.finish_reason
                )
            assert error is not None
            request = request.corrected(reply.text, error)
        raise AssertionError("unreachable")  # pragma: no cover

    async def structured(
        self, messages: Messages, model_cls: type[T], params: StageParams
    ) -> StructuredResult[T]:
        """Ask for JSON matching `model_cls`; one retry that shows the model its mistake."""
        return await self.ask(self.request(messages, model_cls, params))

    async def text(
        self, messages: Messages, model_cls: type[T], params: StageParams
    ) -> StructuredResult[T]:
        """Free text (an answer), validated as `model_cls(text=...)`; never JSON-parsed."""
        return await self.ask(self.text_request(messages, model_cls, params))


def _with_system(messages: Messages, note: str) -> Messages:
    """Add `note` to the system message: some chat templates reject a second one."""
    if messages and messages[0]["role"] == "system":
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{note}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]


class _Retry(Exception):
    """A failure waiting may fix: its HTTP status (None for a timeout or a lost connection),
    what went wrong, and the wait the endpoint asked for (Retry-After), if it did."""

    def __init__(self, status: int | None, failure: str, wait: float | None = None) -> None:
        super().__init__(failure)
        self.status, self.failure, self.wait = status, failure, wait


def _reply_of(answer: Answer, where: str) -> Reply:
    """The text, usage and finish reason of a chat completion; LLMError if it is none."""
    try:
        payload = json.loads(answer.body)
        used = payload.get("usage") or {}
        usage = Usage(int(used.get("prompt_tokens") or 0), int(used.get("completion_tokens") or 0))
        choices = payload.get("choices") or []
        if not choices:
            return Reply("", usage)
        choice = choices[0]
        content = (choice.get("message") or {}).get("content") or ""
        if isinstance(content, list):  # content parts, as some servers send them
            content = "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
        return Reply(str(content), usage, choice.get("finish_reason"))
    except (ValueError, TypeError, AttributeError) as exc:  # not JSON, or not a completion
        text = answer.body[:200].decode("utf-8", "replace")
        raise LLMError(f"{where} gave an unreadable answer ({exc}): {text!r}") from exc


def _provider_message(answer: Answer) -> str:
    """What the endpoint said was wrong: its error message, else the start of its body."""
    try:
        body = json.loads(answer.body)
    except ValueError:
        body = None
    inner = body.get("error", body) if isinstance(body, dict) else None
    if isinstance(inner, dict) and "message" in inner:
        return str(inner["message"])[:500]
    if isinstance(inner, str) and inner:
        return inner[:500]
    text = answer.body.decode("utf-8", "replace").strip()
    return (text or answer.reason or f"HTTP {answer.status}")[:500]


def _describe(exc: ValueError) -> str:
    """A short account of what was wrong, small enough to send back to the model."""
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'answer'}: {e['msg']}"
            for e in exc.errors()[:5]
        )[:600]
    return str(exc)[:300]
