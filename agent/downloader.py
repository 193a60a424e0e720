"""Output files: stream → hash → fsync → link/replace. The only writer of output files.

It never talks HTTP: the scheduler hands it ``stream_opener(offset, validator)``, the api's
download context manager. Data goes to a hidden part file in the target folder (opened with
``O_NOFOLLOW``, never through a symlink), is hashed while it streams, checked against the
server's checksum and size, fsynced, and only then placed under its final name: ``os.link``
(atomic, never clobbers) for rename/skip/fail, ``os.replace`` for overwrite, then the folder is
fsynced. A name is taken when any name in the folder has its ``paths.name_key`` (the same name
but for case or Unicode normalisation, one name on NTFS and APFS): rename numbers it, skip and
fail treat it as existing, overwrite replaces that file under its own spelling (``FolderNames``).

What happens to the part file on errors:
- kept when a later attempt can resume from it: network trouble (``RetryableError`` from the
  stream), cancellation, and any error in :func:`place` (the verified part is reused by the next
  :func:`fetch_to_part` without spending a download);
- deleted on a checksum or size mismatch, a permanent refusal, or a local write error (disk full:
  the space is given back).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import errno
import hashlib
import logging
import os
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from agent import platform
from agent.errors import (
    AgentError,
    ApiUnavailable,
    ErrorKind,
    LocalResourceError,
    OutputUnavailable,
    PermanentError,
    RetryableError,
    from_os_error,
)
from agent.models import ConflictPolicy, VerifyMode
from agent.paths import conflict_candidates, name_key

log = logging.getLogger("agent.downloader")

_ALGORITHMS = {32: "md5", 40: "sha1", 64: "sha256"}
_HEX = frozenset("0123456789abcdef")
# Digest of files without a server checksum, so a restart can still recognise them.
LOCAL_ALGORITHM = "sha256"
# Received bytes are handed to the hashing and writing threads this many at a time: each hand-off
# costs the loop a few wake-ups, and 4 MiB instead of 1 MiB took ~0.2 s of CPU off 1 GiB.
WRITE_BUFFER = 4 * 1024 * 1024
# Every this many bytes written, the new ones are handed to the kernel's writeback
# (POSIX_FADV_DONTNEED starts it) and the ones handed over the time before, clean by now, are
# dropped from the page cache. The final fsync has little left to wait for, a 1 GiB download
# keeps ~64 MiB of page cache instead of 1 GiB, and its writes reuse those pages (writing into
# fresh pages measured 1.9-2.9 s of CPU per GiB on the 2-core benchmark VM, recycled 0.6 s).
WRITEBACK_EVERY = 32 * 1024 * 1024
READ_BLOCK = 1024 * 1024
# Received bytes handed to the hashing and writing threads and not yet through both: the loop
# waits above this (it bounds memory; a few buffers keep both threads busy between wake-ups).
IN_FLIGHT = 16 * 1024 * 1024
_WRITEV = getattr(os, "writev", None)


_IOV_MAX = platform.iov_max()
# Hard links unsupported here (some SMB/FUSE mounts, Android storage): use the fallback.
_NO_LINK = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS, errno.EMLINK}
)
_NOFOLLOW = platform.O_NOFOLLOW
_CLOEXEC = platform.O_CLOEXEC
_BINARY = platform.O_BINARY

Verdict = Literal["verified", "unverified"]


class DownloadStreamLike(Protocol):
    """What :func:`fetch_to_part` needs of ``agent.api.DownloadStream``."""

    @property
    def offset(self) -> int: ...
    @property
    def validator(self) -> str | None: ...
    @property
    def total(self) -> int | None: ...
    @property
    def chunks(self) -> AsyncIterator[bytes]: ...


StreamOpener = Callable[[int, str | None], AbstractAsyncContextManager[DownloadStreamLike]]


@dataclass(frozen=True)
class FetchResult:
    size: int
    digest: str  # hex, with the server checksum's algorithm (else sha256)
    verdict: Verdict
    algorithm: str = LOCAL_ALGORITHM
    validator: str | None = None  # from the last stream opened, for a later If-Range


class ChecksumMismatch(AgentError):
    """The downloaded bytes are not what the server announced; the part was deleted.

    Its own class (not Permanent, not Retryable): the scheduler decides how many downloads to
    spend on it before the ticket fails.
    """

    kind = ErrorKind.PERMANENT
    default_title = "checksum mismatch"

    def __init__(self, message: str, *, expected: str, actual: str) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class SizeMismatch(ChecksumMismatch):
    """The size differs from the job's ``size`` (and no checksum said the data was right)."""

    default_title = "size mismatch"


