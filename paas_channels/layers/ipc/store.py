"""The IPC layer's storage: one SQLite database in WAL mode per prefix.

Why SQLite: it is in the standard library, every write is one short
transaction under SQLite's own locks, and those locks are POSIX record locks
that the kernel releases when their process dies.  A process killed with
SIGKILL in the middle of a send leaves an uncommitted tail in the WAL that
every other process ignores: no lock to break by hand, nothing half-written
to read.  (asgi_ipc kept a pickled dict in shared memory under one POSIX
semaphore, which a dead process kept forever.)

Everything here is plain functions of a connection, run inside one
``BEGIN IMMEDIATE`` transaction by the layer's sync or async driver: the
operations are written once, only the waiting differs.

Tables:

* ``messages(key, seq, ...)``: ``key`` is the stored name (a ``!`` channel's
  prefix), ``seq`` its per-key sequence: FIFO per key;
* ``channels(key, pending, seq, sent, full, touched)``: the counter that
  makes the capacity check O(1), and the statistics;
* ``groups(grp, channel, expires)``, ``heartbeats(worker_id, expires, info)``;
* ``waiters(key, since, address)``: blocked receivers, by the abstract Unix
  socket address that wakes them (see :mod:`.wake`).  A send *claims* the
  oldest waiter on its key (deletes its rows) and wakes only that one.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import Iterator, NamedTuple

__all__ = ["SCHEMA_VERSION", "Sent", "Wake", "connect", "is_busy", "transaction"]

SCHEMA_VERSION = 1
#: Statistics of a channel with nothing pending are kept this long after its last send (as on Redis).
STATS_TTL = 86_400.0
# Small pages: a send writes a few small rows, and each commit appends whole pages to the WAL.
_PAGE_SIZE = 1024

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS messages(key TEXT NOT NULL, seq INTEGER NOT NULL, channel TEXT NOT NULL, "
    "expires REAL NOT NULL, data BLOB NOT NULL, PRIMARY KEY(key, seq)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS channels(key TEXT PRIMARY KEY, pending INTEGER NOT NULL, seq INTEGER NOT NULL, "
    "sent INTEGER NOT NULL, full INTEGER NOT NULL, touched REAL NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS groups(grp TEXT NOT NULL, channel TEXT NOT NULL, expires REAL NOT NULL, "
    "PRIMARY KEY(grp, channel)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS waiters(key TEXT NOT NULL, since INTEGER NOT NULL, address BLOB NOT NULL, "
    "PRIMARY KEY(key, since, address)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS waiters_by_address ON waiters(address)",
    "CREATE TABLE IF NOT EXISTS heartbeats(worker_id TEXT PRIMARY KEY, expires REAL NOT NULL, "
    "info BLOB NOT NULL) WITHOUT ROWID",
)

# One statement counts, numbers and checks capacity: the row is updated (and
# a sequence number returned) only while the channel is under capacity.
_COUNT_SEND = (
    "INSERT INTO channels(key, pending, seq, sent, full, touched) VALUES(?1, 1, 1, 1, 0, ?2) "
    "ON CONFLICT(key) DO UPDATE SET pending = pending + 1, seq = seq + 1, sent = sent + 1, touched = ?2 "
    "WHERE pending < ?3 RETURNING seq"
)


class Wake(NamedTuple):
    """A waiter claimed to be woken: its address, and the key it was claimed for (to claim another if it is gone)."""

    key: str
    address: bytes


class Sent(NamedTuple):
    """What a send did: stored or not (full), and the waiter it claimed to wake."""

    stored: bool
    wake: Wake | None


### Connections and transactions ###


def connect(path: str, busy_timeout: float) -> sqlite3.Connection:
    """Open (creating if needed) the database at ``path``; readable by this user only."""
    # Created (owner-only) just once, exclusively: closing a descriptor of a file
    # that another connection of this process has open would drop that
    # connection's POSIX locks (SQLite's "how to corrupt": two writers at once).
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA page_size={_PAGE_SIZE}")  # only takes effect on a new database
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise sqlite3.OperationalError(f"the database would not switch to WAL mode (it is in {mode!r} mode)")
        # NORMAL in WAL mode: a commit survives the death of its process; only
        # a power loss can lose the last commits (messages live for seconds anyway).
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA journal_size_limit=4194304")
        with transaction(conn):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(
                    f"it has schema version {version}, this paas-channels uses {SCHEMA_VERSION}; "
                    "stop the processes of the other version, or give this one another prefix"
                )
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: taken at once (``IMMEDIATE``), so it never fails half-way on a lock."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def is_busy(exc: BaseException) -> bool:
    """True for "database is locked": another process holds the write lock right now."""
    return isinstance(exc, sqlite3.OperationalError) and getattr(exc, "sqlite_errorcode", None) in (
        sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED,
    )


### Channels ###


def send(conn: sqlite3.Connection, now: float, key: str, channel: str, data: bytes,
         expires: float, capacity: int) -> Sent:
    """Store one message on ``key`` unless it is at ``capacity`` (then count it as refused)."""
    row = conn.execute(_COUNT_SEND, (key, now, capacity)).fetchone()
    if row is None and _expire_key(conn, key, now):
        row = conn.execute(_COUNT_SEND, (key, now, capacity)).fetchone()
    if row is None:
        conn.execute("UPDATE channels SET full = full + 1 WHERE key = ?", (key,))
        return Sent(False, None)
    conn.execute("INSERT INTO messages VALUES(?, ?, ?, ?, ?)", (key, row[0], channel, expires, data))
    return Sent(True, claim(conn, key))


def receive(conn: sqlite3.Connection, now: float, keys: list[str], address: bytes | None,
            since: int, wait: bool) -> tuple[tuple[str, bytes] | None, Wake | None]:
    """Take the oldest live message of the first of ``keys`` that has one.

    ``address``: the caller's wake-up socket.  When nothing is found and
    ``wait`` is true it is registered as a waiter on every key; when a
    message is taken its registrations go.  Returns ``((channel, data) or
    None, another waiter to wake)``: a key with messages left
    passes the wakeup on, so a receiver woken for a message it did not take
    (it found one on another channel first) strands nobody.
    """
    for key in keys:
        row = conn.execute(
            "SELECT seq, channel, expires, data FROM messages WHERE key = ? ORDER BY seq LIMIT 1", (key,)
        ).fetchone()
        if row is not None and row[2] <= now:
            _expire_key(conn, key, now)
            row = conn.execute(
                "SELECT seq, channel, expires, data FROM messages WHERE key = ? ORDER BY seq LIMIT 1", (key,)
            ).fetchone()
        if row is None:
            continue
        conn.execute("DELETE FROM messages WHERE key = ? AND seq = ?", (key, row[0]))
        (pending,) = conn.execute(
            "UPDATE channels SET pending = pending - 1 WHERE key = ? RETURNING pending", (key,)
        ).fetchone()
        if address is not None:
            conn.execute("DELETE FROM waiters WHERE address = ?", (address,))
        return (row[1], row[3]), (claim(conn, key) if pending > 0 else None)
    if address is not None:
        if wait:
            conn.executemany(
                "INSERT OR IGNORE INTO waiters VALUES(?, ?, ?)", [(key, since, address) for key in keys]
            )
        else:
            conn.execute("DELETE FROM waiters WHERE address = ?", (address,))
    return None, None


def claim(conn: sqlite3.Connection, key: str) -> Wake | None:
    """The oldest waiter on ``key``, unregistered from every key it waited on; None if nobody waits."""
    row = conn.execute("SELECT address FROM waiters WHERE key = ? ORDER BY since LIMIT 1", (key,)).fetchone()
    if row is None:
        return None
    conn.execute("DELETE FROM waiters WHERE address = ?", row)
    return Wake(key, row[0])


def forget_waiters(conn: sqlite3.Connection, addresses: list[bytes]) -> None:
    """Drop the registrations of receivers that are gone (their process died)."""
    conn.executemany("DELETE FROM waiters WHERE address = ?", [(address,) for address in addresses])


def waiter_addresses(conn: sqlite3.Connection) -> list[bytes]:
    return [row[0] for row in conn.execute("SELECT DISTINCT address FROM waiters")]


def channel_exists(conn: sqlite3.Connection, key: str) -> bool:
    return conn.execute("SELECT 1 FROM channels WHERE key = ?", (key,)).fetchone() is not None


### Groups ###


def group_add(conn: sqlite3.Connection, group: str, channel: str, expires: float) -> None:
    conn.execute(
        "INSERT INTO groups VALUES(?, ?, ?) ON CONFLICT(grp, channel) DO UPDATE SET expires = excluded.expires",
        (group, channel, expires),
    )


def group_discard(conn: sqlite3.Connection, group: str, channel: str) -> None:
    conn.execute("DELETE FROM groups WHERE grp = ? AND channel = ?", (group, channel))


def group_channels(conn: sqlite3.Connection, now: float, group: str) -> list[str]:
    return [row[0] for row in conn.execute(
        "SELECT channel FROM groups WHERE grp = ? AND expires > ? ORDER BY channel", (group, now)
    )]


### Expiry ###


def sweep(conn: sqlite3.Connection, now: float) -> None:
    """Drop what expired everywhere: messages (and their channels from groups), memberships, heartbeats."""
    expired = conn.execute("DELETE FROM messages WHERE expires <= ? RETURNING key, channel", (now,)).fetchall()
    _forget_expired(conn, expired)
    conn.execute("DELETE FROM groups WHERE expires <= ?", (now,))
    conn.execute("DELETE FROM heartbeats WHERE expires <= ?", (now,))
    conn.execute("DELETE FROM channels WHERE pending <= 0 AND touched <= ?", (now - STATS_TTL,))


def _expire_key(conn: sqlite3.Connection, key: str, now: float) -> int:
    expired = conn.execute(
        "DELETE FROM messages WHERE key = ? AND expires <= ? RETURNING key, channel", (key, now)
    ).fetchall()
    _forget_expired(conn, expired)
    return len(expired)


def _forget_expired(conn: sqlite3.Connection, expired: list[tuple[str, str]]) -> None:
    if not expired:
        return
    counts: dict[str, int] = {}
    for key, _ in expired:
        counts[key] = counts.get(key, 0) + 1
    conn.executemany("UPDATE channels SET pending = pending - ? WHERE key = ?",
                     [(count, key) for key, count in counts.items()])
    # A message left to expire means nobody reads that channel any more: stop
    # sending it group messages (ASGI 1.0 group semantics, as the other layers).
    conn.executemany("DELETE FROM groups WHERE channel = ?", [(channel,) for channel in {c for _, c in expired}])


### Flush, statistics, heartbeats ###


def flush(conn: sqlite3.Connection) -> None:
    """Everything but the waiters: receivers blocked right now stay registered."""
    for table in ("messages", "channels", "groups", "heartbeats"):
        conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names


def global_statistics(conn: sqlite3.Connection) -> dict[str, int]:
    sent, full = conn.execute("SELECT coalesce(sum(sent), 0), coalesce(sum(full), 0) FROM channels").fetchone()
    return {"messages_count": sent, "channel_full_count": full}


def channel_statistics(conn: sqlite3.Connection, now: float, key: str, expiry: float) -> dict[str, float]:
    _expire_key(conn, key, now)
    row = conn.execute("SELECT pending, sent, full FROM channels WHERE key = ?", (key,)).fetchone()
    pending, sent, full = row or (0, 0, 0)
    (oldest,) = conn.execute("SELECT min(expires) FROM messages WHERE key = ?", (key,)).fetchone()
    return {
        "messages_count": sent,
        "messages_pending": pending,
        "messages_max_age": 0.0 if oldest is None else max(0.0, now - (oldest - expiry)),
        "channel_full_count": full,
    }


def heartbeat(conn: sqlite3.Connection, worker_id: str, expires: float, info: bytes) -> None:
    conn.execute(
        "INSERT INTO heartbeats VALUES(?, ?, ?) ON CONFLICT(worker_id) DO UPDATE "
        "SET expires = excluded.expires, info = excluded.info",
        (worker_id, expires, info),
    )


def heartbeats(conn: sqlite3.Connection, now: float) -> list[tuple[str, bytes]]:
    return conn.execute("SELECT worker_id, info FROM heartbeats WHERE expires > ?", (now,)).fetchall()
