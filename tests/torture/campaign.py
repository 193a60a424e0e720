"""A seeded, randomised torture campaign: the real agent process against the real emulator.

Run it with ``scripts/torture`` (``--help`` for the flags). One campaign:

1. starts the emulator as a child process (``python -m agent emulator --port 0``), optionally with
   ``--ignore-idempotency`` / ``--ignore-range``, and a loopback web server for URL inputs;
2. lays out N tickets of mixed kinds (local image, text, animated GIF → one output per frame,
   several conversions, a URL input, adoption of a job created elsewhere, an output name that
   collides with a user's file); some are dropped at the start, the rest during the campaign;
3. runs ``convert-agent run`` and stops it at a random moment, again and again: mostly SIGKILL,
   sometimes SIGTERM (which must end the process within 5 s); before each cycle it switches the
   emulator's faults (5xx, dropped connections, lost responses, truncated / corrupted / slow
   downloads, 429, unknown status codes, the server "down" for a cycle);
4. clears the faults, runs ``convert-agent run --once`` until everything is finished, and hands
   the folders, the state database and the emulator's state to the invariant checker.

What the checker expects depends on the fault mix (decided here, documented in the summary):

* the default mix is *transient* faults only, at low rates: they delay tickets but must fail none,
  so every ticket must end ``done`` (exactly once, verified bytes, nothing extra);
* ``--permanent`` adds conversion failures and ``completed`` jobs without outputs: the affected
  tickets legitimately end ``failed``, so a ticket may end done or failed, but a failed one must
  say why (database and sidecar) and nothing torn or duplicated may be left.

Everything runs in a sandbox folder; ``HOME`` and the ``XDG_*`` folders of the agent point into it,
and the checker compares a listing of the sandbox outside the inbox before and after the run.
The same seed replays the same campaign (the timing of a kill relative to the agent's work is
the one thing a seed cannot pin down exactly).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import io
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from invariants import DroppedTicket, Manifest, check, listing, outside_changes

KEY = "t0rture" + "0" * 25
REPO = Path(__file__).resolve().parents[2]

# Transient faults: (route, kind, param, rate). Each cycle takes a random handful of these.
TRANSIENT: list[tuple[str, str, float | None, float]] = [
    ("any", "error", 503, 0.03),
    ("any", "error", 500, 0.02),
    ("any", "drop", None, 0.02),
    ("create", "drop_after", None, 0.1),
    ("create", "error_after", 502, 0.05),
    ("create", "error", 429, 0.1),
    ("upload", "drop_after", None, 0.1),
    ("upload", "error", 503, 0.1),
    ("input", "drop_after", None, 0.1),
    ("start", "drop_after", None, 0.15),
    ("start", "error_after", 502, 0.1),
    ("start", "error", 429, 0.1),
    ("get", "unknown_status", None, 0.1),
    ("get", "html", None, 0.03),
    ("get", "error", 429, 0.05),
    ("download", "truncate", None, 0.1),
    ("download", "drop", None, 0.05),
    ("download", "corrupt", None, 0.02),
    ("download", "slow", 2, 0.3),
    ("download", "error", 503, 0.05),
    # slow answers after the server acted: a kill lands between the act and its record
    ("create", "slow", 1, 0.4),
    ("upload", "slow", 1, 0.4),
    ("input", "slow", 1, 0.4),
    ("start", "slow", 1, 0.4),
    ("get", "slow", 0.5, 0.1),
]
# Permanent ones (--permanent): the affected tickets end failed, with a reason.
PERMANENT: list[tuple[str, str, float | None, float]] = [
    ("job", "fail", None, 0.1),
    ("job", "no_outputs", None, 0.05),
]
KINDS = ("image", "text", "gif", "multi", "url", "adopt", "conflict")
KIND_WEIGHTS = (30, 20, 10, 12, 10, 8, 10)


@dataclass
class Options:
    seed: int = 1
    tickets: int = 50
    kills: int = 20
    minutes: float | None = None
    faults: bool = True
    permanent: bool = False
    ignore_idempotency: bool = False
    ignore_range: bool = False
    processing_seconds: float = 1.0
    sigterm_rate: float = 0.15
    max_delay: float = 4.0
    final_timeout: float = 180.0
    workdir: Path | None = None
    keep: bool = False
    verbose: bool = False
    team: int = 0  # agents of a team on one PostgreSQL state (tests/torture/team.py); 0: one
    lease: float = 6.0  # team mode: the agents' lease_seconds


@dataclass
class Summary:
    seed: int
    tickets: int = 0
    done: int = 0
    failed: int = 0
    kills: int = 0
    sigterms: int = 0
    sigterm_early: int = 0  # landed before the agent had its handlers (during imports)
    sigterm_max_seconds: float = 0.0
    cycles: int = 0
    phases_at_kill: Counter[str] = field(default_factory=Counter)
    faults_injected: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    workdir: str = ""
    expectation: str = ""
    replay: str = ""
    team: dict[str, Any] | None = None  # team mode's figures (tests/torture/team.py)

    def text(self) -> str:
        phases = ", ".join(f"{k} {v}" for k, v in sorted(self.phases_at_kill.items())) or "-"
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults_injected.items())) or "-"
        lines = [
            f"seed {self.seed}: {self.tickets} tickets ({self.done} done, {self.failed} failed), "
            f"{self.cycles} cycles, {self.kills} SIGKILLs, {self.sigterms} SIGTERMs, "
            f"{sum(self.faults_injected.values())} faults injected, "
            f"{len(self.violations)} violations, {self.seconds:.0f}s",
            f"  expectation: {self.expectation}",
            f"  SIGTERM: slowest exit {self.sigterm_max_seconds:.2f}s; "
            f"{self.sigterm_early} landed during start-up (before the handlers)",
            f"  tickets in flight at a kill, by phase: {phases}",
            f"  faults: {faults}",
        ]
        if self.team is not None:
            stops = self.team["cycles"].get("stop", 0)
            lines[0] = lines[0].replace(f"{self.sigterms} SIGTERMs", f"{stops} SIGSTOPs")
            lines[2:3] = []  # no SIGTERM cycles in team mode
            lines[2] = lines[2].replace("at a kill", "held by the agent at a kill or stop")
            lines += _team_lines(self.team)
        if self.violations:
            lines.append("  VIOLATIONS:")
            lines += [f"    - {v}" for v in self.violations[:60]]
            if len(self.violations) > 60:
                lines.append(f"    … and {len(self.violations) - 60} more")
            lines.append(f"  replay: {self.replay}")
            lines.append(f"  sandbox: {self.workdir}")
        return "\n".join(lines)


def _team_lines(t: dict[str, Any]) -> list[str]:
    cycles = ", ".join(f"{k} {v}" for k, v in sorted(t["cycles"].items())) or "-"
    per = ", ".join(
        f"{n} {t['accepted'][n]}/{t['done_by'][n]}/{t['took_over'][n]}" for n in t["accepted"]
    )
    return [
        f"  team: {t['agents']} agents, lease {t['lease']:g}s; cycles: {cycles}; "
        f"{t['sessions_dropped']} sessions dropped; {t['records']} ticket records; "
        f"{t['refused_starts']} starts refused while the database was down (exit 3, restarted)",
        f"  jobs: {t['jobs_created']} created, {t['jobs_started']} started "
        f"({t['start_requests']} start requests), {t['jobs_unstarted']} never started; "
        f"{t['takeovers']} takeovers of {t['tickets_taken_over']} tickets; "
        f"{t['claims_left']} claims left",
        f"  per agent (accepted/done/taken over): {per}",
    ]


# --------------------------------------------------------------------------- helpers


def _http(url: str, body: Any = None, method: str | None = None, timeout: float = 30) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    req.add_header("X-Api2convert-Api-Key", KEY)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


class Emulator:
    def __init__(self, opts: Options, log: Path) -> None:
        cmd = [
            sys.executable,
            "-m",
            "agent",
            "emulator",
            "--port",
            "0",
            "--api-key",
            KEY,
            "--seed",
            str(opts.seed),
            "--processing-seconds",
            str(opts.processing_seconds),
        ]
        if opts.ignore_idempotency:
            cmd.append("--ignore-idempotency")
        if opts.ignore_range:
            cmd.append("--ignore-range")
        self._log = open(log, "ab")  # noqa: SIM115 - lives as long as the emulator
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, cwd=REPO)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if "listening on" not in line:
            self.stop()
            raise RuntimeError(f"emulator did not start: {line!r}")
        self.base_url = line.split("listening on", 1)[1].strip()
        self.origin = self.base_url.rsplit("/v2", 1)[0]

    def state(self) -> dict[str, Any]:
        return dict(_http(f"{self.origin}/_emulator/state"))

    def faults(self) -> list[dict[str, Any]]:
        return list(_http(f"{self.origin}/_emulator/faults"))

    def set_faults(self, faults: list[dict[str, Any]]) -> None:
        _http(f"{self.origin}/_emulator/faults", {"faults": faults, "replace": True}, "POST")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _web_server(directory: Path) -> Any:
    handler = functools.partial(_Quiet, directory=str(directory))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def _png(rng: random.Random, fmt: str = "PNG") -> bytes:
    size = (rng.randint(8, 64), rng.randint(8, 64))
    colour = tuple(rng.randrange(256) for _ in range(3))
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, fmt)
    return out.getvalue()


def _gif(rng: random.Random) -> bytes:
    frames = [
        Image.new("RGB", (12, 12), tuple(rng.randrange(256) for _ in range(3)))
        for _ in range(rng.randint(2, 3))
    ]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return out.getvalue()


def _write_config(work: Path, base_url: str, inbox: Path, db: Path) -> Path:
    cfg = {
        "api": {"base_url": base_url, "key": KEY, "requests_per_second": 1000},
        "folders": [str(inbox)],
        "state": {"path": str(db)},
        "tickets": {"settle_seconds": 0.1, "parse_grace_seconds": 1, "cancel_grace_seconds": 0.5},
        "polling": {"min_interval": 0.2, "max_interval": 1.0, "reconcile_interval": 2},
        "log": {"file": False, "level": "info"},
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _agent_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("API2CONVERT_", "XDG_"))}
    env["CONVERT_AGENT_CONFIG"] = ""
    env.pop("CONVERT_AGENT_CONFIG")
    env["HOME"] = str(home)
    for name in ("CONFIG", "STATE", "CACHE", "DATA", "RUNTIME"):
        env[f"XDG_{name}_HOME" if name != "RUNTIME" else "XDG_RUNTIME_DIR"] = str(home / name)
    return env


def _phases(db: Path) -> Counter[str]:
    """Tickets in flight by phase, read from the state database (read-only)."""
    if not db.exists():
        return Counter()
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            rows = conn.execute(
                "SELECT phase, filed, count(*) FROM tickets WHERE active = 1 GROUP BY phase, filed"
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return Counter()
    c: Counter[str] = Counter()
    for phase, filed, n in rows:
        if phase in ("done", "failed", "canceled"):
            if not filed:
                c[f"filing({phase})"] += n
        else:
            c[phase] += n
    return c


# --------------------------------------------------------------------------- the campaign


class Campaign:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.summary = Summary(seed=opts.seed)
        made = opts.workdir is None
        self.work = Path(tempfile.mkdtemp(prefix=f"torture-{opts.seed}-")) if made else opts.workdir
        assert self.work is not None
        self.work = self.work.resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.made_work = made
        self.inbox = self.work / "inbox"
        self.srv = self.work / "srv"
        self.home = self.work / "home"
        self.db = self.work / "state" / "state.db"
        self.agent_log = self.work / "agent.log"
        for d in (self.inbox, self.srv, self.home):
            d.mkdir(parents=True, exist_ok=True)
        self.dropped: list[DroppedTicket] = []
        self.input_files: set[Path] = set()
        self.adopted: set[str] = set()
        self.pending: list[tuple[str, bytes]] = []  # (ticket path, text) not yet dropped
        self.per_cycle = 1

    def log(self, msg: str) -> None:
        if self.opts.verbose:
            print(f"[torture {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # ----------------------------------------------------------------- tickets

    def _make_ticket(self, i: int, url_base: str, emu: Emulator) -> None:
        kind = self.rng.choices(KINDS, KIND_WEIGHTS)[0]
        stem = f"{kind[0]}{i:04d}"
        ticket = self.inbox / f"{stem}.job"
        text: str
        inputs: tuple[str, ...] = ()
        user: tuple[Path, ...] = ()
        job_id = None
        if kind in ("image", "conflict", "multi"):
            name = f"{stem}.png"
            (self.inbox / name).write_bytes(_png(self.rng))
            self.input_files.add(self.inbox / name)
            inputs = (name,)
            if kind == "multi":
                text = f"input: {name}\nconversion:\n  - target: webp\n  - target: bmp\n"
            else:
                text = f"input: {name}\ntarget: jpg\n"
            if kind == "conflict":  # a user's file where the output wants to land
                mine = self.inbox / f"{stem}.jpg"
                mine.write_bytes(b"a user's own file, never to be overwritten\n")
                user = (mine,)
        elif kind == "text":
            name = f"{stem}.txt"
            body = "".join(f"line {n} of {stem} <{self.rng.random()}>\n" for n in range(20))
            (self.inbox / name).write_text(body)
            self.input_files.add(self.inbox / name)
            inputs = (name,)
            text = f"input: {name}\ntarget: {self.rng.choice(['html', 'md', 'txt'])}\n"
            if text.endswith("txt\n"):
                text += 'output: {name: "{stem}-out.{ext}"}\n'
        elif kind == "gif":
            name = f"{stem}.gif"
            (self.inbox / name).write_bytes(_gif(self.rng))
            self.input_files.add(self.inbox / name)
            inputs = (name,)
            text = f"input: {name}\ntarget: png\n"
        elif kind == "url":
            name = f"{stem}.png"
            (self.srv / name).write_bytes(_png(self.rng))
            inputs = (name,)
            text = f"input: {url_base}/{name}\ntarget: gif\n"
        else:  # adopt: a job created and started elsewhere, adopted by id and token
            name = f"{stem}.png"
            (self.srv / name).write_bytes(_png(self.rng))
            job = self._create_adopted(emu, f"{url_base}/{name}")
            job_id = job["id"]
            self.adopted.add(job_id)
            text = f"job: {job['id']}\ntoken: {job['token']}\n"
        self.dropped.append(
            DroppedTicket(
                path=ticket,
                inputs=inputs,
                job_id=job_id,
                user_files=user,
                may_rename=kind == "conflict",
                expect="any" if self.opts.permanent else "done",
            )
        )
        self.pending.append((str(ticket), text.encode()))

    def _create_adopted(self, emu: Emulator, url: str) -> dict[str, Any]:
        body = {
            "process": True,
            "input": [{"type": "remote", "source": url}],
            "conversion": [{"target": "jpg"}],
        }
        for attempt in range(20):
            try:
                return dict(_http(f"{emu.base_url}/jobs", body, "POST"))
            except OSError:
                time.sleep(0.1 * (attempt + 1))
        raise RuntimeError("could not create a job to adopt")

    def _drop(self, n: int) -> None:
        for _ in range(min(n, len(self.pending))):
            path, data = self.pending.pop(0)
            p = Path(path)
            tmp = p.with_name(f".{p.name}.writing")
            tmp.write_bytes(data)
            os.replace(tmp, p)  # the way an automation should drop a ticket

    # ----------------------------------------------------------------- faults

    def _pick_faults(self) -> list[dict[str, Any]]:
        if not self.opts.faults:
            return []
        roll = self.rng.random()
        if roll < 0.08:  # the server is down for this cycle
            return [{"route": "any", "kind": self.rng.choice(["drop", "error"]), "rate": 1.0}]
        if roll < 0.15:
            return []
        chosen = self.rng.sample(TRANSIENT, self.rng.randint(3, 9))
        if self.opts.permanent:
            chosen += PERMANENT
        out = []
        for route, kind, param, rate in chosen:
            f: dict[str, Any] = {"route": route, "kind": kind, "rate": rate}
            if param is not None:
                f["param"] = param
            out.append(f)
        return out

    def _harvest_faults(self, emu: Emulator) -> None:
        with contextlib.suppress(OSError, ValueError):
            for f in emu.faults():
                if f.get("hits"):
                    param = f"={f['param']:g}" if f.get("param") is not None else ""
                    key = f"{f['route']}:{f['kind']}{param}"
                    self.summary.faults_injected[key] += int(f["hits"])

    # ----------------------------------------------------------------- agent

    def _spawn(self, config: Path, *args: str) -> subprocess.Popen[bytes]:
        with open(self.agent_log, "ab") as out:
            out.write(f"\n===== {' '.join(args) or 'run'} {time.time():.3f}\n".encode())
            out.flush()
            return subprocess.Popen(
                [sys.executable, "-m", "agent", "--config", str(config), *(args or ("run",))],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_agent_env(self.home),
                cwd=self.work,
            )

    def _delay(self) -> float:
        r = self.rng.random()
        top = self.opts.max_delay
        if r < 0.4:
            return self.rng.uniform(0.05, min(0.8, top))
        if r < 0.85:
            return self.rng.uniform(0.8, min(2.5, top))
        return self.rng.uniform(min(2.5, top), top)

    def _cycle(self, config: Path, emu: Emulator) -> None:
        s = self.summary
        faults = self._pick_faults()
        self._harvest_faults(emu)
        emu.set_faults(faults)
        log_offset = self.agent_log.stat().st_size if self.agent_log.exists() else 0
        proc = self._spawn(config)
        if self.pending:
            time.sleep(self.rng.uniform(0, 0.3))
            self._drop(self.per_cycle)
        time.sleep(self._delay())
        if proc.poll() is not None:
            s.violations.append(f"cycle {s.cycles}: the agent exited by itself ({proc.returncode})")
        elif self.rng.random() < self.opts.sigterm_rate:
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(5.0)
            except subprocess.TimeoutExpired:
                s.violations.append(f"cycle {s.cycles}: SIGTERM did not stop the agent in 5 s")
                proc.kill()
                proc.wait()
            else:
                took = time.monotonic() - t0
                s.sigterm_max_seconds = max(s.sigterm_max_seconds, took)
                with open(self.agent_log, "rb") as f:
                    f.seek(log_offset)
                    running = b"watching" in f.read()
                if code != 0 and running:
                    s.violations.append(f"cycle {s.cycles}: SIGTERM exit code {code}")
                elif code != 0:  # still starting up (imports): no handler yet, like a kill
                    s.sigterm_early += 1
                self.log(f"cycle {s.cycles}: SIGTERM, exited {code} in {took:.2f}s")
            s.sigterms += 1
            s.phases_at_kill.update(_phases(self.db))
        else:
            proc.kill()
            proc.wait()
            s.kills += 1
            s.phases_at_kill.update(_phases(self.db))
            self.log(f"cycle {s.cycles}: SIGKILL; in flight {dict(_phases(self.db))}")
        s.cycles += 1

    # ----------------------------------------------------------------- run

    def run(self) -> Summary:
        opts, s = self.opts, self.summary
        t0 = time.monotonic()
        s.workdir = str(self.work)
        s.expectation = (
            "permanent faults: each ticket done or failed with a reason"
            if opts.permanent
            else "transient faults only: every ticket done, exactly once"
        )
        flags = [f"--seed {opts.seed}", f"--tickets {opts.tickets}", f"--kills {opts.kills}"]
        if opts.minutes:
            flags.append(f"--minutes {opts.minutes}")
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
        emu = Emulator(opts, self.work / "emulator.log")
        try:
            with _web_server(self.srv) as url_base:
                config = _write_config(self.work, emu.base_url, self.inbox, self.db)
                for i in range(opts.tickets):
                    self._make_ticket(i, url_base, emu)
                s.tickets = len(self.dropped)
                protected = {p: listing(p.parent)[p.name] for p in self.input_files} | {
                    u: listing(u.parent)[u.name] for t in self.dropped for u in t.user_files
                }
                before = listing(self.work, exclude=[self.inbox])
                self._drop(max(1, len(self.pending) * 2 // 5))
                # the rest arrive during the first two thirds of the campaign
                spread = max(1, (opts.kills * 2) // 3) if opts.kills else 10
                self.per_cycle = max(1, -(-len(self.pending) // spread))
                deadline = t0 + opts.minutes * 60 if opts.minutes else None
                while s.cycles < opts.kills or (
                    deadline is not None and time.monotonic() < deadline
                ):
                    self._cycle(config, emu)
                self._drop(len(self.pending))
                self._harvest_faults(emu)
                emu.set_faults([])
                self.log("final run --once")
                self._final(config)
                state = emu.state()
                after = listing(self.work, exclude=[self.inbox])
        finally:
            emu.stop()
        manifest = Manifest(
            roots=[self.inbox],
            db_path=self.db,
            tickets=self.dropped,
            input_files=set(self.input_files),
            adopted_jobs=set(self.adopted),
        )
        s.violations += check(manifest, state)
        for p, sig in protected.items():
            try:
                now = listing(p.parent).get(p.name)
            except OSError:
                now = None
            if now != sig:
                s.violations.append(f"a file the agent must not touch changed: {p.name}")
        s.violations += outside_changes(
            before,
            after,
            allowed=[
                "state/*",  # the agent's own folder: database, lock, runtime files
                "agent.log",
                "emulator.log",
                "config.yaml",
            ],
        )
        s.done, s.failed = self._outcomes()
        s.seconds = time.monotonic() - t0
        if not s.violations and self.made_work and not opts.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        return s

    def _final(self, config: Path) -> None:
        proc = self._spawn(config, "run", "--once")
        try:
            code = proc.wait(self.opts.final_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self.summary.violations.append(
                f"the final `run --once` did not finish in {self.opts.final_timeout:.0f}s; "
                f"in flight: {dict(_phases(self.db))}"
            )
            return
        if code != 0 and not self.opts.permanent:
            self.summary.violations.append(f"the final `run --once` exited {code}")

    def _outcomes(self) -> tuple[int, int]:
        try:
            conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
            try:
                rows = dict(
                    conn.execute(
                        "SELECT phase, count(*) FROM tickets WHERE active = 1 GROUP BY phase"
                    ).fetchall()
                )
            finally:
                conn.close()
        except sqlite3.Error:
            return 0, 0
        return int(rows.get("done", 0)), int(rows.get("failed", 0))


def run_campaign(opts: Options) -> Summary:
    return Campaign(opts).run()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="scripts/torture",
        description="Seeded crash/fault campaign: real agent, real emulator, invariant checker.",
    )
    ap.add_argument("--seed", type=int, default=None, help="replay a campaign (default: random)")
    ap.add_argument("--tickets", type=int, default=50)
    ap.add_argument(
        "--kills",
        "--cycles",
        dest="kills",
        type=int,
        default=None,
        help="agent starts stopped by a signal (default 20, or 0 with --minutes)",
    )
    ap.add_argument("--minutes", type=float, default=None, help="keep cycling this long")
    ap.add_argument("--faults", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument(
        "--permanent",
        action="store_true",
        help="add permanent faults (failed jobs, no outputs): tickets may fail",
    )
    ap.add_argument("--ignore-idempotency", action="store_true")
    ap.add_argument("--ignore-range", action="store_true")
    ap.add_argument("--processing-seconds", type=float, default=1.0)
    ap.add_argument("--sigterm-rate", type=float, default=0.15)
    ap.add_argument("--max-delay", type=float, default=4.0, help="longest run before a kill")
    ap.add_argument("--final-timeout", type=float, default=180.0)
    ap.add_argument("--workdir", type=Path, default=None, help="sandbox (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the sandbox even when all is well")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument(
        "--team",
        type=int,
        default=0,
        metavar="N",
        help="team mode: N agents on bindfs mounts of one folder sharing a PostgreSQL state; "
        "cycles SIGKILL/SIGSTOP agents, restart PostgreSQL, drop sessions",
    )
    ap.add_argument("--lease", type=float, default=6.0, help="team mode: lease_seconds")
    a = ap.parse_args(argv)
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 31)
    kills = a.kills if a.kills is not None else (0 if a.minutes else 20)
    opts = Options(
        seed=seed,
        tickets=a.tickets,
        kills=kills,
        minutes=a.minutes,
        faults=a.faults,
        permanent=a.permanent,
        ignore_idempotency=a.ignore_idempotency,
        ignore_range=a.ignore_range,
        processing_seconds=a.processing_seconds,
        sigterm_rate=a.sigterm_rate,
        max_delay=a.max_delay,
        final_timeout=a.final_timeout,
        workdir=a.workdir,
        keep=a.keep,
        verbose=a.verbose,
        team=a.team,
        lease=a.lease,
    )
    if opts.team:
        from team import run_team_campaign

        summary = run_team_campaign(opts)
    else:
        summary = run_campaign(opts)
    print(summary.text(), flush=True)
    return 1 if summary.violations else 0


if __name__ == "__main__":
    sys.exit(main())
