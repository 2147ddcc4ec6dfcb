"""Channel layers and the ``CHANNEL_LAYERS`` setting.

``get_channel_layer(alias)`` returns this process's layer for ``alias``, built
once from ``settings.CHANNEL_LAYERS[alias]``::

    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "paas_channels.layers.RedisChannelLayer",
            "ROUTING": "example_project.routing.channel_routing",
            "CONFIG": {"hosts": ["redis://localhost:6379/0"]},
        }
    }

Messages on a layer shared by processes are authenticated with keys derived from
``SECRET_KEY`` (and ``SECRET_KEY_FALLBACKS``, Django's rotation list), or from
``CONFIG["keys"]`` (a list: the first signs, all verify); ``CONFIG["encrypt"]:
True`` also encrypts them.  See :meth:`BaseChannelLayer.use_keys`.
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

from ..exceptions import ConfigError
from .base import BaseChannelLayer, ChannelFull, MessageTooLarge, RejectedMessage
from .memory import InMemoryChannelLayer

__all__ = [
    "BaseChannelLayer",
    "ChannelFull",
    "ConfigError",
    "IPCChannelLayer",
    "InMemoryChannelLayer",
    "MessageTooLarge",
    "RabbitMQChannelLayer",
    "RedisChannelLayer",
    "RejectedMessage",
    "DEFAULT_CHANNEL_LAYER",
    "build_channel_layer",
    "channel_layer_settings",
    "get_channel_layer",
    "has_channel_layers",
    "layer_class",
]

DEFAULT_CHANNEL_LAYER = "default"

_layers: dict[str, BaseChannelLayer] = {}
_layers_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    # The network layers pull in their clients; import them only when asked for.
    if name == "RedisChannelLayer":
        from .redis import RedisChannelLayer

        return RedisChannelLayer
    if name == "IPCChannelLayer":  # sqlite3 and sockets: only for the processes that use it
        from .ipc import IPCChannelLayer

        return IPCChannelLayer
    if name == "RabbitMQChannelLayer":  # pulls in aiormq, likewise
        from .rabbitmq import RabbitMQChannelLayer

        return RabbitMQChannelLayer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def has_channel_layers() -> bool:
    """True when the project's settings define ``CHANNEL_LAYERS``."""
    return bool(getattr(settings, "CHANNEL_LAYERS", None))


def channel_layer_settings(alias: str = DEFAULT_CHANNEL_LAYER) -> dict[str, Any]:
    """``settings.CHANNEL_LAYERS[alias]``, checked, with a clear error when it is wrong."""
    layers = getattr(settings, "CHANNEL_LAYERS", None)
    if not layers:
        raise ConfigError(
            "settings.CHANNEL_LAYERS is not set: add "
            "CHANNEL_LAYERS = {'default': {'BACKEND': 'paas_channels.layers.InMemoryChannelLayer'}} "
            "(or RedisChannelLayer), or run the project as plain WSGI with `paas-channels run wsgi`"
        )
    if not isinstance(layers, dict):
        raise ConfigError(f"settings.CHANNEL_LAYERS must be a dict of alias -> layer; got {type(layers).__name__}")
    if alias not in layers:
        raise ConfigError(
            f"settings.CHANNEL_LAYERS has no alias {alias!r}; defined: {', '.join(map(repr, layers)) or 'none'}"
        )
    entry = layers[alias]
    where = f"CHANNEL_LAYERS[{alias!r}]"
    if not isinstance(entry, dict) or "BACKEND" not in entry:
        raise ConfigError(
            f"settings.{where} must be a dict with a 'BACKEND' dotted path, e.g. "
            "{'BACKEND': 'paas_channels.layers.RedisChannelLayer', 'CONFIG': {...}}"
        )
    config = entry.get("CONFIG", {}) or {}
    if not isinstance(config, dict):
        raise ConfigError(f"settings.{where}['CONFIG'] must be a dict of keyword arguments; got {type(config).__name__}")
    routing = entry.get("ROUTING")
    if routing is not None and not isinstance(routing, (str, list, tuple)):
        raise ConfigError(
            f"settings.{where}['ROUTING'] must be a dotted path to a routing list, e.g. "
            f"'myproject.routing.channel_routing'; got {type(routing).__name__}"
        )
    return {"BACKEND": entry["BACKEND"], "CONFIG": config, "ROUTING": routing}


def layer_class(backend: str | type, where: str = "BACKEND") -> type[BaseChannelLayer]:
    """The layer class a ``BACKEND`` setting names (a dotted path or the class), checked."""
    if isinstance(backend, str):
        try:
            cls = import_string(backend)
        except ImportError as exc:
            raise ConfigError(
                f"settings.{where} = {backend!r} cannot be imported ({exc}); use a dotted path "
                "such as 'paas_channels.layers.InMemoryChannelLayer' or "
                "'paas_channels.layers.RedisChannelLayer'"
            ) from None
    else:
        cls = backend
    if not (isinstance(cls, type) and issubclass(cls, BaseChannelLayer)):
        raise ConfigError(
            f"settings.{where} = {backend!r} is not a channel layer class "
            "(a subclass of paas_channels.layers.BaseChannelLayer)"
        )
    return cls


def build_channel_layer(backend: str | type, config: dict[str, Any] | None = None, where: str = "BACKEND") -> BaseChannelLayer:
    """Make a new layer from a dotted path (or class) and its CONFIG keywords."""
    cls = layer_class(backend, where)
    try:
        return cls(**(config or {}))
    except TypeError as exc:
        raise ConfigError(f"settings.{where.replace('BACKEND', 'CONFIG')} is not accepted by {cls.__name__}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"settings.{where.replace('BACKEND', 'CONFIG')}: {exc}") from None


def get_channel_layer(alias: str = DEFAULT_CHANNEL_LAYER) -> BaseChannelLayer:
    """This process's layer for ``alias``, built on first use from settings."""
    layer = _layers.get(alias)
    if layer is not None:
        return layer
    with _layers_lock:
        layer = _layers.get(alias)
        if layer is None:
            entry = channel_layer_settings(alias)
            config = dict(entry["CONFIG"])
            keys, encrypt = config.pop("keys", None), config.pop("encrypt", False)
            layer = build_channel_layer(
                entry["BACKEND"], config, where=f"CHANNEL_LAYERS[{alias!r}]['BACKEND']"
            )
            _authenticate(layer, alias, keys, encrypt)
            layer.alias = alias
            _layers[alias] = layer
        return layer


def _authenticate(layer: BaseChannelLayer, alias: str, keys: Any, encrypt: Any) -> None:
    """Key a shared layer from CONFIG['keys'], else SECRET_KEY and SECRET_KEY_FALLBACKS."""
    if keys is None:
        if layer.reach == "process" and not encrypt:
            return  # one process: nobody else can write to it
        keys = [getattr(settings, "SECRET_KEY", ""), *getattr(settings, "SECRET_KEY_FALLBACKS", ())]
        where = "SECRET_KEY"
    else:
        where = f"CHANNEL_LAYERS[{alias!r}]['CONFIG']['keys']"
        if isinstance(keys, (str, bytes)):
            keys = [keys]
    if not isinstance(encrypt, bool):
        raise ConfigError(f"settings.CHANNEL_LAYERS[{alias!r}]['CONFIG']['encrypt'] must be True or False; "
                          f"got {encrypt!r}")
    try:
        layer.use_keys(list(keys), encrypt=encrypt)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"settings.{where}: {exc}") from None


def reset_channel_layers() -> None:
    """Forget the layers built so far (tests, and settings reloaded in one process)."""
    with _layers_lock:
        _layers.clear()