# --------------------------------------------------------------------------- checksums


def checksum_algorithm(digest: str) -> str | None:
    """The hash behind a hex ``digest``, judged by its length: 32 md5, 40 sha1, 64 sha256."""
    d = digest.strip().lower()
    if not d or not set(d) <= _HEX:
        return None
    return _ALGORITHMS.get(len(d))


def matches(path: Path, checksum: str) -> bool:
    """Whether the regular file at ``path`` (not a symlink) has this checksum.

    False when the checksum's algorithm is unknown or the file is missing, a symlink or not a
    regular file; other OS errors become ``LocalResourceError``.
    """
    algorithm = checksum_algorithm(checksum)
    if algorithm is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | _BINARY)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EISDIR):
            return False
        raise from_os_error(exc, path) from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        h = hashlib.new(algorithm)
        _hash_fd(fd, h, None)
    except OSError as exc:
        raise from_os_error(exc, path) from exc
    finally:
        os.close(fd)
    return h.hexdigest() == checksum.strip().lower()


def _hash_fd(fd: int, h: hashlib._Hash, limit: int | None) -> int:
    """Feed ``h`` from ``fd``'s current position (at most ``limit`` bytes); returns the count."""
    done = 0
    while limit is None or done < limit:
        want = READ_BLOCK if limit is None else min(READ_BLOCK, limit - done)
        block = os.read(fd, want)
        if not block:
            break
        h.update(block)
        done += len(block)
    return done


# --------------------------------------------------------------------------- fetching


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _open_part(part: Path, *, keep: bool) -> int:
    """Open the part for writing without following a symlink; a symlink there is removed."""
    flags = os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC | _BINARY
    try:
        st = os.lstat(part)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode) or not keep:
            if stat.S_ISDIR(st.st_mode):
                raise PermanentError(f"{part} is a directory; the download cannot be written")
            os.unlink(part)  # a planted symlink is removed, never followed
    return os.open(part, flags, 0o666)


