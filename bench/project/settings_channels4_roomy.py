"""Channels 4 for the full-deploy scenario: channels_redis with room for one group's burst.

channels_redis counts a Daphne process's capacity over all its connections,
so its default 100 skips group messages to 200 connections of one process;
5000, like this project's ``interface.*`` capacity in settings_history, keeps
what is measured to what a deploy loses.  Likewise redis-py's asyncio pool
(100 connections by default) fails 200 consumers joining at once with
``MaxConnectionsError``: 1000 here.
"""

import os

from .settings_channels4 import *  # noqa: F401,F403

PEER_CAPACITY = 5000


def peer_hosts(url: str) -> list[dict]:
    return [{"address": url, "max_connections": 1000}]


CHANNEL_LAYERS["default"]["CONFIG"] = {  # noqa: F405
    "hosts": peer_hosts(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")),
    "capacity": PEER_CAPACITY,
}
