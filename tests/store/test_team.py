"""Team mode for real (issue 10): three agent processes, each with its own HOME, name and FUSE
mount (bindfs) of one "NAS" folder, sharing one PostgreSQL state. Tickets are written into the
NAS behind the mounts' backs (as another machine would), so no agent gets an event and each
must poll.

Every ticket ends converted once: one job per input, started once, one output md5-verified, no
"p1 (1).jpg", no part file, whatever happens to the agents: all alive, one SIGKILLed in the
middle (the others take its tickets over once its lease ran out), one SIGSTOPped for longer than
the lease then resumed (it finds its tickets taken and does nothing more for them).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
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
from fusemount import bindfs
from test_agent_pg import env, png

from agent.emulator import RunningEmulator

KEY = "team" * 8
LEASE = 6.0
MakeEmulator = Callable[..., Awaitable[RunningEmulator]]


@pytest.fixture
def emulator_key() -> str:
    return KEY


class Team:
    """A NAS folder, one bindfs mount and one home per agent, and their processes."""

    def __init__(self, tmp: Path, base_url: str, url: str, names: tuple[str, ...]) -> None:
        self.tmp = tmp
        self.nas = tmp / "nas"
        self.nas.mkdir()
        self.url = url
        self.base_url = base_url
        self.names = names
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.stack = contextlib.ExitStack()
        for name in names:
            home = tmp / name
            home.mkdir()
            self.stack.enter_context(bindfs(self.nas, self.mount(name)))
            cfg = {
                "api": {"base_url": base_url, "key": KEY, "requests_per_second": 1000},
                "folders": [{"path": str(self.mount(name)), "share": "nas-inbox"}],
                "state": {"path": str(home / "state.db"), "url": url},
                "team": {"agent_name": name, "lease_seconds": LEASE},
                "tickets": {"settle_seconds": 0.1, "parse_grace_seconds": 1},
                "polling": {
                    "min_interval": 0.2,
                    "max_interval": 0.5,
                    "reconcile_interval": 1,
                    "fs_poll_interval": 0.3,
                },
                "marks": {"heartbeat_seconds": 0.5, "stale_seconds": 2.0},
                "log": {"file": False, "level": "info"},
                # one agent serves its dashboard: the team's views there are checked
                "dashboard": {"enabled": name == "b"},
                "notifications": {"enabled": False},
            }
            (home / "config.yaml").write_text(yaml.safe_dump(cfg))

    def mount(self, name: str) -> Path:
        return self.tmp / f"mnt-{name}"

    def log(self, name: str) -> str:
        try:
            return (self.tmp / name / "agent.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, name: str) -> None:
        home = self.tmp / name
        with open(home / "agent.log", "ab") as out:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "agent", "--config", str(home / "config.yaml"), "run"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**env(), "HOME": str(home)},
            )

    def drop(self, stems: list[str]) -> None:
        for i, stem in enumerate(stems):
            (self.nas / f"{stem}.png").write_bytes(png(("red", "green", "blue")[i % 3]))
            (self.nas / f".{stem}.tmp").write_text(f"input: {stem}.png\ntarget: jpg\n")
            os.rename(self.nas / f".{stem}.tmp", self.nas / f"{stem}.job")

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.stack.close()

    def logs(self) -> str:
        return "\n".join(f"===== {n}\n{self.log(n)[-4000:]}" for n in self.names)


@pytest.fixture
def team_factory(tmp_path: Path, pg_url: str) -> Iterator[Callable[[str, int], Team]]:
    made: list[Team] = []

    def make(base_url: str, n: int = 3) -> Team:
        team = Team(tmp_path, base_url, pg_url, tuple("abc"[:n]))
        made.append(team)
        return team

    yield make
    for team in made:
        team.close()


async def wait_until(cond: Callable[[], bool], timeout: float, what: str, team: Team) -> float:
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}\n{team.logs()}"
        await asyncio.sleep(0.1)
    return time.monotonic() - start


def filed(team: Team, stems: list[str]) -> bool:
    return all((team.nas / f"{s}.job.done").exists() for s in stems)


def held_by(url: str) -> dict[str, str]:
    """Ticket name → the agent whose claim holds it now."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.path, a.name FROM claims c JOIN agents a ON a.id = c.owner"
        ).fetchall()
    return {os.path.basename(p): n for p, n in rows}


