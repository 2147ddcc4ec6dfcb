"""One HTTP request through the channel layer: ``http.request`` out, the reply back.

The request goes to the normal channel ``http.request`` (any worker may take
it); a body bigger than one chunk follows on a single-reader ``body_channel``.
The reply arrives on this connection's channel in the process inbox and is
written out as it comes, so streaming responses stream.  No reply within the
HTTP timeout is a 503 that says so; a full ``http.request`` channel is a 503
at once, because queueing more work behind a backlog only makes it worse.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ..layers import ChannelFull
from .asgi import BODY_CHUNK, LayerUnavailable, Receive, Relay, Send, scope_fields, send_plain
from .daphne import abort_response

__all__ = ["HttpConnection"]

logger = logging.getLogger(__name__)

#: First and longest pause when the body channel is full.
_BACKOFF_START, _BACKOFF_MAX = 0.01, 0.5


class HttpConnection:
    """Carries one HTTP request to a worker and its reply back to the client."""

    def __init__(self, app: Relay, scope: dict, receive: Receive, send: Send) -> None:
        self.app = app
        self.scope = scope
        self.receive = receive
        self.send = send
        self.timeout = app.http_timeout
        self.reply_channel = app.register()
        self._response_started = False

    async def run(self) -> None:
        """Forward the request, then stream the reply until done, timed out or the client leaves."""
        try:
            # One deadline for the whole exchange up to the first reply: whatever the layer does
            # (frozen, slow, full), the client hears within --http-timeout.
            self.deadline = time.monotonic() + self.timeout
            head = await self._read_head()
            if head is None:
                return
            pending, more = head
            if not more and len(pending) <= BODY_CHUNK:
                if await self._send_request(pending, streamed=False):
                    await self._relay_reply()
                return
            if await self._send_request(b"", streamed=True) and await self._send_body(pending, more):
                await self._relay_reply()
        finally:
            self.app.unregister(self.reply_channel)

    ### Request ###

    async def _read_head(self) -> tuple[bytes, bool] | None:
        """Body read until it is known to fit one chunk or not: ``(bytes so far, more to come)``.

        None when the client left before sending its body.
        """
        parts: list[bytes] = []
        size, more = 0, True
        while more and size <= BODY_CHUNK:
            event = await self.receive()
            if event["type"] == "http.disconnect":
                return None
            chunk = event.get("body", b"")
            parts.append(chunk)
            size += len(chunk)
            more = bool(event.get("more_body", False))
        return b"".join(parts), more

    async def _send_request(self, body: bytes, streamed: bool) -> bool:
        scope = self.scope
        # Named here rather than by anew_channel(): no round trip, and 16 random characters do not collide.
        self.body_channel = "http.request.body?" + self.app.layer.random_suffix(16) if streamed else None
        message = {
            "reply_channel": self.reply_channel,
            "http_version": scope.get("http_version", "1.1"),
            "method": scope["method"],
            "scheme": scope.get("scheme", "http"),
            "body": body,
            "body_channel": self.body_channel,
            # Wall-clock time after which this client has been told 503: a worker that takes
            # the request later skips it, so a 503 means "not run" (paas_channels.worker).
            "deadline": time.time() + max(0.0, self.deadline - time.monotonic()),
            **scope_fields(scope),
        }
        try:
            await self.app.asend("http.request", message, self.deadline)
        except LayerUnavailable:
            await _layer_unavailable(self.send)
            return False
        except ChannelFull:
            logger.warning("http.request is full: answering 503 to %s %s at once", scope["method"], scope["path"])
            await send_plain(
                self.send, 503,
                "503 Service Unavailable: the request queue is full; the workers are behind. "
                "Try again shortly.\n",
                [(b"retry-after", b"1")],
            )
            return False
        return True

    async def _send_body(self, pending: bytes, more: bool) -> bool:
        """The body on body_channel in BODY_CHUNK pieces, read from the client as it goes.

        A full body channel (the worker reads slower) is waited out with a short
        backoff until the HTTP timeout; a client that leaves mid-body gets a
        ``closed`` chunk so the worker stops waiting for the rest.
        """
        deadline = self.deadline
        replies = self.app.reply_queue(self.reply_channel)
        while True:
            while len(pending) > BODY_CHUNK or not more:
                if not replies.empty():  # answered early (e.g. 413): the rest of the body is not wanted
                    return True
                piece, pending = pending[:BODY_CHUNK], pending[BODY_CHUNK:]
                last = not more and not pending
                if not await self._send_chunk({"content": piece, "closed": False, "more_content": not last}, deadline):
                    return False
                if last:
                    return True
            event = await self.receive()
            if event["type"] == "http.disconnect":
                await self._send_chunk({"content": b"", "closed": True, "more_content": False}, deadline)
                return False
            pending += event.get("body", b"")
            more = bool(event.get("more_body", False))

    async def _send_chunk(self, message: dict, deadline: float) -> bool:
        delay = _BACKOFF_START
        while True:
            try:
                await self.app.asend(self.body_channel, message, deadline)
                return True
            except LayerUnavailable:
                await _layer_unavailable(self.send)
                return False
            except ChannelFull:
                if not self.app.reply_queue(self.reply_channel).empty():
                    return True  # the worker answered without reading on; _send_body stops too
                if time.monotonic() + delay > deadline:
                    await self._no_worker_answer("no worker read the request body")
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)

    ### Reply ###

    async def _relay_reply(self) -> None:
        queue = self.app.reply_queue(self.reply_channel)
        disconnect = asyncio.ensure_future(self._watch_disconnect())
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                # The first reply by the request's deadline; each later chunk within --http-timeout.
                timeout = self.timeout if self._response_started else max(0.0, self.deadline - time.monotonic())
                done, _ = await asyncio.wait({getter, disconnect}, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    if disconnect in done:
                        await self._client_gone()
                    elif self._response_started:
                        logger.warning(
                            "%s %s: no more response content within %.0f s; closing the connection",
                            self.scope["method"], self.scope["path"], self.timeout,
                        )
                        await self._abort()
                    else:
                        await self._no_worker_answer("no worker answered")
                    return
                if not await self._write_reply(getter.result()):
                    return
        finally:
            disconnect.cancel()

    async def _watch_disconnect(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass

    async def _write_reply(self, reply: Any) -> bool:
        """Write one reply message; False when the response is complete (or broken)."""
        if not isinstance(reply, dict):
            return await self._bad_reply(f"expected a dict, got {type(reply).__name__}")
        more = bool(reply.get("more_content", False))
        content = reply.get("content", b"")
        if isinstance(content, str):
            content = content.encode("utf-8")
        if not isinstance(content, bytes):
            return await self._bad_reply(f"'content' must be bytes, got {type(content).__name__}")
        if not self._response_started:
            status = reply.get("status")
            if not isinstance(status, int) or isinstance(status, bool):
                return await self._bad_reply(f"the first reply message needs an int 'status'; got {status!r:.40}")
            try:
                headers = [(_header_bytes(name), _header_bytes(value)) for name, value in reply.get("headers", ())]
            except (TypeError, ValueError) as exc:
                return await self._bad_reply(f"bad 'headers': {exc}")
            await self.send({"type": "http.response.start", "status": status, "headers": headers})
            self._response_started = True
        elif "status" in reply:
            logger.error("%s %s: a second reply with a 'status' after the response started; ignored",
                         self.scope["method"], self.scope["path"])
        await self.send({"type": "http.response.body", "body": content, "more_body": more})
        return more

    async def _bad_reply(self, problem: str) -> bool:
        logger.error(
            "%s %s: invalid reply on %s: %s. A reply is {'status': int, 'headers': [[bytes, bytes]], "
            "'content': bytes, 'more_content': bool}",
            self.scope["method"], self.scope["path"], self.reply_channel, problem,
        )
        if self._response_started:
            await self._abort()
        else:
            await send_plain(self.send, 500, "500 Internal Server Error: the worker sent an invalid reply.\n")
        return False

    async def _abort(self) -> None:
        """Cut a started response so the client sees it incomplete, not falsely finished.

        ASGI has no "abort": under Daphne the connection is closed after what was
        written so far (a truncated body); elsewhere the response is ended normally.
        """
        if not abort_response(self.send):
            await self.send({"type": "http.response.body", "body": b""})

    async def _no_worker_answer(self, what: str) -> None:
        workers = self.app.worker_count
        hint = "" if workers else " No worker is running: start one with `paas-channels run worker`."
        logger.warning("%s %s: %s within %.0f s; answering 503.%s",
                       self.scope["method"], self.scope["path"], what, self.timeout, hint)
        await send_plain(
            self.send, 503,
            f"503 Service Unavailable: {what} within {self.timeout:g} s. Try again shortly.\n",
            [(b"retry-after", b"5")],
        )

    async def _client_gone(self) -> None:
        """Tell the workers (long-poll consumers) the client left before its response ended."""
        try:
            await self.app.asend("http.disconnect", {"reply_channel": self.reply_channel, "path": self.scope["path"]})
        except (ChannelFull, LayerUnavailable):
            logger.debug("the disconnect of %s was dropped (layer full or unavailable)", self.reply_channel)


async def _layer_unavailable(send: Send) -> None:
    await send_plain(
        send, 503, "503 Service Unavailable: the channel layer did not take the request. Try again shortly.\n",
        [(b"retry-after", b"5")],
    )


def _header_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("latin1")
    raise TypeError(f"header names and values must be bytes or str; got {type(value).__name__}")
