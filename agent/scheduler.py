"""The one place that sequences a ticket's steps: record the transition, then act.

A ticket moves pending → creating → uploading → starting → processing → downloading → done (or
failed / canceled). Each step is persisted in the store *before* the action it announces, so a
process killed at any line replays safely:

* creating: the idempotency key is recorded first; a replayed POST carries the same key. Should the
  server ignore it, the first job was only ever staged (``process:false``), costs nothing, and is
  never started, because only the job id recorded in the store is ever started.
* uploading: after a restart the remote job's inputs are read back before anything is sent again.
* starting: ``start_sent`` is recorded before the PATCH; after a restart the job is read and the
  PATCH only repeated while the job is still staged. A job is started at most once per ticket.
* downloading: every GET is counted before it is sent (outputs allow about ten); the digest is
  recorded before placement, so an output placed just before a crash is recognised, not duplicated.

All jobs share one timer heap: polling, waiting after a transient error and the next step are all
"run this ticket at time T". Nothing here imports aiohttp, watchdog or sqlite_utils.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import heapq
import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent import downloader, folder, lifecycle, paths, platform
from agent import slots as slots_mod
from agent.api import FINISH, ApiClient
from agent.config import Config, FolderConfig
from agent.errors import (
    AgentError,
    ApiRejected,
    JobFailed,
    LocalResourceError,
    NeedsUserError,
    OutputUnavailable,
    PermanentError,
    QuotaExhausted,
    RateLimited,
    RetryableError,
    TicketError,
    from_os_error,
)
from agent.leases import ClaimStore, Leases
from agent.lifecycle import JobOutcome
from agent.models import (
    InputKind,
    InputSpec,
    Phase,
    RemoteJob,
    TicketKind,
    TicketSpec,
    VerifyMode,
)
from agent.store import (
    InputRecord,
    LeaseLost,
    OutputRecord,
    StateStore,
    TicketRecord,
    WritesLost,
)
from agent.sweep import Sweeper, Watched
from agent.ticket import parse_ticket, ticket_text_for_plain_file
from agent.watcher import WatchEvent

if TYPE_CHECKING:
    from agent.metrics import Metrics

log = logging.getLogger("agent.scheduler")

AUTH_PROBE_SECONDS = 30.0
QUOTA_PROBE_SECONDS = 300.0
INPUT_WAIT_SECONDS = 600.0
OUTPUT_INFO_MAX_AGE = 300.0  # re-read uri/status before a download started later than this
LOCAL_RETRY_SECONDS = 10.0  # disk full, read-only, permission, folder gone: checked this often
# A ticket or input another program holds open (Windows' sharing violation) waits like a file
# still being copied, quietly for the settle time plus this long (a copy that is still running
# holds its file open too); after that the ticket's sidecar (for an input), or a log warning and
# `status`/`why` (for a ticket that cannot be read at all) say that it is open in another program
# and that the agent goes on once it is closed. It keeps waiting: nothing fails, nothing is lost.
IN_USE_NOTICE_SECONDS = 10.0
# A ticket whose filing (the rename to NAME.job.done/.failed) failed is tried again after this
# long; one held open in another program sooner, since looking again costs nothing.
FILE_RETRY_SECONDS = 30.0
MAX_GETS_PER_OUTPUT = 8  # the service allows ~10 downloads; keep a margin for the user
# Sidecars are progress views, rewritten as a ticket moves: the transitions within this long are
# written as one file (the latest state), in worker threads, so a burst of tickets neither queues
# thousands of fsyncs on the event loop nor waits for them one by one. The final sidecar is
# written when the ticket is filed, after any older write of it has landed.
SIDECAR_COALESCE_SECONDS = 0.1
# A progress view is written once its ticket has not changed for SIDECAR_QUIET_SECONDS, or when
# the view on disk has been behind for SIDECAR_MAX_BEHIND_SECONDS: a ticket running through its
# steps in a burst (each in tens of milliseconds) gets no views for states it leaves at once,
# each of which would be a file, a rename and four watcher events. The final view is written
# when the ticket is filed.
SIDECAR_QUIET_SECONDS = 0.25
# A ticket waiting for a free conversion slot looks again this often even if no release woke it.
SLOT_RECHECK_SECONDS = 10.0
# While tickets wait for a slot, the jobs holding one are polled every 1/8 of their age (at
# least this often apart, at most as rarely as usual): a freed slot is used at once.
SLOT_POLL_MIN = 0.1
# A 429 on a start or a create is the request rate, not the concurrency limit, when another
# request was refused within this many seconds.
RATE_EVIDENCE_SECONDS = 5.0
SIDECAR_MAX_BEHIND_SECONDS = 1.0
# A ticket whose step a PostgreSQL state did not take (the database away) tries again this soon.
STATE_RETRY_SECONDS = 3.0
# Team mode: a new ticket an agent over its share leaves to the others is looked at again after
# about this long, and taken regardless after this many tries (nobody else took it).
CLAIM_RETRY_SECONDS = 1.5
CLAIM_FAIR_TRIES = 3
# Retention (``retention``): a pass runs once the first ticket is picked up (or a minute after
# start), then hourly, and sooner once this share of ``state.keep_finished`` was filed since.
RETENTION_INTERVAL = 3600.0
RETENTION_EARLY_SHARE = 10  # a pass after keep_finished / 10 filings (at least 100)
PRUNE_BATCH = 500  # records per retention transaction


class ProgressListener(Protocol):
    """Told about bytes moving (uploads, downloads); a terminal front end draws bars from it."""

    def transfer(self, key: str, label: str, done: int, total: int | None) -> None: ...
    def transfer_done(self, key: str) -> None: ...


@dataclasses.dataclass
class _Volatile:
    """What a ticket keeps only in memory: lost on restart, which only costs one extra GET."""

    fresh: bool = False  # we know the remote job's state since we created it in this process
    polls: int = 0
    input_stats: dict[str, tuple[int, int]] | None = None
    in_use_since: float | None = None  # an input first found open in another program
    failing_since: float | None = None  # first transient failure of the current streak
    outputs_seen_at: float | None = None  # when the outputs' uri/status were last read
    started_at: float | None = None  # when this process started the job (monotonic)
    spec_json: str | None = None  # the stored spec that ``spec`` was parsed from
    spec: TicketSpec | None = None


_DiskItem = tuple[Callable[[], Any] | None, Path | None, bool, asyncio.Future[Any]]


class _DiskBatch:
    """Small file operations of many tickets (sidecars, filing, a folder's fsync after placing
    an output), run together in one worker-thread job instead of a thread hand-off each; every
    folder they asked to sync is fsynced once, after all of them, before any of them is answered.

    ``run`` returns a future for one operation: its result or exception, set only once its
    folder's fsync is done, so "persist, then act" callers still act after the disk is durable.
    Operations run in the order they were submitted; one job runs at a time (what arrives while
    it runs is the next job)."""

    def __init__(self) -> None:
        self._items: list[_DiskItem] = []
        self._task: asyncio.Task[None] | None = None

    def run(
        self, fn: Callable[[], Any] | None, *, sync: Path | None = None, strict: bool = False
    ) -> asyncio.Future[Any]:
        """Queue ``fn`` (None: only the fsync of ``sync``). With ``strict`` a failed fsync of
        ``sync`` is this operation's error; otherwise it is ignored (``folder.fsync_dir``)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._items.append((fn, sync, strict, fut))
        if self._task is None:
            self._task = loop.create_task(self._loop())
        return fut

    async def drain(self) -> None:
        while self._task is not None:
            await asyncio.wait([self._task])

    async def _loop(self) -> None:
        try:
            while self._items:
                await asyncio.sleep(0)  # let the callbacks of this loop turn add theirs
                items, self._items = self._items, []
                try:
                    outcome = await asyncio.to_thread(self._work, items)
                except asyncio.CancelledError:  # the loop is closing
                    for *_, fut in items:
                        fut.cancel()
                    raise
                for (*_, fut), (ok, value) in zip(items, outcome, strict=True):
                    if fut.done():
                        continue
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(value)
        finally:
            self._task = None

    @staticmethod
    def _work(items: list[_DiskItem]) -> list[tuple[bool, Any]]:
        results: list[tuple[bool, Any]] = []
        folders: dict[Path, OSError | None] = {}
        for fn, sync, _, _ in items:
            try:
                results.append((True, fn() if fn is not None else None))
            except Exception as exc:
                results.append((False, exc))
                continue
            if sync is not None:
                folders[sync] = None
        for path in folders:
            try:
                downloader.fsync_folder(path)
            except OSError as exc:
                folders[path] = exc
        for i, (_, sync, strict, _) in enumerate(items):
            err = folders.get(sync) if sync is not None and strict else None
            if err is not None and results[i][0]:
                results[i] = (False, err)
        return results


