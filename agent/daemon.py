"""Composition root: builds the store, API client, scheduler and watcher, and runs them.

Order matters (as in Maestral): take the single-instance lock, open and migrate the state,
put every unfinished ticket back on the timer, and only then start watching, so interrupted work
resumes before anything new is taken. SIGINT/SIGTERM stop it gracefully: steps under way are
interrupted at a point the next start replays safely.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import logging
import logging.handlers
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar, cast

from agent import __version__, platform
from agent.api import ApiClient
from agent.config import Config, FolderConfig, share_names
from agent.dashboard import Dashboard
from agent.downloader import FOLDER_NAMES
from agent.errors import ConfigError
from agent.foldermark import FolderMarks, Identity, default_agent_name, pid_alive
from agent.leases import Leases
from agent.metrics import Metrics
from agent.models import Phase
from agent.scheduler import ProgressListener, Scheduler, in_use_message
from agent.store import StateLock, StateStore, Store, TicketRecord
from agent.store.urls import redact_url
from agent.watcher import Watcher, filesystem_type, is_network_filesystem

log = logging.getLogger("agent")
T = TypeVar("T")

#: ``run --once`` found every folder served by another agent (README, exit codes).
EXIT_ALL_REFUSED = 6
# How often the folder listings no longer placed into are dropped and the allocator's free pages
# given back to the system (``platform.release_free_memory``): without it RSS creeps up under
# steady traffic while the memory in use stays flat (docs/decisions.md, Retention and months of
# uptime).
MEMORY_TRIM_SECONDS = 30.0


def state_location_problem(path: Path, mountinfo: str | None = None) -> str | None:
    """Why the SQLite state file cannot live at ``path`` (None: it can): a network or FUSE
    filesystem, found as the watcher finds one for its polling choice."""
    fstype = filesystem_type(path, mountinfo)
    if fstype is None or not is_network_filesystem(fstype):
        return None
    return (
        f"the state file {path} is on a {fstype} filesystem (a network or FUSE mount): SQLite's "
        "locks and its write-ahead log are unreliable there and the file can be corrupted — "
        "put it on a local disk (`state.path` in the config, or --state), or share a "
        "PostgreSQL state (team mode) to run several agents"
    )


def open_state(cfg: Config) -> StateStore:
    """The state the configuration names: PostgreSQL with ``state.url`` (psycopg is imported
    only then), else the file at ``state.path``. A database that cannot be opened is a
    ``ConfigError`` (exit 3 at start) that names it without its password."""
    url = cfg.state.url
    if not url:
        return Store.open(cfg.state.path)
    import psycopg

    from agent.store import TeamMember
    from agent.store.postgres import PgStore, StateBusy, _safe_text
    from agent.store.shares import PathMap

    host = socket.gethostname()
    me = TeamMember(
        name=cfg.team.agent_name or host, host=host, pid=os.getpid(), lease=cfg.team.lease_seconds
    )
    shares = PathMap(zip((f.path for f in cfg.folders), share_names(cfg.folders), strict=True))
    try:
        return PgStore.open(url, team=me, paths=shares)
    except StateBusy as exc:
        raise ConfigError(_safe_text(exc, url), key="state.url") from None
    except (psycopg.Error, RuntimeError, OSError) as exc:
        raise ConfigError(
            f"cannot open the PostgreSQL state {redact_url(url)}: {_safe_text(exc, url)} — "
            "check state.url (or CONVERT_AGENT_STATE_URL) and that the server runs",
            key="state.url",
        ) from None


def _state_lost_at_start(cfg: Config, exc: Exception) -> Exception:
    """A PostgreSQL state lost between its opening and the agent's start (the reads the
    scheduler and the team's claims make then) is refused as at its opening (``ConfigError``,
    exit 3, no password); any other error is returned as it is."""
    url = cfg.state.url
    if not url:
        return exc
    import psycopg

    from agent.store.postgres import _safe_text

    if not isinstance(exc, psycopg.Error):
        return exc
    return ConfigError(
        f"lost the PostgreSQL state {redact_url(url)} while starting: {_safe_text(exc, url)} — "
        "check that the server runs",
        key="state.url",
    )


def open_state_readonly(cfg: Config) -> StateStore:
    """The state for ``status``/``list``/``why``: never written (``ConfigError`` as above)."""
    url = cfg.state.url
    if not url:
        return Store.open_readonly(cfg.state.path)
    import psycopg

    from agent.store.postgres import PgStore, _safe_text
    from agent.store.shares import PathMap

    shares = PathMap(zip((f.path for f in cfg.folders), share_names(cfg.folders), strict=True))
    try:
        return PgStore.open_readonly(url, paths=shares)
    except psycopg.Error as exc:
        raise ConfigError(
            f"cannot read the PostgreSQL state {redact_url(url)}: {_safe_text(exc, url)}",
            key="state.url",
        ) from None


def in_use_view(in_use: dict[str, float]) -> list[dict[str, Any]]:
    """The tickets another program has held open past the notice time (never read, so with no
    record or sidecar yet): path, since when, and what to do."""
    return [
        {"path": path, "since": since, "message": in_use_message(Path(path).name)}
        for path, since in sorted(in_use.items())
    ]


def team_view(store: StateStore) -> dict[str, Any] | None:
    """A team's agents (name, host, pid, last heartbeat, tickets held) and which agent holds
    each ticket, for ``status``, ``list`` and the dashboard (None without a team's state)."""
    agents = getattr(store, "team_agents", None)
    holders = getattr(store, "holders", None)
    if agents is None or holders is None:
        return None
    try:
        return {"agents": agents(), "holders": holders()}
    except Exception as exc:  # the database is away: said, not fatal to a view
        return {"agents": [], "holders": {}, "problem": str(exc)}


def agent_identity(
    store: StateStore, state_path: Path, url: str | None = None, name: str = ""
) -> Identity:
    """This agent as its folder marks name it: a random id kept in the state, so a restart
    (after a crash too) is the same agent (and the agents of a team, sharing one state, are
    one to the marks)."""
    agent_id = store.get_meta("agent_id")
    if agent_id is None:
        agent_id = secrets.token_hex(8)
        store.set_meta("agent_id", agent_id)
    host = socket.gethostname()
    return Identity(
        agent_id=agent_id,
        name=name or default_agent_name(agent_id),
        state=(
            f"postgresql:{redact_url(url)}"
            if url
            else f"sqlite:{host}:{os.path.realpath(state_path)}"
        ),
        host=host,
    )


class RedactingFilter(logging.Filter):
    """Replaces every secret (API key, tokens) in a log record's final text with ``***``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        msg = record.getMessage()
        clean = msg
        for s in self.secrets:
            clean = clean.replace(s, "***")
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            # The traceback's text (an exception's message may hold the key) is made here, so
            # it is redacted too; the formatters use this cached text as it is.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        for attr in ("exc_text", "stack_info"):
            text = getattr(record, attr)
            if text:
                for s in self.secrets:
                    text = text.replace(s, "***")
                setattr(record, attr, text)
        return True


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating log whose every file, also the fresh one after a rollover, is created 0600:
    log lines name the user's files and jobs."""

    def _open(self) -> io.TextIOWrapper:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | platform.O_CLOEXEC
        fd = os.open(self.baseFilename, flags, 0o600)
        stream = open(fd, self.mode, encoding=self.encoding, errors=self.errors)  # noqa: SIM115
        assert isinstance(stream, io.TextIOWrapper)
        return stream


def configure_logging(
    cfg: Config, verbose: int = 0, quiet: int = 0, stderr: logging.Handler | None = None
) -> None:
    """stderr plus the rotating log file (``log.file``), at ``log.level`` moved by -v/-q, with
    every secret redacted from every line."""
    base = logging.getLevelName(cfg.log.level.upper())
    level = (base if isinstance(base, int) else logging.INFO) + 10 * (quiet - verbose)
    root = logging.getLogger()
    root.setLevel(max(logging.DEBUG, min(logging.CRITICAL, level)))
    # No format here names the caller, thread or process: skip finding them for every record
    # (the logging HOWTO's "Optimization"; a burst logs ~8 lines a ticket).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    fmt = logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = []
    if not any(getattr(h, "_convert_agent", False) for h in root.handlers):
        if stderr is None and sys.stderr is not None:  # none under pythonw.exe: the file only
            stderr = logging.StreamHandler()
            stderr.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")
            )
        if stderr is not None:
            handlers.append(stderr)
        if cfg.log.file is not None:
            try:
                cfg.log.file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                rotating = PrivateRotatingFileHandler(
                    cfg.log.file, maxBytes=5 << 20, backupCount=5, encoding="utf-8"
                )
                os.chmod(cfg.log.file, 0o600)
                rotating.setFormatter(fmt)
                handlers.append(rotating)
            except OSError as exc:
                log.warning("cannot write the log file %s: %s", cfg.log.file, exc.strerror)
    redact = RedactingFilter(cfg.secrets())
    for h in handlers:
        h._convert_agent = True  # type: ignore[attr-defined]
        root.addHandler(h)
    for h in root.handlers:
        h.addFilter(redact)


