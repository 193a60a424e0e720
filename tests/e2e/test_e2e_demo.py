"""The demo folder: `convert-agent demo` and `convert-agent run --once` on it both succeed."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from e2e_harness import (
    create_remote_job,
    invariants,
    md5,
    png_bytes,
    run_agent,
    serve_files,
    sidecar,
    write_config,
)

from agent.demo import prepare
from agent.emulator import RunningEmulator

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]


async def test_run_once_on_the_demo_folder_exits_0(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator(processing_seconds=0.3)
    inbox = prepare(tmp_path / "demo")
    async with serve_files({"/samples/landscape.png": png_bytes((64, 40), "skyblue")}) as origin:
        (inbox / "remote.job").write_text(f"input: {origin}/samples/landscape.png\ntarget: gif\n")
        job_id, token = await create_remote_job(
            emu.base_url, f"{origin}/samples/landscape.png", "jpg"
        )
        (inbox / "adopted.job").write_text(f"job: {job_id}\ntoken: {token}\n")
        tickets = sorted(p.name.removesuffix(".job") for p in inbox.glob("*.job"))
        cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")
        code, out = await run_agent(cfg, "run", "--once")

    assert code == 0, out
    assert len(tickets) == 6
    for stem in tickets:
        assert (inbox / f"{stem}.job.done").exists(), stem
        assert sidecar(inbox, stem)["phase"] == "done"
    state = emu.state.snapshot()
    on_disk = {md5(p) for p in inbox.iterdir() if p.is_file()}
    sums = [o["checksum"] for j in state["jobs"] for o in j["outputs"]]
    assert len(sums) == 9 and set(sums) <= on_disk  # 1+1+3 frames+2+1+1, each written once
    # the demo folder's marker (written by `prepare`, beside the inbox) is not the agent's
    assert invariants(inbox, state, allowed=[inbox.parent / ".convert-agent-demo"]) == []


async def test_the_demo_command_exits_0_and_every_ticket_is_done(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "demo",
        "--dir",
        str(directory),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, text
    inbox = directory / "inbox"
    done = sorted(p.name for p in inbox.glob("*.job.done"))
    assert len(done) == 6 and not list(inbox.glob("*.job.failed")), (done, text)
    # the gallery examples the emulator can run, each in its own folder, all done as well
    shown = re.search(r"gallery: +(\d+) examples", text)
    assert shown is not None, text
    gallery = sorted((directory / "gallery").iterdir())
    assert len(gallery) == int(shown.group(1)) >= 2, text
    assert {"convert-files", "presets"} <= {g.name for g in gallery}
    gallery_tickets = [p for g in gallery for p in g.iterdir() if p.name.endswith(".job")]
    assert not gallery_tickets, gallery_tickets  # every one renamed to .job.done
    gallery_done = [p for g in gallery for p in g.glob("*.job.done")]
    assert len(gallery_done) >= 3 and not list(directory.rglob("*.job.failed"))
    assert "FAIL" not in text and text.count("ok  ") == 6 + len(gallery_done), text
    assert (directory / "gallery" / "presets" / "photo.webp").is_file()  # the folder's defaults
    for folder in (inbox, *gallery):
        assert not [p for p in folder.iterdir() if p.name.startswith(".") or ".part" in p.name]
