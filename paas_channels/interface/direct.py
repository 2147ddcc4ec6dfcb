"""``--http direct``: plain HTTP served in-process by the WSGI app; WebSockets and long-poll via the layer.

The "ASGI alongside WSGI" deployment for a PaaS that routes all traffic to one
process type.  Ordinary requests skip the layer hop and run the project's WSGI
application in a thread pool of this process (``--threads``); WebSockets,
the paths given with ``--long-poll-path`` and the ``http.request`` routes of
ROUTING that filter on a path and are not Django views still go through the
layer to the workers, so groups and long-polls work as before.

The trade-off: the web process now imports and runs the project's code, so a
deploy restarts it (WebSockets reconnect, with close code 1012) and a slow view
occupies one of its threads.  Plain ``--http layer`` keeps the web process
free of project code.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

from ..config.options import Config
from ..exceptions import ConfigError
from ..handler import view_consumer
from ..layers import channel_layer_settings
from ..routing import Route, Router
from ..runtime.wsgi import static_files, wsgi_application
from .app import HEALTH_PATH
from .resume import CLIENT_PATH
from .asgi import Receive, Scope, Send

logger = logging.getLogger(__name__)

__all__ = ["DirectWSGI", "HybridApplication", "long_poll_patterns"]

#: Request bodies up to this size stay in memory; larger ones spill to a temporary file.
_SPOOL_MAX = 1024 * 1024


def long_poll_patterns(config: Config, alias: str) -> list[re.Pattern[str]]:
    """Paths that must reach the workers: ``--long-poll-path`` plus ROUTING's non-view HTTP routes."""
    patterns: list[str] = list(config.long_poll_paths or ())
    path = channel_layer_settings(alias)["ROUTING"]
    if path is not None:
        for entry in Router(path).routing:
            if isinstance(entry, Route) and entry.channel == "http.request" and entry.consumer is not view_consumer \
                    and "path" in entry.filters:
                patterns.append(entry.filters["path"].pattern)
    compiled = []
    for pattern in dict.fromkeys(patterns):
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ConfigError(f"--long-poll-path {pattern!r} is not a regular expression: {exc}") from None
    return compiled


class DirectWSGI:
    """An ASGI app running a WSGI app in a thread pool, streaming its response as it is produced."""

    def __init__(self, application: Callable, threads: int) -> None:
        self.application = application
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="paas-direct")
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = tempfile.SpooledTemporaryFile(max_size=_SPOOL_MAX)
        while True:
            event = await receive()
            if event["type"] == "http.disconnect":
                return
            body.write(event.get("body", b""))
            if not event.get("more_body", False):
                break
        body.seek(0)
        loop = asyncio.get_running_loop()
        self.active += 1
        try:
            whole = await loop.run_in_executor(self.executor, self._run, _environ(scope, body), send, loop)
        finally:
            self.active -= 1
            body.close()
        for message in whole:
            await send(message)

    def _run(self, environ: dict, send: Send, loop: asyncio.AbstractEventLoop) -> tuple[dict, ...]:
        """In a pool thread: call the app, send each chunk through the event loop as it comes.

        A response whose body is all there at once (a Django HttpResponse, a list) is returned
        instead, start and body, for the loop to send once this thread is done: no hop to the
        loop and back per response (bench/http.py's combined --http direct, bench/dyno.py).
        """
        started: list[Any] = []

        def call(message: dict) -> None:
            asyncio.run_coroutine_threadsafe(send(message), loop).result()

        def start_response(status: str, headers: list, exc_info: Any = None) -> Callable[[bytes], None]:
            if exc_info and started and started[0] is True:
                raise exc_info[1].with_traceback(exc_info[2])
            started[:] = [(int(status.split(" ", 1)[0]),
                           [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers])]
            return lambda data: write(data)

        def take_start() -> dict | None:
            """The response's start message, once: None before start_response and after it was taken."""
            if not started or started[0] is True:
                return None
            status, headers = started[0]
            started[0] = True
            return {"type": "http.response.start", "status": status, "headers": headers}

        def write(data: bytes) -> None:
            start = take_start()
            if start is not None:
                call(start)
            if data:
                call({"type": "http.response.body", "body": data, "more_body": True})

        result: Iterable[bytes] = self.application(environ, start_response)
        try:
            if isinstance(result, (list, tuple)) or getattr(result, "streaming", True) is False:
                data = b"".join(result)
                start = take_start()
                if start is not None:
                    return start, {"type": "http.response.body", "body": data, "more_body": False}
                write(data)
            else:
                for chunk in result:
                    write(chunk)
            write(b"")  # a response without a body still starts
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()  # Django's request_finished: database connections are returned here
        call({"type": "http.response.body", "body": b"", "more_body": False})
        return ()


def _environ(scope: Scope, body: Any) -> dict:
    """The WSGI environ of an ASGI HTTP scope (PEP 3333: text is latin-1 decoded bytes)."""
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client") or ("", 0)
    environ = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode("utf-8").decode("latin-1"),
        "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1] if server[1] is not None else 80),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": str(client[0]),
        "REMOTE_PORT": str(client[1]),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": body,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        value = raw_value.decode("latin-1")
        if name == "CONTENT_TYPE" or name == "CONTENT_LENGTH":
            key = name
        else:
            key = f"HTTP_{name}"
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


class HybridApplication:
    """The interface app for WebSockets, health, static files and long-poll paths; DirectWSGI for the rest.

    Exposes what Daphne's serve helper uses (``start``, ``shutdown``,
    ``http_timeout``) so it is served exactly like the interface app.
    """

    def __init__(self, interface: Any, config: Config, patterns: list[re.Pattern[str]] | None = None) -> None:
        self.interface = interface
        self.http_timeout = interface.http_timeout
        self.patterns = long_poll_patterns(config, config.layer) if patterns is None else patterns
        self.direct = DirectWSGI(static_files(wsgi_application()), config.threads)
        self.closing = False
        self._idle = asyncio.Event()
        logger.info("--http direct: HTTP served in-process by %d thread(s); through the layer: WebSockets%s",
                    config.threads, "".join(f", {pattern.pattern}" for pattern in self.patterns))

    def start(self) -> None:
        self.interface.start()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._via_layer(scope):
            await self.interface(scope, receive, send)
            return
        if self.closing:
            await _plain(send, 503, b"503 Service Unavailable: this server is restarting; try again.\n")
            return
        self._idle.clear()
        try:
            with self.interface.http_in_flight():
                await self.direct(scope, receive, send)
        finally:
            if self.direct.active == 0:
                self._idle.set()

    def _via_layer(self, scope: Scope) -> bool:
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        if path in (HEALTH_PATH, CLIENT_PATH) or any(pattern.match(path) for pattern in self.patterns):
            return True
        static = getattr(self.interface, "static", None)
        return static is not None and static.lookup(path) is not None

    async def shutdown(self, timeout: float) -> int:
        """Refuse new direct requests, let running ones finish, then shut the interface down."""
        self.closing = True
        loop = asyncio.get_running_loop()
        started = loop.time()
        cut = 0
        if self.direct.active:
            logger.info("--http direct: waiting up to %g s for %d request(s)", timeout, self.direct.active)
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except asyncio.TimeoutError:
                cut = self.direct.active
                logger.warning("--http direct: %d request(s) still running after %g s", cut, timeout)
        remaining = max(0.1, timeout - (loop.time() - started))
        cut += await self.interface.shutdown(remaining)
        self.direct.executor.shutdown(wait=False, cancel_futures=True)
        return cut


async def _plain(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
