"""``paas-channels status [--watch]``: how busy are the workers, how deep are the channels?

Everything comes from the layer, so it works from any machine that can reach
it (``heroku run paas-channels status``): channel depths and counters from
``channel_statistics``, group sizes from ``group_channels``, and the live
workers and web processes from the heartbeats each publishes (a worker:
``busy`` of ``threads`` consumers running, ``done`` so far; a web process: its
open connections and the messages it put on the layer; a combined process:
both).  Rates (messages/s) are the difference
between two readings, so one reading is taken, then another ``interval``
seconds later.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, TextIO

from ..config.options import Config
from ..exceptions import ConfigError
from ..layers import RejectedMessage, channel_layer_settings, get_channel_layer
from ..layers.fingerprint import describe, disagreeing, settings_fingerprint
from ..routing import Router, default_routing
from ..runtime.boot import closing_layer

logger = logging.getLogger(__name__)

__all__ = ["Snapshot", "render", "run_status", "take_snapshot"]


@dataclass
class Snapshot:
    """One reading of the layer."""

    at: float
    layer: str
    totals: dict[str, int]
    channels: dict[str, dict[str, Any]]
    groups: dict[str, int]
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Processes whose heartbeat this one cannot read (signed with another key).
    unreadable: list[str] = field(default_factory=list)


def take_snapshot(layer: Any, channels: Iterable[str], groups: Iterable[str] = ()) -> Snapshot:
    """Read statistics, group sizes and heartbeats from ``layer`` now."""
    beats = layer.heartbeats()
    return Snapshot(
        at=time.monotonic(),
        layer=type(layer).__name__,
        totals=dict(layer.global_statistics()),
        channels={channel: dict(layer.channel_statistics(channel)) for channel in sorted(set(channels))},
        groups={group: len(layer.group_channels(group)) for group in sorted(set(groups))},
        workers={worker_id: info for worker_id, info in beats.items() if info},  # {}: rejected
        unreadable=sorted(worker_id for worker_id, info in beats.items() if isinstance(info, RejectedMessage)),
    )


def _rate(now: float, before: float, seconds: float) -> str:
    return f"{max(0.0, now - before) / seconds:.1f}" if seconds > 0 else "-"


def render(now: Snapshot, before: Snapshot | None = None) -> str:
    """The status screen: totals, channels, groups, workers; rates when ``before`` is given."""
    seconds = now.at - before.at if before is not None else 0.0
    sent = now.totals.get("messages_count", 0)
    lines = [
        f"layer {now.layer}: {sent} messages sent"
        + (f", {_rate(sent, before.totals.get('messages_count', 0), seconds)}/s" if before else "")
        + f", {now.totals.get('channel_full_count', 0)} refused (channel full)",
        "",
        f"{'CHANNEL':<32} {'PENDING':>8} {'OLDEST':>8} {'SENT':>10} {'SENT/S':>8} {'FULL':>6}",
    ]
    for name, stats in now.channels.items():
        previous = before.channels.get(name, {}) if before else {}
        rate = _rate(stats.get("messages_count", 0), previous.get("messages_count", 0), seconds) if before else "-"
        lines.append(
            f"{name:<32} {stats.get('messages_pending', 0):>8} {stats.get('messages_max_age', 0):>7.1f}s "
            f"{stats.get('messages_count', 0):>10} {rate:>8} {stats.get('channel_full_count', 0):>6}"
        )
    if now.groups:
        lines += ["", f"{'GROUP':<32} {'MEMBERS':>8}"]
        lines += [f"{name:<32} {count:>8}" for name, count in now.groups.items()]
    workers = {key: info for key, info in now.workers.items() if info.get("kind", "worker") != "web"}
    webs = {key: info for key, info in now.workers.items() if info.get("kind", "worker") == "web"}
    lines += ["", f"{'WORKER':<40} {'THREADS':>7} {'BUSY':>5} {'BUSY%':>6} {'DONE':>8} {'MSG/S':>7} {'LOOPS':>5} "
                  f"{'KIND':<8} {'PID':>7} {'CONNS':>5}  CHANNELS"]
    total_threads = total_busy = lost = 0
    total_rate = 0.0
    for worker_id, info in sorted(workers.items()):
        threads, busy, done = int(info.get("threads", 0)), int(info.get("busy", 0)), int(info.get("done", 0))
        loops = int(info.get("loops", threads))  # absent until the worker serves
        lost += max(0, threads - loops)
        total_threads += threads
        total_busy += busy
        rate_value = _done_rate(info, before.workers.get(worker_id) if before else None, seconds)
        total_rate += rate_value or 0.0
        rate = "-" if rate_value is None else f"{rate_value:.1f}"
        ratio = f"{100 * busy / threads:.0f}%" if threads else "-"
        channels = ",".join(info.get("channels", [])) or "-"
        lines.append(f"{worker_id:<40} {threads:>7} {busy:>5} {ratio:>6} {done:>8} {rate:>7} {loops:>5} "
                     f"{info.get('kind', 'worker'):<8} {info.get('pid', '-'):>7} {_connections(info):>5}  {channels}")
    if not workers:
        lines.append("no live workers (no heartbeat seen recently)")
    else:
        ratio = f"{100 * total_busy / total_threads:.0f}%" if total_threads else "-"
        lines.append(
            f"total: {len(workers)} worker(s), {total_threads} thread(s), {total_busy} busy ({ratio})"
            + (f", {total_rate:.1f} messages/s" if before else "")
        )
        if lost:
            lines.append(f"{lost} receive loop(s) are gone (LOOPS under THREADS): those workers consume less "
                         "or nothing; restart them and read their logs")
        if total_threads and total_busy == total_threads:
            lines.append("every worker thread is busy: add worker dynos (or --threads) before requests queue up")
    if webs:
        # Same rate as the workers': messages per second, here those the process put on the layer.
        lines += ["", f"{'WEB':<40} {'PID':>7} {'HTTP':>5} {'WS':>6} {'SENT':>8} {'MSG/S':>7}  INBOX"]
        web_rate = 0.0
        for web_id, info in sorted(webs.items()):
            rate_value = _done_rate(info, before.workers.get(web_id) if before else None, seconds)
            web_rate += rate_value or 0.0
            connections = info.get("connections") or {}
            lines.append(
                f"{web_id:<40} {info.get('pid', '-'):>7} {int(connections.get('http', 0)):>5} "
                f"{int(connections.get('websocket', 0)):>6} {int(info.get('done', 0)):>8} "
                f"{'-' if rate_value is None else f'{rate_value:.1f}':>7}  {info.get('inbox', '-')}"
            )
        lines.append(f"total: {len(webs)} web process(es), {sum(_connections(i) for i in webs.values())} connection(s)"
                     + (f", {web_rate:.1f} messages/s" if before else ""))
    return "\n".join(lines)


def _done_rate(info: dict[str, Any], previous: dict[str, Any] | None, seconds: float) -> float | None:
    if previous is None or seconds <= 0:
        return None
    return max(0, int(info.get("done", 0)) - int(previous.get("done", 0))) / seconds


def _connections(info: dict[str, Any]) -> int:
    connections = info.get("connections") or {}
    return int(connections.get("http", 0)) + int(connections.get("websocket", 0))


def _routed_channels(alias: str) -> list[str]:
    try:
        path = channel_layer_settings(alias)["ROUTING"]
        return sorted(Router(default_routing() if path is None else path).channels)
    except ConfigError as exc:
        logger.warning("routing not loaded (%s); showing only the channels given with --channel", exc)
        return []


def run_status(
    config: Config,
    watch: float | None = None,
    extra_channels: Iterable[str] = (),
    groups: Iterable[str] = (),
    interval: float = 1.0,
    out: TextIO | None = None,
) -> int:
    """Print the status once (two readings ``interval`` apart), or every ``watch`` seconds until Ctrl-C."""
    out = out or sys.stdout
    layer = get_channel_layer(config.layer)
    channels = [*_routed_channels(config.layer), *extra_channels]
    groups = list(groups)
    clear = "\x1b[H\x1b[2J" if out.isatty() else ""
    if layer.reach == "process":
        out.write("note: the in-memory layer lives inside one process; this command sees only its own, "
                  "empty copy. Set REDIS_URL (or CLOUDAMQP_URL/RABBITMQ_URL) to watch a running deployment.\n")
    mine = settings_fingerprint(config.layer)
    with closing_layer(layer):
        try:
            before = take_snapshot(layer, channels, groups)
        except Exception as exc:
            raise ConfigError(f"channel layer {config.layer!r} cannot be read: {type(exc).__name__}: {exc}") from None
        try:
            while True:
                time.sleep(watch if watch else interval)
                now = take_snapshot(layer, channels, groups)
                stamp = time.strftime("%H:%M:%S UTC", time.gmtime())
                out.write(f"{clear}paas-channels status at {stamp} (layer {config.layer!r})\n{render(now, before)}\n")
                others = disagreeing({**now.workers, **dict.fromkeys(now.unreadable, RejectedMessage())}, mine)
                if others:
                    out.write(f"settings differ: {describe(others, mine)}\n")
                if not watch:
                    return 0
                out.write("\n")
                out.flush()
                before = now
        except KeyboardInterrupt:
            return 0
