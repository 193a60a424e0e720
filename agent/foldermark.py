"""Folder marks: one agent per watched folder when agents do not share a state.

Two agents with their own state files on one folder would each convert every ticket (every job
paid twice, every output written twice). So an agent marks each folder it serves with a small
hidden file, ``.convert-agent.lock.json`` (the watcher ignores hidden names), renews its
heartbeat every few seconds and removes it on a clean stop. Another agent that finds a live mark
refuses that folder and keeps looking; a stale mark is taken over (docs/decisions.md, Folder
marks).

Staleness is judged without trusting another machine's clock: a mark is stale at once when it is
this agent's own (same agent id and state: a restart after a crash) or when it was written on
this machine by a process that is gone; otherwise only once its content (heartbeat and sequence
number) has stood still for ``stale`` seconds of *our* monotonic clock. The heartbeat time in
the mark is only shown ("last seen 5s ago").

The take is arbitrated by the filesystem: a new mark is written in full to a private temp file and
``link``ed to the mark's name, which fails if a mark exists (atomic on local disks and on NFS, where
``O_EXCL`` was not always); a stale mark is first renamed to a private name (only one taker gets
it) and compared with what was judged stale. Every take is confirmed by reading the mark back.

Must not know about tickets, the scheduler or the store: the daemon hands it who we are and the
folders, and acts on the changes it reports. All I/O here is blocking: call it from a worker
thread (a network share may be slow).
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent import platform

log = logging.getLogger("agent.marks")

MARK_NAME = ".convert-agent.lock.json"
FORMAT = 1
MAX_MARK_BYTES = 16 * 1024
HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 60.0


# --------------------------------------------------------------------------- who we are


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def machine_id() -> str:
    """What tells this machine (and PID namespace) apart: Linux's boot id plus the PID namespace,
    so a process id in a mark can be checked here; elsewhere the host name."""
    boot = _read_text("/proc/sys/kernel/random/boot_id")
    if not boot:
        return "host:" + socket.gethostname()
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return f"boot:{boot}/{ns}"


def default_agent_name(agent_id: str) -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user name (a container without /etc/passwd entry)
        user = str(os.getuid()) if hasattr(os, "getuid") else "agent"
    return f"{user}-{agent_id[:6]}"


@dataclass(frozen=True)
class Identity:
    """This agent, as written into its marks."""

    agent_id: str  # random, stored in the state (meta ``agent_id``): stable across restarts
    name: str
    state: str  # the state's identity, e.g. ``sqlite:HOST:/real/path/state.db``
    host: str = field(default_factory=socket.gethostname)
    machine: str = field(default_factory=machine_id)
    pid: int = field(default_factory=os.getpid)


# --------------------------------------------------------------------------- the mark


@dataclass(frozen=True)
class Mark:
    """A mark as read from a folder (tolerant: missing fields are empty)."""

    raw: bytes
    agent_id: str = ""
    name: str = ""
    host: str = ""
    machine: str = ""
    pid: int = 0
    state: str = ""
    share: str = ""
    token: str = ""
    seq: int = 0
    heartbeat: float = 0.0
    valid: bool = False

    @classmethod
    def parse(cls, raw: bytes) -> Mark:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return cls(raw=raw)
        if not isinstance(data, dict) or not data.get("agent_id"):
            return cls(raw=raw)

        def text(key: str) -> str:
            v = data.get(key)
            return v if isinstance(v, str) else ""

        def number(key: str) -> float:
            v = data.get(key)
            return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0.0

        return cls(
            raw=raw,
            agent_id=text("agent_id"),
            name=text("name"),
            host=text("host"),
            machine=text("machine"),
            pid=int(number("pid")),
            state=text("state"),
            share=text("share"),
            token=text("token"),
            seq=int(number("seq")),
            heartbeat=number("heartbeat"),
            valid=True,
        )


def mark_bytes(
    me: Identity, *, share: str, folder: Path, token: str, seq: int, now: float
) -> bytes:
    body = {
        "format": FORMAT,
        "app": "convert-agent",
        "agent_id": me.agent_id,
        "name": me.name,
        "host": me.host,
        "machine": me.machine,
        "pid": me.pid,
        "state": me.state,
        "share": share,
        "folder": str(folder),
        "token": token,
        "seq": seq,
        "heartbeat": round(now, 3),
    }
    return (json.dumps(body, indent=1) + "\n").encode()


def read_mark(folder: Path) -> Mark | None:
    """The folder's mark, or None when there is none. OSError when the folder cannot be read."""
    try:
        with open(folder / MARK_NAME, "rb") as fh:
            return Mark.parse(fh.read(MAX_MARK_BYTES))
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------- judging


