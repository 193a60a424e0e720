"""Downloader: hashing, verification, resume, and placement that never clobbers or follows links."""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent import downloader
from agent.downloader import (
    ChecksumMismatch,
    SizeMismatch,
    checksum_algorithm,
    fetch_to_part,
    matches,
    place,
)
from agent.errors import ApiUnavailable, LocalResourceError, OutputUnavailable, PermanentError
from agent.models import ConflictPolicy, VerifyMode

DATA = os.urandom(3 * 1024 * 1024 + 123)
MD5 = hashlib.md5(DATA).hexdigest()


@dataclass
class FakeStream:
    offset: int
    validator: str | None
    chunks: AsyncIterator[bytes]


class Opener:
    """Serves DATA; honours the offset unless ``honour_range`` is False; may die after N bytes."""

    def __init__(
        self, data: bytes = DATA, *, honour_range: bool = True, die_after: int | None = None
    ):
        self.data = data
        self.honour_range = honour_range
        self.die_after = die_after
        self.calls: list[tuple[int, str | None]] = []

    def __call__(self, offset: int, validator: str | None):
        self.calls.append((offset, validator))
        start = offset if self.honour_range else 0

        async def chunks() -> AsyncIterator[bytes]:
            sent = 0
            for i in range(start, len(self.data), 100_000):
                block = self.data[i : i + 100_000]
                if self.die_after is not None and sent + len(block) > self.die_after:
                    yield block[: self.die_after - sent]
                    raise ApiUnavailable("the download was cut off part-way")
                sent += len(block)
                yield block

        @asynccontextmanager
        async def cm() -> AsyncIterator[FakeStream]:
            yield FakeStream(start, '"etag"', chunks())

        return cm()


def never_called(offset: int, validator: str | None):
    raise AssertionError("no request should be made")


async def fetch(opener, part: Path, checksum: str = MD5, **kw):
    kw.setdefault("expected_size", len(DATA))
    kw.setdefault("verify", VerifyMode.IF_PRESENT)
    kw.setdefault("resume", False)
    return await fetch_to_part(opener, part, expected_checksum=checksum, **kw)


@pytest.mark.parametrize(
    ("digest", "algorithm"),
    [
        ("d41d8cd98f00b204e9800998ecf8427e", "md5"),
        ("DA39A3EE5E6B4B0D3255BFEF95601890AFD80709", "sha1"),
        ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "sha256"),
        ("", None),
        ("ABCD", None),
        ("z" * 32, None),
    ],
)
def test_checksum_algorithm_by_length(digest: str, algorithm: str | None) -> None:
    assert checksum_algorithm(digest) == algorithm


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256"])
async def test_fetch_verifies_each_algorithm(tmp_path: Path, algorithm: str) -> None:
    part = tmp_path / ".out.bin.abc.part"
    digest = hashlib.new(algorithm, DATA).hexdigest()
    result = await fetch(Opener(), part, digest.upper())
    assert result.verdict == "verified" and result.digest == digest and result.size == len(DATA)
    assert part.read_bytes() == DATA


async def test_fetch_without_checksum_is_unverified(tmp_path: Path) -> None:
    seen: list[str | None] = []
    result = await fetch(Opener(), tmp_path / ".p.part", "", on_validator=seen.append)
    assert result.verdict == "unverified"
    assert result.digest == hashlib.sha256(DATA).hexdigest() and result.validator == '"etag"'
    assert seen == ['"etag"']


async def test_verify_required_without_checksum_fails_before_any_request(tmp_path: Path) -> None:
    with pytest.raises(OutputUnavailable, match="no checksum"):
        await fetch(never_called, tmp_path / ".p.part", "ABCD", verify=VerifyMode.REQUIRED)
    assert not (tmp_path / ".p.part").exists()


async def test_mismatch_raises_and_deletes_part(tmp_path: Path) -> None:
    part = tmp_path / ".p.part"
    with pytest.raises(ChecksumMismatch) as info:
        await fetch(Opener(), part, "0" * 32)
    assert info.value.expected == "0" * 32 and info.value.actual == MD5
    assert not part.exists()


async def test_size_mismatch_without_checksum_deletes_part(tmp_path: Path) -> None:
    part = tmp_path / ".p.part"
    with pytest.raises(SizeMismatch):
        await fetch(Opener(), part, "", expected_size=len(DATA) + 1)
    assert not part.exists()


