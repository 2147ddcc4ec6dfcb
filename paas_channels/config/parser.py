"""The ``paas-channels`` argument parser, generated from the options (:data:`..options.OPTIONS`).

Its own module because two parties read command lines: the CLI, and
``paas-channels check``, which parses every Procfile line the way the platform
will run it.
"""

from __future__ import annotations

import argparse

from .. import __version__
from .options import MODES, add_arguments

__all__ = ["build_parser"]


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

    init = commands.add_parser(
        "init",
        help="add Procfile, app.json, runtime files, routing and the settings lines to a Django project",
        description="In the directory that holds manage.py: write what paas-channels needs (never overwriting "
        "without --force), show each change, then run 'paas-channels check'.",
    )
    init.add_argument("--force", action="store_true", help="overwrite files that exist (settings are only appended to)")
    init.add_argument("--settings", help="Django settings module (else the one ./manage.py names)")
    return parser


def _add_project_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", help="Django settings module (else DJANGO_SETTINGS_MODULE, else ./manage.py)")
    parser.add_argument("--layer", help="alias in CHANNEL_LAYERS (default 'default')")
