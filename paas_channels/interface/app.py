"""The interface server: Daphne turning HTTP and WebSocket connections into channel messages.

``paas-channels run web`` holds every client connection and never runs the
project's code: it imports settings (for the layer, static files and allowed
hosts) but never the URLconf, ROUTING or consumers, so deploying new code
restarts workers only and WebSockets stay up.

One process owns one **inbox**, a process-specific channel ``interface.<host>.<random>!``;
each connection's reply channel is the inbox plus a suffix.  ONE task receives
on the inbox and hands each message to its connection: no per-connection
polling of the layer.  Static files, a health endpoint and the browser
client (``/.paas-channels/client.js``) are answered here, without a worker hop.

Public pieces (combined mode reuses them on a shared layer):
:class:`InterfaceApplication` (an ASGI 3 app built from a layer and the config),
:func:`serve` (runs an app on Daphne with graceful shutdown); the `run web` process is
:func:`paas_channels.runtime.web.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import time
from typing import Any, Callable, Iterator

from django.conf import settings

from ..config.options import Config
from ..exceptions import ConfigError
from ..layers import BaseChannelLayer, ChannelFull, RejectedMessage
from ..layers.fingerprint import Agreement, settings_fingerprint
from ..logs import RateLimitedLog
from ..runtime.access import AccessLog
from .asgi import LayerUnavailable, Receive, Scope, Send, send_plain
from .daphne import serve_daphne
from .http import HttpConnection
from .resume import CLIENT_PATH, serve_client_js
from .static import StaticFiles
from .websocket import WebSocketConnection
from .workers import consumed_channels, consuming_workers

logger = logging.getLogger(__name__)

__all__ = ["HEALTH_PATH", "InterfaceApplication", "consuming_workers", "serve"]

#: Answered in-process with layer reachability and the number of live workers.
HEALTH_PATH = "/.paas-channels/health"
#: How often the worker heartbeats are read, and how long none may be seen before a warning.
WORKER_CHECK_INTERVAL = 5.0
#: ... and how often while shutting down: whether any worker is left to make room for disconnects.
_CLOSING_CHECK_INTERVAL = 0.5
#: A change of the open WebSockets is published within this long (not at the next heartbeat), once per burst.
_CONNECTIONS_BEAT_DELAY = 1.0
NO_WORKER_GRACE = 10.0
_NO_WORKER_REPEAT = 300.0
#: Pauses after a failed inbox receive (layer down): first and longest.  Short, because
#: replies wait on this one reader: it must be back within half a second of the layer.
_RETRY_START, _RETRY_MAX = 0.1, 0.5
#: Longest any single layer call of this process may take, before --http-timeout shortens it:
#: a frozen Redis (no socket error, no answer) must not hold a request, the inbox or health.
LAYER_CALL_TIMEOUT = 5.0
#: Layer sends in flight at once from this process: a burst of frames from many
#: sockets queues here instead of exhausting the layer's connection pool.
MAX_CONCURRENT_SENDS = 32


def _host() -> str:
    return re.sub(r"[^a-zA-Z\d\-_.]", "-", socket.gethostname())[:40].strip(".-") or "host"


def _inbox_name() -> str:
    return f"interface.{_host()}.{BaseChannelLayer.random_suffix(8)}!"


class InterfaceApplication:
    """ASGI 3 application relaying HTTP and WebSocket connections over ``layer``.

    ``config`` supplies ``http_timeout``, ``ws_protocols``, ``proxy_headers`` and
    ``allowed_origins``.  ``static`` is the static-file index (default: built
    from ``STATIC_URL``/``STATIC_ROOT``; pass ``False`` for none).  Call
    :meth:`start` on the serving event loop (``serve`` does); the first
    connection starts it otherwise.
    """

    def __init__(self, layer: BaseChannelLayer, config: Config, static: StaticFiles | None | bool = None) -> None:
        self.layer = layer
        self.config = config
        self.http_timeout = float(config.http_timeout or 120.0)
        #: Deadline of one layer call that no request deadline bounds (inbox, heartbeats, health, WebSockets).
        self.layer_timeout = min(self.http_timeout, LAYER_CALL_TIMEOUT)
        self.inbox = _inbox_name()
        self.static = StaticFiles.from_settings() if static is None else (static or None)
        origins = tuple(getattr(config, "allowed_origins", ()) or ())
        if not origins:
            origins = tuple(settings.ALLOWED_HOSTS)
            if not origins and settings.DEBUG:
                origins = (".localhost", "127.0.0.1", "[::1]")  # what Django itself allows then
        self.allowed_origins = origins
        #: Compares the workers' settings fingerprints with this process's (None without CHANNEL_LAYERS settings).
        self.agreement = _agreement(getattr(config, "layer", None) or "default")
        self.closing = False
        self.worker_count = 0
        #: Channels the live workers read, from their heartbeats (None: not known).
        self.consumed_channels: frozenset[str] | None = None
        #: This process's heartbeat (kind "web"); combined mode folds it into the worker's instead.
        self.publish_heartbeat = True
        self.process_id = f"web.{_host()}.{os.getpid()}.{BaseChannelLayer.random_suffix(6)}"
        self.started = time.time()
        self.relayed = 0
        self._queues: dict[str, asyncio.Queue] = {}
        self._websockets: dict[str, WebSocketConnection] = {}
        self._http_active = 0
        self._tasks: list[asyncio.Task] = []
        self._sends = asyncio.Semaphore(MAX_CONCURRENT_SENDS)
        # An outage fails every request: one line per kind of failure a minute, not one per request.
        self._problems = RateLimitedLog(logger)
        self._idle = asyncio.Event()
        self._recheck = asyncio.Event()  # wakes the worker monitor (shutdown, connections_changed)
        #: Called when the open WebSockets changed (a second after the first change of a burst): publish
        #: them soon (``paas-channels status``). Combined mode points it at its worker's heartbeat.
        self.connections_changed: Callable[[], None] = self._recheck.set
        self._connections_beat_due = False
        self._idle.set()

    ### ASGI ###

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._tasks and not self.closing:
            self.start()
        if scope["type"] == "websocket":
            await WebSocketConnection(self, scope, receive, send).run()
        elif scope["type"] == "http":
            path = _app_path(scope)
            if path == HEALTH_PATH:  # not counted: it reports the others
                await self._health(send)
                return
            with self.http_in_flight():
                await self._http(path, scope, receive, send)
        elif scope["type"] == "lifespan":
            await _lifespan(receive, send)
        else:
            raise ValueError(f"unsupported ASGI scope type {scope['type']!r}; expected 'http' or 'websocket'")

    async def _http(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        if path == CLIENT_PATH:
            await serve_client_js(scope, send)
            return
        if self.static is not None:
            entry = self.static.lookup(path)
            if entry is not None:
                await self.static.serve(entry, scope, send)
                return
        if self.closing:
            await send_plain(send, 503, "503 Service Unavailable: this server is restarting; try again.\n",
                             [(b"retry-after", b"1"), (b"connection", b"close")])
            return
        await HttpConnection(self, scope, receive, send).run()

    ### Inbox and connections ###

    @contextlib.contextmanager
    def http_in_flight(self) -> Iterator[None]:
        """Count an HTTP request as in flight (health, shutdown); ``--http direct`` counts its own here too."""
        self._http_active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._http_active -= 1
            self._check_idle()

    def start(self) -> None:
        """Start the inbox receive loop and the worker monitor on the running event loop."""
        if self._tasks:
            return
        self._tasks = [asyncio.ensure_future(self._receive_loop()), asyncio.ensure_future(self._monitor_workers())]
        logger.info("interface inbox %s on %r; HTTP timeout %g s", self.inbox, self.layer, self.http_timeout)

    def register(self, websocket: WebSocketConnection | None = None) -> str:
        """A new reply channel in this process's inbox, with a queue for its messages."""
        while True:
            name = self.inbox + BaseChannelLayer.random_suffix(12)
            if name not in self._queues:
                break
        self._queues[name] = asyncio.Queue()
        if websocket is not None:
            self._websockets[name] = websocket
            self._idle.clear()
            self._connections_moved()
        return name

    def unregister(self, name: str) -> None:
        """Forget a reply channel; later replies to it are dropped."""
        self._queues.pop(name, None)
        if self._websockets.pop(name, None) is not None:
            self._check_idle()
            self._connections_moved()

    def _connections_moved(self) -> None:
        if not self._connections_beat_due:
            self._connections_beat_due = True
            asyncio.get_running_loop().call_later(_CONNECTIONS_BEAT_DELAY, self._connections_beat)

    def _connections_beat(self) -> None:
        self._connections_beat_due = False
        self.connections_changed()

    def unread(self, channel: str) -> bool:
        """Whether nothing will make room on ``channel``: workers are alive and none of them reads it, or
        this process is shutting down and no worker is left (one that starts later comes too late)."""
        if not self.worker_count:
            return self.closing
        return self.consumed_channels is not None and channel not in self.consumed_channels

    def reply_queue(self, name: str) -> asyncio.Queue:
        return self._queues[name]

    async def asend(self, channel: str, message: dict, deadline: float | None = None) -> None:
        """Send on the layer with bounded concurrency, by ``deadline`` (``time.monotonic()``;
        default: ``layer_timeout`` from now).

        Raises ``ChannelFull`` as the layer does, and :class:`LayerUnavailable`
        (after logging why) for any other failure, a missed deadline included,
        so a connection can answer 503/1013 in time instead of hanging or crashing.
        """
        if deadline is None:
            deadline = time.monotonic() + self.layer_timeout
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for runs the send in a task of its
            # own, and with the inbox receive below that halved combined mode's requests/s
            # (bench/http.py: 578 -> 1,026 on 2 cores; bisected to the commit that added the deadlines).
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._send_bounded(channel, message)
        except ChannelFull:
            raise
        except (asyncio.TimeoutError, TimeoutError):
            self._problems(logging.ERROR, "send:deadline", "sending on %s: the channel layer did not answer in "
                           "time (deadline from --http-timeout %g s)", channel, self.http_timeout)
            raise LayerUnavailable("the channel layer did not answer in time") from None

    async def _send_bounded(self, channel: str, message: dict) -> None:
        async with self._sends:
            try:
                await self.layer.asend(channel, message)
                self.relayed += 1
            except ChannelFull:
                raise
            except Exception as exc:
                self._problems(logging.ERROR, f"send:{type(exc).__name__}", "sending on %s failed: %s: %.200s",
                               channel, type(exc).__name__, exc)
                raise LayerUnavailable(str(exc)) from exc

    def websocket_scheme(self, scope: Scope) -> str:
        """``ws`` or ``wss``; behind a trusted proxy, from ``X-Forwarded-Proto``."""
        if self.config.proxy_headers:
            for name, value in scope.get("headers", ()):
                if name == b"x-forwarded-proto":
                    return "wss" if value.split(b",")[0].strip().lower() in (b"https", b"wss") else "ws"
        return "wss" if scope.get("scheme") in ("wss", "https") else "ws"

    async def _receive_loop(self) -> None:
        """The process's one reader of its inbox: each reply goes to its connection's queue."""
        delay = _RETRY_START
        # A blocking receive answers within the layer's blocking timeout; past that plus the
        # call deadline the layer is frozen, and the receive is abandoned and tried afresh.
        receive_timeout = float(getattr(self.layer, "blocking_timeout", 1.0)) + self.layer_timeout
        task = asyncio.current_task()
        while True:
            # Python 3.11's wait_for returns a receive that completed as the task was
            # cancelled and swallows the cancellation: with a busy inbox (a group's messages
            # for every connection are handed out with no I/O) the shutdown's cancel was lost
            # and it waited for this loop forever.  A cancel asked for ends the loop here.
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            try:
                async with asyncio.timeout(receive_timeout):  # no task per reply (see asend)
                    channel, message = await self.layer.areceive([self.inbox], block=True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log = logger.error if delay == _RETRY_START else logger.debug  # once per outage
                log("receiving on the inbox %s failed (%s: %.200s); retrying every %g s at most",
                    self.inbox, type(exc).__name__, exc, _RETRY_MAX)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            if delay != _RETRY_START:
                logger.info("receiving on the inbox %s again", self.inbox)
            delay = _RETRY_START
            if channel is None or isinstance(message, RejectedMessage):
                continue  # a rejected message was counted and logged by the layer
            queue = self._queues.get(channel)
            if queue is None:
                logger.debug("reply for %s dropped: that connection is gone", channel)
            else:
                queue.put_nowait(message)

    async def _monitor_workers(self) -> None:
        """Keep ``worker_count`` fresh and warn while no worker is alive."""
        last_seen = time.monotonic()
        warned_at = None
        layer_down = False
        while True:
            try:
                if self.publish_heartbeat:
                    await asyncio.wait_for(self._heartbeat(), min(WORKER_CHECK_INTERVAL, self.layer_timeout))
                beats = await asyncio.wait_for(self.layer.aheartbeats(), min(WORKER_CHECK_INTERVAL, self.layer_timeout))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not layer_down:  # once per outage, not every few seconds
                    logger.warning("the channel layer does not answer (%s: %.200s); requests get 503 until it does",
                                   type(exc).__name__, exc)
                layer_down, beats = True, None
            now = time.monotonic()
            if beats is not None:
                if layer_down:
                    logger.info("the channel layer answers again")
                    layer_down = False
                disagreement = self.agreement.new_disagreements(beats) if self.agreement else None
                if disagreement:
                    logger.warning("%s", disagreement)
                count, _ = consuming_workers(beats)
                self.consumed_channels = consumed_channels(beats)
                if count:
                    if warned_at is not None:
                        logger.info("%d worker(s) alive again", count)
                    last_seen, warned_at = now, None
                elif now - last_seen >= NO_WORKER_GRACE and (warned_at is None or now - warned_at >= _NO_WORKER_REPEAT):
                    logger.warning(
                        "no worker heartbeat for %.0f s: HTTP requests will wait %g s (--http-timeout) and "
                        "then get 503. Start a worker: `paas-channels run worker` (a `worker` process type "
                        "in the Procfile, scaled with `heroku ps:scale worker=1`)",
                        now - last_seen, self.http_timeout,
                    )
                    warned_at = now
                self.worker_count = count
            # Not wait_for: on Python 3.11 it can swallow the cancel that shutdown sends right after waking us.
            woken = asyncio.ensure_future(self._recheck.wait())
            try:
                await asyncio.wait({woken}, timeout=_CLOSING_CHECK_INTERVAL if self.closing else WORKER_CHECK_INTERVAL)
            finally:
                woken.cancel()
            self._recheck.clear()

    ### Heartbeat ###

    def connection_info(self) -> dict[str, Any]:
        """The interface's part of a heartbeat: its inbox and open connections."""
        return {
            "inbox": self.inbox,
            "connections": {"http": self._http_active, "websocket": len(self._websockets)},
            "relayed": self.relayed,
        }

    def info(self) -> dict[str, Any]:
        """What this web process's heartbeat publishes (the worker fields, with no consumer threads)."""
        return {
            "kind": "web", "host": socket.gethostname(), "pid": os.getpid(), "started": self.started,
            "threads": 0, "busy": 0, "done": self.relayed, "channels": [], **self.connection_info(),
        }

    async def _heartbeat(self, ttl: float = 3 * WORKER_CHECK_INTERVAL) -> None:
        await self.layer.aheartbeat(self.process_id, self.info(), ttl)

    ### Health ###

    async def _health(self, send: Send) -> None:
        loops: dict | None = None
        try:
            beats = await asyncio.wait_for(self.layer.aheartbeats(), self.layer_timeout)
            workers, loops = consuming_workers(beats)
            layer_state, status = "reachable", 200
            self.worker_count, self.consumed_channels = workers, consumed_channels(beats)
        except Exception as exc:
            layer_state, workers, status = f"unreachable ({type(exc).__name__})", None, 503
        body = {
            # "degraded": a worker heartbeats but some (or all) of its receive loops are gone.
            "status": "error" if status != 200 else "degraded" if loops and loops["lost"] else "ok",
            "layer": layer_state,
            "workers": workers,
            "loops": loops,
            "connections": {"http": self._http_active, "websocket": len(self._websockets)},
            "closing": self.closing,
        }
        data = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"cache-control", b"no-store"),
            (b"content-length", str(len(data)).encode()),
        ]})
        await send({"type": "http.response.body", "body": data})

    ### Shutdown ###

    async def shutdown(self, timeout: float) -> int:
        """Close WebSockets with 1012 (spread over ``--ws-drain``), let HTTP responses finish within
        ``timeout``; return how many were cut.

        New requests get 503 and new WebSockets 403 from now on.  The inbox
        loop runs until the end so replies to in-flight requests still arrive.
        """
        self.closing = True
        self._recheck.set()
        started = time.monotonic()
        websockets = list(self._websockets.values())
        window = min(float(getattr(self.config, "ws_drain", 0.0) or 0.0), timeout / 2)
        logger.info("shutting down: closing %d WebSocket(s) with 1012 over %g s, waiting up to %g s for %d HTTP "
                    "response(s)", len(websockets), window, timeout, self._http_active)
        await self._close_websockets(websockets, window)
        self._check_idle()
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.0, timeout - (time.monotonic() - started)))
            cut = 0
        except asyncio.TimeoutError:
            cut = self._http_active + len(self._websockets)
            logger.warning("graceful timeout (%g s): %d connection(s) still open are cut", timeout, cut)
        await _cancel(self._tasks)
        self._tasks = []
        if self.publish_heartbeat:
            try:
                await asyncio.wait_for(self._heartbeat(ttl=1.0), 2.0)  # the status command sees us go soon
            except Exception as exc:  # noqa: BLE001 - the process is stopping anyway
                logger.debug("last heartbeat not sent: %s", exc)
        return cut

    async def _close_websockets(self, websockets: list[WebSocketConnection], window: float) -> None:
        """Close with 1012, spread evenly over ``window`` seconds (the slow drain).

        Every client reconnects at once when told to; spread out, the new
        processes get a stream of reconnects (and their joins and replays)
        instead of a whole process's worth in one instant.  Open sockets go on
        receiving until their turn.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        count = len(websockets)
        for index, websocket in enumerate(websockets):
            if window > 0 and count > 1:
                delay = start + window * index / count - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            try:
                await websocket.close_for_restart()
            except Exception:  # the connection is already gone
                logger.debug("closing %s failed", websocket.reply_channel, exc_info=True)

    def _check_idle(self) -> None:
        if self._http_active == 0 and not self._websockets:
            self._idle.set()


async def _cancel(tasks: list[asyncio.Task]) -> None:
    """Cancel ``tasks`` and wait until they ended; again for one that swallowed its cancel (Python
    3.11's ``asyncio.wait_for`` does when what it awaited finished in that same moment)."""
    while tasks := [task for task in tasks if not task.done()]:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=0.1)


