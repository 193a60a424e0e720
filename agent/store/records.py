"""The records of the state store, as every backend hands them out (frozen, no I/O).

A backend stores strings and numbers; these dataclasses are what the scheduler, the CLI and the
dashboard read. ``_decode_columns`` turns stored ticket columns into a record's values.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from agent.models import Phase


@dataclass(frozen=True)
class TicketRecord:
    id: int
    path: str
    root: str
    sha256: str
    kind: str
    spec: str
    phase: Phase
    active: bool
    filed: bool
    idem_key: str
    job_id: str | None
    job_token: str | None = field(repr=False)
    job_server: str | None
    start_sent: bool
    remote_status: str | None
    remote_info: str | None
    error: Mapping[str, Any] | None
    wait_until: float | None
    attempts: int
    created_at: float
    updated_at: float
    finished_at: float | None

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TicketRecord:
        return cls(**_decode_columns({name: row[name] for name in _TICKET_FIELDS}))

    def public(self) -> dict[str, Any]:
        """A JSON-able view without secrets, for the CLI, sidecars and the dashboard."""
        return {
            "id": self.id,
            "ticket": self.path,
            "name": self.name,
            "kind": self.kind,
            "phase": str(self.phase),
            "waiting": self.wait_until is not None and not self.phase.terminal,
            "next_attempt_at": self.wait_until,
            "job_id": self.job_id,
            "server_status": self.remote_status,
            "server_info": self.remote_info,
            "error": dict(self.error) if self.error else None,
            "attempts": self.attempts,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
        }


_TICKET_FIELDS = tuple(f.name for f in fields(TicketRecord))


def _decode_columns(cols: Mapping[str, Any]) -> dict[str, Any]:
    """Ticket columns as stored → as a TicketRecord holds them (any subset of the columns)."""
    d = dict(cols)
    if "phase" in d:
        d["phase"] = Phase(d["phase"])
    if "error" in d:
        d["error"] = json.loads(d["error"]) if d["error"] else None
    for k in ("active", "filed", "start_sent"):
        if k in d:
            d[k] = bool(d[k])
    return d


@dataclass(frozen=True)
class InputRecord:
    id: int
    ticket_id: int
    idx: int
    kind: str
    value: str
    abs_path: str | None
    upload_uuid: str
    sent: bool
    remote_id: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> InputRecord:
        d = {f.name: row[f.name] for f in fields(cls)}
        d["sent"] = bool(d["sent"])
        return cls(**d)


@dataclass(frozen=True)
class OutputRecord:
    id: int
    ticket_id: int
    idx: int
    remote_id: str
    filename: str
    uri: str
    size: int | None
    checksum: str
    remote_status: str
    state: str
    dest_name: str | None
    digest: str | None
    verdict: str | None
    gets: int
    mismatches: int
    validator: str | None = None  # ETag/Last-Modified of the last download: If-Range on resume

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> OutputRecord:
        return cls(**{f.name: row[f.name] for f in fields(cls)})

    def public(self) -> dict[str, Any]:
        return {
            "name": self.dest_name or self.filename,
            "size": self.size,
            "checksum": self.checksum or None,
            "state": self.state,
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class PrunedRecord:
    """The tombstone of a ticket record retention removed (``StateStore.prune``)."""

    id: int
    path: str
    root: str
    outcome: str  # done | failed | canceled | superseded (a newer request took its path)
    finished_at: float | None
    pruned_at: float

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> PrunedRecord:
        return cls(**{f.name: row[f.name] for f in fields(cls)})

    def public(self) -> dict[str, Any]:
        return {
            "ticket": self.path,
            "name": self.name,
            "pruned": True,
            "outcome": self.outcome,
            "finished_at": self.finished_at,
            "pruned_at": self.pruned_at,
        }


@dataclass(frozen=True)
class PruneResult:
    """What one retention batch did."""

    tickets: tuple[int, ...] = ()  # ids of the ticket records removed
    tombstones: int = 0  # tombstones removed (past their own limit)
    # Outputs no record or tombstone names any more: no longer known as the agent's own files.
    forgotten_outputs: tuple[str, ...] = ()
    more: bool = False  # another batch may have work


def named(path: str, name: str) -> bool:
    """Whether a ticket at ``path`` is the one a user means by ``name`` (``why``, ``retry``,
    ``cancel``): its full path, its file name, its stem (without ``.job``) or a tail of its path."""
    base = os.path.basename(path)
    stem = base[: -len(".job")] if base.endswith(".job") else base
    return name in (path, base, stem) or path.endswith(os.sep + name)


class WritesLost(Exception):
    """A write of a group failed, so the whole group was rolled back (``Store.commit``)."""


class LeaseLost(WritesLost):
    """This agent no longer holds the claim of a ticket (its lease ran out, another agent took
    it over): nothing more is written or done for it here (team mode, docs/team-mode.md)."""


@dataclass(frozen=True)
class TeamMember:
    """One agent of a team sharing a PostgreSQL state: how it names itself to the others."""

    name: str
    host: str
    pid: int
    lease: float = 30.0  # seconds a claim lives without a renewal
