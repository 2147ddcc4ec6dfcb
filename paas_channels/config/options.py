"""Process configuration: every option declared once, read once, frozen.

Precedence is ``ChainMap(command line, environment, defaults)``: a flag beats
an environment variable, which beats the default.  The CLI's arguments are
generated from :data:`OPTIONS`, and every process logs the effective values
(secrets masked) at start.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections import ChainMap
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..exceptions import ConfigError

__all__ = [
    "EXIT_BOOT_ERROR", "LOG_FORMAT", "PROCESSES_ENV", "UTCFormatter", "MODES", "OPTIONS", "Config", "Option", "add_arguments", "load_config",
    "on_heroku", "parse_bool",
]

#: The one format of every log line (stdout on a PaaS; see configure()'s LOGGING).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


class UTCFormatter(logging.Formatter):
    """LOG_FORMAT's times in UTC, as a platform's own log times are.

    Django sets each process's ``TZ`` from ``TIME_ZONE`` when it loads the
    settings; a supervisor that never loads them kept the inherited one, so
    one dyno's log mixed two clocks.  UTC whatever ``TZ`` or ``TIME_ZONE`` says.
    """

    converter = time.gmtime

#: Set by ``paas-channels run`` to the effective number of processes, for the
#: settings file (``configure()`` picks the IPC layer for several on one machine).
PROCESSES_ENV = "PAAS_CHANNELS_PROCESSES"

#: Exit code for a boot failure (bad settings, unreachable layer), distinct from
#: a crash so that a platform does not restart into a crash loop unnoticed.
EXIT_BOOT_ERROR = 3

MODES = {
    "combined": "Daphne and worker threads in one process, on one layer (in-memory unless REDIS_URL is set)",
    "web": "the interface server: Daphne turning HTTP/WebSocket into channel messages (split mode)",
    "worker": "a worker: runs consumers and Django views for messages on the layer (split mode)",
    "wsgi": "plain WSGI on gevent with WhiteNoise, for a project without CHANNEL_LAYERS",
}


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def parse_bool(value: str | bool) -> bool:
    """``1/0, true/false, yes/no, on/off`` (any case; empty is false) as a bool; ValueError otherwise."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true/false (1/0, yes/no, on/off); got {value!r}")


