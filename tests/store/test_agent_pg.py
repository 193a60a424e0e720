"""A real agent process with its state in PostgreSQL (``state.url``): tickets converted against the
emulator, outputs verified; a SIGKILL in the middle and a restart resume without a second job or
a second start; a wrong or unreachable ``state.url`` is refused at start with exit 3, and its
password is shown nowhere."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from conftest import pg_server_or_skip
from pg_server import PgServer
from PIL import Image

from agent.emulator import RunningEmulator

KEY = "pg00" * 8
MakeEmulator = Callable[..., Awaitable[RunningEmulator]]


@pytest.fixture
def emulator_key() -> str:
    return KEY


def png(color: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), color).save(buf, "PNG")
    return buf.getvalue()


def config(tmp: Path, base_url: str, inbox: Path, url: str | None, **extra: Any) -> Path:
    state: dict[str, Any] = {"path": str(tmp / "state.db")}
    if url is not None:
        state["url"] = url
    cfg = {
        "api": {"base_url": base_url, "key": KEY, "requests_per_second": 1000},
        "folders": [str(inbox)],
        "state": state,
        "tickets": {"settle_seconds": 0.1, "parse_grace_seconds": 1},
        "polling": {"min_interval": 0.1, "max_interval": 0.3, "reconcile_interval": 2},
        "log": {"file": False, "level": "info"},
        "dashboard": {"enabled": False},
        "notifications": {"enabled": False},
        **extra,
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def env() -> dict[str, str]:
    keep = ("API2CONVERT_", "CONVERT_AGENT_", "DISPLAY", "WAYLAND_DISPLAY", "DBUS_SESSION")
    return {k: v for k, v in os.environ.items() if not k.startswith(keep)}


def spawn(cfg: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", "--config", str(cfg), *(args or ("run",))],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env(),
        )


async def finish(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError("the agent did not finish in time")
        await asyncio.sleep(0.05)
    return proc.returncode


async def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def phases(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        try:
            rows = conn.execute("SELECT path, phase FROM tickets WHERE active").fetchall()
        except psycopg.errors.UndefinedTable:  # the agent has not migrated the database yet
            return {}
    return {os.path.basename(p): ph for p, ph in rows}


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def check_outputs(inbox: Path, snap: dict[str, Any], stems: list[str]) -> None:
    sums = {o["checksum"] for j in snap["jobs"] for o in j["outputs"]}
    for stem in stems:
        assert (inbox / f"{stem}.job.done").exists(), sorted(p.name for p in inbox.iterdir())
        assert md5(inbox / f"{stem}.jpg") in sums
        assert not (inbox / f"{stem} (1).jpg").exists()
    assert not [p for p in inbox.iterdir() if p.name.endswith(".part")]


async def test_an_agent_on_postgresql_converts_and_resumes_after_a_kill(
    tmp_path: Path, make_emulator: MakeEmulator, pg_url: str
) -> None:
    emu = await make_emulator(processing_seconds=1.5)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    stems = [f"p{i}" for i in range(4)]
    for i, stem in enumerate(stems):
        (inbox / f"{stem}.png").write_bytes(png(["red", "green", "blue", "gray"][i]))
        (inbox / f"{stem}.job").write_text(f"input: {stem}.png\ntarget: jpg\n")
    secret = "Pw-7f3kQx"  # the server trusts loopback: any password is accepted
    url = pg_url.replace("postgres@", f"postgres:{secret}@", 1)
    cfg = config(tmp_path, emu.base_url, inbox, url)
    log = tmp_path / "agent.log"
    proc = spawn(cfg, log)
    try:
        # Killed once every ticket's job is started (recorded in PostgreSQL) and none is done.
        await wait_until(
            lambda: set(phases(pg_url).values()) == {"processing"} and len(phases(pg_url)) == 4,
            30,
            "every ticket processing",
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = emu.state.snapshot()
        assert before["jobs_created"] == 4
        assert not list(inbox.glob("*.jpg"))
        code = await finish(spawn(cfg, log, "run", "--once"))
        assert code == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    snap = emu.state.snapshot()
    check_outputs(inbox, snap, stems)
    assert snap["jobs_created"] == 4  # the restart created no second job
    assert all(n == 1 for n in snap["create_requests_by_key"].values())
    assert all(j["start_requests"] == 1 for j in snap["jobs"])  # and started none twice
    assert set(phases(pg_url).values()) == {"done"}
    assert not (tmp_path / "state.db").exists()  # the state is in PostgreSQL only
    # status, list and why read it too; the password is in no output, log, sidecar or mark.
    for args in (("status", "--json"), ("list", "--json"), ("why", "p1")):
        out = subprocess.run(
            [sys.executable, "-m", "agent", "--config", str(cfg), *args],
            capture_output=True,
            text=True,
            env=env(),
            timeout=60,
        )
        assert out.returncode == 0, (args, out.stdout, out.stderr)
        assert "p1" in out.stdout or '"done": 4' in out.stdout, out.stdout
        assert secret not in out.stdout + out.stderr
    assert secret not in log.read_text()
    for f in inbox.iterdir():
        if f.suffix in (".yaml", ".json") or f.name.startswith("."):
            assert secret not in f.read_text(errors="replace"), f


@pytest.fixture(scope="module")
def own_server() -> Iterator[PgServer]:
    """A server of this module's own: one test stops and restarts it."""
    yield from pg_server_or_skip()


