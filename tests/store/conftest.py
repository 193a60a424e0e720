"""The contract suite of the state store: every test runs against each backend (``store_factory``
is parametrised over ``sqlite`` and ``postgres``). The PostgreSQL side uses a real server started
once for the session in a temporary directory (pg_server.py); without one installed the
PostgreSQL cases skip, except under ``CI=true``, where they fail."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pg_server import PgServer, missing_reason

from agent.store import StateStore, Store

_dbs = itertools.count(1)


def pg_server_or_skip() -> Iterator[PgServer]:
    """A server for a fixture's scope; skips without one, fails without one under CI."""
    reason = missing_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL tests cannot run under CI: {reason}")
        pytest.skip(reason)
    srv = PgServer.start()
    try:
        yield srv
    finally:
        srv.remove()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    yield from pg_server_or_skip()


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on the session's server."""
    srv: PgServer = request.getfixturevalue("pg_server")
    return srv.create_db(f"t{os.getpid()}_{next(_dbs)}")


class Backend:
    """Opens stores of one backend on one fresh database (a file or a PostgreSQL database)."""

    def __init__(self, name: str, where: str) -> None:
        self.name = name
        self.where = where
        self.opened: list[StateStore] = []

    def open(self) -> StateStore:
        store: StateStore
        if self.name == "sqlite":
            store = Store.open(self.where)
        else:
            from agent.store.postgres import PgStore

            store = PgStore.open(self.where)
        self.opened.append(store)
        return store

    def open_readonly(self) -> StateStore:
        store: StateStore
        if self.name == "sqlite":
            store = Store.open_readonly(self.where)
        else:
            from agent.store.postgres import PgStore

            store = PgStore.open_readonly(self.where)
        self.opened.append(store)
        return store


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        b = Backend("sqlite", str(tmp_path / "state.db"))
    else:
        b = Backend("postgres", request.getfixturevalue("pg_url"))
    yield b
    for store in reversed(b.opened):
        with contextlib.suppress(Exception):  # a test that lost its writes on purpose
            store.close()


StoreFactory = Callable[[], StateStore]