async def test_network_error_keeps_part_and_resume_rehashes_prefix(tmp_path: Path) -> None:
    part = tmp_path / ".p.part"
    with pytest.raises(ApiUnavailable):
        await fetch(Opener(die_after=1_234_567), part, resume=True)
    assert part.read_bytes() == DATA[:1_234_567]
    opener = Opener()
    result = await fetch(opener, part, resume=True, validator='"etag"')
    assert opener.calls == [(1_234_567, '"etag"')]
    assert result.verdict == "verified" and part.read_bytes() == DATA


async def test_resume_answered_with_200_starts_again(tmp_path: Path) -> None:
    part = tmp_path / ".p.part"
    part.write_bytes(b"X" * 5000)  # garbage prefix; the server ignores the range
    opener = Opener(honour_range=False)
    result = await fetch(opener, part, resume=True)
    assert opener.calls == [(5000, None)]
    assert result.verdict == "verified" and part.read_bytes() == DATA


async def test_complete_part_is_accepted_without_a_request(tmp_path: Path) -> None:
    part = tmp_path / ".p.part"
    part.write_bytes(DATA)
    result = await fetch(never_called, part, resume=True)
    assert result.verdict == "verified" and result.size == len(DATA)


async def test_a_full_size_leftover_part_with_wrong_bytes_is_downloaded_again(
    tmp_path: Path,
) -> None:
    # An earlier run died with a part of the announced size, but its bytes are wrong (a torn
    # write, a bad sector, someone else's file): its digest must be compared, not its size.
    part = tmp_path / ".p.part"
    bad = bytearray(DATA)
    bad[len(bad) // 2] ^= 0xFF
    part.write_bytes(bytes(bad))
    opener = Opener()
    result = await fetch(opener, part, resume=True, validator='"etag"')
    assert opener.calls == [(0, '"etag"')]  # started again from the first byte
    assert result.verdict == "verified" and result.digest == MD5
    assert part.read_bytes() == DATA


async def test_without_resume_an_old_part_is_discarded(tmp_path: Path) -> None:
    part = tmp_path / ".p.part"
    part.write_bytes(b"old")
    opener = Opener()
    await fetch(opener, part)
    assert opener.calls == [(0, None)] and part.read_bytes() == DATA


async def test_symlink_at_part_path_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    part = tmp_path / ".p.part"
    part.symlink_to(victim)
    await fetch(Opener(), part, resume=True)
    assert victim.read_bytes() == b"precious"
    assert not part.is_symlink() and part.read_bytes() == DATA


async def test_disk_full_is_local_resource_error_and_part_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: object, blocks: list[bytes]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(downloader._Sink, "write_many", full)
    part = tmp_path / ".p.part"
    with pytest.raises(LocalResourceError, match="disk full"):
        await fetch(Opener(), part)
    assert not part.exists()


async def test_too_little_free_space_refuses_before_any_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A GET spends one of the output's few downloads: a folder that cannot hold the file is
    # found out from its free space first, and no part file is made.
    real = os.statvfs(tmp_path)

    def statvfs(path: object) -> os.statvfs_result:
        fields = list(real)
        fields[4] = len(DATA) // real.f_frsize - 1  # f_bavail: one block short
        return os.statvfs_result(fields)

    monkeypatch.setattr(downloader.os, "statvfs", statvfs)
    part = tmp_path / ".p.part"
    with pytest.raises(LocalResourceError, match="disk full"):
        await fetch(never_called, part)
    assert not part.exists()


@pytest.mark.parametrize("in_flight", [1, 64 * 1024 * 1024])
async def test_hand_off_depth_does_not_change_bytes_or_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_flight: int
) -> None:
    # Small buffers: many batches; 1 byte in flight waits for each, 64 MiB never waits.
    monkeypatch.setattr(downloader, "WRITE_BUFFER", 150_000)
    monkeypatch.setattr(downloader, "IN_FLIGHT", in_flight)
    seen: list[int] = []
    part = tmp_path / ".p.part"
    result = await fetch(Opener(), part, on_progress=lambda done, total: seen.append(done))
    assert result.verdict == "verified" and part.read_bytes() == DATA
    assert seen == sorted(seen) and seen[-1] == len(DATA) and len(seen) > 5


