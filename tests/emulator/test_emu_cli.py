"""The `emulator` click command: help, flags, the startup line, and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request

from click.testing import CliRunner

from agent.emulator.cli import emulator_command

FLAGS = [
    "--host",
    "--port",
    "--api-key",
    "--processing-seconds",
    "--seed",
    "--clock-speed",
    "--credits",
    "--max-concurrent",
    "--retry-after",
    "--ignore-idempotency",
    "--ignore-range",
    "--fault",
]


def test_help_lists_every_flag() -> None:
    result = CliRunner().invoke(emulator_command, ["--help"])
    assert result.exit_code == 0
    for flag in FLAGS:
        assert flag in result.output


def test_bad_fault_is_a_usage_error() -> None:
    result = CliRunner().invoke(emulator_command, ["--fault", "nowhere:drop"])
    assert result.exit_code == 2 and "unknown fault route" in result.output


def test_runs_prints_base_url_and_stops_on_sigterm() -> None:
    command = [
        sys.executable,
        "-m",
        "agent.emulator",
        "--port",
        "0",
        "--api-key",
        "secret",
        "--fault",
        "download:truncate:0.5",
        "--credits",
        "3",
    ]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line.startswith("emulator listening on http://127.0.0.1:")
            base_url = line.rsplit(" ", 1)[1]
            assert base_url.endswith("/v2")
            origin = base_url.removesuffix("/v2")
            with urllib.request.urlopen(f"{origin}/_emulator/state", timeout=5) as response:
                state = json.load(response)
            assert state["credits_remaining"] == 3
            assert state["faults"][0]["kind"] == "truncate"
        finally:
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr
