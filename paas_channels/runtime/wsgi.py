"""``paas-channels run wsgi``: the project's WSGI app on gevent, static files by WhiteNoise.

For a project without ``CHANNEL_LAYERS``: it runs like any Django project on a
PaaS, with no channel layer and no workers.  The process is monkey-patched by
the CLI before Django is imported, so each request runs in its own greenlet and
blocking database or HTTP calls yield to the others.

SIGTERM (what a PaaS sends before a restart): stop listening, close idle
keep-alive connections, let requests in flight finish within
``--graceful-timeout``, then cancel the rest and say how many; exit 0.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from typing import Any, Callable, Iterable, Iterator

from django.conf import settings

from ..config.options import Config
from ..config.settings import WHITENOISE_MIDDLEWARE
from ..exceptions import ConfigError
from .access import wsgi_access_log
from .supervisor import report_ready

logger = logging.getLogger(__name__)

__all__ = ["POOL_SIZE", "finder_files", "run", "static_files", "wsgi_application"]

#: Most requests served at once; beyond it the listener stops accepting until one ends.
POOL_SIZE = 1000

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]


def wsgi_application() -> WSGIApp:
    """The project's ``WSGI_APPLICATION`` (Django's own default when unset)."""
    from django.core.exceptions import ImproperlyConfigured
    from django.core.servers.basehttp import get_internal_wsgi_application

    try:
        return get_internal_wsgi_application()
    except ImproperlyConfigured as exc:
        raise ConfigError(f"{exc}; fix settings.WSGI_APPLICATION (e.g. 'myproject.wsgi.application')") from None


def static_files(application: WSGIApp) -> WSGIApp:
    """``application`` behind WhiteNoise, unless the project's MIDDLEWARE already has it.

    Files come from ``STATIC_ROOT`` once ``collectstatic`` has filled it, else
    straight from the static-file finders, so a fresh project serves its admin
    CSS without a build step.
    """
    if WHITENOISE_MIDDLEWARE in getattr(settings, "MIDDLEWARE", []):
        return application
    if "django.contrib.staticfiles" not in settings.INSTALLED_APPS or not settings.STATIC_URL:
        return application
    from whitenoise import WhiteNoise

    prefix = "/" + settings.STATIC_URL.lstrip("/")
    static_root = getattr(settings, "STATIC_ROOT", None)
    wrapped = WhiteNoise(application)
    if static_root and os.path.isdir(static_root):
        wrapped.add_files(str(static_root), prefix=prefix)
    else:
        for url, path in finder_files(prefix):
            if url not in wrapped.files:  # the first finder wins, as in collectstatic
                wrapped.add_file_to_dictionary(url, path)
    return wrapped


def finder_files(prefix: str) -> Iterator[tuple[str, str]]:
    """``(url, file path)`` of every file Django's static-file finders know (the interface's index uses it too)."""
    from django.contrib.staticfiles import finders

    for finder in finders.get_finders():
        for path, storage in finder.list(None):
            storage_prefix = (getattr(storage, "prefix", None) or "").strip("/")
            url = prefix + (storage_prefix + "/" if storage_prefix else "") + path.replace("\\", "/")
            yield url, storage.path(path)


class _Shutdown:
    """What the signal handler sets; read by the server's handlers."""

    def __init__(self) -> None:
        import gevent.event

        self.requested = gevent.event.Event()
        self.idle: set[Any] = set()


def _proxy_and_drain(application: WSGIApp, config: Config, shutdown: _Shutdown) -> WSGIApp:
    """Apply --proxy-headers and --root-path; ask clients to close once shutting down."""

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if config.proxy_headers:
            forwarded_for = environ.get("HTTP_X_FORWARDED_FOR", "")
            if forwarded_for:
                # The platform's router appends the address it saw: the last one is not spoofable.
                environ["REMOTE_ADDR"] = forwarded_for.split(",")[-1].strip()
            proto = environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[-1].strip()
            if proto in ("http", "https"):
                environ["wsgi.url_scheme"] = proto
        if config.root_path:
            environ["SCRIPT_NAME"] = config.root_path.rstrip("/")
        if not shutdown.requested.is_set():
            return application(environ, start_response)

        def closing_start_response(status: str, headers: list, exc_info: Any = None) -> Any:
            if not any(name.lower() == "connection" for name, _ in headers):
                headers = [*headers, ("Connection", "close")]
            return start_response(status, headers, exc_info)

        return application(environ, closing_start_response)

    return app


def _handler_class(shutdown: _Shutdown) -> type:
    from gevent.pywsgi import WSGIHandler

    class Handler(WSGIHandler):
        # A keep-alive connection waiting for its next request is idle: on
        # SIGTERM it is closed at once instead of holding shutdown open.
        def read_requestline(self) -> str:
            if shutdown.requested.is_set():
                return ""
            shutdown.idle.add(self)
            try:
                return super().read_requestline()
            finally:
                shutdown.idle.discard(self)

    return Handler


def _close_idle(shutdown: _Shutdown) -> int:
    closed = 0
    for handler in list(shutdown.idle):
        try:
            handler.socket.shutdown(socket.SHUT_RD)
            closed += 1
        except (OSError, AttributeError):
            pass
    return closed


def run(config: Config) -> int:
    """Serve the project's WSGI app until SIGTERM/SIGINT; returns the exit code."""
    import gevent
    from gevent.pool import Pool
    from gevent.pywsgi import WSGIServer

    shutdown = _Shutdown()
    application = _proxy_and_drain(static_files(wsgi_application()), config, shutdown)
    if not config.no_access_log:
        application = wsgi_access_log(application)
    pool = Pool(POOL_SIZE)
    # Under a supervisor: the socket it bound once for every process.
    listener = (config.bind, config.port) if config.listen_fd is None else socket.socket(fileno=config.listen_fd)
    server = WSGIServer(
        listener, application, spawn=pool, handler_class=_handler_class(shutdown),
        log=None, error_log=logger,  # the access log is wsgi_access_log's: the same line as in every mode
    )
    try:
        server.start()
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {config.bind}:{config.port} ({exc.strerror or exc}); "
            "choose another --port/$PORT or stop the process using it"
        ) from None
    # The handlers first: the supervisor counts a SIGTERM after "ready" as a cut, not a boot's end.
    handles = [gevent.signal_handler(signum, shutdown.requested.set) for signum in (signal.SIGTERM, signal.SIGINT)]
    report_ready()
    logger.info("wsgi: serving on http://%s:%s (gevent, up to %d requests at once)",
                config.bind, server.server_port, POOL_SIZE)
    try:
        shutdown.requested.wait()
        server.close()
        idle = _close_idle(shutdown)
        logger.info("wsgi: shutting down: no new connections; %d request(s) in flight, "
                    "%d idle keep-alive connection(s) closed", max(0, len(pool) - idle), idle)
        pool.join(timeout=config.graceful_timeout)
        cancelled = len(pool)
        pool.kill(block=True, timeout=1)
        if cancelled:
            logger.warning("wsgi: cancelled %d request(s) still running after %.0f s",
                           cancelled, config.graceful_timeout)
        logger.info("wsgi: stopped")
    finally:
        for handle in handles:
            handle.cancel()
    return 0
