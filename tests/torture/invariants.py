"""The invariant checker: what must hold after any run, whatever happened during it.

``check`` is given the watched roots, the state database, the emulator's ``/_emulator/state``
snapshot and what the caller dropped (the ticket manifest), and returns every violation in words
(an empty list means the promise held: nothing lost, corrupted, leaked or paid for twice).

What it verifies:

* **none stuck, none lost** — every dropped ticket was filed (``NAME.job.done`` or
  ``NAME.job.failed``; no ``NAME.job`` left behind), its active record in the state database is
  terminal and filed, a failed one carries an ``error`` with a message (in the database and in
  the sidecar); every ``*.job`` file in a root is a ticket the caller knows about;
* **outcome** — with ``expect_done`` every ticket must be done (transient faults delay, never
  fail); otherwise a failed ticket is fine as long as it says why and left no output behind;
* **bytes** — each output the database says it placed exists, is a regular file and its md5 equals
  the server's checksum for that output; a done ticket has every server output placed (or
  skipped by its conflict policy);
* **no duplicates or strays** — every file in a root is an input, a user file the caller placed,
  a filed ticket, a sidecar or a recorded output; a ``name (N).ext`` is only allowed where the
  ticket's conflict policy had to rename around a user's file; no two records claim one file;
* **no temp files** — nothing hidden (``.*``), no ``*.part`` / ``*.tmp``;
* **no double spend** — no emulator job started more than once; at most one *started* job per
  ticket generation (jobs are mapped to tickets by their input file names, or the adopted id);
  every started job is one the state database recorded (or one the caller created for adoption);
* **no writes outside the roots** — the listing of the sandbox outside the roots is unchanged,
  except for the files the caller names as expected (state db, config, logs);
* ``PRAGMA integrity_check`` is ``ok``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DUP_RE = re.compile(r" \(\d+\)(\.[^.]*)?$")
TERMINAL = ("done", "failed", "canceled")


@dataclass
class DroppedTicket:
    """What the caller put into a root for one ticket."""

    path: Path  # the NAME.job file
    inputs: tuple[str, ...] = ()  # base names of the local or URL inputs (unique per ticket)
    job_id: str | None = None  # adoption tickets: the job the caller created
    user_files: tuple[Path, ...] = ()  # files the caller placed that outputs must not clobber
    may_rename: bool = False  # an output may legitimately land as "name (N).ext"
    expect: str = "done"  # "done", "failed" or "any"


@dataclass
class Manifest:
    roots: Sequence[Path]
    db_path: Path
    tickets: Sequence[DroppedTicket]
    input_files: set[Path] = field(default_factory=set)  # inputs the caller placed in the roots
    adopted_jobs: set[str] = field(default_factory=set)  # jobs the caller itself started
    # The state's rows when they are not in a SQLite file at ``db_path`` (team mode reads them
    # from PostgreSQL, paths mapped to the roots): tickets, outputs, integrity verdict.
    rows: tuple[list[dict[str, Any]], list[dict[str, Any]], str] | None = None


def md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def listing(root: Path, exclude: Iterable[Path] = ()) -> dict[str, tuple[int, str]]:
    """Relative path → (size, md5) of every regular file under ``root``, skipping ``exclude``."""
    skip = [p.resolve() for p in exclude]
    out: dict[str, tuple[int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath).resolve()
        if any(d == s or s in d.parents for s in skip):
            dirnames[:] = []
            continue
        for name in filenames:
            p = d / name
            if any(p == s for s in skip):
                continue
            try:
                out[str(p.relative_to(root.resolve()))] = (p.stat().st_size, md5_file(p))
            except OSError:
                continue
    return out


def outside_changes(
    before: Mapping[str, tuple[int, str]],
    after: Mapping[str, tuple[int, str]],
    allowed: Iterable[str] = (),
) -> list[str]:
    """Files created, changed or removed outside the roots, except the ``allowed`` globs."""
    allow = list(allowed)

    def ok(rel: str) -> bool:
        return any(Path(rel).match(a) for a in allow)

    problems = []
    for rel in sorted(set(before) | set(after)):
        if ok(rel):
            continue
        if rel not in before:
            problems.append(f"file written outside the watched roots: {rel}")
        elif rel not in after:
            problems.append(f"file removed outside the watched roots: {rel}")
        elif before[rel] != after[rel]:
            problems.append(f"file changed outside the watched roots: {rel}")
    return problems


def _db_rows(db_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        tickets = [dict(r) for r in conn.execute("SELECT * FROM tickets ORDER BY id")]
        outputs = [dict(r) for r in conn.execute("SELECT * FROM outputs ORDER BY id")]
    finally:
        conn.close()
    return tickets, outputs, str(integrity)


def check(manifest: Manifest, emulator_state: Mapping[str, Any]) -> list[str]:
    """Every violation of the product's promise, in words (empty = all good)."""
    problems: list[str] = []
    roots = [Path(r) for r in manifest.roots]
    tickets, outputs, integrity = manifest.rows or _db_rows(manifest.db_path)
    if integrity != "ok":
        problems.append(f"state database integrity_check: {integrity}")

    by_path: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in tickets:
        by_path[t["path"]].append(t)
    outs_by_ticket: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for o in outputs:
        outs_by_ticket[o["ticket_id"]].append(o)
    emu_outputs = {
        o["id"]: (j["id"], o) for j in emulator_state.get("jobs", []) for o in j.get("outputs", [])
    }

    # --- every file in the roots must be accounted for
    known: set[Path] = set(manifest.input_files)
    claimed: Counter[Path] = Counter()
    dropped = {str(t.path): t for t in manifest.tickets}
    for dt in manifest.tickets:
        known |= set(dt.user_files)

    for path_s, dt in dropped.items():
        ticket = Path(path_s)
        recs = by_path.get(path_s, [])
        active = [r for r in recs if r["active"]]
        label = ticket.name
        done_p = ticket.with_name(ticket.name + ".done")
        failed_p = ticket.with_name(ticket.name + ".failed")
        sidecar = ticket.with_name(ticket.name[: -len(".job")] + ".status.yaml")
        known |= {done_p, failed_p, sidecar}
        if not active:
            problems.append(f"{label}: lost — no record in the state database")
            continue
        if len(active) > 1:
            problems.append(f"{label}: {len(active)} active records")
        rec = active[-1]
        phase = rec["phase"]
        if phase not in TERMINAL:
            problems.append(f"{label}: stuck in phase {phase} (error: {rec['error']})")
        elif not rec["filed"]:
            problems.append(f"{label}: {phase} but never filed")
        if ticket.exists():
            problems.append(f"{label}: the ticket file is still NAME.job")
        filed_as = [p for p in (done_p, failed_p) if p.exists()]
        if len(filed_as) != 1:
            problems.append(
                f"{label}: filed as {[p.name for p in filed_as] or 'nothing'} (phase {phase})"
            )
        elif phase in TERMINAL and not filed_as[0].name.endswith("." + phase):
            problems.append(f"{label}: record says {phase} but the file is {filed_as[0].name}")
        if dt.expect == "done" and phase != "done":
            err = json.loads(rec["error"]) if rec["error"] else {}
            problems.append(f"{label}: expected done, ended {phase}: {err.get('message')}")
        if dt.expect == "failed" and phase != "failed":
            problems.append(f"{label}: expected failed, ended {phase}")
        if phase == "failed":
            err = json.loads(rec["error"]) if rec["error"] else {}
            if not err.get("message"):
                problems.append(f"{label}: failed without a reason in the database")
            try:
                side = yaml.safe_load(sidecar.read_text())
            except (OSError, yaml.YAMLError) as exc:
                problems.append(f"{label}: failed but its sidecar cannot be read: {exc}")
            else:
                if not isinstance(side, dict) or not side.get("error"):
                    problems.append(f"{label}: failed but its sidecar has no error")
        # outputs of this ticket (every generation's records may have placed files)
        for r in recs:
            for o in outs_by_ticket.get(r["id"], []):
                if not o["dest_name"]:
                    if r is rec and phase == "done" and o["state"] != "skipped":
                        problems.append(f"{label}: done but output {o['filename']} not placed")
                    continue
                dest = ticket.parent / o["dest_name"]
                claimed[dest] += 1
                known.add(dest)
                if DUP_RE.search(o["dest_name"]) and not dt.may_rename:
                    problems.append(f"{label}: output duplicated as {o['dest_name']}")
                if not dest.is_file() or dest.is_symlink():
                    problems.append(f"{label}: output {o['dest_name']} is missing")
                    continue
                emu = emu_outputs.get(o["remote_id"])
                want = emu[1]["checksum"] if emu else o["checksum"]
                got = md5_file(dest)
                if got != want:
                    size = dest.stat().st_size
                    want_size = emu[1]["size"] if emu else "?"
                    problems.append(
                        f"{label}: output {o['dest_name']} is torn or corrupt "
                        f"(md5 {got}, {size} bytes; server {want}, {want_size})"
                    )
    for dest, n in claimed.items():
        if n > 1:
            problems.append(f"{dest.name}: claimed by {n} output records")

    # --- strays: temp files, duplicates, unknown tickets
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                p = Path(dirpath) / name
                if name.startswith(".") or name.endswith((".part", ".tmp")):
                    problems.append(f"temp file left: {p.relative_to(root)}")
                elif name.endswith(".job"):
                    if str(p) not in dropped:
                        problems.append(f"unknown ticket: {p.relative_to(root)}")
                elif p not in known:
                    what = "duplicated output" if DUP_RE.search(name) else "unexpected file"
                    problems.append(f"{what}: {p.relative_to(root)}")

    # --- double spend
    jobs = emulator_state.get("jobs", [])
    recorded_jobs = {t["job_id"] for t in tickets if t["job_id"]}
    started_by_input: dict[str, list[str]] = defaultdict(list)
    for j in jobs:
        if j["starts"] > 1:
            problems.append(f"job {j['id']} started {j['starts']} times")
        if j["starts"] < 1:
            continue
        if j["id"] not in recorded_jobs and j["id"] not in manifest.adopted_jobs:
            problems.append(f"job {j['id']} was started but no ticket record owns it")
        for i in j.get("inputs", []):
            if i.get("filename"):
                started_by_input[i["filename"]].append(j["id"])
    for path_s, dt in dropped.items():
        generations = max(1, len(by_path.get(path_s, [])))
        started = {jid for name in dt.inputs for jid in started_by_input.get(name, [])}
        if len(started) > generations:
            problems.append(
                f"{Path(path_s).name}: {len(started)} started jobs for {generations} "
                f"generation(s): {sorted(started)}"
            )
    if emulator_state.get("internal_errors"):
        problems.append(f"emulator internal errors: {emulator_state['internal_errors'][:3]}")
    return problems
