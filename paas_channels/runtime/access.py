"""The access log: one line per HTTP request, the same in every mode.

    GET /chat/ 200 1534B 3.1ms request_id=5d2c...

Method, path (no query string: it may carry tokens), status, response bytes,
duration from the request's arrival to its last byte, and the router's
``X-Request-ID`` when it sent one (Heroku does), so a line can be matched with
the router's own log.  Logged at INFO on the ``paas_channels.access`` logger,
which follows the one logging rule (stderr, ``LOG_FORMAT``).  Framework-free, in
``runtime`` because every mode uses it (the wsgi mode must not import Daphne).  ``--no-access-log``
turns it off.  :class:`AccessLog` wraps the ASGI app Daphne serves (web and
combined modes); :func:`wsgi_access_log` the WSGI app of ``run wsgi``.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Callable, Iterable


__all__ = ["AccessLog", "access_line", "wsgi_access_log"]

logger = logging.getLogger("paas_channels.access")

_UNSAFE = re.compile(r"[^\x21-\x7e]")
_MAX_REQUEST_ID = 200


def access_line(method: str, path: str, status: int | None, size: int, seconds: float, request_id: str | None) -> str:
    """The access-log line of one request (``status`` None: no response was started)."""
    line = f"{method} {_UNSAFE.sub('?', path)} {status if status is not None else '-'} {size}B {seconds * 1000:.1f}ms"
    if request_id:
        line += f" request_id={_UNSAFE.sub('?', request_id[:_MAX_REQUEST_ID])}"
    return line


class AccessLog:
    """ASGI middleware logging each HTTP request once its response is complete (or abandoned).

    Everything else (``start``, ``shutdown``, ``http_timeout``, ...) is the
    wrapped app's, so the server drives the wrapper as it would the app.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state: dict[str, Any] = {"status": None, "size": 0, "logged": False}

        def log() -> None:
            if not state["logged"]:
                state["logged"] = True
                request_id = next((value.decode("latin-1") for name, value in scope.get("headers", ())
                                   if name.lower() == b"x-request-id"), None)
                logger.info("%s", access_line(scope.get("method", "?"), scope.get("path", ""), state["status"],
                                              state["size"], time.perf_counter() - started, request_id))

        async def logging_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message.get("status")
            elif message["type"] == "http.response.body":
                state["size"] += len(message.get("body", b""))
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                log()

        logging_send.__wrapped__ = send  # type: ignore[attr-defined] # for whoever needs the server's own send
        try:
            await self.app(scope, receive, logging_send)
        finally:
            log()


def wsgi_access_log(app: Callable) -> Callable:
    """WSGI middleware writing the same line as :class:`AccessLog` once the body has been sent."""

    def application(environ: dict, start_response: Callable) -> Iterable[bytes]:
        started = time.perf_counter()
        state: dict[str, Any] = {"status": None, "size": 0}

        def recording_start_response(status: str, headers: list, exc_info: Any = None) -> Callable:
            state["status"] = int(status.split(" ", 1)[0])
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        body = app(environ, recording_start_response)
        try:
            for chunk in body:
                state["size"] += len(chunk)
                yield chunk
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
            logger.info("%s", access_line(
                environ.get("REQUEST_METHOD", "?"), environ.get("PATH_INFO", ""), state["status"], state["size"],
                time.perf_counter() - started, environ.get("HTTP_X_REQUEST_ID"),
            ))

    return application
