"""Real processes for tests: paas-channels processes, projects, a slow link.

Nothing here mocks anything: a ``ServerProcess`` is ``python -m paas_channels.cli
run ...`` in its own session (so signal tests can target it), with its output
captured.  What tests and the benchmarks share (``RedisServer``, ``free_port``,
``wait_until``, ...) lives in :mod:`paas_channels.testing`.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Sequence

from paas_channels.testing import (  # noqa: F401 - re-exported for the tests
    RedisServer,
    free_port,
    free_ports,
    stop_process,
    stop_processes,
    wait_for_port,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent


class ServerProcess:
    """``paas-channels run <args>`` as a real subprocess, output to a temp file."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.args = list(args)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.env.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), self.env.get("PYTHONPATH")]))
        self.cwd = cwd or ROOT
        self.log = tempfile.NamedTemporaryFile(prefix="paas-proc-", suffix=".log", delete=False)
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "paas_channels.cli", *self.args]

    def start(self) -> "ServerProcess":
        self.process = subprocess.Popen(
            self.command(), env=self.env, cwd=self.cwd, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise TimeoutError(f"{text!r} not seen in the output of {' '.join(self.command())}:\n{self.output()[-4000:]}")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 40.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM, then SIGKILL to the whole session if it does not exit in time."""
        if self.process is None:
            return None
        return stop_process(self.process, timeout)

    def close(self) -> None:
        self.stop()
        self.log.close()
        os.unlink(self.log.name)


class Script(ServerProcess):
    """``python -c CODE ARGS...`` in its own session, output captured (see ``ServerProcess``)."""

    def __init__(self, code: str, *args: str) -> None:
        super().__init__([])
        self.code, self.script_args = code, [str(arg) for arg in args]

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.code, *self.script_args]

    def last_number(self, word: str) -> int:
        """The number after the last ``word`` printed (0 before the first)."""
        found = re.findall(rf"^{word} (\d+)$", self.output(), re.M)
        return int(found[-1]) if found else 0


def close_all(processes: "Sequence[ServerProcess]", timeout: float = 40.0) -> None:
    """Close several ``ServerProcess``es, stopped together (SIGTERM to every one first), so their
    drains overlap as when a platform stops a release, instead of one after the other."""
    stop_processes([process.process for process in processes if process.process is not None], timeout)
    for process in processes:
        process.close()


#: Variables of the test run (or of a developer's shell) that a platform would not set.
_NOT_FROM_A_PLATFORM = {"REDIS_URL", "REDIS_TLS_URL", "DATABASE_URL", "PORT", "DYNO", "WEB_CONCURRENCY", "DEBUG",
                        "SECRET_KEY", "DJANGO_SETTINGS_MODULE", "ALLOWED_HOSTS", "CLOUDAMQP_URL", "RABBITMQ_URL"}


def close_layers(layers: Sequence, broker_may_be_down: bool = False) -> None:
    """A layer fixture's teardown: close every layer it made, then collect garbage, so that what a
    test left to the collector is reported in that test, not a later one.  ``broker_may_be_down``:
    a close that fails (a private node a failed test left stopped) is ignored."""
    for layer in layers:
        try:
            layer.close()
        except Exception:  # noqa: BLE001 - only when the caller said the broker may be gone
            if not broker_may_be_down:
                raise
    gc.collect()


def platform_environment(**extra: str) -> dict[str, str]:
    """What a platform gives the processes: this machine's environment minus the test run's (and the
    developer's) settings, this interpreter's scripts first on PATH, and the config vars ``extra``."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("PAAS_CHANNELS_") and key not in _NOT_FROM_A_PLATFORM}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


class Started(ServerProcess):
    """Any command (honcho, the installed ``paas-channels``) started in ``cwd``, in exactly ``env``."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        super().__init__([], cwd=cwd or ROOT)
        self.argv, self.env = argv, env
        self.start()

    def command(self) -> list[str]:
        return self.argv


class Honcho(Started):
    """``honcho start <process types>`` on the Procfile in ``cwd`` (default: the repository's).

    honcho starts each Procfile command in a session of its own and forwards
    SIGTERM to them; ``stop`` also kills what is left of them if honcho could not.
    honcho would read ``cwd/.env`` (a developer's local recipe, with their own
    database and Redis) over the test's environment: it reads an empty file instead.
    """

    def __init__(self, names: list[str], env: dict[str, str], concurrency: str = "", cwd: Path | None = None) -> None:
        options = ["-c", concurrency] if concurrency else []
        super().__init__([sys.executable, "-m", "honcho", "--no-colour", "--env", os.devnull, "start", *options,
                          *names], env, cwd)

    def stop(self, timeout: float = 40.0) -> int:
        code = super().stop(timeout)
        output = self.output()
        for name, pid in re.findall(r"(\S+) started \(pid=(\d+)\)", output):
            if f"{name} stopped (" not in output:  # honcho died before it: its session is still ours
                try:
                    os.killpg(int(pid), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        return code


def write_project(root: Path, package: str, settings: str, routing: str) -> Path:
    """A minimal Django project under ``root``: ``package`` with settings, routing and an empty URLconf."""
    directory = root / package
    directory.mkdir()
    (directory / "__init__.py").write_text("")
    (directory / "settings.py").write_text(textwrap.dedent(settings))
    (directory / "routing.py").write_text(textwrap.dedent(routing))
    (directory / "urls.py").write_text("urlpatterns = []\n")
    return root


def long_poll_answer(url: str, text: str):
    """GET ``url``/live/ and answer it with POSTs to /live/publish/ (a group send) until it is answered.

    Returns the long-poll's response, or None if it never came.
    """
    import httpx

    answer = []
    waiter = threading.Thread(target=lambda: answer.append(httpx.get(f"{url}/live/", timeout=30)))
    waiter.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if httpx.post(f"{url}/live/publish/", data={"text": text}, timeout=10).json()["answered"]:
            break
        time.sleep(0.1)
    waiter.join(30)
    return answer[0] if answer else None


class SlowLinkProxy:
    """A TCP proxy to Redis whose replies each arrive ``delay`` seconds late: a Redis a network hop away.

    Requests pass at once; every chunk Redis sends back is held ``delay``
    seconds first.  Real sockets both ways, one thread per direction.
    """

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, 0.0), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self.delay), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, delay: float) -> None:
        try:
            while data := source.recv(65536):
                if delay:
                    time.sleep(delay)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()
        for sock in self._sockets:
            sock.close()
