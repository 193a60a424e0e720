"""A symlink planted in a watched folder never makes the agent write outside it.

Whoever can drop tickets can also plant symlinks. The agent must not follow one that sits where
an output, its part file, a sidecar or its temp file will be written: the file it points to
(outside the folder) stays untouched, dangling targets are never created.

Defences: ``downloader.place`` (``os.link`` without following, ``os.replace`` replacing the link
itself), ``downloader._open_part`` (a symlink at the part is removed, ``O_NOFOLLOW``), and
``folder.atomic_write`` (``O_EXCL | O_NOFOLLOW`` temp, ``os.replace``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_harness import png_bytes, run_agent, write_config

from agent import downloader, folder
from agent.emulator import RunningEmulator
from agent.models import ConflictPolicy, VerifyMode

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]
PRECIOUS = b"precious bytes outside the folder\n"


def _layout(tmp_path: Path) -> tuple[Path, Path]:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir()
    outside.mkdir()
    (inbox / "photo.png").write_bytes(png_bytes())
    return inbox, outside


@pytest.mark.parametrize("policy", ["rename", "overwrite", "skip"])
async def test_symlink_at_the_output_name_is_never_followed(
    tmp_path: Path, make_emulator: MakeEmulator, policy: str
) -> None:
    emu = await make_emulator()
    inbox, outside = _layout(tmp_path)
    victim = outside / "victim.jpg"
    victim.write_bytes(PRECIOUS)
    dangling = outside / "created-through-link.jpg"
    os.symlink(victim, inbox / "photo.jpg")
    (inbox / "other.png").write_bytes(png_bytes(color="green"))
    os.symlink(dangling, inbox / "other.jpg")
    for stem in ("photo", "other"):
        (inbox / f"{stem}.job").write_text(
            f"input: {stem}.png\ntarget: jpg\noutput: {{on_conflict: {policy}}}\n"
        )
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")

    code, out = await run_agent(cfg, "run", "--once")

    assert code == 0, out
    assert victim.read_bytes() == PRECIOUS  # the file the link points to is untouched
    assert not dangling.exists()  # and a dangling link's target is never created
    if policy == "overwrite":
        for name in ("photo.jpg", "other.jpg"):  # the link itself was replaced
            assert not (inbox / name).is_symlink() and (inbox / name).is_file()
    else:
        assert (inbox / "photo.jpg").is_symlink() and (inbox / "other.jpg").is_symlink()
        if policy == "rename":
            assert (inbox / "photo (1).jpg").is_file() and (inbox / "other (1).jpg").is_file()


async def test_symlinks_at_the_sidecar_and_its_temp_file_are_never_followed(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    inbox, outside = _layout(tmp_path)
    victims = [outside / f"v{i}" for i in range(3)]
    for v in victims:
        v.write_bytes(PRECIOUS)
    os.symlink(victims[0], inbox / "photo.status.yaml")
    os.symlink(victims[1], inbox / ".photo.status.yaml.tmp")
    os.symlink(victims[2], inbox / "photo.job.done")
    (inbox / "photo.job").write_text("input: photo.png\ntarget: jpg\n")
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")

    code, out = await run_agent(cfg, "run", "--once")

    assert code == 0, out
    for v in victims:
        assert v.read_bytes() == PRECIOUS
    assert (inbox / "photo.jpg").is_file()
    sidecar = inbox / "photo.status.yaml"
    assert not sidecar.is_symlink() and b"phase: done" in sidecar.read_bytes()


# --------------------------------------------------------------------------- the part file


@dataclass
class _Stream:
    data: bytes
    offset: int = 0
    validator: str | None = None

    @property
    def total(self) -> int:
        return len(self.data)

    @property
    def chunks(self) -> AsyncIterator[bytes]:
        async def gen() -> AsyncIterator[bytes]:
            yield self.data[self.offset :]

        return gen()


def _opener(data: bytes) -> downloader.StreamOpener:
    @contextlib.asynccontextmanager
    async def open_(offset: int, validator: str | None) -> AsyncIterator[_Stream]:
        yield _Stream(data, offset)

    return open_  # type: ignore[return-value]


@pytest.mark.parametrize("resume", [True, False])
async def test_symlink_planted_at_the_part_path_is_not_followed(
    tmp_path: Path, resume: bool
) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir()
    outside.mkdir()
    victim = outside / "victim"
    victim.write_bytes(PRECIOUS)
    part = inbox / ".photo.jpg.out1.part"
    os.symlink(victim, part)
    data = b"converted output " * 100

    result = await downloader.fetch_to_part(
        _opener(data),
        part,
        expected_checksum=hashlib.md5(data).hexdigest(),
        expected_size=len(data),
        verify=VerifyMode.REQUIRED,
        resume=resume,
    )

    assert result.verdict == "verified"
    assert victim.read_bytes() == PRECIOUS
    assert not part.is_symlink() and part.read_bytes() == data
    dest = downloader.place(part, inbox, "photo.jpg", ConflictPolicy.RENAME)
    assert dest == inbox / "photo.jpg" and dest.read_bytes() == data
    assert victim.read_bytes() == PRECIOUS


@pytest.mark.parametrize("dangling", [False, True])
def test_a_symlink_swapped_in_at_the_temp_name_after_the_unlink_is_not_followed(
    tmp_path: Path, dangling: bool
) -> None:
    """``atomic_write`` removes whatever sits at its temp name, then creates the temp with
    ``O_EXCL | O_NOFOLLOW``: a symlink planted between the two (a race the tests above cannot
    time) makes the write fail; the file it points to is not written, a dangling one not
    created."""
    inbox, outside = _layout(tmp_path)
    victim = outside / "victim.txt"
    if not dangling:
        victim.write_bytes(PRECIOUS)
    tmp = folder.temp_path(inbox / "a.status.yaml")
    tmp.symlink_to(victim)
    with pytest.raises(OSError):
        folder._write_new(tmp, b"phase: done\n")
    if dangling:
        assert not victim.exists()
    else:
        assert victim.read_bytes() == PRECIOUS
