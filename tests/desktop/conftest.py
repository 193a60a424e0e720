"""Desktop tests: the emulator (tests/conftest.py) accepts the desktop helpers' key."""

from __future__ import annotations

import pytest
from desktop_helpers import KEY


@pytest.fixture
def emulator_key() -> str:
    return KEY