@pytest.mark.parametrize("in_flight", [1, 64 * 1024 * 1024])
async def test_cut_off_with_batches_in_flight_keeps_exactly_the_received_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_flight: int
) -> None:
    monkeypatch.setattr(downloader, "WRITE_BUFFER", 150_000)
    monkeypatch.setattr(downloader, "IN_FLIGHT", in_flight)
    part = tmp_path / ".p.part"
    with pytest.raises(ApiUnavailable):
        await fetch(Opener(die_after=2_345_678), part, resume=True)
    assert part.read_bytes() == DATA[:2_345_678]
    result = await fetch(Opener(), part, resume=True)
    assert result.verdict == "verified" and part.read_bytes() == DATA


async def test_nothing_is_written_after_a_failed_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downloader, "WRITE_BUFFER", 150_000)
    monkeypatch.setattr(downloader, "IN_FLIGHT", 64 * 1024 * 1024)  # all batches queued at once
    real = downloader._Sink.write_many
    calls: list[int] = []

    def second_fails(self: downloader._Sink, blocks: list[bytes]) -> None:
        calls.append(len(blocks))
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        real(self, blocks)

    monkeypatch.setattr(downloader._Sink, "write_many", second_fails)
    part = tmp_path / ".p.part"
    with pytest.raises(LocalResourceError):
        await fetch(Opener(), part)
    assert len(calls) == 2  # the batches queued behind the failure never reached the file
    assert not part.exists()


async def test_short_writev_is_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def short_writev(fd: int, blocks: list[bytes]) -> int:
        # Writes at most 70_001 bytes per call, ending in the middle of a block.
        want = b"".join(blocks)[:70_001]
        return os.write(fd, want)

    monkeypatch.setattr(downloader, "_WRITEV", short_writev)
    part = tmp_path / ".p.part"
    result = await fetch(Opener(), part)
    assert result.verdict == "verified" and part.read_bytes() == DATA


async def test_without_writev_blocks_are_written_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downloader, "_WRITEV", None)  # Windows
    part = tmp_path / ".p.part"
    result = await fetch(Opener(), part)
    assert result.verdict == "verified" and part.read_bytes() == DATA


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise here")
async def test_written_ranges_are_handed_to_writeback_then_dropped_a_round_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downloader, "WRITE_BUFFER", 150_000)
    monkeypatch.setattr(downloader, "WRITEBACK_EVERY", 500_000)
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(
        downloader.os, "posix_fadvise", lambda fd, off, n, advice: calls.append((off, n))
    )
    part = tmp_path / ".p.part"
    result = await fetch(Opener(), part)
    assert result.verdict == "verified" and part.read_bytes() == DATA
    kicks = [calls[0], *calls[1::2]]  # each round: the new range, then the one before it
    drops = calls[2::2]
    assert len(kicks) >= 4 and drops == kicks[: len(drops)] and len(drops) == len(kicks) - 1
    assert kicks[0][0] == 0 and all(a + n == b for (a, n), (b, _) in itertools.pairwise(kicks))
    assert all(n >= 500_000 for _, n in kicks)


async def test_permanent_refusal_removes_part(tmp_path: Path) -> None:
    def refuse(offset: int, validator: str | None):
        raise OutputUnavailable("expired")

    part = tmp_path / ".p.part"
    part.write_bytes(b"abc")
    with pytest.raises(OutputUnavailable):
        await fetch(refuse, part, resume=True)
    assert not part.exists()


# --------------------------------------------------------------------------- place


def make_part(folder: Path, data: bytes = b"new") -> Path:
    part = folder / ".out.txt.1234.part"
    part.write_bytes(data)
    return part


def test_place_rename_never_clobbers(tmp_path: Path) -> None:
    (tmp_path / "out.txt").write_bytes(b"user's")
    (tmp_path / "out (1).txt").write_bytes(b"user's too")
    part = make_part(tmp_path)
    dest = place(part, tmp_path, "out.txt", ConflictPolicy.RENAME)
    assert dest == tmp_path / "out (2).txt" and dest.read_bytes() == b"new"
    assert (tmp_path / "out.txt").read_bytes() == b"user's"
    assert not part.exists()


