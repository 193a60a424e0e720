"""Fuzzing ``parse_ticket``: whatever bytes land in a watched folder, the parser answers with a
``TicketSpec`` or a ``TicketError`` (never another exception), quickly, and a spec it accepts
never names a local input outside the watched root.

Example budget: ``FUZZ_EXAMPLES`` (see fuzz_support.py); every test here counts its examples in
``COUNTS`` so the long run can report them.
"""

from __future__ import annotations

import os
import time
import unicodedata
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fuzz_support import FUZZ, any_json, nasty_text
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import TicketError
from agent.models import InputKind, TicketKind
from agent.paths import is_within
from agent.ticket import MAX_TICKET_BYTES, parse_ticket

COUNTS: Counter[str] = Counter()
MAX_SECONDS = 2.0  # one ticket, even a hostile one, is judged well within this


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A watched root with a few inputs, a sub-folder and symlinks that lead out of it."""
    base = tmp_path_factory.mktemp("fuzz-tickets")
    root = base / "inbox"
    (root / "sub").mkdir(parents=True)
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    for name in ("report.docx", "photo.png", "sub/deep.txt", "é.png"):
        (root / name).write_text("x")
    os.symlink(outside / "secret.txt", root / "link-out.txt")
    os.symlink(outside, root / "dir-out")
    os.symlink("/etc/passwd", root / "passwd")
    os.symlink(root / "photo.png", root / "link-in.png")
    yield root, root / "sub" / "t.job"
    COUNTS.clear()


# --------------------------------------------------------------------------- strategies

PATH_TRICKS = (
    "/etc/passwd",
    "../outside/secret.txt",
    "../../../../../../etc/passwd",
    "sub/../../outside/secret.txt",
    "link-out.txt",
    "dir-out/secret.txt",
    "passwd",
    "link-in.png",
    "./photo.png",
    "sub/deep.txt",
    "../photo.png",
    "..",
    ".",
    "",
    "~",
    "~/x",
    "\\..\\..\\etc\\passwd",
    "C:\\Windows\\win.ini",
    "file:///etc/passwd",
    "ftp://example.com/x",
    "http://",
    "https://user:pw@example.com/x",
    "http://[::1/x",
    "http://exa mple.com/x",
    "javascript:alert(1)",
    "photo.png\x00.txt",
    "e\u0301.png",
    "\u00e9.png",
    "report.docx\n",
    "/proc/self/environ",
    "//etc/passwd",
)
input_value = st.one_of(st.sampled_from(PATH_TRICKS), nasty_text)
word = st.one_of(
    st.sampled_from(["pdf", "png", "jpg", "document", "image", "PDF", "x" * 70, "", "p d f"]),
    nasty_text,
)
scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True),
    nasty_text,
    st.text(min_size=900, max_size=5000),
)
value = st.one_of(scalar, any_json)


def _maybe(key: str, strat: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(st.just({}), strat.map(lambda v: {key: v}))


@st.composite
def ticket_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly-plausible tickets: known keys with good, wrong-typed or hostile values."""
    d: dict[str, Any] = {}
    if draw(st.booleans()):
        d["job"] = draw(st.one_of(st.just("4f9c0c3e-1b2a"), value))
        d.update(draw(_maybe("token", st.one_of(st.just("tok-123"), value))))
    if draw(st.booleans()) or not d:
        d.update(
            draw(
                _maybe(
                    "input",
                    st.one_of(input_value, st.lists(input_value, max_size=5), value),
                )
            )
        )
        d.update(draw(_maybe("target", st.one_of(word, value))))
        d.update(draw(_maybe("category", st.one_of(word, value))))
        d.update(
            draw(
                _maybe(
                    "options",
                    st.one_of(st.dictionaries(nasty_text, value, max_size=4), value),
                )
            )
        )
    if draw(st.booleans()):
        d["conversion"] = draw(
            st.one_of(
                st.lists(
                    st.fixed_dictionaries(
                        {}, optional={"target": word, "category": word, "options": value}
                    ),
                    max_size=3,
                ),
                value,
            )
        )
    d.update(
        draw(
            _maybe(
                "output",
                st.one_of(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "name": st.one_of(
                                st.sampled_from(
                                    [
                                        "{stem}{suffix}.{ext}",
                                        "../{stem}.{ext}",
                                        "/etc/{name}",
                                        "{nope}",
                                        "{",
                                        "{{stem}}",
                                        "{stem!r}",
                                        "{stem.__class__}",
                                        "{0}",
                                    ]
                                ),
                                nasty_text,
                            ),
                            "on_conflict": st.one_of(
                                st.sampled_from(["rename", "overwrite", "skip", "fail", "X"]),
                                value,
                            ),
                        },
                    ),
                    value,
                ),
            )
        )
    )
    d.update(
        draw(
            _maybe(
                "download",
                st.one_of(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "encoding": st.one_of(st.sampled_from(["binary", "base64"]), value),
                            "password": st.one_of(st.just("hunter2"), nasty_text, value),
                            "verify": st.one_of(
                                st.sampled_from(["required", "if-present", "maybe"]), value
                            ),
                        },
                    ),
                    value,
                ),
            )
        )
    )
    d.update(draw(_maybe("version", st.one_of(st.just(1), value))))
    if draw(st.integers(0, 9)) == 0:
        d[draw(nasty_text)] = draw(value)  # an unknown key, maybe a typo
    return d


