"""Ticket parsing: both kinds, defaults, confinement, and an error that names key and line."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import TicketError
from agent.models import (
    ConflictPolicy,
    ConversionSpec,
    Encoding,
    InputKind,
    TicketKind,
    TicketSpec,
    VerifyMode,
)
from agent.ticket import (
    MAX_CONVERSIONS,
    MAX_INPUTS,
    MAX_TICKET_BYTES,
    FieldError,
    Node,
    load_yaml,
    merge_defaults,
    parse_ticket,
    ticket_text_for_plain_file,
    validate_defaults,
)


def parse(
    text: str | bytes,
    root: Path,
    *,
    folder: Path | None = None,
    defaults: dict[str, Any] | None = None,
    verify_default: VerifyMode = VerifyMode.IF_PRESENT,
) -> TicketSpec:
    data = text.encode("utf-8") if isinstance(text, str) else text
    ticket = (folder or root) / "t.job"
    return parse_ticket(
        data, ticket_path=ticket, root=root, defaults=defaults, verify_default=verify_default
    )


def refused(text: str | bytes, root: Path, **kwargs: Any) -> TicketError:
    with pytest.raises(TicketError) as info:
        parse(text, root, **kwargs)
    return info.value


# --------------------------------------------------------------------------- conversion tickets


def test_parses_a_minimal_conversion_ticket(tmp_path: Path) -> None:
    spec = parse("input: report.docx\ntarget: pdf\n", tmp_path)
    assert spec.kind is TicketKind.CONVERSION
    assert [(i.kind, i.value, i.path) for i in spec.inputs] == [
        (InputKind.LOCAL, "report.docx", tmp_path / "report.docx")
    ]
    assert spec.conversions == (ConversionSpec(target="pdf"),)
    assert spec.output.on_conflict is ConflictPolicy.RENAME
    assert spec.output.name is None
    assert spec.download.encoding is Encoding.BINARY
    assert spec.download.verify is VerifyMode.IF_PRESENT


def test_parses_every_optional_key(tmp_path: Path) -> None:
    spec = parse(
        """
