"""The IPC layer's own rules: settings, files, first use by many processes at once, fork.

(The ASGI contract itself is the conformance suite's: ``tests/layer_backends.py``.)
"""

from __future__ import annotations

import asyncio
import os
import stat
import uuid

import pytest

from paas_channels.exceptions import ConfigError
from paas_channels.layers import build_channel_layer
from paas_channels.layers.ipc import IPCChannelLayer, default_directory
from tests.ipc_support import Script

FIRST_USE = """
import asyncio, sys
from paas_channels.layers.ipc import IPCChannelLayer
layer = IPCChannelLayer(prefix=sys.argv[1], directory=sys.argv[2])
if sys.argv[3] == "async":
    async def main():
        await layer.asend("first.use", {"from": "async"})
    asyncio.run(main())
else:
    layer.send("first.use", {"from": "sync"})
print("sent", flush=True)
"""


def test_exported_lazily_with_machine_reach():
    import paas_channels.layers as layers

    assert layers.IPCChannelLayer is IPCChannelLayer
    assert IPCChannelLayer.reach == "machine"


def test_default_directory_is_this_users_in_memory():
    assert default_directory() == f"/dev/shm/paas-channels-{os.getuid()}"


def test_files_are_for_this_user_only(tmp_path):
    layer = IPCChannelLayer(prefix="mode", directory=tmp_path / "layer")
    try:
        layer.send("x", {"a": 1})
        assert stat.S_IMODE(os.stat(tmp_path / "layer").st_mode) == 0o700
        assert stat.S_IMODE(os.stat(layer.path).st_mode) == 0o600
        assert layer.path == str(tmp_path / "layer" / "mode.sqlite3")
    finally:
        layer.close()


@pytest.mark.parametrize("prefix", ["", "has space", "a/b", "x" * 41, 42])
def test_bad_prefix_rejected(tmp_path, prefix):
    with pytest.raises(ValueError, match="prefix must be 1-40 ASCII letters"):
        IPCChannelLayer(prefix=prefix, directory=tmp_path)


def test_bad_directory_is_a_config_error_that_says_what_to_do(tmp_path):
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(ConfigError, match=r"cannot create its directory .*set CONFIG\['directory'\]"):
        build_channel_layer("paas_channels.layers.IPCChannelLayer", {"directory": str(tmp_path / "file" / "sub")})
    with pytest.raises(ConfigError, match="not accepted by IPCChannelLayer"):
        build_channel_layer("paas_channels.layers.IPCChannelLayer", {"hosts": ["redis://x"]})


@pytest.mark.skipif(os.getuid() != 0, reason="making a directory another user owns needs root")
def test_directory_of_another_user_refused(tmp_path):
    other = tmp_path / "theirs"
    other.mkdir()
    os.chown(other, 65534, 65534)
    with pytest.raises(ValueError, match="belongs to another user"):
        IPCChannelLayer(directory=other)


def test_many_processes_using_a_new_layer_at_once(tmp_path):
    prefix = "first" + uuid.uuid4().hex[:8]
    scripts = [Script(FIRST_USE, prefix, tmp_path, kind).start() for kind in ["async", "sync"] * 4]
    try:
        for script in scripts:
            assert script.wait(60) == 0, script.output()
        layer = IPCChannelLayer(prefix=prefix, directory=tmp_path)
        got = [layer.receive(["first.use"])[1]["from"] for _ in range(8)]
        assert sorted(got) == ["async"] * 4 + ["sync"] * 4
        layer.close()
    finally:
        for script in scripts:
            script.close()


def test_a_forked_child_uses_its_own_connections(tmp_path):
    layer = IPCChannelLayer(prefix="fork", directory=tmp_path)
    try:
        layer.send("to.child", {"n": 1})
        assert asyncio.run(layer.areceive(["nothing"])) == (None, None)  # the loop's connection too
        pid = os.fork()
        if pid == 0:  # the child: exit status says whether it could use the layer
            ok = False
            try:
                ok = layer.receive(["to.child"]) == ("to.child", {"n": 1})
                layer.send("to.parent", {"from": os.getpid()})
                layer.close()
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert layer.receive(["to.parent"]) == ("to.parent", {"from": pid})
    finally:
        layer.close()
