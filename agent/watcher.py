"""Finding tickets: startup scan + native events + polling + periodic reconcile → one queue.

Native events on Linux come from ``agent.inotify``, read by the event loop itself (no thread).
Elsewhere (Windows: ReadDirectoryChangesW, macOS: FSEvents; ``platform.native_watcher``, which
forced portable mode turns to watchdog on Linux too), and for polling, watchdog's observers: the
only use of watchdog. A watchdog watch whose thread ends, or that a folder replaced by another of
the same name left behind, is found by the reconcile scan: the first becomes polling, the second
is watched afresh. Its threads do
nothing but filter an event by name and hand its path to the event loop, through exactly one
crossing (``loop.call_soon_threadsafe(queue.put_nowait, …)``). Everything else runs in the loop:
the settle gate (a file's size, mtime and inode unchanged for ``settle_seconds``, judged by ``stat``
with the injected clock), the bookkeeping of what was already announced, and the periodic
reconcile scan that catches dropped events without announcing unchanged files again. Directory
walks and ``stat`` calls run in worker threads, so a slow network share cannot stall the loop.

Polling replaces native events for a folder when its ``polling`` is ``always``, or with ``auto``
when it lives on a network filesystem (NFS, SMB/CIFS, FUSE, … found in /proc/self/mountinfo) or
the native watcher cannot start (inotify limits); the log says which and why.

It never parses tickets; it only says "this file is settled" (``ticket`` / ``plain``) and "this
ticket is gone" (``removed``). A vanished folder is logged once and retried by every reconcile;
its tickets are not reported as removed while the folder itself is unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fnmatch
import functools
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserverVFS

from agent import inotify, platform
from agent.paths import PART_SUFFIX, is_agent_file, is_ticket_name

log = logging.getLogger("agent.watcher")

EventKind = Literal["ticket", "removed", "plain"]
FileKind = Literal["ticket", "plain"]
Signature = tuple[int, int, int]  # size, mtime_ns, inode

# Filesystems where inotify does not see changes made by other machines.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "afs",
        "9p",
        "v9fs",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "davfs",
        "vboxsf",
        "vmhgfs",
        "drvfs",
        "virtiofs",
        # macOS and Windows (platform.filesystem_type): SMB, AFP, WebDAV, FUSE for macOS, a
        # UNC path, a mapped network drive.
        "afpfs",
        "webdav",
        "macfuse",
        "osxfuse",
        "smb",
        "remote",
    }
)
# What native (inotify) watches ask the kernel for: names appearing, going and being renamed,
# and a write finishing (IN_CLOSE_WRITE). Not every write() (IN_MODIFY), opens, reads or
# attribute changes: a burst of tickets makes tens of those per ticket, each parsed in Python,
# for nothing the settle gate needs (a file it waits for is stat'ed again until it is stable,
# and the reconcile scan catches what no event reported).
NATIVE_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileClosedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
]
# What watchdog's native observers are asked for (Windows, macOS; forced portable mode on
# Linux): ReadDirectoryChangesW and FSEvents report no "write finished", so a file's content
# changing (an edit in place) is seen as a modification instead. Linux's close-write is left
# out on purpose, so the forced mode sees what Windows and macOS see.
WATCHDOG_EVENTS: list[type[FileSystemEvent]] = [
    FileModifiedEvent if e is FileClosedEvent else e for e in NATIVE_EVENTS
]
_WATCH_LIMIT_ERRNOS = frozenset({errno.ENOSPC, errno.EMFILE, errno.ENFILE, errno.ENOMEM})


class FolderConfig(Protocol):
    """What the watcher needs of ``agent.config.FolderConfig``."""

    @property
    def path(self) -> Path: ...
    @property
    def recursive(self) -> bool: ...
    @property
    def include(self) -> tuple[str, ...]: ...
    @property
    def polling(self) -> str: ...


@dataclass(frozen=True)
class WatchEvent:
    kind: EventKind
    path: Path
    folder: FolderConfig


# --------------------------------------------------------------------------- pure helpers


def _never_counts(name: str) -> bool:
    """Names that are never a ticket or an input, whatever the folder's rules: hidden files,
    ``.part`` files and the agent's own (sidecars, filed tickets)."""
    return (
        not name
        or name.startswith(".")
        or is_agent_file(name)
        or name.lower().endswith(PART_SUFFIX)
    )


