"""The LLM client against a real HTTP stub on loopback: retries, limits, validation."""

from __future__ import annotations

import asyncio
import email.utils
import json
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx
import pytest
from pydantic import BaseModel, Field, SecretStr

from generators.llm import (
    LLMClient,
    LLMConfig,
    LLMError,
    StageParams,
    Usage,
    extract_json,
    retry_after,
)
from graph.errors import GlanError
from tests.llm_stub import (
    Reply,
    dropped,
    error,
    glan_faults,
    hang,
    ok,
    ok_json,
    run_stub,
    sequence,
    with_faults,
)

R = TypeVar("R")
PARAMS = StageParams(model="m", temperature=1.0, top_p=0.95, max_tokens=64)
HELLO = [{"role": "user", "content": "hello"}]


class Pair(BaseModel):
    a: int
    b: str


class Text(BaseModel):
    text: str = Field(min_length=1)


def config(base_url: str, **kw: Any) -> LLMConfig:
    return LLMConfig(base_url=base_url, backoff_base_s=0.01, **kw)


def use(base_url: str, work: Callable[[LLMClient], Awaitable[R]], **kw: Any) -> tuple[R, LLMClient]:
    """Run `work` on a fresh client for the stub at `base_url`, closing it afterwards."""

    holder: list[LLMClient] = []

    async def tracked() -> R:
        llm = LLMClient(config(base_url, **kw))
        holder.append(llm)
        try:
            return await work(llm)
        finally:
            await llm.aclose()

    return asyncio.run(tracked()), holder[0]


def hello(llm: LLMClient) -> Awaitable[tuple[str, Usage]]:
    return llm.complete(HELLO, PARAMS)


# --- completions, retries and errors


def test_completion_sends_the_stage_params_and_counts_usage() -> None:
    with run_stub(sequence([ok("hi", prompt_tokens=5, completion_tokens=3)])) as stub:
        (text, usage), llm = use(stub.base_url, hello)
    assert text == "hi" and usage == Usage(5, 3) and usage.total == 8
    assert llm.usage == Usage(5, 3) and llm.calls == 1
    sent = stub.requests[0]
    assert (sent["model"], sent["temperature"], sent["top_p"], sent["max_tokens"]) == (
        "m",
        1.0,
        0.95,
        64,
    )
    assert sent["messages"] == HELLO and "response_format" not in sent and "seed" not in sent


def test_usage_adds_up_over_calls() -> None:
    replies = [
        ok("a", prompt_tokens=5, completion_tokens=3),
        ok("b", prompt_tokens=2, completion_tokens=1),
    ]

    async def twice(llm: LLMClient) -> None:
        await hello(llm)
        await hello(llm)

    with run_stub(sequence(replies)) as stub:
        _, llm = use(stub.base_url, twice)
    assert llm.usage == Usage(7, 4) and llm.calls == 2 and Usage(1, 2) + Usage(3, 4) == Usage(4, 6)


def test_retry_after_is_honoured() -> None:
    replies = [error(429, "slow down", headers={"Retry-After": "0.3"}), ok("done")]
    with run_stub(sequence(replies)) as stub:
        start = time.monotonic()
        (text, _), llm = use(stub.base_url, hello)
        waited = time.monotonic() - start
    assert text == "done" and stub.calls == 2 and llm.calls == 2
    assert 0.3 <= waited < 2.0


def test_retry_after_is_capped() -> None:
    replies = [error(503, headers={"retry-after": "120"}), ok("done")]
    with run_stub(sequence(replies)) as stub:
        start = time.monotonic()
        (text, _), _ = use(stub.base_url, hello, backoff_max_s=0.2)
        waited = time.monotonic() - start
    assert text == "done" and 0.2 <= waited < 1.5


