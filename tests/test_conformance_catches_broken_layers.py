"""The conformance suite fails deliberately broken layers (a suite that can't fail is no suite)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CASES = {
    "ForgetsExpiry": ["test_message_expiry", "test_channel_dropped_from_groups_when_its_message_expires"],
    "SharesReferences": ["test_message_changed_after_send_is_not_changed_for_receiver"],
    "GroupSendRaises": ["test_send_group_never_raises_channel_full"],
    "IgnoresCapacity": ["test_capacity_on_normal_channel", "test_capacity_shared_by_all_channels_of_one_prefix"],
    "ReportsPrefix": ["test_process_specific_channels_received_by_prefix"],
    "AcceptsAnyKeys": ["test_non_str_keys_rejected_naming_the_key"],
}


@pytest.fixture(scope="module")
def suite_runs():
    """The conformance suite against every broken layer, all at once: in-memory layers, independent
    subprocesses (most of each run is starting pytest and Django).  ``{case: CompletedProcess}``."""
    running = {}
    for broken, expected in CASES.items():
        env = {**os.environ, "PAAS_CHANNELS_TEST_BACKEND": f"broken:{broken}"}
        output = tempfile.TemporaryFile("w+")  # a file, not a pipe: no run waits for its reader
        process = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",  # -n 0: one process each
             "tests/test_layer_conformance.py", "-k", " or ".join(expected)],
            cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, text=True,
        )
        running[broken] = process, output
    try:
        done = {}
        for broken, (process, output) in running.items():
            process.wait(timeout=120)
            output.seek(0)
            done[broken] = subprocess.CompletedProcess(process.args, process.returncode, output.read(), "")
        return done
    finally:
        for process, output in running.values():
            if process.poll() is None:
                process.kill()
                process.wait()
            output.close()


@pytest.mark.slow  # six pytest runs (started at once): ~10 s
@pytest.mark.parametrize("broken", sorted(CASES))
def test_suite_fails_broken_layer(broken, suite_runs):
    expected = CASES[broken]
    result = suite_runs[broken]
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    for name in expected:
        assert f"FAILED tests/test_layer_conformance.py::{name}" in result.stdout, result.stdout[-3000:]
