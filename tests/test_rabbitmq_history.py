"""RabbitMQ group history across processes: one sequencer, its hand-over, broker faults, no leaks.

tests/test_layer_history.py holds the RabbitMQ layer to the rules every
layer keeps; these are what only RabbitMQ has: several layer objects (as
processes would be, and real processes) number ONE history through the
sequencer the broker picks (``x-single-active-consumer``), the sequencer's
owner going away (closed, or killed) mid-stream, a broker restart and a lost
stream, and the history's objects being per prefix, never per group.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from paas_channels.layers.rabbitmq import ChannelLayerConnectionError, RabbitMQChannelLayer
from paas_channels.testing import wait_until
from tests.support import close_layers
from tests.rabbitmq_history_proc import HISTORY as PROC_HISTORY
from tests.rabbitmq_history_proc import KEY

HISTORY = {"chat-*": {"size": 1000, "ttl": 300}, **PROC_HISTORY}
IDLE = {"idle-*": {"size": 10, "ttl": 1}}
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def make(rabbitmq_url, rabbitmq_made_layers):
    """Layers on the shared broker; ``make(prefix)`` again gives another "process" of that prefix."""
    made = []

    def make(prefix=None, url=rabbitmq_url, **config):
        config.setdefault("history", HISTORY)
        config.setdefault("capacity", 5000)
        layer = RabbitMQChannelLayer(url=url, prefix=prefix or "rh" + uuid.uuid4().hex[:10], **config)
        layer.use_keys([KEY])
        if prefix is None and url == rabbitmq_url:
            rabbitmq_made_layers.append(layer)  # its prefix is deleted at the end of the session
        made.append(layer)
        return layer

    yield make
    close_layers(made, broker_may_be_down=True)


def drain(layer, channels, count=None, timeout=20.0):
    """Every message on ``channels``; with ``count``, waits (blocking receives) until that many came."""
    got = []
    deadline = time.monotonic() + timeout
    while count is None or len(got) < count:
        channel, message = layer.receive(channels, block=count is not None)
        if channel is None and (count is None or time.monotonic() > deadline):
            break
        if channel is not None:
            got.append((channel, message))
    assert count is None or len(got) == count, f"{len(got)} messages of {count}"
    return got


def check_contiguous(messages, first=1):
    """Offsets ``first``, ``first + 1``, ... each once, one epoch; each sender's messages in its order."""
    positions = [m["history"] for m in messages]
    assert sorted(p["offset"] for p in positions) == list(range(first, first + len(positions)))
    assert len({p["epoch"] for p in positions}) == 1
    by_sender: dict = {}
    for m in sorted(messages, key=lambda m: m["history"]["offset"]):
        by_sender.setdefault(m["from"], []).append(m["n"])
    for sender, ns in by_sender.items():
        assert ns == sorted(ns) and len(set(ns)) == len(ns), f"{sender}: {ns[:20]}"
    return positions[0]["epoch"]


class _Sender(threading.Thread):
    """Sends ``{"from": name, "n": n}`` for n in 0..count-1, one after the other; ``marked`` once n passed ``mark``."""

    def __init__(self, layer, group, name, count, mark=0):
        super().__init__(daemon=True)
        self.layer, self.group, self.name, self.count, self.mark = layer, group, name, count, mark
        self.sent, self.errors = [], []
        self.marked = threading.Event()
        self.start()

    def run(self):
        for n in range(self.count):
            try:
                self.layer.send_group(self.group, {"from": self.name, "n": n})
                self.sent.append(n)
            except Exception as exc:  # noqa: BLE001 - reported by the test's assertion
                self.errors.append((n, exc))
            if n == self.mark:
                self.marked.set()


