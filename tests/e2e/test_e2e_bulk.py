"""100 tickets of every kind dropped at once into a running agent all end done, verified."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from e2e_harness import (
    create_remote_job,
    emulator_outputs,
    gif_bytes,
    invariants,
    jpg_bytes,
    md5,
    names,
    png_bytes,
    serve_files,
    sidecar,
    spawn_agent,
    stop_agent,
    wait_for,
    wait_for_log,
    write_config,
)

from agent.emulator import RunningEmulator

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")


async def test_hundred_mixed_tickets_dropped_at_once_all_end_done_and_verified(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator(processing_seconds=0.3)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    inputs: set[str] = set()
    tickets: dict[str, str] = {}  # stem → ticket text
    remote: dict[str, bytes] = {}
    for i in range(40):  # local png → jpg
        (inbox / f"p{i:02}.png").write_bytes(png_bytes((10 + i, 8), COLOURS[i % 8]))
        inputs.add(f"p{i:02}.png")
        tickets[f"p{i:02}"] = f"input: p{i:02}.png\ntarget: jpg\n"
    for i in range(20):  # text → html
        (inbox / f"t{i:02}.txt").write_text(f"note {i}\n<b>&</b> line two\n")
        inputs.add(f"t{i:02}.txt")
        tickets[f"t{i:02}"] = f"input: t{i:02}.txt\ntarget: html\n"
    for i in range(10):  # several outputs from one input
        (inbox / f"m{i:02}.png").write_bytes(png_bytes((12, 10 + i), COLOURS[i % 8]))
        inputs.add(f"m{i:02}.png")
        tickets[f"m{i:02}"] = (
            f"input: m{i:02}.png\nconversion:\n  - target: webp\n  - target: bmp\n"
        )
    for i in range(5):  # animated GIF → one png per frame
        (inbox / f"g{i:02}.gif").write_bytes(gif_bytes(2 + i % 3))
        inputs.add(f"g{i:02}.gif")
        tickets[f"g{i:02}"] = f"input: g{i:02}.gif\ntarget: png\n"
    for i in range(15):  # URL inputs
        remote[f"/u/u{i:02}.jpg"] = jpg_bytes((16 + i, 9), COLOURS[i % 8])
    for i in range(10):  # inputs of jobs created elsewhere, adopted by id and token
        remote[f"/a/a{i:02}.png"] = png_bytes((9, 16 + i), COLOURS[i % 8])

    async with serve_files(remote) as origin:
        for i in range(15):
            tickets[f"u{i:02}"] = f"input: {origin}/u/u{i:02}.jpg\ntarget: png\n"
        for i in range(10):
            job_id, token = await create_remote_job(emu.base_url, f"{origin}/a/a{i:02}.png", "jpg")
            tickets[f"a{i:02}"] = f"job: {job_id}\ntoken: {token}\n"
        assert len(tickets) == 100

        cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")
        log = tmp_path / "agent.log"
        proc = spawn_agent(cfg, "run", log=log)
        try:
            await wait_for_log(log, "watching")
            for stem, text in tickets.items():
                (inbox / f"{stem}.job").write_text(text)
            await wait_for(
                lambda: all((inbox / f"{s}.job.done").exists() for s in tickets),
                90,
                "every ticket to end .job.done",
            )
        finally:
            code = await stop_agent(proc)
        assert code == 0, log.read_text()[-4000:]

    state = emu.state.snapshot()
    assert state["internal_errors"] == []
    # each job started exactly once: 90 created by the agent (one each), 10 by "someone else"
    assert len(state["jobs"]) == 100
    # (the agent's carry its Idempotency-Key and one start request; the adopted ones none)
    counts = sorted(
        (j["idempotency_key"] is not None, j["starts"], j["start_requests"]) for j in state["jobs"]
    )
    assert counts == [(False, 1, 0)] * 10 + [(True, 1, 1)] * 90, counts
    assert state["create_requests"] == 100
    produced = emulator_outputs(state)
    assert len(produced) == 40 + 20 + 20 + sum(2 + i % 3 for i in range(5)) + 15 + 10
    for filename, checksum in produced.items():
        assert md5(inbox / filename) == checksum, filename
    expected = (
        inputs
        | set(produced)
        | {f"{s}.job.done" for s in tickets}
        | {f"{s}.status.yaml" for s in tickets}
    )
    assert names(inbox) == expected, (names(inbox) - expected, expected - names(inbox))
    for stem in tickets:
        side = sidecar(inbox, stem)
        assert side["phase"] == "done", (stem, side)
        assert all(o["verdict"] == "verified" for o in side["outputs"]), (stem, side)
    assert invariants(inbox, state) == []