async def test_the_agent_waits_while_the_database_is_away_and_goes_on_when_it_is_back(
    tmp_path: Path, make_emulator: MakeEmulator, own_server: PgServer
) -> None:
    emu = await make_emulator(processing_seconds=3.0)
    url = own_server.create_db("lost")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    stems = [f"q{i}" for i in range(3)]
    for i, stem in enumerate(stems):
        (inbox / f"{stem}.png").write_bytes(png(["red", "green", "blue"][i]))
        (inbox / f"{stem}.job").write_text(f"input: {stem}.png\ntarget: jpg\n")
    cfg = config(tmp_path, emu.base_url, inbox, url)
    log = tmp_path / "agent.log"
    proc = spawn(cfg, log, "run", "--once")
    try:
        await wait_until(
            lambda: len(phases(url)) == 3 and set(phases(url).values()) == {"processing"},
            30,
            "every ticket processing",
        )
        own_server.stop("immediate")
        # The jobs finish meanwhile; the agent cannot record it and so takes no further step.
        await wait_until(
            lambda: "could not save the state" in log.read_text(), 20, "the loss noticed"
        )
        await wait_until(
            lambda: all(j["status"] == "completed" for j in emu.state.snapshot()["jobs"]),
            20,
            "the jobs completed",
        )
        assert not list(inbox.glob("*.jpg"))  # nothing placed that is not recorded first
        assert proc.poll() is None  # it waits, it does not give up

        def waiting_for() -> list[Any]:
            return [
                (yaml.safe_load((inbox / f"{s}.status.yaml").read_text()) or {}).get("waiting_for")
                for s in stems
            ]

        # Its sidecars say what it waits for (and still show the step they were at).
        await wait_until(
            lambda: all(w and "state database" in w for w in waiting_for()),
            20,
            "the sidecars saying the agent waits for the state database",
        )
        assert secret_free(inbox)
        own_server.pg_ctl_start()
        assert await finish(proc, 60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if not (own_server.data / "postmaster.pid").exists():
            own_server.pg_ctl_start()
    snap = emu.state.snapshot()
    check_outputs(inbox, snap, stems)
    assert snap["jobs_created"] == 3
    assert all(j["start_requests"] == 1 for j in snap["jobs"])
    assert set(phases(url).values()) == {"done"}
    assert "internal error" not in log.read_text()
    assert waiting_for() == [None, None, None]  # said no more once it was back


def secret_free(inbox: Path) -> bool:
    return all("@" not in (p.read_text(errors="replace")) for p in inbox.glob("*.status.yaml"))


async def test_a_wrong_or_unreachable_state_url_exits_3_without_its_password(
    tmp_path: Path, make_emulator: MakeEmulator, pg_server: PgServer
) -> None:
    emu = await make_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    secret = "pw-Zq81x"
    with socket_closed() as port:
        cases = {
            "unreachable": f"postgresql://agent:{secret}@127.0.0.1:{port}/state",
            "no such database": pg_server.url("missing_db", password=secret),
            "not a postgresql url": f"mysql://agent:{secret}@127.0.0.1/state",
        }
        for what, url in cases.items():
            cfg = config(tmp_path, emu.base_url, inbox, url)
            log = tmp_path / f"{what}.log"
            code = await finish(spawn(cfg, log, "run", "--once"), 30)
            out = log.read_text()
            assert code == 3, (what, out)
            assert "state" in out and secret not in out, (what, out)
        # The same from the environment, which wins over the file.
        cfg = config(tmp_path, emu.base_url, inbox, None)
        log = tmp_path / "env.log"
        with open(log, "ab") as out_f:
            proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "--config", str(cfg), "run", "--once"],
                stdout=out_f,
                stderr=subprocess.STDOUT,
                env={**env(), "CONVERT_AGENT_STATE_URL": cases["unreachable"]},
            )
        assert await finish(proc, 30) == 3
        text = log.read_text()
        assert str(port) in text and secret not in text, text


