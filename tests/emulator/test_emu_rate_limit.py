"""The emulator's per-second request limit (`--rate-limit N`, agent/emulator/ratelimit.py)."""

from __future__ import annotations

import asyncio
import time

import pytest
from click.testing import CliRunner
from emu_helpers import KEY_HEADERS, MakeClient

from agent.emulator.cli import emulator_command
from agent.emulator.config import ConfigError, EmulatorConfig
from agent.emulator.ratelimit import RateLimiter


def test_limiter_counts_in_one_second_windows() -> None:
    now = [10.25]
    limiter = RateLimiter(3, clock=lambda: now[0])
    assert [limiter.admit() for _ in range(3)] == [None, None, None]
    assert limiter.admit() == pytest.approx(0.75)  # the rest of the window
    now[0] = 10.9
    assert limiter.admit() == pytest.approx(0.1)
    now[0] = 11.0  # a new window
    assert limiter.admit() is None
    assert limiter.refused == 2


def test_rate_limit_must_be_positive() -> None:
    with pytest.raises(ConfigError):
        EmulatorConfig(rate_limit=0)


def test_cli_flag_is_known() -> None:
    out = CliRunner().invoke(emulator_command, ["--help"]).output
    assert "--rate-limit" in out


async def _burst(client, n: int) -> list[tuple[int, str | None]]:
    async def one() -> tuple[int, str | None]:
        async with client.session.get(f"{client.base}/jobs", headers=KEY_HEADERS) as r:
            await r.read()
            return r.status, r.headers.get("Retry-After")

    return await asyncio.gather(*(one() for _ in range(n)))


async def test_over_the_limit_is_429_with_retry_after_and_control_is_never_limited(
    make_client: MakeClient,
) -> None:
    client = await make_client(rate_limit=5)
    # Wait for a fresh second, so the burst falls in one window.
    await asyncio.sleep(1.0 - time.monotonic() % 1.0 + 0.01)
    answers = await _burst(client, 12)
    refused = [after for status, after in answers if status == 429]
    assert sum(1 for status, _ in answers if status in (200, 204)) == 5
    assert len(refused) == 7
    assert all(after is not None and 0 < float(after) <= 1.0 for after in refused)
    for _ in range(10):  # /_emulator/* is not counted and never refused
        await client.control("state")
    state = await client.control("state")
    assert [r["status"] for r in state["requests"]].count(429) == 7  # in the request log
    await asyncio.sleep(float(max(refused)) + 0.05)
    assert [s for s, _ in await _burst(client, 2)] in ([200, 200], [204, 204])


async def test_without_the_option_nothing_is_limited(make_client: MakeClient) -> None:
    client = await make_client()
    answers = await _burst(client, 40)
    assert all(status != 429 for status, _ in answers)
