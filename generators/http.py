"""How a chat completion travels: one POST of a JSON body, one answer back.

The live client sends its requests here rather than through the `openai` SDK. Against a
fast endpoint the SDK's request path was about half of glan's own CPU time per request
(its request options, its response models, and an HTTP client that writes a request's
headers and body in two system calls); what glan needs from it is a POST and the status,
headers and body of the answer. Retries, limits and error messages stay in generators/llm.py,
which reads these answers; `openai` remains for the Files and Batch APIs.

Two transports, the same contract: `post` returns an `Answer` whatever its status, and
raises `TransportTimeout` when no answer came in time and `TransportFailure` when the
connection could not be made or was lost. By default an aiohttp session, made on the
event loop of the first request (one per loop); a caller may lend an httpx.AsyncClient
instead, which is used as it is and left open.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiohttp
    import httpx

USER_AGENT = "glan/0.1"


@dataclass(frozen=True)
class Answer:
    status: int
    #: case-insensitive (both transports' header mappings are)
    headers: Mapping[str, str]
    body: bytes
    reason: str = ""


class TransportTimeout(Exception):
    """No answer within the client's timeout."""


class TransportFailure(Exception):
    """The connection could not be made, or was lost before a whole answer came."""


def request_headers(api_key: str) -> dict[str, str]:
    """The headers of every request: the key as a bearer token, JSON both ways, and the
    organization and project the `openai` SDK would send from its environment variables."""
    headers = {
        "Authorization": f"Bearer {api_key}",
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
    }
    for header, variable in (
        ("OpenAI-Organization", "OPENAI_ORG_ID"),
        ("OpenAI-Project", "OPENAI_PROJECT_ID"),
    ):
        if value := os.environ.get(variable):
            headers[header] = value
    return headers


class Transport:
    async def post(self, url: str, data: bytes, headers: Mapping[str, str]) -> Answer:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class AiohttpTransport(Transport):
    """Keep-alive connections in an aiohttp session of the running loop; each request is
    written in one piece and its whole answer read before `post` returns."""

    def __init__(self, timeout_s: float, connections: int) -> None:
        self.timeout_s = timeout_s
        self.connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: url -> the proxy (and its credentials) the environment names for it, or None
        self._proxies: dict[str, tuple[Any, Any]] = {}

    async def _session_here(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            import aiohttp  # here, not at import: a command that asks no model never pays it

            # a session belongs to its loop: one asked from another loop (a second
            # asyncio.run) gets a session of its own
            await self._let_go()
            self._loop = loop
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.connections, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def _proxy(self, url: str) -> tuple[Any, Any]:
        """The proxy HTTP(S)_PROXY and NO_PROXY name for `url`, as the SDK's client honoured
        them: looked up once per endpoint (a session that trusts the environment looks it up
        again on a worker thread for every request, a tenth of a millisecond of CPU each)."""
        if url not in self._proxies:
            from aiohttp.helpers import get_env_proxy_for_url
            from yarl import URL

            found: tuple[Any, Any]
            try:
                found = await asyncio.to_thread(get_env_proxy_for_url, URL(url))
            except LookupError:
                found = (None, None)
            self._proxies[url] = found
        return self._proxies[url]

    async def post(self, url: str, data: bytes, headers: Mapping[str, str]) -> Answer:
        import aiohttp

        session = await self._session_here()
        proxy, proxy_auth = await self._proxy(url)
        try:
            async with session.post(
                url, data=data, headers=headers, proxy=proxy, proxy_auth=proxy_auth
            ) as r:
                body = await r.read()
                return Answer(r.status, r.headers, body, r.reason or "")
        except TimeoutError as exc:  # aiohttp's ServerTimeoutError is one too
            raise TransportTimeout(str(exc)) from exc
        except (aiohttp.ClientError, OSError) as exc:  # refused, reset, dropped, cut short
            raise TransportFailure(_describe(exc)) from exc

    async def aclose(self) -> None:
        if self._session is not None and asyncio.get_running_loop() is self._loop:
            session, self._session = self._session, None
            await session.close()
            return
        await self._let_go()

    async def _let_go(self) -> None:
        """Close what can be closed of a session made on another loop: on that loop while
        it runs (in another thread); if it ended, its connections went with it and the
        session is only marked closed."""
        session, loop, self._session = self._session, self._loop, None
        if session is None or session.closed or loop is None:
            return
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(session.close(), loop)
        elif loop.is_closed():
            connector = session.connector
            session.detach()
            if connector is not None:
                await connector.close()  # schedules nothing on a closed loop


class HttpxTransport(Transport):
    """A caller's httpx.AsyncClient, used as it is (its hooks, limits, proxies) and left
    open: it is theirs to close."""

    def __init__(self, client: httpx.AsyncClient, timeout_s: float) -> None:
        self.client = client
        self.timeout_s = timeout_s

    async def post(self, url: str, data: bytes, headers: Mapping[str, str]) -> Answer:
        import httpx

        try:
            r = await self.client.post(url, content=data, headers=headers, timeout=self.timeout_s)
        except httpx.TimeoutException as exc:
            raise TransportTimeout(str(exc)) from exc
        except httpx.TransportError as exc:  # refused, reset, dropped, cut short
            raise TransportFailure(_describe(exc)) from exc
        return Answer(r.status_code, r.headers, r.content, r.reason_phrase)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text} ({cause})"
    return text


def make_transport(timeout_s: float, connections: int, lent: Any = None) -> Transport:
    """The aiohttp transport, or the caller's httpx client when one is lent."""
    if lent is not None:
        return HttpxTransport(lent, timeout_s)
    return AiohttpTransport(timeout_s, connections)
