"""The state database: migrations, transitions with history, the single-instance lock."""

import json
import os
import stat
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.models import Phase, RemoteOutput
from agent.store import StateLock, Store, WritesLost


def add(store: Store, path: str = "/in/a.job", sha: str = "s1") -> int:
    rec = store.add_ticket(
        path=path,
        root="/in",
        sha256=sha,
        kind="conversion",
        spec={"kind": "conversion"},
        inputs=[("local", "a.png", "/in/a.png"), ("url", "https://x/y.png", None)],
        idem_prefix="inst",
        now=1.0,
    )
    return rec.id


def test_new_ticket_is_pending_with_inputs_and_a_history_row() -> None:
    store = Store.open(":memory:")
    tid = add(store)
    rec = store.get(tid)
    assert rec.phase is Phase.PENDING and rec.active and not rec.filed
    assert len(rec.idem_key) == 40
    assert [i.value for i in store.inputs(tid)] == ["a.png", "https://x/y.png"]
    assert [h["event"] for h in store.history(tid)] == ["accepted"]


def test_a_new_request_for_the_same_path_retires_the_old_record() -> None:
    store = Store.open(":memory:")
    first = add(store, sha="s1")
    second = add(store, sha="s2")
    assert not store.get(first).active
    assert store.active_for_path("/in/a.job").id == second
    assert store.get(first).idem_key != store.get(second).idem_key


def test_update_writes_fields_and_history_in_one_go() -> None:
    store = Store.open(":memory:")
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


def test_outputs_are_recorded_once_and_refreshed() -> None:
    store = Store.open(":memory:")
    tid = add(store)
    o = RemoteOutput.from_dict({"id": "o1", "uri": "u1", "filename": "a.jpg", "checksum": "ab"})
    store.record_outputs(tid, [o])
    store.record_outputs(
        tid, [RemoteOutput.from_dict({"id": "o1", "uri": "u2", "status": "expired"})]
    )
    (out,) = store.outputs(tid)
    assert (out.uri, out.remote_status, out.checksum) == ("u2", "expired", "ab")


def test_file_is_private_and_readonly_view_sees_committed_state(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.db"
    store = Store.open(path)
    tid = add(store)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    ro = Store.open_readonly(path)
    assert ro.get(tid).path == "/in/a.job"
    assert ro.counts()["pending"] == 1
    assert ro.integrity_ok()
    ro.close()
    store.close()


def test_second_lock_holder_gets_a_clear_message(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    first = StateLock(db)
    first.acquire()
    with pytest.raises(ConfigError, match=f"pid {os.getpid()}.*already running"):
        StateLock(db).acquire()
    first.release()
    again = StateLock(db)
    again.acquire()
    again.release()


def test_public_view_has_no_secrets() -> None:
    store = Store.open(":memory:")
    tid = add(store)
    rec = store.update(tid, 2.0, event="created", job_id="j1", job_token="sekrittoken")
    assert "sekrittoken" not in json.dumps(rec.public())
    assert "sekrittoken" not in repr(rec)


def test_cached_records_follow_every_write() -> None:
    store = Store.open(":memory:")
    tid = add(store)
    assert store.get(tid) is store.get(tid)  # a live record is read once
    store.update(tid, 2.0, event="created", phase=Phase.UPLOADING, job_id="j1", error={"m": 1})
    store.touch(tid, 3.0, remote_status="processing", error=None)
    rec = store.get(tid)
    fresh = Store(store.db, readonly=True)  # no cache: straight from the database
    assert rec == fresh.get(tid)
    assert rec.phase is Phase.UPLOADING and rec.error is None and rec.updated_at == 3.0
    store.update(tid, 4.0, event="started", start_sent=True)
    assert store.get(tid).start_sent is True and store.get(tid) == fresh.get(tid)
    second = add(store, sha="s2")  # retires the cached first record
    assert store.get(tid).active is False and store.get(second).active is True
    store.reset_for_resubmit(second, 5.0, message="again")
    assert store.get(second) == fresh.get(second)
    store.update(second, 6.0, event="filed", phase=Phase.DONE, filed=True)
    assert store.get(second).filed and store.get(second) == fresh.get(second)


def test_group_commit_keeps_writes_from_other_readers_until_commit(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = Store.open(path)
    store.group_commit = True
    dirtied: list[int] = []
    store.on_dirty = lambda: dirtied.append(1)
    tid = add(store)
    store.update(tid, 2.0, event="created", phase=Phase.UPLOADING, job_id="j1")
    store.mark_input_sent(store.inputs(tid)[0].id, "r1")
    assert store.dirty and dirtied
    reader = Store.open_readonly(path)
    assert reader.tickets() == []  # nothing committed yet: a killed process did nothing of it
    store.commit()
    assert not store.dirty
    assert reader.get(tid).phase is Phase.UPLOADING
    assert reader.inputs(tid)[0].sent
    assert [h["event"] for h in reader.history(tid)] == ["accepted", "created"]
    store.update(tid, 3.0, event="x", phase=Phase.STARTING)
    store.close()  # commits what is left
    assert reader.get(tid).phase is Phase.STARTING
    reader.close()


def test_a_failed_grouped_write_undoes_its_group_and_the_next_commit_says_so() -> None:
    store = Store.open(":memory:")
    store.group_commit = True
    tid = add(store)
    store.commit()
    other = add(store, path="/in/b.job", sha="s2")  # another ticket's write in the same group
    store.update(tid, 1.5, event="creating", phase=Phase.CREATING)
    with pytest.raises(Exception, match="no such column"):
        store.update(tid, 2.0, event="created", phase=Phase.UPLOADING, nonsense=1)
    assert store.dirty  # not reported yet: an act waiting for this group must not go on
    with pytest.raises(WritesLost, match="no such column"):
        store.commit()
    assert not store.dirty
    assert store.get(tid).phase is Phase.PENDING  # nothing of the group is left
    assert [h["event"] for h in store.history(tid)] == ["accepted"]
    with pytest.raises(KeyError):
        store.get(other)
    store.update(tid, 3.0, event="creating", phase=Phase.CREATING)  # later writes go on
    store.commit()
    assert store.get(tid).phase is Phase.CREATING
    assert [h["event"] for h in store.history(tid)] == ["accepted", "creating"]


def test_a_state_file_from_before_the_validator_column_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    from sqlite_utils import Database
    from sqlite_utils.migrations import Migrations

    from agent.store import m001_initial

    db_path = tmp_path / "old.db"
    first = Migrations("convert-agent")  # the schema as the first release wrote it
    first()(m001_initial)
    old = Database(sqlite3.connect(db_path))
    first.apply(old)
    old.close()
    store = Store.open(db_path)
    cols = {r[1] for r in store.db.conn.execute("PRAGMA table_info(outputs)")}
    assert "validator" in cols
    tid = add(store)
    store.record_outputs(tid, [RemoteOutput.from_dict({"id": "o1", "uri": "u", "filename": "a"})])
    (out,) = store.outputs(tid)
    store.update_output(out.id, validator='"etag-1"')
    assert store.outputs(tid)[0].validator == '"etag-1"'
    store.close()
