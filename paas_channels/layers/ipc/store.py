"""The IPC layer's storage: one SQLite database in WAL mode per prefix.

Why SQLite: it is in the standard library, every write is one short
transaction under SQLite's own locks, and those locks are POSIX record locks
that the kernel releases when their process dies.  A process killed with
SIGKILL in the middle of a send leaves an uncommitted tail in the WAL that
every other process ignores: no lock to break by hand, nothing half-written
to read.  (asgi_ipc kept a pickled dict in shared memory under one POSIX
semaphore, which a dead process kept forever.)

Everything here is plain functions of a connection, run by the layer's
sync or async driver: the operations are written once, only the waiting
differs.  The hot ones are single statements (atomic by themselves, so no
``BEGIN``/``COMMIT`` round of their own): a send is one ``INSERT ... SELECT``
that checks capacity and numbers the message, a receive one ``DELETE ...
RETURNING``; triggers keep the per-key counts.

Tables:

* ``messages(key, seq, ...)``: ``key`` is the stored name (a ``!`` channel's
  prefix), ``seq`` its per-key sequence: FIFO per key;
* ``channels(key, pending, seq, sent, full, touched)``: kept by triggers on
  ``messages``; makes the capacity check O(1), and holds the statistics;
* ``groups(grp, channel, expires)``, ``heartbeats(worker_id, expires, info)``;
* ``waiters(key, since, address)``: blocked receivers, by the abstract Unix
  socket address that wakes them (see :mod:`.wake`).  After a send the
  driver *claims* the oldest waiter on its key (deletes its rows) and wakes
  only that one;
* ``histories(grp, epoch, latest, stored, expires)``: a history group's epoch,
  last offset and the time of its last message (never going back, so its
  entries expire in offset order); ``history(grp, seq, expires, data)``: its
  entries, ``seq`` the offset (see :mod:`.history`).

A message's ``channel`` column names its target, or for a group send to an
inbox all its member channels separated by newlines; a history group's
message adds its position after a space (no name has one):
``members group epoch offset``, and ``... r`` when it is replayed after a join.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import Iterator

__all__ = ["SCHEMA_VERSION", "connect", "is_busy", "transaction"]

SCHEMA_VERSION = 3
#: Older schemas this one extends with new tables only: set up in place.
_UPGRADES_FROM = (2,)
#: Statistics of a channel with nothing pending are kept this long after its last message expired (as on Redis).
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
    "CREATE TABLE IF NOT EXISTS histories(grp TEXT PRIMARY KEY, epoch TEXT NOT NULL, latest INTEGER NOT NULL, "
    "stored REAL NOT NULL, expires REAL NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS history(grp TEXT NOT NULL, seq INTEGER NOT NULL, expires REAL NOT NULL, "
    "data BLOB NOT NULL, PRIMARY KEY(grp, seq)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS history_by_expiry ON history(expires)",
    # Every stored message counts once in, every deleted one (taken, expired, flushed) once out.
    "CREATE TRIGGER IF NOT EXISTS counted_in AFTER INSERT ON messages BEGIN "
    "INSERT INTO channels VALUES(NEW.key, 1, NEW.seq, 1, 0, NEW.expires) ON CONFLICT(key) DO UPDATE "
    "SET pending = pending + 1, seq = excluded.seq, sent = sent + 1, touched = excluded.touched; END",
    "CREATE TRIGGER IF NOT EXISTS counted_out AFTER DELETE ON messages BEGIN "
    "UPDATE channels SET pending = pending - 1 WHERE key = OLD.key; END",
)

# Store message ?2..?4 on key ?1 as its next number, only while the key holds fewer than ?5.
_STORE = (
    "INSERT INTO messages(key, seq, channel, expires, data) "
    "SELECT ?1, coalesce((SELECT seq FROM channels WHERE key = ?1), 0) + 1, ?2, ?3, ?4 "
    "WHERE coalesce((SELECT pending < ?5 FROM channels WHERE key = ?1), 1)"
)
# The oldest ?2 messages of key ?1, deleted as they are read.
_TAKE = (
    "DELETE FROM messages WHERE key = ?1 AND seq IN (SELECT seq FROM messages WHERE key = ?1 ORDER BY seq LIMIT ?2) "
    "RETURNING seq, channel, expires, data"
)

#: A message as a receiver gets it: (full channel name, expires, encoded message), the
#: encoded message of a history group being (encoded message, (group, epoch, offset, replayed)).
Position = tuple[str, str, int, bool]
Item = tuple[str, float, "bytes | tuple[bytes, Position]"]


### Connections and transactions ###


def connect(path: str, busy_timeout: float, setup_timeout: float) -> sqlite3.Connection:
    """Open (creating if needed) the database at ``path``; readable by this user only.

    Setting it up (WAL mode, the schema) waits up to ``setup_timeout`` for
    other processes doing the same; afterwards a busy lock waits
    ``busy_timeout`` seconds (0 for the async driver, which sleeps on its loop instead).
    """
    # Created (owner-only) just once, exclusively: closing a descriptor of a file
    # that another connection of this process has open would drop that
    # connection's POSIX locks (SQLite's "how to corrupt": two writers at once).
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    conn = sqlite3.connect(path, timeout=setup_timeout, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA page_size={_PAGE_SIZE}")  # only takes effect on a new database
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise sqlite3.OperationalError(f"the database would not switch to WAL mode (it is in {mode!r} mode)")
        # NORMAL in WAL mode: a commit survives the death of its process; only
        # a power loss can lose the last commits (messages live for seconds anyway).
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA journal_size_limit=4194304")
        # Set up already (the usual case): no write lock needed, so opening never
        # waits for a process that holds it.
        if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            _set_up(conn)
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
    except BaseException:
        conn.close()
        raise
    return conn


def _set_up(conn: sqlite3.Connection) -> None:
    with transaction(conn):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, *_UPGRADES_FROM, SCHEMA_VERSION):
            raise sqlite3.DatabaseError(
                f"it has schema version {version}, this paas-channels uses {SCHEMA_VERSION}; "
                "stop the processes of the other version, or give this one another prefix"
            )
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


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


def store(conn: sqlite3.Connection, key: str, channel: str, data: bytes, expires: float, capacity: int) -> bool:
    """Store one message on ``key`` if it holds fewer than ``capacity``; one statement, atomic on its own.

    ``channel``: the full name, or for a group send to several channels of one
    ``!`` key, all of them separated by newlines: one stored envelope per inbox.
    """
    return conn.execute(_STORE, (key, channel, expires, data, capacity)).rowcount == 1


def store_or_refuse(conn: sqlite3.Connection, now: float, key: str, channel: str, data: bytes,
                    expires: float, capacity: int) -> bool:
    """In a transaction: ``store``, after dropping what expired on ``key``; a refusal is counted."""
    if store(conn, key, channel, data, expires, capacity):
        return True
    if _expire_key(conn, key, now) and store(conn, key, channel, data, expires, capacity):
        return True
    conn.execute("UPDATE channels SET full = full + 1 WHERE key = ?", (key,))
    return False


def take(conn: sqlite3.Connection, now: float, key: str, limit: int) -> tuple[list[Item], list[tuple[str, str]]]:
    """Delete and return the oldest ``limit`` messages of ``key``; one statement, atomic on its own.

    Returns ``(live items in order, expired (key, channel column) pairs)``;
    group envelopes are opened into one item per target, a history group's
    message as ``(channel, expires, (data, (group, epoch, offset, replayed)))``.  The caller passes
    the expired ones to :func:`forget_expired`.
    """
    rows = conn.execute(_TAKE, (key, limit)).fetchall()
    if len(rows) > 1:
        rows.sort()
    items: list[Item] = []
    expired = []
    for _, targets, expires, data in rows:
        if expires <= now:
            expired.append((key, targets))
        elif " " in targets:  # a history group's message: its position follows the members
            targets, _, position = targets.partition(" ")
            group, epoch, offset, *replayed = position.split(" ")
            held = (data, (group, epoch, int(offset), bool(replayed)))
            items += [(channel, expires, held) for channel in targets.split("\n")]
        else:
            items += [(channel, expires, data) for channel in targets.split("\n")]
    return items, expired


def wake_needed(conn: sqlite3.Connection, key: str) -> bool:
    """Whether someone waits on ``key`` and it has a message for them (a read: takes no lock)."""
    return conn.execute(
        "SELECT 1 FROM waiters WHERE key = ?1 AND EXISTS(SELECT 1 FROM messages WHERE key = ?1) LIMIT 1", (key,)
    ).fetchone() is not None


def claim(conn: sqlite3.Connection, key: str) -> bytes | None:
    """In a transaction: the oldest waiter on ``key``, unregistered from every key it waited on."""
    row = conn.execute("SELECT address FROM waiters WHERE key = ? ORDER BY since LIMIT 1", (key,)).fetchone()
    if row is None:
        return None
    conn.execute("DELETE FROM waiters WHERE address = ?", row)
    return row[0]


def register(conn: sqlite3.Connection, keys: list[str], address: bytes, since: int) -> None:
    """Wake ``address`` for the next message on any of ``keys`` (oldest registration first)."""
    conn.executemany("INSERT OR IGNORE INTO waiters VALUES(?, ?, ?)", [(key, since, address) for key in keys])


def unregister(conn: sqlite3.Connection, address: bytes) -> None:
    conn.execute("DELETE FROM waiters WHERE address = ?", (address,))


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


### Group history ###

#: Capacity given to a join's notice and replay: bounded by the history's size, not the channel's capacity.
UNBOUNDED = 2**62


def history_append(conn: sqlite3.Connection, now: float, group: str, new_epoch: str, keep: float,
                   size: int, ttl: float, data: bytes) -> tuple[str, int]:
    """In a transaction: keep ``data`` as ``group``'s next entry; returns ``(epoch, its offset)``.

    A group without a live history starts one under ``new_epoch``.  The entry
    expires ``ttl`` after it was stored (never before the one ahead of it:
    stored times never go back), the history itself ``keep`` after its last
    use; entries beyond the last ``size`` are dropped.
    """
    row = conn.execute(
        "UPDATE histories SET latest = latest + 1, stored = max(stored, ?2), expires = ?3 "
        "WHERE grp = ?1 AND expires > ?2 RETURNING epoch, latest, stored",
        (group, now, now + keep),
    ).fetchone()
    if row is None:
        _start_history(conn, now, group, new_epoch, keep, latest=1)
        row = (new_epoch, 1, now)
    epoch, offset, stored = row
    conn.execute("INSERT INTO history VALUES(?, ?, ?, ?)", (group, offset, stored + ttl, data))
    if offset > size:
        conn.execute("DELETE FROM history WHERE grp = ? AND seq <= ?", (group, offset - size))
    return epoch, offset


def history_position(conn: sqlite3.Connection, now: float, group: str, new_epoch: str, keep: float) -> tuple[str, int]:
    """In a transaction: ``group``'s ``(epoch, latest offset)``, starting a history under ``new_epoch`` if it has none."""
    row = conn.execute(
        "UPDATE histories SET expires = max(expires, ?3) WHERE grp = ?1 AND expires > ?2 RETURNING epoch, latest",
        (group, now, now + keep),
    ).fetchone()
    if row is None:
        _start_history(conn, now, group, new_epoch, keep, latest=0)
        return new_epoch, 0
    return row


