"""A Files + Batches API on loopback, for tests and benchmarks: the official `openai` client
talks to it unchanged.

It keeps uploaded files and batches in memory and moves each batch through the API's
states one poll (`GET /batches/{id}`) at a time: validating -> in_progress -> finalizing ->
completed, answering each input line with a handler of tests/llm_stub.py (the same one a
live run against `run_stub` gets, so a batch run and a live run can be compared). Output
lines come in a shuffled order; a reply with an HTTP error status becomes an error-file
line. A batch can be told to expire after some of its requests, be cancelled through the
API (cancelling -> cancelled, with what it finished), be held in progress until an event is
set, and is failed at validation when an input line is malformed (not JSON, no custom_id or
a repeated one, another method or url, no body) or there are more than 50,000 lines. It
also answers /chat/completions with the same handler, for the live executor.

A raw asyncio HTTP/1.1 server in a background thread, like tests/llm_stub.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.llm_stub import Handler, Reply, on_loopback

MAX_LINES = 50_000


@dataclass
class Plan:
    """What happens to one batch (by its submission number, from 0)."""

    #: expire once this many of its requests are answered (the rest never run)
    expire_after: int | None = None
    #: requests answered per poll while in progress (None: all at once)
    per_poll: int | None = None


@dataclass
class StubFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int


@dataclass
class StubBatch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: int
    plan: Plan
    status: str = "validating"
    lines: list[dict[str, Any]] = field(default_factory=list)
    answered: list[dict[str, Any]] = field(default_factory=list)  # output lines
    errored: list[dict[str, Any]] = field(default_factory=list)  # error-file lines
    errors: list[dict[str, Any]] = field(default_factory=list)  # validation errors
    output_file_id: str | None = None
    error_file_id: str | None = None
    cancel_asked: bool = False
    stamps: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        done = len(self.answered)
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.stamps.get("in_progress"),
            "expires_at": self.created_at + 86400,
            "finalizing_at": self.stamps.get("finalizing"),
            "completed_at": self.stamps.get("completed"),
            "failed_at": self.stamps.get("failed"),
            "expired_at": self.stamps.get("expired"),
            "cancelling_at": self.stamps.get("cancelling"),
            "cancelled_at": self.stamps.get("cancelled"),
            "request_counts": {
                "total": len(self.lines),
                "completed": done,
                "failed": len(self.errored),
            },
            "metadata": self.metadata,
        }


@dataclass
class BatchStub:
    handler: Handler
    base_url: str = ""
    seed: int = 0
    files: dict[str, StubFile] = field(default_factory=dict)
    #: files deleted through the API (kept here for the tests to read)
    deleted: dict[str, StubFile] = field(default_factory=dict)
    batches: dict[str, StubBatch] = field(default_factory=dict)
    #: what happens to the n-th batch created
    plans: Callable[[int], Plan] = lambda n: Plan()
    #: while set to an unset event, batches in progress answer nothing
    hold: threading.Event | None = None
    calls: int = 0  # requests answered, by batches and by /chat/completions
    chat_calls: int = 0
    polls: int = 0
    #: each chat body answered, batch lines and live calls alike
    requests: list[dict[str, Any]] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    @property
    def created(self) -> list[StubBatch]:
        """Batches in the order they were created."""
        return sorted(self.batches.values(), key=lambda b: int(b.id.rsplit("_", 1)[1]))

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids)}"

    # -- files

    def file(self, file_id: str) -> StubFile:
        """A file uploaded or made here, deleted since or not."""
        return self.files.get(file_id) or self.deleted[file_id]

    def add_file(self, filename: str, purpose: str, data: bytes) -> StubFile:
        f = StubFile(self.new_id("file"), filename, purpose, data, int(time.time()))
        self.files[f.id] = f
        return f

    def file_json(self, f: StubFile) -> dict[str, Any]:
        return {
            "id": f.id,
            "object": "file",
            "bytes": len(f.data),
            "created_at": f.created_at,
            "filename": f.filename,
            "purpose": f.purpose,
            "status": "processed",
        }

    # -- batches

    def create(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        source = self.files.get(str(body.get("input_file_id")))
        if source is None:
            return 404, _error(f"no file {body.get('input_file_id')}")
        if source.purpose != "batch":
            return 400, _error(f"file {source.id} has purpose {source.purpose!r}, not 'batch'")
        n = len(self.batches)
        batch = StubBatch(
            self.new_id("batch"),
            source.id,
            str(body.get("endpoint")),
            str(body.get("completion_window")),
            body.get("metadata"),
            int(time.time()),
            self.plans(n),
        )
        self.batches[batch.id] = batch
        return 200, batch.as_json()

    def advance(self, batch: StubBatch) -> None:
        """One poll's worth of a batch's life."""
        now = int(time.time())
        if batch.status == "validating":
            batch.lines, batch.errors = self._validate(batch)
            batch.status = "failed" if batch.errors else "in_progress"
            batch.stamps[batch.status] = now
        elif batch.status == "cancelling":
            self._finish(batch, "cancelled")
        elif batch.status == "in_progress":
            if self.hold is not None and not self.hold.is_set():
                return
            todo = batch.lines[len(batch.answered) + len(batch.errored) :]
            limit = batch.plan.per_poll or len(todo)
            if batch.plan.expire_after is not None:
                limit = min(limit, batch.plan.expire_after - len(batch.answered))
            for line in todo[:limit]:
                self._answer(batch, line)
            ran = len(batch.answered) + len(batch.errored)
            if batch.plan.expire_after is not None and ran >= batch.plan.expire_after:
                self._finish(batch, "expired")
            elif ran == len(batch.lines):
                batch.status = "finalizing"
                batch.stamps["finalizing"] = now
        elif batch.status == "finalizing":
            self._finish(batch, "completed")

    def cancel(self, batch: StubBatch) -> None:
        if batch.status in ("validating", "in_progress", "finalizing"):
            batch.status = "cancelling"
            batch.stamps["cancelling"] = int(time.time())

    def _validate(self, batch: StubBatch) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        data = self.files[batch.input_file_id].data
        lines: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()
        for number, raw in enumerate(data.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                errors.append(_invalid(number, "the line is not valid JSON"))
                continue
            if not isinstance(line, dict):
                errors.append(_invalid(number, "the line is not a JSON object"))
                continue
            custom_id = line.get("custom_id")
            if not isinstance(custom_id, str) or not custom_id:
                errors.append(_invalid(number, "custom_id is missing"))
            elif custom_id in seen:
                errors.append(_invalid(number, f"custom_id {custom_id} is not unique"))
            elif line.get("method") != "POST":
                errors.append(_invalid(number, "method must be POST"))
            elif line.get("url") != batch.endpoint:
                errors.append(_invalid(number, f"url must be {batch.endpoint}"))
            elif not isinstance(line.get("body"), dict) or "messages" not in line["body"]:
                errors.append(_invalid(number, "body must be a chat completion request"))
            else:
                seen.add(custom_id)
                lines.append(line)
        if len(lines) > MAX_LINES:
            errors.append({"code": "too_many_requests", "message": f"over {MAX_LINES} lines"})
        return lines, errors

    def chat(self, body: dict[str, Any]) -> Reply:
        n = self.calls
        self.calls += 1
        self.requests.append(body)
        return self.handler(body, n)

    def _answer(self, batch: StubBatch, line: dict[str, Any]) -> None:
        reply = self.chat(line["body"])
        request_id = self.new_id("req")
        if reply.status == 200:
            response = {
                "status_code": 200,
                "request_id": request_id,
                "body": completion(line["body"], reply, request_id),
            }
            batch.answered.append(_line(line, response, None))
        else:
            response = {"status_code": reply.status, "request_id": request_id, "body": reply.body}
            batch.errored.append(_line(line, response, None))

    def _finish(self, batch: StubBatch, status: str) -> None:
        """Write the output and error files (shuffled) and end the batch."""
        if status in ("expired", "cancelled"):
            ran = len(batch.answered) + len(batch.errored)
            code = "batch_expired" if status == "expired" else "batch_cancelled"
            for line in batch.lines[ran:]:
                message = f"the batch was {status} before this request ran"
                batch.errored.append(_line(line, None, {"code": code, "message": message}))
        draw = random.Random(f"{self.seed}:{batch.id}")
        for name, items in (("output", batch.answered), ("error", batch.errored)):
            if not items:
                continue
            shuffled = items[:]
            draw.shuffle(shuffled)
            data = b"".join(json.dumps(i).encode() + b"\n" for i in shuffled)
            made = self.add_file(f"{batch.id}_{name}.jsonl", "batch_output", data)
            setattr(batch, f"{name}_file_id", made.id)
        batch.status = status
        batch.stamps[status] = int(time.time())


def completion(body: dict[str, Any], reply: Reply, request_id: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{request_id}",
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


def _line(line: dict[str, Any], response: Any, error: Any) -> dict[str, Any]:
    return {
        "id": f"batch_req_{line['custom_id']}",
        "custom_id": line["custom_id"],
        "response": response,
        "error": error,
    }


def _invalid(number: int, message: str) -> dict[str, Any]:
    return {"code": "invalid_request", "line": number, "message": message, "param": None}


def _error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error"}}


def _multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a multipart/form-data body: name -> (filename, content)."""
    boundary = content_type.split("boundary=", 1)[1].strip().strip('"').encode()
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in raw.split(b"--" + boundary):
        if not part.strip() or part.strip() == b"--":
            continue
        head, _, content = part.lstrip(b"\r\n").partition(b"\r\n\r\n")
        if content.endswith(b"\r\n"):
            content = content[:-2]
        disposition = next(
            (h for h in head.decode().split("\r\n") if h.lower().startswith("content-disposition")),
            "",
        )
        params = dict(
            p.strip().split("=", 1) for p in disposition.split(";")[1:] if "=" in p
        )  # fmt: skip
        name = params.get("name", "").strip('"')
        filename = params["filename"].strip('"') if "filename" in params else None
        fields[name] = (filename, content)
    return fields


