"""Django settings from the environment, the twelve-factor way, in one call.

At the end of a project's ``settings.py``::

    from paas_channels.conf import configure
    configure(globals(), routing="myproject.routing.channel_routing")

Precedence, for every setting it knows: **environment > settings file >
default**.  ``DEBUG``, ``SECRET_KEY`` (or ``DJANGO_SECRET_KEY``),
``ALLOWED_HOSTS``, ``DATABASES`` (``DATABASE_URL``) and ``CHANNEL_LAYERS``
(``REDIS_TLS_URL``/``REDIS_URL``, else ``CLOUDAMQP_URL``/``RABBITMQ_URL`` for
RabbitMQ) replace what the file assigned before the
call when their variable is set, so a ``startproject`` file's ``DEBUG = True``
and SQLite do not survive on a platform.  Without the variable the file's value
is kept (an empty ``ALLOWED_HOSTS = []`` counts as unset), else the default:
in-memory layer (the IPC layer when several processes run:
``--processes``/``WEB_CONCURRENCY`` > 1), SQLite, local hosts plus the platform's own domain.  On a
platform (``DYNO``, ``RENDER``, ``FLY_APP_NAME``, Dokku) the file's ``DEBUG``
is ignored: DEBUG is on only when the environment says ``DEBUG=1``.

It also adds ``paas_channels`` to ``INSTALLED_APPS`` (``manage.py runworker``),
WhiteNoise to ``MIDDLEWARE`` and ``STORAGES``, ``TIME_ZONE = "UTC"`` and
``LOGGING`` (see :func:`_logging`) when the file has none, and, on a platform
with DEBUG off, the settings a TLS-terminating router needs (proxy header, SSL
redirect, secure cookies, HSTS for an hour): defaults the file may turn down by
assigning them.  A value assigned *after* the call replaces ours.  Where each
value came from is kept in ``PAAS_CHANNELS_SETTINGS_SOURCES`` and logged at
start.  :func:`settings_from_env` is the pure part: the dict from the
environment, without touching any namespace.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping, MutableMapping
from urllib.parse import urlsplit

from ..exceptions import ConfigError
from ..layers.rabbitmq.urls import config_from_env as rabbitmq_from_env
from ..layers.redis.hosts import hosts_from_env, redact_url
from .options import LOG_FORMAT, PROCESSES_ENV, parse_bool

logger = logging.getLogger(__name__)

__all__ = ["configure", "describe_settings", "layer_addresses", "mask_url", "on_paas", "settings_from_env"]

WHITENOISE_MIDDLEWARE = "whitenoise.middleware.WhiteNoiseMiddleware"
_SECURITY_MIDDLEWARE = "django.middleware.security.SecurityMiddleware"
_LOCAL_HOSTS = ["localhost", "127.0.0.1", "[::1]"]


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: safe to log or put in an error."""
    return redact_url(url)


def on_paas(environ: Mapping[str, str]) -> str | None:
    """The platform this process runs on (heroku, render, fly, dokku), or None.

    Each of them sets a variable of its own in every process, and each puts a
    TLS-terminating proxy in front that sends ``X-Forwarded-Proto``.
    """
    if environ.get("DYNO"):
        return "heroku"
    if environ.get("RENDER"):
        return "render"
    if environ.get("FLY_APP_NAME"):
        return "fly"
    if environ.get("DOKKU_APP_TYPE") or environ.get("DOKKU_PROXY_PORT"):
        return "dokku"
    return None


def _env_bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name)
    if raw is None:
        return default
    try:
        return parse_bool(raw)
    except ValueError as exc:
        raise ConfigError(f"environment variable {name}: {exc}") from None


def _split_list(raw: str) -> list[str]:
    return [part for part in re.split(r"[\s,]+", raw) if part]


### Channel layer ###


def _processes(environ: Mapping[str, str]) -> int:
    """How many processes of this app run on this machine: what ``paas-channels run`` was told, else
    ``WEB_CONCURRENCY`` (a management command on a dyno shares the layer with them too)."""
    for name in (PROCESSES_ENV, "WEB_CONCURRENCY"):
        raw = environ.get(name, "").strip()
        if raw.isdigit():
            return int(raw)
    return 1


