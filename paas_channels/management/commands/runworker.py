"""``python manage.py runworker``: the same worker as ``paas-channels run worker``.

Options are the worker options of ``paas_channels.conf`` (same flags, same
environment variables, same defaults).  With ``--gevent``, or ``--processes``
(``WEB_CONCURRENCY``) above 1, the command re-executes itself as
``paas-channels run worker``: gevent must patch the process, and a supervisor
fork its children, before Django is imported, which a management command is
too late for.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from paas_channels.conf import EXIT_BOOT_ERROR, OPTIONS, Config, add_arguments, load_config
from paas_channels.exceptions import ConfigError
from paas_channels.runtime.boot import configure_logging

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run a paas-channels worker: consumers and Django views for messages on the channel layer."

    def add_arguments(self, parser: Any) -> None:
        # --settings belongs to Django's own options here.
        add_arguments(parser, mode="worker", skip=("settings",))

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            config = load_config("worker", options)
        except ConfigError as exc:
            raise CommandError(str(exc), returncode=EXIT_BOOT_ERROR) from None
        if config.gevent or config.processes > 1:
            # Several processes: the supervisor must fork before Django is imported, as gevent must patch.
            _exec_cli(config)
        if not logging.getLogger().handlers:
            configure_logging(config.log_level)
        from paas_channels import worker

        logger.info("runworker: %s", config.describe())
        try:
            code = worker.run(config)
        except ConfigError as exc:
            raise CommandError(str(exc), returncode=EXIT_BOOT_ERROR) from None
        if code:
            sys.exit(code)


def _exec_cli(config: Config) -> None:
    """Replace this process by ``paas-channels run worker`` with the same options (same pid)."""
    argv = [sys.executable, "-m", "paas_channels.cli", "run", "worker"]
    for option in OPTIONS:
        if config.sources.get(option.name) != "cli" or option.name == "settings":
            continue
        value = config.values[option.name]
        for item in value if option.repeatable else [value]:
            argv += [option.flags[-1]] if option.flag_only else [option.flags[-1], str(item)]
    os.environ["DJANGO_SETTINGS_MODULE"] = os.environ.get("DJANGO_SETTINGS_MODULE") or _settings_module()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def _settings_module() -> str:
    from django.conf import settings

    return settings.SETTINGS_MODULE
