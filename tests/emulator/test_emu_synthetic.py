"""`synthetic_output_bytes`: large outputs for download benchmarks without large uploads."""

from __future__ import annotations

import hashlib

import pytest
from emu_helpers import MakeClient, png_bytes

from agent.emulator import EmulatorConfig
from agent.emulator.config import ConfigError


async def test_every_output_becomes_the_synthetic_pattern(make_client: MakeClient) -> None:
    size = 3 * (1 << 20) + 17  # not a multiple of the 1 MiB block
    client = await make_client(synthetic_output_bytes=size)
    first = (await client.convert(png_bytes(), "a.png", "jpg"))["output"][0]
    second = (await client.convert(png_bytes((8, 8)), "b.png", "png"))["output"][0]
    assert first["size"] == second["size"] == size
    assert first["checksum"] == second["checksum"]  # one pattern, shared by every job
    status, body, headers = await client.download(first["uri"])
    assert status == 200 and len(body) == size
    assert hashlib.md5(body).hexdigest() == first["checksum"]
    assert headers["ETag"] == f'"{first["checksum"]}"'
    status, tail, _ = await client.download(first["uri"], {"Range": f"bytes={size - 10}-"})
    assert status == 206 and tail == body[-10:]


async def test_zero_keeps_real_conversions(make_client: MakeClient) -> None:
    client = await make_client()
    out = (await client.convert(png_bytes(), "a.png", "jpg"))["output"][0]
    _, body, _ = await client.download(out["uri"])
    assert body[:3] == b"\xff\xd8\xff"  # a real JPEG


def test_negative_size_is_refused() -> None:
    with pytest.raises(ConfigError, match="synthetic_output_bytes"):
        EmulatorConfig(synthetic_output_bytes=-1)


async def test_a_large_output_is_streamed_whole_and_by_range(make_client: MakeClient) -> None:
    from agent.emulator.files import STREAM_ABOVE

    size = STREAM_ABOVE + 12345
    client = await make_client(synthetic_output_bytes=size)
    out = (await client.convert(png_bytes(), "a.png", "jpg"))["output"][0]
    status, body, headers = await client.download(out["uri"])
    assert status == 200 and int(headers["Content-Length"]) == size
    assert hashlib.md5(body).hexdigest() == out["checksum"]
    status, part, headers = await client.download(out["uri"], {"Range": "bytes=100-"})
    assert status == 206 and part == body[100:]
    assert headers["Content-Range"] == f"bytes 100-{size - 1}/{size}"