Verdict = Literal["free", "ours", "stale", "live"]


def pid_alive(pid: int) -> bool:
    return platform.pid_alive(pid)


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    why: str = ""


class Judge:
    """Decides whether a folder's mark may be taken (pure; clocks and pid check injected).

    Remembers, per folder, the mark content it saw last and since when (monotonic): a mark that
    is neither ours nor left by a dead process on this machine is stale only once its content
    stood still for ``stale`` seconds of our own clock, whatever its heartbeat time says.
    """

    def __init__(
        self,
        me: Identity,
        stale: float,
        *,
        mono: Callable[[], float] = time.monotonic,
        alive: Callable[[int], bool] = pid_alive,
    ) -> None:
        self.me = me
        self.stale = stale
        self._mono = mono
        self._alive = alive
        self._seen: dict[Path, tuple[bytes, float]] = {}

    def forget(self, folder: Path) -> None:
        self._seen.pop(folder, None)

    def judge(self, folder: Path, mark: Mark | None) -> Judgement:
        if mark is None:
            self.forget(folder)
            return Judgement("free")
        me = self.me
        if mark.valid and mark.agent_id == me.agent_id and mark.state == me.state:
            self.forget(folder)
            return Judgement("ours", "this agent's own mark (left by an earlier run)")
        same_machine = mark.valid and mark.host == me.host and mark.machine == me.machine
        if same_machine and mark.machine and not self._alive(mark.pid):
            self.forget(folder)
            return Judgement("stale", f"its process {mark.pid} on this machine is gone")
        now = self._mono()
        seen = self._seen.get(folder)
        if seen is None or seen[0] != mark.raw:
            self._seen[folder] = (mark.raw, now)
            return Judgement("live")
        still = now - seen[1]
        if still >= self.stale:
            return Judgement("stale", f"its heartbeat has not changed for {still:.0f}s")
        return Judgement("live")


def describe_owner(folder: Path, mark: Mark, now: float) -> str:
    """The refusal message for a folder another agent serves."""
    if not mark.valid:
        return (
            f"{folder} carries a mark ({MARK_NAME}) this agent cannot read; it is taken over "
            "if it does not change; share a PostgreSQL state to run several agents"
        )
    age = max(0.0, now - mark.heartbeat)
    return (
        f"{folder} is served by agent {mark.name or mark.agent_id} on host {mark.host or '?'} "
        f"(pid {mark.pid}, last seen {age:.0f}s ago); share a PostgreSQL state to run several "
        "agents"
    )


# --------------------------------------------------------------------------- taking


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | platform.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


@dataclass
class FolderState:
    path: Path
    share: str
    token: str | None = None  # set while we hold the mark
    seq: int = 0
    message: str = ""  # why it is refused (empty while served)
    unreachable: bool = False

    @property
    def served(self) -> bool:
        return self.token is not None


@dataclass(frozen=True)
class Change:
    path: Path
    kind: Literal["gained", "lost"]
    message: str


