"""The operating system's differences, in one place: the only module with ``sys.platform`` branches.

Linux is what runs and is tested end to end today; the Windows and macOS branches are type-checked
(``mypy --platform win32`` / ``darwin``, see ``scripts/test``) and the portable choices are forced
on Linux by the tests where that is possible (the byte-range lock, see ``PortableLock``).

- Open flags (``O_NOFOLLOW``, ``O_DIRECTORY``, ``O_NONBLOCK``, ``O_CLOEXEC``, ``O_BINARY``): the
  platform's value, or 0 where the flag does not exist (Windows has only ``O_BINARY``).
- ``lock_exclusive``: the single-instance lock on an open file (``flock`` on POSIX,
  ``msvcrt.locking`` of one byte on Windows). Never blocks.
- ``fsync_dir``: make the names in a folder durable where a folder can be fsynced (not Windows).
- ``free_bytes``: free space for an unprivileged user (``shutil.disk_usage``, every platform).
- ``iov_max``, ``drop_written_pages``: ``sysconf`` and ``posix_fadvise`` where they exist.
- ``install_stop_handlers``: SIGINT/SIGTERM through the event loop on POSIX; Ctrl-C and
  Ctrl-Break (SIGINT, SIGBREAK) through ``signal.signal`` on Windows, where the loop has none.
- ``block_stop_signals``: keep SIGINT/SIGTERM off a worker thread (POSIX only).
- ``release_free_memory``: give the allocator's free pages back to the system (glibc's
  ``malloc_trim``); nothing elsewhere (other allocators return memory by themselves or not at all).
- ``pid_alive``: whether a process runs (``kill(pid, 0)`` on POSIX; on Windows ``os.kill`` with
  any signal but Ctrl-C/Ctrl-Break *terminates* the process, so it asks ``OpenProcess``).

- ``file_in_use``, ``check_in_use``, ``try_open``, ``replace``: Windows' sharing violations (a
  file another program holds open cannot be opened, renamed or replaced): recognised, waited
  for, and ``os.replace`` retried with a bounded backoff; forced portable mode on Linux has a
  stand-in (below).
- ``native_watcher``: which native folder events the watcher uses (the agent's own inotify
  reader on Linux; watchdog's observer elsewhere: ReadDirectoryChangesW on Windows, FSEvents on
  macOS, kqueue on the BSDs).
- ``filesystem_type``: the filesystem a folder lives on, from the platform's own table of mounts
  (``/proc/self/mountinfo``; ``mount``'s output on macOS and the BSDs; the drive's type on
  Windows), so network folders can be polled.

``CONVERT_AGENT_FORCE_PORTABLE=1`` in the environment (for tests) makes a Linux agent use the
choices made for the other platforms where they can run on Linux: the byte-range lock (Linux's
open-file-description locks standing in for ``msvcrt.locking``), placement without hard links
(the exclusive placeholder, then a rename), no folder fsync, output names shortened to fit
Windows' ``MAX_PATH``, watchdog's observer (through its threads, with the events Windows and
macOS report) instead of the inotify reader, and a stand-in for sharing violations: a file on
which another open file holds a record lock (an OFD lock or ``lockf``, the way a test plays
"another program has it open") fails to open, rename or be replaced with the error Windows
gives (``PermissionError``, ``winerror`` 32), so the same code path runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, Literal

NAME = sys.platform
IS_WINDOWS = sys.platform == "win32"
IS_LINUX = sys.platform.startswith("linux")
FORCE_PORTABLE = os.environ.get("CONVERT_AGENT_FORCE_PORTABLE") == "1"
# The longest full path (UTF-16 units, with its terminating NUL) where the system limits it:
# Windows' MAX_PATH, unless long paths are enabled (not assumed). Forced on for tests.
MAX_PATH: int | None = 260 if sys.platform == "win32" or FORCE_PORTABLE else None
# Whether output placement tries a hard link first (it falls back by itself where the
# filesystem has none; forced off, every placement takes the fallback).
HARD_LINKS = not FORCE_PORTABLE

if sys.platform == "win32":
    import ctypes
    import msvcrt

    O_NOFOLLOW = 0
    O_DIRECTORY = 0
    O_NONBLOCK = 0
    O_CLOEXEC = 0
    O_BINARY = os.O_BINARY
else:
    import fcntl

    O_NOFOLLOW = os.O_NOFOLLOW
    O_DIRECTORY = os.O_DIRECTORY
    O_NONBLOCK = os.O_NONBLOCK
    O_CLOEXEC = os.O_CLOEXEC
    O_BINARY = 0

# The errors a lock held by another process gives (flock: EWOULDBLOCK; msvcrt: EACCES/EDEADLK).
LOCK_HELD = frozenset({errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES, errno.EDEADLK})
# The byte the Windows lock covers: far past the pid written at the start of the file, so another
# process can still read that pid (a Windows byte-range lock is mandatory: reads of it fail).
LOCK_OFFSET = 1 << 20


def lock_exclusive(fd: int) -> None:
    """Take the single-instance lock on ``fd`` without waiting; OSError with an errno in
    ``LOCK_HELD`` when another process holds it. Released when ``fd`` is closed."""
    if sys.platform == "win32":
        PortableLock(msvcrt.locking, msvcrt.LK_NBLCK).lock(fd)
    elif sys.platform == "linux" and FORCE_PORTABLE:
        PortableLock(ofd_locking, 0).lock(fd)
    else:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


if sys.platform == "linux":

    def ofd_locking(fd: int, _mode: int, nbytes: int) -> None:
        """``msvcrt.locking(fd, LK_NBLCK, nbytes)``'s semantics on Linux: a non-blocking write
        lock of ``nbytes`` from the current position, held by this open file (an OFD lock, so a
        second descriptor in the same process conflicts too), gone when it is closed; EACCES
        when another holds it, as msvcrt says."""
        start = os.lseek(fd, 0, os.SEEK_CUR)
        arg = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, start, nbytes, 0)
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, arg)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise OSError(errno.EACCES, "the lock is held by another process") from exc
            raise


class PortableLock:
    """A byte-range lock of one byte at ``LOCK_OFFSET``: what Windows has (``msvcrt.locking``).

    ``locking(fd, mode, nbytes)`` locks from the file's current position, like
    ``msvcrt.locking``; tests on Linux pass a stand-in built on ``fcntl.lockf`` (the same
    semantics: per byte range, non-blocking, gone with the descriptor). The position is set back
    to 0 afterwards, where the caller reads and writes the pid."""

    def __init__(self, locking: Callable[[int, int, int], None], mode: int) -> None:
        self._locking = locking
        self._mode = mode

    def lock(self, fd: int) -> None:
        os.lseek(fd, LOCK_OFFSET, os.SEEK_SET)
        try:
            self._locking(fd, self._mode, 1)
        finally:
            os.lseek(fd, 0, os.SEEK_SET)


def fsync_dir(folder: Path, *, strict: bool = False) -> None:
    """Make the names just created, renamed or removed in ``folder`` durable.

    Nothing to do where a folder cannot be opened or fsynced (Windows: NTFS journals its names;
    some SMB and FUSE mounts). With ``strict`` an fsync error other than "not supported" is
    raised (the caller reports it); otherwise every error is ignored."""
    if sys.platform == "win32" or FORCE_PORTABLE:
        return
    try:
        fd = os.open(folder, os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if strict and exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged user can still write on ``path``'s filesystem; None when unknown."""
    try:
        return shutil.disk_usage(path).free
    except (OSError, ValueError):
        return None


