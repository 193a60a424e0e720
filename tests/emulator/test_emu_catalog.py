"""The catalog's operations in detail, called directly (the HTTP path is covered by the guides'
tests): each option changes the result the way docs/emulator.md says."""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import av
import pypdf
import pypdfium2 as pdfium
import pytest
from emu_helpers import docx_bytes, image_bytes, pdf_bytes, png_bytes, wav_bytes
from PIL import Image

from agent.emulator import catalog, documents, operations
from agent.emulator.convert import ConversionFailed, Produced, Source


def _make(
    target: str,
    category: str | None,
    conv_options: dict[str, Any],
    *files: tuple[str, bytes],
    **kw: Any,
) -> list[Produced]:
    sources = [Source(id=name, filename=name, data=data, **kw) for name, data in files]
    ((_, produced),) = catalog.run(target, category, conv_options, sources)
    if isinstance(produced, ConversionFailed):
        raise produced
    return produced


def _image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize(
    ("options", "size"),
    [
        ({"width": 100, "height": 100, "resize_handling": "keep_aspect_ratio"}, (100, 50)),
        ({"width": 100, "height": 100, "resize_handling": "keep_aspect_ratio_crop"}, (100, 100)),
        ({"width": 100, "height": 100, "resize_handling": "keep_aspect_ratio_fill"}, (100, 100)),
        ({"width": 100, "height": 100, "resize_handling": "stretch"}, (100, 100)),
        ({"width": 50}, (50, 25)),
        ({"height": 10}, (20, 10)),
        ({"width": 50, "resize_by": "percent"}, (100, 50)),
    ],
)
def test_resize_image_handlings(options: dict[str, Any], size: tuple[int, int]) -> None:
    (out,) = _make("resize-image", "operation", options, ("p.png", png_bytes((200, 100))))
    image = _image(out.data)
    assert image.size == size and image.format == "PNG" and out.filename == "p.png"
    if options.get("resize_handling") == "keep_aspect_ratio_fill":
        assert image.convert("RGBA").getpixel((50, 5))[3] == 0  # padded, not stretched


def test_resize_image_refuses_a_size_past_the_pixel_cap() -> None:
    with pytest.raises(ConversionFailed, match="at most"):
        _make(
            "resize-image",
            None,
            {"width": 10000, "height": 10000, "resize_handling": "stretch"},
            ("p.png", png_bytes()),
        )


def test_compress_png_is_never_larger_and_still_decodes() -> None:
    data = image_bytes((80, 60), fmt="PNG")
    (out,) = _make("compress", None, {"compression_level": "high"}, ("p.png", data))
    assert len(out.data) <= len(data)
    assert _image(out.data).size == (80, 60)


def test_thumbnail_of_an_image_and_of_every_pdf_page() -> None:
    (thumb,) = _make(
        "thumbnail", None, {"width": 40, "thumbnail_target": "jpg"}, ("p.png", png_bytes((80, 40)))
    )
    assert thumb.filename == "p.jpg" and _image(thumb.data).size == (40, 20)
    pages = _make("thumbnail", None, {"pages": "all", "height": 50}, ("d.pdf", pdf_bytes(pages=2)))
    assert [p.filename for p in pages] == ["d-1.png", "d-2.png"]
    assert all(_image(p.data).height == 50 for p in pages)


def test_a_stamp_lands_where_alignment_says() -> None:
    (out,) = _make(
        "pdf",
        "document",
        {"stamp": True, "alignment": "top-left"},
        ("d.pdf", pdf_bytes("Body")),
        ("s.png", png_bytes((60, 60), "blue")),
    )
    page = pdfium.PdfDocument(out.data)[0]
    picture = page.render(scale=1).to_pil().convert("RGB")
    assert picture.getpixel((18 + 30, 18 + 30)) == (0, 0, 255)  # 18 pt margin, 60 pt stamp
    w, h = picture.size
    assert picture.getpixel((w - 40, h - 40)) == (255, 255, 255)


def test_an_image_becomes_a_pdf_page_of_its_size() -> None:
    (out,) = _make("pdf", None, {}, ("p.png", png_bytes((120, 80))))
    page = pypdf.PdfReader(io.BytesIO(out.data)).pages[0]
    assert (float(page.mediabox.width), float(page.mediabox.height)) == (120, 80)
    assert len(page.images) == 1


