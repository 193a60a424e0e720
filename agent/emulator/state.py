"""The emulator's in-memory world: jobs, inputs, outputs, the emulated clock and the records
tests read back (uploads, downloads, starts, idempotency keys). No HTTP here.

JSON rendering of jobs follows the documented shapes (api-contract §2.3, §4): timestamps have no
timezone, `download_passwords` and credentials are never echoed, `callback` is `""` when unset.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import string
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from agent.emulator.config import EmulatorConfig, FaultSpec
from agent.emulator.faults import FaultPlan

ACTIVE = ("downloading", "queued", "processing")
TERMINAL = ("completed", "failed", "canceled")
STATUS_INFO = {
    "incomplete": "The job is not ready: inputs are missing or it was created with process false.",
    "ready": "The job is ready but not marked for processing.",
    "pending": "The job is waiting in the queue to be downloaded.",
    "downloading": "The input files are being downloaded.",
    "queued": "The job is waiting in the queue to be processed.",
    "processing": "The files are being converted.",
    "completed": "The file has been successfully converted.",
    "failed": "The file could not be converted. See errors for details.",
    "canceled": "The job was canceled.",
}
UNKNOWN_STATUS = "something_new"
_TOKEN_ALPHABET = string.ascii_lowercase + string.digits
EPOCH = datetime(2000, 1, 1)


def fmt_time(moment: datetime) -> str:
    """The documented timestamp format: `2017-08-15T17:20:55`, no timezone."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


class EmuClock:
    """Emulated UTC wall clock: real elapsed time × speed, plus manual advances."""

    def __init__(self, speed: float, start: datetime | None) -> None:
        self._start = start or datetime.now(UTC).replace(microsecond=0, tzinfo=None)
        self._mono0 = time.monotonic()
        self._speed = speed
        self._offset = 0.0

    @property
    def speed(self) -> float:
        return self._speed

    def now(self) -> datetime:
        elapsed = (time.monotonic() - self._mono0) * self._speed + self._offset
        return self._start + timedelta(seconds=elapsed)

    def advance(self, seconds: float) -> None:
        self._offset += seconds

    def set_speed(self, speed: float) -> None:
        now = self.now()
        self._start, self._mono0, self._offset, self._speed = now, time.monotonic(), 0.0, speed


@dataclass
class Conversion:
    id: str
    target: str
    category: str
    options: dict[str, Any]
    metadata: dict[str, Any]
    output_target: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        targets = [
            {k: v for k, v in t.items() if k != "credentials"} | {"credentials": {}}
            for t in self.output_target
        ]
        return {
            "id": self.id,
            "target": self.target,
            "category": self.category,
            "options": dict(self.options),
            "metadata": dict(self.metadata),
            "output_target": targets,
        }


@dataclass
class InputFile:
    id: str
    type: str
    source: str
    status: str
    created_at: datetime
    modified_at: datetime
    filename: str = ""
    engine: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    content_type: str = ""
    data: bytes | None = None
    error: tuple[int, str] | None = None
    #: Upload requests that landed on this input (the first, and repeats with its upload uuid).
    uploads: int = 0

    def set_data(self, data: bytes, now: datetime) -> None:
        self.data, self.status, self.modified_at = data, "ready", now

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "source": self.source,
            "status": self.status,
            "filename": self.filename,
            "size": len(self.data) if self.data is not None else 0,
            "hash": "",
            "checksum": "",
            "content_type": self.content_type,
            "options": dict(self.options),
            "parameters": dict(self.parameters),
            "credentials": {},
            "metadata": dict(self.metadata),
            "created_at": fmt_time(self.created_at),
            "modified_at": fmt_time(self.modified_at),
        }
        if self.data is not None:
            body["hash"] = body["checksum"] = hashlib.md5(self.data).hexdigest()
        if self.engine is not None:
            body["engine"] = self.engine
        return body


@dataclass
class OutputFile:
    id: str
    job_id: str
    conversion_id: str
    input_ids: list[str]
    filename: str
    data: bytes
    content_type: str
    created_at: datetime
    downloads_counter: int = 0
    #: `enabled`, or a forced state: `disabled` (deleted), `expired`, `overuse`.
    forced_status: str = "enabled"
    #: The output's `metadata` (e.g. a comparison's figures).
    metadata: dict[str, Any] = field(default_factory=dict)
    #: (id of `data`, its md5): hashed once, not on every job document (outputs may be 1 GiB).
    _md5: tuple[int, str] | None = field(default=None, repr=False, compare=False)

    @property
    def checksum(self) -> str:
        if self._md5 is None or self._md5[0] != id(self.data):
            self._md5 = (id(self.data), hashlib.md5(self.data).hexdigest())
        return self._md5[1]

    def status(self, now: datetime, config: EmulatorConfig) -> str:
        if self.forced_status != "enabled":
            return self.forced_status
        if now >= self.created_at + timedelta(hours=config.output_ttl_hours):
            return "expired"
        if self.downloads_counter >= config.download_limit:
            return "overuse"
        return "enabled"

    def uri(self, server: str) -> str:
        name = quote(self.filename, safe="")
        if name in ("", ".", ".."):  # dot segments would be normalised away by clients
            name = "file"
        return f"{server}/download-file/{self.job_id}/{self.id}/{name}"

    def to_json(self, server: str, now: datetime, config: EmulatorConfig) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": {"conversion": self.conversion_id, "input": list(self.input_ids)},
            "uri": self.uri(server),
            "filename": self.filename,
            "size": len(self.data),
            "status": self.status(now, config),
            "content_type": self.content_type,
            "downloads_counter": self.downloads_counter,
            "checksum": self.checksum,
            "created_at": fmt_time(self.created_at),
            "metadata": dict(self.metadata),
        }


