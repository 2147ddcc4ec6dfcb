"""Redis layer configuration: host forms, TLS (Heroku's self-signed certificates),
``config_from_env``, and errors that say what to do without echoing a password.

A private ``redis-server`` with TLS, a password and a unix socket is started
here with a throwaway self-signed certificate.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from paas_channels.exceptions import ConfigError
from paas_channels.layers.redis import ChannelLayerConnectionError, RedisChannelLayer, config_from_env
from tests.support import free_port, wait_for_port

PASSWORD = "tls-s3cret-pw"


@pytest.fixture(scope="module")
def tls_redis():
    """A redis-server speaking TLS only on TCP (self-signed cert), plus a unix socket."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make a test certificate: apt-get install openssl")
    directory = Path(tempfile.mkdtemp(prefix="paas-tls-"))
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )
    port = free_port()
    socket_path = directory / "redis.sock"
    process = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
         "--tls-auth-clients", "no", "--requirepass", PASSWORD, "--unixsocket", str(socket_path),
         "--save", "", "--appendonly", "no", "--dir", str(directory), "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_for_port(port, process=process)
        yield {"port": port, "cert": str(cert), "socket": str(socket_path)}
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def round_trip(layer: RedisChannelLayer) -> None:
    try:
        layer.send("cfg.chan", {"ok": b"yes"})
        assert layer.receive(["cfg.chan"]) == ("cfg.chan", {"ok": b"yes"})
        layer.flush()
    finally:
        layer.close()


### TLS ###


def test_rediss_url_with_ssl_cert_reqs_none_accepts_self_signed(tls_redis):
    url = f"rediss://:{PASSWORD}@127.0.0.1:{tls_redis['port']}/0?ssl_cert_reqs=none"
    layer = RedisChannelLayer(hosts=[url], prefix="tlsnone", reply_spin_us=5000)
    round_trip(layer)
    # Bytes on a TLS socket are not the reply yet: the sync side never spins on one.
    assert layer._sync.spin.tries == 0


def test_rediss_verifies_certificates_by_default(tls_redis):
    layer = RedisChannelLayer(hosts=[f"rediss://:{PASSWORD}@127.0.0.1:{tls_redis['port']}/0"], prefix="tlsverify")
    try:
        with pytest.raises(ChannelLayerConnectionError) as caught:
            layer.send("cfg.chan", {"a": 1})
    finally:
        layer.close()
    text = str(caught.value)
    assert f"rediss://127.0.0.1:{tls_redis['port']}" in text
    assert "certificate" in text.lower()
    assert PASSWORD not in text


def test_rediss_with_own_ca_keeps_verification(tls_redis):
    host = {"address": f"rediss://127.0.0.1:{tls_redis['port']}/0", "password": PASSWORD,
            "ssl_ca_certs": tls_redis["cert"]}
    round_trip(RedisChannelLayer(hosts=[host], prefix="tlsca"))


def test_heroku_env_gets_self_signed_tls_working(tls_redis):
    url = f"rediss://:{PASSWORD}@127.0.0.1:{tls_redis['port']}"
    config = config_from_env({"REDIS_TLS_URL": url, "REDIS_URL": "redis://ignored:6379", "DYNO": "web.1"})
    assert config == {"hosts": [{"address": url, "ssl_cert_reqs": None}]}
    round_trip(RedisChannelLayer(prefix="tlsheroku", **config))


def test_async_side_over_tls(tls_redis):
    url = f"rediss://:{PASSWORD}@127.0.0.1:{tls_redis['port']}/0?ssl_cert_reqs=none"
    layer = RedisChannelLayer(hosts=[url], prefix="tlsasync")

    async def scenario():
        await layer.asend("cfg.async", {"n": 1})
        return await layer.areceive(["cfg.async"], block=True)

    try:
        assert asyncio.run(scenario()) == ("cfg.async", {"n": 1})
    finally:
        layer.flush()
        layer.close()


def test_async_tls_connections_are_closed_when_their_loop_ends(tls_redis):
    """A TLS connection closes in several loop iterations; asyncio.run's shutdown must wait for them.

    Repeated: left to chance, the close finished in time in most runs only.
    """
    url = f"rediss://:{PASSWORD}@127.0.0.1:{tls_redis['port']}/0?ssl_cert_reqs=none"
    layer = RedisChannelLayer(hosts=[url], prefix="tlsclose")
    sockets = []

    async def scenario():
        await layer.asend("cfg.close", {"n": 1})
        assert await layer.areceive(["cfg.close"]) == ("cfg.close", {"n": 1})
        io = await layer._async_io()
        sockets.extend(conn._writer.get_extra_info("socket") for conn in io.idle[0])

    try:
        for _ in range(10):
            asyncio.run(scenario())
    finally:
        layer.close()
    assert len(sockets) == 10
    assert [sock.fileno() for sock in sockets] == [-1] * 10


