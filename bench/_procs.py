"""Processes the WebSocket scenarios start: Redis, our split mode, Daphne + Channels 4, client pools.

Everything is real and on free loopback ports; every process runs in its own
session so that a stuck one can be killed with its children.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from paas_channels.testing import (  # noqa: F401 - cpu_seconds, rss_kib: for the scenarios
    RedisServer,
    cpu_seconds,
    free_port,
    rss_kib,
    stop_process,
    stop_processes,
    wait_for_port,
)

ROOT = Path(__file__).resolve().parent.parent
#: Daphne serving Django keeps non-daemon threads and may never exit on SIGTERM: wait this long, then kill.
STOP_TIMEOUT = 10.0


#: The benchmarked processes' SECRET_KEY (their layer messages are signed with keys from it).
SECRET_KEY = "bench-" + "x" * 60


def base_env(workdir: Path, settings: str, redis_url: str | None = None) -> dict[str, str]:
    """The environment of a benchmarked process: nothing inherited that configures paas-channels."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("PAAS_CHANNELS_") and key not in {"REDIS_URL", "WEB_CONCURRENCY", "PORT",
                                                                    "DATABASE_URL", "DJANGO_SETTINGS_MODULE"}}
    env.update({
        "DJANGO_SETTINGS_MODULE": settings,
        "PYTHONPATH": str(ROOT),
        "BENCH_DIR": str(workdir),
        "SECRET_KEY": SECRET_KEY,
        "PAAS_CHANNELS_LOG_LEVEL": "warning",
        "PYTHONUNBUFFERED": "1",
    })
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


class Proc:
    """One subprocess with its output in a log file under the work directory."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.log = workdir / f"{name}.log"
        self.process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=self.log.open("ab"),
                                        stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM and wait; SIGKILL the session when it does not exit in time.  Returns the exit code."""
        return stop_process(self.process, timeout)


class Deployment:
    """A server under test: ``ours`` (split: web + N workers) or ``channels4`` (Daphne + Channels 4), on its own Redis."""

    def __init__(self, kind: str, workdir: Path, workers: int = 1) -> None:
        self.kind, self.workdir, self.worker_count = kind, workdir, workers
        self.redis = RedisServer().start()
        self.port = free_port()
        self.workers: list[Proc] = []
        self._spawned = 0
        if kind == "ours":
            self.env = base_env(workdir, "bench.project.settings", self.redis.url)
            self.web = Proc(f"ours-web-{self.port}", [sys.executable, "-m", "paas_channels.cli", "run", "web",
                                                      "--bind", "127.0.0.1", "--port", str(self.port)],
                            self.env, workdir)
            for _ in range(workers):
                self.start_worker()
        elif kind == "channels4":
            self.env = base_env(workdir, "bench.project.settings_channels4", self.redis.url)
            self.web = Proc(f"channels4-daphne-{self.port}", [sys.executable, "-m", "daphne", "-b", "127.0.0.1",
                                                              "-p", str(self.port), "-v", "0",
                                                              "bench.project.channels4:application"],
                            self.env, workdir)
        else:
            raise ValueError(f"deployment kind must be 'ours' or 'channels4', got {kind!r}")
        try:
            wait_for_port(self.port, timeout=60, process=self.web.process)
            if kind == "ours":
                self.wait_for_workers(workers)
        except Exception:
            self.close()
            raise

    @property
    def label(self) -> str:
        return {"ours": "paas-channels split (web + worker)", "channels4": "Daphne + Channels 4 + channels_redis"}[self.kind]

    def url(self, path: str, scheme: str = "ws") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def start_worker(self) -> Proc:
        self._spawned += 1
        worker = Proc(f"ours-worker-{self.port}-{self._spawned}",
                      [sys.executable, "-m", "paas_channels.cli", "run", "worker"], self.env, self.workdir)
        self.workers.append(worker)
        return worker

    def health(self) -> dict:
        return httpx.get(self.url("/.paas-channels/health", "http"), timeout=10).json()

    def wait_for_workers(self, count: int, timeout: float = 60.0) -> None:
        """Until the web process sees exactly ``count`` live workers (their heartbeats)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.health().get("workers") == count:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            for worker in self.workers:
                if worker.process.poll() is not None and worker.process.returncode not in (0, None):
                    raise RuntimeError(f"worker exited with {worker.process.returncode}:\n{worker.tail()}")
            time.sleep(0.1)
        raise TimeoutError(f"the web process did not see {count} worker(s) within {timeout:.0f} s")

    def close(self) -> None:
        stop_processes([proc.process for proc in [*self.workers, self.web]], STOP_TIMEOUT)  # side by side
        self.redis.close()


class Clients:
    """WebSocket clients in ``processes`` client processes (bench/_wsclient.py), used as one pool."""

    def __init__(self, url: str, count: int, joined: bool, processes: int = 1, timeout: float = 180.0) -> None:
        processes = max(1, min(processes, count))
        shares = [count // processes + (1 if index < count % processes else 0) for index in range(processes)]
        self.procs = [
            subprocess.Popen([sys.executable, "-m", "bench._wsclient", url, str(share), *(["--joined"] if joined else [])],
                             cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
            for share in shares
        ]
        self.lines = [queue.Queue() for _ in self.procs]
        for proc, lines in zip(self.procs, self.lines):
            threading.Thread(target=self._pump, args=(proc, lines), daemon=True).start()
        try:
            ready = [self._read(index, timeout) for index in range(len(self.procs))]
        except Exception:
            self.close()
            raise
        self.connected = sum(item["ready"] for item in ready)
        self.failed = sum(item["failed"] for item in ready)
        self.errors = [error for item in ready for error in item["errors"]]

    @staticmethod
    def _pump(proc: subprocess.Popen, lines: queue.Queue) -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    def _read(self, index: int, timeout: float) -> dict:
        try:
            line = self.lines[index].get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"WebSocket client process gave no answer within {timeout:.0f} s") from None
        if line is None:
            raise RuntimeError(f"WebSocket client process exited with {self.procs[index].wait()}")
        return json.loads(line)

    def _command(self, command: str) -> dict:
        for proc in self.procs:
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
        parts = [self._read(index, 60) for index in range(len(self.procs))]
        per_broadcast: dict[str, int] = {}
        for part in parts:
            for key, value in part["per_broadcast"].items():
                per_broadcast[key] = per_broadcast.get(key, 0) + value
        return {"latencies": [value for part in parts for value in part["latencies"]],
                "per_broadcast": per_broadcast, "closed": sum(part["closed"] for part in parts)}

    def report(self) -> dict:
        return self._command("report")

    def wait_for_deliveries(self, expected: int, timeout: float) -> dict:
        """Report once ``expected`` messages arrived, or when nothing more arrives for 2 s / at ``timeout``."""
        deadline = time.monotonic() + timeout
        last, last_change = -1, time.monotonic()
        while True:
            report = self.report()
            got = len(report["latencies"])
            if got >= expected or time.monotonic() > deadline:
                return report
            if got != last:
                last, last_change = got, time.monotonic()
            elif time.monotonic() - last_change > 2.0:
                return report
            time.sleep(0.2)

    def close(self) -> dict | None:
        final = None
        try:
            final = self._command("quit") if all(proc.poll() is None for proc in self.procs) else None
        except (OSError, TimeoutError, RuntimeError, ValueError):
            pass
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return final


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