class socket_closed:
    """A loopback port nothing listens on (bound, then closed)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        return None


async def test_a_state_lost_while_the_agent_starts_is_refused_with_exit_3s_message(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server going away between the state's opening and the agent's first reads (a team's
    ``reclaim_own``; the scheduler no longer reads the database at start) is the same clear
    refusal as an unreachable ``state.url`` (ConfigError: exit 3), not a traceback and exit 1
    (found by the team torture campaign, seed 11: an agent restarted while PostgreSQL
    restarted)."""
    from agent.config import (
        ApiConfig,
        Config,
        DashboardConfig,
        FolderConfig,
        LogConfig,
        NotificationsConfig,
        StateConfig,
        TeamConfig,
    )
    from agent.daemon import Agent
    from agent.errors import ConfigError
    from agent.store.postgres import PgStore

    def lost(*_: Any) -> Any:
        raise psycopg.OperationalError("connection failed: Connection refused")

    monkeypatch.setattr(PgStore, "reclaim_own", lost)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = Config(
        api=ApiConfig(base_url="http://127.0.0.1:9/v2", key="k" * 32),
        folders=(FolderConfig(path=inbox, share="inbox"),),
        state=StateConfig(path=tmp_path / "state.db", url=pg_url),
        team=TeamConfig(agent_name="a", lease_seconds=6),
        log=LogConfig(file=None),
        dashboard=DashboardConfig(enabled=False),
        notifications=NotificationsConfig(enabled=False),
    )
    with pytest.raises(ConfigError) as caught:
        await Agent(cfg).run()
    assert "while starting" in caught.value.message and "Connection refused" in caught.value.message


async def test_a_ticket_whose_last_writes_were_lost_is_filed_again(
    tmp_path: Path, make_emulator: MakeEmulator, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database drops the session while the group that records a ticket filed is on its
    way (found by the team campaign, seed 21: a server restart right after a filing): the
    writes are undone, and no act waits to take them again, since the ticket's task had ended.
    The agent reads the database back and goes on with it: the ticket ends filed there too,
    not "done, never filed" for ever (its claim, in a team, never given back)."""
    from agent.config import load_config
    from agent.daemon import Agent
    from agent.store.postgres import PgStore

    emu = await make_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "f.png").write_bytes(png("red"))
    (inbox / "f.job").write_text("input: f.png\ntarget: jpg\n")
    cut: list[str] = []
    real_fenced = PgStore._fenced

    def fenced(self: PgStore, group: Any) -> list[tuple[str, Any]]:
        # the flush's statements are being sent: the session drops (as at a server restart)
        filing = ("UPDATE tickets SET" in sql and " filed = " in sql for sql, _ in group.stmts)
        if not cut and any(filing):
            cut.append("the filing's group")
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return real_fenced(self, group)

    monkeypatch.setattr(PgStore, "_fenced", fenced)
    agent = Agent(load_config(config(tmp_path, emu.base_url, inbox, pg_url), {}))
    task = asyncio.create_task(agent.run())

    def filed() -> bool:
        with psycopg.connect(pg_url) as conn:
            row = conn.execute("SELECT phase, filed FROM tickets WHERE active").fetchone()
        return row == ("done", True)

    try:
        await wait_until(lambda: bool(cut) or task.done(), 30, "the filing's group on its way")
        await wait_until(lambda: filed() or task.done(), 30, "the ticket filed in the database")
        assert not task.done(), task
    finally:
        agent.request_stop()
        await asyncio.wait_for(task, 30)
    assert (inbox / "f.job.done").exists() and not (inbox / "f.job").exists()
    assert len(list(inbox.glob("f*.jpg"))) == 1  # placed once
    assert emu.state.snapshot()["jobs_created"] == 1
