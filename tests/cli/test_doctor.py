"""`convert-agent doctor`: each failure mode is reported with a hint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import cli
from agent.store import Store

KEY = "d0c7" * 8


@pytest.fixture(scope="module")
def emulator_url() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "emulator", "--port", "0", "--api-key", KEY],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on" in line, line
    try:
        yield line.split("listening on", 1)[1].strip()
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


def doctor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: str) -> tuple[int, dict]:
    for var in ("API2CONVERT_API_KEY", "API2CONVERT_BASE_URL", "CONVERT_AGENT_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config)
    res = CliRunner().invoke(cli, ["--config", str(cfg), "doctor", "--json"])
    return res.exit_code, json.loads(res.output)


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def test_healthy_setup_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emulator_url: str
) -> None:
    (tmp_path / "in").mkdir()
    code, report = doctor(
        tmp_path,
        monkeypatch,
        f"api: {{base_url: '{emulator_url}', key: {KEY}}}\nfolders: [in]\nstate: {{path: s.db}}\n",
    )
    assert code == 0, report
    checks = by_name(report)
    assert checks["api key"]["verdict"] == "ok"
    assert checks["api reachable"]["verdict"] == "ok"
    assert checks["clock"]["verdict"] == "ok"
    assert checks[f"folder {tmp_path / 'in'}"]["verdict"] == "ok"
    assert checks["state"]["verdict"] == "ok"
    assert KEY not in json.dumps(report)


def test_refused_key_missing_folder_and_loose_state_each_get_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emulator_url: str
) -> None:
    state = tmp_path / "s.db"
    Store.open(state).close()
    os.chmod(state, 0o644)
    code, report = doctor(
        tmp_path,
        monkeypatch,
        f"api: {{base_url: '{emulator_url}', key: wrongwrongwrong}}\nfolders: [nope]\n"
        "state: {path: s.db}\n",
    )
    assert code == 1
    checks = by_name(report)
    assert checks["api key"]["verdict"] == "fail" and "key" in checks["api key"]["hint"]
    folder = checks[f"folder {tmp_path / 'nope'}"]
    assert folder["verdict"] == "fail" and "mkdir" in folder["hint"]
    assert checks["state"]["verdict"] == "warn" and "chmod 600" in checks["state"]["hint"]
    assert "wrongwrongwrong" not in json.dumps(report)


def test_unreachable_api_and_no_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "in").mkdir()
    code, report = doctor(
        tmp_path,
        monkeypatch,
        "api: {base_url: 'http://127.0.0.1:9/v2'}\nfolders: [in]\nstate: {path: s.db}\n",
    )
    assert code == 1
    checks = by_name(report)
    assert (
        checks["api key"]["verdict"] == "fail"
        and "API2CONVERT_API_KEY" in checks["api key"]["hint"]
    )
    assert checks["api reachable"]["verdict"] == "fail"
    assert "base URL" in checks["api reachable"]["hint"]


def test_text_output_shows_hints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("API2CONVERT_API_KEY", raising=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("api: {base_url: 'http://127.0.0.1:9/v2'}\nstate: {path: s.db}\n")
    res = CliRunner().invoke(cli, ["--config", str(cfg), "doctor"])
    assert res.exit_code == 1
    assert "FAIL  folders: no folder is configured" in res.output
    assert "→ add one under `folders:`" in res.output
