"""Vocabulary shared by every layer: enums, ticket specs and tolerant API records.

Everything here is a frozen dataclass or a str Enum, and pure: no I/O, no clock. API records are
read with the loose-JSON rules of api-contract.md §8.4 (missing fields get defaults, numbers may
arrive as strings, ``[]`` may stand for ``{}``, non-object items are skipped, unknown fields kept in
``raw``), so parsing a server answer never raises.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class TicketKind(enum.StrEnum):
    CONVERSION = "conversion"
    ADOPTION = "adoption"


class InputKind(enum.StrEnum):
    LOCAL = "local"
    URL = "url"


class ConflictPolicy(enum.StrEnum):
    RENAME = "rename"
    OVERWRITE = "overwrite"
    SKIP = "skip"
    FAIL = "fail"


class Encoding(enum.StrEnum):
    BINARY = "binary"
    BASE64 = "base64"


class VerifyMode(enum.StrEnum):
    REQUIRED = "required"
    IF_PRESENT = "if-present"


class Phase(enum.StrEnum):
    """Where a ticket is. ``waiting`` is not a phase: it is a phase plus a ``wait_until``.

    A terminal ticket whose file has not been renamed yet (``filed`` false in the store) still has
    that one step to do; the store keeps that flag beside the phase.
    """

    PENDING = "pending"  # parsed and recorded, nothing sent yet
    CREATING = "creating"  # POST /jobs intended (idempotency key recorded)
    UPLOADING = "uploading"  # job exists; inputs being sent
    STARTING = "starting"  # PATCH process:true intended
    PROCESSING = "processing"  # started (or adopted); polling
    DOWNLOADING = "downloading"  # completed; outputs being fetched
    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (Phase.DONE, Phase.FAILED, Phase.CANCELED)


TERMINAL_JOB_CODES = frozenset({"completed", "failed", "canceled"})


# --------------------------------------------------------------------------- tickets


@dataclass(frozen=True)
class InputSpec:
    kind: InputKind
    value: str  # as written in the ticket: a relative path or an http(s) URL
    path: Path | None = None  # LOCAL only: resolved absolute path, checked inside the root
    # Per-input settings (the ticket's mapping form of an input). ``engine``, ``options`` and
    # ``parameters`` go into a URL input's ``POST /jobs/{id}/input`` body; ``filename`` names the
    # input on the server (the upload's part name for a file, the remote input's ``filename``).
    engine: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    parameters: Mapping[str, Any] = field(default_factory=dict)
    filename: str | None = None

    def upload_name(self) -> str:
        """The file name an uploaded LOCAL input carries: ``filename`` or the file's own name."""
        if self.filename:
            return self.filename
        return self.path.name if self.path is not None else Path(self.value).name

    def remote_body(self) -> dict[str, Any]:
        """The ``POST /jobs/{id}/input`` body of a URL input."""
        body: dict[str, Any] = {"type": "remote", "source": self.value}
        if self.engine:
            body["engine"] = self.engine
        if self.options:
            body["options"] = dict(self.options)
        if self.parameters:
            body["parameters"] = dict(self.parameters)
        if self.filename:
            body["filename"] = self.filename
        return body

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": str(self.kind),
            "value": self.value,
            "path": str(self.path) if self.path else None,
        }
        # Only what is set: a spec stored before these keys existed reads back the same.
        if self.engine:
            d["engine"] = self.engine
        if self.options:
            d["options"] = dict(self.options)
        if self.parameters:
            d["parameters"] = dict(self.parameters)
        if self.filename:
            d["filename"] = self.filename
        return d

    @classmethod
    def from_json(cls, i: Mapping[str, Any]) -> InputSpec:
        return cls(
            InputKind(i["kind"]),
            i["value"],
            Path(i["path"]) if i["path"] else None,
            engine=i.get("engine"),
            options=i.get("options") or {},
            parameters=i.get("parameters") or {},
            filename=i.get("filename"),
        )


@dataclass(frozen=True)
class ConversionSpec:
    target: str
    category: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_api(self) -> dict[str, Any]:
        d: dict[str, Any] = {"target": self.target}
        if self.category:
            d["category"] = self.category
        if self.options:
            d["options"] = dict(self.options)
        return d


@dataclass(frozen=True)
class OutputOptions:
    name: str | None = None  # template such as "{stem}{suffix}.{ext}"; None = server's filename
    on_conflict: ConflictPolicy = ConflictPolicy.RENAME


@dataclass(frozen=True)
class DownloadOptions:
    encoding: Encoding = Encoding.BINARY
    password: str | None = field(default=None, repr=False)
    verify: VerifyMode = VerifyMode.IF_PRESENT


