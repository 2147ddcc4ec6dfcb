"""``paas-channels check [--deploy]``: will this project run, here and on the platform?

Checks, each problem reported as one line that says what is wrong and what to do:

1. the settings load (``SECRET_KEY``, URLs, imports);
2. the channel layer answers (Redis reachable), and so does each database;
3. ``ROUTING`` imports, and the channels the interface server sends to are routed;
4. Procfile, app.json, runtime.txt and .python-version agree with each other and
   with the settings (split mode needs a shared layer, every routed channel needs
   a worker process type that consumes it, ...);
5. Django's own system checks (with ``--deploy``: its deployment checks too,
   whose warnings then count as problems).

Exit status 0 when nothing is wrong, 1 otherwise.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from pathlib import Path
from typing import Any

from django.conf import settings

from ..config.options import Config
from ..config.settings import layer_addresses
from ..exceptions import ConfigError
from ..layers import channel_layer_settings, get_channel_layer, has_channel_layers, layer_class
from ..layers.fingerprint import describe, disagreeing, settings_fingerprint
from ..routing import Router, default_routing
from ..runtime.boot import close_layer, probe_layer, setup_django
from ..worker import select_channels
from . import deployfiles as files

logger = logging.getLogger(__name__)

__all__ = ["LAYER_TIMEOUT", "run_checks"]

#: Seconds the layer gets to answer before it counts as unreachable.
LAYER_TIMEOUT = 10.0
#: Channels the interface server sends to, and what happens when nobody consumes them.
_INTERFACE_CHANNELS = {
    "http.request": "every HTTP request waits for --http-timeout and gets a 503",
    "websocket.receive": "frames from connected sockets pile up until the channel is full",
}


def _settings_problems(config: Config) -> list[str]:
    try:
        setup_django(config)
    except ConfigError as exc:
        return [f"settings: {exc}"]
    except Exception as exc:  # a settings module can raise anything; report it, don't crash
        return [f"settings: loading them raised {type(exc).__name__}: {exc}"]
    # The report is our own lines: keep the project's INFO logging (settings.LOGGING) out of it.
    root = logging.getLogger()
    root.setLevel(max(root.level, logging.WARNING))
    return []


def _layer_problems(alias: str) -> tuple[Any, list[str]]:
    """The layer (or None) and why it cannot be used."""
    try:
        layer = get_channel_layer(alias)
    except ConfigError as exc:
        return None, [f"channel layer: {exc}"]
    try:
        probe_layer(layer, alias, timeout=LAYER_TIMEOUT, at=_hosts_text(layer))
    except ConfigError as exc:
        close_layer(layer)
        return None, [str(exc)]
    try:
        others = disagreeing(layer.heartbeats(), settings_fingerprint(alias))
    except Exception as exc:  # noqa: BLE001 - it answered the probe a moment ago; say so and go on
        return layer, [f"channel layer {alias!r}: its heartbeats cannot be read ({type(exc).__name__}: {exc})"]
    return layer, [f"settings: {describe(others, settings_fingerprint(alias))}"] if others else []


def _hosts_text(layer: Any) -> str:
    entry = (getattr(settings, "CHANNEL_LAYERS", None) or {}).get(getattr(layer, "alias", "default"), {})
    return ", ".join(layer_addresses(entry.get("CONFIG")))


def _routing_problems(alias: str) -> tuple[set[str] | None, list[str]]:
    """The routed channels (None when the routing cannot be loaded) and problems."""
    try:
        path = channel_layer_settings(alias)["ROUTING"]
        router = Router(default_routing() if path is None else path)
    except ConfigError as exc:
        return None, [f"routing: {exc}"]
    except Exception as exc:
        return None, [f"routing: importing CHANNEL_LAYERS[{alias!r}]['ROUTING'] raised {type(exc).__name__}: {exc}"]
    channels = router.channels
    problems = [
        f"routing: no route for {channel!r}: {consequence}; add route({channel!r}, ...) "
        f"(for HTTP: route('http.request', view_consumer))"
        for channel, consequence in _INTERFACE_CHANNELS.items()
        if channel not in channels and (channel != "websocket.receive" or "websocket.connect" in channels)
    ]
    return channels, problems


def _procfile_problems(
    procfile: files.Procfile, app: dict[str, Any] | None, backend: type | None, routed: set[str] | None,
    redis_in_env: bool,
) -> list[str]:
    problems = []
    webs = procfile.by_mode("web")
    workers = procfile.by_mode("worker")
    consumers = procfile.by_mode("worker", "combined", "auto")
    if backend is None and procfile.by_mode("web", "worker", "combined"):
        problems.append(
            "Procfile runs channel processes but the settings define no CHANNEL_LAYERS: add CHANNEL_LAYERS "
            "(paas_channels.conf.configure does it) or serve plain WSGI with 'web: paas-channels run wsgi'"
        )
    if backend is not None:
        for process in procfile.by_mode("wsgi"):
            problems.append(
                f"Procfile line {process.line} ({process.name}): 'run wsgi' serves no WebSockets and no "
                "channels although the settings define CHANNEL_LAYERS; use 'run web' plus a worker, or '--combined'"
            )
    if webs and not workers:
        problems.append(
            "Procfile has a 'run web' process but no 'run worker' process: nothing would answer the requests; "
            "add 'worker: paas-channels run worker' (or run 'web: paas-channels run --combined')"
        )
    if workers and not webs:
        problems.append(
            "Procfile has a 'run worker' process but no 'run web' process: no interface server feeds the layer; "
            "add 'web: paas-channels run web'"
        )
    split = bool(webs or workers)
    plans = files.addon_plans(app) if app else []
    # A shared layer: Redis, or RabbitMQ (the CloudAMQP add-on sets CLOUDAMQP_URL).
    redis_planned = redis_in_env or any("redis" in plan or "cloudamqp" in plan for plan in plans) or (
        bool(app) and bool({"REDIS_URL", "CLOUDAMQP_URL", "RABBITMQ_URL"} & set(app.get("env") or {})))
    if split and backend is not None and backend.reach == "process" and not redis_planned:
        problems.append(
            f"Procfile runs split mode (separate web and worker processes) but the layer is {backend.__name__}, "
            "which processes cannot share and REDIS_URL is set nowhere: add the heroku-redis add-on to app.json "
            "(\"addons\": [\"heroku-redis:mini\"]) or set REDIS_URL"
        )
    if split and backend is not None and backend.reach == "machine" and not redis_planned:
        problems.append(
            f"Procfile runs split mode (separate web and worker processes) but the layer is {backend.__name__}, "
            "which reaches only the processes of one machine: on a PaaS each process type runs on its own dynos, "
            "so web and worker would never see each other's messages. Set REDIS_URL (add the heroku-redis add-on "
            "to app.json) or run 'web: paas-channels run --combined' (its WEB_CONCURRENCY processes share "
            f"{backend.__name__} on one dyno)"
        )
    if routed:
        uncovered = set(routed)
        for process in consumers:
            only = process.options.get("only_channels") or ()
            exclude = process.options.get("exclude_channels") or ()
            for glob in [*only, *exclude]:
                if not any(fnmatch.fnmatchcase(channel, glob) for channel in routed):
                    problems.append(
                        f"Procfile line {process.line} ({process.name}): channel glob {glob!r} matches no routed "
                        f"channel (routed: {', '.join(sorted(routed))})"
                    )
            uncovered -= set(select_channels(routed, only, exclude))
        if consumers and uncovered:
            problems.append(
                f"routed channel(s) {', '.join(sorted(uncovered))} consumed by no Procfile process type: "
                "their messages expire unread; drop the --only-channels/--exclude-channels that leave them out, "
                "or add a worker process type for them"
            )
    if app and isinstance(app.get("formation"), dict):
        names = {process.name for process in procfile.processes}
        for name in app["formation"]:
            if name not in names:
                problems.append(
                    f"app.json formation names process type {name!r}, which the Procfile does not define "
                    f"(defined: {', '.join(sorted(names)) or 'none'})"
                )
    return problems


def _app_json_problems(app: dict[str, Any]) -> list[str]:
    env = app.get("env") if isinstance(app.get("env"), dict) else {}
    if "env" in app and "SECRET_KEY" not in env:
        return ['app.json: env has no SECRET_KEY, so the app cannot start with DEBUG off; add '
                '"SECRET_KEY": {"generator": "secret"}']
    return []


#: Seconds a database server gets to accept the check's connection.
DATABASE_TIMEOUT = 5


def _database_problems() -> list[str]:
    """One line per database that cannot be connected to (its password never shown)."""
    from django.db import connections

    problems = []
    for alias in connections:
        connection = connections[alias]
        database = connection.settings_dict
        engine = str(database.get("ENGINE", "")).rsplit(".", 1)[-1]
        if connection.vendor == "sqlite":
            name = str(database.get("NAME") or "")
            # Connecting would create the file; only a missing directory is a problem.
            if name and name != ":memory:" and not name.startswith("file:") and not Path(name).parent.is_dir():
                problems.append(f"database {alias!r} (sqlite3 at {name}): the directory {Path(name).parent} does "
                                "not exist; check DATABASE_URL")
            continue
        if connection.vendor == "postgresql":
            database.setdefault("OPTIONS", {}).setdefault("connect_timeout", DATABASE_TIMEOUT)
        where = f"{engine} at {database.get('HOST') or 'localhost'}:{database.get('PORT') or 'default port'}" \
                f"/{database.get('NAME') or ''}"
        try:
            connection.ensure_connection()
        except Exception as exc:  # noqa: BLE001 - every driver has its own errors; each is one line here
            reason = " ".join(str(exc).split()) or type(exc).__name__
            if database.get("PASSWORD"):
                reason = reason.replace(str(database["PASSWORD"]), "***")
            problems.append(f"database {alias!r} ({where}) is unreachable: {reason[:300]}; check DATABASE_URL "
                            "and that the server is running and accepts this user")
        finally:
            connection.close()
    return problems


def _django_problems(deploy: bool) -> tuple[list[str], list[str]]:
    """(problems, notes) from Django's system checks."""
    from django.core import checks

    problems, notes = [], []
    try:
        messages = checks.run_checks(include_deployment_checks=deploy)
    except Exception as exc:
        return [f"django: the system checks raised {type(exc).__name__}: {exc}"], []
    for message in messages:
        if message.is_silenced():
            continue
        text = str(message.msg).replace("\n", " ")
        hint = f" ({message.hint})".replace("\n", " ") if message.hint else ""
        line = f"django {message.id}: {text}{hint}"
        if message.level >= checks.ERROR or (deploy and message.level >= checks.WARNING):
            problems.append(line)
        else:
            notes.append(line)
    return problems, notes


