"""Logging that an outage or a flood of bad input cannot turn into a flood of log lines.

A worker whose layer is down fails every receive on every loop; a web process
whose layer is down fails every request; an attacker can send a million
poisoned messages.  :class:`RateLimitedLog` writes the first occurrence of each
*kind* of problem at once (with its traceback, if any), then at most one line
per ``interval`` seconds per kind, saying how many were not shown meanwhile.
Thread-safe: one instance serves every loop of a worker.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """``log(level, kind, message, *args)``: the first of a kind now, then one per ``interval`` s with a count."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self.logger = logger
        self.interval = interval
        self._lock = threading.Lock()
        # kind -> (time of the last line written, occurrences not written since)
        self._kinds: dict[str, tuple[float, int]] = {}

    def __call__(self, level: int, kind: str, message: str, *args: Any, exc_info: Any = None) -> bool:
        """Log ``message % args`` unless ``kind`` was logged less than ``interval`` s ago; True if written."""
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._kinds.get(kind, (None, 0))
            if last is not None and now - last < self.interval:
                self._kinds[kind] = (last, suppressed + 1)
                return False
            self._kinds[kind] = (now, 0)
            if len(self._kinds) > 1000:  # kinds are few; bad input must not grow this without end
                self._kinds = {key: value for key, value in self._kinds.items() if now - value[0] < self.interval}
        if suppressed:
            message += f" ({suppressed} more like this in the last {now - last:.0f} s not logged)"
        self.logger.log(level, message, *args, exc_info=exc_info)
        return True

    def recovered(self, kind: str) -> bool:
        """Forget ``kind`` (the problem is over), so its next occurrence is logged at once; True if it was known."""
        with self._lock:
            return self._kinds.pop(kind, None) is not None