def _ipc_prefix(environ: Mapping[str, str], base_dir: Path) -> str:
    """Same for every process of one project on one machine, different for another project (or checkout)."""
    module = re.sub(r"[^a-zA-Z\d\-_.]", "-", environ.get("DJANGO_SETTINGS_MODULE", "") or "paas-channels")[:31]
    return f"{module}.{hashlib.sha1(str(base_dir.resolve()).encode()).hexdigest()[:8]}"


def _channel_layers(environ: Mapping[str, str], routing: str | None, base_dir: Path) -> dict[str, Any]:
    # Redis first: an app that has both add-ons keeps the layer it ran on before RabbitMQ was supported.
    config = hosts_from_env(environ)
    try:
        amqp = None if config is not None else rabbitmq_from_env(environ)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if config is not None:
        entry: dict[str, Any] = {"BACKEND": "paas_channels.layers.RedisChannelLayer", "CONFIG": config}
    elif amqp is not None:
        entry = {"BACKEND": "paas_channels.layers.RabbitMQChannelLayer", "CONFIG": amqp}
    elif _processes(environ) > 1:
        # Several processes on this dyno and no Redis: they share channels and groups over IPC.
        entry = {"BACKEND": "paas_channels.layers.IPCChannelLayer", "CONFIG": {"prefix": _ipc_prefix(environ, base_dir)}}
    else:
        entry = {"BACKEND": "paas_channels.layers.InMemoryChannelLayer", "CONFIG": {}}
    if routing:
        entry["ROUTING"] = routing
    return {"default": entry}


### Database ###


def _databases(environ: Mapping[str, str], base_dir: Path, platform: str | None) -> dict[str, Any]:
    import dj_database_url

    url = environ.get("DATABASE_URL", "").strip() or f"sqlite:///{base_dir / 'db.sqlite3'}"
    raw_age = environ.get("CONN_MAX_AGE", "600")
    try:
        conn_max_age = int(raw_age)
    except ValueError:
        raise ConfigError(
            f"environment variable CONN_MAX_AGE: expected seconds as an integer (0 closes after each request); "
            f"got {raw_age!r}"
        ) from None
    scheme = urlsplit(url).scheme
    # Heroku Postgres only accepts TLS; SQLite has no such option.
    ssl_require = _env_bool(environ, "DATABASE_SSL_REQUIRE", platform == "heroku") and not scheme.startswith("sqlite")
    try:
        database = dj_database_url.parse(
            url, conn_max_age=conn_max_age, conn_health_checks=conn_max_age > 0, ssl_require=ssl_require
        )
    except ValueError as exc:
        schemes = ", ".join(sorted(getattr(dj_database_url, "ENGINE_SCHEMES", {}))) or "postgres, mysql, sqlite"
        raise ConfigError(
            f"environment variable DATABASE_URL: {mask_url(url)!r} cannot be used ({type(exc).__name__}); "
            f"expected a URL such as postgres://user:password@host:5432/name with one of the schemes: {schemes}"
        ) from None
    return {"default": dict(database)}


### Hosts, static files, logging ###


def _allowed_hosts(environ: Mapping[str, str]) -> list[str]:
    raw = environ.get("ALLOWED_HOSTS", "").strip()
    if raw:
        return _split_list(raw)
    hosts = list(_LOCAL_HOSTS)
    platform_hosts = [
        environ.get("HEROKU_APP_DEFAULT_DOMAIN_NAME", ""),
        f"{environ['HEROKU_APP_NAME']}.herokuapp.com" if environ.get("HEROKU_APP_NAME") else "",
        environ.get("RENDER_EXTERNAL_HOSTNAME", ""),
        f"{environ['FLY_APP_NAME']}.fly.dev" if environ.get("FLY_APP_NAME") else "",
    ]
    hosts.extend(host for host in platform_hosts if host)
    return hosts