def test_retry_after_header_forms() -> None:
    soon = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert retry_after(httpx.Headers({"Retry-After": "2.5"}), 30) == 2.5
    assert 8 <= (retry_after(httpx.Headers({"Retry-After": soon}), 30) or 0) <= 10
    assert retry_after(httpx.Headers({"Retry-After": soon}), 3) == 3  # capped
    assert retry_after(httpx.Headers({"Retry-After": "-5"}), 30) == 0
    assert retry_after(httpx.Headers({"Retry-After": "soon-ish"}), 30) is None  # own backoff
    assert retry_after(httpx.Headers({}), 30) is None


@pytest.mark.parametrize(
    "fault",
    [error(429), error(500), error(503), dropped(), hang(1.0)],
    ids=["429", "500", "503", "dropped", "timeout"],
)
def test_transient_faults_are_retried(fault: Reply) -> None:
    with run_stub(sequence([fault, ok("recovered")])) as stub:
        (text, _), llm = use(stub.base_url, hello, timeout_s=0.3)
    assert text == "recovered" and stub.calls == 2 and llm.calls == 2


def test_dropped_connection_is_a_connection_error_in_httpx() -> None:
    with run_stub(sequence([dropped()])) as stub, pytest.raises(httpx.TransportError):
        httpx.post(f"{stub.base_url}/chat/completions", json={"model": "m", "messages": []})


def test_retries_run_out_into_one_error() -> None:
    with run_stub(sequence([error(502, "upstream down")])) as stub, pytest.raises(LLMError) as info:
        use(stub.base_url, hello, max_retries=2)
    assert stub.calls == 3 and info.value.status_code == 502 and info.value.attempts == 3
    message = str(info.value)
    assert "upstream down" in message and "3 attempts" in message and "m at http" in message
    assert isinstance(info.value, GlanError)


def test_timeouts_run_out_into_one_error() -> None:
    with (
        run_stub(sequence([hang(1.0)])) as stub,
        pytest.raises(LLMError, match=r"2 attempts.*no answer within 0\.3 s") as info,
    ):
        use(stub.base_url, hello, max_retries=1, timeout_s=0.3)
    assert stub.calls == 2 and info.value.status_code is None and info.value.attempts == 2


def test_dropped_connections_run_out_into_one_error() -> None:
    with (
        run_stub(sequence([dropped()])) as stub,
        pytest.raises(LLMError, match="connection failed") as info,
    ):
        use(stub.base_url, hello, max_retries=1)
    assert stub.calls == 2 and info.value.status_code is None


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_errors_fail_at_once(status: int) -> None:
    with (
        run_stub(sequence([error(status, "bad request body")])) as stub,
        pytest.raises(LLMError, match="bad request body") as info,
    ):
        use(stub.base_url, hello)
    assert stub.calls == 1 and info.value.status_code == status and info.value.attempts == 1
    assert "not retried" in str(info.value)


def test_an_empty_answer_is_returned_not_retried() -> None:
    with run_stub(sequence([ok("")])) as stub:
        (text, _), _ = use(stub.base_url, hello)
    assert text == "" and stub.calls == 1


def test_a_lent_http_client_is_used_and_left_open() -> None:
    seen: list[str] = []

    async def record(request: httpx.Request) -> None:
        seen.append(request.url.path)

    async def main(base_url: str) -> bool:
        async with httpx.AsyncClient(event_hooks={"request": [record]}) as http:
            llm = LLMClient(config(base_url), http_client=http)
            await llm.complete(HELLO, PARAMS)
            await llm.aclose()
            return http.is_closed

    with run_stub(sequence([ok("hi")])) as stub:
        closed = asyncio.run(main(stub.base_url))
    assert seen == ["/v1/chat/completions"] and not closed


# --- limits


def test_concurrency_is_bounded() -> None:
    async def many(llm: LLMClient) -> None:
        await asyncio.gather(*(hello(llm) for _ in range(12)))

    with run_stub(sequence([ok("x", delay_s=0.1)])) as stub:
        _, llm = use(stub.base_url, many, concurrency=3)
    assert stub.calls == 12 and stub.max_in_flight == 3 and llm.max_in_flight == 3


