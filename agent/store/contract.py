"""What the scheduler, the daemon and the front ends may ask of a state store, whatever the
database behind it (``sqlite.Store`` today; a shared PostgreSQL backend for team mode next).

The contract, in words (docs/DESIGN.md, store and scheduler):
- Every transition (``add_ticket``, ``update``, ``reset_for_resubmit``) writes the ticket's row
  and its history row together, all or nothing.
- With ``group_commit`` writes join one open group, committed by ``commit()``; ``on_dirty`` is
  called when a write joins a group, so the owner can schedule the commit. Nothing may be acted on
  before the commit that recorded it returned. A failed grouped write undoes its whole group and
  the next ``commit()`` raises ``WritesLost``.
- Reads of a ticket return what this process last wrote (read-your-writes), committed or not.
- With ``async_commit`` the group is committed by ``await flush()`` (PostgreSQL, postgres.py);
  ``commit()`` is then the blocking form, for closing and for callers without an event loop.
- A read-only store never writes and never caches.
- Retention (``prune``) removes finished records in small batches, each its own transaction,
  never inside an open group; a removed record leaves a bounded tombstone (``pruned``).

It must not know about HTTP or folders: a store keeps strings and numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Protocol

from agent.models import Phase, RemoteOutput
from agent.store.records import (
    InputRecord,
    OutputRecord,
    PrunedRecord,
    PruneResult,
    TicketRecord,
)


class StateStore(Protocol):
    group_commit: bool
    on_dirty: Callable[[], None] | None
    readonly: bool
    # True when a commit is a network round trip (PostgreSQL): the owner awaits ``flush()``, one
    # at a time, instead of calling ``commit()`` on the loop; writes made meanwhile join the next.
    async_commit: bool

    @property
    def dirty(self) -> bool: ...

    def commit(self) -> None: ...

    async def flush(self) -> None:
        """Commit the open group without blocking the loop (``commit()`` where that is quick).
        Same outcomes as ``commit()``: ``WritesLost`` when the group or one before it is lost."""
        ...

    def close(self) -> None: ...

    # tickets
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
        phase: Phase = ...,
        error: Mapping[str, Any] | None = None,
        message: str = ...,
    ) -> TicketRecord: ...

    def reset_for_resubmit(self, ticket_id: int, now: float, *, message: str) -> None: ...

    def get(self, ticket_id: int) -> TicketRecord: ...

    def same_content_elsewhere(self, root: str, sha256: str, path: str) -> list[TicketRecord]: ...

    def active_for_path(self, path: str) -> TicketRecord | None: ...

    def update(
        self, ticket_id: int, now: float, *, event: str, message: str | None = None, **changes: Any
    ) -> TicketRecord: ...

    def touch(self, ticket_id: int, now: float, **changes: Any) -> None: ...

    def unfinished(self) -> list[TicketRecord]: ...

    def tickets(
        self, *, phases: Iterable[Phase] | None = None, active_only: bool = True, limit: int = 0
    ) -> list[TicketRecord]: ...

    def find(self, name: str) -> list[TicketRecord]: ...

    def counts(self) -> dict[str, int]: ...

    def history(self, ticket_id: int) -> list[dict[str, Any]]: ...

    # inputs and outputs
    def inputs(self, ticket_id: int) -> list[InputRecord]: ...

    def mark_input_sent(self, input_id: int, remote_id: str | None) -> None: ...

    def record_outputs(self, ticket_id: int, outputs: Sequence[RemoteOutput]) -> None: ...

    def outputs(self, ticket_id: int) -> list[OutputRecord]: ...

    def update_output(self, output_id: int, **changes: Any) -> None: ...

    def output_names(self, root: str) -> set[str]: ...

    def is_own_output(self, path: str, roots: Collection[str]) -> bool:
        """Whether a record or a tombstone of a ticket found under one of ``roots`` names
        ``path`` as an output it placed: whether ``path`` is in the union of
        ``output_names(root)`` over ``roots``, counting writes not committed yet. An indexed
        lookup of one path (the scheduler asks it for each new file in a watched folder),
        never a scan of every output ever placed."""
        ...

    # retention
    def prune(
        self, now: float, *, keep_days: float, keep_finished: int, limit: int = 500
    ) -> PruneResult:
        """One batch of retention: remove at most ``limit`` of the oldest finished records
        (superseded by a newer request for their path, or ended and filed) that are older than
        ``keep_days`` or beyond the ``keep_finished`` newest finished ones (0 = that limit off),
        with their history, inputs and outputs, in a transaction of its own, committed before
        it returns. A record with work left is never removed, and no live (unfiled) record is
        touched. Each removed record leaves a tombstone (``pruned``), kept while it is among the
        ``keep_finished`` newest tombstones. Raises ``RuntimeError`` if a group is open (the
        caller commits first, so retention never commits or loses a grouped write). The
        result names the records removed and the outputs no longer known as the agent's own;
        ``more`` asks for another batch (the caller yields to other work in between)."""
        ...

    def pruned(self, name: str) -> list[PrunedRecord]:
        """Tombstones whose path, file name or stem is ``name``, newest first."""
        ...

    # meta
    def get_meta(self, key: str, default: str | None = None) -> str | None: ...

    def set_meta(self, key: str, value: str | None) -> None: ...

    def integrity_ok(self) -> bool: ...
