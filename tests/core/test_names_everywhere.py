"""Output names valid on Linux, Windows and macOS at once (issue 12), as properties.

``valid_everywhere`` below is written from the three systems' rules, not from ``agent.paths``:
POSIX (no ``/`` or NUL, at most 255 bytes), NTFS/Win32 (no ``\\ < > : " | ? *`` or control
characters, no trailing dot or space, no reserved device name before the first dot, at most 255
UTF-16 units), APFS/HFS+ (valid UTF-8, stored normalised: names compared after normalisation).
Every hostile input kind the issue names — reserved names, forbidden characters, trailing dots
and spaces, 300-byte names, NFD input, case-only collisions — goes through ``safe_name`` and
then through real placement (``downloader.place`` in a folder holding the colliding files)."""

from __future__ import annotations

import tempfile
import unicodedata
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import downloader
from agent.models import ConflictPolicy
from agent.paths import conflict_candidates, name_key, safe_name

# Win32's reserved device names (Microsoft's "Naming Files, Paths, and Namespaces"), including
# COM0/LPT0 and the superscript digits it lists, and the console buffers.
RESERVED = (
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"COM{d}" for d in "0123456789\u00b9\u00b2\u00b3"}
    | {f"LPT{d}" for d in "0123456789\u00b9\u00b2\u00b3"}
)
WINDOWS_FORBIDDEN = set('\\<>:"|?*') | {chr(c) for c in range(32)}


def valid_everywhere(name: str) -> list[str]:
    """Why ``name`` cannot be one file name on Linux, Windows and macOS alike (empty: it can)."""
    problems = []
    if name in ("", ".", ".."):
        problems.append("empty or a dot name")
    if "/" in name or "\x00" in name:
        problems.append("a POSIX separator or NUL")
    if WINDOWS_FORBIDDEN.intersection(name):
        problems.append("a character Windows forbids")
    if name.endswith((".", " ")):
        problems.append("a trailing dot or space (Windows drops it)")
    if name.split(".", 1)[0].rstrip(" ").upper() in RESERVED:
        problems.append("a Windows device name")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return [*problems, "not valid UTF-8 (a lone surrogate)"]
    if len(encoded) > 255:
        problems.append("over 255 bytes (ext4, APFS)")
    if len(name.encode("utf-16-le")) // 2 > 255:
        problems.append("over 255 UTF-16 units (NTFS)")
    if not unicodedata.is_normalized("NFC", name):
        problems.append("not NFC (macOS would store another spelling)")
    if name.startswith("."):
        problems.append("hidden")
    return problems


def readable(raw: str, name: str) -> bool:
    """A name stays readable: when the input's base name (after its last separator) has letters
    or digits, so does the name."""
    base = raw.replace("\\", "/").rsplit("/", 1)[-1]
    kept = [c for c in unicodedata.normalize("NFC", base) if c.isalnum()]
    return not kept or any(c.isalnum() for c in name)


_reserved = st.builds(
    lambda base, case, ext, tail: (
        "".join(c.lower() if f else c for c, f in zip(base, case, strict=False)) + ext + tail
    ),
    st.sampled_from(sorted(RESERVED)),
    st.lists(st.booleans(), min_size=7, max_size=7),
    st.sampled_from(["", ".txt", ".tar.gz", " .txt", ".", "  "]),
    st.sampled_from(["", ".", " ", ". .", "..."]),
)
_forbidden = st.text(
    alphabet=st.sampled_from(sorted(WINDOWS_FORBIDDEN | set("/ab.é "))), min_size=1, max_size=30
)
_trailing = st.builds(
    lambda stem, tail: stem + tail,
    st.text(min_size=0, max_size=20),
    st.text(alphabet=". ", min_size=1, max_size=8),
)
_long = st.builds(
    lambda stem, ext: stem + ext,
    st.text(alphabet=st.sampled_from("aé漢😀"), min_size=80, max_size=200),
    st.sampled_from(["", ".jpg", ".tar.gz", "." + "x" * 40]),
).filter(lambda n: len(n.encode("utf-8")) >= 300)
_nfd = st.text(min_size=1, max_size=30).map(lambda t: unicodedata.normalize("NFD", t))
HOSTILE = st.one_of(_reserved, _forbidden, _trailing, _long, _nfd, st.text(max_size=60))


@given(HOSTILE)
def test_every_hostile_name_becomes_one_valid_everywhere(raw: str) -> None:
    name = safe_name(raw, fallback="output.bin")
    assert valid_everywhere(name) == [], (raw, name)
    assert readable(raw, name), (raw, name)
    assert safe_name(name, fallback="output.bin") == name  # stable


@given(st.sampled_from(sorted(RESERVED)), st.sampled_from(["", ".txt", " .log", ".tar.gz"]))
def test_every_reserved_device_name_is_defused_in_any_case(base: str, ext: str) -> None:
    for spelled in (base, base.lower(), base.title()):
        name = safe_name(spelled + ext, fallback="x")
        assert valid_everywhere(name) == [], (spelled + ext, name)
        assert name.upper().lstrip("_").startswith(base)  # still says what it was


@given(st.text(min_size=1, max_size=30))
def test_nfd_input_gives_the_same_name_as_nfc(raw: str) -> None:
    nfc = safe_name(unicodedata.normalize("NFC", raw), fallback="x")
    nfd = safe_name(unicodedata.normalize("NFD", raw), fallback="x")
    assert nfc == nfd


@given(HOSTILE, st.integers(min_value=0, max_value=4))
def test_numbered_candidates_stay_valid_everywhere(raw: str, skip: int) -> None:
    name = safe_name(raw, fallback="output.bin")
    for i, candidate in enumerate(conflict_candidates(name)):
        assert valid_everywhere(candidate) == [], (raw, candidate)
        if i >= skip + 3:
            break


def _variants(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from(
        [
            name,
            name.upper(),
            name.lower(),
            name.swapcase(),
            unicodedata.normalize("NFD", name),
            name.casefold(),
        ]
    )


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(HOSTILE, st.data())
def test_placement_never_collides_case_insensitively_with_a_file_in_the_folder(
    raw: str, data: st.DataObject
) -> None:
    name = safe_name(raw, fallback="output.bin")
    stem, _, ext = name.rpartition(".")
    others = data.draw(st.lists(_variants(name), min_size=1, max_size=3))
    numbered = [f"{stem} (1).{ext}" if stem else f"{name} (1)"]
    existing = {
        safe_name(o, fallback="x") for o in [*others, *data.draw(st.sampled_from([[], numbered]))]
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        keys: dict[str, str] = {}
        for i, e in enumerate(sorted(existing)):
            if name_key(e) in keys:
                continue  # this filesystem (ext4) could hold both; NTFS and APFS could not
            (folder / e).write_bytes(f"user file {i}".encode())
            keys[name_key(e)] = e
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        part = folder / ".incoming.part"
        part.write_bytes(b"the output")

        dest = downloader.place(part, folder, name, ConflictPolicy.RENAME)

        assert dest is not None
        assert valid_everywhere(dest.name) == [], dest.name
        assert name_key(dest.name) not in keys, (dest.name, sorted(keys.values()))
        assert dest.read_bytes() == b"the output"
        for n, content in before.items():
            assert (folder / n).read_bytes() == content  # nothing of the user's touched
