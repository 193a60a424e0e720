"""The official SDK's example guides, one test each: the official Python SDK makes the guide's
calls, unchanged but for the URLs (the remote sources are served on loopback), against the
emulator, and the test checks that the result is of the right kind, made for real.

Guides covered elsewhere: presets, statistics and rate-limits (`test_emu_sdk.py::
test_sdk_presets_statistics_and_contracts`) and the webhook sender's details
(`test_emu_webhooks.py`). docs/emulator.md maps every guide to its test.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pypdf
import pytest
from api2convert import Api2Convert, AuthenticationError, SignatureVerificationError
from emu_helpers import (
    KEY,
    FileServer,
    ThreadedEmulator,
    docx_bytes,
    image_bytes,
    pdf_bytes,
    png_bytes,
    wav_bytes,
)
from PIL import Image

from agent.emulator import EmulatorConfig

SECRET = "whsec-guide"
# The uploading-files guide's own minimal 1x1 PNG.
ONE_PX_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de"
    "0000000c4944415408d763f8cfc00000000301010018dd8db00000000049454e44ae426082"
)


@pytest.fixture
def files() -> Iterator[FileServer]:
    server = FileServer()
    yield server
    server.close()


@pytest.fixture
def threaded() -> Iterator[ThreadedEmulator]:
    emulator = ThreadedEmulator(EmulatorConfig(webhook_secret=SECRET, webhook_retry_delay=0.05))
    yield emulator
    emulator.close()


@pytest.fixture
def sdk(threaded: ThreadedEmulator) -> Iterator[Api2Convert]:
    client = Api2Convert(
        KEY, base_url=threaded.emulator.base_url, sleeper=lambda _s: time.sleep(0.02)
    )
    yield client
    client.close()


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# -- quickstart, convert-files, uploading-files, job-lifecycle -----------------------------------
def test_quickstart(sdk: Api2Convert, files: FileServer, tmp_path: Path) -> None:
    source = files.add("/raster%20image/jpg/example.jpg", image_bytes((64, 48)), "image/jpeg")
    result = sdk.convert(source, "png")
    job = sdk.jobs.get(result.job.id)
    assert job.status.code == "completed"
    path = result.save(tmp_path)
    assert path.name == "example.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (64, 48)


def test_convert_files(sdk: Api2Convert, files: FileServer) -> None:
    catalog = sdk.conversions.list()
    made = {(row["category"], row["target"]) for row in catalog}
    guide_targets = {
        ("image", "png"),
        ("document", "pdf"),
        ("archive", "zip"),
        ("hash", "sha256"),
        ("metadata", "json"),
        ("audio", "aac"),
        ("operation", "resize-image"),
        ("operation", "compress"),
        ("operation", "thumbnail"),
        ("operation", "compare-image"),
        ("operation", "extract-assets"),
    }
    assert guide_targets <= made
    to_png = sdk.conversions.list(target="png")
    assert [row["target"] for row in to_png] == ["png"]
    assert set(to_png[0]["options"]) >= {"width", "height"}
    source = files.add("/example.jpg", image_bytes((20, 10)), "image/jpeg")
    data = sdk.convert(source, "png").contents()
    assert _open(data).format == "PNG"


def test_uploading_files(sdk: Api2Convert, tmp_path: Path) -> None:
    local = tmp_path / "api2convert-example.png"
    local.write_bytes(ONE_PX_PNG)
    data = sdk.convert(str(local), "png").contents()
    image = _open(data)
    assert image.format == "PNG" and image.size == (1, 1)


def test_job_lifecycle(sdk: Api2Convert, files: FileServer) -> None:
    source = files.add("/example.jpg", image_bytes((30, 20)), "image/jpeg")
    job = sdk.jobs.create(
        {"process": False, "conversion": [{"category": "image", "target": "png"}]}
    )
    assert job.status.code == "incomplete"
    sdk.jobs.add_input(job.id, {"type": "remote", "source": source})
    sdk.jobs.start(job.id)
    finished = sdk.jobs.wait(job.id)
    (output,) = sdk.jobs.outputs(job.id)
    assert finished.status.code == "completed" and output.filename == "example.png"
    assert _open(sdk.download(output).contents()).size == (30, 20)


# -- documents: watermark, thumbnails, assets, analysis ------------------------------------------
def test_add_watermark(sdk: Api2Convert, files: FileServer) -> None:
    document = files.add("/document/pdf/example.pdf", pdf_bytes("Stamp me"), "application/pdf")
    stamp = files.add("/example.png", png_bytes((50, 40), "blue"), "image/png")
    job = sdk.jobs.create(
        {
            "process": True,
            "input": [{"type": "remote", "source": document}, {"type": "remote", "source": stamp}],
            "conversion": [
                {
                    "category": "document",
                    "target": "pdf",
                    "options": {"stamp": True, "alignment": "center"},
                }
            ],
        }
    )
    finished = sdk.jobs.wait(job.id)
    (output,) = sdk.jobs.outputs(finished.id)
    assert output.filename == "example.pdf"
    reader = pypdf.PdfReader(io.BytesIO(sdk.download(output).contents()))
    page = reader.pages[0]
    assert "Stamp me" in page.extract_text()  # the document is still there
    (placed,) = page.images  # and the stamp's image is on page 1
    with Image.open(io.BytesIO(placed.data)) as image:
        assert image.size == (50, 40)
        assert image.convert("RGB").getpixel((25, 20)) == (0, 0, 255)


def test_create_thumbnails(sdk: Api2Convert, files: FileServer) -> None:
    source = files.add("/document/pdf/example.pdf", pdf_bytes("Cover", pages=3), "application/pdf")
    result = sdk.convert(
        source,
        "thumbnail",
        {"thumbnail_target": "png", "width": 300, "pages": "first", "dpi": 150},
        category="operation",
    )
    (output,) = result.outputs()
    image = _open(result.contents())
    assert image.format == "PNG" and output.filename == "example.png"
    assert image.size == (300, round(300 * 297 / 210))  # A4's aspect ratio
    lo, hi = image.convert("L").getextrema()
    assert hi == 255 and lo < 100  # a white page with dark text on it, really rendered


def test_extract_assets(sdk: Api2Convert, files: FileServer) -> None:
    media = {"image1.png": png_bytes((12, 12), "green"), "image2.jpeg": image_bytes((16, 8))}
    source = files.add("/document/docx/example.docx", docx_bytes(["Text"], media))
    result = sdk.convert(source, "extract-assets", category="operation")
    outputs = result.outputs()
    assert sorted(o.filename for o in outputs) == sorted(media)
    for output in outputs:
        assert sdk.download(output).contents() == media[output.filename]


def test_file_analysis(sdk: Api2Convert, files: FileServer) -> None:
    data = image_bytes((40, 24))
    source = files.add("/raster%20image/jpg/example.jpg", data, "image/jpeg")
    facts = json.loads(sdk.convert(source, "json", category="metadata").contents())
    assert facts["kind"] == "image" and facts["size"] == len(data)
    assert facts["image"]["format"] == "JPEG"
    assert (facts["image"]["width"], facts["image"]["height"]) == (40, 24)
    assert facts["sha256"] == hashlib.sha256(data).hexdigest()


# -- images: compress, compare, resize -----------------------------------------------------------
def test_compress_files(sdk: Api2Convert, files: FileServer) -> None:
    data = image_bytes((120, 90), quality=100)
    source = files.add("/raster%20image/jpg/example.jpg", data, "image/jpeg")
    result = sdk.convert(source, "compress", {"compression_level": "high"}, category="operation")
    out = result.contents()
    image = _open(out)
    assert image.format == "JPEG" and image.size == (120, 90)
    assert len(out) < len(data) * 0.7


def test_compare_files(sdk: Api2Convert, files: FileServer) -> None:
    small = Image.new("RGB", (40, 30), "white")
    small.paste((0, 0, 0), (0, 0, 10, 10))  # only the small one has a black corner
    out = io.BytesIO()
    small.save(out, "JPEG", quality=95)
    first = files.add("/jpg/example_small.jpg", out.getvalue(), "image/jpeg")
    big = io.BytesIO()
    Image.new("RGB", (80, 60), "white").save(big, "JPEG", quality=95)
    second = files.add("/jpg/example.jpg", big.getvalue(), "image/jpeg")
    job = sdk.jobs.create(
        {
            "process": True,
            "input": [{"type": "remote", "source": first}, {"type": "remote", "source": second}],
            "conversion": [
                {
                    "category": "operation",
                    "target": "compare-image",
                    "options": {"method": "ssim", "threshold": 5, "diff_color": "red"},
                }
            ],
        }
    )
    finished = sdk.jobs.wait(job.id)
    (output,) = sdk.jobs.outputs(job.id)
    diff = _open(sdk.download(output).contents()).convert("RGB")
    assert diff.size == (40, 30)
    assert diff.getpixel((5, 5)) == (255, 0, 0)  # the corner that differs is painted
    r, g, b = diff.getpixel((30, 20))
    assert r == g == b  # the rest is the first image, greyed
    assert finished.raw["output"][0]["metadata"]["different_pixels"] >= 90


def test_image_operations(sdk: Api2Convert, files: FileServer, tmp_path: Path) -> None:
    source = files.add("/raster%20image/jpg/example.jpg", image_bytes((1000, 500)), "image/jpeg")
    result = sdk.convert(
        source,
        "resize-image",
        {
            "width": 800,
            "height": 600,
            "resize_by": "px",
            "resize_handling": "keep_aspect_ratio_crop",
        },
        category="operation",
    )
    path = result.save(tmp_path)
    with Image.open(path) as image:
        assert image.format == "JPEG" and image.size == (800, 600)


# -- archives, hashes, audio, website capture ----------------------------------------------------
def test_create_archives(sdk: Api2Convert, files: FileServer) -> None:
    inputs = {"example.pdf": pdf_bytes(), "example.png": png_bytes((9, 9))}
    job = sdk.jobs.create(
        {
            "process": True,
            "input": [
                {"type": "remote", "source": files.add(f"/{name}", data)}
                for name, data in inputs.items()
            ],
            "conversion": [{"category": "archive", "target": "zip"}],
        }
    )
    finished = sdk.jobs.wait(job.id)
    (output,) = sdk.jobs.outputs(job.id)
    assert output.filename.endswith(".zip")
    assert len(finished.raw["output"][0]["source"]["input"]) == 2
    with zipfile.ZipFile(io.BytesIO(sdk.download(output).contents())) as archive:
        assert archive.testzip() is None
        assert sorted(archive.namelist()) == sorted(inputs)
        for name, data in inputs.items():
            assert archive.read(name) == data


def test_create_hashes(sdk: Api2Convert, files: FileServer) -> None:
    data = docx_bytes(["any zip will do"])
    source = files.add("/archive/zip/example.zip", data, "application/zip")
    result = sdk.convert(source, "sha256", category="hash")
    assert result.contents().decode().strip() == hashlib.sha256(data).hexdigest()


def test_audio_operations(sdk: Api2Convert, files: FileServer, tmp_path: Path) -> None:
    source = files.add("/audio/wav/example.wav", wav_bytes(0.5, 22050, 1), "audio/wav")
    result = sdk.convert(
        source,
        "aac",
        {"audio_codec": "aac", "audio_bitrate": 192, "channels": "stereo", "frequency": 44100},
        category="audio",
    )
    path = result.save(tmp_path)
    assert path.name == "example.aac"
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "aac"
        assert stream.codec_context.sample_rate == 44100
        assert stream.codec_context.channels == 2
        samples = sum(frame.samples for frame in container.decode(stream))
    assert abs(samples / 44100 - 0.5) < 0.1  # about the half second that went in


def test_capture_website(sdk: Api2Convert, files: FileServer) -> None:
    page = files.add(
        "/",
        b"<html><head><title>Loopback shop</title></head><body><h1>Welcome</h1>"
        b"<p>Everything on sale.</p><script>ignored()</script></body></html>",
        "text/html",
    )
    job = sdk.jobs.create(
        {
            "process": True,
            "input": [
                {
                    "type": "remote",
                    "source": page,
                    "engine": "screenshot",
                    "options": {
                        "screen_width": 1280,
                        "screen_height": 1024,
                        "device_scale_factor": 1,
                    },
                }
            ],
            "conversion": [{"category": "image", "target": "png"}],
        }
    )
    sdk.jobs.wait(job.id)
    (output,) = sdk.jobs.outputs(job.id)
    image = _open(sdk.download(output).contents()).convert("RGB")
    assert image.size == (1280, 1024)
    assert image.getpixel((2, 2)) != (255, 255, 255)  # the title bar
    darkest, _ = image.crop((0, 60, 1280, 140)).convert("L").getextrema()
    assert darkest < 80  # the page's text was drawn below it


# -- webhooks, presets, authentication ------------------------------------------------------------
class _Hooks:
    def __init__(self) -> None:
        self.posts: list[tuple[bytes, str | None]] = []
        posts = self.posts

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                posts.append((body, self.headers.get("X-Oc-Signature")))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api2convert/webhook"


def test_webhooks(sdk: Api2Convert, files: FileServer) -> None:
    hooks = _Hooks()
    try:
        source = files.add(
            "/document/docx/example.docx", docx_bytes(["Signed and delivered", "Page text"])
        )
        job = sdk.convert_async(source, "pdf", callback=hooks.url, category="document")
        deadline = time.monotonic() + 20
        while not any(b'"completed"' in body for body, _ in hooks.posts):
            assert time.monotonic() < deadline, hooks.posts
            time.sleep(0.02)
    finally:
        hooks.server.shutdown()
        hooks.server.server_close()
    body, signature = next((b, s) for b, s in hooks.posts if b'"completed"' in b)
    event = Api2Convert.webhooks().construct_event(body, signature, SECRET)
    assert event.job.id == job.id and event.job.is_completed()
    (output,) = event.job.output
    text = pypdf.PdfReader(io.BytesIO(sdk.download(output).contents())).pages[0].extract_text()
    assert "Signed and delivered" in text and "Page text" in text
    with pytest.raises(SignatureVerificationError):
        Api2Convert.webhooks().construct_event(body + b" ", signature, SECRET)


def test_presets(sdk: Api2Convert) -> None:
    mine = sdk.presets.create(
        {"name": "phone video", "category": "video", "target": "mp4", "options": {}}
    )
    presets = sdk.presets.list(category="video", target="mp4")
    assert [p.id for p in presets] == [mine.id]
    assert all(p.target == "mp4" for p in presets)


def test_authentication() -> None:
    emulator = ThreadedEmulator(EmulatorConfig(api_key=KEY))
    try:
        with Api2Convert(KEY, base_url=emulator.emulator.base_url) as good:
            assert good.jobs.list() == []
        with (
            Api2Convert("x" * 32, base_url=emulator.emulator.base_url) as bad,
            pytest.raises(AuthenticationError),
        ):
            bad.jobs.list()
    finally:
        emulator.close()
