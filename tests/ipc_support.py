"""Helpers for the IPC layer's tests: Python snippets as real subprocesses sharing one layer."""

from __future__ import annotations

from tests.support import Script  # noqa: F401 - where the IPC tests have always imported it from
