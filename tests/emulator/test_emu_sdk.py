"""The official api2convert Python SDK, pointed at the emulator, works unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api2convert import Api2Convert
from emu_helpers import KEY, ThreadedEmulator, png_bytes
from PIL import Image


@pytest.fixture
def threaded() -> Iterator[ThreadedEmulator]:
    emulator = ThreadedEmulator()
    yield emulator
    emulator.close()


def test_sdk_converts_png_to_real_jpeg(threaded: ThreadedEmulator, tmp_path: Path) -> None:
    source = tmp_path / "photo.png"
    source.write_bytes(png_bytes((40, 30), "blue"))
    # The SDK sleeps between polls; hand it a no-op sleeper so the test does not wait.
    with Api2Convert(KEY, base_url=threaded.emulator.base_url, sleeper=lambda _s: None) as sdk:
        result = sdk.convert(str(source), "jpg")
        saved = result.save(tmp_path / "out")
        with Image.open(saved) as image:
            assert image.format == "JPEG"
            assert image.size == (40, 30)

        job = sdk.jobs.get(result.job.id)
        assert job.status.code == "completed"
        assert [j.id for j in sdk.jobs.list()] == [job.id]
        outputs = sdk.jobs.outputs(job.id)
        assert len(outputs) == 1
        assert outputs[0].filename == "photo.jpg"
        assert outputs[0].checksum == threaded.snapshot()["jobs"][0]["outputs"][0]["checksum"]

    snapshot = threaded.snapshot()
    assert snapshot["jobs"][0]["starts"] == 1
    assert snapshot["uploads"][0]["filename"] == "photo.png"


def test_sdk_lists_statuses_and_conversions(threaded: ThreadedEmulator) -> None:
    with Api2Convert(KEY, base_url=threaded.emulator.base_url) as sdk:
        targets = {row["target"] for row in sdk.conversions.list()}
        assert {"png", "jpg", "webp", "gif", "bmp", "tiff", "txt", "html"} <= targets
        assert sdk.options("jpg")  # the SDK's per-target options lookup


def test_sdk_presets_statistics_and_contracts(threaded: ThreadedEmulator, tmp_path: Path) -> None:
    """The presets and statistics guides' calls, through the SDK, unchanged."""
    source = tmp_path / "p.png"
    source.write_bytes(png_bytes((8, 8)))
    with Api2Convert(KEY, base_url=threaded.emulator.base_url, sleeper=lambda _s: None) as sdk:
        made = sdk.presets.create({"name": "small", "target": "jpg", "options": {"quality": 40}})
        assert made.id and made.scope == "private" and made.options == {"quality": 40}
        assert sdk.presets.get(made.id).name == "small"
        assert sdk.presets.update(made.id, {"name": "tiny"}).name == "tiny"
        assert made.id in [p.id for p in sdk.presets.list(target="jpg")]
        sdk.presets.delete(made.id)
        assert made.id not in [p.id for p in sdk.presets.list()]

        job = sdk.convert(str(source), "png").job
        today = job.raw["created_at"][:10]
        (row,) = sdk.stats.day(today, "single")
        assert row["jobs"] == 1 and row["completed"] == 1 and row["credits"] == 1
        assert sdk.stats.month(today[:7]) == sdk.stats.year(today[:4]) == [row | {"filter": "all"}]
        (contract,) = sdk.contracts.get()
        assert contract["max_input_bytes"] > 0
