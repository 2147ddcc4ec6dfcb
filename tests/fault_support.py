"""Real processes for the fault suite: a private Redis that tests may freeze or kill, a small
project, ``run web`` and ``run worker`` on it, and load generators that measure what clients see.

The project's consumers are plain functions (no database), so what the suite
measures is the interface, the layer and the worker, not Django's ORM:

* ``/`` answers ``ok`` at once; ``/slow/?s=N`` sleeps N seconds first;
* ``/ran/`` appends the request's ``id`` query value to ``$FAULT_RAN_FILE``
  before answering (what ran, for "503 means not run");
* WebSockets on any path are accepted and echo.

Every figure a test measures is printed as ``FAULT-FIGURE name: value`` so that
``pytest -s`` (or the captured output of a failure) shows it; README's
"Failure and security" section quotes them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.interface_support import scrubbed_environ
from tests.support import ROOT, RedisServer, ServerProcess, close_all, free_port, wait_for_port, write_project

SETTINGS = '''
from pathlib import Path
from paas_channels.conf import configure
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "paas_channels"]
ROOT_URLCONF = "faultproj.urls"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
configure(globals(), routing="faultproj.routing.channel_routing")
'''

ROUTING = '''
import os
import time
from urllib.parse import parse_qs
from paas_channels.routing import route

def _query(message):
    return {key: values[0] for key, values in parse_qs(message.content.get("query_string", b"").decode()).items()}

def answer(message):
    message.reply_channel.send({"status": 200, "headers": [[b"content-type", b"text/plain"]], "content": b"ok"})

def slow(message):
    time.sleep(min(float(_query(message).get("s", "1")), 30))
    answer(message)

def ran(message):
    with open(os.environ["FAULT_RAN_FILE"], "a") as out:
        out.write(_query(message).get("id", "?") + "\\n")
    answer(message)

def upload(message):
    """Reads the body (first chunk in the message, the rest on body_channel) and answers its size."""
    size, chunks = len(message.content.get("body") or b""), 0
    body_channel = message.content.get("body_channel")
    more = bool(body_channel)
    while more:
        channel, chunk = message.channel_layer.receive([body_channel], block=True)
        if channel is None:
            continue
        size += len(chunk.get("content") or b"")
        chunks += 1
        more = chunk.get("more_content") and not chunk.get("closed")
    message.reply_channel.send({"status": 200, "content": f"{size} {chunks}".encode()})

def ws_connect(message):
    message.reply_channel.send({"accept": True})

def ws_receive(message):
    message.reply_channel.send({"text": message.content.get("text") or ""})

channel_routing = [
    route("http.request", slow, path=r"^/slow/$"),
    route("http.request", ran, path=r"^/ran/$"),
    route("http.request", upload, path=r"^/upload/$"),
    route("http.request", answer),
    route("websocket.connect", ws_connect),
    route("websocket.receive", ws_receive),
]
'''


def figure(name: str, value: str) -> None:
    """Print one measured figure of the fault suite (grep ``FAULT-FIGURE``)."""
    print(f"FAULT-FIGURE {name}: {value}", flush=True)


class FaultStack:
    """A private Redis, the fault project, and the web/worker processes a test starts on them."""

    def __init__(self, tmp: Path | None = None) -> None:
        self.dir = Path(tmp or tempfile.mkdtemp(prefix="paas-faults-"))
        write_project(self.dir, "faultproj", SETTINGS, ROUTING)
        self.ran_file = self.dir / "ran.txt"
        self.redis = RedisServer().start()
        self.processes: list[ServerProcess] = []
        self.port: int | None = None

    @property
    def env(self) -> dict[str, str]:
        return {
            **scrubbed_environ(),
            "DJANGO_SETTINGS_MODULE": "faultproj.settings",
            "PYTHONPATH": os.pathsep.join([str(self.dir), str(ROOT)]),
            "REDIS_URL": self.redis.url,
            "SECRET_KEY": "fault-suite-secret-key-" + "k" * 40,
            "FAULT_RAN_FILE": str(self.ran_file),
            "PAAS_CHANNELS_LOG_LEVEL": "info",
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def web(self, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
        self.port = free_port()
        process = ServerProcess(["run", "web", "--bind", "127.0.0.1", "--port", str(self.port), *args],
                                env={**self.env, **(env or {})}, cwd=self.dir).start()
        self.processes.append(process)
        wait_for_port(self.port, timeout=30, process=process.process)
        process.wait_for_output("listening on", timeout=15)
        return process

    def worker(self, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
        process = ServerProcess(["run", "worker", *args], env={**self.env, **(env or {})}, cwd=self.dir).start()
        self.processes.append(process)
        process.wait_for_output(" consuming ", timeout=30)
        return process

    def layer(self):
        """A layer on the stack's Redis, as its processes build it."""
        from paas_channels.layers import RedisChannelLayer

        layer = RedisChannelLayer(hosts=[self.redis.url])
        layer.use_keys([self.env["SECRET_KEY"]])
        return layer

    def busy_workers(self) -> int:
        """Consumers running now, from the workers' heartbeats (sent at once when one turns busy)."""
        layer = self.layer()
        try:
            return sum(int(info.get("busy", 0)) for info in layer.heartbeats().values())
        finally:
            layer.close()

    def freeze_redis(self) -> None:
        os.kill(self.redis.process.pid, signal.SIGSTOP)

    def thaw_redis(self) -> None:
        os.kill(self.redis.process.pid, signal.SIGCONT)

    def ran(self) -> list[str]:
        return self.ran_file.read_text().split() if self.ran_file.exists() else []

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"--- {process.args}:\n{process.output()[-tail:]}" for process in self.processes)

    def close(self) -> None:
        if self.redis.process is not None:
            try:
                self.thaw_redis()
            except ProcessLookupError:
                pass
        close_all(self.processes)
        self.redis.close()

    def __enter__(self) -> "FaultStack":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def stack_fixture(scope: str = "function", worker: tuple[str, ...] = (), web: tuple[str, ...] = ()):
    """A fault-suite module's ``stack`` fixture: a :class:`FaultStack` for each test (``scope``
    ``"function"``: the test starts what it needs) or shared by the module, with ``run worker`` and
    ``run web`` started with ``worker`` / ``web`` arguments when given; closed after it.

    ``stack = stack_fixture("module", worker=("--threads", "4"), web=("--http-timeout", "10"))``
    """
    @pytest.fixture(scope=scope, name="stack")
    def _stack(tmp_path_factory):
        with FaultStack(tmp_path_factory.mktemp("faults")) as stack:
            if worker:
                stack.worker(*worker)
            if web:
                stack.web(*web)
            yield stack

    return _stack



