"""A loopback OpenAI-compatible endpoint fast enough not to be what a benchmark measures.

tests/llm_stub.py serves the tests: it can hang, drop connections and count what it is
sent, on asyncio streams in a thread. This one answers the same GLAN prompts (its replies
come from that module's `fake_glan_model`) with as little as possible around them: an
asyncio Protocol per connection, HTTP/1.1 keep-alive, no per-request tasks. Run it as a
process of its own, so that it does not share an interpreter lock with what it measures:

    python bench/loopback_stub.py          # prints its base URL, serves until killed

`GET /v1/stats` answers the chat requests served so far and the process's own CPU time.
`ceiling()` is a bare client loop that measures what the stub serves when the client
costs next to nothing: the figure a pipeline's requests per second are compared with.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.llm_stub import Handler, _completion, fake_glan_model  # noqa: E402

_HEAD_END = b"\r\n\r\n"


class _Stats:
    calls = 0


def _response(status: int, payload: Any) -> bytes:
    data = json.dumps(payload).encode()
    reason = b"OK" if status == 200 else b"Not Found"
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    return head % (status, reason, len(data)) + data


class _Connection(asyncio.Protocol):
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out: list[bytes] = []
        while True:  # every complete request in the buffer (clients may pipeline)
            end = self.buffer.find(_HEAD_END)
            if end < 0:
                break
            head = self.buffer[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                break
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            out.append(self.answer(head.split(b" ", 2), body))
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def answer(self, request_line: list[bytes], raw: bytes) -> bytes:
        method, path = request_line[0], request_line[1]
        if method == b"POST" and path.endswith(b"/chat/completions"):
            body = json.loads(raw or b"{}")
            n = _Stats.calls
            _Stats.calls += 1
            return _response(200, _completion(body, self.handler(body, n), n))
        if method == b"GET" and path.endswith(b"/stats"):
            cpu = time.process_time()
            return _response(200, {"calls": _Stats.calls, "cpu_s": cpu})
        if method == b"GET" and path.endswith(b"/models"):
            return _response(200, {"object": "list", "data": [{"id": "stub", "object": "model"}]})
        return _response(404, {"error": {"message": f"no route {path.decode()}"}})


async def serve(handler: Handler, host: str = "127.0.0.1", port: int = 0) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(handler), host, port)
    print(f"http://{host}:{server.sockets[0].getsockname()[1]}/v1", flush=True)
    await server.serve_forever()


# --- the bare client loop


class _Client(asyncio.Protocol):
    """One keep-alive connection sending the same request again as soon as it is answered,
    while the shared count of requests left lasts; `done` is set after its last answer."""

    def __init__(self, request: bytes, left: list[int], done: asyncio.Future[None]) -> None:
        self.request = request
        self.left = left
        self.done = done
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.next()

    def next(self) -> None:
        assert self.transport is not None
        if self.left[0] <= 0:
            self.transport.close()
            if not self.done.done():
                self.done.set_result(None)
            return
        self.left[0] -= 1
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(_HEAD_END)
        if end < 0:
            return
        head = self.buffer[:end].lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15 :].split(b"\r\n", 1)[0])
        if len(self.buffer) < end + 4 + length:
            return
        if not head.startswith(b"http/1.1 200") and not self.done.done():
            self.done.set_exception(RuntimeError(head.decode()))
        self.buffer = self.buffer[end + 4 + length :]
        self.next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("the stub closed the connection"))


async def _ceiling(base_url: str, body: dict[str, Any], requests: int, concurrency: int) -> float:
    host_port = base_url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    path = base_url.split(host_port, 1)[1] + "/chat/completions"
    data = json.dumps(body).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nhost: {host_port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\n\r\n"
    ).encode() + data
    loop = asyncio.get_running_loop()
    left = [requests]
    finished: list[asyncio.Future[None]] = []
    start = time.perf_counter()
    for _ in range(concurrency):
        done: asyncio.Future[None] = loop.create_future()
        finished.append(done)
        await loop.create_connection(lambda d=done: _Client(request, left, d), host, int(port))
    await asyncio.gather(*finished)
    return requests / (time.perf_counter() - start)


def ceiling(
    base_url: str, body: dict[str, Any], requests: int, concurrency: int
) -> tuple[float, float]:
    """Requests per second a bare loop of `concurrency` keep-alive connections gets from
    the stub, each sending `body` again as soon as it is answered, and the loop's own CPU
    seconds per request."""
    cpu = time.process_time()
    rate = asyncio.run(_ceiling(base_url, body, requests, concurrency))
    return rate, (time.process_time() - cpu) / requests


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):  # SIGTERM ends it as well
        asyncio.run(serve(fake_glan_model()))
