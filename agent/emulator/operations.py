"""The catalog's operations, each made for real: resized, compressed, thumbnailed and compared
images (Pillow, PDFium for PDF pages), website captures rendered from the fetched page, zip
archives, hashes, metadata as JSON, assets pulled out of documents and audio re-encoded by FFmpeg
(PyAV). Pure: `Source`s in, `Produced` files out; failures raise `ConversionFailed`.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import zipfile
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from PIL import Image, ImageChops, ImageColor, ImageDraw, ImageFont, ImageOps
from PIL.ExifTags import TAGS

from agent.emulator import documents as docs
from agent.emulator.convert import (
    CONTENT_TYPES,
    IMAGE_TARGETS,
    MAX_PIXELS,
    ConversionFailed,
    Produced,
    Source,
    content_type_for,
    decode_image,
    save_frames,
)

if TYPE_CHECKING:
    from av.audio.stream import AudioStream

HASHES = ("md5", "sha1", "sha256", "sha512")
AUDIO_CODECS = {"aac": ("aac", "adts"), "flac": ("flac", "flac"), "wav": ("pcm_s16le", "wav")}
CAPTURE_ENGINES = ("screenshot", "screenshot_pdf")
#: JPEG/WebP quality per `compression_level`; PNG is re-deflated at level 9 (and, at `high`,
#: reduced to a 256-colour palette).
COMPRESSION_QUALITY = {"low": 85, "medium": 70, "high": 50}


def ext_of(source: Source) -> str:
    """The input's image target name (`jpg`, `png`, …) from its decoded format."""
    ext = posixpath.splitext(source.filename)[1].lstrip(".").lower()
    return ext if ext in IMAGE_TARGETS else "png"


_BY_FORMAT = {
    "JPEG": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tiff",
}


def _image_target_of(image: Image.Image, source: Source) -> str:
    return _BY_FORMAT.get(image.format or "", ext_of(source))


def _open_image(source: Source) -> tuple[list[Image.Image], str]:
    """(frames, the target name of the input's own format)."""
    frames = decode_image(source.data, f"The input {source.filename} is not a readable image")
    try:
        with Image.open(io.BytesIO(source.data)) as probe:
            own = _image_target_of(probe, source)
    except (OSError, ValueError, SyntaxError):
        own = ext_of(source)
    return frames, own


def is_capture(source: Source) -> bool:
    return source.engine in CAPTURE_ENGINES


# -- images ---------------------------------------------------------------------------------
def resize_image(source: Source, options: Mapping[str, Any]) -> list[Produced]:
    """`resize-image`: `width`/`height` in px (or percent with `resize_by: percent`), handled as
    `resize_handling` says: `stretch` (exact), `keep_aspect_ratio` (fit inside),
    `keep_aspect_ratio_crop` (fill, then crop the middle: exactly width × height) or
    `keep_aspect_ratio_fill` (fit, then pad to exactly width × height)."""
    frames, own = _open_image(source)
    width, height = _side(options, "width"), _side(options, "height")
    if width is None and height is None:
        raise ConversionFailed("resize-image needs `width` and/or `height`")
    handling = options.get("resize_handling", "keep_aspect_ratio")
    percent = options.get("resize_by") == "percent"
    out: list[Image.Image] = []
    for frame in frames:
        w0, h0 = frame.size
        if percent:
            w_pct = width if width is not None else height
            h_pct = height if height is not None else width
            assert w_pct is not None and h_pct is not None
            size = max(1, round(w0 * w_pct / 100)), max(1, round(h0 * h_pct / 100))
        else:
            size = fit_size(frame.size, width, height)
        if size[0] * size[1] > MAX_PIXELS:
            raise ConversionFailed(
                f"resize-image would make {size[0]} x {size[1]} pixels; at most {MAX_PIXELS}"
            )
        if percent or width is None or height is None or handling == "stretch":
            out.append(frame.resize(size))
        elif handling == "keep_aspect_ratio_crop":
            out.append(ImageOps.fit(frame, size))
        elif handling == "keep_aspect_ratio_fill":
            out.append(ImageOps.pad(frame.convert("RGBA"), size, color=(0, 0, 0, 0)))
        else:
            out.append(ImageOps.contain(frame, size))
    return [_image_output(out, source.stem, own, {})]


