"""What the cluster executor runs on Ray's workers: the HTTP session its request stage posts
through.

Ray Data's HTTP request stage posts each row's `payload` as JSON, one request after another
within a batch, and fails the whole run on a response it cannot read or a transient error
left after its retries. Its `session_factory` hook is given this session instead, which

- sends the exact request body: the payload carries the body as one JSON string (a row's
  nested values pass through Arrow, which fills keys missing in one row with nulls and
  turns integers into floats; a string passes unchanged);
- starts each request as soon as the stage asks for it, so a batch's requests are in
  flight together (at most `limit` at once);
- retries what waiting can fix (429, 5xx, timeouts, dropped connections, honouring
  Retry-After, full-jitter backoff) as the live client does, and answers every request
  with one flat row the stage can carry: the reply's text, finish reason and tokens, or
  the error, never an exception.

It imports only the standard library and aiohttp: it is shipped to the workers by value
(`ray.cloudpickle.register_pickle_by_value`), so a cluster needs no glan installed.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import Generator, Mapping
from typing import Any

import aiohttp

#: The payload key that carries a request's body, as the JSON text to send.
BODY = "glan_body"


def reply_row(
    text: str = "",
    *,
    finish_reason: str | None = None,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    error: str | None = None,
    status: int = 0,
) -> dict[str, Any]:
    """One request's result, the same columns for every row: the text, why generation
    stopped and the tokens counted, or the error (`status` is the last HTTP status, 0
    when there was none)."""
    return {
        "text": text,
        "finish_reason": finish_reason,
        "prompt_tokens": int(prompt_tokens or 0),
        "completion_tokens": int(completion_tokens or 0),
        "error": error,
        "status": status,
    }


def read_completion(raw: str) -> dict[str, Any]:
    """The row for a 200 response to /v1/chat/completions."""
    try:
        data = json.loads(raw)
        usage = data.get("usage") or {}
        choices = data.get("choices") or []
        if not choices:
            return reply_row(
                prompt_tokens=usage.get("prompt_tokens") or 0,
                completion_tokens=usage.get("completion_tokens") or 0,
                status=200,
            )
        choice = choices[0]
        return reply_row(
            (choice.get("message") or {}).get("content") or "",
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=usage.get("prompt_tokens") or 0,
            completion_tokens=usage.get("completion_tokens") or 0,
            status=200,
        )
    except (ValueError, AttributeError, TypeError) as exc:
        return reply_row(error=f"gave an unreadable answer: {exc}: {raw[:200]!r}", status=200)


def provider_message(raw: str) -> str:
    """The error message in a provider's error body, or the body itself, shortened."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw[:500]
    inner = body.get("error", body) if isinstance(body, dict) else None
    if isinstance(inner, dict) and "message" in inner:
        return str(inner["message"])[:500]
    return raw[:500]


def retry_after(headers: Mapping[str, str], cap: float) -> float | None:
    """Seconds a Retry-After header asks for (seconds or an HTTP date), capped."""
    value = (headers.get("retry-after") or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), cap)


