"""Fixtures shared by the suites that run against an emulator started in the test's own loop, and
the CI rule: under CI=true a skipped test fails the run unless it is marked `allow_skip(reason=...)`
(a missing or broken system package must not leave CI green)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import pytest

from agent.emulator import EmulatorConfig, RunningEmulator, start_emulator


@pytest.fixture
async def make_emulator(
    emulator_key: str,
) -> AsyncIterator[Callable[..., Awaitable[RunningEmulator]]]:
    """``await make_emulator(**EmulatorConfig fields)``: a fresh emulator on loopback that accepts
    the suite's ``emulator_key`` (each suite's conftest says which); stopped after the test."""
    started: list[RunningEmulator] = []

    async def make(**config: Any) -> RunningEmulator:
        config.setdefault("api_key", emulator_key)
        emu = await start_emulator(EmulatorConfig(**config))
        started.append(emu)
        return emu

    yield make
    for emu in started:
        await emu.stop()


# --------------------------------------------------------------------------- CI: no silent skips


def in_ci() -> bool:
    """CI=true (as GitHub Actions, GitLab and most CI services set it)."""
    return os.environ.get("CI", "").strip().lower() == "true"


# --------------------------------------------------------------------------- --portable


PORTABLE_ENV = "CONVERT_AGENT_FORCE_PORTABLE"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--portable",
        action="store_true",
        help=(
            f"run every agent a test starts with {PORTABLE_ENV}=1: the choices made for Windows "
            "and macOS where Linux can run them (watchdog's observer instead of the inotify "
            "reader, the byte-range lock, placement without hard links, no folder fsync, "
            "Windows' path limit); scripts/test runs tests/e2e this way too"
        ),
    )


def pytest_report_header(config: pytest.Config) -> str | None:
    if config.getoption("portable"):
        return f"agents run with {PORTABLE_ENV}=1 (--portable): the Windows/macOS choices"
    return None


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("portable"):
        os.environ[PORTABLE_ENV] = "1"  # the agents a test spawns inherit it
    config.addinivalue_line(
        "markers",
        "allow_skip(reason): this test may skip even under CI=true, and `reason` says why its "
        "skip does not hide a broken CI machine (e.g. a kernel setting a runner may differ in)",
    )


def _why(longrepr: object) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


CI_SKIP = (
    "skipped under CI=true, where a skip fails the run (a missing or broken system package "
    "would otherwise leave CI green): {why}. Install what it needs (.ci/run installs the system "
    "packages), or mark the test @pytest.mark.allow_skip(reason=...) if its skip is expected."
)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    marker = item.get_closest_marker("allow_skip")
    if marker is not None and (marker.kwargs.get("reason") or marker.args):
        return
    report.outcome = "failed"
    report.longrepr = CI_SKIP.format(why=_why(report.longrepr))


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    """A whole module skipped at import (``pytest.skip(allow_module_level=True)``) fails too."""
    outcome = yield
    report: pytest.CollectReport = outcome.get_result()
    if report.skipped and in_ci():
        report.outcome = "failed"
        report.longrepr = CI_SKIP.format(why=_why(report.longrepr))


def unavailable(why: str, install: str) -> NoReturn:
    """A system package a test needs is missing or broken: under CI=true the test fails, naming
    the package and how to install it; elsewhere it is skipped with the same words."""
    message = f"{why} (install: {install}; .ci/run installs it as root with apt)"
    if in_ci():
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(name="unavailable")
def unavailable_fixture() -> Callable[[str, str], NoReturn]:
    """``unavailable(why, install)``: fail under CI=true, skip elsewhere (see ``unavailable``)."""
    return unavailable
