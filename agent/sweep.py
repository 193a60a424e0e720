"""List-based polling: one ``GET /jobs`` page tells the status of up to 50 jobs.

With many jobs in flight, polling each one on its own (``GET /jobs/{id}``, the SDK's way) costs
about one request per job every few seconds. The sweep reads the account's job list instead,
every ``interval`` seconds (half of ``polling.max_interval``, at least ``min_interval``: a
finished job is noticed sooner than per-job polling at its cap would), and tells the scheduler
which of its jobs changed. A job the sweep has seen is *covered*: its own poll is pushed far out
(``COVER_SECONDS``) and it costs no request of its own until the sweep sees it finish or change.
The scheduler still polls a young job on its own while its schedule is more frequent than the
sweeps, so quick conversions are noticed as soon as without them.

The sweep is an optimisation, never a source of truth the agent depends on:

- It runs only while it is clearly cheaper: at least ``MIN_JOBS`` jobs are being polled and the
  list's pages (from ``X-Count``) are at most a quarter of them. An account with many unrelated
  jobs simply keeps per-job polling (checked again every ``RECHECK_SECONDS``).
- The list's order and paging are not documented ([UNDOC]): a job missing from a completed
  sweep (a token-only adoption of another account's job, a page that shifted while it was read)
  loses its cover and is polled on its own again at once. So does every covered job when a sweep
  fails (any error: network, 401, 429, a malformed page) or the sweep stops being worth it.
- A job the list shows as finished or changed is handed to the scheduler with the listed object;
  a completed job whose list entry carries no outputs is fetched on its own, as before.

Nothing here is persisted: after a restart every job starts on its own schedule again.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from agent.api import ApiClient
from agent.errors import AgentError
from agent.models import RemoteJob

log = logging.getLogger("agent.sweep")

PAGE_SIZE = 50  # the API's page size for GET /jobs
MIN_JOBS = 8  # fewer jobs than this are polled one by one
COST_FACTOR = 4  # sweep only if its pages are at most a quarter of the jobs it covers
COVER_SECONDS = 30.0  # a covered job's own timer; the sweep wakes it earlier when needed
RECHECK_SECONDS = 60.0  # after a failed or unprofitable sweep, per-job polling for this long
MAX_PAGES = 200  # a safety bound on one sweep (10,000 jobs)


@dataclass(frozen=True)
class Watched:
    """A ticket whose remote job is being polled."""

    tid: int
    job_id: str
    status: tuple[str, str]  # (code, info) as last recorded


class Sweeper:
    """Periodic list sweeps for the scheduler; see the module docstring."""

    def __init__(
        self,
        api: ApiClient,
        *,
        interval: float,
        clock: Callable[[], float],
        watched: Callable[[], list[Watched]],
        wake: Callable[[int, float], None],
        blocked: Callable[[], bool],
    ) -> None:
        self.api = api
        self.interval = interval
        self.clock = clock
        self._watched = watched
        self._wake = wake
        self._blocked = blocked
        self.active = False  # the last sweep was worth it and succeeded
        self.sweeps = 0  # completed sweeps (for tests and metrics)
        self._covered: dict[int, float] = {}  # tid → covered since
        self._listed: dict[int, RemoteJob] = {}  # tid → a finished/changed job seen in a list
        self._recheck_at = 0.0

    # ------------------------------------------------------------------ the scheduler's side

    def take(self, tid: int) -> RemoteJob | None:
        """The listed job waiting for this ticket's next step, if any (consumed)."""
        return self._listed.pop(tid, None)

    def covered_until(self, tid: int) -> float | None:
        """When this ticket's own poll is due while the sweep covers it (None: not covered)."""
        since = self._covered.get(tid)
        return None if since is None else since + COVER_SECONDS

    def cover(self, tid: int) -> float | None:
        """After a poll of one job found it running: the time of its next own poll when the
        sweep will cover it instead (None: keep the per-job schedule)."""
        if not self.active:
            return None
        now = self.clock()
        self._covered[tid] = now
        return now + COVER_SECONDS

    def forget(self, tid: int) -> None:
        self._covered.pop(tid, None)
        self._listed.pop(tid, None)

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        while True:
            started = self.clock()
            try:
                await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop polling: per-job polls take over
                log.exception("internal error in the job-list sweep; polling jobs one by one")
                self._stop(RECHECK_SECONDS)
            await asyncio.sleep(max(0.05, started + self.interval - self.clock()))

    async def sweep_once(self) -> None:
        """One sweep (or nothing, when per-job polling is the cheaper or the only way now)."""
        now = self.clock()
        if now < self._recheck_at or self._blocked():
            self._stop(None)
            return
        watched = self._watched()
        if len(watched) < MIN_JOBS:
            self._stop(None)
            return
        by_job = {w.job_id: w for w in watched}
        seen: set[int] = set()
        sweep_start = now
        try:
            page = 1
            while True:
                jobs, count = await self.api.list_page(page)
                # Without X-Count the pages are read while they come full, with the same bound.
                pages = math.ceil(count / PAGE_SIZE) if count is not None else page + 1
                if min(pages, MAX_PAGES + 1) * COST_FACTOR > len(watched) or pages > MAX_PAGES:
                    if self.active:
                        log.info(
                            "job-list sweep stopped: %s job(s) on the account for %d of ours; "
                            "polling jobs one by one",
                            count if count is not None else f"over {page * PAGE_SIZE}",
                            len(watched),
                        )
                    self._stop(RECHECK_SECONDS)
                    return
                for job in jobs:
                    w = by_job.get(job.id)
                    if w is not None:
                        seen.add(w.tid)
                        self._saw(w, job)
                if len(jobs) < PAGE_SIZE or page >= pages:
                    break
                page += 1
        except AgentError as err:
            log.info("job-list sweep failed (%s); polling jobs one by one", err.message)
            self._stop(RECHECK_SECONDS)
            return
        if not self.active:
            log.info("job-list sweeps on: %d jobs in flight, %d page(s)", len(watched), pages)
        self.active = True
        self.sweeps += 1
        # Covered jobs the sweep did not list are polled on their own again, at once.
        for w in watched:
            since = self._covered.get(w.tid)
            if w.tid not in seen and since is not None and since < sweep_start:
                del self._covered[w.tid]
                self._wake(w.tid, self.clock())
        live = {w.tid for w in watched}
        for tid in [t for t in self._covered if t not in live]:
            del self._covered[tid]

    def _saw(self, w: Watched, job: RemoteJob) -> None:
        changed = (job.status_code, job.status_info) != w.status
        if job.terminal or changed:
            if job.status_code == "completed" and not job.outputs:
                self._listed.pop(w.tid, None)  # fetched on its own: the list left outputs out
            else:
                self._listed[w.tid] = job
            self._covered.pop(w.tid, None)
            self._wake(w.tid, self.clock())
            return
        self._covered[w.tid] = self.clock()

    def _stop(self, recheck: float | None) -> None:
        """End coverage: every covered job goes back to its own polls, spread over a second."""
        if recheck is not None:
            self._recheck_at = self.clock() + recheck
        self.active = False
        now = self.clock()
        n = len(self._covered)
        for i, tid in enumerate(list(self._covered)):
            self._wake(tid, now + i / max(1, n))
        self._covered.clear()
