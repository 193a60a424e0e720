"""The watcher with watchdog's native observer: what Windows (ReadDirectoryChangesW) and macOS
(FSEvents) run, here through watchdog's inotify observer with the events those systems report
(no close-write), as forced portable mode runs it. Plus the fall-back to polling when native
events cannot start or stop, and the platform's mount tables."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from test_watcher import SETTLE, Collector, Folder, count, watchers
from watchdog.observers.api import BaseObserver

from agent import platform
from agent.watcher import WATCHDOG_EVENTS, Watcher


@pytest.fixture
async def run() -> AsyncIterator[Callable[..., Any]]:
    async for start in watchers(native="watchdog"):
        yield start


def _watchdog_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if type(t).__module__.startswith("watchdog")]


async def test_forced_portable_mode_takes_watchdogs_observer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert platform.native_watcher() == "inotify"  # Linux, as it runs normally
    monkeypatch.setattr(platform, "FORCE_PORTABLE", True)
    assert platform.native_watcher() == "watchdog"
    col = Collector()
    w = Watcher(
        [Folder(tmp_path)], col, settle_seconds=SETTLE, reconcile_interval=30, fs_poll_interval=1
    )
    await w.start()
    try:
        assert w.mode(tmp_path) == "native" and w._trees is None
        assert _watchdog_threads()
        (tmp_path / "a.job").write_text("x")
        await col.wait_for(lambda ev: count(ev, "ticket") == 1)
    finally:
        await w.stop()


async def test_a_ticket_written_slowly_is_announced_once_with_its_content(
    tmp_path: Path, run: Callable[..., Any]
) -> None:
    w, col = await run([Folder(tmp_path)])
    assert w.mode(tmp_path) == "native" and w._trees is None and _watchdog_threads()
    path = tmp_path / "slow.job"
    with path.open("wb") as fh:
        for i in range(6):
            fh.write(f"line {i}\n".encode())
            fh.flush()
            await asyncio.sleep(0.08)
    await col.wait_for(lambda ev: count(ev, "ticket") >= 1)
    await asyncio.sleep(SETTLE * 2)
    assert col.kinds() == [("ticket", "slow.job")]
    assert col.contents == [path.read_bytes()]


async def test_an_edit_in_place_is_seen_without_a_close_write_event(
    tmp_path: Path, run: Callable[..., Any]
) -> None:
    assert not any(e.event_type == "closed" for e in WATCHDOG_EVENTS)  # as on Windows/macOS
    path = tmp_path / "a.job"
    path.write_text("one\n")
    _, col = await run([Folder(tmp_path)])
    await col.wait_for(lambda ev: count(ev, "ticket") == 1)
    await asyncio.sleep(SETTLE)
    with path.open("r+") as fh:  # same file, new content: only a modification to see
        fh.write("two, longer\n")
    await col.wait_for(lambda ev: count(ev, "ticket") == 2)
    assert col.contents[-1] == b"two, longer\n"


async def test_removal_and_rename_of_an_announced_ticket_are_seen(
    tmp_path: Path, run: Callable[..., Any]
) -> None:
    (tmp_path / "gone.job").write_text("x")
    (tmp_path / "done.job").write_text("x")
    _, col = await run([Folder(tmp_path)])
    await col.wait_for(lambda ev: count(ev, "ticket") == 2)
    (tmp_path / "gone.job").unlink()
    (tmp_path / "done.job").rename(tmp_path / "done.job.done")
    await col.wait_for(lambda ev: count(ev, "removed") == 2)
    assert sorted(col.kinds()) == [
        ("removed", "done.job"),
        ("removed", "gone.job"),
        ("ticket", "done.job"),
        ("ticket", "gone.job"),
    ]


async def test_a_folder_moved_into_a_recursive_tree_is_watched(
    tmp_path: Path, run: Callable[..., Any]
) -> None:
    outside, inbox = tmp_path / "outside", tmp_path / "inbox"
    (outside / "batch" / "deep").mkdir(parents=True)
    (outside / "batch" / "deep" / "one.job").write_text("x")
    inbox.mkdir()
    _, col = await run([Folder(inbox, recursive=True)])
    os.rename(outside / "batch", inbox / "batch")
    await col.wait_for(lambda ev: count(ev, "ticket") == 1)
    (inbox / "batch" / "deep" / "two.job").write_text("x")
    await col.wait_for(lambda ev: count(ev, "ticket") == 2)
    os.rename(inbox / "batch", outside / "gone")
    await col.wait_for(lambda ev: count(ev, "removed") == 2)


async def test_a_watched_folder_replaced_by_another_of_its_name_is_watched_afresh(
    tmp_path: Path, run: Callable[..., Any]
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    w, col = await run([Folder(inbox)], reconcile_interval=30)  # no scan would find them
    inbox.rename(tmp_path / "old")
    inbox.mkdir()
    await asyncio.sleep(SETTLE * 2)  # the old watch's event for the folder has been handled
    (inbox / "fresh.job").write_text("x")
    await col.wait_for(lambda ev: count(ev, "ticket") == 1)
    (tmp_path / "old" / "stale.job").write_text("x")  # in the renamed folder: not ours
    (inbox / "again.job").write_text("x")
    await col.wait_for(lambda ev: count(ev, "ticket") == 2)
    await asyncio.sleep(SETTLE * 2)
    assert col.kinds() == [("ticket", "fresh.job"), ("ticket", "again.job")]
    assert w.mode(inbox) == "native"


async def test_native_events_that_stop_turn_the_folder_to_polling(
    tmp_path: Path, run: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    w, col = await run([Folder(tmp_path)], reconcile_interval=0.3)
    folder = w._folders[0]
    assert folder.mode == "native" and isinstance(folder.observer, BaseObserver)
    (emitter,) = [e for e in folder.observer.emitters if e.watch == folder.watch]
    with caplog.at_level(logging.WARNING, logger="agent.watcher"):
        emitter.stop()  # what a share that goes away does to ReadDirectoryChangesW's thread
        await asyncio.to_thread(emitter.join, 5)
        async with asyncio.timeout(5):
            while w.mode(tmp_path) != "polling":
                await asyncio.sleep(0.05)
    assert "native events (inotify through watchdog) stopped for it" in caplog.text
    assert "polling" in w.snapshot()["folders"][0]["mode"]
    (tmp_path / "after.job").write_text("x")
    await col.wait_for(lambda ev: count(ev, "ticket") == 1)


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeError("Cannot start fsevents stream"),
        OSError(errno.EACCES, "Permission denied"),
        OSError(errno.ENOSPC, "No space left on device"),
    ],
)
async def test_a_native_observer_that_cannot_start_means_polling(
    tmp_path: Path,
    run: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    failure: Exception,
) -> None:
    def refuse(self: BaseObserver, *args: Any, **kw: Any) -> Any:
        raise failure

    from watchdog.observers import Observer

    monkeypatch.setattr(Observer, "schedule", refuse)
    with caplog.at_level(logging.WARNING, logger="agent.watcher"):
        w, col = await run([Folder(tmp_path)])
    assert w.mode(tmp_path) == "polling"
    assert "the native watcher (inotify through watchdog) could not start" in caplog.text
    (tmp_path / "a.job").write_text("x")
    await col.wait_for(lambda ev: count(ev, "ticket") == 1)


async def test_with_polling_never_a_failed_native_observer_leaves_the_reconcile_scan(
    tmp_path: Path,
    run: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refuse(self: BaseObserver, *args: Any, **kw: Any) -> Any:
        raise RuntimeError("Cannot start fsevents stream")

    from watchdog.observers import Observer

    monkeypatch.setattr(Observer, "schedule", refuse)
    with caplog.at_level(logging.ERROR, logger="agent.watcher"):
        w, col = await run([Folder(tmp_path, polling="never")], reconcile_interval=0.3)
    assert w.mode(tmp_path) is None
    assert "cannot watch" in caplog.text and "still scanned every" in caplog.text
    (tmp_path / "a.job").write_text("x")
    await col.wait_for(lambda ev: count(ev, "ticket") == 1)


# --------------------------------------------------------------------------- mount tables


def test_macos_mount_output_gives_the_filesystem_of_a_path() -> None:
    table = "\n".join(
        [
            "/dev/disk3s1s1 on / (apfs, sealed, local, read-only, journaled)",
            "/dev/disk3s5 on /System/Volumes/Data (apfs, local, journaled, nobrowse)",
            "//me@nas/Photos on /Volumes/Photos (smbfs, nodev, nosuid, mounted by me)",
            "nas:/export on /Volumes/nfs (nfs, nodev, nosuid, mounted by me)",
            "/dev/disk5 on /Volumes/My Disk (hfs, local, nodev, nosuid)",
            "garbage",
        ]
    )
    assert platform.bsd_mount_type(Path("/Volumes/Photos/inbox"), table) == "smbfs"
    assert platform.bsd_mount_type(Path("/Volumes/nfs"), table) == "nfs"
    assert platform.bsd_mount_type(Path("/Volumes/My Disk/x"), table) == "hfs"
    assert platform.bsd_mount_type(Path("/Users/me"), table) == "apfs"
    assert platform.bsd_mount_type(Path("/x"), "garbage\n") is None


@pytest.mark.parametrize(
    ("path", "drive_type", "kind"),
    [
        (r"\\nas\share\inbox", None, "smb"),
        ("//nas/share/inbox", None, "smb"),
        (r"\\?\UNC\nas\share\inbox", None, "smb"),
        (r"\\?\C:\Users\me\inbox", 3, None),
        (r"Z:\inbox", 4, "remote"),  # DRIVE_REMOTE: a mapped network drive
        (r"C:\Users\me\inbox", 3, None),  # DRIVE_FIXED
    ],
)
def test_windows_network_folders_are_told_from_local_ones(
    path: str, drive_type: int | None, kind: str | None
) -> None:
    assert platform.windows_remote_kind(path, drive_type) == kind


async def test_a_folder_on_a_windows_share_or_macos_smb_mount_is_polled(
    tmp_path: Path, run: Callable[..., Any]
) -> None:
    for fstype in ("smbfs", "smb", "remote", "afpfs", "webdav", "macfuse"):
        info = f"1 0 8:1 / {tmp_path} rw - {fstype} //srv/s rw\n"
        w, _ = await run([Folder(tmp_path)], mountinfo=lambda info=info: info)
        assert w.mode(tmp_path) == "polling", fstype
        await w.stop()
