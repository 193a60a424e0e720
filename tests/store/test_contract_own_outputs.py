"""``is_own_output`` and ``unfinished``/``counts`` as the contract states them, against every
backend: the agent's own outputs are known by asking the store for one path (issue 13: no load
of every output ever placed at start-up), with the same answers as ``output_names``."""

from __future__ import annotations

import itertools

from conftest import Backend

from agent.models import Phase, RemoteOutput
from agent.store import StateStore

DAY = 86400.0
ROOTS = ("/in",)


def placed(store: StateStore, job: str, dest: str | None, *, root: str = "/in") -> int:
    """A ticket at ``job`` (under ``root``) whose one output was placed as ``dest`` beside it
    (None: not placed yet)."""
    tid = store.add_ticket(
        path=job,
        root=root,
        sha256=job,
        kind="conversion",
        spec={},
        inputs=[],
        idem_prefix="i",
        now=1.0,
    ).id
    store.record_outputs(tid, [RemoteOutput.from_dict({"id": "o1", "uri": "u"})])
    if dest is not None:
        store.update_output(store.outputs(tid)[0].id, state="done", dest_name=dest)
    return tid


def own(store: StateStore, roots: tuple[str, ...] = ROOTS) -> set[str]:
    """Which of the paths these tests use the store calls its own."""
    paths = {
        f"{d}/{n}"
        for d, n in itertools.product(
            ("/in", "/in/sub", "/other"), ("a.jpg", "b.jpg", "c.jpg", "old.jpg", "a (1).jpg")
        )
    }
    return {p for p in paths if store.is_own_output(p, roots)}


async def test_own_outputs_are_answered_per_path_as_output_names_holds_them(
    backend: Backend,
) -> None:
    store = backend.open()
    store.group_commit = True
    placed(store, "/in/a.job", "a.jpg")
    placed(store, "/in/sub/b.job", "b.jpg")
    placed(store, "/in/c.job", None)  # its output is not placed yet: not (yet) our file
    placed(store, "/other/x.job", "c.jpg", root="/other")
    # read-your-writes: a placement recorded but not committed is already known
    assert own(store) == {"/in/a.jpg", "/in/sub/b.jpg"}
    assert own(store, ("/in", "/other")) == {"/in/a.jpg", "/in/sub/b.jpg", "/other/c.jpg"}
    assert own(store, ("/nowhere",)) == set() and own(store, ()) == set()
    await store.flush()
    assert own(store) == store.output_names("/in") == {"/in/a.jpg", "/in/sub/b.jpg"}
    reader = backend.open_readonly()
    assert own(reader) == {"/in/a.jpg", "/in/sub/b.jpg"}
    # a new request for the same ticket path retires the record; its output is still ours
    placed(store, "/in/a.job", "a (1).jpg")
    await store.flush()
    assert own(store) == {"/in/a.jpg", "/in/a (1).jpg", "/in/sub/b.jpg"}
    assert own(store) == store.output_names("/in")
    store.close()
    reopened = backend.open()  # a restart: nothing is loaded, the store is asked
    assert (
        own(reopened)
        == reopened.output_names("/in")
        == {
            "/in/a.jpg",
            "/in/a (1).jpg",
            "/in/sub/b.jpg",
        }
    )


async def test_pruned_tickets_outputs_stay_own_while_their_tombstones_are_kept(
    backend: Backend,
) -> None:
    store = backend.open()
    store.group_commit = True
    old = placed(store, "/in/old.job", "old.jpg")
    store.update(old, 1.0, event="done", phase=Phase.DONE)
    store.update(old, 1.0, event="filed", filed=True)
    for name in ("a", "b"):  # newer finished records: the tombstone limit pushes old's out
        tid = placed(store, f"/in/{name}.job", f"{name}.jpg")
        store.update(tid, 2.0, event="done", phase=Phase.DONE)
        store.update(tid, 2.0, event="filed", filed=True)
    await store.flush()
    assert own(store) == {"/in/old.jpg", "/in/a.jpg", "/in/b.jpg"}  # asked before: cached
    res = store.prune(40 * DAY, keep_days=30, keep_finished=0)
    assert old in res.tickets
    assert "/in/old.jpg" in own(store)  # its record went; its tombstone names it
    assert own(store) == store.output_names("/in")
    assert own(backend.open_readonly()) == store.output_names("/in")
    store.prune(40 * DAY, keep_days=0, keep_finished=1)  # tombstones beyond 1 go, oldest first
    assert "/in/old.jpg" not in own(store)
    assert own(store) == store.output_names("/in")


async def test_unfinished_and_counts_follow_every_transition(backend: Backend) -> None:
    store = backend.open()
    store.group_commit = True
    a = placed(store, "/in/a.job", None)
    b = placed(store, "/in/b.job", None)
    c = placed(store, "/in/c.job", None)
    store.update(a, 2.0, event="done", phase=Phase.DONE)  # ended, not filed: work left
    store.update(b, 2.0, event="wait", phase=Phase.PROCESSING, wait_until=9.0)
    store.update(c, 2.0, event="done", phase=Phase.DONE)
    store.update(c, 2.0, event="filed", filed=True)
    assert [r.id for r in store.unfinished()] == [a, b]
    want = {str(p): 0 for p in Phase} | {"done": 2, "processing": 1, "waiting": 1}
    assert store.counts() == want
    await store.flush()
    reader = backend.open_readonly()
    assert [r.id for r in reader.unfinished()] == [a, b]
    assert reader.counts() == want
    store.update(a, 3.0, event="filed", filed=True)
    store.update(b, 3.0, event="failed", phase=Phase.FAILED)  # waiting no more
    d = placed(store, "/in/c.job", None)  # c superseded: counted no more
    await store.flush()
    want = {str(p): 0 for p in Phase} | {"done": 1, "failed": 1, "pending": 1, "waiting": 0}
    for s in (store, reader, backend.open_readonly()):
        assert [r.id for r in s.unfinished()] == [b, d]
        assert s.counts() == want
