"""``python manage.py runworker``: the same worker as ``paas-channels run worker``.

Options are the worker options of ``paas_channels.conf`` (same flags, same
environment variables, same defaults).  ``--gevent`` patches the process here,
after Django is loaded; ``paas-channels run worker --gevent N`` patches
earlier and is the safer choice for production.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from paas_channels.conf import EXIT_BOOT_ERROR, add_arguments, load_config
from paas_channels.exceptions import ConfigError

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
        if not logging.getLogger().handlers:
            logging.basicConfig(
                level=getattr(logging, config.log_level.upper()),
                format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
                stream=sys.stderr,
            )
        if config.gevent:
            from gevent import monkey

            if not monkey.is_module_patched("socket"):
                monkey.patch_all()
        from paas_channels import worker

        logger.info("runworker: %s", config.describe())
        try:
            code = worker.run(config)
        except ConfigError as exc:
            raise CommandError(str(exc), returncode=EXIT_BOOT_ERROR) from None
        if code:
            sys.exit(code)
