"""The PostgreSQL backend of the state store (team mode's shared state, docs/team-mode.md): the
only importer of psycopg.

The scheduler's hot path reads a ticket's record many times per step and writes each transition
before it acts, synchronously (``contract.StateStore``). A network round trip per read or write
would stall the event loop, so this backend is a **write-behind mirror**:

- Every *active* ticket record (the newest request for its path), its inputs and outputs and the
  meta table are held in memory, loaded at open. While one agent writes the database (the only
  mode built so far) the mirror is complete for them, so ``get``, ``tickets``, ``unfinished``,
  ``counts``, ``find``, ``active_for_path``, ``same_content_elsewhere``, ``inputs`` and
  ``outputs`` never touch the network. (Team mode narrows the mirror to the tickets an agent
  holds, and team-wide reads become queries.)
- A write updates the mirror at once (read-your-writes) and queues its statements; new rows take
  their ids from a block reserved from one sequence (``INCREMENT BY 1000``), so ``add_ticket``
  answers at once. ``flush()`` (async, ``async_commit``) sends the queued group as **one
  transaction** in one pipeline; writes made while it is in flight join the next one.
- A flush that fails (the database lost, a statement refused, no answer within
  ``FLUSH_TIMEOUT``) loses its group and every write queued after it (they were made on top of
  it): the mirror may now hold writes the database lacks, so the next flush first reloads the
  mirror from the database (failing while it is unreachable) and then raises ``WritesLost`` once,
  so every act waiting for those writes fails and its ticket takes its step again from what the
  database holds. Nothing is acted on unless the flush that recorded it succeeded.
- Cold reads (``history``, records of superseded tickets, ``is_own_output``, every read
  of ``open_readonly``) are short queries on a second, synchronous connection with a connect
  timeout, a statement timeout and TCP timeouts, so a lost network blocks the caller for a
  bounded few seconds at most.
- One writer per database until claims and leases exist: the writer's session holds an advisory
  lock; ``open`` refuses a database another agent writes (``StateBusy``).

The password of a ``state.url`` is a secret: ``redact_url`` hides it, and no message of this
module holds the URL with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from agent.models import Phase, RemoteOutput
from agent.store.records import (
    InputRecord,
    LeaseLost,
    OutputRecord,
    PrunedRecord,
    PruneResult,
    TeamMember,
    TicketRecord,
    WritesLost,
    _decode_columns,
    named,
)
from agent.store.shares import PathMap
from agent.store.urls import redact_url, url_secrets

ID_BLOCK = 1000  # ids reserved by one nextval (the sequence's increment)
ID_LOW_WATER = 500  # a flush reserves the next block when fewer ids than this are left
FLUSH_TIMEOUT = 10.0  # seconds a flush may take before its group is counted lost
CONNECT_TIMEOUT = 3  # seconds (libpq's connect_timeout)
READ_TIMEOUT_MS = 3000  # a cold read's statement timeout and TCP user timeout
WRITER_LOCK = 0x636F6E76  # the advisory lock of the one writer ("conv")
MIGRATION_LOCK = 0x6D696772  # serialises migrations of agents starting together ("migr")
RECONNECT_PAUSE = 1.0  # seconds between attempts to read the mirror again after a loss
FENCE_MARGIN = 2.0  # seconds a claim must still live for a flush to write under it
COUNTS_RETRY = 10.0  # seconds before the team's counts are asked of a database that failed
AGENT_KEEP_SECONDS = 86400.0  # an agent's row is kept this long after its last heartbeat
FAIR_SLACK = 2  # claims an agent may hold above its share of the team's before it leaves
# new tickets to the others
OWN_CACHE = 1024  # answers of ``is_own_output`` kept (the database's, for a few recent paths)

_TERMINAL = (str(Phase.DONE), str(Phase.FAILED), str(Phase.CANCELED))
# An active record with work left (as sqlite._UNFINISHED), with literal values, so that a query
# with this term can be proven to match the partial index of m003 whatever its plan.
_UNFINISHED = (
    f"active AND (phase NOT IN ('{_TERMINAL[0]}', '{_TERMINAL[1]}', '{_TERMINAL[2]}') OR NOT filed)"
)
_TICKET_COLS = frozenset(f.name for f in dataclasses.fields(TicketRecord)) - {"id"}
_OUTPUT_COLS = frozenset(f.name for f in dataclasses.fields(OutputRecord)) - {"id", "ticket_id"}
_BOOL_COLS = ("active", "filed", "start_sent")


class StateBusy(Exception):
    """Another agent writes this state database (one writer until team mode's claims)."""


# --------------------------------------------------------------------------- schema

_M001 = """
CREATE SEQUENCE ids INCREMENT BY 1000;
CREATE TABLE tickets (
    id bigint PRIMARY KEY,
    path text NOT NULL,
    root text NOT NULL,
    sha256 text NOT NULL,
    kind text NOT NULL,
    spec text NOT NULL,
    phase text NOT NULL,
    active boolean NOT NULL DEFAULT true,
    filed boolean NOT NULL DEFAULT false,
    idem_key text NOT NULL,
    job_id text,
    job_token text,
    job_server text,
    start_sent boolean NOT NULL DEFAULT false,
    remote_status text,
    remote_info text,
    error text,
    wait_until double precision,
    attempts integer NOT NULL DEFAULT 0,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    finished_at double precision
);
CREATE UNIQUE INDEX tickets_active_path ON tickets(path) WHERE active;
CREATE INDEX tickets_phase ON tickets(phase, filed);
CREATE TABLE inputs (
    id bigint PRIMARY KEY,
    ticket_id bigint NOT NULL REFERENCES tickets(id),
    idx integer NOT NULL,
    kind text NOT NULL,
    value text NOT NULL,
    abs_path text,
    upload_uuid text NOT NULL,
    sent boolean NOT NULL DEFAULT false,
    remote_id text
);
CREATE INDEX inputs_ticket ON inputs(ticket_id);
CREATE TABLE outputs (
    id bigint PRIMARY KEY,
    ticket_id bigint NOT NULL REFERENCES tickets(id),
    idx integer NOT NULL,
    remote_id text NOT NULL,
    filename text NOT NULL,
    uri text NOT NULL,
    size bigint,
    checksum text NOT NULL,
    remote_status text NOT NULL,
    state text NOT NULL DEFAULT 'pending',
    dest_name text,
    digest text,
    verdict text,
    gets integer NOT NULL DEFAULT 0,
    mismatches integer NOT NULL DEFAULT 0,
    validator text,
    UNIQUE (ticket_id, remote_id)
);
CREATE TABLE history (
    id bigint PRIMARY KEY,
    ticket_id bigint NOT NULL REFERENCES tickets(id),
    at double precision NOT NULL,
    phase text NOT NULL,
    event text NOT NULL,
    message text
);
CREATE INDEX history_ticket ON history(ticket_id);
CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
"""

# Retention (``prune``, as sqlite.m003_retention): finished records oldest first, tombstones.
_PRUNABLE = "(NOT active OR filed)"
_PRUNE_KEY = "COALESCE(finished_at, updated_at)"
DEFAULT_TOMBSTONES = 10_000  # tombstones kept when ``keep_finished`` is 0 (no count limit)
_M002 = f"""
CREATE INDEX tickets_prunable ON tickets(({_PRUNE_KEY}), id) WHERE {_PRUNABLE};
CREATE INDEX outputs_dest ON outputs(dest_name) WHERE dest_name IS NOT NULL;
CREATE TABLE pruned (
    id bigserial PRIMARY KEY,
    path text NOT NULL,
    root text NOT NULL,
    outcome text NOT NULL,
    finished_at double precision,
    pruned_at double precision NOT NULL
);
CREATE INDEX pruned_path ON pruned(path);
CREATE TABLE pruned_outputs (
    pruned_id bigint NOT NULL REFERENCES pruned(id),
    path text NOT NULL
);
CREATE INDEX pruned_outputs_owner ON pruned_outputs(pruned_id);
CREATE INDEX pruned_outputs_path ON pruned_outputs(path);
"""

# ``unfinished`` of a read-only store (and team mode's reads) find the tickets with work left
# through this partial index instead of scanning every finished record (as sqlite.m005).
_M003 = f"CREATE INDEX tickets_unfinished ON tickets(id) WHERE {_UNFINISHED};"

# Team mode (docs/team-mode.md): the agents of a team, and one claim per ticket path (a share
# path, ``shares.PathMap``): its owner, a fencing number that rises on every takeover and a lease
# in the server's time. A claim covers every record of its path.
_M004 = """
CREATE TABLE agents (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at timestamptz
);
CREATE TABLE claims (
    path text PRIMARY KEY,
    owner bigint NOT NULL REFERENCES agents(id),
    fence bigint NOT NULL DEFAULT 1,
    lease_until timestamptz NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX claims_owner ON claims(owner);
CREATE INDEX claims_lease ON claims(lease_until);
"""

# (name, SQL), in order; each runs once, in one transaction with its row in the migrations table.
MIGRATIONS: tuple[tuple[str, str], ...] = (
    ("m001_initial", _M001),
    ("m002_retention", _M002),
    ("m003_unfinished", _M003),
    ("m004_team", _M004),
)


def migrate(conn: psycopg.Connection[dict[str, Any]]) -> None:
    """Apply the migrations this database lacks (agents starting together take turns)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK])
        conn.execute(
            "CREATE TABLE IF NOT EXISTS convert_agent_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in conn.execute("SELECT name FROM convert_agent_migrations")}
        known = {name for name, _ in MIGRATIONS}
        if done - known:
            raise RuntimeError(
                "the state database was migrated by a newer convert-agent "
                f"({', '.join(sorted(done - known))}); update this agent"
            )
        for name, sql in MIGRATIONS:
            if name not in done:
                conn.execute(sql.encode())
                conn.execute("INSERT INTO convert_agent_migrations (name) VALUES (%s)", [name])


# --------------------------------------------------------------------------- the store


@dataclass
class _Group:
    """Statements waiting for one transaction, and the history rows among them."""

    stmts: list[tuple[str, Sequence[Any]]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    gone: set[int] = field(default_factory=set)  # tickets made inactive by it
    paths: set[str] = field(default_factory=set)  # share paths written (team mode: fenced)
    placed: set[tuple[str, str]] = field(default_factory=set)  # (output path, root) it names

    def __bool__(self) -> bool:
        return bool(self.stmts)


@dataclass
class _Mirror:
    recs: dict[int, TicketRecord] = field(default_factory=dict)
    by_path: dict[str, int] = field(default_factory=dict)  # active records only
    inputs: dict[int, list[InputRecord]] = field(default_factory=dict)
    outputs: dict[int, list[OutputRecord]] = field(default_factory=dict)
    output_tid: dict[int, int] = field(default_factory=dict)
    input_tid: dict[int, int] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)


_LOAD_SQL = (
    "SELECT * FROM tickets WHERE active ORDER BY id",
    "SELECT i.* FROM inputs i JOIN tickets t ON t.id = i.ticket_id WHERE t.active"
    " ORDER BY i.ticket_id, i.idx",
    "SELECT o.* FROM outputs o JOIN tickets t ON t.id = o.ticket_id WHERE t.active"
    " ORDER BY o.ticket_id, o.idx",
    "SELECT key, value FROM meta",
)
# Team mode: the mirror holds the records of the paths this agent holds a claim on.
_HELD = "t.path IN (SELECT path FROM claims WHERE owner = %(me)s)"
_TEAM_LOAD_SQL = (
    f"SELECT t.* FROM tickets t WHERE t.active AND {_HELD} ORDER BY t.id",
    "SELECT i.* FROM inputs i JOIN tickets t ON t.id = i.ticket_id WHERE t.active"
    f" AND {_HELD} ORDER BY i.ticket_id, i.idx",
    "SELECT o.* FROM outputs o JOIN tickets t ON t.id = o.ticket_id WHERE t.active"
    f" AND {_HELD} ORDER BY o.ticket_id, o.idx",
    "SELECT key, value FROM meta",
    "SELECT path, fence FROM claims WHERE owner = %(me)s",
)
# The fence of a flush: every path it writes is still claimed by this agent with time left,
# and stays so until it commits (FOR SHARE: a takeover's UPDATE waits for it); else a division
# by zero aborts the whole transaction.
_FENCE_SQL = (
    "SELECT 1 / (SELECT CASE WHEN count(*) = %(n)s THEN 1 ELSE 0 END FROM"
    " (SELECT path FROM claims WHERE path = ANY(%(paths)s) AND owner = %(me)s"
    " AND lease_until > now() + make_interval(secs => %(margin)s) FOR SHARE) c)"
)


def _build_mirror(rows: Sequence[list[dict[str, Any]]], pm: PathMap) -> _Mirror:
    tickets, inputs, outputs, meta = rows[:4]
    m = _Mirror()
    for r in tickets:
        rec = _ticket(r, pm)
        m.recs[rec.id] = rec
        m.by_path[rec.path] = rec.id
        m.inputs[rec.id] = []
        m.outputs[rec.id] = []
    for r in inputs:
        inp = _input(r, pm)
        m.inputs[inp.ticket_id].append(inp)
        m.input_tid[inp.id] = inp.ticket_id
    for r in outputs:
        out = OutputRecord.from_row(r)
        m.outputs[out.ticket_id].append(out)
        m.output_tid[out.id] = out.ticket_id
    m.meta = {r["key"]: r["value"] for r in meta}
    return m


def _ticket(row: Mapping[str, Any], pm: PathMap) -> TicketRecord:
    """A ticket row as this agent sees it (its paths on this machine's mounts)."""
    rec = TicketRecord.from_row(row)
    if not pm:
        return rec
    return dataclasses.replace(rec, path=pm.loc(rec.path), root=pm.loc(rec.root))


def _input(row: Mapping[str, Any], pm: PathMap) -> InputRecord:
    inp = InputRecord.from_row(row)
    if not pm or inp.abs_path is None:
        return inp
    return dataclasses.replace(inp, abs_path=pm.loc(inp.abs_path))


def _conninfo(url: str, *, timeout_ms: int | None = None) -> dict[str, Any]:
    """libpq parameters beside the URL: bounded connects, and dead peers noticed in seconds."""
    kw: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT,
        "application_name": "convert-agent",
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
    }
    # The server drops a session whose agent vanished (its machine died, its network went) in
    # about 25 s, so the writer's lock is free again for the agent that restarts.
    options = "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"
    if timeout_ms is not None:
        kw["tcp_user_timeout"] = timeout_ms
        options += f" -c statement_timeout={timeout_ms}"
    kw["options"] = options
    return kw


class PgStore:
    """A PostgreSQL state (see the module's docstring). ``open`` for the one writer (the
    agent), ``open_readonly`` for ``status``/``list``/``why`` (every read a query)."""

    async_commit = True

    def __init__(
        self,
        url: str,
        *,
        readonly: bool = False,
        team: TeamMember | None = None,
        paths: PathMap | None = None,
    ) -> None:
        self._url = url
        self.team = team
        self.agent_id: int | None = None  # our row in ``agents`` (team mode)
        self._pm = paths if paths is not None else PathMap()
        self._held: dict[str, int] = {}  # share path → fence of our claim (team mode)
        self._lease_conn: psycopg.AsyncConnection[Any] | None = None
        self._lease_lock = asyncio.Lock()
        self._claim_lock = asyncio.Lock()  # one batch of claims at a time (see ``claim``)
        self._claim_queue: list[tuple[str, bool, asyncio.Future[str]]] = []
        self._counts_retry_at = 0.0  # team counts come from memory until then (database away)
        self.url = redact_url(url)  # what may be shown
        self.readonly = readonly
        self.group_commit = False
        self.on_dirty: Callable[[], None] | None = None
        self._m = _Mirror()
        self._pending = _Group()
        self._inflight: _Group | None = None
        self._lost: WritesLost | None = None  # a flush failed: reload, then raise once
        self._reader_conn: psycopg.Connection[dict[str, Any]] | None = None
        self._writer_conn: psycopg.AsyncConnection[Any] | None = None
        self._writer_pid: int | None = None  # our last writer session (its lock may linger)
        self._ids: list[int] = []  # [next, end) of the current block
        self._spare: tuple[int, int] | None = None  # the next block, reserved ahead
        self._retry_at = 0.0  # monotonic time of the next attempt to read the mirror again
        self._unreachable = "the state database cannot be reached; the agent waits for it"
        # path → (roots, answer) of the database for ``is_own_output``, the newest last; our
        # own writes and retention keep it in step (one writer), a reload empties it.
        self._own_cache: dict[str, tuple[frozenset[str], bool]] = {}

    def __repr__(self) -> str:
        return f"PgStore({self.url!r}, readonly={self.readonly})"

    # ----------------------------------------------------------------- opening

    @classmethod
    def open(
        cls, url: str, *, team: TeamMember | None = None, paths: PathMap | None = None
    ) -> PgStore:
        """Open (migrating) a state database: for the one writer, or with ``team`` as one
        agent of a team (claims and leases; ``paths`` maps this machine's mounts to shares).
        Raises ``StateBusy`` when a lone writer and a team would share it, ``psycopg.Error``
        (with no password in it) when it cannot be reached."""
        store = cls(url, team=team, paths=paths)
        lock = "pg_try_advisory_lock_shared" if team else "pg_try_advisory_lock"
        unlock = "pg_advisory_unlock_shared" if team else "pg_advisory_unlock"
        try:
            conn = store._reader()
            try:
                migrate(conn)
                busy = conn.execute(f"SELECT {lock}(%s) AS ok", [WRITER_LOCK]).fetchone()
                if busy and busy["ok"]:
                    conn.execute(f"SELECT {unlock}(%s)", [WRITER_LOCK])
                if team is not None and busy and busy["ok"]:
                    row = conn.execute(
                        "INSERT INTO agents (name, host, pid) VALUES (%s, %s, %s) RETURNING id",
                        [team.name, team.host, team.pid],
                    ).fetchone()
                    assert row is not None
                    store.agent_id = int(row["id"])
                    # The team's one id to folder marks, made by whichever agent came first.
                    conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('agent_id', %s)"
                        " ON CONFLICT (key) DO NOTHING",
                        [os.urandom(8).hex()],
                    )
                store._m = _build_mirror(store._load_rows(conn), store._pm)
            except psycopg.Error as exc:
                raise _safe_error(exc, url) from None
            if not busy or not busy["ok"]:
                raise StateBusy(
                    f"an agent outside team mode is using the state database {store.url}"
                    if team
                    else f"another agent is using the state database {store.url}; "
                    "several agents share one only in team mode"
                )
            store._ids = store._reserve_sync()
        except BaseException:
            store.readonly = True  # nothing to write at close
            store.close()
            raise
        return store

    @classmethod
    def open_readonly(cls, url: str, *, paths: PathMap | None = None) -> PgStore:
        """For ``status``/``list``/``why``: never writes, never migrates, never caches
        (``paths``: this machine's mounts of the shares, to show local paths)."""
        store = cls(url, readonly=True, paths=paths)
        store._reader()
        return store

    def close(self) -> None:
        """Write what is queued (synchronously; the scheduler has flushed already) and close."""
        try:
            if not self.readonly and self._inflight is None and self._lost is None:
                self.commit()
        finally:
            if self._reader_conn is not None:
                self._reader_conn.close()
                self._reader_conn = None
            if self._writer_conn is not None:
                with contextlib.suppress(Exception):
                    self._writer_conn.pgconn.finish()
                self._writer_conn = None
            self._drop_lease()

    async def aclose(self) -> None:
        """Close the writer's connection on its own loop (then ``close``)."""
        if self._writer_conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer_conn.close(), 2.0)
            self._writer_conn = None
        self.close()

    # ----------------------------------------------------------------- connections

    def _reader(self) -> psycopg.Connection[dict[str, Any]]:
        """The synchronous connection of cold reads (and of ``open``), made when needed."""
        conn = self._reader_conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
            self._reader_conn = None
        try:
            conn = psycopg.connect(
                self._url,
                autocommit=True,
                row_factory=dict_row,
                **_conninfo(self._url, timeout_ms=READ_TIMEOUT_MS),
            )
        except psycopg.Error as exc:
            raise _safe_error(exc, self._url) from None
        if self.readonly:
            conn.execute("SET default_transaction_read_only = on")
        self._reader_conn = conn
        return conn

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """A cold read (bounded: connect and statement timeouts). A session that died while
        idle (terminated, the server restarted) is found out only on its next use: the read is
        tried once more on a new session."""
        reused = self._reader_conn is not None
        conn = self._reader()
        try:
            return conn.execute(sql, params).fetchall()
        except psycopg.Error as exc:
            if not (reused and conn.broken):
                raise _safe_error(exc, self._url) from None
        try:
            return self._reader().execute(sql, params).fetchall()
        except psycopg.Error as exc:
            raise _safe_error(exc, self._url) from None

    async def _writer(self) -> psycopg.AsyncConnection[Any]:
        conn = self._writer_conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._writer_conn = None
        conn = await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, **_conninfo(self._url)
        )
        try:
            row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
            pid = int(row[0]) if row else None
            if not await self._take_lock(conn):
                raise StateBusy(
                    f"another agent is using the state database {self.url}; "
                    "this agent writes nothing until it stops"
                )
        except BaseException:
            await conn.close()
            raise
        self._writer_pid = pid
        self._writer_conn = conn
        return conn

    async def _take_lock(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        """The one writer's advisory lock; a session of ours the server still holds (its network
        died under it) is ended first. A team's agents share it (they are fenced by claims)."""
        if self.team is not None:
            cur = await conn.execute("SELECT pg_try_advisory_lock_shared(%s)", [WRITER_LOCK])
            row = await cur.fetchone()
            return bool(row and row[0])
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", [WRITER_LOCK])
        row = await cur.fetchone()
        if row and row[0]:
            return True
        if self._writer_pid is None:
            return False
        await conn.execute("SELECT pg_terminate_backend(%s)", [self._writer_pid])
        for _ in range(20):
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", [WRITER_LOCK])
            row = await cur.fetchone()
            if row and row[0]:
                return True
            await asyncio.sleep(0.05)
        return False

    # ----------------------------------------------------------------- ids

    def _reserve_sync(self) -> list[int]:
        row = self._rows("SELECT nextval('ids') AS v")[0]
        return [int(row["v"]), int(row["v"]) + ID_BLOCK]

    def _next_id(self) -> int:
        if self._ids[0] >= self._ids[1]:
            if self._spare is not None:
                self._ids, self._spare = list(self._spare), None
            else:  # a burst used the whole block before a flush reserved the next: rare
                self._ids = self._reserve_sync()
        tid = self._ids[0]
        self._ids[0] += 1
        return tid

    # ----------------------------------------------------------------- writes

    @property
    def dirty(self) -> bool:
        """Whether writes wait for a flush (or a lost group waits to be reported by one)."""
        return bool(self._pending) or self._inflight is not None or self._lost is not None

    def _writable(self) -> None:
        """Before a write changes the mirror: refused while the mirror may hold lost writes
        (a flush reloads it first; one is scheduled here)."""
        if self.readonly:
            raise RuntimeError("a read-only store never writes")
        if self._lost is not None:
            if self.on_dirty is not None and self.group_commit:
                self.on_dirty()
            raise WritesLost(
                "the state database has not taken the last writes yet; "
                "nothing is written until it answers again"
            )

    def _q(self, sql: str, params: Sequence[Any]) -> None:
        """Queue one statement of the open group."""
        self._pending.stmts.append((sql, params))

    def _written(self) -> None:
        """A write is queued: schedule the flush (or, without group commit, write it now)."""
        if not self.group_commit:
            self.commit()
        elif self.on_dirty is not None:
            self.on_dirty()

    def commit(self) -> None:
        """Write the queued group now, synchronously (without group commit, at close, or for a
        caller without an event loop). Same outcomes as ``flush``."""
        if self._inflight is not None:
            raise RuntimeError("a flush is in flight")
        if self._lost is not None:
            self._install(self._load_rows(self._reader()))
            lost, self._lost = self._lost, None
            raise lost
        if not self._pending:
            return
        group, self._pending = self._pending, _Group()
        try:
            conn = self._reader()
            with conn.pipeline(), conn.transaction():
                for sql, params in self._fenced(group):
                    conn.execute(sql, params)
        except Exception as exc:
            self._pending = _Group()
            lost = self._lost_by(exc, group)
            try:
                self._install(self._load_rows(self._reader()))
            except Exception:
                self._lost = lost
            raise lost from None
        self._landed(group)

    async def flush(self) -> None:
        """Send the queued group as one transaction (the scheduler awaits this, one flush at a
        time; writes made meanwhile join the next one).

        Raises ``WritesLost`` when the group did not land: it and the writes queued after it
        are dropped, and the mirror is read again from the database. While the database cannot
        be reached the mirror cannot be read again: writes are refused and each flush tries
        again (at most once a second), raising ``WritesLost`` until it has."""
        if self._inflight is not None:
            raise RuntimeError("one flush at a time")
        if self._lost is not None:
            await self._recover()
            lost, self._lost = self._lost, None
            raise lost  # once more: an act that began to wait after the loss learns it now
        await self._refill_ids()
        if not self._pending:
            return
        group, self._pending = self._pending, _Group()
        self._inflight = group
        try:
            async with asyncio.timeout(FLUSH_TIMEOUT):
                conn = await self._writer()
                async with conn.pipeline(), conn.transaction():
                    for sql, params in self._fenced(group):
                        await conn.execute(sql, params)
        except BaseException as exc:
            self._inflight = None
            self._pending = _Group()
            self._drop_writer(exc)
            lost = self._lost_by(exc, group)
            self._lost = lost
            if isinstance(exc, asyncio.CancelledError):
                raise
            with contextlib.suppress(WritesLost):
                await self._recover()
                self._lost = None
            raise lost from None
        self._inflight = None
        self._landed(group)

    def _fenced(self, group: _Group) -> list[tuple[str, Any]]:
        """The group's statements, behind the fence of its paths in team mode."""
        if self.team is None or not group.paths:
            return list(group.stmts)
        paths = sorted(group.paths)
        fence = {"n": len(paths), "paths": paths, "me": self.agent_id, "margin": FENCE_MARGIN}
        return [(_FENCE_SQL, fence), *group.stmts]

    def _lost_by(self, exc: BaseException, group: _Group | None = None) -> WritesLost:
        if isinstance(exc, psycopg.errors.DivisionByZero) and group is not None:
            names = ", ".join(sorted(self._pm.loc(p) for p in group.paths)[:3])
            return LeaseLost(
                f"this agent's claim on {names} ran out or was taken over before its last "
                "writes were saved; they were undone and the ticket is taken from the database"
            )
        return WritesLost(
            f"the state database did not take the last writes ({_safe_text(exc, self._url)});"
            " they were undone"
        )

    def _drop_writer(self, exc: BaseException) -> None:
        """After a failed exchange: a session that gave no answer (timeout, cancel, network)
        is in an unknown state and is not used again."""
        conn = self._writer_conn
        if conn is not None and (conn.broken or not isinstance(exc, psycopg.DatabaseError)):
            with contextlib.suppress(Exception):
                conn.pgconn.finish()
            self._writer_conn = None

    async def _recover(self) -> None:
        """The mirror again from the database (what it holds is the truth after a lost group);
        raises ``WritesLost`` while it cannot be read."""
        now = time.monotonic()
        if now < self._retry_at:
            raise WritesLost(self._unreachable)
        self._retry_at = now + RECONNECT_PAUSE
        try:
            async with asyncio.timeout(FLUSH_TIMEOUT):
                conn = await self._writer()
                rows = []
                async with conn.transaction():
                    for sql, params in self._load_queries():
                        cur = conn.cursor(row_factory=dict_row)
                        await cur.execute(sql, params)
                        rows.append(await cur.fetchall())
        except Exception as exc:
            self._drop_writer(exc)
            self._unreachable = (
                f"the state database cannot be reached ({_safe_text(exc, self._url)}); "
                "the agent waits for it"
            )
            raise WritesLost(self._unreachable) from None
        self._retry_at = 0.0
        self._install(rows)

    async def _refill_ids(self) -> None:
        """Reserve the next id block ahead, while few ids are left (a flush's spare time)."""
        if self._spare is not None or self._ids[1] - self._ids[0] >= ID_LOW_WATER:
            return
        with contextlib.suppress(Exception):  # the flush that follows says what is wrong
            async with asyncio.timeout(FLUSH_TIMEOUT):
                conn = await self._writer()
                row = await (await conn.execute("SELECT nextval('ids')")).fetchone()
            if row is not None:
                self._spare = (int(row[0]), int(row[0]) + ID_BLOCK)

    def _landed(self, group: _Group) -> None:
        """A group is in the database: records it made inactive leave the mirror."""
        for tid in group.gone:
            rec = self._m.recs.get(tid)
            if rec is not None and not rec.active:
                self._forget(tid)

    def _forget(self, tid: int) -> None:
        m = self._m
        m.recs.pop(tid, None)
        for inp in m.inputs.pop(tid, []):
            m.input_tid.pop(inp.id, None)
        for out in m.outputs.pop(tid, []):
            m.output_tid.pop(out.id, None)

    def _load_queries(self) -> list[tuple[str, dict[str, Any]]]:
        """What the mirror is read from: every active record, or (team mode) those of the
        paths this agent holds, and its claims."""
        if self.team is None:
            return [(sql, {}) for sql in _LOAD_SQL]
        return [(sql, {"me": self.agent_id}) for sql in _TEAM_LOAD_SQL]

    def _load_rows(self, conn: psycopg.Connection[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        try:
            with conn.transaction():
                return [conn.execute(sql, p).fetchall() for sql, p in self._load_queries()]
        except psycopg.Error as exc:
            raise _safe_error(exc, self._url) from None

    def _install(self, rows: Sequence[list[dict[str, Any]]]) -> None:
        """A mirror read from the database replaces this one; writes queued meanwhile were
        made on the old one and are dropped."""
        self._m = _build_mirror(rows, self._pm)
        if self.team is not None:
            self._held = {r["path"]: int(r["fence"]) for r in rows[4]}
        self._pending = _Group()
        self._own_cache.clear()

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
        """Record a new request for ``path``; the previous record for that path becomes
        history (as ``sqlite.Store.add_ticket``)."""
        self._writable()
        if not self.holds(path):
            raise LeaseLost(f"{path}: this agent holds no claim on it")
        m = self._m
        old = m.by_path.pop(path, None)
        if old is not None:
            m.recs[old] = dataclasses.replace(m.recs[old], active=False)
            self._pending.gone.add(old)
        pm = self._pm
        self._pending.paths.add(pm.s(path))
        self._q("UPDATE tickets SET active = false WHERE path = %s AND active", [pm.s(path)])
        tid = self._next_id()
        key = hashlib.sha256(f"{idem_prefix}\0{path}\0{sha256}\0{tid}".encode()).hexdigest()[:40]
        err = json.dumps(error) if error else None
        cols: dict[str, Any] = {
            "id": tid,
            "path": path,
            "root": root,
            "sha256": sha256,
            "kind": kind,
            "spec": json.dumps(spec),
            "phase": str(phase),
            "active": True,
            "filed": False,
            "idem_key": key,
            "job_id": None,
            "job_token": None,
            "job_server": None,
            "start_sent": False,
            "remote_status": None,
            "remote_info": None,
            "error": err,
            "wait_until": None,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
            "finished_at": now if phase.terminal else None,
        }
        stored = {**cols, "path": pm.s(path), "root": pm.s(root)}
        self._q(
            f"INSERT INTO tickets ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
            list(stored.values()),
        )
        rec = TicketRecord(**_decode_columns(cols))
        m.recs[tid] = rec
        m.by_path[path] = tid
        ins: list[InputRecord] = []
        for idx, (ikind, value, abs_path) in enumerate(inputs):
            inp = InputRecord(
                id=self._next_id(),
                ticket_id=tid,
                idx=idx,
                kind=ikind,
                value=value,
                abs_path=abs_path,
                upload_uuid=f"{key[:24]}-{idx}",
                sent=False,
                remote_id=None,
            )
            self._q(
                "INSERT INTO inputs (id, ticket_id, idx, kind, value, abs_path, upload_uuid)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [inp.id, tid, idx, ikind, value, pm.shared(abs_path), inp.upload_uuid],
            )
            ins.append(inp)
            m.input_tid[inp.id] = tid
        m.inputs[tid] = ins
        m.outputs[tid] = []
        self._history(tid, now, phase, "accepted" if not error else "rejected", message)
        self._written()
        return rec

    def reset_for_resubmit(self, ticket_id: int, now: float, *, message: str) -> None:
        """Start a ticket over with a new job (as ``sqlite.Store.reset_for_resubmit``)."""
        self._writable()
        rec = self.get(ticket_id)
        m = self._m
        key = hashlib.sha256(f"{rec.idem_key}\0resubmit".encode()).hexdigest()[:40]
        self._q("DELETE FROM outputs WHERE ticket_id = %s", [ticket_id])
        self._own_cache.clear()  # an output it placed (none should be) is no longer its own
        for out in m.outputs.get(ticket_id, []):
            m.output_tid.pop(out.id, None)
        m.outputs[ticket_id] = []
        ins = []
        for inp in self.inputs(ticket_id):
            new = dataclasses.replace(
                inp, sent=False, remote_id=None, upload_uuid=f"{key[:24]}-{inp.idx}"
            )
            self._q(
                "UPDATE inputs SET sent = false, remote_id = NULL, upload_uuid = %s WHERE id = %s",
                [new.upload_uuid, inp.id],
            )
            ins.append(new)
            m.input_tid[inp.id] = ticket_id
        m.inputs[ticket_id] = ins
        cols: dict[str, Any] = {
            "phase": str(Phase.PENDING),
            "idem_key": key,
            "job_id": None,
            "job_token": None,
            "job_server": None,
            "start_sent": False,
            "remote_status": None,
            "remote_info": None,
            "error": None,
            "wait_until": None,
            "attempts": 0,
            "updated_at": now,
        }
        self._set_ticket(rec, cols)
        self._history(ticket_id, now, Phase.PENDING, "resubmitted", message)
        self._written()

    def get(self, ticket_id: int) -> TicketRecord:
        rec = self._m.recs.get(ticket_id)
        if rec is not None:
            return rec
        rows = self._rows("SELECT * FROM tickets WHERE id = %s", [ticket_id])
        if not rows:
            raise KeyError(ticket_id)
        return _ticket(rows[0], self._pm)

    def _active(self) -> list[TicketRecord]:
        recs = self._m.recs
        return [recs[i] for i in sorted(self._m.by_path.values())]

    def same_content_elsewhere(self, root: str, sha256: str, path: str) -> list[TicketRecord]:
        """Active tickets under ``root`` with these bytes at another path (was it renamed?)."""
        if self.readonly:
            return [
                _ticket(r, self._pm)
                for r in self._rows(
                    "SELECT * FROM tickets WHERE active AND root = %s AND sha256 = %s"
                    " AND path != %s ORDER BY id",
                    [self._pm.s(root), sha256, self._pm.s(path)],
                )
            ]
        return [
            r for r in self._active() if r.root == root and r.sha256 == sha256 and r.path != path
        ]

    def active_for_path(self, path: str) -> TicketRecord | None:
        if self.readonly:
            rows = self._rows(
                "SELECT * FROM tickets WHERE path = %s AND active", [self._pm.s(path)]
            )
            return _ticket(rows[0], self._pm) if rows else None
        tid = self._m.by_path.get(path)
        return None if tid is None else self._m.recs[tid]

    def update(
        self,
        ticket_id: int,
        now: float,
        *,
        event: str,
        message: str | None = None,
        **changes: Any,
    ) -> TicketRecord:
        """Change a ticket's fields and write the history row, in one group."""
        self._writable()
        cols = dict(changes)
        if "phase" in cols:
            cols["phase"] = str(cols["phase"])
            if Phase(cols["phase"]).terminal:
                cols.setdefault("finished_at", now)
        if "error" in cols:
            cols["error"] = json.dumps(cols["error"]) if cols["error"] else None
        for k in _BOOL_COLS:
            if k in cols:
                cols[k] = bool(cols[k])
        cols["updated_at"] = now
        rec = self._set_ticket(self.get(ticket_id), cols)
        self._history(ticket_id, now, rec.phase, event, message)
        self._written()
        return rec

    def touch(self, ticket_id: int, now: float, **changes: Any) -> None:
        """Change fields without a history row (server status text on every poll)."""
        self._writable()
        if "error" in changes:
            changes["error"] = json.dumps(changes["error"]) if changes["error"] else None
        for k in _BOOL_COLS:
            if k in changes:
                changes[k] = bool(changes[k])
        changes["updated_at"] = now
        self._set_ticket(self.get(ticket_id), changes)
        self._written()

    def _fence_tid(self, tid: int | None) -> None:
        """Team mode: a write for a ticket joins its group behind the fence of its path; a
        ticket this agent does not hold (not in the mirror) is not written at all."""
        if self.team is None:
            return
        rec = self._m.recs.get(tid) if tid is not None else None
        if rec is None:
            raise LeaseLost(f"ticket #{tid} is not held by this agent")
        self._pending.paths.add(self._pm.s(rec.path))

    def _set_ticket(self, rec: TicketRecord, cols: Mapping[str, Any]) -> TicketRecord:
        """Queue the UPDATE of ``cols`` (as stored) and keep the mirror in step."""
        bad = set(cols) - _TICKET_COLS
        if bad:
            raise ValueError(f"unknown ticket columns: {sorted(bad)}")
        self._fence_tid(rec.id)
        stored = dict(cols)
        self._pending.paths.add(self._pm.s(rec.path))
        if "path" in stored:
            stored["path"] = self._pm.s(stored["path"])
            self._pending.paths.add(stored["path"])
        self._q(
            f"UPDATE tickets SET {', '.join(f'{k} = %s' for k in cols)} WHERE id = %s",
            [*stored.values(), rec.id],
        )
        new = dataclasses.replace(rec, **_decode_columns(cols))
        m = self._m
        if rec.id in m.recs or rec.active:
            m.recs[rec.id] = new
            if rec.active and m.by_path.get(rec.path) == rec.id:
                del m.by_path[rec.path]
            if new.active:
                m.by_path[new.path] = rec.id
            else:
                self._pending.gone.add(rec.id)
            m.inputs.setdefault(rec.id, [])
            m.outputs.setdefault(rec.id, [])
        return new

    def _history(
        self, ticket_id: int, now: float, phase: Phase, event: str, message: str | None
    ) -> None:
        hid = self._next_id()
        self._q(
            "INSERT INTO history (id, ticket_id, at, phase, event, message)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            [hid, ticket_id, now, str(phase), event, message],
        )
        self._pending.history.append(
            {
                "id": hid,
                "ticket_id": ticket_id,
                "at": now,
                "phase": str(phase),
                "event": event,
                "message": message,
            }
        )

    def unfinished(self) -> list[TicketRecord]:
        """Active tickets with work left: not terminal, or terminal but not yet filed."""
        if self.readonly:
            return [
                _ticket(r, self._pm)
                for r in self._rows(f"SELECT * FROM tickets WHERE {_UNFINISHED} ORDER BY id")
            ]
        return [r for r in self._active() if not r.phase.terminal or not r.filed]

    def tickets(
        self, *, phases: Iterable[Phase] | None = None, active_only: bool = True, limit: int = 0
    ) -> list[TicketRecord]:
        if active_only and not self.readonly:
            wanted = None if phases is None else set(phases)
            out = [r for r in self._active() if wanted is None or r.phase in wanted]
            return out[:limit] if limit else out
        where, args = [], []
        if active_only:
            where.append("active")
        if phases is not None:
            ph = [str(p) for p in phases]
            where.append("phase = ANY(%s)")
            args.append(ph)
        sql = "SELECT * FROM tickets"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [_ticket(r, self._pm) for r in self._rows(sql, args)]

    def find(self, name: str) -> list[TicketRecord]:
        """Active tickets whose path, file name or stem is ``name`` (for ``why``/``retry``)."""
        out = []
        for rec in self.tickets():
            if named(rec.path, name):
                out.append(rec)
        return out

    def counts(self) -> dict[str, int]:
        """Active tickets per phase (and ``waiting``): in team mode the team's, from the
        database (this agent's own, from memory, while it cannot be read)."""
        res = {str(p): 0 for p in Phase}
        if self.team is not None and time.monotonic() >= self._counts_retry_at:
            try:
                return self._db_counts(res)
            except psycopg.Error:  # not again for a while: a cold read blocks the loop
                self._counts_retry_at = time.monotonic() + COUNTS_RETRY
                res = {str(p): 0 for p in Phase}
        if self.readonly:
            return self._db_counts(res)
        waiting = 0
        for rec in self._active():
            res[str(rec.phase)] += 1
            if rec.wait_until is not None and not rec.phase.terminal:
                waiting += 1
        res["waiting"] = waiting
        return res

    def _db_counts(self, res: dict[str, int]) -> dict[str, int]:
        for row in self._rows(
            "SELECT phase, count(*) AS n FROM tickets WHERE active GROUP BY phase"
        ):
            res[row["phase"]] = row["n"]
        res["waiting"] = self._rows(
            "SELECT count(*) AS n FROM tickets WHERE active AND wait_until IS NOT NULL"
            " AND phase NOT IN (%s, %s, %s)",
            list(_TERMINAL),
        )[0]["n"]
        return res

    def history(self, ticket_id: int) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT id, at, phase, event, message FROM history WHERE ticket_id = %s ORDER BY id",
            [ticket_id],
        )
        seen = {r["id"] for r in rows}
        for g in (self._inflight, self._pending):  # read-your-writes: not yet in the database
            if g is not None:
                rows.extend(
                    h for h in g.history if h["ticket_id"] == ticket_id and h["id"] not in seen
                )
        rows.sort(key=lambda r: r["id"])
        return [{k: r[k] for k in ("at", "phase", "event", "message")} for r in rows]

    # ----------------------------------------------------------------- inputs / outputs

    def inputs(self, ticket_id: int) -> list[InputRecord]:
        ins = self._m.inputs.get(ticket_id)
        if ins is not None:
            return list(ins)
        return [
            _input(r, self._pm)
            for r in self._rows(
                "SELECT * FROM inputs WHERE ticket_id = %s ORDER BY idx", [ticket_id]
            )
        ]

    def mark_input_sent(self, input_id: int, remote_id: str | None) -> None:
        self._writable()
        self._fence_tid(self._m.input_tid.get(input_id))
        self._q(
            "UPDATE inputs SET sent = true, remote_id = %s WHERE id = %s", [remote_id, input_id]
        )
        tid = self._m.input_tid.get(input_id)
        if tid is not None:
            self._m.inputs[tid] = [
                dataclasses.replace(i, sent=True, remote_id=remote_id) if i.id == input_id else i
                for i in self._m.inputs[tid]
            ]
        self._written()

    def record_outputs(self, ticket_id: int, outputs: Sequence[RemoteOutput]) -> None:
        """Insert outputs not seen before, refresh uri/status/checksum of the others."""
        self._writable()
        self._fence_tid(ticket_id)
        m = self._m
        held = m.outputs.get(ticket_id)
        if held is None:  # not a live ticket: read what the database holds (rare)
            held = self.outputs(ticket_id)
        by_remote = {o.remote_id: o for o in held}
        for idx, o in enumerate(outputs):
            remote_id = o.id or f"#{idx}"
            cur = by_remote.get(remote_id)
            if cur is None:
                cur = OutputRecord(
                    id=self._next_id(),
                    ticket_id=ticket_id,
                    idx=idx,
                    remote_id=remote_id,
                    filename=o.filename,
                    uri=o.uri,
                    size=o.size,
                    checksum=o.checksum,
                    remote_status=o.status,
                    state="pending",
                    dest_name=None,
                    digest=None,
                    verdict=None,
                    gets=0,
                    mismatches=0,
                )
            else:
                cur = dataclasses.replace(
                    cur,
                    uri=o.uri,
                    remote_status=o.status,
                    size=o.size if o.size is not None else cur.size,
                    checksum=o.checksum if o.checksum != "" else cur.checksum,
                )
            by_remote[remote_id] = cur
            self._q(
                """INSERT INTO outputs (id, ticket_id, idx, remote_id, filename, uri, size,
                       checksum, remote_status)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT (ticket_id, remote_id) DO UPDATE SET
                       uri = excluded.uri, remote_status = excluded.remote_status,
                       size = COALESCE(excluded.size, outputs.size),
                       checksum = CASE WHEN excluded.checksum != '' THEN excluded.checksum
                                       ELSE outputs.checksum END""",
                [
                    cur.id,
                    ticket_id,
                    idx,
                    remote_id,
                    o.filename,
                    o.uri,
                    o.size,
                    o.checksum,
                    o.status,
                ],
            )
        if ticket_id in m.recs:
            m.outputs[ticket_id] = sorted(by_remote.values(), key=lambda r: (r.idx, r.id))
            for out in by_remote.values():
                m.output_tid[out.id] = ticket_id
        self._written()

    def outputs(self, ticket_id: int) -> list[OutputRecord]:
        outs = self._m.outputs.get(ticket_id)
        if outs is not None:
            return list(outs)
        return [
            OutputRecord.from_row(r)
            for r in self._rows(
                "SELECT * FROM outputs WHERE ticket_id = %s ORDER BY idx", [ticket_id]
            )
        ]

    def update_output(self, output_id: int, **changes: Any) -> None:
        self._writable()
        bad = set(changes) - _OUTPUT_COLS
        if bad:
            raise ValueError(f"unknown output columns: {sorted(bad)}")
        self._fence_tid(self._m.output_tid.get(output_id))
        self._q(
            f"UPDATE outputs SET {', '.join(f'{k} = %s' for k in changes)} WHERE id = %s",
            [*changes.values(), output_id],
        )
        tid = self._m.output_tid.get(output_id)
        if tid is not None:
            self._m.outputs[tid] = [
                dataclasses.replace(o, **changes) if o.id == output_id else o
                for o in self._m.outputs[tid]
            ]
        if "dest_name" in changes:
            self._own_cache.clear()
            rec = self._m.recs.get(tid) if tid is not None else None
            if changes["dest_name"] is not None and rec is not None:
                dest = os.path.join(os.path.dirname(rec.path), changes["dest_name"])
                self._pending.placed.add((dest, rec.root))
        self._written()

    def output_names(self, root: str) -> set[str]:
        """Absolute paths of every output the agent placed under ``root`` (its own files)."""
        pm = self._pm
        names = {
            pm.loc(os.path.join(os.path.dirname(r["path"]), r["dest_name"]))
            for r in self._rows(
                """SELECT t.path, o.dest_name FROM outputs o JOIN tickets t ON t.id = o.ticket_id
                   WHERE t.root = %s AND o.dest_name IS NOT NULL""",
                [pm.s(root)],
            )
        }
        names.update(  # and those of pruned tickets, while their tombstones are kept
            pm.loc(r["path"])
            for r in self._rows(
                """SELECT o.path FROM pruned_outputs o JOIN pruned p ON p.id = o.pruned_id
                   WHERE p.root = %s""",
                [pm.s(root)],
            )
        )
        for tid, outs in self._m.outputs.items():  # and those placed but not flushed yet
            rec = self._m.recs.get(tid)
            if rec is not None and rec.root == root:
                names.update(
                    os.path.join(os.path.dirname(rec.path), o.dest_name)
                    for o in outs
                    if o.dest_name is not None
                )
        return names

    def is_own_output(self, path: str, roots: Collection[str]) -> bool:
        """As ``sqlite.Store.is_own_output``: placements not flushed yet from memory, the rest
        by two indexed lookups (``outputs_dest``, ``pruned_outputs_path``) on the cold-read
        connection, whose answers for the last ``OWN_CACHE`` paths are kept (a new file is
        asked about by the watcher and then by the scheduler)."""
        wanted = frozenset(roots)
        if not wanted:
            return False
        for g in (self._inflight, self._pending):
            if g is not None and any((path, r) in g.placed for r in wanted):
                return True
        cached = self._own_cache.get(path) if not self.readonly else None
        if cached is not None and cached[0] == wanted:
            return cached[1]
        pm = self._pm
        where, name = os.path.split(pm.s(path))
        shared_roots = [pm.s(r) for r in wanted]
        own = any(
            os.path.dirname(r["path"]) == where
            for r in self._rows(
                "SELECT t.path FROM outputs o JOIN tickets t ON t.id = o.ticket_id"
                " WHERE o.dest_name = %s AND t.root = ANY(%s)",
                [name, shared_roots],
            )
        ) or bool(
            self._rows(
                "SELECT 1 AS x FROM pruned_outputs o JOIN pruned p ON p.id = o.pruned_id"
                " WHERE o.path = %s AND p.root = ANY(%s) LIMIT 1",
                [pm.s(path), shared_roots],
            )
        )
        if not self.readonly:
            self._own_cache.pop(path, None)
            self._own_cache[path] = (wanted, own)
            if len(self._own_cache) > OWN_CACHE:
                del self._own_cache[next(iter(self._own_cache))]
        return own

    # ----------------------------------------------------------------- retention

    def prune(
        self, now: float, *, keep_days: float, keep_finished: int, limit: int = 500
    ) -> PruneResult:
        """One batch of retention (as ``sqlite.Store.prune``, the contract's words): at most
        ``limit`` of the oldest finished records no longer kept leave, with their history,
        inputs and outputs, each leaving a tombstone, in one transaction of its own (a short
        blocking exchange, like a cold read). Raises ``RuntimeError`` while writes wait for a
        flush (the caller flushes first). Ids come from a sequence and are never reused, so
        the newest record needs no keeping here."""
        if self.readonly:
            raise RuntimeError("a read-only store does not prune")
        if self.dirty:
            raise RuntimeError("prune() while writes wait for a flush: flush first")
        cutoff = now - keep_days * 86400.0 if keep_days > 0 else float("-inf")
        conn = self._reader()
        try:
            with conn.transaction():
                result = self._prune_batch(conn, now, cutoff, keep_finished, limit)
                if self.team is not None:
                    # Rows of the team's agents gone for a day (each run makes one) leave
                    # too, once no claim names them.
                    conn.execute(
                        "DELETE FROM agents a WHERE a.id <> %s AND"
                        " coalesce(a.stopped_at, a.heartbeat_at) < now() - %s * interval '1 second'"
                        " AND NOT EXISTS (SELECT 1 FROM claims c WHERE c.owner = a.id)",
                        [self.agent_id, AGENT_KEEP_SECONDS],
                    )
        except psycopg.Error as exc:
            raise _safe_error(exc, self._url) from None
        if result.tickets or result.tombstones:
            self._own_cache.clear()  # outputs whose last record or tombstone went
        for tid in result.tickets:
            rec = self._m.recs.get(tid)
            if rec is not None and self._m.by_path.get(rec.path) == tid:
                del self._m.by_path[rec.path]
            self._forget(tid)
        return result

    def _prune_batch(
        self,
        conn: psycopg.Connection[dict[str, Any]],
        now: float,
        cutoff: float,
        keep_finished: int,
        limit: int,
    ) -> PruneResult:
        boundary: tuple[float, int] | None = None
        if keep_finished > 0:
            row = conn.execute(
                f"SELECT {_PRUNE_KEY} AS k, id FROM tickets WHERE {_PRUNABLE}"
                f" ORDER BY {_PRUNE_KEY} DESC, id DESC LIMIT 1 OFFSET %s",
                [keep_finished],
            ).fetchone()
            boundary = (row["k"], row["id"]) if row else None
        rows = conn.execute(
            f"SELECT id, {_PRUNE_KEY} AS k, path, root, phase, active FROM tickets"
            f" WHERE {_PRUNABLE} ORDER BY {_PRUNE_KEY}, id LIMIT %s FOR UPDATE",
            [limit],
        ).fetchall()
        reached = len(rows) == limit
        victims = []
        for r in rows:
            key, tid = r["k"], r["id"]
            if not (key < cutoff or (boundary is not None and (key, tid) <= boundary)):
                reached = False
                break
            if r["active"] and r["phase"] not in _TERMINAL:
                continue
            outcome = r["phase"] if r["phase"] in _TERMINAL else "superseded"
            victims.append((tid, r["path"], r["root"], outcome, key))
        ids = [v[0] for v in victims]
        if ids:
            placed: dict[int, list[str]] = {}
            for r in conn.execute(
                "SELECT ticket_id, dest_name FROM outputs WHERE ticket_id = ANY(%s)"
                " AND dest_name IS NOT NULL",
                [ids],
            ):
                placed.setdefault(r["ticket_id"], []).append(r["dest_name"])
            for tid, path, root, outcome, key in victims:
                row = conn.execute(
                    "INSERT INTO pruned (path, root, outcome, finished_at, pruned_at)"
                    " VALUES (%s, %s, %s, %s, %s) RETURNING id",
                    [path, root, outcome, key, now],
                ).fetchone()
                assert row is not None
                where = os.path.dirname(path)
                for dest in placed.get(tid, ()):
                    conn.execute(
                        "INSERT INTO pruned_outputs (pruned_id, path) VALUES (%s, %s)",
                        [row["id"], os.path.join(where, dest)],
                    )
            for table in ("history", "inputs", "outputs"):
                conn.execute(f"DELETE FROM {table} WHERE ticket_id = ANY(%s)", [ids])
            conn.execute("DELETE FROM tickets WHERE id = ANY(%s)", [ids])
        cap = keep_finished if keep_finished > 0 else DEFAULT_TOMBSTONES
        row = conn.execute(
            "SELECT id FROM pruned ORDER BY id DESC LIMIT 1 OFFSET %s", [cap]
        ).fetchone()
        forgotten: list[str] = []
        dropped = 0
        more_tombstones = False
        if row is not None:
            old = [
                r["id"]
                for r in conn.execute(
                    "SELECT id FROM pruned WHERE id <= %s ORDER BY id LIMIT %s",
                    [row["id"], limit + 1],
                )
            ]
            more_tombstones = len(old) > limit
            old = old[:limit]
            gone = [
                r["path"]
                for r in conn.execute(
                    "SELECT path FROM pruned_outputs WHERE pruned_id = ANY(%s)", [old]
                )
            ]
            conn.execute("DELETE FROM pruned_outputs WHERE pruned_id = ANY(%s)", [old])
            conn.execute("DELETE FROM pruned WHERE id = ANY(%s)", [old])
            dropped = len(old)
            forgotten = [p for p in dict.fromkeys(gone) if not self._names_output(conn, p)]
        return PruneResult(
            tickets=tuple(ids),
            tombstones=dropped,
            forgotten_outputs=tuple(self._pm.loc(p) for p in forgotten),
            more=more_tombstones or reached,
        )

    @staticmethod
    def _names_output(conn: psycopg.Connection[dict[str, Any]], path: str) -> bool:
        """Whether a record or a tombstone still names ``path`` as an output it placed."""
        if conn.execute("SELECT 1 FROM pruned_outputs WHERE path = %s LIMIT 1", [path]).fetchone():
            return True
        where, name = os.path.split(path)
        return any(
            os.path.dirname(r["path"]) == where
            for r in conn.execute(
                "SELECT t.path FROM outputs o JOIN tickets t ON t.id = o.ticket_id"
                " WHERE o.dest_name = %s",
                [name],
            )
        )

    def pruned(self, name: str) -> list[PrunedRecord]:
        """Tombstones whose path, file name or stem is ``name``, newest first."""
        out = []
        for row in self._rows(
            "SELECT id, path, root, outcome, finished_at, pruned_at FROM pruned ORDER BY id DESC"
        ):
            rec = PrunedRecord.from_row(row)
            if self._pm:
                rec = dataclasses.replace(
                    rec, path=self._pm.loc(rec.path), root=self._pm.loc(rec.root)
                )
            if named(rec.path, name):
                out.append(rec)
        return out

    # ----------------------------------------------------------------- team mode

    def holds(self, path: str) -> bool:
        """Whether this agent holds the claim of the (local) ticket path ``path``."""
        return self.team is None or self._pm.s(path) in self._held

    async def _lease(self) -> psycopg.AsyncConnection[dict[str, Any]]:
        """The connection of claims and heartbeats (apart from the flush's, so that a slow
        flush never delays a renewal)."""
        conn = self._lease_conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._lease_conn = None
        conn = await psycopg.AsyncConnection.connect(
            self._url,
            autocommit=True,
            row_factory=dict_row,
            **_conninfo(self._url, timeout_ms=READ_TIMEOUT_MS),
        )
        self._lease_conn = conn
        return conn

    @contextlib.asynccontextmanager
    async def _exchange(self) -> AsyncIterator[psycopg.AsyncConnection[dict[str, Any]]]:
        """One exchange on the claims connection: one at a time, bounded in time; a failure
        drops the connection and is raised without the URL's password."""
        async with self._lease_lock:
            try:
                async with asyncio.timeout(READ_TIMEOUT_MS / 1000 + 1):
                    yield await self._lease()
            except (psycopg.Error, TimeoutError) as exc:
                self._drop_lease()
                raise _safe_error_any(exc, self._url) from None

    def _drop_lease(self) -> None:
        conn = self._lease_conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.pgconn.finish()
            self._lease_conn = None

    async def renew(self) -> list[int]:
        """The heartbeat: one statement renews this agent's row and every claim it holds.
        Returns the tickets of claims found lost (another agent took them over while this
        one was paused or cut off): they leave the mirror, nothing more is done for them.
        Raises ``psycopg.Error`` (passwordless) when the database cannot be reached."""
        assert self.team is not None
        async with self._exchange() as conn:
            cur = await conn.execute(
                "WITH a AS (UPDATE agents SET heartbeat_at = now(), stopped_at = NULL"
                " WHERE id = %(me)s)"
                " UPDATE claims SET lease_until = now() + make_interval(secs => %(l)s)"
                " WHERE owner = %(me)s RETURNING path, fence",
                {"me": self.agent_id, "l": self.team.lease},
            )
            rows = await cur.fetchall()
        now_held = {r["path"]: int(r["fence"]) for r in rows}
        lost = [p for p, fence in self._held.items() if now_held.get(p) != fence]
        for p in lost:
            self._held.pop(p, None)
        return self._drop_paths(lost)

    def _drop_paths(self, shared_paths: Iterable[str]) -> list[int]:
        """The records of paths no longer held leave the mirror; returns their ids."""
        gone = {self._pm.loc(p) for p in shared_paths}
        tids = [tid for tid, rec in self._m.recs.items() if rec.path in gone]
        for tid in tids:
            rec = self._m.recs[tid]
            if self._m.by_path.get(rec.path) == tid:
                del self._m.by_path[rec.path]
            self._forget(tid)
        return tids

    async def claim(self, path: str, *, fair: bool = True) -> str:
        """Claim the (local) ticket path ``path`` for this agent: ``"ok"`` (held now, its
        records read into the mirror when another agent had them), ``"held"`` (another live
        agent holds it) or ``"busy"`` (``fair``: this agent holds its share of the team's
        claims; another agent should take it).

        Claims asked for while one is on its way are sent together, in one transaction (the
        first caller to find its own still unanswered sends every queued one): a poll that
        finds a burst of new tickets claims them in a few exchanges, not one each."""
        assert self.team is not None
        shared = self._pm.s(path)
        if shared in self._held:
            return "ok"
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._claim_queue.append((shared, fair, fut))
        async with self._claim_lock:
            if not fut.done():
                batch, self._claim_queue = self._claim_queue, []
                try:
                    verdicts = await self._claim_batch(batch)
                except BaseException as exc:
                    err = exc if isinstance(exc, Exception) else WritesLost("claim interrupted")
                    for _, _, f in batch:
                        if not f.done():
                            f.set_exception(err)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for (p, _, f), verdict in zip(batch, verdicts, strict=True):
                        if not f.done():
                            f.set_result(verdict if verdict != "ok" or p in self._held else "held")
        return fut.result()

    async def _claim_batch(
        self, batch: Sequence[tuple[str, bool, asyncio.Future[str]]]
    ) -> list[str]:
        """One exchange for queued claims (see ``claim``): their verdicts, in order."""
        verdicts: dict[str, str] = {}
        want = [p for p, _, _ in batch if p not in self._held]
        async with self._exchange() as conn, conn.transaction():
            # Rows of the paths already claimed by somebody, locked in one order (two agents
            # claiming overlapping bursts never wait for each other in a circle).
            cur = await conn.execute(
                "SELECT c.path, c.owner, c.fence, c.lease_until < now() AS expired,"
                " a.name, a.host FROM claims c JOIN agents a ON a.id = c.owner"
                " WHERE c.path = ANY(%s) ORDER BY c.path FOR UPDATE OF c",
                [sorted(set(want))],
            )
            prev = {r["path"]: r for r in await cur.fetchall()}
            free = []
            for p in want:
                row = prev.get(p)
                if row is not None and not row["expired"] and row["owner"] != self.agent_id:
                    verdicts[p] = "held"
                elif p not in free:
                    free.append(p)
            allowed = await self._allowance(conn, [p for p, fair, _ in batch if fair and p in free])
            take = [p for p, fair, _ in batch if p in free and (not fair or p in allowed)]
            for p in free:
                if p not in take:
                    verdicts[p] = "busy"
            got = await self._take(conn, sorted(set(take)), prev)
        self._merge(got)
        return [verdicts.get(p, "ok") for p, _, _ in batch]

    async def _allowance(
        self, conn: psycopg.AsyncConnection[dict[str, Any]], paths: Sequence[str]
    ) -> set[str]:
        """Of new ``paths``, those this agent takes without going over its share: the team's
        live claims and these new tickets, divided by the live agents, plus a little slack (so
        that a lone burst is not slowed); the rest are left to the others a moment."""
        assert self.team is not None
        if not paths:
            return set()
        cur = await conn.execute(
            "SELECT count(*) FILTER (WHERE owner = %(me)s) AS mine, count(*) AS total,"
            " (SELECT count(*) FROM agents WHERE stopped_at IS NULL"
            "  AND heartbeat_at > now() - make_interval(secs => %(l)s)) AS live"
            " FROM claims WHERE lease_until > now()",
            {"me": self.agent_id, "l": self.team.lease},
        )
        row = await cur.fetchone()
        assert row is not None
        live = max(1, int(row["live"]))
        if live == 1:
            return set(paths)
        share = -(-(int(row["total"]) + len(paths)) // live) + FAIR_SLACK
        return set(list(dict.fromkeys(paths))[: max(0, share - int(row["mine"]))])

    async def take_over(self) -> tuple[list[int], list[str]]:
        """Take this agent's share of the claims whose lease ran out (their agent died, was
        paused or cut off). Returns the ids of the records now held and the (local) paths
        taken over that hold no record (the caller looks at those files again)."""
        assert self.team is not None
        async with self._exchange() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT count(*) AS n, (SELECT count(*) FROM agents WHERE"
                " stopped_at IS NULL AND heartbeat_at > now() -"
                " make_interval(secs => %(l)s)) AS live"
                " FROM claims WHERE lease_until < now()",
                {"l": self.team.lease},
            )
            row = await cur.fetchone()
            assert row is not None
            if not row["n"]:
                return [], []
            n = -(-int(row["n"]) // max(1, int(row["live"])))
            cur = await conn.execute(
                "SELECT c.path, c.owner, c.fence, true AS expired, a.name, a.host"
                " FROM claims c JOIN agents a ON a.id = c.owner"
                " WHERE c.lease_until < now() ORDER BY c.lease_until"
                " LIMIT %s FOR UPDATE OF c SKIP LOCKED",
                [n],
            )
            prev = {r["path"]: r for r in await cur.fetchall()}
            got = await self._take(conn, list(prev), prev)
        tids = self._merge(got)
        held = {self._m.recs[t].path for t in tids}
        empty = [self._pm.loc(p) for p in prev if self._pm.loc(p) not in held]
        return tids, empty

    async def _take(
        self,
        conn: psycopg.AsyncConnection[dict[str, Any]],
        paths: list[str],
        prev: Mapping[str, Mapping[str, Any]],
    ) -> list[list[dict[str, Any]]]:
        """Inside a claim's transaction: make ``paths`` ours (a takeover raises the fence and
        leaves a history row on each record), and read their records."""
        assert self.team is not None
        if not paths:
            return [[], [], [], [], []]
        lease = {"me": self.agent_id, "l": self.team.lease, "paths": paths}
        cur = await conn.execute(
            "INSERT INTO claims (path, owner, lease_until)"
            " SELECT p, %(me)s, now() + make_interval(secs => %(l)s)"
            " FROM unnest(%(paths)s::text[]) p ORDER BY p"
            " ON CONFLICT (path) DO UPDATE SET owner = EXCLUDED.owner,"
            " fence = claims.fence + 1, lease_until = EXCLUDED.lease_until, claimed_at = now()"
            # Only a claim whose lease ran out changes hands (two agents claiming a new path
            # at once: the second one's insert meets the first one's row and takes nothing).
            " WHERE claims.lease_until < now() OR claims.owner = EXCLUDED.owner"
            " RETURNING path, fence",
            lease,
        )
        fences = {r["path"]: int(r["fence"]) for r in await cur.fetchall()}
        lease["paths"] = list(fences)
        held = "t.active AND t.path = ANY(%(paths)s)"
        rows: list[list[dict[str, Any]]] = []
        for sql in (
            f"SELECT t.* FROM tickets t WHERE {held} ORDER BY t.id",
            "SELECT i.* FROM inputs i JOIN tickets t ON t.id = i.ticket_id"
            f" WHERE {held} ORDER BY i.ticket_id, i.idx",
            "SELECT o.* FROM outputs o JOIN tickets t ON t.id = o.ticket_id"
            f" WHERE {held} ORDER BY o.ticket_id, o.idx",
        ):
            rows.append(await (await conn.execute(sql, lease)).fetchall())
        now = time.time()
        for t in rows[0]:
            old = prev.get(t["path"])
            if old is None or old["owner"] == self.agent_id:
                continue
            await conn.execute(
                "INSERT INTO history (id, ticket_id, at, phase, event, message)"
                " VALUES (%s, %s, %s, %s, 'claimed', %s)",
                [
                    self._next_id(),
                    t["id"],
                    now,
                    t["phase"],
                    f"taken over by agent {self.team.name} on {self.team.host} from agent "
                    f"{old['name']} on {old['host']}, whose lease ran out "
                    f"(fence {fences.get(t['path'], 0)})",
                ],
            )
        rows.append([])
        rows.append([{"path": p, "fence": f} for p, f in fences.items()])
        return rows

    def _merge(self, rows: Sequence[list[dict[str, Any]]]) -> list[int]:
        """Records of newly held paths join the mirror (a takeover or a claim)."""
        part = _build_mirror(rows, self._pm)
        m = self._m
        for tid, rec in part.recs.items():
            old = m.by_path.get(rec.path)
            if old is not None and old != tid:
                self._forget(old)
            m.recs[tid] = rec
            m.by_path[rec.path] = tid
            m.inputs[tid] = part.inputs.get(tid, [])
            m.outputs[tid] = part.outputs.get(tid, [])
            m.input_tid.update({i.id: tid for i in m.inputs[tid]})
            m.output_tid.update({o.id: tid for o in m.outputs[tid]})
        for r in rows[4]:
            self._held[r["path"]] = int(r["fence"])
        return sorted(part.recs)

    def reclaim_own(self, alive: Callable[[int], bool]) -> int:
        """Earlier runs of this agent (same name, same host) whose process is gone (a crash, a
        SIGKILL) free their claims at once instead of after their leases: a restart resumes
        its tickets without waiting. Returns how many such runs were found."""
        assert self.team is not None
        rows = self._rows(
            "SELECT id, pid FROM agents WHERE name = %s AND host = %s AND stopped_at IS NULL"
            " AND id <> %s",
            [self.team.name, self.team.host, self.agent_id],
        )
        dead = [r["id"] for r in rows if not alive(int(r["pid"]))]
        if dead:
            conn = self._reader()
            try:
                with conn.transaction():
                    conn.execute(
                        "UPDATE claims SET lease_until = now() - interval '1 second'"
                        " WHERE owner = ANY(%s)",
                        [dead],
                    )
                    conn.execute("UPDATE agents SET stopped_at = now() WHERE id = ANY(%s)", [dead])
            except psycopg.Error as exc:
                raise _safe_error(exc, self._url) from None
        return len(dead)

    async def team_info(self) -> dict[str, Any]:
        """What the team shares besides claims, read with each heartbeat: how many agents are
        alive, and the account's pauses one of them found (``publish``): the quota used up
        until (epoch seconds) and the API key refused (its message)."""
        assert self.team is not None
        async with self._exchange() as conn:
            cur = await conn.execute(
                "SELECT (SELECT count(*) FROM agents WHERE stopped_at IS NULL AND"
                " heartbeat_at > now() - make_interval(secs => %(l)s)) AS live,"
                " (SELECT value FROM meta WHERE key = 'team.quota_until') AS quota,"
                " (SELECT value FROM meta WHERE key = 'team.auth_problem') AS auth",
                {"l": self.team.lease},
            )
            row = await cur.fetchone()
        assert row is not None
        return {
            "live": max(1, int(row["live"])),
            "quota_until": float(row["quota"]) if row["quota"] else None,
            "auth_problem": row["auth"] or None,
        }

    def release(self, path: str) -> None:
        """Give up the claim of the (local) ticket path ``path`` with the open group (its
        ticket is filed, or the file holds no request): another agent may claim it later."""
        if self.team is None:
            return
        shared = self._pm.s(path)
        if shared not in self._held:
            return
        self._writable()
        self._pending.paths.add(shared)
        self._q("DELETE FROM claims WHERE path = %s AND owner = %s", [shared, self.agent_id])
        self._held.pop(shared, None)
        self._written()

    async def leave(self) -> None:
        """At a graceful stop, after the last flush: every claim this agent holds is free at
        once (the team takes its tickets over without waiting for the leases to run out)."""
        if self.team is None:
            return
        async with self._lease_lock:
            with contextlib.suppress(psycopg.Error, TimeoutError):
                async with asyncio.timeout(READ_TIMEOUT_MS / 1000 + 1):
                    conn = await self._lease()
                    async with conn.transaction():
                        await conn.execute(
                            "UPDATE claims SET lease_until = now() - interval '1 second'"
                            " WHERE owner = %s",
                            [self.agent_id],
                        )
                        await conn.execute(
                            "UPDATE agents SET stopped_at = now() WHERE id = %s", [self.agent_id]
                        )
            self._held.clear()
            if self._lease_conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._lease_conn.close(), 2.0)
                self._lease_conn = None

    def team_agents(self) -> list[dict[str, Any]]:
        """The team's agents (those running, and those stopped within the hour): name, host,
        pid, seconds since their heartbeat, claims held (a cold read)."""
        return [
            dict(r)
            for r in self._rows(
                "SELECT a.id, a.name, a.host, a.pid,"
                " extract(epoch FROM now() - a.heartbeat_at)::float AS heartbeat_age,"
                " a.stopped_at IS NOT NULL AS stopped,"
                " (SELECT count(*) FROM claims c WHERE c.owner = a.id"
                "  AND c.lease_until > now()) AS held"
                " FROM agents a WHERE a.stopped_at IS NULL"
                " OR a.stopped_at > now() - interval '1 hour' ORDER BY a.id"
            )
        ]

    def team_tickets(self) -> list[TicketRecord]:
        """Every active ticket of the team, whoever holds it, with paths on this agent's mount
        (a cold read: the mirror of a team member holds only its own claims)."""
        return [
            _ticket(r, self._pm)
            for r in self._rows("SELECT * FROM tickets WHERE active ORDER BY id")
        ]

    def holders(self) -> dict[str, str]:
        """(Local) ticket path → name of the agent whose live claim covers it (a cold read)."""
        return {
            self._pm.loc(r["path"]): r["name"]
            for r in self._rows(
                "SELECT c.path, a.name FROM claims c JOIN agents a ON a.id = c.owner"
                " WHERE c.lease_until > now()"
            )
        }

    # ----------------------------------------------------------------- meta

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        if self.readonly:
            rows = self._rows("SELECT value FROM meta WHERE key = %s", [key])
            return rows[0]["value"] if rows else default
        return self._m.meta.get(key, default)

    def set_meta(self, key: str, value: str | None) -> None:
        """Written with the open group (flushed soon after, like any write)."""
        self._writable()
        if value is None:
            self._q("DELETE FROM meta WHERE key = %s", [key])
            self._m.meta.pop(key, None)
        else:
            self._q(
                "INSERT INTO meta (key, value) VALUES (%s, %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, value],
            )
            self._m.meta[key] = value
        self._written()

    def integrity_ok(self) -> bool:
        """PostgreSQL keeps its own integrity; this says the database answers."""
        try:
            return bool(self._rows("SELECT 1 AS ok"))
        except psycopg.Error:
            return False


def _safe_text(exc: BaseException, url: str) -> str:
    """An error's text with no secret of ``url`` in it."""
    text = str(exc).strip() or type(exc).__name__
    text = text.replace(url, redact_url(url))
    for secret in url_secrets(url):
        text = text.replace(secret, "***")
    return text.splitlines()[0] if text else text


def _safe_error_any(exc: BaseException, url: str) -> psycopg.OperationalError:
    """``_safe_error`` of a psycopg error or a timeout (no answer in time)."""
    if isinstance(exc, psycopg.Error):
        return _safe_error(exc, url)
    return psycopg.OperationalError("the state database did not answer in time")


def _safe_error(exc: psycopg.Error, url: str) -> psycopg.OperationalError:
    """A psycopg error re-raised with its text redacted (and only its first line)."""
    return psycopg.OperationalError(_safe_text(exc, url))
