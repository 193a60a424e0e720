"""Bad input fails the job the way the service documents: `status: failed` and an `errors[]`
entry `{source, id_source, code, message}` whose message says what is wrong; the catalog
(`GET /conversions`) is what target and category checks follow, and it lists only what the
emulator makes."""

from __future__ import annotations

import io
from typing import Any

import pytest
from api2convert import Api2Convert, ConversionFailedError
from emu_helpers import (
    KEY,
    Client,
    MakeClient,
    ThreadedEmulator,
    closed_port_url,
    docx_bytes,
    image_bytes,
    pdf_bytes,
    png_bytes,
    wav_bytes,
)
from PIL import Image

from agent.emulator import catalog
from agent.emulator.convert import Source


async def _run(
    client: Client,
    conversion: dict[str, Any],
    files: list[tuple[str, bytes]],
) -> dict[str, Any]:
    job = await client.create({"conversion": [conversion]})
    for name, data in files:
        status, body = await client.upload(job, data, name)
        assert status == 200, body
    await client.start(job["id"])
    return await client.wait(job["id"])


def _failed_with(job: dict[str, Any], source: str, code: int, *words: str) -> dict[str, Any]:
    assert job["status"]["code"] == "failed" and job["output"] == [], job
    (error,) = job["errors"]
    assert error["source"] == source and error["code"] == code, error
    for word in words:
        assert word in error["message"], (word, error["message"])
    return error


# -- unknown target, category that does not fit ----------------------------------------------
async def test_an_unknown_target_fails_the_job_naming_the_catalog(client: Client) -> None:
    job = await _run(client, {"target": "xyz"}, [("a.png", png_bytes())])
    error = _failed_with(job, "conversion", 6005, "'xyz'", "GET /conversions")
    assert error["id_source"] == job["conversion"][0]["id"]


async def test_a_malformed_target_is_refused_at_once(client: Client) -> None:
    await client.create({"conversion": [{"target": "no.such.format"}]}, expect=422)


async def test_a_category_the_target_is_not_in_fails_the_job(client: Client) -> None:
    job = await _run(client, {"category": "audio", "target": "png"}, [("a.png", png_bytes())])
    _failed_with(job, "conversion", 6005, "not in category 'audio'", "use category image")


@pytest.mark.parametrize(
    ("conversion", "name", "data", "words"),
    [
        ({"category": "audio", "target": "aac"}, "photo.png", png_bytes(), ("holds no audio",)),
        (
            {"category": "image", "target": "png"},
            "song.wav",
            wav_bytes(0.1),
            ("not a readable image",),
        ),
        (
            {"category": "operation", "target": "extract-assets"},
            "photo.png",
            png_bytes(),
            ("reads DOCX, XLSX, PPTX and PDF",),
        ),
        (
            {"category": "operation", "target": "resize-image", "options": {"width": 5}},
            "doc.pdf",
            pdf_bytes(),
            ("not a readable image",),
        ),
    ],
    ids=["png-to-aac", "wav-to-png", "png-to-extract-assets", "pdf-to-resize-image"],
)
async def test_an_input_the_category_does_not_fit_fails_the_job(
    client: Client, conversion: dict[str, Any], name: str, data: bytes, words: tuple[str, ...]
) -> None:
    job = await _run(client, conversion, [(name, data)])
    _failed_with(job, "conversion", 6005, name, *words)


async def test_a_bad_option_value_is_refused_when_the_job_is_created(client: Client) -> None:
    for options in ({"compression_level": "extreme"}, {"threshold": 101}, {"stamp": "yes"}):
        target = {"compression_level": "compress", "threshold": "compare-image"}.get(
            next(iter(options)), "pdf"
        )
        await client.create({"conversion": [{"target": target, "options": options}]}, expect=400)
    await client.create(
        {"conversion": [{"target": "compare-image", "options": {"diff_color": "not-a-colour"}}]},
        expect=400,
    )


# -- corrupt inputs -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("target", "category", "name", "data", "words"),
    [
        ("thumbnail", "operation", "cut.pdf", pdf_bytes()[:200], ("not a readable PDF",)),
        ("pdf", "document", "cut.pdf", pdf_bytes()[:200], ("not a readable PDF",)),
        ("txt", "document", "bad.docx", docx_bytes(["x"])[:60], ("not",)),
        ("aac", "audio", "noise.wav", b"RIFF\x10\x00\x00\x00WAVEjunkjunk", ("noise.wav",)),
        ("extract-assets", "operation", "bad.docx", b"PK\x03\x04" + b"\x00" * 40, ("bad.docx",)),
        ("png", "image", "half.png", png_bytes()[:30], ("not a readable image",)),
    ],
    ids=[
        "thumbnail-cut-pdf",
        "pdf-cut-pdf",
        "txt-cut-docx",
        "aac-junk-wav",
        "assets-bad-zip",
        "png-cut",
    ],
)
async def test_a_corrupt_input_fails_the_job_with_6005(
    client: Client, target: str, category: str, name: str, data: bytes, words: tuple[str, ...]
) -> None:
    job = await _run(client, {"target": target, "category": category}, [(name, data)])
    _failed_with(job, "conversion", 6005, *words)


# -- unreachable sources ------------------------------------------------------------------------
@pytest.mark.parametrize("engine", [None, "screenshot"])
async def test_an_unreachable_url_fails_the_job_with_input_code_404(
    client: Client, engine: str | None
) -> None:
    remote: dict[str, Any] = {"type": "remote", "source": closed_port_url()}
    if engine:
        remote["engine"] = engine
    job = await client.create(
        {"process": True, "input": [remote], "conversion": [{"target": "png"}]}
    )
    job = await client.wait(job["id"])
    error = _failed_with(job, "input", 404, "could not be downloaded")
    assert error["id_source"] == job["input"][0]["id"]
    assert job["input"][0]["status"] == "failed"


