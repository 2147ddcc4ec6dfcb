"""What the heartbeats say about the workers: how many consume, with how many live loops, on which channels.

The interface reads every process's heartbeat (``layer.heartbeats()``) to
answer health checks, to warn while no worker is alive and to know whether a
full channel will ever get room (see ``InterfaceApplication.unread``).
"""

from __future__ import annotations

from ..layers import RejectedMessage

__all__ = ["consumed_channels", "consuming_workers"]


def consuming_workers(beats: dict[str, dict]) -> tuple[int, dict]:
    """Workers with at least one live receive loop, and ``{"live", "expected", "lost"}`` loop counts.

    A worker heartbeats from its own thread, so a worker whose loops all died
    still beats: counting heartbeats alone would call it alive.  A worker that
    does not report ``loops`` (not serving yet) counts as whole.
    """
    workers = live = expected = 0
    for info in _worker_beats(beats):
        threads = _count(info.get("threads"))
        loops = _count(info.get("loops", threads))
        expected += threads
        live += min(loops, threads)
        workers += loops > 0
    return workers, {"live": live, "expected": expected, "lost": expected - live}


def consumed_channels(beats: dict[str, dict]) -> frozenset[str] | None:
    """The channels that workers with a live receive loop read (None if one does not say)."""
    channels: set[str] = set()
    for info in _worker_beats(beats):
        if _count(info.get("loops", _count(info.get("threads")))) > 0:
            if not isinstance(info.get("channels"), list):
                return None
            channels.update(channel for channel in info["channels"] if isinstance(channel, str))
    return frozenset(channels)


def _worker_beats(beats: dict[str, dict]) -> list[dict]:
    """The workers' heartbeats: web processes beat too, and a rejected one is nobody's."""
    return [info for info in beats.values()
            if not isinstance(info, RejectedMessage) and info.get("kind", "worker") != "web"]


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
