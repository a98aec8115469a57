"""The LLM client against a real HTTP stub on loopback: retries, limits, validation."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pydantic import BaseModel, Field

from generators.llm import LLMClient, LLMConfig, LLMError, StageParams, extract_json
from tests.llm_stub import Reply, error, ok, ok_json, run_stub, sequence

PARAMS = StageParams(model="m", temperature=1.0, top_p=0.95, max_tokens=64)
HELLO = [{"role": "user", "content": "hello"}]


class Pair(BaseModel):
    a: int
    b: str


def client(base_url: str, **kw: Any) -> LLMClient:
    return LLMClient(LLMConfig(base_url=base_url, backoff_base_s=0.01, **kw))


async def call(llm: LLMClient, coro: Any) -> Any:
    try:
        return await coro
    finally:
        await llm.aclose()


def test_completion_and_usage() -> None:
    with run_stub(sequence([ok("hi", prompt_tokens=5, completion_tokens=3)])) as stub:
        llm = client(stub.base_url)
        text, usage = asyncio.run(call(llm, llm.complete(HELLO, PARAMS)))
    assert text == "hi" and (usage.prompt_tokens, usage.completion_tokens) == (5, 3)
    assert llm.usage.total == 8 and llm.calls == 1
    sent = stub.requests[0]
    assert sent["model"] == "m" and sent["temperature"] == 1.0 and sent["top_p"] == 0.95
    assert sent["max_tokens"] == 64


def test_retry_after_is_honoured() -> None:
    replies = [error(429, headers={"retry-after": "0.4"}), ok("done")]
    with run_stub(sequence(replies)) as stub:
        llm = client(stub.base_url)
        start = time.monotonic()
        text, _ = asyncio.run(call(llm, llm.complete(HELLO, PARAMS)))
        waited = time.monotonic() - start
    assert text == "done" and stub.calls == 2 and waited >= 0.4


@pytest.mark.parametrize(
    "fault",
    [error(500), error(503), Reply(drop=True), Reply(delay_s=1.5)],
    ids=["500", "503", "dropped", "timeout"],
)
def test_transient_faults_are_retried(fault: Reply) -> None:
    with run_stub(sequence([fault, ok("recovered")])) as stub:
        llm = client(stub.base_url, timeout_s=0.4)
        text, _ = asyncio.run(call(llm, llm.complete(HELLO, PARAMS)))
    assert text == "recovered" and stub.calls == 2


def test_retries_run_out_into_one_error() -> None:
    with run_stub(sequence([error(502, "upstream down")])) as stub:
        llm = client(stub.base_url, max_retries=2)
        with pytest.raises(LLMError) as info:
            asyncio.run(call(llm, llm.complete(HELLO, PARAMS)))
    assert stub.calls == 3 and info.value.status_code == 502 and info.value.attempts == 3
    assert "upstream down" in str(info.value) and "3 attempts" in str(info.value)


def test_client_errors_fail_at_once() -> None:
    with run_stub(sequence([error(400, "bad request body")])) as stub:
        llm = client(stub.base_url)
        with pytest.raises(LLMError, match="bad request body") as info:
            asyncio.run(call(llm, llm.complete(HELLO, PARAMS)))
    assert stub.calls == 1 and info.value.status_code == 400


def test_structured_retries_once_with_the_validation_error() -> None:
    replies = [ok('{"a": "not a number"}'), ok_json({"a": 1, "b": "x"})]
    with run_stub(sequence(replies)) as stub:
        llm = client(stub.base_url)
        result = asyncio.run(call(llm, llm.structured(HELLO, Pair, PARAMS)))
    assert result.value == Pair(a=1, b="x") and result.attempts == 2 and result.error is None
    assert result.usage.prompt_tokens == 22
    second = stub.requests[1]["messages"]
    assert second[-2] == {"role": "assistant", "content": '{"a": "not a number"}'}
    assert "did not match the schema" in second[-1]["content"] and "a:" in second[-1]["content"]


def test_structured_failure_keeps_the_raw_text() -> None:
    with run_stub(sequence([ok("sorry, I cannot"), ok("still no JSON")])) as stub:
        llm = client(stub.base_url)
        result = asyncio.run(call(llm, llm.structured(HELLO, Pair, PARAMS)))
    assert result.value is None and result.raw == "still no JSON" and result.attempts == 2
    assert result.error is not None and "Pair" in result.error


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("json_schema", "json_schema"), ("json_object_schema", "json_object"), ("prompt", None)],
)
def test_structured_modes_send_the_right_response_format(mode: str, expected: str | None) -> None:
    with run_stub(sequence([ok_json({"a": 1, "b": "x"})])) as stub:
        llm = client(stub.base_url, structured=mode)
        asyncio.run(call(llm, llm.structured(HELLO, Pair, PARAMS)))
    fmt = stub.requests[0].get("response_format")
    if expected is None:
        assert fmt is None
        assert '"properties"' in stub.requests[0]["messages"][0]["content"]
    else:
        assert fmt["type"] == expected
        schema = fmt["json_schema"]["schema"] if expected == "json_schema" else fmt["schema"]
        assert set(schema["properties"]) == {"a", "b"}


def test_concurrency_is_bounded() -> None:
    with run_stub(sequence([ok("x", delay_s=0.1)])) as stub:
        llm = client(stub.base_url, concurrency=3)

        async def many() -> None:
            try:
                await asyncio.gather(*(llm.complete(HELLO, PARAMS) for _ in range(12)))
            finally:
                await llm.aclose()

        asyncio.run(many())
    assert stub.calls == 12 and stub.max_in_flight == 3 and llm.max_in_flight == 3


def test_requests_per_minute_limit() -> None:
    with run_stub(sequence([ok("x")])) as stub:
        llm = client(stub.base_url, rpm=600)  # 10 per second, a burst of 600 allowed
        llm._rpm.level = 0  # start empty to see the refill rate

        async def three() -> float:
            start = time.monotonic()
            try:
                for _ in range(3):
                    await llm.complete(HELLO, PARAMS)
            finally:
                await llm.aclose()
            return time.monotonic() - start

        assert asyncio.run(three()) >= 0.25


@pytest.mark.parametrize(
    "text",
    ['{"a": 1, "b": "x"}', '```json\n{"a": 1, "b": "x"}\n```', 'Sure! {"a": 1, "b": "x"} Done.',
     'prefix {broken} then {"a": 1, "b": "x"}'],
)
def test_tolerant_json_extraction(text: str) -> None:
    assert Pair.model_validate(extract_json(text)) == Pair(a=1, b="x")


def test_no_json_is_an_error() -> None:
    with pytest.raises(ValueError):
        extract_json("no braces here")


def test_long_string_bounds_are_not_sent_to_grammar_engines() -> None:
    class Long(BaseModel):
        short: str = Field(max_length=50)
        long: str = Field(max_length=4000)

    with run_stub(sequence([ok_json({"short": "s", "long": "l"})])) as stub:
        llm = client(stub.base_url, structured="json_object_schema")
        asyncio.run(call(llm, llm.structured(HELLO, Long, PARAMS)))
    props = stub.requests[0]["response_format"]["schema"]["properties"]
    assert props["short"]["maxLength"] == 50 and "maxLength" not in props["long"]