class _Sink:
    """A part file being written: hashing and writing run in two worker threads.

    ``write_async`` hands the received blocks (a list of the stream's own ``bytes``, never
    joined or copied) to a hashing thread and a writing thread, one FIFO queue each, and
    returns at once while less than ``IN_FLIGHT`` bytes wait in them; the loop keeps receiving
    meanwhile. Hashing (the slower part) and ``writev`` both release the GIL, so on two cores
    receive, hash and write overlap. After a failed write no later block is written. ``wait``
    joins all the work handed off before anything else touches the file or the hash (restart,
    a synchronous flush, close)."""

    def __init__(self, fd: int, algorithm: str) -> None:
        self.fd = fd
        self.algorithm = algorithm
        self.hash = hashlib.new(algorithm)
        self.size = 0
        self.blocks: list[bytes] = []  # received, not yet handed to the threads
        self.buffered = 0
        self.written = 0  # bytes on disk (in the page cache)
        self.kicked = 0  # bytes handed to writeback
        self.dropped = 0  # bytes dropped from the page cache (written back before)
        # Batches handed off and not yet known to be done: (hash future, write future, bytes).
        self._inflight: collections.deque[
            tuple[concurrent.futures.Future[None], concurrent.futures.Future[None], int]
        ] = collections.deque()
        self._inflight_bytes = 0
        self._hasher: concurrent.futures.ThreadPoolExecutor | None = None
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._write_error: BaseException | None = None

    def add(self, chunk: bytes) -> None:
        self.blocks.append(chunk)
        self.buffered += len(chunk)
        self.size += len(chunk)

    async def write_async(self) -> None:
        """Hand the received blocks to the threads; wait only while too much is in flight."""
        blocks, self.blocks, self.buffered = self.blocks, [], 0
        if not blocks:
            return
        if self._hasher is None or self._writer is None:
            # One worker each: a single-thread executor runs its queue in order.
            self._hasher = concurrent.futures.ThreadPoolExecutor(1, "part-hash")
            self._writer = concurrent.futures.ThreadPoolExecutor(1, "part-write")
        n = sum(map(len, blocks))
        self._inflight.append(
            (
                self._hasher.submit(self._hash_blocks, blocks),
                self._writer.submit(self._write_only, blocks),
                n,
            )
        )
        self._inflight_bytes += n
        while self._inflight:
            hashed, written, n = self._inflight[0]
            if self._inflight_bytes > IN_FLIGHT:
                # Shielded: a cancelled download must not cancel a queued write (a gap).
                await asyncio.shield(asyncio.wrap_future(hashed))
                await asyncio.shield(asyncio.wrap_future(written))
            elif not (hashed.done() and written.done()):
                break
            hashed.result()
            written.result()  # a write error surfaces here, while the download goes on
            self._inflight.popleft()
            self._inflight_bytes -= n

    def wait(self) -> None:
        """Join all the work handed off (blocking; at most ``IN_FLIGHT`` bytes) and stop the
        threads; raises the first error any of it had."""
        for pool in (self._hasher, self._writer):
            if pool is not None:
                pool.shutdown(wait=True)
        self._hasher = self._writer = None
        inflight, self._inflight, self._inflight_bytes = self._inflight, collections.deque(), 0
        for hashed, written, _n in inflight:
            hashed.result()
            written.result()

    def _write_blocks(self, blocks: list[bytes]) -> None:
        self._hash_blocks(blocks)
        self._write_only(blocks)

    def _hash_blocks(self, blocks: list[bytes]) -> None:
        update = self.hash.update
        for block in blocks:
            update(block)

    def _write_only(self, blocks: list[bytes]) -> None:
        if self._write_error is not None:
            raise self._write_error  # never write after a gap: the offsets would be wrong
        try:
            self.write_many(blocks)
        except BaseException as exc:
            self._write_error = exc
            raise
        if self.written - self.kicked >= WRITEBACK_EVERY:
            # Starts the writeback of what was written since the last time (pages still
            # dirty or under writeback are not dropped by this call) ...
            platform.drop_written_pages(self.fd, self.kicked, self.written - self.kicked)
            # ... and drops the range started last time, clean by now: the page cache
            # pages are recycled for the next writes instead of new ones being touched.
            if self.dropped < self.kicked:
                platform.drop_written_pages(self.fd, self.dropped, self.kicked - self.dropped)
                self.dropped = self.kicked
            self.kicked = self.written

    def restart(self, offset: int) -> None:
        """Keep the first ``offset`` bytes (re-hashed from disk) and write from there."""
        self.wait()
        self.hash = hashlib.new(self.algorithm)
        self.blocks, self.buffered = [], 0
        self._write_error = None
        self.written = self.kicked = self.dropped = offset
        os.lseek(self.fd, 0, os.SEEK_SET)
        if offset:
            got = _hash_fd(self.fd, self.hash, offset)
            if got != offset:
                raise OSError(errno.EIO, "the part file is shorter than it was")
        os.ftruncate(self.fd, offset)
        os.lseek(self.fd, offset, os.SEEK_SET)
        self.size = offset

    def write_many(self, blocks: list[bytes]) -> None:
        """Write ``blocks`` in order: one ``writev`` where there is one, else block by block."""
        if _WRITEV is None or len(blocks) < 2:
            for block in blocks:
                self.write_all(block)
                self.written += len(block)
            return
        for start in range(0, len(blocks), _IOV_MAX):
            group = blocks[start : start + _IOV_MAX]
            done = _WRITEV(self.fd, group)
            self.written += done
            for block in group:  # a short writev: the rest, block by block
                if done >= len(block):
                    done -= len(block)
                    continue
                self.write_all(memoryview(block)[done:])
                self.written += len(block) - done
                done = 0

    def write_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def flush(self) -> None:
        self.wait()
        if self.blocks:
            blocks, self.blocks, self.buffered = self.blocks, [], 0
            self._write_blocks(blocks)

    def finish(self) -> str:
        self.flush()
        os.fsync(self.fd)
        return self.hash.hexdigest()