def iov_max() -> int:
    """How many buffers one ``writev`` takes here (16 when the system does not say)."""
    if sys.platform == "win32":
        return 16
    try:
        n = os.sysconf("SC_IOV_MAX")
    except (ValueError, OSError):
        return 16
    return min(n, 1024) if n > 0 else 16


def drop_written_pages(fd: int, offset: int, length: int) -> None:
    """Advise the kernel to write back and drop ``length`` bytes at ``offset`` from the page
    cache (``POSIX_FADV_DONTNEED``); nothing where there is no ``posix_fadvise`` (macOS,
    Windows). Errors are ignored: it is advice."""
    if sys.platform == "win32" or sys.platform == "darwin":
        return
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals that ask the agent to stop: SIGINT and SIGTERM; on Windows SIGINT (Ctrl-C)
    and SIGBREAK (Ctrl-Break, and what a console window's close sends)."""
    if sys.platform == "win32":
        return (signal.SIGINT, signal.SIGBREAK)
    return (signal.SIGINT, signal.SIGTERM)


def install_stop_handlers(
    loop: asyncio.AbstractEventLoop, stop: Callable[[], None]
) -> Callable[[], None]:
    """Call ``stop`` on the loop when a stop signal arrives; return what removes the handlers.

    On POSIX through ``loop.add_signal_handler``; on Windows (no such thing there) through
    ``signal.signal``, handing over to the loop with ``call_soon_threadsafe``. From a thread
    other than the main one nothing can be installed: the returned function then does nothing."""
    sigs = stop_signals()
    if sys.platform == "win32":
        return install_signal_handlers(loop, stop, sigs)
    installed: list[signal.Signals] = []
    for sig in sigs:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop)
            installed.append(sig)

    def remove() -> None:
        for sig in installed:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)

    return remove


