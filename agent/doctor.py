"""``convert-agent doctor``: every check an administrator would otherwise do by hand.

Each check returns a ``Check`` with a verdict (ok / warn / fail), what was found, and — when it is
not ok — a hint that says what to do. Checks never print a secret: the API key is only ever
described as set or not.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.api import ApiClient
from agent.config import Config, share_names
from agent.errors import AgentError, AuthError, ConfigError
from agent.foldermark import MARK_NAME, folder_status
from agent.store import Store

MIN_FREE_BYTES = 1 << 30  # warn below 1 GiB free in a watched folder
MAX_CLOCK_SKEW = 300.0  # seconds


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str  # ok | warn | fail
    detail: str
    hint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_folders(cfg: Config) -> list[Check]:
    out = []
    if not cfg.folders:
        return [
            Check(
                "folders",
                "fail",
                "no folder is configured",
                "add one under `folders:` in the config, or pass --folder DIR to `run`",
            )
        ]
    for f in cfg.folders:
        name = f"folder {f.path}"
        if not f.path.is_dir():
            out.append(Check(name, "fail", "does not exist", f"create it: mkdir -p '{f.path}'"))
            continue
        probe = f.path / f".convert-agent-doctor-{secrets.token_hex(4)}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            out.append(
                Check(
                    name,
                    "fail",
                    f"not writable ({exc.strerror})",
                    "give the user running the agent write access to it",
                )
            )
            continue
        free = shutil.disk_usage(f.path).free
        if free < MIN_FREE_BYTES:
            out.append(
                Check(
                    name,
                    "warn",
                    f"writable, but only {free // (1 << 20)} MiB free",
                    "free some space: downloads wait while the disk is full",
                )
            )
        else:
            out.append(Check(name, "ok", f"writable, {free // (1 << 30)} GiB free"))
    return out


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def check_inotify(cfg: Config) -> Check:
    watches = _read_int("/proc/sys/fs/inotify/max_user_watches")
    instances = _read_int("/proc/sys/fs/inotify/max_user_instances")
    if watches is None:
        return Check("inotify", "ok", "not Linux, or no inotify: native events or polling apply")
    needed = 0
    for f in cfg.folders:
        if not f.path.is_dir():
            continue
        if f.recursive:
            needed += sum(1 for _ in os.walk(f.path))
        else:
            needed += 1
    detail = f"{needed} folder(s) to watch; max_user_watches={watches}"
    if instances is not None:
        detail += f", max_user_instances={instances}"
    if needed > watches // 2:
        return Check(
            "inotify",
            "warn",
            detail,
            "raise fs.inotify.max_user_watches (sysctl), or set `polling: always` on large trees",
        )
    return Check("inotify", "ok", detail)


def check_state_url(cfg: Config) -> Check:
    """A PostgreSQL state (team mode): reachable, and who is in the team (its password never
    shown: ``daemon.open_state_readonly`` redacts it in every message)."""
    from agent.daemon import open_state_readonly, team_view
    from agent.store.urls import redact_url

    url = cfg.state.url or ""
    try:
        store = open_state_readonly(cfg)
    except ConfigError as err:
        return Check(
            "state",
            "fail",
            err.message,
            "check state.url (or CONVERT_AGENT_STATE_URL), the server and its network",
        )
    try:
        team = team_view(store)
    finally:
        store.close()
    agents = [a for a in (team or {}).get("agents", []) if not a["stopped"]]
    if team is not None and team.get("problem"):
        detail = f"{redact_url(url)} answers, but its team cannot be read: {team['problem']}"
        return Check("state", "warn", detail, "run `convert-agent run` once to migrate it")
    who = ", ".join(f"{a['name']} on {a['host']}" for a in agents) or "no agent running"
    return Check("state", "ok", f"PostgreSQL {redact_url(url)} (team mode): {who}")


def _agent_id(cfg: Config) -> str | None:
    if cfg.state.url:  # the team's id, in the shared meta table
        from agent.daemon import open_state_readonly

        try:
            shared = open_state_readonly(cfg)
        except ConfigError:  # check_state says what is wrong
            return None
        try:
            return shared.get_meta("agent_id")
        except Exception:
            return None
        finally:
            shared.close()
    if not cfg.state.path.exists():
        return None
    try:
        store = Store.open_readonly(cfg.state.path)
    except Exception:  # check_state reports what is wrong with the file
        return None
    try:
        return store.get_meta("agent_id")
    finally:
        store.close()


def check_marks(cfg: Config) -> list[Check]:
    """Each folder's share name, and which agent's mark (``.convert-agent.lock.json``) it
    carries: another agent's keeps this one out of that folder."""
    agent_id = _agent_id(cfg)
    out = []
    for f, share in zip(cfg.folders, share_names(cfg.folders), strict=True):
        name = f"share {f.path}"
        given = "set in the config" if f.share else "derived from the folder's name"
        if not f.path.is_dir():
            out.append(Check(name, "ok", f"{share} ({given})"))
            continue
        seen = folder_status(f.path, agent_id)
        detail = f"{share} ({given}); {seen['detail']}"
        if seen["owner"] == "another agent":
            out.append(
                Check(
                    name,
                    "warn",
                    detail,
                    "this agent refuses the folder while that mark is renewed: stop the other "
                    "agent, or share a PostgreSQL state to run several agents (a mark left by "
                    f"a dead agent is taken over by itself; never delete {MARK_NAME} by hand "
                    "while the other agent runs)",
                )
            )
        else:
            out.append(Check(name, "ok", detail))
    return out