def _logging(environ: Mapping[str, str]) -> dict[str, Any]:
    level = (environ.get("PAAS_CHANNELS_LOG_LEVEL") or environ.get("DJANGO_LOG_LEVEL") or "info").upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ConfigError(f"log level {level.lower()!r} is not one of debug, info, warning, error, critical")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "paas": {"class": "paas_channels.config.options.UTCFormatter", "format": LOG_FORMAT},
        },
        # The one logging rule: every log line (access log and consumer tracebacks
        # included) goes to stderr in LOG_FORMAT; stdout is what a command prints
        # as its answer (check, status, init).  A PaaS collects both streams.
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "paas"}},
        "root": {"handlers": ["stderr"], "level": level},
        # Django's own request logger: without DEBUG's console handler, but
        # propagating to root, so a 404 or a traceback is printed once.
        "loggers": {"django": {"handlers": [], "level": level, "propagate": True}},
    }


### The public calls ###


def settings_from_env(
    environ: Mapping[str, str] | None = None,
    *,
    base_dir: str | Path | None = None,
    routing: str | None = None,
    debug: bool | None = None,
    secret_key: str | None = None,
) -> dict[str, Any]:
    """Settings derived from ``environ`` (default ``os.environ``), as a dict.

    ``base_dir`` holds the default SQLite file and ``staticfiles/``; ``routing``
    is the dotted path put in ``CHANNEL_LAYERS['default']['ROUTING']``;
    ``debug``/``secret_key`` are what the settings file chose, used where the
    environment has no ``DEBUG``/``SECRET_KEY`` (a file's ``debug`` is ignored
    on a platform).  Raises :class:`ConfigError` when ``SECRET_KEY`` is missing
    outside DEBUG or a URL is unusable.
    """
    environ = os.environ if environ is None else environ
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    platform = on_paas(environ)
    if "DEBUG" in environ or debug is None or platform:
        debug = _env_bool(environ, "DEBUG", False)
    secret_key = environ.get("SECRET_KEY") or environ.get("DJANGO_SECRET_KEY") or secret_key
    if not secret_key:
        if not debug:
            raise ConfigError(
                "SECRET_KEY is not set: set the SECRET_KEY environment variable (on Heroku: "
                "heroku config:set SECRET_KEY=$(python -c 'import secrets; print(secrets.token_urlsafe(50))')), "
                "or set DEBUG=1 for local development"
            )
        secret_key = "django-insecure-debug-only-" + "x" * 32
    static_root = base / "staticfiles"
    result: dict[str, Any] = {
        "DEBUG": debug,
        "SECRET_KEY": secret_key,
        # The DEBUG=1 error page must not show the layer's Redis/AMQP password.
        "DEFAULT_EXCEPTION_REPORTER_FILTER": "paas_channels.config.reporting.SecretsFilter",
        "ALLOWED_HOSTS": _allowed_hosts(environ),
        "CHANNEL_LAYERS": _channel_layers(environ, routing, base),
        "DATABASES": _databases(environ, base, platform),
        "TIME_ZONE": "UTC",
        "STATIC_URL": "static/",
        "STATIC_ROOT": static_root,
        # Serve from the apps' static folders until collectstatic has filled STATIC_ROOT,
        # so that a fresh checkout works without a build step.
        "WHITENOISE_USE_FINDERS": debug or not static_root.is_dir(),
        "STORAGES": {
            "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
            # Not the Manifest variant: it fails every {% static %} until collectstatic ran.
            "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
        },
        "LOGGING": _logging(environ),
    }
    if platform or _env_bool(environ, "PAAS_CHANNELS_PROXY_HEADERS", False):
        result["SECURE_PROXY_SSL_HEADER"] = ("HTTP_X_FORWARDED_PROTO", "https")
    if platform and not debug:
        result.update(_ROUTER_SECURITY)
    return result


#: Behind a platform's TLS-terminating router with DEBUG off: what ``check --deploy``
#: asks for (W008, W012, W016, W004).  HSTS starts at an hour, so a mistake
#: expires quickly; raise it (or set 0) in the settings file.  Preloading is a
#: separate decision (a submission to the browsers' lists): not on by default.
_ROUTER_SECURITY: dict[str, Any] = {
    "SECURE_SSL_REDIRECT": True,
    "SESSION_COOKIE_SECURE": True,
    "CSRF_COOKIE_SECURE": True,
    "SECURE_HSTS_SECONDS": 3600,
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
}

