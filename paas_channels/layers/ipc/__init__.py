"""IPC channel layer: the processes of one machine share channels and groups through SQLite, no server."""

from __future__ import annotations

from .layer import IPCChannelLayer, default_directory

__all__ = ["IPCChannelLayer", "default_directory"]
