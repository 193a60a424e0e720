"""When the soak (scripts/soak.py) judges a wave: once its tickets are renamed *and* their records
say filed. The agent renames a ticket before it records the filing (the record is committed after
the disk batch holding the rename), so a wave judged at the rename alone was reported "done but
never filed" under load (issue 13: 1 such violation in a 60-minute soak; 10 in an 8-minute one
beside CPU and fsync hogs, each recorded filed 0.8 to 1.7 s after its rename)."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from agent.models import Phase, RemoteOutput
from agent.store import Store

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak_campaign", ROOT / "scripts" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


soak = _load()


def _done_wave(tmp_path: Path) -> tuple[Any, Any, Store, int]:
    """A soak with one closed wave: its ticket renamed NAME.job.done, its record done but the
    filing not recorded yet (the moment between the agent's rename and its commit)."""
    s = soak.Soak(argparse.Namespace(seed=1, work=str(tmp_path / "work"), minutes=1.0))
    s.inbox.mkdir(parents=True)
    wave = s.new_wave()
    ticket = wave.folder / "t000001.job"
    (wave.folder / "t000001.png").write_bytes(b"png")
    (wave.folder / "t000001.job.done").write_text("input: t000001.png\ntarget: jpg\n")
    wave.inputs.add(wave.folder / "t000001.png")
    wave.tickets.append(soak.DroppedTicket(ticket, inputs=("t000001.png",)))
    wave.closed = True
    s.dropped = 1
    store = Store.open(s.db)
    rec = store.add_ticket(
        path=str(ticket),
        root=str(s.inbox),
        sha256="s",
        kind="conversion",
        spec={},
        inputs=[("local", "t000001.png", str(wave.folder / "t000001.png"))],
        idem_prefix="p",
        now=1.0,
    )
    store.update(rec.id, 2.0, event="done", phase=Phase.DONE)
    return s, wave, store, rec.id


def test_a_wave_is_judged_once_its_records_say_filed(tmp_path: Path) -> None:
    s, wave, store, tid = _done_wave(tmp_path)
    try:
        s.judge_waves()  # renamed, not recorded yet: the wave waits
        assert s.problems == []
        assert wave.folder.exists() and s.judged == 0

        store.update(tid, 3.0, event="filed", filed=True)  # the agent's commit lands
        s.judge_waves()
        assert s.problems == []
        assert not wave.folder.exists() and s.judged == 1
    finally:
        store.close()


def test_a_filing_never_recorded_is_still_reported(tmp_path: Path) -> None:
    s, wave, store, _tid = _done_wave(tmp_path)
    try:
        s.judge_waves()
        assert s.problems == [] and wave.folder.exists()
        wave.files_filed_at -= soak.STATE_SETTLE_SECONDS  # the record never came
        s.judge_waves()
        assert s.problems == ["w00000: t000001.job: done but never filed"]
        assert s.judged == 1
    finally:
        store.close()


def _wave_with_a_later_ticket(tmp_path: Path) -> tuple[Any, Any, Store, int, Path]:
    """The wave of ``_done_wave``, its first ticket filed with an output placed, and a second
    ticket (invalid, failed) not filed yet: the wave is not judged until it is."""
    s, wave, store, tid = _done_wave(tmp_path)
    data = b"converted"
    md5 = hashlib.md5(data).hexdigest()
    (wave.folder / "t000001.jpg").write_bytes(data)
    store.record_outputs(
        tid, [RemoteOutput("o1", "u", "t000001.jpg", len(data), "enabled", md5, "", 1, "")]
    )
    out = store.outputs(tid)[0]
    store.update_output(out.id, state="done", dest_name="t000001.jpg", digest=md5)
    store.update(tid, 3.0, event="filed", filed=True)
    later = wave.folder / "t000002.job"
    later.write_text("input: nothing.png\ntarget: jpg\n")
    wave.tickets.append(soak.DroppedTicket(later, expect="failed"))
    return s, wave, store, tid, later


def _file_later(s: Any, store: Store, later: Path) -> None:
    """The second ticket fails and is filed: the newest record, which retention keeps."""
    later.rename(later.with_name("t000002.job.failed"))
    later.with_name("t000002.status.yaml").write_text("error: no such input\n")
    rec = store.add_ticket(
        path=str(later),
        root=str(s.inbox),
        sha256="s2",
        kind="invalid",
        spec={},
        inputs=[],
        idem_prefix="p",
        now=4.0,
        phase=Phase.FAILED,
        error={"message": "no such input"},
    )
    store.update(rec.id, 5.0, event="filed", filed=True)


def test_outputs_of_a_ticket_pruned_before_its_wave_is_judged_are_not_strays(
    tmp_path: Path,
) -> None:
    """Retention keeps the newest ``keep_finished`` filed tickets: a wave judged after a
    thousand later tickets were filed (an agent far behind) has lost its first records; their
    tombstones name them and the outputs they placed. An 8-minute soak beside CPU and fsync
    hogs reported 544 problems; each "unexpected file" among those shown was such an output."""
    s, _wave, store, tid, later = _wave_with_a_later_ticket(tmp_path)
    try:
        _file_later(s, store, later)
        assert store.prune(6.0, keep_days=0, keep_finished=1).tickets == (tid,)

        s.judge_waves()
        assert s.problems == []
        assert s.judged == 2
    finally:
        store.close()


def test_records_pruned_with_their_tombstones_are_judged_from_the_copies_kept(
    tmp_path: Path,
) -> None:
    """Tombstones are bounded too (``keep_finished`` of them): a wave judged after two thousand
    later filings has lost its first records' tombstones as well (an 8-minute soak beside
    three CPU hogs and an fsync hog: 136 "lost — no record"). The soak keeps copies of the
    filed records of the waves not judged yet, and the checker judges them, bytes and all."""
    for torn in (False, True):
        s, wave, store, tid, later = _wave_with_a_later_ticket(tmp_path / str(torn))
        try:
            s.judge_waves()  # the first ticket is filed: its record is copied
            assert s.judged == 0
            _file_later(s, store, later)
            assert store.prune(6.0, keep_days=0, keep_finished=1).tickets == (tid,)
            store.db.conn.execute("DELETE FROM pruned_outputs")
            store.db.conn.execute("DELETE FROM pruned")
            store.db.conn.commit()
            if torn:
                (wave.folder / "t000001.jpg").write_bytes(b"conv")

            s.judge_waves()
            assert s.judged == 2
            if torn:
                assert len(s.problems) == 1 and "t000001.jpg is torn or corrupt" in s.problems[0]
            else:
                assert s.problems == []
            assert s.kept == {}  # the copies go with their judged wave
        finally:
            store.close()
