"""A faithful emulator of the api2convert REST API v2, for tests, demos and trying the agent
without an account. It imports nothing from the rest of `agent`, so a misreading of the API
cannot hide in both the client and the server.

URL layout (origin = the Host the client used, e.g. `http://127.0.0.1:8080`):
- API: `{origin}/v2/jobs[/{id}[/input|/output|/history|/threads]]`, `/v2/statuses`,
  `/v2/conversions`, `/v2/contracts`.
- Per-job file server `server` = `{origin}/v2/dl/web{N}`: `POST {server}/upload-file/{job_id}`,
  outputs at `{server}/download-file/{job_id}/{output_id}/{filename}`.
- Control and introspection: `/_emulator/state|faults|clock|reset|health` (see `control`).

What it makes is one table, `catalog` (`GET /v2/conversions`): images, documents, archives,
hashes, metadata, audio and the guides' operations (`convert`, `documents`, `operations`).

Entry points: `build_app(config)`, `await start_emulator(config, host, port)`, the click command
`agent.emulator.cli.emulator_command`, and `main(argv)`. Details and decisions: docs/emulator.md.
"""

from __future__ import annotations

from agent.emulator.app import build_app
from agent.emulator.config import ConfigError, EmulatorConfig, FaultSpec, parse_fault
from agent.emulator.runner import RunningEmulator, start_emulator
from agent.emulator.state import EmulatorState

__all__ = [
    "ConfigError",
    "EmulatorConfig",
    "EmulatorState",
    "FaultSpec",
    "RunningEmulator",
    "build_app",
    "main",
    "parse_fault",
    "start_emulator",
]


def main(argv: list[str] | None = None) -> None:
    """Run the emulator command line (`python -m agent.emulator --help`)."""
    from agent.emulator.cli import emulator_command

    emulator_command.main(args=argv, prog_name="convert-agent emulator")