def timed(n: int) -> Callable[[LLMClient], Awaitable[float]]:
    async def run(llm: LLMClient) -> float:
        start = time.monotonic()
        for _ in range(n):
            await llm.complete(HELLO, PARAMS.model_copy(update={"max_tokens": 10}))
        return time.monotonic() - start

    return run


def test_requests_per_minute_limit() -> None:
    # 600 a minute is 10 a second, with a burst of one second: calls 11-13 wait 0.1 s each
    with run_stub(sequence([ok("x")])) as stub:
        took, _ = use(stub.base_url, timed(13), rpm=600)
    assert stub.calls == 13 and 0.25 <= took < 2.0


def test_tokens_per_minute_limit_charges_actual_usage() -> None:
    # 6000 a minute is 100 a second; a call estimated at ~11 tokens that really used 130
    # leaves the budget 30 short, so the next call waits ~0.4 s for (11 + 30) tokens.
    with run_stub(sequence([ok("x", prompt_tokens=10, completion_tokens=120)])) as stub:
        heavy, _ = use(stub.base_url, timed(2), tpm=6000)
    with run_stub(sequence([ok("x", prompt_tokens=10, completion_tokens=5)])) as stub:
        light, _ = use(stub.base_url, timed(2), tpm=6000)
    assert heavy >= 0.3 and light < 0.2


def test_fault_injection_is_deterministic() -> None:
    def calls(seed: int) -> list[int]:
        handler = with_faults(lambda body, n: ok("x"), 0.3, [error(500)], seed=seed)
        return [n for n in range(200) if handler({}, n).status == 500]

    assert calls(1) == calls(1) != calls(2) and 40 <= len(calls(1)) <= 80

    handler = with_faults(lambda body, n: ok("fine"), 0.3, [error(503), dropped()], seed=5)
    with run_stub(handler) as stub:

        async def many(llm: LLMClient) -> list[str]:
            return [text for text, _ in await asyncio.gather(*(hello(llm) for _ in range(30)))]

        texts, _ = use(stub.base_url, many, max_retries=10)
    assert texts == ["fine"] * 30 and stub.calls > 30


# --- structured output


def test_structured_parses_the_answer() -> None:
    with run_stub(sequence([ok_json({"a": 1, "b": "x", "extra": True})])) as stub:
        result, _ = use(stub.base_url, lambda llm: llm.structured(HELLO, Pair, PARAMS))
    assert result.value == Pair(a=1, b="x") and result.attempts == 1 and result.error is None
    assert result.raw == '{"a": 1, "b": "x", "extra": true}' and result.usage == Usage(11, 7)


def test_structured_retries_once_with_the_validation_error() -> None:
    replies = [ok('{"a": "not a number"}'), ok_json({"a": 1, "b": "x"})]
    with run_stub(sequence(replies)) as stub:
        result, _ = use(stub.base_url, lambda llm: llm.structured(HELLO, Pair, PARAMS))
    assert result.value == Pair(a=1, b="x") and result.attempts == 2 and result.error is None
    assert result.usage == Usage(22, 14)
    second = stub.requests[1]["messages"]
    assert second[: len(HELLO)] == HELLO
    assert second[-2] == {"role": "assistant", "content": '{"a": "not a number"}'}
    fix = second[-1]["content"]
    assert fix.startswith("Your previous answer did not match the schema:")
    assert "a: Input should be a valid integer" in fix and "b: Field required" in fix
    assert fix.endswith("Reply with JSON only.")


def test_structured_failure_keeps_the_raw_text() -> None:
    with run_stub(sequence([ok("sorry, I cannot"), ok("still no JSON")])) as stub:
        result, _ = use(stub.base_url, lambda llm: llm.structured(HELLO, Pair, PARAMS))
    assert result.value is None and result.raw == "still no JSON" and result.attempts == 2
    assert result.error is not None and "did not match Pair" in result.error
    assert "no JSON object" in result.error and stub.calls == 2


def test_structured_lets_transport_errors_through() -> None:
    with (
        run_stub(sequence([error(400, "no such model")])) as stub,
        pytest.raises(LLMError, match="no such model"),
    ):
        use(stub.base_url, lambda llm: llm.structured(HELLO, Pair, PARAMS))


