"""Safe output names, templates, conflict candidates, the agent's own file names, confinement."""

from __future__ import annotations

import os
import unicodedata
from itertools import islice
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.paths import (
    MAX_CONFLICT_CANDIDATES,
    MAX_NAME_BYTES,
    conflict_candidates,
    done_path,
    failed_path,
    fit_path,
    is_agent_file,
    is_ticket_name,
    is_within,
    job_path,
    name_key,
    part_name,
    render_output_name,
    safe_name,
    sidecar_path,
    split_ext,
    template_problem,
    ticket_stem,
)

# --------------------------------------------------------------------------- safe_name


@pytest.mark.parametrize(
    ("untrusted", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../evil.txt", "evil.txt"),
        ("/etc/passwd", "passwd"),
        ("..\\..\\windows\\system32\\evil.dll", "evil.dll"),
        ("a\x00b.txt", "ab.txt"),
        ("line\nbreak\r.txt", "linebreak.txt"),
        ("  spaced.txt  ", "spaced.txt"),
        ("trailing.dots...", "trailing.dots"),
        (".hidden", "hidden"),
        ("...", "fb"),
        ("..", "fb"),
        (".", "fb"),
        ("", "fb"),
        ("/", "fb"),
        ("dir/", "fb"),
        ("CON", "_CON"),
        ("con.txt", "_con.txt"),
        ("LPT9.tar.gz", "_LPT9.tar.gz"),
        ("COM1 .txt", "_COM1 .txt"),
        ("CONSOLE.txt", "CONSOLE.txt"),
        ("a:b*c?.txt", "a_b_c_.txt"),
        ("cod\u202egpj.exe", "codgpj.exe"),
    ],
)
def test_safe_name_reduces_hostile_names_to_a_base_name(untrusted: str, expected: str) -> None:
    assert safe_name(untrusted, fallback="fb") == expected


def test_safe_name_normalises_unicode_to_nfc() -> None:
    decomposed = "Cafe\u0301.txt"
    assert safe_name(decomposed, fallback="x") == "Caf\u00e9.txt"


def test_safe_name_uses_the_fallback_made_safe_and_then_output() -> None:
    assert safe_name("..", fallback="../out-1") == "out-1"
    assert safe_name("..", fallback="..") == "output"


def test_safe_name_caps_length_in_bytes_keeping_the_extension() -> None:
    name = "é" * 300 + ".pdf"
    result = safe_name(name, fallback="x")
    assert len(result.encode()) <= MAX_NAME_BYTES
    assert result.endswith(".pdf")
    assert result.startswith("é")


def test_safe_name_drops_an_overlong_extension_when_shortening() -> None:
    name = "a." + "b" * 400
    result = safe_name(name, fallback="x")
    assert len(result.encode()) <= MAX_NAME_BYTES
    assert result.startswith("a.bbb")


_BAD_CATEGORIES = {"Cc", "Cs", "Zl", "Zp"}


@given(st.text(max_size=400), st.text(max_size=20))
def test_safe_name_is_always_a_safe_stable_base_name(untrusted: str, fallback: str) -> None:
    result = safe_name(untrusted, fallback=fallback)
    assert result
    assert "/" not in result and "\\" not in result and "\x00" not in result
    assert not any(unicodedata.category(ch) in _BAD_CATEGORIES for ch in result)
    assert result not in (".", "..")
    assert not result.startswith(".")
    assert result == result.strip()
    assert len(result.encode("utf-8")) <= MAX_NAME_BYTES
    assert unicodedata.is_normalized("NFC", result)
    assert safe_name(result, fallback=fallback) == result


# --------------------------------------------------------------------------- templates


def test_render_without_template_keeps_the_server_name_made_safe() -> None:
    name = render_output_name(
        None,
        server_name="../x/report.pdf",
        ticket_stem="t",
        target="pdf",
        index=1,
        count=1,
        fallback="out-1",
    )
    assert name == "report.pdf"


@pytest.mark.parametrize(
    ("template", "index", "count", "expected"),
    [
        ("{stem}{suffix}.{ext}", 1, 1, "ticket.png"),
        ("{stem}{suffix}.{ext}", 2, 3, "ticket-2.png"),
        ("{name}-{index}.{target}", 1, 1, "scan-1.png"),
        ("{{literal}} {stem}", 1, 1, "{literal} ticket"),
        ("{suffix}", 1, 1, "scan.png"),  # empty result → the server's name
        ("..{stem}", 1, 1, "ticket"),
        ("CON.{ext}", 1, 1, "_CON.png"),
    ],
)
def test_render_fills_the_template_and_sanitises_the_result(
    template: str, index: int, count: int, expected: str
) -> None:
    name = render_output_name(
        template,
        server_name="scan.png",
        ticket_stem="ticket",
        target="png",
        index=index,
        count=count,
        fallback="out",
    )
    assert name == expected


