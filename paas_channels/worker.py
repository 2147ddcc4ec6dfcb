"""The worker: takes messages off the layer and runs their consumers.

``Worker(layer, routing, threads=N)`` runs N receive loops (threads, or
greenlets when gevent has patched the process).  A loop receives only when it
is free, so a worker never takes a message it cannot start at once (no
prefetch): what it has not taken, another worker can.

A consumer's exception is logged with its traceback and the loop goes on;
so is anything a message can do (not a dict, a bad ``reply_channel``, a
router that chokes on it): a loop never dies of a message, and the
heartbeat reports how many loops are alive, so health and ``status`` can
tell a worker that still beats but no longer consumes.
``stop()`` (thread-safe; what SIGTERM does) stops receiving and lets the
in-flight consumers finish within ``graceful_timeout``: a deploy never loses
a message a worker took.  :func:`run` is the ``paas-channels run worker``
process: signals, boot errors, exit codes.
"""

from __future__ import annotations

import contextvars
import fnmatch
import logging
import os
import random
import signal
import socket
import threading
import time
from typing import Any, Callable, Iterable

from django.core import signals as django_signals

from .config.options import Config
from .exceptions import ConfigError
from .layers import BaseChannelLayer, RejectedMessage, channel_layer_settings, get_channel_layer
from .layers.fingerprint import FINGERPRINT_KEY, Agreement, settings_fingerprint
from .logs import RateLimitedLog
from .message import Message, deferred_sends
from .routing import Router, default_routing
from .runtime.boot import check_reach, closing_layer, unreachable_layer
from .runtime.supervisor import report_ready

__all__ = ["Worker", "build_worker", "run", "select_channels"]

logger = logging.getLogger(__name__)

#: Seconds between heartbeats (also sent at once when the worker turns busy or idle).
HEARTBEAT_INTERVAL = 5.0
#: Seconds after a receive error before trying again (layer restarting, network blip).
_RECEIVE_ERROR_PAUSE = 0.5


def select_channels(channels: Iterable[str], only: Iterable[str] = (), exclude: Iterable[str] = ()) -> list[str]:
    """The routed channels to consume: those matching any ``only`` glob (all if none),
    minus those matching any ``exclude`` glob."""
    only, exclude = list(only), list(exclude)
    chosen = sorted(
        channel for channel in channels
        if (not only or any(fnmatch.fnmatchcase(channel, glob) for glob in only))
        and not any(fnmatch.fnmatchcase(channel, glob) for glob in exclude)
    )
    for glob in only + exclude:
        if not any(fnmatch.fnmatchcase(channel, glob) for channel in channels):
            logger.warning("channel glob %r matches no routed channel (routed: %s)", glob, ", ".join(sorted(channels)))
    return chosen


