"""RabbitMQ channel layer (``paas_channels.layers.RabbitMQChannelLayer``); see :mod:`.layer`."""

from __future__ import annotations

from .connection import ChannelLayerConnectionError
from .layer import DEFAULT_URL, RabbitMQChannelLayer
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
