"""The torture campaign in team mode (issue 10): ``scripts/torture --team 3``.

Several real agent processes share one PostgreSQL state (a real server in a temporary directory,
tests/store/pg_server.py) and one "NAS" folder, each through its own bindfs FUSE mount and with
its own HOME and agent name, so that no agent gets an event for a change another made and each
must poll, as on NFS/SMB. Tickets of the single-agent campaign's kinds are written into the NAS
behind the mounts' backs (as another machine would); 40 % at the start, the rest during the first
two thirds of the cycles. Each cycle (after a random pause) does one of:

* ``kill``: SIGKILL an agent; it is restarted at once (its own claims are freed by its restart)
  or only after its lease ran out (the others take its tickets over);
* ``stop``: SIGSTOP an agent, SIGCONT it once its lease ran out plus up to a few seconds (the
  others take over meanwhile; it must find its tickets gone and act on none of them);
* ``pg-restart``: the PostgreSQL server stopped (immediate) and started again, sometimes after
  a few seconds down;
* ``pg-drop``: the sessions of one agent (or of all) terminated (``pg_terminate_backend``);

and the emulator's transient faults are switched as in the single-agent campaign. Then every
agent runs undisturbed until every ticket is filed, is stopped with SIGTERM, and the invariant
checker gets the NAS, the state read from PostgreSQL (share paths mapped to the NAS) and the
emulator's state: every ticket one outcome, each job started at most once and one started per
ticket, every output placed once and md5-verified, no temp or part file, nothing written outside
the share and the agents' own folders.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: fusemount
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "store"))  # tests/store: pg_server
from campaign import KEY, Campaign, Emulator, Options, Summary, _agent_env, _web_server
from fusemount import bindfs
from invariants import Manifest, check, listing, outside_changes
from pg_server import PgServer, missing_reason

from agent.store.shares import PathMap

SHARE = "nas-inbox"
CYCLE_KINDS = ("kill", "stop", "pg-restart", "pg-drop")
CYCLE_WEIGHTS = (35, 20, 12, 33)


def _pg() -> Any:
    import psycopg

    return psycopg


def _client_ports(pid: int, server_port: int) -> list[int]:
    """Local ports of the TCP connections of process ``pid`` to ``server_port`` (loopback)."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports = []
    with contextlib.suppress(OSError), open(f"/proc/{pid}/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            local, remote, inode = parts[1], parts[2], parts[9]
            if inode in inodes and int(remote.split(":")[1], 16) == server_port:
                ports.append(int(local.split(":")[1], 16))
    return ports


class TeamCampaign(Campaign):
    def __init__(self, opts: Options) -> None:
        super().__init__(opts)
        self.inbox.rmdir()
        self.inbox = self.work / "nas"  # the share itself; agents see it only through mounts
        self.inbox.mkdir()
        self.names = tuple(f"agent{i + 1}" for i in range(opts.team))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.stopped: dict[str, float] = {}  # name → monotonic time of its SIGCONT
        self.restart_at: dict[str, float] = {}  # name → monotonic time of its delayed restart
        self.pg: PgServer | None = None
        self.url = ""
        self.kinds: Counter[str] = Counter()
        self.sessions_dropped = 0
        self.refused_starts = 0  # exit 3: started while the server was down
        self.pm = PathMap([(self.inbox, SHARE)])

    # ----------------------------------------------------------------- agents

    def home_of(self, name: str) -> Path:
        return self.work / name

    def mount(self, name: str) -> Path:
        return self.work / f"mnt-{name}"

    def agent_log_of(self, name: str) -> Path:
        return self.home_of(name) / "agent.log"

    def _config(self, name: str, base_url: str) -> Path:
        home = self.home_of(name)
        cfg = {
            "api": {"base_url": base_url, "key": KEY, "requests_per_second": 1000},
            "folders": [{"path": str(self.mount(name)), "share": SHARE}],
            "state": {"path": str(home / "state" / "state.db"), "url": self.url},
            "team": {"agent_name": name, "lease_seconds": self.opts.lease},
            "tickets": {
                "settle_seconds": 0.1,
                "parse_grace_seconds": 1,
                "cancel_grace_seconds": 0.5,
            },
            "polling": {
                "min_interval": 0.2,
                "max_interval": 1.0,
                "reconcile_interval": 2,
                "fs_poll_interval": 0.5,
            },
            "marks": {"heartbeat_seconds": 0.5, "stale_seconds": 2.0},
            "log": {"file": False, "level": "info"},
            "dashboard": {"enabled": False},
            "notifications": {"enabled": False},
        }
        path = home / "config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def _start(self, name: str) -> None:
        log = self.agent_log_of(name)
        with open(log, "ab") as out:
            out.write(f"\n===== run {time.time():.3f}\n".encode())
            out.flush()
            self.procs[name] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agent",
                    "--config",
                    str(self.home_of(name) / "config.yaml"),
                    "run",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_agent_env(self.home_of(name)),
                cwd=self.home_of(name),
            )

    def _check_alive(self) -> None:
        """An agent that exited by itself (not killed by us) is a violation; it is restarted."""
        s = self.summary
        for name, proc in self.procs.items():
            if name in self.restart_at or proc.poll() is None:
                continue
            tail = self._tail(name)
            if proc.returncode == 3 and (
                "cannot open the PostgreSQL state" in tail or "lost the PostgreSQL state" in tail
            ):
                # started while the server was down: refused with a clear message (exit 3), as
                # it must; a service manager starts it again
                self.refused_starts += 1
            else:
                s.violations.append(
                    f"cycle {s.cycles}: {name} exited by itself ({proc.returncode})"
                )
            self._start(name)

    def _tail(self, name: str) -> str:
        with open(self.agent_log_of(name), "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 2000))
            return f.read().decode(errors="replace")

    def _due(self, everything: bool = False) -> None:
        """SIGCONTs and delayed restarts whose time has come (all of them with ``everything``)."""
        now = time.monotonic()
        for name, at in list(self.stopped.items()):
            if everything or at <= now:
                del self.stopped[name]
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.procs[name].pid, signal.SIGCONT)
                self.log(f"{name}: SIGCONT")
        for name, at in list(self.restart_at.items()):
            if everything or at <= now:
                del self.restart_at[name]
                self._start(name)
                self.log(f"{name}: restarted")

    # ----------------------------------------------------------------- PostgreSQL

    def _held_phases(self, name: str) -> Counter[str]:
        """Phases of the tickets agent ``name`` holds live claims on (empty when unreachable)."""
        c: Counter[str] = Counter()
        with contextlib.suppress(Exception):
            with _pg().connect(self.url, connect_timeout=2) as conn:
                rows = conn.execute(
                    "SELECT t.phase, t.filed, count(*) FROM claims c"
                    " JOIN agents a ON a.id = c.owner JOIN tickets t ON t.path = c.path"
                    " WHERE t.active AND a.name = %s AND a.stopped_at IS NULL"
                    " AND c.lease_until > now() GROUP BY t.phase, t.filed",
                    [name],
                ).fetchall()
            for phase, filed, n in rows:
                if phase in ("done", "failed", "canceled"):
                    if not filed:
                        c[f"filing({phase})"] += n
                else:
                    c[phase] += n
        return c

    def _terminate(self, names: list[str]) -> int:
        assert self.pg is not None
        ports = [p for n in names for p in _client_ports(self.procs[n].pid, self.pg.port)]
        if not ports:
            return 0
        with contextlib.suppress(Exception):
            with _pg().connect(self.url, connect_timeout=3, autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = 'convert-agent' AND client_port = ANY(%s)",
                    [ports],
                ).fetchall()
            return sum(1 for (ok,) in rows if ok)
        return 0

    # ----------------------------------------------------------------- cycles

    def _team_cycle(self, emu: Emulator) -> None:
        s, opts = self.summary, self.opts
        self._due()
        self._check_alive()
        faults = self._pick_faults()
        self._harvest_faults(emu)
        emu.set_faults(faults)
        if self.pending:
            self._drop(self.per_cycle)
        time.sleep(self._delay())
        self._due()
        kind = self.rng.choices(CYCLE_KINDS, CYCLE_WEIGHTS)[0]
        name = self.rng.choice(self.names)
        if kind == "stop" and (self.stopped or name in self.restart_at):
            kind = "kill"  # one agent paused at a time; a dead one cannot be paused
        if kind == "kill" and name in self.restart_at:
            kind = "pg-drop"
        if kind == "kill":
            s.phases_at_kill.update(self._held_phases(name))
            proc = self.procs[name]
            proc.kill()
            proc.wait()
            self.stopped.pop(name, None)
            s.kills += 1
            if self.rng.random() < 0.5 or len(self.restart_at) + 1 >= len(self.names):
                self._start(name)  # (one agent at least stays up)
                kind = "kill+restart"
            else:
                self.restart_at[name] = time.monotonic() + opts.lease + self.rng.uniform(0.5, 3)
                kind = "kill+restart-after-lease"
        elif kind == "stop":
            s.phases_at_kill.update(self._held_phases(name))
            os.kill(self.procs[name].pid, signal.SIGSTOP)
            self.stopped[name] = time.monotonic() + opts.lease + self.rng.uniform(0.5, 4)
        elif kind == "pg-restart":
            assert self.pg is not None
            port = self.pg.port
            self.pg.stop("immediate")
            if self.rng.random() < 0.3:
                time.sleep(self.rng.uniform(1, 5))
                kind = "pg-stop+start"
            self.pg.pg_ctl_start()
            if self.pg.port != port:
                s.violations.append("the PostgreSQL server came back on another port")
        else:
            alive = [n for n in self.names if n not in self.restart_at]
            every = not alive or self.rng.random() < 0.25
            targets = alive if every else [self.rng.choice(alive)]
            n = self._terminate(targets)
            kind = "pg-drop(all)" if len(targets) > 1 else "pg-drop"
            self.sessions_dropped += n
            name = f"{','.join(targets) or '-'}: {n} sessions"

        self.kinds[kind] += 1
        self.log(f"cycle {s.cycles}: {kind} {name}")
        s.cycles += 1

    def _all_filed(self) -> bool:
        return all(
            not t.path.exists()
            and (
                t.path.with_name(t.path.name + ".done").exists()
                or t.path.with_name(t.path.name + ".failed").exists()
            )
            for t in self.dropped
        )

    # ----------------------------------------------------------------- run

    def run(self) -> Summary:
        opts, s = self.opts, self.summary
        reason = missing_reason()
        if reason is not None:
            raise SystemExit(f"team mode needs a PostgreSQL server: {reason}")
        t0 = time.monotonic()
        s.workdir = str(self.work)
        s.expectation = (
            "permanent faults: each ticket done or failed with a reason"
            if opts.permanent
            else "transient faults only: every ticket done, exactly once"
        )
        flags = [
            f"--team {opts.team}",
            f"--seed {opts.seed}",
            f"--tickets {opts.tickets}",
            f"--cycles {opts.kills}",
            f"--lease {opts.lease:g}",
        ]
        flags += [
            f
            for f, on in (
                ("--no-faults", not opts.faults),
                ("--permanent", opts.permanent),
                ("--ignore-idempotency", opts.ignore_idempotency),
                ("--ignore-range", opts.ignore_range),
            )
            if on
        ]
        s.replay = "scripts/torture " + " ".join(flags)
        self.pg = PgServer.start()
        emu = Emulator(opts, self.work / "emulator.log")
        try:
            with contextlib.ExitStack() as mounts, _web_server(self.srv) as url_base:
                self.url = self.pg.create_db("team")
                for name in self.names:
                    self.home_of(name).mkdir()
                    mounts.enter_context(bindfs(self.inbox, self.mount(name)))
                    self._config(name, emu.base_url)
                for i in range(opts.tickets):
                    self._make_ticket(i, url_base, emu)
                s.tickets = len(self.dropped)
                protected = {p: listing(p.parent)[p.name] for p in self.input_files} | {
                    u: listing(u.parent)[u.name] for t in self.dropped for u in t.user_files
                }
                skip = [self.inbox, *(self.mount(n) for n in self.names)]
                before = listing(self.work, exclude=skip)
                for name in self.names:
                    self._start(name)
                self._drop(max(1, len(self.pending) * 2 // 5))
                spread = max(1, (opts.kills * 2) // 3) if opts.kills else 10
                self.per_cycle = max(1, -(-len(self.pending) // spread))
                try:
                    while s.cycles < opts.kills:
                        self._team_cycle(emu)
                    self._drop(len(self.pending))
                    self._due(everything=True)
                    self._check_alive()
                    self._harvest_faults(emu)
                    emu.set_faults([])
                    self.log("every agent runs until every ticket is filed")
                    self._finish()
                finally:
                    self._stop_all()
                state = emu.state()
                after = listing(self.work, exclude=skip)
                rows = self._rows()
                figures = self._figures(state, rows[0])
        finally:
            emu.stop()
            self.pg.remove()
        manifest = Manifest(
            roots=[self.inbox],
            db_path=self.work / "unused",
            tickets=self.dropped,
            input_files=set(self.input_files),
            adopted_jobs=set(self.adopted),
            rows=rows,
        )
        s.violations += check(manifest, state)
        for p, sig in protected.items():
            try:
                now = listing(p.parent).get(p.name)
            except OSError:
                now = None
            if now != sig:
                s.violations.append(f"a file the agent must not touch changed: {p.name}")
        allowed = ["emulator.log"]
        for name in self.names:
            allowed += [f"{name}/state/*", f"{name}/agent.log", f"{name}/config.yaml"]
        s.violations += outside_changes(before, after, allowed=allowed)
        s.done = sum(1 for t in rows[0] if t["active"] and t["phase"] == "done")
        s.failed = sum(1 for t in rows[0] if t["active"] and t["phase"] == "failed")
        s.seconds = time.monotonic() - t0
        s.team = figures
        if not s.violations and self.made_work and not opts.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        return s

    def _finish(self) -> None:
        deadline = time.monotonic() + self.opts.final_timeout
        while not self._all_filed():
            self._check_alive()
            if time.monotonic() > deadline:
                left = [t.path.name for t in self.dropped if t.path.exists()]
                self.summary.violations.append(
                    f"not every ticket filed {self.opts.final_timeout:.0f}s after the last "
                    f"cycle: {len(left)} left, e.g. {left[:5]}"
                )
                return
            time.sleep(0.5)
        # a moment for the last claims to be released and sidecars written
        time.sleep(2 * self.opts.lease / 4)

    def _stop_all(self) -> None:
        self._due(everything=True)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                code = proc.wait(10)
            except subprocess.TimeoutExpired:
                self.summary.violations.append(f"{name}: SIGTERM did not stop it in 10 s")
                proc.kill()
                proc.wait()
            else:
                if code != 0:
                    self.summary.violations.append(f"{name}: exit code {code} after SIGTERM")

    def _rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
        """The state as the checker reads it, share paths mapped to the NAS folder."""
        from psycopg.rows import dict_row

        with _pg().connect(self.url, row_factory=dict_row) as conn:
            tickets = [dict(r) for r in conn.execute("SELECT * FROM tickets ORDER BY id")]
            outputs = [dict(r) for r in conn.execute("SELECT * FROM outputs ORDER BY id")]
        for t in tickets:
            t["path"], t["root"] = self.pm.loc(t["path"]), self.pm.loc(t["root"])
        return tickets, outputs, "ok"

    def _figures(self, state: dict[str, Any], rows_t: list[dict[str, Any]]) -> dict[str, Any]:
        jobs = [j for j in state.get("jobs", []) if j["id"] not in self.adopted]
        accepted: dict[str, int] = {}
        done: dict[str, int] = {}
        took: dict[str, int] = {}
        for name in self.names:
            try:
                text = self.agent_log_of(name).read_text(errors="replace")
            except OSError:
                text = ""
            accepted[name] = len(re.findall(r": accepted \(", text))
            done[name] = len(re.findall(r"\]: done$", text, re.M))
            took[name] = len(re.findall(r": taken over from a stopped agent", text))
        with _pg().connect(self.url) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE event = 'claimed'),"
                " count(DISTINCT ticket_id) FILTER (WHERE event = 'claimed') FROM history"
            ).fetchone()
            assert row is not None
            claims_left = conn.execute("SELECT count(*) FROM claims").fetchone()
        return {
            "agents": len(self.names),
            "lease": self.opts.lease,
            "cycles": dict(self.kinds),
            "sessions_dropped": self.sessions_dropped,
            "refused_starts": self.refused_starts,
            "records": len(rows_t),
            "jobs_created": len(jobs),
            "jobs_started": sum(1 for j in jobs if j["starts"]),
            "start_requests": sum(int(j["start_requests"]) for j in jobs),
            "jobs_unstarted": sum(1 for j in jobs if not j["starts"]),
            "takeovers": int(row[0]),
            "tickets_taken_over": int(row[1]),
            "claims_left": int(claims_left[0]) if claims_left else -1,
            "accepted": accepted,
            "done_by": done,
            "took_over": took,
        }


def run_team_campaign(opts: Options) -> Summary:
    return TeamCampaign(opts).run()
