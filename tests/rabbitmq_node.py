"""A private RabbitMQ node for tests that stop, freeze or count a broker.

Never the shared broker on 5672: each node has its own name
(``paas-test-<port>@localhost``), ports, data and log directories in a temp
dir, no plugins (an empty ``enabled_plugins`` file) and its own config file
(the system's ``rabbitmq.conf`` names port 5672).  It runs in its own session
so stopping it signals nothing else.  ``rabbitmqctl`` is called on it by node
name: the management-free way to count queues and exchanges.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from paas_channels.testing import free_port, wait_for_port

_BIN = Path("/usr/lib/rabbitmq/bin")  # the Debian wrapper in /usr/sbin would switch to the rabbitmq user


def _binary(name: str) -> str:
    path = _BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: apt-get install rabbitmq-server (.ci/run does)")
    return found


class RabbitMQNode:
    """``rabbitmq-server`` on free ports; ``start()``, ``stop()``, ``freeze()``/``thaw()``, ``ctl(...)``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dist_port = free_port()
        self.name = f"paas-test-{self.port}@localhost"
        self.dir = Path(tempfile.mkdtemp(prefix="paas-rabbitmq-"))
        (self.dir / "enabled_plugins").write_text("")
        (self.dir / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (self.dir / "rabbitmq-env.conf").write_text("ERL_EPMD_ADDRESS=127.0.0.1\n")
        self.process: subprocess.Popen | None = None

    def url(self, user: str = "guest", password: str = "guest") -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/%2F"

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
            RABBITMQ_CONF_ENV_FILE=str(self.dir / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_PID_FILE=str(self.dir / "pid"),
            RABBITMQ_FEATURE_FLAGS_FILE=str(self.dir / "feature_flags"),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(self.dir / "plugins"),
        )
        return env

    def start(self, timeout: float = 90) -> "RabbitMQNode":
        with open(self.dir / "out.log", "ab") as log:
            self.process = subprocess.Popen(
                [_binary("rabbitmq-server")], env=self.env, cwd=self.dir,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            wait_for_port(self.port, timeout=timeout, process=self.process)
        except (RuntimeError, TimeoutError) as exc:
            tail = (self.dir / "out.log").read_text(errors="replace")[-2000:]
            self.stop()
            raise RuntimeError(f"private RabbitMQ node did not start: {exc}\n{tail}") from None
        return self

    def stop(self) -> None:
        """Stop the node as an operator would (SIGTERM to its session), KILL if it takes too long."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        self.thaw(process)
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def running(self) -> "RabbitMQNode":
        """The node up and answering, whatever an earlier test left (stopped, frozen): for a node shared
        by several modules (``rabbitmq_node`` in tests/conftest.py)."""
        if self.process is None or self.process.poll() is not None:
            self.process = None
            self.start()
        else:
            self.thaw()
        return self

    def freeze(self) -> None:
        """SIGSTOP the node: it keeps its sockets open and answers nothing (a hung broker)."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGSTOP)

    def thaw(self, process: subprocess.Popen | None = None) -> None:
        process = process or self.process
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGCONT)

    def ctl(self, *args: str) -> str:
        """``rabbitmqctl -n <node> args...``; its output."""
        result = subprocess.run(
            [_binary("rabbitmqctl"), "-n", self.name, "-q", *args], env=self.env,
            capture_output=True, text=True, timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr or result.stdout}")
        return result.stdout

    def names(self, kind: str) -> list[str]:
        """Names of the node's queues (``kind="queues"``) or exchanges, from ``rabbitmqctl list_<kind>``."""
        return sorted(line.split("\t")[0] for line in self.ctl(f"list_{kind}", "name", "--no-table-headers").splitlines()
                      if line.strip())

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