@pytest.mark.parametrize("mode", ["json_schema", "json_object_schema", "prompt"])
def test_structured_modes_send_the_right_request(mode: str) -> None:
    asked = [{"role": "system", "content": "You are terse."}, *HELLO]
    with run_stub(sequence([ok_json({"a": 1, "b": "x"})])) as stub:
        result, _ = use(
            stub.base_url, lambda llm: llm.structured(asked, Pair, PARAMS), structured=mode
        )
    assert result.value == Pair(a=1, b="x")
    sent = stub.requests[0]
    fmt = sent.get("response_format")
    if mode == "json_schema":
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "Pair"
        assert fmt["json_schema"]["strict"] is False
        assert fmt["json_schema"]["schema"] == Pair.model_json_schema()
        assert sent["messages"] == asked
    elif mode == "json_object_schema":
        assert fmt == {"type": "json_object", "schema": Pair.model_json_schema()}
        assert sent["messages"] == asked
    else:
        assert fmt is None
        roles = [m["role"] for m in sent["messages"]]
        assert roles == ["system", "user"]  # the schema joins the system message
        system = sent["messages"][0]["content"]
        assert system.startswith("You are terse.") and '"properties"' in system


def test_long_string_bounds_are_not_sent_to_grammar_engines() -> None:
    class Long(BaseModel):
        short: str = Field(max_length=50)
        long: str = Field(max_length=4000)

    with run_stub(sequence([ok_json({"short": "s", "long": "l" * 300})])) as stub:
        result, _ = use(
            stub.base_url,
            lambda llm: llm.structured(HELLO, Long, PARAMS),
            structured="json_object_schema",
        )
    props = stub.requests[0]["response_format"]["schema"]["properties"]
    assert props["short"]["maxLength"] == 50 and "maxLength" not in props["long"]
    assert result.value is not None and len(result.value.long) == 300


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "b": "x"}',
        '```json\n{"a": 1, "b": "x"}\n```',
        'Here you go:\n```\n{"a": 1, "b": "x"}\n```\nAnything else?',
        'Sure! {"a": 1, "b": "x"} Done.',
        'prefix {broken} then {"a": 1, "b": "x"}',
        'Steps [1] and [2]: {"a": 1, "b": "x"}',
    ],
)
def test_tolerant_json_extraction(text: str) -> None:
    assert Pair.model_validate(extract_json(text)) == Pair(a=1, b="x")


def test_extraction_of_arrays_and_nothing() -> None:
    assert extract_json("the list: [1, 2] as asked") == [1, 2]
    with pytest.raises(ValueError, match="no JSON object"):
        extract_json("no braces here")
    with pytest.raises(ValueError):
        extract_json('{"a": 1, "b": "trunc')


@pytest.mark.parametrize(
    ("text", "b"),
    [
        ('{"a": 1, "b": "line one\nline two"}', "line one\nline two"),  # a raw newline
        ('{"a": 1, "b": "tab\there\r\x01"}', "tab\there\r\x01"),  # raw control characters
        ('{"a": 1, "b": "x",}', "x"),
        ('```json\n{\n  "a": 1,\n  "b": "x",\n  "c": [1, 2,],\n}\n```', "x"),
        ('{"a": 1, "b": "keep ,} and ,] here",}', "keep ,} and ,] here"),
        ('He said "so", then: {"a": 1, "b": "x", } ok', "x"),
    ],
)
def test_common_json_defects_are_repaired(text: str, b: str) -> None:
    assert Pair.model_validate(extract_json(text)) == Pair(a=1, b=b)


