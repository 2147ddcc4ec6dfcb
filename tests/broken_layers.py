"""Deliberately broken layers: the conformance suite must fail each of them.

``test_conformance_catches_broken_layers.py`` runs the suite against these in a
subprocess, so a suite that stopped checking something would be noticed.
"""

from __future__ import annotations

import msgpack

from paas_channels.layers import InMemoryChannelLayer


class ForgetsExpiry(InMemoryChannelLayer):
    def _expire_channel_locked(self, key, now):
        pass


class SharesReferences(InMemoryChannelLayer):
    """Keeps the sender's dict instead of a copy."""

    @staticmethod
    def serialize(message):
        InMemoryChannelLayer.serialize(message)  # still validates
        return message

    @staticmethod
    def deserialize(data):
        return data


class GroupSendRaises(InMemoryChannelLayer):
    def send_group(self, group, message):
        for channel in self.group_channels(group):
            self.send(channel, message)


class IgnoresCapacity(InMemoryChannelLayer):
    def get_capacity(self, channel):
        return 10**9


class ReportsPrefix(InMemoryChannelLayer):
    """Reports a `!` channel under its prefix instead of its full name."""

    def receive(self, channels, block=False):
        channel, message = super().receive(channels, block)
        return (self.non_local_name(channel) if channel else channel), message


class AcceptsAnyKeys(InMemoryChannelLayer):
    """Encodes whatever msgpack takes: an int key arrives as an int."""

    @staticmethod
    def serialize(message):
        return msgpack.packb(message, use_bin_type=True)

    @staticmethod
    def deserialize(data):
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
