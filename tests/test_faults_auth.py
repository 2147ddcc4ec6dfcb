"""Messages on a shared layer are authenticated: a forged or garbage message is dropped and
counted, never run.  Keys come from the settings (SECRET_KEY, SECRET_KEY_FALLBACKS) or
CONFIG["keys"]; a layer built directly without keys works unauthenticated and says so once."""

from __future__ import annotations

import logging

import msgpack
import pytest
from django.test import override_settings

from paas_channels.layers import InMemoryChannelLayer, RejectedMessage, get_channel_layer
from paas_channels.layers import reset_channel_layers
from paas_channels.testing import wait_until
from tests.fault_support import FaultStack


def _keyed(*keys, encrypt=False):
    layer = InMemoryChannelLayer()
    layer.use_keys(list(keys), encrypt=encrypt)
    return layer


def test_signed_messages_pass_and_forged_ones_are_dropped_and_counted(caplog):
    layer = _keyed("k1")
    layer.send("work", {"n": 1})
    assert layer.receive(["work"]) == ("work", {"n": 1})
    forged = layer.serialize({"n": 2})
    tampered = forged[:-1] + b"\x03"  # one byte of the payload changed: {"n": 3}
    assert isinstance(layer.deserialize(tampered), RejectedMessage)
    with caplog.at_level(logging.WARNING, logger="paas_channels.layers.base"):
        assert isinstance(layer.deserialize(msgpack.packb({"n": 4})), RejectedMessage)  # unsigned
    assert layer.rejected_count == 2
    assert "dropped a stored message" in caplog.text


def test_rotation_and_encryption():
    old, new = _keyed("old"), _keyed("new", "old")
    assert new.deserialize(old.serialize({"a": b"x"})) == {"a": b"x"}  # old messages still read
    assert isinstance(old.deserialize(new.serialize({"a": 1})), RejectedMessage)  # new key signs
    sealed = _keyed("k", encrypt=True)
    data = sealed.serialize({"secret": "alice's message"})
    assert b"alice" not in data
    assert _keyed("other", "k", encrypt=True).deserialize(data) == {"secret": "alice's message"}
    assert isinstance(_keyed("other", encrypt=True).deserialize(data), RejectedMessage)


def test_a_msgpack_bomb_is_rejected_not_decoded():
    layer = InMemoryChannelLayer()
    ten_million_empty_arrays = b"\xdd" + (10_000_000).to_bytes(4, "big") + b"\x90" * 10_000_000
    assert isinstance(layer.deserialize(ten_million_empty_arrays), RejectedMessage)
    # Within the 1 MiB message limit: nested arrays past the container budget.
    nested = b"\xdc\xff\xff" + (b"\xdc\x00\x10" + b"\x90" * 16) * 65535
    assert isinstance(layer.deserialize(nested), RejectedMessage)
    assert isinstance(layer.deserialize(b"\x91" * 5000 + b"\xc0"), RejectedMessage)  # too deep
    assert layer.deserialize(layer.serialize({"ok": [[1, 2]] * 1000})) == {"ok": [[1, 2]] * 1000}


def test_get_channel_layer_keys_shared_layers_from_the_settings(caplog):
    from paas_channels.layers.redis import RedisChannelLayer

    redis = {"BACKEND": "paas_channels.layers.RedisChannelLayer", "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]}}
    layers = {"default": redis, "memory": {"BACKEND": "paas_channels.layers.InMemoryChannelLayer"},
              "own": {**redis, "CONFIG": {**redis["CONFIG"], "keys": ["dedicated"], "encrypt": True}}}
    with override_settings(CHANNEL_LAYERS=layers, SECRET_KEY="new-secret", SECRET_KEY_FALLBACKS=["old-secret"]):
        reset_channel_layers()
        try:
            shared = get_channel_layer()
            assert shared.authenticated and not shared.encrypted
            old = RedisChannelLayer(hosts=["redis://127.0.0.1:1/0"])
            old.use_keys(["old-secret"])
            assert shared.deserialize(old.serialize({"n": 1})) == {"n": 1}  # SECRET_KEY_FALLBACKS verify
            assert not get_channel_layer("memory").authenticated  # one process: nothing to guard
            own = get_channel_layer("own")
            assert own.encrypted and isinstance(own.deserialize(shared.serialize({"n": 1})), RejectedMessage)
        finally:
            reset_channel_layers()
    bare = RedisChannelLayer(hosts=["redis://127.0.0.1:1/0"])
    with caplog.at_level(logging.WARNING, logger="paas_channels.layers.base"):
        bare.serialize({"n": 1})
        bare.serialize({"n": 2})
    assert caplog.text.count("carries unauthenticated messages") == 1
    assert bare.deserialize(bare.serialize({"n": 3})) == {"n": 3}  # as before: works, unauthenticated


@pytest.mark.redis
def test_a_forged_request_on_redis_never_runs(tmp_path):
    with FaultStack(tmp_path) as stack:
        stack.worker("--threads", "1")
        stack.web("--http-timeout", "10")
        from paas_channels.layers.redis import RedisChannelLayer

        attacker = RedisChannelLayer(hosts=[stack.redis.url])  # reaches Redis, lacks the key
        keyed = stack.layer()
        inbox = "interface.forger.x!"
        attacker.send("http.request", {"reply_channel": inbox + "a", "path": "/ran/", "method": "GET",
                                       "query_string": b"id=forged", "headers": []})
        keyed.send("http.request", {"reply_channel": inbox + "b", "path": "/ran/", "method": "GET",
                                    "query_string": b"id=real", "headers": []})
        got = []
        assert wait_until(lambda: got.append(keyed.receive([inbox])) or got[-1][0] is not None, 10)
        assert got[-1][0] == inbox + "b"
        assert stack.ran() == ["real"], stack.logs()
        assert wait_until(lambda: any(info.get("rejected") for info in keyed.heartbeats().values()), 10)
        attacker.close()
        keyed.close()