def test_the_sdk_reports_an_unreachable_capture_as_a_failed_conversion() -> None:
    emulator = ThreadedEmulator()
    try:
        with Api2Convert(KEY, base_url=emulator.emulator.base_url) as sdk:
            job = sdk.jobs.create(
                {
                    "process": True,
                    "input": [
                        {"type": "remote", "source": closed_port_url(), "engine": "screenshot"}
                    ],
                    "conversion": [{"category": "image", "target": "png"}],
                }
            )
            with pytest.raises(ConversionFailedError) as failure:
                sdk.jobs.wait(job.id)
            (error,) = failure.value.errors()
            assert error.code == 404 and "could not be downloaded" in error.message
    finally:
        emulator.close()


# -- too many inputs ----------------------------------------------------------------------------
async def test_compare_image_with_three_inputs_fails_the_job(client: Client) -> None:
    three = [
        (f"{n}.png", png_bytes((8, 8), c))
        for n, c in zip("abc", ("red", "blue", "white"), strict=True)
    ]
    job = await _run(client, {"target": "compare-image"}, three)
    _failed_with(job, "conversion", 6005, "exactly 2 inputs", "has 3")
    assert len(job["input"]) == 3


async def test_a_stamp_with_one_input_fails_the_job(client: Client) -> None:
    job = await _run(
        client, {"target": "pdf", "options": {"stamp": True}}, [("d.pdf", pdf_bytes())]
    )
    _failed_with(job, "conversion", 6005, "2 inputs", "the document, then the stamp")


async def test_an_upload_past_the_contracts_input_count_is_402(make_client: MakeClient) -> None:
    client = await make_client(max_inputs=2)
    job = await client.create({"conversion": [{"target": "zip"}]})
    for name in ("a.png", "b.png"):
        status, _ = await client.upload(job, png_bytes(), name)
        assert status == 200
    status, body = await client.upload(job, png_bytes(), "c.png")
    assert status == 402
    assert "number of inputs" in body["message"] and "allows 2" in body["message"]
    async with client.session.post(
        f"{client.base}/jobs/{job['id']}/input",
        json={"type": "remote", "source": closed_port_url()},
        headers=client.key_headers,
    ) as response:
        assert response.status == 402
    assert len((await client.get(job["id"]))["input"]) == 2
    await client.start(job["id"])
    done = await client.wait(job["id"])
    assert done["status"]["code"] == "completed"  # the two it kept are archived


async def test_inline_inputs_past_the_count_are_discarded_and_fail_the_job(
    make_client: MakeClient,
) -> None:
    client = await make_client(max_inputs=2)
    inputs = [{"type": "remote", "source": closed_port_url(f"/{n}.png")} for n in "abc"]
    job = await client.create({"process": True, "input": inputs, "conversion": [{"target": "zip"}]})
    job = await client.wait(job["id"])
    assert job["status"]["code"] == "failed"
    third = job["input"][2]
    assert third["status"] == "failed"
    discarded = [e for e in job["errors"] if e["id_source"] == third["id"]]
    assert discarded and discarded[0]["code"] == 402
    assert "allows 2" in discarded[0]["message"]


# -- the catalog lists what the emulator makes, and only that -----------------------------------
def _sample_for(category: str, target: str) -> list[Source]:
    def src(name: str, data: bytes, **extra: Any) -> Source:
        return Source(id=name, filename=name, data=data, **extra)

    if target == "compare-image":
        return [src("a.png", png_bytes((8, 8), "red")), src("b.png", png_bytes((8, 8), "blue"))]
    if target == "extract-assets":
        return [src("d.docx", docx_bytes(["x"], {"image1.png": png_bytes()}))]
    if category == "audio":
        return [src("s.wav", wav_bytes(0.1))]
    if target == "thumbnail":
        return [src("d.pdf", pdf_bytes())]
    if category in ("image", "operation", "metadata"):
        return [src("p.jpg", image_bytes((32, 24)))]
    if target == "zip":
        return [src("notes.txt", b"Some notes\n"), src("p.png", png_bytes())]
    return [src("notes.txt", b"Some notes\n")]


async def test_get_conversions_lists_every_target_with_its_options(client: Client) -> None:
    async with client.session.get(f"{client.base}/conversions") as response:
        rows = await response.json()
    assert {(r["category"], r["target"]) for r in rows} == {
        (e.category, e.target) for e in catalog.ENTRIES
    }
    assert len({r["id"] for r in rows}) == len(rows)
    async with client.session.get(f"{client.base}/conversions?category=operation") as response:
        operations = {r["target"] for r in await response.json()}
    assert {
        "resize-image",
        "compress",
        "thumbnail",
        "compare-image",
        "extract-assets",
    } <= operations


@pytest.mark.parametrize("entry", catalog.ENTRIES, ids=lambda e: f"{e.category}-{e.target}")
def test_every_listed_target_is_made_for_real(entry: catalog.Entry) -> None:
    sources = _sample_for(entry.category, entry.target)
    options = {"width": 10} if entry.target == "resize-image" else {}
    ((_, produced),) = catalog.run(entry.target, entry.category, options, sources)
    assert not isinstance(produced, Exception), produced
    assert produced and all(p.data for p in produced)
    if entry.category == "image":
        with Image.open(io.BytesIO(produced[0].data)) as image:
            assert image.format.lower().replace("jpeg", "jpg") == entry.target
