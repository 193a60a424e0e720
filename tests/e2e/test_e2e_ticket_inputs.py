"""Tickets with several inputs and per-input settings, and the sidecar's words when the API
refuses a ticket's conversion: the real agent process against the emulator over real HTTP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from e2e_harness import invariants, png_bytes, run_agent, serve_files, sidecar, write_config

from agent.emulator import RunningEmulator

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]


async def test_each_input_reaches_the_api_with_its_own_settings(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator(processing_seconds=0.1)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.png").write_bytes(png_bytes((20, 10), "red"))
    (inbox / "c.png").write_bytes(png_bytes((8, 8), "blue"))
    async with serve_files({"/b.png": png_bytes((12, 6), "green")}) as origin:
        (inbox / "pair.job").write_text(
            "input:\n"
            "  - a.png\n"
            f"  - source: {origin}/b.png\n"
            "    engine: file\n"
            "    options: {screen_width: 640}\n"
            "    parameters: {note: second}\n"
            "    filename: second.png\n"
            "target: gif\n"
        )
        (inbox / "renamed.job").write_text(
            "input: {source: c.png, filename: logo.png}\ntarget: gif\n"
        )
        cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")
        code, out = await run_agent(cfg, "run", "--once")
    assert code == 0, out
    pair, renamed = sidecar(inbox, "pair"), sidecar(inbox, "renamed")
    assert pair["phase"] == renamed["phase"] == "done", (pair, renamed)
    jobs = {j.id: j for j in emu.state.jobs.values()}
    first, second = jobs[pair["job_id"]].inputs
    assert (first.type, first.filename, first.engine, first.options) == (
        "upload",
        "a.png",
        None,
        {},
    )
    assert second.type == "remote" and second.source == f"{origin}/b.png"
    assert (second.engine, second.options, second.parameters, second.filename) == (
        "file",
        {"screen_width": 640},
        {"note": "second"},
        "second.png",
    )
    assert sorted(o["name"] for o in pair["outputs"]) == ["a.gif", "second.gif"]
    (only,) = jobs[renamed["job_id"]].inputs
    assert only.type == "upload" and only.filename == "logo.png"
    assert [o["name"] for o in renamed["outputs"]] == ["logo.gif"]
    assert (inbox / "logo.gif").is_file() and (inbox / "second.gif").is_file()
    assert invariants(inbox, emu.state.snapshot()) == []


async def test_a_target_the_api_refuses_fails_the_ticket_in_plain_words(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator(processing_seconds=0.1)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.png").write_bytes(png_bytes())
    (inbox / "bogus.job").write_text("input: a.png\ncategory: operation\ntarget: shrink-ray-9000\n")
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")
    await run_agent(cfg, "run", "--once")
    side = sidecar(inbox, "bogus")
    assert side["phase"] == "failed" and (inbox / "bogus.job.failed").exists()
    error = side["error"]
    # The API may refuse the job (400/422 on POST /jobs) or fail it (errors[] in the job); the
    # sidecar gives its words and points at the ticket's target either way.
    assert error.startswith(
        ("the API refused the conversion: ", "the conversion failed on the server: ")
    ), error
    assert "Unknown conversion target 'shrink-ray-9000'" in error  # the API's own words
    assert "`target`" in error and "GET /v2/conversions" in error, error
    assert "back to .job" in error