def _existing_prefix(part: Path) -> int:
    try:
        st = os.lstat(part)
    except FileNotFoundError:
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


async def fetch_to_part(
    stream_opener: StreamOpener,
    part: Path,
    *,
    expected_checksum: str,
    expected_size: int | None,
    verify: VerifyMode,
    resume: bool,
    validator: str | None = None,
    on_validator: Callable[[str | None], None] | None = None,
    on_progress: Callable[[int, int | None], None] | None = None,
) -> FetchResult:
    """Download into ``part`` (hidden, in the target folder), hash it, verify it, fsync it.

    With ``resume`` an existing part is kept: its bytes are re-hashed from disk and the download
    asks for the rest (``Range``, with ``If-Range: validator`` when one is known). A part that
    already has ``expected_size`` bytes and the right checksum is accepted without a request.
    A stream that starts again from 0 (a 200 answer, or base64) truncates the part first.
    ``on_validator`` is told each stream's validator as soon as it opens, so the caller can record
    it for a resume after a restart. ``on_progress(bytes_so_far, total)`` follows the stream.

    Verdict "verified" when the checksum matched; "unverified" when there was none (or of an
    unknown kind) and ``verify`` is if-present. Raises ``OutputUnavailable`` before any request
    when ``verify`` is required and there is no usable checksum, ``ChecksumMismatch`` /
    ``SizeMismatch`` (part deleted) when the bytes are wrong.
    """
    algorithm = checksum_algorithm(expected_checksum)
    if algorithm is None and verify == VerifyMode.REQUIRED:
        raise OutputUnavailable(
            "the server sent no checksum and verify is required: the output cannot be checked "
            "(set download.verify: if-present in the ticket to accept it unverified)"
        )
    expected = expected_checksum.strip().lower() if algorithm else ""
    algo = algorithm or LOCAL_ALGORITHM

    try:
        offset = _existing_prefix(part) if resume else 0
        if expected_size is not None and offset > expected_size:
            offset = 0
        if expected_size is not None and expected_size > offset:
            _check_space(part, expected_size - offset)  # before the part is even created
        fd = await asyncio.to_thread(_open_part, part, keep=offset > 0)
    except OSError as exc:
        _remove_quietly(part)
        raise from_os_error(exc, part) from exc

    sink = _Sink(fd, algo)
    finished = keep_part = False
    try:
        try:
            await asyncio.to_thread(sink.restart, offset)
        except OSError:
            offset = 0
            await asyncio.to_thread(sink.restart, 0)
        result = None
        if offset and offset == expected_size:
            # Complete already (an earlier attempt died after the last byte): no request needed.
            digest = await asyncio.to_thread(sink.finish)
            if not expected:
                result = FetchResult(offset, digest, "unverified", algo, validator)
            elif digest == expected:
                result = FetchResult(offset, digest, "verified", algo, validator)
            else:
                offset = 0
                await asyncio.to_thread(sink.restart, 0)
        if result is None:
            result = await _stream_into(
                sink,
                stream_opener,
                offset,
                validator,
                on_validator,
                algo,
                expected,
                expected_size,
                on_progress,
            )
        finished = True
        return result
    except (RetryableError, asyncio.CancelledError):
        keep_part = True  # network trouble or shutdown: a later attempt resumes from the part
        raise
    except OSError as exc:
        raise from_os_error(exc, part) from exc
    finally:
        sink.wait()
        os.close(fd)
        if not finished and not keep_part:
            _remove_quietly(part)


