"""A real PostgreSQL server in a temporary directory, for the tests of the PostgreSQL state.

``PgServer.start(tmp)`` runs Debian's ``initdb`` and ``pg_ctl`` (any version found under
/usr/lib/postgresql, or ``initdb`` on PATH, or ``$PG_BINDIR``) on a free loopback port, trust
authentication, fsync off. As root (CI) the server runs as the ``postgres`` system user (initdb
refuses root), through ``runuser``. ``find_bindir()`` is None when no server is installed: the
tests skip then, except under ``CI=true`` where they fail (the server is part of CI's install).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


def find_bindir() -> Path | None:
    env = os.environ.get("PG_BINDIR")
    if env:
        return Path(env)
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3])
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def missing_reason() -> str | None:
    """Why the PostgreSQL tests cannot run here (None: they can)."""
    if find_bindir() is None:
        return "no PostgreSQL server installed (Debian: apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run the server as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    bindir: Path
    base: Path
    port: int

    @property
    def data(self) -> Path:
        return self.base / "data"

    def url(self, db: str = "postgres", *, user: str = "postgres", password: str = "") -> str:
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{db}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60)

    @classmethod
    def start(cls, base: Path | None = None) -> PgServer:
        """A new server in ``base`` (default: a new directory under /tmp, which the server's
        user can reach, unlike pytest's private temporary directories)."""
        if base is None:
            base = Path(tempfile.mkdtemp(prefix="convert-agent-pg-"))
        bindir = find_bindir()
        assert bindir is not None
        base.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(base, pw.pw_uid, pw.pw_gid)
        srv = cls(bindir, base, _free_port())
        srv._run(
            "initdb", "-D", str(srv.data), "-U", "postgres", "--auth=trust", "-N", "-E", "UTF8",
            "--no-locale",
        )  # fmt: skip
        srv.pg_ctl_start()
        return srv

    def pg_ctl_start(self) -> None:
        opts = (
            f"-k {self.base} -c listen_addresses=127.0.0.1 -p {self.port} -c fsync=off"
            " -c full_page_writes=off"
        )
        for _ in range(3):  # the port may have been taken meanwhile
            r = self._run(
                "pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.base / "log"), "-w",
                "-t", "30", "start", check=False,
            )  # fmt: skip
            if r.returncode == 0:
                return
            log = (self.base / "log").read_text(errors="replace")
            if "could not bind" not in log and "already in use" not in log:
                raise RuntimeError(f"pg_ctl start failed: {r.stdout}{r.stderr}\n{log[-2000:]}")
            self.port = _free_port()
        raise RuntimeError("pg_ctl start failed: no free port")

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def remove(self) -> None:
        """Stop the server and remove its directory."""
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def restart(self) -> None:
        self.stop("immediate")
        self.pg_ctl_start()

    def create_db(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