def test_place_never_clobbers_a_file_made_after_the_folder_was_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing is a moment old (or, in a big folder, a while): the link itself refuses."""
    monkeypatch.setattr(downloader.FOLDER_NAMES, "keys", lambda folder, fresh=False: {})
    (tmp_path / "out.txt").write_bytes(b"user's")
    dest = place(make_part(tmp_path), tmp_path, "out.txt", ConflictPolicy.RENAME)
    assert dest == tmp_path / "out (1).txt" and dest.read_bytes() == b"new"
    assert (tmp_path / "out.txt").read_bytes() == b"user's"


def test_place_uses_given_candidates(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x")
    dest = place(make_part(tmp_path), tmp_path, "a", ConflictPolicy.RENAME, candidates=["a", "b"])
    assert dest == tmp_path / "b"


@pytest.mark.parametrize("bad", ["../evil", "a/b", "..", ""])
def test_place_refuses_non_basenames(tmp_path: Path, bad: str) -> None:
    part = make_part(tmp_path)
    with pytest.raises(PermanentError):
        place(part, tmp_path, "ok", ConflictPolicy.RENAME, candidates=[bad])
    assert not (tmp_path.parent / "evil").exists()


def test_place_skip_keeps_existing_and_returns_none(tmp_path: Path) -> None:
    (tmp_path / "out.txt").write_bytes(b"user's")
    part = make_part(tmp_path)
    assert place(part, tmp_path, "out.txt", ConflictPolicy.SKIP) is None
    assert (tmp_path / "out.txt").read_bytes() == b"user's" and not part.exists()


def test_place_fail_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "out.txt").write_bytes(b"user's")
    part = make_part(tmp_path)
    with pytest.raises(PermanentError, match=r"out\.txt"):
        place(part, tmp_path, "out.txt", ConflictPolicy.FAIL)
    assert (tmp_path / "out.txt").read_bytes() == b"user's" and not part.exists()


def test_place_fail_and_skip_write_when_free(tmp_path: Path) -> None:
    assert place(make_part(tmp_path), tmp_path, "a.txt", ConflictPolicy.FAIL) == tmp_path / "a.txt"
    assert place(make_part(tmp_path), tmp_path, "b.txt", ConflictPolicy.SKIP) == tmp_path / "b.txt"


def test_place_overwrite_replaces(tmp_path: Path) -> None:
    (tmp_path / "out.txt").write_bytes(b"old")
    part = make_part(tmp_path)
    assert place(part, tmp_path, "out.txt", ConflictPolicy.OVERWRITE) == tmp_path / "out.txt"
    assert (tmp_path / "out.txt").read_bytes() == b"new" and not part.exists()


# Names that differ only in case or Unicode normalisation are one name on NTFS and APFS (and on
# a share Windows or macOS clients open): conflicts are decided that way on every platform.
CAFE_NFD = "cafe\u0301.jpg"  # how macOS writes "café.jpg"


@pytest.mark.parametrize(
    ("existing", "server", "placed"),
    [
        (["photo.jpg"], "Photo.JPG", "Photo (1).JPG"),
        (["PHOTO.JPG", "photo (1).jpg"], "Photo.jpg", "Photo (2).jpg"),
        ([CAFE_NFD], "caf\u00e9.jpg", "caf\u00e9 (1).jpg"),
        (["STRASSE.txt"], "stra\u00dfe.txt", "stra\u00dfe (1).txt"),
    ],
)
def test_place_rename_treats_case_and_normalisation_variants_as_taken(
    tmp_path: Path, existing: list[str], server: str, placed: str
) -> None:
    for name in existing:
        (tmp_path / name).write_bytes(b"user's")
    part = make_part(tmp_path)
    dest = place(part, tmp_path, server, ConflictPolicy.RENAME)
    assert dest == tmp_path / placed and dest.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == sorted([*existing, placed])
    assert all((tmp_path / name).read_bytes() == b"user's" for name in existing)


def test_place_skip_fail_and_overwrite_see_a_case_variant_as_the_same_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "photo.jpg").write_bytes(b"user's")
    part = make_part(tmp_path)
    assert place(part, tmp_path, "Photo.JPG", ConflictPolicy.SKIP) is None
    assert os.listdir(tmp_path) == ["photo.jpg"]
    part = make_part(tmp_path)
    with pytest.raises(PermanentError, match=r"photo\.jpg already exists"):
        place(part, tmp_path, "Photo.JPG", ConflictPolicy.FAIL)
    assert os.listdir(tmp_path) == ["photo.jpg"]
    part = make_part(tmp_path)
    dest = place(part, tmp_path, "Photo.JPG", ConflictPolicy.OVERWRITE)
    assert dest == tmp_path / "photo.jpg" and dest.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["photo.jpg"]


def test_two_outputs_differing_in_case_get_two_names(tmp_path: Path) -> None:
    first = place(make_part(tmp_path), tmp_path, "a.png", ConflictPolicy.RENAME)
    second = place(make_part(tmp_path), tmp_path, "A.PNG", ConflictPolicy.RENAME)
    assert (first, second) == (tmp_path / "a.png", tmp_path / "A (1).PNG")


@pytest.mark.parametrize("coarse", [False, True], ids=["fine-mtime", "coarse-mtime"])
def test_a_variant_made_right_after_a_placement_is_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, coarse: bool
) -> None:
    """The folder's listing is not trusted on an mtime as recent as the listing itself: with a
    clock that did not tick between the listing and the user's new file (``coarse``) the mtime
    is unchanged, yet the new file is seen."""
    if coarse:
        real_stat = os.stat
        frozen = real_stat(tmp_path).st_mtime_ns

        def stat(path: object, *args: object, **kw: object) -> object:
            st = real_stat(path, *args, **kw)  # type: ignore[arg-type, call-overload]
            if str(path) != str(tmp_path):
                return st
            return SimpleNamespace(st_ino=st.st_ino, st_mtime_ns=frozen)

        monkeypatch.setattr(downloader.os, "stat", stat)
    place(make_part(tmp_path), tmp_path, "x.png", ConflictPolicy.RENAME)
    (tmp_path / "PHOTO.jpg").write_bytes(b"user's")
    dest = place(make_part(tmp_path), tmp_path, "photo.JPG", ConflictPolicy.RENAME)
    assert dest == tmp_path / "photo (1).JPG"


def test_a_big_folder_is_not_listed_for_every_placement_but_sees_its_own_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(downloader.SMALL_FOLDER):
        (tmp_path / f"in-{i}.txt").write_bytes(b"")
    listed: list[str] = []
    real = os.listdir

    def listdir(path: object) -> list[str]:
        listed.append(str(path))
        return real(path)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(downloader.os, "listdir", listdir)
    monkeypatch.setattr(downloader, "RELIST_FACTOR", 1e9)  # no re-listing within this test
    assert place(make_part(tmp_path), tmp_path, "IN-1.TXT", ConflictPolicy.RENAME) == (
        tmp_path / "IN-1 (1).TXT"
    )
    for name, placed in [
        ("b.png", "b.png"),
        ("B.PNG", "B (1).PNG"),
        ("b (1).PNG", "b (1) (1).PNG"),
    ]:
        assert place(make_part(tmp_path), tmp_path, name, ConflictPolicy.RENAME) == (
            tmp_path / placed
        )
    assert len(listed) == 1


@pytest.mark.parametrize("policy", list(ConflictPolicy))
def test_symlink_at_destination_is_never_followed(tmp_path: Path, policy: ConflictPolicy) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "target.txt"
    target.write_bytes(b"precious")
    folder = tmp_path / "inbox"
    folder.mkdir()
    (folder / "out.txt").symlink_to(target)
    part = make_part(folder)
    try:
        dest = place(part, folder, "out.txt", policy)
    except PermanentError:
        assert policy == ConflictPolicy.FAIL
        dest = None
    assert target.read_bytes() == b"precious"
    if policy == ConflictPolicy.OVERWRITE:
        assert dest is not None and not dest.is_symlink() and dest.read_bytes() == b"new"
    elif policy == ConflictPolicy.RENAME:
        assert dest == folder / "out (1).txt" and (folder / "out.txt").is_symlink()


def test_place_without_hard_links_falls_back_without_clobbering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(*args: object, **kw: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(downloader.os, "link", no_link)
    (tmp_path / "out.txt").write_bytes(b"user's")
    part = make_part(tmp_path)
    dest = place(part, tmp_path, "out.txt", ConflictPolicy.RENAME)
    assert dest == tmp_path / "out (1).txt" and dest.read_bytes() == b"new"
    assert (tmp_path / "out.txt").read_bytes() == b"user's" and not part.exists()


def test_placement_without_hard_links_when_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONVERT_AGENT_FORCE_PORTABLE (platform.HARD_LINKS false): no link is even tried."""

    def link(*args: object, **kw: object) -> None:
        raise AssertionError("os.link called")

    monkeypatch.setattr(downloader.platform, "HARD_LINKS", False)
    monkeypatch.setattr(downloader.os, "link", link)
    (tmp_path / "out.txt").write_bytes(b"user's")
    dest = place(make_part(tmp_path), tmp_path, "out.txt", ConflictPolicy.RENAME)
    assert dest == tmp_path / "out (1).txt" and dest.read_bytes() == b"new"
    assert (tmp_path / "out.txt").read_bytes() == b"user's"


