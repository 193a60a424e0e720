"""What a process killed mid-write leaves behind is cleaned by the next write (found by the
torture campaign: hidden ``.NAME.status.yaml.<random>.tmp`` files that stayed forever)."""

from pathlib import Path

from agent import folder, lifecycle
from agent.models import RemoteJob


def test_a_sidecar_temp_left_by_a_killed_write_is_gone_after_the_next_write(
    tmp_path: Path,
) -> None:
    ticket = tmp_path / "a.job"
    sidecar = folder.sidecar_path(ticket)
    tmp = folder.temp_path(sidecar)
    tmp.write_bytes(b"phase: proc")  # killed halfway through a write
    folder.write_sidecar(ticket, {"phase": "done"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.status.yaml"]


def test_a_planted_symlink_at_the_temp_name_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    target = tmp_path / "x.yaml"
    folder.temp_path(target).symlink_to(victim)
    folder.atomic_write(target, b"new")
    assert victim.read_text() == "keep" and target.read_bytes() == b"new"
    assert not folder.temp_path(target).exists()


def test_removing_a_sidecar_removes_its_leftover_temp(tmp_path: Path) -> None:
    ticket = tmp_path / "a.job"
    folder.write_sidecar(ticket, {"phase": "processing"})
    folder.temp_path(folder.sidecar_path(ticket)).write_bytes(b"torn")
    folder.remove_sidecar(ticket)
    assert list(tmp_path.iterdir()) == []


def test_create_exclusive_never_clobbers_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "p.png.job"
    folder.temp_path(path).write_bytes(b"left by a killed run")
    assert folder.create_exclusive(path, b"input: p.png\n")
    assert not folder.create_exclusive(path, b"other")
    assert path.read_bytes() == b"input: p.png\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png.job"]


def test_an_unknown_status_does_not_say_whether_a_job_started() -> None:
    def job(code: str) -> RemoteJob:
        return RemoteJob(id="j", status_code=code)

    assert lifecycle.start_known(job("incomplete")) is False
    assert lifecycle.start_known(job("")) is False
    assert lifecycle.start_known(job("queued")) is True
    assert lifecycle.start_known(job("Completed")) is True
    assert lifecycle.start_known(job("something_new")) is None