def _check_space(part: Path, needed: int) -> None:
    """Refuse before any byte is requested (a GET spends one of the output's downloads) when the
    folder cannot hold the rest of the file; the scheduler waits and looks again."""
    free = platform.free_bytes(part.parent)
    if free is None:
        return  # cannot tell (some network filesystems): ENOSPC remains the backstop
    if free < needed:
        raise LocalResourceError(
            f"disk full on {part.parent}: the output needs {needed} more bytes and only {free} "
            "are free — free some space and the ticket resumes by itself",
            title="disk full",
        )


def _remove_quietly(part: Path) -> None:
    with contextlib.suppress(OSError):
        _remove(part)


async def _stream_into(
    sink: _Sink,
    stream_opener: StreamOpener,
    offset: int,
    validator: str | None,
    on_validator: Callable[[str | None], None] | None,
    algo: str,
    expected: str,
    expected_size: int | None,
    on_progress: Callable[[int, int | None], None] | None = None,
) -> FetchResult:
    async with stream_opener(offset, validator) as stream:
        if on_validator is not None:
            on_validator(stream.validator)
        if stream.offset != offset:
            if stream.offset != 0:
                raise ApiUnavailable("the download resumed at an unexpected offset")
            await asyncio.to_thread(sink.restart, 0)
        try:
            async for chunk in stream.chunks:
                sink.add(chunk)
                if sink.buffered >= WRITE_BUFFER:
                    if on_progress is not None:  # once a buffer, not for every small chunk
                        on_progress(sink.size, expected_size or stream.total)
                    await sink.write_async()  # overlaps hashing and writing with receiving
            if on_progress is not None:
                on_progress(sink.size, expected_size or stream.total)
        except (RetryableError, asyncio.CancelledError):
            sink.flush()  # keep every byte received: the next attempt resumes after them
            raise
        except BaseException:
            sink.wait()  # no write may still run when the caller closes the file
            raise
        new_validator = stream.validator
    digest = await asyncio.to_thread(sink.finish)
    size = sink.size
    if expected:
        if digest != expected:
            raise ChecksumMismatch(
                f"the download's {algo} is {digest} but the server announced {expected}; "
                "the data was discarded",
                expected=expected,
                actual=digest,
            )
        if expected_size is not None and size != expected_size:
            log.warning(
                "checksum matched but size %d differs from the announced %d", size, expected_size
            )
        return FetchResult(size, digest, "verified", algo, new_validator)
    if expected_size is not None and size != expected_size:
        raise SizeMismatch(
            f"the download has {size} bytes but the server announced {expected_size}; "
            "the data was discarded",
            expected=str(expected_size),
            actual=str(size),
        )
    return FetchResult(size, digest, "unverified", algo, new_validator)


# --------------------------------------------------------------------------- placing


def _plain_basename(name: str) -> bool:
    return not (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or os.path.basename(name) != name
    )


def _check_basename(name: str) -> None:
    if not _plain_basename(name):
        raise PermanentError(f"refusing to write an output named {name!r}: not a plain file name")


def _fsync_dir(folder: Path) -> None:
    # Windows and some network filesystems cannot open a folder: nothing to sync there.
    platform.fsync_dir(folder, strict=True)


PLACEHOLDER_MODE = 0o000


def complete_placeholder(part: Path, dest: Path) -> bool:
    """After a crash: when ``dest`` is the empty placeholder of a placement without hard links
    (a plain file, size 0, no permission bits) and ``part`` is still there, finish that
    placement (``part`` becomes ``dest``) and say so; otherwise change nothing."""
    try:
        st = os.lstat(dest)
        if not (stat.S_ISREG(st.st_mode) and st.st_size == 0):
            return False
        if stat.S_IMODE(st.st_mode) != PLACEHOLDER_MODE or not part.exists():
            return False
        platform.replace(part, dest)
        _fsync_dir(dest.parent)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise from_os_error(exc, dest) from exc
    return True


