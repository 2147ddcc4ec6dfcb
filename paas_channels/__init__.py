"""paas_channels: real-time Django on a platform-as-a-service.

Interface servers (Daphne) turn HTTP and WebSocket connections into messages on
a channel layer; workers run the project's consumers and views.  See README.md.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
