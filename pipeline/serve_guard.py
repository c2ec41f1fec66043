"""What stands between the network and :mod:`aepipe.serve`'s routes (pure ASGI middleware).

From the outside in: :class:`Auth` (API keys), :class:`ClientLimit` (requests in flight per
client), :class:`Deadline` (time to send the body, time for the whole request) and
:class:`BodyLimit` (bytes in the body). Each answers its refusal itself as
``{"error": code, "detail": message}`` without reading more of the request, so a refused
client costs the server no more than its headers. :class:`HeaderTimeoutH11` closes connections
whose request line and headers do not arrive in time (a slowloris trickle), which no ASGI
middleware can see.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from aepipe.errors import ConfigError

KEYS_ENV = "AEPIPE_API_KEYS"
OPEN_PATHS = frozenset({"/healthz"})

Scope = dict[str, Any]


def load_api_keys(key_file: Path | None, environ: dict[str, str] | None = None) -> list[str]:
    """The API keys the server accepts.

    From ``key_file`` (one a line; ``#`` comments and blank lines skipped) or, when no file is
    given, from ``$AEPIPE_API_KEYS`` (comma-separated). Never from the command line,
    where ``ps`` would show them.

    Raises:
        ConfigError: the file cannot be read, or a key is shorter than 16 characters.
    """
    environ = os.environ if environ is None else environ
    if key_file is not None:
        try:
            lines = key_file.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"--api-key-file {key_file}: {exc.strerror or exc}") from exc
        keys = [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
        where = str(key_file)
    else:
        keys = [s.strip() for s in environ.get(KEYS_ENV, "").split(",") if s.strip()]
        where = f"${KEYS_ENV}"
    short = [i + 1 for i, k in enumerate(keys) if len(k) < 16]
    if short:
        raise ConfigError(f"{where}: key(s) number {short} are shorter than 16 characters")
    return keys


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bindable(host: str, port: int) -> None:
    """Refuse, before the stages load, an address the server could not listen on.

    Raises:
        ConfigError: the port is taken, or ``host`` is not an address of this machine.
    """
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As uvicorn binds: a port left in TIME_WAIT by the last run is free to use again.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def error_body(code: str, detail: str) -> bytes:
    """The JSON error body every refusal carries."""
    return json.dumps({"error": code, "detail": detail}).encode()


async def send_error(
    send: Any, status: int, code: str, detail: str, headers: Iterable[tuple[str, str]] = ()
) -> None:
    """Answer ``status`` with a JSON error body and close the connection (body may be unread)."""
    body = error_body(code, detail)
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *((k.lower().encode(), v.encode()) for k, v in headers),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


# A refusal decided before the body is read (401, 429) first reads and drops this much of it:
# a client still sending when the connection closes gets a reset, not the JSON answer.
DRAIN_BYTES = 1 << 20
DRAIN_SECONDS = 5.0


async def drain(
    scope: Scope, receive: Any, limit: int = DRAIN_BYTES, seconds: float = DRAIN_SECONDS
) -> None:
    """Read and drop up to ``limit`` bytes of the request body, for at most ``seconds``.

    Not for a client waiting on ``Expect: 100-continue``: reading would invite its upload.
    """
    if any(k == b"expect" and v.lower() == b"100-continue" for k, v in scope.get("headers", [])):
        return

    async def read() -> None:
        seen = 0
        while seen <= limit:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    with contextlib.suppress(asyncio.TimeoutError):  # a slow sender gets the answer anyway
        await asyncio.wait_for(read(), seconds)


def bearer_token(scope: Scope) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if there is one."""
    for name, value in scope.get("headers") or []:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class Auth:
    """Refuse requests without a valid ``Authorization: Bearer <key>`` with 401.

    The token is compared with every key in constant time (:func:`hmac.compare_digest`, no
    early exit), so response timing says nothing about how close a guess was. ``/healthz`` stays
    open. With no keys every request passes (only allowed on loopback; see the CLI).
    """

    def __init__(self, app: Any, keys: Iterable[str]) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]

    def allowed(self, token: str | None) -> bool:
        """Whether ``token`` is one of the keys (checked against all of them)."""
        given = (token or "").encode()
        ok = False
        for key in self.keys:
            ok |= hmac.compare_digest(given, key)
        return ok and token is not None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        """Pass authorised requests on; answer the rest 401."""
        if scope["type"] != "http" or not self.keys or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if not self.allowed(token):
            detail = "missing API key" if token is None else "invalid API key"
            await drain(scope, receive)
            await send_error(
                send,
                401,
                "unauthorized",
                f"{detail}: send 'Authorization: Bearer <key>'",
                [("WWW-Authenticate", "Bearer")],
            )
            return
        await self.app(scope, receive, send)