def test_two_layers_number_one_history(make):
    a = make()
    b = make(a.prefix)
    a.group_add("chat-two", "two.a!x")
    b.group_add("chat-two", "two.b!y")
    senders = [_Sender(layer, "chat-two", name, 100) for layer, name in ((a, "a"), (b, "b"))]
    for sender in senders:
        sender.join(60)
    assert [sender.errors for sender in senders] == [[], []]
    # A send returns once its message is delivered: both inboxes hold all 200, numbered as one.
    for layer, inbox in ((a, "two.a!"), (b, "two.b!")):
        epoch = check_contiguous([m for _, m in drain(layer, [inbox])])
    # Exactly one of the two numbers them; the other's sends went through its queue.
    assert a._history.sequencer._active != b._history.sequencer._active

    # Joins through either layer resume from the same numbering, then get live messages.
    for layer, inbox in ((a, "two.a!"), (b, "two.b!")):
        assert layer.group_join("chat-two", inbox + "late", since=(epoch, 190)) is True
    a.send_group("chat-two", {"from": "a", "n": 100})
    for layer, inbox in ((a, "two.a!"), (b, "two.b!")):
        late = [m["history"] for channel, m in drain(layer, [inbox]) if channel == inbox + "late"]
        assert late[0] == {"group": "chat-two", "epoch": epoch, "offset": 200, "recovered": True}
        assert [(p["offset"], p.get("replayed", False)) for p in late[1:]] == (
            [(n, True) for n in range(191, 201)] + [(201, False)])
        # The joiner sees its membership at once; the other process within the stream's delay.
        assert inbox + "late" in layer.group_channels("chat-two")
    assert wait_until(lambda: {"two.a!late", "two.b!late"} <= set(a.group_channels("chat-two"))
                      and {"two.a!late", "two.b!late"} <= set(b.group_channels("chat-two")), timeout=10)

    # Read your writes: a member added by either layer gets that layer's next send.
    for layer, inbox in ((a, "two.a!"), (b, "two.b!")):
        channel = layer.new_channel(inbox)
        layer.group_add("chat-two", channel)
        layer.send_group("chat-two", {"from": "rw", "n": 0})
        assert channel in [c for c, _ in drain(layer, [inbox])]


