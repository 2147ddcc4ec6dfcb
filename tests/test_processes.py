"""``--processes N`` (``WEB_CONCURRENCY``): a supervisor and N real children sharing one socket.

Real processes, real signals, real clients: the example project's ``/pid/``
view says which process ran a request, its chat room is the group every
WebSocket joins, and the heartbeats each process publishes (kind, pid, open
connections) say which process holds which connection.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading

import httpx
import pytest
from websockets.sync.client import connect

from paas_channels.config.settings import settings_from_env
from paas_channels.layers import IPCChannelLayer, RedisChannelLayer
from tests.interface_support import scrubbed_environ
from tests.support import ROOT, RedisServer, ServerProcess, free_port, wait_for_port, wait_until

pytestmark = pytest.mark.slow

_STARTED = re.compile(r"started process (\d+)")


@pytest.fixture(scope="module")
def database(tmp_path_factory) -> str:
    """A migrated SQLite database for the example project (chat messages, sessions)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('processes') / 'db.sqlite3'}"
    result = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT,
                            env={**scrubbed_environ(), **_project(url)}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return url


@pytest.fixture(scope="module")
def redis():
    server = RedisServer().start()
    yield server
    server.close()


_databases = iter(range(1, 16))


@pytest.fixture
def redis_url(redis) -> str:
    """A Redis database of its own per test: no heartbeat of an earlier test is seen."""
    return f"redis://127.0.0.1:{redis.port}/{next(_databases)}"


def _project(database: str, **extra: str) -> dict[str, str]:
    return {"DJANGO_SETTINGS_MODULE": "example_project.settings", "DEBUG": "1", "DATABASE_URL": database,
            "PAAS_CHANNELS_LOG_LEVEL": "info", **extra}


def _start(args: list[str], env: dict[str, str], listens: bool = True) -> tuple[ServerProcess, str]:
    port = free_port()
    where = ["--bind", "127.0.0.1", "--port", str(port)] if listens else []
    process = ServerProcess(["run", *args, *where], env={**scrubbed_environ(), **env}).start()
    try:
        if listens:
            wait_for_port(port, timeout=30, process=process.process)
        processes = int(env.get("WEB_CONCURRENCY", "0")) or int(args[args.index("--processes") + 1])
        assert wait_until(lambda: process.output().count(" is serving") >= processes, 45), process.output()[-3000:]
    except BaseException:
        print(process.output()[-4000:])
        process.close()
        raise
    return process, f"http://127.0.0.1:{port}"


def _children(process: ServerProcess) -> list[int]:
    return [int(pid) for pid in _STARTED.findall(process.output())]


def _beats(layer, kind: str) -> dict[int, dict]:
    return {info["pid"]: info for info in layer.heartbeats().values() if info.get("kind") == kind}


def _websockets(stack: contextlib.ExitStack, url: str, path: str, count: int) -> list:
    """``count`` WebSockets, one after the other, closed when ``stack`` closes."""
    return [stack.enter_context(connect(url.replace("http://", "ws://") + path, open_timeout=20))
            for _ in range(count)]


def _spread(layer, kind: str, count: int) -> dict[int, int]:
    """WebSockets per process, from the heartbeats, once they account for all ``count``."""
    def by_pid() -> dict[int, int]:
        return {pid: info["connections"]["websocket"] for pid, info in _beats(layer, kind).items()}

    wait_until(lambda: sum(by_pid().values()) == count, 20, interval=0.2)
    return by_pid()


def _chat_everyone_hears(sockets: list, text: str) -> None:
    sockets[0].send(json.dumps({"text": text}))
    for ws in sockets:
        while True:
            frame = json.loads(ws.recv(timeout=20))
            if frame.get("text") == text:
                break


def _position(frame: str) -> tuple[dict, str | None]:
    """A frame of the resume protocol: ``(position, data)``."""
    assert frame.startswith("\x1e"), frame
    header, newline, data = frame[1:].partition("\n")
    return json.loads(header), (data if newline else None)


### Combined mode, two processes, no Redis: the IPC layer ###


