"""Django views over the channel layer: ``http.request`` in, ``http.response`` out.

:func:`view_consumer` turns an ASGI 1.0 ``http.request`` message into a real
Django ``HttpRequest`` (Django's own ``ASGIRequest``, so META, headers,
cookies, GET/POST/FILES behave exactly as under Daphne or WSGI), runs it
through the project's middleware and URLconf with Django's ``BaseHandler``,
and sends the response to the request's reply channel in chunks.

Bodies larger than one message arrive on ``body_channel`` as
``{"content", "closed", "more_content"}`` chunks; they are spooled to a
temporary file (memory up to 1 MiB).  Responses go out as a first
``{"status", "headers", "content", "more_content"}`` message and then
``{"content", "more_content"}`` chunks of at most :data:`CHUNK_SIZE` bytes,
so a streaming or file response never builds one oversized message.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from typing import Any

from django.core.exceptions import RequestAborted
from django.core.handlers import base
from django.core.handlers.asgi import ASGIRequest
from django.http import FileResponse, HttpResponse, HttpResponseBadRequest
from django.urls import set_script_prefix

from .layers import BaseChannelLayer, RejectedMessage
from .message import Message, send_with_retry

__all__ = ["CHUNK_SIZE", "ChannelHandler", "view_consumer"]

logger = logging.getLogger(__name__)

#: Largest body of one response message (well under the layer's 1 MiB limit).
CHUNK_SIZE = 256 * 1024
#: Seconds to wait for the next body chunk before the request counts as abandoned.
BODY_TIMEOUT = 60.0
_SPOOL_MAX = 1024 * 1024


class ChannelHandler(base.BaseHandler):
    """Django's request handling for messages: middleware loaded once per process."""

    def __init__(self) -> None:
        super().__init__()
        self.load_middleware(is_async=False)

    def handle(self, message: Message) -> None:
        """Answer one ``http.request`` message on its reply channel."""
        content = message.content
        reply = content.get("reply_channel")
        if not reply:
            raise ValueError(
                f"an http.request message needs a reply_channel; got keys {sorted(content)}. "
                "Only an interface server should send http.request messages"
            )
        layer = message.channel_layer
        try:
            body = _read_body(layer, content)
        except RequestAborted:
            logger.info("client went away while sending the body of %s %s", content.get("method"), content.get("path"))
            return
        request = None
        try:
            try:
                request = ASGIRequest(_scope(content), body)
            except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
                logger.warning("bad http.request message (%s): answering 400", exc)
                response: HttpResponse = HttpResponseBadRequest()
            else:
                set_script_prefix(request.script_name or "/")
                response = self.get_response(request)
                response._handler_class = self.__class__
            _send_response(layer, reply, response, head=request is not None and request.method == "HEAD")
        finally:
            if request is not None:
                request.close()
            else:
                body.close()


def _scope(content: dict[str, Any]) -> dict[str, Any]:
    """The ASGI 3 scope that Django's ASGIRequest reads, from an ASGI 1.0 message."""
    path = content["path"]
    if isinstance(path, bytes):
        path = path.decode("utf-8")
    return {
        "type": "http",
        "method": content["method"],
        "path": path,
        "root_path": content.get("root_path") or "",
        "query_string": content.get("query_string") or b"",
        "headers": [(bytes(name), bytes(value)) for name, value in content.get("headers") or ()],
        "client": content.get("client"),
        "server": content.get("server"),
        "scheme": content.get("scheme") or "http",
        "http_version": content.get("http_version", "1.1"),
    }


def _read_body(layer: BaseChannelLayer, content: dict[str, Any]) -> Any:
    """The whole request body in a spooled file, reading ``body_channel`` chunks if any.

    Django itself enforces ``DATA_UPLOAD_MAX_MEMORY_SIZE`` when the view reads it.
    """
    body = tempfile.SpooledTemporaryFile(max_size=_SPOOL_MAX, mode="w+b")
    body.write(content.get("body") or b"")
    channel = content.get("body_channel")
    if channel:
        deadline = time.monotonic() + BODY_TIMEOUT
        while True:
            _, chunk = layer.receive([channel], block=True)
            if chunk is None:
                if time.monotonic() > deadline:
                    body.close()
                    raise RequestAborted(f"no body chunk on {channel} for {BODY_TIMEOUT:.0f} s")
                continue
            deadline = time.monotonic() + BODY_TIMEOUT
            if chunk.get("closed") or isinstance(chunk, RejectedMessage):
                body.close()
                raise RequestAborted("client closed the connection mid-body" if chunk.get("closed") else
                                     "a body chunk failed authentication (logged by the layer)")
            body.write(chunk.get("content") or b"")
            if not chunk.get("more_content"):
                break
    body.seek(0)
    return body


def _response_headers(response: HttpResponse) -> list[list[bytes]]:
    headers = [[name.encode("latin-1"), str(value).encode("latin-1")] for name, value in response.items()]
    for cookie in response.cookies.values():
        headers.append([b"Set-Cookie", cookie.output(header="").strip().encode("latin-1")])
    return headers


def _split(data: bytes) -> list[bytes]:
    return [data[start : start + CHUNK_SIZE] for start in range(0, len(data), CHUNK_SIZE)] or [b""]


def _send_response(layer: BaseChannelLayer, reply: str, response: HttpResponse, head: bool = False) -> None:
    """Send ``response`` on ``reply``: status and headers with the first chunk, then chunks.

    A streaming response's parts go out as they are produced (a part of a
    live stream must not wait for the next one), then an empty last chunk.
    """
    try:
        first: dict[str, Any] = {"status": response.status_code, "headers": _response_headers(response)}
        if head:
            # HEAD: the headers of a GET, without its body.
            _emit(layer, reply, first, b"", more=False)
            return
        if not response.streaming:
            chunks = _split(response.content)
            for index, chunk in enumerate(chunks):
                more = index < len(chunks) - 1
                if not _emit(layer, reply, first if index == 0 else None, chunk, more):
                    return
            return
        if isinstance(response, FileResponse):
            # Read files in message-sized blocks, not Django's 4 KiB (one message each).
            response.block_size = CHUNK_SIZE
        sent_first = False
        for part in response.streaming_content:
            if isinstance(part, str):
                part = part.encode(response.charset or "utf-8")
            for chunk in _split(bytes(part)):
                if not _emit(layer, reply, None if sent_first else first, chunk, more=True):
                    return
                sent_first = True
        _emit(layer, reply, None if sent_first else first, b"", more=False)
    finally:
        response.close()


def _emit(layer: BaseChannelLayer, reply: str, first: dict[str, Any] | None, content: bytes, more: bool) -> bool:
    message = dict(first) if first is not None else {}
    message["content"] = content
    message["more_content"] = more
    return send_with_retry(layer, reply, message)


_handler: ChannelHandler | None = None
_handler_lock = threading.Lock()


def get_handler() -> ChannelHandler:
    """This process's handler, built (middleware loaded) on first use."""
    global _handler
    if _handler is None:
        with _handler_lock:
            if _handler is None:
                _handler = ChannelHandler()
    return _handler


def view_consumer(message: Message, **kwargs: Any) -> None:
    """The consumer that runs the project's Django views for ``http.request`` messages."""
    get_handler().handle(message)
