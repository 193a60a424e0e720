"""`start_sent` (the ticket in `starting`) is committed before the start request goes out.

The commit a write schedules runs on the next loop turn, and a process killed between the
PATCH and that turn would come back not knowing it had asked for a start; `_start` therefore
waits for the commit (`await self._persisted()`) before it sends. An end-to-end kill cannot
land inside that loop turn, so this is checked at the scheduler: the fake `start_job` reads the
state file through another connection, as the next process would after a kill there.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from agent.api import ApiClient
from agent.config import Config, FolderConfig, LogConfig, StateConfig
from agent.models import Phase, RemoteJob
from agent.scheduler import Scheduler
from agent.store import Store


def committed(db: Path, tid: int) -> tuple[str, int]:
    with sqlite3.connect(db) as other:
        row = other.execute("SELECT phase, start_sent FROM tickets WHERE id = ?", [tid]).fetchone()
    return str(row[0]), int(row[1])


async def test_the_start_request_is_sent_only_once_starting_is_committed(
    tmp_path: Path, monkeypatch: Any
) -> None:
    db = tmp_path / "state.db"
    cfg = Config(
        folders=(FolderConfig(path=tmp_path),),
        state=StateConfig(path=db),
        log=LogConfig(file=None),
    )
    store = Store.open(db)
    sched = Scheduler(cfg, store, ApiClient("http://127.0.0.1:9/v2", "k"))
    tid = store.add_ticket(
        path=str(tmp_path / "a.job"),
        root=str(tmp_path),
        sha256="s",
        kind="conversion",
        spec={},
        inputs=[],
        idem_prefix="p",
        now=1.0,
    ).id
    store.update(tid, 2.0, event="created", phase=Phase.UPLOADING, job_id="j1")
    await sched._persisted()
    seen: list[tuple[str, int]] = []

    async def start_job(job_id: str) -> RemoteJob:
        seen.append(committed(db, tid))  # what a process killed now would find
        return RemoteJob(id=job_id, status_code="queued")

    monkeypatch.setattr(sched.api, "start_job", start_job)
    # The upload step's last act, then straight on to the start (as _step_until_wait does).
    rec = store.update(tid, 3.0, event="uploaded", phase=Phase.STARTING, start_sent=True)
    sched._vol_of(tid).fresh = True  # created in this process: no read-back first
    assert committed(db, tid) == ("uploading", 0)  # the transition waits in the open group

    await sched._start(rec)

    assert seen == [("starting", 1)]
    assert store.get(tid).phase is Phase.PROCESSING
    await sched.api.close()
    store.close()
