"""The conversion catalog: every `(category, target)` the emulator makes, its options' schema and
the function that makes it. `GET /v2/conversions` lists exactly this table; a job's target and
category are checked against it when the job runs (docs/emulator.md lists it with examples).

- A target the table lacks, or a category the target is not in, fails the job with conversion
  code 6005 and a message that names what is known (the contract allows failing later).
- Most entries convert each input on its own (one result per input). Some combine every input
  into one result: `archive/zip`, `operation/compare-image` (exactly two) and `document/pdf` with
  `stamp: true` (the document, then the stamp).
- Option values of a known key are checked when the job is created (wrong type, range or
  choice → 400); unknown keys are ignored, as the service ignores options it does not use.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import ImageColor

from agent.emulator import documents as docs
from agent.emulator import operations as ops
from agent.emulator.convert import (
    CONTENT_TYPES,
    IMAGE_OPTIONS,
    IMAGE_TARGETS,
    TEXT_TARGETS,
    ConversionFailed,
    OptionError,
    Produced,
    Source,
    convert,
    decode_image,
    save_frames,
    text_output,
)

log = logging.getLogger(__name__)
Options = Mapping[str, Any]
Run = Callable[[Sequence[Source], Options], list[Produced]]


def _never(options: Options) -> bool:
    return False


def _always(options: Options) -> bool:
    return True


@dataclass(frozen=True)
class Entry:
    category: str
    target: str
    #: name → {type, default, range?, enum?}: the schema `GET /conversions` shows.
    options: Mapping[str, Mapping[str, Any]]
    #: Makes the outputs: called with one input, or with every input when `combines` says so.
    run: Run
    combines: Callable[[Options], bool] = _never

    def row(self) -> dict[str, Any]:
        ident = str(uuid.uuid5(uuid.NAMESPACE_URL, f"emulator:{self.category}:{self.target}"))
        options = {name: dict(spec) for name, spec in self.options.items()}
        return {"id": ident, "target": self.target, "category": self.category, "options": options}


def _int(low: int, high: int, default: int | None = None) -> dict[str, Any]:
    return {"type": "integer", "range": [low, high], "default": default}


def _choice(values: Sequence[Any], default: Any, kind: str = "string") -> dict[str, Any]:
    return {"type": kind, "enum": list(values), "default": default}


# -- runners ----------------------------------------------------------------------------------
def _one(sources: Sequence[Source]) -> Source:
    (source,) = sources
    return source


def _image(target: str) -> Run:
    def run(sources: Sequence[Source], options: Options) -> list[Produced]:
        source = _one(sources)
        if ops.is_capture(source):
            frames = [ops.render_capture(source)]
        elif docs.is_pdf(source.data):
            frames = docs.render_pages(source.data, 150, first_only=False)
        else:
            return convert(source.data, source.filename, target, dict(options))
        outputs = []
        for number, frame in enumerate(frames, start=1):
            frame = _scaled(frame, options)
            name = source.stem if len(frames) == 1 else f"{source.stem}-{number}"
            data = save_frames([frame], target, options)
            outputs.append(Produced(f"{name}.{target}", data, CONTENT_TYPES[target]))
        return outputs

    return run


def _scaled(frame: Any, options: Options) -> Any:
    width, height = options.get("width"), options.get("height")
    if width is None and height is None:
        return frame
    w = width if width is not None else max(1, round(frame.width * height / frame.height))
    h = height if height is not None else max(1, round(frame.height * width / frame.width))
    return frame.resize((w, h))


def _text(target: str) -> Run:
    def run(sources: Sequence[Source], options: Options) -> list[Produced]:
        source = _one(sources)
        if ops.is_capture(source):
            title, body = docs.html_text(source.data)
            return [text_output(f"{title}\n\n{body}\n", source.stem, target)]
        if docs.is_pdf(source.data) or docs.office_kind(source.data) is not None:
            text = docs.document_text(source.data, source.filename, source.content_type)
            return [text_output(text, source.stem, target)]
        return convert(source.data, source.filename, target, dict(options))

    return run


def as_pdf(source: Source) -> bytes:
    """The input as a PDF: a PDF as it is, a capture's page, an image on a page, or the text of
    a DOCX, HTML page or text file set in a PDF."""
    if docs.is_pdf(source.data):
        return docs.check_pdf(source.data)
    if ops.is_capture(source):
        return ops.capture_pdf(source)
    if docs.office_kind(source.data) is None and not docs.looks_like_html(
        source.data, source.filename, source.content_type
    ):
        try:
            frames = decode_image(source.data)
        except ConversionFailed:
            pass
        else:
            return docs.images_pdf(frames)
    try:
        text = docs.document_text(source.data, source.filename, source.content_type)
    except ConversionFailed as exc:
        raise ConversionFailed(
            f"The input {source.filename} is not a PDF, an image, a DOCX, HTML or text: "
            f"{exc.message}"
        ) from exc
    return docs.text_pdf(text, source.stem)


def _pdf(sources: Sequence[Source], options: Options) -> list[Produced]:
    if options.get("stamp"):
        if len(sources) != 2:
            raise ConversionFailed(
                "A stamp takes 2 inputs: the document, then the stamp (an image or a PDF); "
                f"this job has {len(sources)}"
            )
        document, stamp = sources
        alignment = str(options.get("alignment", "center"))
        data = docs.stamp_pdf(as_pdf(document), stamp.data, alignment)
        return [Produced(f"{document.stem}.pdf", data, CONTENT_TYPES["pdf"])]
    source = _one(sources)
    return [Produced(f"{source.stem}.pdf", as_pdf(source), CONTENT_TYPES["pdf"])]


def _stamping(options: Options) -> bool:
    return bool(options.get("stamp"))


def _per_input(function: Callable[[Source, Options], list[Produced]]) -> Run:
    def run(sources: Sequence[Source], options: Options) -> list[Produced]:
        return function(_one(sources), options)

    return run


def _hash(algorithm: str) -> Run:
    def run(sources: Sequence[Source], options: Options) -> list[Produced]:
        return ops.digest(_one(sources), algorithm)

    return run


def _audio(target: str) -> Run:
    def run(sources: Sequence[Source], options: Options) -> list[Produced]:
        return ops.encode_audio(_one(sources), target, options)

    return run


def _copy(sources: Sequence[Source], options: Options) -> list[Produced]:
    source = _one(sources)
    return [Produced(f"{source.stem}.bin", source.data, CONTENT_TYPES["bin"])]


# -- the table --------------------------------------------------------------------------------
_RESIZE = {
    "width": _int(1, 10000),
    "height": _int(1, 10000),
    "resize_by": _choice(("px", "percent"), "px"),
    "resize_handling": _choice(
        ("keep_aspect_ratio", "keep_aspect_ratio_crop", "keep_aspect_ratio_fill", "stretch"),
        "keep_aspect_ratio",
    ),
}
_THUMBNAIL = {
    "thumbnail_target": _choice(("png", "jpg", "webp"), "png"),
    "width": _int(1, 4000),
    "height": _int(1, 4000),
    "pages": _choice(("first", "all"), "first"),
    "dpi": _int(36, 600, 150),
}
_COMPARE = {
    "method": _choice(("ssim", "pixel"), "ssim"),
    "threshold": {"type": "number", "range": [0, 100], "default": 0},
    "diff_color": {"type": "color", "default": "red"},
}
_PDF = {
    "stamp": {"type": "boolean", "default": False},
    "alignment": _choice(docs.ALIGNMENTS, "center"),
}
_FREQUENCIES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)


def _audio_options(target: str) -> dict[str, Any]:
    codec = ops.AUDIO_CODECS[target][0]
    options: dict[str, Any] = {
        "audio_codec": _choice((codec,), codec),
        "channels": _choice(("mono", "stereo"), None),
        "frequency": _choice(_FREQUENCIES, None, "integer"),
    }
    if target == "aac":
        options["audio_bitrate"] = _int(8, 512, 128)
    return options


def _build() -> tuple[Entry, ...]:
    entries = [Entry("image", t, IMAGE_OPTIONS, _image(t)) for t in IMAGE_TARGETS if t in _LISTED]
    entries += [Entry("document", t, {}, _text(t)) for t in TEXT_TARGETS]
    entries.append(Entry("document", "pdf", _PDF, _pdf, _stamping))
    entries.append(Entry("archive", "zip", {}, ops.archive, _always))
    entries += [Entry("hash", h, {}, _hash(h)) for h in ops.HASHES]
    entries.append(Entry("metadata", "json", {}, _per_input(ops.metadata_json)))
    entries += [Entry("audio", t, _audio_options(t), _audio(t)) for t in ops.AUDIO_CODECS]
    entries += [
        Entry("operation", "resize-image", _RESIZE, _per_input(ops.resize_image)),
        Entry(
            "operation",
            "compress",
            {"compression_level": _choice(("low", "medium", "high"), "medium")},
            _per_input(ops.compress),
        ),
        Entry("operation", "thumbnail", _THUMBNAIL, _per_input(ops.thumbnail)),
        Entry("operation", "compare-image", _COMPARE, ops.compare_images, _always),
        Entry("operation", "extract-assets", {}, _per_input(ops.extract_assets)),
        Entry("operation", "bin", {}, _copy),
    ]
    return tuple(entries)


#: Image targets listed once (the aliases `jpeg` and `tif` convert but are not listed).
_LISTED = ("png", "jpg", "webp", "gif", "bmp", "tiff")
ENTRIES = _build()


def catalog() -> list[dict[str, Any]]:
    """The `GET /conversions` rows: every target this emulator makes, with its options."""
    return [entry.row() for entry in ENTRIES]


def entries_for(target: str) -> list[Entry]:
    target = {"jpeg": "jpg", "tif": "tiff"}.get(target, target)
    return [entry for entry in ENTRIES if entry.target == target]


def category_for(target: str) -> str:
    """The category a conversion without one gets: the target's (first) catalog category."""
    found = entries_for(target)
    return found[0].category if found else ""


