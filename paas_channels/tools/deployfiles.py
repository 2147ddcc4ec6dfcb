"""Reading a project's deployment files: Procfile, app.json, runtime.txt, .python-version.

Framework-free: each reader returns what it understood plus a list of
problems (one line each, saying what was found and what to write instead).
:mod:`paas_channels.tools.check` compares the results with each other and with the
settings.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.options import load_config
from ..config.parser import build_parser
from ..exceptions import ConfigError

__all__ = ["Process", "Procfile", "read_app_json", "read_procfile", "read_python_versions"]

_PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.*)$")
_RUNTIME_TXT = re.compile(r"^python-(3)\.(\d+)(\.\d+)?$")
_PYTHON_VERSION = re.compile(r"^(3)\.(\d+)(\.\d+)?$")
#: Oldest Python paas-channels supports (pyproject's requires-python).
MIN_PYTHON = (3, 11)


@dataclass
class Process:
    """One Procfile line.  ``mode`` is set when the command runs paas-channels."""

    name: str
    command: str
    line: int
    mode: str | None = None  # combined, web, worker, wsgi, or "auto" for `run` with no mode
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Procfile:
    path: Path
    processes: list[Process]

    def by_mode(self, *modes: str) -> list[Process]:
        return [process for process in self.processes if process.mode in modes]


def _paas_channels_args(argv: list[str]) -> list[str] | None:
    """The arguments after the paas-channels program, or None when the command is something else."""
    if not argv:
        return None
    if Path(argv[0]).name == "paas-channels":
        return argv[1:]
    if Path(argv[0]).name.startswith("python") and argv[1:3] == ["-m", "paas_channels.cli"]:
        return argv[3:]
    if Path(argv[0]).name.startswith("python") and len(argv) > 2 and Path(argv[1]).name == "manage.py" \
            and argv[2] == "runworker":
        return ["run", "worker", *argv[3:]]
    return None


def _parse_command(process: Process, problems: list[str]) -> None:
    try:
        argv = shlex.split(process.command)
    except ValueError as exc:
        problems.append(f"Procfile line {process.line} ({process.name}): cannot split the command: {exc}")
        return
    # Heroku-style `$PORT` expansion and env prefixes (`FOO=1 cmd`) are the shell's job.
    while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):
        argv = argv[1:]
    args = _paas_channels_args(argv)
    if args is None:
        return
    parser = build_parser()
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(io.StringIO()):
            parsed = parser.parse_args(args)
    except SystemExit:
        reason = captured.getvalue().strip().splitlines()[-1:] or ["invalid arguments"]
        problems.append(
            f"Procfile line {process.line} ({process.name}): {process.command!r} is not a valid paas-channels "
            f"command: {reason[0].split(': error: ', 1)[-1]}; see `paas-channels run --help`"
        )
        return
    if parsed.command != "run":
        problems.append(
            f"Procfile line {process.line} ({process.name}): {process.command!r} does not run a process; "
            "expected `paas-channels run [web|worker|wsgi|--combined]`"
        )
        return
    mode = "combined" if getattr(parsed, "combined", False) else (parsed.mode or "auto")
    options = {key: value for key, value in vars(parsed).items() if value is not None}
    # `$PORT` is expanded by the platform's shell; only a literal must be a port.
    if isinstance(options.get("port"), str) and options["port"].startswith("$"):
        options.pop("port")
    try:
        load_config("combined" if mode == "auto" else mode, options, environ={})
    except ConfigError as exc:
        problems.append(f"Procfile line {process.line} ({process.name}): {exc}")
        return
    process.mode, process.options = mode, options


def read_procfile(directory: Path) -> tuple[Procfile | None, list[str]]:
    """The Procfile in ``directory`` with each paas-channels command parsed, and its problems."""
    path = directory / "Procfile"
    if not path.is_file():
        return None, [
            f"no Procfile in {directory}: a PaaS does not know what to run; add one with "
            "'web: paas-channels run web' and 'worker: paas-channels run worker' (or 'web: paas-channels run --combined')"
        ]
    problems: list[str] = []
    processes: list[Process] = []
    seen: set[str] = set()
    for number, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _PROCFILE_LINE.match(line)
        if not match or not match.group(2).strip():
            problems.append(
                f"Procfile line {number}: {line!r} is not 'name: command' (a process type of letters, digits, "
                "'-' or '_', a colon, then the command)"
            )
            continue
        name, command = match.group(1), match.group(2).strip()
        if name in seen:
            problems.append(f"Procfile line {number}: process type {name!r} is defined twice; keep one")
            continue
        seen.add(name)
        process = Process(name, command, number)
        _parse_command(process, problems)
        processes.append(process)
    if processes and "web" not in seen:
        problems.append(
            "Procfile has no 'web' process type: the platform routes HTTP only to 'web'; "
            "add 'web: paas-channels run web' (or --combined)"
        )
    return Procfile(path, processes), problems


def read_app_json(directory: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """app.json as a dict (None when absent), and its problems."""
    path = directory / "app.json"
    if not path.is_file():
        return None, []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return None, [f"app.json is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"]
    if not isinstance(data, dict):
        return None, [f"app.json must hold a JSON object; got {type(data).__name__}"]
    problems = []
    for key, expected in (("formation", dict), ("env", dict), ("addons", list)):
        if key in data and not isinstance(data[key], expected):
            problems.append(f"app.json: {key!r} must be a JSON {'object' if expected is dict else 'array'}")
    return data, problems


def addon_plans(app: dict[str, Any]) -> list[str]:
    """The add-on plans app.json asks for (``"heroku-redis:mini"`` or ``{"plan": ...}`` entries)."""
    plans = []
    for addon in app.get("addons", []) if isinstance(app.get("addons"), list) else []:
        plan = addon.get("plan") if isinstance(addon, dict) else addon
        if isinstance(plan, str):
            plans.append(plan)
    return plans


def read_python_versions(directory: Path) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """``{"runtime.txt": (3, 11), ".python-version": (3, 11)}`` for the files present, and problems."""
    versions: dict[str, tuple[int, int]] = {}
    problems = []
    for name, pattern, example in (
        ("runtime.txt", _RUNTIME_TXT, "python-3.11.7"),
        (".python-version", _PYTHON_VERSION, "3.11"),
    ):
        path = directory / name
        if not path.is_file():
            continue
        lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
                 if line.strip() and not line.strip().startswith("#")]
        text = lines[0] if lines else ""
        match = pattern.match(text)
        if not match:
            problems.append(f"{name}: {text!r} is not a Python version; write e.g. {example!r}")
            continue
        version = (int(match.group(1)), int(match.group(2)))
        if version < MIN_PYTHON:
            problems.append(
                f"{name}: Python {version[0]}.{version[1]} is too old for paas-channels; use "
                f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer"
            )
        versions[name] = version
    if len(set(versions.values())) > 1:
        shown = ", ".join(f"{name} says {major}.{minor}" for name, (major, minor) in versions.items())
        problems.append(f"Python versions disagree ({shown}); make them the same major.minor "
                        "(Heroku reads .python-version, older buildpacks runtime.txt)")
    return versions, problems