def _side(options: Mapping[str, Any], name: str) -> int | None:
    value = options.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def fit_size(size: tuple[int, int], width: int | None, height: int | None) -> tuple[int, int]:
    """`width` × `height`, the missing one (at most one) from the aspect ratio of `size`."""
    w0, h0 = size
    if width is None and height is None:
        return size
    if width is None:
        assert height is not None
        return max(1, round(w0 * height / h0)), height
    if height is None:
        return width, max(1, round(h0 * width / w0))
    return width, height


def compress(source: Source, options: Mapping[str, Any]) -> list[Produced]:
    """`compress`: an image is rewritten in its own format (JPEG/WebP quality by
    `compression_level`, PNG optimised); a PDF's streams are deflated (pypdf)."""
    level = options.get("compression_level", "medium")
    if docs.is_pdf(source.data):
        return [
            Produced(f"{source.stem}.pdf", docs.compress_pdf(source.data), CONTENT_TYPES["pdf"])
        ]
    frames, own = _open_image(source)
    if own in ("jpg", "webp"):
        data = save_frames(frames, own, {"quality": COMPRESSION_QUALITY[level]})
    elif own == "png":
        image = frames[0]
        if level == "high" and image.mode not in ("P", "1", "L"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB").quantize(256)
        buffer = io.BytesIO()
        image.save(buffer, "PNG", optimize=True, compress_level=9)
        data = buffer.getvalue()
    else:
        data = save_frames(frames, own, {})
    if len(data) >= len(source.data):
        data = source.data  # already as small as this level makes it
    return [Produced(f"{source.stem}.{own}", data, CONTENT_TYPES[own])]


def thumbnail(source: Source, options: Mapping[str, Any]) -> list[Produced]:
    """`thumbnail`: a preview of an image or of a PDF's first page (rendered by PDFium at `dpi`;
    `pages: all` renders every page), scaled to `width`/`height` (aspect kept), written as
    `thumbnail_target`."""
    target = options.get("thumbnail_target", "png")
    first_only = options.get("pages", "first") != "all"
    if docs.is_pdf(source.data):
        pages = docs.render_pages(source.data, options.get("dpi", 150), first_only)
    elif is_capture(source):
        pages = [render_capture(source)]
    else:
        pages = decode_image(source.data, f"The input {source.filename} is not a readable image")
        pages = pages[:1] if first_only else pages
    width, height = _side(options, "width"), _side(options, "height")
    outputs = []
    for number, page in enumerate(pages, start=1):
        if width is not None and height is not None:
            page = ImageOps.contain(page, (width, height))
        elif width is not None or height is not None:
            page = page.resize(fit_size(page.size, width, height))
        name = source.stem if len(pages) == 1 else f"{source.stem}-{number}"
        outputs.append(_image_output([page], name, target, {}))
    return outputs


def compare_images(sources: Sequence[Source], options: Mapping[str, Any]) -> list[Produced]:
    """`compare-image`: exactly two images; the second is scaled to the first's size. The
    output is the first image, greyed, with every pixel whose channels differ by more than
    `threshold` percent painted `diff_color`; its metadata hold the figures."""
    if len(sources) != 2:
        raise ConversionFailed(
            f"compare-image compares exactly 2 inputs; this job has {len(sources)}"
        )
    first, second = (
        decode_image(s.data, f"The input {s.filename} is not a readable image")[0] for s in sources
    )
    a = first.convert("RGB")
    b = second.convert("RGB").resize(a.size) if second.size != a.size else second.convert("RGB")
    threshold = float(options.get("threshold", 0))
    cutoff = int(threshold * 255 / 100)
    r, g, bl = ImageChops.difference(a, b).split()
    peak = ImageChops.lighter(ImageChops.lighter(r, g), bl)
    mask = peak.point(lambda v: 255 if v > cutoff else 0, mode="L")
    changed = sum(mask.histogram()[255:])
    colour = ImageColor.getrgb(str(options.get("diff_color", "red")))[:3]
    base = ImageOps.grayscale(a).convert("RGB")
    base.paste(Image.new("RGB", a.size, colour), mask=mask)
    total = a.width * a.height
    figures = {
        "method": options.get("method", "ssim"),
        "threshold": threshold,
        "different_pixels": changed,
        "difference_percent": round(100 * changed / total, 4),
        "identical": changed == 0,
        "resized_second": second.size != first.size,
    }
    stem = f"{sources[0].stem}-vs-{sources[1].stem}"
    return [_image_output([base], f"{stem}-diff", "png", figures)]


def _image_output(
    frames: list[Image.Image], stem: str, target: str, metadata: Mapping[str, Any]
) -> Produced:
    data = save_frames(frames, target, {})
    return Produced(f"{stem}.{target}", data, CONTENT_TYPES[target], metadata)


# -- website capture ------------------------------------------------------------------------
def render_capture(source: Source) -> Image.Image:
    """A fetched page (engine `screenshot`) drawn as `screen_width` × `screen_height` (× the
    `device_scale_factor`): its title in a bar, then its visible text, wrapped. Simplified: no
    layout, CSS or images — a text rendering of the real page."""
    opts = source.options
    scale = _number(opts.get("device_scale_factor"), 1.0, 0.5, 4.0)
    width = int(_number(opts.get("screen_width"), 1280, 100, 4000) * scale)
    height = int(_number(opts.get("screen_height"), 1024, 100, 4000) * scale)
    if width * height > MAX_PIXELS:  # a huge screen is drawn at the pixel cap, same shape
        shrink = (MAX_PIXELS / (width * height)) ** 0.5
        width, height, scale = int(width * shrink), int(height * shrink), scale * shrink
    title, body = docs.html_text(source.data)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    size = max(8, int(16 * scale))
    font = ImageFont.load_default(size=size)
    bar = int(size * 2.4)
    draw.rectangle((0, 0, width, bar), fill=(40, 60, 110))
    draw.text((size, size * 0.6), title or source.filename, fill="white", font=font)
    y, margin = bar + size, size
    for line in _wrap(draw, body, font, width - 2 * margin):
        if y + size > height:
            break
        draw.text((margin, y), line, fill="black", font=font)
        y += int(size * 1.4)
    return image


def _number(value: Any, default: float, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return min(high, max(low, float(value)))


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> list[str]:
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if line and draw.textlength(candidate, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def capture_pdf(source: Source) -> bytes:
    title, body = docs.html_text(source.data)
    return docs.text_pdf(f"{title}\n\n{body}" if title else body, title or source.filename)


# -- archives, hashes, metadata, assets -----------------------------------------------------
def archive(sources: Sequence[Source], options: Mapping[str, Any]) -> list[Produced]:
    """`zip`: every input in one archive, under its own name (`name (2).ext` for a repeat)."""
    out = io.BytesIO()
    seen: set[str] = set()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for source in sources:
            name = _unique(posixpath.basename(source.filename) or "file", seen)
            bundle.writestr(name, source.data)
    return [Produced(f"{sources[0].stem}.zip", out.getvalue(), CONTENT_TYPES["zip"])]


def _unique(name: str, seen: set[str]) -> str:
    stem, ext = posixpath.splitext(name)
    candidate, n = name, 1
    while candidate.lower() in seen:
        n += 1
        candidate = f"{stem} ({n}){ext}"
    seen.add(candidate.lower())
    return candidate


def digest(source: Source, algorithm: str) -> list[Produced]:
    """`md5`/`sha1`/`sha256`/`sha512`: a text file holding the hex digest and a newline."""
    value = hashlib.new(algorithm, source.data).hexdigest()
    return [Produced(f"{source.stem}.{algorithm}", f"{value}\n".encode(), "text/plain")]


def metadata_json(source: Source, options: Mapping[str, Any]) -> list[Produced]:
    """`json` (category `metadata`): what the file is and what it holds, as JSON."""
    facts: dict[str, Any] = {
        "filename": source.filename,
        "size": len(source.data),
        "content_type": source.content_type or content_type_for(source.filename),
        "md5": hashlib.md5(source.data).hexdigest(),
        "sha256": hashlib.sha256(source.data).hexdigest(),
    }
    facts.update(_describe(source))
    body = json.dumps(facts, indent=2, ensure_ascii=False, default=str) + "\n"
    return [Produced(f"{source.stem}.json", body.encode("utf-8"), CONTENT_TYPES["json"])]


def _describe(source: Source) -> dict[str, Any]:
    data = source.data
    if docs.is_pdf(data):
        return {"kind": "pdf", "pdf": docs.pdf_facts(data)}
    office = docs.office_kind(data)
    if office is not None or data.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as bundle:
                names = bundle.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise ConversionFailed(f"The input {source.filename} is a damaged zip: {exc}") from exc
        return {"kind": office or "zip", "entries": len(names), "names": names[:200]}
    try:
        with Image.open(io.BytesIO(data)) as image:
            exif = {str(TAGS.get(k, k)): str(v)[:200] for k, v in image.getexif().items()}
            return {
                "kind": "image",
                "image": {
                    "format": image.format,
                    "width": image.width,
                    "height": image.height,
                    "mode": image.mode,
                    "frames": getattr(image, "n_frames", 1),
                    "exif": exif,
                },
            }
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        pass
    audio = _audio_facts(data)
    if audio is not None:
        return {"kind": "audio", "audio": audio}
    try:
        text = docs.plain_text(data)
    except ConversionFailed:
        return {"kind": "binary"}
    return {"kind": "text", "text": {"characters": len(text), "lines": text.count("\n") + 1}}


def extract_assets(source: Source, options: Mapping[str, Any]) -> list[Produced]:
    """`extract-assets`: the media a DOCX/XLSX/PPTX embeds (`word/media/*` …) or the images a
    PDF's pages hold, each as its own output."""
    if docs.is_pdf(source.data):
        found = docs.pdf_images(source.data)
    elif docs.office_kind(source.data) is not None:
        found = docs.office_media(source.data)
    else:
        raise ConversionFailed(
            f"extract-assets reads DOCX, XLSX, PPTX and PDF files; {source.filename} is none"
        )
    if not found:
        raise ConversionFailed(f"{source.filename} holds no embedded assets")
    seen: set[str] = set()
    return [Produced(_unique(name, seen), data, content_type_for(name)) for name, data in found]


# -- audio ----------------------------------------------------------------------------------
def _audio_facts(data: bytes) -> dict[str, Any] | None:
    import av

    try:
        with av.open(io.BytesIO(data), "r") as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            duration = float(container.duration / 1_000_000) if container.duration else None
            return {
                "container": container.format.name,
                "codec": stream.codec_context.name,
                "sample_rate": stream.codec_context.sample_rate,
                "channels": stream.codec_context.channels,
                "duration_seconds": duration,
                "bit_rate": container.bit_rate or None,
            }
    except (av.error.FFmpegError, OSError, ValueError):
        return None


def encode_audio(source: Source, target: str, options: Mapping[str, Any]) -> list[Produced]:
    """`aac` (ADTS), `flac` or `wav` (16-bit PCM) from any audio FFmpeg decodes, resampled to
    `frequency` Hz and `channels` (mono/stereo); `audio_bitrate` (kbit/s) for AAC."""
    import av

    codec, container_format = AUDIO_CODECS[target]
    out = io.BytesIO()
    try:
        with av.open(io.BytesIO(source.data), "r") as container:
            if not container.streams.audio:
                raise ConversionFailed(f"The input {source.filename} holds no audio")
            stream = container.streams.audio[0]
            rate = int(options.get("frequency") or stream.codec_context.sample_rate or 44100)
            wanted = options.get("channels")
            layout = (
                wanted
                if wanted in ("mono", "stereo")
                else ("mono" if stream.codec_context.channels == 1 else "stereo")
            )
            with av.open(out, "w", format=container_format) as sink:
                encoder = cast("AudioStream", sink.add_stream(codec, rate=rate, layout=layout))
                if target == "aac":
                    encoder.bit_rate = int(options.get("audio_bitrate", 128)) * 1000
                resampler = av.AudioResampler(
                    format=encoder.codec_context.format.name, layout=layout, rate=rate
                )
                for frame in container.decode(stream):
                    for piece in resampler.resample(frame):
                        sink.mux(encoder.encode(piece))
                for piece in resampler.resample(None):
                    sink.mux(encoder.encode(piece))
                sink.mux(encoder.encode(None))
    except ConversionFailed:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise ConversionFailed(
            f"The input {source.filename} is not audio that can be decoded: {exc}"
        ) from exc
    return [Produced(f"{source.stem}.{target}", out.getvalue(), CONTENT_TYPES[target])]
