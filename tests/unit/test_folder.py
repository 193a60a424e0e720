"""Sidecars and ticket filing: atomic, idempotent, secret-free."""

import os
from pathlib import Path

import pytest
import yaml

from agent import folder
from agent.errors import LocalResourceError


def view(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "ticket": "/in/a.job",
        "phase": "processing",
        "waiting": False,
        "next_attempt_at": None,
        "job_id": "j1",
        "server_status": "processing",
        "server_info": "",
        "error": None,
        "created_at": 0.0,
        "updated_at": 1.0,
        "finished_at": None,
    }
    base.update(over)
    return base


def test_sidecar_is_written_beside_the_ticket_without_temp_files(tmp_path: Path) -> None:
    ticket = tmp_path / "a.job"
    ticket.write_text("target: pdf\n")
    folder.write_sidecar(ticket, folder.sidecar_view(view(), []))
    data = yaml.safe_load((tmp_path / "a.status.yaml").read_text())
    assert data["phase"] == "processing" and data["job_id"] == "j1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.job", "a.status.yaml"]


def test_waiting_sidecar_shows_the_next_attempt_and_the_plain_error(tmp_path: Path) -> None:
    ticket = tmp_path / "a.job"
    err = {"kind": "retryable", "title": "API unreachable", "message": "the API is down"}
    folder.write_sidecar(
        ticket, folder.sidecar_view(view(waiting=True, next_attempt_at=100.0, error=err), [])
    )
    data = yaml.safe_load((tmp_path / "a.status.yaml").read_text())
    assert data["phase"] == "waiting" and data["step"] == "processing"
    assert data["error"] == "the API is down"
    assert data["next_attempt_at"].startswith("1970-01-01T00:01:40")


def test_filing_is_idempotent(tmp_path: Path) -> None:
    ticket = tmp_path / "a.job"
    ticket.write_text("x")
    assert folder.file_ticket(ticket, "done", "rename") == tmp_path / "a.job.done"
    # replayed after a crash: the ticket is already filed
    assert folder.file_ticket(ticket, "done", "rename") == tmp_path / "a.job.done"
    assert not ticket.exists()


def test_on_success_keep_and_delete(tmp_path: Path) -> None:
    kept = tmp_path / "k.job"
    kept.write_text("x")
    assert folder.file_ticket(kept, "done", "keep") == kept and kept.exists()
    gone = tmp_path / "d.job"
    gone.write_text("x")
    assert folder.file_ticket(gone, "done", "delete") is None and not gone.exists()
    assert folder.file_ticket(gone, "done", "delete") is None


def test_failure_is_always_renamed(tmp_path: Path) -> None:
    ticket = tmp_path / "a.job"
    ticket.write_text("x")
    assert folder.file_ticket(ticket, "failed", "keep") == tmp_path / "a.job.failed"


def test_unwritable_folder_becomes_a_waiting_error(tmp_path: Path) -> None:
    missing = tmp_path / "gone" / "a.job"
    with pytest.raises(LocalResourceError, match="not reachable"):
        folder.atomic_write(missing, b"x")


def test_progress_sidecars_and_batched_filing_skip_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    ticket = tmp_path / "a.job"
    ticket.write_text("input: a.png\n")
    folder.write_sidecar(ticket, folder.sidecar_view(view(), []), sync_dir=False, durable=False)
    assert synced == [] and folder.sidecar_path(ticket).exists()
    assert not folder.temp_path(folder.sidecar_path(ticket)).exists()
    folder.write_sidecar(ticket, folder.sidecar_view(view(), []), sync_dir=False)
    assert len(synced) == 1  # the file, not its folder
    assert folder.file_ticket(ticket, "done", "rename", sync_dir=False) == tmp_path / "a.job.done"
    assert len(synced) == 1
