"""Webhooks: a job with a `callback` gets a POST when it ends (and on every status change with
`notify_status`), signed the way the official SDK verifies it, and retried on 5xx or no answer.

A receiver on loopback records each POST's raw body and headers; the official Python SDK's own
verifier (`api2convert.webhooks().construct_event`) checks them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from api2convert import SignatureVerificationError, webhooks
from emu_helpers import Client, MakeClient, png_bytes

SECRET = "whsec-emulator-test"


@dataclass
class Receiver:
    url: str
    posts: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)
    #: statuses to answer, one per POST (then 200)
    answers: list[int] = field(default_factory=list)

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.posts) < count:
            assert time.monotonic() < deadline, f"{len(self.posts)} of {count} webhooks came"
            await asyncio.sleep(0.01)

    async def quiet(self, count: int, seconds: float = 0.3) -> None:
        """A short bounded check that no POST beyond ``count`` arrives."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert len(self.posts) == count, len(self.posts)
            await asyncio.sleep(0.02)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver(url="")

    async def handle(request: web.Request) -> web.Response:
        state.posts.append((await request.read(), dict(request.headers)))
        status = state.answers.pop(0) if state.answers else 200
        return web.Response(status=status, text="ok")

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield state
    await runner.cleanup()


async def _run(client: Client, callback: str, **body: object) -> dict[str, Any]:
    job = await client.create({"conversion": [{"target": "jpg"}], "callback": callback, **body})
    status, _ = await client.upload(job, png_bytes((12, 8)), "pic.png")
    assert status == 200
    await client.start(job["id"])
    return await client.wait(job["id"])


async def test_a_signed_webhook_passes_the_sdks_check_and_a_tampered_one_fails(
    make_client: MakeClient, receiver: Receiver
) -> None:
    client = await make_client(webhook_secret=SECRET)
    done = await _run(client, receiver.url)
    await receiver.wait_for(1)
    await receiver.quiet(1)  # without notify_status: one POST, when the job ends
    body, headers = receiver.posts[0]
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("API2Convert API v2 Client")
    signature = headers["X-Oc-Signature"]

    event = webhooks().construct_event(body, signature, SECRET)
    assert event.job.id == done["id"] and event.job.status.code == "completed"
    assert event.payload["output"][0]["uri"] == done["output"][0]["uri"]  # the full job document
    assert event.payload["output"][0]["checksum"] == done["output"][0]["checksum"]

    for tampered in (body + b" ", body.replace(b"completed", b"failed\x20\x20\x20")):
        with pytest.raises(SignatureVerificationError):
            webhooks().construct_event(tampered, signature, SECRET)
    with pytest.raises(SignatureVerificationError):
        webhooks().construct_event(body, signature, "another secret")
    with pytest.raises(SignatureVerificationError):
        webhooks().construct_event(body, None, SECRET)


async def test_unsigned_by_default_as_the_guide_says(client: Client, receiver: Receiver) -> None:
    await _run(client, receiver.url)
    await receiver.wait_for(1)
    body, headers = receiver.posts[0]
    assert "X-Oc-Signature" not in headers
    assert webhooks().parse(body).job.status.code == "completed"


async def test_notify_status_posts_every_status_change_in_order(
    make_client: MakeClient, receiver: Receiver
) -> None:
    client = await make_client(webhook_secret=SECRET, processing_seconds=0.1)
    await _run(client, receiver.url, notify_status=True)
    await receiver.wait_for(3)
    await receiver.quiet(3)
    codes = [
        webhooks().construct_event(b, h["X-Oc-Signature"], SECRET).job.status.code
        for b, h in receiver.posts
    ]
    assert codes == ["queued", "processing", "completed"]


async def test_a_failed_job_is_posted_too(client: Client, receiver: Receiver) -> None:
    job = await client.create({"conversion": [{"target": "png"}], "callback": receiver.url})
    await client.upload(job, b"no image at all", "x.png")
    await client.start(job["id"])
    await receiver.wait_for(1)
    failed = webhooks().parse(receiver.posts[0][0])
    assert failed.job.status.code == "failed" and failed.payload["errors"][0]["code"] == 6005


async def test_5xx_and_no_answer_are_retried_4xx_is_not(
    make_client: MakeClient, receiver: Receiver
) -> None:
    client = await make_client(webhook_secret=SECRET, webhook_retry_delay=0.01)
    receiver.answers = [503, 500]
    await _run(client, receiver.url)
    await receiver.wait_for(3)
    await receiver.quiet(3)
    assert len({b for b, _ in receiver.posts}) == 1  # the same body each time
    records = (await client.control("state"))["webhooks"]
    assert [(r["attempt"], r["http_status"]) for r in records] == [(1, 503), (2, 500), (3, 200)]

    receiver.posts.clear()
    receiver.answers = [410]
    await _run(client, receiver.url)
    await receiver.wait_for(1)
    await receiver.quiet(1)

    # an unreachable receiver: tried 1 + webhook_retries times, then given up
    client = await make_client(webhook_retries=2, webhook_retry_delay=0.01)
    await _run(client, "http://127.0.0.1:9/nobody-listens")
    deadline = time.monotonic() + 10
    while len((await client.control("state"))["webhooks"]) < 3:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)  # bounded quiet check: no fourth attempt (retries are 0.01-0.04 s)
    records = (await client.control("state"))["webhooks"]
    assert [r["attempt"] for r in records] == [1, 2, 3]
    assert all(r["http_status"] is None and r["error"] for r in records)
