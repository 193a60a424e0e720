"""Dashboard tests use the end-to-end harness; the emulator (tests/conftest.py) accepts its key."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))  # e2e_harness

from e2e_harness import KEY


@pytest.fixture
def emulator_key() -> str:
    return KEY
