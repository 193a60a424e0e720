"""The soak campaign (issue 13): the real agent against the emulator for a set time.

Tickets are dropped at a steady rate with bursts (conversions of PNG, GIF and JPEG inputs of a
few sizes, URL inputs, and some invalid tickets that must fail with a reason), transient faults
are switched on and off at the emulator's control endpoint, a dashboard client follows the SSE
feed and reads ``/metrics``, ``convert-agent status`` is called every few seconds, a watched
folder is removed and restored, and the agent is restarted gracefully once in the middle.
Tickets go into "wave" folders; once a wave is filed (its tickets renamed, and their records
saying so: see ``STATE_SETTLE_SECONDS``) the torture invariant checker judges it (nothing lost,
stuck, corrupt or stray) and the wave is removed, as a user collects outputs. Records retention
removed before their wave was judged are judged from copies (``KEEP_ROWS_SECONDS``).

Every ``--sample-seconds`` (60) the agent's RSS, open descriptors, threads, asyncio tasks
(``/metrics``), inotify watches (``/proc/PID/fdinfo``), state file size and ``status`` time go to
``soak.csv`` and ``soak.png`` in the work folder; the run is judged at the end (exit 1 on a
failed check). ``state.keep_finished`` is 1000 during the soak.

Usage: scripts/soak [--minutes 60] [--rate 6] [--seed 1] [--work DIR] [--sample-seconds 60]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "torture"))
sys.path.insert(0, str(REPO))

from campaign import KEY, Emulator, Options, _agent_env, _gif, _png, _web_server  # noqa: E402
from invariants import DroppedTicket, Manifest, _db_rows, check  # noqa: E402

KEEP_FINISHED = 1000
# The agent renames a ticket (NAME.job.done) before it records the filing: the record is
# committed once the disk batch holding the rename (other tickets' sidecars and renames, the
# folders' fsyncs) is done, at the event loop's next turn. Under load that is seconds after the
# rename is visible (0.8 to 1.7 s in an 8-minute soak beside CPU and fsync hogs). A wave is judged
# once its records say filed too, or once this long has passed since its files did: a filing
# that is never recorded is still reported ("done but never filed").
STATE_SETTLE_SECONDS = 60.0
# Retention keeps the newest KEEP_FINISHED filed records, and as many tombstones: a wave judged
# late (its last ticket still running while thousands of others were filed: an agent far behind)
# has lost its first records, and beyond 2 x KEEP_FINISHED filings their tombstones too. The
# records of filed tickets of the waves not judged yet are copied this often (a record outlives
# a thousand filings, 100 s at the agent's fastest), and the checker is given them back.
KEEP_ROWS_SECONDS = 5.0
RSS_GROWTH_MIB = 5.0
# Transient faults only (each is retried): every ticket that is not invalid must end done. No
# 503 or 429: the request budget reads those as the service pushing back and slows every
# request down (docs/decisions.md, Request budget), which a soak is not about.
FAULTS = [
    {"route": "create", "kind": "error", "param": 500, "rate": 0.03},
    {"route": "get", "kind": "error", "param": 502, "rate": 0.03},
    {"route": "upload", "kind": "error", "param": 502, "rate": 0.03},
    {"route": "download", "kind": "error", "param": 500, "rate": 0.03},
    {"route": "any", "kind": "drop", "rate": 0.01},
]


@dataclass
class Wave:
    folder: Path
    tickets: list[DroppedTicket] = field(default_factory=list)
    inputs: set[Path] = field(default_factory=set)
    closed: bool = False
    files_filed_at: float | None = None  # monotonic time its tickets were all seen renamed


@dataclass
class Sample:
    t: float
    pid: int
    rss_mib: float
    fds: int
    threads: int
    tasks: int
    watches: int
    state_kib: float
    wal_kib: float
    status_ms: float
    dropped: int
    judged: int
    sse_events: int
    note: str = ""


def proc_stats(pid: int) -> tuple[float, int, int, int]:
    """RSS (MiB), open descriptors, threads and inotify watches of a process."""
    rss = threads = 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    fds = watches = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        fds += 1
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    watches += sum(1 for line in info if line.startswith("inotify wd:"))
    return rss, fds, int(threads), watches


class Agent:
    """The agent process, its dashboard (runtime file) and a client following its SSE feed."""

    def __init__(self, config: Path, work: Path, env: dict[str, str], db: Path) -> None:
        self.config, self.work, self.env, self.db = config, work, env, db
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = self.token = ""
        self.sse_events = 0
        self._sse_stop = threading.Event()
        self._sse: threading.Thread | None = None

    def start(self) -> None:
        out = open(self.work / "agent.out", "ab")  # noqa: SIM115 - the child keeps a copy
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "--config", str(self.config), "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=REPO,
        )
        out.close()
        runtime = self.db.with_name(self.db.name + ".dashboard.json")
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError, ValueError):
                info = json.loads(runtime.read_text())
                if info.get("pid") == self.proc.pid:
                    self.url, self.token = info["url"].rstrip("/"), info["token"]
                    break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the agent did not start (see agent.out)")
            time.sleep(0.1)
        self._sse_stop.clear()
        self._sse = threading.Thread(target=self._follow, daemon=True)
        self._sse.start()

    def stop(self) -> int:
        assert self.proc is not None
        self._sse_stop.set()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        if self._sse is not None:
            self._sse.join(10)
        return code

    def _get(self, path: str, timeout: float = 10) -> bytes:
        req = urllib.request.Request(self.url + path)
        req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return bytes(r.read())

    def tasks(self) -> int:
        for line in self._get("/metrics").decode().splitlines():
            if line.startswith("convert_agent_asyncio_tasks "):
                return int(float(line.split()[1]))
        return -1

    def _follow(self) -> None:
        """A dashboard page: the SSE feed, read as it comes (reconnects after a drop)."""
        while not self._sse_stop.is_set():
            try:
                req = urllib.request.Request(self.url + "/api/events")
                req.add_header("Authorization", f"Bearer {self.token}")
                with urllib.request.urlopen(req, timeout=30) as r:
                    for line in r:
                        if self._sse_stop.is_set():
                            return
                        if line.startswith(b"event: snapshot"):
                            self.sse_events += 1
            except OSError:
                time.sleep(0.5)

    def status_seconds(self) -> float:
        began = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "agent", "--config", str(self.config), "status", "--json"],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            check=True,
            timeout=60,
        )
        return time.monotonic() - began


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.work = Path(args.work or tempfile.mkdtemp(prefix="soak-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.inbox = self.work / "inbox"  # recursive: waves are its sub-folders
        self.share = self.work / "share"  # removed and restored during the run
        self.hidden = self.work / "share.away"
        self.db = self.work / "state" / "state.db"
        self.logs = self.work / "logs"
        self.samples: list[Sample] = []
        self.waves: list[Wave] = []
        self.problems: list[str] = []
        self.dropped = self.judged = 0
        self.state_lag = 0.0  # the longest a wave's records took to say filed after its files
        # Copies of the records (and their outputs) of filed tickets of waves not judged yet.
        self.kept: dict[int, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
        self.next_keep = 0.0
        self.status_ms: list[float] = []
        self.seq = 0

    # ------------------------------------------------------------------ setup

    def config(self, base_url: str) -> Path:
        for d in (self.inbox, self.share, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        cfg = {
            "api": {"base_url": base_url, "key": KEY, "requests_per_second": 1000},
            "folders": [
                {"path": str(self.inbox), "recursive": True},
                {"path": str(self.share), "recursive": True},
            ],
            "state": {"path": str(self.db), "keep_finished": KEEP_FINISHED, "keep_days": 30},
            "tickets": {"settle_seconds": 0.2, "parse_grace_seconds": 1},
            "polling": {"min_interval": 0.3, "max_interval": 2.0, "reconcile_interval": 30},
            "log": {"file": str(self.logs / "agent.log"), "level": "info"},
            "dashboard": {"enabled": True},
            "notifications": {"enabled": False},
        }
        path = self.work / "config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    # ------------------------------------------------------------------ tickets

    def _input(self, folder: Path, stem: str) -> tuple[str, bytes, str]:
        """(file name, bytes, target) of one input: a mix of kinds and sizes."""
        r = self.rng.random()
        if r < 0.5:
            return f"{stem}.png", _png(self.rng), "jpg"
        if r < 0.7:
            return f"{stem}.gif", _gif(self.rng), "png"
        if r < 0.9:
            return f"{stem}.jpg", _png(self.rng, "JPEG"), "png"
        # a bigger one (noise does not compress): about 200 kB to 1 MB
        side = self.rng.choice((256, 400, 512))
        from PIL import Image

        img = Image.frombytes("RGB", (side, side), self.rng.randbytes(side * side * 3))
        import io

        out = io.BytesIO()
        img.save(out, "PNG")
        return f"{stem}.png", out.getvalue(), "jpg"

    def drop(self, wave: Wave, web: str) -> None:
        self.seq += 1
        stem = f"t{self.seq:06d}"
        ticket = wave.folder / f"{stem}.job"
        r = self.rng.random()
        if r < 0.03:  # an invalid ticket: must fail, with a reason
            ticket.write_text("input: nothing-here.png\ntarget: jpg\ncolour: blue\n")
            wave.tickets.append(DroppedTicket(ticket, expect="failed"))
        elif r < 0.10:  # a URL input, served from the web folder
            name = f"{stem}-u.png"
            (self.work / "web" / name).write_bytes(_png(self.rng))
            ticket.write_text(f"input: {web}/{name}\ntarget: jpg\n")
            wave.tickets.append(DroppedTicket(ticket, inputs=(name,)))
        else:
            name, data, target = self._input(wave.folder, stem)
            (wave.folder / name).write_bytes(data)
            wave.inputs.add(wave.folder / name)
            ticket.write_text(f"input: {name}\ntarget: {target}\n")
            wave.tickets.append(DroppedTicket(ticket, inputs=(name,)))
        self.dropped += 1

    def new_wave(self, where: Path | None = None) -> Wave:
        n = len(self.waves)
        folder = (where or self.inbox) / f"w{n:05d}"
        folder.mkdir()
        wave = Wave(folder)
        self.waves.append(wave)
        return wave

    # ------------------------------------------------------------------ judging

    def judge_waves(self, *, final: bool = False) -> None:
        if time.monotonic() >= self.next_keep:
            self.keep_records()
            self.next_keep = time.monotonic() + KEEP_ROWS_SECONDS
        for wave in self.waves:
            if not wave.closed or not wave.folder.exists():
                continue
            if not all(
                t.path.with_name(t.path.name + ".done").exists()
                or t.path.with_name(t.path.name + ".failed").exists()
                for t in wave.tickets
            ):
                continue
            # The final sidecar was written before the rename; the record of the filing comes
            # after it (STATE_SETTLE_SECONDS): the wave waits for it, in later rounds.
            now = time.monotonic()
            if wave.files_filed_at is None:
                wave.files_filed_at = now
            waited = now - wave.files_filed_at
            if self._unfiled_records(wave) and waited < STATE_SETTLE_SECONDS:
                continue
            self.state_lag = max(self.state_lag, waited)
            paths = {str(t.path) for t in wave.tickets}
            manifest = Manifest(
                roots=[wave.folder],
                db_path=self.db,
                tickets=wave.tickets,
                input_files=set(wave.inputs),
                rows=self._rows(),
            )
            found = check(manifest, {"jobs": []})
            found = [p for p in found if not self._pruned_meanwhile(p, wave)]
            for tid in [tid for tid, (row, _) in self.kept.items() if row["path"] in paths]:
                del self.kept[tid]
            self.problems.extend(f"{wave.folder.name}: {p}" for p in found)
            self.judged += len(wave.tickets)
            shutil.rmtree(wave.folder)  # the user collects the outputs
        if final:
            left = [w for w in self.waves if w.folder.exists()]
            for w in left:
                stuck = [
                    t.path.name
                    for t in w.tickets
                    if not t.path.with_name(t.path.name + ".done").exists()
                    and not t.path.with_name(t.path.name + ".failed").exists()
                ]
                self.problems.append(f"{w.folder.name}: no outcome for {stuck[:5]}")

    def keep_records(self) -> None:
        """Copy the records of filed tickets of the waves not judged yet (KEEP_ROWS_SECONDS)."""
        if not self.db.exists():
            return
        open_paths = {str(t.path) for w in self.waves if w.folder.exists() for t in w.tickets}
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            rows = [
                dict(r)
                for r in conn.execute("SELECT * FROM tickets WHERE active = 1 AND filed = 1")
                if r["id"] not in self.kept and r["path"] in open_paths
            ]
            for row in rows:
                outs = conn.execute("SELECT * FROM outputs WHERE ticket_id = ?", [row["id"]])
                self.kept[row["id"]] = (row, [dict(o) for o in outs])
        finally:
            conn.close()

    def _rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
        """The state's rows for the checker, with the kept copies of records pruned since."""
        tickets, outputs, integrity = _db_rows(self.db)
        present = {t["id"] for t in tickets}
        for tid, (row, outs) in self.kept.items():
            if tid not in present:
                tickets.append(row)
                outputs.extend(outs)
        return tickets, outputs, integrity

    def _unfiled_records(self, wave: Wave) -> int:
        """How many of the wave's tickets have an active record not yet filed."""
        paths = [str(t.path) for t in wave.tickets]
        if not paths:
            return 0
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        try:
            row = conn.execute(
                "SELECT COUNT(*) FROM tickets WHERE active = 1 AND filed = 0 AND path IN "
                f"({','.join('?' * len(paths))})",
                paths,
            ).fetchone()
        finally:
            conn.close()
        return int(row[0])

    def _pruned_meanwhile(self, problem: str, wave: Wave) -> bool:
        """A "lost" ticket whose record retention removed (a tombstone names it) is not lost, and
        the outputs it placed (its tombstone names them too) are not strays. Retention keeps the
        newest ``KEEP_FINISHED`` filed tickets: a wave judged late (its last ticket still running
        after a thousand others were filed, an agent far behind) has lost its first records."""
        if "lost — no record" in problem:
            sql = "SELECT 1 FROM pruned WHERE path = ?"
            path = wave.folder / problem.split(":", 1)[0]
        elif problem.startswith("unexpected file: "):
            sql = "SELECT 1 FROM pruned_outputs WHERE path = ?"
            path = wave.folder / problem.removeprefix("unexpected file: ")
        else:
            return False
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        try:
            row = conn.execute(sql, [str(path)]).fetchone()
        finally:
            conn.close()
        return row is not None

    def judge_jobs(self, emu: Emulator) -> None:
        """No job started twice, one started job per ticket (inputs are named per ticket)."""
        state = emu.state()
        started_by_input: dict[str, set[str]] = {}
        for j in state.get("jobs", []):
            if j["starts"] > 1:
                self.problems.append(f"job {j['id']} started {j['starts']} times")
            if j["starts"] >= 1:
                for i in j.get("inputs", []):
                    name = i.get("filename") or i.get("source", "").rsplit("/", 1)[-1]
                    started_by_input.setdefault(name, set()).add(j["id"])
        for name, jobs in started_by_input.items():
            if len(jobs) > 1:
                self.problems.append(f"{name}: {len(jobs)} started jobs")
        if state.get("internal_errors"):
            self.problems.append(f"emulator internal errors: {state['internal_errors'][:3]}")
        self.jobs_started = sum(1 for j in state.get("jobs", []) if j["starts"] >= 1)

    # ------------------------------------------------------------------ sampling

    def sample(self, agent: Agent, t0: float, note: str = "") -> Sample:
        assert agent.proc is not None
        pid = agent.proc.pid
        rss, fds, threads, watches = proc_stats(pid)
        wal = self.db.with_name(self.db.name + "-wal")
        s = Sample(
            t=(time.monotonic() - t0) / 60,
            pid=pid,
            rss_mib=round(rss, 2),
            fds=fds,
            threads=threads,
            tasks=agent.tasks(),
            watches=watches,
            state_kib=round(self.db.stat().st_size / 1024, 1),
            wal_kib=round(wal.stat().st_size / 1024, 1) if wal.exists() else 0.0,
            status_ms=round(1000 * agent.status_seconds(), 1),
            dropped=self.dropped,
            judged=self.judged,
            sse_events=agent.sse_events,
            note=note,
        )
        self.samples.append(s)
        print(
            f"[{s.t:6.1f} min] rss {s.rss_mib:.1f} MiB fds {s.fds} threads {s.threads} "
            f"tasks {s.tasks} watches {s.watches} state {s.state_kib:.0f}+{s.wal_kib:.0f} KiB "
            f"status {s.status_ms:.0f} ms dropped {s.dropped} judged {s.judged} {note}",
            flush=True,
        )
        return s

    def quiet_sample(self, agent: Agent, t0: float, note: str) -> Sample:
        """Wait until every wave is judged and the agent is idle, then sample."""
        deadline = time.monotonic() + 600
        while any(w.folder.exists() for w in self.waves) and time.monotonic() < deadline:
            self.judge_waves()
            time.sleep(0.5)
        time.sleep(5.0)  # timers of finished tickets (sidecar flush, polls) run out
        return self.sample(agent, t0, note)

    # ------------------------------------------------------------------ the run

    def run(self) -> int:
        a = self.args
        (self.work / "web").mkdir(exist_ok=True)
        opts = Options(seed=a.seed, processing_seconds=0.2)
        emu = Emulator(opts, self.work / "emulator.log")
        home = self.work / "home"
        home.mkdir(exist_ok=True)
        try:
            with _web_server(self.work / "web") as web:
                config = self.config(emu.base_url)
                agent = Agent(config, self.work, _agent_env(home), self.db)
                try:
                    agent.start()
                    t0 = time.monotonic()
                    return self._campaign(agent, emu, web, t0)
                finally:
                    if agent.proc is not None and agent.proc.poll() is None:
                        agent.proc.kill()  # the campaign failed: leave nothing running
                        agent.proc.wait()
        finally:
            emu.stop()

    def _campaign(self, agent: Agent, emu: Emulator, web: str, t0: float) -> int:
        a = self.args
        end = t0 + a.minutes * 60
        drain = max(30.0, a.minutes * 60 * 0.05)
        restart_at = t0 + a.minutes * 60 / 2
        warm = min(600.0, a.minutes * 60 * 0.2)
        # A first wave, then the idle baseline (worker threads and connections made once).
        wave = self.new_wave()
        for _ in range(int(a.rate * 30)):
            self.drop(wave, web)
        wave.closed = True
        self.quiet_sample(agent, t0, "idle baseline")
        baseline = self.samples[-1]
        next_sample = time.monotonic() + a.sample_seconds
        next_wave = next_burst = time.monotonic()
        faults_on = False
        next_faults = time.monotonic() + 60
        share_gone_at: float | None = None
        next_share = time.monotonic() + 90
        restarted = False
        segments = [(time.monotonic() + warm, len(self.samples))]
        wave = self.new_wave()
        budget = 0.0
        last = time.monotonic()
        while time.monotonic() < end - drain:
            now = time.monotonic()
            budget += (now - last) * a.rate
            last = now
            if now >= next_burst:  # a burst: 10x the steady rate's minute at once
                burst = self.new_wave()
                for _ in range(int(a.rate * 30)):
                    self.drop(burst, web)
                burst.closed = True
                next_burst = now + 240
            while budget >= 1:
                self.drop(wave, web)
                budget -= 1
            if now >= next_wave:
                wave.closed = True
                wave = self.new_wave()
                next_wave = now + 15
            if now >= next_faults:
                faults_on = not faults_on
                emu.set_faults(FAULTS if faults_on else [])
                next_faults = now + (60 if faults_on else 120)
            if share_gone_at is None and now >= next_share:
                share_wave = self.new_wave(self.share)
                for _ in range(10):
                    self.drop(share_wave, web)
                share_wave.closed = True
                time.sleep(1.0)
                os.rename(self.share, self.hidden)  # an unmounted share: tickets wait
                share_gone_at = now
            elif share_gone_at is not None and now - share_gone_at > 20:
                os.rename(self.hidden, self.share)
                for w in self.waves:  # the share's waves live there again
                    if w.folder.is_relative_to(self.hidden):
                        w.folder = self.share / w.folder.relative_to(self.hidden)
                        for t in w.tickets:
                            t.path = w.folder / t.path.name
                        w.inputs = {w.folder / p.name for p in w.inputs}
                share_gone_at = None
                next_share = now + 300
            if not restarted and now >= restart_at and share_gone_at is None:
                self.sample(agent, t0, "before restart")
                code = agent.stop()
                if code != 0:
                    self.problems.append(f"the agent exited {code} on SIGTERM")
                agent.start()
                restarted = True
                segments.append((time.monotonic() + warm, len(self.samples)))
            if now >= next_sample:
                self.sample(agent, t0)
                next_sample = now + a.sample_seconds
            self.judge_waves()
            time.sleep(0.1)
        wave.closed = True
        if share_gone_at is not None:
            os.rename(self.hidden, self.share)
            for w in self.waves:
                if w.folder.is_relative_to(self.hidden):
                    w.folder = self.share / w.folder.relative_to(self.hidden)
                    for t in w.tickets:
                        t.path = w.folder / t.path.name
                    w.inputs = {w.folder / p.name for p in w.inputs}
        emu.set_faults([])
        final = self.quiet_sample(agent, t0, "idle at the end")
        self.judge_waves(final=True)
        code = agent.stop()
        if code != 0:
            self.problems.append(f"the agent exited {code} on SIGTERM")
        self.judge_jobs(emu)
        return self.report(baseline, final, segments)

    # ------------------------------------------------------------------ verdict

    def report(self, baseline: Sample, final: Sample, segments: list[tuple[float, int]]) -> int:
        verdicts: list[tuple[str, bool, str]] = []
        # RSS growth after the warm-up, per process (the restart starts a new one).
        pids = []
        for s in self.samples:
            if s.pid not in pids:
                pids.append(s.pid)
        for pid in pids:
            seg = [s for s in self.samples if s.pid == pid and not s.note]
            warm_min = self.args.minutes * 0.2 if len(pids) == 1 else self.args.minutes * 0.1
            after = [s for s in seg if s.t - seg[0].t >= warm_min] if seg else []
            if len(after) >= 2:
                k = max(1, min(3, len(after) // 3))
                start = statistics.median(s.rss_mib for s in after[:k])
                end = statistics.median(s.rss_mib for s in after[-k:])
                verdicts.append(
                    (
                        f"RSS growth after warm-up (pid {pid})",
                        end - start <= RSS_GROWTH_MIB,
                        f"{start:.1f} -> {end:.1f} MiB ({end - start:+.1f}; "
                        f"limit +{RSS_GROWTH_MIB})",
                    )
                )
            else:
                verdicts.append((f"RSS growth (pid {pid})", True, "too short to judge"))
        for name in ("fds", "threads", "tasks", "watches"):
            b, f = getattr(baseline, name), getattr(final, name)
            verdicts.append((f"idle {name} back to baseline", f <= b, f"baseline {b}, end {f}"))
        state_max = max(s.state_kib + s.wal_kib for s in self.samples)
        verdicts.append(
            (
                "state file bounded (db + wal <= 24 MiB with keep_finished 1000)",
                state_max <= 24 * 1024,
                f"max {state_max / 1024:.1f} MiB (db max "
                f"{max(s.state_kib for s in self.samples) / 1024:.1f} MiB)",
            )
        )
        timed = [s.status_ms for s in self.samples if not s.note]
        if len(timed) >= 6:
            third = len(timed) // 3
            early, late = statistics.median(timed[:third]), statistics.median(timed[-third:])
            verdicts.append(
                (
                    "status time does not grow",
                    late <= early * 1.5 + 50,
                    f"median {early:.0f} ms early, {late:.0f} ms late",
                )
            )
        verdicts.append(
            (
                "every ticket has an outcome",
                self.judged == self.dropped,
                f"{self.judged} judged of {self.dropped} dropped",
            )
        )
        verdicts.append(
            ("zero invariant violations", not self.problems, f"{len(self.problems)} problems")
        )
        logs = sorted(p.name for p in self.logs.iterdir())
        verdicts.append(("log files capped (<= 6)", len(logs) <= 6, f"{len(logs)} files"))
        self.write_csv()
        self.write_chart()
        print(f"\nsoak: {self.args.minutes:g} min, {self.dropped} tickets, work {self.work}")
        started = getattr(self, "jobs_started", "?")
        print(f"jobs started: {started}, SSE events: {final.sse_events}")
        print(f"records said filed at most {self.state_lag:.1f} s after their files (per wave)")
        ok = True
        for name, passed, detail in verdicts:
            ok &= passed
            print(f"  {'PASS' if passed else 'FAIL'}  {name}: {detail}")
        for p in self.problems[:20]:
            print(f"  problem: {p}")
        print(f"csv: {self.work / 'soak.csv'}  chart: {self.work / 'soak.png'}")
        return 0 if ok else 1

    def write_csv(self) -> None:
        with open(self.work / "soak.csv", "w", newline="") as f:
            w = csv.writer(f)
            names = list(Sample.__dataclass_fields__)
            w.writerow(names)
            for s in self.samples:
                w.writerow([getattr(s, n) for n in names])

    def write_chart(self) -> None:
        from PIL import Image, ImageDraw

        panels = [
            ("RSS (MiB)", "rss_mib"),
            ("open fds", "fds"),
            ("threads", "threads"),
            ("asyncio tasks", "tasks"),
            ("inotify watches", "watches"),
            ("state db + wal (KiB)", "state_total"),
            ("status (ms)", "status_ms"),
            ("tickets dropped", "dropped"),
        ]
        w, h, cols = 420, 180, 2
        rows = (len(panels) + cols - 1) // cols
        img = Image.new("RGB", (w * cols, h * rows + 30), "white")
        d = ImageDraw.Draw(img)
        head = f"convert-agent soak: {self.args.minutes:g} min, {self.dropped} tickets"
        d.text((10, 8), head, fill="black")
        xs = [s.t for s in self.samples] or [0.0]
        x0, x1 = min(xs), max(xs) or 1.0
        for i, (title, key) in enumerate(panels):
            ox, oy = (i % cols) * w, 30 + (i // cols) * h
            ys = [
                (s.state_kib + s.wal_kib) if key == "state_total" else float(getattr(s, key))
                for s in self.samples
            ] or [0.0]
            lo, hi = min(0.0, min(ys)), max(ys) * 1.1 or 1.0
            left, top, right, bottom = ox + 50, oy + 20, ox + w - 10, oy + h - 20
            d.rectangle([left, top, right, bottom], outline="#999")
            d.text((ox + 50, oy + 4), title, fill="black")
            d.text((ox + 4, top), f"{hi:.0f}", fill="#555")
            d.text((ox + 4, bottom - 10), f"{lo:.0f}", fill="#555")
            pts = [
                (
                    left + (right - left) * (x - x0) / ((x1 - x0) or 1.0),
                    bottom - (bottom - top) * (y - lo) / ((hi - lo) or 1.0),
                )
                for x, y in zip(xs, ys, strict=False)
            ]
            if len(pts) > 1:
                d.line(pts, fill="#2f6fde", width=2)
            for s, p in zip(self.samples, pts, strict=False):
                if s.note:
                    d.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], outline="#c0392b")
            d.text((left, bottom + 4), f"{x0:.0f} min", fill="#555")
            d.text((right - 40, bottom + 4), f"{x1:.0f} min", fill="#555")
        img.save(self.work / "soak.png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=60.0, help="how long to run (default 60)")
    p.add_argument("--rate", type=float, default=6.0, help="tickets per second (default 6)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--work", help="work folder (default: a new temporary one, kept)")
    p.add_argument("--sample-seconds", type=float, default=60.0, help="sampling period")
    return Soak(p.parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
