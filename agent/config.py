"""Configuration: YAML file + environment + flags → one frozen, validated ``Config``, built once.

Precedence is flag (``overrides``) > environment > file > default (PRODUCT.md §7). Every error is a
``ConfigError`` naming the key and the line of the file, and saying what to do; a value out of
its range is refused, not silently changed. An empty key (``key:`` or ``null``) means its
default. Folder ``defaults`` are partial tickets, checked by ``agent.ticket``.

Must not touch the network or the state database; the only files it reads are the configuration
file and ``api.key_file``. The API key is never put in a message or a repr.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import platformdirs

from agent.errors import ConfigError
from agent.models import VerifyMode
from agent.store.urls import url_problem, url_secrets
from agent.ticket import FieldError, Node, load_yaml, validate_defaults

APP_NAME = "convert-agent"
DEFAULT_BASE_URL = "https://api.api2convert.com/v2"
ENV_API_KEY = "API2CONVERT_API_KEY"
ENV_BASE_URL = "API2CONVERT_BASE_URL"
ENV_CONFIG = "CONVERT_AGENT_CONFIG"
ENV_STATE_URL = "CONVERT_AGENT_STATE_URL"
MAX_CONFIG_BYTES = 1024 * 1024
MAX_INCLUDE_PATTERNS = 64

POLLING_MODES = ("auto", "always", "never")
ON_SUCCESS = ("rename", "keep", "delete")
LOG_LEVELS = ("debug", "info", "warning", "error")
OVERRIDE_KEYS = ("folders", "state_path", "base_url", "api_key")
SHARE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def default_config_path() -> Path:
    """``user_config_dir("convert-agent")/config.yaml``."""
    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)) / "config.yaml"


def default_state_path() -> Path:
    """``user_state_dir("convert-agent")/state.db``."""
    return Path(platformdirs.user_state_dir(APP_NAME, appauthor=False)) / "state.db"


def default_log_file() -> Path:
    """``user_log_dir("convert-agent")/convert-agent.log``."""
    return Path(platformdirs.user_log_dir(APP_NAME, appauthor=False)) / f"{APP_NAME}.log"


# --------------------------------------------------------------------------- the Config


@dataclass(frozen=True)
class ApiConfig:
    base_url: str = DEFAULT_BASE_URL
    key: str | None = field(default=None, repr=False)
    key_file: Path | None = None
    timeout: float = 30.0
    max_concurrency: int = 8
    requests_per_second: float = 1000.0  # the ceiling; the budget adapts below it (api.py)
    max_processing: int | None = None  # conversions at once; None = learned from 429s

    @property
    def is_loopback(self) -> bool:
        """True when the base URL points at this machine (the emulator, a local proxy)."""
        return _is_loopback_host(urlsplit(self.base_url).hostname or "")


@dataclass(frozen=True)
class FolderConfig:
    path: Path  # absolute
    recursive: bool = False
    include: tuple[str, ...] = ("*.job",)
    defaults: Mapping[str, Any] = field(default_factory=dict)  # a checked partial ticket
    polling: str = "auto"  # auto | always | never
    share: str = ""  # the folder's name across machines, if given; see `share_names`


@dataclass(frozen=True)
class TicketsConfig:
    on_success: str = "rename"  # rename | keep | delete
    settle_seconds: float = 1.0
    parse_grace_seconds: float = 10.0
    cancel_grace_seconds: float = 5.0
    resubmit_expired: bool = False


@dataclass(frozen=True)
class PollingConfig:
    min_interval: float = 1.0
    max_interval: float = 5.0
    reconcile_interval: float = 30.0
    fs_poll_interval: float = 2.0
    sweep: bool = True  # many jobs in flight: read their status from GET /jobs pages


@dataclass(frozen=True)
class DownloadConfig:
    verify: VerifyMode = VerifyMode.IF_PRESENT
    chunk_size: int = 1024 * 1024
    max_attempts: int = 3


@dataclass(frozen=True)
class StateConfig:
    path: Path = field(default_factory=default_state_path)
    # A PostgreSQL state (postgresql://…) instead of the file at ``path``; its password is a
    # secret (``Config.secrets``, never in a repr or a message: agent.store.urls.redact_url).
    url: str | None = field(default=None, repr=False)
    # Retention: finished tickets are kept this many days and at most this many (0 = no limit).
    keep_days: float = 30.0
    keep_finished: int = 10_000


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"  # debug | info | warning | error
    file: Path | None = field(default_factory=default_log_file)  # None: stderr only


@dataclass(frozen=True)
class DashboardConfig:
    enabled: bool = True  # the local web page, JSON API and /metrics (the CLI talks to it)
    port: int = 0  # on 127.0.0.1 only; 0 = any free port


@dataclass(frozen=True)
class NotificationsConfig:
    enabled: bool = True  # desktop notifications when tickets end (done, failed)
    batch_seconds: float = 2.0  # endings this close together make one notification


@dataclass(frozen=True)
class MarksConfig:
    """Folder marks (agent.foldermark): how often a mark is renewed, and how long a mark from
    another agent must stand still before it is taken over."""

    heartbeat_seconds: float = 10.0
    stale_seconds: float = 60.0


@dataclass(frozen=True)
class TeamConfig:
    """Team mode (several agents sharing a PostgreSQL ``state.url``; docs/team-mode.md): how
    this agent names itself to the others, and how long a claim on a ticket lives without a
    renewal (another agent takes the ticket over once it ran out)."""

    agent_name: str = ""  # "" = this machine's host name
    lease_seconds: float = 60.0


@dataclass(frozen=True)
class Config:
    api: ApiConfig = ApiConfig()
    folders: tuple[FolderConfig, ...] = ()
    tickets: TicketsConfig = TicketsConfig()
    polling: PollingConfig = PollingConfig()
    download: DownloadConfig = DownloadConfig()
    state: StateConfig = field(default_factory=StateConfig)
    log: LogConfig = field(default_factory=LogConfig)
    dashboard: DashboardConfig = DashboardConfig()
    notifications: NotificationsConfig = NotificationsConfig()
    marks: MarksConfig = MarksConfig()
    team: TeamConfig = TeamConfig()
    source: Path | None = None  # the configuration file read, if any

    def secrets(self) -> tuple[str, ...]:
        """Every secret this configuration holds, for redaction before anything is printed."""
        return tuple(s for s in (self.api.key, *url_secrets(self.state.url)) if s)


# --------------------------------------------------------------------------- loading


def load_config(
    path: Path | None, env: Mapping[str, str], overrides: Mapping[str, Any] | None = None
) -> Config:
    """Build the Config from the file, the environment and the flags.

    ``path`` None → ``env[CONVERT_AGENT_CONFIG]`` → ``default_config_path()`` if it exists → no
    file. ``overrides`` keys: ``folders`` (paths), ``state_path``, ``base_url``, ``api_key``;
    ``None`` values are ignored. Raises ConfigError naming the key and line.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(overrides) - set(OVERRIDE_KEYS)
    if unknown:
        raise ValueError(f"unknown config overrides: {sorted(unknown)}")

    source = _config_file(path, env)
    root = Node("map", {}, None)
    if source is not None:
        root = _read_file(source)
    base_dir = source.parent if source is not None else Path.cwd()
    reader = _Reader(base_dir, source)
    return reader.config(root, env, overrides)


