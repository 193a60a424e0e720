"""``state.url`` / ``CONVERT_AGENT_STATE_URL`` in the configuration: checked, its password a
secret (redacted from logs, never in a repr or an error)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.config import ENV_STATE_URL, load_config
from agent.daemon import RedactingFilter
from agent.errors import ConfigError
from agent.store.urls import redact_url

SECRET = "p%40ss-W0rd"  # percent-encoded "p@ss-W0rd"
URL = f"postgresql://agent:{SECRET}@db.example.com:5432/convert"


def write(tmp_path: Path, state: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(f"api: {{key: k123456789}}\nfolders: [{tmp_path}]\nstate:\n{state}\n")
    return path


def test_the_url_is_read_from_the_file_and_the_environment_wins(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, f"  url: {URL}"), {})
    assert cfg.state.url == URL
    assert SECRET not in repr(cfg) and "p@ss" not in repr(cfg)
    other = "postgresql://other@db2/x"
    assert load_config(write(tmp_path, f"  url: {URL}"), {ENV_STATE_URL: other}).state.url == other
    assert load_config(write(tmp_path, "  url:"), {}).state.url is None


def test_the_password_is_a_secret_the_log_filter_redacts(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, f"  url: {URL}"), {})
    assert {SECRET, "p@ss-W0rd"} <= set(cfg.secrets())
    record = logging.LogRecord("x", logging.ERROR, "", 0, f"lost {URL} (p@ss-W0rd)", (), None)
    RedactingFilter(cfg.secrets()).filter(record)
    assert "W0rd" not in record.getMessage()
    assert redact_url(URL) == "postgresql://agent:***@db.example.com:5432/convert"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        (f"mysql://agent:{SECRET}@db/x", "must be a PostgreSQL URL"),
        (f"postgresql://agent:{SECRET}@db", "must name the database"),
        (f"postgresql://agent:{SECRET}@db:port/x", "is not a URL"),
    ],
)
def test_a_wrong_url_is_refused_without_quoting_it(tmp_path: Path, url: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"  url: '{url}'"), {})
    assert words in info.value.message and "state.url" in str(info.value.message) + str(
        info.value.key
    )
    assert "W0rd" not in info.value.message and SECRET not in info.value.message
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "  path: /tmp/x.db"), {ENV_STATE_URL: url})
    assert words in info.value.message and SECRET not in info.value.message
