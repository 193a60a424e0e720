"""Test helpers for the emulator suite: sample files, a small async client, a threaded emulator."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar

import aiohttp
from PIL import Image

from agent.emulator import EmulatorConfig, RunningEmulator, start_emulator

KEY = "k" * 32
KEY_HEADERS = {"X-Api2convert-Api-Key": KEY}
TERMINAL = ("completed", "failed", "canceled")
T = TypeVar("T")


def png_bytes(size: tuple[int, int] = (24, 16), color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def animated_gif(frames: int = 3) -> bytes:
    images = [Image.new("RGB", (10, 10), c) for c in ("red", "green", "blue", "white")[:frames]]
    out = io.BytesIO()
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=50, loop=0)
    return out.getvalue()


def multipage_tiff(pages: int = 2) -> bytes:
    images = [Image.new("RGB", (8, 8), c) for c in ("red", "green", "blue")[:pages]]
    out = io.BytesIO()
    images[0].save(out, "TIFF", save_all=True, append_images=images[1:])
    return out.getvalue()


class Client:
    """A thin async client for the emulator: the calls the tests repeat."""

    def __init__(self, session: aiohttp.ClientSession, emulator: RunningEmulator) -> None:
        self.session, self.emulator = session, emulator
        self.base = emulator.base_url
        self.key_headers: dict[str, str] = dict(KEY_HEADERS)

    async def create(
        self,
        body: Mapping[str, Any] | None = None,
        *,
        target: str = "jpg",
        headers: Mapping[str, str] | None = None,
        expect: int = 201,
    ) -> dict[str, Any]:
        payload = dict(body) if body is not None else {"conversion": [{"target": target}]}
        payload.setdefault("process", False)
        async with self.session.post(
            f"{self.base}/jobs", json=payload, headers={**self.key_headers, **(headers or {})}
        ) as r:
            data: dict[str, Any] = await r.json()
            assert r.status == expect, (r.status, data)
            return data

    async def upload(
        self,
        job: Mapping[str, Any],
        data: bytes,
        filename: str = "in.png",
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        form = aiohttp.FormData()
        form.add_field("file", data, filename=filename, content_type="application/octet-stream")
        hdrs = {"X-Api2convert-Token": job["token"], **(headers or {})}
        async with self.session.post(
            f"{job['server']}/upload-file/{job['id']}", data=form, headers=hdrs
        ) as r:
            return r.status, await r.json()

    async def start(self, job_id: str, *, expect: int = 200) -> dict[str, Any]:
        async with self.session.patch(
            f"{self.base}/jobs/{job_id}", json={"process": True}, headers=self.key_headers
        ) as r:
            body: dict[str, Any] = await r.json()
            assert r.status == expect, (r.status, body)
            return body

    async def get(self, job_id: str) -> dict[str, Any]:
        async with self.session.get(f"{self.base}/jobs/{job_id}", headers=self.key_headers) as r:
            assert r.status == 200, r.status
            body: dict[str, Any] = await r.json()
            return body

    async def wait(self, job_id: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = await self.get(job_id)
            if job["status"]["code"] in TERMINAL:
                return job
            assert time.monotonic() < deadline, f"job stuck in {job['status']}"
            await asyncio.sleep(0.01)

    async def convert(
        self, data: bytes, filename: str = "in.png", target: str = "jpg", **body: Any
    ) -> dict[str, Any]:
        job = await self.create({"conversion": [{"target": target}], **body})
        status, _ = await self.upload(job, data, filename)
        assert status == 200
        await self.start(job["id"])
        return await self.wait(job["id"])

    async def download(
        self, uri: str, headers: Mapping[str, str] | None = None
    ) -> tuple[int, bytes, Mapping[str, str]]:
        async with self.session.get(uri, headers=headers) as r:
            return r.status, await r.read(), r.headers

    async def control(self, path: str, body: Any = None) -> Any:
        url = f"{self.emulator.origin}/_emulator/{path}"
        if body is None:
            async with self.session.get(url) as r:
                return await r.json()
        async with self.session.post(url, json=body) as r:
            assert r.status in (200, 204), await r.text()
            return await r.json() if r.status == 200 else None


class ThreadedEmulator:
    """The emulator on its own event loop in a thread, for synchronous clients (SDK, Hypothesis)."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.emulator = self.run(start_emulator(config or EmulatorConfig()))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def snapshot(self) -> dict[str, Any]:
        async def take() -> dict[str, Any]:
            return self.emulator.state.snapshot()

        return self.run(take())

    def close(self) -> None:
        self.run(self.emulator.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


#: The `make_client` fixture: `await make_client(**EmulatorConfig fields)` → a Client.
MakeClient = Callable[..., Awaitable[Client]]
