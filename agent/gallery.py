"""The ticket gallery (``docs/examples/<guide>/``): one folder per api2convert SDK guide.

Each folder holds tickets (``*.job``), the inputs they name, a README, and ``example.yaml``, the
machine-readable part that the demo and the gallery test read:

```yaml
guide: create-archives            # the SDK guide it mirrors (the folder's name)
needs: [archive/zip]              # catalog entries (category/target) the API must offer,
                                  # input engines it must honour (engine/screenshot), and
                                  # inputs it must read (decode/pixel.png)
serve: {"https://www.example.com/": page.html}   # optional: URL inputs a test serves locally
receive: ["https://your-app.example.com/hook"]   # optional: callbacks a test receives locally
folder: {defaults: {target: webp}}               # optional: this folder's agent configuration
config: {api: {requests_per_second: 2}}          # optional: agent configuration sections
emulator: {rate_limit: 4}                        # optional: emulator settings it is shown with
expect: {bundle: [{kind: zip, members: [...]}]}  # ticket stem → checks of its outputs
```

Only reading lives here (no I/O beyond the folder, no network): ``discover`` lists the examples,
``Example.missing`` says which needs a catalog lacks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.errors import ConfigError

#: The SDK guides (the same twenty in every official SDK), in the SDKs' order.
GUIDES = (
    "quickstart",
    "convert-files",
    "uploading-files",
    "job-lifecycle",
    "add-watermark",
    "create-thumbnails",
    "compress-files",
    "create-archives",
    "create-hashes",
    "extract-assets",
    "file-analysis",
    "compare-files",
    "capture-website",
    "audio-operations",
    "image-operations",
    "webhooks",
    "presets",
    "statistics",
    "rate-limits",
    "authentication",
)
META = "example.yaml"
#: Need kinds that no catalog lists: a test finds out by trying (``engine/…``, ``decode/…``).
_PROBED = ("engine", "decode")
_KEYS = (
    "guide",
    "title",
    "needs",
    "serve",
    "receive",
    "folder",
    "config",
    "emulator",
    "expect",
)


def default_root() -> Path | None:
    """``docs/examples`` of a source checkout (an editable install); None when not shipped."""
    root = Path(__file__).resolve().parents[1] / "docs" / "examples"
    return root if root.is_dir() else None


@dataclass(frozen=True)
class Example:
    name: str
    path: Path
    title: str
    needs: tuple[str, ...]
    serve: Mapping[str, str] = field(default_factory=dict)
    receive: tuple[str, ...] = ()
    folder: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    emulator: Mapping[str, Any] = field(default_factory=dict)
    expect: Mapping[str, Any] = field(default_factory=dict)

    def tickets(self) -> list[Path]:
        return sorted(self.path.glob("*.job"))

    def catalog_needs(self) -> list[tuple[str, str]]:
        """The ``category/target`` needs as pairs (``engine/…`` needs are not in a catalog)."""
        pairs = []
        for need in self.needs:
            kind, _, name = need.partition("/")
            if kind not in _PROBED:
                pairs.append((kind, name))
        return pairs

    def engine_needs(self) -> list[str]:
        """``engine/NAME``: the API must honour that input engine (``screenshot``)."""
        return [n.partition("/")[2] for n in self.needs if n.startswith("engine/")]

    def decode_needs(self) -> list[str]:
        """``decode/FILE``: the API must read that input file of the example (as an image)."""
        return [n.partition("/")[2] for n in self.needs if n.startswith("decode/")]

    def missing(self, catalog: Iterable[tuple[str, str]]) -> list[str]:
        """The catalog needs that ``catalog`` (category, target pairs) does not list."""
        have = set(catalog)
        return [f"{c}/{t}" for c, t in self.catalog_needs() if (c, t) not in have]

    def files(self) -> list[Path]:
        """What goes into a watched folder: tickets and inputs (not the README or metadata)."""
        return sorted(
            p
            for p in self.path.iterdir()
            if p.is_file() and p.name not in (META, "README.md") and not p.name.startswith(".")
        )


def load(path: Path) -> Example:
    """Read one example folder's ``example.yaml``; ConfigError names what is wrong."""
    meta = path / META
    try:
        raw = yaml.safe_load(meta.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{meta}: cannot read it ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{meta}: must be a YAML mapping")
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{meta}: unknown key(s) {', '.join(unknown)}; known: {_KEYS}")
    if raw.get("guide") != path.name:
        raise ConfigError(f"{meta}: `guide` must be the folder's name, {path.name!r}")
    needs = raw.get("needs") or []
    if not isinstance(needs, list) or not all(
        isinstance(n, str) and n.count("/") == 1 and all(n.split("/")) for n in needs
    ):
        raise ConfigError(
            f"{meta}: `needs` must be a list of `category/target`, `engine/NAME` or `decode/FILE`"
        )
    receive = raw.get("receive") or []
    if not isinstance(receive, list) or not all(isinstance(u, str) for u in receive):
        raise ConfigError(f"{meta}: `receive` must be a list of callback URLs")
    for key in ("serve", "folder", "config", "emulator", "expect"):
        if not isinstance(raw.get(key) or {}, dict):
            raise ConfigError(f"{meta}: `{key}` must be a mapping")
    return Example(
        name=path.name,
        path=path,
        title=str(raw.get("title") or path.name),
        needs=tuple(needs),
        serve=raw.get("serve") or {},
        receive=tuple(receive),
        folder=raw.get("folder") or {},
        config=raw.get("config") or {},
        emulator=raw.get("emulator") or {},
        expect=raw.get("expect") or {},
    )


def discover(root: Path) -> list[Path]:
    """Every example folder under ``root`` (each direct subfolder), sorted by name."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
