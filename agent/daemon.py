"""Composition root: builds the store, API client, scheduler and watcher, and runs them.

Order matters (as in Maestral): take the single-instance lock, open and migrate the state,
put every unfinished ticket back on the timer, and only then start watching, so interrupted work
resumes before anything new is taken. SIGINT/SIGTERM stop it gracefully: steps under way are
interrupted at a point the next start replays safely.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Iterable

from agent.api import ApiClient
from agent.config import Config
from agent.errors import ConfigError
from agent.models import Phase
from agent.scheduler import Scheduler
from agent.store import StateLock, Store
from agent.watcher import Watcher

log = logging.getLogger("agent")


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
        return True


def install_redaction(secrets: Iterable[str]) -> None:
    f = RedactingFilter(secrets)
    for h in logging.getLogger().handlers:
        h.addFilter(f)


class Agent:
    """The running agent. Front ends (CLI, tray, dashboard) talk to this object."""

    def __init__(self, cfg: Config, *, clock: Callable[[], float] = time.time) -> None:
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
        self.store: Store | None = None
        self.scheduler: Scheduler | None = None

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, *, once: bool = False) -> int:
        """Run until stopped (or, with ``once``, until nothing is left in flight).

        Returns 0, or with ``once`` 1 when any ticket seen in this run did not succeed.
        """
        cfg = self.cfg
        lock = StateLock(cfg.state.path)
        lock.acquire()
        store = api = watcher = None
        runner: asyncio.Task[None] | None = None
        try:
            store = self.store = Store.open(cfg.state.path)
            api = ApiClient(
                cfg.api.base_url,
                cfg.api.key,
                timeout=cfg.api.timeout,
                max_concurrency=cfg.api.max_concurrency,
                requests_per_second=cfg.api.requests_per_second,
            )
            sched = self.scheduler = Scheduler(cfg, store, api, clock=self.clock)
            sched.resume_all()
            runner = asyncio.create_task(sched.run())
            watcher = Watcher(
                cfg.folders,
                sched.handle,
                settle_seconds=cfg.tickets.settle_seconds,
                reconcile_interval=cfg.polling.reconcile_interval,
                fs_poll_interval=cfg.polling.fs_poll_interval,
                ignore=sched.is_own_output,
            )
            self._install_signals()
            await watcher.start()
            log.info(
                "watching %s",
                ", ".join(str(f.path) for f in cfg.folders),
            )
            if once:
                await self._wait_until_idle(sched, watcher)
            else:
                await self._stop.wait()
            return self._exit_code(sched) if once else 0
        finally:
            log.info("stopping")
            if watcher is not None:
                await watcher.stop()
            if self.scheduler is not None:
                await self.scheduler.stop()
            if runner is not None:
                runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await runner
            if api is not None:
                await api.close()
            if store is not None:
                store.close()
            lock.release()
            self._remove_signals()

    async def _wait_until_idle(self, sched: Scheduler, watcher: Watcher) -> None:
        quiet_since: float | None = None
        while not self._stop.is_set():
            busy = sched.busy() or watcher.busy()
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
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)

    def _remove_signals(self) -> None:
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
