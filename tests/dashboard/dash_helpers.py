"""Helpers for dashboard tests: a real agent (in this process, on the test's loop) against the
emulator, and a client that talks to its dashboard the way the page and the CLI do."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from e2e_harness import png_bytes, write_config

from agent.config import load_config
from agent.daemon import Agent
from agent.dashboard import Dashboard

JSON_POST = {"Content-Type": "application/json", "X-Requested-With": "convert-agent"}


def drop_ticket(inbox: Path, stem: str, target: str = "jpg", color: str = "red") -> Path:
    (inbox / f"{stem}.png").write_bytes(png_bytes(color=color))
    ticket = inbox / f"{stem}.job"
    ticket.write_text(f"input: {stem}.png\ntarget: {target}\n")
    return ticket


async def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_agent(
    tmp_path: Path, base_url: str, **sections: Mapping[str, Any]
) -> AsyncIterator[Agent]:
    """`convert-agent run` in this process, watching ``tmp_path/inbox``; stopped on exit."""
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    cfg_path = write_config(
        tmp_path / "config.yaml", base_url, [inbox], tmp_path / "state" / "state.db", **sections
    )
    agent = Agent(load_config(cfg_path, {}))
    task = asyncio.create_task(agent.run())
    try:
        await wait_for(lambda: agent.ready.is_set() or task.done(), 20, "the agent to start")
        if task.done():
            task.result()
        yield agent
    finally:
        agent.request_stop()
        await asyncio.wait_for(task, 20)


def dash(agent: Agent) -> Dashboard:
    assert agent.dashboard is not None and agent.dashboard.url is not None
    return agent.dashboard


class Client:
    """The dashboard's API with the bearer token (like the CLI)."""

    def __init__(self, session: aiohttp.ClientSession, dashboard: Dashboard) -> None:
        self.session = session
        self.url = (dashboard.url or "").rstrip("/")
        self.auth = {"Authorization": f"Bearer {dashboard.token}"}

    async def get(self, path: str) -> Any:
        async with self.session.get(self.url + path, headers=self.auth) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def post(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        async with self.session.post(
            self.url + path, json=dict(body or {}), headers={**self.auth, **JSON_POST}
        ) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def text(self, path: str) -> str:
        async with self.session.get(self.url + path, headers=self.auth) as r:
            assert r.status == 200, await r.text()
            return await r.text()

    async def ticket(self, name: str) -> dict[str, Any]:
        status = await self.get("/api/status")
        found = [t for t in status["tickets"] if t["name"] == name]
        assert found, f"{name} not in {[t['name'] for t in status['tickets']]}"
        return dict(found[0])

    async def wait_phase(self, name: str, phases: set[str], timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = await self.get("/api/status")
            for t in status["tickets"]:
                if t["name"] == name and t["phase"] in phases:
                    return dict(t)
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} never reached {phases}: {status['tickets']}")
            await asyncio.sleep(0.05)
