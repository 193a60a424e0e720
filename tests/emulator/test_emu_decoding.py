"""Decoding is as lenient as the service's: images that common tools open are converted.

The damaged inputs here are the ones ImageMagick 6 opens with a warning (a bad CRC on an
ancillary PNG chunk, a JPEG cut short in its scan data); the emulator used to refuse them as
"not a readable image" (6005). A file that is no image at all is still refused."""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from api2convert import Api2Convert
from emu_helpers import KEY, Client, ThreadedEmulator
from PIL import Image, ImageFile

from agent.emulator import convert as conv


def _chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    value = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", value & 0xFFFFFFFF)


def png_1x1_bad_text_crc() -> bytes:
    """A 1×1 red PNG whose tEXt chunk has a wrong CRC (libpng: a warning; the chunk is dropped)."""
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"tEXt", b"Comment\x00made by hand", crc=1)
        + _chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + _chunk(b"IEND", b"")
    )


def jpeg_cut_short() -> bytes:
    """A 64×48 JPEG cut in the middle of its scan data (no end marker)."""
    image = Image.new("L", (64, 48))
    rng = random.Random(1)
    image.putdata([rng.randrange(256) for _ in range(64 * 48)])
    out = io.BytesIO()
    image.save(out, "JPEG")
    data = out.getvalue()
    return data[: len(data) // 2]


def _png_size(body: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(body)) as image:
        image.load()
        return image.size


@pytest.mark.parametrize(
    ("name", "data", "size"),
    [("dot.png", png_1x1_bad_text_crc(), (1, 1)), ("cut.jpg", jpeg_cut_short(), (64, 48))],
)
async def test_an_image_common_tools_open_is_converted(
    client: Client, name: str, data: bytes, size: tuple[int, int]
) -> None:
    # Pillow alone, strict, refuses it
    with pytest.raises((OSError, SyntaxError)), Image.open(io.BytesIO(data)) as image:
        image.load()
    job = await client.convert(data, name, "png")
    assert job["status"]["code"] == "completed", job["errors"]
    (output,) = job["output"]
    _, body, _ = await client.download(output["uri"])
    assert _png_size(body) == size
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # the tolerance was only lent


async def test_a_valid_1x1_png_converts_to_every_image_target(client: Client) -> None:
    for mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"):
        out = io.BytesIO()
        Image.new(mode, (1, 1)).save(out, "PNG")
        for target in ("png", "jpg", "webp", "gif", "bmp", "tiff"):
            (produced,) = conv.convert(out.getvalue(), "dot.png", target, {})
            with Image.open(io.BytesIO(produced.data)) as image:
                assert image.size == (1, 1), (mode, target)
    job = await client.convert(out.getvalue(), "dot.png", "jpg")
    assert job["status"]["code"] == "completed"


async def test_what_is_no_image_is_still_refused(client: Client) -> None:
    for data in (b"not an image", jpeg_cut_short()[:40], png_1x1_bad_text_crc()[:20]):
        job = await client.convert(data, "x.png", "jpg")
        assert job["status"]["code"] == "failed"
        assert job["errors"][0]["code"] == 6005
        assert "not a readable image" in job["errors"][0]["message"]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.fixture
def threaded() -> Iterator[ThreadedEmulator]:
    emulator = ThreadedEmulator()
    yield emulator
    emulator.close()


def test_the_sdk_converts_a_1x1_png_with_a_bad_ancillary_crc(
    threaded: ThreadedEmulator, tmp_path: Path
) -> None:
    source = tmp_path / "dot.png"
    source.write_bytes(png_1x1_bad_text_crc())
    with Api2Convert(KEY, base_url=threaded.emulator.base_url, sleeper=lambda _s: None) as sdk:
        saved = sdk.convert(str(source), "jpg").save(tmp_path / "out")
    with Image.open(saved) as image:
        assert image.format == "JPEG" and image.size == (1, 1)
