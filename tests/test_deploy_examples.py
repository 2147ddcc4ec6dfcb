"""The init-system examples in deploy/ (systemd units, supervisord programs) are valid and run.

Each file is parsed and its promises checked (SIGTERM, a stop timeout longer
than --graceful-timeout, exit status 3 never restarted); then the commands it
names run, with only the host paths rewritten (/srv/app -> this repository,
the venv -> this interpreter's bin, the env file -> a copy pointing at a
private Redis and SQLite): the web process answers a view through the worker,
and both stop cleanly.  systemd-analyze verifies the units; a real supervisord
runs the programs.
"""

from __future__ import annotations

import configparser
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .support import ROOT, RedisServer, Started, free_port, platform_environment, wait_for_port, wait_until

DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
GRACEFUL_DEFAULT = 25.0


def _ini(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None, inline_comment_prefixes=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read(path)
    return parser


def _env_file(tmp_path: Path, redis_url: str) -> Path:
    """deploy/app.env with the host's services replaced by the test's own."""
    values = dict(line.split("=", 1) for line in (DEPLOY / "app.env").read_text().splitlines()
                  if line and not line.startswith("#"))
    assert {"DJANGO_SETTINGS_MODULE", "SECRET_KEY", "DATABASE_URL", "REDIS_URL"} <= set(values)
    values.update(DJANGO_SETTINGS_MODULE="example_project.settings", REDIS_URL=redis_url,
                  DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", ALLOWED_HOSTS="127.0.0.1")
    path = tmp_path / "app.env"
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    return path


def _here(text: str, env_file: Path, port: int) -> str:
    """A command or unit with the host paths of the example replaced by this machine's."""
    return (text.replace("/srv/app/.venv/bin/", f"{BIN}/").replace("/srv/app", str(ROOT))
            .replace("/etc/paas-channels/app.env", str(env_file)).replace("--port 8000", f"--port {port}"))


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/whoami/", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def services(tmp_path):
    redis = RedisServer().start()
    try:
        migrate = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT,
                                 env=platform_environment(SECRET_KEY="k" * 50,
                                                          DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}"),
                                 capture_output=True, text=True, timeout=120)
        assert migrate.returncode == 0, migrate.stderr
        yield _env_file(tmp_path, redis.url)
    finally:
        redis.close()


@pytest.mark.redis
def test_systemd_units_verify_and_their_commands_run_and_stop_on_sigterm(services, tmp_path):
    port = free_port()
    processes = {}
    try:
        for name in ("web", "worker"):
            unit_file = DEPLOY / "systemd" / f"paas-channels-{name}.service"
            service = _ini(unit_file)["Service"]
            assert service["KillSignal"] == "SIGTERM" and float(service["TimeoutStopSec"]) > GRACEFUL_DEFAULT
            assert service["RestartPreventExitStatus"] == "3" and service["EnvironmentFile"]
            assert "WantedBy" in _ini(unit_file)["Install"]
            local = tmp_path / unit_file.name
            local.write_text(_here(unit_file.read_text(), services, port))
            if shutil.which("systemd-analyze"):
                verified = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True,
                                          timeout=60)
                assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr
            unit = _ini(local)["Service"]
            env = platform_environment()
            env.update(dict(line.split("=", 1) for line in Path(unit["EnvironmentFile"]).read_text().splitlines()))
            processes[name] = Started(shlex.split(unit["ExecStart"]), env, cwd=Path(unit["WorkingDirectory"]))
        wait_for_port(port, timeout=30, process=processes["web"].process)
        processes["worker"].wait_for_output(" consuming ", timeout=30)
        assert wait_until(lambda: _answers(port), timeout=20)
        for process in processes.values():  # both at once, as systemd stops a target's units
            process.signal(signal.SIGTERM)
        for name, process in processes.items():
            assert process.wait(timeout=float(_ini(tmp_path / f"paas-channels-{name}.service")["Service"]
                                              ["TimeoutStopSec"])) == 0, process.output()[-3000:]
    finally:
        for process in processes.values():
            process.close()


@pytest.mark.redis
def test_supervisord_programs_run_under_supervisord_and_stop_cleanly(services, tmp_path):
    shipped = _ini(DEPLOY / "supervisord.conf")
    programs = [section for section in shipped.sections() if section.startswith("program:")]
    assert programs == ["program:paas-channels-web", "program:paas-channels-worker"]
    port = free_port()
    conf = configparser.RawConfigParser(interpolation=None)
    socket_path = tmp_path / "supervisor.sock"
    conf["supervisord"] = {"nodaemon": "true", "logfile": str(tmp_path / "supervisord.log"),
                           "pidfile": str(tmp_path / "supervisord.pid"), "childlogdir": str(tmp_path)}
    conf["unix_http_server"] = {"file": str(socket_path)}
    conf["rpcinterface:supervisor"] = {"supervisor.rpcinterface_factory": "supervisor.rpcinterface:make_main_rpcinterface"}
    conf["supervisorctl"] = {"serverurl": f"unix://{socket_path}"}
    for section in programs:
        program = dict(shipped[section])
        assert program["stopsignal"] == "TERM" and float(program["stopwaitsecs"]) > GRACEFUL_DEFAULT
        assert "3" in program["exitcodes"].split(",") and program["autorestart"] == "unexpected"
        program.pop("user")  # the example's service user does not exist here
        program["command"] = _here(program["command"], services, port)
        program["directory"] = _here(program["directory"], services, port)
        program["stdout_logfile"] = str(tmp_path / f"{section.split(':')[1]}.log")
        conf[section] = program
    conf_file = tmp_path / "supervisord.conf"
    with conf_file.open("w") as handle:
        conf.write(handle)

    def ctl(*args: str) -> str:
        return subprocess.run([str(BIN / "supervisorctl"), "-c", str(conf_file), *args], capture_output=True,
                              text=True, timeout=60).stdout

    supervisord = Started([str(BIN / "supervisord"), "-n", "-c", str(conf_file)], platform_environment(),
                          cwd=tmp_path)
    try:
        assert wait_until(lambda: _answers(port), timeout=40), (
            supervisord.output()[-2000:] + "".join(path.read_text()[-2000:] for path in tmp_path.glob("*.log")))
        status = ctl("status")
        assert status.count("RUNNING") == 2, status
        stopped = ctl("stop", "all")
        assert "paas-channels-web: stopped" in stopped and "paas-channels-worker: stopped" in stopped, stopped
        assert ctl("status").count("STOPPED") == 2
        worker_log = (tmp_path / "paas-channels-worker.log").read_text()
        assert "stopped cleanly" in worker_log, worker_log[-3000:]
        ctl("shutdown")
        assert supervisord.wait(timeout=30) == 0
    finally:
        supervisord.close()
