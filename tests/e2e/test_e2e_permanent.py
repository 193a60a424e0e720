"""Permanent trouble fails exactly the affected ticket, in plain words, with no corrupt output;
the other tickets of the same run succeed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_harness import (
    invariants,
    md5,
    names,
    png_bytes,
    run_agent,
    set_faults,
    sidecar,
    spawn_agent,
    stop_agent,
    wait_for,
    wait_for_log,
    write_config,
)

from agent.emulator import FaultSpec, RunningEmulator

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]

STEMS = ["a", "b", "c", "d"]


def _lay_out(inbox: Path, stems: list[str], target: str = "jpg") -> set[str]:
    inbox.mkdir(exist_ok=True)
    files = set()
    for i, stem in enumerate(stems):
        (inbox / f"{stem}.png").write_bytes(png_bytes((20 + i, 20), "teal"))
        (inbox / f"{stem}.job").write_text(f"input: {stem}.png\ntarget: {target}\n")
        files.add(f"{stem}.png")
    return files


def _check(
    inbox: Path,
    state: dict[str, Any],
    victim: str,
    good: list[str],
    inputs: set[str],
    words: tuple[str, ...],
) -> str:
    """Exactly ``victim`` failed, with an error in plain words; the rest are done and verified;
    nothing else is in the folder. Returns the victim's error."""
    assert (inbox / f"{victim}.job.failed").exists()
    side = sidecar(inbox, victim)
    assert side["phase"] == "failed"
    error = side["error"]
    assert isinstance(error, str) and len(error) > 20, side
    for w in words:
        assert w in error.lower(), (w, error)
    for noise in ("Traceback", "Exception", "Error(", "{'", "None"):
        assert noise not in error, error
    outputs: set[str] = set()
    by_job = {j["id"]: j for j in state["jobs"]}
    for stem in good:
        assert (inbox / f"{stem}.job.done").exists(), stem
        job = by_job[sidecar(inbox, stem)["job_id"]]
        for o in job["outputs"]:
            assert md5(inbox / o["filename"]) == o["checksum"]
            outputs.add(o["filename"])
    expected = (
        inputs
        | outputs
        | {f"{s}.job.done" for s in good}
        | {f"{s}.status.yaml" for s in [*good, victim]}
        | {f"{victim}.job.failed"}
    )
    assert names(inbox) == expected, (names(inbox) - expected, expected - names(inbox))
    assert invariants(inbox, state) == []
    # every job the agent created was started by exactly one request (none staged, none twice)
    assert [(j["starts"], j["start_requests"]) for j in state["jobs"]] == [(1, 1)] * len(
        state["jobs"]
    )
    recorded = {sidecar(inbox, s)["job_id"] for s in [*good, victim]} - {None}
    assert recorded == {j["id"] for j in state["jobs"]}  # one job per ticket, no stray one
    return error


async def test_an_invalid_target_refused_with_422_fails_only_that_ticket(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    inbox = tmp_path / "inbox"
    inputs = _lay_out(inbox, STEMS)
    inputs |= _lay_out(inbox, ["bad"], target="no.such.format")
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")

    code, out = await run_agent(cfg, "run", "--once")

    assert code == 1, out
    state = emu.state.snapshot()
    assert [r["status"] for r in state["requests"] if r["route"] == "create"].count(422) == 1
    error = _check(inbox, state, "bad", STEMS, inputs, ("target",))
    assert "no.such.format" in error or "extension" in error.lower()
    assert not any(u["filename"] == "bad.png" for u in state["uploads"])


# fault → words the victim's error must contain
JOB_FAULTS = {
    "job failed": (FaultSpec("job", "fail", count=1), ("failed",)),
    "completed without outputs": (FaultSpec("job", "no_outputs", count=1), ("no output",)),
    "output expired": (FaultSpec("download", "expire", count=1), ("expired",)),
    "output overused": (FaultSpec("download", "overuse", count=1), ("download",)),
}


@pytest.mark.parametrize("fault", list(JOB_FAULTS), ids=list(JOB_FAULTS))
async def test_a_permanent_job_fault_fails_only_the_affected_ticket(
    tmp_path: Path, make_emulator: MakeEmulator, fault: str
) -> None:
    spec, words = JOB_FAULTS[fault]
    emu = await make_emulator(processing_seconds=0.2, faults=(spec,))
    inbox = tmp_path / "inbox"
    inputs = _lay_out(inbox, STEMS)
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")

    code, out = await run_agent(cfg, "run", "--once")

    assert code == 1, out
    state = emu.state.snapshot()
    failed = [p.name.removesuffix(".job.failed") for p in inbox.glob("*.job.failed")]
    assert len(failed) == 1, (failed, out[-3000:])
    victim = failed[0]
    if spec.route == "job":  # the victim is the ticket whose job the fault hit
        job = next(j for j in state["jobs"] if j["id"] == sidecar(inbox, victim)["job_id"])
        assert (job["status"], len(job["outputs"])) == (
            ("failed", 0) if spec.kind == "fail" else ("completed", 0)
        )
    else:  # … or whose output download it refused
        refused = [r for r in state["requests"] if r["route"] == "download" and r["fault"]]
        assert len(refused) == 1 and refused[0]["status"] >= 400, refused
        assert f"/download-file/{sidecar(inbox, victim)['job_id']}/" in refused[0]["path"]
    _check(inbox, state, victim, [s for s in STEMS if s != victim], inputs, words)


async def test_a_checksum_that_never_matches_fails_the_ticket_and_keeps_nothing(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    """Every download of the victim is corrupted; once it has failed the corruption stops, and
    tickets dropped later into the same running agent succeed."""
    emu = await make_emulator(faults=(FaultSpec("download", "corrupt"),))
    inbox = tmp_path / "inbox"
    inputs = _lay_out(inbox, ["victim"])
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")
    log = tmp_path / "agent.log"
    proc = spawn_agent(cfg, "run", log=log)
    try:
        await wait_for_log(log, "watching")
        await wait_for(lambda: (inbox / "victim.job.failed").exists(), 20, "victim to fail")
        await set_faults(emu.base_url, None)
        inputs |= _lay_out(inbox, STEMS)
        await wait_for(
            lambda: all((inbox / f"{s}.job.done").exists() for s in STEMS), 20, "the others"
        )
    finally:
        await stop_agent(proc)
    state = emu.state.snapshot()
    victim_job = sidecar(inbox, "victim")["job_id"]
    corrupt = [d for d in state["downloads"] if d["job_id"] == victim_job]
    assert len(corrupt) == 3 and all(d["fault"] == "corrupt" for d in corrupt), corrupt
    error = _check(inbox, state, "victim", STEMS, inputs, ("checksum",))
    assert "nothing was kept" in error
    assert not (inbox / "victim.jpg").exists()
