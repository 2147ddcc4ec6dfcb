"""Running the interface app on Daphne, with an orderly shutdown: the ONE Daphne/autobahn adapter.

Everything that reaches past Daphne's and autobahn's public API lives here,
checked at import against the versions it was tested with (Daphne 4.2,
autobahn 24-26): the ``ws_factory`` setter (our WebSocket protocol class),
``kill_all_applications`` (connections without an application), autobahn's
``sendCloseFrame`` (the server close codes 1012/1013 that ``sendClose``
refuses), the request bound into Daphne's ``send`` (to cut a response), and
the ``numberAccepts`` of Twisted's listening port (one accept per loop turn on
a socket that a supervisor's processes share, served through Daphne's ``fd:``
endpoint).

Importing this module installs no reactor: ``daphne.server`` (which installs
Twisted's asyncio reactor at import) is imported by :func:`serve_daphne`
only, when a process actually serves.  Signal handlers only schedule the
shutdown; the shutdown itself runs in order: stop listening, close WebSockets
with 1012 so clients reconnect at once, let responses in flight finish within
``--graceful-timeout``, stop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import functools
from typing import Any, Callable

import daphne
from daphne.endpoints import build_endpoint_description_strings
from daphne.ws_protocol import WebSocketProtocol

from ..config.options import Config
from ..exceptions import ConfigError
from .asgi import BODY_CHUNK, Send

__all__ = ["abort_response", "serve_daphne"]

logger = logging.getLogger(__name__)

#: Daphne versions this adapter was tested with (pyproject: daphne>=4.2,<5).
TESTED_DAPHNE = "4.2"


def _check_internals() -> None:
    """Fail at import, naming what is missing, rather than mid-request on another Daphne."""
    missing = [name for name in ("sendCloseFrame", "serverClose") if not hasattr(WebSocketProtocol, name)]
    if missing:
        raise ImportError(
            f"paas_channels.interface.daphne needs {', '.join(missing)} on daphne.ws_protocol.WebSocketProtocol "
            f"(daphne {daphne.__version__} installed; tested with {TESTED_DAPHNE}.x); install daphne>=4.2,<5"
        )


_check_internals()


def abort_response(send: Send) -> bool:
    """Close the connection of a started response after what was written so far; False when not under Daphne.

    ASGI has no "abort"; Daphne's ``send`` is a partial bound to the request,
    whose transport can be closed, which the client sees as a truncated body.
    """
    request = next(iter(getattr(send, "args", ())), None)
    transport = getattr(request, "transport", None) or getattr(getattr(request, "channel", None), "transport", None)
    if transport is None or not hasattr(transport, "loseConnection"):
        return False
    transport.loseConnection()
    return True

#: Close codes a server may send that autobahn's ``sendClose`` refuses (it allows 1000, 3000-4999).
_SERVER_CLOSE_CODES = frozenset({1001, 1011, 1012, 1013, 1014})
#: Heroku's router closes connections idle this long; pings must come sooner.
_IDLE_LIMIT = 55.0
#: Largest WebSocket message: it must fit a layer message (1 MiB) with its envelope.
_MAX_WS_MESSAGE = 1024 * 1024 - 64 * 1024


class _WebSocketProtocol(WebSocketProtocol):
    """Daphne's protocol, also able to close with the server codes 1012 (restart) and 1013 (try later)."""

    def serverClose(self, code: int | None = None) -> None:
        if code in _SERVER_CLOSE_CODES:
            self.sendCloseFrame(code=code)
        else:
            super().serverClose(code)


