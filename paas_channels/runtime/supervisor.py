"""``--processes N`` (``WEB_CONCURRENCY``) with N > 1: one supervisor and N children of one mode.

gunicorn's conventions, in a small arbiter of our own:

* the listening socket is bound once, here, before any child exists; every
  child serves that one socket (no port race, no child bound to a stale port);
* a child that exits is replaced; its exit status is logged, and a child that
  keeps dying young waits longer each time (0.1 s doubling to 10 s);
* a child that fails to boot (exit 3: bad settings, unreachable layer) stops the
  supervisor with exit 3 and that child's one-line error: no restart loop;
* SIGTERM/SIGINT: every child gets SIGTERM and drains as it does alone
  (WebSockets 1012, responses in flight, consumers); the supervisor exits 0
  when every child exited 0, else 1; a second SIGINT kills them (exit 1);
* SIGTTIN/SIGTTOU: one child more/fewer;
* a child reports over a pipe from its own event loop; one silent for
  ``--timeout`` seconds (30 s more while it boots) is killed and replaced.

Why not gunicorn's ``Arbiter`` with a worker class: its SIGINT is a quick
stop, its exit status does not say whether work was cut off, a crashing child
is respawned at once, a boot failure ends with gunicorn's own log lines
rather than the child's error, and it has no non-listening mode (``run
worker``): overriding ``handle_int``, ``stop``, ``reap_workers`` and
``spawn_worker`` would have left little of it.  The children are forked before
Django (or gevent) is imported, so each child boots exactly as one process
does alone: a gevent child still patches before Django.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable

from ..config.options import EXIT_BOOT_ERROR, Config
from ..exceptions import ConfigError

__all__ = ["report_ready", "supervise"]

logger = logging.getLogger(__name__)

#: Listen backlog of the shared socket (gunicorn's default).
BACKLOG = 2048
#: Restart delays for a child that dies young: first, longest; "young" is under this many seconds.
_BACKOFF_START, _BACKOFF_MAX, _YOUNG = 0.1, 10.0, 30.0
#: Seconds a booting child gets beyond --timeout before its first report.
_BOOT_ALLOWANCE = 30.0
#: Seconds the children get beyond --graceful-timeout to exit on their own before SIGKILL.
_EXIT_MARGIN = 10.0

_READY, _BEAT, _ERROR = b"R", b".", b"E"


### In a child: reporting to the supervisor ###


class _Link:
    """The child's end of its pipe: "ready", a beat every ``interval`` seconds, or its boot error."""

    def __init__(self, fd: int, interval: float) -> None:
        self.fd = fd
        self.interval = interval
        self.ready = False
        self._loop: Any = None
        self._orphaned = False

    def send(self, data: bytes) -> None:
        try:
            os.write(self.fd, data)
        except BlockingIOError:  # the supervisor is behind on reading: the next beat will do
            pass
        except OSError:
            if not self._orphaned:
                # The supervisor is gone (killed): drain and exit rather than serve unsupervised.
                self._orphaned = True
                logger.warning("the supervisor is gone: shutting down")
                os.kill(os.getpid(), signal.SIGTERM)

    def report_ready(self) -> None:
        if self.ready:
            return
        self.ready = True
        try:
            import asyncio

            # Beats go through the event loop when there is one: a loop stuck in
            # one callback stops them, which is what --timeout is for.
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self.send(_READY)
        threading.Thread(target=self._beat, name="paas-supervisor-beat", daemon=True).start()

    def _beat(self) -> None:
        while True:
            time.sleep(self.interval)
            if self._loop is None:
                self.send(_BEAT)
                continue
            try:
                self._loop.call_soon_threadsafe(self.send, _BEAT)
            except RuntimeError:  # the loop is closed: the process is on its way out
                return


_link: _Link | None = None


def report_ready() -> None:
    """Tell the supervisor this process serves (listening, or consuming); nothing without a supervisor."""
    if _link is not None:
        _link.report_ready()


### In the supervisor ###


@dataclasses.dataclass
class _Child:
    pid: int
    fd: int
    started: float
    last_heard: float
    ready: bool = False
    retiring: bool = False
    killed: bool = False
    error: bytes = b""
    pending: bytes = b""


