"""The scheduler's batching: group commit (transitions written in one loop turn share one commit,
and an act waits until its transition is committed: persist the transition, then act), the disk
batch, and progress sidecars held back while their ticket is still moving."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agent import scheduler as scheduler_mod
from agent.api import ApiClient
from agent.config import Config, FolderConfig, LogConfig, StateConfig
from agent.models import Phase
from agent.scheduler import Scheduler, _DiskBatch
from agent.store import Store, WritesLost


def make(tmp_path: Path) -> tuple[Scheduler, Store, Path]:
    db = tmp_path / "state.db"
    cfg = Config(
        folders=(FolderConfig(path=tmp_path),),
        state=StateConfig(path=db),
        log=LogConfig(file=None),
    )
    store = Store.open(db)
    api = ApiClient("http://127.0.0.1:9/v2", "k")
    return Scheduler(cfg, store, api), store, db


def add(store: Store, name: str) -> int:
    return store.add_ticket(
        path=f"/in/{name}.job",
        root="/in",
        sha256="s",
        kind="conversion",
        spec={},
        inputs=[],
        idem_prefix="p",
        now=1.0,
    ).id


def committed_phase(db: Path, tid: int) -> str | None:
    with sqlite3.connect(db) as other:
        row = other.execute("SELECT phase FROM tickets WHERE id = ?", [tid]).fetchone()
    return row[0] if row else None


async def test_acts_wait_for_one_shared_commit(tmp_path: Path, monkeypatch: Any) -> None:
    sched, store, db = make(tmp_path)
    a, b = add(store, "a"), add(store, "b")
    await sched._persisted()
    commits: list[int] = []
    real = store.commit
    monkeypatch.setattr(store, "commit", lambda: (commits.append(1), real())[1])
    seen: dict[int, str | None] = {}

    async def step(tid: int) -> None:
        store.update(tid, 2.0, event="creating", phase=Phase.CREATING)
        assert committed_phase(db, tid) == "pending"  # not yet: nothing acted on it
        await sched._persisted()
        seen[tid] = committed_phase(db, tid)  # the "act": its transition is on disk

    await asyncio.gather(step(a), step(b))
    assert seen == {a: "creating", b: "creating"}
    assert len([c for c in commits if c]) == 1  # one transaction for both
    await sched._persisted()  # nothing left: returns at once
    await sched.api.close()
    store.close()


async def test_writes_without_an_act_are_committed_soon(tmp_path: Path) -> None:
    sched, store, db = make(tmp_path)
    tid = add(store, "a")
    store.update(tid, 2.0, event="waiting", phase=Phase.PROCESSING)
    for _ in range(3):
        await asyncio.sleep(0)
    assert not store.dirty and committed_phase(db, tid) == "processing"
    await sched.api.close()
    store.close()


async def test_a_failed_commit_fails_the_acts_waiting_for_it(
    tmp_path: Path, monkeypatch: Any
) -> None:
    sched, store, _ = make(tmp_path)
    tid = add(store, "a")
    await sched._persisted()
    store.update(tid, 2.0, event="creating", phase=Phase.CREATING)

    def broken() -> None:
        store.db.conn.execute("ROLLBACK")
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "commit", broken)
    with pytest.raises(sqlite3.OperationalError):
        await sched._persisted()
    monkeypatch.undo()
    assert Store(store.db, readonly=True).get(tid).phase is Phase.PENDING
    await sched.api.close()
    store.close()


async def test_a_filing_undone_by_a_failed_commit_is_taken_again(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The filing is a ticket's last write: no act of it waits for its commit. A commit that
    fails (disk full) undoes it with the rest of its group, and the ticket, renamed
    NAME.job.done but recorded done and unfiled, is taken again and filed, not left so (and
    kept from retention) until the agent restarts."""
    monkeypatch.setattr(scheduler_mod, "STATE_RETRY_SECONDS", 0.0)
    sched, store, db = make(tmp_path)
    ticket = tmp_path / "a.job"
    ticket.write_text("input: a.png\ntarget: jpg\n")
    tid = store.add_ticket(
        path=str(ticket),
        root=str(tmp_path),
        sha256="s",
        kind="conversion",
        spec={},
        inputs=[],
        idem_prefix="p",
        now=1.0,
    ).id
    store.update(tid, 2.0, event="done", phase=Phase.DONE)
    await sched._persisted()
    real, failures = store.commit, [1]

    def full_once() -> None:
        if failures:
            failures.pop()
            store.db.conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        real()

    monkeypatch.setattr(store, "commit", full_once)
    await sched._file(store.get(tid))
    for _ in range(20):  # the failed commit runs at the next loop turn, the check after it
        await asyncio.sleep(0)
    assert not failures and (tmp_path / "a.job.done").exists()
    with sqlite3.connect(db) as other:
        assert other.execute("SELECT filed FROM tickets").fetchall() == [(0,)]
    assert [t for _, _, t in sched._heap] == [tid]  # taken again
    await sched._step_until_wait(tid)
    await sched._persisted()
    with sqlite3.connect(db) as other:
        assert other.execute("SELECT phase, filed FROM tickets").fetchall() == [("done", 1)]
    await sched.api.close()
    store.close()


