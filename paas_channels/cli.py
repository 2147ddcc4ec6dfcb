"""The ``paas-channels`` command: one entrypoint for every process type.

    paas-channels run --combined        # laptop / one dyno
    paas-channels run web               # split mode: interface server
    paas-channels run worker            # split mode: worker
    paas-channels run wsgi              # no CHANNEL_LAYERS: plain WSGI
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import re
import sys
from pathlib import Path
from typing import Sequence

from . import __version__
from .conf import EXIT_BOOT_ERROR, MODES, Config, add_arguments, load_config
from .exceptions import ConfigError

logger = logging.getLogger("paas_channels")

#: mode -> module whose ``run(config) -> int`` serves it.
MODE_RUNNERS = {
    "web": "paas_channels.interface",
    "worker": "paas_channels.worker",
    "combined": "paas_channels.combined",
    "wsgi": "paas_channels.wsgi",
}

_MANAGE_PY_SETTINGS = re.compile(r"""DJANGO_SETTINGS_MODULE['"]\s*,\s*['"]([\w.]+)['"]""")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paas-channels",
        description="Run real-time Django (WebSockets, long-poll, background channels) on a PaaS.",
    )
    parser.add_argument("--version", action="version", version=f"paas-channels {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    modes = "\n".join(f"  {name:<9} {text}" for name, text in MODES.items())
    run = commands.add_parser(
        "run",
        help="run a process: combined, web, worker or wsgi",
        description="Run one process of the project.\n\nmodes:\n" + modes
        + "\n\nWith no mode: combined when settings define CHANNEL_LAYERS, else wsgi.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("mode", nargs="?", choices=sorted(MODES), metavar="MODE", help="one of: " + ", ".join(MODES))
    run.add_argument("--combined", action="store_true", help="same as the mode 'combined'")
    add_arguments(run)

    check = commands.add_parser(
        "check",
        help="check settings, layer, routing, Procfile/app.json/runtime.txt and Django's checks",
        description="Check that the project will run: one line per problem, exit status 1 when there is any.",
    )
    check.add_argument("--deploy", action="store_true", help="also run Django's deployment checks (check --deploy)")
    _add_project_arguments(check)

    status = commands.add_parser(
        "status",
        help="channel depths, groups, workers and how busy they are",
        description="Show the layer's channels, groups and live workers (from their heartbeats).",
    )
    status.add_argument("--watch", nargs="?", const=2.0, type=float, metavar="SECONDS",
                        help="refresh every SECONDS (default 2) until Ctrl-C")
    status.add_argument("--channel", action="append", default=[], metavar="NAME",
                        help="also show this channel's depth (repeatable; routed channels are always shown)")
    status.add_argument("--group", action="append", default=[], metavar="NAME",
                        help="show how many members this group has (repeatable)")
    _add_project_arguments(status)
    return parser


def _add_project_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", help="Django settings module (else DJANGO_SETTINGS_MODULE, else ./manage.py)")
    parser.add_argument("--layer", help="alias in CHANNEL_LAYERS (default 'default')")


def find_settings_module(config_settings: str | None, cwd: Path) -> str | None:
    """``--settings`` / ``DJANGO_SETTINGS_MODULE``, else the module ./manage.py names."""
    if config_settings:
        return config_settings
    manage = cwd / "manage.py"
    if manage.is_file():
        match = _MANAGE_PY_SETTINGS.search(manage.read_text(encoding="utf-8", errors="replace"))
        if match:
            return match.group(1)
    return None


def setup_django(config: Config) -> None:
    """Find the settings module, put the project on sys.path and run ``django.setup()``."""
    cwd = Path.cwd()
    if str(cwd) not in sys.path:
        sys.path.insert(0, str(cwd))
    module = find_settings_module(config.settings, cwd)
    if not module:
        raise ConfigError(
            "no Django settings found: pass --settings myproject.settings, set "
            "DJANGO_SETTINGS_MODULE, or run from the directory that holds manage.py"
        )
    os.environ["DJANGO_SETTINGS_MODULE"] = module
    import django

    try:
        django.setup()
    except ImportError as exc:
        raise ConfigError(f"settings module {module!r} cannot be imported: {exc}") from None


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )


def _gevent_monkey_patch() -> None:
    """Make blocking I/O cooperative for gevent; as early as possible (before Django's imports)."""
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        monkey.patch_all()


def _describe_settings() -> str:
    from django.conf import settings

    from .envsettings import describe_settings

    return describe_settings(settings)


def _freeze_startup_objects(runs_views: bool) -> None:
    """Load the project's views, then keep everything alive now out of garbage collection.

    Django and the project make a few hundred thousand long-lived objects at
    start; every full collection would walk them all again, stopping every
    thread of the process for tens of milliseconds: the slowest requests of
    a busy process (in combined mode at 300 requests/s, p99 went from about
    40 ms to about 12 ms).  ``gc.freeze()`` moves them to a generation that
    is never collected (what Instagram did for Django); new garbage is
    collected as usual.
    """
    if runs_views:
        from django.conf import settings
        from django.urls import get_resolver

        try:
            get_resolver().url_patterns  # noqa: B018 - imports the view modules now, not on the first request
        except Exception as exc:  # noqa: BLE001 - the first request reports it as Django always does
            logger.warning(
                "ROOT_URLCONF %r does not import (%s: %s); requests will fail until it is fixed",
                getattr(settings, "ROOT_URLCONF", None), type(exc).__name__, exc,
            )
    gc.collect()
    gc.freeze()
    logger.debug("%d objects made at start kept out of garbage collection", gc.get_freeze_count())


def _run(args: argparse.Namespace) -> int:
    mode = "combined" if args.combined else args.mode
    if args.combined and args.mode not in (None, "combined"):
        raise ConfigError(f"--combined and the mode {args.mode!r} contradict each other; give one")
    provisional = load_config(mode or "combined", vars(args))
    _configure_logging(provisional.log_level)
    if mode == "wsgi" or (mode == "worker" and provisional.gevent):
        _gevent_monkey_patch()
    setup_django(provisional)
    if mode is None:
        from .layers import has_channel_layers

        mode = "combined" if has_channel_layers() else "wsgi"
        logger.info(
            "no mode given: running %s (%s)", mode,
            "settings define CHANNEL_LAYERS" if mode == "combined" else "settings define no CHANNEL_LAYERS",
        )
        if mode == "wsgi":
            _gevent_monkey_patch()
    config = load_config(mode, vars(args))
    if config.sources.get("log_level") != "default":
        # django.setup() applied settings.LOGGING; an explicit --log-level still wins.
        logging.getLogger().setLevel(config.log_level.upper())
    logger.info("paas-channels %s: %s", __version__, config.describe())
    logger.info("settings %s: %s", os.environ.get("DJANGO_SETTINGS_MODULE"), _describe_settings())
    _freeze_startup_objects(runs_views=mode != "web" or config.http == "direct")
    if mode == "web" and config.http == "direct":
        from ._hybrid import run_web

        return run_web(config)
    return importlib.import_module(MODE_RUNNERS[mode]).run(config)


def _quiet_project_logging() -> None:
    """A report command prints its own lines: keep the project's INFO logging (LOGGING) out of them."""
    root = logging.getLogger()
    root.setLevel(max(root.level, logging.WARNING))


def _check(args: argparse.Namespace) -> int:
    from .check import run_checks

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
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
    from .status import run_status

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    config = load_config("combined", {"settings": args.settings, "layer": args.layer})
    setup_django(config)
    _quiet_project_logging()
    return run_status(config, watch=args.watch, extra_channels=args.channel, groups=args.group)


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
    except ConfigError as exc:
        print(f"paas-channels: {exc}", file=sys.stderr)
        return EXIT_BOOT_ERROR
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
