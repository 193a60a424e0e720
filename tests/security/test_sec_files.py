"""What the agent leaves on disk: private state, private logs, and secrets only where they must be.

* The state database holds job tokens and download passwords: it, its WAL/SHM and lock files and
  its folder are private (0600 / 0700), as are the log file (also after a rollover) and the
  dashboard's runtime file (it holds the local API's token). Created under a umask of 022.
* The API key is never written anywhere: not in logs, stdout, sidecars, any file in the folder,
  the database (its raw bytes) or the CLI's output. Job tokens and download passwords appear in
  the database and nowhere else.

Defences: ``Store.open`` (0700 folder, 0600 file before SQLite opens it), ``StateLock``,
``PrivateRotatingFileHandler``, ``Dashboard._write_runtime_file``, ``RedactingFilter``, sidecar
views built from ``TicketRecord.public()``, the key never stored.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from e2e_harness import KEY, agent_cmd, png_bytes, run_agent, stop_agent, wait_for, write_config

from agent.config import ApiConfig, Config, LogConfig
from agent.daemon import configure_logging
from agent.emulator import RunningEmulator
from agent.store import Store

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]
PASSWORD = "dl-pass-7f3a9c1e"


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _spawn(cfg: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("API2CONVERT_")}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [*agent_cmd(cfg, *args)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=lambda: os.umask(0o022),  # a usual umask: private modes must be explicit
        )


async def test_state_log_and_runtime_files_are_private_and_secrets_stay_in_the_database(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.png").write_bytes(png_bytes())
    (inbox / "a.job").write_text(f"input: a.png\ntarget: jpg\ndownload: {{password: {PASSWORD}}}\n")
    state_dir = tmp_path / "state" / "deep"
    db = state_dir / "state.db"
    logfile = tmp_path / "logs" / "agent.log"
    cfg = write_config(
        tmp_path / "c.yaml",
        emu.base_url,
        [inbox],
        db,
        log={"file": str(logfile), "level": "debug"},
    )
    stdout = tmp_path / "stdout.txt"
    proc = _spawn(cfg, stdout, "-v", "run")

    def runtime_file() -> Path | None:
        return next(iter(state_dir.glob("*dashboard.json")), None)

    try:
        await wait_for(lambda: (inbox / "a.job.done").exists(), 30, "the ticket to finish")
        await wait_for(lambda: runtime_file() is not None, 10, "the dashboard's runtime file")
        runtime = runtime_file()
        assert runtime is not None and mode(runtime) == 0o600
        modes = {p.name: mode(p) for p in state_dir.iterdir()}
    finally:
        assert await stop_agent(proc) == 0
    assert mode(state_dir) == 0o700, oct(mode(state_dir))
    for name in ("state.db", "state.db-wal", "state.db-shm", "state.db.lock"):
        if name in modes:
            assert modes[name] == 0o600, (name, oct(modes[name]))
    assert "state.db" in modes
    assert mode(logfile) == 0o600

    # The CLI's views of the finished ticket, read-only.
    cli_out = []
    for args in (("status", "--json"), ("list", "--json"), ("why", "a", "--json")):
        code, out = await run_agent(cfg, *args)
        assert code == 0, out
        cli_out.append(out)

    token = next(iter(emu.state.jobs.values())).token
    assert token and len(token) >= 8
    texts = {
        "log": logfile.read_bytes(),
        "stdout": stdout.read_bytes(),
        "cli": "\n".join(cli_out).encode(),
    }
    for p in inbox.iterdir():
        if p.name != "a.job.done":  # the user's own ticket, where the password was written
            texts[p.name] = p.read_bytes()
    for p in state_dir.iterdir():
        if p.name.endswith(".json") or p.name.endswith(".lock"):
            texts[p.name] = p.read_bytes()
    for where, data in texts.items():
        for secret in (KEY, token, PASSWORD):
            assert secret.encode() not in data, (secret, where)
    assert b"a.job" in texts["log"]  # the log is real, not empty
    database = b"".join(
        p.read_bytes()
        for p in state_dir.glob("state.db*")
        if not p.name.endswith((".json", ".lock"))
    )
    assert KEY.encode() not in database
    assert token.encode() in database and PASSWORD.encode() in database  # kept where they belong


async def test_rotated_log_files_are_private_too(tmp_path: Path) -> None:
    logfile = tmp_path / "logs" / "agent.log"
    root = logging.getLogger()
    saved = list(root.handlers)
    # configure_logging adds nothing when an earlier test (an in-process CLI run) already did.
    root.handlers = [h for h in saved if not getattr(h, "_convert_agent", False)]
    before = list(root.handlers)
    old_umask = os.umask(0o022)
    try:
        configure_logging(Config(log=LogConfig(file=logfile)), stderr=logging.NullHandler())
        added = [h for h in root.handlers if h not in before]
        rotating = [h for h in added if isinstance(h, logging.FileHandler)]
        assert len(rotating) == 1
        logging.getLogger("agent.test").warning("before the rollover")
        rotating[0].doRollover()  # type: ignore[attr-defined]
        logging.getLogger("agent.test").warning("after the rollover")
        await asyncio.sleep(0)
    finally:
        os.umask(old_umask)
        for h in root.handlers[:]:
            if h not in before:
                root.removeHandler(h)
                h.close()
        root.handlers = saved
    assert mode(logfile.parent) == 0o700
    files = sorted(logfile.parent.iterdir())
    assert [p.name for p in files] == ["agent.log", "agent.log.1"]
    for p in files:
        assert mode(p) == 0o600, (p.name, oct(mode(p)))
    assert sys.platform != "win32"


def test_the_api_key_is_redacted_from_every_log_handler_the_setup_installs(
    tmp_path: Path,
) -> None:
    """The agent never logs its key on purpose; ``RedactingFilter`` is the backstop for a key
    that reaches a record anyway (a server echoing it, an exception text). It is tested as the
    real setup installs it: removing it from ``configure_logging`` fails this test."""
    key = "sk-live-REDACTME-0123456789abcdef"
    logfile = tmp_path / "logs" / "agent.log"
    stderr_text = io.StringIO()
    root = logging.getLogger()
    saved, saved_level = list(root.handlers), root.level
    root.handlers = [h for h in saved if not getattr(h, "_convert_agent", False)]
    before = list(root.handlers)
    try:
        configure_logging(
            Config(api=ApiConfig(key=key), log=LogConfig(file=logfile)),
            stderr=logging.StreamHandler(stderr_text),
        )
        agent_log = logging.getLogger("agent.scheduler")
        agent_log.warning("the server said: bad key %s", key)  # in the arguments
        agent_log.warning(f"request failed: X-Oc-Api-Key={key}!")  # in the text
        agent_log.warning("nothing secret here: %d tickets", 3)
        try:
            raise RuntimeError(f"the answer echoed {key}")
        except RuntimeError:
            agent_log.exception("internal error")  # in a traceback
    finally:
        for h in root.handlers[:]:
            if h not in before:
                root.removeHandler(h)
                h.close()
        root.handlers, root.level = saved, saved_level
    for where, text in (("stderr", stderr_text.getvalue()), ("log file", logfile.read_text())):
        assert key not in text, where
        assert "bad key ***" in text and "X-Oc-Api-Key=***!" in text, (where, text)
        assert "nothing secret here: 3 tickets" in text, where
        assert "RuntimeError: the answer echoed ***" in text, where


def test_the_store_creates_its_folder_and_file_private_on_its_own(tmp_path: Path) -> None:
    """``Store.open`` does not count on the lock having made the folder: opened first (a tool,
    a test, another entry point), it still creates the folder 0700 and the file 0600."""
    db = tmp_path / "fresh" / "deeper" / "state.db"
    old_umask = os.umask(0o022)
    try:
        store = Store.open(db)
        store.close()
    finally:
        os.umask(old_umask)
    assert mode(db.parent) == 0o700, oct(mode(db.parent))
    assert mode(db) == 0o600, oct(mode(db))
