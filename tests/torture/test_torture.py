"""Crash safety at scale (issue 3's must-show, issue 4's short campaign), with the real agent
process killed at random moments against the real emulator, checked by the invariant checker.

Each campaign has a fixed seed; a failure prints the summary with the replay command.
"""

from __future__ import annotations

import pytest
from campaign import Options, Summary, run_campaign

PHASES = {"creating", "uploading", "starting", "processing", "downloading"}


def _assert_clean(s: Summary) -> None:
    assert not s.violations, s.text()
    assert s.done + s.failed == s.tickets, s.text()


def _assert_kills_everywhere(s: Summary, min_cycles: int) -> None:
    assert s.kills + s.sigterms >= min_cycles, s.text()
    assert s.kills >= min_cycles * 2 // 3, s.text()
    hit = PHASES & set(s.phases_at_kill)
    # the timing of a kill is the one thing a seed cannot pin down (creating and starting take
    # milliseconds on a fast run): ask for the long phases and at least one short one
    assert {"processing", "downloading"} <= hit or len(hit) >= 4, s.text()
    assert len(hit) >= 3, f"kills landed only in {sorted(hit)}\n{s.text()}"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_in_every_phase_50_tickets_20_cycles_every_ticket_done_once() -> None:
    s = run_campaign(Options(seed=3, tickets=50, kills=22, processing_seconds=2.0))
    _assert_clean(s)
    assert s.done == s.tickets, s.text()
    _assert_kills_everywhere(s, 20)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_campaign_with_a_server_that_ignores_idempotency_key_and_range() -> None:
    s = run_campaign(
        Options(
            seed=12,
            tickets=50,
            kills=22,
            processing_seconds=2.0,
            ignore_idempotency=True,
            ignore_range=True,
        )
    )
    _assert_clean(s)
    assert s.done == s.tickets, s.text()
    _assert_kills_everywhere(s, 20)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_short_campaign_with_permanent_faults_each_ticket_done_or_failed_with_a_reason() -> None:
    s = run_campaign(Options(seed=31, tickets=30, kills=15, processing_seconds=1.0, permanent=True))
    _assert_clean(s)
    assert s.failed > 0, "the permanent faults did not fail any ticket\n" + s.text()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_team_campaign_three_agents_on_postgresql_every_ticket_done_once() -> None:
    """Issue 10's campaign, short: three agents on bindfs mounts of one folder, one PostgreSQL
    server; agents SIGKILLed and SIGSTOPped past their lease, the server restarted, sessions
    dropped (the full one: scripts/torture --team 3 --tickets 300 --cycles 200)."""
    import os
    import shutil
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "store"))
    from pg_server import missing_reason

    reason = missing_reason() or (None if shutil.which("bindfs") else "bindfs is missing")
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the team campaign cannot run under CI: {reason}")
        pytest.skip(reason)
    from team import run_team_campaign

    s = run_team_campaign(Options(seed=5, tickets=40, kills=40, team=3, lease=6.0))
    _assert_clean(s)
    assert s.done == s.tickets, s.text()
    assert s.team is not None and s.team["takeovers"] > 0, s.text()
    kinds = {k.split("+")[0].split("(")[0] for k in s.team["cycles"]}
    assert {"kill", "stop", "pg-drop"} <= kinds, s.text()
