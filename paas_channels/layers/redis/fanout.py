"""This process's hand-out of group messages stored once per inbox.

A group send stores ONE envelope per member inbox (``name!``) naming every
member channel of that inbox.  Whoever pops it gives the message to the first
and keeps the others here, for the next receives on those channels: no Redis
round trip for them.  A message held here still expires with its envelope.

A history group's envelope carries its position after the member names
(``members group epoch offset``): every member's message gets its own
``"history"`` dict.  A join's envelope holds the join's notice and the
replayed messages, handed out in order before anything newer.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Iterable

from . import scripts
from ..history import message_meta, notice_meta

__all__ = ["LocalFanout"]

# Message values for which a shallow copy of the message is a deep one.
_IMMUTABLE = frozenset({str, bytes, int, float, bool, type(None)})


class LocalFanout:
    """Mixin for :class:`~.layer.RedisChannelLayer`: the group envelopes this process holds."""

    def _init_fanout(self) -> None:
        # Inbox prefix -> (expires ms, channel, encoded message, or the decoded
        # one when copying it is enough) this process took from a group
        # envelope and has not handed out yet.
        self._local: dict[str, deque[tuple[int, str, bytes | dict]]] = {}

    def _open_envelope(self, key: bytes, envelope: bytes) -> tuple[str, dict] | None:
        """``(channel, message)`` from a popped envelope; ``None`` if it expired.

        A group envelope for an inbox names several channels: the first gets
        the message now, the others are kept for this process's next receives.
        """
        expires, target, data = scripts.unpack(envelope)
        if expires <= time.time() * 1000:
            return None
        if " " in target:
            return self._open_history(expires, target, data)
        if "\n" in target:
            first, rest = target.split("\n", 1)
            # Every member gets its own message.  When all its values are
            # immutable, a dict copy is one: much cheaper than decoding again.
            message = self.deserialize(data)
            if all(type(value) in _IMMUTABLE for value in message.values()):
                data = message  # kept unread, as the pattern for copies
                message = message.copy()
            queue = self._local.setdefault(self.non_local_name(first), deque())
            queue.extend((expires, channel, data) for channel in rest.split("\n"))
            return first, message
        return target, self.deserialize(data)

    def _open_history(self, expires: int, target: str, data: bytes) -> tuple[str, dict]:
        """A history group's message (one per member) or a join's notice and replay."""
        parts = target.split(" ")
        members, group, epoch, offset = parts[0].split("\n"), parts[1], parts[2], int(parts[3])
        if len(parts) == 5:  # a join: notice first, then the replay, whose offsets end at ``offset``
            recovered = {"1": True, "0": False}.get(parts[4])
            encoded = scripts.blocks(data)
            notice = self.deserialize(encoded[0])
            notice["history"] = notice_meta(group, epoch, offset, recovered)
            first = offset - len(encoded) + 2
            held = [(expires, members[0], (block, message_meta(group, epoch, first + i, replayed=True)))
                    for i, block in enumerate(encoded[1:])]
            if held:
                self._local.setdefault(self.non_local_name(members[0]), deque()).extend(held)
            return members[0], notice
        meta = message_meta(group, epoch, offset)
        if len(members) > 1:
            self._local.setdefault(self.non_local_name(members[0]), deque()).extend(
                (expires, channel, (data, meta)) for channel in members[1:]
            )
        return members[0], self._with_history(data, meta)

    def _with_history(self, data: bytes, meta: dict) -> dict:
        message = self.deserialize(data)
        message["history"] = dict(meta)
        return message

    def _from_local(self, channels: Iterable[str]) -> tuple[Iterable[str], tuple[str, dict] | None]:
        """A message this process already holds for ``channels`` (the receive fast path).

        Returns ``channels`` too, as a list when it was an iterator: the
        receive reads it again when nothing is held.
        """
        if type(channels) is not list and type(channels) is not tuple and not isinstance(channels, str):
            channels = list(channels)
        return channels, self._take_local(self._names_cache.get(tuple(channels)) or self._valid_receive_names(channels))

    def _take_local(self, names: list[str]) -> tuple[str, dict] | None:
        # deque.popleft and dict.get are atomic: no lock on this hot path.
        # An emptied queue stays (one per inbox this process reads).
        local = self._local
        for name in names:
            queue = local.get(name)
            if queue:
                now = time.time() * 1000
                while queue:
                    try:
                        expires, channel, data = queue.popleft()
                    except IndexError:  # another thread took the last one
                        break
                    if expires > now:
                        if type(data) is dict:
                            return channel, data.copy()
                        if type(data) is tuple:  # a history group's message: (encoded, position)
                            return channel, self._with_history(*data)
                        return channel, self.deserialize(data)
        return None
