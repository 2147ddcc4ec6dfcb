"""What every part of the interface shares: ASGI types, the relay's contract, plain answers.

:class:`Relay` is what a connection (:mod:`.http`, :mod:`.websocket`) needs from
the application that owns the process inbox (:class:`.app.InterfaceApplication`),
so the connections never import the application and the application imports them.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Protocol

__all__ = [
    "BODY_CHUNK", "LayerUnavailable", "Receive", "Relay", "Scope", "Send", "scope_fields", "send_plain",
]

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

#: Body bytes per layer message: well under the layer's 1 MiB message limit.
BODY_CHUNK = 256 * 1024


class LayerUnavailable(Exception):
    """A layer send failed for another reason than ``ChannelFull`` (Redis down, ...); already logged."""


class Relay(Protocol):
    """The interface application as its connections see it."""

    layer: Any
    config: Any
    http_timeout: float
    allowed_origins: tuple[str, ...]
    closing: bool
    worker_count: int

    def register(self, websocket: Any = None) -> str: ...

    def unregister(self, name: str) -> None: ...

    def unread(self, channel: str) -> bool: ...

    def reply_queue(self, name: str) -> asyncio.Queue: ...

    async def asend(self, channel: str, message: dict, deadline: float | None = None) -> None: ...

    def websocket_scheme(self, scope: Scope) -> str: ...


async def send_plain(send: Send, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A short ``text/plain`` response answered by the interface itself."""
    body = text.encode("utf-8")
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            *(headers or []),
        ],
    })
    await send({"type": "http.response.body", "body": body})


def scope_fields(scope: Scope) -> dict:
    """The ASGI 1.0 fields HTTP and WebSocket messages share, from an ASGI 3 scope."""
    return {
        "path": scope["path"],
        "query_string": scope.get("query_string", b""),
        "root_path": scope.get("root_path", ""),
        "headers": [[name, value] for name, value in scope.get("headers", ())],
        "client": list(scope["client"]) if scope.get("client") else None,
        "server": list(scope["server"]) if scope.get("server") else None,
    }
