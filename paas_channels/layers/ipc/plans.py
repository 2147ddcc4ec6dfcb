"""The IPC layer's operations, each written once as a plan (see :mod:`.steps`) for the sync and async drivers.

A plan is a function of a connection and the time: one statement, or one
short transaction, plus what it leaves to do once committed (wake a
receiver, drop expired channels from groups).  History sends and joins are
:mod:`.history`'s.
"""

from __future__ import annotations

import sqlite3

from ..base import ChannelFull, _positive_number
from . import store
from .steps import FORGET, WAKE, Effect, Outcome, Plan, plain

__all__ = ["Plans"]

#: Messages a receive takes at once from a ``!`` key (only this process reads it).
_INBOX_BATCH = 100


class Plans:
    """Mixin for :class:`~.layer.IPCChannelLayer`: its operations as plans."""

    def _plan_send(self, channel: str, message: dict) -> Plan:
        self.valid_channel_name(channel)
        data = self.serialize(message)
        key = self.non_local_name(channel)
        capacity = self.get_capacity(channel)
        expiry = self.expiry

        def run(conn: sqlite3.Connection, now: float) -> Outcome:
            expires = now + expiry
            if store.store(conn, key, channel, data, expires, capacity):
                return None, [(WAKE, key)]
            # At capacity, or expired messages hold the room: look closer, in one transaction.
            with store.transaction(conn):
                stored = store.store_or_refuse(conn, now, key, channel, data, expires, capacity)
            return (None, [(WAKE, key)]) if stored else (ChannelFull(channel), [])

        return Plan(run, transaction=False)

    @staticmethod
    def _plan_receive(keys: list[str], address: bytes | None = None, since: int = 0, wait: bool = False,
                      registered: bool = False) -> Plan:
        """Take from ``keys``; with ``address``, (un)register it as a waiter in the same transaction.

        Without: single statements, no transaction.  A receiver that was
        registered (and so may have been woken for a message on another of
        its keys than the one it takes from) passes wakeups on.
        """
        def run(conn: sqlite3.Connection, now: float) -> Outcome:
            effects: list[Effect] = []
            for key in keys:
                limit = _INBOX_BATCH if key.endswith("!") else 1
                while True:
                    items, expired = store.take(conn, now, key, limit)
                    if expired:
                        effects.append((FORGET, expired))
                    if items:
                        if registered:
                            store.unregister(conn, address)
                            effects += [(WAKE, other) for other in keys]
                        return items, effects
                    if not expired:
                        break
            if address is not None and wait:
                store.register(conn, keys, address, since)
            elif registered:
                store.unregister(conn, address)
            return None, effects

        return Plan(run, transaction=address is not None)

    def _plan_group_add(self, group: str, channel: str) -> Plan:
        self.valid_group_name(group)
        self.valid_channel_name(channel)
        group_expiry = self.group_expiry
        return Plan(lambda conn, now: (store.group_add(conn, group, channel, now + group_expiry), []), False)

    def _plan_group_discard(self, group: str, channel: str) -> Plan:
        self.valid_group_name(group)
        self.valid_channel_name(channel)
        return plain(store.group_discard, group, channel, transaction=False)

    def _plan_group_channels(self, group: str) -> Plan:
        self.valid_group_name(group)

        def run(conn: sqlite3.Connection, now: float) -> Outcome:
            store.sweep(conn, now)
            return store.group_channels(conn, now, group), []

        return Plan(run)

    def _plan_send_group(self, group: str, message: dict) -> Plan:
        self.valid_group_name(group)
        data = self.serialize(message)
        rule = self.history.for_group(group)
        if rule is not None:
            return self._plan_history_send(group, rule, data)

        def run(conn: sqlite3.Connection, now: float) -> Outcome:
            store.sweep(conn, now)
            return None, self._fan_out(conn, now, group, data)

        return Plan(run)

    def _fan_out(self, conn: sqlite3.Connection, now: float, group: str, data: bytes, position: str = "") -> list[Effect]:
        """Store ``data`` (with a history ``position``) for ``group``'s members; the wake-ups to do after."""
        # Members of one ``!`` key (one process's connections) share one stored envelope naming them all.
        targets: dict[str, list[str]] = {}
        for channel in store.group_channels(conn, now, group):
            key = self.non_local_name(channel)
            if key.endswith("!"):
                targets.setdefault(key, []).append(channel)
            else:
                targets[channel] = [channel]
        expires = now + self.expiry
        return [(WAKE, key) for key, channels in targets.items() if store.store_or_refuse(
            conn, now, key, "\n".join(channels) + position, data, expires, self.get_capacity(key))]

    def _plan_channel_statistics(self, channel: str) -> Plan:
        self.valid_channel_name(channel)
        key, expiry = self.non_local_name(channel), self.expiry
        return Plan(lambda conn, now: (store.channel_statistics(conn, now, key, expiry), []))

    def _plan_heartbeat(self, worker_id: str, info: dict, ttl: float) -> Plan:
        if not isinstance(worker_id, str) or not worker_id:
            raise TypeError(f"worker_id must be a non-empty str; got {worker_id!r:.60}")
        _positive_number("ttl", ttl)
        data = self.serialize(info)
        return Plan(lambda conn, now: (store.heartbeat(conn, worker_id, now + ttl, data), []), False)

    @staticmethod
    def _plan_heartbeats() -> Plan:
        return Plan(lambda conn, now: (store.heartbeats(conn, now), []), False)

    def _plan_channel_exists(self, name: str) -> Plan:
        return plain(store.channel_exists, self.non_local_name(name), transaction=False)
