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
from fuzz_support import EXAMPLES, FUZZ, any_json, nasty_text
from hypothesis import example, given
from hypothesis import strategies as st

from agent.errors import TicketError
from agent.models import InputKind, TicketKind
from agent.ticket import MAX_TICKET_BYTES, parse_ticket

COUNTS: Counter[str] = Counter()
MAX_SECONDS = 2.0  # one ticket, even a hostile one, is judged well within this


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A watched root with a few inputs, a sub-folder and symlinks that lead out of it."""
    # The oracle models the tree from here down; the temp folder's own path has no symlinks.
    base = Path(os.path.realpath(tmp_path_factory.mktemp("fuzz-tickets")))
    root = base / "inbox"
    (root / "sub").mkdir(parents=True)
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    # A sibling whose name starts with the root's: "inbox-x" is not inside "inbox".
    (base / "inbox-x").mkdir()
    (base / "inbox-x" / "secret.txt").write_text("secret")
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


# --------------------------------------------------------------------------- the oracle


def _parts(path: Path | str) -> list[str]:
    return [p for p in str(path).split("/") if p]


def model_resolve(root: Path, start: Path, value: str) -> list[str]:
    """Where ``value``, named in a ticket in ``start``, leads, judged from a model of the tree the
    ``sandbox`` fixture built (its four symlinks; everything else a plain name), not by asking the
    filesystem: an oracle independent of ``realpath`` and of the agent's own checks. The result
    is the absolute path as a list of components."""
    base = _parts(root.parent)
    links = {
        (*base, "inbox", "link-out.txt"): [*base, "outside", "secret.txt"],
        (*base, "inbox", "dir-out"): [*base, "outside"],
        (*base, "inbox", "passwd"): ["etc", "passwd"],
        (*base, "inbox", "link-in.png"): [*base, "inbox", "photo.png"],
    }
    here = [] if value.startswith("/") else _parts(start)
    pending = value.split("/")
    while pending:
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            if here:
                here.pop()
            continue
        target = links.get((*here, name))
        if target is not None:
            here, pending = [], [*target, *pending]
        else:
            here = [*here, name]
    return here


def model_inside(root: Path, resolved: list[str]) -> bool:
    """Strictly inside the root: the root's components, then at least one more."""
    r = _parts(root)
    return len(resolved) > len(r) and resolved[: len(r)] == r


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
                resolved = model_resolve(root, ticket.parent, inp.value)
                assert model_inside(root, resolved), (inp.value, inp.path)
                assert _parts(inp.path) == resolved, (inp.value, inp.path)
                COUNTS["local inputs accepted"] += 1
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


PATH_PARTS = (
    "..",
    "../..",
    ".",
    "",
    "sub",
    "photo.png",
    "report.docx",
    "deep.txt",
    "é.png",
    "link-out.txt",
    "dir-out",
    "passwd",
    "link-in.png",
    "secret.txt",
    "inbox",
    "inbox-x",
    "outside",
    "nope.png",
    "~",
)


@FUZZ
@given(
    absolute=st.booleans(),
    parts=st.lists(st.sampled_from(PATH_PARTS), min_size=1, max_size=6),
)
# Each of these kills one mutant of the parser's confinement check, whatever the draw:
@example(absolute=False, parts=["..", "..", "inbox-x", "secret.txt"])  # a prefix, not a folder
@example(absolute=True, parts=["inbox-x", "secret.txt"])
@example(absolute=False, parts=["..", "link-out.txt"])  # symlinks resolved
@example(absolute=False, parts=["..", "dir-out", "secret.txt"])
@example(absolute=False, parts=[".."])  # the root itself is not an input
@example(absolute=False, parts=["..", "link-in.png"])  # a link inside stays accepted
@example(absolute=True, parts=["inbox", "sub", "deep.txt"])
def test_local_inputs_are_accepted_exactly_when_they_resolve_inside_the_root(
    sandbox: tuple[Path, Path], absolute: bool, parts: list[str]
) -> None:
    """Paths made of the sandbox's own names, ``..`` and its symlinks, relative to the ticket or
    absolute under the sandbox, judged both ways by the tree model: inside is accepted (at the
    path the model finds), outside is refused."""
    root, ticket = sandbox
    value = "/".join(parts)
    if absolute:
        value = f"{root.parent}/{value}"
    if not value.strip():
        return  # "needs a value": not a path question
    data = yaml.safe_dump({"input": value, "target": "pdf"}, allow_unicode=True).encode()
    resolved = model_resolve(root, ticket.parent, value)
    inside = model_inside(root, resolved)
    try:
        spec = parse_ticket(data, ticket_path=ticket, root=root)
    except TicketError as err:
        assert not inside, (value, err.message)
        assert "outside the watched folder" in err.message, (value, err.message)
        COUNTS["paths refused"] += 1
    else:
        assert inside, (value, spec.inputs)
        (inp,) = spec.inputs
        assert inp.kind is InputKind.LOCAL and inp.path is not None
        assert _parts(inp.path) == resolved, (value, inp.path)
        COUNTS["paths accepted"] += 1


def test_fuzz_ticket_counts_are_reported(sandbox: tuple[Path, Path]) -> None:
    """Runs last in this module: every ticket drawn above was judged one way or the other, both
    ways happened, and the counts are printed (for the long-mode report)."""
    print(f"\nfuzzed tickets: {dict(COUNTS)}")
    if not COUNTS:
        pytest.skip("run with the module's fuzz tests: it checks their counts")
    # Two properties x FUZZ_EXAMPLES tickets, each either accepted or rejected (an exception of
    # any other kind fails the property itself).
    assert COUNTS["tickets"] >= 2 * min(EXAMPLES, 10), COUNTS
    assert COUNTS["accepted"] + COUNTS["rejected"] == COUNTS["tickets"], COUNTS
    assert COUNTS["rejected"] > 0, COUNTS
    # The confinement property saw paths both ways, and accepted local inputs were checked.
    assert COUNTS["paths accepted"] > 0 and COUNTS["paths refused"] > 0, COUNTS
    assert set(COUNTS) <= {
        "tickets",
        "accepted",
        "rejected",
        "local inputs accepted",
        "paths accepted",
        "paths refused",
    }, COUNTS


def test_control_characters_in_a_key_are_escaped_in_the_message(
    sandbox: tuple[Path, Path],
) -> None:
    """Found by the fuzzer: a key holding NUL or an ESC sequence reached the error text raw."""
    root, ticket = sandbox
    with pytest.raises(TicketError) as info:
        parse_ticket(b'"\\x1b[2J\\0": 1\n', ticket_path=ticket, root=root)
    assert "\x1b" not in info.value.message and "\x00" not in info.value.message
    assert "\\x1b" in info.value.message
