"""The agent's exception tree, and the only place errors get their user-facing words.

    AgentError                  title + message a person can act on, and a kind
    ├── RetryableError          transient: wait (retry_after) and try again; never fails a ticket
    │   ├── ApiUnavailable      network down, 5xx, 3xx/HTML answers, dropped connections
    │   ├── RateLimited         429 (retry_after from the server when it sent one)
    │   ├── QuotaExhausted      402: intake stops, running tickets go on
    │   └── LocalResourceError  disk full, permission denied, folder gone: waits for the user's fix
    ├── NeedsUserError          the whole agent pauses until a person acts
    │   ├── AuthError           401/403: key missing or refused
    │   └── ConfigError         invalid configuration (names the key and line)
    └── PermanentError          this ticket fails; others go on
        ├── TicketError         a broken ticket (names the key and line)
        ├── ApiRejected         400/422/404/409 with the API's message
        │   └── InputRefused    402 on an input (upload or remote): over the contract's limits
        ├── JobFailed           the remote job failed or was canceled (carries errors[])
        └── OutputUnavailable   expired / disabled / overuse / no outputs / checksum never matched

Foreign exceptions (aiohttp, OSError, YAML) are converted where they enter, with ``raise … from``.
Nothing here may contain a secret: messages are built from what the API said and from paths,
never from request bodies or headers.
"""

from __future__ import annotations

import enum
import errno
from urllib.parse import urlsplit, urlunsplit

from agent.platform import file_in_use, maybe_in_use


class ErrorKind(enum.StrEnum):
    RETRYABLE = "retryable"
    NEEDS_USER = "needs_user"
    PERMANENT = "permanent"


class AgentError(Exception):
    """Base: ``title`` is a few words, ``message`` says what happened and what to do."""

    kind: ErrorKind = ErrorKind.PERMANENT
    default_title = "error"

    def __init__(self, message: str, *, title: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.title = title or self.default_title

    def to_dict(self) -> dict[str, object]:
        return {"kind": str(self.kind), "title": self.title, "message": self.message}


class RetryableError(AgentError):
    kind = ErrorKind.RETRYABLE
    default_title = "temporary problem"

    def __init__(
        self, message: str, *, title: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, title=title)
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, object]:
        d = super().to_dict()
        if self.retry_after is not None:
            d["retry_after"] = self.retry_after
        return d


class ApiUnavailable(RetryableError):
    default_title = "API unreachable"


class RateLimited(RetryableError):
    default_title = "rate limited"


class QuotaExhausted(RetryableError):
    default_title = "quota used up"


class LocalResourceError(RetryableError):
    default_title = "local problem"


class NeedsUserError(AgentError):
    kind = ErrorKind.NEEDS_USER
    default_title = "needs attention"


class AuthError(NeedsUserError):
    default_title = "API key refused"


class ConfigError(NeedsUserError):
    default_title = "invalid configuration"

    def __init__(self, message: str, *, key: str | None = None, line: int | None = None) -> None:
        where = _where(key, line)
        super().__init__(f"{where}{message}" if where else message)
        self.key = key
        self.line = line


class PermanentError(AgentError):
    kind = ErrorKind.PERMANENT
    default_title = "failed"


class TicketError(PermanentError):
    """A ticket that cannot be used. ``final``: no bytes appended to it could make it valid (too
    big, binary, an alias), so it is not worth re-reading while it may still be being written."""

    default_title = "invalid ticket"

    def __init__(
        self, message: str, *, key: str | None = None, line: int | None = None, final: bool = False
    ) -> None:
        where = _where(key, line)
        super().__init__(f"{where}{message}" if where else message)
        self.key = key
        self.line = line
        self.final = final


class ApiRejected(PermanentError):
    default_title = "rejected by the API"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class InputRefused(ApiRejected):
    """A 402 on one input (its upload or its remote-input request): the input is larger than the
    contract allows (or the job has too many inputs). Only this ticket fails; unlike a 402 on
    ``POST /jobs`` it says nothing about the account's credits, so intake goes on."""

    default_title = "input too large"


class JobFailed(PermanentError):
    default_title = "conversion failed"


class OutputUnavailable(PermanentError):
    default_title = "output unavailable"


def _where(key: str | None, line: int | None) -> str:
    if key and not key.isprintable():  # a key from a ticket may hold control characters
        key = key.encode("unicode_escape").decode("ascii")
    if key and line:
        return f"{key} (line {line}): "
    if key:
        return f"{key}: "
    if line:
        return f"line {line}: "
    return ""


def from_os_error(exc: OSError, path: object) -> AgentError:
    """Turn an OSError touching ``path`` into an error that says what to do."""
    code = exc.errno
    if file_in_use(exc):
        return LocalResourceError(
            f"{path} is open in another program, which keeps others from using it: close it "
            "there and the ticket resumes by itself",
            title="file in use",
        )
    if code in (errno.ENOSPC, errno.EDQUOT):
        return LocalResourceError(
            f"disk full on {path}: free some space and the ticket resumes by itself",
            title="disk full",
        )
    if code in (errno.EACCES, errno.EPERM) and maybe_in_use(exc):
        return LocalResourceError(
            f"permission denied on {path}, or another program has it open: give the agent "
            "write access or close it there, and the ticket resumes by itself",
            title="permission denied",
        )
    if code in (errno.EACCES, errno.EPERM):
        return LocalResourceError(
            f"permission denied on {path}: give the agent write access and it resumes by itself",
            title="permission denied",
        )
    if code == errno.EROFS:
        return LocalResourceError(
            f"{path} is on a read-only filesystem: make it writable and the ticket resumes",
            title="read-only folder",
        )
    if code in (errno.ENOENT, errno.ENOTDIR, errno.ESTALE, errno.ENODEV, errno.EIO):
        return LocalResourceError(
            f"{path} is not reachable ({exc.strerror}): if it is a network share, mount it again",
            title="folder unavailable",
        )
    if code == errno.EFBIG:
        return LocalResourceError(
            f"file size limit reached writing {path}: raise the limit and the ticket resumes",
            title="file too large",
        )
    return LocalResourceError(f"{path}: {exc.strerror or exc}", title="file error")


def without_password(url: str, unparsable: str = "<an unparsable URL>") -> str:
    """``url`` with its password (a secret) replaced by ``***``, for messages and views."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return unparsable
    if password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
