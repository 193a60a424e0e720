"""How the CLI reaches a running agent: its local API (the dashboard server), found through the
runtime file the agent writes next to its state database (``STATE.dashboard.json``, mode 0600: url,
port, token, pid). Only loopback URLs are ever called, and the token never leaves this machine.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent import platform


class ControlError(Exception):
    """The running agent could not be reached or refused the request."""


def runtime_path(state_path: Path) -> Path:
    """Named after the state file, so two agents with state files in one folder never mix."""
    return state_path.with_name(f"{state_path.name}.dashboard.json")


def _alive(pid: int) -> bool:
    return platform.pid_alive(pid)


@dataclass(frozen=True)
class Control:
    url: str
    token: str

    @classmethod
    def find(cls, state_path: Path) -> Control | None:
        """The running agent's local API, or None when no agent (with a dashboard) runs."""
        try:
            info = json.loads(runtime_path(state_path).read_text())
            url, token, pid = str(info["url"]), str(info["token"]), int(info["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        host = urlsplit(url).hostname
        if host not in ("127.0.0.1", "localhost", "::1") or not _alive(pid):
            return None
        return cls(url.rstrip("/"), token)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body or {}).encode() if method != "GET" else None
        req = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/json",
                "X-Requested-With": "convert-agent",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise ControlError(f"the agent refused {method} {path}: {exc.code} {detail}") from exc
        except OSError as exc:
            raise ControlError(f"the agent's local API did not answer: {exc}") from exc
        return json.loads(raw) if raw else None
