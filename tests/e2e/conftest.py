"""End-to-end tests: the emulator (tests/conftest.py) accepts the harness's key."""

from __future__ import annotations

import pytest
from e2e_harness import KEY


@pytest.fixture
def emulator_key() -> str:
    return KEY