async def test_a_state_that_cannot_be_saved_is_logged_once_and_so_is_its_recovery(
    tmp_path: Path, monkeypatch: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Failed commits are taken again (the steps, and the check of unfinished tickets every
    few seconds): a disk that stays full says so once, not at every attempt."""
    monkeypatch.setattr(scheduler_mod, "STATE_RETRY_SECONDS", 0.0)
    caplog.set_level(logging.INFO, logger="agent.scheduler")
    sched, store, _ = make(tmp_path)
    tid = add(store, "a")
    await sched._persisted()
    real = store.commit

    def full() -> None:
        store.db.conn.execute("ROLLBACK")
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "commit", full)
    for _ in range(3):
        store.update(tid, 2.0, event="creating", phase=Phase.CREATING)
        with pytest.raises(sqlite3.OperationalError):
            await sched._persisted()
    monkeypatch.setattr(store, "commit", real)
    store.update(tid, 3.0, event="creating", phase=Phase.CREATING)
    await sched._persisted()
    for _ in range(5):
        await asyncio.sleep(0)
    assert [r.getMessage() for r in caplog.records if r.name == "agent.scheduler"] == [
        "could not save the state: database or disk is full; the last steps are taken again",
        "the state is saved again",
    ]
    await sched.api.close()
    store.close()


async def test_a_failed_write_fails_the_acts_of_its_group(tmp_path: Path) -> None:
    """Ticket a's transition shares a group with b's write, which fails: the group is undone,
    so a must not act on its transition either."""
    sched, store, db = make(tmp_path)
    a, b = add(store, "a"), add(store, "b")
    await sched._persisted()

    async def step(tid: int, **bad: Any) -> None:
        store.update(tid, 2.0, event="creating", phase=Phase.CREATING, **bad)
        await sched._persisted()  # the act waits for its transition's commit

    got = await asyncio.gather(step(a), step(b, nonsense=1), return_exceptions=True)
    assert isinstance(got[0], WritesLost) and isinstance(got[1], sqlite3.OperationalError)
    assert committed_phase(db, a) == "pending"
    store.update(a, 3.0, event="creating", phase=Phase.CREATING)  # the step taken again
    await sched._persisted()
    assert committed_phase(db, a) == "creating"
    await sched.api.close()
    store.close()


async def test_disk_batch_runs_in_order_and_syncs_each_folder_once(
    tmp_path: Path, monkeypatch: Any
) -> None:
    from agent import downloader

    synced: list[Path] = []
    monkeypatch.setattr(downloader, "fsync_folder", synced.append)
    batch = _DiskBatch()
    order: list[int] = []

    def boom() -> None:
        raise OSError("no space left")

    futs = [
        batch.run(lambda: order.append(1), sync=tmp_path),
        batch.run(boom, sync=tmp_path / "other"),
        batch.run(lambda: order.append(3) or "three", sync=tmp_path),
        batch.run(None, sync=tmp_path, strict=True),
    ]
    results = await asyncio.gather(*futs, return_exceptions=True)
    assert order == [1, 3]
    assert results[0] is None and results[2] == "three" and results[3] is None
    assert isinstance(results[1], OSError)
    assert synced == [tmp_path]  # once, and not for the operation that failed
    await batch.drain()


async def test_progress_views_wait_until_the_ticket_is_quiet_or_long_behind(
    tmp_path: Path, monkeypatch: Any
) -> None:
    from agent import scheduler as mod

    sched, store, _ = make(tmp_path)
    now = [100.0]
    monkeypatch.setattr(mod.time, "monotonic", lambda: now[0])
    tid = add(store, "a")
    sched._changed(store.get(tid))
    assert sched._due_sidecars() == []  # it just changed
    now[0] += mod.SIDECAR_QUIET_SECONDS
    assert [i[0] for i in sched._due_sidecars()] == [tid]  # quiet long enough
    first = now[0] + 0.1
    for _ in range(20):  # changes every 0.1 s: held back, but not much over a second
        now[0] += 0.1
        store.update(tid, 2.0, event="status", message="still going")
        sched._changed(store.get(tid))
        if sched._due_sidecars():
            break
    assert mod.SIDECAR_MAX_BEHIND_SECONDS <= now[0] - first < mod.SIDECAR_MAX_BEHIND_SECONDS + 0.2
    store.update(tid, 3.0, event="status", message="again")
    sched._changed(store.get(tid))
    assert [i[0] for i in sched._due_sidecars(held_back=True)] == [tid]  # at stop: all of them
    monkeypatch.undo()
    if sched._sidecar_flush is not None:
        sched._sidecar_flush.cancel()
    await sched.api.close()
    store.close()
