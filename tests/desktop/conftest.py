"""Fixtures for the desktop tests: an emulator in the test's loop (as in tests/e2e)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from desktop_helpers import KEY

from agent.emulator import EmulatorConfig, RunningEmulator, start_emulator


@pytest.fixture
async def make_emulator() -> AsyncIterator[Callable[..., Awaitable[RunningEmulator]]]:
    started: list[RunningEmulator] = []

    async def make(**config: Any) -> RunningEmulator:
        config.setdefault("api_key", KEY)
        emu = await start_emulator(EmulatorConfig(**config))
        started.append(emu)
        return emu

    yield make
    for emu in started:
        await emu.stop()
