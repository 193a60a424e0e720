"""The embedded SQLite backend of the state store: the only importer of sqlite_utils.

Every ticket, the remote job it owns, its inputs and outputs, and a history row for every
transition live here, so that a restart resumes exactly where the last process stopped. The
scheduler records a step *before* it takes it; each ``update`` writes its history row with it, all
or nothing. With ``group_commit`` the writes of many tickets share one transaction, and the
scheduler commits it before it acts on any of them (docs/DESIGN.md).

The database runs in WAL mode (readers such as ``convert-agent status`` never block the writer)
with ``synchronous=NORMAL``: every committed transition survives a killed process; after a power
cut the last few may be lost, which the scheduler's recovery (re-reading the remote job, matching
outputs by checksum) tolerates. One agent per state file is enforced by ``StateLock``.

It must not know about HTTP or folders: it stores strings and numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from agent.models import Phase, RemoteOutput
from agent.store.records import (
    InputRecord,
    OutputRecord,
    TicketRecord,
    WritesLost,
    _decode_columns,
)

if TYPE_CHECKING:
    from sqlite_utils import Database

# sqlite-utils is imported only by the writer (``Store.open``): ``status``, ``list`` and ``why``
# read through the bare connection and start ~60 ms sooner without it.


def m001_initial(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE tickets (
            id INTEGER PRIMARY KEY,
            path TEXT NOT NULL,          -- absolute path of the NAME.job file
            root TEXT NOT NULL,          -- the watched folder it was found in
            sha256 TEXT NOT NULL,        -- of the ticket's bytes: an edit is a new request
            kind TEXT NOT NULL,
            spec TEXT NOT NULL,          -- TicketSpec.to_json()
            phase TEXT NOT NULL,
            active INTEGER NOT NULL DEFAULT 1,
            filed INTEGER NOT NULL DEFAULT 0,  -- ticket file renamed/kept/deleted after the end
            idem_key TEXT NOT NULL,
            job_id TEXT,
            job_token TEXT,
            job_server TEXT,
            start_sent INTEGER NOT NULL DEFAULT 0,
            remote_status TEXT,
            remote_info TEXT,
            error TEXT,                  -- JSON {kind, title, message[, retry_after]}
            wait_until REAL,
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            finished_at REAL
        )
        """
    )
    db.execute("CREATE UNIQUE INDEX tickets_active_path ON tickets(path) WHERE active = 1")
    db.execute("CREATE INDEX tickets_phase ON tickets(phase, filed)")
    db.execute(
        """
        CREATE TABLE inputs (
            id INTEGER PRIMARY KEY,
            ticket_id INTEGER NOT NULL REFERENCES tickets(id),
            idx INTEGER NOT NULL,
            kind TEXT NOT NULL,
            value TEXT NOT NULL,
            abs_path TEXT,
            upload_uuid TEXT NOT NULL,
            sent INTEGER NOT NULL DEFAULT 0,
            remote_id TEXT
        )
        """
    )
    db.execute("CREATE INDEX inputs_ticket ON inputs(ticket_id)")
    db.execute(
        """
        CREATE TABLE outputs (
            id INTEGER PRIMARY KEY,
            ticket_id INTEGER NOT NULL REFERENCES tickets(id),
            idx INTEGER NOT NULL,
            remote_id TEXT NOT NULL,
            filename TEXT NOT NULL,
            uri TEXT NOT NULL,
            size INTEGER,
            checksum TEXT NOT NULL,
            remote_status TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',  -- pending | placing | done | skipped
            dest_name TEXT,              -- the file name chosen in the ticket's folder
            digest TEXT,                 -- what we computed while streaming
            verdict TEXT,                -- verified | unverified
            gets INTEGER NOT NULL DEFAULT 0,  -- downloads we spent on it
            mismatches INTEGER NOT NULL DEFAULT 0,
            UNIQUE (ticket_id, remote_id)
        )
        """
    )
    db.execute(
        """
        CREATE TABLE history (
            id INTEGER PRIMARY KEY,
            ticket_id INTEGER NOT NULL REFERENCES tickets(id),
            at REAL NOT NULL,
            phase TEXT NOT NULL,
            event TEXT NOT NULL,
            message TEXT
        )
        """
    )
    db.execute("CREATE INDEX history_ticket ON history(ticket_id)")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


def m002_output_validator(db: Database) -> None:
    # The download's validator, kept so a resume after a restart still sends If-Range.
    db.execute("ALTER TABLE outputs ADD COLUMN validator TEXT")