def test_render_uses_the_target_as_ext_when_the_server_name_has_none() -> None:
    name = render_output_name(
        "{stem}.{ext}",
        server_name="noext",
        ticket_stem="t",
        target="webp",
        index=1,
        count=1,
        fallback="out",
    )
    assert name == "t.webp"


def test_render_keeps_separators_in_fields_from_escaping_the_template() -> None:
    name = render_output_name(
        "{stem}-{name}.{ext}",
        server_name="a\\b.txt",
        ticket_stem="x/y",
        target="txt",
        index=1,
        count=1,
        fallback="out",
    )
    assert name == "x_y-b.txt"


def test_render_ignores_an_invalid_template_and_keeps_the_server_name() -> None:
    name = render_output_name(
        "../{stem}",
        server_name="s.pdf",
        ticket_stem="t",
        target="pdf",
        index=1,
        count=1,
        fallback="out",
    )
    assert name == "s.pdf"


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("a/{stem}", "path separator"),
        ("a\\b", "path separator"),
        ("{nope}", "unknown field {nope}"),
        ("{stem.__class__}", "unknown field"),
        ("{stem", "unbalanced brace"),
        ("stem}", "unbalanced brace"),
        ("   ", "empty"),
    ],
)
def test_template_problem_explains_what_is_wrong(template: str, fragment: str) -> None:
    problem = template_problem(template)
    assert problem is not None
    assert fragment in problem


def test_template_problem_accepts_every_documented_field() -> None:
    assert template_problem("{stem}{name}{ext}{target}{index}{suffix}{{x}}") is None


# --------------------------------------------------------------------------- conflicts, temp names


def test_conflict_candidates_number_before_the_last_extension() -> None:
    assert list(islice(conflict_candidates("report.pdf"), 3)) == [
        "report.pdf",
        "report (1).pdf",
        "report (2).pdf",
    ]
    assert list(islice(conflict_candidates("a.tar.gz"), 2)) == ["a.tar.gz", "a.tar (1).gz"]
    assert list(islice(conflict_candidates("noext"), 2)) == ["noext", "noext (1)"]
    assert list(islice(conflict_candidates(".hidden"), 2)) == [".hidden", ".hidden (1)"]


def test_name_key_is_one_for_names_ntfs_or_apfs_take_for_one() -> None:
    same = [
        ("Photo.JPG", "photo.jpg"),
        ("caf\u00e9.jpg", "cafe\u0301.jpg"),  # NFC and NFD (macOS)
        ("CAF\u00c9.JPG", "cafe\u0301.jpg"),
        ("stra\u00dfe", "STRASSE"),
        ("\u0131", "I"),  # dotless i: NTFS upper-cases it to I
    ]
    for a, b in same:
        assert name_key(a) == name_key(b), (a, b)
    assert name_key("photo.jpg") != name_key("photo.jpeg")
    assert name_key("a (1).txt") != name_key("a.txt")


def _first_free(name: str, existing: set[str]) -> str:
    """What placement picks with ``on_conflict: rename`` (downloader.place's rule)."""
    taken = {name_key(n) for n in existing}
    return next(c for c in conflict_candidates(name) if name_key(c) not in taken)


_NAMES = st.text(min_size=1, max_size=40)


