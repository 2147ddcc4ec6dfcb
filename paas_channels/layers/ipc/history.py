"""Group history on the IPC layer: a history group's send and a join, each ONE SQLite transaction.

The rules (offsets, epochs, what a join's notice says, when a gap is
covered) are :mod:`paas_channels.layers.history`'s; this module keeps them
for every process of the machine at once:

* a send to a history group takes the group's next offset, keeps the
  message (:func:`.store.history_append`) and stores it for the members in
  one transaction: offsets follow the commit order whichever process sends,
  so every member gets them in order, 1, 2, 3, ...;
* a join adds the membership, then puts the notice and the entries after
  ``since`` on the channel, in one transaction: a send from another process
  commits either before it (its message is in the replay) or after it (the
  message comes live, after the replay): no gap, no duplicate.

A history starts (under a new random epoch) at the first send or join of
its group; it is lost, so the next one has another epoch, when the layer is
flushed, the database file is made anew, or it was not used for
``max(ttl, group_expiry)`` seconds (as on Redis).

The position (group, epoch, offset) is stored next to the message, in its
``channel`` column (:mod:`.store`), outside its authenticated body as on
Redis; each member's receive adds it as the message's ``"history"``.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ..base import RejectedMessage
from ..history import HistoryRule, covers, message_meta, notice_meta, valid_since
from . import store
from .steps import WAKE, Outcome, Plan

__all__ = ["HistoryPlans"]


class HistoryPlans:
    """Mixin for :class:`~.layer.IPCChannelLayer`: the plans of history sends and joins, and the positions."""

    def _plan_history_send(self, group: str, rule: HistoryRule, data: bytes) -> Plan:
        """``group``'s next offset, the entry kept, and the message stored for the members with its position."""
        new_epoch, keep = self.random_suffix(8), self._history_keep(rule)

        def run(conn: sqlite3.Connection, now: float) -> Outcome:
            store.sweep(conn, now)
            epoch, offset = store.history_append(conn, now, group, new_epoch, keep, rule.size, rule.ttl, data)
            return None, self._fan_out(conn, now, group, data, f" {group} {epoch} {offset}")

        return Plan(run)

    def _plan_group_join(self, group: str, channel: str, since: Any) -> Plan:
        """``group_add``; for a history group also the notice and the replay of what ``channel`` missed after ``since``."""
        self.valid_group_name(group)
        self.valid_channel_name(channel)
        since = valid_since(since)
        rule = self.history.for_group(group)
        if rule is None:
            return self._plan_group_add(group, channel)
        new_epoch, keep = self.random_suffix(8), self._history_keep(rule)
        key, group_expiry, expiry = self.non_local_name(channel), self.group_expiry, self.expiry

        def run(conn: sqlite3.Connection, now: float) -> Outcome:
            store.group_add(conn, group, channel, now + group_expiry)
            epoch, latest = store.history_position(conn, now, group, new_epoch, keep)
            entries: list[tuple[int, bytes]] = []
            first = latest + 1
            if since is not None and since[0] == epoch and since[1] < latest:
                entries = store.history_after(conn, now, group, since[1])
                first = entries[0][0] if entries else first
            recovered = covers(since, epoch, latest, first)
            if recovered and len(entries) != latest - since[1]:
                recovered = False  # a hole in what is held (never made here): never replay around it
            notice = self.serialize({"history": notice_meta(group, epoch, latest, recovered)})
            expires = now + expiry
            # A join's notice and replay are bounded by the history's size, not the channel's capacity.
            store.store(conn, key, channel, notice, expires, store.UNBOUNDED)
            for offset, data in entries if recovered else ():
                store.store(conn, key, f"{channel} {group} {epoch} {offset} r", data, expires, store.UNBOUNDED)
            return recovered is not False, [(WAKE, key)]

        return Plan(run)

    def _history_keep(self, rule: HistoryRule) -> float:
        # A history's epoch and offset outlive its messages: a client that saw
        # nothing for a while still resumes (with nothing to replay).
        return max(rule.ttl, self.group_expiry)

    def _decoded(self, data: bytes | tuple[bytes, store.Position]) -> dict:
        """A stored message decoded; a history group's with its position as ``"history"``."""
        if type(data) is bytes:
            return self.deserialize(data)
        data, position = data
        message = self.deserialize(data)
        if type(message) is not RejectedMessage:  # nothing is added to what failed authentication
            message["history"] = message_meta(*position)
        return message
