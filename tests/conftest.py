from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()

from tests.layer_backends import LAYER_BACKENDS  # noqa: E402


#: Fixtures that start private Redis servers: a test using one is marked ``redis``.
_REDIS_FIXTURES = {"redis_server", "redis_shard_servers", "own_redis_servers"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """Mark every test that needs Redis, so ``-m "not redis"`` is the quick subset without it.

    A test needs Redis when it uses a Redis fixture or runs on a Redis layer
    backend; modules whose own fixtures start Redis say so with ``pytestmark``.

    Under pytest-xdist (pyproject's ``-n auto --dist loadgroup``) each module
    runs whole on one worker (its module fixtures are made once, its tests keep
    their order), and every module with a ``slow`` test runs on one worker
    after the other: two real deploys, a bench run or faults under load never
    share the machine's cores with each other, only with quick tests.
    """
    grouped = getattr(config.option, "loadgroup", False)  # what xdist tells its workers for --dist loadgroup
    slow_modules = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow") is not None}
    for item in items:
        callspec = getattr(item, "callspec", None)
        backends = [str(callspec.params.get(name, "")) for name in ("make_layer", "hlayer")] if callspec else []
        if _REDIS_FIXTURES & set(getattr(item, "fixturenames", ())) or any(b.startswith("redis") for b in backends):
            item.add_marker(pytest.mark.redis)
        if grouped:
            module = item.nodeid.split("::")[0]
            item.add_marker(pytest.mark.xdist_group("slow" if module in slow_modules else module))


@pytest.fixture(params=sorted(LAYER_BACKENDS))
def make_layer(request):
    """Factory for fresh layers of each backend: ``make_layer(expiry=1, capacity=3)``."""
    factory = LAYER_BACKENDS[request.param]
    made = []

    def make(**config):
        layer = factory(request, **config)
        layer.flush()
        made.append(layer)
        return layer

    yield make
    for layer in made:
        layer.flush()
        layer.close()


@pytest.fixture
def layer(make_layer):
    return make_layer()


@contextlib.contextmanager
def _private_redis_servers(count):
    from tests.support import RedisServer

    servers = []
    try:
        for _ in range(count):
            servers.append(RedisServer().start())
        yield servers
    finally:
        for server in servers:
            server.close()


@pytest.fixture(scope="session")
def redis_shard_servers():
    """Three private Redis servers for the whole session (the Redis layer's shards)."""
    with _private_redis_servers(3) as servers:
        yield servers


@pytest.fixture
def own_redis_servers():
    """``own_redis_servers(n)``: n private Redis servers for this test only (to stop, restart...)."""
    with contextlib.ExitStack() as stack:
        yield lambda count: stack.enter_context(_private_redis_servers(count))


@pytest.fixture(scope="session")
def redis_server(redis_shard_servers):
    """One private Redis server for the session (shared; tests use unique prefixes)."""
    return redis_shard_servers[0]


@pytest.fixture(scope="session")
def rabbitmq_url():
    """The shared RabbitMQ broker (never stopped by tests; they use prefixes of their own)."""
    return os.environ.get("PAAS_CHANNELS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


@pytest.fixture(scope="session")
def rabbitmq_node():
    """One private RabbitMQ node for every module of the session that needs one (a node takes ~10 s to
    start).  A module may stop, freeze, restart or wipe it; its ``node`` fixture takes it with
    ``rabbitmq_node.running()`` and leaves behind no user or object a later module would count."""
    from tests.rabbitmq_node import RabbitMQNode

    node = RabbitMQNode().start()
    try:
        yield node
    finally:
        node.close()


@pytest.fixture(scope="session")
def rabbitmq_made_layers():
    """RabbitMQ layers made by tests: their streams and exchange are deleted at the end of the session."""
    layers = []
    yield layers
    for layer in layers:
        with contextlib.suppress(Exception):
            layer.destroy()