class Scheduler:
    def __init__(
        self,
        cfg: Config,
        store: StateStore,
        api: ApiClient,
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        on_change: Callable[[TicketRecord], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.api = api
        self.clock = clock
        self.rand = rand
        self.on_change = on_change
        self._heap: list[tuple[float, int, int]] = []
        self._seq = 0
        self._wake = asyncio.Event()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._rerun: set[int] = set()
        self._retry_when_filed: set[int] = set()  # failed, asked to retry before being filed
        self._vol: dict[int, _Volatile] = {}
        self._parse_retry: dict[str, float] = {}  # ticket path → first failed parse
        self._pending_paths: set[str] = set()  # tickets seen but not yet recorded
        self._in_use: set[str] = set()  # tickets open in another program, waited for
        self._filing_problem: dict[int, str] = {}  # why a ticket is not filed yet, as logged
        # Those of them open for longer than the notice time: path → since (wall clock), for
        # the snapshot (`status`, `why`, the dashboard).
        self.tickets_in_use: dict[str, float] = {}
        self._claim_tries: dict[str, int] = {}  # team mode: claims left to others so far
        self._state_problem: str | None = None  # the state database away: sidecars say so
        self._team_live = 1  # agents of the team alive at the last heartbeat
        self._resuming = False  # a check after lost writes is under way (_resume_when_saved)
        # Outputs linked into a folder whose record naming them is not committed yet (the
        # store answers for the others, ``is_own_output``); one whose placement or commit
        # failed stays (the file is ours whatever the state file says).
        self._placing: set[str] = set()
        self._placing_written: list[str] = []  # of those, recorded: they go at the next commit
        self._roots = frozenset(str(f.path) for f in cfg.folders)
        # Ticket id → output id → the file this process placed that output as, until the
        # ticket is filed: with an asynchronous store the record of a placement can be lost (a
        # failed flush), and the output's own file must then be found again, not be taken for
        # another output's (which made a second copy, "name (1).ext").
        self._placed_as: dict[int, dict[int, str]] = {}
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._sidecars_due: set[int] = set()  # tickets whose sidecar is behind the store
        self._sidecar_flush: asyncio.Task[None] | None = None
        self._sidecar_io: dict[int, asyncio.Future[None]] = {}  # a write in a worker thread
        # Monotonic times of a due view's first and latest unwritten change.
        self._sidecar_changed: dict[int, tuple[float, float]] = {}
        self._disk = _DiskBatch()  # small file work of many tickets, one worker job at a time
        # Group commit: transitions join one transaction, committed once per loop turn; an act
        # that depends on one waits for that commit first (``_persisted``).
        self._commit_due = False
        self._commit_waiters: list[asyncio.Future[None]] = []
        self._flushing: asyncio.Task[None] | None = None  # the store's async flush (PostgreSQL)
        self._flush_failed: str | None = None  # what the last failed commit said (logged once)
        store.group_commit = True
        store.on_dirty = self._commit_soon
        self._stopping = False
        self._slots = asyncio.Semaphore(max(2, cfg.api.max_concurrency * 4))
        self.paused = store.get_meta("paused") == "1"
        self.auth_problem: AgentError | None = None
        self._auth_probe_at = 0.0
        self.quota_until: float | None = None
        # The account's concurrent-conversion limit, learned from 429s (agent/slots.py).
        self.slots = slots_mod.ConversionSlots(
            manual=cfg.api.max_processing, holds=self._holds_slot, clock=self.clock
        )
        self.seen_this_run: set[int] = set()
        self.held: set[str] = set()  # roots of folders another agent serves (``hold``)
        self.progress: ProgressListener | None = None  # a terminal's progress bars, if any
        # Told of a ticket it was announced but did not take up (it could not be read, or its
        # record was not saved): the watcher's ``forget``, which announces it again when a later
        # scan finds it there.
        self.unread: Callable[[Path], None] | None = None
        self.metrics: Metrics | None = None  # /metrics counters (verdicts, bytes, poll latency)
        self.sweeper: Sweeper | None = None  # job-list polling when many jobs are in flight
        if cfg.polling.sweep:
            self.sweeper = Sweeper(
                api,
                interval=max(cfg.polling.min_interval, cfg.polling.max_interval / 2),
                clock=clock,
                watched=self._watched,
                wake=self._schedule,
                blocked=lambda: self._stopping or self.auth_problem is not None,
            )
        self._sweep_task: asyncio.Task[None] | None = None
        self._picked_up = asyncio.Event()  # the first ticket was taken up (retention may start)
        self._prune_due = asyncio.Event()
        self._retention_task: asyncio.Task[None] | None = None
        self._filed_since_prune = 0
        # Team mode (agent/leases.py, docs/team-mode.md): claims on ticket paths, leases.
        self.team: Leases | None = None
        self.claims: ClaimStore | None = None
        self.act_need = 0.0  # seconds a lease must still live for an act to begin

    # ------------------------------------------------------------------ public surface

    def folder_for(self, path: Path) -> FolderConfig | None:
        best: FolderConfig | None = None
        for f in self.cfg.folders:
            if paths.is_within(path, f.path) and (
                best is None or len(str(f.path)) > len(str(best.path))
            ):
                best = f
        return best

    def is_own_output(self, path: Path) -> bool:
        """Whether ``path`` is an output this agent placed (in a watched folder's records, or
        being placed now): never taken up as a new file."""
        p = str(path)
        return p in self._placing or self.store.is_own_output(p, self._roots)

    def resume_all(self, root: str | None = None) -> None:
        """At startup, before watching: everything left unfinished is put back on the timer
        (with ``root``: only that folder's tickets). Tickets of a held folder wait."""
        for rec in self.store.unfinished():
            if rec.root in self.held or (root is not None and rec.root != root):
                continue
            self.seen_this_run.add(rec.id)
            self._schedule(rec.id, rec.wait_until or 0.0)

    def hold(self, root: str) -> None:
        """Another agent serves this folder (its mark, agent.foldermark): its tickets take no
        further step here (a step under way ends first)."""
        self.held.add(root)

    def release(self, root: str) -> None:
        """The folder is ours again: its unfinished tickets resume."""
        if root in self.held:
            self.held.discard(root)
            self.resume_all(root)

    def handle(self, ev: WatchEvent) -> None:
        """Entry point for watcher events (called on the event loop)."""
        if self._stopping:
            return
        if ev.kind == "ticket":
            self._pending_paths.add(str(ev.path))
            self._spawn_side(self._ingest(ev.path, self.folder_for(ev.path)))
        elif ev.kind == "removed":
            self._spawn_side(self._removed(ev.path))
        elif ev.kind == "plain":
            self._spawn_side(self._plain(ev.path))

    def busy(self) -> bool:
        """True while any ticket has work left (used by ``run --once``)."""
        if self._pending_paths or self._tasks or self._side_tasks:
            return True
        return any(rec.root not in self.held for rec in self.store.unfinished())

    def pause(self) -> None:
        self.paused = True
        self.store.set_meta("paused", "1")
        log.info("intake paused: tickets already running go on, new ones wait")

    def resume(self) -> None:
        self.paused = False
        self.store.set_meta("paused", None)
        self.auth_problem = None
        self.quota_until = None
        log.info("intake resumed")
        for rec in self.store.unfinished():
            self._schedule(rec.id, 0.0)

    def retry(self, rec: TicketRecord) -> TicketRecord | None:
        """Start a failed ticket again (its file is renamed back to NAME.job first)."""
        ticket = Path(rec.path)
        failed = ticket.with_name(ticket.name + ".failed")
        if rec.phase is Phase.FAILED and failed.exists() and not ticket.exists():
            platform.replace(failed, ticket)
            self._spawn_side(self._ingest(ticket, self.folder_for(ticket)))
            return rec
        if rec.phase is Phase.FAILED and not rec.filed and ticket.exists():
            # Failed a moment ago and still being renamed to NAME.job.failed: run it again as
            # soon as that is done, so the sidecar and the history stay in order.
            self._retry_when_filed.add(rec.id)
            self._schedule(rec.id, 0.0)
            return rec
        if rec.wait_until is not None and not rec.phase.terminal:
            self.store.update(rec.id, self.clock(), event="retry", wait_until=None, attempts=0)
            self._schedule(rec.id, 0.0)
            return rec
        return None

    async def cancel(self, rec: TicketRecord, reason: str = "canceled by the user") -> None:
        """Cancel a ticket and its remote job; the ticket becomes NAME.job.canceled."""
        await self._cancel(rec, reason, "user")

    async def run(self) -> None:
        """The timer loop: start due tickets, at most a bounded number at a time."""
        self.slots.adopt(  # jobs left processing by the last run hold their slots
            r.id
            for r in self.store.unfinished()
            if r.phase is Phase.PROCESSING and r.kind == TicketKind.CONVERSION
        )
        if self.sweeper is not None and self._sweep_task is None:
            self._sweep_task = asyncio.create_task(self.sweeper.run())
        if self._retention_task is None:
            self._retention_task = asyncio.create_task(self.retention(), name="retention")
        while not self._stopping:
            now = self.clock()
            while self._heap and self._heap[0][0] <= now:
                _, _, tid = heapq.heappop(self._heap)
                if tid in self._tasks:
                    self._rerun.add(tid)  # due while a step runs: look again when it ends
                else:
                    self._tasks[tid] = asyncio.create_task(self._drive(tid))
            delay = self._heap[0][0] - now if self._heap else 3600.0
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, min(delay, 60.0)))

    async def stop(self) -> None:
        """Stop taking steps; steps under way are interrupted and replay on the next start."""
        self._stopping = True
        self._wake.set()
        tasks = [*self._tasks.values(), *self._side_tasks]
        if self._sweep_task is not None:
            tasks.append(self._sweep_task)
        if self._retention_task is not None:
            tasks.append(self._retention_task)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._sidecar_io:  # writes still running in their threads end first
            await asyncio.wait(list(self._sidecar_io.values()))
        await self._disk.drain()
        await self._committed()
        for item in self._due_sidecars(held_back=True):
            self._write_sidecar(*item)

    # ------------------------------------------------------------------ retention

    async def retention(self) -> None:
        """Run retention passes until stopped (the daemon starts this): the first once a ticket
        has been picked up (or after a minute), then hourly, and sooner after many filings."""
        st = self.cfg.state
        if st.keep_days <= 0 and st.keep_finished <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._picked_up.wait(), 60.0)
        while not self._stopping:
            self._prune_due.clear()
            self._filed_since_prune = 0
            await self.prune_pass()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._prune_due.wait(), RETENTION_INTERVAL)

    async def prune_pass(self) -> int:
        """One retention pass: batches of ``PRUNE_BATCH`` records, each its own transaction,
        run only after the open group is committed (never inside it, so ``_persisted`` keeps its
        meaning), with a pause as long as the batch took between batches (the loop spends at
        most half its time on it). Returns the number of records removed."""
        st = self.cfg.state
        total = 0
        while not self._stopping:
            if self._commit_now() is not None:
                break  # the state cannot be written now; the next pass tries again
            if self.store.dirty:  # a store that commits asynchronously: wait, then look again
                try:
                    await self._persisted()
                except Exception:
                    break
                continue
            began = time.monotonic()
            try:
                res = self.store.prune(
                    self.clock(),
                    keep_days=st.keep_days,
                    keep_finished=st.keep_finished,
                    limit=PRUNE_BATCH,
                )
            except Exception as exc:  # e.g. disk full: retention waits for the next pass
                log.warning("retention: could not prune the state file: %s", exc)
                break
            for tid in res.tickets:  # normally gone from memory already (ended long ago)
                self._vol.pop(tid, None)
                self.seen_this_run.discard(tid)
                self._retry_when_filed.discard(tid)
                self._sidecars_due.discard(tid)
                self._sidecar_changed.pop(tid, None)
            total += len(res.tickets)
            if not res.more:
                break
            await asyncio.sleep(time.monotonic() - began)
        if total:
            log.info("retention: %d finished tickets removed from the state file", total)
        return total

    # ------------------------------------------------------------------ timer & tasks

    def _spawn_side(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self._side_tasks.add(t)
        t.add_done_callback(self._side_done)

    def _side_done(self, t: asyncio.Task[None]) -> None:
        self._side_tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("internal error: %r", t.exception(), exc_info=t.exception())

    def _progress(self, key: str, label: str, done: int, total: int | None) -> None:
        if self.progress is not None:
            self.progress.transfer(key, label, done, total)

    def _progress_done(self, key: str) -> None:
        if self.progress is not None:
            self.progress.transfer_done(key)

    def _schedule(self, tid: int, at: float) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, tid))
        self._wake.set()

    def _vol_of(self, tid: int) -> _Volatile:
        v = self._vol.get(tid)
        if v is None:
            v = self._vol[tid] = _Volatile()
        return v

    def _spec_of(self, rec: TicketRecord, *, keep: bool = True) -> TicketSpec:
        """The ticket's parsed spec, parsed once rather than at every step (kept with what the
        ticket holds in memory; ``keep=False`` for a ticket that is finishing)."""
        vol = self._vol_of(rec.id) if keep else self._vol.get(rec.id)
        if vol is not None and vol.spec is not None and vol.spec_json == rec.spec:
            return vol.spec
        spec = TicketSpec.from_json(_loads(rec.spec))
        if vol is not None:
            vol.spec, vol.spec_json = spec, rec.spec
        return spec

    # ------------------------------------------------------------------ group commit

    def _commit_soon(self) -> None:
        """A write waits in the open transaction: commit it (with whatever else this loop turn
        writes) as soon as the callbacks running now are done."""
        if self._commit_due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): nothing to group with
            self.store.commit()
            return
        self._commit_due = True
        loop.call_soon(self._commit_now)

    def _commit_now(self) -> Exception | None:
        """Commit now; every act waiting for it learns the outcome. Returns the error (with an
        asynchronous store: None, the flush is started and its waiters learn the outcome)."""
        self._commit_due = False
        if self.store.async_commit:
            if self._flushing is None:
                self._flushing = asyncio.create_task(self._flush())
            return None
        waiters, self._commit_waiters = self._commit_waiters, []
        placed, self._placing_written = self._placing_written, []
        err: Exception | None = None
        wrote = self.store.dirty
        try:
            self.store.commit()
        except Exception as exc:  # e.g. disk full: the writes are rolled back, not half-kept
            err = exc
            if str(exc) != self._flush_failed:  # once, not at every attempt
                self._flush_failed = str(exc)
                log.error("could not save the state: %s; the last steps are taken again", exc)
            # A ticket whose last write was in the group (its filing) has no act waiting to
            # learn of the loss: it is taken again from what the state file holds.
            if not self._resuming and not self._stopping:
                self._resuming = True
                self._spawn_side(self._resume_when_saved())
        else:
            self._placing.difference_update(placed)
            if wrote and self._flush_failed is not None:
                self._flush_failed = None
                log.info("the state is saved again")
        for fut in waiters:
            if fut.done():
                continue
            if err is None:
                fut.set_result(None)
            else:
                fut.set_exception(err)
        return err

    async def _flush(self) -> None:
        """The commit of a store whose commit is a network round trip (``async_commit``): one
        flush at a time while acts wait or writes are queued; writes made during a flush go to
        the next. A failed flush fails every act waiting now (their writes are gone or were made
        on top of those that are) and stops: the next write or act tries again."""
        try:
            while self._commit_waiters or self.store.dirty:
                waiters, self._commit_waiters = self._commit_waiters, []
                placed, self._placing_written = self._placing_written, []
                try:
                    await self.store.flush()
                except Exception as exc:
                    if str(exc) != self._flush_failed:  # once, not at every attempt
                        self._flush_failed = str(exc)
                        log.error(
                            "could not save the state: %s; the last steps are taken again", exc
                        )
                        if not isinstance(exc, LeaseLost):
                            self.state_problem("the state database: " + str(exc))
                    if not self._resuming:
                        self._resuming = True
                        self._spawn_side(self._resume_when_saved())
                    for fut in (*waiters, *self._commit_waiters):
                        if not fut.done():
                            fut.set_exception(exc)
                    self._commit_waiters = []
                    return
                self._placing.difference_update(placed)
                if self._flush_failed is not None:
                    self._flush_failed = None
                    log.info("the state is saved again")
                    self.state_problem(None)
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(None)
        finally:
            self._flushing = None

    async def _resume_when_saved(self) -> None:
        """After a flush (or a SQLite commit) was lost: once the store has read back what the
        database holds, every ticket it has unfinished that no task here works on goes on from
        its stored phase.
        Those are the tickets whose last steps ran and ended before the loss was known (a
        ticket filed, its claim given back): their writes are undone, and no act waits to take
        them again. Steps done twice are recognised as at a restart (the job by its id, an
        output by its digest, a filed ticket by its name)."""
        try:
            while not self._stopping:
                await asyncio.sleep(STATE_RETRY_SECONDS)
                try:
                    await self._persisted()  # reads the database back, or raises while away
                except Exception:
                    continue
                if self.store.dirty:
                    continue
                for rec in self.store.unfinished():
                    if rec.id not in self._tasks and rec.root not in self.held:
                        self._schedule(rec.id, 0.0)
                return
        finally:
            self._resuming = False

    async def _committed(self) -> Exception | None:
        """``_commit_now`` for a caller that can wait for an asynchronous store's flush."""
        if not self.store.async_commit:
            return self._commit_now()
        try:
            await self._persisted()
        except Exception as exc:
            return exc
        return None

    async def _persisted(self, rec: TicketRecord | None = None) -> None:
        """Return once every transition written so far is committed: called before each act
        (a request that changes the remote job, a file placed, a ticket filed) on ``rec``. In
        team mode, also once this agent's claim on ``rec`` is sure to live long enough for the
        act (``LeaseLost`` if it is not held any more or cannot be renewed)."""
        if self.store.dirty:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._commit_waiters.append(fut)
            self._commit_soon()
            await fut
        if rec is not None and self.team is not None:
            await self._leased(rec)

    async def _leased(self, rec: TicketRecord) -> None:
        assert self.team is not None and self.claims is not None
        if self.claims.holds(rec.path):
            await self.team.ready(self.act_need)
        if not self.claims.holds(rec.path):
            raise LeaseLost(f"{Path(rec.path).name}: another agent holds this ticket now")

    @contextlib.asynccontextmanager
    async def _once_persisted(self, cm: Any, rec: TicketRecord) -> AsyncIterator[Any]:
        """Enter ``cm`` (a request not sent yet) once the writes before it are committed."""
        await self._persisted(rec)
        async with cm as value:
            yield value

    async def _drive(self, tid: int) -> None:
        try:
            async with self._slots:
                await self._step_until_wait(tid)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not take the agent down: park the ticket, say so
            delay = 60.0
            if isinstance(exc, WritesLost) and self.store.async_commit:
                # The state database did not take a step (it is away): taken again soon, once
                # the store has read back what the database holds.
                log.warning("ticket #%s: %s; its last step is taken again", tid, exc)
                delay = STATE_RETRY_SECONDS
            else:
                log.exception("internal error while handling ticket #%s; it will be retried", tid)
            self._vol.pop(tid, None)  # what we knew of the remote job is in doubt now
            self._schedule(tid, self.clock() + delay)
        finally:
            self._tasks.pop(tid, None)
            if tid in self._rerun:
                self._rerun.discard(tid)
                self._schedule(tid, 0.0)
            self._wake.set()

    async def _step_until_wait(self, tid: int) -> None:
        while not self._stopping:
            try:
                rec = self.store.get(tid)
            except KeyError:
                return  # removed by retention (it had ended long ago)
            if not rec.active or rec.root in self.held:
                return
            if self.claims is not None and not self.claims.holds(rec.path):
                return  # another agent holds it (taken over while this one was away)
            if rec.phase.terminal:
                if not rec.filed:
                    await self._file(rec)
                if self.claims is not None and self.store.get(tid).filed:
                    self._release(rec.path)
                self._vol.pop(tid, None)
                return
            now = self.clock()
            if rec.wait_until is not None and rec.wait_until > now:
                self._schedule(tid, rec.wait_until)
                return
            gate = self._gate(rec, now)
            if gate is not None:
                self._schedule(tid, gate)
                return
            try:
                _folder_reachable(rec)
                later = await self._step(rec)
                self._step_succeeded(rec)
            except AgentError as err:
                later = self._on_error(rec, err)
            except OSError as exc:
                later = self._on_error(rec, from_os_error(exc, rec.path))
            if later is not None:
                self._schedule(tid, later)
                return

    def _gate(self, rec: TicketRecord, now: float) -> float | None:
        """Global conditions that hold a ticket back: a refused key, a used-up quota, a pause."""
        if self.auth_problem is not None and rec.phase is not Phase.PENDING:
            if now < self._auth_probe_at:
                return self._auth_probe_at + self.rand()
            self._auth_probe_at = now + AUTH_PROBE_SECONDS  # this ticket's step is the probe
        if rec.phase is Phase.PENDING and rec.kind == TicketKind.CONVERSION:
            if self.paused:
                return now + 5.0
            if self.quota_until is not None and now < self.quota_until:
                return self.quota_until
        return None

    # ------------------------------------------------------------------ errors

    def _on_error(self, rec: TicketRecord, err: AgentError) -> float | None:
        now = self.clock()
        # A request that failed may still have acted on the server (its answer was lost): what
        # we knew of the remote job no longer holds, so the next attempt reads it back first.
        self._vol_of(rec.id).fresh = False
        if isinstance(err, PermanentError):
            self._fail(rec, err)
            return 0.0
        vol = self._vol_of(rec.id)
        if isinstance(err, NeedsUserError):
            if self.auth_problem is None:
                log.error("%s — every ticket waits until this is fixed", err.message)
            self.auth_problem = err
            self._auth_probe_at = now + AUTH_PROBE_SECONDS
            self._publish("team.auth_problem", err.message)
            self._set_waiting(rec, err, now + AUTH_PROBE_SECONDS)
            return now + AUTH_PROBE_SECONDS
        assert isinstance(err, RetryableError)
        if isinstance(err, QuotaExhausted):
            if self.quota_until is None:
                log.warning("%s: no new tickets are started until it recovers", err.message)
            self.quota_until = now + (err.retry_after or QUOTA_PROBE_SECONDS)
            self._publish("team.quota_until", repr(self.quota_until))
        attempts = rec.attempts + 1
        delay = lifecycle.retry_delay(attempts, err.retry_after, self.rand())
        if isinstance(err, LocalResourceError):
            delay = min(delay, LOCAL_RETRY_SECONDS)  # looking again costs nothing remote
        if vol.failing_since is None:
            vol.failing_since = now
            log.warning(
                "%s [job %s]: %s — retrying in %.0fs", rec.name, rec.job_id, err.message, delay
            )
        self._set_waiting(rec, err, now + delay, attempts=attempts)
        return now + delay

    def _set_waiting(
        self, rec: TicketRecord, err: AgentError, until: float, attempts: int | None = None
    ) -> None:
        first = rec.error is None or rec.error.get("message") != err.message
        changes: dict[str, Any] = {"wait_until": until, "error": err.to_dict()}
        if attempts is not None:
            changes["attempts"] = attempts
        if first:
            rec = self.store.update(
                rec.id, self.clock(), event="waiting", message=err.message, **changes
            )
            self._changed(rec)
        else:
            self.store.touch(rec.id, self.clock(), **changes)

    def _step_succeeded(self, rec: TicketRecord) -> None:
        """Log a recovery once, and lift an auth pause once any API step went through."""
        vol = self._vol_of(rec.id)
        if vol.failing_since is not None:
            log.info("%s [job %s]: recovered", rec.name, rec.job_id or "-")
            vol.failing_since = None
        if self.auth_problem is not None and rec.phase is not Phase.PENDING:
            log.info("the API accepts the key again; every ticket goes on")
            self.auth_problem = None
            self._publish("team.auth_problem", None)
            self._auth_probe_at = 0.0
            for other in self.store.unfinished():
                if other.error and other.error.get("kind") == "needs_user":
                    self.store.touch(other.id, self.clock(), wait_until=None)
                    self._schedule(other.id, 0.0)

    def _recovered(self, rec: TicketRecord) -> TicketRecord:
        """Clear a ticket's waiting state once the step that failed went through."""
        if rec.error is None and rec.wait_until is None:
            return rec
        return self.store.update(
            rec.id, self.clock(), event="recovered", error=None, wait_until=None, attempts=0
        )

    def _fail(self, rec: TicketRecord, err: AgentError) -> None:
        log.error("%s [job %s] failed: %s", rec.name, rec.job_id, err.message)
        rec = self.store.update(
            rec.id,
            self.clock(),
            event="failed",
            message=err.message,
            phase=Phase.FAILED,
            error=err.to_dict(),
            wait_until=None,
        )
        self._changed(rec)
        self._slot_freed(rec.id)

    # ------------------------------------------------------------------ conversion slots

    def _holds_slot(self, tid: int) -> bool:
        """Whether a ticket (given a slot) still holds it: its job is on the way or running."""
        try:
            rec = self.store.get(tid)
        except KeyError:
            return False
        return (
            rec.active
            and rec.kind == TicketKind.CONVERSION
            and rec.phase in (Phase.CREATING, Phase.UPLOADING, Phase.STARTING, Phase.PROCESSING)
        )

    def _slot_freed(self, tid: int) -> None:
        """A ticket moved on: if it held a slot, the first tickets waiting for one go now."""
        if tid not in self.slots.holders or not self.slots.waiting:
            return
        if self._holds_slot(tid):
            return
        self._wake_waiting()

    def _wake_waiting(self) -> None:
        for other in self.slots.released():
            with contextlib.suppress(KeyError):
                if self.store.get(other).wait_until is not None:
                    self.store.touch(other, self.clock(), wait_until=None)
            self._schedule(other, 0.0)

    def _slot_or_wait(self, rec: TicketRecord, kind: str) -> float | None:
        """None when the ticket may create/start its job now; else when to look again (it
        waits in line for a free conversion slot, and its sidecar says so)."""
        if self.slots.ask(rec.id, kind):
            return None
        return self._wait_for_slot(rec)

    def _wait_for_slot(self, rec: TicketRecord) -> float:
        now = self.clock()
        until = now + SLOT_RECHECK_SECONDS
        probe = self.slots.next_probe()
        if probe is not None and now < probe < until:
            until = probe
        self._set_waiting(
            rec,
            RetryableError(
                f"waiting for a free conversion slot ({self.slots.limit} at once is this "
                "account's limit, learned from the service's answers)"
                if self.slots.manual is None
                else f"waiting for a free conversion slot (api.max_processing: {self.slots.limit})",
                title="waiting for a free conversion slot",
            ),
            until,
        )
        return until

    def _refused_at_limit(self, rec: TicketRecord, kind: str, err: RateLimited) -> float:
        """A 429 on a create or a start: the concurrency limit when jobs of ours are running
        and no other request was refused lately (then the ticket waits for a slot); else it is
        retried like any rate limit."""
        refused_elsewhere = getattr(self.api, "refused_elsewhere", None)
        rate = refused_elsewhere is not None and refused_elsewhere(RATE_EVIDENCE_SECONDS)
        if rate or not self.slots.refused(rec.id, kind):
            raise err
        log.info(
            "%s: the service refused to %s a job with %d running: holding further starts "
            "at %d until one finishes",
            rec.name,
            kind,
            len(self.slots.holders),
            self.slots.limit or 0,
        )
        return self._wait_for_slot(rec)

    # ------------------------------------------------------------------ transitions

    def _to(self, rec: TicketRecord, phase: Phase, event: str, **changes: Any) -> TicketRecord:
        rec = self.store.update(
            rec.id,
            self.clock(),
            event=event,
            phase=phase,
            error=None,
            wait_until=None,
            attempts=0,
            **changes,
        )
        log.info("%s [job %s]: %s", rec.name, rec.job_id or "-", phase)
        self._changed(rec)
        self._slot_freed(rec.id)
        return rec

    def _changed(self, rec: TicketRecord) -> None:
        if not rec.filed:
            self._sidecars_due.add(rec.id)
            t = time.monotonic()
            self._sidecar_changed[rec.id] = (self._sidecar_changed.get(rec.id, (t, t))[0], t)
            if self._sidecar_flush is None and not self._stopping:
                self._sidecar_flush = asyncio.create_task(self._flush_sidecars())
                self._side_tasks.add(self._sidecar_flush)
                self._sidecar_flush.add_done_callback(self._side_done)
        if self.on_change is not None:
            self.on_change(rec)

    async def _flush_sidecars(self) -> None:
        """Write the sidecars that are behind until none is (see SIDECAR_COALESCE_SECONDS).

        A round's writes go to the disk batch (one worker-thread job); a ticket whose previous
        write has not landed yet waits for the next round, so its sidecars land in order."""
        try:
            while self._sidecars_due and not self._stopping:
                await asyncio.sleep(SIDECAR_COALESCE_SECONDS)
                # A view never shows a state a crash could take back (nor, with an
                # asynchronous store, one the database did not take).
                if await self._committed() is not None and self.store.async_commit:
                    continue
                items = self._due_sidecars()
                if not items:
                    continue
                futs = [self._disk.run(functools.partial(self._write_sidecar, *i)) for i in items]
                for item, fut in zip(items, futs, strict=True):
                    tid = item[0]
                    self._sidecar_io[tid] = fut
                    fut.add_done_callback(functools.partial(self._sidecar_landed, tid))
        finally:
            self._sidecar_flush = None

    def _sidecar_landed(self, tid: int, fut: asyncio.Future[None]) -> None:
        if self._sidecar_io.get(tid) is fut:
            del self._sidecar_io[tid]
        if not fut.cancelled() and fut.exception() is not None:
            log.error("internal error writing a status file: %r", fut.exception())

    def _due_sidecars(
        self, *, held_back: bool = False
    ) -> list[tuple[int, str, Path, dict[str, Any]]]:
        """What is due now, read on the loop (the store is not shared with threads); with
        ``held_back`` also the views held back until their ticket is quiet (at stop)."""
        now = time.monotonic()
        quiet = now - (0.0 if held_back else SIDECAR_QUIET_SECONDS)
        behind = now - (0.0 if held_back else SIDECAR_MAX_BEHIND_SECONDS)
        changed = self._sidecar_changed
        idle = (0.0, 0.0)
        busy = {
            tid
            for tid in self._sidecars_due
            if tid in self._sidecar_io
            or (changed.get(tid, idle)[1] > quiet and changed.get(tid, idle)[0] > behind)
        }
        due, self._sidecars_due = self._sidecars_due - busy, busy
        out = []
        for tid in sorted(due):
            changed.pop(tid, None)
            try:
                rec = self.store.get(tid)
            except KeyError:
                continue
            if rec.active and not rec.filed:  # a filed ticket's sidecar is written by _file
                out.append((tid, rec.name, Path(rec.path), self._sidecar_view(rec)))
        return out

    @staticmethod
    def _write_sidecar(
        _tid: int,
        name: str,
        ticket: Path,
        view: dict[str, Any],
        durable: bool = False,
    ) -> None:
        """Write one sidecar (in a worker thread). A progress view is rewritten by the ticket's
        next transition and lost to a power cut at no cost, so neither it nor its folder is
        fsynced; the final one is ``durable`` (its folder is fsynced after the ticket's filing)."""
        try:
            folder.write_sidecar(ticket, view, sync_dir=False, durable=durable)
        except AgentError as err:
            log.warning("%s: could not write the status file: %s", name, err.message)

    def _sidecar_view(self, rec: TicketRecord) -> dict[str, Any]:
        outputs = [o.public() for o in self.store.outputs(rec.id)]
        return folder.sidecar_view(rec.public(), outputs)

    async def _step(self, rec: TicketRecord) -> float | None:
        """Take one step; return when to come back (None = go on at once)."""
        spec = self._spec_of(rec)
        if rec.phase is Phase.PENDING:
            return self._pending(rec, spec)
        if rec.phase is Phase.CREATING:
            held = self._slot_or_wait(rec, slots_mod.CREATE)
            if held is not None:
                return held
            await self._persisted(rec)  # the idempotency key and "creating" first
            try:
                job = await self.api.create_job(
                    [c.to_api() for c in spec.conversions],
                    idempotency_key=rec.idem_key,
                    settings=spec.job_settings(),
                )
            except RateLimited as err:
                return self._refused_at_limit(rec, slots_mod.CREATE, err)
            self._vol_of(rec.id).fresh = True
            self._to(
                rec,
                Phase.UPLOADING,
                "created",
                job_id=job.id,
                job_token=job.token,
                job_server=job.server,
                remote_status=job.status_code,
                remote_info=job.status_info,
            )
            return None
        if rec.phase is Phase.UPLOADING:
            await self._upload(rec)
            return None
        if rec.phase is Phase.STARTING:
            return await self._start(rec)
        if rec.phase is Phase.PROCESSING:
            return await self._poll(rec, spec)
        if rec.phase is Phase.DOWNLOADING:
            await self._download(rec, spec)
            return None
        raise AssertionError(f"no step for phase {rec.phase}")

    def _pending(self, rec: TicketRecord, spec: TicketSpec) -> float | None:
        if spec.kind is TicketKind.ADOPTION:
            self._to(rec, Phase.PROCESSING, "adopted", job_id=spec.job_id, job_token=spec.job_token)
            return None
        now = self.clock()
        vol = self._vol_of(rec.id)
        stats: dict[str, tuple[int, int]] = {}
        for inp in spec.inputs:
            if inp.kind is not InputKind.LOCAL or inp.path is None:
                continue
            try:
                st = os.stat(inp.path)
            except FileNotFoundError:
                if now - rec.created_at > INPUT_WAIT_SECONDS:
                    raise TicketError(
                        f"input {inp.value} was not found next to the ticket after "
                        f"{INPUT_WAIT_SECONDS:.0f}s: put it there and retry the ticket"
                    ) from None
                self._set_waiting(
                    rec,
                    LocalResourceError(f"waiting for the input {inp.value} to appear"),
                    now + 2.0,
                )
                return now + 2.0
            stats[inp.value] = (st.st_size, st.st_mtime_ns)
            settle = self.cfg.tickets.settle_seconds
            if now - st.st_mtime < settle:
                vol.input_stats = stats
                return now + settle
            try:
                platform.try_open(inp.path)  # Windows: still open in the program writing it?
            except OSError as exc:
                if not platform.file_in_use(exc):
                    raise
                wait = now + max(0.5, settle)
                if vol.in_use_since is None:
                    vol.in_use_since = now
                if now - vol.in_use_since < settle + IN_USE_NOTICE_SECONDS:
                    return wait  # likely still being copied: wait quietly for now
                err = from_os_error(exc, inp.value)
                if rec.error is None or rec.error.get("message") != err.message:
                    log.warning("%s: %s", rec.name, err.message)
                self._set_waiting(rec, err, wait)
                return wait
        vol.in_use_since = None
        if vol.input_stats is not None and vol.input_stats != stats:
            vol.input_stats = stats  # still being copied: look again after the settle time
            return now + self.cfg.tickets.settle_seconds
        self._to(rec, Phase.CREATING, "creating")
        return None

    async def _upload(self, rec: TicketRecord) -> None:
        assert rec.job_id is not None
        job = RemoteJob(id=rec.job_id, token=rec.job_token or "", server=rec.job_server or "")
        vol = self._vol_of(rec.id)
        pending = [i for i in self.store.inputs(rec.id) if not i.sent]
        specs = self._spec_of(rec).inputs
        if pending and not vol.fresh:
            # After a restart an input may have reached the server before we recorded it.
            remote = await self.api.get_job(rec.job_id)
            job = remote
            for inp in pending:
                for r in remote.inputs:
                    if (inp.kind == InputKind.URL and r.source == inp.value) or (
                        inp.kind == InputKind.LOCAL
                        and r.filename == _upload_name(specs, inp)
                        and (inp.abs_path is None or r.size in (None, _size(inp.abs_path)))
                    ):
                        self.store.mark_input_sent(inp.id, r.id)
                        break
            pending = [i for i in self.store.inputs(rec.id) if not i.sent]
        root = Path(rec.root)
        for inp in pending:
            await self._persisted(rec)
            if inp.kind == InputKind.URL:
                own = _input_spec_of(specs, inp)
                settings = own.remote_body() if own is not None else {}
                r = await self.api.add_remote_input(rec.job_id, inp.value, settings=settings)
            else:
                assert inp.abs_path is not None
                p = Path(inp.abs_path)
                if not paths.is_within(p, root):
                    raise TicketError(
                        f"input {inp.value} now points outside the watched folder; refused"
                    )
                try:
                    size: int | None = os.stat(p).st_size  # one stat: it exists, its size
                except (FileNotFoundError, NotADirectoryError):
                    raise TicketError(
                        f"input {inp.value} disappeared before it was uploaded: put it back "
                        "and retry the ticket"
                    ) from None
                key = f"up:{inp.id}"
                self._progress(key, f"↑ {p.name}", 0, size)
                try:
                    r = await self.api.upload_file(
                        job, p, filename=_upload_name(specs, inp), upload_uuid=inp.upload_uuid
                    )
                finally:
                    self._progress_done(key)
            self.store.mark_input_sent(inp.id, r.id)
        rec = self._recovered(rec)
        self._to(rec, Phase.STARTING, "uploaded", start_sent=True)

    async def _start(self, rec: TicketRecord) -> float | None:
        assert rec.job_id is not None
        vol = self._vol_of(rec.id)
        if not vol.fresh:
            job = await self.api.get_job(rec.job_id, priority=FINISH)
            if _start_known(job):
                self.slots.adopt([rec.id])
                self._to(rec, Phase.PROCESSING, "started", remote_status=job.status_code)
                return None
        held = self._slot_or_wait(rec, slots_mod.START)
        if held is not None:
            return held
        await self._persisted(rec)  # start_sent first
        try:
            job = await self.api.start_job(rec.job_id)
        except RateLimited as err:
            return self._refused_at_limit(rec, slots_mod.START, err)
        except ApiRejected as err:
            if err.status != 409:
                raise
            job = await self.api.get_job(rec.job_id)
            if not _start_known(job):
                raise
        vol.fresh = False
        vol.started_at = time.monotonic()
        self._to(
            rec,
            Phase.PROCESSING,
            "started",
            remote_status=job.status_code,
            remote_info=job.status_info,
        )
        return None

    def _watched(self) -> list[Watched]:
        """The tickets whose jobs are being polled (for the job-list sweep)."""
        return [
            Watched(r.id, r.job_id, (r.remote_status or "", r.remote_info or ""))
            for r in self.store.tickets(phases=[Phase.PROCESSING])
            if r.job_id
        ]

    def _polled_alone(self, tid: int, sweep_interval: float) -> bool:
        """A young job is polled on its own while its schedule polls more often than the sweeps
        (a quick conversion is noticed as soon as without them); then the sweeps take it over."""
        polls = self._vol_of(tid).polls
        p = self.cfg.polling
        return lifecycle.poll_delay(polls, p.min_interval, p.max_interval, 0.0) < sweep_interval

    async def _poll(self, rec: TicketRecord, spec: TicketSpec) -> float | None:
        assert rec.job_id is not None
        sweep = self.sweeper
        job = sweep.take(rec.id) if sweep is not None else None
        # Tickets wait for a slot this job holds: poll it often, to use the slot as it frees.
        hurry = bool(self.slots.waiting) and rec.id in self.slots.holders
        if job is None or job.id != rec.job_id:
            covered = None
            if sweep is not None and not hurry and not self._polled_alone(rec.id, sweep.interval):
                covered = sweep.covered_until(rec.id)
            if covered is not None and self.clock() < covered:
                return covered  # the sweep watches this job; it wakes the ticket on news
            token = rec.job_token if spec.kind is TicketKind.ADOPTION else None
            asked = time.monotonic()
            job = await self.api.get_job(rec.job_id, token=token)
            if self.metrics is not None:
                self.metrics.poll_latency(time.monotonic() - asked)
        rec = self._recovered(rec)
        outcome = lifecycle.job_outcome(job)
        if outcome is not JobOutcome.RUNNING and sweep is not None:
            sweep.forget(rec.id)
        if outcome is JobOutcome.RUNNING:
            vol = self._vol_of(rec.id)
            if job.status_code != rec.remote_status or job.status_info != rec.remote_info:
                rec = self.store.update(
                    rec.id,
                    self.clock(),
                    event="status",
                    message=f"{job.status_code} {job.status_info}".strip(),
                    remote_status=job.status_code,
                    remote_info=job.status_info,
                )
                self._changed(rec)
            vol.polls += 1
            delay = lifecycle.poll_delay(
                vol.polls,
                self.cfg.polling.min_interval,
                self.cfg.polling.max_interval,
                self.rand(),
            )
            if hurry:
                age = time.monotonic() - (vol.started_at or time.monotonic())
                return self.clock() + min(delay, max(SLOT_POLL_MIN, age / 8))
            if sweep is not None and not self._polled_alone(rec.id, sweep.interval):
                later = sweep.cover(rec.id)
                if later is not None:
                    return later
            return self.clock() + delay
        if outcome is not JobOutcome.COMPLETED:
            self.store.touch(
                rec.id, self.clock(), remote_status=job.status_code, remote_info=job.status_info
            )
            raise JobFailed(lifecycle.job_failure_message(job))
        if not job.outputs:
            raise OutputUnavailable(
                "the job completed but the server produced no output files: check that the "
                "input is valid for this target, then retry the ticket"
            )
        self.store.record_outputs(rec.id, job.outputs)
        self._vol_of(rec.id).outputs_seen_at = self.clock()
        self._to(
            rec,
            Phase.DOWNLOADING,
            "completed",
            remote_status=job.status_code,
            remote_info=job.status_info,
        )
        return None

    # ------------------------------------------------------------------ downloads

    async def _refresh_outputs(self, rec: TicketRecord, spec: TicketSpec) -> None:
        assert rec.job_id is not None
        token = rec.job_token if spec.kind is TicketKind.ADOPTION else None
        job = await self.api.get_job(rec.job_id, token=token, priority=FINISH)
        if job.outputs:
            self.store.record_outputs(rec.id, job.outputs)
        self._vol_of(rec.id).outputs_seen_at = self.clock()

    def _record_validator(self, out: OutputRecord, validator: str | None) -> None:
        """Keep the download's ETag/Last-Modified, so a resume after a restart sends If-Range."""
        if validator != out.validator:
            self.store.update_output(out.id, validator=validator)

    async def _download(self, rec: TicketRecord, spec: TicketSpec) -> None:
        outs = self.store.outputs(rec.id)
        count = len(outs)
        for out in outs:
            if out.state in ("done", "skipped"):
                continue
            try:
                await self._download_one(rec, spec, out, count)
            except OutputUnavailable as err:
                if not self.cfg.tickets.resubmit_expired:
                    raise
                await self._refresh_outputs(rec, spec)  # the refusal may be news to the store
                if not self._may_resubmit(rec, spec):
                    raise
                self._resubmit(rec, err)
                return
        rec = self._recovered(rec)
        if any(o.state not in ("done", "skipped") for o in self.store.outputs(rec.id)):
            return  # a re-read listed an output not seen before: it is fetched by the next step
        self._to(rec, Phase.DONE, "done")

    def _may_resubmit(self, rec: TicketRecord, spec: TicketSpec) -> bool:
        """``tickets.resubmit_expired``: a conversion whose outputs the server no longer serves
        is converted again — once, and only while none of its outputs has been written (so a
        second job cannot duplicate files already in the folder)."""
        if not self.cfg.tickets.resubmit_expired or spec.kind is not TicketKind.CONVERSION:
            return False
        outs = self.store.outputs(rec.id)
        if any(o.state in ("done", "skipped", "placing") for o in outs):
            return False
        if not any(lifecycle.output_problem(o.remote_status) for o in outs):
            return False  # a checksum that never matched is not cured by converting again
        return not any(h["event"] == "resubmitted" for h in self.store.history(rec.id))

    def _resubmit(self, rec: TicketRecord, err: AgentError) -> None:
        log.warning("%s [job %s]: %s — converting again", rec.name, rec.job_id, err.message)
        self._cleanup_parts(rec)
        self.store.reset_for_resubmit(rec.id, self.clock(), message=err.message)
        self._vol.pop(rec.id, None)
        self._slot_freed(rec.id)
        self._changed(self.store.get(rec.id))

    def _output_name(self, rec: TicketRecord, spec: TicketSpec, out: OutputRecord, n: int) -> str:
        target = spec.conversions[0].target if spec.conversions else ""
        stem = rec.name[: -len(".job")] if rec.name.endswith(".job") else rec.name
        ext = target or "bin"
        name = paths.render_output_name(
            spec.output.name,
            server_name=out.filename,
            ticket_stem=stem,
            target=target,
            index=out.idx + 1,
            count=n,
            fallback=f"{stem}-{out.idx + 1}.{ext}" if n > 1 else f"{stem}.{ext}",
        )
        if platform.MAX_PATH is not None:  # Windows: the full path must fit
            name = paths.fit_path(name, str(Path(rec.path).parent), platform.MAX_PATH)
        return name

    async def _download_one(
        self, rec: TicketRecord, spec: TicketSpec, out: OutputRecord, count: int
    ) -> None:
        folder_path = Path(rec.path).parent
        name = self._output_name(rec, spec, out, count)
        part = folder_path / paths.part_name(name, out.remote_id)
        policy = spec.output.on_conflict

        if out.state == "placing" and out.digest:
            # We may have placed it just before a crash: find it rather than writing it twice.
            mine = self._placed_as.get(rec.id, {}).get(out.id)
            placed = self._find_placed(folder_path, name, out.digest, part, mine)
            if placed is not None:
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()  # the second name of the placed file
                self._placed(rec, out, placed)
                return
            if part.exists() and downloader.matches(part, out.digest):
                await self._place(rec, out, part, folder_path, name, policy)
                return
            self.store.update_output(out.id, state="pending", digest=None)
            out = dataclasses.replace(out, state="pending", digest=None)

        seen = self._vol_of(rec.id).outputs_seen_at
        late = seen is None or self.clock() - seen > OUTPUT_INFO_MAX_AGE
        if late or out.gets > 0 or out.remote_status not in ("", "enabled"):
            await self._refresh_outputs(rec, spec)
            out = next(o for o in self.store.outputs(rec.id) if o.id == out.id)
        problem = lifecycle.output_problem(out.remote_status)
        if problem is not None:
            raise OutputUnavailable(f"{name}: {problem}")
        if out.gets >= MAX_GETS_PER_OUTPUT:
            raise OutputUnavailable(
                f"{name}: {out.gets} downloads were spent without a complete, verified file; "
                "the agent stops before the server's download limit. Retry the ticket to "
                "convert again"
            )
        spent = [out.gets]

        def opener(offset: int, validator: str | None) -> Any:
            # Counted before it is sent, and only when it is: a part that cannot be written
            # (disk full, read-only, permission, folder gone) spends no download.
            spent[0] += 1
            self.store.update_output(out.id, gets=spent[0])
            if not self.store.async_commit:
                err = self._commit_now()  # counted before it is sent (a synchronous caller)
                if err is not None:
                    raise err
            stream = self.api.open_download(
                out.uri,
                password=spec.download.password,
                encoding=spec.download.encoding,
                offset=offset,
                validator=validator,
                chunk_size=self.cfg.download.chunk_size,
            )
            if self.store.async_commit:  # sent once the count is flushed
                return self._once_persisted(stream, rec)
            return stream

        try:
            key = f"down:{out.id}"
            self._progress(key, f"↓ {name}", 0, out.size)
            result = await downloader.fetch_to_part(
                opener,
                part,
                expected_checksum=out.checksum,
                expected_size=out.size,
                verify=spec.download.verify,
                resume=True,
                validator=out.validator,
                on_validator=functools.partial(self._record_validator, out),
                on_progress=lambda done, total: self._progress(key, f"↓ {name}", done, total),
            )
        except (asyncio.CancelledError, LeaseLost):
            self._drop_lost_part(rec, part)
            raise
        except downloader.ChecksumMismatch as err:
            if self.metrics is not None:
                self.metrics.verdict("mismatch")
            mismatches = out.mismatches + 1
            self.store.update_output(out.id, mismatches=mismatches)
            if mismatches >= self.cfg.download.max_attempts:
                raise OutputUnavailable(
                    f"{name}: the downloaded bytes did not match the server's checksum "
                    f"{mismatches} times; nothing was kept. Retry the ticket later"
                ) from err
            raise RetryableError(
                f"{name}: the download did not match its checksum; downloading again",
                title="checksum mismatch",
            ) from err
        finally:
            self._progress_done(f"down:{out.id}")
        if self.metrics is not None:
            self.metrics.downloaded(result.size)
            self.metrics.verdict(result.verdict)
        try:
            self.store.update_output(
                out.id, state="placing", digest=result.digest, verdict=result.verdict
            )
            await self._place(rec, out, part, folder_path, name, policy)
        except (asyncio.CancelledError, LeaseLost):
            self._drop_lost_part(rec, part)
            raise

    def _drop_lost_part(self, rec: TicketRecord, part: Path) -> None:
        """Team mode: a download of a ticket another agent took over (this one was paused or
        cut off inside it) leaves no part behind. Parts are named per output, so this may cut
        short the new owner's download of it, which is then taken again (a cost, not harm:
        every part is checked by its digest before it is placed)."""
        if self.claims is not None and not self.claims.holds(rec.path):
            with contextlib.suppress(OSError):
                part.unlink()

    async def _place(
        self,
        rec: TicketRecord,
        out: OutputRecord,
        part: Path,
        folder_path: Path,
        name: str,
        policy: Any,
    ) -> None:
        # The link is made here, on the loop, so the watcher never sees the new name before it
        # is known as ours; the folder's fsync (milliseconds) runs in a worker thread.
        await self._persisted(rec)  # the digest first: a crash after the link finds the file
        dest = downloader.place(part, folder_path, name, policy, sync_dir=False)
        if dest is None:
            self.store.update_output(out.id, state="skipped", dest_name=None)
            log.info("%s: %s exists already; skipped (on_conflict: skip)", rec.name, name)
            return
        self._placing.add(str(dest))
        await self._disk.run(None, sync=folder_path, strict=True)
        self._placed(rec, out, dest)

    def _placed(self, rec: TicketRecord, out: OutputRecord, dest: Path) -> None:
        self._placed_as.setdefault(rec.id, {})[out.id] = str(dest)
        self.store.update_output(out.id, state="done", dest_name=dest.name)
        self._placing_written.append(str(dest))  # the record names it once committed
        log.info("%s [job %s]: wrote %s", rec.name, rec.job_id, dest.name)

    def _find_placed(
        self, folder_path: Path, name: str, digest: str, part: Path, mine: str | None = None
    ) -> Path | None:
        """The file this output was placed as before a crash, or None when it was not placed.

        While the part is still there, only a hard link to it counts (placement links the part
        to its name, then removes the part: killed in between, both names are one file), or,
        where there are no hard links, our empty placeholder, which the part then replaces.
        Without a part, a free candidate name holding the recorded digest is ours (``mine``:
        the file this process placed this output as, whose record was lost, is free for it). A
        candidate another name holds but for case or normalisation (``paths.name_key``) was
        passed over by placement, so the search goes on past it."""
        try:
            part_st: os.stat_result | None = os.lstat(part)
        except FileNotFoundError:
            part_st = None
        taken: dict[str, str] | None = None
        for i, cand in enumerate(paths.conflict_candidates(name)):
            p = folder_path / cand
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                if taken is None:
                    try:
                        taken = downloader.FOLDER_NAMES.keys(folder_path, fresh=True)
                    except OSError:
                        return None
                if paths.name_key(cand) in taken:
                    continue
                return None
            if i > 10_000:
                return None
            if part_st is not None:
                if os.path.samestat(part_st, st):
                    return p
                if downloader.complete_placeholder(part, p):
                    return p  # killed between claiming the name and moving the part onto it
            elif (str(p) == mine or not self.is_own_output(p)) and downloader.matches(p, digest):
                return p
        return None

    # ------------------------------------------------------------------ filing

    async def _file(self, rec: TicketRecord) -> None:
        ticket = Path(rec.path)
        outcome = "done" if rec.phase is Phase.DONE else "failed"
        cause = (rec.error or {}).get("cause") if rec.phase is Phase.CANCELED else None
        # Read the store here, on the loop; the file work (fsyncs) runs in a worker thread.
        parts = self._part_paths(rec)
        view = self._sidecar_view(rec)

        def disk() -> None:
            for part in parts:
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
            if rec.phase is Phase.CANCELED:
                if cause == "user":  # the file stays, renamed, so it is not taken up again
                    self._write_sidecar(rec.id, rec.name, ticket, view, durable=True)
                    folder.file_ticket(ticket, "canceled", "rename", sync_dir=False)
                elif cause == "deleted":
                    folder.remove_sidecar(ticket)
                # "edited": the new version of the ticket owns the file and the sidecar now
            else:
                self._write_sidecar(rec.id, rec.name, ticket, view, durable=True)
                folder.file_ticket(ticket, outcome, self.cfg.tickets.on_success, sync_dir=False)

        self._sidecars_due.discard(rec.id)
        self._sidecar_changed.pop(rec.id, None)
        try:
            older = self._sidecar_io.get(rec.id)
            if older is not None:  # an older view still being written lands first
                await asyncio.wait([older])
            await self._persisted(rec)  # the outcome first
            if (
                rec.phase is Phase.FAILED
                and rec.job_id
                and not rec.start_sent
                and rec.kind == TicketKind.CONVERSION
            ):
                await self._drop_staged_job(rec)
            # The folder (sidecar, rename) is fsynced once for every ticket of the batch.
            await self._disk.run(disk, sync=ticket.parent)
        except AgentError as err:
            # The sidecar (just written) says the outcome; a note in it says why the ticket is
            # not filed yet and what to do. The next attempt rewrites the sidecar without it.
            if self._filing_problem.get(rec.id) != err.message:  # once in the log, each time here
                self._filing_problem[rec.id] = err.message
                log.warning("%s: could not file the ticket yet: %s", rec.name, err.message)
            note = f"the ticket is not filed yet: {err.message}"
            with contextlib.suppress(Exception):
                await self._disk.run(functools.partial(folder.note_sidecar, ticket, note))
            in_use = err.title in ("file in use", "permission denied")
            self._schedule(
                rec.id, self.clock() + (LOCAL_RETRY_SECONDS if in_use else FILE_RETRY_SECONDS)
            )
            return
        if self._filing_problem.pop(rec.id, None) is not None:
            log.info("%s: filed", rec.name)
        self.store.update(rec.id, self.clock(), event="filed", filed=True)
        self._placed_as.pop(rec.id, None)
        if rec.phase is Phase.DONE:
            self.seen_this_run.discard(rec.id)  # only the others decide `run --once`'s code
        self._filed_since_prune += 1
        if self._filed_since_prune >= max(
            100, self.cfg.state.keep_finished // RETENTION_EARLY_SHARE
        ):
            self._prune_due.set()
        if rec.id in self._retry_when_filed:
            self._retry_when_filed.discard(rec.id)
            self.retry(self.store.get(rec.id))

    def _cleanup_parts(self, rec: TicketRecord) -> None:
        for part in self._part_paths(rec):
            with contextlib.suppress(FileNotFoundError):
                part.unlink()

    def _part_paths(self, rec: TicketRecord) -> list[Path]:
        outs = self.store.outputs(rec.id)
        if not outs:
            return []
        spec = self._spec_of(rec, keep=False)
        d = Path(rec.path).parent
        return [
            d / paths.part_name(self._output_name(rec, spec, out, len(outs)), out.remote_id)
            for out in outs
        ]

    # ------------------------------------------------------------------ intake

    async def _ingest(self, path: Path, fcfg: FolderConfig | None) -> None:
        key = str(path)
        try:
            if self.claims is None or await self._claimed(path, fcfg):
                await self._ingest_inner(path, fcfg)
        except WritesLost as exc:
            # The state database did not take the last writes (it is away): nothing of this
            # ticket was written; it is looked at again in a moment.
            log.warning("%s: not accepted yet: %s", path.name, exc)
            self._spawn_side(self._ingest_later(path, fcfg, STATE_RETRY_SECONDS))
        except Exception:
            # Not recorded (a bug; logged as an internal error): taken up again at the
            # watcher's next scan, not left as NAME.job until a restart.
            self._parse_retry.pop(key, None)
            self._unread(path)
            raise
        finally:
            if key not in self._parse_retry:
                self._pending_paths.discard(key)
                if self.claims is not None and self.claims.holds(key):
                    rec = self.store.active_for_path(key)
                    if rec is None or (rec.phase.terminal and rec.filed):
                        self._release(key)  # nothing to do here: free for the team

    async def _claimed(self, path: Path, fcfg: FolderConfig | None) -> bool:
        """Team mode: claim a ticket's path before looking at it. Another live agent's claim
        leaves it to that agent; an agent over its share of the team's work leaves new tickets
        to the others a moment, then takes them if nobody did."""
        assert self.claims is not None
        key = str(path)
        if self.claims.holds(key):
            return True
        fair = self._claim_tries.get(key, 0) < CLAIM_FAIR_TRIES
        try:
            verdict = await self.claims.claim(key, fair=fair)
        except Exception as exc:
            if key not in self._claim_tries:  # once per ticket, not at every try
                log.warning(
                    "%s: cannot claim it in the state database now (%s); trying again",
                    path.name,
                    exc,
                )
            verdict = "busy"
        if verdict == "ok":
            self._claim_tries.pop(key, None)
            return True
        if verdict == "busy":
            self._claim_tries[key] = self._claim_tries.get(key, 0) + 1
            self._spawn_side(self._ingest_later(path, fcfg, CLAIM_RETRY_SECONDS))
        else:
            self._claim_tries.pop(key, None)
        return False

    async def _ingest_later(self, path: Path, fcfg: FolderConfig | None, delay: float) -> None:
        await asyncio.sleep(delay * (0.5 + self.rand()))
        if not self._stopping and path.exists():
            await self._ingest(path, fcfg)
        else:
            self._claim_tries.pop(str(path), None)

    def _release(self, path: str) -> None:
        assert self.claims is not None
        try:
            self.claims.release(path)
        except WritesLost as exc:  # the database is away: the claim lapses with its lease
            log.debug("%s: claim not released now: %s", path, exc)

    def state_problem(self, problem: str | None) -> None:
        """The state database is away (``problem``) or back (None): every sidecar of this
        agent's unfinished tickets says so (``waiting_for``), as it stands; nothing else of it
        changes, since nothing can be recorded meanwhile."""
        if problem == self._state_problem:
            return
        self._state_problem = problem
        for rec in self.store.unfinished():
            if rec.root not in self.held:
                self._disk.run(functools.partial(folder.note_sidecar, Path(rec.path), problem))

    def team_signals(self, info: dict[str, Any]) -> None:
        """Leases, with each heartbeat: the account's limits are the team's. The request
        budget and a set ``api.max_processing`` are divided among the live agents; a used-up
        quota or a refused key that another agent found pauses this one too."""
        live = max(1, int(info.get("live") or 1))
        if live != self._team_live:
            self._team_live = live
            rps = self.cfg.api.requests_per_second
            if rps:
                self.api.budget.set_ceiling(rps / live)
            manual = self.cfg.api.max_processing
            if manual:
                self.slots.manual = self.slots.limit = max(1, -(-manual // live))
            self._wake_waiting()
            log.info("%d agent(s) in the team share the account's limits", live)
        now = self.clock()
        quota = info.get("quota_until")
        if quota is not None and quota > now and (self.quota_until or 0) < quota:
            if self.quota_until is None:
                log.warning("another agent of the team found the quota used up: no new tickets")
            self.quota_until = quota
        auth = info.get("auth_problem")
        if auth and self.auth_problem is None:
            log.error("%s (found by another agent of the team) — every ticket waits", auth)
            self.auth_problem = NeedsUserError(auth)
            self._auth_probe_at = now + AUTH_PROBE_SECONDS
        # A refused key is lifted here by this agent's own probe step that goes through (and
        # the agent whose step went through first clears it for the team).

    def _publish(self, key: str, value: str | None) -> None:
        """Team mode: a pause of the account, for the other agents to see at their heartbeat."""
        if self.claims is not None and self.store.get_meta(key) != value:
            with contextlib.suppress(WritesLost):
                self.store.set_meta(key, value)

    def team_lost(self, tids: list[int]) -> None:
        """Leases: these tickets were taken over by another agent; nothing more here."""
        for tid in tids:
            self._vol.pop(tid, None)
            self._placed_as.pop(tid, None)
            self._filing_problem.pop(tid, None)
            self._sidecars_due.discard(tid)
            task = self._tasks.get(tid)
            if task is not None:
                task.cancel()

    def team_gained(self, tids: list[int], paths_: list[str]) -> None:
        """Leases: tickets taken over from a stopped agent go on from their stored phase;
        claimed paths with no record are looked at again."""
        for tid in tids:
            rec = self.store.get(tid)
            log.info(
                "%s: taken over from a stopped agent (%s); it goes on",
                Path(rec.path).name,
                rec.phase,
            )
            self.seen_this_run.add(tid)
            if tid not in self._tasks:
                self._schedule(tid, 0.0)
        for p in paths_:
            path = Path(p)
            self._spawn_side(self._ingest(path, self.folder_for(path)))

    async def _ingest_inner(self, path: Path, fcfg: FolderConfig | None) -> None:
        key = str(path)
        if fcfg is None:
            return
        try:
            data = folder.read_ticket(path)
            st = os.stat(path)
        except OSError as exc:
            if platform.file_in_use(exc):  # Windows: another program has it open
                self._parse_retry.pop(key, None)
                if key not in self._in_use:
                    self._in_use.add(key)
                    self._spawn_side(self._until_closed(path, fcfg))
                return
            # Gone, or its folder is (a share unmounted for a while), or unreadable for now: the
            # watcher, which announces a file once, is told to announce it again when it is
            # there at a later scan; else nothing would ever read it (nor record, nor file it).
            self._parse_retry.pop(key, None)
            self._unread(path)
            if not isinstance(exc, FileNotFoundError):
                log.warning(
                    "cannot read ticket %s: %s; trying again at the next scan", path, exc.strerror
                )
            return
        sha = hashlib.sha256(data).hexdigest()
        now = self.clock()
        active = self.store.active_for_path(key)
        if active is not None and active.sha256 == sha:
            if not active.phase.terminal or not active.filed:
                self.seen_this_run.add(active.id)
                if active.id not in self._tasks:
                    self._schedule(active.id, 0.0)
                self._parse_retry.pop(key, None)
                return
            if active.phase is Phase.DONE and self.cfg.tickets.on_success == "keep":
                self._parse_retry.pop(key, None)
                return
        if active is None and self._follow_rename(path, fcfg, sha):
            self._parse_retry.pop(key, None)
            return
        if active is not None and not active.phase.terminal:
            await self._cancel(
                active, "the ticket was edited; the new version replaces it", "edited"
            )
        try:
            spec = parse_ticket(
                data,
                ticket_path=path,
                root=fcfg.path,
                defaults=fcfg.defaults,
                verify_default=VerifyMode(self.cfg.download.verify),
            )
        except TicketError as err:
            first = self._parse_retry.setdefault(key, now)
            recent = (time.time() - st.st_mtime) < self.cfg.tickets.parse_grace_seconds
            if recent and not err.final and now - first < self.cfg.tickets.parse_grace_seconds:
                await asyncio.sleep(min(1.0, self.cfg.tickets.parse_grace_seconds / 4))
                self._spawn_side(self._ingest(path, fcfg))  # it may still be being written
                return
            self._parse_retry.pop(key, None)
            rec = self.store.add_ticket(
                path=key,
                root=str(fcfg.path),
                sha256=sha,
                kind="invalid",
                spec={},
                inputs=[],
                idem_prefix=self.store.get_meta("instance") or "",
                now=now,
                phase=Phase.FAILED,
                error=err.to_dict(),
                message=err.message,
            )
            log.error("%s: invalid ticket: %s", path.name, err.message)
            self.seen_this_run.add(rec.id)
            self._changed(rec)
            self._schedule(rec.id, 0.0)
            await self._recorded(path)
            return
        self._parse_retry.pop(key, None)
        rec = self.store.add_ticket(
            path=key,
            root=str(fcfg.path),
            sha256=sha,
            kind=str(spec.kind),
            spec=spec.to_json(),
            inputs=[(str(i.kind), i.value, str(i.path) if i.path else None) for i in spec.inputs],
            idem_prefix=self._instance(),
            now=now,
        )
        log.info("%s: accepted (%s)", path.name, spec.kind)
        self._picked_up.set()
        self.seen_this_run.add(rec.id)
        self._changed(rec)
        self._schedule(rec.id, 0.0)
        await self._recorded(path)

    async def _until_closed(self, path: Path, fcfg: FolderConfig) -> None:
        """A ticket another program holds open (Windows' sharing violation) waits like a file
        still being copied: it is tried again every settle time (at least 0.5 s) and read once
        it can be opened; gone meanwhile, it is left to the watcher's next scan. Still open
        after the settle time plus ``IN_USE_NOTICE_SECONDS``, it is said in a log warning and
        in the snapshot (``tickets_in_use``: `status`, `why`, the dashboard), with no sidecar:
        the ticket was never read, so nothing of it is recorded yet."""
        key = str(path)
        settle = self.cfg.tickets.settle_seconds
        began, since = time.monotonic(), time.time()
        log.info("%s is open in another program; it is read once that is closed", path.name)
        try:
            while not self._stopping:
                await asyncio.sleep(max(0.5, settle))
                try:
                    platform.try_open(path)
                except OSError as exc:
                    if not platform.file_in_use(exc):
                        break
                    if (
                        key not in self.tickets_in_use
                        and time.monotonic() - began >= settle + IN_USE_NOTICE_SECONDS
                    ):
                        self.tickets_in_use[key] = since
                        log.warning("%s", in_use_message(path.name))
                    continue
                break
        finally:
            self._in_use.discard(key)
            if self.tickets_in_use.pop(key, None) is not None:
                log.info("%s is no longer open in another program; reading it", path.name)
        if not self._stopping:
            await self._ingest(path, fcfg)

    def _unread(self, path: Path) -> None:
        """Tell the watcher to announce this ticket again at its next scan (``unread``)."""
        if self.unread is not None:
            self.unread(path)

    async def _recorded(self, path: Path) -> None:
        """Wait until a new ticket's record is committed. One the state did not take (its commit
        failed and was rolled back; the failure is logged) is gone with nothing to take it up
        again (its step finds no record): the watcher announces the ticket again instead."""
        try:
            await self._persisted()
        except Exception:
            self._unread(path)

    def _follow_rename(self, path: Path, fcfg: FolderConfig, sha: str) -> bool:
        """A running ticket renamed within its folder (same bytes, old name gone) is followed:
        the record takes the new name and its job goes on; nothing is created twice."""
        for rec in self.store.same_content_elsewhere(str(fcfg.path), sha, str(path)):
            old = Path(rec.path)
            if rec.phase.terminal or old.parent != path.parent or old.exists():
                continue
            rec = self.store.update(
                rec.id,
                self.clock(),
                event="renamed",
                message=f"the ticket was renamed from {old.name} to {path.name}",
                path=str(path),
            )
            # Through the disk batch: after any view of the old name already queued there.
            gone = self._disk.run(functools.partial(folder.remove_sidecar, old))
            gone.add_done_callback(functools.partial(self._sidecar_landed, rec.id))
            log.info("%s [job %s]: renamed from %s; it goes on", path.name, rec.job_id, old.name)
            self.seen_this_run.add(rec.id)
            self._changed(rec)
            if rec.id not in self._tasks:
                self._schedule(rec.id, 0.0)
            return True
        return False

    def _instance(self) -> str:
        inst = self.store.get_meta("instance")
        if inst is None:
            inst = os.urandom(8).hex()
            self.store.set_meta("instance", inst)
        return inst

    async def _removed(self, path: Path) -> None:
        rec = self.store.active_for_path(str(path))
        if rec is None or rec.phase.terminal or rec.filed:
            return
        await asyncio.sleep(self.cfg.tickets.cancel_grace_seconds)
        if path.exists():
            return  # it came back (an editor saving by rename): the ticket event handles it
        rec = self.store.get(rec.id)
        if rec.path != str(path):
            return  # renamed: the record follows the new name (_follow_rename)
        if rec.active and not rec.phase.terminal:
            if await asyncio.to_thread(_filed_earlier, rec, path):
                # Not deleted: filed (NAME.job.done) by a step whose record was then lost (the
                # state database dropped the writes): the step is taken again, and finds its
                # output placed (by its digest) and the ticket filed.
                log.info("%s: filed before its record said so; it goes on", path.name)
                if rec.id not in self._tasks:
                    self._schedule(rec.id, 0.0)
                return
            try:
                await self._cancel(rec, "the ticket file was deleted", "deleted")
            except WritesLost as exc:
                # The state database did not take the cancel (away, or the claim went to
                # another agent): looked at again once it may have, not dropped.
                log.warning("%s: deleted; its cancel is not saved yet: %s", path.name, exc)
                await asyncio.sleep(STATE_RETRY_SECONDS)
                if not self._stopping:
                    self._spawn_side(self._removed(path))

    async def _drop_staged_job(self, rec: TicketRecord) -> None:
        """A ticket failed before its job was started (a refused upload, an input that never
        came): its staged job is canceled, so nothing of it is left on the account. It cost
        nothing (only a start is charged); a cancel that fails is logged, and the job expires."""
        try:
            await self.api.cancel_job(rec.job_id or "")
        except AgentError as err:
            log.warning(
                "%s: could not cancel its staged job %s: %s (it expires on the server)",
                rec.name,
                rec.job_id,
                err.message,
            )

    async def _cancel(self, rec: TicketRecord, reason: str, cause: str) -> None:
        task = self._tasks.pop(rec.id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        rec = self.store.get(rec.id)
        if (
            rec.job_id
            and rec.phase
            in (
                Phase.UPLOADING,
                Phase.STARTING,
                Phase.PROCESSING,
            )
            and rec.kind == TicketKind.CONVERSION
        ):
            try:
                await self._persisted(rec)
                await self.api.cancel_job(rec.job_id)
            except AgentError as err:
                log.warning("%s: could not cancel job %s: %s", rec.name, rec.job_id, err.message)
        rec = self.store.update(
            rec.id,
            self.clock(),
            event="canceled",
            message=reason,
            phase=Phase.CANCELED,
            error={"kind": "permanent", "title": "canceled", "message": reason, "cause": cause},
            wait_until=None,
        )
        log.info("%s [job %s]: canceled (%s)", rec.name, rec.job_id or "-", reason)
        self._slot_freed(rec.id)
        self.slots.forget(rec.id)
        await self._file(rec)
        if self.on_change is not None:
            self.on_change(self.store.get(rec.id))

    async def _plain(self, path: Path) -> None:
        """A rule folder got a plain file: write a ticket for it; the normal lifecycle follows."""
        if self.is_own_output(path):
            return
        ticket = path.with_name(path.name + ".job")
        with contextlib.suppress(OSError):
            folder.remove_temp(ticket)  # a run killed while writing this ticket left it
        for existing in (ticket, ticket.with_name(ticket.name + ".done")):
            if existing.exists():
                return
        if ticket.with_name(ticket.name + ".failed").exists():
            return
        try:
            text = ticket_text_for_plain_file(path.name).encode()
            # never clobbers a ticket someone else just wrote
            if not folder.create_exclusive(ticket, text):
                return
        except AgentError as exc:
            log.warning("could not write a ticket for %s: %s", path.name, exc.message)
            return
        log.info("%s: wrote %s for it", path.name, ticket.name)


def _start_known(job: RemoteJob) -> bool:
    """Whether the job has started; a status code that does not say (an unknown one) is asked
    again later rather than read as "started" (it would then be polled forever unstarted) or
    as "staged" (it would be started a second time)."""
    known = lifecycle.start_known(job)
    if known is None:
        raise RetryableError(
            f"the server reports the job {job.id} as {job.status_code!r}, which does not say "
            "whether it has started; asking again",
            title="unknown job status",
        )
    return known


def _folder_reachable(rec: TicketRecord) -> None:
    """A ticket whose folder is gone (an unmounted share, a folder renamed away) waits for it:
    none of its steps may read that as "the input disappeared" or "the ticket was filed"."""
    where = os.path.dirname(rec.path)
    if not os.path.isdir(where):
        raise LocalResourceError(
            f"the folder {where} is not reachable: if it is a network share, mount it again "
            "(or move the folder back) and the ticket resumes by itself",
            title="folder unavailable",
        )


def _input_spec_of(specs: tuple[InputSpec, ...], inp: InputRecord) -> InputSpec | None:
    """The ticket's own description of a stored input (its per-input settings), by position."""
    if 0 <= inp.idx < len(specs) and specs[inp.idx].value == inp.value:
        return specs[inp.idx]
    return None


def _upload_name(specs: tuple[InputSpec, ...], inp: InputRecord) -> str:
    """The name a local input is uploaded under: the ticket's ``filename`` or the file's name."""
    own = _input_spec_of(specs, inp)
    if own is not None:
        return own.upload_name()
    return Path(inp.abs_path).name if inp.abs_path else os.path.basename(inp.value)


def _size(p: str) -> int | None:
    try:
        return os.stat(p).st_size
    except OSError:
        return None


def _loads(s: str) -> dict[str, Any]:
    d = json.loads(s)
    assert isinstance(d, dict)
    return d


FILED_SLACK_SECONDS = 60.0  # clocks of a team's machines and file times may differ this much


def in_use_message(name: str) -> str:
    """What is said of a ticket another program has held open past the notice time."""
    return (
        f"{name} is open in another program, which keeps the agent from reading it: close it "
        "there and the agent goes on by itself (nothing is lost meanwhile)"
    )


def _filed_earlier(rec: TicketRecord, path: Path) -> bool:
    """Whether ``path`` (a ticket that went away) was filed as this very ticket: its
    ``.job.done``/``.job.failed`` twin holds the same content and was renamed there after the
    ticket was accepted (its ctime; an older twin of an identical earlier request does not
    count). A deletion is then no cancel."""
    for outcome in ("done", "failed"):
        twin = path.with_name(f"{path.name}.{outcome}")
        try:
            if os.stat(twin).st_ctime < rec.created_at - FILED_SLACK_SECONDS:
                continue
            if hashlib.sha256(twin.read_bytes()).hexdigest() == rec.sha256:
                return True
        except OSError:
            continue
    return False
