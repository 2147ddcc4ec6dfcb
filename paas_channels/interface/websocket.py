"""One WebSocket through the channel layer, in the ASGI 1.0 (Channels 1.x) shape.

The handshake waits for the consumer: ``{"accept": True}`` (or any data)
opens the socket, ``{"accept": False}`` or a close before that answers 403.
Client frames go out as ``websocket.receive`` with a running ``order``; a
full ``websocket.receive`` channel closes the socket with 1013 (try again
later) rather than dropping frames silently.  The Origin header is checked
here, before anything reaches a worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Iterable
from urllib.parse import urlsplit

from django.http.request import validate_host

from ..layers import ChannelFull
from .asgi import LayerUnavailable, Receive, Relay, Send, scope_fields
from .resume import frames, opted_in, resume_positions

logger = logging.getLogger(__name__)
# How long a disconnect waits for room on a full websocket.disconnect channel.
_DISCONNECT_RETRY_SECONDS = 30.0

#: Close codes (RFC 6455 and the IANA registry).
CLOSE_NORMAL = 1000
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013

_REPLY_KEYS = frozenset({"accept", "subprotocol", "text", "bytes", "close", "history"})


def origin_allowed(headers: Iterable[tuple[bytes, bytes]], patterns: Iterable[str]) -> tuple[bool, str | None]:
    """Whether the request's Origin host matches one of ``patterns`` (Django's ALLOWED_HOSTS syntax).

    No Origin header at all is allowed: browsers always send one, so its absence
    means a non-browser client that cross-site protection does not concern.
    """
    origin = None
    for name, value in headers:
        if name == b"origin":
            origin = value.decode("latin1")
            break
    if origin is None:
        return True, None
    try:
        host = urlsplit(origin).hostname
    except ValueError:
        host = None
    if host and ":" in host:
        host = f"[{host}]"  # an IPv6 literal: ALLOWED_HOSTS writes it in brackets, as Django's get_host() does
    return bool(host) and validate_host(host, list(patterns)), origin


def choose_subprotocol(offered: list[str], allowed: Iterable[str]) -> str | None:
    """The first subprotocol the client offers that the server is configured to speak."""
    allowed = set(allowed)
    for protocol in offered:
        if protocol in allowed:
            return protocol
    return None


class WebSocketConnection:
    """Carries one WebSocket's frames to workers and the workers' replies back."""

    def __init__(self, app: Relay, scope: dict, receive: Receive, send: Send) -> None:
        self.app = app
        self.scope = scope
        self.receive = receive
        self.send = send
        self.accepted = False
        self.closed = False
        self.order = 0
        self.reply_channel: str | None = None
        self.subprotocol = choose_subprotocol(list(scope.get("subprotocols") or ()), app.config.ws_protocols)
        # A client speaking the resume protocol (client.js, see .resume) gets
        # history positions and join notices; any other client never does.
        self.resumes = opted_in(scope)
        # History replies that came before the consumer accepted: sent once it does.
        self._held: list[dict] = []

    async def run(self) -> None:
        """Handshake, then relay both ways until either side closes."""
        event = await self.receive()
        if event["type"] != "websocket.connect":
            logger.error("expected ASGI message 'websocket.connect', got %r; closing", event["type"])
            return
        allowed, origin = origin_allowed(self.scope.get("headers", ()), self.app.allowed_origins)
        if not allowed:
            logger.warning(
                "WebSocket %s from Origin %r rejected (403): not in the allowed origins %s. "
                "Add its host to ALLOWED_HOSTS or --allowed-origin.",
                self.scope["path"], origin, list(self.app.allowed_origins),
            )
            await self.send({"type": "websocket.close"})
            return
        if self.app.closing:
            await self.send({"type": "websocket.close"})
            return
        self.reply_channel = self.app.register(websocket=self)
        try:
            await self._relay()
        finally:
            self.app.unregister(self.reply_channel)

    async def close_for_restart(self) -> None:
        """Server shutdown: tell the client to reconnect at once (1012), or refuse a pending handshake."""
        if self.closed:
            return
        self.closed = True
        if self.accepted:
            await self.send({"type": "websocket.close", "code": CLOSE_SERVICE_RESTART})
        else:
            await self.send({"type": "websocket.close"})

    ### Relay ###

    def _message(self, **fields: Any) -> dict:
        scope = self.scope
        message = {
            "reply_channel": self.reply_channel,
            "scheme": self.app.websocket_scheme(scope),
            "subprotocols": list(scope.get("subprotocols") or ()),
            "order": self.order,
            **scope_fields(scope),
        }
        message.update(fields)
        self.order += 1
        return message

    async def _relay(self) -> None:
        try:
            resume = {"resume": resume_positions(self.scope)} if self.resumes else {}
            await self.app.asend("websocket.connect", self._message(**resume))
        except (ChannelFull, LayerUnavailable) as exc:
            why = "is full" if isinstance(exc, ChannelFull) else "cannot be reached"
            logger.warning("websocket.connect %s: refusing the WebSocket %s (403)", why, self.scope["path"])
            await self.send({"type": "websocket.close"})
            return
        queue = self.app.reply_queue(self.reply_channel)
        client = asyncio.ensure_future(self.receive())
        reply = asyncio.ensure_future(queue.get())
        timeout = self.app.http_timeout  # the handshake waits as long as an HTTP request does
        try:
            while True:
                done, _ = await asyncio.wait({client, reply}, timeout=None if self.accepted else timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    logger.warning("WebSocket %s: no worker answered the handshake within %.0f s; refused (403)",
                                   self.scope["path"], timeout)
                    self.closed = True
                    await self.send({"type": "websocket.close"})
                    timeout = None  # now wait for Daphne's disconnect event
                    continue
                if reply in done:
                    await self._apply_reply(reply.result())
                    reply = asyncio.ensure_future(queue.get())
                if client in done:
                    event = client.result()
                    if event["type"] == "websocket.disconnect":
                        await self._send_disconnect(event.get("code", CLOSE_NORMAL))
                        return
                    await self._forward(event)
                    client = asyncio.ensure_future(self.receive())
        finally:
            client.cancel()
            reply.cancel()

    async def _forward(self, event: dict) -> None:
        if self.closed:
            return
        fields = {"bytes": event["bytes"]} if event.get("bytes") is not None else {"text": event.get("text", "")}
        try:
            await self.app.asend("websocket.receive", self._message(**fields))
        except (ChannelFull, LayerUnavailable) as exc:
            why = "is full" if isinstance(exc, ChannelFull) else "cannot be reached"
            logger.warning("websocket.receive %s: closing WebSocket %s with 1013 (try again later)",
                           why, self.reply_channel)
            self.closed = True
            await self.send({"type": "websocket.close", "code": CLOSE_TRY_AGAIN_LATER})

    async def _send_disconnect(self, code: int) -> None:
        # A dropped disconnect leaves the connection in its groups until they
        # expire, so a full channel (thousands of clients leaving at once) is
        # waited out, as the workers drain it; the client is gone already.
        # Unless nothing can drain it: no live worker reads the channel
        # (ROUTING has no websocket.disconnect route), or this process is
        # shutting down and no worker is left (web and worker stopped
        # together); waiting would only hold the connection, and the
        # shutdown, open until Daphne kills it.
        message = self._message(code=code)
        deadline = time.monotonic() + _DISCONNECT_RETRY_SECONDS
        delay = 0.01
        while True:
            try:
                await self.app.asend("websocket.disconnect", message)
                return
            except ChannelFull:
                if self.app.unread("websocket.disconnect"):
                    logger.debug("websocket.disconnect is full and no worker will take from it: the disconnect "
                                 "of %s was dropped", self.reply_channel)
                    return
                if time.monotonic() < deadline:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.25)
                    continue
                why = f"stayed full for {_DISCONNECT_RETRY_SECONDS:.0f} s"
            except LayerUnavailable:
                why = "cannot be reached"
            logger.warning("websocket.disconnect %s: the disconnect of %s was dropped", why, self.reply_channel)
            return

    async def _apply_reply(self, reply: Any) -> None:
        """Accept, send data, close, in that order, from one ASGI 1.0 reply message."""
        if self.closed:
            logger.debug("reply for closed WebSocket %s dropped", self.reply_channel)
            return
        if not _valid_reply(reply):
            logger.error(
                "invalid WebSocket reply on %s: %.200r. Expected a dict with 'accept', 'subprotocol', "
                "'close' and at most one of 'text' (str) / 'bytes' (bytes)", self.reply_channel, reply,
            )
            await self._close(CLOSE_INTERNAL_ERROR)
            return
        data = reply.get("text") if reply.get("text") is not None else reply.get("bytes")
        close = reply.get("close")
        history = reply.get("history") is not None
        if not self.accepted:
            if reply.get("accept") is False or (close and not reply.get("accept") and data is None):
                self.closed = True
                self._held = []
                await self.send({"type": "websocket.close"})  # before accept: HTTP 403
                return
            if history and not reply.get("accept"):
                # A join in the connect consumer comes before its (deferred)
                # accept: its notice and replay must not accept the socket.
                self._held.append(reply)
                return
            if reply.get("accept") or data is not None:
                self.accepted = True
                await self.send({"type": "websocket.accept",
                                 "subprotocol": reply.get("subprotocol") or self.subprotocol})
                held, self._held = self._held, []
                for earlier in held:
                    for event in frames(earlier, self.resumes):
                        await self.send(event)
        if data is not None or history:
            for event in frames(reply, self.resumes):
                await self.send(event)
        if close:
            code = CLOSE_NORMAL if close is True else close
            if not isinstance(code, int) or not (code == 1000 or 3000 <= code <= 4999):
                logger.error("WebSocket %s: close code %r is not 1000 or 3000-4999; closing with 1000",
                             self.reply_channel, close)
                code = CLOSE_NORMAL
            await self._close(code)

    async def _close(self, code: int) -> None:
        self.closed = True
        if self.accepted:
            await self.send({"type": "websocket.close", "code": code})
        else:
            await self.send({"type": "websocket.close"})


def _valid_reply(reply: Any) -> bool:
    if not isinstance(reply, dict) or not reply.keys() <= _REPLY_KEYS:
        return False
    text, data = reply.get("text"), reply.get("bytes")
    if text is not None and data is not None:
        return False
    if reply.get("history") is not None and not isinstance(reply["history"], dict):
        return False
    return (text is None or isinstance(text, str)) and (data is None or isinstance(data, bytes))
