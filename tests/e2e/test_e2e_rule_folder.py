"""A rule folder converts plain files dropped into it, and never its own outputs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from e2e_harness import (
    emulator_outputs,
    invariants,
    jpg_bytes,
    md5,
    names,
    png_bytes,
    run_agent,
    spawn_agent,
    stop_agent,
    wait_for,
    wait_for_log,
    write_config,
)
from waits import WORK_ROUTES, any_of, files_stay, no_new_requests, same, stays_quiet

from agent.emulator import RunningEmulator
from agent.foldermark import MARK_NAME

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]

# Reconcile scans come every 0.2 s here, so the quiet window after the last ticket is done spans
# several of them (a pass that took one of the folder's files up again would be seen at once).
# The agent's folder mark (MARK_NAME) is there while it runs.
RECONCILE = {"reconcile_interval": 0.2}
QUIET = 1.0


async def test_a_rule_folder_converts_a_plain_png_dropped_in(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    rule = tmp_path / "to-jpg"
    rule.mkdir()
    folders = [{"path": str(rule), "include": ["*.png"], "defaults": {"target": "jpg"}}]
    cfg = write_config(
        tmp_path / "c.yaml", emu.base_url, folders, tmp_path / "state.db", polling=RECONCILE
    )
    log = tmp_path / "agent.log"
    proc = spawn_agent(cfg, "run", log=log)
    expected = {"photo.png", "photo.jpg", "photo.png.job.done", "photo.png.status.yaml"}
    try:
        await wait_for_log(log, "watching")
        (rule / "photo.png").write_bytes(png_bytes(color="navy"))
        await wait_for(lambda: names(rule) - {MARK_NAME} == expected, 15, f"{sorted(expected)}")
        sent = len(emu.state.requests)
        await stays_quiet(
            QUIET,
            any_of(
                same("jobs created", lambda: emu.state.create_requests, 1),
                files_stay(rule, expected, ignore={MARK_NAME}),
                no_new_requests(emu, since=sent, routes=WORK_ROUTES),
            ),
            "reconcile passes find nothing new to do",
        )
    finally:
        code = await stop_agent(proc)
    assert code == 0, log.read_text()[-3000:]
    state = emu.state.snapshot()
    assert len(state["jobs"]) == 1 and state["jobs"][0]["targets"] == ["jpg"]
    assert md5(rule / "photo.jpg") == emulator_outputs(state)["photo.jpg"]
    assert names(rule) == expected, names(rule)
    assert invariants(rule, state) == []


async def test_a_rule_folder_never_converts_its_own_outputs_even_after_a_restart(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    """The outputs (jpg) match the folder's include too: they must not become tickets."""
    emu = await make_emulator()
    rule = tmp_path / "to-jpg"
    rule.mkdir()
    folders = [{"path": str(rule), "include": ["*.png", "*.jpg"], "defaults": {"target": "jpg"}}]
    cfg = write_config(
        tmp_path / "c.yaml", emu.base_url, folders, tmp_path / "state.db", polling=RECONCILE
    )
    log = tmp_path / "agent.log"
    proc = spawn_agent(cfg, "run", log=log)
    done = {f"{s}.png{end}" for s in "ab" for end in ("", ".job.done", ".status.yaml")}
    done |= {"a.jpg", "b.jpg"}
    try:
        await wait_for_log(log, "watching")
        (rule / "a.png").write_bytes(png_bytes(color="navy"))
        (rule / "b.png").write_bytes(png_bytes(color="olive"))
        await wait_for(lambda: names(rule) - {MARK_NAME} == done, 15, "both tickets done")
        sent = len(emu.state.requests)
        await stays_quiet(
            QUIET,
            any_of(
                same("jobs created", lambda: emu.state.create_requests, 2),
                files_stay(rule, done, ignore={MARK_NAME}),
                no_new_requests(emu, since=sent, routes=WORK_ROUTES),
            ),
            "the outputs (a.jpg, b.jpg) are not taken up as tickets",
        )
    finally:
        await stop_agent(proc)
    assert len(emu.state.jobs) == 2
    assert not list(rule.glob("*.jpg.job*")), names(rule)

    # a new process knows its outputs from the state file; a user's own jpg is still converted
    (rule / "mine.jpg").write_bytes(jpg_bytes())
    code, out = await run_agent(cfg, "run", "--once")
    assert code == 0, out
    assert len(emu.state.jobs) == 3
    state = emu.state.snapshot()
    assert md5(rule / "mine (1).jpg") == emulator_outputs(state)["mine.jpg"]  # beside the input
    tickets = {f"{s}.job.done" for s in ("a.png", "b.png", "mine.jpg")}
    sidecars = {f"{s}.status.yaml" for s in ("a.png", "b.png", "mine.jpg")}
    files = {"a.png", "b.png", "a.jpg", "b.jpg", "mine.jpg", "mine (1).jpg"}
    assert names(rule) == files | tickets | sidecars, names(rule)
