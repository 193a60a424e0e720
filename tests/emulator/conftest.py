"""Fixtures for the emulator tests: emulators started in the test's loop, and a client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from emu_helpers import Client, MakeClient

from agent.emulator import EmulatorConfig, RunningEmulator, start_emulator


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """`await make_client(**EmulatorConfig fields)` → a Client bound to a fresh emulator."""
    emulators: list[RunningEmulator] = []
    sessions: list[aiohttp.ClientSession] = []

    async def make(**config: Any) -> Client:
        emulator = await start_emulator(EmulatorConfig(**config))
        emulators.append(emulator)
        session = aiohttp.ClientSession()
        sessions.append(session)
        return Client(session, emulator)

    yield make
    for session in sessions:
        await session.close()
    for emulator in emulators:
        await emulator.stop()


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()
