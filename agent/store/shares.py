"""Paths as a team stores them: by share name, not by where this machine mounts the share.

Machines mount one share at different paths (``/mnt/nas/inbox`` here, ``/Volumes/inbox``
there), so a team's state keeps ``//share/<name>/<path inside>`` and each agent maps it to and
from its own mount (``folders[].share``, docs/team-mode.md). A path under no watched folder is
kept as it is. Pure string work: no file system access.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

PREFIX = "//share/"


class PathMap:
    """Local absolute paths ↔ share paths for one agent's folders."""

    def __init__(self, folders: Iterable[tuple[Path | str, str]] = ()) -> None:
        pairs = [(str(local).rstrip("/") or "/", PREFIX + share) for local, share in folders]
        # Longest first: a folder inside another maps by its own share.
        self._to_shared = sorted(pairs, key=lambda p: len(p[0]), reverse=True)
        self._to_local = sorted(pairs, key=lambda p: len(p[1]), reverse=True)

    def __bool__(self) -> bool:
        return bool(self._to_shared)

    def shared(self, path: str | None) -> str | None:
        """The share path of a local path (unchanged when it is under no folder)."""
        if path is None:
            return None
        return _swap(path, self._to_shared)

    def local(self, path: str | None) -> str | None:
        """The local path of a share path (unchanged when it names no share of ours)."""
        if path is None:
            return None
        return _swap(path, [(b, a) for a, b in self._to_local])

    def s(self, path: str) -> str:
        """``shared`` of a path that is never None."""
        return _swap(path, self._to_shared)

    def loc(self, path: str) -> str:
        """``local`` of a path that is never None."""
        return _swap(path, [(b, a) for a, b in self._to_local])


def _swap(path: str, pairs: list[tuple[str, str]]) -> str:
    for old, new in pairs:
        if path == old:
            return new
        if path.startswith(old + "/") if old != "/" else path.startswith("/"):
            return new + path[len(old) :] if old != "/" else new + path
    return path
