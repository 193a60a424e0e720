"""Serving the emulator on a real socket: `start_emulator` for tests and the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from agent.emulator.app import build_app
from agent.emulator.common import STATE_KEY
from agent.emulator.config import EmulatorConfig
from agent.emulator.state import EmulatorState


@dataclass
class RunningEmulator:
    """A started emulator. `base_url` is what an api2convert client takes (`…/v2`)."""

    host: str
    port: int
    app: web.Application
    runner: web.AppRunner

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v2"

    @property
    def state(self) -> EmulatorState:
        return self.app[STATE_KEY]

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_emulator(
    config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> RunningEmulator:
    """Serve the emulator on `host:port` (0 = a free port) in the running event loop."""
    app = build_app(config or EmulatorConfig())
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    return RunningEmulator(host=host, port=int(bound), app=app, runner=runner)
