"""HTTP benchmark: one small Django view, every way paas-channels serves it, against its peers.

    python bench/http.py [--duration 10] [--rate 300] [--only combined,gunicorn]

Serves the same view (``/hello/``: the example project's full middleware
stack, a short plain-text response) with:

* paas-channels combined (Daphne + 4 worker threads, in-memory layer),
* paas-channels combined --http direct,
* paas-channels split on Redis: web + 1 worker, web + 2 workers,
* Daphne serving Django's ASGI handler directly (the usual "Django on ASGI"),
* gunicorn serving the WSGI app with 2 sync workers,

and measures, in one run with the same load generators:

* throughput: ``wrk`` with 32 keep-alive connections for ``--duration`` s;
* latency at a fixed rate (``--rate`` requests/s, open loop, so a slow
  server cannot slow the generator down and hide its queueing): p50/p99.

Prints ratios against the peers and the issue's targets, writes
``bench/results/http.json`` and ``http.md``, and rewrites the table between
``<!-- bench:http -->`` markers in README.md.  Needs ``redis-server``; uses ``wrk`` (apt-get install
wrk) when installed, else a slower Python closed-loop generator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file (http.py) would shadow the standard library's `http`: drop its folder from the path.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from paas_channels.testing import RedisServer, free_port, wait_for_port  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CONNECTIONS = 32
WARMUP_REQUESTS = 300

_SETTINGS = '''\
from example_project.settings import *  # noqa: F401,F403
ROOT_URLCONF = "paas_bench_urls"
ALLOWED_HOSTS = ["*"]
DEBUG = False
LOGGING = {"version": 1, "disable_existing_loggers": False,
           "handlers": {"err": {"class": "logging.StreamHandler"}},
           "root": {"handlers": ["err"], "level": "WARNING"}}
'''
_URLS = '''\
from django.http import HttpResponse
from django.urls import include, path


def hello(request):
    return HttpResponse("Hello from Django\\n", content_type="text/plain")


urlpatterns = [path("hello/", hello), path("", include("example_project.urls"))]
'''
_ASGI = '''\
from django.core.asgi import get_asgi_application
application = get_asgi_application()
'''


### Load generators ###


def _seconds(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if not match:
        raise ValueError(f"cannot read wrk latency {text!r}")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def run_wrk(url: str, duration: float) -> dict:
    """Closed-loop throughput with wrk: requests/s, latency percentiles, errors."""
    result = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{int(duration)}s", "--latency", "--timeout", "10s", url],
        capture_output=True, text=True, timeout=duration + 60,
    )
    out = result.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    percentiles = {f"p{p}": _seconds(v) * 1000 for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M)}
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests_per_s": rps,
        "latency_ms": percentiles,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
        "generator": "wrk",
    }


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bool]:
    """One HTTP/1.1 request on an open connection: (status, whether the server closes the connection)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    if length:
        await reader.readexactly(int(length.group(1)))
    else:  # chunked
        while True:
            size = int((await reader.readline()).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    # gunicorn's sync workers close after every response
    return status, bool(re.search(rb"(?i)\r\nconnection:\s*close", head))


def _percentiles(latencies: list[float]) -> dict:
    latencies.sort()

    def pick(fraction: float) -> float:
        return latencies[min(len(latencies) - 1, int(fraction * len(latencies)))] * 1000 if latencies else float("nan")

    return {"p50": pick(0.50), "p90": pick(0.90), "p99": pick(0.99), "max": pick(1.0)}


async def _fixed_rate(host: str, port: int, path: str, rate: float, duration: float) -> dict:
    """Open loop: request i is due at start + i/rate; latency counts from when it was due."""
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    latencies: list[float] = []
    failures = 0
    statuses: dict[str, int] = {}

    async def one(due: float) -> None:
        nonlocal failures
        writer = None
        try:
            connection = idle.pop() if idle else await asyncio.open_connection(host, port)
            reader, writer = connection
            status, closes = await _exchange(reader, writer, request)
            latencies.append(time.perf_counter() - due)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if status >= 400:
                failures += 1
            if closes:
                writer.close()
            else:
                idle.append(connection)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            failures += 1
            statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
            if writer is not None:
                writer.close()

    start = time.perf_counter() + 0.1
    total = int(rate * duration)
    tasks = []
    for index in range(total):
        due = start + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(due)))
    # A server far slower than the rate queues requests for long: past this wait they count as failures.
    _, pending = await asyncio.wait(tasks, timeout=60)
    for task in pending:
        task.cancel()
    if pending:
        failures += len(pending)
        statuses["no answer within 60 s"] = len(pending)
        await asyncio.gather(*pending, return_exceptions=True)
    for _, writer in idle:
        writer.close()
    return {"rate": rate, "requests": total, "failures": failures, "statuses": statuses,
            "latency_ms": _percentiles(latencies)}


