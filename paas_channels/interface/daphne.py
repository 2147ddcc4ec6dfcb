"""Running the interface app on Daphne, with an orderly shutdown: the ONE Daphne/autobahn adapter.

Everything that reaches past Daphne's and autobahn's public API lives here,
checked at import against the versions it was tested with (Daphne 4.2,
autobahn 24-26): the ``ws_factory`` setter (our WebSocket protocol class),
``kill_all_applications`` (connections without an application), autobahn's
``sendCloseFrame`` (the server close codes 1012/1013 that ``sendClose``
refuses), the request bound into Daphne's ``send`` (to cut a response), and
the HTTP request class (Twisted 24-26's ``Request``):

* request bodies are never parsed or held in memory: Twisted's
  ``requestReceived`` parses a multipart or urlencoded body into
  ``request.args`` (about 13x the body's size in memory) for nothing, so
  ``_parsePOSTFormSubmission`` is off; Twisted spools a body over 100 kB to a
  temporary file, and the application is fed that file in ``BODY_CHUNK``
  pieces as it reads them, instead of Daphne queueing the whole body at once;
* a client gets ``--header-timeout`` seconds for each request's headers, counted
  from the connection's start (its first request) or the request line; one
  that trickles them a byte at a time (slowloris) is cut, though every byte
  would reset Twisted's idle timeout;
* a body over ``--max-body-size`` (its ``Content-Length``, or what a chunked
  body adds up to) is answered 413 while it arrives, before any application
  (so any worker) sees the request;

and the ``numberAccepts`` of Twisted's listening port (one accept per loop turn
on a socket that a supervisor's processes share, served through Daphne's ``fd:``
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
import functools
import inspect
import io
import logging
import signal
from typing import Any, Callable

import daphne
from daphne.endpoints import build_endpoint_description_strings
from daphne.http_protocol import WebRequest
from daphne.ws_protocol import WebSocketProtocol
from twisted.web import http as twisted_http

from ..config.options import Config
from ..exceptions import ConfigError
from .asgi import BODY_CHUNK, Send

__all__ = ["abort_response", "serve_daphne"]

logger = logging.getLogger(__name__)

#: Daphne versions this adapter was tested with (pyproject: daphne>=4.2,<5).
TESTED_DAPHNE = "4.2"


def _check_internals() -> None:
    """Fail at import, naming what is missing, rather than mid-request on another Daphne."""
    missing = [name for name in ("sendCloseFrame", "serverClose", "serverSend", "STATE_CLOSING")
               if not hasattr(WebSocketProtocol, name)]
    if "parsePOSTFormSubmission" not in inspect.signature(twisted_http.Request.__init__).parameters:
        missing.append("twisted.web.http.Request(parsePOSTFormSubmission=)")
    missing += [f"WebRequest.{name}" for name in ("gotLength", "handleContentChunk", "requestReceived")
                if not hasattr(WebRequest, name)]
    if missing:
        raise ImportError(
            f"paas_channels.interface.daphne needs {', '.join(missing)} (daphne.ws_protocol.WebSocketProtocol, "
            f"daphne.http_protocol.WebRequest; daphne {daphne.__version__} installed; tested with "
            f"{TESTED_DAPHNE}.x and Twisted 24-26); install daphne>=4.2,<5"
        )


_check_internals()


def abort_response(send: Send) -> bool:
    """Close the connection of a started response after what was written so far; False when not under Daphne.

    ASGI has no "abort"; Daphne's ``send`` is a partial bound to the request,
    whose transport can be closed, which the client sees as a truncated body.
    """
    send = inspect.unwrap(send)  # middleware (the access log) marks its wrapper with __wrapped__
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
    """Daphne's protocol, also able to close with the server codes 1012 (restart) and 1013 (try later),
    and dropping frames once the closing handshake has begun."""

    def serverSend(self, content: str | bytes, binary: bool = False) -> None:
        # A client's close frame starts the closing handshake at once, but Daphne tells the
        # application (websocket.disconnect) only when the TCP connection is gone: a group
        # message arriving in between made autobahn raise Disconnected and killed the relay.
        # The client said it is going: the frame is dropped, as Daphne drops replies after.
        if self.state in (self.STATE_CLOSING, self.STATE_CLOSED):
            logger.debug("frame for closing WebSocket %s dropped", self.client_addr)
            return
        super().serverSend(content, binary)

    def serverClose(self, code: int | None = None) -> None:
        if code in _SERVER_CLOSE_CODES:
            self.sendCloseFrame(code=code)
        else:
            super().serverClose(code)


_TOO_LARGE = (
    b"HTTP/1.1 413 Payload Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)
#: Body chunks queued for the application at once: the rest waits in Twisted's spool file.
_QUEUED_CHUNKS = 2


def _arm_header_deadline(channel: Any) -> None:
    """Cut ``channel`` unless the headers of its current request are in within ``--header-timeout``."""
    from twisted.internet import reactor  # installed by now: this runs while serving

    seconds = getattr(getattr(channel.factory, "server", None), "header_timeout", None)
    if not seconds or getattr(channel, "_paas_header_timer", None) is not None:
        return

    def expire() -> None:
        channel._paas_header_timer = None
        # A connection upgraded to a WebSocket has handed its transport over: nothing to cut.
        if channel.transport is not None:
            logger.info("a client sent no complete request headers within %g s (--header-timeout): connection cut",
                        seconds)
            channel.transport.abortConnection()

    channel._paas_header_timer = reactor.callLater(seconds, expire)


def _disarm_header_deadline(channel: Any) -> None:
    timer = getattr(channel, "_paas_header_timer", None)
    if timer is not None:
        channel._paas_header_timer = None
        if timer.active():
            timer.cancel()


class _Request(WebRequest):
    """Daphne's request, with its body neither parsed nor queued whole, a size limit and a header deadline."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _arm_header_deadline(self.channel)  # a later request on a kept-alive connection
        # Twisted would parse multipart/urlencoded bodies into self.args, which nothing reads.
        self._parsePOSTFormSubmission = False
        self._received = 0
        self._refused = False

    def _limit(self) -> int | None:
        return getattr(self.server, "max_body_size", None)

    def gotLength(self, length: int | None) -> None:
        _disarm_header_deadline(self.channel)  # every header is in
        super().gotLength(length)
        limit = self._limit()
        if length is not None and limit is not None and length > limit:
            self._refuse(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        limit = self._limit()
        if limit is not None and self._received > limit:
            self._refuse(self._received)
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return
        super().requestReceived(command, path, version)

    def _refuse(self, size: int) -> None:
        """413 now, before any application exists for this request, and close."""
        self._refused = True
        limit = self._limit()
        text = (f"413 Payload Too Large: the body is {size:,} bytes or more; this server takes at most "
                f"{limit:,} (--max-body-size).\n").encode()
        logger.warning("request body of %s bytes or more refused with 413 (--max-body-size %s)", f"{size:,}",
                       f"{limit:,}")
        transport = self.channel.transport if self.channel is not None else None
        if transport is not None:
            transport.write(_TOO_LARGE % (len(text), text))
            transport.loseConnection()


async def _feed_body(body: Any, queue: asyncio.Queue, request: _Request) -> None:
    """Give the application the spooled body in ``BODY_CHUNK`` pieces, a couple queued at a time."""
    try:
        body.seek(0)
        while True:
            while queue.qsize() >= _QUEUED_CHUNKS and not request.finished and request.channel is not None:
                await asyncio.sleep(0.005)
            if request.finished or request.channel is None:
                return  # answered or gone: the rest of the body is not wanted
            chunk = body.read(BODY_CHUNK)
            more = len(chunk) == BODY_CHUNK
            queue.put_nowait({"type": "http.request", "body": chunk, "more_body": more})
            if not more:
                return
    finally:
        body.close()


class _BodyFed:
    """The application's input queue as Daphne's ``process`` sees it: body events come from
    :func:`_feed_body` instead, everything else (``http.disconnect``) goes through."""

    def __init__(self, queue: asyncio.Queue) -> None:
        self._queue = queue

    def put_nowait(self, event: dict) -> None:
        if event.get("type") != "http.request":
            self._queue.put_nowait(event)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


@functools.cache
def _server_class() -> type:
    """Daphne's server, remembering its listening ports so a shutdown can stop accepting first.

    Made on first use: importing ``daphne.server`` installs the asyncio reactor.
    """
    from daphne.server import Server

    class _Server(Server):
        """Daphne's server, remembering its listening ports so a shutdown can stop accepting first."""

        def __init__(self, *args, on_listening: Callable[[], None], max_body_size: int | None = None,
                     header_timeout: float | None = None, shared: bool = False, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.max_body_size = max_body_size
            self.header_timeout = header_timeout
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

        @property
        def http_factory(self):
            return self._http_factory

        @http_factory.setter
        def http_factory(self, factory) -> None:
            build = factory.buildProtocol

            def build_protocol(addr):
                protocol = build(addr)
                if protocol is not None and getattr(protocol, "requestFactory", None) is WebRequest:
                    protocol.requestFactory = _Request
                    made = protocol.connectionMade

                    def connection_made() -> None:
                        made()
                        _arm_header_deadline(protocol)  # the first request line counts too

                    protocol.connectionMade = connection_made
                    lost = protocol.connectionLost

                    def connection_lost(reason) -> None:
                        _disarm_header_deadline(protocol)
                        lost(reason)

                    protocol.connectionLost = connection_lost
                return protocol

            factory.buildProtocol = build_protocol
            self._http_factory = factory

        def create_application(self, protocol, scope):
            queue = super().create_application(protocol, scope)
            if queue is None or not isinstance(protocol, _Request) or scope.get("type") != "http":
                return queue
            # Daphne's process() would now read the whole body into the queue: it finds an
            # empty body instead, and the spooled one is fed as the application reads.
            body, protocol.content = protocol.content, io.BytesIO()
            asyncio.ensure_future(_feed_body(body, queue, protocol))
            return _BodyFed(queue)

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


def _endpoints(config: Config, reactor: Any) -> list[str]:
    """What Daphne listens on: ``-e/--endpoint`` strings (TLS, HTTP/2 through Twisted's ``ssl:``), and the
    plain ``--bind``/``--port`` listener unless only endpoints were given; each checked now, as Daphne
    would fail on it later with a traceback."""
    from twisted.internet.endpoints import serverFromString

    for description in config.endpoints:
        try:
            serverFromString(reactor, description)
        except Exception as exc:  # noqa: BLE001 - a parse error, a missing key file, a missing plugin: all one answer
            raise ConfigError(
                f"-e/--endpoint {description!r} cannot be used ({type(exc).__name__}: {exc}); expected a Twisted "
                "endpoint string such as tcp:8000:interface=127.0.0.1 or "
                "ssl:8443:privateKey=key.pem:certKey=cert.pem (HTTP/2 needs pip install 'twisted[tls,http2]')"
            ) from None
    explicit = any(config.sources.get(name, "default") != "default" for name in ("bind", "port"))
    plain = [_plain_endpoint(config)]
    return [*(plain if explicit or not config.endpoints or config.listen_fd is not None else []), *config.endpoints]


def _plain_endpoint(config: Config) -> str:
    """The plain HTTP listener: the socket inherited from the supervisor, else ``--bind``/``--port``."""
    if config.listen_fd is None:
        return build_endpoint_description_strings(host=config.bind, port=config.port)[0]
    (description,) = build_endpoint_description_strings(file_descriptor=config.listen_fd)
    return description + (":domain=INET6" if ":" in config.bind else "")


def _shown(endpoint: str, config: Config) -> str:
    """An endpoint as the log says it: the plain listener as its URL, others as given (no key paths hidden:
    they are file names, not secrets)."""
    if endpoint == _plain_endpoint(config):
        return f"http://{config.bind}:{config.port}"
    return endpoint


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

    endpoints = _endpoints(config, reactor)

    def on_listening() -> None:
        for endpoint in endpoints:
            logger.info("listening on %s", _shown(endpoint, config))
        if ready is not None:
            # Listening can complete before the reactor runs, i.e. before on_running installs the
            # SIGTERM handler; "ready" waits for it, else a SIGTERM in between kills a serving process.
            reactor.callWhenRunning(ready)

    server = server_class(
        app,
        endpoints=endpoints,
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
        max_body_size=getattr(config, "max_body_size", None) or None,
        header_timeout=getattr(config, "header_timeout", None),
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
            f"cannot listen on {', '.join(_shown(endpoint, config) for endpoint in endpoints)}: "
            f"{server.listen_failure}. Is another process using the port? Choose another with --port or PORT"
            + (" or -e/--endpoint" if config.endpoints else "")
        )
    try:
        shutdown.uninstall()
    except RuntimeError:  # the loop is closed: nothing to restore
        pass
    logger.info("interface server stopped")
    return 1 if shutdown.cut else 0
