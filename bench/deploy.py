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
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from bench import http as http_bench
from bench._procs import Clients, Deployment

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
