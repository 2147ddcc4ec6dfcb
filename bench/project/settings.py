"""paas-channels: the layer from REDIS_URL (configure's defaults), routing in bench/project/routing.py."""

from paas_channels.conf import configure

from .settings_base import *  # noqa: F401,F403

configure(globals(), routing="bench.project.routing.channel_routing")
