"""The invariant checker sees each kind of violation (a checker that never complains proves
nothing): a finished run is clean, and each tampering below is reported."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from invariants import DroppedTicket, Manifest, check, listing, outside_changes

from agent.models import Phase, RemoteOutput
from agent.store import Store

DATA = b"converted bytes"


def _world(tmp_path: Path) -> tuple[Manifest, dict[str, Any]]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    db = tmp_path / "state.db"
    ticket = inbox / "a.job"
    (inbox / "a.png").write_bytes(b"png")
    (inbox / "a.job.done").write_text("input: a.png\ntarget: jpg\n")
    (inbox / "a.status.yaml").write_text("phase: done\n")
    (inbox / "a.jpg").write_bytes(DATA)
    md5 = hashlib.md5(DATA).hexdigest()
    store = Store.open(db)
    rec = store.add_ticket(
        path=str(ticket),
        root=str(inbox),
        sha256="s",
        kind="conversion",
        spec={},
        inputs=[("local", "a.png", str(inbox / "a.png"))],
        idem_prefix="p",
        now=1.0,
    )
    store.update(rec.id, 2.0, event="done", phase=Phase.DONE, job_id="j1", filed=True)
    store.record_outputs(
        rec.id, [RemoteOutput("o1", "u", "a.jpg", len(DATA), "enabled", md5, "", 1, "")]
    )
    out = store.outputs(rec.id)[0]
    store.update_output(out.id, state="done", dest_name="a.jpg", digest=md5)
    store.close()
    emu = {
        "jobs": [
            {
                "id": "j1",
                "starts": 1,
                "inputs": [{"filename": "a.png"}],
                "outputs": [{"id": "o1", "checksum": md5, "size": len(DATA)}],
            }
        ],
        "internal_errors": [],
    }
    manifest = Manifest(
        roots=[inbox],
        db_path=db,
        tickets=[DroppedTicket(path=ticket, inputs=("a.png",))],
        input_files={inbox / "a.png"},
    )
    return manifest, emu


def test_a_clean_finished_run_has_no_violations(tmp_path: Path) -> None:
    manifest, emu = _world(tmp_path)
    assert check(manifest, emu) == []


def _inbox(m: Manifest) -> Path:
    return Path(m.roots[0])


TAMPER: dict[str, tuple[Callable[[Manifest, dict[str, Any]], None], str]] = {
    "torn": (lambda m, e: (_inbox(m) / "a.jpg").write_bytes(DATA[:5]), "torn or corrupt"),
    "missing": (lambda m, e: (_inbox(m) / "a.jpg").unlink(), "is missing"),
    "duplicate": (
        lambda m, e: (_inbox(m) / "a (1).jpg").write_bytes(DATA),
        "duplicated output: a (1).jpg",
    ),
    "temp": (lambda m, e: (_inbox(m) / ".a.jpg.o1.part").write_bytes(b"x"), "temp file left"),
    "tmp": (lambda m, e: (_inbox(m) / "x.tmp").write_bytes(b"x"), "temp file left"),
    "stuck": (
        lambda m, e: os.replace(_inbox(m) / "a.job.done", _inbox(m) / "a.job"),
        "still NAME.job",
    ),
    "lost": (
        lambda m, e: m.tickets.append(DroppedTicket(path=_inbox(m) / "b.job")),  # type: ignore[attr-defined]
        "lost",
    ),
    "started twice": (lambda m, e: e["jobs"][0].update(starts=2), "started 2 times"),
    "second job": (
        lambda m, e: e["jobs"].append(
            {"id": "j2", "starts": 1, "inputs": [{"filename": "a.png"}], "outputs": []}
        ),
        "2 started jobs",
    ),
}


@pytest.mark.parametrize("name", sorted(TAMPER))
def test_each_violation_is_reported(tmp_path: Path, name: str) -> None:
    manifest, emu = _world(tmp_path)
    tamper, expected = TAMPER[name]
    tamper(manifest, emu)
    problems = check(manifest, emu)
    assert any(expected in p for p in problems), problems


def test_writes_outside_the_roots_are_reported(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "keep").write_text("x")
    before = listing(tmp_path, exclude=[tmp_path / "inbox"])
    (tmp_path / "leak.txt").write_text("secret")
    (tmp_path / "keep").write_text("y")
    (tmp_path / "state.db").write_text("ok")
    after = listing(tmp_path, exclude=[tmp_path / "inbox"])
    problems = outside_changes(before, after, allowed=["state.db*"])
    assert problems == [
        "file changed outside the watched roots: keep",
        "file written outside the watched roots: leak.txt",
    ]
