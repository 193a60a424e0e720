"""Months of uptime (issue 13): what an agent keeps in memory for a ticket is released when the
ticket ends, retention removes finished records while the agent runs, and a pruned ticket whose
``NAME.job.done`` is renamed back to ``NAME.job`` is a new request. A real agent in this process
against the emulator; its structures are inspected after the tickets end."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from dash_helpers import drop_ticket, wait_for
from e2e_harness import write_config

from agent import daemon, downloader, notify, platform
from agent.config import load_config
from agent.daemon import Agent
from agent.emulator import RunningEmulator
from agent.notify import Notifications

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]


@contextlib.asynccontextmanager
async def running_agent(tmp_path: Path, base_url: str, **state: Any) -> AsyncIterator[Agent]:
    inbox = tmp_path / "inbox"
    cfg_path = write_config(tmp_path / "config.yaml", base_url, [inbox], tmp_path / "state.db")
    cfg = load_config(cfg_path, {})
    agent = Agent(dataclasses.replace(cfg, state=dataclasses.replace(cfg.state, **state)))
    task = asyncio.create_task(agent.run())
    try:
        await wait_for(lambda: agent.ready.is_set() or task.done(), 20, "the agent to start")
        if task.done():
            task.result()
        yield agent
    finally:
        agent.request_stop()
        await asyncio.wait_for(task, 20)


def filed(inbox: Path) -> set[str]:
    return {p.name[: -len(".job.done")] for p in inbox.glob("*.job.done")}


def assert_own_outputs(sched: Any, names: set[str], inbox: Path) -> None:
    """The scheduler's own outputs are what the store names: 3 kept records' and 3 tombstones'
    (one output each; the newest record may be kept beyond the limits)."""
    assert 6 <= len(names) <= 7
    outputs = {str(p) for p in inbox.glob("*.jpg")}
    assert names <= outputs
    assert {p for p in outputs if sched.is_own_output(Path(p))} == names


def per_ticket_traces(agent: Agent) -> dict[str, int]:
    """The size of everything the agent keeps per ticket in memory, by name."""
    sched = agent.scheduler
    assert sched is not None and agent.store is not None
    sizes = {
        name: len(getattr(sched, name))
        for name in (
            "_vol",
            "_tasks",
            "_rerun",
            "_retry_when_filed",
            "_parse_retry",
            "_pending_paths",
            "_in_use",
            "_placing",
            "_placing_written",
            "_sidecars_due",
            "_sidecar_io",
            "_sidecar_changed",
            "seen_this_run",
        )
    }
    sizes["store._live"] = len(agent.store._live)
    sizes["downloader.FOLDER_NAMES"] = len(downloader.FOLDER_NAMES)  # folder listings
    if sched.sweeper is not None:
        sizes["sweeper._covered"] = len(sched.sweeper._covered)
        sizes["sweeper._listed"] = len(sched.sweeper._listed)
    if agent.dashboard is not None:
        sizes["dashboard.transfers"] = len(agent.dashboard.transfers)
    return sizes


def agent_tasks() -> int:
    """Tasks on the loop but the emulator's (it shares this process: a task per connection the
    agent keeps alive to it)."""
    return sum(
        1
        for t in asyncio.all_tasks()
        if "RequestHandler" not in getattr(t.get_coro(), "__qualname__", "")
    )


def label_values(agent: Agent) -> set[str]:
    """Every label value of every metric (routes, outcomes, phases, verdicts...)."""
    return {
        value
        for metric in agent.metrics.registry.collect()
        for sample in metric.samples
        for value in sample.labels.values()
    }


async def test_a_finished_ticket_leaves_no_trace_in_memory_and_retention_prunes_live(
    tmp_path: Path, make_emulator: MakeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notify, "SEEN_ENDINGS", 4)
    monkeypatch.setattr(downloader, "FOLDER_IDLE_SECONDS", 0.3)  # a listing kept while used
    monkeypatch.setattr(daemon, "MEMORY_TRIM_SECONDS", 0.1)
    emu = await make_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    async with running_agent(tmp_path, emu.base_url, keep_finished=3, keep_days=0) as agent:
        sched, store = agent.scheduler, agent.store
        assert sched is not None and store is not None
        told: list[str] = []
        notes = Notifications(agent, batch_seconds=0.01)
        notes.balloon = lambda body, title: told.append(title)  # no desktop in a test
        await asyncio.sleep(0.2)
        idle_tasks = agent_tasks()

        first = [f"a{i}" for i in range(8)]
        for stem in first:
            drop_ticket(inbox, stem)
        await wait_for(lambda: filed(inbox) == set(first), 30, "the first tickets to be filed")
        await wait_for(
            lambda: not any(per_ticket_traces(agent).values()), 10, "per-ticket memory released"
        )
        labels = label_values(agent)
        assert len(notes._seen) <= 4

        # Retention while the agent runs: 3 finished records stay, 3 tombstones, the rest go.
        await sched.prune_pass()
        # (the newest id stays too, whatever the limits: ids are never given out twice)
        assert 3 <= len(store.tickets(active_only=False)) <= 4
        # the outputs of the kept records and tombstones are all the agent knows as its own
        # (the store is asked; nothing of them is held in memory)
        assert_own_outputs(sched, store.output_names(str(inbox)), inbox)
        tombs = [t for stem in first for t in store.pruned(stem)]
        assert len(tombs) == 3 and {t.outcome for t in tombs} == {"done"}

        # More tickets: what is kept per ticket does not grow with the number processed.
        second = [f"b{i}" for i in range(8)]
        for stem in second:
            drop_ticket(inbox, stem)
        await wait_for(lambda: set(second) <= filed(inbox), 30, "the second tickets")
        await wait_for(
            lambda: not any(per_ticket_traces(agent).values()), 10, "per-ticket memory released"
        )
        await sched.prune_pass()
        assert 3 <= len(store.tickets(active_only=False)) <= 4
        assert_own_outputs(sched, store.output_names(str(inbox)), inbox)
        # Label values are routes (templates), outcomes, phases: never an id or a name, so the
        # label sets cannot grow with the tickets processed.
        labels |= label_values(agent)
        jobs = {j["id"] for j in emu.state.snapshot()["jobs"]}
        assert not any(
            v in jobs or any(c.isdigit() for c in v.replace("4xx", "").replace("5xx", ""))
            for v in labels
            if not v.replace(".", "").isdigit()  # histogram buckets ("0.5", "+Inf")
        ), labels
        assert len(notes._seen) <= 4
        await wait_for(lambda: agent_tasks() <= idle_tasks, 10, "the idle task count")

        # A pruned ticket's NAME.job.done renamed back to NAME.job is a new request.
        gone = next(stem for stem in first if not store.find(stem))
        creates = emu.state.create_requests
        (inbox / f"{gone}.job.done").rename(inbox / f"{gone}.job")
        await wait_for(lambda: (inbox / f"{gone}.job.done").exists(), 30, "done again")
        (again,) = store.find(gone)
        assert again.phase.value == "done" and emu.state.create_requests == creates + 1
        notes.close()

    conn = sqlite3.connect(tmp_path / "state.db")
    (n,) = conn.execute("SELECT count(*) FROM tickets").fetchone()
    conn.close()
    assert n <= 5  # the three kept, the newest id and the new record


async def test_a_running_agent_gives_free_memory_back_to_the_system_now_and_then(
    tmp_path: Path, make_emulator: MakeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The allocator's free pages go back to the system every ``MEMORY_TRIM_SECONDS`` (freed
    transfer buffers between blocks that stay are otherwise kept: RSS creeps up under steady
    traffic with the memory in use flat), in a worker thread; where there is nothing to call
    (not glibc) it is not called again, and idle folder listings are still dropped."""
    calls: list[str] = []
    answer: list[bool | None] = [True]

    def release() -> bool | None:
        calls.append(threading.current_thread().name)
        return answer[0]

    monkeypatch.setattr(daemon, "MEMORY_TRIM_SECONDS", 0.05)
    monkeypatch.setattr(platform, "release_free_memory", release)
    emu = await make_emulator()
    (tmp_path / "inbox").mkdir()
    forgets: list[int] = []
    forget_idle = downloader.FOLDER_NAMES.forget_idle
    monkeypatch.setattr(
        downloader.FOLDER_NAMES, "forget_idle", lambda: forgets.append(1) or forget_idle()
    )
    async with running_agent(tmp_path, emu.base_url):
        await wait_for(lambda: len(calls) >= 3, 10, "free memory given back, again and again")
        # in a worker thread: it takes the allocator's locks, never the loop's time
        assert threading.main_thread().name not in calls
        (loop_task,) = [t for t in asyncio.all_tasks() if t.get_name() == "memory-trim"]
        answer[0] = None
        asked = len(calls)
        await wait_for(lambda: len(calls) > asked, 10, "the answer that there is nothing to call")
        n, forgotten = len(calls), len(forgets)
        await asyncio.sleep(0.5)
        assert len(calls) == n, "called again where there is nothing to call"
        assert len(forgets) >= forgotten + 3, "idle folder listings are dropped all the same"
        assert not loop_task.done()
