"""scripts/bench.py: its help works and its result table computes medians and ratios right.

No benchmark runs here: wall-clock thresholds have no place in the test suite."""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_help_lists_quick_and_out() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--quick" in out and "--out" in out and "--only" in out


def test_summary_is_median_min_max(bench: ModuleType) -> None:
    assert bench.summarize([3.0, 1.0, 2.0, 10.0]) == {
        "median": 2.5,
        "min": 1.0,
        "max": 10.0,
        "n": 4,
    }
    assert bench.summarize([]) == {"median": None, "min": None, "max": None, "n": 0}


def test_percentiles_interpolate_between_ranks(bench: ModuleType) -> None:
    values = list(range(1, 101))  # 1..100
    assert bench.percentile(values, 50) == pytest.approx(50.5)
    assert bench.percentile(values, 99) == pytest.approx(99.01)
    assert bench.percentile([7.0], 99) == 7.0
    assert bench.percentile([], 50) is None


def test_ratios_are_paired_per_repetition(bench: ModuleType) -> None:
    assert bench.ratio(6.0, 3.0) == 2.0
    assert bench.ratio(1.0, 0.0) is None and bench.ratio(None, 1.0) is None
    # agent/baseline measured side by side: the ratio of medians is not the median of ratios
    summary = bench.paired_ratios([10.0, 30.0, 20.0], [5.0, 10.0, 20.0])
    assert summary == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}


def test_table_shows_median_range_ratio_and_verdict(bench: ModuleType) -> None:
    row = bench.Row(
        "1 throughput",
        "a instant",
        bench.summarize([150.0, 160.0, 170.0]),
        "tickets/s",
        bench.summarize([10.0, 12.0]),
        bench.paired_ratios([150.0, 160.0], [10.0, 12.0]),
        "≥150/s",
        True,
    )
    table = bench.format_table([row])
    line = table.splitlines()[2]
    assert "160 [150–170]" in line and "11.0 [10.0–12.0]" in line
    assert "14.2 [13.3–15.0]" in line and line.rstrip().endswith("yes")


def test_sdk_schedule_follows_its_defaults(bench: ModuleType) -> None:
    class NoJitter(random.Random):
        def random(self) -> float:
            return 0.0

    # without jitter the SDK polls at 0, 1, 2.5, 4.75, 8.125, 13.125, 18.125 … (cap 5 s)
    assert bench.sdk_poll_schedule(8.0, NoJitter()) == (5, pytest.approx(0.125))
    assert bench.sdk_poll_schedule(0.0, NoJitter()) == (1, 0.0)
    cost = bench.sdk_poll_cost(60.0, samples=500)
    assert 13 < cost["per_job_minute"] < 16
    assert cost["notice_max"] <= 5.0 * 1.25
