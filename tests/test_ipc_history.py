"""Group history on the IPC layer, kept for every process of the machine.

The conformance suite (tests/test_layer_history.py) runs on IPC in one
process; here the senders and joiners are real, separately started OS
processes: one sends, another resumes and gets the replay; two send at once
while a third joins mid-stream (no gap, no duplicate: the join and its
replay are one transaction).  Also: a store made anew is a new epoch, the
history's rows are trimmed to its size and swept after its ttl, a join's
notice and replay do not count against the channel's capacity, a database
of the previous schema is set up in place, and the example project's
settings give combined mode with several processes (the IPC layer) its
chat rooms' history.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid

import pytest

from paas_channels.layers.ipc import IPCChannelLayer
from paas_channels.testing import wait_until
from tests.interface_support import scrubbed_environ
from tests.ipc_support import Script
from tests.support import ROOT

KEY = "ipc-history-test-key"
HISTORY = {"room-*": {"size": 10_000, "ttl": 300}, "tiny-*": {"size": 5, "ttl": 300}}

# Every script: argv prefix, directory; the layer as every process of the prefix has it.
_LAYER = f"""
import json, os, sys, time
from paas_channels.layers.ipc import IPCChannelLayer
layer = IPCChannelLayer(prefix=sys.argv[1], directory=sys.argv[2], history={HISTORY!r}, capacity=1_000_000)
layer.use_keys([{KEY!r}])
"""

# Sends argv[3] messages to room-p2p, then says so.
SEND_SOME = _LAYER + """
for n in range(int(sys.argv[3])):
    layer.send_group("room-p2p", {"n": n})
print("sent", sys.argv[3], flush=True)
"""

# Joins room-p2p resuming from (argv[3], argv[4]); prints what the join put on its channel.
RESUME = _LAYER + """
channel = layer.new_channel("joiner!")
joined = layer.group_join("room-p2p", channel, since=(sys.argv[3], int(sys.argv[4])))
got = []
while True:
    name, message = layer.receive(["joiner!"])
    if name is None:
        break
    got.append(message)
print("RESULT", json.dumps({"joined": joined, "got": got}), flush=True)
"""

# Sends to room-race until the file argv[3] exists, then one last message; prints its progress.
RACER = _LAYER + """
me, n = os.getpid(), 0
while not os.path.exists(sys.argv[3]):
    layer.send_group("room-race", {"pid": me, "n": n})
    n += 1
    if n % 10 == 0:
        print("sent", n, flush=True)
layer.send_group("room-race", {"pid": me, "last": n})
print("done", n, flush=True)
"""

# Waits (up to 60 s) for the file argv[3], which holds "epoch offset", joins room-race resuming from
# there, then receives until both racers' last messages came; prints every message's position.
LATE_JOINER = _LAYER + """
go = sys.argv[3]
print("ready", flush=True)
deadline = time.monotonic() + 60
while not os.path.exists(go + ".ready") and time.monotonic() < deadline:
    time.sleep(0.005)
epoch, offset = open(go).read().split()
channel = layer.new_channel("late!")
joined = layer.group_join("room-race", channel, since=(epoch, int(offset)))
print("joined", flush=True)
got, lasts = [], 0
while lasts < 2:
    name, message = layer.receive(["late!"], block=True)
    if name is not None:
        got.append({**message["history"], "pid": message.get("pid"), "n": message.get("n"), "last": message.get("last")})
        lasts += "last" in message
print("RESULT", json.dumps({"joined": joined, "got": got}), flush=True)
"""


def _layer(tmp_path, prefix: str, **config) -> IPCChannelLayer:
    layer = IPCChannelLayer(prefix=prefix, directory=tmp_path, **{"history": HISTORY, "capacity": 1_000_000, **config})
    layer.use_keys([KEY])
    return layer


def _result(script: Script) -> dict:
    assert script.wait(60) == 0, script.output()[-3000:]
    (line,) = [line for line in script.output().splitlines() if line.startswith("RESULT ")]
    return json.loads(line[len("RESULT "):])


def _epoch_of(layer: IPCChannelLayer, group: str) -> str:
    """The group's epoch, from the notice of a join (left again at once)."""
    layer.group_join(group, "probe.inbox!x")
    layer.group_discard(group, "probe.inbox!x")
    _, notice = layer.receive(["probe.inbox!"])
    return notice["history"]["epoch"]


