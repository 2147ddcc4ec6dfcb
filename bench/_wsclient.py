"""A pool of WebSocket clients in one process, driven over stdin/stdout by the benchmark.

    python -m bench._wsclient URL COUNT [--joined]

Opens COUNT connections (``--joined``: each waits for the server's ``joined``
text, i.e. until it is in the group), prints one JSON line
``{"ready": connected, "failed": n}``, then records every later text frame
``{"i": broadcast, "t": send time}`` as a latency (receive time - send time,
same machine clock).  Commands on stdin, one per line, each answered with one
JSON line: ``report`` (latencies so far, per-broadcast counts, connections
closed by the server) and ``quit`` (close everything, report, exit).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

CONNECT_CONCURRENCY = 50


def raise_nofile() -> int:
    """Lift the soft open-files limit to the hard one: thousands of sockets need it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Pool:
    def __init__(self, url: str, count: int, joined: bool) -> None:
        self.url, self.count, self.joined = url, count, joined
        self.connections: list = []
        self.tasks: list[asyncio.Task] = []
        self.latencies: list[float] = []
        self.per_broadcast: dict[int, int] = {}
        self.failed = 0
        self.closed = 0  # closed by the other side (or the network) after the handshake
        self.closing = False
        self.errors: list[str] = []

    async def open_one(self, gate: asyncio.Semaphore) -> None:
        async with gate:
            try:
                ws = await connect(self.url, ping_interval=None, open_timeout=60, max_queue=None)
                if self.joined:
                    first = await asyncio.wait_for(ws.recv(), 60)
                    if first != "joined":
                        raise ValueError(f"expected 'joined' first, got {first!r:.80}")
            except (OSError, asyncio.TimeoutError, ConnectionClosed, ValueError, Exception) as exc:  # noqa: BLE001
                self.failed += 1
                if len(self.errors) < 5:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                return
        self.connections.append(ws)
        self.tasks.append(asyncio.ensure_future(self.read(ws)))

    async def read(self, ws) -> None:
        try:
            async for text in ws:
                now = time.time()
                try:
                    data = json.loads(text)
                    self.latencies.append(now - data["t"])
                    self.per_broadcast[data["i"]] = self.per_broadcast.get(data["i"], 0) + 1
                except (ValueError, KeyError, TypeError):
                    pass
        except ConnectionClosed:
            pass
        if not self.closing:
            self.closed += 1

    def report(self) -> dict:
        return {"connected": len(self.connections), "failed": self.failed, "closed": self.closed,
                "latencies": self.latencies, "per_broadcast": self.per_broadcast, "errors": self.errors}


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("count", type=int)
    parser.add_argument("--joined", action="store_true", help="wait for the server's 'joined' on each connection")
    args = parser.parse_args(argv)
    raise_nofile()
    pool = Pool(args.url, args.count, args.joined)
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    await asyncio.gather(*(pool.open_one(gate) for _ in range(args.count)))
    print(json.dumps({"ready": len(pool.connections), "failed": pool.failed, "errors": pool.errors}), flush=True)

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if line == "report":
            print(json.dumps(pool.report()), flush=True)
        elif line in ("quit", ""):
            pool.closing = True
            final = pool.report()
            await asyncio.gather(*(ws.close() for ws in pool.connections), return_exceptions=True)
            for task in pool.tasks:
                task.cancel()
            print(json.dumps(final), flush=True)
            return


if __name__ == "__main__":
    asyncio.run(main())