def check_state(cfg: Config) -> Check:
    if cfg.state.url:
        return check_state_url(cfg)
    from agent.daemon import state_location_problem

    path = cfg.state.path
    problem = state_location_problem(path)
    if problem is not None:
        return Check(
            "state",
            "fail",
            problem,
            "choose a state path on a local disk (`state.path` or --state); `run` refuses this one",
        )
    if not path.exists():
        parent = path.parent
        while not parent.exists():
            parent = parent.parent
        if os.access(parent, os.W_OK):
            return Check("state", "ok", f"{path} will be created on the first run")
        return Check("state", "fail", f"{path} cannot be created", "choose a writable --state path")
    try:
        store = Store.open_readonly(path)
        try:
            ok = store.integrity_ok()
        finally:
            store.close()
    except Exception as exc:  # any sqlite error here is the finding itself
        return Check("state", "fail", f"{path}: {exc}", "move the file away; the agent rebuilds it")
    if not ok:
        return Check(
            "state",
            "fail",
            f"{path} fails PRAGMA integrity_check",
            "stop the agent, move the file away and start again (tickets are taken up anew)",
        )
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        return Check(
            "state",
            "warn",
            f"{path} is readable by others (mode {mode:o}); it holds job tokens",
            f"chmod 600 '{path}'",
        )
    return Check("state", "ok", f"{path} passes the integrity check")


async def check_api(cfg: Config, *, now: float | None = None) -> list[Check]:
    out = []
    if not cfg.api.key:
        out.append(
            Check(
                "api key",
                "fail",
                "no API key is set",
                "set API2CONVERT_API_KEY, or `api.key`/`api.key_file` in the config",
            )
        )
    client = ApiClient(cfg.api.base_url, cfg.api.key, timeout=min(cfg.api.timeout, 10.0))
    try:
        try:
            started = time.monotonic()
            server_now = await client.server_time()
            latency = time.monotonic() - started
        except AgentError as err:
            out.append(
                Check(
                    "api reachable",
                    "fail",
                    f"{cfg.api.base_url}: {err.message}",
                    "check the base URL, the network, and any proxy or firewall",
                )
            )
            return out
        out.append(Check("api reachable", "ok", f"{cfg.api.base_url} answered in {latency:.2f}s"))
        if server_now is not None:
            skew = (now if now is not None else time.time()) - server_now
            if abs(skew) > MAX_CLOCK_SKEW:
                out.append(
                    Check(
                        "clock",
                        "warn",
                        f"this machine's clock is {skew:+.0f}s off the server's",
                        "enable time synchronisation (NTP); expiry times depend on it",
                    )
                )
            else:
                out.append(Check("clock", "ok", f"within {abs(skew):.0f}s of the server"))
        if cfg.api.key:
            try:
                await client.list_jobs(page=1)
                out.append(Check("api key", "ok", "accepted by the API"))
            except AuthError as err:
                out.append(
                    Check(
                        "api key",
                        "fail",
                        f"refused: {err.message}",
                        "check the key in your api2convert account and set it again",
                    )
                )
            except AgentError as err:
                out.append(
                    Check("api key", "warn", f"could not be checked: {err.message}", "try again")
                )
    finally:
        await client.close()
    return out


def run_checks(cfg: Config) -> list[Check]:
    checks = check_folders(cfg)
    checks.append(check_inotify(cfg))
    checks.append(check_state(cfg))
    checks.extend(check_marks(cfg))
    checks.extend(asyncio.run(check_api(cfg)))
    return checks