@dataclass
class Job:
    id: str
    token: str
    seq: int
    server_n: int
    created_at: datetime
    modified_at: datetime
    conversions: list[Conversion]
    process: bool = True
    fail_on_input_error: bool = True
    fail_on_conversion_error: bool = True
    callback: str = ""
    notify_status: bool = False
    download_passwords: list[str] = field(default_factory=list)
    limits: dict[str, Any] = field(default_factory=dict)
    status: str = "incomplete"
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    inputs: list[InputFile] = field(default_factory=list)
    outputs: list[OutputFile] = field(default_factory=list)
    spent: int = 0
    #: How many times the job really started (left `incomplete` for processing).
    starts: int = 0
    #: Every PATCH `{"process": true}` the handler saw, repeats and refused ones included.
    start_requests: int = 0
    #: The Idempotency-Key of the POST /jobs that created the job (None without one).
    idempotency_key: str | None = None
    #: Upload requests per upload uuid (or per filename when the request carried no uuid).
    upload_requests: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    #: `x-oc-upload-uuid` → input id, for upload de-duplication.
    upload_uuids: dict[str, str] = field(default_factory=dict)
    #: The origin the job was created through (callback bodies carry uris under it).
    origin: str = ""
    #: Told every status change (the webhook sender); set by the state when the job is made.
    on_status: Callable[[Job], None] | None = field(default=None, repr=False, compare=False)

    @property
    def started(self) -> bool:
        return self.status != "incomplete"

    def set_status(self, status: str, now: datetime) -> None:
        if status != self.status:
            self.status, self.modified_at = status, now
            self.history.append(
                {
                    "id": str(uuid.uuid4()),
                    "status": status,
                    "info": STATUS_INFO.get(status, ""),
                    "created_at": fmt_time(now),
                }
            )
            if self.on_status is not None:
                self.on_status(self)

    def server(self, origin: str) -> str:
        return f"{origin}/v2/dl/web{self.server_n}"

    def to_json(
        self, origin: str, now: datetime, config: EmulatorConfig, *, unknown_status: bool = False
    ) -> dict[str, Any]:
        server = self.server(origin)
        code = UNKNOWN_STATUS if unknown_status else self.status
        info = "Something the emulator made up." if unknown_status else STATUS_INFO[self.status]
        limits = {"job": {}, "input": {}, "output": {}} | dict(self.limits)
        return {
            "id": self.id,
            "token": self.token,
            "type": "job",
            "status": {"code": code, "info": info},
            "errors": [dict(e) for e in self.errors],
            "warnings": [dict(w) for w in self.warnings],
            "process": self.process,
            "fail_on_input_error": self.fail_on_input_error,
            "fail_on_conversion_error": self.fail_on_conversion_error,
            "conversion": [c.to_json() for c in self.conversions],
            "limits": limits,
            "input": [i.to_json() for i in self.inputs],
            "output": [o.to_json(server, now, config) for o in self.outputs],
            "callback": self.callback,
            "notify_status": self.notify_status,
            "server": server,
            "spent": self.spent,
            "created_at": fmt_time(self.created_at),
            "modified_at": fmt_time(self.modified_at),
        }


@dataclass
class UploadRecord:
    job_id: str
    input_id: str
    filename: str
    size: int
    uuid: str | None
    deduplicated: bool

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Preset:
    """A conversion preset (`/presets`); the account's own are `private`."""

    id: str
    name: str
    target: str
    category: str
    scope: str = "private"
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "target": self.target,
            "category": self.category,
            "scope": self.scope,
        }
        if self.scope == "private":
            row["options"] = dict(self.options)
        return row