def classify(path: Path, folder: FolderConfig) -> FileKind | None:
    """``ticket`` for a ``*.job`` matching ``include`` (or the ticket the agent writes for a plain
    file that matches, ``NAME.EXT.job``), ``plain`` for another match, else None.

    Hidden files (and anything under a hidden folder), ``.part`` files, sidecars and
    ``.job.done`` / ``.job.failed`` never count. Globs match the name, ignoring case.
    """
    name = path.name
    if _never_counts(name):
        return None
    lower = name.lower()
    try:
        rel = path.relative_to(folder.path)
    except ValueError:
        return None
    if len(rel.parts) > 1 and (
        not folder.recursive or any(p.startswith(".") for p in rel.parts[:-1])
    ):
        return None

    def included(n: str) -> bool:
        return any(fnmatch.fnmatchcase(n, pattern.lower()) for pattern in folder.include)

    if is_ticket_name(name):
        # A rule folder's own ticket for a plain file it converts (`photo.png.job` where
        # `*.png` is included) is a ticket even when `*.job` itself is not included.
        return "ticket" if included(lower) or included(lower[: -len(".job")]) else None
    return "plain" if included(lower) else None


class PolledNames:
    """The listing a poll of a folder walks (watchdog's ``listdir``): only the names the
    watcher can care about, tickets and included plain files (and the subfolders of a recursive
    folder). A poll then stats those alone, not every output, input and sidecar beside them:
    on a network mount each stat is a round trip to the server (and on FUSE to its daemon),
    and each agent of a team polls the same folder."""

    def __init__(self) -> None:
        self.folders: dict[str, FolderConfig] = {}  # watched folder path → its rules

    def __call__(self, path: str | None) -> Iterator[os.DirEntry[str]]:
        with os.scandir(path) as it:
            entries = list(it)
        folder = self._owner(str(path))
        for e in entries:
            if (
                folder is None
                or classify(Path(e.path), folder) is not None
                or (folder.recursive and not e.name.startswith(".") and _is_dir(e))
            ):
                yield e

    def _owner(self, path: str) -> FolderConfig | None:
        """The watched folder ``path`` is (or is inside, for a recursive one)."""
        found = self.folders.get(path)
        if found is not None:
            return found
        best, depth = None, -1
        for root, cfg in self.folders.items():
            inside = cfg.recursive and path.startswith(root.rstrip(os.sep) + os.sep)
            if inside and len(root) > depth:  # the innermost watched folder decides
                best, depth = cfg, len(root)
        return best


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def filesystem_type(path: Path, mountinfo: str | None = None) -> str | None:
    """The type of the filesystem holding ``path``, if known (``platform.filesystem_type``;
    ``mountinfo`` is the platform's mount table text, read when not given)."""
    return platform.filesystem_type(path, mountinfo)


def is_network_filesystem(fstype: str) -> bool:
    return fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse")


def _signature(st: os.stat_result) -> Signature:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


# --------------------------------------------------------------------------- thread side


@dataclass
class _Probe:
    """What a stat (in a worker thread) found at a path."""

    path: Path
    index: int
    state: Literal["file", "dir", "missing", "error", "other"]
    signature: Signature | None = None
    children: list[tuple[Path, Signature]] = field(default_factory=list)
    error: str = ""
    root_ok: bool = True  # for "missing": whether the watched folder itself is still there
    identity: tuple[int, int] | None = None  # for "dir": its (device, inode)


def _walk(root: Path, folder: FolderConfig) -> list[tuple[Path, Signature]]:
    """Candidate files under ``root`` (recursing into non-hidden, non-symlinked folders)."""
    found: list[tuple[Path, Signature]] = []
    stack = [root]
    first = True
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            if first:
                raise
            continue
        first = False
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.is_dir(follow_symlinks=False):
                    if folder.recursive and not entry.name.startswith("."):
                        stack.append(path)
                    continue
                if classify(path, folder) is None:
                    continue
                st = entry.stat(follow_symlinks=True)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found.append((path, _signature(st)))
    return found


