"""A folder seen through a real FUSE mount (bindfs): what a network share looks like to an agent
(its file system type is ``fuse``; changes made through another path send it no events)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def bindfs(source: Path, target: Path) -> Iterator[None]:
    """``source`` seen through a FUSE mount at ``target`` (bindfs), unmounted at the end. Fails
    under CI=true when bindfs or /dev/fuse is missing (CI installs them: .ci/run)."""
    exe = shutil.which("bindfs")
    if exe is None or not Path("/dev/fuse").exists():
        if os.environ.get("CI") == "true":
            pytest.fail("bindfs and /dev/fuse are needed here (CI installs them: .ci/run)")
        pytest.skip("bindfs or /dev/fuse is missing: install bindfs to run this test")
    target.mkdir()
    subprocess.run([exe, "--no-allow-other", str(source), str(target)], check=True, timeout=20)
    try:
        yield
    finally:
        unmount = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount"
        for _ in range(50):
            if subprocess.run([unmount, "-u", str(target)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