@dataclass
class WebhookRecord:
    """One callback POST attempt: the job's status it reports, the answer or the failure."""

    job_id: str
    url: str
    job_status: str
    attempt: int
    http_status: int | None
    error: str | None
    signed: bool

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class DownloadRecord:
    job_id: str
    output_id: str
    status: int
    range: str | None
    encoding: str | None
    bytes: int
    counted: bool
    fault: str | None = None
    if_range: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RequestRecord:
    method: str
    path: str
    route: str
    status: int
    fault: str | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class EmulatorState:
    """Everything the emulator knows. Handlers mutate it; tests read it (or `/_emulator/state`)."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.clock = EmuClock(config.clock_speed, config.start_time)
        self.faults = FaultPlan(config.faults, config.seed)
        self.corrupt_rng = random.Random(f"{config.seed}:corrupt")
        self._synthetic: tuple[bytes, str] | None = None
        #: Test hook (Python only, not reset): called as (route, method, path, status) after a
        #: request's handler ran and before its answer is sent, e.g. to kill a client at the
        #: exact moment the server has acted on its request but the answer is not out yet.
        self.after_handler: Callable[[str, str, str, int], None] | None = None
        #: Told every job status change (the processor sends webhooks from it).
        self.status_listener: Callable[[Job], None] | None = None
        self.reset()

    def synthetic_output(self) -> tuple[bytes, str]:
        """The `synthetic_output_bytes` pattern and its md5, built once and shared by all jobs."""
        size = self.config.synthetic_output_bytes
        if self._synthetic is None or len(self._synthetic[0]) != size:
            block = random.Random(f"{self.config.seed}:synthetic").randbytes(1 << 20)
            data = (block * (size // len(block) + 1))[:size]
            self._synthetic = (data, hashlib.md5(data).hexdigest())
        return self._synthetic

    def reset(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.credits_remaining: int | None = self.config.credits
        self.create_requests = 0
        self.create_requests_without_key = 0
        self.idempotency: dict[str, str] = {}
        self.idempotency_counts: dict[str, int] = {}
        self.uploads: list[UploadRecord] = []
        self.downloads: list[DownloadRecord] = []
        self.requests: list[RequestRecord] = []
        self.internal_errors: list[str] = []
        self.webhooks: list[WebhookRecord] = []
        self.presets: dict[str, Preset] = {}
        self._seq = 0

    # -- jobs -------------------------------------------------------------------------------
    def new_job(self, conversions: list[Conversion]) -> Job:
        self._seq += 1
        now = self.clock.now()
        job = Job(
            id=str(uuid.uuid4()),
            token="".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(32)),
            seq=self._seq,
            server_n=1 + (self._seq % 9),
            created_at=now,
            modified_at=now,
            conversions=conversions,
            on_status=self._status_changed,
        )
        job.history.append(
            {
                "id": str(uuid.uuid4()),
                "status": "incomplete",
                "info": STATUS_INFO["incomplete"],
                "created_at": fmt_time(now),
            }
        )
        self.jobs[job.id] = job
        return job

    def _status_changed(self, job: Job) -> None:
        if self.status_listener is not None:
            self.status_listener(job)

    def active_jobs(self) -> int:
        return sum(1 for job in self.jobs.values() if job.status in ACTIVE)

    def find_output(self, job_id: str, output_id: str) -> tuple[Job, OutputFile] | None:
        job = self.jobs.get(job_id)
        if job is None:
            return None
        for output in job.outputs:
            if output.id == output_id:
                return job, output
        return None

    def iter_outputs(self) -> Iterator[OutputFile]:
        for job in self.jobs.values():
            yield from job.outputs

    def set_faults(self, faults: list[FaultSpec], *, replace: bool) -> None:
        self.faults.set(faults, replace=replace)

    # -- introspection ------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        now = self.clock.now()
        return {
            "now": fmt_time(now),
            "clock_speed": self.clock.speed,
            "credits_remaining": self.credits_remaining,
            "create_requests": self.create_requests,
            "jobs_created": len(self.jobs),
            "idempotency_keys": dict(self.idempotency_counts),
            "create_requests_by_key": dict(self.idempotency_counts),
            "create_requests_without_key": self.create_requests_without_key,
            "jobs": [
                {
                    "id": job.id,
                    "status": job.status,
                    "process": job.process,
                    "starts": job.starts,
                    "start_requests": job.start_requests,
                    "idempotency_key": job.idempotency_key,
                    "targets": [c.target for c in job.conversions],
                    "inputs": [
                        {
                            "id": i.id,
                            "type": i.type,
                            "status": i.status,
                            "filename": i.filename,
                            "uploads": i.uploads,
                        }
                        for i in job.inputs
                    ],
                    "upload_requests": dict(job.upload_requests),
                    "outputs": [
                        {
                            "id": o.id,
                            "filename": o.filename,
                            "size": len(o.data),
                            "checksum": o.checksum,
                            "downloads_counter": o.downloads_counter,
                            "status": o.status(now, self.config),
                        }
                        for o in job.outputs
                    ],
                }
                for job in self.jobs.values()
            ],
            "uploads": [u.to_json() for u in self.uploads],
            "downloads": [d.to_json() for d in self.downloads],
            "requests": [r.to_json() for r in self.requests],
            "faults": self.faults.to_json(),
            "webhooks": [w.to_json() for w in self.webhooks],
            "internal_errors": list(self.internal_errors),
        }