def find(target: str, category: str | None) -> Entry:
    """The entry that makes `target` in `category` (any category when None), or
    ConversionFailed saying what the catalog has."""
    found = entries_for(target)
    if not found:
        raise ConversionFailed(
            f"Unknown conversion target {target!r}: GET /conversions lists every target "
            "this service makes"
        )
    if category:
        for entry in found:
            if entry.category == category:
                return entry
        known = ", ".join(sorted({e.category for e in found}))
        raise ConversionFailed(
            f"The target {target!r} is not in category {category!r}; use category {known}"
        )
    return found[0]


def validate_options(target: str, category: str | None, options: Options) -> None:
    """Reject a known option whose value has the wrong type, range or choice (→ 400)."""
    try:
        entry = find(target, category)
    except ConversionFailed:
        return  # an unknown target or category fails the job when it runs
    for name, spec in entry.options.items():
        value = options.get(name)
        if value is not None:
            _check(name, spec, value)


def _check(name: str, spec: Mapping[str, Any], value: Any) -> None:
    kind = spec["type"]
    if kind == "boolean":
        if not isinstance(value, bool):
            raise OptionError(f"Option {name!r} must be true or false")
        return
    if kind == "color":
        try:
            ImageColor.getrgb(str(value))
        except ValueError as exc:
            raise OptionError(f"Option {name!r} must be a colour name or #rrggbb") from exc
        return
    if "enum" in spec:
        if isinstance(value, bool) or value not in spec["enum"]:
            choices = ", ".join(str(v) for v in spec["enum"])
            raise OptionError(f"Option {name!r} must be one of {choices}")
        return
    number = int if kind == "integer" else (int, float)
    if isinstance(value, bool) or not isinstance(value, number):
        raise OptionError(
            f"Option {name!r} must be a{'n integer' if kind == 'integer' else ' number'}"
        )
    low, high = spec["range"]
    if not low <= value <= high:
        kind_word = "an integer" if kind == "integer" else "a number"
        raise OptionError(f"Option {name!r} must be {kind_word} between {low} and {high}")


def run(
    target: str, category: str | None, options: Options, sources: Sequence[Source]
) -> list[tuple[list[str], list[Produced] | ConversionFailed]]:
    """Make `target` from `sources`: (input ids, outputs or the failure) per result."""
    try:
        entry = find(target, category)
    except ConversionFailed as exc:
        return [([s.id for s in sources], exc)]
    if entry.combines(options):
        return [([s.id for s in sources], _attempt(entry.run, sources, options))]
    return [([s.id], _attempt(entry.run, [s], options)) for s in sources]


def _attempt(
    function: Run, sources: Sequence[Source], options: Options
) -> list[Produced] | ConversionFailed:
    try:
        return function(sources, options)
    except ConversionFailed as exc:
        return exc
    except Exception as exc:  # a library choking on a damaged file is still the file's fault
        log.warning("conversion raised %r", exc, exc_info=True)
        return ConversionFailed(f"The input could not be converted ({type(exc).__name__}: {exc})")