def test_combined_with_web_concurrency_2_and_no_redis_shares_groups_over_ipc(database):
    env = _project(database, WEB_CONCURRENCY="2")
    # The layer every process of the dyno derives (configure(): no REDIS_URL, two processes).
    entry = settings_from_env({**env, "SECRET_KEY": "x"}, base_dir=ROOT)["CHANNEL_LAYERS"]["default"]
    assert entry["BACKEND"] == "paas_channels.layers.IPCChannelLayer"
    layer = IPCChannelLayer(**entry["CONFIG"])
    process, url = _start(["--combined"], env)
    stack = contextlib.ExitStack()
    try:
        output = process.output()
        assert "supervisor" in output and "2 combined process(es) x 4 worker thread(s) + 4 HTTP thread(s)" in output
        assert "on one IPCChannelLayer shared by the processes of this machine" in output
        children = set(_children(process))
        assert len(children) == 2
        pids = set()
        assert wait_until(lambda: pids.add(int(httpx.get(f"{url}/pid/", timeout=20).text)) or pids == children, 30)

        sockets = _websockets(stack, url, "/ws/chat/ipc/", 24)
        spread = _spread(layer, "combined", 24)
        assert set(spread) == children and all(spread.values()), spread
        # Sent by a client of one process, heard by the clients of both.
        _chat_everyone_hears(sockets, "across the dyno")
        # The rooms keep history over IPC too (example_project/settings.py): a client that comes
        # back, to whichever process, gets what was said while it was away, from the shared database.
        room = url.replace("http://", "ws://") + "/ws/chat/ipc/?paas_channels=1"
        with connect(room, open_timeout=20) as away:
            notice = _position(away.recv(timeout=20))[0]
        assert notice["group"] == "chat-ipc" and notice["recovered"] is None
        for n in range(3):
            _chat_everyone_hears(sockets, f"while away {n}")
        with connect(f"{room}&paas_resume=chat-ipc:{notice['epoch']}:{notice['offset']}", open_timeout=20) as back:
            resumed = _position(back.recv(timeout=20))[0]
            assert resumed["recovered"] is True and resumed["epoch"] == notice["epoch"]
            replayed = [_position(back.recv(timeout=20)) for _ in range(resumed["offset"] - notice["offset"])]
        assert [meta["offset"] for meta, _ in replayed] == list(range(notice["offset"] + 1, resumed["offset"] + 1))
        assert all(meta["replayed"] for meta, _ in replayed)
        said = [json.loads(data).get("text") for _, data in replayed]
        assert [text for text in said if text and text.startswith("while away")] == [f"while away {n}" for n in range(3)]
    finally:
        stack.close()
        layer.close()
        assert process.stop() == 0, process.output()[-3000:]
        process.close()


### Split mode: web and worker, two processes each, on Redis ###


@pytest.mark.redis
def test_web_and_worker_with_two_processes_each_on_redis(database, redis_url):
    env = _project(database, REDIS_URL=redis_url)
    layer = RedisChannelLayer(hosts=[redis_url])
    worker, _ = _start(["worker", "--processes", "2", "--threads", "2"], env, listens=False)
    web, url = _start(["web", "--processes", "2"], env)
    stack = contextlib.ExitStack()
    try:
        # Both worker processes run views; the health endpoint counts workers, not web processes.
        pids = {httpx.get(f"{url}/pid/", timeout=20).text for _ in range(40)}
        assert set(map(int, pids)) == set(_children(worker))
        assert wait_until(lambda: len(_beats(layer, "web")) == 2, 20), layer.heartbeats()
        assert httpx.get(f"{url}/.paas-channels/health", timeout=10).json()["workers"] == 2

        sockets = _websockets(stack, url, "/ws/chat/split/", 24)
        spread = _spread(layer, "web", 24)
        assert sum(spread.values()) == 24 and all(spread.values()) and set(spread) == set(_children(web)), spread
        _chat_everyone_hears(sockets, "to every web process")

        status = subprocess.run([sys.executable, "-m", "paas_channels.cli", "status"], cwd=ROOT, timeout=60,
                                env={**scrubbed_environ(), **env}, capture_output=True, text=True)
        assert "total: 2 worker(s)" in status.stdout and "total: 2 web process(es)" in status.stdout, status.stdout
    finally:
        stack.close()
        layer.close()
        assert web.stop() == 0, web.output()[-3000:]
        assert worker.stop() == 0, worker.output()[-3000:]
        web.close()
        worker.close()


### Combined mode: children die, are replaced, drain ###


@pytest.mark.redis
def test_a_killed_child_is_replaced_and_the_other_keeps_its_websockets(database, redis_url):
    layer = RedisChannelLayer(hosts=[redis_url])
    process, url = _start(["--combined", "--processes", "2", "--threads", "2"], _project(database, REDIS_URL=redis_url))
    stack = contextlib.ExitStack()
    try:
        sockets = _websockets(stack, url, "/ws/echo/", 20)
        spread = _spread(layer, "combined", 20)
        assert len(spread) == 2 and all(spread.values()), spread
        victim, survivor = sorted(spread)
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: f"process {victim} was killed by SIGKILL" in process.output(), 10)
        assert wait_until(lambda: len(_children(process)) == 3 and process.output().count(" is serving") == 3, 30)
        # The survivor's WebSockets never noticed; the victim's were cut.
        alive = 0
        for index, ws in enumerate(sockets):
            try:
                ws.send(f"still here {index}")
                assert ws.recv(timeout=10) == f"still here {index}"
                alive += 1
            except Exception:  # noqa: BLE001 - one of the victim's
                pass
        assert alive == spread[survivor]
        assert httpx.get(f"{url}/pid/", timeout=20).status_code == 200
    finally:
        stack.close()
        layer.close()
        process.close()


