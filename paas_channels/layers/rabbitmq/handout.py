"""Stored envelopes, and the messages a process holds for its own channels.

A stored message is ``msgpack([expires ms, target(s), data, group?, sent ms?])``.
A group message for an inbox names all its member channels there (one
message per inbox, not per member): the first gets it when it is read, the
others are kept here for this process's next receives.  A history join's
``data`` is a list, the notice then the replayed messages (:mod:`.sequencer`):
one stored message, so the replay is not cut by the inbox's capacity.
"""

from __future__ import annotations

import time
from collections import deque

import msgpack

__all__ = ["Handout", "now_ms"]


def now_ms() -> int:
    return int(time.time() * 1000)


class Handout:
    """Mixed into the layer: opening envelopes and handing out held messages (no I/O)."""

    _local: dict[str, deque[tuple[int, str, bytes]]]

    def _open_delivery(self, name: str, body: bytes) -> tuple[str, dict] | None:
        """``(channel, message)`` from a stored envelope; None if it expired.

        A group message for an inbox names several channels: the first gets it
        now, the others are kept for this process's next receives.
        """
        envelope = msgpack.unpackb(body, raw=False)
        expires, target, data = envelope[0], envelope[1], envelope[2]
        if expires <= now_ms():
            return None
        if type(data) is list:  # a history join: its notice, then the replay, for one channel
            self._local.setdefault(name, deque()).extend((expires, target, block) for block in data[1:])
            return target, self.deserialize(data[0])
        if "\n" in target:
            first, rest = target.split("\n", 1)
            self._local.setdefault(name, deque()).extend((expires, channel, data) for channel in rest.split("\n"))
            return first, self.deserialize(data)
        return target, self.deserialize(data)

    def _take_local(self, names: list[str]) -> tuple[str, dict] | None:
        for name in names:
            queue = self._local.get(name)
            while queue:
                try:
                    expires, channel, data = queue.popleft()
                except IndexError:  # another thread took the last one
                    break
                if expires > now_ms():
                    return channel, self.deserialize(data)
        return None