def _migrations() -> Any:
    """The schema's migrations, in order (sqlite-utils' Migrations, imported here)."""
    from sqlite_utils.migrations import Migrations

    m = Migrations("convert-agent")
    for step in (m001_initial, m002_output_validator):
        m()(step)
    return m


class _Reader:
    """What a read-only store uses of a database: its connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def close(self) -> None:
        self.conn.close()


class Store:
    """The state file. Reads of a live ticket come from a cache of the records this (only)
    writer holds, kept in step with every write.

    With ``group_commit`` (the scheduler turns it on) writes are not committed one by one: they
    join one open transaction until ``commit()``, which the caller runs before it acts on any of
    them (see the scheduler's ``_persisted``). A killed process loses only writes nothing was
    done about yet. A write that fails rolls back the whole group, as a failed commit does, and
    the next ``commit()`` raises ``WritesLost``: nothing was acted on yet, and every act waiting
    for that commit fails instead of acting on a write that is gone. (A savepoint per write
    would keep the others, at two more statements per write: a third of a ticket's.)"""

    async_commit = False  # commit() is synchronous (microseconds): the scheduler calls it

    def __init__(self, db: Database, *, readonly: bool = False) -> None:
        """``db`` is sqlite-utils' Database for the writer; a read-only store gets a ``_Reader``
        (the connection only: every read goes straight to it)."""
        self.db = db
        self.readonly = readonly
        self.group_commit = False
        self.on_dirty: Callable[[], None] | None = None  # a group write is waiting for commit()
        # Live records by id, for the writer only (another process may write a read-only
        # store's file). Filed tickets leave it; anything else read once stays in step.
        self._live: dict[int, TicketRecord] = {}
        self._lost: WritesLost | None = None  # a grouped write failed: commit() says so

    # ----------------------------------------------------------------- transactions

    @property
    def dirty(self) -> bool:
        """Whether writes wait for ``commit()`` (or a lost group waits to be reported by it)."""
        return self._lost is not None or self.db.conn.in_transaction

    def commit(self) -> None:
        """Commit the writes made since the last commit (group commit). On failure they are
        rolled back and the cache forgotten, so nothing unwritten is ever read back. Raises
        ``WritesLost`` once after a grouped write failed (writes made since are undone too)."""
        conn = self.db.conn
        if self._lost is not None:
            lost, self._lost = self._lost, None
            self._lose()
            raise lost
        if not conn.in_transaction:
            return
        try:
            conn.execute("COMMIT")
        except BaseException:
            self._lose()
            raise

    async def flush(self) -> None:
        """``commit()``, for callers written against an asynchronous commit (the contract)."""
        self.commit()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """One write's statements (and nothing that may fail without writing): its own
        transaction, or part of the open group (group commit), all or nothing either way. A
        failed write leaves the cache to be read again."""
        conn = self.db.conn
        if not self.group_commit:
            try:
                with self.db.atomic():
                    yield
            except BaseException:
                self._live.clear()
                raise
            return
        if not conn.in_transaction:
            conn.execute("BEGIN")
        try:
            yield
        except BaseException as exc:
            self._lose(exc)
            raise
        if self.on_dirty is not None:
            self.on_dirty()

    def _lose(self, exc: BaseException | None = None) -> None:
        """Roll the open group back and forget the cache; with ``exc`` (a write failed) the next
        ``commit()`` raises, so the acts waiting for the group learn it is gone."""
        self._live.clear()
        if self.db.conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.db.conn.execute("ROLLBACK")
        if exc is not None and self._lost is None:
            self._lost = WritesLost(
                f"a state write failed ({exc}); the writes made with it were undone"
            )
        if self.on_dirty is not None and self._lost is not None:
            self.on_dirty()

    def _exec(self, sql: str, params: Sequence[Any]) -> None:
        """One write statement: committed at once, or part of the open group."""
        if self.group_commit:
            with self._tx():
                self.db.conn.execute(sql, params)
        else:
            self.db.execute(sql, params)

    # ----------------------------------------------------------------- opening

    @classmethod
    def open(cls, path: Path | str) -> Store:
        """Open (creating and migrating) a state file for the one writer."""
        if str(path) == ":memory:":
            conn = sqlite3.connect(":memory:", check_same_thread=False)
        else:
            p = Path(path)
            p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Created private: the database holds job tokens and download passwords.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            conn = sqlite3.connect(str(p), timeout=30, check_same_thread=False)
        from sqlite_utils import Database

        db = Database(conn, execute_plugins=False)
        db.execute("PRAGMA busy_timeout = 30000")
        if str(path) != ":memory:":
            db.enable_wal()
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
        _migrations().apply(db)
        return cls(db)

    @classmethod
    def open_readonly(cls, path: Path | str) -> Store:
        """For ``status``/``list``/``why`` while an agent runs: never writes, never migrates."""
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(p)
        conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=10, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        return cls(cast("Database", _Reader(conn)), readonly=True)

    def close(self) -> None:
        if not self.readonly:
            self.commit()
        self.db.close()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows of a SELECT as dicts, straight from the connection: ``Database.query`` wraps
        every read in a savepoint (a transaction of its own), a third of the cost of a
        ticket's reads."""
        cur = self.db.conn.execute(sql, params)
        keys = [d[0] for d in cur.description]
        return [dict(zip(keys, row, strict=True)) for row in cur]

    # ----------------------------------------------------------------- tickets

    def add_ticket(
        self,
        *,
        path: str,
        root: str,
        sha256: str,
        kind: str,
        spec: Mapping[str, Any],
        inputs: Sequence[tuple[str, str, str | None]],
        idem_prefix: str,
        now: float,
        phase: Phase = Phase.PENDING,
        error: Mapping[str, Any] | None = None,
        message: str = "ticket accepted",
    ) -> TicketRecord:
        """Record a new request for ``path``; the previous record for that path becomes history.

        ``inputs`` are (kind, value, absolute path or None). The idempotency key is derived from
        the ticket (prefix, path, content hash and record id), so a retry is a new request.
        """
        with self._tx():
            for (old,) in self.db.conn.execute(
                "UPDATE tickets SET active = 0 WHERE path = ? AND active = 1 RETURNING id", [path]
            ).fetchall():
                self._live.pop(old, None)
            cur = self.db.execute(
                """INSERT INTO tickets (path, root, sha256, kind, spec, phase, idem_key, error,
                       created_at, updated_at, finished_at, filed)
                   VALUES (?, ?, ?, ?, ?, ?, '', ?, ?, ?, ?, 0)""",
                [
                    path,
                    root,
                    sha256,
                    kind,
                    json.dumps(spec),
                    str(phase),
                    json.dumps(error) if error else None,
                    now,
                    now,
                    now if phase.terminal else None,
                ],
            )
            tid = int(cur.lastrowid or 0)
            key = hashlib.sha256(f"{idem_prefix}\0{path}\0{sha256}\0{tid}".encode()).hexdigest()
            self.db.execute("UPDATE tickets SET idem_key = ? WHERE id = ?", [key[:40], tid])
            for idx, (ikind, value, abs_path) in enumerate(inputs):
                self.db.execute(
                    """INSERT INTO inputs (ticket_id, idx, kind, value, abs_path, upload_uuid)
                       VALUES (?, ?, ?, ?, ?, ?)""",
                    [tid, idx, ikind, value, abs_path, f"{key[:24]}-{idx}"],
                )
            self._history(tid, now, phase, "accepted" if not error else "rejected", message)
            return self.get(tid)

    def reset_for_resubmit(self, ticket_id: int, now: float, *, message: str) -> None:
        """Start a ticket over with a new job: a new idempotency key, inputs unsent, outputs
        forgotten (none were written), back to pending. The old job is left to expire."""
        rec = self.get(ticket_id)
        inputs = self.inputs(ticket_id)
        key = hashlib.sha256(f"{rec.idem_key}\0resubmit".encode()).hexdigest()[:40]
        with self._tx():
            self._live.pop(ticket_id, None)
            self.db.execute("DELETE FROM outputs WHERE ticket_id = ?", [ticket_id])
            self.db.execute(
                "UPDATE inputs SET sent = 0, remote_id = NULL WHERE ticket_id = ?", [ticket_id]
            )
            for inp in inputs:
                self.db.execute(
                    "UPDATE inputs SET upload_uuid = ? WHERE id = ?",
                    [f"{key[:24]}-{inp.idx}", inp.id],
                )
            self.db.execute(
                """UPDATE tickets SET phase = ?, idem_key = ?, job_id = NULL, job_token = NULL,
                       job_server = NULL, start_sent = 0, remote_status = NULL,
                       remote_info = NULL, error = NULL, wait_until = NULL, attempts = 0,
                       updated_at = ?
                   WHERE id = ?""",
                [str(Phase.PENDING), key, now, ticket_id],
            )
            self._history(ticket_id, now, Phase.PENDING, "resubmitted", message)

    def get(self, ticket_id: int) -> TicketRecord:
        rec = self._live.get(ticket_id)
        if rec is not None:
            return rec
        rows = list(self._query("SELECT * FROM tickets WHERE id = ?", [ticket_id]))
        if not rows:
            raise KeyError(ticket_id)
        rec = TicketRecord.from_row(rows[0])
        if not self.readonly and not rec.filed:
            self._live[ticket_id] = rec
        return rec

    def same_content_elsewhere(self, root: str, sha256: str, path: str) -> list[TicketRecord]:
        """Active tickets under ``root`` with these bytes at another path (was it renamed?)."""
        rows = self._query(
            "SELECT id FROM tickets WHERE active = 1 AND root = ? AND sha256 = ? AND path != ?"
            " ORDER BY id",
            [root, sha256, path],
        )
        return [self.get(r["id"]) for r in rows]

    def active_for_path(self, path: str) -> TicketRecord | None:
        rows = list(self._query("SELECT * FROM tickets WHERE path = ? AND active = 1", [path]))
        return TicketRecord.from_row(rows[0]) if rows else None

    def update(
        self,
        ticket_id: int,
        now: float,
        *,
        event: str,
        message: str | None = None,
        **changes: Any,
    ) -> TicketRecord:
        """Change a ticket's fields and write the history row, in one transaction."""
        cols = dict(changes)
        if "phase" in cols:
            cols["phase"] = str(cols["phase"])
            if Phase(cols["phase"]).terminal:
                cols.setdefault("finished_at", now)
        if "error" in cols:
            cols["error"] = json.dumps(cols["error"]) if cols["error"] else None
        for k in ("filed", "start_sent", "active"):
            if k in cols:
                cols[k] = int(bool(cols[k]))
        cols["updated_at"] = now
        assignments = ", ".join(f"{k} = ?" for k in cols)
        rec = self.get(ticket_id)
        with self._tx():
            self.db.conn.execute(
                f"UPDATE tickets SET {assignments} WHERE id = ?", [*cols.values(), ticket_id]
            )
            rec = self._cached(rec, cols)
            self._history(ticket_id, now, rec.phase, event, message)
        return rec

    def touch(self, ticket_id: int, now: float, **changes: Any) -> None:
        """Change fields without a history row (server status text on every poll)."""
        if "error" in changes:
            changes["error"] = json.dumps(changes["error"]) if changes["error"] else None
        changes["updated_at"] = now
        assignments = ", ".join(f"{k} = ?" for k in changes)
        with self._tx():
            rec = self._live.get(ticket_id)
            self.db.conn.execute(
                f"UPDATE tickets SET {assignments} WHERE id = ?", [*changes.values(), ticket_id]
            )
            if rec is not None:
                self._cached(rec, changes)

    def _cached(self, rec: TicketRecord, cols: Mapping[str, Any]) -> TicketRecord:
        """``rec`` with the column values just written (as stored), kept in the cache unless
        it is filed now."""
        new = dataclasses.replace(rec, **_decode_columns(cols))
        if new.filed:
            self._live.pop(rec.id, None)
        else:
            self._live[rec.id] = new
        return new

    def _history(
        self, ticket_id: int, now: float, phase: Phase, event: str, message: str | None
    ) -> None:
        self.db.conn.execute(
            "INSERT INTO history (ticket_id, at, phase, event, message) VALUES (?, ?, ?, ?, ?)",
            [ticket_id, now, str(phase), event, message],
        )

    def unfinished(self) -> list[TicketRecord]:
        """Active tickets with work left: not terminal, or terminal but not yet filed."""
        return [
            TicketRecord.from_row(r)
            for r in self._query(
                "SELECT * FROM tickets WHERE active = 1 AND (phase NOT IN (?, ?, ?) OR filed = 0)"
                " ORDER BY id",
                [str(Phase.DONE), str(Phase.FAILED), str(Phase.CANCELED)],
            )
        ]

    def tickets(
        self, *, phases: Iterable[Phase] | None = None, active_only: bool = True, limit: int = 0
    ) -> list[TicketRecord]:
        where, args = [], []
        if active_only:
            where.append("active = 1")
        if phases is not None:
            ph = [str(p) for p in phases]
            where.append(f"phase IN ({', '.join('?' * len(ph))})")
            args.extend(ph)
        sql = "SELECT * FROM tickets"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [TicketRecord.from_row(r) for r in self._query(sql, args)]

    def find(self, name: str) -> list[TicketRecord]:
        """Active tickets whose path, file name or stem is ``name`` (for ``why``/``retry``)."""
        out = []
        for rec in self.tickets():
            base = rec.name
            stem = base[: -len(".job")] if base.endswith(".job") else base
            if name in (rec.path, base, stem) or rec.path.endswith(os.sep + name):
                out.append(rec)
        return out

    def counts(self) -> dict[str, int]:
        res = {str(p): 0 for p in Phase}
        for row in self._query(
            "SELECT phase, count(*) AS n FROM tickets WHERE active = 1 GROUP BY phase"
        ):
            res[row["phase"]] = row["n"]
        res["waiting"] = next(
            iter(
                self._query(
                    "SELECT count(*) AS n FROM tickets WHERE active = 1 AND wait_until IS NOT NULL"
                    " AND phase NOT IN (?, ?, ?)",
                    [str(Phase.DONE), str(Phase.FAILED), str(Phase.CANCELED)],
                )
            )
        )["n"]
        return res

    def history(self, ticket_id: int) -> list[dict[str, Any]]:
        return list(
            self._query(
                "SELECT at, phase, event, message FROM history WHERE ticket_id = ? ORDER BY id",
                [ticket_id],
            )
        )

    # ----------------------------------------------------------------- inputs / outputs

    def inputs(self, ticket_id: int) -> list[InputRecord]:
        return [
            InputRecord.from_row(r)
            for r in self._query(
                "SELECT * FROM inputs WHERE ticket_id = ? ORDER BY idx", [ticket_id]
            )
        ]

    def mark_input_sent(self, input_id: int, remote_id: str | None) -> None:
        self._exec("UPDATE inputs SET sent = 1, remote_id = ? WHERE id = ?", [remote_id, input_id])

    def record_outputs(self, ticket_id: int, outputs: Sequence[RemoteOutput]) -> None:
        """Insert outputs not seen before, refresh uri/status/checksum of the others."""
        with self._tx():
            for idx, o in enumerate(outputs):
                self.db.execute(
                    """INSERT INTO outputs (ticket_id, idx, remote_id, filename, uri, size,
                           checksum, remote_status)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                       ON CONFLICT (ticket_id, remote_id) DO UPDATE SET
                           uri = excluded.uri, remote_status = excluded.remote_status,
                           size = COALESCE(excluded.size, size),
                           checksum = CASE WHEN excluded.checksum != '' THEN excluded.checksum
                                           ELSE checksum END""",
                    [
                        ticket_id,
                        idx,
                        o.id or f"#{idx}",
                        o.filename,
                        o.uri,
                        o.size,
                        o.checksum,
                        o.status,
                    ],
                )

    def outputs(self, ticket_id: int) -> list[OutputRecord]:
        return [
            OutputRecord.from_row(r)
            for r in self._query(
                "SELECT * FROM outputs WHERE ticket_id = ? ORDER BY idx", [ticket_id]
            )
        ]

    def update_output(self, output_id: int, **changes: Any) -> None:
        assignments = ", ".join(f"{k} = ?" for k in changes)
        self._exec(f"UPDATE outputs SET {assignments} WHERE id = ?", [*changes.values(), output_id])

    def output_names(self, root: str) -> set[str]:
        """Absolute paths of every output the agent placed under ``root`` (its own files)."""
        return {
            os.path.join(os.path.dirname(r["path"]), r["dest_name"])
            for r in self._query(
                """SELECT t.path, o.dest_name FROM outputs o JOIN tickets t ON t.id = o.ticket_id
                   WHERE t.root = ? AND o.dest_name IS NOT NULL""",
                [root],
            )
        }

    # ----------------------------------------------------------------- meta

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = list(self._query("SELECT value FROM meta WHERE key = ?", [key]))
        return rows[0]["value"] if rows else default

    def set_meta(self, key: str, value: str | None) -> None:
        """Committed at once (with any writes waiting for a group commit)."""
        self.commit()
        if value is None:
            self.db.execute("DELETE FROM meta WHERE key = ?", [key])
        else:
            self.db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, value],
            )

    def integrity_ok(self) -> bool:
        rows = self._query("PRAGMA integrity_check")
        return bool(rows) and next(iter(rows[0].values())) == "ok"
