"""Write the gallery's sample inputs (deterministic: the same bytes on every run).

    .venv/bin/python docs/examples/make_inputs.py          # rewrite them all
    .venv/bin/python docs/examples/make_inputs.py --check  # exit 1 if a committed file differs

Each example folder lists the inputs it uses in ``INPUTS`` below; the files are committed, so a
reader can drop a folder's contents into a watched folder as they are.
"""

from __future__ import annotations

import io
import math
import random
import struct
import sys
import wave
import zipfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
_STAMP = (2024, 1, 1, 0, 0, 0)  # fixed zip member times: same bytes on every run


def photo_jpg() -> bytes:
    """A 160×120 photo-like JPEG (gradient + fixed noise) at quality 95: it compresses well."""
    rng = random.Random(11)
    img = Image.new("RGB", (160, 120))
    px = img.load()
    assert px is not None
    for y in range(120):
        for x in range(160):
            n = rng.randint(-24, 24)
            px[x, y] = (min(255, max(0, x + 60 + n)), min(255, max(0, y * 2 + n)), 140 + n // 2)
    ImageDraw.Draw(img).ellipse((50, 30, 110, 90), fill=(250, 200, 40))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=95)
    return out.getvalue()


def pixel_png() -> bytes:
    """The SDK guide's own minimal valid 1×1 PNG."""
    return bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de"
        "0000000c4944415408d763f8cfc00000000301010018dd8db00000000049454e44ae426082"
    )


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def stamp_png() -> bytes:
    """A 64×32 semi-transparent logo to stamp onto a document."""
    img = Image.new("RGBA", (64, 32), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle((1, 1, 62, 30), radius=6, fill=(200, 30, 30, 180))
    draw.text((10, 10), "DRAFT", fill=(255, 255, 255, 255))
    return _png(img)


def before_png() -> bytes:
    img = Image.new("RGB", (120, 80), (235, 235, 235))
    ImageDraw.Draw(img).rectangle((10, 10, 50, 50), fill=(30, 90, 200))
    return _png(img)


def after_png() -> bytes:
    img = Image.new("RGB", (120, 80), (235, 235, 235))
    draw = ImageDraw.Draw(img)
    draw.rectangle((10, 10, 50, 50), fill=(30, 90, 200))
    draw.rectangle((70, 30, 100, 60), fill=(220, 40, 40))  # the difference
    return _png(img)


def document_pdf() -> bytes:
    """A one-page A6 PDF with a line of text (Helvetica), xref offsets computed."""
    text = b"BT /F1 18 Tf 30 300 Td (Quarterly report) Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 298 420] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n" % len(text) + text + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, _STAMP)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return out.getvalue()


def logo_png() -> bytes:
    """The image embedded in document.docx (what extract-assets pulls out)."""
    img = Image.new("RGB", (48, 48), (255, 255, 255))
    ImageDraw.Draw(img).polygon([(24, 4), (44, 44), (4, 44)], fill=(20, 140, 60))
    return _png(img)


_W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
_R = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_REL = "http://schemas.openxmlformats.org/package/2006/relationships"


