"""Fixtures for the security tests: the end-to-end harness (tests/e2e) and an emulator whose
job documents can be rewritten on the way out (to serve names the emulator does not make)."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from e2e_harness import KEY

from agent.emulator import EmulatorConfig, RunningEmulator, build_app

Mangle = Callable[[dict[str, Any]], None]
MakeEmulator = Callable[..., Awaitable[RunningEmulator]]


def _mangler(mangle: Mangle) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        resp = await handler(request)
        if (
            request.method == "GET"
            and request.path.startswith("/v2/jobs")
            and isinstance(resp, web.Response)
            and resp.content_type == "application/json"
            and resp.body is not None
        ):
            doc = json.loads(bytes(resp.body))  # type: ignore[arg-type]
            docs = doc if isinstance(doc, list) else [doc]  # the job list too (sweeps)
            jobs = [d for d in docs if isinstance(d, dict) and "output" in d]
            if jobs:
                for job in jobs:
                    mangle(job)
                count = {k: v for k, v in resp.headers.items() if k.lower() == "x-count"}
                return web.json_response(doc, status=resp.status, headers=count)
        return resp

    return middleware


@pytest.fixture
async def make_emulator() -> AsyncIterator[MakeEmulator]:
    """``await make_emulator(mangle=fn, **EmulatorConfig fields)``: ``fn`` may rewrite every job
    document the API serves (GET /v2/jobs/{id} and the job list) before it leaves."""
    started: list[RunningEmulator] = []

    async def make(mangle: Mangle | None = None, **config: Any) -> RunningEmulator:
        config.setdefault("api_key", KEY)
        app = build_app(EmulatorConfig(**config))
        if mangle is not None:
            app.middlewares.append(_mangler(mangle))
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        emu = RunningEmulator("127.0.0.1", int(runner.addresses[0][1]), app, runner)
        started.append(emu)
        return emu

    yield make
    for emu in started:
        await emu.stop()
