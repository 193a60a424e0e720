"""agent/platform.py: the single-instance lock (flock, and the byte-range lock Windows uses,
run here with Linux's open-file-description locks standing in for ``msvcrt.locking``), folder
fsync, free space, the stop signals through the event loop, and the sys.platform rule."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import re
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import platform
from agent.errors import ConfigError, from_os_error
from agent.store import StateLock

AGENT = Path(__file__).resolve().parents[2] / "agent"


def portable_lock(fd: int) -> None:
    platform.PortableLock(platform.ofd_locking, 0).lock(fd)


@pytest.mark.parametrize("lock", [platform.lock_exclusive, portable_lock], ids=["flock", "byte"])
def test_a_second_holder_is_refused_with_the_first_ones_pid(
    tmp_path: Path, lock: Callable[[int], None]
) -> None:
    db = tmp_path / "state.db"
    first = StateLock(db, lock=lock)
    first.acquire()
    # The pid is at the start of the file, where a reader finds it (not at the locked byte).
    assert (tmp_path / "state.db.lock").read_bytes() == f"{os.getpid()}\n".encode()
    with pytest.raises(ConfigError, match=f"pid {os.getpid()}.*already running"):
        StateLock(db, lock=lock).acquire()
    first.release()
    again = StateLock(db, lock=lock)
    again.acquire()
    again.release()


def test_the_byte_range_lock_leaves_the_pid_readable(tmp_path: Path) -> None:
    """Windows' byte-range locks are mandatory: the locked byte must lie past the pid."""
    seen: list[tuple[int, int]] = []

    def locking(fd: int, mode: int, nbytes: int) -> None:
        seen.append((os.lseek(fd, 0, os.SEEK_CUR), nbytes))
        platform.ofd_locking(fd, mode, nbytes)

    fd = os.open(tmp_path / "x.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"12345\n")
        platform.PortableLock(locking, 0).lock(fd)
        assert seen == [(platform.LOCK_OFFSET, 1)] and platform.LOCK_OFFSET > 64
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0
        other = os.open(tmp_path / "x.lock", os.O_RDWR)
        try:
            with pytest.raises(OSError) as caught:
                platform.PortableLock(platform.ofd_locking, 0).lock(other)
            assert caught.value.errno in platform.LOCK_HELD
            assert os.read(other, 32) == b"12345\n"
        finally:
            os.close(other)
    finally:
        os.close(fd)


def test_fsync_dir_syncs_a_folder_and_ignores_a_missing_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    platform.fsync_dir(tmp_path, strict=True)
    assert len(synced) == 1
    platform.fsync_dir(tmp_path / "gone", strict=True)  # cannot be opened: nothing to sync
    assert len(synced) == 1

    def refuse(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", refuse)
    platform.fsync_dir(tmp_path)  # not strict: ignored
    with pytest.raises(OSError):
        platform.fsync_dir(tmp_path, strict=True)


def test_free_bytes_is_what_the_filesystem_reports(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    free = platform.free_bytes(tmp_path)
    assert free is not None
    assert abs(free - st.f_bavail * st.f_frsize) <= 64 * 1024 * 1024  # other runs write too
    assert platform.free_bytes(tmp_path / "missing") is None


def test_iov_max_is_the_systems_capped() -> None:
    assert platform.iov_max() == min(os.sysconf("SC_IOV_MAX"), 1024)


async def test_a_stop_signal_calls_stop_on_the_loop_until_the_handlers_are_removed() -> None:
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    remove = platform.install_stop_handlers(loop, stopped.set)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stopped.wait(), 5)
    finally:
        remove()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


async def test_windows_way_of_stopping_runs_its_handlers_through_the_loop() -> None:
    """``install_signal_handlers`` is what Windows uses (its loops have no
    ``add_signal_handler``), for SIGINT and SIGBREAK (Ctrl-C, Ctrl-Break). It runs here too:
    SIGUSR1 plays SIGBREAK, which Linux does not have."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    before = signal.getsignal(signal.SIGUSR1)
    remove = platform.install_signal_handlers(loop, stopped.set, (signal.SIGUSR1,))
    try:
        assert signal.getsignal(signal.SIGUSR1) is not before
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.wait_for(stopped.wait(), 5)
    finally:
        remove()
    assert signal.getsignal(signal.SIGUSR1) is before
    # From a thread other than the main one nothing can be installed; nothing fails either.
    remove = await asyncio.to_thread(
        platform.install_signal_handlers, loop, stopped.set, (signal.SIGUSR1,)
    )
    assert signal.getsignal(signal.SIGUSR1) is before
    remove()


def test_sys_platform_is_branched_on_only_in_the_platform_layer() -> None:
    offenders = [
        str(p.relative_to(AGENT))
        for p in AGENT.rglob("*.py")
        if p.name != "platform.py"
        and "emulator" not in p.parts
        and re.search(r"\bsys\.platform\b", p.read_text())
    ]
    assert offenders == []


def test_pid_alive_tells_a_running_process_from_a_finished_one() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert platform.pid_alive(os.getpid())
    assert not platform.pid_alive(child.pid)
    assert not platform.pid_alive(0) and not platform.pid_alive(-1)


FRAGMENTED_HEAP = """
import ctypes
from agent import platform

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
buffers, kept = [], []
for _ in range(1024):  # 64 KiB: under the mmap threshold, so on the heap
    buffers.append(libc.malloc(64 * 1024))
    ctypes.memset(buffers[-1], 1, 64 * 1024)  # its pages are resident
    kept.append(libc.malloc(512))  # a small block that stays, after each buffer
for p in buffers:
    libc.free(p)
held = rss_mib()
released = platform.release_free_memory()
print(released, held - rss_mib())
"""


def test_release_free_memory_gives_back_the_holes_freed_buffers_leave() -> None:
    """What the agent's heap looks like after traffic: freed transfer buffers between small
    blocks that stay, holes the allocator does not hand back by itself. 64 MiB of them stay
    resident until ``release_free_memory`` gives their pages back (glibc, as on this machine).
    In a fresh process, whose heap has no free blocks yet to scatter the small ones."""
    out = subprocess.run(
        [sys.executable, "-c", FRAGMENTED_HEAP],
        cwd=AGENT.parent,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert out[0] == "True", out
    given_back = float(out[1])
    assert given_back >= 48, f"only {given_back:.1f} MiB of 64 MiB of holes given back"


# --------------------------------------------------------------------------- files in use


@pytest.fixture
def portable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "FORCE_PORTABLE", True)


def hold_lock(fd: int) -> None:
    """A write lock on the whole file, held by this open file until it is closed."""
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))


class HeldOpen:
    """``path`` held by "another program": an open-file-description lock, the stand-in's signal
    (not ``lockf``: a POSIX record lock goes whenever this process closes any descriptor of the
    file, and the stand-in's own look opens and closes one)."""

    def __init__(self, path: Path) -> None:
        self.fd: int | None = os.open(path, os.O_RDWR)
        hold_lock(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def test_the_stand_in_raises_what_windows_raises_while_another_program_holds_the_file(
    tmp_path: Path, portable: None
) -> None:
    f = tmp_path / "a.job"
    f.write_text("x")
    held = HeldOpen(f)
    with pytest.raises(PermissionError) as caught:
        platform.check_in_use(f)
    assert caught.value.winerror == 32 and platform.file_in_use(caught.value)  # type: ignore[attr-defined]
    with pytest.raises(PermissionError):
        platform.try_open(f)
    held.close()
    platform.check_in_use(f)
    platform.try_open(f)


def test_without_forced_portable_mode_linux_never_sees_a_file_in_use(tmp_path: Path) -> None:
    f = tmp_path / "a.job"
    f.write_text("x")
    held = HeldOpen(f)
    platform.check_in_use(f)  # Linux lets every reader in: nothing to wait for
    platform.try_open(f)
    held.close()


def test_file_in_use_knows_the_sharing_and_lock_violations_only() -> None:
    def err(winerror: int | None) -> OSError:
        exc = PermissionError(errno.EACCES, "denied")
        if winerror is not None:
            exc.winerror = winerror  # type: ignore[attr-defined]
        return exc

    assert platform.file_in_use(err(32)) and platform.file_in_use(err(33))
    assert not platform.file_in_use(err(5)) and not platform.file_in_use(err(None))
    assert not platform.file_in_use(ValueError("x"))
    assert not platform.maybe_in_use(err(5))  # access denied means "in use" on Windows only


def test_replace_is_retried_until_the_other_program_closes_the_target(
    tmp_path: Path, portable: None
) -> None:
    src, dst = tmp_path / ".a.jpg.part", tmp_path / "a.jpg"
    src.write_bytes(b"new")
    dst.write_bytes(b"old")
    held = HeldOpen(dst)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 2:
            held.close()  # the viewer closes the file during the second wait

    platform.replace(src, dst, sleep=sleep)
    assert dst.read_bytes() == b"new" and not src.exists()
    assert slept == list(platform.REPLACE_BACKOFF[:2])


def test_replace_gives_up_after_its_backoff_with_a_plain_message_and_loses_nothing(
    tmp_path: Path, portable: None
) -> None:
    src, dst = tmp_path / ".a.jpg.part", tmp_path / "a.jpg"
    src.write_bytes(b"new")
    dst.write_bytes(b"old")
    held = HeldOpen(dst)
    slept: list[float] = []
    with pytest.raises(PermissionError) as caught:
        platform.replace(src, dst, sleep=slept.append)
    held.close()
    assert slept == list(platform.REPLACE_BACKOFF)
    assert sum(slept) < 1.0  # bounded: the caller's own wait takes over
    assert src.read_bytes() == b"new" and dst.read_bytes() == b"old"
    err = from_os_error(caught.value, dst)
    assert err.title == "file in use"
    assert f"{dst} is open in another program" in err.message and "close it there" in err.message


def test_replace_does_not_retry_other_errors(tmp_path: Path, portable: None) -> None:
    slept: list[float] = []
    with pytest.raises(FileNotFoundError):
        platform.replace(tmp_path / "missing", tmp_path / "x", sleep=slept.append)
    assert slept == []