def test_one_process_sends_another_resumes_and_gets_the_replay(tmp_path):
    prefix = "p2p" + uuid.uuid4().hex[:8]
    layer = _layer(tmp_path, prefix)
    try:
        epoch = _epoch_of(layer, "room-p2p")  # the history starts here, in this process
        sender = Script(SEND_SOME, prefix, tmp_path, 10).start()
        try:
            assert sender.wait(60) == 0, sender.output()
        finally:
            sender.close()
        joiner = Script(RESUME, prefix, tmp_path, epoch, 4).start()
        try:
            result = _result(joiner)
        finally:
            joiner.close()
    finally:
        layer.close()
    assert result["joined"] is True
    notice, *replay = result["got"]
    assert notice == {"history": {"group": "room-p2p", "epoch": epoch, "offset": 10, "recovered": True}}
    assert replay == [{"n": n, "history": {"group": "room-p2p", "epoch": epoch, "offset": n + 1, "replayed": True}}
                      for n in range(4, 10)]


@pytest.mark.timeout(120)
def test_two_processes_send_while_a_third_joins_no_gap_no_duplicate(tmp_path):
    prefix = "race" + uuid.uuid4().hex[:8]
    stop, go = tmp_path / "stop", tmp_path / "go"
    layer = _layer(tmp_path, prefix)
    scripts: list[Script] = []
    try:
        epoch = _epoch_of(layer, "room-race")
        joiner = Script(LATE_JOINER, prefix, tmp_path, go).start()
        scripts.append(joiner)
        joiner.wait_for_output("ready", timeout=60)
        racers = [Script(RACER, prefix, tmp_path, stop).start() for _ in range(2)]
        scripts += racers
        # Both are sending: the joiner resumes from offset 20 while they go on.
        assert wait_until(lambda: all(racer.last_number("sent") >= 30 for racer in racers), 60), [
            racer.output()[-500:] for racer in racers]
        go.write_text(f"{epoch} 20")
        (tmp_path / "go.ready").touch()
        joiner.wait_for_output("joined", timeout=60)
        at_join = [racer.last_number("sent") for racer in racers]
        assert wait_until(lambda: all(racer.last_number("sent") >= sent + 50
                                      for racer, sent in zip(racers, at_join)), 60)
        stop.touch()
        totals = []
        for racer in racers:
            assert racer.wait(60) == 0, racer.output()[-2000:]
            totals.append(racer.last_number("done"))
        result = _result(joiner)
    finally:
        for script in scripts:
            script.close()
        layer.close()
    assert result["joined"] is True
    notice, *messages = result["got"]
    assert notice["recovered"] is True and notice["epoch"] == epoch
    # One store, one order: every offset after 20 exactly once, in order, replayed ones first.
    last = sum(totals) + 2  # every message of both racers, and their two last ones
    assert [m["offset"] for m in messages] == list(range(21, last + 1))
    assert {m["epoch"] for m in messages} == {epoch}
    assert [m["offset"] for m in messages if m.get("replayed")] == list(range(21, notice["offset"] + 1))
    # Both kinds came: 60 or more were sent before the join (40 replayed), 100 more after it (live).
    assert notice["offset"] >= 60 and last - notice["offset"] >= 100
    # Each racer's messages in the order it sent them, none missing from the first one the joiner got.
    for pid in {m["pid"] for m in messages}:
        ns = [m["n"] for m in messages if m["pid"] == pid and m["last"] is None]
        assert ns == list(range(ns[0], ns[0] + len(ns)))
        assert ns[-1] + 1 == next(m["last"] for m in messages if m["pid"] == pid and m["last"] is not None)


def test_a_store_made_anew_is_a_new_epoch(tmp_path):
    prefix = "anew" + uuid.uuid4().hex[:8]
    layer = _layer(tmp_path, prefix)
    layer.group_join("room-a", "anew.inbox!a")
    for n in range(3):
        layer.send_group("room-a", {"n": n})
    *_, (_, last) = [layer.receive(["anew.inbox!"]) for _ in range(4)]
    old = last["history"]
    assert old["offset"] == 3
    layer.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(layer.path + suffix):
            os.unlink(layer.path + suffix)
    fresh = _layer(tmp_path, prefix)
    try:
        assert fresh.group_join("room-a", "anew.inbox!b", since=(old["epoch"], old["offset"])) is False
        _, notice = fresh.receive(["anew.inbox!"])
        assert notice["history"]["recovered"] is False and notice["history"]["offset"] == 0
        assert notice["history"]["epoch"] != old["epoch"]
        fresh.send_group("room-a", {"n": "again"})
        _, message = fresh.receive(["anew.inbox!"])
        assert message["history"] == {"group": "room-a", "epoch": notice["history"]["epoch"], "offset": 1}
    finally:
        fresh.close()


