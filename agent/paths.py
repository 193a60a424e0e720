"""Names of the files the agent writes or reads beside a ticket, and the checks that keep them safe.

Output names come from the server and are untrusted: ``safe_name`` reduces them to one harmless
base name (no separators, no ``..``, no control characters, no reserved device names, nothing
hidden, at most 200 bytes). ``render_output_name`` fills a ticket's name template from sanitised
fields and sanitises the result again. The rest names the agent's own files: hidden ``.part``
temp files, ``NAME.status.yaml`` sidecars, ``NAME.job.done`` / ``NAME.job.failed``.

Conflicts are decided by ``name_key`` (case-insensitively, after Unicode normalisation) on every
platform: ``Photo.JPG`` from the server beside the user's ``photo.jpg`` is written as
``Photo (1).JPG``, as NTFS and APFS (and a share Windows or macOS clients open) would need.

Pure: no I/O, except ``os.path.realpath`` in the confinement check ``is_within``.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

MAX_NAME_BYTES = 200
# An extension longer than this is not worth keeping when a name has to be shortened.
_MAX_EXT_BYTES = 32
MAX_CONFLICT_CANDIDATES = 10_000

TICKET_SUFFIX = ".job"
DONE_SUFFIX = ".job.done"
FAILED_SUFFIX = ".job.failed"
SIDECAR_SUFFIX = ".status.yaml"
PART_SUFFIX = ".part"

# Win32's reserved device names, in any case and with any extension: Microsoft's list ("Naming
# Files, Paths, and Namespaces") has COM0-9 and LPT0-9 with the superscript digits ¹ ² ³ too, and
# the console buffers CONIN$ and CONOUT$ open the console as well.
_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"COM{d}" for d in "0123456789\u00b9\u00b2\u00b3"}
    | {f"LPT{d}" for d in "0123456789\u00b9\u00b2\u00b3"}
)
# Characters Windows (and SMB shares) refuse in names; ':' would even open an NTFS stream.
_WINDOWS_UNSAFE = str.maketrans({c: "_" for c in '<>:"|?*'})
# Invisible characters that can make "cod.exe" look like "exe.doc", or break a line.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_DROP_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
_AGENT_SUFFIXES = (
    ".job",
    ".job.done",
    ".job.failed",
    ".job.canceled",
    ".status.yaml",
    ".part",
    ".tmp",
)

TEMPLATE_FIELDS = ("stem", "name", "ext", "target", "index", "suffix")
_TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


# --------------------------------------------------------------------------- safe names


def safe_name(untrusted: str, *, fallback: str) -> str:
    """Reduce an untrusted name to one safe base name (else ``fallback``, made safe too).

    The result never contains ``/``, ``\\``, NUL or control characters, is never ``.``, ``..`` or
    hidden, is NFC-normalised, at most ``MAX_NAME_BYTES`` UTF-8 bytes, and ``safe_name`` of it is
    itself.
    """
    name = _sanitise(untrusted)
    if not name:
        name = _sanitise(fallback)
    return name or "output"


def _sanitise(text: str) -> str:
    # One pass is nearly always a fixpoint; repeating makes stability unconditional (a cut at the
    # byte limit or a stripped character can expose a new trailing dot or change normalisation).
    for _ in range(8):
        cleaned = _one_pass(text)
        if cleaned == text:
            return cleaned
        text = cleaned
    return _one_pass(text)


def _one_pass(text: str) -> str:
    text = "".join(
        ch for ch in text if ch not in _BIDI and unicodedata.category(ch) not in _DROP_CATEGORIES
    )
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    text = text.translate(_WINDOWS_UNSAFE)
    # Leading dots would hide the file; trailing dots and spaces are dropped by Windows.
    text = text.strip().lstrip(".").strip().rstrip(". ")
    if text in ("", ".", ".."):
        return ""
    if text.split(".", 1)[0].rstrip(" ").upper() in _RESERVED:
        text = "_" + text
    text = _cap(text, MAX_NAME_BYTES - 1)
    if text.lower().endswith(_AGENT_SUFFIXES):
        text += "_"  # an output must never pass for a ticket, a sidecar or a temp file
    return text


def _cap(name: str, limit: int) -> str:
    """Shorten ``name`` to ``limit`` UTF-8 bytes, keeping a short extension."""
    if len(name.encode("utf-8", "surrogatepass")) <= limit:
        return name
    stem, ext = split_ext(name)
    ext_bytes = len(ext.encode("utf-8", "surrogatepass"))
    if not ext or ext_bytes > _MAX_EXT_BYTES:
        stem, ext, ext_bytes = name, "", 0
    cut = stem.encode("utf-8", "surrogatepass")[: limit - ext_bytes]
    stem = cut.decode("utf-8", "ignore").rstrip(". ")
    return stem + ext


def split_ext(name: str) -> tuple[str, str]:
    """``"a.tar.gz"`` → ``("a.tar", ".gz")``; a leading dot is not an extension."""
    dot = name.rfind(".")
    if dot <= 0:
        return name, ""
    return name[:dot], name[dot:]


# --------------------------------------------------------------------------- templates


def template_problem(template: str) -> str | None:
    """Why an output name template is not acceptable, or None when it is.

    Fields are ``{stem}`` ``{name}`` ``{ext}`` ``{target}`` ``{index}`` ``{suffix}``; ``{{`` and
    ``}}`` are literal braces. Separators are refused: an output always lands beside its ticket.
    """
    if not template.strip():
        return "the name template is empty — remove it to keep the server's file name"
    if "/" in template or "\\" in template:
        return (
            "the name template contains a path separator — outputs are always written beside "
            "the ticket, so use a plain name such as `{stem}{suffix}.{ext}`"
        )
    for match in _TEMPLATE_TOKEN.finditer(template):
        token = match.group(0)
        if token in ("{{", "}}"):
            continue
        if token in ("{", "}"):
            return "unbalanced brace in the name template — write `{{` or `}}` for a literal brace"
        field = match.group(1)
        if field not in TEMPLATE_FIELDS:
            known = ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
            return f"unknown field {{{field}}} in the name template — use one of {known}"
    return None


def render_output_name(
    template: str | None,
    *,
    server_name: str,
    ticket_stem: str,
    target: str,
    index: int,
    count: int,
    fallback: str,
) -> str:
    """The safe file name for output ``index`` (1-based) of ``count``.

    Without a template: the server's file name, made safe. With one: each field is sanitised
    before it is inserted (a server name cannot smuggle in a separator) and the result is made
    safe again. ``fallback`` is used when nothing usable is left.
    """
    server_safe = safe_name(server_name, fallback=fallback)
    if template is None or template_problem(template) is not None:
        return server_safe
    name, ext = split_ext(server_safe)
    fields = {
        "stem": _field(ticket_stem),
        "name": _field(name),
        "ext": _field(ext[1:] if ext else target),
        "target": _field(target),
        "index": str(index),
        "suffix": "" if count <= 1 else f"-{index}",
    }

    def substitute(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        return fields.get(match.group(1) or "", "")

    rendered = _TEMPLATE_TOKEN.sub(substitute, template)
    return safe_name(rendered, fallback=server_safe)


def _field(value: str) -> str:
    return value.replace("/", "_").replace("\\", "_")


# --------------------------------------------------------------------------- conflicts, temp files


def name_key(name: str) -> str:
    """What two names share when Windows (NTFS, SMB) or macOS (APFS, HFS+) take them for one:
    case and Unicode normalisation ignored. ``Photo.JPG``, ``photo.jpg`` and ``PHOTO.jpg`` have
    one key; so do ``café`` written precomposed (NFC) and decomposed (NFD, as macOS writes it).

    Folded generously (upper case, then case folding: ``ß``/``SS``, ``ı``/``I``/``i`` are one),
    so two names one of those systems keeps apart may share a key (the output is numbered when
    it need not be), never the other way round."""
    if name.isascii():
        return name.lower()
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", name).upper().casefold())


def conflict_candidates(name: str) -> Iterator[str]:
    """``name``, then ``stem (1).ext``, ``stem (2).ext``, … (at most ``MAX_CONFLICT_CANDIDATES``).

    The extension is split at the last dot (``a.tar.gz`` → ``a.tar (1).gz``); a leading dot is part
    of the stem.
    """
    yield name
    stem, ext = split_ext(name)
    for i in range(1, MAX_CONFLICT_CANDIDATES):
        yield f"{stem} ({i}){ext}"


# What a name grows by on disk: its hidden part file ``.NAME.<id8>.part`` (15 characters), or a
# conflict candidate ``NAME (9999)`` (7).
_PATH_RESERVE = 15


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def fit_path(name: str, folder: str, limit: int) -> str:
    """``name``, its stem shortened (the extension kept) so that its part file and its conflict
    candidates in ``folder`` stay under ``limit`` UTF-16 units, the full path counted (Windows'
    ``MAX_PATH`` of 260 without long paths). Unchanged when it fits, or when the folder leaves
    no room for a readable name (8 units): the system's error then says so."""
    room = limit - 1 - _utf16_len(folder) - 1 - _PATH_RESERVE
    if _utf16_len(name) <= room or room < 8:
        return name
    stem, ext = split_ext(name)
    if _utf16_len(ext) > room // 2:
        stem, ext = name, ""
    keep = room - _utf16_len(ext) - 2  # safe_name may add a "_" at either end
    cut = stem.encode("utf-16-le", "surrogatepass")[: 2 * keep].decode("utf-16-le", "ignore")
    return safe_name(cut.rstrip(". ") + ext, fallback=name[:keep])


