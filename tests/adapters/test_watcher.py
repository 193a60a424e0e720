"""Watcher: startup scan, settle gate, events, polling, reconcile, removal."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from watchdog.observers.polling import PollingObserver

from agent import inotify
from agent import watcher as watcher_mod
from agent.watcher import Watcher, WatchEvent, classify, filesystem_type

SETTLE = 0.2


@dataclass(frozen=True)
class Folder:
    path: Path
    recursive: bool = False
    include: tuple[str, ...] = ("*.job",)
    polling: str = "auto"


class Collector:
    def __init__(self) -> None:
        self.events: list[WatchEvent] = []
        self.contents: list[bytes] = []
        self._changed = asyncio.Event()

    def __call__(self, event: WatchEvent) -> None:
        self.events.append(event)
        if event.kind != "removed":
            self.contents.append(event.path.read_bytes())
        self._changed.set()

    async def wait_for(
        self, pred: Callable[[list[WatchEvent]], bool], timeout: float = 3.0
    ) -> None:
        async with asyncio.timeout(timeout):
            while not pred(self.events):
                self._changed.clear()
                await self._changed.wait()

    def kinds(self) -> list[tuple[str, str]]:
        return [(e.kind, e.path.name) for e in self.events]


async def watchers(**defaults: Any) -> AsyncIterator[Callable[..., Any]]:
    """What the ``run`` fixtures yield: start a watcher on folders (test settings, then
    ``defaults``, then the call's own), stopped at the end of the test."""
    started: list[Watcher] = []

    async def start(folders: list[Folder], **kw: Any) -> tuple[Watcher, Collector]:
        col = Collector()
        options = {
            "settle_seconds": SETTLE,
            "reconcile_interval": 30.0,
            "fs_poll_interval": 0.1,
            **defaults,
            **kw,
        }
        w = Watcher(folders, col, **options)
        await w.start()
        started.append(w)
        return w, col

    yield start
    for w in started:
        await w.stop()


@pytest.fixture
async def run() -> AsyncIterator[Callable[..., Any]]:
    async for start in watchers():
        yield start


def count(events: list[WatchEvent], kind: str) -> int:
    return sum(1 for e in events if e.kind == kind)


async def test_ticket_present_at_start_is_emitted(tmp_path: Path, run) -> None:
    (tmp_path / "a.job").write_text("input: x\n")
    _, col = await run([Folder(tmp_path)])
    await col.wait_for(lambda ev: count(ev, "ticket") == 1)
    assert col.kinds() == [("ticket", "a.job")]
    assert col.events[0].folder.path == tmp_path


async def test_slow_writer_is_emitted_once_with_full_content(tmp_path: Path, run) -> None:
    _, col = await run([Folder(tmp_path)])
    path = tmp_path / "slow.job"
    with path.open("wb") as fh:
        for i in range(6):  # 0.6 s of writing, gaps well under the settle time
            fh.write(f"line {i}\n".encode())
            fh.flush()
            await asyncio.sleep(0.08)
    await col.wait_for(lambda ev: count(ev, "ticket") >= 1)
    await asyncio.sleep(SETTLE * 2)
    assert col.kinds() == [("ticket", "slow.job")]
    assert col.contents == [path.read_bytes()]


async def test_agent_files_and_hidden_files_are_never_tickets(tmp_path: Path, run) -> None:
    _, col = await run([Folder(tmp_path)])
    for name in [
        ".hidden.job",
        "x.job.done",
        "x.job.failed",
        "x.status.yaml",
        ".x.job.1234.part",
        "y.part",
        "notes.txt",
    ]:
        (tmp_path / name).write_text("x")
    (tmp_path / "real.job").write_text("x")
    await col.wait_for(lambda ev: count(ev, "ticket") == 1)
    await asyncio.sleep(SETTLE * 2)
    assert col.kinds() == [("ticket", "real.job")]


async def test_removal_of_an_announced_ticket_is_emitted(tmp_path: Path, run) -> None:
    path = tmp_path / "gone.job"
    path.write_text("x")
    _, col = await run([Folder(tmp_path)])
    await col.wait_for(lambda ev: count(ev, "ticket") == 1)
    path.rename(tmp_path / "gone.job.done")
    await col.wait_for(lambda ev: count(ev, "removed") == 1)
    assert col.kinds() == [("ticket", "gone.job"), ("removed", "gone.job")]


async def test_change_re_emits_but_reconcile_does_not(tmp_path: Path, run) -> None:
    path = tmp_path / "a.job"
    path.write_text("one\n")
    w, col = await run([Folder(tmp_path)])
    await col.wait_for(lambda ev: count(ev, "ticket") == 1)
    w.rescan()
    await asyncio.sleep(SETTLE * 2)
    assert count(col.events, "ticket") == 1
    path.write_text("two, longer\n")
    await col.wait_for(lambda ev: count(ev, "ticket") == 2)
    assert col.contents == [b"one\n", b"two, longer\n"]


async def test_polling_always_detects_new_tickets(tmp_path: Path, run) -> None:
    w, col = await run([Folder(tmp_path, polling="always")])
    assert w.mode(tmp_path) == "polling"
    (tmp_path / "p.job").write_text("x")
    await col.wait_for(lambda ev: count(ev, "ticket") == 1)
    (tmp_path / "p.job").unlink()
    await col.wait_for(lambda ev: count(ev, "removed") == 1)


def test_a_poll_lists_only_the_names_that_can_matter(tmp_path: Path) -> None:
    """A poll (of a network folder: a round trip per stat) looks at tickets and included
    files, and the subfolders of a recursive folder, not at outputs, inputs and sidecars."""
    from agent.watcher import PolledNames

    flat, tree = tmp_path / "flat", tmp_path / "tree"
    for d in (flat, tree / "sub", tree / ".hidden"):
        d.mkdir(parents=True)
    for name in (
        "a.job", "a.png", "a.jpg", "a.status.yaml", "b.job.done", ".c.job", "d.jpg.part",
        "pic.png.job",
    ):  # fmt: skip
        (flat / name).write_text("x")
        (tree / "sub" / name).write_text("x")
    (flat / "dir").mkdir()
    names = PolledNames()
    names.folders[str(flat)] = Folder(flat)  # type: ignore[assignment]
    names.folders[str(tree)] = Folder(tree, recursive=True, include=("*.job", "*.png"))  # type: ignore[assignment]
    listed = sorted(e.name for e in names(str(flat)))
    assert listed == ["a.job", "pic.png.job"], listed
    assert sorted(e.name for e in names(str(tree))) == ["sub"]  # not the hidden folder
    listed = sorted(e.name for e in names(str(tree / "sub")))
    assert listed == ["a.job", "a.png", "pic.png.job"], listed
    # a folder the agent does not watch is listed whole
    assert len(list(names(str(tmp_path)))) == 2


async def test_polling_finds_tickets_in_subfolders_and_included_files(tmp_path: Path, run) -> None:
    _, col = await run(
        [Folder(tmp_path, recursive=True, include=("*.job", "*.png"), polling="always")]
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.job").write_text("x")
    (tmp_path / "photo.png").write_text("x")
    (tmp_path / "photo.jpg").write_text("x")
    await col.wait_for(lambda ev: count(ev, "ticket") == 1 and count(ev, "plain") == 1)
    assert sorted(col.kinds()) == [("plain", "photo.png"), ("ticket", "deep.job")]


async def test_auto_polls_on_network_filesystem(tmp_path: Path, run, caplog) -> None:
    mountinfo = (
        "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        f"40 22 0:40 / {tmp_path} rw,relatime shared:2 - nfs4 server:/export rw\n"
    )
    with caplog.at_level(logging.INFO, logger="agent.watcher"):
        w, col = await run([Folder(tmp_path)], mountinfo=lambda: mountinfo)
    assert w.mode(tmp_path) == "polling"
    assert "nfs4" in caplog.text
    (tmp_path / "n.job").write_text("x")
    await col.wait_for(lambda ev: count(ev, "ticket") == 1)


@pytest.mark.parametrize("where", ["watches", "instances", "watchdog"])
async def test_native_watch_limit_falls_back_to_polling(
    tmp_path: Path, run, monkeypatch: pytest.MonkeyPatch, caplog, where: str
) -> None:
    """The inotify limits (max_user_watches: ENOSPC from a watch; max_user_instances: EMFILE
    from the instance), and a watchdog observer refusing (other systems), all mean polling."""

    def refuse(*args: Any, **kw: Any) -> Any:
        code = errno.EMFILE if where == "instances" else errno.ENOSPC
        raise OSError(code, "inotify limit reached")

    if where == "watches":
        monkeypatch.setattr(inotify.Inotify, "add_watch", refuse)
    elif where == "instances":
        monkeypatch.setattr(inotify.Inotify, "__init__", refuse)
    else:

        class NoInotify(PollingObserver):
            schedule = refuse

        monkeypatch.setattr(inotify, "available", lambda: False)
        monkeypatch.setattr(watcher_mod, "Observer", NoInotify)
    with caplog.at_level(logging.WARNING, logger="agent.watcher"):
        w, col = await run([Folder(tmp_path)])
    assert w.mode(tmp_path) == "polling"
    assert "inotify limit reached" in caplog.text
    (tmp_path / "f.job").write_text("x")
    await col.wait_for(lambda ev: count(ev, "ticket") == 1)


async def test_rule_folder_plain_files_and_ignore_hook(tmp_path: Path, run) -> None:
    folder = Folder(tmp_path, include=("*.jpg", "*.job"))
    asked: list[str] = []

    def ignore(p: Path) -> bool:
        asked.append(p.name)
        return p.name.startswith("out")

    _, col = await run([folder], ignore=ignore)
    (tmp_path / "photo.jpg").write_bytes(b"jpg")
    (tmp_path / "out.jpg").write_bytes(b"ours")
    (tmp_path / "t.job").write_text("x")
    (tmp_path / "doc.pdf").write_bytes(b"pdf")
    await col.wait_for(lambda ev: len(ev) >= 2)
    # A barrier instead of a sleep: a ticket written after the others settles no earlier than
    # they do, so once it is announced out.jpg and doc.pdf have been judged too.
    (tmp_path / "zz-barrier.job").write_text("x")
    await col.wait_for(
        lambda ev: ("ticket", "zz-barrier.job") in [(e.kind, e.path.name) for e in ev]
    )
    assert sorted(col.kinds()) == [
        ("plain", "photo.jpg"),
        ("ticket", "t.job"),
        ("ticket", "zz-barrier.job"),
    ]
    # only plain files are asked about (an output is never named *.job): no database round
    # trip per ticket in team mode
    assert sorted(asked) == ["out.jpg", "photo.jpg"]


async def test_recursive_folder_and_hidden_subfolders(tmp_path: Path, run) -> None:
    sub = tmp_path / "sub" / "deeper"
    sub.mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    (sub / "at-start.job").write_text("x")
    (tmp_path / ".git" / "no.job").write_text("x")
    _, col = await run([Folder(tmp_path, recursive=True)])
    await col.wait_for(lambda ev: count(ev, "ticket") == 1)
    new = tmp_path / "new"
    new.mkdir()
    (new / "later.job").write_text("x")
    await col.wait_for(lambda ev: count(ev, "ticket") == 2)
    await asyncio.sleep(SETTLE * 2)
    assert sorted(n for _, n in col.kinds()) == ["at-start.job", "later.job"]


async def test_non_recursive_folder_ignores_subfolders(tmp_path: Path, run) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "no.job").write_text("x")
    (tmp_path / "yes.job").write_text("x")
    _, col = await run([Folder(tmp_path)])
    await col.wait_for(lambda ev: count(ev, "ticket") == 1)
    (tmp_path / "sub" / "no2.job").write_text("x")
    await asyncio.sleep(SETTLE * 2)
    assert col.kinds() == [("ticket", "yes.job")]


async def test_vanished_folder_is_logged_once_and_picked_up_again(
    tmp_path: Path, run, caplog
) -> None:
    folder = tmp_path / "inbox"
    with caplog.at_level(logging.WARNING, logger="agent.watcher"):
        w, col = await run([Folder(folder)], reconcile_interval=0.1)
        await asyncio.sleep(0.35)
    assert caplog.text.count("not reachable") == 1
    folder.mkdir()
    (folder / "late.job").write_text("x")
    await col.wait_for(lambda ev: count(ev, "ticket") == 1)
    assert w.mode(folder) == "native"
    (folder / "later.job").write_text("x")
    await col.wait_for(lambda ev: count(ev, "ticket") == 2)


async def test_missed_events_found_by_reconcile(tmp_path: Path, run) -> None:
    w, col = await run([Folder(tmp_path, polling="never")], reconcile_interval=0.2)
    # Drop every event from now on: only the reconcile scan can find the ticket.
    if w._trees is not None:
        asyncio.get_running_loop().remove_reader(w._trees.inotify.fd)
    w._put_threadsafe = lambda item: None  # type: ignore[method-assign]
    for folder in w._folders:
        assert folder.handler is not None
        folder.handler._put = lambda item: None
    (tmp_path / "quiet.job").write_text("x")
    await col.wait_for(lambda ev: count(ev, "ticket") == 1)


needs_inotify = pytest.mark.skipif(not inotify.available(), reason="inotify is Linux only")


@needs_inotify
async def test_native_events_are_read_by_the_loop_without_watchdog_threads(
    tmp_path: Path, run
) -> None:
    w, col = await run([Folder(tmp_path, recursive=True)])
    assert w.mode(tmp_path) == "native"
    (tmp_path / "a.job").write_text("x")
    await col.wait_for(lambda ev: count(ev, "ticket") == 1)
    assert not [t for t in threading.enumerate() if type(t).__module__.startswith("watchdog")]


@needs_inotify
async def test_folder_moved_into_and_out_of_a_recursive_tree(tmp_path: Path, run) -> None:
    outside, inbox = tmp_path / "outside", tmp_path / "inbox"
    (outside / "batch" / "deep").mkdir(parents=True)
    (outside / "batch" / "deep" / "one.job").write_text("x")
    inbox.mkdir()
    _, col = await run([Folder(inbox, recursive=True)])
    os.rename(outside / "batch", inbox / "batch")
    await col.wait_for(lambda ev: count(ev, "ticket") == 1)
    (inbox / "batch" / "deep" / "two.job").write_text("x")  # watched since it moved in
    await col.wait_for(lambda ev: count(ev, "ticket") == 2)
    os.rename(inbox / "batch", outside / "gone")
    await col.wait_for(lambda ev: count(ev, "removed") == 2)
    # No longer watched: nothing is reported for it, under its old path or any other.
    (outside / "gone" / "deep" / "three.job").write_text("x")
    await asyncio.sleep(SETTLE * 2)
    assert sorted(col.kinds()) == [
        ("removed", "one.job"),
        ("removed", "two.job"),
        ("ticket", "one.job"),
        ("ticket", "two.job"),
    ]


@needs_inotify
async def test_watched_folder_renamed_away_and_made_again(tmp_path: Path, run) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    w, col = await run([Folder(inbox)], reconcile_interval=30)
    inbox.rename(tmp_path / "old")
    (tmp_path / "old" / "stale.job").write_text("x")  # in the renamed folder: not ours
    inbox.mkdir()
    (inbox / "fresh.job").write_text("x")
    await col.wait_for(lambda ev: count(ev, "ticket") == 1)
    (inbox / "again.job").write_text("x")  # the new folder has its own watch
    await col.wait_for(lambda ev: count(ev, "ticket") == 2)
    await asyncio.sleep(SETTLE * 2)
    assert col.kinds() == [("ticket", "fresh.job"), ("ticket", "again.job")]
    assert w.mode(inbox) == "native"


@needs_inotify
@pytest.mark.allow_skip(reason="a runner whose fs.inotify.max_queued_events is large skips it")
async def test_events_the_kernel_dropped_start_a_scan_at_once(tmp_path: Path, run) -> None:
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 100_000:
        pytest.skip("the kernel's event queue is too long to overflow quickly")
    _, col = await run([Folder(tmp_path)], reconcile_interval=300)
    # The loop cannot read while this runs: two events a file overflow the kernel's queue,
    # and the ticket's own events are among those dropped.
    for i in range(limit // 2 + 100):
        os.close(os.open(tmp_path / f"filler{i}.txt", os.O_WRONLY | os.O_CREAT))
    (tmp_path / "late.job").write_text("x")
    await col.wait_for(lambda ev: count(ev, "ticket") == 1, timeout=20)


@needs_inotify
async def test_an_error_handling_events_is_logged_and_a_scan_catches_up(
    tmp_path: Path, run, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    real = watcher_mod.classify
    broken: list[Path] = []

    def classify_once_broken(path: Path, folder: Any) -> Any:
        if not broken:
            broken.append(path)
            raise RuntimeError("boom")
        return real(path, folder)

    _, col = await run([Folder(tmp_path)], reconcile_interval=300)
    await asyncio.sleep(SETTLE)  # the look at the folder after its watch began is done
    monkeypatch.setattr(watcher_mod, "classify", classify_once_broken)
    with caplog.at_level(logging.ERROR, logger="agent.watcher"):
        (tmp_path / "a.job").write_text("x")
        await col.wait_for(lambda ev: count(ev, "ticket") == 1)
    assert broken and "handling folder events failed" in caplog.text
    (tmp_path / "b.job").write_text("x")  # still watching
    await col.wait_for(lambda ev: count(ev, "ticket") == 2)


@pytest.mark.parametrize("polling", ["never", "always"])
async def test_a_file_arriving_between_the_scan_and_the_watch_is_found(
    tmp_path: Path, run, monkeypatch: pytest.MonkeyPatch, polling: str
) -> None:
    real = Watcher._watch

    async def late(self: Watcher, folder: Any) -> None:
        (tmp_path / "between.job").write_text("x")  # after the startup scan, before the watch
        await real(self, folder)

    monkeypatch.setattr(Watcher, "_watch", late)
    _, col = await run([Folder(tmp_path, polling=polling)], reconcile_interval=300)
    await col.wait_for(lambda ev: count(ev, "ticket") == 1)


async def test_stop_is_clean_and_quiet(tmp_path: Path) -> None:
    col = Collector()
    w = Watcher(
        [Folder(tmp_path)], col, settle_seconds=SETTLE, reconcile_interval=30, fs_poll_interval=1
    )
    await w.start()
    (tmp_path / "a.job").write_text("x")
    await w.stop()
    await asyncio.sleep(SETTLE * 1.5)
    assert col.events == []


# --------------------------------------------------------------------------- pure helpers


def test_classify() -> None:
    root = Path("/w")
    flat, deep = Folder(root), Folder(root, recursive=True, include=("*.job", "*.PNG"))
    assert classify(root / "a.job", flat) == "ticket"
    assert classify(root / "A.JOB", flat) == "ticket"
    assert classify(root / "a.job.done", flat) is None
    assert classify(root / ".a.job", flat) is None
    assert classify(root / "s" / "a.job", flat) is None
    assert classify(root / "s" / "a.job", deep) == "ticket"
    assert classify(root / ".s" / "a.job", deep) is None
    assert classify(root / "s" / "x.png", deep) == "plain"
    assert classify(Path("/elsewhere/a.job"), flat) is None
    rule = Folder(root, include=("*.png",))  # a rule folder without `*.job` in its include
    assert classify(root / "x.png", rule) == "plain"
    assert classify(root / "x.png.job", rule) == "ticket"  # the ticket written for x.png
    assert classify(root / "X.PNG.JOB", rule) == "ticket"
    assert classify(root / "x.job", rule) is None
    assert classify(root / "x.png.job.done", rule) is None


def test_filesystem_type_longest_mount_and_escapes() -> None:
    info = (
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "30 22 0:30 / /mnt/my\\040share rw shared:4 - cifs //srv/s rw\n"
        "31 22 0:31 / /mnt/my rw - fuse.sshfs host: rw\n"
    )
    assert filesystem_type(Path("/mnt/my share/inbox"), info) == "cifs"
    assert filesystem_type(Path("/mnt/my/x"), info) == "fuse.sshfs"
    assert filesystem_type(Path("/mnt/myother"), info) == "ext4"
    assert filesystem_type(Path("/home"), "garbage\n") is None
