"""Linux inotify read by the event loop: the native folder watcher without threads.

watchdog's inotify observer reads the kernel's events in one thread, pairs renames in a second
and dispatches in a third, so every event of a burst crosses two thread hand-offs and the GIL
before the loop sees it; with 1,000 tickets dropped at once its threads held about a fifth of
the process's GIL time (py-spy ``--gil``; docs/decisions.md "Native events"). Here the
inotify descriptor is non-blocking and the loop reads it when it is readable, so an event costs
a ``struct`` unpack and a name check.

``Inotify`` is the kernel interface only (a descriptor, watches, raw events). ``TreeWatch`` keeps
the watches of one folder tree (a watch per directory; new directories get theirs as they
appear) and turns events into the paths that changed. watchdog remains the watcher on other
systems and the polling observer everywhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.platform import IS_LINUX, O_CLOEXEC, O_NONBLOCK

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000

# Names appearing, going and being renamed, a write finishing, and the watched folder itself
# going away. Not IN_MODIFY (every write()), opens or attribute changes: the settle gate stats a
# file until it is stable, and the reconcile scan catches anything no event reported.
WATCH_MASK = (
    IN_CREATE
    | IN_DELETE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CLOSE_WRITE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
    | IN_DONT_FOLLOW
    | IN_EXCL_UNLINK
)
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (struct inotify_event)
_READ_SIZE = 256 * 1024


def _load_libc() -> ctypes.CDLL | None:
    if not IS_LINUX:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        for name in ("inotify_init1", "inotify_add_watch", "inotify_rm_watch"):
            getattr(libc, name)
    except (OSError, AttributeError):
        return None
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


_LIBC = _load_libc()


def available() -> bool:
    """Whether this system has inotify (Linux)."""
    return _LIBC is not None


def _os_error(path: str | None = None) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code), path)


class Inotify:
    """One non-blocking inotify instance. Raises OSError (EMFILE when the user's instances are
    used up, ENOSPC from ``add_watch`` when the watches are) like the system calls."""

    def __init__(self) -> None:
        if _LIBC is None:
            raise OSError(errno.ENOSYS, "inotify is not available on this system")
        fd = _LIBC.inotify_init1(O_NONBLOCK | O_CLOEXEC)
        if fd < 0:
            raise _os_error()
        self.fd: int = fd

    def add_watch(self, path: str, mask: int = WATCH_MASK) -> int:
        assert _LIBC is not None
        wd = int(_LIBC.inotify_add_watch(self.fd, os.fsencode(path), mask))
        if wd < 0:
            raise _os_error(path)
        return wd

    def rm_watch(self, wd: int) -> None:
        """Remove a watch; one the kernel already dropped (its folder is gone) is no error."""
        assert _LIBC is not None
        if _LIBC.inotify_rm_watch(self.fd, wd) < 0 and ctypes.get_errno() != errno.EINVAL:
            raise _os_error()

    def read(self) -> Iterator[tuple[int, int, bytes]]:
        """The events waiting now, as (wd, mask, name); never blocks."""
        while True:
            try:
                data = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                return
            pos = 0
            while pos + _HEADER.size <= len(data):
                wd, mask, _cookie, size = _HEADER.unpack_from(data, pos)
                pos += _HEADER.size
                yield wd, mask, data[pos : pos + size].rstrip(b"\0")
                pos += size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class TreeWatch:
    """The watches of one folder (and, when ``recursive``, its non-hidden subfolders)."""

    root: Path
    recursive: bool
    tag: int = 0  # the caller's name for it
    dirs: dict[int, Path] = field(default_factory=dict)  # wd → folder


class Trees:
    """The folder trees watched through one inotify instance.

    ``add`` and ``add_subtree`` make system calls and walk folders, so they run in a worker
    thread; ``changes`` runs in the loop. The maps they share are guarded by one lock.
    """

    def __init__(self, inotify: Inotify) -> None:
        self.inotify = inotify
        self._lock = threading.Lock()
        self._owner: dict[int, TreeWatch] = {}  # wd → its tree

    def add(self, root: Path, recursive: bool, tag: int = 0) -> TreeWatch:
        """Watch ``root`` (and its subfolders when ``recursive``). Raises OSError when ``root``
        cannot be watched (missing, or the inotify limits are reached). ``root`` itself may be
        a symbolic link to a folder; links below it are never followed."""
        tree = TreeWatch(root, recursive, tag)
        self._register(tree, self.inotify.add_watch(str(root), WATCH_MASK & ~IN_DONT_FOLLOW), root)
        if recursive:
            try:
                self.add_subtree(tree, root, include_top=False)
            except BaseException:
                self.remove(tree)  # no watch of a tree nobody holds may use up the limit
                raise
        return tree

    def add_subtree(self, tree: TreeWatch, top: Path, *, include_top: bool = True) -> None:
        """Watch ``top`` and the folders below it (a folder that appeared in ``tree``). A folder
        that vanishes meanwhile is skipped; running out of watches raises OSError."""
        stack = [top]
        while stack:
            current = stack.pop()
            if include_top or current != top:
                try:
                    self._register(tree, self.inotify.add_watch(str(current)), current)
                except (FileNotFoundError, NotADirectoryError):
                    continue
            try:
                with os.scandir(current) as entries:
                    for entry in entries:
                        if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
            except OSError:
                continue

    def _register(self, tree: TreeWatch, wd: int, path: Path) -> None:
        with self._lock:
            old = self._owner.get(wd)
            if old is not None and old is not tree:
                old.dirs.pop(wd, None)  # another tree's folder inside this one: ours now
            tree.dirs[wd] = path
            self._owner[wd] = tree

    def remove(self, tree: TreeWatch, under: Path | None = None) -> None:
        """Stop watching ``tree`` (or only its folders at and below ``under``)."""
        with self._lock:
            if under is None:
                wds = list(tree.dirs)
            else:
                prefix = str(under) + os.sep
                wds = [wd for wd, p in tree.dirs.items() if p == under or str(p).startswith(prefix)]
            for wd in wds:
                tree.dirs.pop(wd, None)
                if self._owner.get(wd) is tree:
                    del self._owner[wd]
        for wd in wds:
            with contextlib.suppress(OSError):  # the descriptor is closing: nothing to undo
                self.inotify.rm_watch(wd)

    def changes(self, on_overflow: Callable[[], None]) -> list[tuple[TreeWatch, Path, str, int]]:
        """Read what happened: (tree, folder, name, mask) per event, in order; the name is ""
        when the tree's own folder was removed or renamed. A subfolder that was removed or
        renamed away loses its watches here (its new place, if any, comes as a later
        IN_MOVED_TO); ``on_overflow`` is called when the kernel dropped events."""
        out: list[tuple[TreeWatch, Path, str, int]] = []
        for wd, mask, name in self.inotify.read():
            if mask & IN_Q_OVERFLOW:
                on_overflow()
                continue
            with self._lock:
                tree = self._owner.get(wd)
                where = tree.dirs.get(wd) if tree is not None else None
                if mask & IN_IGNORED and tree is not None:
                    tree.dirs.pop(wd, None)
                    del self._owner[wd]
            if tree is None or where is None:
                continue  # a watch removed a moment ago
            if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                if where == tree.root:
                    out.append((tree, where, "", mask))  # the folder itself went away
                continue
            text = os.fsdecode(name)
            if mask & IN_ISDIR and mask & IN_MOVED_FROM:
                self.remove(tree, where / text)
            out.append((tree, where, text, mask))
        return out

    def close(self) -> None:
        with self._lock:
            self._owner.clear()
        self.inotify.close()