def _identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def _probe(path: Path, index: int, folder: FolderConfig) -> _Probe:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return _Probe(path, index, "missing", root_ok=os.path.isdir(folder.path))
    except OSError as exc:
        return _Probe(path, index, "error", error=exc.strerror or str(exc))
    if stat.S_ISDIR(st.st_mode):
        probe = _Probe(path, index, "dir", identity=(st.st_dev, st.st_ino))
        if folder.recursive or path == folder.path:
            with contextlib.suppress(OSError):
                probe.children = _walk(path, folder)
        return probe
    if stat.S_ISREG(st.st_mode):
        return _Probe(path, index, "file", _signature(st))
    return _Probe(path, index, "other")


class _Handler(FileSystemEventHandler):
    """Runs in watchdog's thread: filter by name, then cross into the loop. Nothing else."""

    def __init__(self, put: Callable[[tuple[Path, int]], None], index: int, folder: FolderConfig):
        self._put = put
        self._index = index
        self._folder = folder

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if event.is_directory and event.event_type == "modified":
            return  # every file change touches its folder; the file's own event is enough
        raw = [event.src_path, getattr(event, "dest_path", "")]
        for item in raw:
            if not item:
                continue
            path = Path(os.fsdecode(item))
            if event.is_directory:
                if path != self._folder.path and not self._folder.recursive:
                    continue
            elif classify(path, self._folder) is None:
                continue
            self._put((path, self._index))


# --------------------------------------------------------------------------- loop side


@dataclass
class _Pending:
    index: int
    kind: FileKind
    signature: Signature
    since: float


@dataclass
class _Seen:
    index: int
    kind: FileKind
    signature: Signature
    announced: bool


@dataclass
class _Folder:
    index: int
    config: FolderConfig
    handler: _Handler | None = None
    mode: Literal["native", "polling"] | None = None
    reason: str = ""
    watch: ObservedWatch | inotify.TreeWatch | None = None
    observer: BaseObserver | None = None  # None for an inotify tree
    reachable: bool = True
    root_id: tuple[int, int] | None = None  # (device, inode) of the folder a watchdog watch is on
    native_failed: str = ""  # why native events stopped for it (then it is polled)


