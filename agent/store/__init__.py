"""The state store: one contract (``contract.StateStore``), a backend per database.

``sqlite.Store`` is the embedded default (one machine). Records are in ``records``; the
single-instance lock of a state file in ``lock``. Callers import from here.
"""

from agent.store.contract import StateStore
from agent.store.lock import StateLock
from agent.store.records import (
    InputRecord,
    LeaseLost,
    OutputRecord,
    PrunedRecord,
    PruneResult,
    TeamMember,
    TicketRecord,
    WritesLost,
)
from agent.store.sqlite import Store, m001_initial, m002_output_validator, m003_retention

__all__ = [
    "InputRecord",
    "LeaseLost",
    "OutputRecord",
    "PruneResult",
    "PrunedRecord",
    "StateLock",
    "StateStore",
    "Store",
    "TeamMember",
    "TicketRecord",
    "WritesLost",
    "m001_initial",
    "m002_output_validator",
    "m003_retention",
]