def history_after(conn: sqlite3.Connection, now: float, group: str, offset: int) -> list[tuple[int, bytes]]:
    """``(offset, data)`` of ``group``'s live entries after ``offset``, oldest first."""
    return conn.execute(
        "SELECT seq, data FROM history WHERE grp = ? AND seq > ? AND expires > ? ORDER BY seq", (group, offset, now)
    ).fetchall()


def _start_history(conn: sqlite3.Connection, now: float, group: str, epoch: str, keep: float, latest: int) -> None:
    # What an expired history left (nothing, normally: its entries expire first) is not the new one's.
    conn.execute("DELETE FROM history WHERE grp = ?", (group,))
    conn.execute("INSERT OR REPLACE INTO histories VALUES(?, ?, ?, ?, ?)", (group, epoch, latest, now, now + keep))


def sweep_histories(conn: sqlite3.Connection, now: float) -> None:
    """Drop expired history entries (by their index) and histories unused for their ``keep``."""
    conn.execute("DELETE FROM history WHERE expires <= ?", (now,))
    conn.execute("DELETE FROM histories WHERE expires <= ?", (now,))


### Expiry ###


def sweep(conn: sqlite3.Connection, now: float) -> None:
    """Drop what expired everywhere: messages (and their channels from groups), memberships, heartbeats."""
    expired = conn.execute("DELETE FROM messages WHERE expires <= ? RETURNING key, channel", (now,)).fetchall()
    forget_expired(conn, expired)
    conn.execute("DELETE FROM groups WHERE expires <= ?", (now,))
    conn.execute("DELETE FROM heartbeats WHERE expires <= ?", (now,))
    conn.execute("DELETE FROM channels WHERE pending <= 0 AND touched <= ?", (now - STATS_TTL,))


def _expire_key(conn: sqlite3.Connection, key: str, now: float) -> int:
    expired = conn.execute(
        "DELETE FROM messages WHERE key = ? AND expires <= ? RETURNING key, channel", (key, now)
    ).fetchall()
    forget_expired(conn, expired)
    return len(expired)


def forget_expired(conn: sqlite3.Connection, expired: list[tuple[str, str]]) -> None:
    """After expired messages were deleted: their channels leave every group.

    A message left to expire means nobody reads that channel any more: stop
    sending it group messages (ASGI 1.0 group semantics, as the other layers).
    ``expired``: ``(key, channel column)``; a group envelope's column names
    its targets separated by newlines (no channel name has one), then a
    history group's position after a space.
    """
    channels = {channel for _, targets in expired for channel in targets.partition(" ")[0].split("\n")}
    conn.executemany("DELETE FROM groups WHERE channel = ?", [(channel,) for channel in channels])


### Flush, statistics, heartbeats ###


def flush(conn: sqlite3.Connection) -> None:
    """Everything but the waiters (receivers blocked right now stay registered); histories too, so a new epoch."""
    for table in ("messages", "channels", "groups", "heartbeats", "histories", "history"):
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
