"""How the IPC layer runs an operation: atomic steps, driven by a sync or an async driver.

An operation is a generator of :class:`Plan` steps (sans-IO, like the Redis
layer's ops): the operation's own plan, then what that plan left to do once committed (wake a receiver, drop
expired channels from groups).  Each step is one statement or one
transaction, so a step that finds the write lock busy can simply be run again.

The sync driver lets SQLite wait for the lock (its busy timeout).  The async
driver's connections never wait inside SQLite: a busy step sleeps on the
event loop and is tried again, so the loop is never blocked by another process.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any, Callable, Generator, NamedTuple

from . import store
from .wake import wake

__all__ = ["FORGET", "LOCK_TIMEOUT", "WAKE", "Plan", "arun", "operation", "plain", "run"]

#: Seconds a step waits for SQLite's write lock before it gives up with an error.
LOCK_TIMEOUT = 10.0
# The async driver's sleeps between tries while another process holds the lock.
_RETRY_FIRST, _RETRY_MAX = 0.0002, 0.01

#: What a plan leaves to do once committed: wake a receiver on a key, or drop
#: the channels of expired messages from groups.
WAKE, FORGET = "wake", "forget"
Effect = tuple[str, Any]
Outcome = tuple[Any, list[Effect]]
Steps = Generator["Plan", Outcome, Any]


class Plan(NamedTuple):
    """One atomic step: ``run(conn, now) -> (result, effects)``.

    ``transaction``: run it inside ``BEGIN IMMEDIATE``/``COMMIT``; False for
    a step of single statements, each atomic on its own, that may be run
    again from the start when a lock is busy.
    """

    run: Callable[[sqlite3.Connection, float], Outcome]
    transaction: bool = True


def plain(function: Callable[..., Any], *args: Any, transaction: bool = True) -> Plan:
    """A plan for a store function that needs only the connection (and ``args``) and leaves nothing to do after."""
    return Plan(lambda conn, now: (function(conn, *args), []), transaction)


def operation(plan: Plan) -> Steps:
    """The steps of one operation; its result is the generator's return value."""
    result, effects = yield plan
    for kind, argument in effects:
        if kind == FORGET:
            yield plain(store.forget_expired, argument)
            continue
        # Wake the oldest receiver waiting on the key; one whose process is gone refuses, so the next.
        while (yield plain(store.wake_needed, argument, transaction=False))[0]:
            address = (yield plain(store.claim, argument))[0]
            if address is None or wake(address):
                break
    return result


def step(conn: sqlite3.Connection, plan: Plan) -> Outcome:
    now = time.time()
    if not plan.transaction:
        return plan.run(conn, now)
    with store.transaction(conn):
        return plan.run(conn, now)


def run(conn: sqlite3.Connection, steps: Steps) -> Any:
    """The sync driver: each step waits for the lock as SQLite does."""
    try:
        current = next(steps)
        while True:
            current = steps.send(step(conn, current))
    except StopIteration as done:
        return done.value


async def arun(conn: sqlite3.Connection, steps: Steps) -> Any:
    """The async driver: a step that finds the lock busy sleeps on the loop and is tried again."""
    try:
        current = next(steps)
        while True:
            current = steps.send(await _astep(conn, current))
    except StopIteration as done:
        return done.value


async def _astep(conn: sqlite3.Connection, plan: Plan) -> Outcome:
    delay, waited = _RETRY_FIRST, 0.0
    while True:
        try:
            return step(conn, plan)
        except sqlite3.OperationalError as exc:
            if not store.is_busy(exc) or waited >= LOCK_TIMEOUT:
                raise
        await asyncio.sleep(delay)
        waited += delay
        delay = min(delay * 2, _RETRY_MAX)
