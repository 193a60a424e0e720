"""Ticket bytes → a validated ``TicketSpec``; and the ticket text written for rule-folder files.

A ticket is a UTF-8 YAML mapping of at most 64 KiB (PRODUCT.md §3). It is read with a safe loader
that refuses aliases outright (an alias bomb fails at its first ``*ref``), limits nesting, and
keeps the line of every key, so that each error names the key, its line, and what to do.

The YAML reading and the per-key checks are shared with ``config.py`` (folder ``defaults`` are
partial tickets): ``load_yaml`` gives a ``Node`` tree, ``validate_defaults`` checks one, and both
report a ``FieldError`` that the caller turns into its own error class.

Must not read anything but the bytes it is given; it only ``realpath``s local inputs to confine
them to the watched root.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from agent.errors import TicketError
from agent.models import (
    ConflictPolicy,
    ConversionSpec,
    DownloadOptions,
    Encoding,
    InputKind,
    InputSpec,
    OutputOptions,
    TicketKind,
    TicketSpec,
    VerifyMode,
)
from agent.paths import template_problem

MAX_TICKET_BYTES = 64 * 1024
MAX_DEPTH = 20
MAX_INPUTS = 100
MAX_CONVERSIONS = 20
MAX_INPUT_CHARS = 4096  # a path or a URL
MAX_TEXT_CHARS = 1024  # templates, passwords, tokens, option strings
MAX_OPTION_KEY_CHARS = 128
MAX_OPTION_ITEMS = 1000

TOP_KEYS = (
    "version",
    "input",
    "target",
    "category",
    "options",
    "conversion",
    "job",
    "token",
    "output",
    "download",
    "callback",
    "notify_status",
)
CONVERSION_KEYS = ("target", "category", "options")
OUTPUT_KEYS = ("name", "on_conflict")
INPUT_KEYS = ("source", "engine", "options", "parameters", "filename")
#: Keys that tell the server how to fetch a remote input; a local file is uploaded as it is.
URL_ONLY_INPUT_KEYS = ("engine", "options", "parameters")
#: The remote download engines of api-contract §2.2 (OA ``InputFile.engine``).
INPUT_ENGINES = ("auto", "video", "file", "website", "screenshot", "screenshot_pdf", "zip")
DOWNLOAD_KEYS = ("encoding", "password", "verify")
# Keys that describe a new conversion; an adoption ticket (``job:``) may have none of them.
_CONVERSION_SIDE = (
    "input",
    "target",
    "category",
    "options",
    "conversion",
    "callback",
    "notify_status",
)

_FORMAT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_JOB_ID = re.compile(r"[A-Za-z0-9._~-]{1,128}")
_TOKEN = re.compile(r"[\x21-\x7e]{1,1024}")
_URL_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")

_TAG = "tag:yaml.org,2002:"
_MAP, _SEQ = _TAG + "map", _TAG + "seq"
_STR, _NULL, _BOOL, _INT, _FLOAT = (_TAG + t for t in ("str", "null", "bool", "int", "float"))
_TIMESTAMP, _MERGE = _TAG + "timestamp", _TAG + "merge"
# Scalar conversion needs no loader state, so one stateless constructor serves every call.
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
_CONSTRUCTORS = yaml.constructor.SafeConstructor.yaml_constructors


# --------------------------------------------------------------------------- YAML with lines


class FieldError(ValueError):
    """One problem at one key of a YAML document; the caller makes it a TicketError/ConfigError."""

    def __init__(
        self, message: str, *, key: str | None = None, line: int | None = None, final: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.key = key
        self.line = line
        self.final = final  # no text appended could cure it (see TicketError.final)


@dataclass(frozen=True)
class Node:
    """A YAML value with the line it came from (1-based; None for values that came from code).

    ``value`` is ``dict[str, Node]`` for a mapping (keys as written), ``list[Node]`` for a sequence,
    and a plain str / int / float / bool / None for a scalar, whose source text is kept in ``raw``
    so that text fields can take what the user typed (``password: 0123`` stays ``"0123"``).
    """

    kind: Literal["map", "seq", "scalar"]
    value: Any
    line: int | None
    raw: str | None = None

    def plain(self) -> Any:
        if self.kind == "map":
            return {k: v.plain() for k, v in self.value.items()}
        if self.kind == "seq":
            return [v.plain() for v in self.value]
        return self.value

    @classmethod
    def from_plain(cls, value: Any, line: int | None = None) -> Node:
        """A Node for data that did not come from YAML text (folder defaults held in a Config)."""
        if isinstance(value, Mapping):
            return cls("map", {str(k): cls.from_plain(v, line) for k, v in value.items()}, line)
        if isinstance(value, list | tuple):
            return cls("seq", [cls.from_plain(v, line) for v in value], line)
        return cls("scalar", value, line, value if isinstance(value, str) else None)


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and deep nesting while composing, before any value exists."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            raise FieldError(
                "YAML aliases (*name) are not allowed — write the value out in full",
                line=_event_line(self),
                final=True,
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise FieldError(
                    f"nested more than {MAX_DEPTH} levels deep — flatten the structure",
                    line=_event_line(self),
                    final=True,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _event_line(loader: yaml.SafeLoader) -> int:
    event = loader.peek_event()  # type: ignore[no-untyped-call]
    return int(event.start_mark.line) + 1


def load_yaml(text: str) -> Node:
    """Parse one YAML document into a ``Node`` tree; an empty document is an empty mapping.

    Raises FieldError for invalid YAML, several documents, aliases, merge keys, duplicate keys,
    non-text keys and unknown tags.
    """
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # checks that every character is printable
        loader.get_event()  # type: ignore[no-untyped-call]  # stream start
        if loader.check_event(yaml.StreamEndEvent):
            return Node("map", {}, 1)
        root = loader.compose_document()
        if not loader.check_event(yaml.StreamEndEvent):
            raise FieldError(
                "more than one YAML document (a second `---`) — keep a single document",
                line=_event_line(loader),
            )
        if root is None:
            return Node("map", {}, 1)
        return _convert(root, root.start_mark.line + 1, "")
    except yaml.reader.ReaderError as exc:
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise FieldError(
            f"not a text file: it contains the control character U+{char:04X} "
            "— save it as plain UTF-8 text",
            final=True,
        ) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        raise FieldError(
            f"not valid YAML ({problem}) — check the indentation, and quote values that "
            "contain `: ` or ` #`",
            line=mark.line + 1 if mark else None,
        ) from exc
    except yaml.YAMLError as exc:
        raise FieldError(f"not valid YAML ({exc}) — check the syntax") from exc
    except RecursionError as exc:  # pragma: no cover - the depth limit comes first
        raise FieldError("nested too deeply — flatten the structure") from exc
    finally:
        if loader is not None:
            loader.dispose()


def _convert(node: yaml.Node, line: int, path: str) -> Node:
    if isinstance(node, yaml.MappingNode):
        if node.tag != _MAP:
            raise FieldError(_tag_message(node.tag), key=path or None, line=line)
        items: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise FieldError(
                    "a key must be plain text, not a list or mapping — write `name: value`",
                    key=path or None,
                    line=key_line,
                )
            if key_node.tag == _MERGE:
                raise FieldError(
                    "merge keys (<<) are not supported — write the keys out",
                    key=path or None,
                    line=key_line,
                )
            key = key_node.value
            child = _join(path, key)
            if key in items:
                raise FieldError(
                    f"duplicate key (first given on line {items[key].line}) — keep only one",
                    key=child,
                    line=key_line,
                )
            items[key] = _convert(value_node, key_line, child)
        return Node("map", items, line)
    if isinstance(node, yaml.SequenceNode):
        if node.tag != _SEQ:
            raise FieldError(_tag_message(node.tag), key=path or None, line=line)
        return Node(
            "seq",
            [
                _convert(item, item.start_mark.line + 1, f"{path}[{i}]")
                for i, item in enumerate(node.value)
            ],
            line,
        )
    assert isinstance(node, yaml.ScalarNode)
    return Node("scalar", _scalar_value(node, line, path), line, node.value)


def _scalar_value(node: yaml.ScalarNode, line: int, path: str) -> Any:
    tag, raw = node.tag, node.value
    if tag in (_STR, _TIMESTAMP):  # a date stays the text that was written
        return raw
    if tag == _NULL:
        return None
    if tag in (_BOOL, _INT, _FLOAT):
        try:
            return _CONSTRUCTORS[tag](_CONSTRUCTOR, node)
        except (ValueError, KeyError, IndexError, OverflowError, yaml.YAMLError):
            return raw  # e.g. an integer too long to convert, or `!!int` on nothing: the text
    raise FieldError(_tag_message(tag), key=path or None, line=line)


def _tag_message(tag: str) -> str:
    return f"the YAML tag {tag.replace(_TAG, '!!')} is not allowed — remove it"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --------------------------------------------------------------------------- field checks


class _Fields:
    """Type checks for ticket keys; records the line of every checked key for later errors."""

    def __init__(self) -> None:
        self.lines: dict[str, int | None] = {}

    def fail(self, key: str, message: str) -> FieldError:
        return FieldError(message, key=key, line=self.lines.get(key))

    # -- generic

    def mapping(self, node: Node, key: str, allowed: Iterable[str], hint: str) -> dict[str, Node]:
        self.lines.setdefault(key, node.line)
        if node.kind != "map":
            raise FieldError(f"must be a mapping — {hint}", key=key or None, line=node.line)
        allowed = tuple(allowed)
        for name, child in node.value.items():
            if name not in allowed:
                raise FieldError(
                    _unknown_key_message(name, allowed), key=_join(key, name), line=child.line
                )
        return dict(node.value)

    def text(self, node: Node, key: str, *, max_chars: int = MAX_TEXT_CHARS, example: str) -> str:
        self.lines.setdefault(key, node.line)
        if node.kind != "scalar":
            raise FieldError(
                f"must be a single text value — e.g. `{example}`", key=key, line=node.line
            )
        if node.value is None:
            raise FieldError(f"needs a value — e.g. `{example}`", key=key, line=node.line)
        value = node.value if isinstance(node.value, str) else node.raw
        if value is None:  # a number or flag handed in by code (folder defaults): its text form
            value = str(node.value)
        if "\x00" in value:
            raise FieldError("contains a NUL character — remove it", key=key, line=node.line)
        if len(value) > max_chars:
            raise FieldError(
                f"is {len(value)} characters long; the limit is {max_chars} — shorten it",
                key=key,
                line=node.line,
            )
        if not value:
            raise FieldError(f"is empty — e.g. `{example}`", key=key, line=node.line)
        return value

    def choice(self, node: Node, key: str, choices: Iterable[str]) -> str:
        choices = tuple(choices)
        value = self.text(node, key, example=f"{key.rsplit('.', 1)[-1]}: {choices[0]}")
        if value.lower() not in choices:
            raise FieldError(
                f"`{_show(value)}` is not one of {' | '.join(choices)} — pick one of them",
                key=key,
                line=node.line,
            )
        return value.lower()

    # -- ticket keys

    def version(self, node: Node, key: str) -> int:
        self.lines.setdefault(key, node.line)
        if node.kind != "scalar" or node.value != 1 or isinstance(node.value, bool):
            raise FieldError(
                "only ticket format version 1 exists — write `version: 1` or leave the key out",
                key=key,
                line=node.line,
            )
        return 1

    def format_name(self, node: Node, key: str, what: str, example: str) -> str:
        value = self.text(node, key, max_chars=64, example=example)
        if not _FORMAT_NAME.fullmatch(value):
            raise FieldError(
                f"`{_show(value)}` is not a {what} name — write it as a single word, "
                f"e.g. `{example}`",
                key=key,
                line=node.line,
            )
        return value.lower()

    def inputs(self, node: Node, key: str) -> list[str | dict[str, Any]]:
        """``input:`` as one value or a list; each item a path/URL or a mapping (``INPUT_KEYS``).

        A plain item stays a ``str``; a mapping item becomes ``{"source": …, <its other keys>}``.
        """
        self.lines.setdefault(key, node.line)
        if node.kind == "seq":
            if len(node.value) > MAX_INPUTS:
                raise FieldError(
                    f"{len(node.value)} inputs; at most {MAX_INPUTS} fit in one ticket "
                    "— split them over several tickets",
                    key=key,
                    line=node.line,
                )
            items = [(f"{key}[{i}]", item) for i, item in enumerate(node.value)]
        else:
            items = [(key, node)]
        result: list[str | dict[str, Any]] = []
        for item_key, item in items:
            self.lines.setdefault(item_key, item.line)
            if item.kind == "map":
                result.append(self.input_item(item, item_key))
            else:
                result.append(self.input_source(item, item_key))
        if not result:
            raise FieldError(
                "the list is empty — name at least one file or http(s) URL, "
                "e.g. `input: report.docx`",
                key=key,
                line=node.line,
            )
        return result

    def input_source(self, node: Node, key: str) -> str:
        value = self.text(node, key, max_chars=MAX_INPUT_CHARS, example="input: report.docx")
        if _URL_LIKE.match(value):
            _check_url(value, key, node.line)
        return value

    def input_item(self, node: Node, key: str) -> dict[str, Any]:
        """One input in the mapping form: ``{source: …, engine: …, options: {…}, …}``."""
        fields = self.mapping(
            node, key, INPUT_KEYS, "e.g. `- {source: https://example.com, engine: screenshot}`"
        )
        if "source" not in fields:
            raise FieldError(
                "source: required in an input written as a mapping — add the file or http(s) "
                "URL, e.g. `- {source: stamp.png}`",
                key=key,
                line=node.line,
            )
        out: dict[str, Any] = {"source": self.input_source(fields["source"], _join(key, "source"))}
        if "engine" in fields:
            out["engine"] = self.choice(fields["engine"], _join(key, "engine"), INPUT_ENGINES)
        for name in ("options", "parameters"):
            if name in fields:
                out[name] = self.options(
                    fields[name], _join(key, name), example=f"{name}: {{screen_width: 1280}}"
                )
        if "filename" in fields:
            name_key = _join(key, "filename")
            filename = self.text(fields["filename"], name_key, max_chars=255, example="filename: a")
            if (
                "/" in filename
                or "\\" in filename
                or filename in (".", "..")
                or any(ch < " " or ch == "\x7f" for ch in filename)
            ):
                raise FieldError(
                    f"`{_show(filename)}` is not a file name — write a bare name without "
                    "folders or control characters, e.g. `filename: stamp.png`",
                    key=name_key,
                    line=fields["filename"].line,
                )
            out["filename"] = filename
        if not _URL_LIKE.match(out["source"]):
            for name in URL_ONLY_INPUT_KEYS:
                if name in fields:
                    raise FieldError(
                        f"`{name}` only applies to an http(s) URL input (it tells the server how "
                        f"to fetch it); `{_show(out['source'])}` is a file here, uploaded as it "
                        f"is — remove `{name}`",
                        key=_join(key, name),
                        line=fields[name].line,
                    )
        return out

    def options(
        self, node: Node, key: str, *, example: str = "options: {pdfa: true}"
    ) -> dict[str, Any]:
        self.lines.setdefault(key, node.line)
        if node.kind != "map":
            raise FieldError(
                f"must be a mapping of options — e.g. `{example}`",
                key=key,
                line=node.line,
            )
        counter = [0]
        value = self._json(node, key, counter)
        assert isinstance(value, dict)
        return value

    def _json(self, node: Node, key: str, counter: list[int]) -> Any:
        counter[0] += 1
        if counter[0] > MAX_OPTION_ITEMS:
            raise FieldError(
                f"more than {MAX_OPTION_ITEMS} option values — trim the options",
                key=key,
                line=node.line,
            )
        if node.kind == "map":
            result: dict[str, Any] = {}
            for name, child in node.value.items():
                child_key = _join(key, name)
                if not name or len(name) > MAX_OPTION_KEY_CHARS or "\x00" in name:
                    raise FieldError(
                        f"an option name must be 1 to {MAX_OPTION_KEY_CHARS} characters "
                        "of text — rename it",
                        key=child_key,
                        line=child.line,
                    )
                result[name] = self._json(child, child_key, counter)
            return result
        if node.kind == "seq":
            return [self._json(item, f"{key}[{i}]", counter) for i, item in enumerate(node.value)]
        value = node.value
        if isinstance(value, float) and not math.isfinite(value):
            raise FieldError(
                "must be a finite number — the API cannot take .nan or .inf",
                key=key,
                line=node.line,
            )
        if isinstance(value, str):
            if "\x00" in value:
                raise FieldError("contains a NUL character — remove it", key=key, line=node.line)
            if len(value) > MAX_TEXT_CHARS:
                raise FieldError(
                    f"is {len(value)} characters long; the limit is {MAX_TEXT_CHARS} — shorten it",
                    key=key,
                    line=node.line,
                )
        if value is not None and not isinstance(value, str | int | float | bool):
            raise FieldError(  # only from code: YAML scalars are never anything else
                "must be text, a number, true/false or null — remove it", key=key, line=node.line
            )
        return value

    def conversions(self, node: Node, key: str) -> list[dict[str, Any]]:
        self.lines.setdefault(key, node.line)
        hint = "e.g. `conversion: [{target: pdf}, {target: png}]`"
        if node.kind != "seq":
            raise FieldError(f"must be a list of conversions — {hint}", key=key, line=node.line)
        if not node.value:
            raise FieldError(f"the list is empty — {hint}", key=key, line=node.line)
        if len(node.value) > MAX_CONVERSIONS:
            raise FieldError(
                f"{len(node.value)} conversions; at most {MAX_CONVERSIONS} fit in one ticket "
                "— split them over several tickets",
                key=key,
                line=node.line,
            )
        result = []
        for i, item in enumerate(node.value):
            item_key = f"{key}[{i}]"
            fields = self.mapping(item, item_key, CONVERSION_KEYS, f"each item is {hint[6:]}")
            conv = self.conversion_fields(fields, item_key)
            if "target" not in conv:
                raise FieldError(
                    "target: required in every conversion — add e.g. `{target: pdf}`",
                    key=item_key,
                    line=item.line,
                )
            result.append(conv)
        return result

    def conversion_fields(self, fields: Mapping[str, Node], prefix: str) -> dict[str, Any]:
        conv: dict[str, Any] = {}
        if "target" in fields:
            conv["target"] = self.format_name(
                fields["target"], _join(prefix, "target"), "target format", "target: pdf"
            )
        if "category" in fields:
            conv["category"] = self.format_name(
                fields["category"], _join(prefix, "category"), "category", "category: document"
            )
        if "options" in fields:
            conv["options"] = self.options(fields["options"], _join(prefix, "options"))
        return conv

    def output(self, node: Node, key: str) -> dict[str, Any]:
        fields = self.mapping(
            node, key, OUTPUT_KEYS, 'e.g. `output: {name: "{stem}.{ext}", on_conflict: rename}`'
        )
        out: dict[str, Any] = {}
        if "name" in fields:
            name_key = _join(key, "name")
            name = self.text(fields["name"], name_key, example='name: "{stem}{suffix}.{ext}"')
            problem = template_problem(name)
            if problem:
                raise FieldError(problem, key=name_key, line=fields["name"].line)
            out["name"] = name
        if "on_conflict" in fields:
            out["on_conflict"] = self.choice(
                fields["on_conflict"], _join(key, "on_conflict"), [p.value for p in ConflictPolicy]
            )
        return out

    def download(self, node: Node, key: str) -> dict[str, Any]:
        fields = self.mapping(
            node, key, DOWNLOAD_KEYS, "e.g. `download: {encoding: binary, verify: required}`"
        )
        out: dict[str, Any] = {}
        if "encoding" in fields:
            out["encoding"] = self.choice(
                fields["encoding"], _join(key, "encoding"), [e.value for e in Encoding]
            )
        if "password" in fields:
            pw_key = _join(key, "password")
            password = self.text(fields["password"], pw_key, example='password: "…"')
            if any(ch < " " or ch == "\x7f" for ch in password):
                raise FieldError(
                    "contains a line break or control character — it is sent as an HTTP header, "
                    "so write it on one line",
                    key=pw_key,
                    line=fields["password"].line,
                )
            out["password"] = password
        if "verify" in fields:
            out["verify"] = self.choice(
                fields["verify"], _join(key, "verify"), [v.value for v in VerifyMode]
            )
        return out

    def job(self, node: Node, key: str) -> str:
        value = self.text(node, key, max_chars=128, example="job: 4f9c0c3e-…")
        if not _JOB_ID.fullmatch(value) or set(value) == {"."}:
            raise FieldError(
                "is not a job id — copy the id exactly as the API or the web page shows it",
                key=key,
                line=node.line,
            )
        return value

    def token(self, node: Node, key: str) -> str:
        value = self.text(node, key, example="token: <job token>")
        if not _TOKEN.fullmatch(value):
            raise FieldError(
                "is not a job token (it contains spaces or unusual characters) "
                "— copy the token exactly",
                key=key,
                line=node.line,
            )
        return value

    def callback(self, node: Node, key: str) -> str:
        example = "callback: https://my-app.example.com/api2convert"
        value = self.text(node, key, max_chars=MAX_INPUT_CHARS, example=example)
        if not _URL_LIKE.match(value):
            raise FieldError(
                f"`{_show(value)}` is not a URL — the service POSTs to it when the job ends, "
                f"so write it in full, e.g. `{example}`",
                key=key,
                line=node.line,
            )
        _check_url(value, key, node.line)
        return value

    def flag(self, node: Node, key: str, *, example: str) -> bool:
        self.lines.setdefault(key, node.line)
        if node.kind != "scalar" or not isinstance(node.value, bool):
            raise FieldError(f"must be true or false — e.g. `{example}`", key=key, line=node.line)
        return bool(node.value)

    # -- a whole (possibly partial) ticket

    def ticket(self, node: Node, prefix: str) -> dict[str, Any]:
        """Type-check every key present and return plain values; no required-key checks."""
        fields = self.mapping(
            node, prefix, TOP_KEYS, "a ticket is `key: value` lines such as `target: pdf`"
        )
        out: dict[str, Any] = {}
        for name, child in fields.items():
            key = _join(prefix, name)
            self.lines[key] = child.line
            if name == "version":
                out[name] = self.version(child, key)
            elif name == "input":
                out[name] = self.inputs(child, key)
            elif name == "conversion":
                out[name] = self.conversions(child, key)
            elif name == "output":
                out[name] = self.output(child, key)
            elif name == "download":
                out[name] = self.download(child, key)
            elif name == "job":
                out[name] = self.job(child, key)
            elif name == "token":
                out[name] = self.token(child, key)
            elif name == "callback":
                out[name] = self.callback(child, key)
            elif name == "notify_status":
                out[name] = self.flag(child, key, example="notify_status: true")
        out.update(self.conversion_fields(fields, prefix))
        return out


def _check_url(value: str, key: str, line: int | None) -> None:
    scheme = value.split(":", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise FieldError(
            f"{scheme}:// inputs are not supported — use an http(s) URL or a file in this folder",
            key=key,
            line=line,
        )
    try:
        host = urlsplit(value).hostname
    except ValueError:
        host = None
    if not host or any(ch <= " " or ch == "\x7f" for ch in value):
        raise FieldError(
            "is not a valid URL — write it as `https://host/path` without spaces",
            key=key,
            line=line,
        )


def _unknown_key_message(name: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(allowed)}"
    return f"unknown key `{_show(name)}` — {hint}"


def _show(value: str, limit: int = 80) -> str:
    """A value fit for an error message: one line, not too long."""
    text = value.encode("unicode_escape").decode("ascii") if not value.isprintable() else value
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- public API


def validate_defaults(node: Node, *, key_prefix: str = "defaults") -> dict[str, Any]:
    """Check folder ``defaults`` (a partial ticket) and return them as plain data.

    Any ticket key is allowed except ``job``/``token`` (a folder cannot adopt one job for every
    ticket). Raises FieldError naming ``key_prefix.key`` and its line.
    """
    fields = _Fields()
    result = fields.ticket(node, key_prefix)
    for name in ("job", "token"):
        if name in result:
            raise fields.fail(
                _join(key_prefix, name),
                "folder defaults cannot name a job — put `job:` in the ticket itself",
            )
    return result


def parse_ticket(
    data: bytes,
    *,
    ticket_path: Path,
    root: Path,
    defaults: Mapping[str, Any] | None = None,
    verify_default: VerifyMode = VerifyMode.IF_PRESENT,
) -> TicketSpec:
    """Validate ticket bytes into a TicketSpec, with the folder ``defaults`` merged underneath.

    Local inputs are resolved against the ticket's folder (symlinks followed) and must lie inside
    ``root``. Raises TicketError naming the key and line, with what to do.
    """
    if len(data) > MAX_TICKET_BYTES:
        raise TicketError(
            f"the ticket is {len(data)} bytes; the limit is 64 KiB ({MAX_TICKET_BYTES} bytes) "
            "— a ticket only names inputs and options, keep the data itself in separate files",
            final=True,
        )
    if b"\x00" in data:
        raise TicketError(
            "not a text file (it contains NUL bytes) — a ticket is a small UTF-8 YAML text file",
            final=True,
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TicketError(
            f"not a text file (not UTF-8 at byte {exc.start}) — save the ticket as UTF-8 text",
            final=exc.reason != "unexpected end of data",  # else a character cut by a write
        ) from exc
    text = text.removeprefix("\ufeff")
    fields = _Fields()
    try:
        node = load_yaml(text)
        if node.kind != "map":
            raise FieldError(
                "a ticket must be a YAML mapping of `key: value` lines — e.g. "
                "`input: report.docx` and `target: pdf` on two lines",
                line=node.line,
            )
        own = fields.ticket(node, "")
        base: dict[str, Any] = {}
        if defaults:
            try:
                base = _Fields().ticket(Node.from_plain(dict(defaults)), "")
            except FieldError as exc:
                raise FieldError(
                    f"{exc.message} — fix this folder's `defaults` in the configuration",
                    key=f"defaults.{exc.key}" if exc.key else "defaults",
                ) from exc
        merged = merge_defaults(base, own)
        return _build(merged, fields, ticket_path, root, verify_default)
    except FieldError as exc:
        raise TicketError(exc.message, key=exc.key, line=exc.line, final=exc.final) from exc


def merge_defaults(defaults: Mapping[str, Any], ticket: Mapping[str, Any]) -> dict[str, Any]:
    """Folder defaults under a ticket's own keys; ``output``/``download``/``options`` key-wise.

    The conversion part of the defaults steps aside where the ticket describes its own: nothing of
    it reaches an adoption ticket (``job``), ``conversion:`` replaces ``target``/``category``/
    ``options``, and a ticket's own ``target`` drops the default ``category`` (it belongs to the
    default target) and any default ``conversion`` list.
    """
    base = dict(defaults)
    if "job" in ticket:
        drop: tuple[str, ...] = _CONVERSION_SIDE
    elif "conversion" in ticket:
        drop = ("target", "category", "options")
    elif "target" in ticket:
        drop = ("category", "conversion")
    elif "category" in ticket or "options" in ticket:
        drop = ("conversion",)
    else:
        drop = ()
    for name in drop:
        base.pop(name, None)
    for name, value in ticket.items():
        if name in ("output", "download", "options") and isinstance(base.get(name), dict):
            base[name] = {**base[name], **value}
        else:
            base[name] = value
    return base


def _build(
    merged: Mapping[str, Any],
    fields: _Fields,
    ticket_path: Path,
    root: Path,
    verify_default: VerifyMode,
) -> TicketSpec:
    out = merged.get("output", {})
    dl = merged.get("download", {})
    output = OutputOptions(
        name=out.get("name"), on_conflict=ConflictPolicy(out.get("on_conflict", "rename"))
    )
    download = DownloadOptions(
        encoding=Encoding(dl.get("encoding", "binary")),
        password=dl.get("password"),
        verify=VerifyMode(dl.get("verify", verify_default)),
    )
    if "job" in merged:
        for name in _CONVERSION_SIDE:
            if name in merged:
                raise fields.fail(
                    name,
                    f"`{name}` cannot go with `job:` — an adoption ticket downloads a job made "
                    f"elsewhere; remove `{name}`, or remove `job` to convert",
                )
        return TicketSpec(
            kind=TicketKind.ADOPTION,
            job_id=merged["job"],
            job_token=merged.get("token"),
            output=output,
            download=download,
        )
    if "token" in merged:
        raise fields.fail("token", "`token` only goes with `job:` — add `job: <id>` or remove it")
    if "notify_status" in merged and "callback" not in merged:
        raise fields.fail(
            "notify_status",
            "`notify_status` needs a `callback:` URL to notify — add one or remove it",
        )
    if "conversion" in merged:
        for name in ("target", "category", "options"):
            if name in merged:
                raise fields.fail(
                    name,
                    f"use either `{name}` or a `conversion:` list, not both — move it into "
                    "each conversion",
                )
        conversions = tuple(_conversion_spec(c) for c in merged["conversion"])
    elif "target" in merged:
        conversions = (_conversion_spec(merged),)
    else:
        raise fields.fail(
            "target",
            "required — add `target: pdf` (the format to convert to), "
            "or a `conversion:` list, or `job:` to adopt an existing job",
        )
    if "input" not in merged:
        raise fields.fail(
            "input",
            "required — add `input: report.docx` (a file in this folder) or an http(s) URL",
        )
    inputs = tuple(
        _input_spec(value, _input_key(merged["input"], i), fields, ticket_path, root)
        for i, value in enumerate(merged["input"])
    )
    return TicketSpec(
        kind=TicketKind.CONVERSION,
        inputs=inputs,
        conversions=conversions,
        output=output,
        download=download,
        callback=merged.get("callback"),
        notify_status=bool(merged.get("notify_status", False)),
    )


def _input_key(values: list[Any], index: int) -> str:
    return "input" if len(values) == 1 else f"input[{index}]"


def _conversion_spec(conv: Mapping[str, Any]) -> ConversionSpec:
    return ConversionSpec(
        target=conv["target"], category=conv.get("category"), options=conv.get("options", {})
    )


def _input_spec(
    item: str | Mapping[str, Any], key: str, fields: _Fields, ticket_path: Path, root: Path
) -> InputSpec:
    extra: dict[str, Any] = {}
    if isinstance(item, str):
        value = item
    else:
        value = item["source"]
        key = f"{key}.source"
        extra = {
            "engine": item.get("engine"),
            "options": item.get("options") or {},
            "parameters": item.get("parameters") or {},
            "filename": item.get("filename"),
        }
    if _URL_LIKE.match(value):
        return InputSpec(kind=InputKind.URL, value=value, **extra)
    line = fields.lines.get(key, fields.lines.get("input"))
    try:
        resolved = os.path.realpath(os.path.join(ticket_path.parent, value))
        real_root = os.path.realpath(root)
    except (OSError, ValueError) as exc:
        raise FieldError(
            f"cannot resolve `{_show(value)}` ({exc}) — name a file in this folder",
            key=key,
            line=line,
        ) from exc
    if not _inside(resolved, real_root):
        raise FieldError(
            f"input `{_show(value)}` is outside the watched folder {real_root} — only files "
            "inside it can be converted: copy the file into the folder and name it relative "
            "to the ticket",
            key=key,
            line=line,
        )
    return InputSpec(kind=InputKind.LOCAL, value=value, path=Path(resolved), **extra)


def _inside(real: str, real_root: str) -> bool:
    real, real_root = os.path.normcase(real), os.path.normcase(real_root)
    prefix = real_root if real_root.endswith(os.sep) else real_root + os.sep
    # The root itself is a folder, never an input file.
    return real.startswith(prefix) and real != real_root


def ticket_text_for_plain_file(file_name: str) -> str:
    """The ticket written for a plain file dropped into a rule folder: ``input: "<name>"\\n``.

    The name is written as a YAML double-quoted scalar with every character that could end,
    fold or break it escaped, so any file name (``: ``, ``#``, newlines, a leading ``-``,
    quotes, unicode) parses back to exactly itself.
    """
    return f"input: {_double_quoted(file_name)}\n"


def _double_quoted(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif 0x20 <= code <= 0x7E or (
            (0xA0 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD or code >= 0x10000)
            and ch not in "\u2028\u2029\ufeff"
        ):
            out.append(ch)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:  # pragma: no cover - every code point above 0xFFFF is printable
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)