class ClientLimit:
    """At most ``per_client`` requests in flight per client; more get 429 with ``Retry-After``.

    A client is its API key when keys are checked (``by_key``; :class:`Auth` runs first, so the
    key is valid), else its IP address (``scope["client"]``, which uvicorn sets from
    ``X-Forwarded-For`` only for proxies in ``--forwarded-allow-ips``). Without key checks a
    made-up token must not buy a fresh allowance, so the address is used.
    """

    def __init__(self, app: Any, per_client: int, by_key: bool = True) -> None:
        self.app = app
        self.per_client = per_client
        self.by_key = by_key
        self.in_flight: dict[str, int] = {}

    def client_key(self, scope: Scope) -> str:
        """Who is asking: ``key:<hash prefix>`` or ``ip:<address>``."""
        import hashlib

        token = bearer_token(scope) if self.by_key else None
        if token:
            return "key:" + hashlib.sha256(token.encode()).hexdigest()[:16]
        client = scope.get("client")
        return f"ip:{client[0] if client else '?'}"

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        """Count the request against its client while it runs."""
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        who = self.client_key(scope)
        if self.in_flight.get(who, 0) >= self.per_client:
            detail = f"too many requests in flight for this client (limit {self.per_client})"
            await drain(scope, receive)
            await send_error(send, 429, "rate_limited", detail, [("Retry-After", "1")])
            return
        self.in_flight[who] = self.in_flight.get(who, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight[who] -= 1
            if not self.in_flight[who]:
                del self.in_flight[who]


class _SlowBody(Exception):
    pass


class _TrackedSend:
    """``send``, remembering whether the response has started (then no error can be sent)."""

    def __init__(self, send: Any) -> None:
        self.send = send
        self.started = False

    async def __call__(self, msg: dict[str, Any]) -> None:
        self.started = self.started or msg["type"] == "http.response.start"
        await self.send(msg)


class Deadline:
    """Time limits on a request.

    ``body_timeout`` s for the whole body to arrive (408), ``request_timeout`` s for the whole
    request, model call included (504).

    A request past its limit is answered at once; its model call, which cannot be interrupted,
    finishes on its worker thread and still holds its slot until then (so the bounded queue
    stays honest).
    """

    def __init__(self, app: Any, request_timeout: float, body_timeout: float) -> None:
        self.app = app
        self.request_timeout = request_timeout
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        """Run the request under both deadlines."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        body_deadline = loop.time() + min(self.body_timeout, self.request_timeout)
        body_done = False
        tracked = _TrackedSend(send)

        async def timed_receive() -> dict[str, Any]:
            nonlocal body_done
            if body_done:  # later reads only wait for a disconnect: no deadline on those
                return await receive()
            left = body_deadline - loop.time()
            try:
                msg = await asyncio.wait_for(receive(), max(left, 0.001))
            except asyncio.TimeoutError:
                raise _SlowBody from None
            body_done = msg["type"] != "http.request" or not msg.get("more_body", False)
            return msg

        try:
            await asyncio.wait_for(self.app(scope, timed_receive, tracked), self.request_timeout)
        except _SlowBody:
            if not tracked.started:
                detail = f"request body not received within {self.body_timeout:g} s"
                await send_error(send, 408, "body_timeout", detail)
        except asyncio.TimeoutError:
            if not tracked.started:
                detail = f"request took longer than the limit of {self.request_timeout:g} s"
                await send_error(send, 504, "timeout", detail)


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, without reading them.

    A declared ``Content-Length`` over the limit is refused at once; a body that streams past
    the limit (no ``Content-Length``, chunked, or a lying one) is cut off as soon as it does,
    so a huge upload never sits in memory.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        """Pass the request on, counting body bytes as they arrive."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body is larger than the limit of {self.limit:,} bytes"
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await send_error(send, 413, "too_large", message)
            return
        received = 0
        tracked = _TrackedSend(send)

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.limit:
                    raise _TooLarge
            return msg

        try:
            await self.app(scope, limited_receive, tracked)
        except _TooLarge:
            if not tracked.started:
                await send_error(send, 413, "too_large", message)


class HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline on the request line and headers.

    Closes connections whose request head is not in after ``header_timeout`` s (uvicorn only
    times out idle keep-alive connections, and any byte resets that timer, so a client trickling
    header bytes would hold its connection forever).
    """

    header_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the header clock for the first request."""
        super().connection_made(transport)
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        """Start the header clock again for the next request on this connection."""
        super().on_response_complete()
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self.loop.call_later(self.header_timeout, self._header_deadline, self.cycle)

    def _header_deadline(self, cycle_then: Any) -> None:
        # Still the same (finished or absent) cycle: no new request head has been parsed.
        idle = cycle_then is None or cycle_then.response_complete
        if self.cycle is cycle_then and idle and not self.transport.is_closing():
            self.transport.close()


def header_timeout_protocol(seconds: float) -> type[HeaderTimeoutH11]:
    """A :class:`HeaderTimeoutH11` subclass with its own ``header_timeout``."""
    return type("HeaderTimeoutH11", (HeaderTimeoutH11,), {"header_timeout": seconds})
