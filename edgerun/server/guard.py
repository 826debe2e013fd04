"""What stands in front of the endpoints: Host/Origin checks, body size and slow-client limits.

`GuardMiddleware` (pure ASGI, outermost) checks, before any handler runs:

- on a loopback bind, that `Host` names the loopback (DNS rebinding: a page from evil.example
  that resolves to 127.0.0.1 sends `Host: evil.example`) and that a browser's `Origin` is a
  loopback page or one allowed with `--cors-origin`; both refused with 403;
- the body: a `Content-Length` over `max_body` gets 413 without reading a byte, a chunked body
  is counted as it arrives and cut at the limit; a body not complete within `body_timeout`
  gets 408. The body is then handed to the app from memory.

`guarded_protocol(header_timeout)` is uvicorn's h11 protocol with a deadline for a request's
headers, so a client that opens a connection and trickles (or never sends) them is dropped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from edgerun.server.options import ServerSafety

__all__ = ["GuardMiddleware", "guarded_protocol", "is_loopback"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def is_loopback(host: str) -> bool:
    """Whether a bind address or host name is on the loopback interface."""
    h = host.strip("[]").lower()
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _hostname(host_header: str) -> str:
    """The name part of a Host header ('[::1]:8080' -> '::1', 'a:80' -> 'a')."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1: h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def _origin_host(origin: str) -> str:
    rest = origin.split("://", 1)[1] if "://" in origin else origin
    return _hostname(rest.split("/", 1)[0])


async def _error(send: Send, status: int, message: str, code: str, headers: dict[str, str] | None = None
                 ) -> None:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": code}}).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """ASGI middleware applying a `ServerSafety` (see the module docstring)."""

    def __init__(self, app: Any, safety: ServerSafety, on_error: Callable[[int], None] | None = None) -> None:
        self.app = app
        self.safety = safety
        self.loopback = is_loopback(safety.bind_host)
        self.hosts = _LOOPBACK_NAMES | {h.lower() for h in safety.allowed_hosts}
        self.origins = {o.lower() for o in safety.cors_origins}
        self.on_error = on_error or (lambda status: None)

    def origin_allowed(self, origin: str) -> bool:
        o = origin.lower().rstrip("/")
        return "*" in self.origins or o in self.origins or is_loopback(_origin_host(o))

    async def _refuse(self, send: Send, status: int, message: str, code: str,
                      headers: dict[str, str] | None = None) -> None:
        self.on_error(status)
        await _error(send, status, message, code, headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.loopback:
            host = headers.get("host", "")
            if _hostname(host) not in self.hosts:
                await self._refuse(send, 403, f"Host {host!r} is not allowed: this server listens on a "
                                   "loopback address and answers only requests for localhost (against "
                                   "DNS rebinding); start it with --allow-host to add a name",
                                   "host_not_allowed")
                return
            origin = headers.get("origin")
            if origin is not None and origin != "null" and not self.origin_allowed(origin):
                await self._refuse(send, 403, f"Origin {origin!r} is not allowed; start the server with "
                                   "--cors-origin ORIGIN to allow pages from it", "origin_not_allowed")
                return
            if origin == "null":
                await self._refuse(send, 403, "Origin 'null' is not allowed", "origin_not_allowed")
                return
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE") and "content-length" not in headers \
                and "transfer-encoding" not in headers:
            await self.app(scope, receive, send)
            return
        limit = self.safety.max_body
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit() or len(length.strip()) > 18:
                await self._refuse(send, 400, "bad Content-Length header", "invalid_request")
                return
            if int(length) > limit:
                await self._refuse(send, 413, f"request body of {int(length)} bytes is over the limit of "
                                   f"{limit} bytes (--max-body)", "body_too_large")
                return
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.safety.body_timeout
        while True:
            try:
                msg = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except TimeoutError:
                await self._refuse(send, 408, f"the request body did not arrive within "
                                   f"{self.safety.body_timeout:g} s", "request_timeout")
                return
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._refuse(send, 413, f"request body is over the limit of {limit} bytes (--max-body)",
                                   "body_too_large")
                return
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)


def guarded_protocol(header_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol that closes a connection whose request headers take longer than
    `header_timeout` seconds (from connect, or from the end of the previous response)."""

    class _Guarded(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            self._er_cycle = self.cycle
            self._er_timer = self.loop.call_later(header_timeout, self._er_expired)

        def _disarm(self) -> None:
            timer = getattr(self, "_er_timer", None)
            if timer is not None:
                timer.cancel()
                self._er_timer = None

        def _er_expired(self) -> None:
            self._er_timer = None
            cycle = self.cycle
            idle = cycle is None or cycle.response_complete
            if cycle is self._er_cycle and idle and not self.transport.is_closing():
                self.transport.close()  # no new request's headers arrived in time

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not getattr(self, "_er_cycle", None):
                self._disarm()  # a request's headers are complete

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._disarm()
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return _Guarded