def _exit_description(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class Supervisor:
    """Runs ``serve(config)`` in ``config.processes`` forked children; see the module docstring."""

    def __init__(self, config: Config, serve: Callable[[Config], int], listening: bool) -> None:
        self.config = config
        self.serve = serve
        self.listening = listening
        self.target = config.processes
        self.children: dict[int, _Child] = {}
        self.socket: socket.socket | None = None
        self.stopping = False
        self.forced = False
        self.cut = 0
        self.deadline = 0.0
        self.failure: str | None = None
        self.spawn_after = 0.0
        self.young_deaths = 0
        self._signals: list[int] = []
        self._selector = selectors.DefaultSelector()
        self._wakeup_r, self._wakeup_w = os.pipe()

    ### Start and the main loop ###

    def run(self) -> int:
        if self.listening:
            self.socket = _listen(self.config)
            port = self.socket.getsockname()[1]
            self.config = dataclasses.replace(self.config, values={**self.config.values, "port": port})
        previous = self._install_signals()
        logger.info(
            "supervisor %d: %d %s process(es) x %s%s; SIGTTIN/SIGTTOU add/remove one",
            os.getpid(), self.target, self.config.mode, self.config.concurrency(),
            f", sharing one socket on {self.config.bind}:{self.config.port}" if self.socket else "",
        )
        try:
            return self._loop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(-1)
            if self.socket is not None:
                self.socket.close()

    def _loop(self) -> int:
        while True:
            self._wait(0.25)
            self._handle_signals()
            self._reap()
            now = time.monotonic()
            if self.failure is not None:
                return self._fail()
            if self.stopping:
                if not self.children:
                    return self._stopped()
                if now >= self.deadline:
                    logger.warning("%d process(es) still running after the graceful timeout: SIGKILL",
                                   len(self.children))
                    self._kill_all(signal.SIGKILL)
                    self.cut += len(self.children)
                    self.deadline = float("inf")
                continue
            self._check_silence(now)
            missing = self.target - sum(not child.retiring for child in self.children.values())
            for _ in range(missing if now >= self.spawn_after else 0):
                self._spawn()

    def _wait(self, timeout: float) -> None:
        for key, _ in self._selector.select(timeout):
            child = key.data
            if child is None:
                _drain_fd(self._wakeup_r)
            else:
                self._read(child)

    def _read(self, child: _Child) -> None:
        data = _drain_fd(child.fd)
        if not data:
            return
        child.last_heard = time.monotonic()
        if child.error or _ERROR in data:
            child.error += data if child.error else data[data.index(_ERROR) + 1:]
            return
        if _READY in data and not child.ready:
            child.ready = True
            logger.info("process %d is serving", child.pid)

    ### Children ###

    def _spawn(self) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(read_fd)
            self._become_child(write_fd)
        os.close(write_fd)
        now = time.monotonic()
        child = _Child(pid=pid, fd=read_fd, started=now, last_heard=now)
        self.children[pid] = child
        self._selector.register(read_fd, selectors.EVENT_READ, child)
        logger.info("started process %d (%d of %d)", pid, len(self.children), self.target)

    def _become_child(self, write_fd: int) -> None:
        global _link
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGTERM, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self._selector.close()
            for fd in [self._wakeup_r, self._wakeup_w, *(other.fd for other in self.children.values())]:
                os.close(fd)
            os.set_blocking(write_fd, False)
            _link = _Link(write_fd, interval=min(1.0, self.config.timeout / 4))
            listen_fd = None
            if self.socket is not None:
                listen_fd = os.dup(self.socket.fileno())  # the server adopts and closes its own copy
                self.socket.close()
            code = self.serve(dataclasses.replace(self.config, supervised=True, listen_fd=listen_fd))
        except ConfigError as exc:
            # Told to the supervisor, which prints it once, rather than printed here by every child.
            if _link is not None:
                _link.send(_ERROR + str(exc).encode(errors="replace"))
            code = EXIT_BOOT_ERROR
        except KeyboardInterrupt:
            code = 1
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # noqa: BLE001 - reported, then this process ends
            logger.exception("process %d failed", os.getpid())
            if _link is not None and not _link.ready:
                _link.send(_ERROR + f"{type(exc).__name__}: {exc}".encode(errors="replace"))
                code = EXIT_BOOT_ERROR
        finally:
            logging.shutdown()
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001 - exiting
                    pass
            os._exit(code if isinstance(code, int) else 1)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            self._read(child)
            self._selector.unregister(child.fd)
            os.close(child.fd)
            self._exited(child, os.waitstatus_to_exitcode(status))

    def _exited(self, child: _Child, code: int) -> None:
        what = f"process {child.pid} {_exit_description(code)}"
        if code == EXIT_BOOT_ERROR and not self.forced:
            if self.failure is None:  # the first one's error: the others usually say the same
                error = child.error.decode(errors="replace").strip().splitlines()
                self.failure = error[0] if error else f"process {child.pid} failed to boot (exit status 3)"
            return
        if self.stopping:
            if code != 0 and not (code == -signal.SIGTERM and not child.ready):
                self.cut += 1
            (logger.info if code == 0 else logger.warning)("%s", what)
            return
        if child.retiring:
            logger.info("%s (retired by SIGTTOU)", what)
            return
        lived = time.monotonic() - child.started
        self.young_deaths = self.young_deaths + 1 if lived < _YOUNG else 0
        delay = min(_BACKOFF_MAX, _BACKOFF_START * 2 ** max(0, self.young_deaths - 1))
        self.spawn_after = time.monotonic() + delay
        logger.warning("%s after %.1f s; starting another in %.1f s", what, lived, delay)

    def _check_silence(self, now: float) -> None:
        for child in self.children.values():
            # Booting (Django's setup, the layer probe) may take longer on a busy machine.
            allowed = self.config.timeout + (0 if child.ready else _BOOT_ALLOWANCE)
            if not child.killed and now - child.last_heard > allowed:
                state = "serving" if child.ready else "booting"
                logger.error("process %d (%s) sent nothing for %g s (--timeout): killing it and starting another",
                             child.pid, state, allowed)
                child.killed = True
                _kill(child.pid, signal.SIGKILL)

    def _kill_all(self, signum: int) -> None:
        for pid in list(self.children):
            _kill(pid, signum)

    ### Signals ###

    def _install_signals(self) -> dict[int, Any]:
        os.set_blocking(self._wakeup_w, False)
        os.set_blocking(self._wakeup_r, False)
        signal.set_wakeup_fd(self._wakeup_w)
        self._selector.register(self._wakeup_r, selectors.EVENT_READ, None)

        def on_signal(signum: int, frame: Any) -> None:
            self._signals.append(signum)  # only a note here; the loop does the work

        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD)
        return {signum: signal.signal(signum, on_signal) for signum in handled}

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            name = signal.Signals(signum).name
            if signum == signal.SIGCHLD:
                continue  # _reap runs on every turn of the loop
            if signum in (signal.SIGTERM, signal.SIGINT):
                self._stop(signum, name)
            elif self.stopping:
                continue
            elif signum == signal.SIGTTIN:
                self.target += 1
                logger.info("SIGTTIN: %d process(es) now", self.target)
            elif signum == signal.SIGTTOU:
                self._retire(name)

    def _stop(self, signum: int, name: str) -> None:
        if not self.stopping:
            self.stopping = True
            self.deadline = time.monotonic() + self.config.graceful_timeout + _EXIT_MARGIN
            logger.info("%s: stopping %d process(es) gracefully (up to %g s)",
                        name, len(self.children), self.config.graceful_timeout)
            if self.socket is not None:
                self.socket.close()  # the children keep their copies until they stop listening
                self.socket = None
            self._kill_all(signal.SIGTERM)
        elif signum == signal.SIGINT and not self.forced:
            self.forced = True
            logger.warning("SIGINT again: killing %d process(es) now", len(self.children))
            self._kill_all(signal.SIGKILL)

    def _retire(self, name: str) -> None:
        serving = sorted((child for child in self.children.values() if not child.retiring), key=lambda c: c.started)
        if self.target <= 1 or not serving:
            logger.info("%s: already at one process", name)
            return
        self.target -= 1
        newest = serving[-1]
        newest.retiring = True
        logger.info("%s: %d process(es) now; stopping process %d gracefully", name, self.target, newest.pid)
        _kill(newest.pid, signal.SIGTERM)

    ### Endings ###

    def _stopped(self) -> int:
        if self.forced or self.cut:
            logger.warning("supervisor: stopped; %s", "forced" if self.forced else
                           f"{self.cut} process(es) did not drain cleanly")
            return 1
        logger.info("supervisor: every process drained; stopped")
        return 0

    def _fail(self) -> int:
        if self.children:
            logger.error("a process failed to boot: stopping the other %d", len(self.children))
            self._stop(signal.SIGTERM, "boot failure")
            while self.children and time.monotonic() < self.deadline:
                self._wait(0.25)
                self._reap()
            self._kill_all(signal.SIGKILL)
        raise ConfigError(self.failure or "a process failed to boot")


def _listen(config: Config) -> socket.socket:
    host = config.bind.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, config.port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {config.bind}:{config.port}: {exc.strerror or exc}. "
            "Is another process using the port? Choose another with --port or PORT"
        ) from None
    return sock


def _drain_fd(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            break
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def supervise(config: Config, serve: Callable[[Config], int], listening: bool) -> int:
    """Run ``serve(child_config)`` in ``config.processes`` children under a supervisor; its exit code.

    ``listening``: bind ``config.bind``/``config.port`` here and hand every child
    the socket (``child_config.listen_fd``); a worker listens on nothing.  A
    boot failure raises ``ConfigError`` with the child's error (the CLI prints
    it, exit 3).
    """
    return Supervisor(config, serve, listening).run()
