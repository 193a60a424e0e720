"""The command line: help everywhere, read-only views, stable exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from agent.cli import EXIT_CONFIG, EXIT_LOCKED, EXIT_NOT_FOUND, cli
from agent.models import Phase
from agent.store import StateLock, Store


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in group.commands.items():
        out.append((*prefix, name))
        if isinstance(cmd, click.Group):
            out.extend(all_commands(cmd, (*prefix, name)))
    return out


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    for var in ("API2CONVERT_API_KEY", "API2CONVERT_BASE_URL", "CONVERT_AGENT_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    return CliRunner()


@pytest.mark.parametrize("command", all_commands(cli))
def test_every_command_has_help(runner: CliRunner, command: tuple[str, ...]) -> None:
    result = runner.invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    # a real sentence of help, not just the usage line
    assert len(result.output.splitlines()) > 3


def make_state(path: Path) -> Store:
    store = Store.open(path)
    rec = store.add_ticket(
        path="/in/report.job",
        root="/in",
        sha256="x",
        kind="conversion",
        spec={},
        inputs=[],
        idem_prefix="i",
        now=1.0,
    )
    store.update(rec.id, 2.0, event="created", phase=Phase.PROCESSING, job_id="job-1")
    store.update(
        rec.id,
        3.0,
        event="waiting",
        message="the API is down",
        error={"kind": "retryable", "title": "API unreachable", "message": "the API is down"},
        wait_until=4000000000.0,
        job_token="tok-secret",
    )
    return store


def test_status_list_why_read_the_state(runner: CliRunner, tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    make_state(state).close()
    res = runner.invoke(cli, ["status", "--state", str(state), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["running"] is False and data["tickets"]["processing"] == 1
    assert data["tickets"]["waiting"] == 1

    res = runner.invoke(cli, ["list", "--state", str(state), "--json"])
    (row,) = json.loads(res.output)
    assert row["name"] == "report.job" and row["waiting"] is True
    res = runner.invoke(cli, ["list", "--state", str(state)])
    assert "waiting" in res.output and "job-1" in res.output

    res = runner.invoke(cli, ["why", "report", "--state", str(state)])
    assert res.exit_code == 0
    assert "the API is down" in res.output and "next attempt" in res.output
    res = runner.invoke(cli, ["why", "report.job", "--state", str(state), "--json"])
    (d,) = json.loads(res.output)
    assert [h["event"] for h in d["history"]] == ["accepted", "created", "waiting"]
    assert "tok-secret" not in res.output


def test_why_unknown_ticket_exits_4(runner: CliRunner, tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    make_state(state).close()
    res = runner.invoke(cli, ["why", "nope", "--state", str(state)])
    assert res.exit_code == EXIT_NOT_FOUND
    assert "no ticket matches" in res.output


def test_no_state_file_yet_exits_4_with_a_hint(runner: CliRunner, tmp_path: Path) -> None:
    res = runner.invoke(cli, ["status", "--state", str(tmp_path / "none.db")])
    assert res.exit_code == EXIT_NOT_FOUND
    assert "convert-agent run" in res.output


def test_status_sees_a_running_agent_by_its_lock(runner: CliRunner, tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    make_state(state).close()
    lock = StateLock(state)
    lock.acquire()
    try:
        res = runner.invoke(cli, ["status", "--state", str(state), "--json"])
        data = json.loads(res.output)
        assert data["running"] is True and data["pid"] == os.getpid()
    finally:
        lock.release()


def test_run_without_a_key_exits_3_naming_what_to_set(runner: CliRunner, tmp_path: Path) -> None:
    res = runner.invoke(
        cli, ["run", "--once", "--folder", str(tmp_path / "in"), "--state", str(tmp_path / "s.db")]
    )
    assert res.exit_code == EXIT_CONFIG
    assert "API2CONVERT_API_KEY" in res.output


def test_bad_config_exits_3_naming_key_and_line(runner: CliRunner, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tickets:\n  settle_seconds: soon\n")
    res = runner.invoke(cli, ["--config", str(cfg), "status"])
    assert res.exit_code == EXIT_CONFIG
    assert "settle_seconds" in res.output and "line 2" in res.output


def test_second_agent_on_the_same_state_exits_5(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API2CONVERT_API_KEY", "k" * 32)
    monkeypatch.setenv("API2CONVERT_BASE_URL", "http://127.0.0.1:9/v2")
    state = tmp_path / "s.db"
    lock = StateLock(state)
    lock.acquire()
    try:
        res = runner.invoke(
            cli, ["run", "--once", "--folder", str(tmp_path), "--state", str(state)]
        )
    finally:
        lock.release()
    assert res.exit_code == EXIT_LOCKED
    assert "already running" in res.output


def test_pause_and_resume_without_a_running_agent_apply_at_next_start(
    runner: CliRunner, tmp_path: Path
) -> None:
    state = tmp_path / "state.db"
    make_state(state).close()
    res = runner.invoke(cli, ["pause", "--state", str(state), "--json"])
    assert res.exit_code == 0 and json.loads(res.output) == {"paused": True, "running": False}
    store = Store.open_readonly(state)
    assert store.get_meta("paused") == "1"
    store.close()
    res = runner.invoke(cli, ["resume", "--state", str(state)])
    assert res.exit_code == 0 and "resumed" in res.output
    store = Store.open_readonly(state)
    assert store.get_meta("paused") is None
    store.close()


def test_retry_without_a_running_agent_renames_failed_tickets_back(
    runner: CliRunner, tmp_path: Path
) -> None:
    state = tmp_path / "state.db"
    inbox = tmp_path / "in"
    inbox.mkdir()
    store = Store.open(state)
    rec = store.add_ticket(
        path=str(inbox / "a.job"),
        root=str(inbox),
        sha256="x",
        kind="conversion",
        spec={},
        inputs=[],
        idem_prefix="i",
        now=1.0,
    )
    store.update(rec.id, 2.0, event="failed", phase=Phase.FAILED, filed=True)
    store.close()
    (inbox / "a.job.failed").write_text("target: pdf\n")
    res = runner.invoke(cli, ["retry", "--state", str(state), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"retried": [str(inbox / "a.job")]}
    assert (inbox / "a.job").exists() and not (inbox / "a.job.failed").exists()
    res = runner.invoke(cli, ["retry", "--state", str(state)])
    assert res.exit_code == EXIT_NOT_FOUND and "nothing to retry" in res.output


def test_cancel_needs_a_running_agent(runner: CliRunner, tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    make_state(state).close()
    res = runner.invoke(cli, ["cancel", "report", "--state", str(state)])
    assert res.exit_code == 1 and "delete or move the ticket" in res.output


def test_config_path_names_the_file(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "mine.yaml"
    res = runner.invoke(cli, ["--config", str(cfg), "config", "path", "--json"])
    assert json.loads(res.output) == {"path": str(cfg), "exists": False, "from": "flag/env"}
    res = runner.invoke(cli, ["config", "path"])
    assert "xdg-config" in res.output and "does not exist yet" in res.output


def test_dashboard_without_a_running_agent_exits_4(runner: CliRunner, tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    make_state(state).close()
    res = runner.invoke(cli, ["dashboard", "--state", str(state)])
    assert res.exit_code == EXIT_NOT_FOUND and "not running" in res.output
