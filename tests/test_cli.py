"""The paas-channels command and its configuration precedence."""

from __future__ import annotations

import subprocess
import sys

import pytest

from paas_channels import __version__
from paas_channels.conf import Config, load_config
from paas_channels.exceptions import ConfigError


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "paas_channels.cli", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"paas-channels {__version__}"


def test_run_help_lists_modes_and_options():
    result = run_cli("run", "--help")
    assert result.returncode == 0
    for mode in ("combined", "web", "worker", "wsgi"):
        assert f"  {mode} " in result.stdout
    for flag in ("--only-channels", "--exclude-channels", "--http-timeout", "--threads", "--port"):
        assert flag in result.stdout


def test_cli_beats_env_beats_default():
    env = {"PORT": "5000", "PAAS_CHANNELS_THREADS": "3", "WEB_CONCURRENCY": "2"}
    config = load_config("worker", {"threads": 7}, env)
    assert config.threads == 7 and config.sources["threads"] == "cli"
    # WEB_CONCURRENCY is processes (gunicorn's and Heroku's meaning), threads have their own variable.
    config = load_config("combined", {}, env)
    assert (config.processes, config.threads) == (2, 3) and config.sources["processes"] == "env"
    assert load_config("web", {"processes": 4}, env).processes == 4
    assert load_config("wsgi", {}, {}).processes == 1
    config = load_config("web", {}, env)
    assert config.port == 5000 and config.sources["port"] == "env"
    assert load_config("web", {}, {}).port == 8000


def test_combined_with_several_processes_serves_plain_http_directly():
    assert load_config("combined", {}, {}).http == "layer"
    assert load_config("combined", {}, {"WEB_CONCURRENCY": "2"}).http == "direct"
    assert load_config("combined", {"processes": 3}, {}).http == "direct"
    assert load_config("combined", {}, {"WEB_CONCURRENCY": "2", "PAAS_CHANNELS_HTTP": "layer"}).http == "layer"
    assert load_config("web", {}, {"WEB_CONCURRENCY": "2"}).http == "layer"


def test_mode_dependent_defaults():
    assert load_config("worker", {}, {}).threads == 1
    assert load_config("combined", {}, {}).threads == 4
    assert load_config("web", {}, {}).http_timeout == 120
    assert load_config("web", {}, {"DYNO": "web.1"}).http_timeout == 25


def test_repeatable_options_from_cli_and_env():
    config = load_config("worker", {"only_channels": ["websocket.*", "http.request"]}, {})
    assert config.only_channels == ("websocket.*", "http.request")
    config = load_config("worker", {}, {"PAAS_CHANNELS_EXCLUDE_CHANNELS": "thumbnail, mail.*"})
    assert config.exclude_channels == ("thumbnail", "mail.*")


def test_bad_env_value_names_the_variable():
    with pytest.raises(ConfigError, match="environment variable PORT: .*TCP port"):
        load_config("web", {}, {"PORT": "99999"})
    with pytest.raises(ConfigError, match="environment variable WEB_CONCURRENCY"):
        load_config("worker", {}, {"WEB_CONCURRENCY": "0"})
    with pytest.raises(ConfigError, match="environment variable PAAS_CHANNELS_THREADS"):
        load_config("worker", {}, {"PAAS_CHANNELS_THREADS": "many"})


def test_describe_shows_sources():
    config = load_config("worker", {"threads": 2}, {})
    assert isinstance(config, Config)
    line = config.describe()
    assert "mode=worker" in line and "threads=2(cli)" in line
    assert "port=" not in line  # not a worker option


def test_bad_option_exits_with_boot_error_code(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PORT": "not-a-port", "DJANGO_SETTINGS_MODULE": "tests.settings"}
    result = run_cli("run", "web", env={**env, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 3
    assert "environment variable PORT" in result.stderr


def test_missing_settings_is_a_boot_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "paas_channels.cli", "run", "worker"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(__import__("pathlib").Path(__file__).parent.parent)},
    )
    assert result.returncode == 3
    assert "no Django settings found" in result.stderr
