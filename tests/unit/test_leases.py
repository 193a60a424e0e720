"""The lease room (agent/leases.py) with a scripted store and a hand-driven clock: acts wait for
a renewal when the lease is short, and are refused while it cannot be renewed (an agent that was
paused past its deadline, or cut off from the database, does nothing); a renewal that reports lost
tickets hands them to the scheduler; takeovers are handed over after a renewal."""

from __future__ import annotations

import asyncio

import pytest

from agent.leases import MARGIN, Leases
from agent.store import LeaseLost


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class FakeStore:
    def __init__(self) -> None:
        self.down = False
        self.lost: list[int] = []
        self.gained: tuple[list[int], list[str]] = ([], [])
        self.renewals = 0

    async def renew(self) -> list[int]:
        if self.down:
            raise OSError("the state database cannot be reached")
        self.renewals += 1
        lost, self.lost = self.lost, []
        return lost

    async def take_over(self) -> tuple[list[int], list[str]]:
        gained, self.gained = self.gained, ([], [])
        return gained


def room(store: FakeStore, clock: Clock) -> tuple[Leases, list[list[int]], list[list[int]]]:
    lost: list[list[int]] = []
    gained: list[list[int]] = []
    leases = Leases(
        store,
        20.0,
        on_lost=lost.append,
        on_gained=lambda tids, paths: gained.append(tids),
        mono=clock,
    )
    return leases, lost, gained


async def test_an_act_goes_on_while_the_lease_has_time_left() -> None:
    store, clock = FakeStore(), Clock()
    leases, _, _ = room(store, clock)
    await leases.beat()
    assert leases.deadline == 100.0 + 20.0 - MARGIN
    clock.t += 5
    await leases.ready(10.0)  # 13 s left: no renewal needed
    assert store.renewals == 1


async def test_an_agent_paused_past_its_deadline_acts_only_after_a_renewal() -> None:
    store, clock = FakeStore(), Clock()
    leases, _, _ = room(store, clock)
    await leases.beat()
    clock.t += 60  # SIGSTOP, then SIGCONT
    runner = asyncio.create_task(leases.run())
    try:
        await asyncio.wait_for(leases.ready(10.0), 2.0)
    finally:
        runner.cancel()
    assert store.renewals >= 2
    assert leases.live(10.0)


async def test_acts_are_refused_while_the_leases_cannot_be_renewed() -> None:
    store, clock = FakeStore(), Clock()
    leases, _, _ = room(store, clock)
    await leases.beat()
    store.down = True
    clock.t += 19  # 1 s before the deadline
    runner = asyncio.create_task(leases.run())
    try:
        with pytest.raises(LeaseLost, match="cannot renew its leases"):
            await leases.ready(10.0, wait=0.3)
    finally:
        runner.cancel()
    assert leases.problem is not None and "cannot be reached" in leases.problem


async def test_a_renewal_hands_over_lost_and_gained_tickets() -> None:
    store, clock = FakeStore(), Clock()
    leases, lost, gained = room(store, clock)
    store.lost = [7, 9]
    store.gained = ([3], [])
    await leases.beat()
    assert lost == [[7, 9]] and gained == [[3]]
    await leases.beat()
    assert lost == [[7, 9]] and gained == [[3]]  # once