def _link_no_clobber(part: Path, dest: Path) -> bool:
    """Make ``dest`` the part's content unless ``dest`` exists; False when it exists."""
    try:
        if not platform.HARD_LINKS:
            raise OSError(errno.ENOTSUP, "placement without hard links (forced)", str(dest))
        os.link(part, dest, follow_symlinks=False)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        # No hard links here: claim the name with an exclusive placeholder, then replace it.
        # The placeholder is empty with no permission bits: if the process dies before the
        # replace, the next start knows it as ours and finishes the job (complete_placeholder).
        try:
            fd = os.open(
                dest,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
                PLACEHOLDER_MODE,
            )
        except FileExistsError:
            return False
        os.close(fd)
        try:
            platform.replace(part, dest)
        except OSError:
            _remove_quietly(dest)
            raise
        return True
    _remove(part)
    return True


# A folder with fewer names than this is listed again whenever it may have changed; a bigger
# one at most once per RELIST_FACTOR times the last listing's duration (a listing of 20,000 names
# takes milliseconds: a bulk run placing into it pays at most 1/RELIST_FACTOR of its time).
SMALL_FOLDER = 1000
RELIST_FACTOR = 20
# An unchanged mtime proves an unchanged folder only when it is older than the listing by more
# than a timestamp's granularity (filesystem clocks tick in milliseconds): "racy" otherwise.
RACY_NS = 100_000_000
# Listings kept: at most this many folders, each only while outputs are being placed in it. A
# listing holds every name of its folder (~150 bytes each: a wave of a few hundred tickets is
# ~100 KiB); kept for every folder ever placed into, they were MiBs of RSS for folders long
# gone (issue 13). A folder not placed into for FOLDER_IDLE_SECONDS is listed again next time.
_FOLDERS_KEPT = 64
FOLDER_IDLE_SECONDS = 60.0


@dataclass
class _Listing:
    ino: int
    mtime_ns: int
    listed_ns: int  # wall clock, to compare with the mtime
    listed_at: float  # monotonic
    cost: float
    keys: dict[str, str]  # name_key -> a name in the folder with that key
    used_at: float = 0.0  # monotonic: last asked for or added to


class FolderNames:
    """The names in output folders by ``paths.name_key``, for conflicts decided case- and
    normalisation-insensitively on a filesystem that is not (ext4 shared to Windows or macOS).

    A listing is reused while the folder's mtime is unchanged and was already older than the
    listing (``RACY_NS``); names placed through ``add`` are added to it. In a folder of
    ``SMALL_FOLDER`` names or more it is also reused for a short while after a change (see
    ``RELIST_FACTOR``): a case variant created in that moment is not seen, and the output then
    gets its own name beside it, as before this check (a case-insensitive filesystem refuses
    that name by itself: ``os.link`` says it exists).

    Listings are kept in the order of their last use and dropped once unused for
    ``FOLDER_IDLE_SECONDS`` (at the next ``keys`` or ``forget_idle``, which the daemon calls
    every ``MEMORY_TRIM_SECONDS``) or beyond ``_FOLDERS_KEPT`` folders: an idle agent keeps
    none."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._cache: dict[str, _Listing] = {}
        self._clock = clock

    def keys(self, folder: Path, *, fresh: bool = False) -> dict[str, str]:
        """``name_key`` → name for ``folder``'s entries (do not modify the result)."""
        path = str(folder)
        try:
            st = os.stat(folder)
        except OSError:
            with self._lock:
                self._cache.pop(path, None)
            raise
        now = self._clock()
        with self._lock:
            self._forget_idle(now)
            got = self._cache.get(path)
            if got is not None and not fresh and got.ino == st.st_ino and _still_good(got, st, now):
                self._used(path, got, now)
                return got.keys
        listed_ns = time.time_ns()
        names = os.listdir(folder)
        keys = {name_key(n): n for n in names}
        cost = self._clock() - now
        listing = _Listing(st.st_ino, st.st_mtime_ns, listed_ns, now, cost, keys)
        with self._lock:
            self._used(path, listing, now)
            while len(self._cache) > _FOLDERS_KEPT:
                del self._cache[next(iter(self._cache))]
        return keys

    def add(self, folder: Path, name: str) -> None:
        """``name`` was just created in ``folder`` by us."""
        path = str(folder)
        with self._lock:
            got = self._cache.get(path)
            if got is not None:
                got.keys.setdefault(name_key(name), name)
                self._used(path, got, self._clock())

    def forget_idle(self) -> int:
        """Drop the listings not used for ``FOLDER_IDLE_SECONDS``; how many are left."""
        with self._lock:
            self._forget_idle(self._clock())
            return len(self._cache)

    def __len__(self) -> int:
        return len(self._cache)

    def _used(self, path: str, listing: _Listing, now: float) -> None:
        """``listing`` (now ``path``'s) was used: it goes last in the order of use."""
        listing.used_at = now
        self._cache.pop(path, None)
        self._cache[path] = listing

    def _forget_idle(self, now: float) -> None:
        while self._cache:
            path, oldest = next(iter(self._cache.items()))
            if now - oldest.used_at <= FOLDER_IDLE_SECONDS:
                return
            del self._cache[path]