def _start(url, prefix, group, name, count, heartbeat=15):
    return subprocess.Popen(
        [sys.executable, "-m", "tests.rabbitmq_history_proc", url, prefix, group, name, str(count), str(heartbeat)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


class _Lines:
    """A process's stdout lines, read in a thread (so a test can wait for one)."""

    def __init__(self, process):
        self.lines: list[str] = []
        self._process = process
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process):
        for line in process.stdout:
            self.lines.append(line.strip())

    def close(self):
        self._thread.join(10)
        self._process.stdout.close()

    def oks(self):
        return {int(line.split()[1]) for line in self.lines if line.startswith("ok ")}


@pytest.mark.slow
def test_processes_number_one_history(make, rabbitmq_url):
    """Three real processes send to one group at once: one numbering, each message once, in each one's order."""
    reader = make(history=None)  # reads only: it never numbers
    reader.group_add("proc-all", "procs.r!x")
    processes = [_start(rabbitmq_url, reader.prefix, "proc-all", f"p{i}", 60) for i in range(3)]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    for process, out in zip(processes, outputs):
        assert process.returncode == 0, out[-2000:]
        assert [line for line in out.splitlines() if line.startswith("ok")] == [f"ok {n}" for n in range(60)]
    check_contiguous([m for _, m in drain(reader, ["procs.r!"], count=180)])


def test_sequencer_closed_mid_stream_the_other_continues(make):
    a = make()
    b = make(a.prefix)
    reader = make(a.prefix, history=None)
    reader.group_add("chat-close", "close.r!x")
    a.send_group("chat-close", {"from": "a", "n": 0})  # the first candidate: a numbers
    assert a._history.sequencer._active
    sender = _Sender(b, "chat-close", "b", 200, mark=60)
    assert sender.marked.wait(60)
    a.close()  # mid-stream: a finishes the batch in hand, the broker hands its requests to b
    sender.join(120)
    assert sender.errors == [] and sender.sent == list(range(200))
    assert b._history.sequencer._active
    check_contiguous([m for _, m in drain(reader, ["close.r!"], count=201)])
    assert drain(reader, ["close.r!"]) == []  # and nothing twice


@pytest.mark.slow
def test_sequencer_process_killed_the_other_continues(make, rabbitmq_url):
    """kill -9 of the sequencing process: the survivor takes over; no offset reused or skipped, no duplicate."""
    main = make()
    reader = make(main.prefix, history=None)
    reader.group_add("proc-kill", "kill.r!x")
    process = _start(rabbitmq_url, main.prefix, "proc-kill", "p", 0)
    lines = _Lines(process)
    try:
        assert wait_until(lambda: len(lines.oks()) >= 20, timeout=30), lines.lines[-20:]
        sender = _Sender(main, "proc-kill", "main", 150, mark=30)
        assert sender.marked.wait(60)
        assert not main._history.sequencer._active  # the process numbers, main's sends queue to it
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        sender.join(120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        lines.close()
    assert sender.errors == [] and sender.sent == list(range(150))
    assert main._history.sequencer._active
    live = [m for _, m in drain(reader, ["kill.r!"])]
    epoch = live[0]["history"]["epoch"]
    assert len({m["history"]["offset"] for m in live}) == len(live)  # nothing delivered twice
    # The history holds every acknowledged message once, under contiguous offsets.
    assert main.group_join("proc-kill", "kill.r!all", since=(epoch, 0)) is True
    replay = [m for channel, m in drain(reader, ["kill.r!"]) if channel == "kill.r!all"][1:]
    check_contiguous(replay)
    assert {m["n"] for m in replay if m["from"] == "main"} == set(range(150))
    assert lines.oks() <= {m["n"] for m in replay if m["from"] == "p"}


@pytest.mark.slow
def test_a_frozen_sequencer_fails_sends_in_time_then_the_broker_moves_it(make, rabbitmq_url):
    """SIGSTOP of the sequencing process: sends fail after ``timeout`` until the broker drops its
    connection (missed heartbeats); then the survivor numbers, and nothing timed out is numbered later."""
    main = make(timeout=2)
    main.group_add("proc-frozen", "frozen.m!x")
    process = _start(rabbitmq_url, main.prefix, "proc-frozen", "p", 0, heartbeat=1)
    lines = _Lines(process)
    try:
        assert wait_until(lambda: len(lines.oks()) >= 5, timeout=30), lines.lines[-20:]
        main.send_group("proc-frozen", {"from": "main", "n": 0})
        assert not main._history.sequencer._active
        os.killpg(process.pid, signal.SIGSTOP)
        failed, n = 0, 1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                main.send_group("proc-frozen", {"from": "main", "n": n})
                break
            except ChannelLayerConnectionError as exc:
                assert time.monotonic() - started < 5 and "history" in str(exc)
                failed += 1
            n += 1
        assert failed >= 1 and main._history.sequencer._active
        for more in range(n + 1, n + 20):
            main.send_group("proc-frozen", {"from": "main", "n": more})
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        lines.close()
    live = [m for _, m in drain(main, ["frozen.m!"])]
    assert len({m["history"]["offset"] for m in live}) == len(live)
    # (The frozen process may have stored a message of its own and not delivered it: the history has it.)
    assert main.group_join("proc-frozen", "frozen.m!all", since=(live[0]["history"]["epoch"], 0)) is True
    replay = [m for channel, m in drain(main, ["frozen.m!"]) if channel == "frozen.m!all"][1:]
    check_contiguous(replay)
    mine = [m["n"] for m in replay if m["from"] == "main"]
    assert mine == [0, *range(n, n + 20)]  # the sends that failed were not numbered later


def test_idle_group_keeps_its_position_across_sequencers(make):
    """A group whose messages left the stream's window keeps epoch and offset: checkpoints carry them."""
    a = make(history=IDLE)
    b = make(a.prefix, history=IDLE)
    for layer in (a, b):
        layer._history.sequencer.checkpoint_every = 0.5  # window: ttl 1 s + 2 checkpoints + 0.5 s
    assert a._history.window == 2.5
    a.group_add("idle-g", "idle.a!x")
    for n in range(3):
        a.send_group("idle-g", {"from": "a", "n": n})
    epoch = check_contiguous([m for _, m in drain(a, ["idle.a!"])])
    time.sleep(a._history.window + 1.5)  # the entries leave the window: time passing is what is tested
    a.close()
    assert b.group_join("idle-g", "idle.b!y", since=(epoch, 3)) is True  # nothing missed, nothing to replay
    b.send_group("idle-g", {"from": "b", "n": 0})
    got = [m["history"] for _, m in drain(b, ["idle.b!"])]
    assert got == [{"group": "idle-g", "epoch": epoch, "offset": 3, "recovered": True},
                   {"group": "idle-g", "epoch": epoch, "offset": 4}]


### A private node: restarts, a lost stream, counting its queues ###


@pytest.fixture(scope="module")
def node(rabbitmq_node):
    """The session's private node (tests/conftest.py), up whatever a module before left."""
    return rabbitmq_node.running()


def _history_send_works(layer):
    try:
        layer.send_group("chat-probe", {"probe": True})
        return True
    except ChannelLayerConnectionError:
        return False


# aiormq leaves the socket of a connect that fails mid-handshake (a node starting or stopping) to the
# garbage collector, which closes it with a ResourceWarning (as in tests/test_rabbitmq_faults.py).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.rabbitmq
@pytest.mark.slow
def test_broker_restart_history_continues_then_a_lost_broker_starts_new_epochs(node, make):
    layer = make(url=node.url(), prefix="restart", timeout=5, connect_timeout=2)
    layer.group_add("chat-rs", "rs.in!x")
    for n in range(3):
        layer.send_group("chat-rs", {"from": "l", "n": n})
    epoch = check_contiguous([m for _, m in drain(layer, ["rs.in!"])])

    node.stop()
    started = time.monotonic()
    for call in (lambda: layer.send_group("chat-rs", {"from": "l", "n": 3}),
                 lambda: layer.group_join("chat-rs", "rs.in!y", since=(epoch, 1))):
        with pytest.raises(ChannelLayerConnectionError) as caught:
            call()
        assert f"127.0.0.1:{node.port}" in str(caught.value) and "is running" in str(caught.value)
    assert time.monotonic() - started < 15

    # A restart keeps the stream (durable, on disk): the same epoch goes on, the history is whole.
    node.start()
    assert wait_until(lambda: _history_send_works(layer), timeout=30)
    layer.send_group("chat-rs", {"from": "l", "n": 3})
    assert layer.group_join("chat-rs", "rs.in!y", since=(epoch, 1)) is True
    got = [m["history"] for channel, m in drain(layer, ["rs.in!"]) if channel == "rs.in!y"]
    assert got[0] == {"group": "chat-rs", "epoch": epoch, "offset": 4, "recovered": True}
    assert [p["offset"] for p in got[1:]] == [2, 3, 4]

    # The stream deleted under a running sequencer: the history is lost, so a new epoch.
    node.ctl("delete_queue", "restart::history-log")
    layer.send_group("chat-rs", {"from": "l", "n": 4})
    message = [m for channel, m in drain(layer, ["rs.in!"]) if channel == "rs.in!x"][-1]
    assert message["history"]["offset"] == 1 and message["history"]["epoch"] != epoch
    assert layer.group_join("chat-rs", "rs.in!z", since=(epoch, 4)) is False

    # A broker that comes back empty (its data lost): new epochs again, nothing mistaken for the old.
    second = message["history"]["epoch"]
    node.stop()
    shutil.rmtree(node.dir / "mnesia")
    node.start()
    assert wait_until(lambda: _history_send_works(layer), timeout=30)
    layer.group_add("chat-rs", "rs.in!x")  # the groups were lost with the broker too
    layer.send_group("chat-rs", {"from": "l", "n": 5})
    message = [m for channel, m in drain(layer, ["rs.in!"]) if channel == "rs.in!x"][-1]
    assert message["history"]["offset"] == 1 and message["history"]["epoch"] not in (epoch, second)


def leak_queues(node):
    return {name for name in node.names("queues") if name.startswith("leak")}


@pytest.mark.rabbitmq
def test_history_objects_are_per_prefix_never_per_group(node, make):
    layer = make(url=node.url(), prefix="leak", expiry=5)
    layer.group_channels("room")  # the prefix's fixed objects
    before = leak_queues(node)
    inbox = "leak.in!"
    first = layer.new_channel(inbox)
    layer.group_join("chat-0", first)
    layer.group_discard("chat-0", first)
    received = len(drain(layer, [inbox]))
    with_history = leak_queues(node)
    # The prefix's queue and stream, the inbox, and this process's reply queue.
    assert with_history - before == {"leak::history", "leak::history-log", "leak:leak.in:i", layer._history.replies}
    for n in range(300):
        channel = layer.new_channel(inbox)
        group = f"chat-{n % 150}"
        assert layer.group_join(group, channel, since=("old", 3)) is False
        layer.send_group(group, {"from": "l", "n": n})
        layer.group_discard(group, channel)
        received += len(drain(layer, [inbox]))
    assert received == 601  # the first join's notice, then 300 notices and 300 messages
    assert leak_queues(node) == with_history
    other = make(url=node.url(), prefix="leak", expiry=5)  # a process comes and goes, sending
    other.send_group("chat-1", {"from": "o", "n": 0})
    other.close()
    layer.close()
    # Only the prefix's history queue and stream stay (inbox and reply queues expire after their process).
    assert wait_until(lambda: leak_queues(node) == before | {"leak::history", "leak::history-log"},
                      timeout=30), sorted(leak_queues(node) ^ before)