#: Environment variables that, when set, make a setting override the settings file's.
_ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "DEBUG": ("DEBUG",),
    "SECRET_KEY": ("SECRET_KEY", "DJANGO_SECRET_KEY"),
    "ALLOWED_HOSTS": ("ALLOWED_HOSTS",),
    "DATABASES": ("DATABASE_URL",),
    "CHANNEL_LAYERS": ("REDIS_TLS_URL", "REDIS_URL", "CLOUDAMQP_URL", "RABBITMQ_URL"),
}
_IN_MEMORY = "paas_channels.layers.InMemoryChannelLayer"


def _with_whitenoise(middleware: list[str]) -> list[str]:
    if WHITENOISE_MIDDLEWARE in middleware:
        return middleware
    middleware = list(middleware)
    # WhiteNoise's docs: directly after SecurityMiddleware, above everything else.
    index = middleware.index(_SECURITY_MIDDLEWARE) + 1 if _SECURITY_MIDDLEWARE in middleware else 0
    middleware.insert(index, WHITENOISE_MIDDLEWARE)
    return middleware


def _env_variable(name: str, environ: Mapping[str, str], values: Mapping[str, Any]) -> str | None:
    """The environment variable that sets ``name``, or None when the environment says nothing about it."""
    variable = next((var for var in _ENV_OVERRIDES.get(name, ()) if environ.get(var, "").strip()), None)
    if name == "CHANNEL_LAYERS" and values[name]["default"]["BACKEND"] == _IN_MEMORY:
        return None
    return variable


def _overridden(name: str, current: Any, value: Any) -> Any:
    """The environment's ``value`` for ``name`` merged into the file's ``current`` (other aliases kept)."""
    if name == "DATABASES" and isinstance(current, dict):
        return {**current, "default": value["default"]}
    if name == "CHANNEL_LAYERS" and isinstance(current, dict):
        old, new = current.get("default") or {}, dict(value["default"])
        if old.get("BACKEND") == new["BACKEND"]:
            new["CONFIG"] = {**(old.get("CONFIG") or {}), **new["CONFIG"]}
        if "ROUTING" in old and "ROUTING" not in new:
            new["ROUTING"] = old["ROUTING"]
        return {**current, "default": new}
    return value


def configure(
    namespace: MutableMapping[str, Any],
    *,
    routing: str | None = None,
    environ: Mapping[str, str] | None = None,
    whitenoise: bool = True,
) -> dict[str, Any]:
    """Fill a settings module's ``globals()``: environment > settings file > default.

    A setting whose environment variable is set (``_ENV_OVERRIDES``) replaces
    the file's; any other setting the file defines is kept (``ALLOWED_HOSTS =
    []`` counts as undefined).  ``paas_channels`` joins an ``INSTALLED_APPS``
    that lacks it, WhiteNoise an existing ``MIDDLEWARE`` (unless
    ``whitenoise=False``), a missing ``"staticfiles"`` entry an existing
    ``STORAGES``.  Records where each value came from in
    ``PAAS_CHANNELS_SETTINGS_SOURCES``.  Returns what was set.
    """
    environ = os.environ if environ is None else environ
    values = settings_from_env(
        environ,
        base_dir=namespace.get("BASE_DIR"),
        routing=routing,
        debug=namespace.get("DEBUG"),
        secret_key=namespace.get("SECRET_KEY"),
    )
    platform = on_paas(environ)
    if namespace.get("ALLOWED_HOSTS") == []:
        del namespace["ALLOWED_HOSTS"]  # Django's default, what startproject writes: not a choice
    sources: dict[str, str] = dict(namespace.get("PAAS_CHANNELS_SETTINGS_SOURCES") or {})
    applied: dict[str, Any] = {}
    for name, value in values.items():
        variable = _env_variable(name, environ, values)
        if variable is not None:
            namespace[name] = applied[name] = _overridden(name, namespace.get(name), value)
            sources[name] = f"env {variable}"
        elif name == "DEBUG" and platform:
            namespace[name] = applied[name] = value  # on a platform DEBUG is on only when the environment says so
            sources[name] = "platform"
        elif name == "STORAGES" and isinstance(namespace.get(name), dict):
            if "staticfiles" not in namespace[name]:
                namespace[name] = applied[name] = {**namespace[name], "staticfiles": value["staticfiles"]}
            sources.setdefault(name, "file")
        elif name not in namespace:
            namespace[name] = applied[name] = value
            sources[name] = "default"
        else:
            sources.setdefault(name, "file")
    if "SECURE_HSTS_SECONDS" in applied and "SECURE_HSTS_PRELOAD" not in namespace:
        silenced = list(namespace.get("SILENCED_SYSTEM_CHECKS", []))
        # W021 asks for preload, which is a submission to the browsers' lists: the user's decision.
        namespace["SILENCED_SYSTEM_CHECKS"] = applied["SILENCED_SYSTEM_CHECKS"] = [*silenced, "security.W021"]
    apps = namespace.get("INSTALLED_APPS")
    if apps is not None and "paas_channels" not in apps:
        namespace["INSTALLED_APPS"] = applied["INSTALLED_APPS"] = [*apps, "paas_channels"]
    if whitenoise:
        middleware = namespace.get("MIDDLEWARE")
        if middleware is None:
            middleware = [_SECURITY_MIDDLEWARE]
        updated = _with_whitenoise(list(middleware))
        if updated != list(middleware) or "MIDDLEWARE" not in namespace:
            namespace["MIDDLEWARE"] = applied["MIDDLEWARE"] = updated
    if namespace.get("WHITENOISE_USE_FINDERS") and namespace.get("STATIC_ROOT"):
        # WhiteNoise warns in every process that STATIC_ROOT (collectstatic's output) does not
        # exist yet; with the finders serving the files meanwhile, that is the expected state.
        warnings.filterwarnings("ignore", message=re.escape(f"No directory at: {namespace['STATIC_ROOT']}"))
    namespace["PAAS_CHANNELS_SETTINGS_SOURCES"] = sources
    return applied


