"""The RabbitMQ sequencer's group histories, sans-IO: what a new sequencer rebuilds from the stream.

A sequencer that takes over knows only the stream's records (a window of
them), so replaying the records a sequencer wrote must give the same
positions and replays; these hold that without a broker.
"""

from __future__ import annotations

import itertools

from paas_channels.layers.rabbitmq.histstate import HistoryState

_names = itertools.count()


def new_state(meta_ms=86_400_000):
    return HistoryState(lambda: f"e{next(_names)}", meta_ms)


def test_the_stream_rebuilds_positions_replays_and_message_ids():
    state, records, now = new_state(), [], 1_000_000
    for n in range(7):  # size 5: offsets 1-2 leave the history
        records.append(state.append("g", 5, 60_000, f"id{n}", b"m%d" % n, now + n)[2])
    joined, created = state.join("quiet", 5, 60_000, None, now)
    assert created is not None and joined.latest == 0  # a join made this epoch: recorded too
    records.append(created)
    rebuilt = new_state()
    for record in records:
        rebuilt.feed(record)
    rebuilt.trim_all(now + 10)
    for group in ("g", "quiet"):
        mine, theirs = state.groups[group], rebuilt.groups[group]
        assert (theirs.epoch, theirs.latest, list(theirs.entries)) == (mine.epoch, mine.latest, list(mine.entries))
    assert rebuilt.sequenced("id6") == (state.groups["g"].epoch, 7)
    # The next offset continues the epoch; a join resuming at 3 gets 4-7.
    epoch, offset, _ = rebuilt.append("g", 5, 60_000, "id7", b"m7", now + 20)
    assert (epoch, offset) == (state.groups["g"].epoch, 8)
    joined, created = rebuilt.join("g", 5, 60_000, (epoch, 3), now + 20)
    assert created is None and joined.recovered is True
    assert [offset for offset, _ in joined.replay] == [4, 5, 6, 7, 8]
    assert rebuilt.join("g", 5, 60_000, (epoch, 2), now + 20)[0].recovered is False  # 3 is gone


def test_a_checkpoint_keeps_a_position_whose_messages_left_the_window():
    state, now = new_state(), 1_000_000
    old = [state.append("g", 10, 1_000, f"id{n}", b"x", now + n)[2] for n in range(3)]
    checkpoint = state.checkpoint(now + 5_000)
    rebuilt = new_state()
    for record in checkpoint:  # what a window that starts after the messages holds
        rebuilt.feed(record)
    log = rebuilt.groups["g"]
    assert (log.epoch, log.latest, list(log.entries)) == (state.groups["g"].epoch, 3, [])
    joined, _ = rebuilt.join("g", 10, 1_000, (log.epoch, 3), now + 5_000)
    assert joined.recovered is True and joined.replay == []
    assert rebuilt.join("g", 10, 1_000, (log.epoch, 2), now + 5_000)[0].recovered is False
    # A checkpoint never rolls back what the entries before it said.
    later = new_state()
    for record in old + [["c", now, [["g", log.epoch, 1, now, 10, 1_000]]]]:
        later.feed(record)
    assert later.groups["g"].latest == 3 and len(later.groups["g"].entries) == 3


def test_a_hole_in_the_entries_is_never_replayed_across():
    rebuilt, now = new_state(), 1_000_000
    rebuilt.feed(["e", "g", "E", 1, now, "a", 10, 60_000, b"1"])
    rebuilt.feed(["e", "g", "E", 3, now, "c", 10, 60_000, b"3"])  # 2 missing (cannot happen with one writer)
    log = rebuilt.groups["g"]
    assert log.latest == 3 and [offset for offset, _, _ in log.entries] == [3]
    assert rebuilt.join("g", 10, 60_000, ("E", 1), now)[0].recovered is False
    rebuilt.feed(["e", "g", "E", 3, now, "c", 10, 60_000, b"3"])  # a record read twice: no change
    assert [offset for offset, _, _ in log.entries] == [3]


def test_flush_and_expired_positions_start_new_epochs():
    state, now = new_state(meta_ms=10_000), 1_000_000
    epoch, _, _ = state.append("g", 10, 1_000, "a", b"x", now)
    assert state.append("g", 10, 1_000, "b", b"x", now + 9_000)[:2] == (epoch, 2)  # position kept past the ttl
    assert state.append("g", 10, 1_000, "c", b"x", now + 20_000)[:2] != (epoch, 3)  # past meta_ms: new epoch
    assert state.checkpoint(now + 40_000) == []  # expired positions are not checkpointed
    rebuilt = new_state()
    for record in (["e", "g", "E", 1, now, "a", 10, 60_000, b"1"], ["f", now], ["x", "junk"], None, "garbage"):
        rebuilt.feed(record)
    assert rebuilt.groups == {}