def test_text_comes_out_of_docx_and_pdf_and_goes_into_a_pdf() -> None:
    (txt,) = _make("txt", None, {}, ("l.docx", docx_bytes(["First line", "Second line"])))
    assert txt.data == b"First line\nSecond line"
    (txt,) = _make("txt", None, {}, ("r.pdf", pdf_bytes("Annual figures")))
    assert b"Annual figures" in txt.data
    (pdf,) = _make("pdf", None, {}, ("n.md", b"# Notes\n\nAbout caf\xc3\xa9s\n"))
    text = pypdf.PdfReader(io.BytesIO(pdf.data)).pages[0].extract_text()
    assert "# Notes" in text and "cafés" in text
    html = b"<html><title>T</title><body><p>Shown</p><script>hidden()</script></body></html>"
    (pdf,) = _make("pdf", None, {}, ("page.html", html))
    text = pypdf.PdfReader(io.BytesIO(pdf.data)).pages[0].extract_text()
    assert "Shown" in text and "hidden" not in text


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256", "sha512"])
def test_hashes(algorithm: str) -> None:
    data = b"hash me"
    (out,) = _make(algorithm, "hash", {}, ("f.bin", data))
    assert out.data == f"{hashlib.new(algorithm, data).hexdigest()}\n".encode()
    assert out.filename == f"f.{algorithm}"


def test_metadata_of_a_pdf_a_docx_audio_and_text() -> None:
    facts = [
        json.loads(_make("json", "metadata", {}, (name, data))[0].data)
        for name, data in (
            ("d.pdf", pdf_bytes(pages=3)),
            ("l.docx", docx_bytes(["x"])),
            ("s.wav", wav_bytes(0.25, 8000)),
            ("n.txt", b"a\nb\n"),
        )
    ]
    assert facts[0]["kind"] == "pdf" and facts[0]["pdf"]["pages"] == 3
    assert facts[1]["kind"] == "docx" and "word/document.xml" in facts[1]["names"]
    assert facts[2]["kind"] == "audio" and facts[2]["audio"]["sample_rate"] == 8000
    assert abs(facts[2]["audio"]["duration_seconds"] - 0.25) < 0.05
    assert facts[3]["text"] == {"characters": 4, "lines": 3}


@pytest.mark.parametrize(("target", "codec"), [("flac", "flac"), ("wav", "pcm_s16le")])
def test_audio_targets_decode(target: str, codec: str) -> None:
    (out,) = _make(
        target, "audio", {"channels": "mono", "frequency": 16000}, ("s.wav", wav_bytes())
    )
    with av.open(io.BytesIO(out.data)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == codec
        assert stream.codec_context.sample_rate == 16000 and stream.codec_context.channels == 1


def test_extract_assets_from_a_pdf() -> None:
    (stamped,) = _make("pdf", None, {}, ("p.png", png_bytes((30, 20), "green")))
    (asset,) = _make("extract-assets", "operation", {}, ("d.pdf", stamped.data))
    assert asset.filename.startswith("page1-")
    assert _image(asset.data).size == (30, 20)


def test_a_huge_capture_screen_is_drawn_at_the_pixel_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(operations, "MAX_PIXELS", 1_000_000)  # the real cap, scaled down
    (out,) = _make(
        "png",
        "image",
        {},
        ("page.html", b"<p>hi</p>"),
        engine="screenshot",
        options={"screen_width": 2000, "screen_height": 1000, "device_scale_factor": 2},
    )
    width, height = _image(out.data).size
    assert width == 2 * height and 990_000 <= width * height <= 1_000_000


def test_an_office_file_that_unpacks_too_big_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(documents, "MAX_UNPACKED", 1000)  # the real cap, scaled down
    bomb = docx_bytes(["x" * 2000], {"big.bin": b"\0" * 5000})
    for target in ("extract-assets", "txt"):
        with pytest.raises(ConversionFailed, match="unpacks to"):
            _make(target, None, {}, ("bomb.docx", bomb))
