"""Test helpers for the emulator suite: sample files, a small async client, a threaded emulator."""

from __future__ import annotations

import asyncio
import http.server
import io
import math
import socket
import struct
import threading
import time
import wave
import zipfile
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


# -- sample files for the catalog's operations --------------------------------------------------
W_NS = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"


def image_bytes(size: tuple[int, int], fmt: str = "JPEG", quality: int = 95) -> bytes:
    """A picture with structure (a gradient and a dark square), so it compresses like a photo."""
    image = Image.new("RGB", size, "white")
    pixels = image.load()
    assert pixels is not None
    for x in range(size[0]):
        for y in range(size[1]):
            pixels[x, y] = ((x * 7 + y * 3) % 256, (x * y) % 256, (y * 5) % 256)
    image.paste((10, 10, 10), (size[0] // 8, size[1] // 4, size[0] // 3, size[1] // 2))
    out = io.BytesIO()
    image.save(out, fmt, **({"quality": quality} if fmt in ("JPEG", "WEBP") else {}))
    return out.getvalue()


def pdf_bytes(text: str = "Quarterly report", pages: int = 1) -> bytes:
    """An A4 PDF whose pages hold `text` (made with fpdf2, as a user's PDF would be)."""
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_font("helvetica", size=24)
    for number in range(1, pages + 1):
        pdf.add_page()
        pdf.cell(0, 20, f"{text} - page {number}")
    return bytes(pdf.output())


def docx_bytes(paragraphs: list[str], media: dict[str, bytes] | None = None) -> bytes:
    """A minimal Word document: its paragraphs and, under word/media/, the given files."""
    body = "".join(f"<w:p><w:r><w:t>{p}</w:t></w:r></w:p>" for p in paragraphs)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as docx:
        docx.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/'
            'content-types"><Default Extension="xml" ContentType="application/xml"/></Types>',
        )
        docx.writestr(
            "word/document.xml",
            f'<?xml version="1.0"?><w:document xmlns:w="{W_NS}"><w:body>{body}</w:body>'
            "</w:document>",
        )
        for name, data in (media or {}).items():
            docx.writestr(f"word/media/{name}", data)
    return out.getvalue()


def wav_bytes(seconds: float = 0.5, rate: int = 22050, channels: int = 1) -> bytes:
    """A 440 Hz tone as 16-bit PCM WAV."""
    frames = int(seconds * rate)
    samples = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate))) * channels
        for i in range(frames)
    )
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples)
    return out.getvalue()


class FileServer:
    """Serves fixed files over HTTP on loopback (GET and HEAD), as a remote source would:
    `add(path, data, content_type)` → its URL."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        files = self.files

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, body: bool) -> None:
                found = files.get(self.path.split("?")[0])
                if found is None:
                    self.send_error(404)
                    return
                data, content_type = found
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer(True)

            def do_HEAD(self) -> None:
                self._answer(False)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, path: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        self.files[path] = (data, content_type)
        return self.base + path

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def closed_port_url(path: str = "/gone.html") -> str:
    """A loopback URL nobody listens on (the port was just free)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"
