"""Retention in the state store (``Store.prune``): exactly the finished records past
``keep_days``/``keep_finished`` go, oldest first, in batches, with their history, inputs and
outputs; nothing live is touched; a tombstone says what was pruned and when; space is given
back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.models import Phase, RemoteOutput
from agent.store import Store

DAY = 86400.0


def add(store: Store, name: str, now: float, sha: str = "s") -> int:
    return store.add_ticket(
        path=f"/in/{name}.job",
        root="/in",
        sha256=sha,
        kind="conversion",
        spec={"kind": "conversion"},
        inputs=[("local", f"{name}.png", f"/in/{name}.png")],
        idem_prefix="p",
        now=now,
    ).id


def finish(
    store: Store,
    tid: int,
    now: float,
    phase: Phase = Phase.DONE,
    *,
    file: bool = True,
    output: str | None = None,
) -> None:
    if output is not None:
        store.record_outputs(tid, [RemoteOutput.from_dict({"id": f"o{tid}", "filename": output})])
        (out,) = store.outputs(tid)
        store.update_output(out.id, state="done", dest_name=output)
    store.update(tid, now, event=str(phase), phase=phase)
    if file:
        store.update(tid, now, event="filed", filed=True)


def rows(store: Store, table: str, tid: int) -> int:
    col = "id" if table == "tickets" else "ticket_id"
    return int(
        store.db.conn.execute(f"SELECT count(*) FROM {table} WHERE {col} = ?", [tid]).fetchone()[0]
    )


def all_ids(store: Store) -> set[int]:
    return {r[0] for r in store.db.conn.execute("SELECT id FROM tickets")}


def prune_all(store: Store, now: float, **kw: float) -> list[int]:
    gone: list[int] = []
    while True:
        res = store.prune(
            now,
            keep_days=kw.get("keep_days", 0),
            keep_finished=int(kw.get("keep_finished", 0)),
            limit=int(kw.get("limit", 500)),
        )
        gone.extend(res.tickets)
        if not res.more:
            return gone


def test_only_finished_records_past_the_count_limit_go_oldest_first() -> None:
    store = Store.open(":memory:")
    done = [add(store, f"d{i}", now=10.0 + i) for i in range(5)]
    for i, tid in enumerate(done):
        finish(store, tid, now=100.0 + i, output=f"d{i}.jpg")
    live = add(store, "live", now=1.0)  # oldest of all, but has work left
    store.update(live, 2.0, event="created", phase=Phase.PROCESSING)
    unfiled = add(store, "unfiled", now=1.0)
    finish(store, unfiled, now=3.0, phase=Phase.FAILED, file=False)  # ended, not filed yet
    store.commit()

    gone = prune_all(store, now=200.0, keep_finished=2)

    assert gone == done[:3]  # the three that finished first; the two newest stay
    assert all_ids(store) == {done[3], done[4], live, unfiled}
    for tid in gone:
        for table in ("tickets", "history", "inputs", "outputs"):
            assert rows(store, table, tid) == 0, table
    for tid in (done[3], live, unfiled):
        assert rows(store, "history", tid) > 0 and rows(store, "inputs", tid) == 1
    assert store.get(live).phase is Phase.PROCESSING
    assert {r.id for r in store.unfinished()} == {live, unfiled}
    assert store.prune(200.0, keep_days=0, keep_finished=2).tickets == ()  # nothing more


def test_records_older_than_keep_days_go_even_under_the_count_limit() -> None:
    store = Store.open(":memory:")
    old = add(store, "old", now=0.0)
    finish(store, old, now=1.0 * DAY, phase=Phase.FAILED)
    young = add(store, "young", now=0.0)
    finish(store, young, now=9.5 * DAY, phase=Phase.CANCELED)
    store.commit()
    assert prune_all(store, now=10.0 * DAY, keep_days=1.0, keep_finished=100) == [old]
    assert all_ids(store) == {young}
    # both limits off: nothing goes
    assert prune_all(store, now=1000.0 * DAY) == []


def test_a_superseded_record_goes_but_its_live_successor_stays() -> None:
    store = Store.open(":memory:")
    first = add(store, "a", now=1.0, sha="v1")
    second = add(store, "a", now=2.0, sha="v2")  # the edited ticket: first is history now
    store.commit()
    assert prune_all(store, now=3.0, keep_days=1e-9) == [first]
    assert store.active_for_path("/in/a.job").id == second
    (tomb,) = store.pruned("a")
    assert tomb.outcome == "superseded"


def test_batches_are_small_and_say_when_there_is_more() -> None:
    store = Store.open(":memory:")
    ids = [add(store, f"t{i}", now=float(i)) for i in range(7)]
    for i, tid in enumerate(ids):
        finish(store, tid, now=10.0 + i)
    store.commit()
    first = store.prune(100.0, keep_days=0, keep_finished=2, limit=3)
    assert first.tickets == tuple(ids[:3]) and first.more
    second = store.prune(100.0, keep_days=0, keep_finished=2, limit=3)
    assert second.tickets == tuple(ids[3:5]) and not second.more
    assert all_ids(store) == set(ids[5:])


def test_pruning_never_runs_inside_an_open_group() -> None:
    store = Store.open(":memory:")
    store.group_commit = True
    tid = add(store, "a", now=1.0)
    assert store.dirty
    with pytest.raises(RuntimeError):
        store.prune(10.0, keep_days=0, keep_finished=1)
    assert store.dirty  # the grouped write is neither committed nor lost
    store.commit()
    assert store.get(tid).phase is Phase.PENDING


def test_a_tombstone_says_what_was_pruned_and_when_and_is_bounded_too() -> None:
    store = Store.open(":memory:")
    ids = [add(store, f"t{i}", now=float(i)) for i in range(6)]
    for i, tid in enumerate(ids):
        finish(store, tid, now=10.0 + i, output=f"t{i}.jpg")
    store.commit()
    prune_all(store, now=50.0, keep_finished=2)  # t0..t3 pruned; tombstones capped at 2
    assert store.pruned("t0") == [] and store.pruned("t1") == []
    (tomb,) = store.pruned("t3.job")
    assert (tomb.path, tomb.outcome, tomb.finished_at, tomb.pruned_at) == (
        "/in/t3.job",
        "done",
        13.0,
        50.0,
    )
    assert [t.name for t in store.pruned("/in/t2.job")] == ["t2.job"]
    # the outputs of a kept tombstone are still the agent's own; the others are forgotten
    assert store.output_names("/in") == {"/in/t2.jpg", "/in/t3.jpg", "/in/t4.jpg", "/in/t5.jpg"}
    n = store.db.conn.execute("SELECT count(*) FROM pruned").fetchone()[0]
    assert n == 2


def test_forgotten_outputs_are_those_no_record_or_tombstone_names() -> None:
    store = Store.open(":memory:")
    a = add(store, "a", now=1.0)
    finish(store, a, now=2.0, output="same.jpg")
    b = add(store, "b", now=3.0)
    finish(store, b, now=4.0, output="only-b.jpg")
    c = add(store, "c", now=5.0)
    finish(store, c, now=6.0, output="same.jpg")  # overwrote a's output: still c's
    store.commit()
    first = store.prune(10.0, keep_days=0, keep_finished=1)  # a, b pruned; tombstones: 1 kept
    assert first.tickets == (a, b)
    assert first.forgotten_outputs == ()  # a's tombstone went, but c still names same.jpg
    assert store.output_names("/in") == {"/in/same.jpg", "/in/only-b.jpg"}


def test_a_pruned_path_dropped_again_is_a_new_request_with_a_new_id_and_key() -> None:
    store = Store.open(":memory:")
    tid = add(store, "a", now=1.0)
    key = store.get(tid).idem_key
    finish(store, tid, now=2.0)
    last = add(store, "b", now=2.5)
    finish(store, last, now=2.5)
    store.commit()
    # The newest record stays whatever the limits say: SQLite would give its id out again.
    assert prune_all(store, now=3.0, keep_finished=0, keep_days=1e-9) == [tid]
    assert all_ids(store) == {last}
    assert store.active_for_path("/in/a.job") is None
    again = add(store, "a", now=4.0)  # the same bytes at the same path
    assert again > last and store.get(again).phase is Phase.PENDING
    assert store.get(again).idem_key != key  # a new request, never the pruned one's job


def test_a_reader_sees_the_tombstone(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store = Store.open(db)
    tid = add(store, "a", now=1.0)
    finish(store, tid, now=2.0, phase=Phase.FAILED)
    add(store, "newest", now=2.5)
    store.commit()
    prune_all(store, now=3.0, keep_finished=0, keep_days=1e-9)
    ro = Store.open_readonly(db)
    assert ro.find("a") == [] and [t.outcome for t in ro.pruned("a")] == ["failed"]
    ro.close()
    store.close()


def test_space_is_given_back_to_the_file_system(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store = Store.open(db)
    assert store.db.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    for i in range(600):
        tid = add(store, f"t{i}", now=float(i))
        for k in range(5):
            store.update(tid, float(i), event="status", message="x" * 400, remote_info=str(k))
        finish(store, tid, now=float(i))
    store.commit()
    store.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = db.stat().st_size
    prune_all(store, now=1000.0, keep_finished=10, limit=100)
    store.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    after = db.stat().st_size
    assert after < before / 3, (before, after)
    free = store.db.conn.execute("PRAGMA freelist_count").fetchone()[0]
    assert free < 50
    store.close()


def test_an_older_state_file_is_migrated_and_prunes_without_shrinking(tmp_path: Path) -> None:
    """A file made before retention has no auto_vacuum: pruning works, the space is reused."""
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE keep_me (x)")  # a table exists: auto_vacuum can no longer change
    conn.commit()
    conn.close()
    store = Store.open(db)
    assert store.db.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    tid = add(store, "a", now=1.0)
    finish(store, tid, now=2.0)
    add(store, "newest", now=2.5)
    store.commit()
    assert prune_all(store, now=3.0, keep_finished=0, keep_days=1e-9) == [tid]
    store.close()
