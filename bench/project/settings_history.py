"""paas-channels with group history on the ``room`` group (the full-deploy scenario).

A web process's inbox is one channel for all its connections: room for the
reconnect burst of a deploy (accepts, joins and their replays).
"""

from .settings import *  # noqa: F401,F403

LAYER_CONFIG = {"history": {"room": {"size": 1000, "ttl": 300}}, "channel_capacity": {"interface.*": 5000}}
CHANNEL_LAYERS["default"]["CONFIG"].update(LAYER_CONFIG)  # noqa: F405
