"""``paas-channels run web``: the interface server on Daphne, over a shared layer.

Builds the layer from settings, probes it (a boot error when it does not
answer), serves :class:`~paas_channels.interface.InterfaceApplication` (wrapped
by :class:`~paas_channels.interface.direct.HybridApplication` under
``--http direct``) until SIGTERM, and closes the layer on the way out.
"""

from __future__ import annotations

import logging

from ..config.options import Config
from ..interface import InterfaceApplication, serve
from ..layers import get_channel_layer
from .boot import check_reach, closing_layer, probe_layer
from .supervisor import report_ready

__all__ = ["run"]

logger = logging.getLogger(__name__)


def run(config: Config) -> int:
    """Serve until stopped; returns the exit code."""
    layer = get_channel_layer(config.layer)
    check_reach(layer, config)
    probe_layer(layer, config.layer)
    if layer.reach == "process":
        logger.warning(
            "`run web` on %s: workers in other processes cannot see this layer, so only static files and "
            "the health endpoint will answer. Set REDIS_URL (RedisChannelLayer) or use "
            "`paas-channels run --combined`", type(layer).__name__,
        )
    with closing_layer(layer):
        app = InterfaceApplication(layer, config)
        if config.http == "direct":
            # Only here: --http direct runs the project's views in this process, and
            # without it the web process must not import routing or consumers at all.
            from ..interface.direct import HybridApplication

            app = HybridApplication(app, config)
        return serve(app, config, ready=report_ready)