@pytest.mark.parametrize(
    ("text", "wrong"),
    [
        ('{"a": 1 "b": "x"}', "Expecting ',' delimiter (line 1, column 9)"),
        (
            '{"a": 1,\n "b": "cut',
            "Unterminated string starting at (line 2, column 7): the JSON stops before it "
            "is complete (was the answer cut off?)",
        ),
        # a syllabus cut off after its first session is not taken for that session
        (
            'Sure: {"sessions": [{"title": "One"}, {"title": "Two"',
            "Expecting ',' delimiter (line 1, column 54): the JSON stops before it is complete",
        ),
    ],
)
def test_unreadable_json_says_what_is_wrong_and_where(text: str, wrong: str) -> None:
    with pytest.raises(ValueError) as caught:
        extract_json(text)
    assert str(caught.value).startswith("no valid JSON object in the answer: ")
    assert wrong in str(caught.value)


def test_a_syllabus_with_a_raw_newline_in_a_string_is_accepted() -> None:
    """The model meant a line break inside a description; strict JSON forbids it there."""
    raw = '{"a": 3, "b": "Sessions:\n1. Limits\n2. Series"}'
    with run_stub(sequence([ok(raw)])) as stub:
        result, _ = use(stub.base_url, lambda llm: llm.structured(HELLO, Pair, PARAMS))
    assert result.value == Pair(a=3, b="Sessions:\n1. Limits\n2. Series")
    assert result.attempts == 1 and stub.calls == 1 and result.raw == raw


def test_a_failed_structured_answer_says_what_was_wrong_and_keeps_the_raw_text() -> None:
    cut = '{"a": 1, "b": "half an ans'
    with run_stub(sequence([ok(cut)])) as stub:
        result, _ = use(stub.base_url, lambda llm: llm.structured(HELLO, Pair, PARAMS))
    assert result.value is None and result.raw == cut and stub.calls == 2
    assert result.error is not None and "did not match Pair" in result.error
    assert "Unterminated string starting at (line 1, column 15)" in result.error
    # the corrective turn told the model the same
    assert "was the answer cut off?" in stub.requests[1]["messages"][-1]["content"]


def test_tolerant_extraction_end_to_end() -> None:
    with run_stub(sequence([ok('Sure!\n```json\n{"a": 2, "b": "y"}\n```')])) as stub:
        result, _ = use(stub.base_url, lambda llm: llm.structured(HELLO, Pair, PARAMS))
    assert result.value == Pair(a=2, b="y") and result.attempts == 1


# --- free text


def test_text_validates_the_plain_answer() -> None:
    with run_stub(sequence([ok("  Light scatters.  ")])) as stub:
        result, _ = use(stub.base_url, lambda llm: llm.text(HELLO, Text, PARAMS))
    assert result.value == Text(text="  Light scatters.  ") and result.error is None
    assert "response_format" not in stub.requests[0]


def test_text_failure_keeps_the_raw_text() -> None:
    with run_stub(sequence([ok("")])) as stub:
        result, _ = use(stub.base_url, lambda llm: llm.text(HELLO, Text, PARAMS))
    assert result.value is None and result.raw == "" and result.attempts == 1
    assert result.error is not None and "did not match Text" in result.error


@pytest.mark.parametrize("name", list(glan_faults(0.3)))
def test_every_glan_fault_kind_is_survived(name: str) -> None:
    """Each fault the reliability tests inject, once, then a good answer: transport faults
    are retried by the client, bad JSON by the corrective turn; the value comes through."""
    fault = glan_faults(0.3, retry_after_s=1)[name]
    with run_stub(sequence([fault, ok_json({"a": 1, "b": "x"})])) as stub:
        started = time.monotonic()
        result, llm = use(
            stub.base_url,
            lambda llm: llm.structured(HELLO, Pair, PARAMS),
            timeout_s=0.3,
            backoff_max_s=5,
        )
        took = time.monotonic() - started
    assert result.value == Pair(a=1, b="x") and stub.calls == 2
    if name in ("malformed", "off_schema"):  # the model was shown its mistake
        assert result.attempts == 2 and len(stub.requests[1]["messages"]) == 3
    else:  # retried by the client, as the same request
        assert result.attempts == 1 and stub.requests[1] == stub.requests[0]
    if name == "429":
        assert took >= 0.9  # Retry-After: 1 was honoured


# --- the HTTP path: what the client does itself since requests no longer go through an SDK


