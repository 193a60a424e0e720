"""Documents for the catalog, each made for real by a kept library: text out of DOCX, HTML and
PDF files; text into a PDF (fpdf2); images into a PDF (Pillow); PDF pages rendered to images
(pypdfium2); a stamp placed on a PDF, embedded images pulled out of a PDF and a PDF's streams
recompressed (pypdf). Pure: bytes in, bytes out.

Failures raise `ConversionFailed` (conversion code 6005) with a message that says what is wrong
with the input.
"""

from __future__ import annotations

import io
import posixpath
import threading
import zipfile
from html.parser import HTMLParser
from typing import Any
from xml.etree import ElementTree

from PIL import Image

from agent.emulator.convert import MAX_PIXELS, ConversionFailed, decode_image

#: Where Office Open XML documents keep their embedded media.
MEDIA_DIRS = ("word/media/", "xl/media/", "ppt/media/")
_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
#: Most bytes unpacked from one Office file (a zip bomb fails instead of filling the memory).
MAX_UNPACKED = 256 * 1024 * 1024
#: PDFium is not thread-safe and conversions run in worker threads: one render at a time.
_PDFIUM = threading.Lock()
ALIGNMENTS = (
    "center",
    "top-left",
    "top",
    "top-right",
    "left",
    "right",
    "bottom-left",
    "bottom",
    "bottom-right",
)


# -- recognising inputs -------------------------------------------------------------------
def is_pdf(data: bytes) -> bool:
    return b"%PDF-" in data[:1024]


def office_kind(data: bytes) -> str | None:
    """`docx`, `xlsx` or `pptx` for an Office Open XML file, else None."""
    if not data.startswith(b"PK\x03\x04"):
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    for kind, marker in (
        ("docx", "word/document.xml"),
        ("xlsx", "xl/workbook.xml"),
        ("pptx", "ppt/presentation.xml"),
    ):
        if marker in names:
            return kind
    return None