def processing(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT path, phase FROM tickets WHERE active").fetchall()
    return {os.path.basename(p): ph for p, ph in rows}


def check_once(team: Team, emu: RunningEmulator, stems: list[str]) -> None:
    """Each ticket converted once: one job per input, started once; one output, its md5 the
    server's; no second copy, no part file, no stray file in the NAS."""
    snap = emu.state.snapshot()
    by_input: dict[str, list[dict[str, Any]]] = {}
    for job in snap["jobs"]:
        for inp in job["inputs"]:
            by_input.setdefault(str(inp["filename"]), []).append(job)
    assert sorted(by_input) == sorted(f"{s}.png" for s in stems), sorted(by_input)
    sums = {o["checksum"] for j in snap["jobs"] for o in j["outputs"]}
    for name, jobs in by_input.items():
        started = [j for j in jobs if j["start_requests"]]
        assert len(started) == 1, (name, jobs)
        assert started[0]["start_requests"] == 1, (name, started[0])
    for s in stems:
        out = team.nas / f"{s}.jpg"
        assert hashlib.md5(out.read_bytes()).hexdigest() in sums, s
    names = sorted(p.name for p in team.nas.iterdir())
    assert not [n for n in names if " (1)" in n or n.endswith(".part")], names
    expected = {f"{s}{ext}" for s in stems for ext in (".png", ".jpg", ".job.done", ".status.yaml")}
    stray = [n for n in names if n not in expected and not n.startswith(".convert-agent")]
    assert not stray, stray


def cli(team: Team, name: str, *args: str) -> Any:
    """``convert-agent ARGS --json`` as agent ``name``'s user runs it (its config, its mount)."""
    home = team.tmp / name
    out = subprocess.run(
        [sys.executable, "-m", "agent", "--config", str(home / "config.yaml"), *args, "--json"],
        capture_output=True,
        text=True,
        env={**env(), "HOME": str(home)},
        timeout=60,
    )
    assert out.returncode == 0 or args[0] == "doctor", out.stdout + out.stderr
    return json.loads(out.stdout)


def dashboard_get(team: Team, name: str, path: str) -> str:
    """GET ``path`` from agent ``name``'s dashboard with the token of its runtime file."""
    import urllib.request

    info = json.loads((team.tmp / name / "state.db.dashboard.json").read_text())
    req = urllib.request.Request(
        info["url"].rstrip("/") + path, headers={"Authorization": f"Bearer {info['token']}"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return str(resp.read().decode())


def accepted_by(team: Team) -> dict[str, int]:
    return {n: len(re.findall(r": accepted \(", team.log(n))) for n in team.names}


async def test_three_agents_on_one_share_convert_each_ticket_once(
    make_emulator: MakeEmulator, team_factory: Callable[..., Team]
) -> None:
    emu = await make_emulator(processing_seconds=0.5)
    team = team_factory(emu.base_url)
    for name in team.names:
        team.start(name)
    await wait_until(
        lambda: all("polling /" in team.log(n) for n in team.names), 30, "agents up", team
    )
    stems = [f"p{i}" for i in range(30)]
    team.drop(stems)
    await wait_until(lambda: filed(team, stems), 90, "every ticket filed", team)
    check_once(team, emu, stems)
    shares = accepted_by(team)
    assert sum(shares.values()) == len(stems), shares  # each ticket accepted by one agent
    assert all(n > 0 for n in shares.values()), shares  # new tickets spread over the team
    assert held_by(team.url) == {}  # filed tickets' claims are given back


async def all_processing(
    team: Team, prefix: str, n: int
) -> tuple[Team, list[str], dict[str, str], str, list[str]]:
    """Start the team, drop ``n`` tickets, wait until every one is processing; the agent
    holding the most of them (the victim) and its tickets."""
    for name in team.names:
        team.start(name)
    await wait_until(
        lambda: all("polling /" in team.log(n) for n in team.names), 30, "agents up", team
    )
    stems = [f"{prefix}{i}" for i in range(n)]
    team.drop(stems)
    await wait_until(
        lambda: (
            len(processing(team.url)) == len(stems)
            and set(processing(team.url).values()) == {"processing"}
        ),
        60,
        "every ticket processing",
        team,
    )
    holders = held_by(team.url)
    victim = max(team.names, key=lambda n: list(holders.values()).count(n))
    theirs = sorted(t for t, n in holders.items() if n == victim)
    assert theirs, holders
    return team, stems, holders, victim, theirs


async def test_a_killed_agents_tickets_are_taken_over_after_its_lease(
    make_emulator: MakeEmulator, team_factory: Callable[..., Team]
) -> None:
    emu = await make_emulator(processing_seconds=4.0)
    team, stems, holders, victim, theirs = await all_processing(team_factory(emu.base_url), "k", 12)
    assert theirs, holders
    # Seeing the team: status lists its agents, list says who holds each ticket, with the
    # paths of the asking user's own mount.
    status = cli(team, "b", "status")
    assert sorted(a["name"] for a in status["team"]["agents"]) == list(team.names), status
    assert sum(a["held"] for a in status["team"]["agents"]) == len(stems), status
    doctor = {c["name"]: c for c in cli(team, "c", "doctor")["checks"]}
    assert doctor["state"]["verdict"] == "ok", doctor["state"]
    for name in team.names:
        assert f"{name} on " in doctor["state"]["detail"], doctor["state"]
    marks = [c for n, c in doctor.items() if n.startswith("share ")]
    assert marks and all("another agent" not in c["detail"] for c in marks), marks
    listed = cli(team, "b", "list")
    assert {Path(r["ticket"]).parent for r in listed} == {team.mount("b")}, listed
    assert {Path(r["ticket"]).name: r["holder"] for r in listed} == holders, listed
    # The dashboard's table is the team's (every ticket, on b's mount, with its holder), and
    # /metrics has a line per agent with the tickets it holds.
    snap = json.loads(dashboard_get(team, "b", "/api/status"))
    shown = {Path(t["ticket"]).name: t["holder"] for t in snap["tickets"]}
    assert shown == holders, shown
    assert {Path(t["ticket"]).parent for t in snap["tickets"]} == {team.mount("b")}
    metrics = dashboard_get(team, "b", "/metrics")
    host = os.uname().nodename
    for name in team.names:
        n = list(holders.values()).count(name)
        line = f'convert_agent_team_agent_tickets_held{{agent="{name}",host="{host}"}} {float(n)}'
        assert line in metrics, (line, metrics)
        assert f'convert_agent_team_agent_running{{agent="{name}",' in metrics
    team.procs[victim].send_signal(signal.SIGKILL)
    team.procs[victim].wait()
    took = await wait_until(
        lambda: (
            all(held_by(team.url).get(t) not in (None, victim) for t in theirs)
            or filed(team, stems)
        ),
        LEASE + 10,
        "the victim's tickets taken over",
        team,
    )
    assert took <= LEASE + 5, took
    await wait_until(lambda: filed(team, stems), 90, "every ticket filed", team)
    check_once(team, emu, stems)
    survivors = "".join(team.log(n) for n in team.names if n != victim)
    assert "taken over from a stopped agent" in survivors
    # why shows the takeover.
    why = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "--config",
            str(team.tmp / "a" / "config.yaml"),
            "why",
            theirs[0].removesuffix(".job"),
        ],
        capture_output=True,
        text=True,
        env={**env(), "HOME": str(team.tmp / "a")},
        timeout=60,
    )
    assert "taken over by agent" in why.stdout, why.stdout + why.stderr


async def test_an_agent_paused_past_its_lease_stops_acting_on_tickets_taken_over(
    make_emulator: MakeEmulator, team_factory: Callable[..., Team]
) -> None:
    emu = await make_emulator(processing_seconds=3.0)
    team, stems, _holders, victim, theirs = await all_processing(
        team_factory(emu.base_url, 2), "s", 8
    )
    os.kill(team.procs[victim].pid, signal.SIGSTOP)
    await wait_until(
        lambda: (
            all(held_by(team.url).get(t) not in (None, victim) for t in theirs)
            or filed(team, stems)
        ),
        LEASE + 10,
        "the paused agent's tickets taken over",
        team,
    )
    await wait_until(lambda: filed(team, stems), 90, "every ticket filed", team)
    os.kill(team.procs[victim].pid, signal.SIGCONT)
    await wait_until(
        lambda: "taken over by another agent" in team.log(victim),
        30,
        "the resumed agent sees its tickets gone",
        team,
    )
    await asyncio.sleep(2.0)  # what it would do wrongly, it does now: checked below
    check_once(team, emu, stems)
    assert team.procs[victim].poll() is None, team.log(victim)[-3000:]
