"""The ``convert-agent`` command line: a thin front end over the daemon and the state store.

Exit codes (stable; see README):
  0  success
  1  a ticket failed (``run --once``) or an unexpected error
  2  usage error (bad flags)
  3  configuration problem or missing API key (the message names the key)
  4  not found (``why NAME`` matched no ticket; no state file yet)
  5  another agent already runs with this state file
  130 interrupted
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from agent import __version__
from agent.config import Config, load_config
from agent.errors import AgentError, ConfigError
from agent.store import StateLock, Store, TicketRecord

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
    logging.basicConfig(
        level=max(logging.DEBUG, min(logging.CRITICAL, level)),
        format="%(asctime)s %(levelname)-7s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
@click.pass_context
def run(ctx: click.Context, once: bool, folders: tuple[str, ...], state: str | None) -> None:
    """Run the agent in the foreground."""
    from agent.daemon import Agent, install_redaction

    _setup_logging(ctx.obj["verbose"], ctx.obj["quiet"])
    cfg = _config(ctx, folders, state)
    install_redaction(cfg.secrets())
    for f in cfg.folders:
        f.path.mkdir(parents=True, exist_ok=True)
    try:
        agent = Agent(cfg)
        code = asyncio.run(agent.run(once=once))
    except ConfigError as err:
        _die(err.message, EXIT_LOCKED if "already running" in err.message else EXIT_CONFIG)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code)


def _open_readonly(ctx: click.Context, state: str | None) -> tuple[Config, Store]:
    cfg = _config(ctx, (), state)
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
    data = {
        "running": pid is not None,
        "pid": pid,
        "paused": store.get_meta("paused") == "1",
        "state": str(cfg.state.path),
        "folders": [str(f.path) for f in cfg.folders],
        "tickets": counts,
    }
    store.close()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo("agent: " + (f"running (pid {data['pid']})" if data["running"] else "not running"))
    if data["paused"]:
        click.echo("intake: paused")
    click.echo(f"state: {data['state']}")
    active = {k: v for k, v in counts.items() if v}
    click.echo("tickets: " + (", ".join(f"{k} {v}" for k, v in active.items()) or "none"))


def _row(rec: TicketRecord) -> dict[str, Any]:
    return rec.public()


@cli.command(name="list")
@click.option("--state", type=click.Path(dir_okay=False), help="State database file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--phase", multiple=True, help="Only tickets in this phase (repeatable).")
@click.pass_context
def list_(ctx: click.Context, state: str | None, as_json: bool, phase: tuple[str, ...]) -> None:
    """List the tickets the agent knows about."""
    from agent.models import Phase

    _, store = _open_readonly(ctx, state)
    try:
        phases = [Phase(p) for p in phase] if phase else None
    except ValueError:
        _die(f"unknown phase; use one of: {', '.join(p.value for p in Phase)}", EXIT_USAGE)
    recs = store.tickets(phases=phases)
    store.close()
    if as_json:
        click.echo(json.dumps([_row(r) for r in recs], indent=2))
        return
    if not recs:
        click.echo("no tickets")
        return
    for r in recs:
        shown = "waiting" if r.wait_until is not None and not r.phase.terminal else str(r.phase)
        click.echo(f"{shown:<12} {r.job_id or '-':<38} {r.path}")


@cli.command()
@click.argument("name")
@click.option("--state", type=click.Path(dir_okay=False), help="State database file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def why(ctx: click.Context, name: str, state: str | None, as_json: bool) -> None:
    """Explain a ticket: its history, last error and next retry.

    NAME is the ticket's file name, its stem or its full path.
    """
    _, store = _open_readonly(ctx, state)
    recs = store.find(name)
    if not recs:
        store.close()
        _die(f"no ticket matches {name!r} (try `convert-agent list`)", EXIT_NOT_FOUND)
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


def _register_emulator() -> None:
    from agent.emulator.cli import emulator_command

    cli.add_command(emulator_command, name="emulator")


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


_register_emulator()


def main() -> None:
    try:
        cli(prog_name="convert-agent")
    except KeyboardInterrupt:
        sys.exit(130)
