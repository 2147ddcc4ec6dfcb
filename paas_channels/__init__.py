"""paas_channels: real-time Django on a platform-as-a-service.

Interface servers (Daphne) turn HTTP and WebSocket connections into messages on
a channel layer; workers run the project's consumers and views.  See README.md.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Channel", "Group", "__version__"]


def __getattr__(name: str):
    # Lazy: `import paas_channels` stays light (the CLI imports it before Django is set up).
    if name in ("Channel", "Group"):
        from . import message

        return getattr(message, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
