"""The settings fingerprint in every heartbeat, and the processes that disagree named by web, worker,
status and check (the seed: "without it ... things will just fail to work")."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from django.test import override_settings

from paas_channels.layers.fingerprint import Agreement, disagreeing, settings_fingerprint

from .support import ROOT, RedisServer, ServerProcess, free_port, platform_environment, wait_for_port

REDIS = "paas_channels.layers.RedisChannelLayer"


def _layers(**config):
    return {"default": {"BACKEND": REDIS, "CONFIG": {"hosts": ["redis://a:1/0"], **config}}}


def test_the_fingerprint_covers_shared_settings_only_and_shows_no_secret():
    with override_settings(CHANNEL_LAYERS=_layers(prefix="app"), SECRET_KEY="s" * 50):
        base = settings_fingerprint()
    assert re.fullmatch(r"[0-9a-f]{12}", base)
    same = [_layers(prefix="app", hosts=["rediss://other-url-same-server:2/0"], socket_timeout=3)]
    for layers in same:
        with override_settings(CHANNEL_LAYERS=layers, SECRET_KEY="s" * 50):
            assert settings_fingerprint() == base
    different = [
        (_layers(prefix="other"), "s" * 50), (_layers(prefix="app", expiry=5), "s" * 50),
        (_layers(prefix="app", capacity=7), "s" * 50), (_layers(prefix="app"), "t" * 50),
        (_layers(prefix="app", message_key="k1"), "s" * 50),
        ({"default": {"BACKEND": "paas_channels.layers.InMemoryChannelLayer", "CONFIG": {"prefix": "app"}}}, "s" * 50),
    ]
    for layers, key in different:
        with override_settings(CHANNEL_LAYERS=layers, SECRET_KEY=key):
            assert settings_fingerprint() != base, (layers, key)


def test_disagreement_is_reported_once_per_process():
    beats = {"w1": {"fingerprint": "aaa"}, "w2": {"fingerprint": "bbb"}, "old": {"threads": 1}}
    assert disagreeing(beats, "aaa") == {"w2": "bbb"}  # a heartbeat without one is an older version: not counted
    agreement = Agreement("aaa")
    line = agreement.new_disagreements(beats)
    assert "w2 (bbb)" in line and "w1" not in line and "fingerprint aaa" in line
    assert agreement.new_disagreements(beats) is None
    assert "w3 (ccc)" in agreement.new_disagreements({**beats, "w3": {"fingerprint": "ccc"}})


@pytest.mark.redis
@pytest.mark.slow
def test_web_worker_status_and_check_name_the_process_with_other_settings(tmp_path):
    redis = RedisServer().start()
    processes = []
    try:
        def env(secret):
            return platform_environment(SECRET_KEY=secret, REDIS_URL=redis.url,
                                        DJANGO_SETTINGS_MODULE="example_project.settings",
                                        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")

        def worker(secret):
            process = ServerProcess(["run", "worker"], env=env(secret)).start()
            processes.append(process)
            process.wait_for_output(" consuming ", timeout=30)
            return process, re.search(r"worker (\S+) consuming", process.output()).group(1)

        good, good_id = worker("a" * 50)
        odd, odd_id = worker("b" * 50)
        port = free_port()
        web = ServerProcess(["run", "web", "--port", str(port)], env=env("a" * 50)).start()
        processes.append(web)
        wait_for_port(port, timeout=30, process=web.process)
        for process, named, unnamed in [(web, odd_id, good_id), (good, odd_id, good_id), (odd, good_id, odd_id)]:
            process.wait_for_output(f"{named} (", timeout=30)
            warning = next(line for line in process.output().splitlines() if "other shared settings" in line)
            assert " WARNING " in warning and unnamed not in warning, warning

        status = subprocess.run([sys.executable, "-m", "paas_channels.cli", "status"], cwd=ROOT, env=env("a" * 50),
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        differ = [line for line in status.stdout.splitlines() if line.startswith("settings differ: ")]
        assert len(differ) == 1 and odd_id in differ[0] and good_id not in differ[0], status.stdout

        check = subprocess.run([sys.executable, "-m", "paas_channels.cli", "check"], cwd=ROOT, env=env("a" * 50),
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 1
        assert any(line.startswith("problem: settings: ") and odd_id in line for line in check.stdout.splitlines())
        assert "a" * 50 not in check.stdout + status.stdout + web.output()  # no secret, only its hash
    finally:
        for process in processes:
            process.close()
        redis.close()
