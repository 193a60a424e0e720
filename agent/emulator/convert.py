"""The image and text conversions, and the shared types of the catalog (`catalog.py`).

- Raster images among png/jpg/webp/gif/bmp/tiff go through Pillow, read as leniently as common
  tools read them (a truncated JPEG, a bad CRC on an ancillary PNG chunk: see `_decode`).
  Options: `width`, `height` (resize, aspect kept when only one is given), `quality` (1..100,
  jpg/webp).
  A multi-frame input (animated GIF/WebP, multi-page TIFF) converted to a single-frame format
  (png, jpg, bmp) yields **one output per frame**, named `{stem}-{n}.{ext}` (1-based).
- Plain text (UTF-8, no NUL bytes): `txt` (newlines normalised to LF), `html` (escaped, wrapped in
  a minimal document with a `<pre>`), `md` (the text in a fenced block under a `# stem` heading).

Failures raise `ConversionFailed(code, message)` with the documented conversion code 6005.
"""

from __future__ import annotations

import html
import io
import mimetypes
import posixpath
import re
import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageFile, ImageSequence, UnidentifiedImageError

IMAGE_TARGETS = {
    "png": "PNG",
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "webp": "WEBP",
    "gif": "GIF",
    "bmp": "BMP",
    "tiff": "TIFF",
    "tif": "TIFF",
}
MULTI_FRAME_FORMATS = {"GIF", "TIFF", "WEBP"}
TEXT_TARGETS = ("txt", "html", "md")
CONTENT_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
    "tif": "image/tiff",
    "txt": "text/plain",
    "html": "text/html",
    "md": "text/markdown",
    "pdf": "application/pdf",
    "zip": "application/zip",
    "json": "application/json",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "md5": "text/plain",
    "sha1": "text/plain",
    "sha256": "text/plain",
    "sha512": "text/plain",
    "bin": "application/octet-stream",
}
#: A target is a lowercase word (an extension or an operation such as `resize-image`); anything
#: else is rejected with 422. A well-formed target the catalog lacks fails the job instead.
TARGET_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,29}$")
MAX_PIXELS = 40_000_000
IMAGE_OPTIONS: dict[str, dict[str, Any]] = {
    "width": {"type": "integer", "range": [1, 10000], "default": None},
    "height": {"type": "integer", "range": [1, 10000], "default": None},
    "quality": {"type": "integer", "range": [1, 100], "default": 85},
}


class ConversionFailed(Exception):
    """The input could not be converted; `code` and `message` go into the job's errors[]."""

    def __init__(self, message: str, code: int = 6005) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class OptionError(ValueError):
    """An option has the wrong type or range (→ 400 when the job is created)."""


@dataclass(frozen=True)
class Produced:
    filename: str
    data: bytes
    content_type: str
    #: Goes into the output's `metadata` (e.g. a comparison's figures).
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Source:
    """One input as a conversion sees it."""

    id: str
    filename: str
    data: bytes
    content_type: str = ""
    engine: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.filename)[0] or "output"


def content_type_for(name: str) -> str:
    ext = posixpath.splitext(name)[1].lstrip(".").lower()
    if ext in CONTENT_TYPES:
        return CONTENT_TYPES[ext]
    guessed, _ = mimetypes.guess_type("x." + ext) if ext else (None, None)
    return guessed or "application/octet-stream"


def convert(data: bytes, filename: str, target: str, options: dict[str, Any]) -> list[Produced]:
    """Convert `data` (named `filename`) to an image or text `target`; one or more outputs."""
    stem = posixpath.splitext(filename)[0] or "output"
    if target in IMAGE_TARGETS:
        unreadable = f"The input {posixpath.basename(filename)} is not a readable image"
        return _convert_image(data, stem, target, options, unreadable)
    return [_convert_text(data, stem, target)]


def decode_image(
    data: bytes, message: str = "The input file is not a readable image"
) -> list[Image.Image]:
    """Every frame of an image (leniently read), or ConversionFailed with `message`."""
    try:
        return _decode(data)
    except UnidentifiedImageError as exc:
        raise ConversionFailed(f"{message} (no image format recognised)") from exc
    except (*_DECODE_ERRORS, Image.DecompressionBombError) as exc:
        raise ConversionFailed(f"{message}: {exc}") from exc


def save_frames(frames: list[Image.Image], target: str, options: Mapping[str, Any]) -> bytes:
    """Frames written as `target` (one of IMAGE_TARGETS), or ConversionFailed."""
    try:
        return _save(frames, IMAGE_TARGETS[target], options)
    except (OSError, ValueError) as exc:
        raise ConversionFailed(f"The image could not be written as {target}: {exc}") from exc


_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError)
#: Pillow's tolerance switch is process-wide: the lenient retry holds this lock while it is on.
_LENIENT = threading.Lock()


def _decode(data: bytes) -> list[Image.Image]:
    """Every frame of the image, read as leniently as the service and common tools read it:
    strictly first; then, if that fails, with Pillow's tolerance for a truncated file (a JPEG
    cut short or without its end marker) and for a bad checksum on an ancillary PNG chunk;
    then, for a PNG, rebuilt as browsers read it (`repair_png`)."""
    try:
        return _frames(data)
    except Image.DecompressionBombError:
        raise
    except _DECODE_ERRORS as strict:
        with _LENIENT:
            before = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = True
            try:
                return _frames(data)
            except _DECODE_ERRORS:
                repaired = repair_png(data)
                if repaired is None:
                    raise strict from None
                try:
                    return _frames(repaired)
                except _DECODE_ERRORS:
                    raise strict from None
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = before


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body)
    return len(body).to_bytes(4, "big") + kind + body + crc.to_bytes(4, "big")


