"""Channels 4 as its documentation sets it up: channels_redis with its defaults
(capacity 100, expiry 60 s, prefix "asgi") on REDIS_URL, served by Daphne."""

import os

from .settings_base import *  # noqa: F401,F403

INSTALLED_APPS = [*INSTALLED_APPS, "channels"]  # noqa: F405
ASGI_APPLICATION = "bench.project.channels4.application"
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")]},
    }
}
