"""The state store's contract (agent/store/contract.py), the same tests against every backend:
SQLite (the default) and PostgreSQL (team mode's shared state, a real server)."""

from __future__ import annotations

import contextlib
import json

import pytest
from conftest import Backend

from agent.models import Phase, RemoteOutput
from agent.store import StateStore, WritesLost


def add(store: StateStore, path: str = "/in/a.job", sha: str = "s1", now: float = 1.0) -> int:
    rec = store.add_ticket(
        path=path,
        root="/in",
        sha256=sha,
        kind="conversion",
        spec={"kind": "conversion"},
        inputs=[("local", "a.png", "/in/a.png"), ("url", "https://x/y.png", None)],
        idem_prefix="inst",
        now=now,
    )
    return rec.id


def grouped(backend: Backend) -> tuple[StateStore, list[int]]:
    store = backend.open()
    store.group_commit = True
    dirtied: list[int] = []
    store.on_dirty = lambda: dirtied.append(1)
    return store, dirtied


async def test_new_ticket_is_pending_with_inputs_and_a_history_row(backend: Backend) -> None:
    store = backend.open()
    tid = add(store)
    rec = store.get(tid)
    assert rec.phase is Phase.PENDING and rec.active and not rec.filed
    assert len(rec.idem_key) == 40
    assert [i.value for i in store.inputs(tid)] == ["a.png", "https://x/y.png"]
    assert [i.upload_uuid for i in store.inputs(tid)] == [
        f"{rec.idem_key[:24]}-0",
        f"{rec.idem_key[:24]}-1",
    ]
    assert [h["event"] for h in store.history(tid)] == ["accepted"]
    reader = backend.open_readonly()
    assert reader.get(tid) == rec
    assert reader.inputs(tid) == store.inputs(tid)


async def test_a_new_request_for_the_same_path_retires_the_old_record(backend: Backend) -> None:
    store, _ = grouped(backend)
    first = add(store, sha="s1")
    await store.flush()
    second = add(store, sha="s2")  # in the mirror/open group only, not yet flushed
    assert not store.get(first).active
    rec = store.active_for_path("/in/a.job")
    assert rec is not None and rec.id == second and rec.sha256 == "s2"
    assert [r.id for r in store.tickets()] == [second]
    assert store.get(first).idem_key != store.get(second).idem_key
    await store.flush()
    assert not store.get(first).active  # after the flush too (read back from the database)
    reader = backend.open_readonly()
    got = reader.active_for_path("/in/a.job")
    assert got is not None and got.id == second
    assert [r.id for r in reader.tickets(active_only=False)] == [first, second]
    third = add(store, sha="s3")
    await store.flush()
    assert [r.id for r in reader.tickets()] == [third]  # one active record per path


async def test_update_writes_fields_and_history_in_one_go(backend: Backend) -> None:
    store = backend.open()
    tid = add(store)
    rec = store.update(tid, 2.0, event="created", phase=Phase.UPLOADING, job_id="j1")
    assert rec.phase is Phase.UPLOADING and rec.job_id == "j1"
    rec = store.update(
        tid, 3.0, event="failed", phase=Phase.FAILED, error={"message": "boom"}, filed=False
    )
    assert rec.finished_at == 3.0 and rec.error == {"message": "boom"}
    assert [h["event"] for h in store.history(tid)] == ["accepted", "created", "failed"]
    assert store.unfinished()[0].id == tid  # failed but not filed: work left
    store.update(tid, 4.0, event="filed", filed=True)
    assert store.unfinished() == []
    reader = backend.open_readonly()
    assert reader.get(tid) == store.get(tid)
    assert reader.unfinished() == []


async def test_outputs_are_recorded_once_and_refreshed(backend: Backend) -> None:
    store, _ = grouped(backend)
    tid = add(store)
    o = RemoteOutput.from_dict({"id": "o1", "uri": "u1", "filename": "a.jpg", "checksum": "ab"})
    store.record_outputs(tid, [o])
    store.record_outputs(
        tid,
        [
            RemoteOutput.from_dict({"id": "o1", "uri": "u2", "status": "expired"}),
            RemoteOutput.from_dict({"id": "o2", "uri": "u3", "filename": "b.jpg", "size": 7}),
        ],
    )
    first, second = store.outputs(tid)
    assert (first.uri, first.remote_status, first.checksum) == ("u2", "expired", "ab")
    assert (second.remote_id, second.size, second.state) == ("o2", 7, "pending")
    store.update_output(first.id, state="done", dest_name="a.jpg", gets=1, validator='"e1"')
    out = store.outputs(tid)[0]
    assert (out.state, out.dest_name, out.gets, out.validator) == ("done", "a.jpg", 1, '"e1"')
    assert store.output_names("/in") == {"/in/a.jpg"}
    await store.flush()
    reader = backend.open_readonly()
    assert reader.outputs(tid) == store.outputs(tid)
    assert reader.output_names("/in") == {"/in/a.jpg"}


