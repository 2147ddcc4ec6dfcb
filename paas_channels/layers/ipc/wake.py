"""Wake-up sockets: how a send wakes a receiver blocked in another process, without polling.

A blocked receive owns one Unix datagram socket bound to an *abstract*
address (Linux: a name in the kernel, no file).  It registers that address
in the database as a waiter and sleeps on the socket (``poll`` for threads,
``loop.add_reader`` for asyncio); a send that claims it sends one empty
datagram there.  The kernel frees an abstract address when its process dies,
so a dead receiver leaves no file behind, and a datagram to it fails at once
with ``ECONNREFUSED``, which is how a sender learns to drop its registration.

Sockets are pooled per layer object and per process: a blocking receive takes
one and gives it back, so the common case makes no system call to set up.
"""

from __future__ import annotations

import errno
import os
import secrets
import select
import socket
import threading

__all__ = ["WakeSocket", "WakePool", "address_is_live", "wake"]

# Errors that mean "nobody is bound there any more".
_GONE = (errno.ECONNREFUSED, errno.ENOENT)


class WakeSocket:
    """One receiver's wake-up socket: non-blocking, bound to a fresh abstract address."""

    __slots__ = ("sock", "address")

    def __init__(self, tag: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        # The tag (uid, prefix, pid) is for whoever lists sockets (`ss -x`); the random part makes it unique.
        self.address = f"\0paas-channels.{tag}.{os.getpid()}.{secrets.token_hex(8)}".encode()
        self.sock.bind(self.address)

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> None:
        """Forget wakeups that came before now (the database is read right after)."""
        try:
            while True:
                self.sock.recv(64)
        except (BlockingIOError, InterruptedError):
            pass

    def wait(self, timeout: float) -> None:
        """Sleep until a wakeup comes or ``timeout`` seconds pass (a thread's wait)."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        poller.poll(max(0, int(timeout * 1000) + 1))

    def close(self) -> None:
        self.sock.close()


class WakePool:
    """Idle wake-up sockets of one layer object in this process (a forked child starts empty)."""

    def __init__(self, tag: str) -> None:
        self._tag = tag
        self._pid = os.getpid()
        self._idle: list[WakeSocket] = []
        self._lock = threading.Lock()

    def take(self) -> WakeSocket:
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's addresses stay the parent's
                for inherited in self._idle:
                    inherited.close()  # this process's copy only; the parent's stays bound
                self._pid, self._idle = os.getpid(), []
            if self._idle:
                return self._idle.pop()
        return WakeSocket(self._tag)

    def give(self, wake_socket: WakeSocket) -> None:
        with self._lock:
            if self._pid == os.getpid() and len(self._idle) < 64:
                self._idle.append(wake_socket)
                return
        wake_socket.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for wake_socket in idle:
            wake_socket.close()


_sender: list[socket.socket] = []  # the one unbound socket wakeups are sent from (sendto is thread-safe)
_sender_lock = threading.Lock()


def _sending_socket() -> socket.socket:
    if not _sender:
        with _sender_lock:
            if not _sender:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.setblocking(False)
                _sender.append(sock)
    return _sender[0]


def wake(address: bytes) -> bool:
    """Send one wakeup to ``address``; False if no process is bound there any more.

    A full socket buffer means the receiver has wakeups it has not read yet:
    one more would tell it nothing, so that counts as woken.
    """
    try:
        _sending_socket().sendto(b"", address)
    except (BlockingIOError, InterruptedError):
        return True
    except OSError as exc:
        if exc.errno in _GONE:
            return False
        raise
    return True


def address_is_live(address: bytes) -> bool:
    """Whether a receiver is still bound to ``address``, asked without waking it.

    (``connect`` on a datagram socket sends nothing: it only checks the address.)
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(address)
    except OSError as exc:
        if exc.errno in _GONE:
            return False
        raise
    finally:
        probe.close()
    return True
