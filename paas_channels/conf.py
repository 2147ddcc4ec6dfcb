"""The settings-file entry point and the process options, under their first public path.

``from paas_channels.conf import configure`` is what a project's ``settings.py``
imports; the code lives in :mod:`paas_channels.config`.
"""

from __future__ import annotations

from .config.options import (
    EXIT_BOOT_ERROR, MODES, OPTIONS, Config, Option, add_arguments, load_config, on_heroku,
)
from .config.settings import configure, settings_from_env

__all__ = [
    "EXIT_BOOT_ERROR", "MODES", "OPTIONS", "Config", "Option", "add_arguments", "configure", "load_config",
    "on_heroku", "settings_from_env",
]
