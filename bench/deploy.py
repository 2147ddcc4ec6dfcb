"""Scenario 5, rolling deploy: every worker replaced while WebSockets stay open and HTTP flows.

Our split mode with two workers on a private Redis: N WebSockets joined to a
group and ``rate`` HTTP requests/s (open loop, bench/http.py's generator) to a
Django view that the workers answer.  Then each worker in turn gets SIGTERM,
is waited for (it finishes what it holds and exits), and a new one is started
and waited for (the web process sees its heartbeat) before the next is
replaced.  Counted: WebSockets the server closed, HTTP requests that failed
or got an error status, and, after the deploy, how many of the open
WebSockets still receive a group message.

No peer: Channels 4 has no separate worker processes, so its deploy restarts
the process that holds the connections.  The issue's target is absolute
(zero dropped, zero failed).

Full deploy (:func:`run_full`), what Heroku, Render and Fly do: a new release
(web and worker) starts, new connections go to it, the old processes get
SIGTERM, web included.  ``clients`` resuming clients (``ResumingClient``, what
``client.js`` does) in one group getting ``rate`` messages/s; counted: the
messages clients lost (expected minus received), duplicates, and the reconnect
peak on the new web (connections made per second, busiest 1 s window), with
the slow drain (``--ws-drain``) and without.  Peer: Channels 4 with the same
reconnecting client, same load, same run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from bench import http as http_bench
from bench._procs import SECRET_KEY, STOP_TIMEOUT, Clients, Deployment, Proc, base_env, stop_processes
from paas_channels.testing import RedisServer, ResumingClient, free_port, wait_for_port

HTTP_CHUNK_SECONDS = 1.0


def _replace_workers(deployment: Deployment, steps: list[dict], done: threading.Event, errors: list[str]) -> None:
    try:
        time.sleep(0.5)  # traffic first, then the deploy
        for old in list(deployment.workers):
            started = time.monotonic()
            code = old.terminate(timeout=60)
            drained = time.monotonic() - started
            deployment.workers.remove(old)
            deployment.wait_for_workers(len(deployment.workers))
            deployment.start_worker()
            deployment.wait_for_workers(len(deployment.workers))
            steps.append({"old_exit_code": code, "drain_s": round(drained, 2),
                          "replaced_s": round(time.monotonic() - started, 2)})
    except Exception as exc:  # noqa: BLE001 - reported in the results, never hidden
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        done.set()


def run(workdir: Path, connections: int, rate: float, client_processes: int, workers: int = 2, log=print) -> dict:
    log(f"== rolling deploy: ours, {workers} workers, {connections:,} WebSockets, {rate:.0f} HTTP requests/s")
    deployment = Deployment("ours", workdir, workers=workers)
    pool = None
    try:
        pool = Clients(deployment.url("/ws/bench/"), connections, joined=True, processes=client_processes)
        hello = deployment.url("/hello/", "http")
        http_bench.run_fixed_rate(hello, min(rate, 50.0), 0.5)  # warm: connections to Redis, Django loaded
        steps: list[dict] = []
        errors: list[str] = []
        done = threading.Event()
        deployer = threading.Thread(target=_replace_workers, args=(deployment, steps, done, errors), daemon=True)
        started = time.monotonic()
        deployer.start()
        requests = failures = 0
        statuses: dict[str, int] = {}
        # HTTP in short open-loop chunks until the deploy is over, plus one chunk after it.
        tail_chunks = 0
        while tail_chunks < 1:
            if done.is_set():
                tail_chunks += 1
            chunk = http_bench.run_fixed_rate(hello, rate, HTTP_CHUNK_SECONDS)
            requests += chunk["requests"]
            failures += chunk["failures"]
            for status, count in chunk["statuses"].items():
                statuses[status] = statuses.get(status, 0) + count
        deployer.join()
        deploy_s = time.monotonic() - started
        # Do the connections that survived still get group messages (through the new workers' groups)?
        before = len(pool.report()["latencies"])
        from bench.broadcast import _send_ours

        _send_ours(deployment.redis.url, 1, 0.0)
        still_open = pool.connected - pool.report()["closed"]
        after = pool.wait_for_deliveries(before + still_open, timeout=30)
        delivered_after = len(after["latencies"]) - before
        dropped = after["closed"]
    finally:
        if pool is not None:
            pool.close()
        deployment.close()
    result = {
        "label": "paas-channels split (web + 2 workers), every worker replaced",
        "connections": connections, "connected": pool.connected, "connect_failed": pool.failed,
        "workers": workers, "rate": rate, "deploy_seconds": round(deploy_s, 2), "steps": steps,
        "deploy_errors": errors, "http_requests": requests, "http_failed": failures, "http_statuses": statuses,
        "websockets_dropped": dropped, "group_delivered_after_deploy": delivered_after,
        "peer": None, "peer_note": "Channels 4 has no separate workers: a deploy restarts the process holding "
                                  "the WebSockets, so there is no like-for-like peer run",
    }
    log(f"   dropped {dropped} WebSockets, {failures}/{requests} HTTP requests failed, "
        f"{delivered_after}/{pool.connected - dropped} open WebSockets got a group message after the deploy")
    return result


### Full deploy: web and worker replaced (issue 16) ###

FULL_GROUP = "room"


class _Release:
    """One release of a side: ours (web + worker, settings with history) or Channels 4 (Daphne)."""

    def __init__(self, kind: str, workdir: Path, redis_url: str, index: int, drain: float) -> None:
        self.kind = kind
        self.port = free_port()
        if kind == "ours":
            env = base_env(workdir, "bench.project.settings_history", redis_url)
            self.procs = [
                Proc(f"full-ours-web-{index}-{self.port}", [sys.executable, "-m", "paas_channels.cli", "run", "web",
                     "--bind", "127.0.0.1", "--port", str(self.port), "--ws-drain", str(drain)], env, workdir),
                Proc(f"full-ours-worker-{index}-{self.port}", [sys.executable, "-m", "paas_channels.cli", "run",
                     "worker"], env, workdir),
            ]
        else:
            env = base_env(workdir, "bench.project.settings_channels4_roomy", redis_url)
            self.procs = [Proc(f"full-channels4-{index}-{self.port}", [sys.executable, "-m", "daphne", "-b",
                               "127.0.0.1", "-p", str(self.port), "-v", "0", "bench.project.channels4:application"],
                               env, workdir)]

    def wait_ready(self, workers_expected: int) -> None:
        wait_for_port(self.port, timeout=60, process=self.procs[0].process)
        if self.kind == "ours":  # the new worker's heartbeat, beside the old ones
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    health = httpx.get(f"http://127.0.0.1:{self.port}/.paas-channels/health", timeout=10).json()
                    if health.get("workers", 0) >= workers_expected:
                        return
                except (httpx.HTTPError, ValueError):
                    pass
                time.sleep(0.1)
            raise TimeoutError(f"no worker seen by the web process on port {self.port} within 60 s")

    def terminate(self) -> list[int]:
        """SIGTERM to every process at once, as a platform does; each waited for (killed after 30 s)."""
        for proc in self.procs:
            proc.process.send_signal(signal.SIGTERM)
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.process.wait(30))
            except subprocess.TimeoutExpired:  # a second SIGTERM would cut a drain short: kill instead
                os.killpg(proc.pid, signal.SIGKILL)
                codes.append(proc.process.wait())
        return codes


def _peak(times: list[float], window: float) -> int:
    """The most connections made within any ``window`` seconds."""
    times = sorted(times)
    best, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def _publish(kind: str, redis_url: str, rate: float, sent: list[int], enough: asyncio.Event) -> None:
    """``rate`` group messages a second, numbered from 0, until ``enough`` is set."""
    loop = asyncio.get_running_loop()
    if kind == "ours":
        from bench.project.settings_history import LAYER_CONFIG
        from paas_channels.layers.redis import RedisChannelLayer

        layer = RedisChannelLayer(hosts=[redis_url], **LAYER_CONFIG)
        layer.use_keys([SECRET_KEY])  # as the servers' get_channel_layer() does: unsigned messages are dropped
        send, close = (lambda n: layer.asend_group(FULL_GROUP, {"text": str(n)})), layer.aclose
    else:
        from bench.project.settings_channels4_roomy import PEER_CAPACITY, peer_hosts
        from channels_redis.core import RedisChannelLayer as PeerLayer

        peer = PeerLayer(hosts=peer_hosts(redis_url), capacity=PEER_CAPACITY)
        send, close = (lambda n: peer.group_send(FULL_GROUP, {"type": "bench.message", "text": str(n)})), peer.close_pools
    try:
        start = loop.time()
        n = 0
        while not enough.is_set():
            await asyncio.sleep(max(0.0, start + n / rate - loop.time()))
            await send(n)
            sent.append(n)
            n += 1
    finally:
        await close()
        if kind == "ours":
            layer.close()


async def _full_side(kind: str, workdir: Path, clients: int, rate: float, drain: float, log,
                     lead: float = 2.0, tail: float = 2.0, quiet: float = 3.0) -> dict:
    """One side: its release, ``clients`` in the group, messages from ``lead`` s before the deploy to
    ``tail`` s after it; then until every client has every message, or none came for ``quiet`` s."""
    redis = RedisServer().start()
    old = new = None
    stop = asyncio.Event()
    pool: list[ResumingClient] = []
    tasks: list[asyncio.Task] = []
    try:
        old = _Release(kind, workdir, redis.url, 1, drain)
        await asyncio.to_thread(old.wait_ready, 1)
        target = {"port": old.port}
        pool = [ResumingClient(lambda: f"ws://127.0.0.1:{target['port']}/ws/room/") for _ in range(clients)]
        tasks = [asyncio.ensure_future(client.run(stop)) for client in pool]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        # Every client in the group before the first message (ours: its join notice; the peer: connected + a moment).
        while not all(client.connects for client in pool) or (kind == "ours" and not all(
                FULL_GROUP in client.state.positions for client in pool)):
            if loop.time() > deadline:
                raise TimeoutError(f"{kind}: not every client joined within 60 s")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        sent: list[int] = []
        enough = asyncio.Event()
        publisher = asyncio.ensure_future(_publish(kind, redis.url, rate, sent, enough))
        while len(sent) < lead * rate:
            await asyncio.sleep(0.02)
        deployed_at = time.monotonic()
        sent_before_deploy = len(sent)
        new = _Release(kind, workdir, redis.url, 2, drain)
        await asyncio.to_thread(new.wait_ready, 2)
        target["port"] = new.port  # the router: new connections go to the new release
        moved_at = time.monotonic()
        codes = await asyncio.to_thread(old.terminate)
        await asyncio.sleep(tail)  # messages after the deploy too
        enough.set()
        await publisher
        messages = len(sent)
        # Until every client has every message, or nothing more arrives for ``quiet`` s.
        last, changed = -1, loop.time()
        while loop.time() - changed < quiet:
            got = sum(len(client.messages) for client in pool)
            if got >= clients * messages:
                break
            if got != last:
                last, changed = got, loop.time()
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(*(client.close() for client in pool), return_exceptions=True)
        if tasks:
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        procs = [proc.process for release in (old, new) if release is not None for proc in release.procs]
        await asyncio.to_thread(stop_processes, procs, STOP_TIMEOUT)  # side by side, as in Deployment.close
        redis.close()
    expected = [str(n) for n in range(messages)]
    lost = lost_before = duplicates = disordered = 0
    for client in pool:
        got = [data for data, meta in client.messages if isinstance(data, str) and data.isdigit()]
        distinct = set(got)
        lost += sum(1 for text in expected if text not in distinct)
        lost_before += sum(1 for text in expected[:sent_before_deploy] if text not in distinct)
        duplicates += len(got) - len(distinct)
        disordered += int([int(text) for text in got] != sorted(int(text) for text in distinct))
    reconnects = [at for client in pool for at in client.connected_at if at >= moved_at]
    result = {
        "kind": kind, "ws_drain": drain if kind == "ours" else None, "clients": clients, "messages": messages,
        "rate": rate, "expected": clients * messages, "lost": lost, "duplicates": duplicates,
        # Of the lost ones, those sent before the deploy began (the server not keeping up, not the deploy).
        "lost_before_deploy": lost_before, "messages_before_deploy": sent_before_deploy,
        # Connections that could not be made (e.g. 403: websocket.connect full during the reconnect burst).
        "failed_connects": sum(len(c.failures) for c in pool),
        "clients_out_of_order": disordered,
        "clients_told_not_recovered": sum(1 for c in pool if any(not ok for _, ok in c.recoveries)),
        "clients_reconnected": sum(1 for c in pool if c.connects >= 2), "gap_resumes": sum(c.gap_resumes for c in pool),
        "reconnect_peak_per_s": _peak(reconnects, 1.0), "reconnect_peak_per_100ms": _peak(reconnects, 0.1),
        "reconnect_spread_s": round(max(reconnects) - min(reconnects), 2) if reconnects else None,
        "new_release_s": round(moved_at - deployed_at, 2), "old_exit_codes": codes,
    }
    log(f"   {kind}{' drain ' + str(drain) + ' s' if kind == 'ours' else ''}: lost {lost:,}/{clients * messages:,} "
        f"({lost_before:,} of them before the deploy), {duplicates} duplicates, reconnect peak "
        f"{result['reconnect_peak_per_s']}/s on the new web, {result['failed_connects']} connections refused or failed")
    return result


def run_full(workdir: Path, clients: int, rate: float, drain: float = 2.0, log=print,
             lead: float = 2.0, tail: float = 2.0, quiet: float = 3.0) -> dict:
    """Full deploy, same load and run for each side: ours with the client (slow drain on and off), Channels 4.

    ``lead``/``tail``: seconds of messages before and after the deploy; ``quiet``: how long no
    message may arrive before a client's missing ones count as lost (see :func:`_full_side`).
    """
    log(f"== full deploy (web and worker replaced): {clients} clients in one group, {rate:.0f} messages/s")
    pace = {"lead": lead, "tail": tail, "quiet": quiet}
    sides = {
        "ours": asyncio.run(_full_side("ours", workdir, clients, rate, drain, log, **pace)),
        "ours_no_drain": asyncio.run(_full_side("ours", workdir, clients, rate, 0.0, log, **pace)),
        "channels4": asyncio.run(_full_side("channels4", workdir, clients, rate, drain, log, **pace)),
    }
    return {
        "label": "full deploy (web and worker replaced): messages lost by clients",
        **sides,
        "peer_note": "Channels 4 + channels_redis (capacity 5000, as this project's web inbox here, and 1000 Redis "
                     "connections: with the defaults, 100 and 100, it loses most messages to 200 connections of one "
                     "process before any deploy) with a client "
                     "that reconnects the same way (jittered, soon after a close); it has no history, so what is "
                     "sent while a client reconnects is lost",
    }