@dataclass
class Sample:
    started: float
    finished: float
    status: int  # 0: no answer (connection error or client timeout)


@dataclass
class Load:
    """Requests at a steady rate, each one's start, end and status recorded."""

    url: str
    rate: float = 50.0
    client_timeout: float = 30.0
    samples: list[Sample] = field(default_factory=list)

    async def run(self, seconds: float, path: str = "/") -> None:
        import httpx

        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
        async with httpx.AsyncClient(base_url=self.url, timeout=self.client_timeout, limits=limits) as client:
            tasks = []
            start = time.monotonic()
            count = int(seconds * self.rate)
            for index in range(count):
                delay = start + index / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(self._one(client, path)))
            await asyncio.gather(*tasks)

    async def _one(self, client, path: str) -> None:
        started = time.monotonic()
        try:
            status = (await client.get(path)).status_code
        except Exception:
            status = 0
        self.samples.append(Sample(started, time.monotonic(), status))


async def open_websockets(port: int, count: int, batch: int = 50) -> list:
    """``count`` WebSockets to the echo route, ``batch`` handshakes at a time."""
    from websockets.asyncio.client import connect

    sockets: list = []
    for first in range(0, count, batch):
        sockets += await asyncio.gather(*(connect(f"ws://127.0.0.1:{port}/echo/", open_timeout=30)
                                          for _ in range(first, min(count, first + batch))))
    return sockets
