"""Make a state database that already holds many finished tickets (issue 13: retention and
start-up with a long history). Each ticket is done and filed, with one input, one placed output
and seven history rows, like a real conversion's; they finished over the last ``--days`` days.

Usage: .venv/bin/python scripts/gen_state.py STATE.db --tickets 1000000 --root /path/to/inbox
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.store import Store

EVENTS = ("accepted", "creating", "created", "uploaded", "started", "completed", "done")
PHASES = ("pending", "creating", "uploading", "starting", "processing", "downloading", "done")


def generate(db: Path, tickets: int, root: Path, days: float, batch: int = 20_000) -> None:
    if db.exists():
        raise SystemExit(f"{db} exists; give a new path")
    Store.open(db).close()  # the schema, migrations and pragmas of a real state file
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA synchronous = OFF")
    now = time.time()
    span = days * 86400.0
    spec = json.dumps({"kind": "conversion", "inputs": [], "conversions": [{"target": "jpg"}]})
    began = time.monotonic()
    tid = 0
    while tid < tickets:
        n = min(batch, tickets - tid)
        rows, inputs, outputs, history = [], [], [], []
        for _ in range(n):
            tid += 1
            finished = now - span + span * tid / tickets
            folder = root / "old" / f"d{tid % 100:02d}"
            path = str(folder / f"t{tid:07d}.job")
            key = hashlib.sha256(f"gen\0{path}\0{tid}".encode()).hexdigest()[:40]
            rows.append(
                (
                    tid,
                    path,
                    str(root),
                    f"{tid:064x}",
                    "conversion",
                    spec,
                    "done",
                    1,
                    1,
                    key,
                    f"job-{tid:08d}",
                    "tok",
                    "https://srv/dl",
                    1,
                    "completed",
                    "",
                    finished - 20,
                    finished,
                    finished,
                )
            )
            inputs.append(
                (
                    tid,
                    0,
                    "local",
                    f"t{tid:07d}.png",
                    str(folder / f"t{tid:07d}.png"),
                    f"{key[:24]}-0",
                    1,
                    f"in-{tid}",
                )
            )
            outputs.append(
                (
                    tid,
                    0,
                    f"out-{tid}",
                    f"t{tid:07d}.jpg",
                    f"https://srv/o/{tid}",
                    1234,
                    "d41d8cd98f00b204e9800998ecf8427e",
                    "enabled",
                    "done",
                    f"t{tid:07d}.jpg",
                    "d41d8cd98f00b204e9800998ecf8427e",
                    "verified",
                    1,
                )
            )
            for k, (event, phase) in enumerate(zip(EVENTS, PHASES, strict=True)):
                history.append((tid, finished - 20 + 3 * k, phase, event, None))
        with conn:
            conn.executemany(
                """INSERT INTO tickets (id, path, root, sha256, kind, spec, phase, active, filed,
                       idem_key, job_id, job_token, job_server, start_sent, remote_status,
                       remote_info, created_at, updated_at, finished_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                rows,
            )
            conn.executemany(
                """INSERT INTO inputs (ticket_id, idx, kind, value, abs_path, upload_uuid, sent,
                       remote_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                inputs,
            )
            conn.executemany(
                """INSERT INTO outputs (ticket_id, idx, remote_id, filename, uri, size, checksum,
                       remote_status, state, dest_name, digest, verdict, gets)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                outputs,
            )
            conn.executemany(
                "INSERT INTO history (ticket_id, at, phase, event, message) VALUES (?, ?, ?, ?, ?)",
                history,
            )
        if tid % 100_000 == 0 or tid == tickets:
            print(f"{tid} tickets, {time.monotonic() - began:.0f} s", flush=True)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    os.chmod(db, 0o600)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("db", type=Path)
    p.add_argument("--tickets", type=int, default=1_000_000)
    p.add_argument("--root", type=Path, required=True, help="the watched folder they came from")
    p.add_argument("--days", type=float, default=365.0, help="finished over this many days")
    a = p.parse_args(argv)
    generate(a.db, a.tickets, a.root.resolve(), a.days)
    return 0


if __name__ == "__main__":
    sys.exit(main())
