"""Django settings from the environment, the twelve-factor way, in one call.

At the end of a project's ``settings.py``::

    from paas_channels.conf import configure
    configure(globals(), routing="myproject.routing.channel_routing")

fills in, from ``os.environ``, every setting the file has not set itself:
``CHANNEL_LAYERS`` (``REDIS_TLS_URL``/``REDIS_URL``; several comma-separated
URLs are shards; else ``CLOUDAMQP_URL``/``RABBITMQ_URL`` for RabbitMQ; none
gives the in-memory layer), ``DATABASES`` (``DATABASE_URL``
through dj-database-url, SQLite by default), ``SECRET_KEY`` (required unless
``DEBUG``), ``DEBUG``, ``ALLOWED_HOSTS``, WhiteNoise in ``MIDDLEWARE`` and
``STORAGES``, ``SECURE_PROXY_SSL_HEADER`` on a PaaS, and ``LOGGING`` to stdout.

A value the settings file assigns before the call is kept; one it assigns after
the call replaces ours.  :func:`settings_from_env` is the pure part: it returns
the dict without touching any namespace, for projects that prefer to merge it
themselves.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping, MutableMapping
from urllib.parse import urlsplit

from ..exceptions import ConfigError
from ..layers.rabbitmq.urls import config_from_env as rabbitmq_from_env
from ..layers.redis.hosts import hosts_from_env, redact_url
from .options import LOG_FORMAT, parse_bool

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


def _channel_layers(environ: Mapping[str, str], routing: str | None) -> dict[str, Any]:
    # Redis first: an app that has both add-ons keeps the layer it ran on before RabbitMQ was supported.
    config = hosts_from_env(environ)
    if config is not None:
        entry: dict[str, Any] = {"BACKEND": "paas_channels.layers.RedisChannelLayer", "CONFIG": config}
    else:
        try:
            amqp = rabbitmq_from_env(environ)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if amqp is not None:
            entry = {"BACKEND": "paas_channels.layers.RabbitMQChannelLayer", "CONFIG": amqp}
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
            "paas": {"format": LOG_FORMAT},
        },
        # A PaaS collects stdout into its log stream (heroku logs, fly logs).
        "handlers": {"stdout": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "formatter": "paas"}},
        "root": {"handlers": ["stdout"], "level": level},
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
    ``debug``/``secret_key`` are values the settings file already chose (they
    win over the environment).  Raises :class:`ConfigError` when
    ``SECRET_KEY`` is missing outside DEBUG or a URL is unusable.
    """
    environ = os.environ if environ is None else environ
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    platform = on_paas(environ)
    if debug is None:
        debug = _env_bool(environ, "DEBUG", False)
    if secret_key is None:
        secret_key = environ.get("SECRET_KEY") or environ.get("DJANGO_SECRET_KEY") or None
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
        "ALLOWED_HOSTS": _allowed_hosts(environ),
        "CHANNEL_LAYERS": _channel_layers(environ, routing),
        "DATABASES": _databases(environ, base, platform),
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
    return result


def _with_whitenoise(middleware: list[str]) -> list[str]:
    if WHITENOISE_MIDDLEWARE in middleware:
        return middleware
    middleware = list(middleware)
    # WhiteNoise's docs: directly after SecurityMiddleware, above everything else.
    index = middleware.index(_SECURITY_MIDDLEWARE) + 1 if _SECURITY_MIDDLEWARE in middleware else 0
    middleware.insert(index, WHITENOISE_MIDDLEWARE)
    return middleware


def configure(
    namespace: MutableMapping[str, Any],
    *,
    routing: str | None = None,
    environ: Mapping[str, str] | None = None,
    whitenoise: bool = True,
) -> dict[str, Any]:
    """Fill a settings module's ``globals()`` from the environment; never overwrite.

    Every setting the module already defines is kept as it is, except that
    WhiteNoise is added to an existing ``MIDDLEWARE`` (unless already there or
    ``whitenoise=False``) and a missing ``"staticfiles"`` entry is added to an
    existing ``STORAGES``.  ``DEBUG`` and ``SECRET_KEY`` already set in the
    module are honoured by the derived values.  Returns what was set.
    """
    base_dir = namespace.get("BASE_DIR")
    values = settings_from_env(
        environ,
        base_dir=base_dir,
        routing=routing,
        debug=namespace.get("DEBUG"),
        secret_key=namespace.get("SECRET_KEY"),
    )
    applied: dict[str, Any] = {}
    for name, value in values.items():
        if name == "STORAGES" and isinstance(namespace.get(name), dict):
            if "staticfiles" not in namespace[name]:
                namespace[name] = {**namespace[name], "staticfiles": value["staticfiles"]}
                applied[name] = namespace[name]
            continue
        if name not in namespace:
            namespace[name] = value
            applied[name] = value
    if whitenoise:
        middleware = namespace.get("MIDDLEWARE")
        if middleware is None:
            middleware = [_SECURITY_MIDDLEWARE]
        updated = _with_whitenoise(list(middleware))
        if updated != list(middleware) or "MIDDLEWARE" not in namespace:
            namespace["MIDDLEWARE"] = updated
            applied["MIDDLEWARE"] = updated
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
    parts = [f"DEBUG={getattr(settings, 'DEBUG', False)}"]
    parts.append("SECRET_KEY=" + ("****" if getattr(settings, "SECRET_KEY", "") else "unset"))
    parts.append("ALLOWED_HOSTS=" + ",".join(getattr(settings, "ALLOWED_HOSTS", []) or ["-"]))
    layers = getattr(settings, "CHANNEL_LAYERS", None) or {}
    for alias, entry in layers.items():
        backend = str(entry.get("BACKEND", "?")).rsplit(".", 1)[-1]
        shown = ",".join(layer_addresses(entry.get("CONFIG")))
        parts.append(f"layer[{alias}]={backend}" + (f"({shown})" if shown else ""))
    if not layers:
        parts.append("layer=none")
    database = (getattr(settings, "DATABASES", None) or {}).get("default", {})
    if database:
        engine = str(database.get("ENGINE", "?")).rsplit(".", 1)[-1]
        where = database.get("HOST") or database.get("NAME") or ""
        parts.append(f"database={engine}:{where}")
    parts.append("whitenoise=" + ("on" if WHITENOISE_MIDDLEWARE in getattr(settings, "MIDDLEWARE", []) else "off"))
    return " ".join(parts)
