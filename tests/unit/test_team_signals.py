"""The account's limits are the team's (Scheduler.team_signals, fed by each heartbeat): the request
budget and a set ``api.max_processing`` are divided among the live agents, and a quota used up or
a key refused that another agent found pauses this one too."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.api import ApiClient
from agent.config import ApiConfig, Config, FolderConfig, LogConfig, StateConfig
from agent.errors import NeedsUserError
from agent.scheduler import Scheduler
from agent.store import Store


def scheduler(tmp_path: Path) -> Scheduler:
    cfg = Config(
        api=ApiConfig(key="k", requests_per_second=90.0, max_processing=6),
        folders=(FolderConfig(path=tmp_path),),
        state=StateConfig(path=tmp_path / "state.db"),
        log=LogConfig(file=None),
    )
    api = ApiClient("http://127.0.0.1:9/v2", "k", requests_per_second=90.0)
    return Scheduler(cfg, Store.open(tmp_path / "state.db"), api, clock=lambda: 1000.0)


async def test_three_live_agents_each_take_a_third_of_the_limits(tmp_path: Path) -> None:
    sched = scheduler(tmp_path)
    sched.team_signals({"live": 3, "quota_until": None, "auth_problem": None})
    assert sched.api.budget.ceiling == 30.0
    assert sched.api.budget.rate <= 30.0
    assert sched.slots.limit == 2
    sched.team_signals({"live": 1, "quota_until": None, "auth_problem": None})
    assert sched.api.budget.ceiling == 90.0 and sched.slots.limit == 6
    await sched.api.close()


async def test_a_pause_found_by_another_agent_pauses_this_one(tmp_path: Path) -> None:
    sched = scheduler(tmp_path)
    sched.team_signals({"live": 2, "quota_until": 900.0, "auth_problem": None})
    assert sched.quota_until is None  # over already
    sched.team_signals({"live": 2, "quota_until": 1060.0, "auth_problem": "key refused"})
    assert sched.quota_until == 1060.0
    assert isinstance(sched.auth_problem, NeedsUserError)
    assert sched.auth_problem.message == "key refused"
    await sched.api.close()


class Claims:
    def __init__(self, held: set[str]) -> None:
        self.held = held

    def holds(self, path: str) -> bool:
        return path in self.held

    async def claim(self, path: str, *, fair: bool = True) -> str:
        return "held"

    def release(self, path: str) -> None:
        self.held.discard(path)


async def test_no_act_on_a_ticket_another_agent_took_over(tmp_path: Path) -> None:
    from agent.leases import Leases
    from agent.store import LeaseLost

    sched = scheduler(tmp_path)
    rec = sched.store.add_ticket(
        path=str(tmp_path / "a.job"),
        root=str(tmp_path),
        sha256="s",
        kind="conversion",
        spec={},
        inputs=[],
        idem_prefix="p",
        now=1.0,
    )

    class Renewing:
        async def renew(self) -> list[int]:
            return []

        async def take_over(self) -> tuple[list[int], list[str]]:
            return [], []

        async def team_info(self) -> dict[str, object]:
            return {"live": 1}

    leases = Leases(Renewing(), 60.0, on_lost=lambda t: None, on_gained=lambda t, p: None)
    await leases.beat()
    claims = Claims({rec.path})
    sched.team, sched.claims, sched.act_need = leases, claims, 10.0
    await sched._persisted(rec)  # held, lease alive: the act may go
    claims.held.clear()  # taken over by another agent
    with pytest.raises(LeaseLost, match="another agent holds this ticket now"):
        await sched._persisted(rec)
    await sched.api.close()