def repair_png(data: bytes) -> bytes | None:
    """A PNG rebuilt the way browsers read a damaged one: image data inflated without checking
    its zlib checksum, chunk CRCs ignored, and a wrong length on the last IDAT (the 1×1 PNG in
    the SDK's uploading-files guide declares 12 bytes and holds 13) read up to `IEND`. None when
    `data` is no PNG or holds no image data."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    kept: list[bytes] = []
    idat = b""
    at = len(PNG_SIGNATURE)
    end = data.rfind(b"IEND")
    while at + 8 <= len(data):
        length, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
        if kind == b"IEND":
            break
        body_end = at + 8 + length
        if kind == b"IDAT" and end > 0 and data.find(b"IDAT", at + 8, end) < 0:
            body_end = max(at + 8, end - 8)  # the last IDAT: its data run up to the IEND
        body = data[at + 8 : body_end]
        if kind == b"IDAT":
            idat += body
        elif kind in (b"IHDR", b"PLTE", b"tRNS"):
            kept.append(_chunk(kind, body))
        at = body_end + 4
    if not kept or not idat:
        return None
    try:
        raw = zlib.decompressobj(-15).decompress(idat[2:])  # raw inflate: no checksum
    except zlib.error:
        return None
    return (
        PNG_SIGNATURE + b"".join(kept) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")
    )


def _frames(data: bytes) -> list[Image.Image]:
    with Image.open(io.BytesIO(data)) as image:
        if image.width * image.height > MAX_PIXELS:
            raise ConversionFailed("The image is too large to convert")
        return [frame.copy() for frame in ImageSequence.Iterator(image)]


def _convert_image(
    data: bytes, stem: str, target: str, options: dict[str, Any], unreadable: str
) -> list[Produced]:
    fmt = IMAGE_TARGETS[target]
    frames = [_resize(frame, options) for frame in decode_image(data, unreadable)]
    content_type = CONTENT_TYPES[target]
    try:
        if len(frames) > 1 and fmt not in MULTI_FRAME_FORMATS:
            return [
                Produced(f"{stem}-{n}.{target}", _save([f], fmt, options), content_type)
                for n, f in enumerate(frames, start=1)
            ]
        return [Produced(f"{stem}.{target}", _save(frames, fmt, options), content_type)]
    except (OSError, ValueError) as exc:
        raise ConversionFailed(f"The image could not be written as {target}: {exc}") from exc


def _resize(frame: Image.Image, options: Mapping[str, Any]) -> Image.Image:
    width, height = options.get("width"), options.get("height")
    if isinstance(width, int) and isinstance(height, int):
        return frame.resize((width, height))
    if isinstance(width, int):
        return frame.resize((width, max(1, round(frame.height * width / frame.width))))
    if isinstance(height, int):
        return frame.resize((max(1, round(frame.width * height / frame.height)), height))
    return frame


def _save(frames: list[Image.Image], fmt: str, options: Mapping[str, Any]) -> bytes:
    converted = [_mode_for(frame, fmt) for frame in frames]
    out = io.BytesIO()
    kwargs: dict[str, Any] = {}
    quality = options.get("quality")
    if fmt in ("JPEG", "WEBP"):
        kwargs["quality"] = quality if isinstance(quality, int) else 85
    if len(converted) > 1:
        kwargs.update(save_all=True, append_images=converted[1:])
    converted[0].save(out, format=fmt, **kwargs)
    return out.getvalue()


def _mode_for(frame: Image.Image, fmt: str) -> Image.Image:
    if fmt in ("JPEG", "BMP") and frame.mode not in ("RGB", "L"):
        return frame.convert("RGB")
    if fmt == "PNG" and frame.mode not in ("RGB", "RGBA", "L", "LA", "P", "I", "1"):
        return frame.convert("RGBA")
    if fmt == "WEBP" and frame.mode not in ("RGB", "RGBA"):
        return frame.convert("RGBA")
    if fmt == "TIFF" and frame.mode == "P":
        return frame.convert("RGBA")
    return frame


def _convert_text(data: bytes, stem: str, target: str) -> Produced:
    if b"\x00" in data:
        raise ConversionFailed("The input file is not plain text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConversionFailed("The input file is not UTF-8 text") from exc
    return text_output(text, stem, target)


def text_output(text: str, stem: str, target: str) -> Produced:
    """`text` as a `txt`, `html` or `md` file named `{stem}.{target}`."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if target == "html":
        title = html.escape(stem)
        body = (
            '<!DOCTYPE html>\n<html>\n<head><meta charset="utf-8">'
            f"<title>{title}</title></head>\n<body><pre>{html.escape(text)}</pre></body>\n</html>\n"
        )
    elif target == "md":
        fence = "````" if "```" in text else "```"
        body = f"# {stem}\n\n{fence}\n{text}{'' if text.endswith(chr(10)) else chr(10)}{fence}\n"
    else:
        body = text
    return Produced(f"{stem}.{target}", body.encode("utf-8"), CONTENT_TYPES[target])
