"""Shared pieces of the fuzz tests: the example budget and JSON-ish strategies.

``FUZZ_EXAMPLES`` sets how many examples each fuzz test draws (default 100, a few seconds);
``FUZZ_EXAMPLES=10000 pytest tests/fuzz`` is the long mode.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # timing is asserted explicitly where it matters
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

# Text that goes wrong in file names, terminals and YAML: controls, bidi overrides, combining
# marks, NFD forms, surrogates (only where bytes are made with surrogatepass), BOMs, separators.
NASTY_CHARS = (
    "\x00\x01\x07\x08\t\n\r\x1b\x7f\x85\xa0\u00ad\u0301\u061c\u200b\u200d\u200e\u200f"
    "\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff\ufffd\uffff"
    "/\\:*?\"<>|.~ #&*!%@`'{}[],-"
)
nasty_text = st.text(
    alphabet=st.one_of(st.sampled_from(NASTY_CHARS), st.characters(codec="utf-8")),
    max_size=40,
)

HOSTILE_NAMES = (
    "../../x.png",
    "..\\..\\evil.png",
    "/etc/passwd",
    "C:\\Windows\\x.png",
    "\\\\server\\share\\x.png",
    "a\x00b\n\x1b[31m.png",
    "n" * 300 + ".png",
    "é" * 150 + ".png",
    "CON",
    "con.txt",
    "LPT1.png",
    "NUL .txt",
    "..",
    ".",
    "",
    " .png ",
    ".hidden",
    "...",
    "x.png.",
    "cod\u202egnp.exe",
    "e\u0301.png",  # NFD: the same name as "é.png" once normalised
    "\u00e9.png",
    "x.status.yaml",
    "x.job",
    ".x.png.abcdef12.part",
    "a/b/c.png",
    "~/x.png",
    "x:stream.png",
    "\ud800.png",
)
hostile_name = st.one_of(st.sampled_from(HOSTILE_NAMES), nasty_text)

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    nasty_text,
)


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    return st.recursive(
        json_leaf,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(nasty_text, inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )


any_json = json_values()
