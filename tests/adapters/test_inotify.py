"""agent.inotify on its own: the watches a tree holds in the kernel and the events it decodes."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import inotify

pytestmark = pytest.mark.skipif(not inotify.available(), reason="inotify is Linux only")


def kernel_watches(fd: int) -> int:
    """How many watches the kernel holds for this inotify descriptor."""
    with open(f"/proc/self/fdinfo/{fd}") as info:
        return sum(1 for line in info if line.startswith("inotify wd:"))


@pytest.fixture
def trees() -> Iterator[inotify.Trees]:
    made = inotify.Trees(inotify.Inotify())
    yield made
    made.close()


def test_a_recursive_tree_watches_each_visible_folder_and_decodes_events(
    tmp_path: Path, trees: inotify.Trees
) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    tree = trees.add(tmp_path, recursive=True, tag=7)
    assert sorted(tree.dirs.values()) == [tmp_path, tmp_path / "a", tmp_path / "a" / "b"]
    assert kernel_watches(trees.inotify.fd) == 3
    (tmp_path / "a" / "b" / "x.job").write_text("x")
    seen = [(t.tag, where, name) for t, where, name, _ in trees.changes(lambda: None)]
    assert (7, tmp_path / "a" / "b", "x.job") in seen
    os.rename(tmp_path / "a", tmp_path / ".gone")  # renamed away: its watches go at once
    events = trees.changes(lambda: None)
    assert any(name == "a" and mask & inotify.IN_MOVED_FROM for _, _, name, mask in events)
    assert sorted(tree.dirs.values()) == [tmp_path]
    (tmp_path / ".gone" / "b" / "y.job").write_text("x")
    assert not [e for e in trees.changes(lambda: None) if e[2] == "y.job"]


def test_a_tree_that_runs_out_of_watches_leaves_none_behind(
    tmp_path: Path, trees: inotify.Trees, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        (tmp_path / f"d{i}").mkdir()
    real = inotify.Inotify.add_watch
    calls: list[str] = []

    def limited(self: inotify.Inotify, path: str, mask: int = inotify.WATCH_MASK) -> int:
        calls.append(path)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "no watches left")
        return real(self, path, mask)

    monkeypatch.setattr(inotify.Inotify, "add_watch", limited)
    with pytest.raises(OSError) as caught:
        trees.add(tmp_path, recursive=True)
    assert caught.value.errno == errno.ENOSPC
    assert len(calls) == 3 and kernel_watches(trees.inotify.fd) == 0


@pytest.mark.allow_skip(reason="a runner whose fs.inotify.max_queued_events is large skips it")
def test_overflow_is_reported(tmp_path: Path, trees: inotify.Trees) -> None:
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 100_000:
        pytest.skip("the kernel's event queue is too long to overflow quickly")
    trees.add(tmp_path, recursive=False)
    for i in range(limit // 2 + 100):
        os.close(os.open(tmp_path / f"f{i}", os.O_WRONLY | os.O_CREAT))
    overflows: list[int] = []
    trees.changes(lambda: overflows.append(1))
    assert overflows == [1]
