"""The ``convert-agent`` command line: a thin front end over the daemon and the state store.

Exit codes (stable; see README):
  0  success
  1  a ticket failed (``run --once``), ``doctor`` found a problem, the running agent could not
     be reached or refused the call, or an unexpected error
  2  usage error (bad flags)
  3  configuration problem or missing API key (the message names the key)
  4  not found (``why``/``cancel`` NAME matched no ticket, nothing to retry, no state file yet,
     no agent running for ``dashboard``)
  5  another agent already runs with this state file
  6  ``run --once``: every folder is served by another agent (its folder mark is live)
  130 interrupted
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from agent import __version__
from agent.config import Config, load_config
from agent.errors import AgentError, ConfigError
from agent.models import Phase
from agent.store import StateLock, StateStore, Store, TicketRecord
from agent.store.urls import redact_url

if TYPE_CHECKING:
    from agent.control import Control

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONFIG, EXIT_NOT_FOUND, EXIT_LOCKED = 0, 1, 2, 3, 4, 5


def _die(message: str, code: int) -> NoReturn:
    click.echo(f"convert-agent: {message}", err=True)
    sys.exit(code)


def _config(ctx: click.Context, folders: tuple[str, ...] = (), state: str | None = None) -> Config:
    overrides: dict[str, Any] = {}
    if folders:
        overrides["folders"] = list(folders)
    if state:
        overrides["state_path"] = state
    path = ctx.obj.get("config") if ctx.obj else None
    try:
        return load_config(Path(path) if path else None, os.environ, overrides)
    except ConfigError as err:
        _die(err.message, EXIT_CONFIG)


def _setup_logging(verbose: int, quiet: int) -> None:
    level = logging.INFO + 10 * (quiet - verbose)
    # Under pythonw.exe (the Windows login entry) there is no stderr: nothing to write to here.
    handler: logging.Handler = (
        logging.StreamHandler(sys.stderr) if sys.stderr is not None else logging.NullHandler()
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=max(logging.DEBUG, min(logging.CRITICAL, level)), handlers=[handler])


class _Commands(click.Group):
    """Imports ``emulator`` (aiohttp's server, Pillow: a third of a second) only when that
    command is run or listed, so ``status`` and friends start fast."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "emulator"})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "emulator" and cmd_name not in self.commands:
            from agent.emulator.cli import emulator_command

            self.add_command(emulator_command, name="emulator")
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="convert-agent")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Config file (default: $CONVERT_AGENT_CONFIG, then the platform config folder).",
)
@click.option("-v", "--verbose", count=True, help="More log output (repeatable).")
@click.option("-q", "--quiet", count=True, help="Less log output (repeatable).")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: int, quiet: int) -> None:
    """Turn folders into conversion inboxes for the api2convert REST API v2.

    Drop NAME.job tickets into a watched folder; outputs appear beside them.
    """
    ctx.ensure_object(dict)
    ctx.obj["config"] = config_path
    ctx.obj["verbose"], ctx.obj["quiet"] = verbose, quiet