@given(_NAMES, st.lists(_NAMES, max_size=6), st.data())
def test_the_chosen_name_is_safe_and_never_collides_case_insensitively(
    raw: str, others: list[str], data: st.DataObject
) -> None:
    name = safe_name(raw, fallback="output.bin")
    variant = data.draw(
        st.sampled_from([name, name.upper(), name.lower(), unicodedata.normalize("NFD", name)])
    )
    existing = {safe_name(o, fallback="x") for o in others} | {variant}
    chosen = _first_free(name, existing)
    assert safe_name(chosen, fallback="output.bin") == chosen  # valid everywhere
    assert len(chosen.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES + 8
    folded = {unicodedata.normalize("NFC", e).casefold() for e in existing}
    assert unicodedata.normalize("NFC", chosen).casefold() not in folded
    assert name_key(chosen) not in {name_key(e) for e in existing}


def _utf16(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


@given(st.text(min_size=1, max_size=250), st.integers(min_value=3, max_value=200))
def test_fit_path_keeps_the_part_file_and_candidates_under_max_path(raw: str, depth: int) -> None:
    name = safe_name(raw, fallback="output.bin")
    folder = "C:\\" + "d" * depth
    fitted = fit_path(name, folder, 260)
    assert safe_name(fitted, fallback="x") == fitted
    stem, ext = split_ext(fitted)
    longest = max(part_name(fitted, "abcdef12"), f"{stem} (9999){ext}", key=_utf16)
    if 259 - _utf16(folder) - 1 - 15 >= 8:  # room for a readable name
        assert _utf16(folder) + 1 + _utf16(longest) <= 259
    else:
        assert fitted == name  # none: left for the system to refuse
    if _utf16(folder) + 1 + _utf16(part_name(name, "abcdef12")) <= 259:
        assert fitted == name  # a path that fits is left alone


def test_fit_path_shortens_the_stem_and_keeps_the_extension() -> None:
    folder = "C:\\Users\\someone\\" + "x" * 150
    fitted = fit_path("a" * 150 + ".jpeg", folder, 260)
    assert fitted.endswith(".jpeg") and fitted.startswith("aaaa")
    assert _utf16(folder) + 1 + _utf16(part_name(fitted, "abcdef12")) <= 259
    assert fit_path("short.jpg", folder, 260) == "short.jpg"
    assert fit_path("a" * 100 + ".jpg", "C:\\" + "y" * 250, 260) == "a" * 100 + ".jpg"  # no room


def test_conflict_candidates_are_bounded() -> None:
    assert sum(1 for _ in conflict_candidates("x")) == MAX_CONFLICT_CANDIDATES


def test_split_ext_treats_a_leading_dot_as_part_of_the_stem() -> None:
    assert split_ext(".bashrc") == (".bashrc", "")
    assert split_ext("a.b.c") == ("a.b", ".c")


def test_part_name_is_hidden_and_names_the_output() -> None:
    assert part_name("report.pdf", "7c2a9f00-1111-2222") == ".report.pdf.7c2a9f00.part"
    hidden = part_name("x.pdf", "---")
    assert hidden.startswith(".x.pdf.") and hidden.endswith(".part")
    assert is_agent_file(hidden)
    assert not is_ticket_name(hidden)


def test_part_name_of_a_long_name_stays_within_file_name_limits() -> None:
    assert len(part_name("a" * 300 + ".pdf", "abc").encode()) <= 255


# --------------------------------------------------------------------------- ticket file names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.job", True),
        ("REPORT.JOB", True),
        (".report.job", False),
        (".job", False),
        ("report.job.done", False),
        ("report.job.failed", False),
        ("report.status.yaml", False),
        ("report.pdf", False),
        ("job", False),
    ],
)
def test_only_visible_job_files_are_tickets(name: str, expected: bool) -> None:
    assert is_ticket_name(name) is expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (".report.pdf.abcd1234.part", True),
        ("report.status.yaml", True),
        ("report.job.done", True),
        ("report.job.failed", True),
        ("report.part", False),  # a user's file, not hidden
        ("report.job", False),
        ("report.pdf", False),
    ],
)
def test_agent_files_are_recognised(name: str, expected: bool) -> None:
    assert is_agent_file(name) is expected


def test_ticket_stem_strips_job_and_its_done_and_failed_forms() -> None:
    assert ticket_stem("report.job") == "report"
    assert ticket_stem("report.job.done") == "report"
    assert ticket_stem("report.job.failed") == "report"
    assert ticket_stem("a.b.JOB") == "a.b"
    assert ticket_stem("plain.pdf") == "plain.pdf"


def test_sidecar_done_and_failed_paths_sit_beside_the_ticket(tmp_path: Path) -> None:
    ticket = tmp_path / "report.job"
    assert sidecar_path(ticket) == tmp_path / "report.status.yaml"
    assert done_path(ticket) == tmp_path / "report.job.done"
    assert failed_path(ticket) == tmp_path / "report.job.failed"
    assert sidecar_path(failed_path(ticket)) == tmp_path / "report.status.yaml"
    assert job_path(failed_path(ticket)) == ticket
    assert done_path(failed_path(ticket)) == tmp_path / "report.job.done"


# --------------------------------------------------------------------------- confinement


def test_is_within_accepts_the_root_and_paths_inside_it(tmp_path: Path) -> None:
    assert is_within(tmp_path, tmp_path)
    assert is_within(tmp_path / "a" / "b", tmp_path)
    assert is_within(str(tmp_path / "a"), str(tmp_path))


def test_is_within_refuses_escapes_and_prefix_lookalikes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "rootother").mkdir()
    assert not is_within(root / ".." / "x", root)
    assert not is_within(tmp_path / "rootother" / "x", root)
    assert not is_within("/etc/passwd", root)


def test_is_within_follows_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "link")
    assert not is_within(root / "link" / "file", root)
    os.symlink(root, tmp_path / "alias")
    assert is_within(tmp_path / "alias" / "file", root)
