"""agent/platform.py: the single-instance lock (flock, and the byte-range lock Windows uses,
run here with Linux's open-file-description locks standing in for ``msvcrt.locking``), folder
fsync, free space, the stop signals through the event loop, and the sys.platform rule."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import platform
from agent.errors import ConfigError
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
