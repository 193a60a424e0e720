"""What the agent writes beside a ticket other than outputs: the status sidecar and the filing
of the ticket itself (``NAME.job.done`` / ``NAME.job.failed``).

Every write is atomic (hidden temp file in the same folder → fsync → ``os.replace`` → fsync of the
folder; the replace retried for a moment while Windows says another program has the file open),
and every operation is idempotent so the scheduler can replay it after a crash. It must
not write outputs (that is ``downloader``) and never puts a secret in a sidecar: callers hand it a
public view.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from agent import platform
from agent.errors import AgentError, from_os_error
from agent.platform import O_BINARY, O_NOFOLLOW

MAX_TICKET_READ = 64 * 1024 + 1  # one byte more than a ticket may have, to detect oversize


def sidecar_path(ticket: Path) -> Path:
    name = ticket.name[: -len(".job")] if ticket.name.endswith(".job") else ticket.name
    return ticket.with_name(f"{name}.status.yaml")


def read_ticket(path: Path) -> bytes:
    platform.check_in_use(path)  # the stand-in for Windows' sharing violation (tests)
    with open(path, "rb") as f:
        return f.read(MAX_TICKET_READ)


def fsync_dir(folder: Path) -> None:
    # Every error ignored: some filesystems (SMB, FUSE) refuse fsync on directories.
    platform.fsync_dir(folder)


def temp_path(path: Path) -> Path:
    """The hidden temp file ``atomic_write`` uses for ``path``: one fixed name per target, so a
    temp left by a killed process is reused (and so removed) by the next write of that file."""
    return path.with_name(f".{path.name}.tmp")


def _write_new(tmp: Path, data: bytes, *, durable: bool = True) -> None:
    """Create ``tmp`` (never through a symlink), write ``data`` and fsync it (unless not
    ``durable``)."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_BINARY, 0o644)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, sync_dir: bool = True, durable: bool = True) -> None:
    """Temp file → fsync → ``os.replace``, then fsync the folder (``sync_dir=False`` leaves that
    to a caller writing many files into one folder, which then calls ``fsync_dir`` once).

    ``durable=False`` skips the file's fsync too: the replace stays atomic for every reader and
    for a killed process (the page cache survives it), but a power cut may leave the file empty
    or old. Only for files rewritten later anyway (a sidecar's progress views)."""
    tmp = temp_path(path)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # left by a process killed mid-write (or planted): never followed
        _write_new(tmp, data, durable=durable)
        platform.replace(tmp, path)  # retried while another program has the sidecar open
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise from_os_error(exc, path) from exc
    if sync_dir:
        fsync_dir(path.parent)


def create_exclusive(path: Path, data: bytes) -> bool:
    """Write a new file at ``path`` atomically, never replacing one that exists (False then).

    The data goes to ``temp_path(path)`` first and is hard-linked into place; the temp is removed
    whatever happens, and one left by a killed process is removed by ``remove_temp``."""
    tmp = temp_path(path)
    try:
        remove_temp(path)
        _write_new(tmp, data)
        try:
            os.link(tmp, path, follow_symlinks=False)
        except FileExistsError:
            return False
        finally:
            remove_temp(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            remove_temp(path)
        raise from_os_error(exc, path) from exc
    fsync_dir(path.parent)
    return True


def remove_temp(path: Path) -> None:
    """Remove the temp file a killed process may have left for ``path``."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp_path(path))


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


# libyaml's emitter when PyYAML has it (about ten times faster, the same text).
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def write_sidecar(
    ticket: Path, view: Mapping[str, Any], *, sync_dir: bool = True, durable: bool = True
) -> None:
    """Write ``NAME.status.yaml`` from the public view of a ticket (see ``sidecar_view``);
    ``sync_dir`` and ``durable`` as for ``atomic_write``."""
    text = yaml.dump(dict(view), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    atomic_write(sidecar_path(ticket), text.encode(), sync_dir=sync_dir, durable=durable)


def note_sidecar(ticket: Path, note: str | None) -> None:
    """Add (or, with None, remove) a ``waiting_for`` line in a ticket's sidecar as it stands,
    without changing what it says of the ticket: for a wait the state cannot record (the state
    database away). A missing or unreadable sidecar is left alone."""
    path = sidecar_path(ticket)
    try:
        view = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return
    if not isinstance(view, dict) or view.get("waiting_for") == note:
        return
    if note is None:
        view.pop("waiting_for", None)
    else:
        view["waiting_for"] = note
    with contextlib.suppress(AgentError, OSError):
        write_sidecar(ticket, view, sync_dir=False, durable=False)


def sidecar_view(ticket: Mapping[str, Any], outputs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    phase = ticket["phase"]
    shown = "waiting" if ticket.get("waiting") else phase
    view: dict[str, Any] = {
        "format": 1,
        "phase": shown,
        "step": phase,
        "ticket": os.path.basename(ticket["ticket"]),
        "job_id": ticket.get("job_id"),
        "server_status": ticket.get("server_status"),
        "server_info": ticket.get("server_info") or None,
        "outputs": outputs,
        "error": None,
        "next_attempt_at": _iso(ticket.get("next_attempt_at")) if ticket.get("waiting") else None,
        "created_at": _iso(ticket.get("created_at")),
        "updated_at": _iso(ticket.get("updated_at")),
        "finished_at": _iso(ticket.get("finished_at")),
    }
    err = ticket.get("error")
    if err:
        view["error"] = err.get("message")
        view["error_title"] = err.get("title")
    return view


def file_ticket(
    ticket: Path, outcome: str, on_success: str, *, sync_dir: bool = True
) -> Path | None:
    """Move the ticket out of the inbox: ``.job.done``/``.job.failed``, kept, or deleted.

    Idempotent: when the ticket is already gone (an earlier run filed it before it was killed),
    nothing happens. Returns where the ticket now is, or None. ``sync_dir=False`` leaves the
    folder's fsync to a caller filing many tickets of one folder (it calls ``fsync_dir`` once).
    """
    if outcome == "done" and on_success == "keep":
        return ticket if ticket.exists() else None
    if outcome == "done" and on_success == "delete":
        try:
            ticket.unlink()
        except FileNotFoundError as exc:
            if not ticket.parent.is_dir():
                raise from_os_error(exc, ticket.parent) from exc
            return None
        except OSError as exc:
            raise from_os_error(exc, ticket) from exc
        if sync_dir:
            fsync_dir(ticket.parent)
        return None
    dest = ticket.with_name(f"{ticket.name}.{outcome}")
    try:
        platform.replace(ticket, dest)  # retried while another program has the ticket open
    except FileNotFoundError as exc:
        if not ticket.parent.is_dir():  # the folder is gone (unmounted), not the ticket
            raise from_os_error(exc, ticket.parent) from exc
        return dest if dest.exists() else None
    except OSError as exc:
        raise from_os_error(exc, ticket) from exc
    if sync_dir:
        fsync_dir(ticket.parent)
    return dest


def remove_sidecar(ticket: Path) -> None:
    for p in (sidecar_path(ticket), temp_path(sidecar_path(ticket))):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
