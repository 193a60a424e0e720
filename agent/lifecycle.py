"""Pure decisions about a ticket's life: backoff, poll intervals, and what a job status means.

No I/O and no clock of its own: callers pass ``now`` and a ``rand`` in [0, 1), so every decision
can be tested exhaustively and replayed.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable

from agent.errors import without_password
from agent.models import JobMessage, RemoteJob

MAX_WAIT = 600.0  # a transient problem is retried at least every ten minutes
MAX_RETRY_AFTER = 3600.0  # a server asking for more than an hour is asked again after one


class JobOutcome(enum.StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


def job_outcome(job: RemoteJob) -> JobOutcome:
    """Only completed, failed and canceled are terminal; unknown or empty codes keep polling."""
    code = job.status_code.strip().lower()
    if code == "completed":
        return JobOutcome.COMPLETED
    if code == "failed":
        return JobOutcome.FAILED
    if code in ("canceled", "cancelled"):
        return JobOutcome.CANCELED
    return JobOutcome.RUNNING


STAGED_CODES = frozenset({"", "incomplete", "ready", "created"})
STARTED_CODES = frozenset(
    {"downloading", "pending", "queued", "processing", "completed", "failed", "canceled"}
    | {"cancelled"}
)


def started(job: RemoteJob) -> bool:
    """Whether a job has been marked for processing (after a PATCH process:true)."""
    return job.status_code.strip().lower() not in STAGED_CODES


def start_known(job: RemoteJob) -> bool | None:
    """Whether a job has started: True / False, or None when its status code is one this agent
    does not know (it says nothing either way, so the caller asks again rather than guess)."""
    code = job.status_code.strip().lower()
    if code in STARTED_CODES:
        return True
    if code in STAGED_CODES:
        return False
    return None


def retry_delay(attempts: int, retry_after: float | None, rand: float) -> float:
    """Seconds to wait before trying a step again after ``attempts`` transient failures.

    A positive ``retry_after`` from the server is honoured exactly (capped at an hour); otherwise
    exponential backoff 1, 2, 4 … s capped at ten minutes, with up to 25 % upward jitter so that
    many tickets hit by the same outage do not come back in lockstep.
    """
    if retry_after is not None and retry_after > 0:
        return min(float(retry_after), MAX_RETRY_AFTER)
    base = min(MAX_WAIT, 2.0 ** max(0, min(attempts, 20)))
    return min(MAX_WAIT, base * (1.0 + 0.25 * rand))


def poll_delay(polls: int, min_interval: float, max_interval: float, rand: float) -> float:
    """The SDK's schedule (×1.5 per poll from ``min_interval`` up to ``max_interval``) + jitter.

    Unlike the SDK's, the delay never exceeds ``max_interval``: up to 25 % upward jitter on the
    way up, 0–10 % downward jitter at the cap. So a finished job is noticed within
    ``max_interval`` (5 s by default; the SDK may wait 6.25 s), while polls stay spread."""
    base = min(max_interval, min_interval * (1.5 ** max(0, min(polls, 60))))
    if base >= max_interval:
        return max_interval * (1.0 - 0.1 * rand)
    return min(max_interval, base * (1.0 + 0.25 * rand))


def describe_messages(messages: Iterable[JobMessage]) -> str:
    parts = []
    for m in messages:
        text = m.message or "no message"
        parts.append(f"{text} (code {m.code})" if m.code is not None else text)
    return "; ".join(parts)


def job_failure_message(job: RemoteJob) -> str:
    detail = describe_messages(job.errors) or job.status_info or "the server gave no reason"
    if job_outcome(job) is JobOutcome.CANCELED:
        return (
            f"the job {job.id} was canceled on the server ({detail}); "
            "rename the ticket back to .job to try again"
        )
    again = "rename the ticket back to .job (or run `convert-agent retry`) to try again"
    unfetched = _inputs_not_downloaded(job)
    if unfetched is not None:
        which = f"the input {', '.join(unfetched)}" if unfetched else "an input"
        return (
            f"the server could not download {which}: {detail}. Check that the link opens from "
            f"the internet (the API downloads it itself, not this computer), then {again}"
        )
    if _ABOUT_THE_CONVERSION.search(detail):
        check = (
            "Check the ticket's `target` and `category` against the conversions the API offers "
            "(GET /v2/conversions)"
        )
    else:
        check = (
            "Check the ticket's inputs (each one whole, of a kind the target takes, as many as "
            "it needs) and its options"
        )
    return f"the conversion failed on the server: {detail}. {check}, then {again}"


def _inputs_not_downloaded(job: RemoteJob) -> list[str] | None:
    """The inputs the server could not download (input error 404, api-contract §5.1), each by
    its URL (or file name) where the job says which; None when there is no such error."""
    if not any(e.source == "input" and e.code == 404 for e in job.errors):
        return None
    by_id = {i.id: i for i in job.inputs if i.id}
    found: list[str] = []
    for error in job.errors:
        inp = by_id.get(error.id_source) if error.source == "input" and error.code == 404 else None
        if inp is None:
            continue
        # a URL's password is a secret: never in a sidecar
        name = (without_password(inp.source) if inp.type == "remote" and inp.source else "") or (
            inp.filename
        )
        if len(name) > _NAME_CHARS:
            name = name[: _NAME_CHARS - 1] + "…"
        if name and name not in found:
            found.append(name)
    return found


_NAME_CHARS = 200  # a URL in an error, at most (it comes from the server)


#: A job failure that is about what was asked (an unknown target, a category that does not fit)
#: rather than about the input.
_ABOUT_THE_CONVERSION = re.compile(r"\b(?:target|category)\b", re.IGNORECASE)


def output_problem(status: str) -> str | None:
    """Plain words for an output that cannot be downloaded, or None when it can."""
    s = status.strip().lower()
    if s in ("", "enabled"):
        return None
    if s == "expired":
        return (
            "the output has expired on the server (outputs are kept for 24 hours): "
            "retry the ticket to convert again"
        )
    if s == "overuse":
        return (
            "the output was downloaded too many times and the server no longer serves it: "
            "retry the ticket to convert again"
        )
    if s == "disabled":
        return "the output was deleted on the server: retry the ticket to convert again"
    return None  # unknown output status: try to download it