async def test_readonly_view_sees_committed_state_and_counts(backend: Backend) -> None:
    store = backend.open()
    a = add(store)
    b = add(store, path="/in/b.job", sha="s2")
    c = add(store, path="/in/c.job", sha="s3")
    store.update(a, 2.0, event="x", phase=Phase.PROCESSING, wait_until=9.0)
    store.update(b, 2.0, event="x", phase=Phase.DONE, wait_until=9.0)
    ro = backend.open_readonly()
    assert ro.readonly
    for s in (store, ro):
        counts = s.counts()
        assert (counts["pending"], counts["processing"], counts["done"]) == (1, 1, 1)
        assert counts["waiting"] == 1  # a finished ticket does not wait
        assert [r.id for r in s.tickets(phases=[Phase.DONE, Phase.PENDING])] == [b, c]
        assert [r.path for r in s.find("b")] == ["/in/b.job"]
        assert [r.path for r in s.find("c.job")] == ["/in/c.job"]
    assert ro.integrity_ok()
    with pytest.raises(Exception):  # noqa: B017 - each backend refuses in its own words
        ro.update(a, 3.0, event="y", phase=Phase.FAILED)


async def test_records_read_back_follow_every_write(backend: Backend) -> None:
    """Read-your-writes: what a store hands out after each write equals what a fresh reader
    of the database finds once it is written."""
    store, _ = grouped(backend)
    tid = add(store)
    store.update(tid, 2.0, event="created", phase=Phase.UPLOADING, job_id="j1", error={"m": 1})
    store.touch(tid, 3.0, remote_status="processing", error=None)
    rec = store.get(tid)
    assert rec.phase is Phase.UPLOADING and rec.error is None and rec.updated_at == 3.0
    assert rec.remote_status == "processing"
    await store.flush()
    fresh = backend.open_readonly()
    assert rec == fresh.get(tid)
    store.update(tid, 4.0, event="started", start_sent=True)
    assert store.get(tid).start_sent is True
    store.mark_input_sent(store.inputs(tid)[0].id, "r1")
    assert store.inputs(tid)[0].sent and store.inputs(tid)[0].remote_id == "r1"
    second = add(store, sha="s2")  # retires the first record
    assert store.get(tid).active is False and store.get(second).active is True
    store.record_outputs(second, [RemoteOutput.from_dict({"id": "o1", "uri": "u"})])
    store.mark_input_sent(store.inputs(second)[1].id, "r2")
    store.reset_for_resubmit(second, 5.0, message="again")
    assert store.outputs(second) == [] and not any(i.sent for i in store.inputs(second))
    assert store.get(second).idem_key != store.get(tid).idem_key
    assert [h["event"] for h in store.history(second)] == ["accepted", "resubmitted"]
    await store.flush()
    for t in (tid, second):
        assert store.get(t) == fresh.get(t)
        assert store.inputs(t) == fresh.inputs(t)
        assert store.outputs(t) == fresh.outputs(t)
        assert store.history(t) == fresh.history(t)
    store.update(second, 6.0, event="filed", phase=Phase.DONE, filed=True)
    await store.flush()
    assert store.get(second).filed and store.get(second) == fresh.get(second)


async def test_group_commit_keeps_writes_from_other_readers_until_flushed(
    backend: Backend,
) -> None:
    store, dirtied = grouped(backend)
    assert not store.dirty
    tid = add(store)
    store.update(tid, 2.0, event="created", phase=Phase.UPLOADING, job_id="j1")
    store.mark_input_sent(store.inputs(tid)[0].id, "r1")
    assert store.dirty and dirtied
    reader = backend.open_readonly()
    assert reader.tickets() == []  # nothing written yet: a killed process did nothing of it
    await store.flush()
    assert not store.dirty
    assert reader.get(tid).phase is Phase.UPLOADING
    assert reader.inputs(tid)[0].sent
    assert [h["event"] for h in reader.history(tid)] == ["accepted", "created"]
    store.update(tid, 3.0, event="x", phase=Phase.STARTING)
    store.close()  # writes what is left
    assert reader.get(tid).phase is Phase.STARTING


