"""``paas-channels run --combined``: the interface server and worker threads in one process.

The quickest way to see the whole system work, and the mode of one-dyno
plans: Daphne serves the interface app on its asyncio loop while
``--threads`` worker threads (default ``WEB_CONCURRENCY``, else 4) run the
consumers and views.  Both share ONE layer instance: the in-memory layer when
no Redis is configured (nothing else to run), Redis when ``REDIS_URL`` is set
(then several combined dynos share channels and groups, and split-mode
processes can join them).

SIGTERM drains both parts in order: the interface stops listening and lets
HTTP responses in flight finish (the workers are still running to produce
them), then the workers stop taking messages and finish what they hold,
within what is left of ``--graceful-timeout``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ..config.options import Config
from ..interface import InterfaceApplication, serve
from ..interface.direct import HybridApplication
from ..layers import get_channel_layer
from ..worker import build_worker
from .boot import check_reach, close_layer
from .supervisor import report_ready

logger = logging.getLogger(__name__)

__all__ = ["run"]

#: Seconds the worker part always gets after the interface drained, however long that took.
_MIN_WORKER_DRAIN = 1.0


def _interface_app(layer: Any, config: Config, drain_started: list[float], worker: Any) -> Any:
    """The ASGI app Daphne serves: the interface, or the hybrid app under ``--http direct``.

    ``drain_started`` receives the moment the interface begins its shutdown, so
    the workers get what is left of the graceful timeout.
    """
    interface = InterfaceApplication(layer, config)
    # One heartbeat per process: the worker's, with the interface's connections in it.
    interface.publish_heartbeat = False
    worker.kind = "combined"
    worker.extra_info = interface.connection_info
    interface.connections_changed = worker.beat_soon
    shutdown = interface.shutdown

    async def timed_shutdown(timeout: float) -> int:
        drain_started.append(time.monotonic())
        return await shutdown(timeout)

    interface.shutdown = timed_shutdown  # type: ignore[method-assign]
    if getattr(config, "http", "layer") == "direct":
        return HybridApplication(interface, config)
    return interface


def run(config: Config) -> int:
    """Serve until SIGTERM/SIGINT; exit 0 when both parts stopped cleanly, 1 if work was cut off."""
    layer = get_channel_layer(config.layer)
    check_reach(layer, config)
    worker = build_worker(config, layer=layer, threads=config.threads)
    worker.kind = "combined"
    worker.check_layer()  # a boot error (unreachable Redis) before anything listens
    drain_started: list[float] = []
    app = _interface_app(layer, config, drain_started, worker)
    worker_cut: list[int] = []

    def work() -> None:
        try:
            worker_cut.append(worker.serve())
        except Exception:
            logger.exception("the worker part failed")
            worker_cut.append(-1)

    thread = threading.Thread(target=work, name="paas-combined-worker", daemon=True)
    thread.start()
    logger.info("combined: Daphne and %d worker thread(s) on one %s%s", worker.threads, type(layer).__name__,
                " shared by the processes of this machine" if layer.reach == "machine" else "")
    interface_code = 1
    try:
        interface_code = serve(app, config, ready=report_ready)
    finally:
        # The interface has drained (or failed to start): now the workers.
        spent = time.monotonic() - drain_started[0] if drain_started else 0.0
        worker.graceful_timeout = max(_MIN_WORKER_DRAIN, config.graceful_timeout - spent)
        worker.stop()
        thread.join(worker.graceful_timeout + 5)
        close_layer(layer)
    cut = worker_cut[0] if worker_cut else -1
    if cut:
        logger.warning("combined: the worker part did not stop cleanly (%s)",
                       "still running" if not worker_cut else f"{cut} consumer(s) cut off")
    return 0 if interface_code == 0 and cut == 0 else 1
