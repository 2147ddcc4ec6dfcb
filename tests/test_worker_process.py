"""The worker process on Redis: routing, channel selection, failures, graceful drain,
gevent, heartbeats and boot errors.  Each test starts its own worker processes."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from paas_channels.testing import wait_until

from tests.support import ROOT, ServerProcess, free_port
from tests.worker_client import ExampleStack, multipart

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def shared_stack():
    stack = ExampleStack()
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture
def stack(shared_stack):
    """The module's Redis and database; the test's worker processes stopped after it."""
    shared_stack.layer.flush()
    yield shared_stack
    for process in shared_stack.processes:
        process.close()
    shared_stack.processes.clear()


def pending(stack, channel):
    return stack.layer.channel_statistics(channel)["messages_pending"]


def from_group(message, group):
    """A message sent to ``group`` (a chat-* group, which keeps history), without its history
    position, and that position's offset: the position is checked to name the group, an epoch
    and an int offset."""
    assert message is not None, f"no message from {group}"
    message = dict(message)
    position = message.pop("history", None)
    assert isinstance(position, dict) and position.keys() == {"epoch", "group", "offset"}, position
    assert position["group"] == group and isinstance(position["epoch"], str) and position["epoch"], position
    assert isinstance(position["offset"], int) and not isinstance(position["offset"], bool), position
    return message, position["offset"]


def busy(stack):
    """Consumers running now, as the workers' heartbeats say (sent whenever a worker turns busy)."""
    return sum(int(info.get("busy", 0)) for info in stack.layer.heartbeats().values())


def test_routing_filters_named_groups_and_include(stack):
    stack.worker("--threads", "2")
    client = stack.client()
    # include(echo_routing, path=r"^/ws/echo"): the included routes match the rest of the path.
    echo = client.ws_connect("/ws/echo/")
    assert client.next_for(echo) == {"accept": True}
    client.ws_send(echo, "/ws/echo/", 1, "hello")
    assert client.next_for(echo) == {"text": "hello"}
    # No route for this path but the catch-all, which refuses.
    stray = client.ws_connect("/ws/nowhere/")
    assert client.next_for(stray) == {"accept": False}
    # route_class(ChatConsumer, path=r"^/ws/chat/(?P<room>[-\w]+)/$"): room is a keyword argument,
    # seen in the group the connection joins and in the notice its connect sends there.
    # One connection at a time: a connection joins its group before its accept is
    # delivered, so a notice from a concurrent connect may come first (the interface
    # takes any frame as an implicit accept); nothing promises accept-first then.
    joined_a = {"text": '{"system": "anonymous joined a"}'}
    # chat-* groups keep history (example_project/settings.py): each group message carries
    # its position, the group's next offset.
    a1 = client.ws_connect("/ws/chat/a/")
    assert client.next_for(a1) == {"accept": True}
    message, first = from_group(client.next_for(a1), "chat-a")
    assert message == joined_a
    a2 = client.ws_connect("/ws/chat/a/")
    assert client.next_for(a2) == {"accept": True}
    assert from_group(client.next_for(a2), "chat-a") == (joined_a, first + 1)
    assert from_group(client.next_for(a1), "chat-a") == (joined_a, first + 1)  # a1 was in chat-a already
    b1 = client.ws_connect("/ws/chat/b/")
    assert client.next_for(b1) == {"accept": True}
    assert from_group(client.next_for(b1), "chat-b")[0] == {"text": '{"system": "anonymous joined b"}'}
    assert sorted(stack.layer.group_channels("chat-a")) == sorted([a1, a2])
    assert stack.layer.group_channels("chat-b") == [b1]
    client.ws_send(a1, "/ws/chat/a/", 1, '{"text": "hi room a"}')
    expected = ({"text": '{"user": "anonymous", "text": "hi room a", "room": "a"}'}, first + 2)
    assert from_group(client.next_for(a1), "chat-a") == expected and from_group(client.next_for(a2), "chat-a") == expected
    assert client.next_for(b1, timeout=0.5) is None
    # Disconnect leaves the group.
    client.ws_disconnect(a2, "/ws/chat/a/", 1)
    assert wait_until(lambda: stack.layer.group_channels("chat-a") == [a1])


def test_only_websocket_channels_leave_http_alone(stack):
    worker = stack.worker("--only-channels", "websocket.*")
    assert "consuming websocket.connect, websocket.disconnect, websocket.receive " in worker.output()
    client = stack.client()
    request = client.send_request("GET", "/whoami/")
    echo = client.ws_connect("/ws/echo/")
    assert client.next_for(echo) == {"accept": True}
    assert client.next_for(request, timeout=1.5) is None
    assert pending(stack, "http.request") == 1


