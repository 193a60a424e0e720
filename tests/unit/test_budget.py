"""The adaptive request budget and the request gate, on a fake clock (agent/api.py)."""

from __future__ import annotations

import asyncio
import random

import pytest
from aiohttp import web

from agent import api as api_mod
from agent.api import (
    ADD,
    AGING_SECONDS,
    BUDGET_BETA,
    BUDGET_CUT_GAP,
    BUDGET_QUIET,
    FINISH,
    POLL,
    AdaptiveBudget,
    ApiClient,
    _Gate,
)


class Clock:
    """A fake clock; ``sleep`` advances it (and lets the loop run)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def busy(budget: AdaptiveBudget, now: float, rate: float, seconds: float) -> float:
    """Send ``rate`` requests/s for ``seconds`` (as the budget allows); returns the new now."""
    end = now + seconds
    while now < end:
        now += budget.reserve(now) + 1.0 / rate
    return now


# --------------------------------------------------------------------------- the budget


def test_starts_at_the_ceiling_and_paces_by_it():
    b = AdaptiveBudget(10.0, now=0.0)
    assert b.rate == 10.0
    waits = [b.reserve(0.0) for _ in range(4)]
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3])  # burst of 0.1 s = one request


def test_a_429_cuts_the_rate_to_beta_times_what_was_sent():
    b = AdaptiveBudget(200.0, now=0.0)
    now = busy(b, 0.0, 40.0, 3.0)  # sends 40/s, far below the ceiling
    b.push_back(now)
    assert b.rate == pytest.approx(40.0 * BUDGET_BETA, rel=0.05)
    assert b.cuts == 1


def test_cuts_at_most_once_per_gap_and_never_below_the_floor():
    b = AdaptiveBudget(100.0, now=0.0)
    now = busy(b, 0.0, 50.0, 3.0)
    for _ in range(5):  # one burst answered 429 five times: one signal
        b.push_back(now)
    assert b.cuts == 1
    for _ in range(40):
        now += BUDGET_CUT_GAP
        b.push_back(now)
    assert b.rate == b.floor == 1.0


def test_retry_after_holds_every_request_until_it_ends():
    b = AdaptiveBudget(None, now=0.0)
    assert b.reserve(5.0) == 0.0
    b.push_back(5.0, retry_after=3.0)
    assert b.delay(5.0) == pytest.approx(3.0)
    assert b.reserve(6.0) == pytest.approx(2.0)  # no request before 8.0
    b.push_back(6.0, retry_after=99999)
    assert b.delay(6.0) == pytest.approx(120.0)  # capped like the SDKs' retries


def test_a_503_with_retry_after_on_another_status_only_holds():
    b = AdaptiveBudget(50.0, now=0.0)
    b.hold(1.0, 2.0)
    assert b.cuts == 0 and b.rate == 50.0 and b.delay(1.0) == pytest.approx(2.0)


def test_grows_back_after_a_quiet_period_and_never_above_the_ceiling():
    b = AdaptiveBudget(20.0, now=0.0)
    now = busy(b, 0.0, 20.0, 3.0)
    b.push_back(now)
    cut = b.rate
    assert cut == pytest.approx(20.0 * BUDGET_BETA, rel=0.1)
    assert b.delay(now + BUDGET_QUIET - 0.01) >= 0 and b.rate == cut  # quiet: no growth yet
    b.delay(now + BUDGET_QUIET + 1.0)
    assert cut < b.rate < 20.0  # grows additively after the quiet period
    b.delay(now + 10_000)
    assert b.rate == 20.0  # ... back to the ceiling, not beyond


def test_rate_stays_between_floor_and_ceiling_under_any_signals():
    rng = random.Random(15)
    b = AdaptiveBudget(30.0, now=0.0)
    now = 0.0
    for _ in range(5000):
        now += rng.random() * 0.3
        if rng.random() < 0.05:
            b.push_back(now, retry_after=rng.choice([None, 0.5, 2.0]))
        else:
            b.reserve(now)
        assert b.floor <= b.rate <= b.ceiling == 30.0


def test_sawtooth_against_a_fixed_limit_stays_close_below_it():
    """A service allowing 10 requests/s, a client that always wants more: the budget settles
    near the limit (the rule of docs/decisions.md, Request budget)."""
    b = AdaptiveBudget(1000.0, now=0.0)
    now, window, count, sent, refused = 0.0, 0, 0, 0, 0
    while now < 120.0:
        now += b.reserve(now) + 0.001
        if int(now) != window:
            window, count = int(now), 0
        count += 1
        if now > 30.0:
            sent += 1
        if count > 10:
            if now > 30.0:
                refused += 1
            b.push_back(now, retry_after=window + 1 - now)
    rate = sent / 90.0
    assert 8.0 <= rate <= 10.5
    assert refused / sent <= 0.05


# --------------------------------------------------------------------------- the gate


async def test_waiting_requests_go_finish_first_then_polls_then_creates():
    clock = Clock()
    gate = _Gate(8, AdaptiveBudget(1.0, now=clock()), clock=clock, sleep=clock.sleep)
    order: list[str] = []

    async def request(name: str, priority: int) -> None:
        await gate.acquire(priority)
        order.append(name)
        gate.release()

    await request("first", ADD)  # takes the only token of this second
    tasks = [
        asyncio.create_task(request(n, p))
        for n, p in (("create", ADD), ("poll", POLL), ("download", FINISH))
    ]
    await asyncio.gather(*tasks)
    assert order == ["first", "download", "poll", "create"]


async def test_a_create_waits_behind_later_finishing_work_only_so_long():
    clock = Clock()
    gate = _Gate(8, AdaptiveBudget(1.0, now=clock()), clock=clock, sleep=clock.sleep)
    served: dict[str, float] = {}

    async def request(name: str, priority: int) -> None:
        await gate.acquire(priority)
        served[name] = clock()
        gate.release()

    await request("warm", FINISH)
    t0 = clock()
    create = asyncio.create_task(request("create", ADD))
    finishing = []
    for i in range(40):  # twice the rate the budget allows, for 20 s: it is never idle
        finishing.append(asyncio.create_task(request(f"f{i}", FINISH)))
        await asyncio.sleep(0)
        clock.now = max(clock.now, t0 + (i + 1) * 0.5)
    await asyncio.gather(create, *finishing)
    # Served within its aging bound: behind only requests that came less than 3 classes earlier.
    assert served["create"] - t0 <= ADD * AGING_SECONDS + 2.0
    assert served["create"] < max(served.values())  # and not simply last


async def test_at_most_limit_in_flight_and_cancelled_waiters_take_no_slot():
    clock = Clock()
    gate = _Gate(2, AdaptiveBudget(None), clock=clock, sleep=clock.sleep)
    await gate.acquire(POLL)
    await gate.acquire(POLL)
    waiter = asyncio.create_task(gate.acquire(POLL))
    late = asyncio.create_task(gate.acquire(ADD))
    await asyncio.sleep(0)
    assert not waiter.done()
    waiter.cancel()
    await asyncio.sleep(0)
    gate.release()
    await asyncio.wait_for(late, 1)  # the cancelled waiter did not keep the freed slot
    gate.release()
    gate.release()


# --------------------------------------------------------------------------- the client


@pytest.mark.parametrize("status", [429, 503])
async def test_client_cuts_and_holds_on_push_back(aiohttp_server, status):
    calls: list[float] = []
    clock = Clock()

    async def handler(request: web.Request) -> web.Response:
        calls.append(clock())
        if len(calls) == 1:
            return web.json_response(
                {"message": "slow"}, status=status, headers={"Retry-After": "4"}
            )
        return web.json_response({"id": "j1", "status": {"code": "queued"}})

    app = web.Application()
    app.router.add_get("/jobs/{id}", handler)
    srv = await aiohttp_server(app)
    api = ApiClient(
        f"http://{srv.host}:{srv.port}",
        "k" * 32,
        clock=clock,
        sleep=clock.sleep,
        requests_per_second=100.0,
    )
    try:
        await api.get_job("j1")
    finally:
        await api.close()
    assert api.budget.cuts == 1 and api.budget.rate < 100.0
    assert calls[1] - calls[0] >= 4.0  # the retry came only after Retry-After
    assert api.refused_elsewhere(10.0)


async def test_a_refused_start_is_raised_at_once_and_not_counted_as_elsewhere(aiohttp_server):
    calls: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(1)
        return web.json_response({"message": "Too many concurrent requests"}, status=429)

    app = web.Application()
    app.router.add_patch("/jobs/{id}", handler)
    app.router.add_post("/jobs", handler)
    srv = await aiohttp_server(app)
    clock = Clock()
    api = ApiClient(f"http://{srv.host}:{srv.port}", "k" * 32, clock=clock, sleep=clock.sleep)
    try:
        with pytest.raises(api_mod.RateLimited):
            await api.start_job("j1")
        with pytest.raises(api_mod.RateLimited):
            await api.create_job([], idempotency_key="x")
    finally:
        await api.close()
    assert len(calls) == 2  # no retries into the limit: the scheduler decides
    assert not api.refused_elsewhere(10.0)
    assert api.budget.cuts == 0  # the concurrency limit is no reason to send less


def test_the_send_times_kept_are_the_measuring_windows_only():
    """Months of requests without a push-back keep no more send times than the window holds
    (each was a float kept for the agent's life: issue 13's slow RSS growth)."""
    b = AdaptiveBudget(None, now=0.0)  # no ceiling: nothing ever measures the rate
    now = 0.0
    for _ in range(20_000):  # 100 requests/s for 200 s
        b.reserve(now)
        now += 0.01
    assert len(b._sent) <= 100 * api_mod.BUDGET_MEASURE + 1
    assert b.measured(now) == pytest.approx(100.0, rel=0.02)