class _Killed(BaseException):
    """Stands for the process being killed: nothing below it runs, no handler sees it."""


def test_a_placement_killed_without_hard_links_is_finished_by_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(*args: object, **kw: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    def killed(*args: object, **kw: object) -> None:
        raise _Killed

    monkeypatch.setattr(downloader.os, "link", no_link)
    part = make_part(tmp_path, b"the output")
    with monkeypatch.context() as m:
        m.setattr(downloader.os, "replace", killed)
        with pytest.raises(_Killed):
            place(part, tmp_path, "out.txt", ConflictPolicy.RENAME)
    placeholder = tmp_path / "out.txt"
    assert placeholder.stat().st_size == 0 and part.exists()  # what a kill there leaves
    assert downloader.complete_placeholder(part, placeholder)
    assert placeholder.read_bytes() == b"the output" and not part.exists()


def test_an_empty_file_of_the_user_is_not_taken_for_a_placeholder(tmp_path: Path) -> None:
    part = make_part(tmp_path, b"the output")
    mine = tmp_path / "out.txt"
    mine.write_bytes(b"")
    assert not downloader.complete_placeholder(part, mine)
    assert mine.read_bytes() == b"" and part.read_bytes() == b"the output"
    mine.chmod(0)  # even one with no permission bits, once the part is gone
    part.unlink()
    assert not downloader.complete_placeholder(part, mine)
    assert mine.exists()


def test_place_os_error_keeps_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*args: object, **kw: object) -> None:
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(downloader.os, "link", denied)
    part = make_part(tmp_path)
    with pytest.raises(LocalResourceError, match="permission denied"):
        place(part, tmp_path, "out.txt", ConflictPolicy.RENAME)
    assert part.exists()


