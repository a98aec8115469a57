"""An OpenAI-compatible chat endpoint on loopback for tests and benchmarks.

A small asyncio HTTP/1.1 server in a background thread. It answers /v1/chat/completions
with whatever a handler returns (a completion, an HTTP error with Retry-After, a hang, or a
dropped connection), records every request, and costs next to nothing per call, so a
benchmark measures the pipeline rather than the stub.

It is a raw socket server rather than an ASGI app because a dropped connection must be a
real one: an ASGI server answers an app's exception with a 500, or, once a response has
started, with a truncated body; only the transport can close a connection with no answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass
class Reply:
    """What the stub does with one request. Tests may adjust a reply before returning it."""

    content: str = ""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None  # the JSON body of an error reply
    delay_s: float = 0.0  # wait before answering (a hang when past the client's timeout)
    drop: bool = False  # close the connection without answering
    hold: threading.Event | None = None  # answer only once this is set (at most 30 s)
    prompt_tokens: int = 11
    completion_tokens: int = 7


def ok(content: str, **kw: Any) -> Reply:
    return Reply(content=content, **kw)


def ok_json(obj: Any, **kw: Any) -> Reply:
    return Reply(content=json.dumps(obj), **kw)


def error(status: int, message: str = "stub error", **kw: Any) -> Reply:
    """An error in the usual provider shape; pass headers={"retry-after": "1"} to ask for a wait."""
    return Reply(status=status, body={"error": {"message": message, "type": "stub"}}, **kw)


def hang(seconds: float) -> Reply:
    return Reply(content="too late", delay_s=seconds)


def dropped() -> Reply:
    return Reply(drop=True)


def malformed() -> Reply:
    """A 200 whose content is not JSON at all: cut off mid-object, as a truncated stream is."""
    return Reply(content='{"question": "What is the relation between')


def off_schema() -> Reply:
    """A 200 with well-formed JSON that matches no glan schema (wrong keys, wrong types)."""
    return ok_json({"answer": 42, "items": "not a list", "subjects": None, "sessions": {}})


def glan_faults(client_timeout_s: float, *, retry_after_s: int = 1) -> dict[str, Reply]:
    """Every fault an OpenAI-compatible endpoint shows in practice, by name: rate limited
    with Retry-After, a server error, a hang past the client's timeout, a dropped
    connection, malformed JSON and JSON that violates the schema."""
    return {
        "429": error(429, "rate limited", headers={"retry-after": str(retry_after_s)}),
        "500": error(500, "internal error"),
        "hang": hang(client_timeout_s * 3),
        "dropped": dropped(),
        "malformed": malformed(),
        "off_schema": off_schema(),
    }


Handler = Callable[[dict[str, Any], int], Reply]


def sequence(replies: Sequence[Reply]) -> Handler:
    """One reply per call in order; the last one repeats."""
    items = list(replies)

    def handler(body: dict[str, Any], n: int) -> Reply:
        return items[min(n, len(items) - 1)]

    return handler


def with_faults(
    handler: Handler,
    rate: float,
    faults: Sequence[Reply] | Mapping[str, Reply],
    *,
    seed: int = 0,
    tally: Counter[str] | None = None,
) -> Handler:
    """`handler`, but a share `rate` of calls get one of `faults` instead.

    Which calls fail depends only on the seed and the call number, not on timing, so a run
    with the same requests meets the same faults. With named faults and a `tally`, each
    fault served is counted by name (and "ok" for the rest).
    """
    named = list(faults.items()) if isinstance(faults, Mapping) else list(enumerate(faults))

    def faulty(body: dict[str, Any], n: int) -> Reply:
        draw = random.Random(f"{seed}:{n}")
        if draw.random() < rate:
            name, reply = draw.choice(named)
            if tally is not None:
                tally[str(name)] += 1
            return replace(reply, headers=dict(reply.headers))  # a copy the caller may change
        if tally is not None:
            tally["ok"] += 1
        return handler(body, n)

    return faulty


@dataclass
class Stub:
    base_url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)  # chat bodies, in order
    calls: int = 0  # chat completion requests received
    in_flight: int = 0
    max_in_flight: int = 0  # most requests held at once (while delayed)
    handler: Handler | None = None


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _completion(body: dict[str, Any], reply: Reply, n: int) -> dict[str, Any]:
    return {
        "id": f"stub-{n}",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", "stub"),
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": reply.content},
            }
        ],
        "usage": {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        },
    }


async def _chat(stub: Stub, raw: bytes) -> tuple[int, dict[str, str], Any] | None:
    """The answer to one chat request, or None to drop the connection."""
    body = json.loads(raw or b"{}")
    n = stub.calls
    stub.calls += 1
    stub.requests.append(body)
    assert stub.handler is not None
    reply = stub.handler(body, n)
    stub.in_flight += 1
    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
    try:
        if reply.hold is not None:
            await asyncio.to_thread(reply.hold.wait, 30)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
    finally:
        stub.in_flight -= 1
    if reply.drop:
        return None
    payload = _completion(body, reply, n) if reply.status == 200 else (reply.body or {})
    return reply.status, reply.headers, payload


async def _serve_connection(
    stub: Stub, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:  # keep-alive: one request after another on this connection
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            raw = await reader.readexactly(int(headers.get("content-length", "0")))
            answer: tuple[int, dict[str, str], Any] | None
            if method == "GET" and path.endswith("/models"):
                answer = 200, {}, {"object": "list", "data": [{"id": "stub", "object": "model"}]}
            elif method == "POST" and path.endswith("/chat/completions"):
                answer = await _chat(stub, raw)
            else:
                answer = 404, {}, {"error": {"message": f"no route {method} {path}"}}
            if answer is None:
                writer.transport.abort()  # no status line, no body: a connection error
                return
            status, extra, payload = answer
            data = json.dumps(payload).encode()
            out = [
                f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
                "content-type: application/json",
                f"content-length: {len(data)}",
            ]
            out += [f"{k}: {v}" for k, v in extra.items()]
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + data)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the client went away (after a timeout, or at the end of a test)
    except asyncio.CancelledError:
        pass  # the stub is stopping: a hanging reply ends here, without a logged traceback
    finally:
        writer.close()


#: serves one connection to a stub
Connection = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextmanager
def on_loopback(serve: Connection, thread: str, what: str) -> Iterator[str]:
    """Serve connections with `serve` on a free 127.0.0.1 port, on an event loop in a thread
    of its own (named `thread`), until the block ends; the base URL (`/v1`). At the end,
    hanging replies and idle keep-alive connections are cancelled."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    servers: list[asyncio.Server] = []
    urls: list[str] = []

    async def start() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(server)
        urls.append(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1")
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    runner = threading.Thread(target=run, name=thread, daemon=True)
    runner.start()
    if not ready.wait(10):
        raise RuntimeError(f"the {what} did not start")
    try:
        yield urls[0]
    finally:

        async def stop() -> None:
            servers[0].close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()  # hanging replies and idle keep-alive connections
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        runner.join(10)
        loop.close()


@contextmanager
def run_stub(handler: Handler) -> Iterator[Stub]:
    """Serve `handler` on a free 127.0.0.1 port until the block ends."""
    stub = Stub(handler=handler)
    with on_loopback(lambda r, w: _serve_connection(stub, r, w), "llm-stub", "LLM stub") as url:
        stub.base_url = url
        yield stub


def first_user_message(body: dict[str, Any]) -> str:
    """The prompt as first asked (a corrective retry appends more turns after it)."""
    return next(m["content"] for m in body["messages"] if m["role"] == "user")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def _followup(user: str, tag: str) -> dict[str, Any]:
    """A follow-up question: an application to the first concept the prompt lists as not
    used yet, or a clarification when there is none."""
    marker = "one not used yet: "
    line = next((x for x in user.splitlines() if marker in x), "")
    unused = line.split(marker, 1)[1].removesuffix(".").split(", ") if line else []
    if unused and unused[0]:
        return {
            "kind": "application",
            "question": f"How does this apply to {unused[0]} ({tag})?",
            "concept": unused[0],
        }
    return {"kind": "clarification", "question": f"Could you explain that step again ({tag})?"}


def fake_judgement(tag: str) -> dict[str, Any]:
    """A judge's scores of a pair, 1-10, drawn from a digest of its prompt: the same pair is
    always scored alike, and pairs spread over the whole scale."""
    value = int(tag, 16)
    criteria = ("self_contained", "answerable", "correct", "complete", "uses_concepts")
    scores = {c: 1 + (value >> (4 * i)) % 10 for i, c in enumerate((*criteria, "on_topic"))}
    return {"rationale": f"A fair pair ({tag}).", **scores, "overall": 1 + value % 10}


def fake_glan_model(
    *, subjects: int = 3, sessions: int = 4, concepts: int = 4, items: int = 3
) -> Handler:
    """A stand-in model that answers each GLAN prompt with well-formed output.

    Names derive from the prompt text (and, for subjects, the call number, as a sampling
    model would vary between rounds), so every subject, session and concept is distinct.
    """

    def handler(body: dict[str, Any], n: int) -> Reply:
        user = first_user_message(body)
        tag = _digest(user)
        if '{"rationale"' in user:  # a judge (first: its prompt quotes the pair it judges)
            return ok_json(fake_judgement(tag))
        if '{"items"' in user:
            return ok_json(
                {
                    "items": [
                        {"name": f"Area {tag} {i}", "description": "an area"} for i in range(items)
                    ]
                }
            )
        if '{"subjects"' in user:
            return ok_json(
                {
                    "subjects": [
                        {
                            "name": f"Subject {tag}-{n} {i}",
                            "level": "undergraduate",
                            "subtopics": [f"topic {i}.{j}" for j in range(2)],
                        }
                        for i in range(subjects)
                    ]
                }
            )
        if '{"sessions"' in user:
            return ok_json(
                {
                    "sessions": [
                        {
                            "title": f"Session {i} ({tag})",
                            "description": f"session {i}",
                            "concepts": [f"concept {tag} {i}.{j}" for j in range(concepts)],
                        }
                        for i in range(sessions)
                    ]
                }
            )
        if '{"kind"' in user:  # a follow-up: an application to a concept not used yet
            return ok_json(_followup(user, tag))
        if '{"question"' in user:
            asked = [line[2:] for line in user.splitlines() if line.startswith("- ")]
            return ok_json({"question": "Explain how these relate: " + "; ".join(asked) + "?"})
        # a turn of a conversation is answered after the conversation so far: its last question
        last = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
        return ok(f"An answer ({_digest(last)}): it depends on the definitions involved.")

    return handler