async def test_a_failed_grouped_write_loses_its_group_and_the_flush_says_so(
    backend: Backend,
) -> None:
    store, _ = grouped(backend)
    tid = add(store)
    add(store, path="/in/b.job", sha="s0")
    await store.flush()
    other = add(store, path="/in/c.job", sha="s2")  # another ticket's write in the same group
    store.update(tid, 1.5, event="creating", phase=Phase.CREATING)
    # Two active records for one path: SQLite refuses at the write, PostgreSQL at the flush.
    with contextlib.suppress(Exception):
        store.update(tid, 2.0, event="renamed", path="/in/b.job")
    assert store.dirty  # not reported yet: an act waiting for this group must not go on
    with pytest.raises(WritesLost):
        await store.flush()
    with contextlib.suppress(WritesLost):  # a backend may report the loss once more
        await store.flush()
    assert not store.dirty
    assert store.get(tid).phase is Phase.PENDING  # nothing of the group is left
    assert store.get(tid).path == "/in/a.job"
    assert [h["event"] for h in store.history(tid)] == ["accepted"]
    with pytest.raises(KeyError):
        store.get(other)
    assert store.active_for_path("/in/c.job") is None
    store.update(tid, 3.0, event="creating", phase=Phase.CREATING)  # later writes go on
    await store.flush()
    assert store.get(tid).phase is Phase.CREATING
    assert [h["event"] for h in store.history(tid)] == ["accepted", "creating"]
    reader = backend.open_readonly()
    assert reader.get(tid).phase is Phase.CREATING


async def test_meta_is_kept_and_removed(backend: Backend) -> None:
    store, _ = grouped(backend)
    assert store.get_meta("paused") is None and store.get_meta("x", "d") == "d"
    store.set_meta("paused", "1")
    store.set_meta("instance", "abc")
    assert store.get_meta("paused") == "1"
    await store.flush()
    store.set_meta("paused", None)
    assert store.get_meta("paused") is None
    await store.flush()
    store.close()
    again = backend.open()
    assert again.get_meta("paused") is None and again.get_meta("instance") == "abc"
    assert backend.open_readonly().get_meta("instance") == "abc"


async def test_a_reopened_store_finds_what_was_written(backend: Backend) -> None:
    store, _ = grouped(backend)
    ids = [add(store, path=f"/in/{i}.job", sha=f"s{i}") for i in range(5)]
    store.update(ids[1], 2.0, event="created", phase=Phase.UPLOADING, job_id="j1")
    store.record_outputs(ids[1], [RemoteOutput.from_dict({"id": "o1", "uri": "u"})])
    await store.flush()
    before = {t: (store.get(t), store.inputs(t), store.outputs(t)) for t in ids}
    store.close()
    again = backend.open()
    assert {t: (again.get(t), again.inputs(t), again.outputs(t)) for t in ids} == before
    new = add(again, path="/in/new.job")
    assert new not in ids
    assert [r.id for r in again.unfinished()] == [*ids, new]
    assert again.same_content_elsewhere("/in", "s2", "/in/x.job") == [before[ids[2]][0]]
    assert again.same_content_elsewhere("/in", "s2", "/in/2.job") == []


async def test_many_tickets_take_ids_that_never_repeat(backend: Backend) -> None:
    """More new rows than one id block of the PostgreSQL backend (1000), flushed now and then."""
    store, _ = grouped(backend)
    ids = []
    for i in range(1300):
        ids.append(add(store, path=f"/in/{i}.job", sha=f"s{i}"))
        if i % 200 == 0:
            await store.flush()
    await store.flush()
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
    reader = backend.open_readonly()
    assert reader.counts()["pending"] == 1300
    inputs = [i.id for t in ids[-5:] for i in reader.inputs(t)]
    assert len(set(inputs)) == len(inputs) == 10


def test_public_view_has_no_secrets(backend: Backend) -> None:
    store = backend.open()
    tid = add(store)
    rec = store.update(tid, 2.0, event="created", job_id="j1", job_token="sekrittoken")
    assert "sekrittoken" not in json.dumps(rec.public())
    assert "sekrittoken" not in repr(rec)
