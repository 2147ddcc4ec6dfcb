"""The interface server: Daphne turning HTTP and WebSocket connections into channel messages.

``paas-channels run web`` (:mod:`paas_channels.runtime.web`) holds every client
connection and never runs the project's code.  The parts:

* :mod:`.app` — the ASGI application: the process inbox and its one receive
  loop, the connection registry, health, shutdown;
* :mod:`.http`, :mod:`.websocket` — one connection each, relayed over the layer;
* :mod:`.static` — static files from WhiteNoise's index, without a worker hop;
* :mod:`.direct` — ``--http direct``: plain HTTP by the WSGI app in this process;
* :mod:`.daphne` — serving on Daphne, the only module touching Daphne/autobahn internals;
* :mod:`.asgi` — the types and small answers they share.
"""

from __future__ import annotations

from .app import HEALTH_PATH, InterfaceApplication, serve
from .asgi import LayerUnavailable

__all__ = ["HEALTH_PATH", "InterfaceApplication", "LayerUnavailable", "serve"]
