"""A ticket that went away is a cancel, unless it was filed as this very ticket by a step whose
record was then lost (the state database dropped the writes after the rename): found by the team
campaign, seed 23, where such a ticket was canceled and left "downloading" with no claim."""

from __future__ import annotations

import hashlib
from pathlib import Path

from agent.api import ApiClient
from agent.config import ApiConfig, Config, FolderConfig, LogConfig, StateConfig, TicketsConfig
from agent.models import Phase
from agent.scheduler import Scheduler
from agent.store import Store

TICKET = b"input: a.png\ntarget: jpg\n"


def scheduler(tmp_path: Path) -> Scheduler:
    cfg = Config(
        api=ApiConfig(key="k"),
        folders=(FolderConfig(path=tmp_path),),
        state=StateConfig(path=tmp_path / "state.db"),
        tickets=TicketsConfig(cancel_grace_seconds=0.0),
        log=LogConfig(file=None),
    )
    api = ApiClient("http://127.0.0.1:9/v2", "k")
    return Scheduler(cfg, Store.open(tmp_path / "state.db"), api)


def downloading(sched: Scheduler, path: Path) -> int:
    rec = sched.store.add_ticket(
        path=str(path),
        root=str(path.parent),
        sha256=hashlib.sha256(TICKET).hexdigest(),
        kind="conversion",
        spec={},
        inputs=[],
        idem_prefix="p",
        now=sched.clock(),
    )
    sched.store.update(rec.id, sched.clock(), event="x", phase=Phase.DOWNLOADING, job_id="j1")
    sched.store.commit()
    return rec.id


async def test_a_ticket_filed_by_a_lost_step_goes_on(tmp_path: Path) -> None:
    sched = scheduler(tmp_path)
    tid = downloading(sched, tmp_path / "a.job")
    (tmp_path / "a.job.done").write_bytes(TICKET)  # the step renamed it; its record was lost
    await sched._removed(tmp_path / "a.job")
    assert sched.store.get(tid).phase is Phase.DOWNLOADING  # not canceled
    assert any(t == tid for _, _, t in sched._heap)  # taken again
    await sched.api.close()


async def test_a_deleted_ticket_is_canceled_even_beside_an_old_twin(tmp_path: Path) -> None:
    sched = scheduler(tmp_path)
    (tmp_path / "a.job.done").write_bytes(TICKET)  # an identical earlier request's, filed
    tid = downloading(sched, tmp_path / "a.job")
    # ... well before this one was accepted (its ctime: the rename; here, an hour before)
    sched.store.update(tid, sched.clock(), event="x", created_at=sched.clock() + 3600)
    sched.store.commit()
    await sched._removed(tmp_path / "a.job")
    assert sched.store.get(tid).phase is Phase.CANCELED
    await sched.api.close()