class Worker:
    """Consumes the routed channels of one layer with a pool of receive loops.

    Usable inside another process (combined mode): no signal handling and no
    ``sys.exit`` here; call :meth:`serve` (blocks) and :meth:`stop` from
    another thread.
    """

    def __init__(
        self,
        layer: BaseChannelLayer,
        routing: Any,
        *,
        threads: int = 1,
        only_channels: Iterable[str] = (),
        exclude_channels: Iterable[str] = (),
        graceful_timeout: float = 25.0,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        host: str | None = None,
    ) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer; got {threads!r}")
        self.layer = layer
        self.router = routing if isinstance(routing, Router) else Router(routing)
        self.threads = threads
        self.graceful_timeout = graceful_timeout
        self.heartbeat_interval = heartbeat_interval
        routed = self.router.channels
        self.channels = select_channels(routed, only_channels, exclude_channels)
        if not self.channels:
            raise ConfigError(
                f"this worker would consume no channel: the routing names {', '.join(sorted(routed)) or 'none'}; "
                f"--only-channels {list(only_channels) or '-'} / --exclude-channels {list(exclude_channels) or '-'} "
                "leave nothing. Loosen the globs or add routes"
            )
        self.host = host or socket.gethostname()
        self.worker_id = f"{self.host}.{os.getpid()}.{BaseChannelLayer.random_suffix(6)}"
        self.started = time.time()
        #: "worker", or "combined" with ``extra_info`` adding the interface's connections.
        self.kind = "worker"
        self.extra_info: Callable[[], dict[str, Any]] | None = None
        self.busy = 0
        self.done = 0
        self.expired = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._forced = threading.Event()
        self._stopped_by: str | None = None  # the signal that asked for the stop / the forced stop
        self._forced_by: str | None = None
        self._beat_now = threading.Event()
        self._loops: list[threading.Thread] = []
        #: The settings fingerprint this worker's heartbeats carry (set by build_worker from the settings).
        self.fingerprint: str | None = None
        self._agreement: Agreement | None = None
        self._agreement_checked = float("-inf")
        self._problems = RateLimitedLog(logger)

    ### Control ###

    def stop(self, force: bool = False, signal_name: str | None = None) -> None:
        """Stop receiving; in-flight consumers finish (``force``: don't wait for them).

        Safe in a signal handler: only sets flags.  ``signal_name`` is logged by
        the main thread (a log call in the handler could re-enter a write the
        main thread was making, and logging would swallow the error, and with
        it the stop that came after it).
        """
        if force:
            self._forced_by = signal_name
            self._forced.set()
        else:
            self._stopped_by = signal_name
        self._stopping.set()
        self._beat_now.set()

    def beat_soon(self) -> None:
        """Publish the heartbeat now, not at the next interval (thread-safe)."""
        self._beat_now.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def check_layer(self) -> None:
        """Publish a first heartbeat; a layer that cannot take it is a boot error."""
        try:
            self._heartbeat()
        except Exception as exc:
            alias = getattr(self.layer, "alias", "default")
            raise unreachable_layer(f"channel layer {alias!r} ({type(self.layer).__name__})", exc) from None

    def serve(self) -> int:
        """Run until :meth:`stop`, then drain.  Returns how many consumers were cut off (0 = clean)."""
        logger.info(
            "worker %s consuming %s with %d loop(s)", self.worker_id, ", ".join(self.channels), self.threads
        )
        # Each loop in a fresh, empty context: where threads inherit the spawner's
        # context (Python 3.14's thread_inherit_context), loops would share it.
        self._loops = [
            threading.Thread(
                target=contextvars.Context().run, args=(self._loop,), name=f"paas-worker-{index + 1}", daemon=True
            )
            for index in range(self.threads)
        ]
        for loop in self._loops:
            loop.start()
        beater = threading.Thread(target=self._heartbeat_loop, name="paas-worker-heartbeat", daemon=True)
        beater.start()
        try:
            while not self._stopping.wait(0.5):
                pass
            if self._stopped_by:
                logger.info("%s received: finishing in-flight consumers", self._stopped_by)
            return self._drain()
        finally:
            self._beat_now.set()
            beater.join(2)
            try:
                self._heartbeat(ttl=1.0)  # let the status command see us go soon
            except Exception as exc:
                logger.debug("last heartbeat not sent: %s", exc)

    def _drain(self) -> int:
        in_flight = self.busy
        logger.info(
            "stopping: no new messages; waiting up to %.0f s for %d in-flight consumer(s)",
            self.graceful_timeout, in_flight,
        )
        deadline = time.monotonic() + self.graceful_timeout
        for loop in self._loops:
            while loop.is_alive() and not self._forced.is_set() and time.monotonic() < deadline:
                loop.join(0.1)
        if self._forced_by:
            logger.warning("second %s: forcing exit", self._forced_by)
        cut = self.busy
        if cut:
            why = "forced stop" if self._forced.is_set() else f"graceful timeout {self.graceful_timeout:.0f} s"
            logger.warning("%s: %d consumer(s) still running were abandoned", why, cut)
        else:
            logger.info("stopped cleanly after %d message(s)", self.done)
        return cut

    ### Receive loops ###

    def _loop(self) -> None:
        channels = list(self.channels)
        while not self._stopping.is_set():
            # Shuffled so a busy first channel cannot starve the others.
            random.shuffle(channels)
            try:
                channel, content = self.layer.receive(channels, block=True)
            except Exception as exc:
                self._problems(logging.ERROR, "receive", "receive from the channel layer failed (%s: %.200s); "
                               "retrying every %g s", type(exc).__name__, exc, _RECEIVE_ERROR_PAUSE)
                self._stopping.wait(_RECEIVE_ERROR_PAUSE)
                continue
            if self._problems.recovered("receive"):
                logger.info("receiving from the channel layer again")
            if channel is None:
                continue
            # Taken, so it runs even if stop() came meanwhile: never lose a taken message.
            try:
                self._handle(channel, content)
            except BaseException as exc:  # noqa: BLE001 - a loop must outlive any message
                if isinstance(exc, KeyboardInterrupt):
                    raise
                self._problems(logging.ERROR, f"handle:{type(exc).__name__}",
                               "a message on %s could not be handled (%s); dropped, the loop goes on",
                               channel, type(exc).__name__, exc_info=True)

    def _handle(self, channel: str, content: dict) -> None:
        with self._lock:
            self.busy += 1
            if self.busy == 1:
                self._beat_now.set()
        try:
            self.run_consumer(channel, content)
        finally:
            with self._lock:
                self.busy -= 1
                self.done += 1
                if self.busy == 0:
                    self._beat_now.set()

    def run_consumer(self, channel: str, content: dict) -> None:
        """Route one message and run its consumer; errors are logged, never raised."""
        if isinstance(content, RejectedMessage):
            return  # failed authentication: counted and logged by the layer, never run
        problem = _malformed(content)
        if problem is not None:
            self._problems(logging.WARNING, f"malformed:{channel}",
                           "a message on %s was dropped: %s. Whoever sends on this channel sends garbage "
                           "(or someone who can reach the layer does)", channel, problem)
            return
        if channel == "http.request" and _expired(content):
            with self._lock:
                self.expired += 1
            self._problems(logging.WARNING, f"expired:{channel}",
                           "a message on %s (path %r) was skipped: its client was answered 503 %.1f s ago "
                           "(no worker took it within --http-timeout). Add workers or threads",
                           channel, content.get("path"), time.time() - content["deadline"])
            return
        match = self.router.match(channel, content)
        if match is None:
            logger.warning(
                "no route for a message on %s (path %r): dropped; add a route or a catch-all",
                channel, content.get("path"),
            )
            return
        consumer, kwargs = match
        message = Message(content, channel, self.layer)
        # Django's request signals close stale database connections, as for a request.
        django_signals.request_started.send(sender=type(self), message=message)
        try:
            with deferred_sends():
                consumer(message, **kwargs)
        except Exception:
            logger.exception(
                "consumer %s failed on %s (path %r); its sends were discarded",
                getattr(consumer, "__qualname__", consumer), channel, content.get("path"),
            )
        finally:
            django_signals.request_finished.send(sender=type(self))

    ### Heartbeats ###

    @property
    def live_loops(self) -> int:
        """Receive loops still running (``threads`` while serving, unless one died)."""
        return sum(loop.is_alive() for loop in self._loops)

    def info(self) -> dict[str, Any]:
        """What the heartbeat publishes about this worker (``loops``: live receive loops, once serving)."""
        info = {
            "kind": self.kind,
            **(self.extra_info() if self.extra_info is not None else {}),
            "host": self.host,
            "pid": os.getpid(),
            "channels": list(self.channels),
            "threads": self.threads,
            "busy": self.busy,
            "done": self.done,
            "expired": self.expired,
            "rejected": getattr(self.layer, "rejected_count", 0),
            "started": self.started,
            **({FINGERPRINT_KEY: self.fingerprint} if self.fingerprint else {}),
        }
        if self._loops:
            info["loops"] = self.live_loops
        return info

    def _heartbeat(self, ttl: float | None = None) -> None:
        self.layer.heartbeat(self.worker_id, self.info(), ttl if ttl is not None else 3 * self.heartbeat_interval)

    def _heartbeat_loop(self) -> None:
        while not self._stopping.is_set():
            self._beat_now.wait(self.heartbeat_interval)
            self._beat_now.clear()
            if self._stopping.is_set():
                return
            try:
                self._heartbeat()
                self._check_agreement()
            except Exception as exc:
                self._problems(logging.WARNING, "heartbeat", "heartbeat failed: %s: %.200s", type(exc).__name__, exc)
            else:
                self._problems.recovered("heartbeat")
            live = self.live_loops
            if live < self.threads and not self._stopping.is_set():
                self._problems(logging.CRITICAL, "loops", "%d of %d receive loop(s) of worker %s have died; "
                               "restart this worker", self.threads - live, self.threads, self.worker_id)

    def _check_agreement(self) -> None:
        """Warn (once per process) about live processes whose settings fingerprint differs from ours.

        At most once per heartbeat interval: a worker also beats on every idle-to-busy
        change, and reading every process's heartbeat each time would cost a layer
        round trip per message on a worker that goes busy and idle in turn.
        """
        if self.fingerprint is None:
            return
        now = time.monotonic()
        if now - self._agreement_checked < self.heartbeat_interval:
            return
        self._agreement_checked = now
        if self._agreement is None:
            self._agreement = Agreement(self.fingerprint)
        line = self._agreement.new_disagreements(self.layer.heartbeats())
        if line:
            logger.warning("%s", line)