def host_address(host: Any) -> str:
    """A ``CONFIG['hosts']`` entry (URL, ``{"address": url, ...}`` or ``(host, port)``) as text."""
    if isinstance(host, dict):
        host = host.get("address", "?")
    if isinstance(host, (tuple, list)) and len(host) == 2:
        return f"{host[0]}:{host[1]}"
    return str(host)


def layer_addresses(config: Any) -> list[str]:
    """Where a layer's ``CONFIG`` points (Redis ``hosts``, RabbitMQ ``url``), passwords masked."""
    config = config if isinstance(config, dict) else {}
    hosts = config.get("hosts") or ([config["url"]] if isinstance(config.get("url"), str) else [])
    return [mask_url(host_address(host)) for host in hosts]


def describe_settings(settings: Any) -> str:
    """One line of the effective Django settings that matter to a deployment; secrets masked."""
    sources = getattr(settings, "PAAS_CHANNELS_SETTINGS_SOURCES", None) or {}

    def source(name: str) -> str:
        return f"({sources[name]})" if name in sources else ""

    parts = [f"DEBUG={getattr(settings, 'DEBUG', False)}{source('DEBUG')}"]
    parts.append("SECRET_KEY=" + ("****" if getattr(settings, "SECRET_KEY", "") else "unset") + source("SECRET_KEY"))
    parts.append("ALLOWED_HOSTS=" + ",".join(getattr(settings, "ALLOWED_HOSTS", []) or ["-"]) + source("ALLOWED_HOSTS"))
    layers = getattr(settings, "CHANNEL_LAYERS", None) or {}
    for alias, entry in layers.items():
        backend = str(entry.get("BACKEND", "?")).rsplit(".", 1)[-1]
        shown = ",".join(layer_addresses(entry.get("CONFIG")))
        parts.append(f"layer[{alias}]={backend}" + (f"({shown})" if shown else "")
                     + (source("CHANNEL_LAYERS") if alias == "default" else ""))
    if not layers:
        parts.append("layer=none")
    database = (getattr(settings, "DATABASES", None) or {}).get("default", {})
    if database:
        engine = str(database.get("ENGINE", "?")).rsplit(".", 1)[-1]
        where = database.get("HOST") or database.get("NAME") or ""
        parts.append(f"database={engine}:{where}{source('DATABASES')}")
    parts.append("whitenoise=" + ("on" if WHITENOISE_MIDDLEWARE in getattr(settings, "MIDDLEWARE", []) else "off"))
    return " ".join(parts)
