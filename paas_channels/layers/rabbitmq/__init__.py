"""RabbitMQ channel layer (``paas_channels.layers.RabbitMQChannelLayer``); see :mod:`.layer`.

The URL helpers (:mod:`.urls`) need nothing but the standard library, so
settings, ``check`` and ``status`` use them without the ``rabbitmq`` extra;
the layer itself (and aiormq) is imported when it is asked for.
"""

from __future__ import annotations

from typing import Any

from .urls import ENV_VARIABLES, config_from_env, parse_url, redact_url

__all__ = [
    "DEFAULT_URL",
    "ENV_VARIABLES",
    "ChannelLayerConnectionError",
    "RabbitMQChannelLayer",
    "config_from_env",
    "parse_url",
    "redact_url",
]


def __getattr__(name: str) -> Any:
    if name in {"RabbitMQChannelLayer", "DEFAULT_URL"}:
        from . import layer

        return getattr(layer, name)
    if name == "ChannelLayerConnectionError":
        from .connection import ChannelLayerConnectionError

        return ChannelLayerConnectionError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
