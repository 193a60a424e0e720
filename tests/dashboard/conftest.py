"""Fixtures for dashboard tests: an emulator in the test's loop and a running agent beside it."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))  # e2e_harness

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
