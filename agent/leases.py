"""Team mode's leases as the scheduler sees them (docs/team-mode.md).

Every ticket path an agent works on is claimed in the shared state with a lease in the server's
time. This module keeps them alive and answers one question before each act: "may I act now,
for ``need`` seconds?"

- **Heartbeat**: every ``lease / 4`` one statement renews the agent's row and all its claims
  (``store.renew``). The local deadline is the monotonic time the renewal was *sent* plus the
  lease minus a margin: it can only be earlier than the server's view, so machines' clocks never
  matter. A renewal that finds claims gone (another agent took them over while this one was
  paused or cut off) drops those tickets at once (``on_lost``).
- **Acts**: ``ready(need)`` returns when the deadline leaves at least ``need`` seconds, asking
  for a renewal first if it does not; while the database cannot be reached it raises
  ``LeaseLost`` instead (the ticket's step is taken again later): an agent that cannot prove
  its leases does nothing.
- **Takeover**: after each renewal the agent takes its share of the claims whose lease ran out
  (``store.take_over``) and hands their tickets to the scheduler (``on_gained``).

It knows no SQL: the store does the claiming (agent/store/postgres.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from agent.store.records import LeaseLost

log = logging.getLogger(__name__)

MARGIN = 2.0  # seconds the local deadline keeps below the server's lease


class TeamStore(Protocol):
    async def renew(self) -> list[int]: ...

    async def take_over(self) -> tuple[list[int], list[str]]: ...

    async def team_info(self) -> dict[str, Any]: ...


class Leases:
    def __init__(
        self,
        store: TeamStore,
        lease: float,
        *,
        on_lost: Callable[[list[int]], None],
        on_gained: Callable[[list[int], list[str]], None],
        on_problem: Callable[[str | None], None] | None = None,
        on_team: Callable[[dict[str, Any]], None] | None = None,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.on_problem = on_problem
        self.on_team = on_team
        self.store = store
        self.lease = lease
        self.interval = lease / 4
        self.on_lost = on_lost
        self.on_gained = on_gained
        self.mono = mono
        self.deadline = 0.0  # monotonic: acts may run until then
        self.problem: str | None = None  # why the leases cannot be renewed now (shown)
        self._kick = asyncio.Event()
        self._renewed = asyncio.Event()
        self.renewals = 0

    def live(self, need: float) -> bool:
        return self.mono() + need < self.deadline

    def kick(self) -> None:
        """Renew now (an act waits for a lease with enough time left)."""
        self._kick.set()

    async def ready(self, need: float, *, wait: float | None = None) -> None:
        """Return once the leases are good for ``need`` more seconds; raise ``LeaseLost`` when
        they cannot be renewed within ``wait`` seconds (default: one heartbeat interval)."""
        if self.live(need):
            return
        loop = asyncio.get_running_loop()  # the wait is real time, whatever ``mono`` is
        limit = loop.time() + (self.interval if wait is None else wait)
        while not self.live(need):
            left = limit - loop.time()
            if left <= 0:
                raise LeaseLost(
                    "this agent cannot renew its leases"
                    + (f" ({self.problem})" if self.problem else "")
                    + "; it does nothing on its tickets until it can"
                )
            self.kick()
            renewed = self._renewed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(renewed.wait(), left)

    async def run(self) -> None:
        """The heartbeat and takeover loop (a task for the agent's lifetime)."""
        while True:
            self._kick.clear()
            await self.beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._kick.wait(), self.interval if self.problem is None else 1.0
                )

    async def beat(self) -> None:
        """One renewal, then one takeover round."""
        sent = self.mono()
        try:
            lost = await self.store.renew()
        except Exception as exc:
            if self.problem is None:
                log.warning(
                    "cannot renew this agent's leases: %s; its tickets wait (another agent may "
                    "take them over once their leases run out)",
                    exc,
                )
            self.problem = str(exc)
            if self.on_problem is not None:
                self.on_problem(f"the state database, to renew this agent's leases: {exc}")
            return
        self.deadline = sent + self.lease - MARGIN
        self.renewals += 1
        if self.problem is not None:
            log.info("the state database answers again: leases renewed")
            self.problem = None
            if self.on_problem is not None:
                self.on_problem(None)
        renewed, self._renewed = self._renewed, asyncio.Event()
        renewed.set()
        if lost:
            log.warning(
                "%d ticket(s) were taken over by another agent while this one could not renew "
                "its leases; it stops working on them",
                len(lost),
            )
            self.on_lost(lost)
        if self.on_team is not None:
            try:
                self.on_team(await self.store.team_info())
            except Exception as exc:
                log.debug("cannot read the team's shared limits now: %s", exc)
        try:
            tids, empty = await self.store.take_over()
        except Exception as exc:
            log.warning("cannot take over tickets of stopped agents now: %s", exc)
            return
        if tids or empty:
            self.on_gained(tids, empty)


class ClaimStore(Protocol):
    """What the scheduler asks of a team's store about claims (agent/store/postgres.py)."""

    def holds(self, path: str) -> bool: ...

    async def claim(self, path: str, *, fair: bool = True) -> str: ...

    def release(self, path: str) -> None: ...
