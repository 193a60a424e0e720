"""Team mode's claims in the PostgreSQL store, on a real server (agent/store/postgres.py): two
agents claiming one new path get one claim; a claim changes hands only once its lease ran out,
raising its fence and leaving a history row; a flush under a claim that was taken over writes
nothing; a renewal tells an agent which tickets it lost; each agent sees the ticket's paths on
its own mount of the share."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psycopg
import pytest

from agent.models import Phase
from agent.store import LeaseLost, TeamMember
from agent.store.postgres import PgStore
from agent.store.shares import PathMap

LEASE = 4.0


@pytest.fixture
async def members(pg_url: str) -> AsyncIterator[Callable[[str], PgStore]]:
    opened: list[PgStore] = []

    def member(name: str) -> PgStore:
        store = PgStore.open(
            pg_url,
            team=TeamMember(name=name, host="h", pid=1000 + len(opened), lease=LEASE),
            paths=PathMap([(Path(f"/mnt/{name}"), "nas")]),
        )
        store.group_commit = True
        opened.append(store)
        return store

    yield member
    for store in opened:
        await store.aclose()


def add(store: PgStore, path: str) -> int:
    return store.add_ticket(
        path=path,
        root=str(Path(path).parent),
        sha256="s",
        kind="conversion",
        spec={},
        inputs=[("local", "x.png", str(Path(path).parent / "x.png"))],
        idem_prefix="p",
        now=1.0,
    ).id


def expire(url: str, owner: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE claims SET lease_until = now() - interval '1 second' WHERE owner = %s", [owner]
        )


async def test_two_agents_claiming_one_new_path_get_one_claim(
    members: Callable[[str], PgStore],
) -> None:
    a, b = members("a"), members("b")
    for i in range(20):
        got = await asyncio.gather(
            a.claim(f"/mnt/a/t{i}.job", fair=False), b.claim(f"/mnt/b/t{i}.job", fair=False)
        )
        assert sorted(got) == ["held", "ok"], (i, got)
        assert a.holds(f"/mnt/a/t{i}.job") != b.holds(f"/mnt/b/t{i}.job")


async def test_a_claim_changes_hands_only_after_its_lease_and_raises_the_fence(
    members: Callable[[str], PgStore], pg_url: str
) -> None:
    a, b = members("a"), members("b")
    assert await a.claim("/mnt/a/x.job") == "ok"
    tid = add(a, "/mnt/a/x.job")
    a.update(tid, 2.0, event="creating", phase=Phase.CREATING, job_id="J1")
    await a.flush()
    assert await b.claim("/mnt/b/x.job") == "held"  # a's lease is alive
    assert await b.take_over() == ([], [])
    assert a.agent_id is not None
    expire(pg_url, a.agent_id)
    tids, empty = await b.take_over()
    assert (tids, empty) == ([tid], [])
    rec = b.get(tid)
    # b sees the ticket and its input on its own mount, at the stored phase with its job.
    assert (rec.path, rec.root, rec.phase, rec.job_id) == (
        "/mnt/b/x.job",
        "/mnt/b",
        Phase.CREATING,
        "J1",
    )
    assert [i.abs_path for i in b.inputs(tid)] == ["/mnt/b/x.png"]
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT path, fence FROM claims").fetchone()
    assert row == ("//share/nas/x.job", 2)
    events = [h for h in b.history(tid) if h["event"] == "claimed"]
    assert len(events) == 1 and "taken over by agent b" in events[0]["message"], events
    assert "fence 2" in events[0]["message"]
    # a learns it at its next renewal: the ticket leaves its mirror, writes are refused.
    assert await a.renew() == [tid]
    assert not a.holds("/mnt/a/x.job")
    with pytest.raises(LeaseLost):
        a.update(tid, 3.0, event="uploading", phase=Phase.UPLOADING)


async def test_a_flush_under_a_claim_taken_over_writes_nothing(
    members: Callable[[str], PgStore], pg_url: str
) -> None:
    a, b = members("a"), members("b")
    assert await a.claim("/mnt/a/x.job") == "ok"
    tid = add(a, "/mnt/a/x.job")
    await a.flush()
    assert a.agent_id is not None
    expire(pg_url, a.agent_id)
    assert (await b.take_over())[0] == [tid]
    # a was paused: it still believes it holds the ticket and writes a step.
    a.update(tid, 2.0, event="starting", phase=Phase.STARTING, start_sent=True)
    with pytest.raises(LeaseLost, match="ran out or was taken over"):
        await a.flush()
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT phase, start_sent FROM tickets WHERE id = %s", [tid]).fetchone()
    assert row == ("pending", False)
    assert not a.holds("/mnt/a/x.job")  # the mirror was read again: only what a holds


async def test_an_expired_claim_of_a_live_agent_is_renewed_not_lost(
    members: Callable[[str], PgStore], pg_url: str
) -> None:
    a = members("a")
    assert await a.claim("/mnt/a/x.job") == "ok"
    tid = add(a, "/mnt/a/x.job")
    await a.flush()
    assert a.agent_id is not None
    expire(pg_url, a.agent_id)  # nobody took it: a's next heartbeat keeps it
    assert await a.renew() == []
    a.update(tid, 2.0, event="creating", phase=Phase.CREATING)
    await a.flush()
    assert a.holds("/mnt/a/x.job")


async def test_an_agent_over_its_share_leaves_new_tickets_to_the_others(
    members: Callable[[str], PgStore],
) -> None:
    a, b = members("a"), members("b")
    await b.renew()  # b is alive
    got = [await a.claim(f"/mnt/a/t{i}.job") for i in range(10)]
    assert "busy" in got
    assert got.count("ok") <= 10 // 2 + 3, got
    assert await a.claim("/mnt/a/t9.job", fair=False) == "ok"  # unless nobody else takes it


async def test_leaving_frees_every_claim_at_once(
    members: Callable[[str], PgStore],
) -> None:
    a, b = members("a"), members("b")
    assert await a.claim("/mnt/a/x.job") == "ok"
    tid = add(a, "/mnt/a/x.job")
    await a.flush()
    await a.leave()
    assert (await b.take_over())[0] == [tid]


async def test_the_team_shares_its_size_and_the_accounts_pauses(
    members: Callable[[str], PgStore],
) -> None:
    a, b = members("a"), members("b")
    await a.renew()
    await b.renew()
    assert await b.team_info() == {"live": 2, "quota_until": None, "auth_problem": None}
    a.set_meta("team.quota_until", "1234.5")
    a.set_meta("team.auth_problem", "the API key was refused")
    await a.flush()
    assert await b.team_info() == {
        "live": 2,
        "quota_until": 1234.5,
        "auth_problem": "the API key was refused",
    }
    await a.leave()
    assert (await b.team_info())["live"] == 1


async def test_a_burst_of_claims_goes_in_a_few_exchanges_and_splits_the_burst_fairly(
    members: Callable[[str], PgStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = members("a"), members("b")
    await b.renew()  # b is alive: a takes its share of the burst, not all of it
    batches: list[int] = []
    real = PgStore._claim_batch

    async def counted(self: PgStore, batch: list[tuple[str, bool, object]]) -> list[str]:
        if self is a:
            batches.append(len(batch))
        return await real(self, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(PgStore, "_claim_batch", counted)
    got = await asyncio.gather(*(a.claim(f"/mnt/a/t{i}.job") for i in range(30)))
    assert sum(batches) == 30 and len(batches) <= 3, batches
    # the team's claims and the burst, divided by 2 live agents, plus the slack of 2
    assert 15 <= got.count("ok") <= 17, got
    assert all(a.holds(f"/mnt/a/t{i}.job") == (v == "ok") for i, v in enumerate(got))
    rest = await asyncio.gather(*(b.claim(f"/mnt/b/t{i}.job") for i in range(30)))
    assert [v == "ok" for v in rest] == [v == "busy" for v in got], (got, rest)


async def test_retention_removes_the_rows_of_agents_gone_for_a_day(
    members: Callable[[str], PgStore], pg_url: str
) -> None:
    a, b, c = members("a"), members("b"), members("c")
    assert await c.claim("/mnt/c/x.job") == "ok"
    await b.leave()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE agents SET stopped_at = now() - interval '25 hours',"
            " heartbeat_at = now() - interval '25 hours' WHERE id = ANY(%s)",
            [[b.agent_id, c.agent_id]],
        )
    a.prune(1e10, keep_days=0, keep_finished=1000)
    with psycopg.connect(pg_url) as conn:
        left = {r[0] for r in conn.execute("SELECT id FROM agents").fetchall()}
    # b's row went; c's stays while a claim names it; a (the one pruning) stays
    assert left == {a.agent_id, c.agent_id}, left
