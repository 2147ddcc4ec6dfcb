"""The ``paas-channels`` command: argument parsing and dispatch, nothing else.

    paas-channels run --combined        # laptop / one dyno
    paas-channels run web               # split mode: interface server
    paas-channels run worker            # split mode: worker
    paas-channels run wsgi              # no CHANNEL_LAYERS: plain WSGI
    paas-channels check [--deploy]      # will it run?
    paas-channels status [--watch]      # how busy is it?
    paas-channels init [--force]        # add paas-channels to a Django project

What runs each process lives in :mod:`paas_channels.runtime` (and
:mod:`paas_channels.worker`); the report commands in :mod:`paas_channels.tools`.
They are imported only once the process knows what it is: a gevent worker must
monkey-patch before anything imports the socket module.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import sys
from typing import Sequence

from . import __version__
from .config.options import EXIT_BOOT_ERROR, PROCESSES_ENV, Config, load_config
from .config.parser import build_parser
from .exceptions import ConfigError
from .runtime import boot

logger = logging.getLogger("paas_channels")

#: mode -> module whose ``run(config) -> int`` serves it.
MODE_RUNNERS = {
    "web": "paas_channels.runtime.web",
    "worker": "paas_channels.worker",
    "combined": "paas_channels.runtime.combined",
    "wsgi": "paas_channels.runtime.wsgi",
}


def _run(args: argparse.Namespace) -> int:
    mode = "combined" if args.combined else args.mode
    if args.combined and args.mode not in (None, "combined"):
        raise ConfigError(f"--combined and the mode {args.mode!r} contradict each other; give one")
    provisional = load_config(mode or "combined", vars(args))
    boot.configure_logging(provisional.log_level)
    # For the settings file: configure() shares channels over IPC between several processes.
    os.environ[PROCESSES_ENV] = str(provisional.processes)
    if provisional.processes > 1:
        # Forked before Django (and gevent) is imported: each child boots as one process does alone.
        from .runtime.supervisor import supervise

        return supervise(provisional, lambda child: _serve(args, mode, child), listening=mode != "worker")
    return _serve(args, mode, provisional)


def _serve(args: argparse.Namespace, mode: str | None, provisional: Config) -> int:
    """Set up Django and run ``mode`` in this process (alone, or as a supervisor's child)."""
    if mode == "wsgi" or (mode == "worker" and provisional.gevent):
        boot.gevent_monkey_patch()
    boot.setup_django(provisional)
    if mode is None:
        from .layers import has_channel_layers

        mode = "combined" if has_channel_layers() else "wsgi"
        logger.info(
            "no mode given: running %s (%s)", mode,
            "settings define CHANNEL_LAYERS" if mode == "combined" else "settings define no CHANNEL_LAYERS",
        )
        if mode == "wsgi":
            boot.gevent_monkey_patch()
    config = dataclasses.replace(
        load_config(mode, vars(args)), supervised=provisional.supervised, listen_fd=provisional.listen_fd
    )
    if config.sources.get("log_level") != "default":
        # django.setup() applied settings.LOGGING; an explicit --log-level still wins.
        logging.getLogger().setLevel(config.log_level.upper())
    logger.info("paas-channels %s: %s", __version__, config.describe())
    if not config.supervised:
        logger.info("%s: 1 process x %s", mode, config.concurrency())
    logger.info("settings %s: %s", os.environ.get("DJANGO_SETTINGS_MODULE"), boot.describe_settings())
    boot.freeze_startup_objects(runs_views=mode != "web" or config.http == "direct")
    return importlib.import_module(MODE_RUNNERS[mode]).run(config)


def _quiet_project_logging() -> None:
    """A report command prints its own lines: keep the project's INFO logging (LOGGING) out of them."""
    root = logging.getLogger()
    root.setLevel(max(root.level, logging.WARNING))


def _check(args: argparse.Namespace) -> int:
    from .tools.check import run_checks

    boot.configure_logging("warning")  # the one logging rule: stderr, LOG_FORMAT; the report itself is stdout
    config = load_config("combined", {"settings": args.settings, "layer": args.layer})
    problems, notes = run_checks(config, deploy=args.deploy)
    for note in notes:
        print(f"note: {note}")
    for problem in problems:
        print(f"problem: {problem}")
    if problems:
        print(f"paas-channels check: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("paas-channels check: no problems" + (" (with deployment checks)" if args.deploy else ""))
    return 0


def _status(args: argparse.Namespace) -> int:
    from .tools.status import run_status

    boot.configure_logging("warning")  # the one logging rule: stderr, LOG_FORMAT; the report itself is stdout
    config = load_config("combined", {"settings": args.settings, "layer": args.layer})
    boot.setup_django(config)
    _quiet_project_logging()
    return run_status(config, watch=args.watch, extra_channels=args.channel, groups=args.group)


def _init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .tools.init import run_init

    return run_init(Path.cwd(), force=args.force, settings_module=args.settings)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "check":
            return _check(args)
        if args.command == "status":
            return _status(args)
        if args.command == "init":
            return _init(args)
    except ConfigError as exc:
        print(f"paas-channels: {exc}", file=sys.stderr)
        return EXIT_BOOT_ERROR
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
