"""Inputs are confined to the watched root: a ticket cannot make the agent upload a file from
elsewhere on the machine, whether by an absolute path, ``..``, a symlink, or a symlink swapped in
after the ticket was accepted.

Defences: ``ticket._input_spec`` (realpath inside the root, before anything is recorded),
``Scheduler._upload`` (``is_within`` again just before the upload) and ``ApiClient.upload_file``
(opens the resolved path with ``O_NOFOLLOW``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from e2e_harness import png_bytes, run_agent, spawn_agent, stop_agent, wait_for, write_config

from agent.api import ApiClient
from agent.emulator import FaultSpec, RunningEmulator
from agent.errors import AgentError
from agent.models import RemoteJob

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]
SECRET = b"root:x:0:0:the secret outside the folder\n"


def _layout(tmp_path: Path) -> tuple[Path, Path]:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    return inbox, outside


async def test_inputs_outside_the_root_are_refused_before_any_request(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    inbox, outside = _layout(tmp_path)
    os.symlink(outside / "secret.txt", inbox / "link.txt")
    os.symlink(outside, inbox / "dir")
    (inbox / "sub").mkdir()
    tickets = {
        "absolute": str(outside / "secret.txt"),
        "dotdot": "../outside/secret.txt",
        "subdotdot": "sub/../../outside/secret.txt",
        "link": "link.txt",
        "dirlink": "dir/secret.txt",
        "etc": "/etc/hostname",
    }
    for name, value in tickets.items():
        (inbox / f"{name}.job").write_text(f"input: {value!r}\ntarget: txt\n")
    # One good ticket beside them: the folder keeps working.
    (inbox / "good.png").write_bytes(png_bytes())
    (inbox / "good.job").write_text("input: good.png\ntarget: jpg\n")
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")

    code, out = await run_agent(cfg, "run", "--once")

    assert code == 1, out
    for name in tickets:
        assert (inbox / f"{name}.job.failed").exists(), name
        sidecar = yaml.safe_load((inbox / f"{name}.status.yaml").read_text())
        assert "outside the watched folder" in sidecar["error"], sidecar
    assert (inbox / "good.job.done").exists()
    state = emu.state.snapshot()
    assert state["create_requests"] == 1  # only the good ticket reached the API
    assert [u["filename"] for u in state["uploads"]] == ["good.png"]


async def test_input_swapped_for_a_symlink_after_acceptance_is_not_uploaded(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    """The ticket is accepted while ``a.txt`` is a plain file; while its job is being created
    (held back by three 503s), ``a.txt`` becomes a symlink to a secret outside the folder."""
    emu = await make_emulator(faults=(FaultSpec("create", "error", count=3, param=503),))
    inbox, outside = _layout(tmp_path)
    (inbox / "a.txt").write_text("harmless\n")
    (inbox / "a.job").write_text("input: a.txt\ntarget: txt\n")
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")
    proc = spawn_agent(cfg, "run", log=tmp_path / "agent.log")
    try:
        await wait_for(
            lambda: any(r.route == "create" for r in emu.state.requests), 20, "a POST /jobs"
        )
        tmp_link = inbox / ".swap"
        os.symlink(outside / "secret.txt", tmp_link)
        os.replace(tmp_link, inbox / "a.txt")
        await wait_for(lambda: (inbox / "a.job.failed").exists(), 30, "the ticket to fail")
        await asyncio.sleep(0.3)
    finally:
        await stop_agent(proc)
    sidecar = yaml.safe_load((inbox / "a.status.yaml").read_text())
    assert "outside the watched folder" in sidecar["error"], sidecar
    state = emu.state.snapshot()
    assert state["uploads"] == [], state["uploads"]
    assert all(j["starts"] == 0 for j in state["jobs"])
    assert (outside / "secret.txt").read_bytes() == SECRET


async def test_the_upload_never_opens_a_symlink(tmp_path: Path) -> None:
    """``ApiClient.upload_file`` on its own (the scheduler's check before it masks it in the
    tests above): a path that is a symlink when the file is opened is refused, nothing is sent.
    It covers a swap between the scheduler's check and the open."""
    inbox, outside = _layout(tmp_path)
    os.symlink(outside / "secret.txt", inbox / "a.txt")
    received: list[bytes] = []

    async def upload(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.json_response({"id": "in-1", "status": "ready"})

    app = web.Application()
    app.router.add_post("/srv/upload-file/{id}", upload)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    api = ApiClient(base + "/v2", "k" * 32, max_retries=0)
    job = RemoteJob.from_dict({"id": "j1", "token": "t" * 32, "server": base + "/srv/"})
    try:
        with pytest.raises(AgentError):
            await api.upload_file(job, inbox / "a.txt", filename="a.txt", upload_uuid="u-1")
        # The same call with a plain file goes through: the refusal is about the symlink.
        (inbox / "b.txt").write_text("harmless\n")
        await api.upload_file(job, inbox / "b.txt", filename="b.txt", upload_uuid="u-2")
    finally:
        await api.close()
        await runner.cleanup()
    assert len(received) == 1 and b"harmless" in received[0]
    assert not any(SECRET in body for body in received)
