"""The SQLite store's start-up and ``status`` reads go through indexes (issue 13: a state file
with a million finished records): the statements the store really runs are captured and their
query plans checked, and the trigger-kept ``ticket_counts`` agree with a count of the rows."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.models import Phase, RemoteOutput
from agent.store import Store


def plans(store: Store, call: Callable[[], Any]) -> list[str]:
    """The query plan lines of every SELECT ``call`` runs on the store's connection."""
    conn: sqlite3.Connection = store.db.conn
    seen: list[str] = []
    conn.set_trace_callback(seen.append)  # statements with their values bound
    try:
        call()
    finally:
        conn.set_trace_callback(None)
    out = []
    for sql in seen:
        if sql.lstrip().upper().startswith("SELECT"):
            out += [f"{sql} => {row[3]}" for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
    assert out, seen
    return out


def filled(tmp_path: Path) -> Store:
    store = Store.open(tmp_path / "state.db")
    for i in range(30):
        tid = store.add_ticket(
            path=f"/in/d{i % 3}/t{i}.job",
            root="/in",
            sha256=str(i),
            kind="conversion",
            spec={},
            inputs=[],
            idem_prefix="i",
            now=float(i),
        ).id
        store.record_outputs(tid, [RemoteOutput.from_dict({"id": "o", "uri": "u"})])
        store.update_output(store.outputs(tid)[0].id, state="done", dest_name=f"t{i}.jpg")
        store.update(tid, float(i), event="done", phase=Phase.DONE)
        store.update(tid, float(i), event="filed", filed=True)
    store.prune(1e9, keep_days=0, keep_finished=20)  # tombstones too
    store.db.execute("ANALYZE")  # whatever the statistics say, the plans must stay indexed
    return store


def test_is_own_output_looks_up_one_path_by_index(tmp_path: Path) -> None:
    store = filled(tmp_path)
    for path in ("/in/d0/t0.jpg", "/in/d1/t29.jpg", "/in/d2/none.jpg"):
        lines = plans(store, lambda p=path: store.is_own_output(p, ["/in"]))
        assert not [ln for ln in lines if "SCAN" in ln], lines
        assert any("INDEX outputs_dest" in ln for ln in lines), lines
        assert any("INDEX pruned_outputs_path" in ln for ln in lines), lines
    assert store.is_own_output("/in/d0/t0.jpg", ["/in"])  # a tombstone's
    assert store.is_own_output("/in/d2/t29.jpg", ["/in"])  # a record's
    assert not store.is_own_output("/in/d1/t29.jpg", ["/in"])  # that name, another folder
    assert not store.is_own_output("/in/d2/t29.jpg", ["/other"])


def test_unfinished_reads_the_partial_index_and_counts_one_row_per_phase(
    tmp_path: Path,
) -> None:
    store = filled(tmp_path)
    lines = plans(store, store.unfinished)
    assert [ln.split(" => ")[1] for ln in lines] == [
        "SCAN tickets USING INDEX tickets_unfinished"  # it holds only the unfinished records
    ], lines
    lines = plans(store, store.counts)
    assert [ln.split(" => ")[1] for ln in lines] == ["SCAN ticket_counts"], lines
    reader = Store.open_readonly(tmp_path / "state.db")
    assert plans(reader, reader.counts) == [
        ln.replace("store.", "reader.") for ln in plans(store, store.counts)
    ]


def test_trigger_kept_counts_agree_with_the_rows_through_random_transitions(
    tmp_path: Path,
) -> None:
    rnd = random.Random(13)
    store = Store.open(tmp_path / "state.db")
    store.group_commit = True
    phases = list(Phase)
    for step in range(600):
        roll = rnd.random()
        live = [r.id for r in store.tickets()]
        if roll < 0.25 or not live:
            store.add_ticket(
                path=f"/in/t{rnd.randrange(40)}.job",  # a path seen before retires its record
                root="/in",
                sha256=str(step),
                kind="conversion",
                spec={},
                inputs=[],
                idem_prefix="i",
                now=float(step),
                phase=rnd.choice(phases),
            )
        elif roll < 0.8:
            wait = rnd.choice([None, float(step)])
            store.update(
                rnd.choice(live), float(step), event="e", phase=rnd.choice(phases), wait_until=wait
            )
        elif roll < 0.9:
            store.touch(rnd.choice(live), float(step), wait_until=rnd.choice([None, 1.0]))
        elif roll < 0.95:
            store.update(rnd.choice(live), float(step), event="filed", filed=True)
        else:
            store.commit()
            store.prune(float(step), keep_days=0, keep_finished=rnd.randrange(1, 30))
        assert store.counts() == store._count_rows(), step
    store.commit()
    assert Store.open_readonly(tmp_path / "state.db").counts() == store._count_rows()
