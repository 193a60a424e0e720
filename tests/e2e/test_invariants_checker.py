"""The e2e checker itself: `invariants()` must fire on each violation it promises to find.

Pure: fake emulator-state dicts (the shape of `/_emulator/state`) and tmp folders, no agent."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_harness import invariants

OUT = b"converted bytes"


def emu_job(job_id: str = "j1", **changes: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "id": job_id,
        "status": "completed",
        "process": True,
        "starts": 1,
        "start_requests": 1,
        "idempotency_key": f"key-{job_id}",
        "targets": ["jpg"],
        "inputs": [{"id": "i1", "type": "upload", "status": "ready", "filename": "a.png"}],
        "outputs": [
            {
                "id": "o1",
                "filename": "a.jpg",
                "size": len(OUT),
                "checksum": hashlib.md5(OUT).hexdigest(),
                "downloads_counter": 1,
                "status": "enabled",
            }
        ],
    }
    job.update(changes)
    return job


def world(tmp_path: Path, *jobs: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """A finished ticket `a.job` for job j1 with its output written, and the emulator's view."""
    folder = tmp_path / "inbox"
    folder.mkdir(parents=True)
    (tmp_path / "c.yaml").write_text("api: {}\n")
    (tmp_path / "state.db").write_bytes(b"")
    (folder / "a.png").write_bytes(b"input")
    (folder / "a.jpg").write_bytes(OUT)
    (folder / "a.job.done").write_text("input: a.png\ntarget: jpg\n")
    sidecar = {
        "format": 1,
        "phase": "done",
        "job_id": "j1",
        "outputs": [
            {
                "name": "a.jpg",
                "size": len(OUT),
                "checksum": hashlib.md5(OUT).hexdigest(),
                "state": "done",
                "verdict": "verified",
            }
        ],
    }
    (folder / "a.status.yaml").write_text(yaml.safe_dump(sidecar))
    return folder, {"jobs": list(jobs) or [emu_job()]}


def test_a_clean_run_has_no_problems(tmp_path: Path) -> None:
    folder, state = world(tmp_path)
    assert invariants(folder, state) == []


def test_a_wrong_byte_in_an_output_is_found(tmp_path: Path) -> None:
    folder, state = world(tmp_path)
    data = bytearray(OUT)
    data[3] ^= 1
    (folder / "a.jpg").write_bytes(bytes(data))
    problems = invariants(folder, state)
    assert any("a.jpg" in p and "md5" in p for p in problems), problems


def test_a_wrong_byte_is_found_even_when_the_sidecar_agrees_with_the_file(
    tmp_path: Path,
) -> None:
    folder, state = world(tmp_path)
    bad = OUT[:-1] + b"?"
    (folder / "a.jpg").write_bytes(bad)
    side = yaml.safe_load((folder / "a.status.yaml").read_text())
    side["outputs"][0]["checksum"] = hashlib.md5(bad).hexdigest()  # the agent's record lies too
    (folder / "a.status.yaml").write_text(yaml.safe_dump(side))
    problems = invariants(folder, state)
    assert any("matches no output of job j1" in p for p in problems), problems


def test_an_unclaimed_file_named_like_an_output_with_other_bytes_is_found(
    tmp_path: Path,
) -> None:
    folder, state = world(tmp_path)
    (folder / "a.status.yaml").unlink()
    (folder / "a.jpg").write_bytes(b"not the output")
    problems = invariants(folder, state)
    assert any("bytes differ" in p for p in problems), problems


def test_a_recorded_output_that_is_missing_is_found(tmp_path: Path) -> None:
    folder, state = world(tmp_path)
    (folder / "a.jpg").unlink()
    assert any("output missing" in p for p in invariants(folder, state))


def test_a_second_start_request_is_found(tmp_path: Path) -> None:
    folder, state = world(tmp_path, emu_job(start_requests=2))
    problems = invariants(folder, state)
    assert any("2 start requests" in p for p in problems), problems