class Wire:
    """An aiohttp session for Ray Data's HTTP request stage (its `session_factory`)."""

    def __init__(
        self,
        *,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        limit: int = 64,
    ) -> None:
        self.timeout_s = timeout_s
        self.attempts = max_retries + 1
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.limit = max(1, limit)
        self._session: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None
        self._started: list[asyncio.Future[dict[str, Any]]] = []

    async def __aenter__(self) -> Wire:
        self._slots = asyncio.Semaphore(self.limit)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            connector=aiohttp.TCPConnector(limit=self.limit),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        for started in self._started:
            started.cancel()  # none is left unless the stage stopped early
        if self._session is not None:
            await self._session.close()

    def post(self, url: str, *, headers: Mapping[str, str] | None = None, data: Any = None) -> Sent:
        """Start one request now; the stage awaits its answer later, in its own order."""
        payload = json.loads(data)
        body = payload[BODY] if isinstance(payload, dict) and BODY in payload else data
        sent = asyncio.ensure_future(self._ask(url, dict(headers or {}), body))
        self._started.append(sent)
        return Sent(sent)

    async def _ask(self, url: str, headers: dict[str, str], body: str) -> dict[str, Any]:
        assert self._session is not None and self._slots is not None
        failure, status = "", 0
        for attempt in range(1, self.attempts + 1):
            wait: float | None = None
            try:
                async with (
                    self._slots,
                    self._session.post(url, data=body.encode(), headers=headers) as response,
                ):
                    raw = await response.text()
                    status = response.status
                    if status == 200:
                        return read_completion(raw)
                    detail = provider_message(raw)
                    if status != 429 and status < 500:
                        return reply_row(
                            error=f"refused the request with HTTP {status} (not retried; "
                            f"check the model name, endpoint and key): {detail}",
                            status=status,
                        )
                    failure = f"HTTP {status}: {detail}"
                    wait = retry_after(response.headers, self.backoff_max_s)
            except TimeoutError:
                failure, status = f"no answer within {self.timeout_s:g} s", 0
            except aiohttp.ClientError as exc:
                failure, status = f"connection failed: {exc}", 0
            if attempt == self.attempts:
                break
            await asyncio.sleep(wait if wait is not None else self._backoff(attempt))
        return reply_row(
            error=f"failed after {self.attempts} attempts; last error: {failure}", status=status
        )

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)


class Sent:
    """A request under way: awaited, its answer, which the stage enters as a response."""

    def __init__(self, task: asyncio.Future[dict[str, Any]]) -> None:
        self._task = task

    def __await__(self) -> Generator[Any, None, Answer]:
        return self._answer().__await__()

    async def _answer(self) -> Answer:
        return Answer(await self._task)


class Answer:
    """What the stage reads of a response: always a 200 whose JSON is the result row."""

    status = 200
    reason = "OK"

    def __init__(self, row: dict[str, Any]) -> None:
        self._row = row

    async def __aenter__(self) -> Answer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def json(self) -> dict[str, Any]:
        return self._row


# The processor's preprocess and postprocess, run on the workers (rows in, rows out). A row
# sent is {"unit": id, "body": the request body as JSON text}; a row back is the unit's id
# and `reply_row`'s columns.


def http_payload(row: dict[str, Any]) -> dict[str, Any]:
    """The HTTP stage's payload: the body as it is, for the wire to send."""
    return {"payload": {BODY: row["body"]}}


def http_result(row: dict[str, Any]) -> dict[str, Any]:
    return {"unit": row["unit"], **row["http_response"]}


def vllm_payload(row: dict[str, Any]) -> dict[str, Any]:
    """The vLLM engine's input for a chat request body: its messages (the chat template
    stage renders them) and sampling parameters, a JSON schema asked for becoming vLLM's
    structured output (given as JSON text, which passes through Arrow unchanged)."""
    body = json.loads(row["body"])
    sampling: dict[str, Any] = {"temperature": body["temperature"], "top_p": body["top_p"]}
    for key in ("max_tokens", "seed"):
        if key in body:
            sampling[key] = body[key]
    fmt = body.get("response_format") or {}
    schema = (fmt.get("json_schema") or {}).get("schema") or fmt.get("schema")
    if schema is not None:
        sampling["structured_outputs"] = {"json": json.dumps(schema)}
    elif fmt.get("type") == "json_object":
        sampling["structured_outputs"] = {"json_object": True}
    return {"messages": body["messages"], "sampling_params": sampling}


def vllm_result(row: dict[str, Any]) -> dict[str, Any]:
    """A vLLM engine's output as a reply row (the engine does not say why it stopped)."""
    return {
        "unit": row["unit"],
        **reply_row(
            row.get("generated_text") or "",
            prompt_tokens=row.get("num_input_tokens") or 0,
            completion_tokens=row.get("num_generated_tokens") or 0,
            status=200,
        ),
    }