def _malformed(content: Any) -> str | None:
    """Why ``content`` cannot be a message for a consumer, or None.

    A layer delivers whatever was stored; what every consumer relies on is
    checked here once, so no consumer, router or ``Message`` sees worse.
    """
    if not isinstance(content, dict):
        return f"expected a dict, got {type(content).__name__}"
    reply = content.get("reply_channel")
    if reply is not None:
        try:
            BaseChannelLayer.valid_channel_name(reply)
        except (TypeError, ValueError) as exc:
            return f"bad reply_channel: {exc}"
    path = content.get("path")
    if path is not None and not isinstance(path, str):
        return f"'path' must be a str, got {type(path).__name__}"
    return None


def _expired(content: dict) -> bool:
    """An ``http.request`` whose ``deadline`` (wall-clock seconds, set by the interface) has passed.

    Only ``http.request``: on a project's own channels ``deadline`` is the project's field.
    Web and worker clocks must agree to within a fraction of ``--http-timeout`` (NTP on every PaaS).
    """
    deadline = content.get("deadline")
    return isinstance(deadline, (int, float)) and not isinstance(deadline, bool) and time.time() > deadline


def build_worker(config: Config, layer: BaseChannelLayer | None = None, threads: int | None = None) -> Worker:
    """A ``Worker`` from the process configuration and the layer's ``ROUTING`` setting."""
    alias = config.layer
    routing_path = channel_layer_settings(alias)["ROUTING"]
    if routing_path is None:
        logger.info("CHANNEL_LAYERS[%r] names no ROUTING: Django views for HTTP, WebSockets accepted", alias)
        routing: Any = default_routing()
    else:
        routing = routing_path
    worker = Worker(
        layer if layer is not None else get_channel_layer(alias),
        routing,
        threads=threads or config.threads,
        only_channels=config.only_channels,
        exclude_channels=config.exclude_channels,
        graceful_timeout=config.graceful_timeout,
    )
    worker.fingerprint = settings_fingerprint(alias)
    return worker


def run(config: Config) -> int:
    """``paas-channels run worker``: serve until SIGTERM/SIGINT, drain, exit 0.

    A second SIGINT (or SIGTERM) abandons the in-flight consumers.  Boot errors
    raise ``ConfigError`` (the CLI prints one line and exits 3).
    """
    pool = config.gevent or config.threads
    worker = build_worker(config, threads=pool)
    check_reach(worker.layer, config)
    worker.check_layer()
    if config.gevent:
        logger.info("gevent pool of %d greenlets", config.gevent)

    def on_signal(signum: int, frame: Any) -> None:
        # Only set flags here (no logging: see Worker.stop); the main loop does the work.
        name = signal.Signals(signum).name
        if worker.stopping:
            if config.supervised and signum == signal.SIGTERM:
                return  # the platform and the supervisor both signal: not a request to force
            worker.stop(force=True, signal_name=name)
        else:
            worker.stop(signal_name=name)

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        with closing_layer(worker.layer):
            report_ready()
            cut = worker.serve()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0 if cut == 0 else 1
