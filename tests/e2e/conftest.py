"""Fixtures for end-to-end tests: an emulator in the test's loop and a laid-out inbox."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from e2e_harness import KEY

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
