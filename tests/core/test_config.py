"""Configuration: file + env + flags, defaults, and errors that name the key and the line."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from agent import config as config_module
from agent.config import (
    DEFAULT_BASE_URL,
    ApiConfig,
    Config,
    DownloadConfig,
    FolderConfig,
    LogConfig,
    PollingConfig,
    StateConfig,
    TicketsConfig,
    default_config_path,
    default_log_file,
    default_state_path,
    load_config,
)
from agent.errors import ConfigError
from agent.models import VerifyMode

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"
SECRET = "sk-THE-SECRET-KEY-123"


@pytest.fixture(autouse=True)
def no_default_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real config file in the user's home must not leak into these tests."""
    monkeypatch.setattr(config_module, "default_config_path", lambda: tmp_path / "absent.yaml")


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None, **overrides: Any) -> Config:
    return load_config(write(tmp_path, text), env or {}, overrides or None)


def refused(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    return info.value


# --------------------------------------------------------------------------- defaults, example


def test_no_file_gives_the_documented_defaults() -> None:
    config = load_config(None, {})
    assert config == Config()
    assert config.source is None
    assert config.api.base_url == DEFAULT_BASE_URL == "https://api.api2convert.com/v2"
    assert config.api.key is None
    assert config.state.path == default_state_path()
    assert config.state.path.name == "state.db"
    assert config.log.file == default_log_file()
    assert config.download.verify is VerifyMode.IF_PRESENT
    assert config.download.chunk_size == 1024 * 1024


def test_default_paths_come_from_platformdirs() -> None:
    import platformdirs

    assert default_config_path() == Path(
        platformdirs.user_config_dir("convert-agent", appauthor=False), "config.yaml"
    )
    assert default_state_path().parent == Path(
        platformdirs.user_state_dir("convert-agent", appauthor=False)
    )
    assert default_log_file().parent == Path(
        platformdirs.user_log_dir("convert-agent", appauthor=False)
    )


def test_the_example_file_loads_to_exactly_the_defaults() -> None:
    config = load_config(EXAMPLE, {})
    assert dataclasses.replace(config, source=None) == Config()


def test_the_example_documents_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for cls in (
        ApiConfig,
        FolderConfig,
        TicketsConfig,
        PollingConfig,
        DownloadConfig,
        StateConfig,
        LogConfig,
    ):
        for f in dataclasses.fields(cls):
            assert re.search(rf"^\s*#?\s*-?\s*{f.name}:.*#", text, re.M), (cls.__name__, f.name)
    for section in ("api", "folders", "tickets", "polling", "download", "state", "log"):
        assert re.search(rf"^{section}:", text, re.M), section


def test_the_examples_commented_folder_entry_is_valid(tmp_path: Path) -> None:
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#   - path:"))
    block = []
    for line in lines[start:]:
        if not line.startswith("#   "):
            break
        block.append("  " + line[4:])
    config = load(tmp_path, "folders:\n" + "\n".join(block) + "\n")
    folder = config.folders[0]
    assert folder.path == Path.home() / "Convert" / "inbox"
    assert folder.defaults == {"target": "pdf"}
    assert folder.include == ("*.job",)


def test_the_config_is_frozen_and_hides_the_key(tmp_path: Path) -> None:
    config = load(tmp_path, f"api: {{key: {SECRET}}}")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.api = ApiConfig()  # type: ignore[misc]
    assert SECRET not in repr(config)
    assert config.secrets() == (SECRET,)
    assert Config().secrets() == ()


def test_empty_values_mean_the_default(tmp_path: Path) -> None:
    config = load(tmp_path, "api:\n  timeout:\ntickets:\nstate: {path: null}\nlog: {file: ~}\n")
    assert config == Config(source=config.source)


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, "# nothing\n")
    assert dataclasses.replace(config, source=None) == Config()