version: 1
input: [a.png, "HTTPS://example.com/b.png?x=1", sub/c.png]
target: PNG
category: image
options: {width: 100, keep: true, note: null, date: 2024-01-02, list: [1, 2.5]}
output: {name: "{stem}{suffix}.{ext}", on_conflict: overwrite}
download: {encoding: base64, password: 0123, verify: required}
""",
        tmp_path,
    )
    assert [i.kind for i in spec.inputs] == [InputKind.LOCAL, InputKind.URL, InputKind.LOCAL]
    assert spec.inputs[2].path == tmp_path / "sub" / "c.png"
    assert spec.conversions == (
        ConversionSpec(
            target="png",
            category="image",
            options={
                "width": 100,
                "keep": True,
                "note": None,
                "date": "2024-01-02",
                "list": [1, 2.5],
            },
        ),
    )
    assert spec.output.name == "{stem}{suffix}.{ext}"
    assert spec.output.on_conflict is ConflictPolicy.OVERWRITE
    assert spec.download.encoding is Encoding.BASE64
    assert spec.download.password == "0123"  # as written, not the octal number 83
    assert spec.download.verify is VerifyMode.REQUIRED
    assert "0123" not in repr(spec)


def test_parses_the_full_api_conversion_form(tmp_path: Path) -> None:
    spec = parse(
        "input: a.docx\nconversion:\n  - target: pdf\n    options: {pdfa: true}\n"
        "  - {target: png, category: image}\n",
        tmp_path,
    )
    assert spec.conversions == (
        ConversionSpec(target="pdf", options={"pdfa": True}),
        ConversionSpec(target="png", category="image"),
    )


def test_inputs_resolve_against_the_tickets_own_folder(tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    spec = parse("input: ../top.txt\ntarget: pdf", tmp_path, folder=sub)
    assert spec.inputs[0].path == tmp_path / "top.txt"


def test_a_utf8_bom_and_unicode_names_are_fine(tmp_path: Path) -> None:
    spec = parse("\ufeffinput: Bericht für Müller.docx\ntarget: pdf".encode(), tmp_path)
    assert spec.inputs[0].value == "Bericht für Müller.docx"


def test_an_integer_too_long_to_convert_is_kept_as_text_and_refused_as_too_long(
    tmp_path: Path,
) -> None:
    digits = "9" * 5000  # beyond Python's int-from-text limit
    err = refused(f"input: a\ntarget: pdf\noptions: {{n: {digits}}}", tmp_path)
    assert err.key == "options.n" and "limit is 1024" in err.message


def test_verify_default_applies_unless_the_ticket_says_otherwise(tmp_path: Path) -> None:
    spec = parse("input: a\ntarget: pdf", tmp_path, verify_default=VerifyMode.REQUIRED)
    assert spec.download.verify is VerifyMode.REQUIRED
    spec = parse(
        "input: a\ntarget: pdf\ndownload: {verify: if-present}",
        tmp_path,
        verify_default=VerifyMode.REQUIRED,
    )
    assert spec.download.verify is VerifyMode.IF_PRESENT


# --------------------------------------------------------------------------- adoption tickets


def test_parses_an_adoption_ticket(tmp_path: Path) -> None:
    spec = parse(
        "job: 4f9c0c3e-aaaa-bbbb-cccc-1234567890ab\ntoken: 0a1b2c3d\noutput: {on_conflict: skip}",
        tmp_path,
    )
    assert spec.kind is TicketKind.ADOPTION
    assert spec.job_id == "4f9c0c3e-aaaa-bbbb-cccc-1234567890ab"
    assert spec.job_token == "0a1b2c3d"
    assert spec.inputs == () and spec.conversions == ()
    assert spec.output.on_conflict is ConflictPolicy.SKIP
    assert "0a1b2c3d" not in repr(spec)


@pytest.mark.parametrize(
    "key",
    [
        "input: a",
        "target: pdf",
        "category: image",
        "options: {a: 1}",
        "conversion: [{target: pdf}]",
    ],
)
def test_an_adoption_ticket_refuses_conversion_keys(tmp_path: Path, key: str) -> None:
    err = refused(f"job: abc\n{key}\n", tmp_path)
    name = key.split(":")[0]
    assert err.key == name and err.line == 2
    assert "cannot go with `job:`" in err.message


def test_a_token_needs_a_job(tmp_path: Path) -> None:
    err = refused("input: a\ntarget: pdf\ntoken: abc", tmp_path)
    assert err.key == "token" and err.line == 3
    assert "only goes with `job:`" in err.message


@pytest.mark.parametrize("job", ["'a b'", "a/b", "'..'", "'x?'", "''"])
def test_a_malformed_job_id_is_refused(tmp_path: Path, job: str) -> None:
    err = refused(f"job: {job}", tmp_path)
    assert err.key == "job" and err.line == 1


def test_a_token_with_spaces_is_refused(tmp_path: Path) -> None:
    err = refused("job: abc\ntoken: 'a b'", tmp_path)
    assert err.key == "token" and err.line == 2 and "copy the token" in err.message


# --------------------------------------------------------------------------- required keys


def test_target_is_required_and_the_error_says_how(tmp_path: Path) -> None:
    err = refused("input: a.docx\n", tmp_path)
    assert err.key == "target"
    assert "add `target: pdf`" in err.message


def test_input_is_required(tmp_path: Path) -> None:
    err = refused("target: pdf\n", tmp_path)
    assert err.key == "input" and "add `input:" in err.message


def test_an_empty_ticket_asks_for_a_target(tmp_path: Path) -> None:
    err = refused("# just a comment\n", tmp_path)
    assert err.key == "target"


def test_target_and_conversion_are_not_both_allowed(tmp_path: Path) -> None:
    err = refused("input: a\ntarget: pdf\nconversion: [{target: png}]", tmp_path)
    assert err.key == "target" and err.line == 2 and "not both" in err.message


# --------------------------------------------------------------------------- type and value errors


@pytest.mark.parametrize(
    ("text", "key", "line", "fragment"),
    [
        ("input: a\ntaget: pdf", "taget", 2, "did you mean `target`?"),
        ("input: a\ntarget: pdf\nzzz: 1", "zzz", 3, "known keys: version, input"),
        ("input: a\ntarget: pdf\nversion: 2", "version", 3, "`version: 1`"),
        ("input: a\ntarget: pdf\nversion: true", "version", 3, "`version: 1`"),
        ("input: {a: 1}\ntarget: pdf", "input.a", 1, "known keys: source, engine"),
        ("input: [[a]]\ntarget: pdf", "input[0]", 1, "single text value"),
        ("input: [a, {engine: zip}]\ntarget: pdf", "input[1]", 1, "source: required"),
        (
            "input:\n  - a\n  - {source: b, engine: screenshot}\ntarget: pdf",
            "input[1].engine",
            3,
            "only applies to an http(s) URL input",
        ),
        (
            "input: {source: 'http://h/', engine: photo}\ntarget: pdf",
            "input.engine",
            1,
            "is not one of auto | video",
        ),
        (
            "input: {source: 'http://h/', options: [1]}\ntarget: pdf",
            "input.options",
            1,
            "must be a mapping of options",
        ),
        (
            "input:\n  - {source: a,\n     filename: ../b}\ntarget: pdf",
            "input[0].filename",
            3,
            "is not a file name",
        ),
        ("input: {source: 'ftp://h/x'}\ntarget: pdf", "input.source", 1, "ftp:// inputs"),
        ("input: a\ntarget: pdf\ncallback: my-app/hook", "callback", 3, "is not a URL"),
        ("input: a\ntarget: pdf\ncallback: 'ftp://h/x'", "callback", 3, "ftp:// inputs"),
        ("input: a\ntarget: pdf\nnotify_status: yes please", "notify_status", 3, "true or false"),
        ("input: a\ntarget: pdf\nnotify_status: true", "notify_status", 3, "needs a `callback:`"),
        ("job: j1\ncallback: 'https://h/'", "callback", 2, "cannot go with `job:`"),
        ("input:\ntarget: pdf", "input", 1, "needs a value"),
        ("input: ''\ntarget: pdf", "input", 1, "is empty"),
        ("input: []\ntarget: pdf", "input", 1, "the list is empty"),
        ("input: [a, [b]]\ntarget: pdf", "input[1]", 1, "single text value"),
        ('input: "a\\0b"\ntarget: pdf', "input", 1, "NUL character"),
        ("input: ftp://host/x\ntarget: pdf", "input", 1, "ftp:// inputs are not supported"),
        ("input: [a, 'file:///etc/passwd']\ntarget: pdf", "input[1]", 1, "file://"),
        ("input: 'http:///nohost'\ntarget: pdf", "input", 1, "not a valid URL"),
        ("input: 'https://h/a b'\ntarget: pdf", "input", 1, "not a valid URL"),
        ("input: 'https://[::1'\ntarget: pdf", "input", 1, "not a valid URL"),
        ("input: a\ntarget: 'p df'", "target", 2, "not a target format name"),
        ("input: a\ntarget: [pdf]", "target", 2, "single text value"),
        ("input: a\ntarget:", "target", 2, "needs a value"),
        ("input: a\ntarget: pdf\ncategory: '../x'", "category", 3, "not a category name"),
        ("input: a\ntarget: pdf\noptions: [1]", "options", 3, "must be a mapping"),
        ("input: a\ntarget: pdf\noptions: {x: .nan}", "options.x", 3, "finite number"),
        ("input: a\ntarget: pdf\noptions:\n  y: [.inf]", "options.y[0]", 4, "finite number"),
        ('input: a\ntarget: pdf\noptions: {x: "a\\0"}', "options.x", 3, "NUL character"),
        ("input: a\ntarget: pdf\noptions: {'': 1}", "options.", 3, "option name"),
        ("input: a\nconversion: {target: pdf}", "conversion", 2, "list of conversions"),
        ("input: a\nconversion: []", "conversion", 2, "the list is empty"),
        ("input: a\nconversion: [pdf]", "conversion[0]", 2, "must be a mapping"),
        ("input: a\nconversion:\n - {taget: pdf}", "conversion[0].taget", 3, "did you mean"),
        ("input: a\nconversion:\n - {category: image}", "conversion[0]", 3, "target: required"),
        ("input: a\nconversion:\n - {target: 'a b'}", "conversion[0].target", 3, "format name"),
        ("input: a\ntarget: pdf\noutput: rename", "output", 3, "must be a mapping"),
        ("input: a\ntarget: pdf\noutput: {nam: x}", "output.nam", 3, "did you mean `name`?"),
        ("input: a\ntarget: pdf\noutput: {name: 'a/{stem}'}", "output.name", 3, "separator"),
        ("input: a\ntarget: pdf\noutput: {name: '{bad}'}", "output.name", 3, "unknown field"),
        (
            "input: a\ntarget: pdf\noutput:\n  on_conflict: merge",
            "output.on_conflict",
            4,
            "rename | overwrite | skip | fail",
        ),
        (
            "input: a\ntarget: pdf\ndownload: {encoding: hex}",
            "download.encoding",
            3,
            "binary | base64",
        ),
        (
            "input: a\ntarget: pdf\ndownload: {verify: never}",
            "download.verify",
            3,
            "required | if-present",
        ),
        (
            'input: a\ntarget: pdf\ndownload: {password: "a\\nb"}',
            "download.password",
            3,
            "line break",
        ),
        ("input: a\ntarget: pdf\ndownload: [x]", "download", 3, "must be a mapping"),
    ],
)
def test_a_bad_value_names_its_key_and_line(
    tmp_path: Path, text: str, key: str, line: int, fragment: str
) -> None:
    err = refused(text, tmp_path)
    assert err.key == key
    assert err.line == line
    assert fragment in err.message
    assert err.message.startswith(f"{key} (line {line}): ")
    assert " — " in err.message  # every message goes on to say what to do


def test_too_many_inputs_are_refused(tmp_path: Path) -> None:
    items = ", ".join(f"f{i}" for i in range(MAX_INPUTS + 1))
    err = refused(f"target: pdf\ninput: [{items}]", tmp_path)
    assert err.key == "input" and err.line == 2 and "split them" in err.message


def test_too_many_conversions_are_refused(tmp_path: Path) -> None:
    items = ", ".join("{target: pdf}" for _ in range(MAX_CONVERSIONS + 1))
    err = refused(f"input: a\nconversion: [{items}]", tmp_path)
    assert err.key == "conversion" and "split them" in err.message


def test_overlong_strings_are_refused(tmp_path: Path) -> None:
    err = refused(f"input: {'a' * 5000}\ntarget: pdf", tmp_path)
    assert err.key == "input" and "limit is 4096" in err.message
    err = refused(f"input: a\ntarget: pdf\noptions: {{x: {'b' * 2000}}}", tmp_path)
    assert err.key == "options.x" and "limit is 1024" in err.message
    err = refused(f"input: a\ntarget: pdf\noptions: {{{'k' * 200}: 1}}", tmp_path)
    assert "option name" in err.message


def test_too_many_option_values_are_refused(tmp_path: Path) -> None:
    values = ", ".join(str(i) for i in range(1200))
    err = refused(f"input: a\ntarget: pdf\noptions: {{x: [{values}]}}", tmp_path)
    assert "more than 1000 option values" in err.message


# --------------------------------------------------------------------------- YAML-level refusals


def test_an_oversized_ticket_is_refused_with_the_limit(tmp_path: Path) -> None:
    err = refused(b"input: a\n" + b"#" * MAX_TICKET_BYTES, tmp_path)
    assert "64 KiB" in err.message and "limit" in err.message


def test_a_binary_ticket_is_not_a_text_file(tmp_path: Path) -> None:
    assert "not a text file" in refused(b"\x89PNG\r\n\x1a\n\x00\x00", tmp_path).message
    assert "not a text file" in refused(b"input: \xff\xfe\ntarget: pdf", tmp_path).message
    assert "not a text file" in refused(b"input: a\x07\ntarget: pdf", tmp_path).message


def test_an_alias_bomb_fails_fast(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    started = time.perf_counter()
    err = refused("\n".join(lines), tmp_path)
    assert time.perf_counter() - started < 0.5
    assert err.line == 2 and "aliases" in err.message


def test_a_single_alias_is_refused_too(tmp_path: Path) -> None:
    err = refused("input: &x a\ntarget: pdf\noptions: {y: *x}", tmp_path)
    assert err.line == 3 and "aliases" in err.message


def test_merge_keys_are_refused(tmp_path: Path) -> None:
    err = refused("input: a\ntarget: pdf\noptions:\n  <<: {x: 1}", tmp_path)
    assert err.key == "options" and err.line == 4 and "merge keys" in err.message


def test_deep_nesting_fails_fast(tmp_path: Path) -> None:
    err = refused("[" * 60000, tmp_path)
    assert "nested more than" in err.message


def test_duplicate_keys_name_the_key_and_both_lines(tmp_path: Path) -> None:
    err = refused("input: a\ntarget: pdf\ntarget: png", tmp_path)
    assert err.key == "target" and err.line == 3
    assert "first given on line 2" in err.message
    err = refused("input: a\ntarget: pdf\noptions:\n  x: 1\n  x: 2", tmp_path)
    assert err.key == "options.x" and err.line == 5


def test_several_documents_are_refused(tmp_path: Path) -> None:
    err = refused("input: a\ntarget: pdf\n---\ninput: b\n", tmp_path)
    assert err.line == 3 and "more than one YAML document" in err.message


@pytest.mark.parametrize("text", ["- a\n- b", "just text", "42", "null"])
def test_a_ticket_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    assert "must be a YAML mapping" in refused(text, tmp_path).message


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    err = refused("input: a\ntarget: pdf\noutput: {name: x\n", tmp_path)
    assert "not valid YAML" in err.message and err.line is not None


@pytest.mark.parametrize(
    "text",
    [
        "input: a\ntarget: !!python/object/apply:os.system [id]",
        "input: a\ntarget: pdf\noptions: {x: !!binary aGk=}",
        "input: a\ntarget: pdf\noptions: !!set {x}",
        "input: a\ntarget: pdf\noptions: {x: !!omap [a: 1]}",
        "input: a\ntarget: !custom pdf",
    ],
)
def test_unsafe_and_unknown_tags_are_refused(tmp_path: Path, text: str) -> None:
    err = refused(text, tmp_path)
    assert "is not allowed" in err.message and err.line is not None


def test_a_complex_key_is_refused(tmp_path: Path) -> None:
    err = refused("? [a, b]\n: 1\n", tmp_path)
    assert "a key must be plain text" in err.message and err.line == 1


# --------------------------------------------------------------------------- confinement


@pytest.mark.parametrize("value", ["/etc/passwd", "../../x", "sub/../../x", "."])
def test_inputs_outside_the_watched_folder_are_refused(tmp_path: Path, value: str) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    err = refused(f"input: '{value}'\ntarget: pdf", root)
    assert err.key == "input" and err.line == 1
    assert "is outside the watched folder" in err.message


def test_a_symlink_pointing_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("no")
    os.symlink(secret, root / "innocent.txt")
    err = refused("target: pdf\ninput: [ok.txt, innocent.txt]", root)
    assert err.key == "input[1]" and err.line == 2
    assert "is outside the watched folder" in err.message


def test_a_symlinked_folder_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", root / "dir")
    assert "outside the watched folder" in refused("input: dir/x\ntarget: pdf", root).message


def test_a_symlink_inside_the_root_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real.txt").write_text("x")
    os.symlink(tmp_path / "real.txt", tmp_path / "link.txt")
    spec = parse("input: link.txt\ntarget: pdf", tmp_path)
    assert spec.inputs[0].path == tmp_path / "real.txt"
    assert spec.inputs[0].value == "link.txt"


def test_a_ticket_in_a_symlinked_root_is_accepted(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "alias")
    spec = parse("input: a.txt\ntarget: pdf", tmp_path / "alias")
    assert spec.inputs[0].path == real / "a.txt"


# --------------------------------------------------------------------------- folder defaults


def test_defaults_fill_in_what_the_ticket_leaves_out(tmp_path: Path) -> None:
    defaults = {
        "target": "pdf",
        "options": {"a": 1, "b": 2},
        "output": {"on_conflict": "skip", "name": "{stem}.{ext}"},
        "download": {"verify": "required"},
    }
    spec = parse(
        "input: x.docx\noptions: {b: 3}\noutput: {on_conflict: overwrite}",
        tmp_path,
        defaults=defaults,
    )
    assert spec.conversions == (ConversionSpec(target="pdf", options={"a": 1, "b": 3}),)
    assert spec.output.on_conflict is ConflictPolicy.OVERWRITE
    assert spec.output.name == "{stem}.{ext}"
    assert spec.download.verify is VerifyMode.REQUIRED


def test_the_tickets_own_target_drops_the_default_category(tmp_path: Path) -> None:
    spec = parse(
        "input: x\ntarget: png", tmp_path, defaults={"target": "pdf", "category": "document"}
    )
    assert spec.conversions == (ConversionSpec(target="png"),)


def test_a_conversion_list_replaces_default_target_and_options(tmp_path: Path) -> None:
    spec = parse(
        "input: x\nconversion: [{target: png}]",
        tmp_path,
        defaults={"target": "pdf", "options": {"a": 1}},
    )
    assert spec.conversions == (ConversionSpec(target="png"),)


def test_an_adoption_ticket_ignores_conversion_defaults(tmp_path: Path) -> None:
    spec = parse(
        "job: abc",
        tmp_path,
        defaults={"target": "pdf", "input": "x", "output": {"on_conflict": "fail"}},
    )
    assert spec.kind is TicketKind.ADOPTION
    assert spec.output.on_conflict is ConflictPolicy.FAIL


def test_defaults_can_make_an_empty_ticket_complete(tmp_path: Path) -> None:
    spec = parse("", tmp_path, defaults={"input": "scan.pdf", "target": "txt"})
    assert spec.inputs[0].path == tmp_path / "scan.pdf"


def test_broken_defaults_are_reported_as_defaults(tmp_path: Path) -> None:
    err = refused("input: x", tmp_path, defaults={"target": "a b"})
    assert err.key == "defaults.target" and "configuration" in err.message


def test_merge_defaults_is_key_wise_for_nested_sections() -> None:
    merged = merge_defaults(
        {"output": {"name": "n"}, "download": {"verify": "required"}, "target": "pdf"},
        {"output": {"on_conflict": "skip"}, "target": "png"},
    )
    assert merged == {
        "output": {"name": "n", "on_conflict": "skip"},
        "download": {"verify": "required"},
        "target": "png",
    }


def test_validate_defaults_checks_a_partial_ticket_with_lines() -> None:
    node = load_yaml("defaults:\n  target: pdf\n  output: {on_conflict: skip}\n").value["defaults"]
    assert validate_defaults(node, key_prefix="folders[0].defaults") == {
        "target": "pdf",
        "output": {"on_conflict": "skip"},
    }
    bad = load_yaml("defaults:\n  target: pdf\n  colour: red\n").value["defaults"]
    with pytest.raises(FieldError) as info:
        validate_defaults(bad, key_prefix="folders[0].defaults")
    assert info.value.key == "folders[0].defaults.colour" and info.value.line == 3


def test_validate_defaults_refuses_a_job() -> None:
    with pytest.raises(FieldError) as info:
        validate_defaults(Node.from_plain({"job": "abc"}), key_prefix="d")
    assert info.value.key == "d.job" and "ticket itself" in info.value.message


# --------------------------------------------------------------------------- rule-folder tickets


@pytest.mark.parametrize(
    "name",
    [
        "scan.png",
        "a: b.png",
        "# not a comment",
        "- leading dash",
        "line\nbreak",
        'quote" and \\ backslash',
        "'single'",
        "  spaces  ",
        "tab\there",
        "bell\x07",
        "null",
        "true",
        "0123",
        "~",
        "@at",
        "%percent",
        "{flow}",
        "[seq]",
        "&anchor",
        "*alias",
        "!tag",
        "ünïcødé 日本語 🎉",
        "\u2028\u2029\x85\ufeff",
        "\udcff-undecodable",
        "---",
        "...",
        "http:",
    ],
)
def test_rule_folder_ticket_round_trips_hostile_names(tmp_path: Path, name: str) -> None:
    spec = parse(ticket_text_for_plain_file(name), tmp_path, defaults={"target": "pdf"})
    assert [i.value for i in spec.inputs] == [name]
    assert spec.inputs[0].kind is InputKind.LOCAL


_FILE_NAMES = st.text(min_size=1, max_size=120).filter(
    lambda s: "/" not in s and "\x00" not in s and s not in (".", "..")
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_FILE_NAMES)
def test_rule_folder_ticket_parses_back_to_any_file_name(tmp_path: Path, name: str) -> None:
    text = ticket_text_for_plain_file(name)
    text.encode("utf-8")  # always writable as UTF-8
    spec = parse(text, tmp_path, defaults={"target": "pdf"})
    assert spec.inputs[0].value == name


# --------------------------------------------------------------------------- fuzzing

_TOKENS = [
    "input",
    "target",
    "job",
    "token",
    "options",
    "conversion",
    "output",
    "download",
    "name",
    "on_conflict",
    "version",
    "pdf",
    "a.txt",
    "../x",
    "/etc/passwd",
    "https://h/x",
    "ftp://h",
    ":",
    ": ",
    " ",
    "  ",
    "\n",
    "\n  ",
    "- ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "&a ",
    "*a",
    "!!binary ",
    "!!python/object ",
    "!x ",
    "'",
    '"',
    "#",
    "---\n",
    "...",
    "? ",
    "<<: ",
    "~",
    "null",
    "1",
    "1.5",
    ".nan",
    "true",
    "2024-01-01",
    "\t",
    "\\",
    "|\n  ",
    ">\n  ",
    "\x00",
    "\x07",
    "é",
    "%",
]


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(_TOKENS), max_size=40).map("".join))
def test_yamlish_garbage_only_ever_raises_ticket_error(tmp_path: Path, text: str) -> None:
    try:
        parse(text, tmp_path)
    except TicketError as err:
        assert err.message


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_ticket_error(tmp_path: Path, data: bytes) -> None:
    try:
        parse(data, tmp_path)
    except TicketError as err:
        assert err.message


def test_defaults_handed_in_by_code_are_checked_like_yaml(tmp_path: Path) -> None:
    spec = parse("input: x", tmp_path, defaults={"target": "PDF", "download": {"password": 123}})
    assert spec.conversions[0].target == "pdf"
    assert spec.download.password == "123"
    err = refused("input: x\ntarget: pdf", tmp_path, defaults={"options": {"when": object()}})
    assert err.key == "defaults.options.when" and "configuration" in err.message


@pytest.mark.parametrize(
    ("data", "final"),
    [
        (b"input: a.png\ntarget: jpg\n# " + b"x" * MAX_TICKET_BYTES, True),  # too big
        (b"input: a.png\x00\ntarget: jpg\n", True),  # binary
        ("input: caf\xe9.png\ntarget: jpg\n".encode("latin-1"), True),  # not UTF-8
        (b"a: &a [1]\nb: *a\ninput: a.png\ntarget: jpg\n", True),  # an alias
        (b"input: a.png\ntarget: jpg\x07\n", True),  # a control character
        (b"input: caf\xc3", False),  # a character cut by a write in progress
        (b"input: a.png\ntarg", False),  # YAML cut short
        (b"input: a.png\n", False),  # target not written yet
        (b"input: a.png\noptions: {quality: 4", False),  # flow mapping not closed yet
    ],
)
def test_ticket_errors_say_whether_more_bytes_could_cure_them(
    tmp_path: Path, data: bytes, final: bool
) -> None:
    """`final` errors are not re-read during the parse grace (they fail at once)."""
    with pytest.raises(TicketError) as info:
        parse(data, tmp_path)
    assert info.value.final is final, info.value.message


# --------------------------------------------------------------------------- inputs as mappings


def test_inputs_as_mappings_carry_their_own_settings(tmp_path: Path) -> None:
    spec = parse(
        "input:\n"
        "  - report.pdf\n"
        "  - {source: stamp.png, filename: logo.png}\n"
        "  - source: https://example.com/\n"
        "    engine: screenshot\n"
        "    options: {screen_width: 1280, device_scale_factor: 1}\n"
        "    parameters: {note: x}\n"
        "conversion: [{category: operation, target: compare-image, options: {method: ssim}}]\n",
        tmp_path,
    )
    plain, stamp, site = spec.inputs
    assert (plain.kind, plain.engine, plain.options, plain.filename) == (
        InputKind.LOCAL,
        None,
        {},
        None,
    )
    assert plain.upload_name() == "report.pdf"
    assert stamp.kind is InputKind.LOCAL and stamp.path == tmp_path / "stamp.png"
    assert stamp.upload_name() == "logo.png"
    assert site.kind is InputKind.URL
    assert site.remote_body() == {
        "type": "remote",
        "source": "https://example.com/",
        "engine": "screenshot",
        "options": {"screen_width": 1280, "device_scale_factor": 1},
        "parameters": {"note": "x"},
    }
    assert spec.conversions[0].to_api() == {
        "target": "compare-image",
        "category": "operation",
        "options": {"method": "ssim"},
    }
    # what the state database keeps reads back the same, settings included
    assert TicketSpec.from_json(spec.to_json()) == spec


def test_a_plain_input_is_stored_as_before(tmp_path: Path) -> None:
    spec = parse("input: a.png\ntarget: jpg\n", tmp_path)
    assert spec.to_json()["inputs"] == [
        {"kind": "local", "value": "a.png", "path": str(tmp_path / "a.png")}
    ]


def test_a_mapping_input_outside_the_root_names_its_source_key(tmp_path: Path) -> None:
    err = refused("input:\n  - a.png\n  - {source: ../../etc/passwd}\ntarget: png\n", tmp_path)
    assert (err.key, err.line) == ("input[1].source", 3)
    assert "outside the watched folder" in err.message


def test_a_callback_goes_into_the_job_and_is_kept(tmp_path: Path) -> None:
    spec = parse(
        "input: a.docx\ntarget: pdf\ncallback: https://my-app.example.com/hook\n"
        "notify_status: true\n",
        tmp_path,
    )
    assert spec.job_settings() == {
        "callback": "https://my-app.example.com/hook",
        "notify_status": True,
    }
    assert TicketSpec.from_json(spec.to_json()) == spec
    plain = parse("input: a.docx\ntarget: pdf\n", tmp_path)
    assert plain.job_settings() == {} and "callback" not in plain.to_json()
