"""What every process does at start and at exit, once.

Find and set up the Django settings, configure logging, monkey-patch for
gevent (before Django is imported), keep what exists at start out of garbage
collection, probe the channel layer (a boot error, exit 3, when it does not
answer) and close it on the way out.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

from ..config.options import LOG_FORMAT, Config, UTCFormatter
from ..exceptions import ConfigError

__all__ = [
    "check_reach", "close_layer", "closing_layer", "configure_logging", "describe_settings", "find_settings_module",
    "freeze_startup_objects", "gevent_monkey_patch", "probe_layer", "setup_django", "unreachable_layer",
]

logger = logging.getLogger("paas_channels")

_MANAGE_PY_SETTINGS = re.compile(r"""DJANGO_SETTINGS_MODULE['"]\s*,\s*['"]([\w.]+)['"]""")
#: Seconds a layer gets to answer the boot probe before the process gives up (a frozen broker).
PROBE_TIMEOUT = 10.0


def find_settings_module(config_settings: str | None, cwd: Path) -> str | None:
    """``--settings`` / ``DJANGO_SETTINGS_MODULE``, else the module ./manage.py names."""
    if config_settings:
        return config_settings
    manage = cwd / "manage.py"
    if manage.is_file():
        match = _MANAGE_PY_SETTINGS.search(manage.read_text(encoding="utf-8", errors="replace"))
        if match:
            return match.group(1)
    return None


def setup_django(config: Config) -> None:
    """Find the settings module, put the project on sys.path and run ``django.setup()``."""
    cwd = Path.cwd()
    if str(cwd) not in sys.path:
        sys.path.insert(0, str(cwd))
    module = find_settings_module(config.settings, cwd)
    if not module:
        raise ConfigError(
            "no Django settings found: pass --settings myproject.settings, set "
            "DJANGO_SETTINGS_MODULE, or run from the directory that holds manage.py"
        )
    os.environ["DJANGO_SETTINGS_MODULE"] = module
    import django
    from django.core.exceptions import ImproperlyConfigured

    try:
        django.setup()
    except ImportError as exc:
        raise ConfigError(f"settings module {module!r} cannot be imported: {exc}") from None
    except ImproperlyConfigured as exc:
        _check_database_drivers()  # a models module touched a database whose driver is missing
        raise ConfigError(f"settings module {module!r}: {exc}") from None
    _check_database_drivers()


#: Database engine -> (the driver it needs, how to install it).
_DRIVERS = {
    "django.db.backends.postgresql": ("psycopg (or psycopg2)", "pip install 'paas-channels[postgres]'"),
    "django.db.backends.mysql": ("mysqlclient", "pip install mysqlclient"),
    "django.db.backends.oracle": ("oracledb", "pip install oracledb"),
}


def _check_database_drivers() -> None:
    """Load each database's backend now: a missing driver is a boot error naming what to install,
    not a traceback from the first query (or from the URLconf's imports)."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.db.utils import load_backend

    for alias, database in (getattr(settings, "DATABASES", None) or {}).items():
        engine = database.get("ENGINE", "")
        if not engine:
            continue
        try:
            load_backend(engine)
        except (ImproperlyConfigured, ImportError) as exc:
            driver, fix = _DRIVERS.get(engine, ("its driver", "install the package the engine's documentation names"))
            raise ConfigError(
                f"database {alias!r} uses {engine}, whose driver {driver} is not installed ({exc}); {fix}"
            ) from None


def configure_logging(level: str, fmt: str = LOG_FORMAT) -> None:
    """Logging until ``django.setup()`` applies ``settings.LOGGING`` (boot errors, the effective options)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(UTCFormatter(fmt))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])


def gevent_monkey_patch() -> None:
    """Make blocking I/O cooperative for gevent; as early as possible (before Django's imports)."""
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        monkey.patch_all()


def describe_settings() -> str:
    """One line of the effective Django settings (secrets masked), for the start of the log."""
    from django.conf import settings

    # Not at the top: the CLI imports this module before gevent patches, and
    # config.settings brings in redis-py (and with it the socket module).
    from ..config.settings import describe_settings as settings_description

    return settings_description(settings)


def freeze_startup_objects(runs_views: bool) -> None:
    """Load the project's views, then keep everything alive now out of garbage collection.

    Django and the project make a few hundred thousand long-lived objects at
    start; every full collection would walk them all again, stopping every
    thread of the process for tens of milliseconds: the slowest requests of
    a busy process (in combined mode at 300 requests/s, p99 went from about
    40 ms to about 12 ms).  ``gc.freeze()`` moves them to a generation that
    is never collected (what Instagram did for Django); new garbage is
    collected as usual.
    """
    if runs_views:
        from django.conf import settings
        from django.urls import get_resolver

        try:
            get_resolver().url_patterns  # noqa: B018 - imports the view modules now, not on the first request
        except Exception as exc:  # noqa: BLE001 - the first request reports it as Django always does
            logger.warning(
                "ROOT_URLCONF %r does not import (%s: %s); requests will fail until it is fixed",
                getattr(settings, "ROOT_URLCONF", None), type(exc).__name__, exc,
            )
    gc.collect()
    gc.freeze()
    logger.debug("%d objects made at start kept out of garbage collection", gc.get_freeze_count())


def probe_layer(layer: Any, alias: str = "default", timeout: float = PROBE_TIMEOUT, at: str = "") -> None:
    """Read the layer once (its heartbeats); raise ``ConfigError`` naming the layer when it does not answer.

    Run in a thread with a deadline, so a broker that accepts connections but
    never answers (frozen, overloaded) is a boot error too, not a hang.
    """
    failure: list[BaseException] = []

    def read() -> None:
        try:
            layer.heartbeats()
        except BaseException as exc:  # noqa: BLE001 - reported below
            failure.append(exc)

    thread = threading.Thread(target=read, name="paas-layer-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    where = f"the channel layer {alias!r} ({type(layer).__name__}{f' at {at}' if at else ''})"
    if thread.is_alive():
        raise ConfigError(f"{where} did not answer within {timeout:g} s: check REDIS_URL and the network")
    if failure:
        raise unreachable_layer(where, failure[0])


def unreachable_layer(where: str, exc: BaseException) -> ConfigError:
    """The boot error for a layer that could not be reached: what failed, once, and what to check, once.

    The layer's runtime message promises a reconnect; a process that exits must not.
    """
    # ``detail`` names the host it tried (password redacted), without the runtime advice.
    detail = (getattr(exc, "detail", None) or str(exc) or type(exc).__name__)[:300].rstrip(".")
    return ConfigError(f"{where} is unreachable: {detail}. Check REDIS_URL / CONFIG['hosts'] (RabbitMQ: "
                       "CLOUDAMQP_URL / RABBITMQ_URL, CONFIG['url']) and that the server is running")


def check_reach(layer: Any, config: Config) -> None:
    """With several processes, a layer that lives inside one process is a boot error: groups would split."""
    if config.processes > 1 and getattr(layer, "reach", "network") == "process":
        raise ConfigError(
            f"CHANNEL_LAYERS[{config.layer!r}] is {type(layer).__name__}, which lives inside one process, but "
            f"{config.processes} processes run (--processes/WEB_CONCURRENCY): groups and channels would only reach "
            "one of them. Use paas_channels.layers.IPCChannelLayer (the processes of one machine) or "
            "RedisChannelLayer (set REDIS_URL), or run one process (--processes 1)"
        )


def close_layer(layer: Any) -> None:
    """Close ``layer``'s connections; a failure to close is not worth more than a debug line."""
    try:
        layer.close()
    except Exception as exc:  # noqa: BLE001 - the process is exiting anyway
        logger.debug("closing the layer failed: %s", exc)


@contextlib.contextmanager
def closing_layer(layer: Any) -> Iterator[Any]:
    """``with closing_layer(layer):`` closes it however the block ends."""
    try:
        yield layer
    finally:
        close_layer(layer)
