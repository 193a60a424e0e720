"""Retention (``prune``/``pruned``) as the contract states it, against every backend."""

from __future__ import annotations

import pytest
from conftest import Backend

from agent.models import Phase, RemoteOutput
from agent.store import StateStore

DAY = 86400.0


def finished(store: StateStore, name: str, at: float) -> int:
    tid = store.add_ticket(
        path=f"/in/{name}.job",
        root="/in",
        sha256=name,
        kind="conversion",
        spec={},
        inputs=[("local", f"{name}.png", f"/in/{name}.png")],
        idem_prefix="i",
        now=at,
    ).id
    store.record_outputs(tid, [RemoteOutput.from_dict({"id": "o1", "uri": "u"})])
    out = store.outputs(tid)[0]
    store.update_output(out.id, state="done", dest_name=f"{name}.jpg")
    store.update(tid, at, event="done", phase=Phase.DONE)
    store.update(tid, at, event="filed", filed=True)
    return tid


async def test_old_finished_records_leave_tombstones_and_live_ones_stay(
    backend: Backend,
) -> None:
    store = backend.open()
    store.group_commit = True
    old = finished(store, "old", 1.0)
    new = finished(store, "new", 40 * DAY)
    live = store.add_ticket(
        path="/in/live.job",
        root="/in",
        sha256="l",
        kind="conversion",
        spec={},
        inputs=[],
        idem_prefix="i",
        now=1.0,
    ).id
    with pytest.raises(RuntimeError):  # never inside an open group
        store.prune(41 * DAY, keep_days=30, keep_finished=0)
    await store.flush()
    res = store.prune(41 * DAY, keep_days=30, keep_finished=0)
    assert res.tickets == (old,) and not res.more
    with pytest.raises(KeyError):
        store.get(old)
    assert store.active_for_path("/in/old.job") is None
    assert store.get(new).filed and store.get(live).phase is Phase.PENDING
    (tomb,) = store.pruned("old")
    assert (tomb.path, tomb.outcome, tomb.finished_at) == ("/in/old.job", "done", 1.0)
    assert store.output_names("/in") == {"/in/old.jpg", "/in/new.jpg"}  # still its own files
    reader = backend.open_readonly()
    assert [r.id for r in reader.tickets()] == [new, live]
    assert [t.path for t in reader.pruned("old.job")] == ["/in/old.job"]
    assert store.prune(41 * DAY, keep_days=30, keep_finished=0).tickets == ()
