"""The job-list sweep on its own: when it runs, what it covers, and how it hands back to per-job
polling (a fake list endpoint and a fake clock; the end-to-end side is in tests/e2e)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.errors import ApiUnavailable
from agent.models import RemoteJob
from agent.sweep import COVER_SECONDS, PAGE_SIZE, RECHECK_SECONDS, Sweeper, Watched


def job(jid: str, code: str = "processing", outputs: bool = True) -> RemoteJob:
    out = [{"id": "o", "uri": "http://x/o", "filename": "o.bin"}] if outputs else []
    return RemoteJob.from_dict(
        {"id": jid, "status": {"code": code, "info": code + "!"}, "output": out}
    )


class FakeList:
    """``list_page`` over a list of jobs, newest first, 50 a page, with X-Count."""

    def __init__(self, jobs: list[RemoteJob], count: int | None = -1) -> None:
        self.jobs = jobs
        self.count = count
        self.calls: list[int] = []
        self.fail: Exception | None = None

    async def list_page(self, page: int, **_: Any) -> tuple[list[RemoteJob], int | None]:
        self.calls.append(page)
        if self.fail is not None:
            raise self.fail
        chunk = self.jobs[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        return chunk, (len(self.jobs) if self.count == -1 else self.count)


class Rig:
    def __init__(self, n: int, extra: int = 0) -> None:
        self.now = 1000.0
        self.watch = [Watched(i, f"job{i}", ("processing", "processing!")) for i in range(1, n + 1)]
        others = [job(f"other{i}") for i in range(extra)]
        self.api = FakeList([job(w.job_id) for w in self.watch] + others)
        self.woken: list[tuple[int, float]] = []
        self.blocked = False
        self.sweeper = Sweeper(
            self.api,  # type: ignore[arg-type]
            interval=4.0,
            clock=lambda: self.now,
            watched=lambda: list(self.watch),
            wake=lambda tid, at: self.woken.append((tid, at)),
            blocked=lambda: self.blocked,
        )

    def set(self, jid: str, code: str, outputs: bool = True) -> None:
        self.api.jobs = [job(jid, code, outputs) if j.id == jid else j for j in self.api.jobs]


async def test_too_few_jobs_are_polled_one_by_one_without_a_list_request() -> None:
    rig = Rig(7)
    await rig.sweeper.sweep_once()
    assert rig.api.calls == [] and not rig.sweeper.active
    assert rig.sweeper.cover(1) is None  # the ticket keeps its own schedule


async def test_a_sweep_covers_every_listed_job_and_reads_every_page() -> None:
    rig = Rig(120)
    await rig.sweeper.sweep_once()
    assert rig.api.calls == [1, 2, 3] and rig.sweeper.active and rig.sweeper.sweeps == 1
    assert rig.woken == []  # nothing changed: nobody is woken
    assert rig.sweeper.covered_until(5) == rig.now + COVER_SECONDS
    rig.now += 1
    assert rig.sweeper.cover(121) == rig.now + COVER_SECONDS  # a new job is covered at once


async def test_a_finished_job_is_handed_over_and_its_ticket_woken() -> None:
    rig = Rig(10)
    await rig.sweeper.sweep_once()
    rig.set("job3", "completed")
    rig.set("job4", "failed")
    rig.now += 4
    await rig.sweeper.sweep_once()
    assert sorted(t for t, _ in rig.woken) == [3, 4]
    done = rig.sweeper.take(3)
    assert done is not None and done.status_code == "completed" and done.outputs
    assert rig.sweeper.take(3) is None  # consumed
    assert rig.sweeper.covered_until(3) is None
    failed = rig.sweeper.take(4)
    assert failed is not None and failed.status_code == "failed"


async def test_a_changed_status_is_handed_over_too() -> None:
    rig = Rig(10)
    rig.watch[0] = Watched(1, "job1", ("queued", "queued!"))
    await rig.sweeper.sweep_once()
    assert [t for t, _ in rig.woken] == [1]
    seen = rig.sweeper.take(1)
    assert seen is not None and seen.status_code == "processing"


async def test_a_completed_job_listed_without_outputs_is_fetched_on_its_own() -> None:
    rig = Rig(10)
    rig.set("job2", "completed", outputs=False)
    await rig.sweeper.sweep_once()
    assert [t for t, _ in rig.woken] == [2]
    assert rig.sweeper.take(2) is None  # so the ticket's step sends GET /jobs/{id}


async def test_a_covered_job_missing_from_a_later_sweep_is_polled_on_its_own_again() -> None:
    rig = Rig(10)
    await rig.sweeper.sweep_once()
    rig.api.jobs = [j for j in rig.api.jobs if j.id != "job6"]
    rig.now += 4
    await rig.sweeper.sweep_once()
    assert rig.woken == [(6, rig.now)]
    assert rig.sweeper.covered_until(6) is None and rig.sweeper.covered_until(7) is not None


async def test_a_failed_sweep_hands_every_job_back_and_waits_before_trying_again() -> None:
    rig = Rig(10)
    await rig.sweeper.sweep_once()
    rig.api.fail = ApiUnavailable("GET /jobs: HTTP 503")
    rig.now += 4
    await rig.sweeper.sweep_once()
    assert not rig.sweeper.active
    assert sorted(t for t, _ in rig.woken) == list(range(1, 11))
    assert all(rig.now <= at < rig.now + 1 for _, at in rig.woken)  # spread over a second
    assert rig.sweeper.cover(1) is None
    rig.api.fail = None
    calls = len(rig.api.calls)
    rig.now += RECHECK_SECONDS - 1
    await rig.sweeper.sweep_once()
    assert len(rig.api.calls) == calls  # not yet
    rig.now += 2
    await rig.sweeper.sweep_once()
    assert rig.sweeper.active


@pytest.mark.parametrize(
    ("ours", "others", "sweeps"), [(8, 0, True), (40, 150, True), (40, 461, False)]
)
async def test_sweeps_only_when_the_pages_cost_a_quarter_of_the_jobs_or_less(
    ours: int, others: int, sweeps: bool
) -> None:
    rig = Rig(ours, extra=others)
    await rig.sweeper.sweep_once()
    assert rig.sweeper.active is sweeps
    if not sweeps:
        assert rig.api.calls == [1]  # one request to learn the count, then per-job polling
        rig.now += 4
        await rig.sweeper.sweep_once()
        assert rig.api.calls == [1]


async def test_no_sweep_while_blocked_for_example_by_a_refused_key() -> None:
    rig = Rig(10)
    await rig.sweeper.sweep_once()
    rig.blocked = True
    rig.now += 4
    await rig.sweeper.sweep_once()
    assert rig.api.calls == [1] and not rig.sweeper.active
    assert sorted(t for t, _ in rig.woken) == list(range(1, 11))


async def test_forget_drops_cover_and_handed_over_job() -> None:
    rig = Rig(10)
    rig.set("job1", "completed")
    await rig.sweeper.sweep_once()
    rig.sweeper.forget(1)
    assert rig.sweeper.take(1) is None and rig.sweeper.covered_until(1) is None


async def test_without_x_count_the_pages_are_read_while_they_come_full() -> None:
    rig = Rig(120)
    rig.api.count = None
    await rig.sweeper.sweep_once()
    assert rig.api.calls == [1, 2, 3] and rig.sweeper.active
    few = Rig(30, extra=470)  # 500 jobs, 10 full pages: past a quarter of 30 at page 8
    few.api.count = None
    await few.sweeper.sweep_once()
    assert not few.sweeper.active and few.api.calls == list(range(1, 8))
