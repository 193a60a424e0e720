"""Output names come from the server and are untrusted: whatever it calls a file, the agent
writes one plain, visible, normalised file beside the ticket and nothing anywhere else.

Defence: ``paths.safe_name`` (through ``render_output_name``) and ``downloader._check_basename``.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_harness import png_bytes, run_agent, write_config

from agent.emulator import FaultSpec, RunningEmulator
from agent.paths import MAX_NAME_BYTES, safe_name

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]

RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10))} | {
    f"LPT{i}" for i in range(1, 10)
}
BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def assert_safe(name: str) -> None:
    assert name and name not in (".", "..") and not name.startswith("."), repr(name)
    assert "/" not in name and "\\" not in name and ":" not in name, repr(name)
    assert not any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in name), repr(name)
    assert not BIDI & set(name), repr(name)
    assert unicodedata.normalize("NFC", name) == name, repr(name)
    assert len(name.encode()) <= MAX_NAME_BYTES, repr(name)
    assert name.split(".", 1)[0].rstrip(" ").upper() not in RESERVED, repr(name)
    assert name == name.strip() and not name.endswith("."), repr(name)
    agent_suffixes = (".job", ".job.done", ".job.failed", ".status.yaml", ".part", ".tmp")
    assert not name.lower().endswith(agent_suffixes), repr(name)  # never a ticket or temp file


def tree(root: Path, skip: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == skip:
            dirnames[:] = []
            continue
        out |= {os.path.join(dirpath, f) for f in filenames}
    return out


def absolute_victims() -> list[Path]:
    return [Path("/etc/x.png"), Path("/x.png"), Path("/evil.png")]


async def _run_tickets(
    tmp_path: Path, emu: RunningEmulator, count: int
) -> tuple[Path, set[str], str]:
    inbox = tmp_path / "a" / "b" / "inbox"  # ../../x lands in tmp_path if it escapes
    inbox.mkdir(parents=True)
    for i in range(count):
        (inbox / f"in{i}.png").write_bytes(png_bytes(color="blue"))
        (inbox / f"t{i}.job").write_text(f"input: in{i}.png\ntarget: png\n")
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")
    before = tree(tmp_path, inbox)
    code, out = await run_agent(cfg, "run", "--once", timeout=90)
    assert code == 0, out
    return inbox, before, out


async def test_hostile_server_names_become_safe_files_beside_the_ticket(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    """job:hostile_names cycles through traversal, absolute, drive, control characters, a
    300-character name, CON, "..", "", padded and backslash names: one ticket for each."""
    for victim in absolute_victims():
        assert not victim.exists()
    emu = await make_emulator(faults=(FaultSpec("job", "hostile_names"),))
    inbox, before, _ = await _run_tickets(tmp_path, emu, 10)

    names = {p.name for p in inbox.iterdir()}
    outputs = names - {f"in{i}.png" for i in range(10)}
    outputs -= {f"t{i}.job.done" for i in range(10)} | {f"t{i}.status.yaml" for i in range(10)}
    assert len(outputs) == 10, sorted(names)  # one file per ticket, none lost or merged
    for name in outputs:
        assert_safe(name)
    assert "x.png" in outputs and "evil.png" in outputs  # traversal reduced to the base name
    assert any(n.startswith("_CON") for n in outputs)  # a device name is defused
    # Nothing was written anywhere but the inbox (state and config aside).
    after = tree(tmp_path, inbox)
    new = {p for p in after - before if not p.startswith(str(tmp_path / "state.db"))}
    assert new == set(), new
    for victim in absolute_victims():
        assert not victim.exists()
    assert not list(inbox.glob(".*"))  # no hidden output, no temp left


UNICODE_TRICKS = [
    "cod\u202egnp.exe",  # right-to-left override: shows as "codexe.png"
    "e\u0301t\u00e9.png",  # NFD vs NFC: one name, two spellings
    "\u200e../../\u2066x.png",
    "a\u2028b\u2029c.png",
    "\ufeffbom.png",
    "nul.png",
    "COM1 .png",
    "é" * 150 + ".png",  # 300 UTF-8 bytes
    "x.png.",
    "...",
]


async def test_unicode_tricks_in_server_names_are_normalised(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    given: dict[str, str] = {}

    def mangle(doc: dict[str, Any]) -> None:
        name = given.setdefault(doc["id"], UNICODE_TRICKS[len(given) % len(UNICODE_TRICKS)])
        for out in doc["output"]:
            out["filename"] = name

    emu = await make_emulator(mangle=mangle)
    n = len(UNICODE_TRICKS)
    inbox, before, _ = await _run_tickets(tmp_path, emu, n)
    own = {f"in{i}.png" for i in range(n)} | {f"t{i}.job.done" for i in range(n)}
    own |= {f"t{i}.status.yaml" for i in range(n)}
    outputs = {p.name for p in inbox.iterdir()} - own
    assert len(outputs) == n, sorted(outputs)
    for name in outputs:
        assert_safe(name)
    assert "codgnp.exe" in outputs
    assert "\u00e9t\u00e9.png" in outputs
    new = {p for p in tree(tmp_path, inbox) - before if not p.startswith(str(tmp_path / "state"))}
    assert new == set(), new


@pytest.mark.parametrize(
    "untrusted",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "C:\\Windows\\system.ini",
        "..\\..\\evil.exe",
        "a\x00b.png",
        "\x1b[31mred.png",
        "line\nbreak.png",
        "CON",
        "con.txt",
        "LPT9.log",
        "AUX .png",
        "..",
        ".",
        "",
        "   ",
        ".bashrc",
        "x" * 1000 + ".png",
        "ü" * 500,
        "e\u0301.png",
        "evil\u202eexe.png",
        "\ud800.png",
        "a:b.png",
        'q"<>|?*.png',
        "evil.job",
        "EVIL.JOB",
        "a.status.yaml",
        ".x.png.abcdef12.part",
        "x.tmp",
        "t.job.done",
        "t.job.failed",
        "y" * 196 + ".job",
    ],
)
def test_safe_name_reduces_every_trick_to_one_plain_name(untrusted: str) -> None:
    name = safe_name(untrusted, fallback="out.png")
    assert_safe(name)
    assert safe_name(name, fallback="other") == name
