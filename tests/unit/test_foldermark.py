"""Folder marks (agent.foldermark): judging a mark with a fake clock, taking, renewing, losing and
releasing marks in real folders, and the take race between threads."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from agent.config import Config, FolderConfig, load_config, share_names
from agent.daemon import state_location_problem
from agent.errors import ConfigError
from agent.foldermark import (
    MARK_NAME,
    FolderMarks,
    Identity,
    Judge,
    Mark,
    folder_status,
    mark_bytes,
    read_mark,
)
from agent.watcher import classify


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def ident(agent_id: str, *, host: str = "h1", machine: str = "m1", pid: int = 100) -> Identity:
    return Identity(
        agent_id=agent_id,
        name=f"name-{agent_id}",
        state=f"sqlite:{host}:/s/{agent_id}.db",
        host=host,
        machine=machine,
        pid=pid,
    )


def a_mark(me: Identity, *, seq: int = 0, heartbeat: float = 0.0) -> Mark:
    raw = mark_bytes(me, share="s", folder=Path("/f"), token="t", seq=seq, now=heartbeat)
    return Mark.parse(raw)


# --------------------------------------------------------------------------- judging


def test_no_mark_is_free_and_our_own_mark_is_taken_at_once() -> None:
    me = ident("aaaa")
    judge = Judge(me, 60, mono=Clock(), alive=lambda pid: True)
    assert judge.judge(Path("/f"), None).verdict == "free"
    # Our agent id and state, another pid (a restart after a crash), a heartbeat an hour old.
    old = a_mark(ident("aaaa", pid=1), heartbeat=-3600)
    assert judge.judge(Path("/f"), old).verdict == "ours"


def test_same_agent_id_with_another_state_is_not_ours() -> None:
    """A copied state file (same agent id, another path or host) is another agent."""
    me = ident("aaaa")
    copy = Identity(
        agent_id="aaaa", name="x", state="sqlite:h2:/elsewhere.db", host="h2", machine="m2", pid=5
    )
    judge = Judge(me, 60, mono=Clock(), alive=lambda pid: True)
    assert judge.judge(Path("/f"), a_mark(copy)).verdict == "live"


def test_a_dead_process_on_this_machine_leaves_a_mark_stale_at_once() -> None:
    me = ident("aaaa")
    other = ident("bbbb", pid=4242)
    dead = Judge(me, 60, mono=Clock(), alive=lambda pid: pid != 4242)
    verdict = dead.judge(Path("/f"), a_mark(other, heartbeat=999))
    assert verdict.verdict == "stale" and "4242" in verdict.why
    alive = Judge(me, 60, mono=Clock(), alive=lambda pid: True)
    assert alive.judge(Path("/f"), a_mark(other, heartbeat=999)).verdict == "live"


def test_the_pid_of_a_mark_from_another_machine_is_not_checked_here() -> None:
    """Same host name but another boot / PID namespace: its pid means nothing here."""
    me = ident("aaaa")
    other = ident("bbbb", machine="m2", pid=4242)
    judge = Judge(me, 60, mono=Clock(), alive=lambda pid: False)
    assert judge.judge(Path("/f"), a_mark(other)).verdict == "live"


@pytest.mark.parametrize("their_heartbeat", [-86400.0, 0.0, 1000.0, 1e12])
def test_another_hosts_mark_goes_stale_only_after_standing_still_on_our_clock(
    their_heartbeat: float,
) -> None:
    """Its heartbeat time is another machine's clock: whether an hour old or in the future, it
    is judged by how long its content has not changed as measured here."""
    mono = Clock(50.0)
    judge = Judge(ident("aaaa"), 60, mono=mono, alive=lambda pid: False)
    other = ident("bbbb", host="h2", machine="m2")
    mark = a_mark(other, heartbeat=their_heartbeat)
    assert judge.judge(Path("/f"), mark).verdict == "live"
    mono.t += 59.9
    assert judge.judge(Path("/f"), mark).verdict == "live"
    mono.t += 0.1
    verdict = judge.judge(Path("/f"), mark)
    assert verdict.verdict == "stale" and "60s" in verdict.why


def test_a_renewed_mark_stays_live_however_long_it_is_watched() -> None:
    mono = Clock()
    judge = Judge(ident("aaaa"), 60, mono=mono, alive=lambda pid: True)
    other = ident("bbbb", host="h2", machine="m2")
    for seq in range(20):
        mono.t += 10
        assert judge.judge(Path("/f"), a_mark(other, seq=seq, heartbeat=seq)).verdict == "live"
    mono.t += 61
    assert judge.judge(Path("/f"), a_mark(other, seq=19, heartbeat=19)).verdict == "stale"


def test_an_unreadable_mark_is_live_until_it_stands_still() -> None:
    mono = Clock()
    judge = Judge(ident("aaaa"), 60, mono=mono, alive=lambda pid: True)
    garbage = Mark.parse(b"\x00not json")
    assert not garbage.valid
    assert judge.judge(Path("/f"), garbage).verdict == "live"
    mono.t += 60
    assert judge.judge(Path("/f"), garbage).verdict == "stale"


# --------------------------------------------------------------------------- real folders


def marks_for(
    me: Identity, folder: Path, *, wall: Clock, mono: Clock, alive: bool = True
) -> FolderMarks:
    return FolderMarks(
        me,
        [(folder, "inbox")],
        stale=60,
        wall=wall,
        mono=mono,
        alive=lambda pid: alive,
        sleep=lambda s: None,
    )


def test_a_second_agent_refuses_a_served_folder_and_takes_it_once_it_is_stale(
    tmp_path: Path,
) -> None:
    wall, mono = Clock(10_000.0), Clock()
    a = marks_for(ident("aaaa"), tmp_path, wall=wall, mono=mono)
    b = marks_for(ident("bbbb", host="h2", machine="m2"), tmp_path, wall=wall, mono=mono)
    changes = a.check()
    assert [(c.path, c.kind) for c in changes] == [(tmp_path, "gained")]
    mark = json.loads((tmp_path / MARK_NAME).read_text())
    assert mark["agent_id"] == "aaaa" and mark["share"] == "inbox" and mark["format"] == 1
    assert {"name", "host", "pid", "state", "heartbeat", "machine"} <= set(mark)

    assert b.check() == []
    wall.t += 5
    assert b.check() == []
    assert b.refused()[tmp_path] == (
        f"{tmp_path} is served by agent name-aaaa on host h1 (pid 100, last seen 5s ago); "
        "share a PostgreSQL state to run several agents"
    )
    assert b.served() == []
    # A renews every 10 s: B never takes it, however long it waits.
    for _ in range(12):
        wall.t += 10
        mono.t += 10
        assert a.check() == [] and b.check() == []
    assert read_mark(tmp_path).agent_id == "aaaa"  # type: ignore[union-attr]
    # A stops renewing (paused, killed on another host): after 60 s of B's clock, B takes over.
    mono.t += 59
    assert b.check() == []
    mono.t += 1
    changes = b.check()
    assert [c.kind for c in changes] == ["gained"] and "took over" in changes[0].message
    assert read_mark(tmp_path).agent_id == "bbbb"  # type: ignore[union-attr]
    # A comes back: its renewal finds B's mark and lets the folder go.
    lost = a.check()
    assert [c.kind for c in lost] == ["lost"] and "name-bbbb" in lost[0].message
    assert a.served() == [] and read_mark(tmp_path).agent_id == "bbbb"  # type: ignore[union-attr]
    assert sorted(p.name for p in tmp_path.iterdir()) == [MARK_NAME]  # no temp left


def test_a_restart_takes_its_own_mark_at_once_and_a_clean_stop_removes_it(
    tmp_path: Path,
) -> None:
    wall, mono = Clock(), Clock()
    first = marks_for(ident("aaaa", pid=1), tmp_path, wall=wall, mono=mono)
    assert [c.kind for c in first.check()] == ["gained"]
    # Killed: the mark stays. The same agent (same id and state, a new pid) starts again.
    again = marks_for(ident("aaaa", pid=2), tmp_path, wall=wall, mono=mono)
    changes = again.check()
    assert [c.kind for c in changes] == ["gained"] and "own mark" in changes[0].message
    assert read_mark(tmp_path).pid == 2  # type: ignore[union-attr]
    # The old process's release does not remove the new one's mark.
    first.release_all()
    assert read_mark(tmp_path).pid == 2  # type: ignore[union-attr]
    again.release_all()
    assert not (tmp_path / MARK_NAME).exists()


def test_a_mark_left_by_a_dead_process_here_is_taken_over_at_once(tmp_path: Path) -> None:
    wall, mono = Clock(), Clock()
    dead = ident("dead", pid=999_999)
    (tmp_path / MARK_NAME).write_bytes(
        mark_bytes(dead, share="inbox", folder=tmp_path, token="x", seq=3, now=wall.t)
    )
    b = marks_for(ident("bbbb"), tmp_path, wall=wall, mono=mono, alive=False)
    changes = b.check()
    assert [c.kind for c in changes] == ["gained"]
    assert "process 999999 on this machine is gone" in changes[0].message


def test_renewing_changes_the_mark_and_a_vanished_mark_is_made_again(tmp_path: Path) -> None:
    wall, mono = Clock(), Clock()
    a = marks_for(ident("aaaa"), tmp_path, wall=wall, mono=mono)
    a.check()
    before = (tmp_path / MARK_NAME).read_bytes()
    wall.t += 10
    assert a.check() == []
    after = json.loads((tmp_path / MARK_NAME).read_bytes())
    assert after["seq"] == 1 and after["heartbeat"] == wall.t
    assert (tmp_path / MARK_NAME).read_bytes() != before
    (tmp_path / MARK_NAME).unlink()  # removed by hand
    assert a.check() == [] and read_mark(tmp_path).agent_id == "aaaa"  # type: ignore[union-attr]


def test_a_folder_that_cannot_be_marked_is_not_served_until_it_can(tmp_path: Path) -> None:
    wall, mono = Clock(), Clock()
    gone = tmp_path / "nas"
    a = marks_for(ident("aaaa"), gone, wall=wall, mono=mono)
    assert a.check() == [] and a.served() == []
    gone.mkdir()
    assert [c.kind for c in a.check()] == ["gained"]
    # A served folder that goes away stays ours (the watcher waits for it), and so does its
    # mark when it comes back.
    (gone / MARK_NAME).unlink()
    gone.rmdir()
    assert a.check() == [] and a.served() == [gone]
    gone.mkdir()
    assert a.check() == [] and read_mark(gone).agent_id == "aaaa"  # type: ignore[union-attr]


def test_the_read_only_view_names_the_owner(tmp_path: Path) -> None:
    wall, mono = Clock(500.0), Clock()
    assert folder_status(tmp_path, "aaaa")["owner"] == "none"
    marks_for(ident("aaaa"), tmp_path, wall=wall, mono=mono).check()
    assert folder_status(tmp_path, "aaaa", now=503.0)["owner"] == "this agent"
    other = folder_status(tmp_path, "bbbb", now=503.0)
    assert other["owner"] == "another agent"
    assert "served by agent name-aaaa on host h1 (pid 100, last seen 3s ago)" in other["detail"]


@pytest.mark.parametrize("start", ["free", "stale"])
def test_agents_racing_for_one_folder_end_with_exactly_one_owner(
    tmp_path: Path, start: str
) -> None:
    """Eight takers released at once by a barrier, 40 rounds: each round exactly one wins and
    the mark is the winner's; the losers see it as live."""
    for round_ in range(40):
        folder = tmp_path / f"r{round_}"
        folder.mkdir()
        if start == "stale":
            (folder / MARK_NAME).write_bytes(
                mark_bytes(
                    ident("dead", pid=999_999), share="s", folder=folder, token="x", seq=0, now=0.0
                )
            )
        takers = [
            FolderMarks(
                ident(f"agent{i:02d}", pid=1000 + i),
                [(folder, "s")],
                stale=60,
                alive=lambda pid: pid != 999_999,
                confirm_delay=0.05,
            )
            for i in range(8)
        ]
        barrier = threading.Barrier(len(takers))
        won: list[str] = []

        def take(m: FolderMarks, barrier: threading.Barrier, won: list[str]) -> None:
            barrier.wait()
            if any(c.kind == "gained" for c in m.check()):
                won.append(m.me.agent_id)

        threads = [threading.Thread(target=take, args=(m, barrier, won)) for m in takers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(won) == 1, (round_, won)
        assert read_mark(folder).agent_id == won[0]  # type: ignore[union-attr]
        assert sorted(p.name for p in folder.iterdir()) == [MARK_NAME]
        # And it stays that way: nobody else gains it on the next round of checks.
        for m in takers:
            assert [c for c in m.check() if c.kind == "gained"] == []
        assert read_mark(folder).agent_id == won[0]  # type: ignore[union-attr]


# --------------------------------------------------------------------------- the watcher


@pytest.mark.parametrize("name", [MARK_NAME, f"{MARK_NAME}.aaaa.tmp", f"{MARK_NAME}.aaaa.old"])
def test_the_watcher_never_takes_a_mark_for_a_ticket_or_an_input(tmp_path: Path, name: str) -> None:
    folder = FolderConfig(path=tmp_path, include=("*", "*.job", "*.json"))
    assert classify(tmp_path / name, folder) is None


# --------------------------------------------------------------------------- config


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(path, {})


def test_share_names_default_to_the_folder_name_and_stay_unique(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        "folders:\n  - /mnt/nas/Design Inbox\n  - path: /a/in\n  - path: /b/in\n"
        "  - {path: /c/other, share: Team.Out}\n",
    )
    names = share_names(cfg.folders)
    assert names[0] == "design-inbox" and names[3] == "Team.Out"
    assert names[1].startswith("in-") and names[2].startswith("in-") and names[1] != names[2]
    # The same folder mounted elsewhere gets the same default (what machines agree on).
    assert share_names([FolderConfig(path=Path("/Volumes/x/Design Inbox"))]) == ("design-inbox",)


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("folders:\n  - path: /a\n    share: 'bad name/x'\n", "folders[0].share", 3),
        ("folders:\n  - {path: /a, share: x}\n  - path: /b\n    share: X\n", "folders[1].share", 4),
        ("marks:\n  heartbeat_seconds: 10\n  stale_seconds: 20\n", "marks.stale_seconds", 3),
        ("marks:\n  stale: 20\n", "marks.stale", 2),
    ],
)
def test_bad_share_and_mark_settings_name_the_key_and_line(
    tmp_path: Path, text: str, key: str, line: int
) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert (info.value.key, info.value.line) == (key, line), info.value.message


# --------------------------------------------------------------------------- state location

MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "40 22 0:40 / /mnt/nas rw,relatime shared:2 - nfs4 nas:/export rw\n"
    "41 22 0:41 / /home/u/fuse rw,relatime shared:3 - fuse.sshfs u@h:/ rw\n"
)


@pytest.mark.parametrize(
    ("path", "fstype"),
    [("/mnt/nas/s/state.db", "nfs4"), ("/home/u/fuse/state.db", "fuse.sshfs")],
)
def test_a_state_path_on_a_network_filesystem_is_a_problem(path: str, fstype: str) -> None:
    problem = state_location_problem(Path(path), MOUNTINFO)
    assert problem is not None and path in problem and fstype in problem
    assert "local disk" in problem and "PostgreSQL" in problem


def test_a_state_path_on_a_local_disk_is_fine() -> None:
    assert state_location_problem(Path("/home/u/.local/state/s.db"), MOUNTINFO) is None
