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
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from agent.models import Phase, RemoteOutput
from agent.store.records import (
    InputRecord,
    OutputRecord,
    PrunedRecord,
    PruneResult,
    TicketRecord,
    WritesLost,
    _decode_columns,
    named,
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


def m003_retention(db: Database) -> None:
    # Retention (``Store.prune``): finished records go oldest first, found through this index in
    # the order they finished; a removed ticket leaves a tombstone (``why`` says it was pruned,
    # and when) and the names of the outputs it placed (still the agent's own files, so a rule
    # folder never takes one up as a new file). Both tables are bounded too.
    db.execute(f"CREATE INDEX tickets_prunable ON tickets({_PRUNE_KEY}, id) WHERE {_PRUNABLE}")
    db.execute("CREATE INDEX outputs_dest ON outputs(dest_name) WHERE dest_name IS NOT NULL")
    db.execute(
        """
        CREATE TABLE pruned (
            id INTEGER PRIMARY KEY,
            path TEXT NOT NULL,
            root TEXT NOT NULL,
            outcome TEXT NOT NULL,       -- done | failed | canceled | superseded
            finished_at REAL,
            pruned_at REAL NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX pruned_path ON pruned(path)")
    db.execute(
        """
        CREATE TABLE pruned_outputs (
            pruned_id INTEGER NOT NULL REFERENCES pruned(id),
            path TEXT NOT NULL           -- absolute path of an output the pruned ticket placed
        )
        """
    )
    db.execute("CREATE INDEX pruned_outputs_owner ON pruned_outputs(pruned_id)")
    db.execute("CREATE INDEX pruned_outputs_path ON pruned_outputs(path)")


def m004_status_counts(db: Database) -> None:
    # ``counts`` (status, /metrics, the dashboard) reads this index alone, not every row: with a
    # long history (before retention has caught up) a table scan took ~1.4 s per million rows.
    db.execute("CREATE INDEX tickets_counts ON tickets(active, phase, wait_until)")


def m005_startup_status(db: Database) -> None:
    # Issue 13, a long history (a million finished records before retention caught up):
    # ``unfinished`` (start-up, resume) reads the tickets with work left through this partial
    # index, which holds only them, instead of scanning every record (0.3 s per million) ...
    db.execute(f"CREATE INDEX tickets_unfinished ON tickets(id) WHERE {_UNFINISHED}")
    # ... and ``counts`` (status, /metrics, the dashboard) reads one row per phase, kept in step
    # by these triggers, instead of counting every active record in ``tickets_counts`` (0.13 s
    # per million). The triggers fire on a change of phase, active or wait_until only.
    db.execute(
        "CREATE TABLE ticket_counts (phase TEXT PRIMARY KEY, n INTEGER NOT NULL,"
        " waiting INTEGER NOT NULL)"
    )
    db.execute(
        f"INSERT INTO ticket_counts (phase, n, waiting) SELECT phase, count(*),"
        f" coalesce(sum({_waiting('tickets')}), 0) FROM tickets WHERE active = 1 GROUP BY phase"
    )
    add = (
        "INSERT INTO ticket_counts (phase, n, waiting) VALUES (new.phase, new.active = 1, {w})"
        " ON CONFLICT (phase) DO UPDATE SET n = n + excluded.n,"
        " waiting = waiting + excluded.waiting;"
    ).format(w=_waiting("new"))
    sub = (
        "UPDATE ticket_counts SET n = n - (old.active = 1), waiting = waiting - {w}"
        " WHERE phase = old.phase;"
    ).format(w=_waiting("old"))
    db.execute(
        f"CREATE TRIGGER tickets_counted_insert AFTER INSERT ON tickets WHEN new.active = 1"
        f" BEGIN {add} END"
    )
    db.execute(
        f"CREATE TRIGGER tickets_counted_delete AFTER DELETE ON tickets WHEN old.active = 1"
        f" BEGIN {sub} END"
    )
    db.execute(
        "CREATE TRIGGER tickets_counted_update AFTER UPDATE OF phase, active, wait_until"
        " ON tickets WHEN old.phase IS NOT new.phase OR old.active IS NOT new.active"
        f" OR {_waiting('old')} IS NOT {_waiting('new')} BEGIN {sub} {add} END"
    )


def _waiting(row: str) -> str:
    """1 when ``row`` (a table or a trigger's old/new) is an active ticket waiting to retry."""
    return (
        f"({row}.active = 1 AND {row}.wait_until IS NOT NULL"
        f" AND {row}.phase NOT IN ('{_TERMINAL[0]}', '{_TERMINAL[1]}', '{_TERMINAL[2]}'))"
    )


# A record retention may remove: superseded by a newer request for its path, or ended and filed
# (its ticket file renamed); never one with work left. Ordered by when it finished.
_PRUNABLE = "active = 0 OR filed = 1"
_PRUNE_KEY = "COALESCE(finished_at, updated_at)"
_TERMINAL = (str(Phase.DONE), str(Phase.FAILED), str(Phase.CANCELED))
# An active record with work left: not ended, or ended but not filed. Written out with literal
# values (a query term must match the partial index's own to use it; a bound parameter does not).
_UNFINISHED = (
    f"active = 1 AND (phase NOT IN ('{_TERMINAL[0]}', '{_TERMINAL[1]}', '{_TERMINAL[2]}')"
    " OR filed = 0)"
)
DEFAULT_TOMBSTONES = 10_000  # tombstones kept when ``keep_finished`` is 0 (no count limit)
# Pages given back to the file system after each retention batch (``auto_vacuum=INCREMENTAL``):
# about what a batch frees, so the file shrinks as it is pruned without one long stall.
VACUUM_PAGES_PER_BATCH = 2000


def _migrations() -> Any:
    """The schema's migrations, in order (sqlite-utils' Migrations, imported here)."""
    from sqlite_utils.migrations import Migrations

    m = Migrations("convert-agent")
    for step in (
        m001_initial,
        m002_output_validator,
        m003_retention,
        m004_status_counts,
        m005_startup_status,
    ):
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
        # Takes effect only in a file with no table yet: a new state file gives the space of
        # pruned records back (``prune``); an older one reuses it (docs/decisions.md, Retention).
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        if str(path) != ":memory:":
            db.enable_wal()
            # The WAL is cut back to this after a checkpoint (a retention pass writes a lot).
            db.execute("PRAGMA journal_size_limit = 16777216")
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
        sql = f"SELECT * FROM tickets INDEXED BY tickets_unfinished WHERE {_UNFINISHED} ORDER BY id"
        try:
            rows = self._query(sql)
        except sqlite3.OperationalError:  # a reader of a file not migrated yet: no such index
            rows = self._query(sql.replace(" INDEXED BY tickets_unfinished", ""))
        return [TicketRecord.from_row(r) for r in rows]

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
            if named(rec.path, name):
                out.append(rec)
        return out

    def counts(self) -> dict[str, int]:
        """Active tickets per phase, and how many of them wait to retry (``waiting``)."""
        res = {str(p): 0 for p in Phase}
        try:
            rows = self._query("SELECT phase, n, waiting FROM ticket_counts")
        except sqlite3.OperationalError:  # a reader of a file not migrated yet: count them
            return self._count_rows()
        waiting = 0
        for row in rows:
            if row["n"] or row["phase"] in res:
                res[row["phase"]] = row["n"]
            waiting += row["waiting"]
        res["waiting"] = waiting
        return res

    def _count_rows(self) -> dict[str, int]:
        """``counts`` from the records themselves (``ticket_counts`` keeps the same figures)."""
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
        names = {
            os.path.join(os.path.dirname(r["path"]), r["dest_name"])
            for r in self._query(
                """SELECT t.path, o.dest_name FROM outputs o JOIN tickets t ON t.id = o.ticket_id
                   WHERE t.root = ? AND o.dest_name IS NOT NULL""",
                [root],
            )
        }
        names.update(  # and those of pruned tickets, while their tombstones are kept
            r["path"]
            for r in self._query(
                """SELECT o.path FROM pruned_outputs o JOIN pruned p ON p.id = o.pruned_id
                   WHERE p.root = ?""",
                [root],
            )
        )
        return names

    def is_own_output(self, path: str, roots: Collection[str]) -> bool:
        """Whether a record or tombstone of a ticket under one of ``roots`` names ``path`` as
        an output it placed (``path`` in ``output_names`` of one of them). Two lookups, each
        through an index (``outputs_dest``, ``pruned_outputs_path``): the records placing an
        output of that file name (one per folder that has one), then the tombstones."""
        if not roots:
            return False
        where, name = os.path.split(path)
        roots = list(roots)
        marks = ", ".join("?" * len(roots))
        for (ticket,) in self.db.conn.execute(
            "SELECT t.path FROM outputs o JOIN tickets t ON t.id = o.ticket_id"
            f" WHERE o.dest_name = ? AND t.root IN ({marks})",
            [name, *roots],
        ):
            if os.path.dirname(ticket) == where:
                return True
        try:
            row = self.db.conn.execute(
                "SELECT 1 FROM pruned_outputs o JOIN pruned p ON p.id = o.pruned_id"
                f" WHERE o.path = ? AND p.root IN ({marks}) LIMIT 1",
                [path, *roots],
            ).fetchone()
        except sqlite3.OperationalError:  # a reader of a file not migrated yet: no tombstones
            return False
        return row is not None

    # ----------------------------------------------------------------- retention

    def prune(
        self, now: float, *, keep_days: float, keep_finished: int, limit: int = 500
    ) -> PruneResult:
        """Remove one batch (at most ``limit``) of the oldest finished records retention no
        longer keeps, with their history, inputs and outputs, in one transaction of its own.

        A record is finished once it is superseded (``active = 0``) or ended and filed; it is
        kept while it finished less than ``keep_days`` ago *and* is among the ``keep_finished``
        newest finished ones (0 turns either limit off). A record with work left is never
        removed. Each removed record leaves a tombstone (``pruned``: path, outcome, when it
        finished, when it was pruned, the outputs it placed); tombstones beyond
        ``keep_finished`` (``DEFAULT_TOMBSTONES`` when 0) go too, oldest first. The space is
        given back to the file system in steps (incremental vacuum) where the file allows it.

        Must not run inside an open group (commit it first): raises ``RuntimeError`` then, so a
        grouped write is never committed or rolled back by retention. Call it again while
        ``more`` is true, yielding to other work between batches."""
        if self.readonly:
            raise RuntimeError("a read-only store does not prune")
        conn = self.db.conn
        if conn.in_transaction or self._lost is not None:
            raise RuntimeError("prune() inside an open group: commit first")
        cutoff = now - keep_days * 86400.0 if keep_days > 0 else float("-inf")
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = self._prune_batch(now, cutoff, keep_finished, limit)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        if result.tickets or result.tombstones:
            # Outside the transaction: a no-op unless the file was made with auto_vacuum. The
            # pragma frees one page per step: ``executescript`` steps it to the end (``execute``
            # would stop after the first page).
            conn.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES_PER_BATCH});")
        return result

    def _prune_batch(
        self, now: float, cutoff: float, keep_finished: int, limit: int
    ) -> PruneResult:
        conn = self.db.conn
        boundary: tuple[float, int] | None = None
        if keep_finished > 0:
            # The newest record past the count limit: it and everything older goes.
            row = conn.execute(
                f"SELECT {_PRUNE_KEY}, id FROM tickets WHERE {_PRUNABLE}"
                f" ORDER BY {_PRUNE_KEY} DESC, id DESC LIMIT 1 OFFSET ?",
                [keep_finished],
            ).fetchone()
            boundary = (row[0], row[1]) if row else None
        # The newest record stays whatever the limits say: SQLite gives a new row the highest
        # id + 1, and a reused id would reuse an idempotency key (a new request for the same
        # bytes at the same path would get the pruned ticket's job back).
        newest = conn.execute("SELECT max(id) FROM tickets").fetchone()[0]
        victims: list[tuple[int, str, str, str, bool, float]] = []
        rows = conn.execute(
            f"SELECT id, {_PRUNE_KEY}, path, root, phase, active FROM tickets"
            f" WHERE {_PRUNABLE} ORDER BY {_PRUNE_KEY}, id LIMIT ?",
            [limit],
        ).fetchall()
        reached = len(rows) == limit  # every row of this batch is due: there may be more
        for tid, key, path, root, phase, active in rows:
            # Oldest first: what is due is a prefix of this list.
            if not (key < cutoff or (boundary is not None and (key, tid) <= boundary)):
                reached = False
                break
            if (active and phase not in _TERMINAL) or tid == newest:
                continue  # work left (filed but not ended cannot happen), or the newest id
            outcome = phase if phase in _TERMINAL else "superseded"
            victims.append((tid, path, root, outcome, bool(active), key))
        pruned_ids: list[int] = []
        if victims:
            ids = [v[0] for v in victims]
            marks = ", ".join("?" * len(ids))
            placed: dict[int, list[str]] = {}
            for tid, dest in conn.execute(
                f"SELECT ticket_id, dest_name FROM outputs WHERE ticket_id IN ({marks})"
                " AND dest_name IS NOT NULL",
                ids,
            ):
                placed.setdefault(tid, []).append(dest)
            for tid, path, root, outcome, _active, key in victims:
                cur = conn.execute(
                    "INSERT INTO pruned (path, root, outcome, finished_at, pruned_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [path, root, outcome, key, now],
                )
                where = os.path.dirname(path)
                conn.executemany(
                    "INSERT INTO pruned_outputs (pruned_id, path) VALUES (?, ?)",
                    [(cur.lastrowid, os.path.join(where, d)) for d in placed.get(tid, ())],
                )
            for table in ("history", "inputs", "outputs"):
                conn.execute(f"DELETE FROM {table} WHERE ticket_id IN ({marks})", ids)
            conn.execute(f"DELETE FROM tickets WHERE id IN ({marks})", ids)
            for tid in ids:
                self._live.pop(tid, None)
            pruned_ids = ids
        # Tombstones beyond their own limit, oldest first (at most ``limit`` at a time).
        cap = keep_finished if keep_finished > 0 else DEFAULT_TOMBSTONES
        row = conn.execute(
            "SELECT id FROM pruned ORDER BY id DESC LIMIT 1 OFFSET ?", [cap]
        ).fetchone()
        forgotten: list[str] = []
        dropped = 0
        more_tombstones = False
        if row is not None:
            old = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM pruned WHERE id <= ? ORDER BY id LIMIT ?", [row[0], limit + 1]
                )
            ]
            more_tombstones = len(old) > limit
            old = old[:limit]
            marks = ", ".join("?" * len(old))
            gone = [
                r[0]
                for r in conn.execute(
                    f"SELECT path FROM pruned_outputs WHERE pruned_id IN ({marks})", old
                )
            ]
            conn.execute(f"DELETE FROM pruned_outputs WHERE pruned_id IN ({marks})", old)
            conn.execute(f"DELETE FROM pruned WHERE id IN ({marks})", old)
            dropped = len(old)
            forgotten = [p for p in dict.fromkeys(gone) if not self._names_output(p)]
        more = more_tombstones or reached
        return PruneResult(
            tickets=tuple(pruned_ids),
            tombstones=dropped,
            forgotten_outputs=tuple(forgotten),
            more=more,
        )

    def _names_output(self, path: str) -> bool:
        """Whether a record or a tombstone still names ``path`` as an output it placed."""
        conn = self.db.conn
        if conn.execute("SELECT 1 FROM pruned_outputs WHERE path = ? LIMIT 1", [path]).fetchone():
            return True
        where, name = os.path.split(path)
        return any(
            os.path.dirname(p) == where
            for (p,) in conn.execute(
                "SELECT t.path FROM outputs o JOIN tickets t ON t.id = o.ticket_id"
                " WHERE o.dest_name = ?",
                [name],
            )
        )

    def pruned(self, name: str) -> list[PrunedRecord]:
        """Tombstones of pruned tickets whose path, file name or stem is ``name`` (newest
        first), for ``why`` on a ticket retention removed."""
        out = []
        try:
            rows = self._query(
                "SELECT id, path, root, outcome, finished_at, pruned_at FROM pruned"
                " ORDER BY id DESC"
            )
        except sqlite3.OperationalError:  # a reader of a file not migrated yet: no tombstones
            return []
        for row in rows:
            rec = PrunedRecord.from_row(row)
            if named(rec.path, name):
                out.append(rec)
        return out

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