class Agent:
    """The running agent. Front ends (CLI, tray, dashboard) talk to this object."""

    def __init__(
        self,
        cfg: Config,
        *,
        clock: Callable[[], float] = time.time,
        progress: ProgressListener | None = None,
    ) -> None:
        if not cfg.folders:
            raise ConfigError(
                "no folder to watch: add one under `folders:` in the config, or pass --folder DIR"
            )
        if not cfg.api.key:
            raise ConfigError(
                "no API key: set API2CONVERT_API_KEY, or `api.key`/`api.key_file` in the config"
            )
        self.cfg = cfg
        self.clock = clock
        self._stop = asyncio.Event()
        self._unhook_signals: Callable[[], None] | None = None
        self.store: StateStore | None = None
        self.scheduler: Scheduler | None = None
        self.watcher: Watcher | None = None
        self.marks: FolderMarks | None = None
        self.leases: Leases | None = None  # team mode (a PostgreSQL state)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready = threading.Event()  # set once resumed work is queued and folders are watched
        self.listeners: list[Callable[[TicketRecord], None]] = []
        self.started_at = time.time()
        self.progress = progress
        self.metrics = Metrics()  # served at /metrics
        self.dashboard: Dashboard | None = None  # .open_url is what the tray opens

    # ------------------------------------------------------------------ facade
    # What the CLI, tray and dashboard may do. The coroutines run on the agent's loop; other
    # threads (the tray owns the main thread) go through ``submit``.

    def request_stop(self) -> None:
        if self.loop is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(self._stop.set)
        else:
            self._stop.set()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run a facade coroutine on the agent's loop from another thread."""
        if self.loop is None:
            coro.close()
            raise RuntimeError("the agent is not running")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def _sched(self) -> Scheduler:
        if self.scheduler is None:
            raise RuntimeError("the agent is not running")
        return self.scheduler

    async def team_now(self) -> dict[str, Any] | None:
        """The team's agents and holders as the database has them now (None without a team)."""
        if self.store is None:
            return None
        return await asyncio.to_thread(team_view, self.store)

    async def snapshot(self) -> dict[str, Any]:
        """Everything a front end shows: counts, global problems, every ticket."""
        sched = self._sched()
        assert self.store is not None
        team = await asyncio.to_thread(team_view, self.store)
        records = self.store.tickets()
        team_tickets = getattr(self.store, "team_tickets", None)
        if team is not None and not team.get("problem") and team_tickets is not None:
            # A team member's mirror holds only its own claims: the table is the team's
            # (outputs are known for this agent's tickets; the holder for every one).
            with contextlib.suppress(Exception):
                records = await asyncio.to_thread(team_tickets)
        own = {rec.id for rec in self.store.tickets()}
        tickets = []
        for rec in records:
            d = rec.public()
            d["outputs"] = [o.public() for o in self.store.outputs(rec.id)] if rec.id in own else []
            if team is not None:
                d["holder"] = team["holders"].get(rec.path)
            tickets.append(d)
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "paused": sched.paused,
            "problem": sched.auth_problem.to_dict() if sched.auth_problem else None,
            "quota_until": sched.quota_until,
            "counts": self.store.counts(),
            "folders": [self._folder_view(f.path, share) for f, share in self._shares()],
            "tickets": tickets,
            "team": team,
            "in_use": in_use_view(sched.tickets_in_use),
        }

    def _shares(self) -> list[tuple[FolderConfig, str]]:
        return list(zip(self.cfg.folders, share_names(self.cfg.folders), strict=True))

    def _folder_view(self, path: Path, share: str) -> dict[str, Any]:
        refused = self.marks.refused().get(path) if self.marks is not None else None
        return {
            "path": str(path),
            "share": share,
            "mode": self.watcher.mode(path) if self.watcher else None,
            "refused": refused,  # why another agent's mark keeps this agent out, if it does
        }

    async def pause(self) -> None:
        self._sched().pause()

    async def resume(self) -> None:
        self._sched().resume()

    async def retry(self, name: str | None = None) -> list[str]:
        """Retry one ticket by name (file name, stem or path), or every failed one."""
        sched = self._sched()
        assert self.store is not None
        recs = self.store.find(name) if name else self.store.tickets(phases=[Phase.FAILED])
        return [r.path for r in recs if sched.retry(r) is not None]

    async def cancel(self, name: str) -> list[str]:
        sched = self._sched()
        assert self.store is not None
        done = []
        for rec in self.store.find(name):
            if not rec.phase.terminal:
                await sched.cancel(rec)
                done.append(rec.path)
        return done

    async def rescan(self) -> None:
        if self.watcher is not None:
            self.watcher.rescan()

    def _notify(self, rec: TicketRecord) -> None:
        for listener in list(self.listeners):
            try:
                listener(rec)
            except Exception:  # a front end's bug must not stop the pipeline
                log.exception("listener failed")

    async def run(self, *, once: bool = False) -> int:
        """Run until stopped (or, with ``once``, until nothing is left in flight).

        Returns 0, or with ``once`` 1 when any ticket seen in this run did not succeed.
        """
        cfg = self.cfg
        problem = None if cfg.state.url else state_location_problem(cfg.state.path)
        if problem is not None:
            raise ConfigError(problem, key="state.path")
        lock = StateLock(cfg.state.path)
        lock.acquire()
        if platform.FORCE_PORTABLE:
            log.warning(
                "CONVERT_AGENT_FORCE_PORTABLE: the byte-range lock, placement without hard "
                "links, no folder fsync, watchdog's observer instead of the inotify reader and "
                "a stand-in for sharing violations (the choices made for other platforms; for "
                "tests)"
            )
        store = api = dashboard = marks = None
        runner: asyncio.Task[None] | None = None
        marking: asyncio.Task[None] | None = None
        trimming: asyncio.Task[None] | None = None
        leasing: asyncio.Task[None] | None = None
        try:
            store = self.store = open_state(cfg)
            team = getattr(store, "team", None) is not None
            marks = self.marks = FolderMarks(
                agent_identity(
                    store, cfg.state.path, cfg.state.url, cfg.team.agent_name if team else ""
                ),
                [(f.path, share) for f, share in self._shares()],
                stale=cfg.marks.stale_seconds,
                team=team,
            )
            await asyncio.to_thread(marks.check)
            api = ApiClient(
                cfg.api.base_url,
                cfg.api.key,
                timeout=cfg.api.timeout,
                max_concurrency=cfg.api.max_concurrency,
                requests_per_second=cfg.api.requests_per_second,
                on_request=self.metrics.api_request,
            )
            self.metrics.ticket_counts = store.counts
            self.loop = asyncio.get_running_loop()
            try:
                sched = self.scheduler = Scheduler(
                    cfg, store, api, clock=self.clock, on_change=self._notify
                )
            except Exception as exc:
                raise _state_lost_at_start(cfg, exc) from None
            sched.progress = self.progress
            sched.metrics = self.metrics
            if team:
                claims = cast(Any, store)
                leases = self.leases = Leases(
                    claims,
                    cfg.team.lease_seconds,
                    on_lost=sched.team_lost,
                    on_gained=sched.team_gained,
                    on_problem=sched.state_problem,
                    on_team=sched.team_signals,
                )
                sched.team, sched.claims = leases, claims
                sched.act_need = min(cfg.api.timeout, cfg.team.lease_seconds / 2)
                try:
                    await asyncio.to_thread(claims.reclaim_own, pid_alive)
                except Exception as exc:
                    raise _state_lost_at_start(cfg, exc) from None
                await leases.beat()  # the first heartbeat, and the tickets of stopped agents
                leasing = asyncio.create_task(leases.run(), name="team-leases")
            served = set(marks.served())
            for f in cfg.folders:
                if f.path not in served:
                    sched.hold(str(f.path))
            if once and not served:
                log.error("every folder is served by another agent: nothing to do")
                return EXIT_ALL_REFUSED
            sched.resume_all()
            runner = asyncio.create_task(sched.run())
            self._install_signals()
            await self._start_watcher()
            marking = asyncio.create_task(self._marks_loop(), name="folder-marks")
            trimming = asyncio.create_task(self._trim_loop(), name="memory-trim")
            if cfg.dashboard.enabled:
                dashboard = Dashboard(self, port=cfg.dashboard.port, forward=self.progress)
                sched.progress = dashboard  # shows transfers, then hands them to the terminal
                if await dashboard.start():
                    self.dashboard = dashboard
            self.ready.set()
            if once:
                await self._wait_until_idle(sched)
            else:
                await self._stop.wait()
            return self._exit_code(sched) if once else 0
        finally:
            log.info("stopping")
            if dashboard is not None:
                await dashboard.stop()
                self.dashboard = None
            if trimming is not None:
                trimming.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await trimming
            if marking is not None:
                marking.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await marking
            if self.watcher is not None:
                await self.watcher.stop()
            if self.scheduler is not None:
                await self.scheduler.stop()
            if runner is not None:
                runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await runner
            if leasing is not None:
                leasing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await leasing
            if store is not None and getattr(store, "team", None) is not None:
                # Only now (nothing acts any more): the team takes the rest over at once.
                await cast(Any, store).leave()
            if marks is not None:
                # Only now: nothing acts on the folders any more.
                await asyncio.to_thread(marks.release_all)
            if api is not None:
                await api.close()
            if store is not None:
                store.close()
            lock.release()
            self._remove_signals()

    async def _start_watcher(self) -> None:
        """Watch the folders whose marks this agent holds (and only those)."""
        sched, marks = self.scheduler, self.marks
        assert sched is not None and marks is not None
        served = set(marks.served())
        watcher = Watcher(
            [f for f in self.cfg.folders if f.path in served],
            sched.handle,
            settle_seconds=self.cfg.tickets.settle_seconds,
            reconcile_interval=self.cfg.polling.reconcile_interval,
            fs_poll_interval=self.cfg.polling.fs_poll_interval,
            ignore=sched.is_own_output,
        )
        sched.unread = watcher.forget
        await watcher.start()
        self.watcher = watcher

    async def _marks_loop(self) -> None:
        """Renew this agent's marks every heartbeat; take folders whose marks went stale, let go
        of any another agent took (this one was paused or cut off longer than the stale time)."""
        marks, sched = self.marks, self.scheduler
        assert marks is not None and sched is not None
        while True:
            await asyncio.sleep(self.cfg.marks.heartbeat_seconds)
            try:
                changes = await asyncio.to_thread(marks.check)
            except Exception:  # a bug here must not end the agent's other folders
                log.exception("checking the folder marks failed")
                continue
            if not changes:
                continue
            for change in changes:
                if change.kind == "lost":
                    sched.hold(str(change.path))
            if self.watcher is not None:
                old, self.watcher = self.watcher, None
                await old.stop()
            for change in changes:
                if change.kind == "gained":
                    sched.release(str(change.path))
            await self._start_watcher()

    async def _trim_loop(self) -> None:
        """Every ``MEMORY_TRIM_SECONDS``: drop the folder listings no longer placed into, then
        give the allocator's free pages back to the system (in a worker thread: it takes the
        allocator's locks for a few milliseconds; not again where there is nothing to call)."""
        release = True
        while True:
            await asyncio.sleep(MEMORY_TRIM_SECONDS)
            FOLDER_NAMES.forget_idle()
            if not release:
                continue
            began = time.perf_counter()
            try:
                released = await asyncio.to_thread(platform.release_free_memory)
            except Exception:  # advice to the allocator: never worth ending the agent for
                log.exception("giving free memory back to the system failed")
                released = None
            if released is None:
                release = False
                continue
            log.debug("free memory given back in %.1f ms", 1000 * (time.perf_counter() - began))

    async def _wait_until_idle(self, sched: Scheduler) -> None:
        quiet_since: float | None = None
        while not self._stop.is_set():
            current = self.watcher
            busy = sched.busy() or (current is not None and current.busy())
            now = time.monotonic()
            if busy:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= 0.3:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=0.1)

    def _exit_code(self, sched: Scheduler) -> int:
        assert self.store is not None
        for tid in sched.seen_this_run:
            if self.store.get(tid).phase is not Phase.DONE:
                return 1
        return 0

    def _install_signals(self) -> None:
        self._unhook_signals = platform.install_stop_handlers(
            asyncio.get_running_loop(), self.request_stop
        )

    def _remove_signals(self) -> None:
        unhook, self._unhook_signals = self._unhook_signals, None
        if unhook is not None:
            unhook()