def test_extra_start_requests_may_be_allowed_by_the_caller(tmp_path: Path) -> None:
    folder, state = world(tmp_path, emu_job(start_requests=2))
    assert invariants(folder, state, allow_extra_starts={"j1": 1}) == []
    assert invariants(folder, state, allow_extra_starts=lambda job: 1) == []
    assert invariants(folder, state, allow_extra_starts={"other": 5}) != []
    folder2, state3 = world(tmp_path / "b", emu_job(start_requests=3))
    assert invariants(folder2, state3, allow_extra_starts={"j1": 1}) != []


def test_a_job_started_twice_is_found(tmp_path: Path) -> None:
    folder, state = world(tmp_path, emu_job(starts=2, start_requests=2))
    problems = invariants(folder, state, allow_extra_starts={"j1": 1})
    assert any("started 2 times" in p for p in problems), problems


def test_a_leftover_staged_job_is_found(tmp_path: Path) -> None:
    orphan = emu_job("j2", status="incomplete", starts=0, start_requests=0, outputs=[])
    folder, state = world(tmp_path, emu_job(), orphan)
    problems = invariants(folder, state)
    assert any("j2" in p and "staged" in p for p in problems), problems
    assert invariants(folder, state, staged_ok="the test drops the create's answer") == []


@pytest.mark.parametrize("phase", ["creating", "uploading", "waiting"])
def test_a_staged_job_of_an_unfinished_ticket_is_not_an_orphan(tmp_path: Path, phase: str) -> None:
    staged = emu_job("j2", status="incomplete", starts=0, start_requests=0, outputs=[])
    folder, state = world(tmp_path, emu_job(), staged)
    (folder / "b.job").write_text("input: a.png\ntarget: png\n")
    job_id = None if phase == "creating" else "j2"
    (folder / "b.status.yaml").write_text(yaml.safe_dump({"phase": phase, "job_id": job_id}))
    assert invariants(folder, state) == []


def test_a_staged_job_nobody_created_with_a_key_is_not_the_agents(tmp_path: Path) -> None:
    other = emu_job("j2", status="incomplete", starts=0, start_requests=0, idempotency_key=None)
    folder, state = world(tmp_path, emu_job(), other)
    assert invariants(folder, state) == []


def test_a_canceled_job_is_not_staged(tmp_path: Path) -> None:
    canceled = emu_job("j2", status="canceled", starts=0, start_requests=0, outputs=[])
    folder, state = world(tmp_path, emu_job(), canceled)
    assert invariants(folder, state) == []


def test_a_file_outside_the_folder_is_found(tmp_path: Path) -> None:
    folder, state = world(tmp_path)
    (tmp_path / "a.jpg").write_bytes(OUT)
    problems = invariants(folder, state)
    assert any("outside the folder" in p and p.endswith("a.jpg") for p in problems), problems


def test_a_file_outside_deeper_down_or_beside_the_folder_is_found(tmp_path: Path) -> None:
    folder, state = world(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.yaml").write_text("")
    assert any("elsewhere" in p for p in invariants(folder, state))
    assert invariants(folder, state, allowed=[tmp_path / "elsewhere"]) == []


def test_the_root_can_be_given(tmp_path: Path) -> None:
    folder, state = world(tmp_path / "t")
    (tmp_path / "stray.jpg").write_bytes(OUT)
    assert invariants(folder, state) == []  # default root: the folder's parent
    assert any("stray.jpg" in p for p in invariants(folder, state, root=tmp_path))


@pytest.mark.parametrize("name", [".a.jpg.tmp", "a.jpg.part", "a (1).jpg"])
def test_temp_files_and_duplicates_are_still_found(tmp_path: Path, name: str) -> None:
    folder, state = world(tmp_path)
    (folder / name).write_bytes(OUT)
    assert invariants(folder, state) != []