GOOD_INPUTS = (
    "photo.png",
    "report.docx",
    "sub/deep.txt",
    "./photo.png",
    "https://example.com/a.png",
)


@st.composite
def good_ticket_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """Tickets that are mostly valid, with one field at a time pushed towards an edge."""
    d: dict[str, Any] = {
        "input": draw(
            st.one_of(
                st.sampled_from(GOOD_INPUTS),
                st.lists(st.sampled_from(GOOD_INPUTS), min_size=1, max_size=3),
            )
        ),
        "target": draw(st.sampled_from(["pdf", "png", "jpg", "PDF", "tar.gz", "a+b"])),
    }
    if draw(st.booleans()):
        d["options"] = draw(
            st.dictionaries(st.sampled_from(["width", "q", "pdfa"]), any_json, max_size=3)
        )
    if draw(st.booleans()):
        d["output"] = {
            "name": draw(
                st.sampled_from(
                    ["{stem}{suffix}.{ext}", "{name}.{target}", "x-{index}.{ext}", "{{lit}}-{stem}"]
                )
            )
        }
    if draw(st.booleans()):
        d["download"] = {
            "password": draw(st.sampled_from(["pw", "0123", "p w"])),
            "encoding": draw(st.sampled_from(["binary", "base64"])),
        }
    if draw(st.integers(0, 3)) == 0:
        d[draw(st.sampled_from(sorted(d)))] = draw(st.one_of(input_value, value))
    return d


def _dump(d: dict[str, Any]) -> bytes:
    try:
        return yaml.safe_dump(d, allow_unicode=True).encode("utf-8", "surrogatepass")
    except (yaml.YAMLError, UnicodeEncodeError, ValueError, RecursionError):
        return repr(d).encode("utf-8", "surrogatepass")


YAML_TRICKS = (
    # aliases, alias bombs and merge keys
    b"a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\ninput: *c\ntarget: pdf\n",
    b"input: &i photo.png\ntarget: pdf\noptions: {x: *i}\n",
    b"base: &b {target: pdf}\n<<: *b\ninput: photo.png\n",
    b"input: photo.png\n<<: {target: pdf}\n",
    # tags a safe loader must refuse or keep as text
    b"!!python/object/apply:os.system ['true']\n",
    b"input: !!python/name:os.system photo.png\ntarget: pdf\n",
    b"input: !!binary aGVsbG8=\ntarget: pdf\n",
    b"input: !!set {a, b}\ntarget: pdf\n",
    b"input: !custom photo.png\ntarget: pdf\n",
    b"input: photo.png\ntarget: !!int 7\n",
    b"$: !!int",  # found by the fuzzer: IndexError inside PyYAML's int constructor
    b"a: !!float\nb: !!bool\nc: !!int ''\n",
    b"input: photo.png\ntarget: 2024-01-01\n",
    # structure
    b"? [a, b]\n: c\n",
    b"? {a: b}\n: c\n",
    b"input: photo.png\ninput: report.docx\ntarget: pdf\n",
    b"input: photo.png\ntarget: pdf\n---\ninput: x\n",
    b"--- |\n  text\n",
    b"- input: photo.png\n- target: pdf\n",
    b"[" * 200 + b"]" * 200,
    b"{" * 200 + b"}" * 200,
    b"a:\n" + b"".join(b"  " * i + b"b:\n" for i in range(1, 60)),
    b"input: photo.png\ntarget: pdf\noptions: {width: 1e999, height: -.inf, q: .nan}\n",
    b"input: photo.png\ntarget: pdf\noptions: {n: 0x" + b"f" * 5000 + b"}\n",
    b"input: photo.png\ntarget: pdf\nversion: 1.0\n",
    b"input: photo.png\ntarget: pdf\nversion: true\n",
    # encodings and odd bytes
    b"\xef\xbb\xbfinput: photo.png\ntarget: pdf\n",
    b"\xff\xfei\x00n\x00",
    b"input: photo.png\ntarget: pdf\x00\n",
    b"input: \xed\xa0\x80.png\ntarget: pdf\n",
    b"input: photo.png\r\ntarget: pdf\r\n",
    b"input: photo.png\x85target: pdf\n",
    b'input: "\\x00"\ntarget: pdf\n',
    b'input: "\\ud800"\ntarget: pdf\n',
    b"\t\tinput: photo.png\n",
    b"%YAML 1.1\n%TAG ! tag:evil.example,2024:\n---\ninput: !x photo.png\n",
    b"",
    b"~\n",
    b"null\n",
    b"42\n",
    b"x" * (MAX_TICKET_BYTES + 1),
    b"input: photo.png\ntarget: pdf\n#" + b"y" * (MAX_TICKET_BYTES - 20),
)