@contextmanager
def raw_server(answers: list[bytes]) -> Iterator[tuple[str, list[bytes]]]:
    """A loopback server that answers its n-th request with answers[n] (the last repeats),
    written byte for byte, and then closes the connection; it records each request, head
    and body, as it came."""
    seen: list[bytes] = []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = self.request.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                (int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n"))
                 if k.strip().lower() == b"content-length"),
                0,
            )  # fmt: skip
            while len(body) < length:
                body += self.request.recv(65536)
            seen.append(head + b"\r\n\r\n" + body)
            self.request.sendall(answers[min(len(seen) - 1, len(answers) - 1)])

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    finally:
        server.shutdown()
        server.server_close()


def http_answer(
    status: str, body: bytes, *, length: int | None = None, kind: str = "json"
) -> bytes:
    """A whole HTTP/1.1 answer; `length` may claim more bytes than the body has."""
    content_type = "application/json" if kind == "json" else "text/html"
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n"
        f"content-length: {len(body) if length is None else length}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def completion(content: Any, finish: str | None = "stop", **usage: int) -> bytes:
    choice = {
        "index": 0,
        "finish_reason": finish,
        "message": {"role": "assistant", "content": content},
    }
    return json.dumps({"choices": [choice], "usage": usage or None}).encode()


def test_the_request_is_the_exact_body_with_the_key_as_a_bearer_token() -> None:
    asked = LLMClient(config("http://unused/v1")).request(
        HELLO, Pair, PARAMS.model_copy(update={"seed": 3})
    )
    with raw_server([http_answer("200 OK", completion('{"a": 1, "b": "x"}'))]) as (url, seen):
        result, _ = use(url, lambda llm: llm.ask(asked), api_key=SecretStr("sk-test"))
    assert result.value == Pair(a=1, b="x") and len(seen) == 1
    head, _, body = seen[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    assert lines[0] == "POST /v1/chat/completions HTTP/1.1"
    assert headers["authorization"] == "Bearer sk-test"
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == asked.body()
    assert json.loads(body)["seed"] == 3 and "response_format" in json.loads(body)


def test_finish_reason_usage_and_content_parts_are_read() -> None:
    parts = [{"type": "text", "text": "two "}, {"type": "text", "text": "parts"}]
    answer = completion(parts, "length", prompt_tokens=4, completion_tokens=9)
    with raw_server([http_answer("200 OK", answer)]) as (url, _):
        reply, llm = use(url, lambda llm: llm.send(llm.text_request(HELLO, Text, PARAMS)))
    assert reply.text == "two parts" and reply.finish_reason == "length"
    assert reply.usage == Usage(4, 9) and llm.usage == Usage(4, 9)


def test_an_answer_without_choices_or_usage_is_empty_text() -> None:
    with raw_server([http_answer("200 OK", b'{"choices": []}')]) as (url, _):
        (text, usage), llm = use(url, hello)
    assert text == "" and usage == Usage() and llm.calls == 1


def test_an_unreadable_answer_is_one_error_and_not_retried() -> None:
    with (
        raw_server([http_answer("200 OK", b"<html>not a completion</html>", kind="html")]) as (
            url,
            seen,
        ),
        pytest.raises(LLMError, match="unreadable answer.*not a completion") as info,
    ):
        use(url, hello)
    assert len(seen) == 1 and info.value.status_code is None


def test_an_error_body_that_is_not_json_is_quoted() -> None:
    gateway = http_answer(
        "502 Bad Gateway", b"<html>upstream gateway fell over</html>", kind="html"
    )
    with (
        raw_server([gateway]) as (url, seen),
        pytest.raises(LLMError, match="HTTP 502: <html>upstream gateway fell over") as info,
    ):
        use(url, hello, max_retries=1)
    assert len(seen) == 2 and info.value.status_code == 502 and info.value.attempts == 2


def test_an_answer_cut_short_is_retried() -> None:
    cut = http_answer("200 OK", completion("whole")[:20], length=400)  # then the server closes
    with raw_server([cut, http_answer("200 OK", completion("whole"))]) as (url, seen):
        (text, _), llm = use(url, hello)
    assert text == "whole" and len(seen) == 2 and llm.calls == 2


def test_a_refused_connection_runs_out_into_one_error() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(LLMError, match="2 attempts; last error: connection failed") as info:
        use(f"http://127.0.0.1:{port}/v1", hello, max_retries=1)
    assert info.value.status_code is None and info.value.attempts == 2


def test_one_client_serves_one_event_loop_after_another() -> None:
    """A client made once (a server's) may be used from a new loop: its connections are not
    carried over from the loop that made them."""
    with run_stub(sequence([ok("hi")])) as stub:
        llm = LLMClient(config(stub.base_url))
        first = asyncio.run(hello(llm))
        second = asyncio.run(hello(llm))
        asyncio.run(llm.aclose())
    assert first[0] == second[0] == "hi" and stub.calls == 2


def test_the_sdk_organization_and_project_variables_are_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_ORG_ID", "org-1")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-2")
    with raw_server([http_answer("200 OK", completion("ok"))]) as (url, seen):
        use(url, hello)
    head = seen[0].split(b"\r\n\r\n")[0].decode().lower()
    assert "openai-organization: org-1" in head and "openai-project: proj-2" in head