def _config_file(path: Path | None, env: Mapping[str, str]) -> Path | None:
    if path is not None:
        return _absolute(Path(path), Path.cwd())
    from_env = env.get(ENV_CONFIG, "").strip()
    if from_env:
        return _absolute(Path(from_env), Path.cwd())
    default = default_config_path()
    return default if default.is_file() else None


def _read_file(path: Path) -> Node:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"the configuration file {path} does not exist — create it "
            "(config.example.yaml shows every key) or point --config at the right file"
        ) from exc
    except OSError as exc:
        raise ConfigError(
            f"cannot read the configuration file {path} ({exc.strerror or exc}) "
            "— check the path and its permissions"
        ) from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"the configuration file {path} is larger than 1 MiB — is it the right file?"
        )
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"the configuration file {path} is not UTF-8 text (byte {exc.start}) — save it as UTF-8"
        ) from exc
    try:
        node = load_yaml(text)
    except FieldError as exc:
        raise ConfigError(f"{exc.message} (in {path})", key=exc.key, line=exc.line) from exc
    if node.kind != "map":
        raise ConfigError(
            f"the configuration must be a YAML mapping such as `api: {{...}}` (in {path})",
            line=node.line,
        )
    return node


_T = TypeVar("_T")


class _Reader:
    """Reads one section after another; every problem becomes a ConfigError with key and line."""

    def __init__(self, base_dir: Path, source: Path | None) -> None:
        self.base_dir = base_dir
        self.source = source

    def error(self, message: str, key: str | None, line: int | None) -> ConfigError:
        if self.source is not None and line is not None:
            message = f"{message} (in {self.source})"
        return ConfigError(message, key=key, line=line)

    # -- structure

    def section(
        self, root: Mapping[str, Node], name: str, allowed: Iterable[str]
    ) -> dict[str, Node]:
        node = root.get(name)
        if node is None or (node.kind == "scalar" and node.value is None):
            return {}
        allowed = tuple(allowed)
        if node.kind != "map":
            raise self.error(
                f"must be a mapping of {', '.join(allowed)} — e.g. `{name}: {{{allowed[0]}: …}}`",
                name,
                node.line,
            )
        self.known(node, name, allowed)
        return {k: v for k, v in node.value.items() if not (v.kind == "scalar" and v.value is None)}

    def known(self, node: Node, prefix: str, allowed: tuple[str, ...]) -> None:
        for name, child in node.value.items():
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = (
                    f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(allowed)}"
                )
                key = f"{prefix}.{name}" if prefix else name
                raise self.error(f"unknown key — {hint}", key, child.line)

    def get(
        self,
        fields: Mapping[str, Node],
        section: str,
        name: str,
        default: _T,
        convert: Callable[[Node, str], _T],
    ) -> _T:
        node = fields.get(name)
        if node is None:
            return default
        return convert(node, f"{section}.{name}")

    # -- scalar kinds

    def number(
        self, lo: float, hi: float, *, integer: bool = False, example: str = "1.0"
    ) -> Callable[[Node, str], Any]:
        def convert(node: Node, key: str) -> Any:
            value = node.value
            if (
                node.kind != "scalar"
                or isinstance(value, bool)
                or not isinstance(value, int | float)
                or (integer and not isinstance(value, int))
            ):
                what = "a whole number" if integer else "a number"
                raise self.error(
                    f"must be {what} — e.g. `{key.rsplit('.', 1)[-1]}: {example}`", key, node.line
                )
            if not lo <= value <= hi:
                raise self.error(
                    f"{value} is out of range — use a value from {lo:g} to {hi:g}", key, node.line
                )
            return value if integer else float(value)

        return convert

    def boolean(self, node: Node, key: str) -> bool:
        if node.kind != "scalar" or not isinstance(node.value, bool):
            raise self.error("must be true or false", key, node.line)
        return node.value

    def choice(self, choices: tuple[str, ...]) -> Callable[[Node, str], str]:
        def convert(node: Node, key: str) -> str:
            value = node.raw if node.kind == "scalar" else None
            if not isinstance(value, str) or value.lower() not in choices:
                raise self.error(
                    f"must be one of {' | '.join(choices)} — pick one of them", key, node.line
                )
            return value.lower()

        return convert

    def text(self, node: Node, key: str) -> str:
        if node.kind != "scalar" or node.raw is None or node.value is None:
            raise self.error("must be a single text value", key, node.line)
        value = node.raw.strip()
        if not value or "\x00" in value:
            raise self.error("must be a non-empty text without NUL characters", key, node.line)
        return value

    def path(self, node: Node, key: str) -> Path:
        return _absolute(Path(self.text(node, key)), self.base_dir)

    # -- sections

    def config(self, root: Node, env: Mapping[str, str], overrides: Mapping[str, Any]) -> Config:
        top: dict[str, Node] = root.value
        self.known(
            root,
            "",
            (
                "version",
                "api",
                "folders",
                "tickets",
                "polling",
                "download",
                "state",
                "log",
                "dashboard",
                "notifications",
                "marks",
                "team",
            ),
        )
        version = top.get("version")
        if version is not None and (version.value != 1 or isinstance(version.value, bool)):
            raise self.error(
                "only configuration version 1 exists — write `version: 1` or remove the key",
                "version",
                version.line,
            )
        folders = self.folders(top.get("folders"))
        if "folders" in overrides:
            folders = _override_folders(folders, overrides["folders"])
        state_fields = self.section(top, "state", ("path", "url", "keep_days", "keep_finished"))
        state = StateConfig(
            path=self.get(state_fields, "state", "path", default_state_path(), self.path),
            keep_days=self.get(
                state_fields, "state", "keep_days", 30.0, self.number(0, 36500, example="30")
            ),
            keep_finished=self.get(
                state_fields,
                "state",
                "keep_finished",
                10_000,
                self.number(0, 100_000_000, integer=True, example="10000"),
            ),
        )
        if "state_path" in overrides:
            state = dataclasses.replace(
                state, path=_absolute(Path(overrides["state_path"]), Path.cwd())
            )
        state = self.state_url(state, top, env)
        return Config(
            api=self.api(self.section(top, "api", _fields(ApiConfig)), env, overrides),
            folders=folders,
            tickets=self.tickets(self.section(top, "tickets", _fields(TicketsConfig))),
            polling=self.polling(self.section(top, "polling", _fields(PollingConfig))),
            download=self.download(self.section(top, "download", _fields(DownloadConfig))),
            state=state,
            log=self.log(self.section(top, "log", _fields(LogConfig))),
            dashboard=self.dashboard(self.section(top, "dashboard", _fields(DashboardConfig))),
            notifications=self.notifications(
                self.section(top, "notifications", _fields(NotificationsConfig))
            ),
            marks=self.marks(self.section(top, "marks", _fields(MarksConfig))),
            team=self.team(self.section(top, "team", _fields(TeamConfig))),
            source=self.source,
        )

    def state_url(
        self, state: StateConfig, top: Mapping[str, Node], env: Mapping[str, str]
    ) -> StateConfig:
        """``state.url``, or ``CONVERT_AGENT_STATE_URL`` (which wins): checked, never quoted."""
        url: str | None = None
        if env.get(ENV_STATE_URL, "").strip():
            url = env[ENV_STATE_URL].strip()
            problem = url_problem(url)
            if problem is not None:
                raise self.error(problem, ENV_STATE_URL, None)
        else:
            node = top.get("state")
            fields = node.value if node is not None and node.kind == "map" else {}
            found = fields.get("url")
            if found is not None and not (found.kind == "scalar" and found.value is None):
                url = self.text(found, "state.url").strip()
                problem = url_problem(url)
                if problem is not None:
                    raise self.error(problem, "state.url", found.line)
        return dataclasses.replace(state, url=url) if url else state

    def api(
        self, fields: dict[str, Node], env: Mapping[str, str], overrides: Mapping[str, Any]
    ) -> ApiConfig:
        if "base_url" in overrides:
            base_url = _check_base_url(str(overrides["base_url"]), "base_url", None, self)
        elif env.get(ENV_BASE_URL, "").strip():
            base_url = _check_base_url(env[ENV_BASE_URL], ENV_BASE_URL, None, self)
        elif "base_url" in fields:
            node = fields["base_url"]
            base_url = _check_base_url(
                self.text(node, "api.base_url"), "api.base_url", node.line, self
            )
        else:
            base_url = DEFAULT_BASE_URL

        if "key" in fields and "key_file" in fields:
            raise self.error(
                "give either api.key or api.key_file, not both — remove one",
                "api.key_file",
                fields["key_file"].line,
            )
        key_file = self.get(fields, "api", "key_file", None, self.path)
        key: str | None
        if str(overrides.get("api_key", "")).strip():
            key = _check_key(str(overrides["api_key"]), "api_key", None, self)
        elif env.get(ENV_API_KEY, "").strip():
            key = _check_key(env[ENV_API_KEY], ENV_API_KEY, None, self)
        elif "key" in fields:
            node = fields["key"]
            key = _check_key(self.text(node, "api.key"), "api.key", node.line, self)
        elif key_file is not None:
            key = self.read_key_file(key_file, fields["key_file"].line)
        else:
            key = None

        return ApiConfig(
            base_url=base_url,
            key=key,
            key_file=key_file,
            timeout=self.get(fields, "api", "timeout", 30.0, self.number(1, 600, example="30")),
            max_concurrency=self.get(
                fields, "api", "max_concurrency", 8, self.number(1, 64, integer=True, example="8")
            ),
            requests_per_second=self.get(
                fields,
                "api",
                "requests_per_second",
                1000.0,
                self.number(0.1, 100_000, example="1000"),
            ),
            max_processing=self.get(
                fields,
                "api",
                "max_processing",
                None,
                self.number(1, 100_000, integer=True, example="4"),
            ),
        )

    def read_key_file(self, path: Path, line: int | None) -> str:
        try:
            with path.open("rb") as handle:
                data = handle.read(64 * 1024)
            text = data.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise self.error(
                f"{path} is not UTF-8 text — it should hold just the API key",
                "api.key_file",
                line,
            ) from exc
        except OSError as exc:
            raise self.error(
                f"cannot read {path} ({exc.strerror or exc}) — check the path and permissions",
                "api.key_file",
                line,
            ) from exc
        if not text:
            raise self.error(f"{path} is empty — put the API key in it", "api.key_file", line)
        return _check_key(text, "api.key_file", line, self)

    def folders(self, node: Node | None) -> tuple[FolderConfig, ...]:
        if node is None or (node.kind == "scalar" and node.value is None):
            return ()
        if node.kind != "seq":
            raise self.error(
                "must be a list of folders — e.g. `folders: [{path: ~/Convert/inbox}]`",
                "folders",
                node.line,
            )
        result: list[FolderConfig] = []
        seen: dict[Path, int] = {}
        shares: dict[str, int] = {}
        for i, item in enumerate(node.value):
            key = f"folders[{i}]"
            folder = self.folder(item, key)
            if folder.path in seen:
                raise self.error(
                    f"{folder.path} is already listed as folders[{seen[folder.path]}] "
                    "— list each folder once",
                    f"{key}.path",
                    item.line,
                )
            seen[folder.path] = i
            if folder.share:
                share_key = folder.share.lower()
                if share_key in shares:
                    raise self.error(
                        f"share {folder.share} is already the share of folders[{shares[share_key]}]"
                        " — give each folder its own share name",
                        f"{key}.share",
                        item.value["share"].line if item.kind == "map" else item.line,
                    )
                shares[share_key] = i
            result.append(folder)
        return tuple(result)

    def folder(self, node: Node, key: str) -> FolderConfig:
        if node.kind == "scalar":  # the short form: just a path
            return FolderConfig(path=self.path(node, f"{key}.path"))
        if node.kind != "map":
            raise self.error("each folder is a path or a mapping with `path:`", key, node.line)
        allowed = _fields(FolderConfig)
        self.known(node, key, allowed)
        fields = {
            k: v for k, v in node.value.items() if not (v.kind == "scalar" and v.value is None)
        }
        if "path" not in fields:
            raise self.error("path: required — e.g. `path: ~/Convert/inbox`", key, node.line)
        defaults: dict[str, Any] = {}
        if "defaults" in fields:
            try:
                defaults = validate_defaults(fields["defaults"], key_prefix=f"{key}.defaults")
            except FieldError as exc:
                raise self.error(exc.message, exc.key, exc.line) from exc
        return FolderConfig(
            path=self.path(fields["path"], f"{key}.path"),
            recursive=self.get(fields, key, "recursive", False, self.boolean),
            include=self.get(fields, key, "include", ("*.job",), self.include),
            defaults=defaults,
            polling=self.get(fields, key, "polling", "auto", self.choice(POLLING_MODES)),
            share=self.get(fields, key, "share", "", self.share),
        )

    def share(self, node: Node, key: str) -> str:
        value = self.text(node, key)
        if not SHARE_NAME.fullmatch(value):
            raise self.error(
                "must be 1 to 64 letters, digits, `.`, `_` or `-`, starting with a letter or "
                "digit — e.g. `share: design-inbox`",
                key,
                node.line,
            )
        return value

    def include(self, node: Node, key: str) -> tuple[str, ...]:
        items = node.value if node.kind == "seq" else [node]
        if not items or len(items) > MAX_INCLUDE_PATTERNS:
            raise self.error(
                f'give 1 to {MAX_INCLUDE_PATTERNS} file patterns — e.g. `include: ["*.job"]`',
                key,
                node.line,
            )
        patterns = []
        for i, item in enumerate(items):
            item_key = f"{key}[{i}]" if node.kind == "seq" else key
            pattern = self.text(item, item_key)
            if "/" in pattern or "\\" in pattern:
                raise self.error(
                    "a pattern matches file names, not paths — remove the `/`",
                    item_key,
                    item.line,
                )
            patterns.append(pattern)
        return tuple(patterns)

    def tickets(self, fields: dict[str, Node]) -> TicketsConfig:
        return TicketsConfig(
            on_success=self.get(fields, "tickets", "on_success", "rename", self.choice(ON_SUCCESS)),
            settle_seconds=self.get(
                fields, "tickets", "settle_seconds", 1.0, self.number(0.05, 3600)
            ),
            parse_grace_seconds=self.get(
                fields, "tickets", "parse_grace_seconds", 10.0, self.number(0, 86400, example="10")
            ),
            cancel_grace_seconds=self.get(
                fields, "tickets", "cancel_grace_seconds", 5.0, self.number(0, 3600, example="5")
            ),
            resubmit_expired=self.get(fields, "tickets", "resubmit_expired", False, self.boolean),
        )

    def polling(self, fields: dict[str, Node]) -> PollingConfig:
        config = PollingConfig(
            min_interval=self.get(fields, "polling", "min_interval", 1.0, self.number(0.1, 3600)),
            max_interval=self.get(
                fields, "polling", "max_interval", 5.0, self.number(0.1, 86400, example="5")
            ),
            reconcile_interval=self.get(
                fields,
                "polling",
                "reconcile_interval",
                30.0,
                self.number(0.1, 86400, example="30"),
            ),
            fs_poll_interval=self.get(
                fields, "polling", "fs_poll_interval", 2.0, self.number(0.05, 3600, example="2")
            ),
            sweep=self.get(fields, "polling", "sweep", True, self.boolean),
        )
        if config.max_interval < config.min_interval:
            node = fields.get("max_interval") or fields.get("min_interval")
            raise self.error(
                f"max_interval ({config.max_interval:g}) is below min_interval "
                f"({config.min_interval:g}) — raise max_interval or lower min_interval",
                "polling.max_interval" if "max_interval" in fields else "polling.min_interval",
                node.line if node else None,
            )
        return config

    def download(self, fields: dict[str, Node]) -> DownloadConfig:
        verify = self.get(
            fields, "download", "verify", "if-present", self.choice(tuple(VerifyMode))
        )
        return DownloadConfig(
            verify=VerifyMode(verify),
            chunk_size=self.get(
                fields,
                "download",
                "chunk_size",
                1024 * 1024,
                self.number(4096, 64 * 1024 * 1024, integer=True, example="1048576"),
            ),
            max_attempts=self.get(
                fields,
                "download",
                "max_attempts",
                3,
                self.number(1, 100, integer=True, example="3"),
            ),
        )

    def dashboard(self, fields: dict[str, Node]) -> DashboardConfig:
        return DashboardConfig(
            enabled=self.get(fields, "dashboard", "enabled", True, self.boolean),
            port=self.get(
                fields, "dashboard", "port", 0, self.number(0, 65535, integer=True, example="8765")
            ),
        )

    def notifications(self, fields: dict[str, Node]) -> NotificationsConfig:
        return NotificationsConfig(
            enabled=self.get(fields, "notifications", "enabled", True, self.boolean),
            batch_seconds=self.get(
                fields,
                "notifications",
                "batch_seconds",
                2.0,
                self.number(0, 60, example="2.0"),
            ),
        )

    def marks(self, fields: dict[str, Node]) -> MarksConfig:
        config = MarksConfig(
            heartbeat_seconds=self.get(
                fields, "marks", "heartbeat_seconds", 10.0, self.number(0.1, 3600, example="10")
            ),
            stale_seconds=self.get(
                fields, "marks", "stale_seconds", 60.0, self.number(0.5, 86400, example="60")
            ),
        )
        if config.stale_seconds < 3 * config.heartbeat_seconds:
            node = fields.get("stale_seconds") or fields.get("heartbeat_seconds")
            raise self.error(
                f"stale_seconds ({config.stale_seconds:g}) must be at least three heartbeats "
                f"({3 * config.heartbeat_seconds:g}) — a live agent would be taken for gone",
                "marks.stale_seconds" if "stale_seconds" in fields else "marks.heartbeat_seconds",
                node.line if node else None,
            )
        return config

    def team(self, fields: dict[str, Node]) -> TeamConfig:
        return TeamConfig(
            agent_name=self.get(fields, "team", "agent_name", "", self.text),
            lease_seconds=self.get(
                fields, "team", "lease_seconds", 60.0, self.number(4, 3600, example="60")
            ),
        )

    def log(self, fields: dict[str, Node]) -> LogConfig:
        file: Path | None = default_log_file()
        node = fields.get("file")
        if node is not None:
            if node.kind == "scalar" and node.value is False:
                file = None
            else:
                file = self.path(node, "log.file")
        return LogConfig(
            level=self.get(fields, "log", "level", "info", self.choice(LOG_LEVELS)), file=file
        )


