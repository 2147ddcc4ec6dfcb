"""The settings fingerprint: what every process of one deployment must agree on, as a short hash.

The Channels 1.x docs: "Make sure the same settings file is used across all
your workers and interface servers; without it ... things will just fail to
work."  Here they never fail silently: every heartbeat carries
:func:`settings_fingerprint`, and web, worker, ``status`` and ``check`` name
the processes whose fingerprint differs from their own.

What goes in: the layer's ``BACKEND`` and the ``CONFIG`` keys that shape the
messages on the shared layer (``prefix``, ``expiry``, ``group_expiry``,
``capacity``, ``channel_capacity``, ``history``), a hash of every ``CONFIG``
key whose name says it is a key or secret, and a hash of ``SECRET_KEY``
(sessions are signed with it in every worker, and the layer's message
authentication is keyed from the settings).  Hosts and connection options are
left out: two processes may reach one Redis by different URLs, and processes
on different servers never see each other's heartbeats anyway.  The result is
a truncated SHA-256 of salted values: no secret can be read back from it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from . import DEFAULT_CHANNEL_LAYER, channel_layer_settings
from .base import RejectedMessage

__all__ = ["Agreement", "FINGERPRINT_KEY", "describe", "disagreeing", "settings_fingerprint"]

#: The heartbeat info key that carries the fingerprint.
FINGERPRINT_KEY = "fingerprint"
#: CONFIG keys that change what a message on the shared layer means or how long it lives.
_SHARED_CONFIG = ("prefix", "expiry", "group_expiry", "capacity", "channel_capacity", "history")
_SALT = b"paas-channels settings fingerprint v1\0"


def _secret_hash(value: Any) -> str:
    return hashlib.sha256(_SALT + repr(value).encode()).hexdigest()


def settings_fingerprint(alias: str = DEFAULT_CHANNEL_LAYER) -> str:
    """12 hex digits that are equal exactly when two processes' shared settings are."""
    from django.conf import settings

    entry = channel_layer_settings(alias)
    config = entry.get("CONFIG") or {}
    shared: dict[str, Any] = {name: config[name] for name in _SHARED_CONFIG if name in config}
    for name in config:
        if "key" in name.lower() or "secret" in name.lower():
            shared[name] = _secret_hash(config[name])
    shared["SECRET_KEY"] = _secret_hash(getattr(settings, "SECRET_KEY", ""))
    canonical = json.dumps({"BACKEND": entry.get("BACKEND"), "CONFIG": shared}, sort_keys=True, default=repr)
    return hashlib.sha256(_SALT + canonical.encode()).hexdigest()[:12]


def disagreeing(beats: Mapping[str, Mapping[str, Any]], mine: str) -> dict[str, str]:
    """Process id -> fingerprint, for the heartbeats that carry a fingerprint other than ``mine``.

    A heartbeat without one (a process of an older paas-channels) is not counted.  One this process
    cannot read (its signature fails: the other process signs with another SECRET_KEY or
    CONFIG['keys']) disagrees by definition, and says so instead of a fingerprint.
    """
    others = {}
    for process, info in sorted(beats.items()):
        if isinstance(info, RejectedMessage):
            others[process] = _UNREADABLE
        elif isinstance(info, Mapping) and info.get(FINGERPRINT_KEY) not in (None, mine):
            others[process] = str(info[FINGERPRINT_KEY])
    return others


#: What a heartbeat signed with another key shows in place of its fingerprint.
_UNREADABLE = "its heartbeat fails this process's message check: another SECRET_KEY or CONFIG['keys']"


def describe(others: Mapping[str, str], mine: str) -> str:
    """One line naming the processes that disagree with this one, and what to do."""
    named = ", ".join(f"{process} ({fingerprint})" for process, fingerprint in others.items())
    return (f"process(es) running with other shared settings than this one (fingerprint {mine}): {named}. "
            "Give every web and worker process the same settings (CHANNEL_LAYERS, SECRET_KEY, the same "
            "environment): messages between them may be refused or misread")


class Agreement:
    """Remembers which disagreeing processes were reported, so a long-running process warns once per process."""

    def __init__(self, mine: str) -> None:
        self.mine = mine
        self._reported: set[tuple[str, str]] = set()

    def new_disagreements(self, beats: Mapping[str, Mapping[str, Any]]) -> str | None:
        """The line to log for processes not reported before, or None."""
        others = disagreeing(beats, self.mine)
        fresh = {process: value for process, value in others.items() if (process, value) not in self._reported}
        self._reported.update(fresh.items())
        return describe(fresh, self.mine) if fresh else None