@functools.cache
def _server_class() -> type:
    """Daphne's server, remembering its listening ports so a shutdown can stop accepting first.

    Made on first use: importing ``daphne.server`` installs the asyncio reactor.
    """
    from daphne.server import Server

    class _Server(Server):
        """Daphne's server, remembering its listening ports so a shutdown can stop accepting first."""

        def __init__(self, *args, on_listening: Callable[[], None], shared: bool = False, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.shared = shared
            self.ports: list = []
            self.listen_failure: str | None = None
            self._on_listening = on_listening

        @property
        def ws_factory(self):
            return self._ws_factory

        @ws_factory.setter
        def ws_factory(self, factory) -> None:
            factory.protocol = _WebSocketProtocol
            self._ws_factory = factory

        def listen_success(self, port) -> None:
            super().listen_success(port)
            if self.shared:
                _accept_one_at_a_time(port)
            self.ports.append(port)
            if len(self.ports) == len(self.endpoints):
                self._on_listening()

        def kill_all_applications(self):
            # Daphne's version indexes every connection's application instance, but a
            # request just upgraded to a WebSocket (or still reading its body) has none.
            for protocol, details in list(self.connections.items()):
                if "application_instance" not in details:
                    del self.connections[protocol]
            return super().kill_all_applications()

        def listen_error(self, failure) -> None:
            self.listen_failure = failure.getErrorMessage()
            self.stop()

    return _Server


@functools.cache
def _one_accept_class(port_class: type) -> type:
    class _OneAcceptPort(port_class):
        # Twisted's Port accepts up to numberAccepts (100, growing) connections per
        # wakeup: on a socket several processes share, the first one awake would
        # take a whole burst (32 wrk connections went to one of two processes).
        # One per turn of the loop spreads them; a busier process turns slower.
        numberAccepts = property(lambda self: 1, lambda self, value: None)

    return _OneAcceptPort


def _accept_one_at_a_time(port: Any) -> None:
    """Make a Twisted listening port accept one connection per loop turn (a socket shared by processes)."""
    if not hasattr(port, "numberAccepts"):
        logger.warning("Twisted's %s has no numberAccepts: connections may bunch on one process",
                       type(port).__name__)
        return
    port.__class__ = _one_accept_class(type(port))


class _Shutdown:
    """Signal handling and the ordered shutdown of one served app."""

    def __init__(self, app: Any, config: Config, server: Any, reactor: Any) -> None:
        self.reactor = reactor
        self.app = app
        self.config = config
        self.server = server
        self.started = False
        self.cut = 0

    def install(self) -> None:
        loop = asyncio.get_event_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.on_signal, signum)

    def uninstall(self) -> None:
        loop = asyncio.get_event_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)

    def on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.started:
            if self.config.supervised and signum == signal.SIGTERM:
                # The platform signals every process of the dyno, and the supervisor does too.
                logger.debug("%s again: already shutting down", name)
                return
            logger.warning("%s again: stopping now", name)
            if self.reactor.running:
                self.reactor.stop()
            return
        self.started = True
        logger.info("%s: shutting down gracefully (up to %g s)", name, self.config.graceful_timeout)
        asyncio.ensure_future(self.run())

    async def run(self) -> None:
        try:
            for port in self.server.ports:
                port.stopListening()
            self.cut = await self.app.shutdown(self.config.graceful_timeout) or 0
        finally:
            if self.reactor.running:
                self.reactor.stop()


def serve_daphne(app: Any, config: Config, ready: Callable[[], None] | None = None) -> int:
    """Serve ``app`` until a signal; see :func:`paas_channels.interface.serve`."""
    server_class = _server_class()  # first: it installs the asyncio reactor that the import below gets
    from twisted.internet import reactor

    timeout = app.http_timeout
    if config.ping_interval >= _IDLE_LIMIT:
        logger.warning(
            "--ping-interval %g s is not under the 55 s idle limit of Heroku's router (and most proxies): "
            "idle WebSockets will be cut; use 20-50 s", config.ping_interval,
        )

    def on_listening() -> None:
        logger.info("listening on http://%s:%s", config.bind, config.port)
        if ready is not None:
            ready()

    server = server_class(
        app,
        endpoints=_endpoints(config),
        signal_handlers=False,
        http_timeout=None,  # the app answers its own 503; Daphne's would also cut long streams
        request_buffer_size=BODY_CHUNK,
        ping_interval=config.ping_interval,
        ping_timeout=30,
        # The handshake waits for a worker's accept as long as a request waits for its reply.
        websocket_connect_timeout=timeout + 5,
        websocket_handshake_timeout=timeout + 5,
        websocket_max_message_size=_MAX_WS_MESSAGE,
        websocket_max_frame_size=_MAX_WS_MESSAGE,
        application_close_timeout=10,
        root_path=config.root_path or "",
        proxy_forwarded_address_header="X-Forwarded-For" if config.proxy_headers else None,
        proxy_forwarded_port_header="X-Forwarded-Port" if config.proxy_headers else None,
        proxy_forwarded_proto_header="X-Forwarded-Proto" if config.proxy_headers else None,
        on_listening=on_listening,
        shared=config.listen_fd is not None,
    )
    shutdown = _Shutdown(app, config, server, reactor)

    def on_running() -> None:
        shutdown.install()
        app.start()

    reactor.callWhenRunning(on_running)
    server.run()
    if server.listen_failure is not None:
        raise ConfigError(
            f"cannot listen on {config.bind}:{config.port}: {server.listen_failure}. "
            "Is another process using the port? Choose another with --port or PORT"
        )
    try:
        shutdown.uninstall()
    except RuntimeError:  # the loop is closed: nothing to restore
        pass
    logger.info("interface server stopped")
    return 1 if shutdown.cut else 0


def _endpoints(config: Config) -> list[str]:
    """Twisted endpoint strings: the socket inherited from the supervisor, else ``bind:port``."""
    if config.listen_fd is None:
        return build_endpoint_description_strings(host=config.bind, port=config.port)
    (description,) = build_endpoint_description_strings(file_descriptor=config.listen_fd)
    return [description + (":domain=INET6" if ":" in config.bind else "")]