async def _closed_loop(host: str, port: int, path: str, connections: int, duration: float) -> dict:
    """wrk's measurement in Python, for machines without wrk: ``connections`` clients, each one request at a time."""
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    latencies: list[float] = []
    counts = {"non_2xx": 0, "socket_errors": 0}
    deadline = time.perf_counter() + duration

    async def client() -> None:
        connection = None
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                if connection is None:
                    connection = await asyncio.open_connection(host, port)
                status, closes = await _exchange(*connection, request)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                counts["socket_errors"] += 1
                if connection is not None:
                    connection[1].close()
                connection = None
                await asyncio.sleep(0.01)  # a refusing server must not turn this into a busy loop
                continue
            latencies.append(time.perf_counter() - started)
            if not 200 <= status < 400:
                counts["non_2xx"] += 1
            if closes:
                connection[1].close()
                connection = None
        if connection is not None:
            connection[1].close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    return {"requests_per_s": len(latencies) / elapsed, "latency_ms": _percentiles(latencies),
            "generator": "python", **counts}


def run_closed_loop(url: str, duration: float, connections: int = CONNECTIONS) -> dict:
    match = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    return asyncio.run(_closed_loop(match.group(1), int(match.group(2)), match.group(3), connections, duration))


def run_throughput(url: str, duration: float) -> dict:
    """wrk when installed, else the Python closed loop (slower: it caps what it can measure)."""
    return run_wrk(url, duration) if shutil.which("wrk") else run_closed_loop(url, duration)


def run_fixed_rate(url: str, rate: float, duration: float) -> dict:
    match = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    return asyncio.run(_fixed_rate(match.group(1), int(match.group(2)), match.group(3), rate, duration))


### Servers ###


class Setup:
    """The processes of one configuration; started, measured, stopped."""

    def __init__(self, name: str, label: str, commands: list[list[str]], env: dict, needs_redis: bool = False,
                 stop_timeout: float = 10.0):
        self.name, self.label, self.commands, self.env, self.needs_redis = name, label, commands, env, needs_redis
        self.stop_timeout = stop_timeout
        self.processes: list[subprocess.Popen] = []
        self.redis: RedisServer | None = None
        self.logs: list[Path] = []

    def start(self, port: int, workdir: Path) -> None:
        self.processes, self.logs, self.redis = [], [], None  # a setup is started once per round
        env = dict(self.env)
        if self.needs_redis:
            self.redis = RedisServer().start()
            env["REDIS_URL"] = self.redis.url
        for index, command in enumerate(self.commands):
            log = workdir / f"{self.name}.{index}.log"
            self.logs.append(log)
            argv = [part.replace("{port}", str(port)) for part in command]
            self.processes.append(subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log.open("wb"),
                                                   stderr=subprocess.STDOUT, start_new_session=True))
        wait_for_port(port, timeout=60, process=self.processes[0])

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()
        if self.redis is not None:
            self.redis.close()


