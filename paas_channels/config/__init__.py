"""Configuration: process options (:mod:`.options`), the CLI parser made from them
(:mod:`.parser`), and Django settings from the environment (:mod:`.settings`).

Every process reads its options once, ``command line > environment > default``,
into a frozen :class:`~.options.Config` that is passed down; nothing deeper reads
``os.environ``.
"""

from __future__ import annotations

from .options import EXIT_BOOT_ERROR, LOG_FORMAT, MODES, OPTIONS, Config, Option, add_arguments, load_config, on_heroku

__all__ = ["EXIT_BOOT_ERROR", "LOG_FORMAT", "MODES", "OPTIONS", "Config", "Option", "add_arguments", "load_config", "on_heroku"]
