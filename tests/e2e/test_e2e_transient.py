"""Transient trouble delays tickets but fails none: 5xx, drops, truncation, 429, an outage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_harness import (
    emulator_outputs,
    fault_hits,
    invariants,
    md5,
    outage,
    png_bytes,
    run_agent,
    serve_files,
    sidecar,
    write_config,
)

from agent.emulator import FaultSpec, RunningEmulator

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]


def _lay_out(inbox: Path, origin: str, n_local: int = 3) -> list[str]:
    """Local tickets (upload path) and one URL ticket (remote input path)."""
    inbox.mkdir()
    stems = []
    for i in range(n_local):
        (inbox / f"f{i}.png").write_bytes(png_bytes((30 + i, 20), "orange"))
        (inbox / f"f{i}.job").write_text(f"input: f{i}.png\ntarget: jpg\n")
        stems.append(f"f{i}")
    (inbox / "web.job").write_text(f"input: {origin}/w/web.png\ntarget: gif\n")
    stems.append("web")
    return stems


def _all_done(inbox: Path, stems: list[str], state: dict[str, Any], out: str) -> None:
    for stem in stems:
        assert (inbox / f"{stem}.job.done").exists(), (stem, out[-3000:])
        assert sidecar(inbox, stem)["phase"] == "done"
    assert not list(inbox.glob("*.job.failed"))
    produced = emulator_outputs({"jobs": [j for j in state["jobs"] if j["status"] == "completed"]})
    assert len(produced) == len(stems)
    for filename, checksum in produced.items():
        assert md5(inbox / filename) == checksum, filename
    assert invariants(inbox, state) == []
    assert state["internal_errors"] == []


FAULT_SETS: dict[str, tuple[FaultSpec, ...]] = {
    "5xx bursts": (
        FaultSpec("create", "error", count=3, param=503),
        FaultSpec("upload", "error", count=2, param=500),
        FaultSpec("input", "error", count=2, param=502),
        FaultSpec("start", "error", count=2, param=503),
        FaultSpec("get", "error", count=3, param=500),
        FaultSpec("download", "error", count=2, param=502),
        FaultSpec("any", "html", rate=0.1, count=3),
    ),
    "dropped connections": (
        FaultSpec("create", "drop", count=2),
        FaultSpec("create", "drop_after", count=1),
        FaultSpec("upload", "drop", count=1),
        FaultSpec("upload", "drop_after", count=1),
        FaultSpec("input", "drop_after", count=1),
        FaultSpec("start", "drop_after", count=1),
        FaultSpec("start", "error_after", count=1, param=502),
        FaultSpec("get", "drop", count=2),
        FaultSpec("download", "drop", count=2),
        FaultSpec("download", "drop_after", count=1),
    ),
    "truncated downloads": (FaultSpec("download", "truncate", count=4),),
}


@pytest.mark.parametrize("faults", list(FAULT_SETS), ids=list(FAULT_SETS))
async def test_transient_faults_delay_tickets_but_fail_none(
    tmp_path: Path, make_emulator: MakeEmulator, faults: str
) -> None:
    emu = await make_emulator(processing_seconds=0.2, faults=FAULT_SETS[faults])
    inbox = tmp_path / "inbox"
    async with serve_files({"/w/web.png": png_bytes((50, 40), "cyan")}) as origin:
        stems = _lay_out(inbox, origin)
        cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")
        code, out = await run_agent(cfg, "run", "--once", timeout=60)
    state = emu.state.snapshot()
    assert code == 0, out[-4000:]
    _all_done(inbox, stems, state, out)
    hits = fault_hits(state)
    for spec in FAULT_SETS[faults]:
        if spec.rate == 1.0:
            assert hits[f"{spec.route}:{spec.kind}"] >= 1, (spec, hits)
    # dropped or failed POSTs must not have made extra jobs that ever started
    assert sum(j["starts"] for j in state["jobs"]) == len(stems)
    assert sum(j["start_requests"] for j in state["jobs"]) == len(stems)


async def test_429_with_retry_after_is_waited_out(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator(
        retry_after=1,
        faults=(
            FaultSpec("create", "error", count=2, param=429),
            FaultSpec("start", "error", count=2, param=429),
            FaultSpec("get", "error", count=2, param=429),
            FaultSpec("download", "error", count=2, param=429),
        ),
    )
    inbox = tmp_path / "inbox"
    async with serve_files({"/w/web.png": png_bytes((50, 40), "cyan")}) as origin:
        stems = _lay_out(inbox, origin, n_local=1)
        cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")
        started = time.monotonic()
        code, out = await run_agent(cfg, "run", "--once", timeout=60)
        elapsed = time.monotonic() - started
    state = emu.state.snapshot()
    assert code == 0, out[-4000:]
    _all_done(inbox, stems, state, out)
    assert all(v == 2 for v in fault_hits(state).values()), fault_hits(state)
    # Retry-After: 1 was honoured: two refusals in a row on one route cost at least 2 s
    assert elapsed >= 2.0, elapsed


async def _outage_run(tmp_path: Path, emu: RunningEmulator, down_for: float) -> None:
    inbox = tmp_path / "inbox"
    async with serve_files({"/w/web.png": png_bytes((50, 40), "cyan")}) as origin:
        stems = _lay_out(inbox, origin, n_local=4)
        cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")
        agent = asyncio.ensure_future(run_agent(cfg, "run", "--once", timeout=down_for + 90))
        # wait until work is in flight, then take the server down
        deadline = time.monotonic() + 10
        while not emu.state.jobs and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert emu.state.jobs, "the agent never reached the server"
        await outage(emu, down_for)
        code, out = await agent
    state = emu.state.snapshot()
    assert code == 0, out[-4000:]
    assert "retrying in" in out and "recovered" in out, out[-4000:]  # it did see the outage
    _all_done(inbox, stems, state, out)


async def test_the_server_down_for_a_few_seconds_delays_but_fails_nothing(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator(processing_seconds=1.0)
    await _outage_run(tmp_path, emu, 3.0)


@pytest.mark.slow
async def test_the_server_down_for_30s_delays_but_fails_nothing(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator(processing_seconds=1.0)
    await _outage_run(tmp_path, emu, 30.0)