@cli.command()
@click.option(
    "--once",
    is_flag=True,
    help="Exit when nothing is left in flight (exit 0 only if every ticket succeeded).",
)
@click.option(
    "--folder",
    "folders",
    multiple=True,
    type=click.Path(file_okay=False),
    help="Watch this folder instead of the configured ones (repeatable).",
)
@click.option("--state", type=click.Path(dir_okay=False), help="State database file.")
@click.option(
    "--tray/--no-tray",
    "want_tray",
    default=None,
    help="Show the tray icon, or not (default: when a display is available).",
)
@click.pass_context
def run(
    ctx: click.Context,
    once: bool,
    folders: tuple[str, ...],
    state: str | None,
    want_tray: bool | None,
) -> None:
    """Run the agent in the foreground (with a tray icon on a desktop)."""
    from agent.daemon import Agent, configure_logging
    from agent.tray import TrayUnavailable, run_with_tray, start_tray

    cfg = _config(ctx, folders, state)
    bars = None
    # No stderr at all under pythonw.exe (the Windows login entry): no bars, no stderr log lines.
    if sys.stderr is not None and sys.stderr.isatty() and not ctx.obj["quiet"]:
        from agent.console import TerminalProgress

        bars = TerminalProgress()  # progress bars on a terminal; plain log lines otherwise
    configure_logging(
        cfg, ctx.obj["verbose"], ctx.obj["quiet"], bars.log_handler() if bars else None
    )
    for f in cfg.folders:
        f.path.mkdir(parents=True, exist_ok=True)
    try:
        agent = Agent(cfg, progress=bars)
        notifications = None
        if cfg.notifications.enabled:
            from agent.notify import Notifications

            notifications = Notifications(agent, batch_seconds=cfg.notifications.batch_seconds)
        tray = start_tray(agent, want_tray, notifications)
        with bars or contextlib.nullcontext():
            if tray is not None:
                code = run_with_tray(agent, tray, once=once)
            else:
                code = asyncio.run(agent.run(once=once))
        if notifications is not None:
            notifications.close()  # what ended in the last moments
    except TrayUnavailable as err:
        _die(f"cannot show the tray icon: {err}", EXIT_FAILED)
    except ConfigError as err:
        _die(err.message, EXIT_LOCKED if "already running" in err.message else EXIT_CONFIG)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code)