def _still_good(got: _Listing, st: os.stat_result, now: float) -> bool:
    """Whether ``got`` may stand for the folder whose ``stat`` is ``st`` (``FolderNames``)."""
    if got.mtime_ns == st.st_mtime_ns and got.mtime_ns < got.listed_ns - RACY_NS:
        return True
    return len(got.keys) >= SMALL_FOLDER and now - got.listed_at < RELIST_FACTOR * got.cost


FOLDER_NAMES = FolderNames()


def fsync_folder(folder: Path) -> None:
    """Make the names placed in ``folder`` durable (after ``place(..., sync_dir=False)``)."""
    _fsync_dir(folder)


def place(
    part: Path,
    folder: Path,
    name: str,
    policy: ConflictPolicy,
    *,
    candidates: Iterable[str] | None = None,
    sync_dir: bool = True,
) -> Path | None:
    """Give the verified, fsynced ``part`` its final name in ``folder``; None when skipped.

    RENAME tries ``candidates`` in order (default ``paths.conflict_candidates(name)``), SKIP and
    FAIL only ``name``; none of them ever replaces an existing file or symlink, nor takes a name
    that differs from an existing one only in case or Unicode normalisation (``name_key``).
    OVERWRITE replaces ``name``, or the existing name with its key (a symlink there is replaced
    itself, its target is untouched). Every
    candidate must be a plain base name. On an OS error the part is kept, so the next attempt can
    place it without downloading again; on skip and fail it is deleted. ``sync_dir=False`` leaves
    the folder's fsync to the caller (``fsync_folder``, e.g. in a worker thread).
    """
    names: Iterable[str]
    if policy == ConflictPolicy.RENAME:
        names = conflict_candidates(name) if candidates is None else candidates
    else:
        names = (name,)
    dest = folder / name
    try:
        taken = FOLDER_NAMES.keys(folder)
        if policy == ConflictPolicy.OVERWRITE:
            _check_basename(name)
            held = taken.get(name_key(name), name)
            if held != name and _plain_basename(held):
                dest = folder / held  # one file for that name on NTFS and APFS: that one
            platform.replace(part, dest)
            if sync_dir:
                _fsync_dir(folder)
            return dest
        for candidate in names:
            _check_basename(candidate)
            dest = folder / taken.get(name_key(candidate), candidate)
            if name_key(candidate) not in taken and _link_no_clobber(part, folder / candidate):
                FOLDER_NAMES.add(folder, candidate)
                dest = folder / candidate
                if sync_dir:
                    _fsync_dir(folder)
                return dest
            if policy == ConflictPolicy.SKIP:
                _remove(part)
                log.info("%s exists; the output was skipped (on_conflict: skip)", dest)
                return None
            if policy == ConflictPolicy.FAIL:
                _remove(part)
                raise PermanentError(
                    f"{dest.name} already exists in {folder} and the ticket says "
                    "on_conflict: fail; move it away and retry the ticket",
                    title="output exists",
                )
    except OSError as exc:
        raise from_os_error(exc, dest) from exc
    _remove_quietly(part)
    raise PermanentError(f"no free name for {name} in {folder}", title="output exists")