Answer = tuple[int, dict[str, str], Any]


def _route(
    stub: BatchStub, method: str, target: str, headers: dict[str, str], raw: bytes
) -> Answer:
    url = urlsplit(target)
    path = url.path.removeprefix("/v1")
    parts = [p for p in path.split("/") if p]
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    if method == "POST" and parts == ["chat", "completions"]:
        stub.chat_calls += 1
        reply = stub.chat(json.loads(raw or b"{}"))
        if reply.status != 200:
            return reply.status, reply.headers, reply.body or {}
        return 200, {}, completion(json.loads(raw or b"{}"), reply, stub.new_id("req"))
    if method == "GET" and parts == ["models"]:
        return 200, {}, {"object": "list", "data": [{"id": "stub", "object": "model"}]}
    if parts[:1] == ["files"]:
        if method == "POST" and len(parts) == 1:
            fields = _multipart(headers.get("content-type", ""), raw)
            filename, data = fields.get("file", (None, b""))
            purpose = fields.get("purpose", (None, b""))[1].decode()
            made = stub.add_file(filename or "upload.jsonl", purpose, data)
            return 200, {}, stub.file_json(made)
        f = stub.files.get(parts[1]) if len(parts) > 1 else None
        if f is None:
            return 404, {}, _error(f"no file {parts[1:] or ''}")
        if method == "GET" and parts[2:] == ["content"]:
            return 200, {"content-type": "application/octet-stream"}, f.data
        if method == "GET" and len(parts) == 2:
            return 200, {}, stub.file_json(f)
        if method == "DELETE" and len(parts) == 2:
            stub.deleted[f.id] = stub.files.pop(f.id)
            return 200, {}, {"id": f.id, "object": "file", "deleted": True}
    if parts[:1] == ["batches"]:
        if method == "POST" and len(parts) == 1:
            status, payload = stub.create(json.loads(raw or b"{}"))
            return status, {}, payload
        if method == "GET" and len(parts) == 1:
            newest = sorted(stub.batches.values(), key=lambda b: -int(b.id.rsplit("_", 1)[1]))
            if "after" in query:
                ids = [b.id for b in newest]
                newest = newest[ids.index(query["after"]) + 1 :] if query["after"] in ids else []
            limit = int(query.get("limit", 20))
            page = newest[:limit]
            return 200, {}, {
                "object": "list",
                "data": [b.as_json() for b in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(newest) > limit,
            }  # fmt: skip
        batch = stub.batches.get(parts[1]) if len(parts) > 1 else None
        if batch is None:
            return 404, {}, _error(f"no batch {parts[1:] or ''}")
        if method == "GET" and len(parts) == 2:
            stub.polls += 1
            stub.advance(batch)
            return 200, {}, batch.as_json()
        if method == "POST" and parts[2:] == ["cancel"]:
            stub.cancel(batch)
            return 200, {}, batch.as_json()
    return 404, {}, _error(f"no route {method} {target}")


async def _serve(
    stub: BatchStub, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            if headers.get("transfer-encoding", "").lower() == "chunked":
                raw = b""
                while True:
                    size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                    chunk = await reader.readexactly(size + 2)
                    if size == 0:
                        break
                    raw += chunk[:-2]
            else:
                raw = await reader.readexactly(int(headers.get("content-length", "0")))
            status, extra, payload = _route(stub, method, target, headers, raw)
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            out = [
                f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}",
                f"content-type: {extra.pop('content-type', 'application/json')}",
                f"content-length: {len(data)}",
            ]
            out += [f"{k}: {v}" for k, v in extra.items()]
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + data)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


@contextmanager
def run_batch_stub(handler: Handler, **kw: Any) -> Iterator[BatchStub]:
    """Serve a Files + Batches API answering with `handler` on a free 127.0.0.1 port."""
    stub = BatchStub(handler=handler, **kw)
    with on_loopback(lambda r, w: _serve(stub, r, w), "batch-stub", "batch stub") as url:
        stub.base_url = url
        yield stub
