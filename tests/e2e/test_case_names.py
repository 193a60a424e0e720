"""Output names that differ from a file in the folder only in case or Unicode normalisation are
taken (one name on NTFS and APFS, and on a share Windows or macOS clients open), on every
platform: the output is numbered, the user's file stays, and a restarted run finds the numbered
output it placed before a kill instead of placing it a second time.

Defences: ``downloader.place`` (``FolderNames``, ``paths.name_key``) and
``Scheduler._find_placed`` (it passes over a candidate another name holds but for case)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

from e2e_harness import png_bytes, run_agent, write_config

from agent import paths
from agent.emulator import RunningEmulator

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]


async def test_a_case_variant_of_the_output_name_is_kept_and_the_output_numbered(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.png").write_bytes(png_bytes())
    (inbox / "A.JPG").write_bytes(b"the user's photo")
    (inbox / "a.job").write_text("input: a.png\ntarget: jpg\n")
    db = tmp_path / "s.db"
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], db)
    code, out = await run_agent(cfg, "run", "--once", timeout=60)
    assert code == 0, out
    names = sorted(p.name for p in inbox.iterdir())
    assert names == ["A.JPG", "a (1).jpg", "a.job.done", "a.png", "a.status.yaml"], names
    assert (inbox / "A.JPG").read_bytes() == b"the user's photo"

    # Rebuild a kill between the link and the part's removal: the part and "a (1).jpg" are one
    # file, the name not yet recorded. "a.jpg" is free, but was passed over for "A.JPG".
    conn = sqlite3.connect(db)
    with conn:
        (remote_id,) = conn.execute("SELECT remote_id FROM outputs").fetchone()
        conn.execute("UPDATE outputs SET state = 'placing', dest_name = NULL")
        conn.execute("UPDATE tickets SET phase = 'downloading', filed = 0, finished_at = NULL")
    conn.close()
    os.replace(inbox / "a.job.done", inbox / "a.job")
    os.link(inbox / "a (1).jpg", inbox / paths.part_name("a.jpg", remote_id))
    gets_before = len([r for r in emu.state.snapshot()["requests"] if r["route"] == "download"])

    code, out = await run_agent(cfg, "run", "--once", timeout=60)

    assert code == 0, out
    names = sorted(p.name for p in inbox.iterdir())
    assert names == ["A.JPG", "a (1).jpg", "a.job.done", "a.png", "a.status.yaml"], names
    gets_after = len([r for r in emu.state.snapshot()["requests"] if r["route"] == "download"])
    assert gets_after == gets_before  # found where it was placed, not downloaded again
    conn = sqlite3.connect(db)
    (dest,) = conn.execute("SELECT dest_name FROM outputs").fetchone()
    conn.close()
    assert dest == "a (1).jpg"