@pytest.mark.redis
def test_sigterm_lets_slow_requests_on_both_children_finish(database, redis_url):
    layer = RedisChannelLayer(hosts=[redis_url])
    # Through the layer, so the worker threads' heartbeats show the requests in flight.
    process, url = _start(["--combined", "--processes", "2", "--threads", "3", "--http", "layer"],
                          _project(database, REDIS_URL=redis_url))
    answers: list = []

    def slow() -> None:
        with httpx.Client(timeout=40) as client:  # a connection each: spread over the children
            answers.append(client.get(f"{url}/slow/?seconds=6"))

    threads = [threading.Thread(target=slow) for _ in range(6)]
    try:
        for thread in threads:
            thread.start()
        busy = lambda: [info["busy"] for info in _beats(layer, "combined").values()]  # noqa: E731
        # All six running (three threads each), so some on each child; a heartbeat comes every 5 s.
        assert wait_until(lambda: sorted(busy()) == [3, 3], 15), layer.heartbeats()
        process.signal(signal.SIGTERM)
        for thread in threads:
            thread.join(40)
        assert [answer.status_code for answer in answers] == [200] * 6
        assert process.wait(40) == 0, process.output()[-3000:]
        assert "every process drained" in process.output()
    finally:
        layer.close()
        process.close()


def test_in_memory_layer_with_two_processes_is_a_boot_error(database, tmp_path):
    (tmp_path / "memsettings.py").write_text(
        "from example_project.settings import *  # noqa\n"
        "CHANNEL_LAYERS = {'default': {'BACKEND': 'paas_channels.layers.InMemoryChannelLayer',\n"
        "                              'ROUTING': 'example_project.routing.channel_routing'}}\n"
    )
    env = {**scrubbed_environ(), **_project(database, DJANGO_SETTINGS_MODULE="memsettings", WEB_CONCURRENCY="2"),
           "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    process = ServerProcess(["run", "--combined", "--port", str(free_port())], env=env).start()
    try:
        assert process.wait(30) == 3
        output = process.output()
        last = output.strip().splitlines()[-1]
        assert last.startswith("paas-channels: CHANNEL_LAYERS['default'] is InMemoryChannelLayer")
        assert "IPCChannelLayer" in last and "REDIS_URL" in last and "one of them" in last
        assert output.count("lives inside one process") == 1  # one line, not one per child
        assert "starting another" not in output  # no restart loop
    finally:
        process.close()


### Scaling and the supervisor's timeout ###


@pytest.mark.redis
def test_ttin_ttou_and_a_silent_child(database, redis_url):
    layer = RedisChannelLayer(hosts=[redis_url])
    process, _ = _start(["worker", "--processes", "2", "--timeout", "4"], _project(database, REDIS_URL=redis_url),
                        listens=False)
    try:
        assert wait_until(lambda: len(_beats(layer, "worker")) == 2, 15)
        process.signal(signal.SIGTTIN)
        assert wait_until(lambda: len(_beats(layer, "worker")) == 3, 30), process.output()[-2000:]
        process.signal(signal.SIGTTOU)
        assert wait_until(lambda: "retired by SIGTTOU" in process.output(), 30), process.output()[-2000:]

        silent = _children(process)[0]
        os.kill(silent, signal.SIGSTOP)  # alive, but it reports nothing any more
        assert wait_until(lambda: f"process {silent} (serving) sent nothing for 4 s" in process.output(), 20)
        assert wait_until(lambda: len(_children(process)) == 4 and process.output().count(" is serving") == 4, 30)
        assert process.stop() == 0, process.output()[-3000:]
    finally:
        layer.close()
        process.close()


def test_wsgi_with_two_processes_serves_from_both(database, tmp_path):
    (tmp_path / "wsgisettings.py").write_text("from example_project.settings import *  # noqa\nCHANNEL_LAYERS = {}\n")
    env = {**_project(database, DJANGO_SETTINGS_MODULE="wsgisettings", WEB_CONCURRENCY="2"),
           "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    process, url = _start(["wsgi"], env)
    try:
        pids = set()
        for _ in range(200):
            with httpx.Client(timeout=10) as client:  # a new connection each time
                pids.add(int(client.get(f"{url}/pid/").text))
            if len(pids) == 2:
                break
        assert pids == set(_children(process))
        assert process.stop() == 0
    finally:
        process.close()


def test_a_supervisor_needs_a_free_port(database):
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        process = ServerProcess(["run", "--combined", "--processes", "2", "--bind", "127.0.0.1", "--port", str(port)],
                                env={**scrubbed_environ(), **_project(database)}).start()
        try:
            assert process.wait(30) == 3
            assert process.output().strip().splitlines()[-1].startswith("paas-channels: cannot listen on")
            assert "started process" not in process.output()
        finally:
            process.close()
    finally:
        taken.close()