def _truncations(data: bytes) -> st.SearchStrategy[bytes]:
    return st.integers(0, len(data)).map(lambda n: data[:n])


raw_tickets = st.one_of(
    good_ticket_dicts().map(_dump),
    ticket_dicts().map(_dump),
    ticket_dicts().map(_dump).flatmap(_truncations),
    st.sampled_from(YAML_TRICKS),
    st.sampled_from(YAML_TRICKS).flatmap(_truncations),
    st.binary(max_size=300),
    nasty_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.lists(
        st.sampled_from(
            [
                b"input: ",
                b"target: ",
                b"pdf",
                b"&a ",
                b"*a",
                b"<<: ",
                b"[",
                b"]",
                b"{",
                b"}",
                b"- ",
                b"\n",
                b"  ",
                b": ",
                b"'",
                b'"',
                b"!!",
                b"#",
                b"|",
                b">",
                b"---",
                b"?",
            ]
        ),
        max_size=30,
    ).map(b"".join),
)


# --------------------------------------------------------------------------- properties


def _check(data: bytes, root: Path, ticket: Path, defaults: dict[str, Any] | None = None) -> None:
    start = time.perf_counter()
    try:
        spec = parse_ticket(data, ticket_path=ticket, root=root, defaults=defaults)
    except TicketError as err:
        assert err.message
        # It goes to logs, terminals and sidecars: no control character may reach them.
        assert not any(unicodedata.category(c) == "Cc" for c in err.message), err.message
        COUNTS["rejected"] += 1
    else:
        COUNTS["accepted"] += 1
        if spec.kind is TicketKind.CONVERSION:
            assert spec.conversions and spec.inputs
        for inp in spec.inputs:
            if inp.kind is InputKind.LOCAL:
                assert inp.path is not None
                assert is_within(inp.path, root), (inp.value, inp.path)
                assert os.path.realpath(inp.path) != os.path.realpath(root)
            else:
                assert inp.value.lower().startswith(("http://", "https://"))
    elapsed = time.perf_counter() - start
    assert elapsed < MAX_SECONDS, f"parse took {elapsed:.2f}s"
    COUNTS["tickets"] += 1


@FUZZ
@given(data=raw_tickets)
def test_any_ticket_bytes_give_a_spec_or_a_ticket_error(
    sandbox: tuple[Path, Path], data: bytes
) -> None:
    root, ticket = sandbox
    _check(data, root, ticket)


@FUZZ
@given(data=ticket_dicts().map(_dump), defaults=ticket_dicts())
def test_folder_defaults_never_break_the_parser(
    sandbox: tuple[Path, Path], data: bytes, defaults: dict[str, Any]
) -> None:
    root, ticket = sandbox
    defaults.pop("job", None)
    defaults.pop("token", None)
    _check(data, root, ticket, defaults)


def test_fuzz_ticket_counts_are_reported(sandbox: tuple[Path, Path]) -> None:
    """Runs last in this module: prints how many tickets were judged (for the long-mode report)."""
    print(f"\nfuzzed tickets: {dict(COUNTS)}")


def test_control_characters_in_a_key_are_escaped_in_the_message(
    sandbox: tuple[Path, Path],
) -> None:
    """Found by the fuzzer: a key holding NUL or an ESC sequence reached the error text raw."""
    root, ticket = sandbox
    with pytest.raises(TicketError) as info:
        parse_ticket(b'"\\x1b[2J\\0": 1\n', ticket_path=ticket, root=root)
    assert "\x1b" not in info.value.message and "\x00" not in info.value.message
    assert "\\x1b" in info.value.message
