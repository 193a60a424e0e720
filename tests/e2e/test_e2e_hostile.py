"""Hostile input: server output names, inputs outside the watched root, malicious tickets."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from e2e_harness import (
    emulator_outputs,
    md5,
    names,
    png_bytes,
    run_agent,
    sidecar,
    spawn_agent,
    stop_agent,
    wait_for,
    wait_for_log,
    write_config,
)
from PIL import Image

from agent.emulator import FaultSpec, RunningEmulator

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]

COLOURS = ("red", "green", "blue", "white", "black", "yellow", "cyan", "magenta", "gray", "navy")


def _gif(frames: int) -> bytes:
    images = [Image.new("RGB", (8, 8), c) for c in COLOURS[:frames]]
    out = io.BytesIO()
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=50, loop=0)
    return out.getvalue()


def _outside_inbox(tmp_path: Path) -> set[str]:
    return {n for n in names(tmp_path) if not n.startswith("root/inbox/")}


async def test_hostile_output_names_never_write_outside_the_tickets_folder(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator(faults=(FaultSpec("job", "hostile_names"),))
    inbox = tmp_path / "root" / "inbox"
    inbox.mkdir(parents=True)
    (tmp_path / "root" / "keep.txt").write_text("a neighbour")
    (inbox / "ten.gif").write_bytes(_gif(10))  # ten outputs: every hostile name once
    (inbox / "ten.job").write_text("input: ten.gif\ntarget: png\n")
    (inbox / "two.gif").write_bytes(_gif(2))
    (inbox / "two.job").write_text("input: two.gif\ntarget: png\n")
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")
    before = _outside_inbox(tmp_path)

    code, out = await run_agent(cfg, "run", "--once")

    state = emu.state.snapshot()
    hostile = {o["filename"] for j in state["jobs"] for o in j["outputs"]}
    assert {"../../x.png", "/etc/x.png", "CON", "..", ""} <= hostile, hostile
    assert code == 0, out[-3000:]
    # nothing new outside the inbox but the agent's own state, log and dashboard files
    new = _outside_inbox(tmp_path) - before
    assert all(n.startswith(("state.db", "agent.log", "dashboard")) for n in new), new
    assert (tmp_path / "root" / "keep.txt").read_text() == "a neighbour"
    assert not os.path.exists("/etc/x.png")
    # inside the inbox: flat, safe names, every output written with the server's bytes
    inside = [p for p in inbox.rglob("*")]
    assert all(p.parent == inbox and p.is_file() for p in inside), inside
    written = {md5(p): p.name for p in inside}
    for j in state["jobs"]:
        for o in j["outputs"]:
            assert o["checksum"] in written, o
            name = written[o["checksum"]]
            assert name == name.strip() and name not in ("", ".", "..", "CON")
            assert not any(c in name for c in "/\\\x00\n\x1b") and len(name.encode()) <= 255
    assert not [p for p in inside if p.name.startswith(".") or p.name.endswith(".part")]
    assert (inbox / "ten.job.done").exists() and (inbox / "two.job.done").exists()


async def test_inputs_outside_the_watched_root_are_refused_before_any_upload(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (tmp_path / "secret.png").write_bytes(png_bytes(color="black"))
    (inbox / "link.png").symlink_to(tmp_path / "secret.png")
    (inbox / "dir").symlink_to(tmp_path)
    tickets = {
        "absolute": f"input: {tmp_path / 'secret.png'}\ntarget: jpg\n",
        "etc": "input: /etc/passwd\ntarget: txt\n",
        "dotdot": "input: ../secret.png\ntarget: jpg\n",
        "symlink": "input: link.png\ntarget: jpg\n",
        "dirlink": "input: dir/secret.png\ntarget: jpg\n",
        "listed": "input: [ok.png, ../secret.png]\ntarget: jpg\n",
    }
    for stem, text in tickets.items():
        (inbox / f"{stem}.job").write_text(text)
    (inbox / "ok.png").write_bytes(png_bytes())
    (inbox / "ok.job").write_text("input: ok.png\ntarget: jpg\n")
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")

    code, out = await run_agent(cfg, "run", "--once")

    assert code == 1, out
    state = emu.state.snapshot()
    assert state["create_requests"] == 1 and len(state["jobs"]) == 1  # only ok.job
    assert [u["filename"] for u in state["uploads"]] == ["ok.png"]
    assert (inbox / "ok.job.done").exists()
    for stem in tickets:
        assert (inbox / f"{stem}.job.failed").exists(), stem
        error = sidecar(inbox, stem)["error"]
        assert "outside" in error, (stem, error)
        assert sidecar(inbox, stem)["job_id"] is None


async def test_alias_bomb_binary_and_oversized_tickets_fail_fast_and_the_agent_goes_on(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = write_config(
        tmp_path / "c.yaml",
        emu.base_url,
        [inbox],
        tmp_path / "state.db",
        tickets={"parse_grace_seconds": 10},  # the default: a broken ticket must not wait it out
    )
    bomb = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        bomb.append(f"{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]")
    bad = {
        "bomb": ("\n".join(bomb) + "\ninput: x.png\ntarget: jpg\n").encode(),
        "binary": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(200),
        "latin1": "input: caf\xe9.png\ntarget: jpg\n".encode("latin-1"),
        "huge": b"input: x.png\ntarget: jpg\n# " + b"x" * (70 * 1024) + b"\n",
    }
    words = {"bomb": "alias", "binary": "text", "latin1": "utf-8", "huge": "64 kib"}
    log = tmp_path / "agent.log"
    proc = spawn_agent(cfg, "run", log=log)
    try:
        await wait_for_log(log, "watching")
        dropped = time.monotonic()
        for stem, data in bad.items():
            (inbox / f"{stem}.job").write_bytes(data)
        (inbox / "good.png").write_bytes(png_bytes())
        (inbox / "good.job").write_text("input: good.png\ntarget: jpg\n")
        await wait_for(
            lambda: all((inbox / f"{s}.job.failed").exists() for s in bad), 15, "bad tickets"
        )
        took = time.monotonic() - dropped
        await wait_for(lambda: (inbox / "good.job.done").exists(), 15, "good.job.done")
        assert proc.poll() is None, "the agent stopped"
    finally:
        await stop_agent(proc)

    assert took < 5.0, f"broken tickets took {took:.1f}s to fail (parse grace is 10 s)"
    for stem in bad:
        error = sidecar(inbox, stem)["error"]
        assert words[stem] in error.lower(), (stem, error)
    state = emu.state.snapshot()
    assert state["create_requests"] == 1
    assert emulator_outputs(state)["good.jpg"] == md5(inbox / "good.jpg")