def test_unix_socket_url(tls_redis):
    layer = RedisChannelLayer(hosts=[f"unix://:{PASSWORD}@{tls_redis['socket']}?db=0"], prefix="unixsock",
                              reply_spin_us=5000)
    layer._sync.spin.cpus = 1_000_000  # as if CPUs were to spare (a busy machine never spins: test_redis_spin)
    for _ in range(10):  # on a loaded machine one reply may miss even a 5 ms window
        round_trip(layer)
    assert layer._sync.spin.hits > 0, "a unix socket is polled for replies like a TCP one"


def test_wrong_password_is_a_connection_error_without_the_password(tls_redis):
    wrong = "not-the-pw-9"
    layer = RedisChannelLayer(hosts=[f"rediss://:{wrong}@127.0.0.1:{tls_redis['port']}/0?ssl_cert_reqs=none"])
    try:
        with pytest.raises(ConnectionError) as caught:
            layer.send("cfg.chan", {"a": 1})
    finally:
        layer.close()
    assert wrong not in str(caught.value) and PASSWORD not in str(caught.value)


### Host forms and bad input ###


def test_host_forms(redis_server):
    for hosts in (
        [redis_server.url],
        redis_server.url,
        [("127.0.0.1", redis_server.port)],
        [{"host": "127.0.0.1", "port": redis_server.port}],
        [{"address": ("127.0.0.1", redis_server.port), "db": 0}],
    ):
        round_trip(RedisChannelLayer(hosts=hosts, prefix="forms"))


def test_default_host_is_local_redis():
    layer = RedisChannelLayer()
    assert [host.describe() for host in layer.hosts] == ["redis://127.0.0.1:6379"]
    assert layer.prefix == "paas" and layer.blocking_timeout == 1
    assert (layer.expiry, layer.group_expiry, layer.capacity) == (60, 86400, 100)


@pytest.mark.parametrize("url", [
    "http://user:hunter2-pw@example.com:6379/0",
    "hunter2-pw@example.com:6379",
    "redis://:hunter2-pw@example.com:notaport/0",
])
def test_bad_url_says_what_is_accepted_and_hides_password(url):
    with pytest.raises(ValueError) as caught:
        RedisChannelLayer(hosts=[url])
    text = str(caught.value)
    assert "hunter2-pw" not in text
    assert "hosts[0]" in text
    if "notaport" not in url:
        assert "redis://, rediss:// or unix://" in text


@pytest.mark.parametrize("hosts, error", [
    ([], ValueError),
    (42, ValueError),
    ([42], TypeError),
    ([("localhost", "6379")], ValueError),
    ([{"decode_responses": True}], ValueError),
])
def test_bad_hosts_rejected(hosts, error):
    with pytest.raises(error, match="hosts"):
        RedisChannelLayer(hosts=hosts)


def test_bad_layer_options_rejected():
    with pytest.raises(ValueError, match="prefix must be"):
        RedisChannelLayer(prefix="has space")
    with pytest.raises(ValueError, match="blocking_timeout"):
        RedisChannelLayer(blocking_timeout=0)
    with pytest.raises(TypeError, match="unexpected keyword.*capacty"):
        RedisChannelLayer(capacty=5)
    with pytest.raises(ValueError, match="ssl_cert_reqs only applies to rediss"):
        RedisChannelLayer(hosts=[{"address": "redis://localhost:6379", "ssl_cert_reqs": None}])


def test_unreachable_redis_names_host_and_hides_password():
    port = free_port()
    layer = RedisChannelLayer(hosts=[f"redis://:hidden-pw-77@127.0.0.1:{port}/0"])
    try:
        with pytest.raises(ConnectionError) as caught:
            layer.send("cfg.chan", {"a": 1})
    finally:
        layer.close()
    text = str(caught.value)
    assert f"127.0.0.1:{port}" in text and "hidden-pw-77" not in text
    assert "hidden-pw-77" not in repr(layer)


### config_from_env ###


def test_config_from_env():
    assert config_from_env({}) is None
    assert config_from_env({"REDIS_URL": "  "}) is None
    assert config_from_env({"REDIS_URL": "redis://h:6379"}) == {"hosts": ["redis://h:6379"]}
    # Several URLs are shards.
    assert config_from_env({"REDIS_URL": "redis://a:1, redis://b:2,"}) == {"hosts": ["redis://a:1", "redis://b:2"]}
    # TLS preferred; verified off Heroku, relaxed on Heroku unless the URL decides.
    env = {"REDIS_URL": "redis://plain:6379", "REDIS_TLS_URL": "rediss://tls:6380"}
    assert config_from_env(env) == {"hosts": ["rediss://tls:6380"]}
    assert config_from_env({**env, "DYNO": "worker.1"}) == {"hosts": [{"address": "rediss://tls:6380", "ssl_cert_reqs": None}]}
    explicit = "rediss://tls:6380?ssl_cert_reqs=required"
    assert config_from_env({"REDIS_TLS_URL": explicit, "DYNO": "web.1"}) == {"hosts": [explicit]}


def test_config_from_env_bad_url_is_config_error_without_password():
    with pytest.raises(ConfigError) as caught:
        config_from_env({"REDIS_URL": "redis://a:1,http://u:env-pw-55@b:2"})
    text = str(caught.value)
    assert "REDIS_URL[1]" in text and "env-pw-55" not in text and "rediss://" in text
