"""The client side of the resume protocol (``ClientState``, what client.js does), frame by frame."""

from __future__ import annotations

import json

from paas_channels.interface.resume import MARK, ClientState, frames


def frame(meta, text=None):
    return MARK + json.dumps(meta) + ("\n" + text if text is not None else "")


def texts(out):
    return [(data, meta["offset"], meta["replayed"]) for data, meta in out]


def test_in_order_once_across_a_resume():
    state = ClientState()
    assert state.query() == "paas_channels=1"
    assert state.feed(frame({"group": "g", "epoch": "E", "offset": 3, "recovered": None})) == []
    assert texts(state.feed(frame({"group": "g", "epoch": "E", "offset": 4}, "four"))) == [("four", 4, False)]
    assert state.query() == "paas_channels=1&paas_resume=g:E:4"
    # Reconnected: notice, a live message that overtook the replay, the replay with a duplicate.
    assert state.feed(frame({"group": "g", "epoch": "E", "offset": 6, "recovered": True})) == []
    assert state.feed(frame({"group": "g", "epoch": "E", "offset": 7}, "seven")) == []
    out = state.feed(frame({"group": "g", "epoch": "E", "offset": 5, "replayed": True}, "five"))
    out += state.feed(frame({"group": "g", "epoch": "E", "offset": 6, "replayed": True}, "six"))
    out += state.feed(frame({"group": "g", "epoch": "E", "offset": 6, "replayed": True}, "six again"))
    assert texts(out) == [("five", 5, True), ("six", 6, True), ("seven", 7, False)]
    assert state.recoveries == [("g", True)]


def test_not_recovered_starts_from_the_notice():
    state = ClientState()
    state.positions["g"] = ["OLD", 10]
    assert state.feed(frame({"group": "g", "epoch": "NEW", "offset": 2, "recovered": False})) == []
    assert state.recoveries == [("g", False)]
    assert texts(state.feed(frame({"group": "g", "epoch": "NEW", "offset": 3}, "x"))) == [("x", 3, False)]


def test_plain_frames_binary_and_escaped_text():
    state = ClientState()
    assert state.feed("hello") == [("hello", {"group": None, "epoch": None, "offset": None, "replayed": False})]
    assert state.feed(MARK + "{}\n" + MARK + "text")[0][0] == MARK + "text"
    assert state.feed(frame({"group": "g", "epoch": "E", "offset": 1, "binary": True})) == []
    assert state.feed(b"\x00")[0][0] == b"\x00"


def test_a_gap_is_skipped_when_asked():
    state = ClientState()
    state.feed(frame({"group": "g", "epoch": "E", "offset": 1}, "one"))
    assert state.feed(frame({"group": "g", "epoch": "E", "offset": 3}, "three")) == []
    assert texts(state.skip_gaps()) == [("three", 3, False)]


def test_server_frames_round_trip_through_the_client():
    state = ClientState()
    meta = {"group": "g", "epoch": "E", "offset": 1}
    events = frames({"text": MARK + "x", "history": meta}, opted=True) + frames({"text": MARK + "y"}, opted=True)
    out = [item for event in events for item in state.feed(event["text"])]
    assert [data for data, _ in out] == [MARK + "x", MARK + "y"]
    assert frames({"history": {**meta, "recovered": True}}, opted=False) == []
