"""What only the PostgreSQL backend has: a database lost and back, a session that hangs, a second
writer refused, the password of ``state.url`` kept out of every message, its migrations.
A real server of its own per test module (it is stopped, restarted and paused here)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import psycopg
import pytest
from conftest import pg_server_or_skip
from pg_server import PgServer

from agent.models import Phase
from agent.store import WritesLost
from agent.store import postgres as pg
from agent.store.postgres import PgStore, StateBusy, redact_url


@pytest.fixture(scope="module")
def server() -> Iterator[PgServer]:
    yield from pg_server_or_skip()


@pytest.fixture
def url(server: PgServer) -> str:
    return server.create_db(f"f{os.getpid()}_{time.monotonic_ns()}")


def add(store: PgStore, path: str = "/in/a.job", sha: str = "s1") -> int:
    return store.add_ticket(
        path=path,
        root="/in",
        sha256=sha,
        kind="conversion",
        spec={},
        inputs=[("local", "a.png", "/in/a.png")],
        idem_prefix="i",
        now=1.0,
    ).id


def writer(url: str) -> PgStore:
    store = PgStore.open(url)
    store.group_commit = True
    return store


async def flush_until_it_lands(store: PgStore, deadline: float = 20.0) -> list[str]:
    """Flush until a flush succeeds; the WritesLost messages seen on the way."""
    seen = []
    end = time.monotonic() + deadline
    while True:
        try:
            await store.flush()
            return seen
        except WritesLost as exc:
            seen.append(str(exc))
            assert time.monotonic() < end, [s for s in seen if "waits for it" not in s or "(" in s][
                -3:
            ]
            await asyncio.sleep(0.1)


async def test_a_lost_database_fails_the_flush_refuses_writes_and_resumes_when_back(
    server: PgServer, url: str
) -> None:
    store = writer(url)
    tid = add(store)
    await store.flush()
    server.stop("immediate")
    try:
        # Held tickets are read from memory: no read waits for the network.
        assert store.get(tid).phase is Phase.PENDING
        assert [r.id for r in store.unfinished()] == [tid]
        assert store.counts()["pending"] == 1
        assert store.active_for_path("/in/a.job") is not None
        assert len(store.inputs(tid)) == 1 and store.outputs(tid) == []
        store.update(tid, 2.0, event="creating", phase=Phase.CREATING)
        t0 = time.monotonic()
        with pytest.raises(WritesLost, match="did not take the last writes"):
            await store.flush()
        assert time.monotonic() - t0 < pg.FLUSH_TIMEOUT  # refused at once, not a timeout
        assert store.dirty  # an act that waits for a flush learns the loss, never goes on
        with pytest.raises(WritesLost):  # nothing more is written on what may be lost
            store.update(tid, 3.0, event="uploading", phase=Phase.UPLOADING)
        with pytest.raises(WritesLost, match="cannot be reached"):
            await store.flush()
    finally:
        server.pg_ctl_start()
    seen = await flush_until_it_lands(store)
    assert seen  # the loss was reported once more after the mirror was read again
    assert not store.dirty
    assert store.get(tid).phase is Phase.PENDING  # what the database holds: the write was lost
    store.update(tid, 4.0, event="creating", phase=Phase.CREATING)  # and writes go on
    await store.flush()
    reader = PgStore.open_readonly(url)
    assert reader.get(tid).phase is Phase.CREATING
    assert [h["event"] for h in reader.history(tid)] == ["accepted", "creating"]
    reader.close()
    await store.aclose()


async def test_a_dropped_connection_loses_one_group_and_the_next_one_lands(url: str) -> None:
    store = writer(url)
    tid = add(store)
    await store.flush()
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [store._writer_pid])
    store.update(tid, 2.0, event="creating", phase=Phase.CREATING)
    other = add(store, path="/in/b.job", sha="s2")
    with pytest.raises(WritesLost):
        await store.flush()
    assert not store.dirty  # the database answered: the mirror is read again at once
    assert store.get(tid).phase is Phase.PENDING
    with pytest.raises(KeyError):
        store.get(other)
    store.update(tid, 3.0, event="creating", phase=Phase.CREATING)
    await store.flush()
    reader = PgStore.open_readonly(url)
    assert reader.get(tid).phase is Phase.CREATING
    reader.close()
    await store.aclose()


def test_a_cold_read_after_its_idle_session_died_takes_a_new_one(
    server: PgServer, url: str
) -> None:
    """A session that dies while idle (terminated, or the server restarted) is found out only
    on its next use: a cold read then takes a new session instead of failing (found by the team
    torture campaign: an agent starting just after its sessions were dropped died in
    ``output_names``; running agents logged internal errors from ``get``)."""
    store = PgStore.open(url)
    tid = add(store)
    store.commit()
    assert store.output_names("/in") == set()
    pid = store._reader().info.backend_pid
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    assert store.output_names("/in") == set()
    assert store._reader().info.backend_pid != pid
    server.restart()
    assert [h["event"] for h in store.history(tid)] == ["accepted"]
    store.close()


async def test_a_session_that_hangs_fails_the_flush_within_its_timeout(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg, "FLUSH_TIMEOUT", 1.0)
    store = writer(url)
    tid = add(store)
    await store.flush()
    pid = store._writer_pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # the server's process of our session stops answering
    try:
        store.update(tid, 2.0, event="creating", phase=Phase.CREATING)
        gaps: list[float] = []

        async def ticker() -> None:  # the event loop goes on while the flush waits
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.02)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticking = asyncio.create_task(ticker())
        t0 = time.monotonic()
        with pytest.raises(WritesLost):
            await store.flush()
        took = time.monotonic() - t0
        ticking.cancel()
        # The group's timeout, psycopg's own wait for the cancel it sends (up to 5 s), then one
        # attempt to read the mirror again (a new session, which cannot take the writer's lock
        # from the stopped one): bounded, not hung, and the loop never blocked meanwhile.
        assert took < 2 * pg.FLUSH_TIMEOUT + 5 + 2
        assert len(gaps) > took / 0.1 and max(gaps) < 0.5
        assert store.dirty
    finally:
        os.kill(pid, signal.SIGCONT)
    await flush_until_it_lands(store)
    assert store.get(tid).phase is Phase.PENDING  # the write that got no answer is gone
    store.update(tid, 3.0, event="creating", phase=Phase.CREATING)
    await store.flush()
    await store.aclose()


async def test_a_second_writer_is_refused(url: str) -> None:
    first = writer(url)
    add(first)
    await first.flush()  # the first writer's session holds the lock from here
    with pytest.raises(StateBusy, match="another agent is using the state database"):
        PgStore.open(url)
    ro = PgStore.open_readonly(url)  # readers are welcome
    assert ro.counts()["pending"] == 1
    ro.close()
    await first.aclose()
    second = PgStore.open(url)
    assert second.counts()["pending"] == 1
    second.close()


def test_the_password_of_the_url_is_never_shown(server: PgServer) -> None:
    secret = "s3cr%40t-pw"
    url = f"postgresql://agent:{secret}@127.0.0.1:{server.port}/nodb"
    assert redact_url(url) == f"postgresql://agent:***@127.0.0.1:{server.port}/nodb"
    assert redact_url("postgresql://agent@h/db") == "postgresql://agent@h/db"
    store = PgStore(url)
    assert "s3cr" not in repr(store) and "s3cr" not in store.url
    with pytest.raises(psycopg.Error) as info:  # no such role (trust auth, so no password check)
        PgStore.open(url)
    assert "s3cr" not in str(info.value)
    # A driver message that quotes the URL (some do, for a malformed one) is cleaned too.
    text = pg._safe_text(ValueError(f"bad dsn {url} (s3cr@t-pw)"), url)
    assert "s3cr" not in text and "***" in text


async def test_migrations_run_once_and_a_newer_database_is_refused(url: str) -> None:
    PgStore.open(url).close()
    PgStore.open(url).close()  # already migrated: nothing runs twice
    with psycopg.connect(url, autocommit=True) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM convert_agent_migrations")]
        assert names == [name for name, _ in pg.MIGRATIONS]
        conn.execute("INSERT INTO convert_agent_migrations (name) VALUES ('m999_future')")
    with pytest.raises(RuntimeError, match="newer convert-agent"):
        PgStore.open(url)