def document_docx() -> bytes:
    """A minimal Word document: one paragraph and one inline picture (word/media/logo.png)."""
    emu = 48 * 9525  # 48 px in EMU
    drawing = (
        f'<w:drawing><wp:inline><wp:extent cx="{emu}" cy="{emu}"/><wp:docPr id="1" name="logo"/>'
        '<a:graphic><a:graphicData uri="http://schemas.openxmlformats.org/drawingml/2006/picture">'
        '<pic:pic><pic:nvPicPr><pic:cNvPr id="1" name="logo.png"/><pic:cNvPicPr/></pic:nvPicPr>'
        '<pic:blipFill><a:blip r:embed="rIdLogo"/><a:stretch><a:fillRect/></a:stretch>'
        '</pic:blipFill><pic:spPr><a:xfrm><a:off x="0" y="0"/>'
        f'<a:ext cx="{emu}" cy="{emu}"/></a:xfrm>'
        '<a:prstGeom prst="rect"><a:avLst/></a:prstGeom></pic:spPr></pic:pic></a:graphicData>'
        "</a:graphic></wp:inline></w:drawing>"
    )
    document = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        f'<w:document xmlns:w="{_W}" xmlns:r="{_R}" '
        'xmlns:wp="http://schemas.openxmlformats.org/drawingml/2006/wordprocessingDrawing" '
        'xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main" '
        'xmlns:pic="http://schemas.openxmlformats.org/drawingml/2006/picture"><w:body>'
        "<w:p><w:r><w:t>Quarterly report</w:t></w:r></w:p>"
        f"<w:p><w:r>{drawing}</w:r></w:p>"
        "</w:body></w:document>"
    )
    content_types = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
        'relationships+xml"/><Default Extension="xml" ContentType="application/xml"/>'
        '<Default Extension="png" ContentType="image/png"/>'
        '<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-'
        'officedocument.wordprocessingml.document.main+xml"/></Types>'
    )
    rels = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        f'<Relationships xmlns="{_REL}"><Relationship Id="rId1" Type="http://schemas.'
        'openxmlformats.org/officeDocument/2006/relationships/officeDocument" '
        'Target="word/document.xml"/></Relationships>'
    )
    doc_rels = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        f'<Relationships xmlns="{_REL}"><Relationship Id="rIdLogo" Type="http://schemas.'
        'openxmlformats.org/officeDocument/2006/relationships/image" '
        'Target="media/logo.png"/></Relationships>'
    )
    return _zip(
        [
            ("[Content_Types].xml", content_types.encode()),
            ("_rels/.rels", rels.encode()),
            ("word/document.xml", document.encode()),
            ("word/_rels/document.xml.rels", doc_rels.encode()),
            ("word/media/logo.png", logo_png()),
        ]
    )


def tone_wav() -> bytes:
    """A quarter second of a 440 Hz tone: 16-bit mono PCM at 22,050 Hz."""
    rate = 22050
    frames = b"".join(
        struct.pack("<h", int(12000 * math.sin(2 * math.pi * 440 * i / rate)))
        for i in range(rate // 4)
    )
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return out.getvalue()


def notes_txt() -> bytes:
    return b"Shopping list\n- bread <fresh>\n- milk & honey\n"


def data_csv() -> bytes:
    return b"month,visits\n2024-01,120\n2024-02,134\n2024-03,151\n"


def page_html() -> bytes:
    return (
        b"<!doctype html><html><head><title>Example page</title></head>"
        b'<body style="background:#1e5aa8;color:#fff"><h1>Example page</h1>'
        b"<p>Served on loopback for the capture-website example.</p></body></html>\n"
    )


MAKERS: dict[str, Callable[[], bytes]] = {
    "photo.jpg": photo_jpg,
    "pixel.png": pixel_png,
    "stamp.png": stamp_png,
    "before.png": before_png,
    "after.png": after_png,
    "document.pdf": document_pdf,
    "document.docx": document_docx,
    "tone.wav": tone_wav,
    "notes.txt": notes_txt,
    "data.csv": data_csv,
    "page.html": page_html,
}

#: example folder → the inputs it holds.
INPUTS: dict[str, tuple[str, ...]] = {
    "quickstart": ("photo.jpg",),
    "convert-files": ("photo.jpg", "notes.txt"),
    "uploading-files": ("pixel.png",),
    "job-lifecycle": ("photo.jpg",),
    "add-watermark": ("document.pdf", "stamp.png"),
    "create-thumbnails": ("document.pdf",),
    "compress-files": ("photo.jpg",),
    "create-archives": ("photo.jpg", "notes.txt", "data.csv"),
    "create-hashes": ("document.pdf",),
    "extract-assets": ("document.docx",),
    "file-analysis": ("photo.jpg",),
    "compare-files": ("before.png", "after.png"),
    "capture-website": ("page.html",),
    "audio-operations": ("tone.wav",),
    "image-operations": ("photo.jpg",),
    "webhooks": ("notes.txt",),
    "presets": ("photo.jpg",),
    "statistics": ("photo.jpg",),
    "rate-limits": ("photo.jpg", "stamp.png", "before.png"),
    "authentication": ("stamp.png",),
}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for folder, names in INPUTS.items():
        for name in names:
            path = HERE / folder / name
            data = MAKERS[name]()
            if check:
                if not path.is_file() or path.read_bytes() != data:
                    stale.append(str(path))
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    for path in stale:
        print(f"differs from what make_inputs.py writes: {path}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
