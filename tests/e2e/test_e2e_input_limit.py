"""A 402 on an input (its upload, or a remote input the API refuses) is about that input: only
that ticket fails, in words that name the contract's limit and the file's size, and intake goes
on. A 402 on ``POST /jobs`` is the account's quota: the ticket waits and no ticket fails.

The emulator's input size limit is set small (``max_input_bytes``) so the inputs stay tiny."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from e2e_harness import (
    KEY,
    png_bytes,
    run_agent,
    serve_files,
    sidecar,
    spawn_agent,
    stop_agent,
    wait_for,
    wait_for_log,
    write_config,
)

from agent.api import ApiClient
from agent.emulator import RunningEmulator
from agent.errors import InputRefused

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]
LIMIT = 4000
BIG = 3 * LIMIT  # 12,000 bytes: 11.7 KiB


def _big_file() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * (BIG // 256) + b"\0" * (BIG % 256 - 8)


async def test_an_input_over_the_contract_limit_fails_only_its_ticket(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator(max_input_bytes=LIMIT)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    small = {s: png_bytes((20 + i, 20), "teal") for i, s in enumerate(("a", "b", "c"))}
    assert all(len(d) < LIMIT for d in small.values())
    for stem, data in small.items():
        (inbox / f"{stem}.png").write_bytes(data)
        (inbox / f"{stem}.job").write_text(f"input: {stem}.png\ntarget: jpg\n")
    big = _big_file()
    assert len(big) == BIG
    (inbox / "big.png").write_bytes(big)
    (inbox / "big.job").write_text("input: big.png\ntarget: jpg\n")
    async with serve_files({"/far.png": big, "/near.png": small["a"]}) as origin:
        (inbox / "far.job").write_text(f"input: {origin}/far.png\ntarget: jpg\n")
        (inbox / "near.job").write_text(f"input: {origin}/near.png\ntarget: jpg\n")
        cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")

        # Taken as "credits used up", the 402 held every other ticket for minutes.
        code, out = await run_agent(cfg, "run", "--once", timeout=60)

    assert code == 1, out
    state = emu.state.snapshot()
    assert state["internal_errors"] == []
    refused = [r for r in state["requests"] if r["status"] == 402]
    assert sorted(r["route"] for r in refused) == ["input", "upload"], refused
    for stem in ("a", "b", "c", "near"):
        assert (inbox / f"{stem}.job.done").exists(), (stem, out[-3000:])
        assert (inbox / f"{stem}.jpg").exists()
    assert "no new tickets are started" not in out, out[-3000:]

    upload_error = sidecar(inbox, "big")["error"]
    assert (inbox / "big.job.failed").exists()
    assert "big.png" in upload_error
    assert "12,000 bytes" in upload_error, upload_error  # the file's size
    assert "larger than the API contract allows" in upload_error
    assert f"{LIMIT} bytes" in upload_error, upload_error  # the contract's limit
    assert "credits" not in upload_error and "new tickets wait" not in upload_error
    assert "make the file smaller" in upload_error, upload_error  # what to do

    remote_error = sidecar(inbox, "far")["error"]
    assert (inbox / "far.job.failed").exists()
    assert "far.png" in remote_error and f"{LIMIT} bytes" in remote_error, remote_error
    assert "credits" not in remote_error
    # nothing of the big inputs was stored or converted
    assert not any(u["size"] > LIMIT for u in state["uploads"])


async def test_a_402_on_post_jobs_stays_the_quota_and_intake_waits(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator(credits=0, max_input_bytes=LIMIT)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for stem in ("a", "b"):
        (inbox / f"{stem}.png").write_bytes(png_bytes())
        (inbox / f"{stem}.job").write_text(f"input: {stem}.png\ntarget: jpg\n")
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")
    log = tmp_path / "agent.log"
    proc = spawn_agent(cfg, "run", log=log)
    try:
        await wait_for_log(log, "no new tickets are started until it recovers", timeout=30)

        def waiting() -> bool:
            try:
                sides = [sidecar(inbox, s) for s in ("a", "b")]
            except (FileNotFoundError, AssertionError):
                return False
            return any("credits" in str(s.get("error") or "") for s in sides)

        await wait_for(waiting, 30, "a ticket to say it waits on the quota")
    finally:
        code = await stop_agent(proc)
    assert code == 0, log.read_text()[-3000:]
    assert not list(inbox.glob("*.failed")), sorted(p.name for p in inbox.iterdir())
    state = emu.state.snapshot()
    assert {r["status"] for r in state["requests"] if r["route"] == "create"} == {402}
    assert state["uploads"] == []


async def test_a_huge_upload_is_refused_at_once_not_after_sending_it_all(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    """The report's size: a 600 MiB input (a sparse file: no disk used) is answered 402 once
    the limit is passed, and the agent's client takes it as that input's refusal at once."""
    emu = await make_emulator(max_input_bytes=LIMIT)
    api = ApiClient(emu.base_url, KEY, max_retries=0)
    huge = tmp_path / "huge.mov"
    with huge.open("wb") as fh:
        fh.truncate(600 << 20)
    try:
        job = await api.create_job([{"target": "mp4"}], idempotency_key="huge-1")
        started = time.monotonic()
        with pytest.raises(InputRefused) as refused:
            await api.upload_file(job, huge, filename=huge.name, upload_uuid="u-huge")
        assert time.monotonic() - started < 10
    finally:
        await api.close()
    assert "629,145,600 bytes, 600.0 MiB" in refused.value.message
    assert f"({LIMIT} bytes)" in refused.value.message
    assert emu.state.snapshot()["uploads"] == []