def _app_path(scope: Scope) -> str:
    """The request path below ``root_path`` (what routing, static files and health see)."""
    path = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


def _agreement(alias: str) -> Agreement | None:
    try:
        return Agreement(settings_fingerprint(alias))
    except ConfigError:  # no such alias in settings.CHANNEL_LAYERS (a layer built by hand)
        return None


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def serve(app: InterfaceApplication, config: Config, ready: Callable[[], None] | None = None) -> int:
    """Serve ``app`` with Daphne on ``config.bind``/``config.port`` until SIGTERM/SIGINT; return an exit code.

    Runs Twisted's asyncio reactor in this thread (once per process).  On the
    first signal: stop listening, then ``await app.shutdown(graceful_timeout)``
    (an InterfaceApplication closes WebSockets with 1012 and lets responses
    finish), then stop; a second signal stops at once.  ``ready`` is called once
    listening.  Any ASGI app with ``start()``, ``shutdown(timeout)`` and
    ``http_timeout`` can be served this way (combined mode wraps the interface).
    A port that cannot be bound raises ``ConfigError`` (exit code 3 from the CLI).
    Each HTTP request is logged (:mod:`paas_channels.runtime.access`) unless ``--no-access-log``.
    """
    if not config.no_access_log:
        app = AccessLog(app)
    return serve_daphne(app, config, ready)
