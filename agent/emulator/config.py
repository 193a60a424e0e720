"""Emulator settings and fault specifications: plain, validated values, no I/O.

`EmulatorConfig` is what `build_app` and the CLI share. `FaultSpec` describes one injected fault;
`parse_fault` turns the CLI syntax `ROUTE:KIND[=PARAM][:RATE[:COUNT]]` into one. Nothing here
knows about aiohttp.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

#: Route names a fault can target. `any` matches every API, upload and download route; `job`
#: is the processing step (drawn once per job when it finishes converting).
ROUTES = (
    "create",
    "list",
    "get",
    "start",
    "delete",
    "input",
    "output",
    "upload",
    "download",
    "meta",
    "job",
    "any",
)

#: Fault kinds. Request-level kinds act on one HTTP exchange; job-level kinds act on a job when it
#: finishes processing (use route `job`, or `any`).
REQUEST_KINDS = (
    "error",  # answer PARAM (default 500) with {"message"} before the handler runs
    "error_after",  # run the handler (state changes), then answer PARAM (default 502)
    "html",  # answer 200 with an HTML maintenance page instead of JSON, before the handler
    "drop",  # close the connection before any response; the handler does not run
    "drop_after",  # run the handler (state changes), then close without a response
    "truncate",  # send the headers and about half the body, then close
    "slow",  # send the body in small chunks spread over PARAM seconds (default 2)
    "corrupt",  # flip bytes of a download; size, checksum and ETag stay the original's
    "unknown_status",  # job documents in this response show status code `something_new`
    "expire",  # downloads: the output expires now (status `expired`) and is refused
    "overuse",  # downloads: the output's counter jumps to the limit (`overuse`), refused
)
JOB_KINDS = (
    "fail",  # the job fails with a conversion error (code 6005) in errors[]
    "no_outputs",  # the job completes with output: []
    "hostile_names",  # output filenames are hostile (traversal, absolute, control chars, …)
)
KINDS = REQUEST_KINDS + JOB_KINDS

PatchStarted = Literal["noop", "conflict"]


class ConfigError(ValueError):
    """A setting or fault spec is invalid; the message names it."""


@dataclass(frozen=True)
class FaultSpec:
    """One injected fault: on `route`, do `kind` with probability `rate`, at most `count` times."""

    route: str
    kind: str
    rate: float = 1.0
    count: int | None = None
    param: float | None = None

    def __post_init__(self) -> None:
        if self.route not in ROUTES:
            raise ConfigError(f"unknown fault route {self.route!r}; one of {', '.join(ROUTES)}")
        if self.kind not in KINDS:
            raise ConfigError(f"unknown fault kind {self.kind!r}; one of {', '.join(KINDS)}")
        if not (0.0 <= self.rate <= 1.0) or math.isnan(self.rate):
            raise ConfigError(f"fault rate must be within 0..1, got {self.rate}")
        if self.count is not None and self.count < 0:
            raise ConfigError(f"fault count must be >= 0, got {self.count}")
        if self.param is not None and (math.isnan(self.param) or self.param < 0):
            raise ConfigError(f"fault parameter must be >= 0, got {self.param}")

    def to_json(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "kind": self.kind,
            "rate": self.rate,
            "count": self.count,
            "param": self.param,
        }

    @classmethod
    def from_json(cls, raw: Any) -> FaultSpec:
        """Build from a JSON object `{route, kind, rate?, count?, param?}`; raises ConfigError."""
        if not isinstance(raw, Mapping):
            raise ConfigError("a fault must be a JSON object")
        route, kind = raw.get("route", "any"), raw.get("kind")
        if not isinstance(route, str) or not isinstance(kind, str):
            raise ConfigError("fault `route` and `kind` must be strings")
        rate = _number(raw.get("rate", 1.0), "rate")
        count = raw.get("count")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise ConfigError("fault `count` must be an integer or null")
        param = raw.get("param")
        return cls(
            route=route,
            kind=kind,
            rate=1.0 if rate is None else rate,
            count=count,
            param=_number(param, "param"),
        )


def _number(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"fault `{name}` must be a number")
    return float(value)


def parse_fault(text: str) -> FaultSpec:
    """Parse `ROUTE:KIND[=PARAM][:RATE[:COUNT]]`, e.g. `download:truncate`, `create:error=503:0.5`,
    `get:unknown_status:1:3`, `job:fail`."""
    parts = text.split(":")
    if not 2 <= len(parts) <= 4:
        raise ConfigError(f"fault {text!r}: expected ROUTE:KIND[=PARAM][:RATE[:COUNT]]")
    route, kind_part = parts[0].strip(), parts[1].strip()
    kind, _, param_text = kind_part.partition("=")
    try:
        param = float(param_text) if param_text else None
        rate = float(parts[2]) if len(parts) > 2 and parts[2] else 1.0
        count = int(parts[3]) if len(parts) > 3 and parts[3] else None
    except ValueError as exc:
        raise ConfigError(f"fault {text!r}: {exc}") from exc
    return FaultSpec(route=route, kind=kind, rate=rate, count=count, param=param)


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything the emulator can be told at startup. All limits are off by default."""

    #: The one key accepted; None accepts any non-empty key.
    api_key: str | None = field(default=None, repr=False)
    #: Wall-clock seconds a started job spends queued + processing (half each); 0 = instant.
    processing_seconds: float = 0.0
    #: Seeds every random choice (fault draws, hostile names), so runs are reproducible.
    seed: int = 0
    #: How fast the emulated clock runs (timestamps, 24 h expiry). 3600 = one hour per second.
    clock_speed: float = 1.0
    #: Emulated clock start (naive UTC); None = the real time at startup.
    start_time: datetime | None = None
    #: Credit budget; each job costs 1 credit when it starts. None = unlimited. 0 left → 402.
    credits: int | None = None
    #: Most jobs downloading/queued/processing at once; creating or starting past it → 429.
    max_concurrent_jobs: int | None = None
    #: Seconds sent as `Retry-After` with every 429 (None = no header).
    retry_after: float | None = None
    #: Requests per one-second window before 429 with `Retry-After` (the rest of the window);
    #: None = no limit (`ratelimit.py`).
    rate_limit: int | None = None
    #: Treat every POST /jobs as new even when it carries a known Idempotency-Key.
    ignore_idempotency: bool = False
    #: Ignore `Range`/`If-Range` on downloads (always 200, `Accept-Ranges: none`).
    ignore_range: bool = False
    #: Downloads per output before it reads `overuse` and further downloads are refused.
    download_limit: int = 10
    #: Hours an output stays downloadable after it is created (emulated clock).
    output_ttl_hours: float = 24.0
    #: HTTP statuses of refused downloads.
    expired_status: int = 410
    overuse_status: int = 403
    password_status: int = 403
    #: PATCH {"process": true} on a job that already started: 200 no-op, or 409.
    patch_started: PatchStarted = "noop"
    #: The contract's input size limit: an upload above it, or a remote input whose declared
    #: size (Content-Length) is above it, is refused with 402 (as the API documents for inputs);
    #: a remote input found bigger only while it is fetched fails the job (input error 404).
    max_input_bytes: int = 256 * 1024 * 1024
    #: Inputs per job the contract allows: one more upload or `POST /jobs/{id}/input` gets 402
    #: ("the number of inputs … exceeded and the file(s) discarded", as OA documents); inputs
    #: past it given inline in `POST /jobs` are discarded and fail the job (input code 402).
    max_inputs: int = 20
    #: Timeout for fetching a remote input.
    remote_timeout: float = 30.0
    #: Faults active from startup.
    faults: tuple[FaultSpec, ...] = ()
    #: Webhooks: the secret that signs each callback (`X-Oc-Signature` = hex HMAC-SHA256 of the
    #: raw body, the SDKs' scheme); None = unsigned, as the webhooks guide says the API sends.
    webhook_secret: str | None = field(default=None, repr=False)
    #: Retries of a callback answered 5xx (or not at all); 4xx is never retried.
    webhook_retries: int = 10
    #: Seconds before the first retry; doubled per retry, at most 10 s.
    webhook_retry_delay: float = 0.5
    #: When > 0, every output a conversion produces is replaced by this many bytes of a fixed
    #: pseudo-random pattern (same for every job), so a benchmark can download a large output
    #: without uploading one. 0 = real conversion outputs.
    synthetic_output_bytes: int = 0

    def __post_init__(self) -> None:
        if self.api_key is not None and not self.api_key:
            raise ConfigError("api_key must be non-empty or None")
        if self.processing_seconds < 0 or self.clock_speed <= 0:
            raise ConfigError("processing_seconds must be >= 0 and clock_speed > 0")
        for name in ("credits", "max_concurrent_jobs"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be >= 0")
        if self.rate_limit is not None and self.rate_limit < 1:
            raise ConfigError("rate_limit must be >= 1")
        if self.webhook_retries < 0 or not self.webhook_retry_delay >= 0:
            raise ConfigError("webhook_retries and webhook_retry_delay must be >= 0")
        if self.max_input_bytes < 1:
            raise ConfigError("max_input_bytes must be >= 1")
        if self.max_inputs < 1:
            raise ConfigError("max_inputs must be >= 1")
        if self.download_limit < 1:
            raise ConfigError("download_limit must be >= 1")
        if self.synthetic_output_bytes < 0:
            raise ConfigError("synthetic_output_bytes must be >= 0")
        if self.patch_started not in ("noop", "conflict"):
            raise ConfigError("patch_started must be 'noop' or 'conflict'")