class FolderMarks:
    """The marks of one agent's folders: ``check`` takes, renews and re-judges them."""

    def __init__(
        self,
        me: Identity,
        folders: Iterable[tuple[Path, str]],
        *,
        stale: float = STALE_SECONDS,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        alive: Callable[[int], bool] = pid_alive,
        confirm_delay: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
        team: bool = False,
    ) -> None:
        self.me = me
        # Team mode: the agents of one shared PostgreSQL state are one agent to the marks (same
        # id, same state): they serve a folder together under one mark, which any of them
        # renews, and which outsiders (agents with another state) see as live.
        self.team = team
        self._team_seen: dict[Path, tuple[bytes, float]] = {}  # a teammate's mark, when seen
        self.heartbeat_hint = stale / 6  # about how often marks are renewed (team mode)
        self.wall = wall
        self.confirm_delay = confirm_delay
        self._sleep = sleep
        self.judge = Judge(me, stale, mono=mono, alive=alive)
        self.folders = {p: FolderState(p, share) for p, share in folders}

    def served(self) -> list[Path]:
        return [p for p, f in self.folders.items() if f.served]

    def refused(self) -> dict[Path, str]:
        return {p: f.message for p, f in self.folders.items() if not f.served and f.message}

    def check(self) -> list[Change]:
        """Renew the marks we hold, try to take the others; what changed, in config order."""
        changes = []
        for f in self.folders.values():
            change = self._check_one(f)
            if change is not None:
                changes.append(change)
        if any(c.kind == "gained" for c in changes):
            # A taker that renamed our new mark away (it had judged the old one stale a moment
            # before) puts it back at once, and a third agent that found no mark in that moment
            # links its own instead: read our marks again a little later, before acting on them.
            self._sleep(self.confirm_delay)
            changes = [c for c in changes if c.kind != "gained" or self._confirmed(c)]
        return changes

    def _confirmed(self, change: Change) -> bool:
        f = self.folders[change.path]
        try:
            back = read_mark(f.path)
        except OSError:
            back = None
        if back is not None and back.token == f.token:
            log.info("%s", change.message)
            f.message = ""
            return True
        f.token = None
        log.info("%s: another agent took it at the same moment", f.path)
        return False

    def release_all(self) -> None:
        for f in self.folders.values():
            if f.token is not None:
                try:
                    self._release(f)
                except OSError as exc:
                    log.warning("cannot remove the mark of %s: %s", f.path, exc.strerror or exc)
                f.token = None

    # ------------------------------------------------------------------ one folder

    def _check_one(self, f: FolderState) -> Change | None:
        try:
            change = self._renew(f) if f.served else self._try_take(f)
        except OSError as exc:
            if not f.unreachable:
                if f.served:
                    log.warning("cannot renew the mark of %s: %s", f.path, exc.strerror or exc)
                else:
                    log.warning(
                        "cannot mark %s as served by this agent (%s): it is not watched until "
                        "it can be; checking again every heartbeat",
                        f.path,
                        exc.strerror or exc,
                    )
                    f.message = f"{f.path} cannot be marked: {exc.strerror or exc}"
            f.unreachable = True
            return None
        if f.unreachable:
            f.unreachable = False
            log.info("the mark of %s can be %s again", f.path, "renewed" if f.served else "read")
        return change

    def _try_take(self, f: FolderState) -> Change | None:
        mark = read_mark(f.path)
        verdict = self.judge.judge(f.path, mark)
        if self.team and mark is not None and verdict.verdict == "ours":
            f.token, f.seq, f.message = mark.token, mark.seq, ""
            return Change(f.path, "gained", f"serving {f.path} (share {f.share}) with the team")
        if verdict.verdict == "live":
            assert mark is not None
            message = describe_owner(f.path, mark, self.wall())
            if not f.message:
                log.warning("%s", message)
            f.message = message
            return None
        if mark is not None and not self._remove_if_same(f.path, mark.raw):
            return None  # it changed under us: judged again next time
        if not self._create(f, confirm=False):
            return None
        self.judge.forget(f.path)
        if mark is None:
            how = f"serving {f.path} (share {f.share})"
        elif verdict.verdict == "ours":
            how = f"serving {f.path} again (share {f.share}): took over this agent's own mark"
        else:
            who = mark.name or mark.agent_id or "unknown"
            how = (
                f"took over {f.path} (share {f.share}) from agent {who} on host "
                f"{mark.host or '?'}: {verdict.why}"
            )
        return Change(f.path, "gained", how)

    def _renew(self, f: FolderState) -> Change | None:
        assert f.token is not None
        mark = read_mark(f.path)
        if mark is None:
            # Gone: removed by hand, the folder made anew, or a taker renamed it away judging
            # it stale. The link decides between us (an OSError keeps the folder ours).
            if self._create(f):
                return None
        elif self.team and (not mark.valid or self._teammate(mark)):
            # One mark for the team: whoever wrote it last renews it while the others watch
            # it change (each renewing it too would make it churn, and a FUSE cache may show a
            # teammate's write half done: read again next time).
            if mark.valid:
                f.token = mark.token
                now = self.wall()
                seen = self._team_seen.get(f.path)
                by_other = (mark.pid, mark.host) != (self.me.pid, self.me.host)
                if seen is None or seen[0] != mark.raw:
                    self._team_seen[f.path] = (mark.raw, now)
                    if by_other:
                        return None  # it changes: its writer renews it
                elif by_other and now - seen[1] < 2 * self.heartbeat_hint:
                    return None
                f.seq = mark.seq
            else:
                return None
        if mark is not None and mark.token == f.token:
            f.seq = max(f.seq, mark.seq) + 1
            tmp = self._tmp(f.path)
            data = mark_bytes(
                self.me, share=f.share, folder=f.path, token=f.token, seq=f.seq, now=self.wall()
            )
            _write_private(tmp, data)
            os.replace(tmp, f.path / MARK_NAME)
            return None
        f.token = None
        now = self.wall()
        other = read_mark(f.path) if mark is None else mark
        f.message = (
            describe_owner(f.path, other, now)
            if other is not None
            else f"{f.path}: this agent's mark was removed"
        )
        message = f"lost the mark of {f.path}; it stops working there: {f.message}"
        log.error("%s", message)
        return Change(f.path, "lost", message)

    # ------------------------------------------------------------------ file steps

    def _teammate(self, mark: Mark) -> bool:
        return mark.valid and mark.agent_id == self.me.agent_id and mark.state == self.me.state

    def _tmp(self, folder: Path) -> Path:
        return folder / f"{MARK_NAME}.{self.me.agent_id[:12]}.{self.me.pid}.tmp"

    def _create(self, f: FolderState, *, confirm: bool = True) -> bool:
        """Write a new mark in full, link it into place (fails if one exists), read it back
        (``confirm``; else the caller does, later)."""
        token = secrets.token_hex(8)
        tmp = self._tmp(f.path)
        _write_private(
            tmp,
            mark_bytes(self.me, share=f.share, folder=f.path, token=token, seq=0, now=self.wall()),
        )
        mark_path = f.path / MARK_NAME
        try:
            os.link(tmp, mark_path)
        except FileExistsError:
            _unlink(tmp)
            return False
        except OSError as exc:
            # On NFS a lost reply to a link that did happen: the temp file then has two names.
            linked = exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV) and (
                os.stat(tmp).st_nlink == 2
            )
            if not linked:
                _unlink(tmp)
                raise
        _unlink(tmp)
        if confirm:
            back = read_mark(f.path)
            if back is None or back.token != token:
                return False
        f.token, f.seq = token, 0
        return True

    def _remove_if_same(self, folder: Path, raw: bytes) -> bool:
        """Remove the mark only if it is still the one judged (a rename gives it to one taker)."""
        mark_path = folder / MARK_NAME
        private = folder / f"{MARK_NAME}.{self.me.agent_id[:12]}.{self.me.pid}.old"
        try:
            os.rename(mark_path, private)
        except FileNotFoundError:
            return True  # someone else removed it: the link decides
        with open(private, "rb") as fh:
            got = fh.read(MAX_MARK_BYTES)
        if got != raw:
            # A newer mark (its owner renewed it, or another taker's): put it back, no clobber.
            with contextlib.suppress(FileExistsError):
                os.link(private, mark_path)
            _unlink(private)
            return False
        _unlink(private)
        return True

    def _release(self, f: FolderState) -> None:
        mark = read_mark(f.path)
        if mark is not None and mark.token == f.token:
            (f.path / MARK_NAME).unlink()
            log.info("released %s", f.path)


# --------------------------------------------------------------------------- a read-only view


def folder_status(
    folder: Path, agent_id: str | None, *, now: float | None = None
) -> dict[str, Any]:
    """What ``status`` and ``doctor`` show of a folder's mark, from one read (no waiting):
    ``owner`` is ``this agent``, ``another agent`` or ``none``."""
    try:
        mark = read_mark(folder)
    except OSError as exc:
        return {"owner": "unknown", "detail": f"cannot read its mark: {exc.strerror or exc}"}
    if mark is None:
        return {"owner": "none", "detail": "no agent serves it now"}
    when = time.time() if now is None else now
    if mark.valid and agent_id is not None and mark.agent_id == agent_id:
        age = max(0.0, when - mark.heartbeat)
        return {
            "owner": "this agent",
            "detail": f"served by this agent (pid {mark.pid}, last seen {age:.0f}s ago)",
        }
    return {"owner": "another agent", "detail": describe_owner(folder, mark, when)}