def _fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def default_share(path: Path) -> str:
    """A folder's default share name: its own name, lower-cased, other characters as ``-``.

    Not its path: machines mount one share at different paths (``/mnt/nas/inbox``,
    ``/Volumes/nas/inbox``), and the folder's own name is what they agree on."""
    name = re.sub(r"[^a-z0-9._-]+", "-", path.name.lower()).strip("-._")
    return name[:64] or "folder"


def share_names(folders: Iterable[FolderConfig]) -> tuple[str, ...]:
    """Each folder's share: ``share:`` if given, else ``default_share``; a default that another
    folder of this configuration also has gets ``-`` and 6 hex digits of a hash of its real
    path, so names stay unique within one agent."""
    folders = tuple(folders)
    names = [f.share or default_share(f.path) for f in folders]
    taken: dict[str, int] = {}
    for n in names:
        taken[n.lower()] = taken.get(n.lower(), 0) + 1
    out = []
    for f, n in zip(folders, names, strict=True):
        if not f.share and taken[n.lower()] > 1:
            digest = hashlib.sha256(os.path.realpath(f.path).encode()).hexdigest()[:6]
            n = f"{n[:57]}-{digest}"
        out.append(n)
    return tuple(out)


def _absolute(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return Path(os.path.abspath(path if path.is_absolute() else base / path))


def _override_folders(
    from_file: tuple[FolderConfig, ...], paths: Iterable[Any]
) -> tuple[FolderConfig, ...]:
    """``--folder`` replaces the file's folders; a folder also in the file keeps its settings."""
    known = {f.path: f for f in from_file}
    result: list[FolderConfig] = []
    for p in paths:
        path = _absolute(Path(p), Path.cwd())
        if path not in (f.path for f in result):
            result.append(known.get(path, FolderConfig(path=path)))
    return tuple(result)


def _check_base_url(value: str, key: str, line: int | None, reader: _Reader) -> str:
    url = value.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        host = None
        parts = urlsplit("")
    hint = f"e.g. `{DEFAULT_BASE_URL}`"
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise reader.error(f"must be an http(s) URL with a host — {hint}", key, line)
    if parts.username is not None or parts.password is not None:
        raise reader.error(
            "must not carry a user name or password — put the API key in api.key", key, line
        )
    if parts.query or parts.fragment or any(ch <= " " or ch == "\x7f" for ch in url):
        raise reader.error(
            f"must be a plain URL without query, fragment or spaces — {hint}", key, line
        )
    return url


def _check_key(value: str, key: str, line: int | None, reader: _Reader) -> str:
    secret = value.strip()
    # Never quote the key itself: a message may end up in a log.
    if not secret or any(ch <= " " or ch == "\x7f" for ch in secret):
        raise reader.error(
            "the API key is empty or contains spaces or control characters "
            "— copy it again from your account page",
            key,
            line,
        )
    return secret


def _is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
