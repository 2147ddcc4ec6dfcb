"""Group history: the shared rules every layer that keeps it follows.

A group whose name matches a glob of the layer's ``CONFIG["history"]``::

    "history": {"chat-*": {"size": 100, "ttl": 300}}

keeps its last ``size`` messages for ``ttl`` seconds.  Each message sent to it
gets the group's next **offset** (1, 2, 3, ...) and the group's **epoch**, a
random name made when the history starts, so a history that was lost (Redis
flushed or restarted empty, an in-memory layer's process restarted, the IPC
layer's database file made anew, the RabbitMQ history stream lost) is never
mistaken for the same one: its offsets start again under a new epoch.

What members receive: the message as sent, plus ``"history": {"group",
"epoch", "offset"}`` (and ``"replayed": True`` for a message given again
after a join).  A join that asks to resume (:meth:`group_join` with
``since=(epoch, offset)``) first puts a **notice** on the joining channel,
``{"history": {"group", "epoch", "offset": latest, "recovered": bool | None}}``,
then the messages after ``offset`` that the history still holds, atomically
with the membership: no message is missed between the replay and the live
ones, and none comes twice.  ``recovered`` is ``None`` for a join that did
not ask to resume, ``False`` when the history no longer covers the gap (too
old, or the epoch changed): then nothing is replayed and the client must
reload its state.

This module holds what does not depend on storage: the configuration, the
decision whether a gap is covered, and the notice's shape.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any, NamedTuple

__all__ = ["HistoryRule", "HistoryRules", "covers", "notice_meta", "HISTORY_KEY"]

#: The message key members find the history position under.
HISTORY_KEY = "history"
_RULE_KEYS = frozenset({"size", "ttl"})
_MAX_SIZE = 10_000


class HistoryRule(NamedTuple):
    """How much history one group keeps: ``size`` messages, each for ``ttl`` seconds."""

    size: int
    ttl: float


class HistoryRules:
    """``CONFIG["history"]`` checked: ``{glob: {"size": int, "ttl": seconds}}``, first match wins."""

    def __init__(self, history: Any) -> None:
        if history is None:
            history = {}
        if not isinstance(history, dict):
            raise TypeError(
                'history must be a dict of {group glob: {"size": messages, "ttl": seconds}}, e.g. '
                f'{{"chat-*": {{"size": 100, "ttl": 300}}}}; got {type(history).__name__}'
            )
        self.rules: dict[str, HistoryRule] = {}
        for pattern, rule in history.items():
            self.rules[_valid_pattern(pattern)] = _valid_rule(pattern, rule)
        self._compiled = [(re.compile(fnmatch.translate(p)), rule) for p, rule in self.rules.items()]
        self._cache: dict[str, HistoryRule | None] = {}

    def __bool__(self) -> bool:
        return bool(self.rules)

    def for_group(self, group: str) -> HistoryRule | None:
        """The rule for ``group``, or ``None`` when it keeps no history."""
        try:
            return self._cache[group]
        except KeyError:
            pass
        found = None
        for pattern, rule in self._compiled:
            if pattern.match(group):
                found = rule
                break
        if len(self._cache) < 10_000:
            self._cache[group] = found
        return found


def _valid_pattern(pattern: Any) -> str:
    if not isinstance(pattern, str) or not pattern:
        raise TypeError(f"history keys are group name globs (str), e.g. 'chat-*'; got {pattern!r:.60}")
    return pattern


def _valid_rule(pattern: str, rule: Any) -> HistoryRule:
    where = f"history[{pattern!r}]"
    if not isinstance(rule, dict):
        raise TypeError(f'{where} must be a dict {{"size": messages, "ttl": seconds}}; got {rule!r:.60}')
    unknown = set(rule) - _RULE_KEYS
    missing = _RULE_KEYS - set(rule)
    if unknown or missing:
        raise ValueError(
            f'{where} takes exactly "size" and "ttl"; '
            + (f"unknown: {', '.join(map(repr, sorted(unknown)))}. " if unknown else "")
            + (f"missing: {', '.join(map(repr, sorted(missing)))}. " if missing else "")
            + 'e.g. {"size": 100, "ttl": 300}'
        )
    size, ttl = rule["size"], rule["ttl"]
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= _MAX_SIZE:
        raise ValueError(f"{where}['size'] must be a whole number of messages from 1 to {_MAX_SIZE}; got {size!r}")
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0:
        raise ValueError(f"{where}['ttl'] must be a positive number of seconds; got {ttl!r}")
    return HistoryRule(size, ttl)


def valid_since(since: Any) -> tuple[str, int] | None:
    """``since`` for :meth:`group_join`: ``None`` or ``(epoch str, offset int >= 0)``."""
    if since is None:
        return None
    if (
        isinstance(since, (tuple, list))
        and len(since) == 2
        and isinstance(since[0], str)
        and isinstance(since[1], int)
        and not isinstance(since[1], bool)
        and since[1] >= 0
    ):
        return since[0], since[1]
    raise ValueError(f"since must be None or (epoch str, offset int >= 0), the last position seen; got {since!r:.80}")


def covers(since: tuple[str, int] | None, epoch: str | None, latest: int, first: int) -> bool | None:
    """Whether a join resuming ``since`` can be given everything it missed.

    ``epoch``/``latest``: the group's epoch and last offset (``None``/0: no
    history); ``first``: the oldest offset still held (``latest + 1`` when
    none is).  ``None`` for a join that did not ask to resume.
    """
    if since is None:
        return None
    since_epoch, offset = since
    if epoch is None or since_epoch != epoch or offset > latest:
        return False
    return offset + 1 >= first


def notice_meta(group: str, epoch: str, latest: int, recovered: bool | None) -> dict[str, Any]:
    """The ``history`` value of a join's notice."""
    return {"group": group, "epoch": epoch, "offset": latest, "recovered": recovered}


def message_meta(group: str, epoch: str, offset: int, replayed: bool = False) -> dict[str, Any]:
    """The ``history`` value of a message to a history group."""
    meta: dict[str, Any] = {"group": group, "epoch": epoch, "offset": offset}
    if replayed:
        meta["replayed"] = True
    return meta
