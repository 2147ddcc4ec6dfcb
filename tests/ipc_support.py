"""Helpers for the IPC layer's tests: Python snippets as real subprocesses sharing one layer."""

from __future__ import annotations

import re
import sys

from tests.support import ServerProcess


class Script(ServerProcess):
    """``python -c CODE ARGS...`` in its own session, output captured (see ``ServerProcess``)."""

    def __init__(self, code: str, *args: str) -> None:
        super().__init__([])
        self.code, self.script_args = code, [str(arg) for arg in args]

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.code, *self.script_args]

    def last_number(self, word: str) -> int:
        """The number after the last ``word`` printed (0 before the first)."""
        found = re.findall(rf"^{word} (\d+)$", self.output(), re.M)
        return int(found[-1]) if found else 0