def install_signal_handlers(
    loop: asyncio.AbstractEventLoop, stop: Callable[[], None], sigs: tuple[signal.Signals, ...]
) -> Callable[[], None]:
    """Windows' way (its loops have no ``add_signal_handler``), which runs anywhere: a
    ``signal.signal`` handler for each of ``sigs`` hands ``stop`` to the loop with
    ``call_soon_threadsafe``. Returns what puts the previous handlers back; from a thread other
    than the main one nothing is installed and it does nothing."""
    previous: dict[signal.Signals, Any] = {}

    def handler(_signum: int, _frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(stop)

    for sig in sigs:
        with contextlib.suppress(ValueError):  # not the main thread
            previous[sig] = signal.signal(sig, handler)

    def remove() -> None:
        for sig, old in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, old)

    return remove


def block_stop_signals() -> None:
    """Keep SIGINT/SIGTERM away from the calling thread (and the threads it starts), so they
    reach the main thread's handlers; nothing where signals are not per thread (Windows)."""
    if sys.platform == "win32":
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


def start_file(target: str | Path) -> None:
    """Open ``target`` with its default application (Windows' ``os.startfile``)."""
    if sys.platform == "win32":
        os.startfile(target)
        return
    raise OSError(errno.ENOSYS, "os.startfile exists only on Windows", str(target))


_malloc_trim: Callable[[int], int] | bool | None = False  # False: not looked up yet


def release_free_memory() -> bool | None:
    """Give the C allocator's free pages back to the system: glibc's ``malloc_trim(0)``, which
    returns whole free pages from the middle of every arena's heap too, not only its top.

    Why: the agent's heap is a mix of short-lived transfer buffers (up to 256 KiB per socket
    read, many more once glibc's adaptive mmap threshold has risen) and long-lived small blocks
    (SQLite's page cache, Python objects over 512 bytes). Freed buffers leave holes glibc keeps,
    so RSS creeps up with traffic while the memory in use stays flat (docs/decisions.md, Memory
    held by the allocator). Returns whether memory was released, None where there is no
    ``malloc_trim`` (Windows, macOS, musl) or it cannot be called. Safe from any thread; it takes
    each arena's lock in turn (milliseconds)."""
    global _malloc_trim
    if _malloc_trim is False:
        _malloc_trim = None
        if sys.platform == "linux":
            import ctypes

            try:
                fn = ctypes.CDLL(None).malloc_trim
            except (OSError, AttributeError):  # not glibc
                pass
            else:
                fn.argtypes = [ctypes.c_size_t]
                fn.restype = ctypes.c_int
                _malloc_trim = fn
    if not callable(_malloc_trim):
        return None
    return bool(_malloc_trim(0))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's counts: alive). Never signals it."""
    if pid <= 0:
        return False
    if sys.platform == "win32":
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return bool(ctypes.get_last_error() == 5)  # access denied: it exists
        try:
            code = ctypes.c_ulong()
            if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
                return True
            return bool(code.value == 259)  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process
        return True
    return True


# --------------------------------------------------------------------------- folder events

NativeWatcher = Literal["inotify", "watchdog"]