def _int(value: str | int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected an integer; got {value!r}") from None


def _positive_int(value: str | int) -> int:
    number = _int(value)
    if number < 1:
        raise ValueError(f"expected a positive integer; got {value!r}")
    return number


def _non_negative_int(value: str | int) -> int:
    number = _int(value)
    if number < 0:
        raise ValueError(f"expected 0 or a positive integer; got {value!r}")
    return number


def _positive_float(value: str | float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number of seconds; got {value!r}") from None
    if number <= 0:
        raise ValueError(f"expected a positive number of seconds; got {value!r}")
    return number


_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3}


def _byte_size(value: str | int) -> int:
    """A size in bytes: ``104857600``, ``100MB``, ``512k`` (binary units); 0 means no limit."""
    if isinstance(value, int) and not isinstance(value, bool):
        number, unit = value, ""
    else:
        text = str(value).strip().lower()
        digits = text.rstrip("kmgb")
        number, unit = digits.strip(), text[len(digits):]
        if unit not in _SIZE_UNITS or not number.isdigit():
            raise ValueError(f"expected a size in bytes such as 104857600, 100MB or 512KB; got {value!r}")
        number = int(number)
    if number < 0:
        raise ValueError(f"expected 0 (no limit) or a positive size; got {value!r}")
    return number * _SIZE_UNITS[unit]
def _non_negative_float(value: str | float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number of seconds; got {value!r}") from None
    if number < 0:
        raise ValueError(f"expected 0 or a positive number of seconds; got {value!r}")
    return number


def _port(value: str | int) -> int:
    number = _int(value)
    if not 0 <= number <= 65535:
        raise ValueError(f"expected a TCP port 0-65535; got {value!r}")
    return number


@dataclass(frozen=True)
class Option:
    """One setting of a process: its flags, environment variable, default and meaning."""

    name: str
    flags: tuple[str, ...]
    help: str
    default: Any = None
    env: str | None = None
    type: Callable[[Any], Any] = str
    modes: frozenset[str] = frozenset(MODES)
    repeatable: bool = False  # flag may be given several times; env is comma-separated
    flag_only: bool = False  # a switch: present means True
    choices: tuple[str, ...] | None = None
    secret: bool = False


_WEB = frozenset({"web", "combined", "wsgi"})
_WORKER = frozenset({"worker", "combined"})
_CHANNELS = frozenset({"web", "worker", "combined"})

OPTIONS: tuple[Option, ...] = (
    Option("settings", ("--settings",), "Django settings module (else DJANGO_SETTINGS_MODULE, else found from ./manage.py)",
           env="DJANGO_SETTINGS_MODULE"),
    Option("log_level", ("--log-level",), "logging level", default="info", env="PAAS_CHANNELS_LOG_LEVEL",
           choices=("debug", "info", "warning", "error")),
    Option("layer", ("--layer",), "alias in CHANNEL_LAYERS to use", default="default", env="PAAS_CHANNELS_LAYER",
           modes=_CHANNELS),
    Option("bind", ("-b", "--bind"), "address to listen on", default="0.0.0.0", env="PAAS_CHANNELS_BIND", modes=_WEB),
    Option("port", ("-p", "--port"), "TCP port to listen on", default=8000, env="PORT", type=_port, modes=_WEB),
    Option("http_timeout", ("--http-timeout",),
           "seconds an HTTP request waits for a worker's reply before a 503 (default 120; 25 on Heroku)",
           default=None, env="PAAS_CHANNELS_HTTP_TIMEOUT", type=_positive_float, modes=frozenset({"web", "combined"})),
    Option("ws_protocols", ("--ws-protocol",), "WebSocket subprotocol the server may choose (repeatable)",
           default=(), env="CHANNELS_WS_PROTOCOLS", repeatable=True, modes=frozenset({"web", "combined"})),
    Option("proxy_headers", ("--proxy-headers",), "take client address and scheme from X-Forwarded-For/-Proto",
           default=False, env="PAAS_CHANNELS_PROXY_HEADERS", type=parse_bool, flag_only=True, modes=_WEB),
    Option("root_path", ("--root-path",), "URL prefix the app is mounted under", default="",
           env="PAAS_CHANNELS_ROOT_PATH", modes=_WEB),
    Option("max_body_size", ("--max-body-size",),
           "largest request body accepted, e.g. 100MB; a bigger one is answered 413 before any worker sees it "
           "(0: no limit)",
           default=100 * 1024 * 1024, env="PAAS_CHANNELS_MAX_BODY_SIZE", type=_byte_size,
           modes=frozenset({"web", "combined"})),
    Option("header_timeout", ("--header-timeout",),
           "seconds a client has to send a request's headers (slowloris trickling a byte at a time is cut)",
           default=20.0, env="PAAS_CHANNELS_HEADER_TIMEOUT", type=_positive_float,
           modes=frozenset({"web", "combined"})),
    Option("ping_interval", ("--ping-interval",), "seconds between WebSocket pings (under Heroku's 55 s idle limit)",
           default=20.0, env="PAAS_CHANNELS_PING_INTERVAL", type=_positive_float, modes=frozenset({"web", "combined"})),
    Option("processes", ("--processes",),
           "processes of this mode on the dyno, sharing one listening socket under a supervisor (1: no "
           "supervisor, one process); Heroku sets WEB_CONCURRENCY by dyno size",
           default=1, env="WEB_CONCURRENCY", type=_positive_int),
    Option("threads", ("--threads",),
           "worker threads per process; with web --http direct: threads serving HTTP (default 1; combined and "
           "web: 4)",
           default=None, env="PAAS_CHANNELS_THREADS", type=_positive_int, modes=frozenset({"worker", "combined", "web"})),
    Option("timeout", ("--timeout",),
           "with --processes > 1: seconds a process may go without reporting to its supervisor before it is "
           "killed and replaced (gunicorn's --timeout)",
           default=30.0, env="PAAS_CHANNELS_TIMEOUT", type=_positive_float),
    Option("gevent", ("--gevent",), "run consumers in a pool of N greenlets instead of threads (I/O-bound work)",
           default=0, env="PAAS_CHANNELS_GEVENT", type=_non_negative_int, modes=frozenset({"worker"})),
    Option("only_channels", ("--only-channels",), "only consume channels matching this glob (repeatable)",
           default=(), env="PAAS_CHANNELS_ONLY_CHANNELS", repeatable=True, modes=_WORKER),
    Option("exclude_channels", ("--exclude-channels",), "never consume channels matching this glob (repeatable)",
           default=(), env="PAAS_CHANNELS_EXCLUDE_CHANNELS", repeatable=True, modes=_WORKER),
    Option("allowed_origins", ("--allowed-origin",),
           "host pattern a WebSocket Origin may have (repeatable; default: settings.ALLOWED_HOSTS)",
           default=(), env="PAAS_CHANNELS_ALLOWED_ORIGINS", repeatable=True, modes=frozenset({"web", "combined"})),
    Option("http", ("--http",),
           "how plain HTTP reaches Django: 'layer' (through the workers) or 'direct' (the WSGI app in this "
           "process's thread pool; WebSockets and long-poll paths still go through the layer); default layer, "
           "direct for combined with --processes > 1",
           default="layer", env="PAAS_CHANNELS_HTTP", choices=("layer", "direct"), modes=frozenset({"web", "combined"})),
    Option("long_poll_paths", ("--long-poll-path",),
           "with --http direct: a path regex still sent through the layer (repeatable; ROUTING's non-view "
           "http.request routes are added)",
           default=(), env="PAAS_CHANNELS_LONG_POLL_PATHS", repeatable=True, modes=frozenset({"web", "combined"})),
    Option("endpoints", ("-e", "--endpoint"),
           "Twisted endpoint string to listen on, e.g. TLS with HTTP/2: ssl:8443:privateKey=key.pem:certKey=cert.pem "
           "(repeatable; with -e only, no plain --bind/--port listener unless one of them or $PORT is given)",
           default=(), env="PAAS_CHANNELS_ENDPOINTS", repeatable=True, modes=frozenset({"web", "combined"})),
    Option("no_access_log", ("--no-access-log",),
           "no access log (else one line per HTTP request: method, path, status, bytes, duration, X-Request-ID)",
           default=False, env="PAAS_CHANNELS_NO_ACCESS_LOG", type=parse_bool, flag_only=True, modes=_WEB),
    Option("ws_drain", ("--ws-drain",),
           "seconds over which SIGTERM closes the WebSockets (1012), so their reconnects reach the new "
           "processes spread out, not all at once; at most half of --graceful-timeout; 0: all at once",
           default=5.0, env="PAAS_CHANNELS_WS_DRAIN", type=_non_negative_float, modes=frozenset({"web", "combined"})),
    Option("graceful_timeout", ("--graceful-timeout",),
           "seconds to finish in-flight work after SIGTERM (under Heroku's 30 s)", default=25.0,
           env="PAAS_CHANNELS_GRACEFUL_TIMEOUT", type=_positive_float),
)

_BY_NAME = {option.name: option for option in OPTIONS}


def on_heroku(environ: Mapping[str, str]) -> bool:
    """Heroku sets ``DYNO`` in every dyno."""
    return bool(environ.get("DYNO"))


@dataclass(frozen=True)
class Config:
    """The effective options of one process; built once by :func:`load_config`."""

    mode: str
    values: Mapping[str, Any]
    sources: Mapping[str, str] = field(default_factory=dict)
    #: Set in a process started by the supervisor (``--processes`` > 1): the
    #: listening socket it inherited (a file descriptor, None for a worker), and
    #: that a repeated SIGTERM is the platform and the supervisor both stopping
    #: it, not a request to force.
    supervised: bool = False
    listen_fd: int | None = None

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        # The dataclass repr would show every value; describe() masks the secret ones.
        return f"<Config {self.describe()}>"
    def concurrency(self) -> str:
        """What runs inside one process of this mode, for the "processes x threads" line."""
        if self.mode == "wsgi":
            return "gevent greenlets (one per request)"
        if self.mode == "worker":
            return f"{self.gevent} greenlet(s)" if self.values.get("gevent") else f"{self.threads} thread(s)"
        if self.mode == "web":
            return f"{self.threads} HTTP thread(s)" if self.values.get("http") == "direct" else "one event loop"
        if self.values.get("http") == "direct":
            return f"{self.threads} worker thread(s) + {self.threads} HTTP thread(s) (--http direct)"
        return f"{self.threads} worker thread(s)"

    def describe(self) -> str:
        """One line of the effective options and where each came from; secrets masked."""
        parts = []
        for name, value in sorted(self.values.items()):
            option = _BY_NAME.get(name)
            if option is not None and self.mode not in option.modes:
                continue
            shown = "****" if option is not None and option.secret and value else value
            if isinstance(shown, tuple):
                shown = ",".join(shown) or "-"
            parts.append(f"{name}={shown}({self.sources.get(name, 'default')})")
        return f"mode={self.mode} " + " ".join(parts)


def add_arguments(parser: argparse.ArgumentParser, mode: str | None = None, skip: tuple[str, ...] = ()) -> None:
    """Add every option (only ``mode``'s, minus ``skip``) as a flag; defaults are left to :func:`load_config`."""
    for option in OPTIONS:
        if (mode is not None and mode not in option.modes) or option.name in skip:
            continue
        kwargs: dict[str, Any] = {"dest": option.name, "default": None}
        where = "" if option.modes == frozenset(MODES) else f" [{', '.join(sorted(option.modes))}]"
        env = f" (env {option.env})" if option.env else ""
        kwargs["help"] = f"{option.help}{where}{env}"
        if option.flag_only:
            kwargs["action"] = "store_const"
            kwargs["const"] = True
        elif option.repeatable:
            kwargs["action"] = "append"
        if option.choices:
            kwargs["choices"] = option.choices
        parser.add_argument(*option.flags, **kwargs)


def load_config(mode: str, cli: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Effective configuration for ``mode`` from the command line, environment and defaults."""
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; expected one of: {', '.join(MODES)}")
    environ = os.environ if environ is None else environ
    cli_values = {key: value for key, value in (cli or {}).items() if value is not None and key in _BY_NAME}
    env_values: dict[str, Any] = {}
    for option in OPTIONS:
        if option.env and environ.get(option.env, "") != "":
            env_values[option.name] = environ[option.env]
    defaults = {option.name: option.default for option in OPTIONS}
    defaults["http_timeout"] = 25.0 if on_heroku(environ) else 120.0
    defaults["threads"] = 4 if mode in ("combined", "web") else 1
    chain = ChainMap(cli_values, env_values, defaults)
    if mode == "combined" and _processes_or_one(chain["processes"]) > 1:
        # Every process of a combined dyno runs the same code and has workers of its own:
        # a plain view sent over the layer to another process only adds hops (measured:
        # bench/dyno.py, about 0.4x of gunicorn's requests/s over the IPC layer, 1.1x direct).
        defaults["http"] = "direct"

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in OPTIONS:
        raw = chain[option.name]
        source = "cli" if option.name in cli_values else "env" if option.name in env_values else "default"
        try:
            values[option.name] = _convert(option, raw, source)
        except (TypeError, ValueError) as exc:
            where = {
                "cli": "/".join(option.flags),
                "env": f"environment variable {option.env}",
                "default": "default",
            }[source]
            raise ConfigError(f"{where}: {exc}") from None
        sources[option.name] = source
    return Config(mode=mode, values=values, sources=sources)


def _processes_or_one(raw: Any) -> int:
    try:
        return _positive_int(raw)
    except ValueError:
        return 1  # reported with the option's name by load_config


def _convert(option: Option, raw: Any, source: str) -> Any:
    if raw is None:
        return None
    if option.repeatable:
        items: list[str] = []
        for entry in raw if isinstance(raw, (list, tuple)) else [raw]:
            items.extend(_csv(str(entry)))
        return tuple(items)
    if option.flag_only and source == "cli":
        return True
    value = option.type(raw) if option.type is not str else str(raw)
    if option.choices and value not in option.choices:
        raise ValueError(f"expected one of {', '.join(option.choices)}; got {value!r}")
    return value