class Watcher:
    """Announces settled tickets (and rule-folder files) and removed tickets through ``emit``.

    ``ignore`` (settable after construction) is asked before a settled file is announced; the
    scheduler uses it to skip files it wrote itself. ``emit`` runs in the event loop.
    """

    def __init__(
        self,
        folders: Sequence[FolderConfig],
        emit: Callable[[WatchEvent], None],
        *,
        settle_seconds: float,
        reconcile_interval: float,
        fs_poll_interval: float,
        clock: Callable[[], float] = time.monotonic,
        ignore: Callable[[Path], bool] | None = None,
        mountinfo: Callable[[], str | None] | None = None,
        native: platform.NativeWatcher | None = None,
    ) -> None:
        self._folders = [_Folder(i, f) for i, f in enumerate(folders)]
        self._emit = emit
        self._settle = max(0.0, settle_seconds)
        self._reconcile_interval = max(0.05, reconcile_interval)
        self._fs_poll_interval = max(0.05, fs_poll_interval)
        self._polled_names = PolledNames()
        self._clock = clock
        self._mountinfo = mountinfo
        self._native_kind = native or platform.native_watcher()
        self.ignore = ignore
        self._pending: dict[Path, _Pending] = {}
        self._seen: dict[Path, _Seen] = {}
        self._queue: asyncio.Queue[tuple[Path, int]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rescan: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._subfolder_tasks: set[asyncio.Task[None]] = set()  # new folders getting watches
        self._native: BaseObserver | None = None
        self._trees: inotify.Trees | None = None
        self._polling: BaseObserver | None = None
        self._stopping = False

    # ------------------------------------------------------------------ public

    async def start(self) -> None:
        """Scan every folder first, then watch for events; settled files follow by ``emit``."""
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._rescan = asyncio.Event()
        self._stopping = False
        await self._scan_all()
        for folder in self._folders:
            folder.handler = _Handler(self._put_threadsafe, folder.index, folder.config)
            if folder.reachable:
                await self._watch(folder)
        self._tasks = [
            asyncio.create_task(self._settle_loop(), name="watcher-settle"),
            asyncio.create_task(self._reconcile_loop(), name="watcher-reconcile"),
        ]

    async def stop(self) -> None:
        """Stop the observer threads and the loop tasks; nothing is emitted afterwards."""
        self._stopping = True
        tasks = [*self._tasks, *self._subfolder_tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        if self._trees is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._trees.inotify.fd)
            self._trees.close()
            self._trees = None
        observers = [o for o in (self._native, self._polling) if o is not None]
        self._native = self._polling = None
        for observer in observers:
            observer.stop()
        for observer in observers:
            await asyncio.to_thread(observer.join, 10)
        for folder in self._folders:
            folder.watch = folder.observer = None

    def rescan(self) -> None:
        """Ask for a reconcile scan now (from the event loop's thread)."""
        if self._rescan is not None:
            self._rescan.set()

    def forget(self, path: Path) -> None:
        """Announce ``path`` again when a later scan finds it: it was announced, but could not
        be read (gone with its folder, unreadable for now), so nothing holds it."""
        self._seen.pop(path, None)

    def mode(self, path: Path) -> str | None:
        """How the folder at ``path`` is watched: "native", "polling" or None (not watched)."""
        for folder in self._folders:
            if folder.config.path == path:
                return folder.mode if folder.watch is not None else None
        return None

    # ------------------------------------------------------------------ watching

    def _put_threadsafe(self, item: tuple[Path, int]) -> None:
        loop, queue = self._loop, self._queue
        if self._stopping or loop is None or queue is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def _choose_mode(self, watched: _Folder) -> tuple[Literal["native", "polling"], str]:
        folder = watched.config
        setting = (folder.polling or "auto").lower()
        if setting == "always":
            return "polling", "polling: always is configured"
        if setting == "never":
            return "native", "polling: never is configured"
        if watched.native_failed:
            return "polling", watched.native_failed
        text = self._mountinfo() if self._mountinfo is not None else None
        fstype = filesystem_type(folder.path, text)
        if fstype and is_network_filesystem(fstype):
            return "polling", f"it is on a {fstype} filesystem, where native events do not arrive"
        return "native", f"local {fstype} filesystem" if fstype else "native events"

    def _observer(self, mode: Literal["native", "polling"]) -> BaseObserver:
        if mode == "native":
            if self._native is None or not self._native.is_alive():
                self._native = Observer()
                self._native.start()
            return self._native
        if self._polling is None or not self._polling.is_alive():
            self._polling = PollingObserverVFS(
                os.stat, self._polled_names, polling_interval=self._fs_poll_interval
            )
            self._polling.start()
        return self._polling

    async def _watch(self, folder: _Folder) -> None:
        if folder.watch is not None:
            return
        assert folder.handler is not None
        mode, reason = self._choose_mode(folder)
        path = folder.config.path
        if mode == "native":
            observer: BaseObserver | None = None
            own_inotify = self._native_kind == "inotify" and inotify.available()
            try:
                if own_inotify:
                    trees = self._inotify_trees()
                    folder.watch = await asyncio.to_thread(
                        trees.add, path, folder.config.recursive, folder.index
                    )
                else:
                    folder.root_id = await asyncio.to_thread(_identity, path)
                    observer = self._observer("native")
                    folder.watch = await asyncio.to_thread(
                        functools.partial(
                            observer.schedule,
                            folder.handler,
                            str(path),
                            recursive=folder.config.recursive,
                            event_filter=WATCHDOG_EVENTS,
                        )
                    )
            except Exception as exc:
                # watchdog's observers fail with more than OSError (FSEvents: RuntimeError or
                # SystemError when a stream cannot start): any of those means polling.
                if own_inotify and not isinstance(exc, OSError):
                    raise
                code = exc.errno if isinstance(exc, OSError) else None
                text = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or repr(exc)
                if code in (errno.ENOENT, errno.ENOTDIR):
                    self._unreachable(folder, text)
                    return
                if folder.config.polling.lower() == "never" or (
                    own_inotify and code not in _WATCH_LIMIT_ERRNOS
                ):
                    if folder.reason != str(exc):  # log once, not on every reconcile retry
                        log.error(
                            "cannot watch %s (%s); it is still scanned every %.0f s",
                            path,
                            text,
                            self._reconcile_interval,
                        )
                    folder.mode, folder.reason = None, str(exc)
                    return
                mode = "polling"
                hint = ""
                if code in _WATCH_LIMIT_ERRNOS and platform.IS_LINUX:
                    hint = (
                        "; raise fs.inotify.max_user_watches / max_user_instances to use "
                        "native events"
                    )
                name = platform.native_events_name(self._native_kind)
                reason = f"the native watcher ({name}) could not start ({text}{hint})"
                log.warning("polling %s every %.1f s: %s", path, self._fs_poll_interval, reason)
            else:
                folder.observer, folder.mode, folder.reason = observer, "native", reason
                log.info(
                    "watching %s with native events (%s; %s)",
                    path,
                    platform.native_events_name(self._native_kind)
                    if observer is None
                    else self._observer_name(),
                    reason,
                )
                self._look_again(folder)
                return
        else:
            log.info("polling %s every %.1f s: %s", path, self._fs_poll_interval, reason)
        observer = self._observer("polling")
        self._polled_names.folders[str(path)] = folder.config
        try:
            folder.root_id = await asyncio.to_thread(_identity, path)
            folder.watch = await asyncio.to_thread(
                observer.schedule, folder.handler, str(path), recursive=folder.config.recursive
            )
        except OSError as exc:
            self._unreachable(folder, exc.strerror or str(exc))
            return
        folder.observer, folder.mode, folder.reason = observer, "polling", reason
        self._look_again(folder)

    def _observer_name(self) -> str:
        observer = self._native
        kind = type(observer).__name__ if observer is not None else "observer"
        return f"{platform.native_events_name(self._native_kind)}, watchdog's {kind}"

    async def _watch_healthy(self, folder: _Folder) -> bool:
        """Whether a watchdog watch still reports events for the folder now at its path.

        False (after saying why) when the folder was replaced by another of that name (the
        watch follows the old one: watch afresh) or when the observer's thread for it ended
        (ReadDirectoryChangesW on a share that went away, an FSEvents stream that stopped):
        from then on that folder is polled, as a native watch that cannot start would be.
        The inotify reader needs none of this: it hears its folder go (IN_DELETE_SELF)."""
        watch, observer = folder.watch, folder.observer
        if not isinstance(watch, ObservedWatch) or observer is None:
            return True
        try:
            same = await asyncio.to_thread(_identity, folder.config.path) == folder.root_id
        except OSError:
            same = False
        if not same:
            log.info("%s is another folder now; watching it afresh", folder.config.path)
            return False
        emitters = observer.emitters.copy()  # the observer's thread changes the set
        if observer.is_alive() and any(e.watch == watch and e.is_alive() for e in emitters):
            return True
        if folder.mode == "native":
            name = platform.native_events_name(self._native_kind)
            folder.native_failed = (
                f"native events ({name}) stopped for it: the observer's thread ended"
            )
            log.warning(
                "polling %s every %.1f s from now on: %s",
                folder.config.path,
                self._fs_poll_interval,
                folder.native_failed,
            )
        else:
            log.warning("polling %s stopped; starting it again", folder.config.path)
        return False

    def _look_again(self, folder: _Folder) -> None:
        """A watch was just set up: walk the folder once more, for files that arrived after the
        last scan and before the watch saw anything (the settle gate skips the unchanged)."""
        if self._queue is not None:
            self._queue.put_nowait((folder.config.path, folder.index))

    async def _unwatch(self, folder: _Folder) -> None:
        watch = folder.watch
        if isinstance(watch, inotify.TreeWatch):
            if self._trees is not None:
                self._trees.remove(watch)
        elif watch is not None and folder.observer is not None:
            with contextlib.suppress(KeyError, OSError):
                await asyncio.to_thread(folder.observer.unschedule, watch)
        folder.watch = folder.observer = None

    def _inotify_trees(self) -> inotify.Trees:
        """The inotify instance of the native watches, read by the loop (made on first use)."""
        if self._trees is None:
            trees = inotify.Trees(inotify.Inotify())
            assert self._loop is not None
            self._loop.add_reader(trees.inotify.fd, self._inotify_ready)
            self._trees = trees
        return self._trees

    def _inotify_ready(self) -> None:
        """The inotify descriptor is readable: queue each changed path that may matter."""
        trees = self._trees
        if trees is None or self._stopping or self._queue is None:
            return
        try:
            self._inotify_events(trees, self._queue)
        except Exception:  # reading events must never end watching: a scan catches up
            log.exception("handling folder events failed; scanning the folders instead")
            self.rescan()

    def _inotify_events(self, trees: inotify.Trees, queue: asyncio.Queue[tuple[Path, int]]) -> None:
        for tree, where, name, mask in trees.changes(self.rescan):
            folder = self._folders[tree.tag]
            if folder.watch is not tree:
                continue  # an old watch of a folder watched afresh
            if not name:
                # The watched folder itself was removed or renamed: its watch is useless now.
                # Its probe says whether it is gone; the next scan watches it again when back.
                trees.remove(tree)
                folder.watch = None
                queue.put_nowait((where, folder.index))
                self.rescan()
            elif mask & inotify.IN_ISDIR:
                if not tree.recursive or name.startswith("."):
                    continue
                path = where / name
                if mask & (inotify.IN_CREATE | inotify.IN_MOVED_TO):
                    task = asyncio.create_task(self._watch_subfolder(trees, tree, path, folder))
                    self._subfolder_tasks.add(task)
                    task.add_done_callback(self._subfolder_tasks.discard)
                else:
                    queue.put_nowait((path, folder.index))
            elif not _never_counts(name):  # most events are the agent's own files: no Path
                path = where / name
                if classify(path, folder.config) is not None:
                    queue.put_nowait((path, folder.index))

    async def _watch_subfolder(
        self, trees: inotify.Trees, tree: inotify.TreeWatch, path: Path, folder: _Folder
    ) -> None:
        """Watch a folder that appeared in a recursive tree, then look at what it holds (files
        put there before its watch existed are found by that look)."""
        try:
            await asyncio.to_thread(trees.add_subtree, tree, path)
        except OSError as exc:
            log.warning(
                "cannot watch the new folder %s (%s); it is still scanned every %.0f s",
                path,
                exc.strerror or exc,
                self._reconcile_interval,
            )
        if self._queue is not None and not self._stopping:
            self._queue.put_nowait((path, folder.index))

    def _unreachable(self, folder: _Folder, why: str) -> None:
        if folder.reachable:
            log.warning(
                "folder %s is not reachable (%s); checking again every %.0f s",
                folder.config.path,
                why,
                self._reconcile_interval,
            )
        folder.reachable = False

    # ------------------------------------------------------------------ scanning

    async def _scan_all(self) -> None:
        for folder in self._folders:
            try:
                found = await asyncio.to_thread(_walk, folder.config.path, folder.config)
            except OSError as exc:
                self._unreachable(folder, exc.strerror or str(exc))
                if folder.watch is not None:
                    await self._unwatch(folder)  # the folder was removed: watch it afresh later
                continue
            if not folder.reachable:
                log.info("folder %s is reachable again", folder.config.path)
                folder.reachable = True
                await self._unwatch(folder)
            if folder.watch is not None and not await self._watch_healthy(folder):
                await self._unwatch(folder)
            if folder.watch is None and folder.handler is not None and not self._stopping:
                await self._watch(folder)
            now = self._clock()
            present = set()
            assert self._queue is not None
            woken = False
            for path, signature in found:
                present.add(path)
                if self._observe(path, folder.index, signature, now) and not woken:
                    self._queue.put_nowait((path, folder.index))  # wake the settle loop
                    woken = True
            # Tracked files the scan did not see: let the settle loop confirm they are gone.
            for path, entry in list(self._seen.items()) + list(self._pending.items()):
                if entry.index == folder.index and path not in present:
                    self._queue.put_nowait((path, folder.index))

    async def _reconcile_loop(self) -> None:
        assert self._rescan is not None
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._reconcile_interval):
                    await self._rescan.wait()
            self._rescan.clear()
            try:
                await self._scan_all()
            except Exception:  # a scan must never end watching
                log.exception("reconcile scan failed")

    # ------------------------------------------------------------------ settling

    def _next_due(self) -> float | None:
        if not self._pending:
            return None
        soonest = min(p.since for p in self._pending.values()) + self._settle
        return max(0.0, soonest - self._clock())

    async def _settle_loop(self) -> None:
        assert self._queue is not None
        while True:
            batch: dict[Path, int] = {}
            delay = self._next_due()
            if delay is None or delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        path, index = await self._queue.get()
                        batch[path] = index
            while not self._queue.empty():
                path, index = self._queue.get_nowait()
                batch[path] = index
            now = self._clock()
            for path, pending in self._pending.items():
                if now - pending.since >= self._settle:
                    batch.setdefault(path, pending.index)
            if not batch:
                continue
            try:
                probes = await asyncio.to_thread(self._probe_all, batch)
                self._apply(probes)
            except Exception:
                log.exception("checking changed files failed")
                await asyncio.sleep(self._settle or 0.1)

    def _probe_all(self, batch: dict[Path, int]) -> list[_Probe]:
        return [_probe(path, index, self._folders[index].config) for path, index in batch.items()]

    def _apply(self, probes: Iterable[_Probe]) -> None:
        now = self._clock()
        for probe in probes:
            folder = self._folders[probe.index]
            if probe.state == "file" and probe.signature is not None:
                self._observe(probe.path, probe.index, probe.signature, now)
            elif probe.state == "dir":
                if (
                    probe.path == folder.config.path
                    and isinstance(folder.watch, ObservedWatch)
                    and probe.identity != folder.root_id
                ):
                    self.rescan()  # another folder of that name: the scan watches it afresh
                for path, signature in probe.children:
                    self._observe(path, probe.index, signature, now)
                self._pending.pop(probe.path, None)
            elif probe.state == "missing":
                self._pending.pop(probe.path, None)
                if probe.path == folder.config.path or not probe.root_ok:
                    self._unreachable(folder, "it was removed or unmounted")
                    continue
                if not folder.reachable:
                    continue
                was_file = probe.path in self._seen
                self._gone(probe.path)
                if was_file:
                    continue  # a file has no tracked children: skip the scan of every path
                inside = str(probe.path) + os.sep  # string prefix: `parents` is slow in bulk
                for path in [p for p in self._seen if str(p).startswith(inside)]:
                    self._gone(path)
                for path in [p for p in self._pending if str(p).startswith(inside)]:
                    self._pending.pop(path, None)
            elif probe.state == "other":
                self._pending.pop(probe.path, None)
            else:
                # A stat error (permissions, a share blinking): forget it for now; the next
                # reconcile scan brings it back.
                log.debug("cannot check %s: %s", probe.path, probe.error)
                self._pending.pop(probe.path, None)

    def _observe(self, path: Path, index: int, signature: Signature, now: float) -> bool:
        """Feed one stat result to the settle gate; True when a wait (re)started."""
        kind = classify(path, self._folders[index].config)
        if kind is None:
            return False
        pending = self._pending.get(path)
        if pending is None:
            seen = self._seen.get(path)
            if seen is not None and seen.signature == signature:
                return False
            self._pending[path] = _Pending(index, kind, signature, now)
            if self._settle <= 0:
                self._settled(path)
            return True
        if pending.signature != signature:
            pending.signature, pending.since = signature, now
            return True
        if now - pending.since >= self._settle:
            self._settled(path)
        return False

    def _settled(self, path: Path) -> None:
        pending = self._pending.pop(path)
        folder = self._folders[pending.index].config
        announce = True
        # Only a plain file can be one of the agent's own outputs: an output's name never ends
        # in .job (paths.safe_name), so a ticket is never asked about (in team mode each answer
        # is a round trip to the database).
        if self.ignore is not None and pending.kind != "ticket":
            try:
                announce = not self.ignore(path)
            except Exception as exc:  # e.g. a team's state database away: the file is looked at
                log.warning(
                    "cannot tell whether %s is one of the agent's own outputs (%s); it is "
                    "looked at as a new file",
                    path.name,
                    exc,
                )
        self._seen[path] = _Seen(pending.index, pending.kind, pending.signature, announce)
        if announce:
            self._send(WatchEvent(pending.kind, path, folder))

    def _gone(self, path: Path) -> None:
        self._pending.pop(path, None)
        seen = self._seen.pop(path, None)
        if seen is not None and seen.announced and seen.kind == "ticket":
            self._send(WatchEvent("removed", path, self._folders[seen.index].config))

    def _send(self, event: WatchEvent) -> None:
        if self._stopping:
            return
        try:
            self._emit(event)
        except Exception:
            log.exception("handling %s event for %s failed", event.kind, event.path)

    # for tests and the status snapshot
    def busy(self) -> bool:
        """True while some file waits in the settle gate (``run --once`` waits for it)."""
        return bool(self._pending)

    def snapshot(self) -> dict[str, Any]:
        return {
            "pending": len(self._pending),
            "known": len(self._seen),
            "folders": [
                {
                    "path": str(f.config.path),
                    "mode": f.mode if f.watch is not None else None,
                    "reason": f.reason,
                    "reachable": f.reachable,
                }
                for f in self._folders
            ],
        }
