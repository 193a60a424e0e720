"""The learned concurrent-conversion limit (agent/slots.py), on a fake clock."""

from __future__ import annotations

from agent.slots import CREATE, PROBE_SECONDS, START, ConversionSlots


class World:
    """Which tickets still hold a slot (their job runs) and a fake clock."""

    def __init__(self) -> None:
        self.running: set[int] = set()
        self.now = 0.0

    def slots(self, manual: int | None = None) -> ConversionSlots:
        return ConversionSlots(
            manual=manual, holds=self.running.__contains__, clock=lambda: self.now
        )


def start_all(w: World, s: ConversionSlots, tids: range) -> list[int]:
    went = []
    for t in tids:
        if s.ask(t, START):
            w.running.add(t)
            went.append(t)
    return went


def test_unknown_limit_lets_every_start_go():
    w = World()
    s = w.slots()
    assert start_all(w, s, range(1, 21)) == list(range(1, 21))
    assert s.limit is None and not s.waiting


def test_a_refused_start_teaches_the_limit_and_holds_later_starts_in_order():
    w = World()
    s = w.slots()
    start_all(w, s, range(1, 5))  # four run
    assert s.ask(5, START)
    assert s.refused(5, START)  # 429 with four of ours running
    assert s.limit == 4
    assert [t for t in range(6, 10) if s.ask(t, START)] == []
    assert s.line() == [5, 6, 7, 8, 9]
    assert s.released() == []
    w.running.discard(2)  # one finished
    assert s.released() == [5]  # the refused one first
    assert not s.ask(6, START)  # a later one cannot jump the line
    assert s.ask(5, START)
    w.running.add(5)
    w.running -= {1, 3}
    assert s.released() == [6, 7]
    assert not s.ask(8, START)
    assert s.ask(6, START) and s.ask(7, START)
    assert s.line() == [8, 9]


def test_a_refusal_with_nothing_running_is_not_a_concurrency_limit():
    w = World()
    s = w.slots()
    assert s.ask(1, START)
    assert not s.refused(1, START)  # the request rate, say: retried as such
    assert s.limit is None and not s.waiting


def test_creates_wait_only_once_a_create_was_refused_and_after_starts():
    w = World()
    s = w.slots()
    start_all(w, s, range(1, 3))
    assert s.ask(10, CREATE)  # creates are free while none was refused
    assert s.refused(10, CREATE)
    assert s.limit == 2 and s.creates_wait
    assert not s.ask(11, CREATE)
    assert not s.ask(3, START)
    w.running.discard(1)
    assert s.released() == [3]  # a start of an uploaded job goes before creates
    w.running.discard(2)
    assert s.released() == [3, 10]


def test_probes_one_higher_while_starts_wait_and_a_refusal_sets_it_back():
    w = World()
    s = w.slots()
    start_all(w, s, range(1, 4))
    s.ask(4, START)
    s.refused(4, START)
    assert s.limit == 3 and s.next_probe() == PROBE_SECONDS
    w.now = PROBE_SECONDS - 1
    assert s.released() == []
    w.now = PROBE_SECONDS
    assert s.released() == [4]  # the contract may have grown: try one more
    assert s.limit == 4
    assert s.ask(4, START)
    w.running.add(4)  # its start is under way (the ticket holds its slot)
    assert not s.ask(5, START)  # so 5 waits
    w.running.discard(4)
    assert s.refused(4, START)  # the contract has not grown
    assert s.limit == 3
    assert s.line() == [4, 5]  # the refused one first: it asked before


def test_a_limit_set_by_hand_is_kept_and_never_probed():
    w = World()
    s = w.slots(manual=2)
    assert start_all(w, s, range(1, 6)) == [1, 2]
    assert s.line() == [3, 4, 5]
    w.now = PROBE_SECONDS * 10
    assert s.released() == [] and s.limit == 2 and s.next_probe() is None
    w.running.discard(1)
    assert s.released() == [3]


def test_a_forgotten_ticket_leaves_the_line():
    w = World()
    s = w.slots(manual=1)
    start_all(w, s, range(1, 4))
    s.forget(2)
    w.running.clear()
    assert s.released() == [3]


def test_no_waiting_ticket_starves_under_churn():
    """Tickets keep arriving while one slot turns over: each waits its turn, in order."""
    w = World()
    s = w.slots(manual=1)
    started: list[int] = []
    nxt = 1
    for _ in range(200):
        for _ in range(2):  # two new tickets per finished one
            if s.ask(nxt, START):
                w.running.add(nxt)
                started.append(nxt)
            nxt += 1
        w.running.clear()  # the running job finishes
        for t in s.released():
            assert s.ask(t, START)
            w.running.add(t)
            started.append(t)
    assert started == sorted(started)  # first asked, first started
    assert started[:5] == [1, 2, 3, 4, 5]