def test_values_are_read_from_the_file(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
api: {timeout: 5, max_concurrency: 2, requests_per_second: 1.5}
tickets: {on_success: delete, settle_seconds: 0.05, parse_grace_seconds: 0,
          cancel_grace_seconds: 1, resubmit_expired: true}
polling: {min_interval: 0.5, max_interval: 0.5, reconcile_interval: 2, fs_poll_interval: 0.1}
download: {verify: required, chunk_size: 65536, max_attempts: 5}
state: {path: data/state.db}
log: {level: DEBUG, file: false}
""",
    )
    assert config.api.timeout == 5.0 and isinstance(config.api.timeout, float)
    assert config.api.max_concurrency == 2
    assert config.tickets == TicketsConfig("delete", 0.05, 0.0, 1.0, True)
    assert config.polling == PollingConfig(0.5, 0.5, 2.0, 0.1)
    assert config.download == DownloadConfig(VerifyMode.REQUIRED, 65536, 5)
    assert config.state.path == tmp_path / "data" / "state.db"
    assert config.log == LogConfig(level="debug", file=None)


# --------------------------------------------------------------------------- where the file is


def test_the_config_path_comes_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "tickets: {on_success: keep}")
    config = load_config(None, {"CONVERT_AGENT_CONFIG": str(path)})
    assert config.tickets.on_success == "keep"
    assert config.source == path


def test_the_default_path_is_used_when_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "tickets: {on_success: keep}", "default.yaml")
    monkeypatch.setattr(config_module, "default_config_path", lambda: path)
    assert load_config(None, {}).tickets.on_success == "keep"


def test_an_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", {})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(None, {"CONVERT_AGENT_CONFIG": str(tmp_path / "nope.yaml")})


def test_an_unreadable_or_binary_or_huge_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path, {})  # a directory
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"api: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad, {})
    bad.write_bytes(b"#" * (config_module.MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        load_config(bad, {})


# --------------------------------------------------------------------------- precedence


def test_env_beats_file_and_flags_beat_env_for_the_base_url(tmp_path: Path) -> None:
    text = "api: {base_url: 'https://file.example/v2/'}"
    assert load(tmp_path, text).api.base_url == "https://file.example/v2"
    env = {"API2CONVERT_BASE_URL": "http://127.0.0.1:8080/v2"}
    assert load(tmp_path, text, env).api.base_url == "http://127.0.0.1:8080/v2"
    flagged = load(tmp_path, text, env, base_url="http://localhost:9/v2")
    assert flagged.api.base_url == "http://localhost:9/v2"


def test_env_beats_file_and_flags_beat_env_for_the_key(tmp_path: Path) -> None:
    text = "api: {key: from-file}"
    assert load(tmp_path, text).api.key == "from-file"
    env = {"API2CONVERT_API_KEY": " from-env \n"}
    assert load(tmp_path, text, env).api.key == "from-env"
    assert load(tmp_path, text, env, api_key="from-flag").api.key == "from-flag"
    assert load(tmp_path, text, {"API2CONVERT_API_KEY": ""}).api.key == "from-file"


def test_the_key_can_come_from_a_key_file(tmp_path: Path) -> None:
    (tmp_path / "key.txt").write_text(f"  {SECRET}\n")
    config = load(tmp_path, "api:\n  key_file: key.txt\n")
    assert config.api.key == SECRET
    assert config.api.key_file == tmp_path / "key.txt"


def test_an_env_key_wins_without_reading_the_key_file(tmp_path: Path) -> None:
    config = load(tmp_path, "api: {key_file: missing.txt}", {"API2CONVERT_API_KEY": "k"})
    assert config.api.key == "k"


def test_key_file_problems_name_the_key_and_line(tmp_path: Path) -> None:
    err = refused(tmp_path, "api:\n  key_file: missing.txt\n")
    assert err.key == "api.key_file" and err.line == 2 and "cannot read" in err.message
    (tmp_path / "empty.txt").write_text("\n")
    err = refused(tmp_path, "api:\n  key_file: empty.txt\n")
    assert err.key == "api.key_file" and "is empty" in err.message
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe")
    assert "not UTF-8" in refused(tmp_path, "api: {key_file: bin.txt}").message
    err = refused(tmp_path, "api:\n  key: a\n  key_file: empty.txt\n")
    assert err.key == "api.key_file" and err.line == 3 and "not both" in err.message


def test_a_malformed_key_is_refused_without_being_quoted(tmp_path: Path) -> None:
    err = refused(tmp_path, f"api:\n  key: '{SECRET} x'\n")
    assert err.key == "api.key" and err.line == 2
    assert SECRET not in err.message
    err = refused(tmp_path, "", {"API2CONVERT_API_KEY": f"{SECRET}\nX-Evil: 1"})
    assert err.key == "API2CONVERT_API_KEY" and SECRET not in err.message


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://host/v2", "http(s) URL"),
        ("api.api2convert.com/v2", "http(s) URL"),
        ("https://", "http(s) URL"),
        ("https://user:pw@host/v2", "user name or password"),
        ("https://host/v2?x=1", "without query"),
        ("https://host:99999/v2", "http(s) URL"),
    ],
)
def test_a_bad_base_url_is_refused_with_key_and_line(
    tmp_path: Path, url: str, fragment: str
) -> None:
    err = refused(tmp_path, f"api:\n  base_url: '{url}'\n")
    assert err.key == "api.base_url" and err.line == 2 and fragment in err.message
    err = refused(tmp_path, "", {"API2CONVERT_BASE_URL": url})
    assert err.key == "API2CONVERT_BASE_URL"


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8080/v2", True),
        ("http://localhost/v2", True),
        ("http://[::1]:80/v2", True),
        ("https://api.api2convert.com/v2", False),
        ("http://10.0.0.1/v2", False),
    ],
)
def test_is_loopback_recognises_this_machine(url: str, loopback: bool) -> None:
    assert ApiConfig(base_url=url).is_loopback is loopback


# --------------------------------------------------------------------------- errors with lines


@pytest.mark.parametrize(
    ("text", "key", "line", "fragment"),
    [
        ("colour: red", "colour", 1, "known keys"),
        ("api:\n  tiemout: 3", "api.tiemout", 2, "did you mean `timeout`?"),
        ("version: 2", "version", 1, "version: 1"),
        ("api: 5", "api", 1, "must be a mapping"),
        ("api:\n  timeout: soon", "api.timeout", 2, "must be a number"),
        ("api:\n  timeout: true", "api.timeout", 2, "must be a number"),
        ("api:\n  timeout: 0", "api.timeout", 2, "from 1 to 600"),
        ("api:\n  max_concurrency: 2.5", "api.max_concurrency", 2, "whole number"),
        ("api:\n  max_concurrency: 0", "api.max_concurrency", 2, "out of range"),
        ("api:\n  base_url: [x]", "api.base_url", 2, "single text value"),
        ("tickets:\n  settle_seconds: 0.01", "tickets.settle_seconds", 2, "from 0.05"),
        ("tickets:\n  on_success: move", "tickets.on_success", 2, "rename | keep | delete"),
        ("tickets:\n  resubmit_expired: maybe", "tickets.resubmit_expired", 2, "true or false"),
        ("polling:\n  min_interval: 0", "polling.min_interval", 2, "out of range"),
        (
            "polling:\n  min_interval: 10\n  max_interval: 5",
            "polling.max_interval",
            3,
            "below min_interval",
        ),
        ("polling:\n  min_interval: 60", "polling.min_interval", 2, "below min_interval"),
        ("download:\n  verify: always", "download.verify", 2, "required | if-present"),
        ("download:\n  chunk_size: 10", "download.chunk_size", 2, "out of range"),
        ("log:\n  level: loud", "log.level", 2, "debug | info"),
        ("folders: ~/x", "folders", 1, "list of folders"),
        ("folders:\n  - [a]", "folders[0]", 2, "path or a mapping"),
        ("folders:\n  - recursive: true", "folders[0]", 2, "path: required"),
        ("folders:\n  - path: a\n    recursiv: true", "folders[0].recursiv", 3, "did you mean"),
        ("folders:\n  - path: a\n    recursive: 1", "folders[0].recursive", 3, "true or false"),
        ("folders:\n  - path: a\n    polling: sometimes", "folders[0].polling", 3, "auto |"),
        ("folders:\n  - path: a\n    include: 'x/*.job'", "folders[0].include", 3, "remove the"),
        ("folders:\n  - path: a\n    include: []", "folders[0].include", 3, "file patterns"),
        ("folders:\n  - a\n  - path: ./a", "folders[1].path", 3, "listed as folders[0]"),
        (
            "folders:\n  - path: a\n    defaults:\n      target: 'p df'",
            "folders[0].defaults.target",
            4,
            "format name",
        ),
        (
            "folders:\n  - path: a\n    defaults:\n      tagret: pdf",
            "folders[0].defaults.tagret",
            4,
            "did you mean `target`?",
        ),
        (
            "folders:\n  - path: a\n    defaults: {job: abc}",
            "folders[0].defaults.job",
            3,
            "ticket itself",
        ),
        (
            "folders:\n  - path: a\n    defaults: {output: {name: 'x/{stem}'}}",
            "folders[0].defaults.output.name",
            3,
            "separator",
        ),
        ("api: {timeout: 3}\napi: {timeout: 4}", "api", 2, "duplicate key"),
    ],
)
def test_a_bad_value_names_its_key_and_line(
    tmp_path: Path, text: str, key: str, line: int | None, fragment: str
) -> None:
    err = refused(tmp_path, text)
    assert err.key == key
    assert err.line == line
    assert fragment in err.message


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("- a\n- b", 1, "must be a YAML mapping"),
        ("api: {timeout: 3\n", 2, "not valid YAML"),
        ("a: &x 1\nb: *x", 2, "aliases"),
        ("api: 1\n---\napi: 2", 2, "more than one YAML document"),
    ],
)
def test_a_broken_file_names_the_line_and_the_file(
    tmp_path: Path, text: str, line: int, fragment: str
) -> None:
    err = refused(tmp_path, text)
    assert err.line == line and fragment in err.message
    assert str(tmp_path / "config.yaml") in err.message


# --------------------------------------------------------------------------- folders


def test_folders_are_expanded_and_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    config = load(
        tmp_path,
        """
folders:
  - ~/inbox
  - path: rel/out
    recursive: true
    include: ["*.job", "*.png"]
    defaults: {target: PDF, output: {on_conflict: skip}}
    polling: always
""",
    )
    first, second = config.folders
    assert first == FolderConfig(path=home / "inbox")
    assert second.path == tmp_path / "rel" / "out"
    assert second.recursive is True
    assert second.include == ("*.job", "*.png")
    assert second.defaults == {"target": "pdf", "output": {"on_conflict": "skip"}}
    assert second.polling == "always"
    assert all(f.path.is_absolute() for f in config.folders)


def test_folder_flags_replace_the_file_folders_but_keep_their_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load(
        tmp_path,
        "folders:\n  - path: a\n    defaults: {target: pdf}\n  - b\n",
        folders=["a", str(tmp_path / "c"), "a"],
    )
    assert [f.path for f in config.folders] == [tmp_path / "a", tmp_path / "c"]
    assert config.folders[0].defaults == {"target": "pdf"}
    assert config.folders[1] == FolderConfig(path=tmp_path / "c")


def test_flags_for_state_work_without_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(
        None,
        {"API2CONVERT_API_KEY": "k", "API2CONVERT_BASE_URL": "http://127.0.0.1:1/v2"},
        {"folders": ["inbox"], "state_path": "s.db", "base_url": None, "api_key": None},
    )
    assert config.folders == (FolderConfig(path=tmp_path / "inbox"),)
    assert config.state.path == tmp_path / "s.db"
    assert config.api.key == "k" and config.api.is_loopback


def test_an_unknown_override_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown config overrides"):
        load_config(None, {}, {"colour": "red"})


def test_a_relative_log_file_is_relative_to_the_config_file(tmp_path: Path) -> None:
    assert load(tmp_path, "log: {file: logs/agent.log}").log.file == tmp_path / "logs/agent.log"