def setups(workdir: Path) -> list[Setup]:
    base = {key: value for key, value in os.environ.items()
            if not key.startswith("PAAS_CHANNELS_") and key not in {"REDIS_URL", "WEB_CONCURRENCY", "PORT"}}
    base.update({
        "DJANGO_SETTINGS_MODULE": "paas_bench_settings",
        "PYTHONPATH": os.pathsep.join([str(workdir), str(ROOT)]),
        "SECRET_KEY": "bench-" + "x" * 60,
        "DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
        "PAAS_CHANNELS_LOG_LEVEL": "warning",
    })
    cli = [sys.executable, "-m", "paas_channels.cli"]
    listen = ["--bind", "127.0.0.1", "--port", "{port}"]
    return [
        Setup("combined", "paas-channels combined (in-memory, 4 threads)",
              [[*cli, "run", "--combined", *listen]], base),
        Setup("combined_direct", "paas-channels combined --http direct",
              [[*cli, "run", "--combined", "--http", "direct", *listen]], base),
        Setup("split_1", "paas-channels split: web + 1 worker (Redis)",
              [[*cli, "run", "web", *listen], [*cli, "run", "worker"]], base, needs_redis=True),
        Setup("split_2", "paas-channels split: web + 2 workers (Redis)",
              [[*cli, "run", "web", *listen], [*cli, "run", "worker"], [*cli, "run", "worker"]], base,
              needs_redis=True),
        Setup("daphne_asgi", "Daphne + Django ASGI handler",
              [[sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", "{port}", "-v", "0", "paas_bench_asgi:application"]],
              # Daphne serving Django's ASGI handler does not exit on SIGTERM once sync views have run
              # (asgiref's per-request executor threads are not daemons): killed after this wait.
              base, stop_timeout=1.0),
        Setup("gunicorn", "gunicorn + WSGI, 2 workers",
              [[sys.executable, "-m", "gunicorn", "-w", "2", "-b", "127.0.0.1:{port}", "--log-level", "warning",
                "example_project.wsgi:application"]], base),
    ]


def _warm(url: str, requests: int = WARMUP_REQUESTS) -> None:
    import httpx

    with httpx.Client(timeout=30) as client:
        deadline = time.monotonic() + 60
        while True:  # split mode: the first requests wait for a worker's first heartbeat
            try:
                if client.get(url).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} never answered 200")
            time.sleep(0.2)
        for _ in range(requests):
            client.get(url)


### Report ###


def _ratio(results: dict, name: str, peer: str) -> float | None:
    if name in results and peer in results:
        return results[name]["throughput"]["requests_per_s"] / results[peer]["throughput"]["requests_per_s"]
    return None


def report(results: dict, labels: dict, args: argparse.Namespace) -> str:
    lines = [
        f"HTTP, one small Django view (`/hello/`, the example project's middleware), {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; wrk with {CONNECTIONS} connections for "
        f"{args.duration:.0f} s; fixed-rate latency open loop at {args.rate:.0f} requests/s; best of {args.rounds} "
        "interleaved rounds. "
        f"Measured {time.strftime('%Y-%m-%d', time.gmtime())} by `python bench/http.py`.",
        "",
        "| server | requests/s | p50 ms | p99 ms | p50 ms @ rate | p99 ms @ rate | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in results.items():
        thr, fixed = result["throughput"], result["fixed_rate"]
        errors = thr["non_2xx"] + thr["socket_errors"] + fixed["failures"]
        lines.append(
            f"| {labels[name]} | {thr['requests_per_s']:,.0f} | {thr['latency_ms'].get('p50', float('nan')):.1f} | "
            f"{thr['latency_ms'].get('p99', float('nan')):.1f} | {fixed['latency_ms']['p50']:.1f} | "
            f"{fixed['latency_ms']['p99']:.1f} | {errors} |"
        )
    lines += ["", "| target | measured | met |", "|---|---:|---|"]
    checks = [
        ("combined >= 2x Daphne+ASGI requests/s", _ratio(results, "combined", "daphne_asgi"), 2.0, True),
        ("split (web + 1 worker) >= 1.5x Daphne+ASGI", _ratio(results, "split_1", "daphne_asgi"), 1.5, True),
    ]
    if "gunicorn" in results:
        gunicorn_p99 = results["gunicorn"]["fixed_rate"]["latency_ms"]["p99"]
        for name in ("combined", "split_1"):
            if name in results:
                checks.append((f"{labels[name]}: p99 @ {args.rate:.0f}/s <= 3x gunicorn's",
                               results[name]["fixed_rate"]["latency_ms"]["p99"] / gunicorn_p99, 3.0, False))
    for text, value, bound, at_least in checks:
        if value is None:
            continue
        met = value >= bound if at_least else value <= bound
        lines.append(f"| {text} | {value:.2f}x | {'yes' if met else 'no'} |")
    return "\n".join(lines)


def _write_readme(table: str) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = "<!-- bench:http -->", "<!-- /bench:http -->"
    if start not in text or end not in text:
        print("README.md has no bench:http markers; table not written there", file=sys.stderr)
        return
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{table}\n{end}{tail}")


#: What the issue's targets need; a tiny run measures only these.
TARGET_SETUPS = ("combined", "split_1", "daphne_asgi", "gunicorn")


def measure(duration: float = 10.0, rate: float = 300.0, rounds: int = 2, only: list[str] | None = None,
            warmup: int = WARMUP_REQUESTS, log=print) -> dict:
    """Every chosen setup ``rounds`` times, interleaved; each one's best throughput and best p99 count."""
    workdir = Path(tempfile.mkdtemp(prefix="paas-bench-http-"))
    (workdir / "paas_bench_settings.py").write_text(_SETTINGS)
    (workdir / "paas_bench_urls.py").write_text(_URLS)
    (workdir / "paas_bench_asgi.py").write_text(_ASGI)
    chosen = [setup for setup in setups(workdir) if not only or setup.name in only]
    if not chosen:
        raise ValueError(f"no HTTP setup named {only}; choose from {', '.join(s.name for s in setups(workdir))}")
    try:
        results = run_rounds("http", chosen, workdir, duration, rate, rounds, warmup, log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "duration_s": duration, "rate": rate, "rounds": rounds, "connections": CONNECTIONS,
        "generator": "wrk" if shutil.which("wrk") else "python (wrk not installed)",
        "results": results, "ratios": ratios(results),
    }


def run_rounds(kind: str, chosen: list, workdir: Path, duration: float, rate: float, rounds: int, warmup: int,
               log=print, idle: Callable[[Any], dict] | None = None) -> dict:
    """Migrate, then measure every setup in ``chosen`` ``rounds`` times, interleaved.

    Each round starts the setup on a free port, warms it, takes ``idle(setup)``
    (e.g. its resident memory) if given, then the throughput and the fixed-rate
    latency; each setup keeps its best throughput and its best p99.  A failure
    prints the servers' logs before the work directory goes away.
    """
    migrate = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT,
                             env=chosen[0].env, capture_output=True, text=True)
    if migrate.returncode != 0:
        raise RuntimeError(f"migrate failed for the {kind} benchmark's database:\n{migrate.stderr}")
    results: dict = {}
    for round_number in range(1, rounds + 1):
        for setup in chosen:
            port = free_port()
            url = f"http://127.0.0.1:{port}/hello/"
            log(f"== {kind} round {round_number}/{rounds}: {setup.label}")
            setup.start(port, workdir)
            measured: dict = {}
            try:
                _warm(url, warmup)
                if idle is not None:
                    measured["idle_memory"] = idle(setup)
                    log(f"   idle: {measured['idle_memory']['processes']} processes, "
                        f"{measured['idle_memory']['total_mib']} MiB resident")
                throughput = measured["throughput"] = run_throughput(url, duration)
                log(f"   {throughput['requests_per_s']:,.0f} requests/s, latency {throughput['latency_ms']}")
                fixed = measured["fixed_rate"] = run_fixed_rate(url, rate, duration)
                log(f"   at {rate:.0f}/s: {fixed['latency_ms']}, failures {fixed['failures']}")
            except Exception:
                for path in getattr(setup, "logs", ()):
                    log(f"   {path.name}: ...{path.read_text(errors='replace')[-1500:]}")
                raise
            finally:
                setup.stop()
            best = results.setdefault(setup.name, {"label": setup.label, "rounds": []})
            best["rounds"].append(measured)
            if "throughput" not in best or throughput["requests_per_s"] > best["throughput"]["requests_per_s"]:
                best["throughput"] = throughput
            if "fixed_rate" not in best or fixed["latency_ms"]["p99"] < best["fixed_rate"]["latency_ms"]["p99"]:
                best["fixed_rate"] = fixed
            if "idle_memory" in measured:
                best["idle_memory"] = measured["idle_memory"]
    return results


def ratios(results: dict) -> dict:
    """The issue's ratios: throughput against Daphne+ASGI, p99 at the fixed rate against gunicorn."""
    out = {
        "combined_vs_daphne_asgi_rps": _ratio(results, "combined", "daphne_asgi"),
        "split_1_vs_daphne_asgi_rps": _ratio(results, "split_1", "daphne_asgi"),
        "split_2_vs_daphne_asgi_rps": _ratio(results, "split_2", "daphne_asgi"),
        "combined_vs_gunicorn_rps": _ratio(results, "combined", "gunicorn"),
    }
    if "gunicorn" in results:
        gunicorn_p99 = results["gunicorn"]["fixed_rate"]["latency_ms"]["p99"]
        for name in ("combined", "split_1", "split_2"):
            if name in results:
                out[f"{name}_vs_gunicorn_p99_at_rate"] = results[name]["fixed_rate"]["latency_ms"]["p99"] / gunicorn_p99
    return {key: value for key, value in out.items() if value is not None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    parser.add_argument("--rate", type=float, default=300.0, help="requests/s of the fixed-rate test (default 300)")
    parser.add_argument("--only", default="", help="comma-separated setup names (default: all)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="measure every setup this many times, interleaved, and keep each one's best "
                             "(other processes on a small machine add noise; default 2)")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite README.md")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install -y wrk): throughput measured by the slower Python generator",
              file=sys.stderr)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    measured = measure(args.duration, args.rate, args.rounds, only)
    results = measured["results"]
    labels = {name: result["label"] for name, result in results.items()}
    table = report(results, labels, args)
    print()
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "http.json").write_text(json.dumps(measured, indent=2) + "\n")
    (RESULTS / "http.md").write_text(table + "\n")
    if not args.no_readme and not args.only:
        _write_readme(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
