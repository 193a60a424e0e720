"""The pipeline with the choices made for Windows and macOS, forced on Linux.

``CONVERT_AGENT_FORCE_PORTABLE=1`` (``agent/platform.py``) makes the agent under test use the
byte-range lock (Linux's open-file-description locks standing in for ``msvcrt.locking``),
placement without hard links (an exclusive placeholder, then a rename), no folder fsync and
watchdog's observer instead of the inotify reader. The first test shows those choices are in
force in the agent's process; the tests imported below run here again with them (each also runs
in its own module the Linux way), and ``scripts/test`` runs the whole e2e set so (``--portable``).

Not covered on Linux: watchdog's observers for ReadDirectoryChangesW and FSEvents themselves
(the same code path runs through its inotify observer), Windows' own sharing violations (a
stand-in: test_portable_in_use.py), and any real run on Windows or macOS."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from e2e_harness import (
    png_bytes,
    run_agent,
    spawn_agent,
    stop_agent,
    wait_for,
    wait_for_log,
    write_config,
)

# Pipeline tests that run again here, with the portable choices (collected under this module).
from test_case_names import (  # noqa: F401
    test_a_case_variant_of_the_output_name_is_kept_and_the_output_numbered,
)
from test_crash_graceful import (  # noqa: F401
    test_sigterm_mid_download_stops_within_5s_and_the_next_start_resumes,
)
from test_e2e_basic import (  # noqa: F401
    test_run_once_converts_a_ticket_and_files_it,
    test_run_once_exits_1_when_a_ticket_fails,
)
from test_recovery_digest import (  # noqa: F401
    test_a_corrupted_leftover_part_is_downloaded_again_not_placed,
    test_a_restarted_run_never_claims_another_tickets_output_as_its_own,
)

from agent.emulator import RunningEmulator

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]


@pytest.fixture(autouse=True)
def _portable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVERT_AGENT_FORCE_PORTABLE", "1")  # the agents spawned inherit it


def _lock_kinds(path: Path) -> set[str]:
    """The kinds of lock (/proc/locks: FLOCK, POSIX, OFDLCK) held on ``path``'s inode."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    kinds = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if dev in fields:
            kinds.add(fields[1])
    return kinds


async def test_the_portable_choices_are_in_force_and_the_lock_keeps_a_second_agent_out(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.png").write_bytes(png_bytes())
    (inbox / "a.job").write_text("input: a.png\ntarget: jpg\n")
    db = tmp_path / "s.db"
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], db)
    log = tmp_path / "agent.log"
    proc = spawn_agent(cfg, log=log)
    try:
        await wait_for_log(log, "watching")
        await wait_for_log(log, "CONVERT_AGENT_FORCE_PORTABLE")
        # watchdog's observer, as on Windows and macOS, not the agent's own inotify reader
        assert "native events (inotify through watchdog, watchdog's InotifyObserver" in (
            log.read_text()
        )
        lock = tmp_path / "s.db.lock"
        assert _lock_kinds(lock) == {"OFDLCK"}  # the byte-range lock, not flock
        assert lock.read_text() == f"{proc.pid}\n"  # the pid stays where a reader finds it
        code, out = await run_agent(cfg, "run", "--once", timeout=60)
        assert code != 0 and f"pid {proc.pid}" in out and "already running" in out, out
        await wait_for((inbox / "a.job.done").exists, 60, "a.job.done")
    finally:
        assert await stop_agent(proc) == 0, log.read_text()[-3000:]
    assert sorted(p.name for p in inbox.iterdir()) == [
        "a.job.done",
        "a.jpg",
        "a.png",
        "a.status.yaml",
    ]


async def test_an_output_name_too_long_for_windows_max_path_is_shortened(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    inbox = tmp_path / ("d" * 64) / "inbox"  # deep enough whatever pytest's base folder is
    inbox.mkdir(parents=True)
    (inbox / "a.png").write_bytes(png_bytes())
    long = "x" * 190
    (inbox / "a.job").write_text(
        f'input: a.png\ntarget: jpg\noutput: {{name: "{{stem}}-{long}.jpg"}}\n'
    )
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "s.db")
    assert len(str(inbox)) + 1 + len(f"a-{long}.jpg") > 259  # too long as it is

    code, out = await run_agent(cfg, "run", "--once", timeout=60)

    assert code == 0, out
    (output,) = [p for p in inbox.iterdir() if p.suffix == ".jpg"]
    assert output.name.startswith("a-xxxx") and len(output.name) < len(f"a-{long}.jpg")
    assert len(str(output)) + 15 <= 259  # its part file fitted too