def lent(base_url: str, work: Callable[[LLMClient], Awaitable[R]], **kw: Any) -> R:
    """Run `work` on a client that sends through a lent httpx.AsyncClient."""

    async def main() -> R:
        async with httpx.AsyncClient() as http:
            llm = LLMClient(config(base_url, **kw), http_client=http)
            try:
                return await work(llm)
            finally:
                await llm.aclose()

    return asyncio.run(main())


@pytest.mark.parametrize(
    "fault",
    [error(429, headers={"retry-after": "0.3"}), error(503), dropped(), hang(1.0)],
    ids=["429-retry-after", "503", "dropped", "timeout"],
)
def test_a_lent_http_client_retries_the_same_faults(fault: Reply) -> None:
    with run_stub(sequence([fault, ok("recovered")])) as stub:
        start = time.monotonic()
        text, _ = lent(stub.base_url, hello, timeout_s=0.3)
        waited = time.monotonic() - start
    assert text == "recovered" and stub.calls == 2
    if fault.status == 429:
        assert waited >= 0.3


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        (error(400, "bad request body"), "refused the request with HTTP 400"),
        (dropped(), "connection failed"),
        (hang(1.0), r"no answer within 0\.3 s"),
    ],
    ids=["400", "dropped", "timeout"],
)
def test_a_lent_http_client_fails_into_the_same_errors(fault: Reply, says: str) -> None:
    with run_stub(sequence([fault])) as stub, pytest.raises(LLMError, match=says):
        lent(stub.base_url, hello, timeout_s=0.3, max_retries=1)
    assert stub.calls == (1 if fault.status == 400 else 2)


def test_the_live_client_and_the_cli_load_no_sdk_and_no_server_stack() -> None:
    """Importing the client or the CLI leaves out what a run on the store never uses: the
    `openai` SDK (the Batch API's), the GraphQL server, the HTTP client of the model calls
    (loaded with the first request) and the one a command sent to a server uses."""
    code = (
        "import sys, generators.llm, server.cli; "
        "print(sorted(m for m in ('openai', 'strawberry', 'aiohttp', 'httpx') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_proxy_the_environment_names_carries_the_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    with raw_server([http_answer("200 OK", completion("via the proxy"))]) as (proxy, seen):
        monkeypatch.setenv("HTTP_PROXY", proxy.removesuffix("/v1"))
        (text, _), _ = use("http://model.invalid/v1", hello)
    assert text == "via the proxy"
    assert seen[0].startswith(b"POST http://model.invalid/v1/chat/completions HTTP/1.1")


def test_no_proxy_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a proxy that is not there: using it would fail
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with run_stub(sequence([ok("direct")])) as stub:
        (text, _), _ = use(stub.base_url, hello, max_retries=0)
    assert text == "direct" and stub.calls == 1