def run_checks(config: Config, deploy: bool = False, directory: Path | None = None) -> tuple[list[str], list[str]]:
    """Every check; returns (problems, notes), each a list of one-line texts."""
    directory = directory or Path.cwd()
    problems: list[str] = []
    notes: list[str] = []
    procfile, found = files.read_procfile(directory)
    problems += found
    app, found = files.read_app_json(directory)
    problems += found
    problems += files.read_python_versions(directory)[1]
    if app:
        problems += _app_json_problems(app)

    settings_problems = _settings_problems(config)
    problems += settings_problems
    if settings_problems:
        return problems, notes

    backend = routed = None
    if has_channel_layers():
        try:
            backend = layer_class(channel_layer_settings(config.layer)["BACKEND"])
        except ConfigError as exc:
            problems.append(f"channel layer: {exc}")
        else:
            layer, found = _layer_problems(config.layer)
            problems += found
            routed, found = _routing_problems(config.layer)
            problems += found
            if layer is not None:
                close_layer(layer)
    if procfile is not None:
        problems += _procfile_problems(
            procfile, app, backend, routed,
            any(os.environ.get(name) for name in ("REDIS_URL", "REDIS_TLS_URL", "CLOUDAMQP_URL", "RABBITMQ_URL")),
        )
    problems += _database_problems()
    found, notes = _django_problems(deploy)
    problems += found
    return problems, notes