def part_name(final_name: str, output_id: str) -> str:
    """Hidden temp name ``.NAME.<id8>.part`` for a download that will become ``final_name``."""
    ident = "".join(ch for ch in output_id if ch.isascii() and ch.isalnum())[:8]
    if not ident:
        ident = hashlib.sha256(output_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f".{_cap(final_name, MAX_NAME_BYTES)}.{ident}{PART_SUFFIX}"


# --------------------------------------------------------------------------- ticket file names


def is_ticket_name(name: str) -> bool:
    """``*.job`` (any case), not hidden: the only files the agent ever treats as tickets."""
    return (
        not name.startswith(".")
        and name.lower().endswith(TICKET_SUFFIX)
        and len(name) > len(TICKET_SUFFIX)
    )


def is_agent_file(name: str) -> bool:
    """Files the agent writes itself: hidden ``.part`` temp files, sidecars, done/failed tickets."""
    lower = name.lower()
    return (
        (name.startswith(".") and lower.endswith(PART_SUFFIX))
        or lower.endswith(SIDECAR_SUFFIX)
        or lower.endswith(DONE_SUFFIX)
        or lower.endswith(FAILED_SUFFIX)
    )


def ticket_stem(name: str) -> str:
    """``report.job``, ``report.job.done`` and ``report.job.failed`` → ``report``."""
    return _job_name(name)[: -len(TICKET_SUFFIX)] if _has_job_suffix(name) else name


def _has_job_suffix(name: str) -> bool:
    return _job_name(name).lower().endswith(TICKET_SUFFIX)


def _job_name(name: str) -> str:
    """``x.job.done`` / ``x.job.failed`` → ``x.job``; anything else unchanged."""
    lower = name.lower()
    for suffix in (DONE_SUFFIX, FAILED_SUFFIX):
        if lower.endswith(suffix):
            return name[: len(name) - len(suffix) + len(TICKET_SUFFIX)]
    return name


def sidecar_path(ticket: Path) -> Path:
    """``NAME.job`` (or ``NAME.job.done`` / ``.failed``) → ``NAME.status.yaml`` beside it."""
    return ticket.with_name(ticket_stem(ticket.name) + SIDECAR_SUFFIX)


def done_path(ticket: Path) -> Path:
    """``NAME.job`` → ``NAME.job.done``."""
    return ticket.with_name(_job_name(ticket.name) + ".done")


def failed_path(ticket: Path) -> Path:
    """``NAME.job`` → ``NAME.job.failed``."""
    return ticket.with_name(_job_name(ticket.name) + ".failed")


def job_path(ticket: Path) -> Path:
    """``NAME.job.done`` / ``NAME.job.failed`` → ``NAME.job`` (a retry renames it back)."""
    return ticket.with_name(_job_name(ticket.name))


# --------------------------------------------------------------------------- confinement


def is_within(path: Path | str, root: Path | str) -> bool:
    """True when ``path``, with every symlink resolved, is ``root`` or inside it (also resolved)."""
    real = os.path.normcase(os.path.realpath(path))
    real_root = os.path.normcase(os.path.realpath(root))
    if real == real_root:
        return True
    prefix = real_root if real_root.endswith(os.sep) else real_root + os.sep
    return real.startswith(prefix)
