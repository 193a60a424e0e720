"""A part file left by a killed run is trusted for its digest, never for its name, size or state.

Each test finishes a ticket, then rebuilds what a run killed at one moment leaves behind, with
the part's bytes corrupted (same size): the next run must not give those bytes the output's
name. It downloads the output again, and the file placed matches the server's checksum.

Defences: ``Scheduler._download_one`` (a part in the ``placing`` state is hashed again before it
is placed) and ``downloader.fetch_to_part`` (a part already at full size is accepted only when
its digest matches).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from e2e_harness import png_bytes, run_agent, write_config

from agent import paths
from agent.emulator import RunningEmulator

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("state", "digest_kept"),
    [
        ("placing", True),  # killed after the part was verified, before it got its name
        ("pending", False),  # killed after the last byte, before the part was verified
    ],
)
async def test_a_corrupted_leftover_part_is_downloaded_again_not_placed(
    tmp_path: Path, make_emulator: MakeEmulator, state: str, digest_kept: bool
) -> None:
    emu = await make_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.png").write_bytes(png_bytes())
    (inbox / "a.job").write_text("input: a.png\ntarget: jpg\n")
    db = tmp_path / "s.db"
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], db)
    code, out = await run_agent(cfg, "run", "--once", timeout=60)
    assert code == 0, out
    (checksum,) = {o["checksum"] for j in emu.state.snapshot()["jobs"] for o in j["outputs"]}
    assert _md5(inbox / "a.jpg") == checksum

    # Rebuild the moment of the kill: the output not yet named, its part on disk, corrupted.
    conn = sqlite3.connect(db)
    with conn:
        (remote_id, digest) = conn.execute("SELECT remote_id, digest FROM outputs").fetchone()
        assert digest  # the verified digest recorded when the output went to placing
        conn.execute(
            "UPDATE outputs SET state = ?, dest_name = NULL, digest = ?",
            (state, digest if digest_kept else None),
        )
        conn.execute("UPDATE tickets SET phase = 'downloading', filed = 0, finished_at = NULL")
    conn.close()
    os.replace(inbox / "a.job.done", inbox / "a.job")
    part = inbox / paths.part_name("a.jpg", remote_id)
    os.replace(inbox / "a.jpg", part)
    bad = bytearray(part.read_bytes())
    bad[len(bad) // 2] ^= 0xFF
    part.write_bytes(bytes(bad))
    gets_before = len([r for r in emu.state.snapshot()["requests"] if r["route"] == "download"])

    code, out = await run_agent(cfg, "run", "--once", timeout=60)

    assert code == 0, out
    names = sorted(p.name for p in inbox.iterdir())
    assert names == ["a.job.done", "a.jpg", "a.png", "a.status.yaml"], names
    assert _md5(inbox / "a.jpg") == checksum, "the corrupted part was given the output's name"
    gets_after = len([r for r in emu.state.snapshot()["requests"] if r["route"] == "download"])
    assert gets_after == gets_before + 1  # downloaded again, once


async def test_a_restarted_run_never_claims_another_tickets_output_as_its_own(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    """Two tickets ask for one output name with the same bytes: the second's output is placed as
    ``same (1).jpg``. Killed before that placement was recorded (the file gone with it), the next
    run looks for the output it may have placed: ``same.jpg`` holds the same digest but is the
    first ticket's, known from the state file only (issue 13: nothing is loaded at start-up;
    the store is asked). It must download again and place ``same (1).jpg``, never claim
    ``same.jpg`` (two records naming one file: the next conflict rename would clobber it).

    Defence: ``Scheduler._find_placed`` skips the candidates ``is_own_output`` names."""
    emu = await make_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.png").write_bytes(png_bytes())
    ticket = 'input: a.png\ntarget: jpg\noutput: {name: "same.jpg"}\n'
    (inbox / "a.job").write_text(ticket)
    db = tmp_path / "s.db"
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], db)
    code, out = await run_agent(cfg, "run", "--once", timeout=60)
    assert code == 0, out
    (inbox / "b.job").write_text(ticket)
    code, out = await run_agent(cfg, "run", "--once", timeout=60)
    assert code == 0, out
    assert _md5(inbox / "same.jpg") == _md5(inbox / "same (1).jpg")

    # Rebuild the moment of the kill: b's output linked and its part gone, the name not yet
    # recorded; then the file is lost too (as a sync that never reached the disk).
    conn = sqlite3.connect(db)
    with conn:
        (tid,) = conn.execute("SELECT id FROM tickets WHERE path LIKE '%/b.job'").fetchone()
        conn.execute(
            "UPDATE outputs SET state = 'placing', dest_name = NULL WHERE ticket_id = ?", [tid]
        )
        conn.execute(
            "UPDATE tickets SET phase = 'downloading', filed = 0, finished_at = NULL WHERE id = ?",
            [tid],
        )
    conn.close()
    os.replace(inbox / "b.job.done", inbox / "b.job")
    (inbox / "same (1).jpg").unlink()
    gets_before = len([r for r in emu.state.snapshot()["requests"] if r["route"] == "download"])

    code, out = await run_agent(cfg, "run", "--once", timeout=60)

    assert code == 0, out
    assert _md5(inbox / "same (1).jpg") == _md5(inbox / "same.jpg")
    gets_after = len([r for r in emu.state.snapshot()["requests"] if r["route"] == "download"])
    assert gets_after == gets_before + 1  # downloaded again, not claimed from a's file
    conn = sqlite3.connect(db)
    names = sorted(r[0] for r in conn.execute("SELECT dest_name FROM outputs"))
    conn.close()
    assert names == ["same (1).jpg", "same.jpg"], names