def test_excluded_thumbnail_channel_never_runs_there(stack):
    stack.worker("--exclude-channels", "thumbnail", "--threads", "2")
    client = stack.client()
    # A picture posted to a chat room: stored, and its thumbnail queued on the `thumbnail` channel.
    client.get("/chat/lobby/")  # the CSRF cookie
    png = io.BytesIO()
    Image.new("RGB", (300, 200), "teal").save(png, "PNG")
    body, content_type = multipart("image", "cat.png", png.getvalue())
    posted = client.request("POST", "/chat/lobby/pictures/", body=body, content_type=content_type,
                            headers=[(b"x-csrftoken", client.cookies["csrftoken"].encode())])
    assert posted.status == 202, posted.text
    thumbnail = f"/pictures/{json.loads(posted.body)['picture']}/thumbnail.png"
    assert client.get(thumbnail).status == 404  # not made yet
    assert pending(stack, "thumbnail") == 1
    # A thumbnail worker (here through manage.py runworker) does take it.
    runworker = start_runworker(stack, "--only-channels", "thumbnail")
    assert wait_until(lambda: client.get(thumbnail).status == 200, timeout=20), runworker.output()[-3000:]
    runworker.signal(signal.SIGTERM)
    assert runworker.wait(30) == 0


def start_runworker(stack, *args):
    """``python manage.py runworker <args>`` as a process of the stack."""
    runworker = ServerProcess([], env=stack.env)
    runworker.process = subprocess.Popen(
        [sys.executable, "manage.py", "runworker", *args],
        cwd=ROOT, env=runworker.env, stdout=runworker.log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    stack.processes.append(runworker)
    return runworker


def test_manage_py_runworker_with_gevent_serves_django(stack):
    runworker = start_runworker(stack, "--gevent", "5")
    runworker.wait_for_output(" consuming ", timeout=30)
    client = stack.client()
    replies = [client.send_request("GET", "/counter/") for _ in range(3)]
    assert [client.response(reply, timeout=20).status for reply in replies] == [200, 200, 200], runworker.output()[-3000:]
    assert client.get("/counter/").text.startswith("count=")
    runworker.signal(signal.SIGTERM)
    assert runworker.wait(30) == 0
    assert "gevent pool of 5 greenlets" in runworker.output()
    assert "stopped cleanly after 4 message(s)" in runworker.output()


def test_consumer_exception_is_logged_and_the_next_message_served(stack):
    worker = stack.worker()
    client = stack.client()
    echo = client.ws_connect("/ws/echo/")
    assert client.next_for(echo) == {"accept": True}
    client.ws_send(echo, "/ws/echo/", 1, "raise")
    client.ws_send(echo, "/ws/echo/", 2, "still here")
    assert client.next_for(echo) == {"text": "still here"}
    output = worker.output()
    assert "consumer echo failed on websocket.receive" in output
    assert "Traceback (most recent call last)" in output and "RuntimeError: echo consumer asked to fail" in output
    assert worker.process.poll() is None


def test_sigterm_lets_five_slow_consumers_finish_and_exits_0(stack):
    worker = stack.worker("--threads", "5")
    client = stack.client()
    replies = [client.send_request("GET", "/slow/", query={"seconds": 3}) for _ in range(5)]
    # All five taken (no prefetch beyond five threads), then the deploy's SIGTERM.
    assert wait_until(lambda: pending(stack, "http.request") == 0)
    assert wait_until(lambda: busy(stack) >= 1)  # running (the 0 -> 1 change is heartbeated at once)
    worker.signal(signal.SIGTERM)
    late = client.send_request("GET", "/whoami/")
    for reply in replies:
        response = client.response(reply, timeout=20)
        assert response.status == 200 and response.text == "slept 3.0"
    assert worker.wait(30) == 0
    # The drain's count may miss a message a loop took from Redis and is still decoding (pending
    # is 0 already); the drain waits for the loops, not the count, so all five are done.
    assert re.search(r"waiting up to 25 s for [1-5] in-flight consumer\(s\)", worker.output()), worker.output()
    assert "stopped cleanly after 5 message(s)" in worker.output()
    # Stopped receiving at SIGTERM: the request sent afterwards was left for another worker.
    assert client.next_for(late, timeout=0.2) is None
    assert pending(stack, "http.request") == 1


def test_graceful_timeout_abandons_consumers_and_second_sigint_forces(stack):
    worker = stack.worker("--graceful-timeout", "1")
    client = stack.client()
    client.send_request("GET", "/slow/", query={"seconds": 10})
    assert wait_until(lambda: pending(stack, "http.request") == 0)
    assert wait_until(lambda: busy(stack) == 1)
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 1
    assert time.monotonic() - started < 8  # well under the 10 s the consumer wanted
    assert "graceful timeout 1 s: 1 consumer(s) still running were abandoned" in worker.output()

    worker = stack.worker()
    client.send_request("GET", "/slow/", query={"seconds": 10})
    assert wait_until(lambda: pending(stack, "http.request") == 0)
    assert wait_until(lambda: busy(stack) == 1)
    worker.signal(signal.SIGINT)
    assert wait_until(lambda: "SIGINT received: finishing in-flight consumers" in worker.output())
    worker.signal(signal.SIGINT)
    assert worker.wait(20) == 1
    assert "forced stop: 1 consumer(s) still running were abandoned" in worker.output()


def test_gevent_pool_runs_fifty_sleeping_consumers_at_once(stack):
    stack.worker("--gevent", "50")
    client = stack.client()
    started = time.monotonic()
    replies = [client.send_request("GET", "/slow/", query={"seconds": 4}) for _ in range(50)]
    for reply in replies:
        assert client.response(reply, timeout=30).text == "slept 4.0"
    # 49 at a time would need two rounds, 8 s: under that, all 50 slept together.
    assert time.monotonic() - started < 7.9


def test_heartbeat_published_while_running_and_gone_after_exit(stack):
    worker = stack.worker("--threads", "2", "--only-channels", "http.*")
    pid = worker.process.pid

    def mine():
        return [info for info in stack.layer.heartbeats().values() if info["pid"] == pid]

    assert wait_until(lambda: len(mine()) == 1)
    (info,) = mine()
    assert info["channels"] == ["http.disconnect", "http.request"] and info["threads"] == 2
    assert info["busy"] == 0 and info["host"] and info["started"] <= time.time()
    client = stack.client()
    for _ in range(3):
        client.get("/whoami/")
    assert wait_until(lambda: mine() and mine()[0]["done"] >= 3, timeout=15)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert wait_until(lambda: mine() == [], timeout=5)


def open_database_files(pid, directory):
    """How many descriptors of process ``pid`` point at the SQLite database in ``directory``."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target == os.path.join(directory, "db.sqlite3"):
            count += 1
    return count


def test_database_connections_closed_or_reused_as_django_does(stack):
    client = stack.client()
    # CONN_MAX_AGE=0: closed after each message, like after each request.
    worker = stack.worker("--threads", "3", env={"CONN_MAX_AGE": "0"})
    for n in range(1, 11):
        assert client.get("/counter/").text == f"count={n}"  # reads and writes the session table
    assert wait_until(lambda: open_database_files(worker.process.pid, stack.dir) == 0)
    worker.close()
    stack.processes.remove(worker)
    # Persistent connections: reused, at most one per thread, however many messages.
    worker = stack.worker("--threads", "3", env={"CONN_MAX_AGE": "600"})
    replies = [client.send_request("GET", "/whoami/") for _ in range(30)]
    for reply in replies:
        assert client.response(reply).status == 200
    assert client.get("/counter/").text == "count=11"
    assert 1 <= open_database_files(worker.process.pid, stack.dir) <= 3


def run_worker_cli(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "paas_channels.cli", "run", "worker", *args],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(
    "args, env_change, says",
    [
        (["--layer", "nope"], {}, "CHANNEL_LAYERS has no alias 'nope'"),
        ([], {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, "channel layer 'default' (RedisChannelLayer) is unreachable"),
        (["--only-channels", "nothing.*"], {}, "this worker would consume no channel"),
        ([], {"PAAS_CHANNELS_GEVENT": "many"}, "environment variable PAAS_CHANNELS_GEVENT"),
    ],
)
def test_boot_errors_exit_3_with_one_clear_line(stack, args, env_change, says):
    result = run_worker_cli(*args, env={**stack.env, **env_change})
    assert result.returncode == 3, result.stderr[-2000:]
    # stderr: the start's log lines (the logging rule), then the one error line.
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if not re.match(r"^\d{4}-\d\d-\d\d [\d:,]+ [A-Z]+ \S+\[\d+\]: ", line)]
    assert len(errors) == 1 and errors == lines[-1:] and says in errors[0], result.stderr