def _rows(layer: IPCChannelLayer, table: str, group: str) -> int:
    with sqlite3.connect(layer.path) as conn:
        return conn.execute(f"SELECT count(*) FROM {table} WHERE grp = ?", (group,)).fetchone()[0]  # noqa: S608


def test_history_rows_are_trimmed_to_the_size(tmp_path):
    layer = _layer(tmp_path, "trim" + uuid.uuid4().hex[:8])
    try:
        for n in range(30):
            layer.send_group("tiny-a", {"n": n})
        assert _rows(layer, "history", "tiny-a") == 5 and _rows(layer, "histories", "tiny-a") == 1
        assert layer.group_join("tiny-a", "trim.inbox!a", since=(_epoch_of(layer, "tiny-a"), 25)) is True
        assert [layer.receive(["trim.inbox!"])[1].get("n") for _ in range(6)] == [None, 25, 26, 27, 28, 29]
    finally:
        layer.close()


def test_expired_history_rows_and_unused_histories_are_swept(tmp_path):
    layer = _layer(tmp_path, "sweep" + uuid.uuid4().hex[:8], history={"short-*": {"size": 100, "ttl": 1}},
                   group_expiry=1)
    try:
        layer.group_join("short-a", "sweep.inbox!a")
        for n in range(20):
            layer.send_group("short-a", {"n": n})
        epoch = [layer.receive(["sweep.inbox!"])[1] for _ in range(21)][-1]["history"]["epoch"]
        # Nothing is sent to it any more: the periodic sweep of other work drops its entries after
        # the ttl, and the history itself after max(ttl, group_expiry): it starts again, anew.
        assert wait_until(lambda: layer.group_channels("other") == [] and _rows(layer, "history", "short-a") == 0
                          and _rows(layer, "histories", "short-a") == 0, 20)
        assert _epoch_of(layer, "short-a") != epoch
    finally:
        layer.close()


def test_notice_and_replay_are_bounded_by_the_history_not_the_channel_capacity(tmp_path):
    layer = _layer(tmp_path, "cap" + uuid.uuid4().hex[:8], capacity=3)
    try:
        epoch = _epoch_of(layer, "room-c")
        for n in range(10):
            layer.send_group("room-c", {"n": n})
        assert layer.group_join("room-c", "cap.inbox!a", since=(epoch, 0)) is True
        got = [layer.receive(["cap.inbox!"])[1] for _ in range(11)]
        assert got[0]["history"]["recovered"] is True
        assert [m["n"] for m in got[1:]] == list(range(10))
        # The channel's own capacity still holds for what comes next: it was full.
        layer.send("cap.inbox!a", {"after": 1})
        assert layer.receive(["cap.inbox!"]) == ("cap.inbox!a", {"after": 1})
    finally:
        layer.close()


def test_a_database_of_the_previous_schema_is_set_up_in_place(tmp_path):
    prefix = "old" + uuid.uuid4().hex[:8]
    layer = _layer(tmp_path, prefix)
    layer.send("kept", {"from": "before"})
    layer.close()
    with sqlite3.connect(layer.path) as conn:  # what schema version 2 had: no history tables
        conn.execute("DROP TABLE history")
        conn.execute("DROP TABLE histories")
        conn.execute("PRAGMA user_version=2")
    again = _layer(tmp_path, prefix)
    try:
        assert again.receive(["kept"]) == ("kept", {"from": "before"})
        again.group_join("room-u", "old.inbox!a")
        again.send_group("room-u", {"n": 1})
        assert [again.receive(["old.inbox!"])[1]["history"]["offset"] for _ in range(2)] == [0, 1]
    finally:
        again.close()


def test_combined_mode_with_several_processes_gets_the_chat_history(tmp_path):
    """The example project on one dyno with WEB_CONCURRENCY=2 and no Redis: the IPC layer, with history."""
    script = ("import json, django; django.setup(); from django.conf import settings; "
              "print(json.dumps(settings.CHANNEL_LAYERS['default']))")
    env = {**scrubbed_environ(), "DJANGO_SETTINGS_MODULE": "example_project.settings", "DEBUG": "1",
           "WEB_CONCURRENCY": "2", "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    entry = json.loads(result.stdout.strip().splitlines()[-1])
    assert entry["BACKEND"] == "paas_channels.layers.IPCChannelLayer"
    assert entry["CONFIG"]["history"] == {"chat-*": {"size": 100, "ttl": 300}}
