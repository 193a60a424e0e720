"""Fixtures shared by the suites that run against an emulator started in the test's own loop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from agent.emulator import EmulatorConfig, RunningEmulator, start_emulator


@pytest.fixture
async def make_emulator(
    emulator_key: str,
) -> AsyncIterator[Callable[..., Awaitable[RunningEmulator]]]:
    """``await make_emulator(**EmulatorConfig fields)``: a fresh emulator on loopback that accepts
    the suite's ``emulator_key`` (each suite's conftest says which); stopped after the test."""
    started: list[RunningEmulator] = []

    async def make(**config: Any) -> RunningEmulator:
        config.setdefault("api_key", emulator_key)
        emu = await start_emulator(EmulatorConfig(**config))
        started.append(emu)
        return emu

    yield make
    for emu in started:
        await emu.stop()
