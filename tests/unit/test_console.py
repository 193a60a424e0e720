"""Terminal progress bars follow transfers and disappear when they end."""

import io

from rich.console import Console

from agent.console import TerminalProgress


def test_bars_follow_transfers_and_go_away() -> None:
    out = io.StringIO()
    bars = TerminalProgress(Console(file=out, force_terminal=True, width=100))
    with bars:
        bars.transfer("down:1", "↓ big.bmp", 0, 1000)
        bars.transfer("down:1", "↓ big.bmp", 500, 1000)
        (task,) = bars._progress.tasks
        assert task.completed == 500 and task.total == 1000
        bars.transfer("up:2", "↑ a.png", 0, None)
        assert len(bars._progress.tasks) == 2
        bars.transfer_done("down:1")
        bars.transfer_done("up:2")
        bars.transfer_done("never-started")
        assert bars._progress.tasks == []
    assert "big.bmp" in out.getvalue()