def looks_like_html(data: bytes, filename: str, content_type: str) -> bool:
    if content_type.split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml"):
        return True
    if posixpath.splitext(filename)[1].lower() in (".html", ".htm", ".xhtml"):
        return True
    head = data[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


def plain_text(data: bytes) -> str:
    """UTF-8 text with LF newlines, or ConversionFailed."""
    if b"\x00" in data:
        raise ConversionFailed("The input file is not plain text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConversionFailed("The input file is not UTF-8 text") from exc
    return text.replace("\r\n", "\n").replace("\r", "\n")


# -- text out of documents ----------------------------------------------------------------
def docx_text(data: bytes) -> str:
    """The paragraphs of a DOCX's main document, one per line (tabs and breaks kept)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            _check_unpacked([archive.getinfo("word/document.xml")])
            xml = archive.read("word/document.xml")
        root = ElementTree.fromstring(xml)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError, ElementTree.ParseError) as exc:
        raise ConversionFailed(f"The input file is not a readable DOCX document: {exc}") from exc
    lines: list[str] = []
    for paragraph in root.iter(f"{_W}p"):
        parts: list[str] = []
        for node in paragraph.iter():
            if node.tag == f"{_W}t" and node.text:
                parts.append(node.text)
            elif node.tag == f"{_W}tab":
                parts.append("\t")
            elif node.tag in (f"{_W}br", f"{_W}cr"):
                parts.append("\n")
        lines.append("".join(parts))
    return "\n".join(lines)


class _TextOfHtml(HTMLParser):
    BLOCKS = frozenset(
        [
            "p",
            "div",
            "br",
            "li",
            "tr",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "section",
            "article",
            "header",
            "footer",
            "pre",
            "table",
            "ul",
            "ol",
        ]
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "noscript", "template"):
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "noscript", "template"):
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skip:
            self.parts.append(data)


def html_text(data: bytes) -> tuple[str, str]:
    """(title, visible text) of an HTML page; whitespace runs inside a line are collapsed."""
    text = data.decode("utf-8", errors="replace")
    parser = _TextOfHtml()
    parser.feed(text)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).split("\n")]
    body = "\n".join(line for line in lines if line)
    return " ".join(parser.title.split()), body


def check_pdf(data: bytes) -> bytes:
    """`data` if it is a PDF pypdf can read with at least one page, else ConversionFailed."""
    import pypdf

    try:
        pages = len(pypdf.PdfReader(io.BytesIO(data)).pages)
    except (pypdf.errors.PyPdfError, OSError, ValueError, KeyError) as exc:
        raise ConversionFailed(f"The input file is not a readable PDF: {exc}") from exc
    if pages == 0:
        raise ConversionFailed("The input PDF has no pages")
    return data


def pdf_text(data: bytes) -> str:
    import pypdf

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        return "\n".join((page.extract_text() or "") for page in reader.pages)
    except (pypdf.errors.PyPdfError, OSError, ValueError, KeyError) as exc:
        raise ConversionFailed(f"The input file is not a readable PDF: {exc}") from exc


def document_text(data: bytes, filename: str, content_type: str) -> str:
    """The text of a PDF, a DOCX, an HTML page or a plain-text file."""
    if is_pdf(data):
        return pdf_text(data)
    kind = office_kind(data)
    if kind == "docx":
        return docx_text(data)
    if kind is not None:
        raise ConversionFailed(f"Text cannot be taken out of a {kind.upper()} file here")
    if looks_like_html(data, filename, content_type):
        title, body = html_text(data)
        return f"{title}\n\n{body}" if title and title not in body else body
    return plain_text(data)


# -- into a PDF ---------------------------------------------------------------------------
def text_pdf(text: str, title: str) -> bytes:
    """A PDF (A4, Helvetica 11 pt) whose pages hold `text`. The core font covers Latin-1; other
    characters are written as `?` (simplified: no embedded Unicode font)."""
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_title(title[:200])
    pdf.set_creator("api2convert emulator (fpdf2)")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    pdf.set_font("helvetica", size=11)
    safe = text.expandtabs(4).encode("latin-1", "replace").decode("latin-1")
    pdf.multi_cell(0, 5.5, safe)
    return bytes(pdf.output())


def images_pdf(frames: list[Image.Image]) -> bytes:
    """One page per frame, each image at 72 dpi (one pixel, one point), embedded losslessly
    with its transparency (fpdf2), as a stamp needs."""
    from fpdf import FPDF

    pdf = FPDF(unit="pt", format=(frames[0].width, frames[0].height))
    pdf.set_creator("api2convert emulator (fpdf2)")
    pdf.set_auto_page_break(auto=False)
    for frame in frames:
        image = frame if frame.mode in ("RGB", "RGBA", "L", "LA") else frame.convert("RGBA")
        pdf.add_page(format=(image.width, image.height))
        pdf.image(image, x=0, y=0, w=image.width, h=image.height)
    return bytes(pdf.output())


# -- PDF pages to images ------------------------------------------------------------------
def render_pages(data: bytes, dpi: int, first_only: bool) -> list[Image.Image]:
    """PDF pages rendered by PDFium at `dpi` (scaled down if a page would pass the pixel cap)."""
    import pypdfium2 as pdfium

    with _PDFIUM:
        try:
            document = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as exc:
            raise ConversionFailed(f"The input file is not a readable PDF: {exc}") from exc
        try:
            count = len(document)
            if count == 0:
                raise ConversionFailed("The PDF has no pages")
            images = []
            for index in range(1 if first_only else count):
                page = document[index]
                width, height = page.get_size()
                scale = dpi / 72.0
                if width * height * scale * scale > MAX_PIXELS:
                    scale = (MAX_PIXELS / max(1.0, width * height)) ** 0.5
                images.append(page.render(scale=scale).to_pil().convert("RGB"))
                page.close()
            return images
        finally:
            document.close()


# -- stamp, assets, compression (pypdf) ---------------------------------------------------
def _stamp_page(stamp: bytes) -> Any:
    import pypdf

    if is_pdf(stamp):
        try:
            return pypdf.PdfReader(io.BytesIO(stamp)).pages[0]
        except (pypdf.errors.PyPdfError, IndexError, OSError, ValueError) as exc:
            raise ConversionFailed(f"The stamp is not a readable PDF: {exc}") from exc
    frames = decode_image(stamp, "The stamp (the second input) is not a readable image or PDF")
    return pypdf.PdfReader(io.BytesIO(images_pdf(frames[:1]))).pages[0]


def stamp_pdf(document: bytes, stamp: bytes, alignment: str) -> bytes:
    """Every page of `document` with `stamp` (an image or a PDF's first page) placed on top at
    `alignment`, scaled down to at most half the page's width and height."""
    import pypdf

    try:
        reader = pypdf.PdfReader(io.BytesIO(document))
        writer = pypdf.PdfWriter(clone_from=reader)
    except (pypdf.errors.PyPdfError, OSError, ValueError) as exc:
        raise ConversionFailed(f"The document to stamp is not a readable PDF: {exc}") from exc
    overlay = _stamp_page(stamp)
    sw, sh = float(overlay.mediabox.width), float(overlay.mediabox.height)
    margin = 18.0
    for page in writer.pages:
        box = page.mediabox
        pw, ph, left, bottom = (
            float(box.width),
            float(box.height),
            float(box.left),
            float(box.bottom),
        )
        scale = min(1.0, pw * 0.5 / max(sw, 1.0), ph * 0.5 / max(sh, 1.0))
        w, h = sw * scale, sh * scale
        x = {"left": margin, "right": pw - w - margin}
        y = {"top": ph - h - margin, "bottom": margin}
        parts = alignment.split("-")
        vertical = next((p for p in parts if p in ("top", "bottom")), "")
        horizontal = next((p for p in parts if p in ("left", "right")), "")
        tx = left + x.get(horizontal, (pw - w) / 2)
        ty = bottom + y.get(vertical, (ph - h) / 2)
        transform = pypdf.Transformation().scale(scale, scale).translate(tx, ty)
        page.merge_transformed_page(overlay, transform)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def pdf_images(data: bytes) -> list[tuple[str, bytes]]:
    """(name, bytes) of every image embedded in a PDF's pages, in page order."""
    import pypdf

    found: list[tuple[str, bytes]] = []
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        for number, page in enumerate(reader.pages, start=1):
            for image in page.images:
                found.append((f"page{number}-{posixpath.basename(image.name)}", image.data))
    except (pypdf.errors.PyPdfError, OSError, ValueError, KeyError) as exc:
        raise ConversionFailed(f"The input file is not a readable PDF: {exc}") from exc
    return found


def _check_unpacked(members: list[zipfile.ZipInfo]) -> None:
    total = sum(info.file_size for info in members)
    if total > MAX_UNPACKED:
        raise ConversionFailed(
            f"The document unpacks to {total} bytes; at most {MAX_UNPACKED} are read here"
        )


def office_media(data: bytes) -> list[tuple[str, bytes]]:
    """(name, bytes) of the media an Office Open XML file embeds (`word/media/*` and kin)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            media = [
                info
                for info in archive.infolist()
                if info.filename.startswith(MEDIA_DIRS) and not info.is_dir()
            ]
            _check_unpacked(media)
            return [(posixpath.basename(info.filename), archive.read(info)) for info in media]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ConversionFailed(f"The input file is not a readable Office document: {exc}") from exc


def compress_pdf(data: bytes) -> bytes:
    """The PDF with its content streams deflated and identical objects merged."""
    import pypdf

    try:
        writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(data)))
        for page in writer.pages:
            page.compress_content_streams()
        writer.compress_identical_objects()
        out = io.BytesIO()
        writer.write(out)
    except (pypdf.errors.PyPdfError, OSError, ValueError) as exc:
        raise ConversionFailed(f"The input file is not a readable PDF: {exc}") from exc
    return out.getvalue()


def pdf_facts(data: bytes) -> dict[str, Any]:
    import pypdf

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        first = reader.pages[0] if reader.pages else None
        info: Any = reader.metadata or {}
        return {
            "pages": len(reader.pages),
            "page_width_pt": round(float(first.mediabox.width), 2) if first else None,
            "page_height_pt": round(float(first.mediabox.height), 2) if first else None,
            "encrypted": reader.is_encrypted,
            "title": str(info.get("/Title", "")) or None,
            "producer": str(info.get("/Producer", "")) or None,
        }
    except (pypdf.errors.PyPdfError, OSError, ValueError, KeyError) as exc:
        raise ConversionFailed(f"The input file is not a readable PDF: {exc}") from exc