def _open_readonly(ctx: click.Context, state: str | None) -> tuple[Config, StateStore]:
    cfg = _config(ctx, (), state)
    if cfg.state.url:
        from agent.daemon import open_state_readonly

        try:
            return cfg, open_state_readonly(cfg)
        except ConfigError as err:
            _die(err.message, EXIT_CONFIG)
    try:
        return cfg, Store.open_readonly(cfg.state.path)
    except FileNotFoundError:
        _die(
            f"no state file at {cfg.state.path} yet: the agent has not run with it "
            "(start it with `convert-agent run`)",
            EXIT_NOT_FOUND,
        )


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _running_pid(cfg: Config) -> int | None:
    lock = StateLock(cfg.state.path)
    try:
        lock.acquire()
    except ConfigError:
        try:
            return int(lock.path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return -1
    except OSError:
        return None
    lock.release()
    return None


@cli.command()
@click.option("--state", type=click.Path(dir_okay=False), help="State database file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status(ctx: click.Context, state: str | None, as_json: bool) -> None:
    """Show whether the agent runs and how many tickets are in each phase."""
    cfg, store = _open_readonly(ctx, state)
    counts = store.counts()
    pid = _running_pid(cfg)
    marks = _marks(cfg, store.get_meta("agent_id"))
    data: dict[str, Any] = {
        "running": pid is not None,
        "pid": pid,
        "paused": store.get_meta("paused") == "1",
        "state": redact_url(cfg.state.url) if cfg.state.url else str(cfg.state.path),
        "folders": [str(f.path) for f in cfg.folders],
        "tickets": counts,
        "marks": marks,
    }
    if cfg.state.url:
        from agent.daemon import team_view

        data["team"] = team_view(store)
    store.close()
    data["in_use"] = _in_use(cfg) if pid is not None else []
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo("agent: " + (f"running (pid {data['pid']})" if data["running"] else "not running"))
    if data["paused"]:
        click.echo("intake: paused")
    click.echo(f"state: {data['state']}")
    for mark in marks:
        click.echo(f"folder {mark['path']} (share {mark['share']}): {mark['detail']}")
    active = {k: v for k, v in counts.items() if v}
    click.echo("tickets: " + (", ".join(f"{k} {v}" for k, v in active.items()) or "none"))
    for held in data["in_use"]:
        click.echo(f"not read yet (since {_when(held['since'])}): {held['message']}")
    team = data.get("team")
    if team is not None:
        if team.get("problem"):
            click.echo(f"team: cannot be read now ({team['problem']})")
        for a in team["agents"]:
            seen = "stopped" if a["stopped"] else f"last heartbeat {a['heartbeat_age']:.0f}s ago"
            click.echo(
                f"team agent {a['name']} on {a['host']} (pid {a['pid']}): {seen}, "
                f"holds {a['held']} ticket(s)"
            )


def _in_use(cfg: Config, name: str | None = None) -> list[dict[str, Any]]:
    """The tickets a running agent cannot read because another program holds them open (past
    its notice time; they have no record yet), through its local API; [] when it cannot be
    asked. With ``name`` (a file name, stem or path) only those it names."""
    from agent.control import Control, ControlError

    found = Control.find(cfg.state.path)
    if found is None:
        return []
    try:
        snap = found.call("GET", "/api/status")
    except (ControlError, ValueError):
        return []
    held = snap.get("in_use") if isinstance(snap, dict) else None
    if not isinstance(held, list):
        return []
    if name is None:
        return held
    return [h for h in held if name in (h["path"], Path(h["path"]).name, Path(h["path"]).stem)]


def _marks(cfg: Config, agent_id: str | None) -> list[dict[str, Any]]:
    """Which agent each folder's mark names (agent.foldermark): another agent's keeps this
    one out of that folder."""
    from agent.config import share_names
    from agent.foldermark import folder_status

    return [
        {"path": str(f.path), "share": share, **folder_status(f.path, agent_id)}
        for f, share in zip(cfg.folders, share_names(cfg.folders), strict=True)
    ]


def _row(rec: TicketRecord) -> dict[str, Any]:
    return rec.public()


@cli.command(name="list")
@click.option("--state", type=click.Path(dir_okay=False), help="State database file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--phase", multiple=True, help="Only tickets in this phase (repeatable).")
@click.pass_context
def list_(ctx: click.Context, state: str | None, as_json: bool, phase: tuple[str, ...]) -> None:
    """List the tickets the agent knows about."""
    cfg, store = _open_readonly(ctx, state)
    try:
        phases = [Phase(p) for p in phase] if phase else None
    except ValueError:
        _die(f"unknown phase; use one of: {', '.join(p.value for p in Phase)}", EXIT_USAGE)
    recs = store.tickets(phases=phases)
    holders: dict[str, str] | None = None
    if cfg.state.url:
        from agent.daemon import team_view

        team = team_view(store)
        holders = team["holders"] if team is not None else None
    store.close()
    if as_json:
        rows = [_row(r) for r in recs]
        if holders is not None:
            for row, r in zip(rows, recs, strict=True):
                row["holder"] = holders.get(r.path)  # the team agent working on it, if any
        click.echo(json.dumps(rows, indent=2))
        return
    if not recs:
        click.echo("no tickets")
        return
    for r in recs:
        shown = "waiting" if r.wait_until is not None and not r.phase.terminal else str(r.phase)
        who = f"{holders.get(r.path) or '-':<12} " if holders is not None else ""
        click.echo(f"{shown:<12} {who}{r.job_id or '-':<38} {r.path}")


@cli.command()
@click.argument("name")
@click.option("--state", type=click.Path(dir_okay=False), help="State database file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def why(ctx: click.Context, name: str, state: str | None, as_json: bool) -> None:
    """Explain a ticket: its history, last error and next retry.

    NAME is the ticket's file name, its stem or its full path.
    """
    cfg, store = _open_readonly(ctx, state)
    recs = store.find(name)
    held = _in_use(cfg, name) if _running_pid(cfg) is not None else []
    if held and not as_json:
        for h in held:  # a new ticket not read yet (an older record of it may follow)
            click.echo(f"{h['path']}")
            click.echo(f"  not read yet, since {_when(h['since'])}: {h['message']}")
    if not recs:
        tombs = store.pruned(name)[:1]  # the newest tombstone: what happened last
        store.close()
        if held and as_json:
            click.echo(json.dumps([{**h, "in_use": True} for h in held], indent=2))
            return
        if held and not tombs:
            return
        if not tombs:
            _die(f"no ticket matches {name!r} (try `convert-agent list`)", EXIT_NOT_FOUND)
        if as_json:
            click.echo(json.dumps([t.public() for t in tombs], indent=2))
            return
        for t in tombs:
            click.echo(f"{t.path}")
            click.echo(
                f"  pruned:  {_when(t.pruned_at)} — its record was removed by retention "
                "(state.keep_days / state.keep_finished)"
            )
            click.echo(f"  outcome: {t.outcome}, finished {_when(t.finished_at)}")
        return
    out = []
    for r in recs:
        out.append(
            {
                **_row(r),
                "outputs": [o.public() for o in store.outputs(r.id)],
                "history": store.history(r.id),
            }
        )
    store.close()
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    for d in out:
        click.echo(f"{d['ticket']}")
        click.echo(f"  phase:   {d['phase']}{' (waiting)' if d['waiting'] else ''}")
        click.echo(f"  job:     {d['job_id'] or '-'}  server status: {d['server_status'] or '-'}")
        if d["error"]:
            click.echo(f"  problem: {d['error']['message']}")
        if d["waiting"]:
            click.echo(f"  next attempt: {_when(d['next_attempt_at'])}")
        for o in d["outputs"]:
            click.echo(f"  output:  {o['name']} [{o['state']}, {o['verdict'] or '-'}]")
        click.echo("  history:")
        for h in d["history"]:
            msg = f" — {h['message']}" if h["message"] else ""
            click.echo(f"    {_when(h['at'])}  {h['event']:<10} {h['phase']}{msg}")


# --------------------------------------------------------------------------- operator commands


def _control(cfg: Config) -> Control | None:
    """The running agent's local API; None when no agent runs with this state file."""
    from agent.control import Control

    if _running_pid(cfg) is None:
        return None
    found = Control.find(cfg.state.path)
    if found is None:
        _die(
            "an agent is running with this state file but its local API is off "
            "(dashboard.enabled: false); stop it, or enable the dashboard",
            EXIT_FAILED,
        )
    return found


def _remote(cfg: Config, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    from agent.control import ControlError

    ctl = _control(cfg)
    assert ctl is not None
    try:
        return ctl.call(method, path, body)
    except ControlError as err:
        _die(str(err), EXIT_FAILED)


def _emit(as_json: bool, data: Any, text: str) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else text)


@cli.command()
@click.option("--state", type=click.Path(dir_okay=False), help="State database file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def pause(ctx: click.Context, state: str | None, as_json: bool) -> None:
    """Stop taking new tickets; tickets already running go on.

    Works on a running agent (through its local API) and on a stopped one (the next start
    begins paused).
    """
    _set_paused(ctx, state, as_json, True)


@cli.command()
@click.option("--state", type=click.Path(dir_okay=False), help="State database file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def resume(ctx: click.Context, state: str | None, as_json: bool) -> None:
    """Take new tickets again (undoes `pause`, and retries at once after an auth problem)."""
    _set_paused(ctx, state, as_json, False)


def _set_paused(ctx: click.Context, state: str | None, as_json: bool, paused: bool) -> None:
    cfg = _config(ctx, (), state)
    word = "paused" if paused else "resumed"
    if _control(cfg) is not None:
        _remote(cfg, "POST", "/api/pause" if paused else "/api/resume")
        _emit(as_json, {"paused": paused, "running": True}, f"intake {word}")
        return
    from agent.daemon import open_state

    try:
        store = open_state(cfg)
    except ConfigError as err:
        _die(err.message, EXIT_CONFIG)
    try:
        store.set_meta("paused", "1" if paused else None)
    finally:
        store.close()
    _emit(
        as_json,
        {"paused": paused, "running": False},
        f"intake {word} (the agent is not running; it applies when it starts)",
    )


@cli.command()
@click.argument("name", required=False)
@click.option("--state", type=click.Path(dir_okay=False), help="State database file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def retry(ctx: click.Context, name: str | None, state: str | None, as_json: bool) -> None:
    """Retry a failed or waiting ticket now; without NAME, every failed ticket.

    NAME is the ticket's file name, its stem or its path. A failed ticket is renamed back from
    NAME.job.failed to NAME.job and becomes a new request.
    """
    cfg = _config(ctx, (), state)
    if _control(cfg) is not None:
        done = _remote(cfg, "POST", "/api/retry", {"name": name} if name else {})
        paths = done.get("retried", []) if isinstance(done, dict) else done
    else:
        _, store = _open_readonly(ctx, state)
        try:
            recs = store.find(name) if name else store.tickets(phases=[Phase.FAILED])
        finally:
            store.close()
        paths = []
        for rec in recs:
            ticket = Path(rec.path)
            failed = ticket.with_name(ticket.name + ".failed")
            if rec.phase is Phase.FAILED and failed.exists() and not ticket.exists():
                os.replace(failed, ticket)
                paths.append(rec.path)
    if not paths:
        _die(f"nothing to retry{f' for {name!r}' if name else ''}", EXIT_NOT_FOUND)
    _emit(as_json, {"retried": paths}, "\n".join(f"retrying {p}" for p in paths))


@cli.command()
@click.argument("name")
@click.option("--state", type=click.Path(dir_okay=False), help="State database file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def cancel(ctx: click.Context, name: str, state: str | None, as_json: bool) -> None:
    """Cancel a ticket and its remote job; the ticket becomes NAME.job.canceled.

    Needs the agent running (it owns the job); with the agent stopped, delete or move the
    ticket file instead and the remote job is canceled when the agent next starts.
    """
    cfg = _config(ctx, (), state)
    if _control(cfg) is None:
        _die(
            "the agent is not running: delete or move the ticket file instead, and its job is "
            "canceled when the agent starts",
            EXIT_FAILED,
        )
    done = _remote(cfg, "POST", "/api/cancel", {"name": name})
    paths = done.get("canceled", []) if isinstance(done, dict) else done
    if not paths:
        _die(f"no running ticket matches {name!r}", EXIT_NOT_FOUND)
    _emit(as_json, {"canceled": paths}, "\n".join(f"canceled {p}" for p in paths))


@cli.command()
@click.option("--state", type=click.Path(dir_okay=False), help="State database file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def rescan(ctx: click.Context, state: str | None, as_json: bool) -> None:
    """Make a running agent rescan its folders now (for events a network share never sent)."""
    cfg = _config(ctx, (), state)
    if _control(cfg) is None:
        _emit(
            as_json,
            {"rescanned": False, "running": False},
            "the agent is not running; it scans every folder when it starts",
        )
        return
    _remote(cfg, "POST", "/api/rescan")
    _emit(as_json, {"rescanned": True, "running": True}, "rescan requested")


@cli.command()
@click.option("--state", type=click.Path(dir_okay=False), help="State database file.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds to wait for the agent to finish stopping.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def stop(ctx: click.Context, state: str | None, timeout: float, as_json: bool) -> None:
    """Stop the running agent cleanly, as the tray's Quit, Ctrl-C or SIGTERM do.

    Goes through the agent's local API, so it also stops an agent with no console and no tray
    (on Windows, one started at login). Waits until it has stopped.
    """
    cfg = _config(ctx, (), state)
    if _control(cfg) is None:
        _emit(as_json, {"stopped": False, "running": False}, "the agent is not running")
        return
    _remote(cfg, "POST", "/api/stop")
    deadline = time.monotonic() + timeout
    while _running_pid(cfg) is not None:
        if time.monotonic() > deadline:
            _die(
                f"the agent was asked to stop and is still stopping after {timeout:.0f}s "
                "(a step under way ends first); look again with `convert-agent status`",
                EXIT_FAILED,
            )
        time.sleep(0.1)
    _emit(as_json, {"stopped": True, "running": False}, "the agent stopped")


@cli.command()
@click.option("--state", type=click.Path(dir_okay=False), help="State database file.")
@click.option("--open", "open_it", is_flag=True, help="Open it in the default browser.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def dashboard(ctx: click.Context, state: str | None, open_it: bool, as_json: bool) -> None:
    """Print (or open) the running agent's dashboard address.

    The address carries the per-run token once; the page swaps it for a cookie. Anyone who can
    read it can control the agent, so it is printed only to you.
    """
    import webbrowser

    cfg = _config(ctx, (), state)
    ctl = _control(cfg)
    if ctl is None:
        _die("the agent is not running (start it with `convert-agent run`)", EXIT_NOT_FOUND)
    url = f"{ctl.url}/?token={ctl.token}"
    if open_it:
        webbrowser.open(url)
    _emit(as_json, {"url": url}, url)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check the configuration, the API key, the network, the folders, inotify, disk and clock.

    Exits 0 when nothing failed (warnings allowed), 1 otherwise. Every problem comes with a hint.
    """
    from agent.doctor import run_checks

    cfg = _config(ctx)
    checks = run_checks(cfg)
    failed = any(c.verdict == "fail" for c in checks)
    if as_json:
        click.echo(
            json.dumps({"ok": not failed, "checks": [c.to_dict() for c in checks]}, indent=2)
        )
    else:
        click.echo(f"config: {cfg.source or 'none (defaults, environment and flags)'}")
        for c in checks:
            click.echo(f"{c.verdict.upper():<5} {c.name}: {c.detail}")
            if c.hint:
                click.echo(f"      → {c.hint}")
    sys.exit(EXIT_FAILED if failed else EXIT_OK)


@cli.group()
def config() -> None:
    """Inspect the configuration."""


@config.command(name="path")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def config_path(ctx: click.Context, as_json: bool) -> None:
    """Print which config file is used (or would be), and whether it exists."""
    from agent.config import ENV_CONFIG, default_config_path

    given = (ctx.obj or {}).get("config") or os.environ.get(ENV_CONFIG) or None
    path = Path(given).expanduser().resolve() if given else default_config_path()
    data = {"path": str(path), "exists": path.is_file(), "from": "flag/env" if given else "default"}
    _emit(as_json, data, f"{path}{'' if data['exists'] else '  (does not exist yet)'}")


@cli.group()
def autostart() -> None:
    """Start the agent when you log in (or stop doing so).

    Linux: an XDG autostart entry (desktop sessions, with the tray) and a systemd user unit
    (enable it by hand for machines without a desktop); macOS: a LaunchAgent; Windows: a
    Startup-folder entry. A --config given here is passed on to the entry.
    """


def _autostart_entries(ctx: click.Context) -> list[Any]:
    from agent.autostart import agent_command, platform_entries

    given = (ctx.obj or {}).get("config")
    return platform_entries(agent_command(Path(given) if given else None))


def _autostart_report(changes: list[Any], as_json: bool, hint: str = "") -> None:
    if as_json:
        click.echo(json.dumps({"changes": [c.to_dict() for c in changes]}, indent=2))
        return
    for c in changes:
        click.echo(f"{c.action:<9} {c.path}")
    if hint:
        click.echo(hint)


@autostart.command(name="install")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def autostart_install(ctx: click.Context, as_json: bool) -> None:
    """Write the login entry for this platform (running it again changes nothing)."""
    from agent.autostart import install, start_hint

    entries = _autostart_entries(ctx)
    try:
        changes = install(entries)
    except OSError as exc:
        _die(f"cannot write the login entry: {exc}", EXIT_FAILED)
    _autostart_report(changes, as_json, start_hint(entries))


@autostart.command(name="remove")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def autostart_remove(ctx: click.Context, as_json: bool) -> None:
    """Remove the login entry (a running agent keeps running)."""
    from agent.autostart import remove

    try:
        changes = remove(_autostart_entries(ctx))
    except OSError as exc:
        _die(f"cannot remove the login entry: {exc}", EXIT_FAILED)
    _autostart_report(changes, as_json)


@cli.command()
@click.option(
    "--dir",
    "directory",
    default="demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Demo folder to create.",
)
@click.pass_context
def demo(ctx: click.Context, directory: str) -> None:
    """Run the built-in emulator and the agent on a demo folder, and show what happened."""
    from agent.demo import run_demo

    _setup_logging(ctx.obj["verbose"], ctx.obj["quiet"] + 1)
    try:
        code = asyncio.run(run_demo(Path(directory)))
    except AgentError as err:
        _die(err.message, EXIT_FAILED)
    sys.exit(code)


def main() -> None:
    try:
        cli(prog_name="convert-agent")
    except KeyboardInterrupt:
        sys.exit(130)
