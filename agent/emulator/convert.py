"""Real conversions and the conversion catalog: bytes in, named bytes out. Pure, no I/O.

- Raster images among png/jpg/webp/gif/bmp/tiff go through Pillow, read as leniently as common
  tools read them (a truncated JPEG, a bad CRC on an ancillary PNG chunk: see `_decode`).
  Options: `width`, `height` (resize, aspect kept when only one is given), `quality` (1..100,
  jpg/webp).
  A multi-frame input (animated GIF/WebP, multi-page TIFF) converted to a single-frame format
  (png, jpg, bmp) yields **one output per frame**, named `{stem}-{n}.{ext}` (1-based).
- Plain text (UTF-8, no NUL bytes): `txt` (newlines normalised to LF), `html` (escaped, wrapped in
  a minimal document with a `<pre>`), `md` (the text in a fenced block under a `# stem` heading).
- Any other target is a passthrough: the input bytes unchanged, named with the target's extension.

Failures raise `ConversionFailed(code, message)` with the documented conversion code 6005.
"""

from __future__ import annotations

import html
import io
import mimetypes
import posixpath
import re
import threading
import uuid
from dataclasses import dataclass
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
}
#: A target is a lowercase extension-like word; anything else is rejected with 422.
TARGET_RE = re.compile(r"^[a-z0-9]{1,10}$")
MAX_PIXELS = 40_000_000
_IMAGE_OPTIONS: dict[str, dict[str, Any]] = {
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


def content_type_for(name: str) -> str:
    ext = posixpath.splitext(name)[1].lstrip(".").lower()
    if ext in CONTENT_TYPES:
        return CONTENT_TYPES[ext]
    guessed, _ = mimetypes.guess_type("x." + ext) if ext else (None, None)
    return guessed or "application/octet-stream"


def category_for(target: str) -> str:
    if target in IMAGE_TARGETS:
        return "image"
    if target in TEXT_TARGETS:
        return "document"
    return "archive" if target in ("zip", "7z", "tar") else "document"


def catalog() -> list[dict[str, Any]]:
    """The `GET /conversions` catalog: what this emulator really converts (plus no passthroughs)."""
    rows: list[dict[str, Any]] = []
    for target in ("png", "jpg", "webp", "gif", "bmp", "tiff"):
        rows.append(_row("image", target, _IMAGE_OPTIONS))
    for target in TEXT_TARGETS:
        rows.append(_row("document", target, {}))
    return rows


def _row(category: str, target: str, options: dict[str, Any]) -> dict[str, Any]:
    ident = str(uuid.uuid5(uuid.NAMESPACE_URL, f"emulator:{category}:{target}"))
    return {"id": ident, "target": target, "category": category, "options": options}


def validate_options(target: str, options: dict[str, Any]) -> None:
    """Reject option values this emulator would use but cannot; unknown keys are ignored."""
    if target not in IMAGE_TARGETS:
        return
    for name, spec in _IMAGE_OPTIONS.items():
        value = options.get(name)
        if value is None:
            continue
        low, high = spec["range"]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise OptionError(f"Option {name!r} must be an integer between {low} and {high}")


def convert(data: bytes, filename: str, target: str, options: dict[str, Any]) -> list[Produced]:
    """Convert `data` (named `filename`) to `target`; returns one or more outputs."""
    stem = posixpath.splitext(filename)[0] or "output"
    if target in IMAGE_TARGETS:
        return _convert_image(data, stem, target, options)
    if target in TEXT_TARGETS:
        return [_convert_text(data, stem, target)]
    return [Produced(f"{stem}.{target}", data, content_type_for("x." + target))]


_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError)
#: Pillow's tolerance switch is process-wide: the lenient retry holds this lock while it is on.
_LENIENT = threading.Lock()


def _decode(data: bytes) -> list[Image.Image]:
    """Every frame of the image, read as leniently as the service and common tools read it:
    strictly first; then, if that fails, with Pillow's tolerance for a truncated file (a JPEG
    cut short or without its end marker) and for a bad checksum on an ancillary PNG chunk."""
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
                raise strict from None
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = before


def _frames(data: bytes) -> list[Image.Image]:
    with Image.open(io.BytesIO(data)) as image:
        if image.width * image.height > MAX_PIXELS:
            raise ConversionFailed("The image is too large to convert")
        return [frame.copy() for frame in ImageSequence.Iterator(image)]


def _convert_image(data: bytes, stem: str, target: str, options: dict[str, Any]) -> list[Produced]:
    fmt = IMAGE_TARGETS[target]
    try:
        frames = _decode(data)
    except (*_DECODE_ERRORS, Image.DecompressionBombError) as exc:
        raise ConversionFailed(f"The input file is not a readable image: {exc}") from exc
    frames = [_resize(frame, options) for frame in frames]
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


def _resize(frame: Image.Image, options: dict[str, Any]) -> Image.Image:
    width, height = options.get("width"), options.get("height")
    if isinstance(width, int) and isinstance(height, int):
        return frame.resize((width, height))
    if isinstance(width, int):
        return frame.resize((width, max(1, round(frame.height * width / frame.width))))
    if isinstance(height, int):
        return frame.resize((max(1, round(frame.width * height / frame.height)), height))
    return frame


def _save(frames: list[Image.Image], fmt: str, options: dict[str, Any]) -> bytes:
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