def native_watcher() -> NativeWatcher:
    """Where native folder events come from: ``inotify`` (Linux: the agent's own reader,
    ``agent/inotify.py``, read by the event loop) or ``watchdog`` (its native observer:
    ReadDirectoryChangesW on Windows, FSEvents on macOS — kqueue where FSEvents cannot load —
    and kqueue on the BSDs). Forced portable mode on Linux takes watchdog's observer, so the
    way Windows and macOS see events (threads, modify events, no close-write) runs in tests."""
    if sys.platform == "linux" and not FORCE_PORTABLE:
        return "inotify"
    return "watchdog"


def native_events_name(kind: NativeWatcher | None = None) -> str:
    """What the native events (of ``kind``, default ``native_watcher()``) are called here, for
    log lines."""
    if sys.platform == "win32":
        return "ReadDirectoryChangesW"
    if sys.platform == "darwin":
        return "FSEvents"
    if sys.platform == "linux":
        return "inotify" if (kind or native_watcher()) == "inotify" else "inotify through watchdog"
    return "kqueue"


MOUNTINFO = Path("/proc/self/mountinfo")


def mount_table() -> str | None:
    """The system's table of mounts, in its own format: ``/proc/self/mountinfo`` on Linux,
    the output of ``mount`` on macOS and the BSDs; None on Windows (asked per drive there) or
    when it cannot be read."""
    if sys.platform == "win32":
        return None
    if sys.platform == "linux":
        try:
            return MOUNTINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    try:
        done = subprocess.run(
            ["/sbin/mount"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def filesystem_type(path: Path, table: str | None = None) -> str | None:
    """The type of the filesystem holding ``path`` (``ext4``, ``nfs4``, ``smbfs``, ``apfs``…;
    on Windows ``smb`` for a UNC path, ``remote`` for a mapped network drive), if known.

    ``table`` is ``mount_table()``'s text (read when not given; tests pass their own)."""
    if sys.platform == "win32":
        return _windows_filesystem(path)
    if table is None:
        table = mount_table()
        if table is None:
            return None
    if sys.platform == "linux":
        return mountinfo_type(path, table)
    return bsd_mount_type(path, table)


def _longest_mount(path: Path, mounts: list[tuple[str, str]]) -> str | None:
    real = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for mount_point, fstype in mounts:
        prefix = mount_point.rstrip("/") + "/"
        if (real == mount_point or real.startswith(prefix)) and (
            best is None or len(mount_point) >= best[0]
        ):
            best = (len(mount_point), fstype)
    return best[1] if best else None


def _unescape_mount(field_: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field_):
        octal = field_[i + 1 : i + 4]
        if field_[i] == "\\" and len(octal) == 3 and octal.isdigit():
            out.append(chr(int(octal, 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


def mountinfo_type(path: Path, mountinfo: str) -> str | None:
    """The filesystem type of ``path`` in Linux's ``/proc/self/mountinfo`` text (the longest
    matching mount point)."""
    mounts = []
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            mounts.append((_unescape_mount(fields[4]), fields[sep + 1]))
        except (ValueError, IndexError):
            continue
    return _longest_mount(path, mounts)


def bsd_mount_type(path: Path, table: str) -> str | None:
    """The filesystem type of ``path`` in the output of macOS's (and the BSDs') ``mount``:
    ``//user@server/share on /Volumes/share (smbfs, nodev, nosuid, mounted by user)``."""
    mounts = []
    for line in table.splitlines():
        head, sep, options = line.rpartition(" (")
        if not sep or " on " not in head:
            continue
        mount_point = head.split(" on ", 1)[1]
        fstype = options.split(",", 1)[0].rstrip(")").strip()
        if fstype:
            mounts.append((mount_point, fstype))
    return _longest_mount(path, mounts)


def windows_remote_kind(path_text: str, drive_type: int | None) -> str | None:
    r"""``smb`` for a UNC path (``\\server\share\…``, not the ``\\?\C:`` form),
    ``remote`` for a drive whose ``GetDriveTypeW`` is ``DRIVE_REMOTE`` (4), else None."""
    text = path_text.replace("/", "\\")
    if text.startswith("\\\\?\\UNC\\") or (
        text.startswith("\\\\") and not text.startswith(("\\\\?\\", "\\\\.\\"))
    ):
        return "smb"
    return "remote" if drive_type == 4 else None


def _windows_filesystem(path: Path) -> str | None:
    text = os.path.abspath(path)
    drive_type: int | None = None
    if sys.platform == "win32":
        drive = os.path.splitdrive(text)[0]
        if drive and not drive.startswith("\\"):
            drive_type = int(ctypes.windll.kernel32.GetDriveTypeW(drive + "\\"))
    return windows_remote_kind(text, drive_type)


# --------------------------------------------------------------------------- files in use

# ERROR_SHARING_VIOLATION, ERROR_LOCK_VIOLATION: another program holds the file open without
# sharing it (or a range of it locked). ERROR_ACCESS_DENIED is what MoveFileEx gives when the
# target of a replace is open without FILE_SHARE_DELETE (it also means a plain lack of rights:
# only ``replace`` treats it as "in use", and only for its bounded retries).
SHARING_ERRORS = frozenset({32, 33})
_ACCESS_DENIED = 5
# How long ``replace`` waits between attempts while the file is in use (about 0.75 s in all:
# enough for a virus scanner's or an indexer's look; the caller's own retry takes over after).
REPLACE_BACKOFF = (0.05, 0.1, 0.2, 0.4)


class SharingViolation(PermissionError):
    """What opening a file another program holds gives on Windows (``winerror`` 32); raised
    by the stand-in in forced portable mode on Linux."""

    winerror = 32


def file_in_use(exc: BaseException) -> bool:
    """Whether ``exc`` says another program has the file open (Windows' sharing or lock
    violation, or the stand-in's)."""
    return isinstance(exc, OSError) and getattr(exc, "winerror", None) in SHARING_ERRORS


def maybe_in_use(exc: BaseException) -> bool:
    """Whether an access-denied ``exc`` may mean a file in use rather than missing rights
    (Windows: MoveFileEx onto a target open without FILE_SHARE_DELETE)."""
    return IS_WINDOWS and getattr(exc, "winerror", None) == _ACCESS_DENIED


def _locked_by_another(path: Path) -> bool:
    """The stand-in (forced portable mode on Linux): whether another open file holds a lock on
    ``path`` (any byte of it). False when it cannot be told (the real call reports that)."""
    if sys.platform == "linux" and FORCE_PORTABLE:
        try:
            # Never through a symlink (a link at an output's name is replaced, not its target).
            fd = os.open(path, os.O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW)
        except OSError:
            return False
        try:
            probe = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
            answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, probe)
            return int(struct.unpack("hhqqi4x", answer)[0]) != fcntl.F_UNLCK
        except OSError:
            return False
        finally:
            os.close(fd)
    return False


def check_in_use(path: Path) -> None:
    """Raise ``SharingViolation`` for ``path`` where the platform would refuse to open it now
    because another program holds it: only the stand-in does anything here (on Windows the
    open itself raises). Call it before opening a ticket or an input."""
    if _locked_by_another(path):
        raise SharingViolation(
            errno.EACCES,
            "The process cannot access the file because it is being used by another process",
            str(path),
        )


def try_open(path: Path) -> None:
    """Open ``path`` for reading and close it again: raises what opening it raises, such as a
    sharing violation while another program still writes it (Windows). Nothing to do on Linux
    outside forced portable mode (nothing there refuses a reader)."""
    if not (IS_WINDOWS or FORCE_PORTABLE):
        return
    check_in_use(path)
    with open(path, "rb"):
        pass


def replace(src: Path, dst: Path, *, sleep: Callable[[float], None] = time.sleep) -> None:
    """``os.replace(src, dst)``, tried again after ``REPLACE_BACKOFF`` while Windows refuses it
    because another program has ``src`` or ``dst`` open (a sharing violation; for the target
    also access denied); then the last error is raised for the caller to report and retry."""
    for delay in REPLACE_BACKOFF:
        try:
            _replace(src, dst)
            return
        except OSError as exc:
            if not (file_in_use(exc) or maybe_in_use(exc)):
                raise
        sleep(delay)
    _replace(src, dst)


def _replace(src: Path, dst: Path) -> None:
    for path in (src, dst):
        check_in_use(path)
    os.replace(src, dst)
