"""Every retry of a POST /jobs carries the Idempotency-Key it was first sent with.

A server that created the job and then failed to answer (a 502 from a proxy, a 503 after the
handler ran) creates another job for a retry with a new key: one that nobody counts and that
stays staged. The mutation gate's `idempotency-key-stable` entry changes the key on each retry
inside one call; this test is the one that fails then.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestServer

from agent.api import ApiClient

KEY = "k" * 32


class _NoSleep:
    def __init__(self) -> None:
        self.now = 1000.0

    async def __call__(self, seconds: float) -> None:
        self.now += seconds

    def clock(self) -> float:
        return self.now


async def test_every_retry_of_a_create_carries_the_same_idempotency_key(aiohttp_server) -> None:
    keys: list[str | None] = []

    async def create(request: web.Request) -> web.Response:
        keys.append(request.headers.get("Idempotency-Key"))
        if len(keys) <= 2:  # the server may have acted; the client cannot tell
            return web.json_response({"message": "busy"}, status=503)
        job = {"id": "j1", "token": "t" * 32, "server": "", "status": {"code": "incomplete"}}
        return web.json_response(job, status=201)

    app = web.Application()
    app.router.add_route("POST", "/jobs", create)
    srv: TestServer = await aiohttp_server(app)
    sleep = _NoSleep()
    api = ApiClient(
        f"http://{srv.host}:{srv.port}", KEY, sleep=sleep, clock=sleep.clock, rand=lambda: 0.0
    )
    try:
        job = await api.create_job([], idempotency_key="ticket-7-create")
    finally:
        await api.close()

    assert job.id == "j1"
    assert keys == ["ticket-7-create"] * 3