@dataclass(frozen=True)
class TicketSpec:
    kind: TicketKind
    inputs: tuple[InputSpec, ...] = ()
    conversions: tuple[ConversionSpec, ...] = ()
    job_id: str | None = None  # ADOPTION only
    job_token: str | None = field(default=None, repr=False)  # ADOPTION only
    output: OutputOptions = OutputOptions()
    download: DownloadOptions = DownloadOptions()
    # The service POSTs the job to ``callback`` when it ends (every status with
    # ``notify_status``); the agent itself still polls.
    callback: str | None = None
    notify_status: bool = False

    def job_settings(self) -> dict[str, Any]:
        """Job-level keys for ``POST /jobs`` beside ``conversion`` (empty when none are set)."""
        settings: dict[str, Any] = {}
        if self.callback:
            settings["callback"] = self.callback
            if self.notify_status:
                settings["notify_status"] = True
        return settings

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form for the state database (secrets included: the db is private)."""
        d = self._json()
        if self.callback:  # only when set: a spec stored before reads back the same
            d["callback"] = self.callback
            d["notify_status"] = self.notify_status
        return d

    def _json(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "inputs": [i.to_json() for i in self.inputs],
            "conversions": [
                {"target": c.target, "category": c.category, "options": dict(c.options)}
                for c in self.conversions
            ],
            "job_id": self.job_id,
            "job_token": self.job_token,
            "output": {"name": self.output.name, "on_conflict": str(self.output.on_conflict)},
            "download": {
                "encoding": str(self.download.encoding),
                "password": self.download.password,
                "verify": str(self.download.verify),
            },
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TicketSpec:
        out, dl = d.get("output") or {}, d.get("download") or {}
        return cls(
            kind=TicketKind(d["kind"]),
            inputs=tuple(InputSpec.from_json(i) for i in d.get("inputs") or ()),
            conversions=tuple(
                ConversionSpec(c["target"], c.get("category"), c.get("options") or {})
                for c in d.get("conversions") or ()
            ),
            job_id=d.get("job_id"),
            job_token=d.get("job_token"),
            output=OutputOptions(out.get("name"), ConflictPolicy(out.get("on_conflict", "rename"))),
            download=DownloadOptions(
                Encoding(dl.get("encoding", "binary")),
                dl.get("password"),
                VerifyMode(dl.get("verify", "if-present")),
            ),
            callback=d.get("callback"),
            notify_status=bool(d.get("notify_status", False)),
        )


# --------------------------------------------------------------------------- API records


def _as_dict(v: Any) -> dict[str, Any]:
    if isinstance(v, dict):
        return v
    return {}  # [] where an object is expected, or anything else


def _as_list(v: Any) -> list[Any]:
    if isinstance(v, list):
        return v
    if isinstance(v, dict):
        return list(v.values())
    return []


def _as_str(v: Any) -> str:
    if v is None or isinstance(v, bool):
        return ""
    if isinstance(v, str):
        # JSON may carry lone surrogates ("\ud800"), which no file system, database or log can
        # take as UTF-8: they become "?" here, where the server's text enters.
        return v.encode("utf-8", "replace").decode("utf-8") if _has_surrogate(v) else v
    if isinstance(v, (int, float)):
        return str(v)
    return ""


def _has_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _as_int(v: Any) -> int | None:
    """A whole number from loose JSON, or None; never outside SQLite's 64-bit integers."""
    if isinstance(v, bool) or v is None:
        return None
    n: int | None = None
    if isinstance(v, int):
        n = v
    elif isinstance(v, float):
        n = int(v) if v == v and abs(v) < 2**63 else None
    elif isinstance(v, str):
        try:
            n = int(float(v.strip()))
        except (ValueError, OverflowError):
            return None
    return n if n is not None and -(2**63) <= n < 2**63 else None


@dataclass(frozen=True)
class JobMessage:
    source: str
    code: int | None
    message: str
    id_source: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobMessage:
        return cls(
            source=_as_str(d.get("source")),
            code=_as_int(d.get("code")),
            message=_as_str(d.get("message")),
            id_source=_as_str(d.get("id_source", d.get("idSource"))),
        )


@dataclass(frozen=True)
class RemoteOutput:
    id: str
    uri: str
    filename: str
    size: int | None
    status: str
    checksum: str
    content_type: str
    downloads_counter: int | None
    created_at: str

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RemoteOutput:
        return cls(
            id=_as_str(d.get("id")),
            uri=_as_str(d.get("uri")),
            filename=_as_str(d.get("filename")),
            size=_as_int(d.get("size")),
            status=_as_str(d.get("status")) or "enabled",
            checksum=_as_str(d.get("checksum")).strip().lower(),
            content_type=_as_str(d.get("content_type")),
            downloads_counter=_as_int(d.get("downloads_counter")),
            created_at=_as_str(d.get("created_at")),
        )


@dataclass(frozen=True)
class RemoteInput:
    id: str
    type: str
    source: str
    filename: str
    size: int | None
    status: str

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RemoteInput:
        return cls(
            id=_as_str(d.get("id")),
            type=_as_str(d.get("type")),
            source=_as_str(d.get("source")),
            filename=_as_str(d.get("filename")),
            size=_as_int(d.get("size")),
            status=_as_str(d.get("status")),
        )


@dataclass(frozen=True)
class RemoteJob:
    id: str
    token: str = field(default="", repr=False)
    server: str = ""
    status_code: str = ""
    status_info: str = ""
    errors: tuple[JobMessage, ...] = ()
    warnings: tuple[JobMessage, ...] = ()
    inputs: tuple[RemoteInput, ...] = ()
    outputs: tuple[RemoteOutput, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def terminal(self) -> bool:
        return self.status_code in TERMINAL_JOB_CODES

    @classmethod
    def from_dict(cls, d: Any) -> RemoteJob:
        d = _as_dict(d)
        status = d.get("status")
        if isinstance(status, Mapping):
            code, info = _as_str(status.get("code")), _as_str(status.get("info"))
        else:
            code, info = _as_str(status), ""
        return cls(
            id=_as_str(d.get("id")),
            token=_as_str(d.get("token")),
            server=_as_str(d.get("server")).rstrip("/"),
            status_code=code,
            status_info=info,
            errors=tuple(
                JobMessage.from_dict(e) for e in _as_list(d.get("errors")) if isinstance(e, dict)
            ),
            warnings=tuple(
                JobMessage.from_dict(e) for e in _as_list(d.get("warnings")) if isinstance(e, dict)
            ),
            inputs=tuple(
                RemoteInput.from_dict(i) for i in _as_list(d.get("input")) if isinstance(i, dict)
            ),
            outputs=tuple(
                RemoteOutput.from_dict(o) for o in _as_list(d.get("output")) if isinstance(o, dict)
            ),
            raw=d,
        )