# --------------------------------------------------------------------------- matches


def test_matches(tmp_path: Path) -> None:
    f = tmp_path / "f.bin"
    f.write_bytes(b"hello")
    assert matches(f, hashlib.md5(b"hello").hexdigest().upper())
    assert matches(f, hashlib.sha256(b"hello").hexdigest())
    assert not matches(f, hashlib.md5(b"other").hexdigest())
    assert not matches(f, "ABCD")
    assert not matches(tmp_path / "missing", hashlib.md5(b"hello").hexdigest())
    link = tmp_path / "link"
    link.symlink_to(f)
    assert not matches(link, hashlib.md5(b"hello").hexdigest())


def test_folder_listings_are_kept_only_while_placed_into(tmp_path: Path) -> None:
    """A listing holds every name of its folder: kept for every folder ever placed into, they
    were MiBs for folders long gone (issue 13). Kept in the order of use, dropped once unused
    for FOLDER_IDLE_SECONDS (placing into a folder keeps its listing), and at once when the
    folder is gone; an idle agent keeps none."""
    now = [0.0]
    names = downloader.FolderNames(clock=lambda: now[0])
    idle = downloader.FOLDER_IDLE_SECONDS
    a, b, c = (tmp_path / n for n in "abc")
    for folder in (a, b, c):
        folder.mkdir()
        (folder / "Photo.JPG").write_bytes(b"x")
    assert names.keys(a) == {"photo.jpg": "Photo.JPG"}
    names.keys(b)
    assert len(names) == 2
    now[0] += idle * 0.75
    names.add(a, "new.png")  # a is placed into: its listing stays
    now[0] += idle * 0.5  # b unused for longer than FOLDER_IDLE_SECONDS
    names.keys(c)
    assert sorted(names._cache) == [str(a), str(c)]
    assert "new.png" in names._cache[str(a)].keys  # the kept listing, with what was added
    shutil.rmtree(c)
    with pytest.raises(FileNotFoundError):
        names.keys(c)
    assert sorted(names._cache) == [str(a)]  # a folder gone: its listing too
    now[0] += idle + 1
    assert names.forget_idle() == 0 and len(names) == 0
