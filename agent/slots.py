"""The account's concurrent-conversion limit, learned from refusals (pure; clock injected).

A contract caps the conversions an account runs at once; going over is answered 429. When a
start (or a create) is refused with 429 while N of the agent's own jobs are processing, the
limit is N: further starts wait here, in the order they asked, until one of those jobs
finishes, instead of knocking on the limit again. Every ``PROBE_SECONDS`` with starts waiting
the limit is raised by one, since contracts change (a refusal sets it back). ``manual`` (the
config's ``api.max_processing``) fixes the limit and turns learning off.

The scheduler tells it which tickets hold a slot; a holder whose ticket left the phases that
hold one (``holds(tid)`` false) is dropped on the next look, so no missed release can keep a
slot taken. Starts go before creates; creates only wait here once a create was refused at
the limit (the service then counts a staged job too).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

PROBE_SECONDS = 60.0

START = "start"
CREATE = "create"


class ConversionSlots:
    def __init__(
        self,
        *,
        manual: int | None,
        holds: Callable[[int], bool],
        clock: Callable[[], float],
    ) -> None:
        self.manual = manual if manual is not None and manual > 0 else None
        self.limit: int | None = self.manual
        self.creates_wait = False  # a create was refused at the limit: creates take slots too
        self.holders: set[int] = set()
        self.waiting: dict[int, str] = {}  # ticket → START/CREATE
        self._asked: dict[int, int] = {}  # ticket → when it first asked (a counter): its place
        self._seq = 0
        self._holds = holds
        self._clock = clock
        self._since = clock()  # the limit was last set (learned, confirmed or probed)

    def adopt(self, tids: Iterable[int]) -> None:
        """Tickets whose jobs are processing already (at start-up)."""
        self.holders.update(tids)

    def ask(self, tid: int, kind: str) -> bool:
        """May ``tid`` start (or create) now? If not, it waits in line (``released`` says when)."""
        if tid in self.holders:
            return True
        if kind == CREATE and not self.creates_wait:
            return True
        if tid not in self._asked:
            self._seq += 1
            self._asked[tid] = self._seq
        self._prune()
        self._probe()
        if self.limit is None:
            self.holders.add(tid)
            self.waiting.pop(tid, None)
            return True
        line = self._line(extra=(tid, kind))
        if line.index(tid) < self.limit - len(self.holders):
            self.holders.add(tid)
            self.waiting.pop(tid, None)
            return True
        self.waiting.setdefault(tid, kind)
        return False

    def refused(self, tid: int, kind: str) -> bool:
        """``tid``'s start (or create) was refused with 429. True when that is the concurrency
        limit (jobs of ours are processing): it now waits first in line. False when nothing of
        ours runs: the refusal is something else (the request rate) and is retried as such."""
        self.holders.discard(tid)
        self._prune()
        running = len(self.holders)
        if running == 0:
            return False
        if self.manual is None:
            self.limit = running
        if kind == CREATE:
            self.creates_wait = True
        self._since = self._clock()
        self.waiting[tid] = kind  # back in line, at the place it first asked for
        self._asked.setdefault(tid, 0)
        return True

    def forget(self, tid: int) -> None:
        """The ticket no longer wants a slot (canceled, failed, gone)."""
        self.waiting.pop(tid, None)
        self.holders.discard(tid)
        self._asked.pop(tid, None)

    def released(self) -> list[int]:
        """The waiting tickets that may go now, first in line first."""
        if not self.waiting:
            return []
        self._prune()
        self._probe()
        if self.limit is None:
            return list(self.waiting)
        free = self.limit - len(self.holders)
        return self.line()[: max(0, free)]

    def line(self) -> list[int]:
        """The waiting tickets, first to go first."""
        return self._line()

    def next_probe(self) -> float | None:
        """When the limit is next raised by one (None: not learned, or set by hand)."""
        if self.manual is not None or self.limit is None:
            return None
        return self._since + PROBE_SECONDS

    def _line(self, extra: tuple[int, str] | None = None) -> list[int]:
        """Who goes first: waiting starts, then waiting creates, each in the order they asked
        (``extra``, asking for the first time, at the end of its kind)."""
        kinds = dict(self.waiting)
        if extra is not None:
            kinds.setdefault(*extra)
        order = sorted(kinds, key=lambda t: self._asked.get(t, 0))
        return [t for t in order if kinds[t] == START] + [t for t in order if kinds[t] != START]

    def _prune(self) -> None:
        gone = {t for t in self.holders if not self._holds(t)}
        self.holders -= gone
        for t in gone:
            if t not in self.waiting:
                self._asked.pop(t, None)

    def _probe(self) -> None:
        if self.manual is None and self.limit is not None and self.waiting:
            now = self._clock()
            if now - self._since >= PROBE_SECONDS:
                self.limit += 1
                self._since = now
