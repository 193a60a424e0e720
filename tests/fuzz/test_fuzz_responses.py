"""Fuzzing what the server says: job documents with missing, extra and wrong-typed fields, the
loose JSON of api-contract.md §8.4 (numbers as strings, objects for arrays, ``[]`` for objects,
non-object items), unknown status codes, hostile output names, odd HTTP statuses and bodies.

* ``RemoteJob.from_dict`` never raises and always yields well-typed fields.
* The real ``Scheduler`` (real store, real ``ApiClient``, real downloader) driven against a tiny
  aiohttp server that answers with fuzzed documents never crashes: every ticket ends done, failed
  with a reason, or waiting/polling; and nothing is ever written outside the ticket's folder.

Example budget: ``FUZZ_EXAMPLES`` (see fuzz_support.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from fuzz_support import EXAMPLES, FUZZ, any_json, hostile_name, nasty_text
from hypothesis import given
from hypothesis import strategies as st

from agent import lifecycle, paths
from agent.api import ApiClient
from agent.config import Config, DownloadConfig, FolderConfig, LogConfig, StateConfig
from agent.errors import ApiRejected
from agent.models import Encoding, Phase, RemoteJob
from agent.scheduler import Scheduler
from agent.store import Store

COUNTS: Counter[str] = Counter()
KEY = "fuzz-key-000000000000000000000000"
ROUNDS = 6  # steps driven per ticket: enough to reach a download and to file the ticket


# --------------------------------------------------------------------------- strategies

STATUS_CODES = (
    "completed",
    "failed",
    "canceled",
    "cancelled",
    "processing",
    "queued",
    "incomplete",
    "ready",
    "downloading",
    "something_new",
    "",
    "COMPLETED",
    " completed ",
)
OUTPUT_STATUSES = ("enabled", "expired", "overuse", "disabled", "", "weird", "ENABLED")


def payload(n: int) -> bytes:
    return f"output {n} ".encode() * (n % 7 + 1)


@st.composite
def loose(draw: st.DrawFn, strategy: st.SearchStrategy[Any]) -> Any:
    """A good value most of the time; else the same value as a string, in a list, or anything."""
    good = draw(strategy)
    choice = draw(st.integers(0, 9))
    if choice < 5:
        return good
    if choice == 5 and isinstance(good, int | float) and not isinstance(good, bool):
        return str(good)
    if choice == 6:
        return [good]
    return draw(any_json)


def mostly(good: Any, *others: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` seven times in ten, else one of ``others``."""
    return st.integers(0, 9).flatmap(
        lambda i: st.just(good) if i < 7 else st.one_of(*others) if others else any_json
    )


@st.composite
def outputs(draw: st.DrawFn, base: str) -> Any:
    n = draw(st.integers(0, 5))
    data = payload(n)
    md5 = hashlib.md5(data).hexdigest()
    item: dict[str, Any] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {
        "id": mostly(f"out-{n}", loose(st.sampled_from(["", "../../x", "o" * 300])), any_json),
        "uri": mostly(
            f"{base}/files/{n}",
            st.sampled_from(
                [
                    f"{base}/files/{n}?x=1#frag",
                    f"{base}/redirect/{n}",
                    f"{base}/missing/{n}",
                    "ftp://x/y",
                    "file:///etc/passwd",
                ]
            ),
            nasty_text,
            any_json,
        ),
        "filename": st.one_of(hostile_name, any_json),
        "size": mostly(
            len(data), loose(st.sampled_from([len(data), len(data) + 1, 0, -1, 2**64, 10**30]))
        ),
        "status": mostly("enabled", st.sampled_from(OUTPUT_STATUSES), any_json),
        "checksum": mostly(
            md5,
            st.sampled_from(
                [md5.upper(), " " + md5, "0" * 32, hashlib.sha1(data).hexdigest(), "", "zz"]
            ),
            any_json,
        ),
        "content_type": any_json,
        "downloads_counter": loose(st.integers(-5, 2**70)),
        "created_at": any_json,
    }
    for k, strat in optional.items():
        if draw(st.integers(0, 9)) < 9:
            item[k] = draw(strat)
    if draw(st.integers(0, 9)) == 0:
        item[draw(nasty_text)] = draw(any_json)
    return item


@st.composite
def job_docs(draw: st.DrawFn, base: str) -> Any:
    if draw(st.integers(0, 19)) == 0:
        return draw(any_json)  # not an object at all
    doc: dict[str, Any] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {
        "id": mostly("J1", st.just(""), any_json),
        "token": mostly("tok-J1", any_json),
        "server": mostly(f"{base}/srv/", st.just(base), nasty_text, any_json),
        "status": mostly(
            {"code": "completed", "info": "The file has been converted."},
            st.fixed_dictionaries(
                {},
                optional={
                    "code": mostly("completed", st.sampled_from(STATUS_CODES), any_json),
                    "info": any_json,
                },
            ),
            st.sampled_from(STATUS_CODES),
            any_json,
        ),
        "errors": st.one_of(
            st.lists(
                st.one_of(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "message": any_json,
                            "code": loose(st.integers()),
                            "source": any_json,
                            "idSource": any_json,
                        },
                    ),
                    any_json,
                ),
                max_size=3,
            ),
            any_json,
        ),
        "warnings": any_json,
        "input": st.one_of(st.lists(st.dictionaries(nasty_text, any_json), max_size=2), any_json),
        "output": st.integers(0, 9).flatmap(
            lambda i: (
                st.lists(outputs(base), min_size=1, max_size=3)
                if i < 6
                else st.one_of(
                    st.lists(st.one_of(outputs(base), any_json), max_size=3),
                    st.dictionaries(nasty_text, outputs(base), max_size=3),  # object for an array
                    st.just([]),
                    any_json,
                )
            )
        ),
    }
    for k, strat in optional.items():
        if draw(st.integers(0, 9)) < 9:
            doc[k] = draw(strat)
    for _ in range(draw(st.integers(0, 2))):
        doc[draw(nasty_text)] = draw(any_json)  # extra fields are kept, never fatal
    return doc


HTTP_STATUSES = (200,) * 40 + (
    201,
    202,
    204,
    206,
    301,
    302,
    304,
    400,
    401,
    402,
    403,
    404,
    409,
    410,
    418,
    422,
    429,
    500,
    502,
    503,
    504,
    599,
)


@st.composite
def responses(draw: st.DrawFn, base: str) -> Response:
    status = draw(st.sampled_from(HTTP_STATUSES))
    kind = draw(st.integers(0, 19))
    if kind < 15:
        body = json.dumps(draw(job_docs(base))).encode()
    elif kind == 15:
        body = b"<html><body>maintenance</body></html>"
    elif kind == 16:
        body = json.dumps({"message": draw(nasty_text)}).encode()
    elif kind == 17:
        body = b""
    else:
        body = draw(st.binary(max_size=64))
    headers = {}
    if draw(st.integers(0, 4)) == 0:
        headers["Retry-After"] = draw(
            st.sampled_from(
                ["0", "1", "-5", "soon", "1e309", "nan", "Wed, 21 Oct 2099 07:28:00 GMT"]
            )
        )
    return Response(status, body, headers)


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- the fake server


class FakeServer:
    """Answers every API call with the next fuzzed response (the last one repeats)."""

    def __init__(self) -> None:
        self.queue: list[Response] = []
        self.served = 0
        self.base = ""

    def next(self) -> Response:
        self.served += 1
        return self.queue.pop(0) if len(self.queue) > 1 else self.queue[0]

    async def api(self, request: web.Request) -> web.Response:
        await request.read()
        r = self.next()
        return web.Response(status=r.status, body=r.body, headers=r.headers)

    async def upload(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"id": "in-1", "status": "ready"})

    async def files(self, request: web.Request) -> web.Response:
        return web.Response(body=payload(int(request.match_info["n"])))

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(f"/files/{request.match_info['n']}")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/srv/upload-file/{id}", self.upload)
        app.router.add_get("/files/{n:\\d+}", self.files)
        app.router.add_get("/redirect/{n:\\d+}", self.redirect)
        app.router.add_route("*", "/{tail:.*}", self.api)
        return app


@dataclass
class Harness:
    loop: asyncio.AbstractEventLoop
    server: FakeServer
    base: Path


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    loop = asyncio.new_event_loop()
    server = FakeServer()
    runner = web.AppRunner(server.app(), access_log=None, handle_signals=False)
    loop.run_until_complete(runner.setup())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    loop.run_until_complete(site.start())
    server.base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    base = tmp_path_factory.mktemp("fuzz-responses")
    try:
        yield Harness(loop, server, base)
    finally:
        loop.run_until_complete(runner.cleanup())
        loop.close()
        COUNTS.clear()


# --------------------------------------------------------------------------- properties

BASE_PLACEHOLDER = "http://127.0.0.1:9"  # replaced by the live server's origin per example


@FUZZ
@given(doc=st.one_of(job_docs(BASE_PLACEHOLDER), any_json))
def test_remote_job_from_dict_never_raises(doc: Any) -> None:
    job = RemoteJob.from_dict(doc)
    assert isinstance(job.id, str) and isinstance(job.status_code, str)
    assert isinstance(job.server, str) and not job.server.endswith("/")
    lifecycle.job_outcome(job)
    lifecycle.job_failure_message(job)
    lifecycle.started(job)
    for i, out in enumerate(job.outputs):
        assert isinstance(out.id, str) and isinstance(out.uri, str)
        assert isinstance(out.filename, str) and isinstance(out.checksum, str)
        assert out.size is None or isinstance(out.size, int)
        assert out.downloads_counter is None or isinstance(out.downloads_counter, int)
        lifecycle.output_problem(out.status)
        name = paths.render_output_name(
            None,
            server_name=out.filename,
            ticket_stem="t",
            target="pdf",
            index=i + 1,
            count=len(job.outputs),
            fallback="t.pdf",
        )
        assert name and "/" not in name and "\\" not in name and name not in (".", "..")
        assert paths.safe_name(name, fallback="x") == name
    for inp in job.inputs:
        assert inp.size is None or isinstance(inp.size, int)
    COUNTS["documents"] += 1


async def _drive(h: Harness, folder: Path, conversion: bool) -> str:
    folder.mkdir()
    (folder / "photo.png").write_bytes(b"\x89PNG fake")
    ticket = folder / "a.job"
    ticket.write_text(
        "input: photo.png\ntarget: pdf\n" if conversion else "job: J1\ntoken: tok-J1\n"
    )
    now = [time.time()]
    fcfg = FolderConfig(path=folder)
    cfg = Config(
        folders=(fcfg,),
        download=DownloadConfig(max_attempts=2),
        state=StateConfig(path=folder / "unused.db"),
        log=LogConfig(file=None),
    )
    store = Store.open(":memory:")

    async def no_sleep(_: float) -> None:
        return None

    api = ApiClient(h.server.base + "/v2", KEY, sleep=no_sleep, max_retries=1, timeout=10)
    sched = Scheduler(cfg, store, api, clock=lambda: now[0], rand=lambda: 0.5)
    try:
        await sched._ingest(ticket, fcfg)
        recs = store.tickets()
        assert len(recs) == 1, "the ticket was not taken"
        tid = recs[0].id
        for _ in range(ROUNDS):
            rec = store.get(tid)
            if rec.phase.terminal and rec.filed:
                break
            now[0] = max(now[0], rec.wait_until or 0.0) + 3600.0
            await asyncio.wait_for(sched._step_until_wait(tid), 30)
        rec = store.get(tid)
        if rec.phase.terminal:
            assert rec.filed, "a finished ticket was not filed"
            if rec.phase is Phase.FAILED:
                assert rec.error and rec.error.get("message"), "failed without a reason"
                assert (folder / "a.job.failed").exists()
                for out in store.outputs(tid):
                    assert out.state != "done" or out.dest_name
            else:
                assert rec.phase is Phase.DONE
                assert (folder / "a.job.done").exists()
                for out in store.outputs(tid):
                    assert out.state in ("done", "skipped")
                    if out.dest_name:
                        placed = folder / out.dest_name
                        assert placed.is_file() and not placed.is_symlink()
                        assert paths.safe_name(out.dest_name, fallback="x") == out.dest_name
            outcome = str(rec.phase)
            if rec.error:
                COUNTS[f"{outcome}: {rec.error.get('title')}"] += 1
        elif rec.wait_until is not None:
            assert rec.error and rec.error.get("message"), "waiting without a reason"
            outcome = "waiting"
            COUNTS[f"waiting: {rec.error.get('title')}"] += 1
        else:
            assert rec.phase is Phase.PROCESSING, rec.phase  # still polling an unknown status
            outcome = "polling"
    finally:
        await sched.stop()
        await api.close()
        store.close()
    if rec.phase.terminal:
        left = [p.name for p in folder.iterdir() if p.name.endswith((".part", ".tmp"))]
        assert not left, f"temp files left behind: {left}"
    return outcome


@FUZZ
@given(data=st.data(), conversion=st.booleans())
def test_scheduler_gives_every_ticket_an_outcome_whatever_the_server_says(
    harness: Harness, data: st.DataObject, conversion: bool
) -> None:
    h = harness
    origin = h.server.base
    answers = data.draw(st.lists(responses(BASE_PLACEHOLDER), min_size=1, max_size=4))
    h.server.queue = [
        Response(r.status, r.body.replace(BASE_PLACEHOLDER.encode(), origin.encode()), r.headers)
        for r in answers
    ]
    COUNTS["examples"] += 1
    folder = h.base / f"ex{COUNTS['examples']}"
    before = sorted(os.listdir(h.base))
    served = h.server.served
    outcome = h.loop.run_until_complete(_drive(h, folder, conversion))
    COUNTS[outcome] += 1
    COUNTS["responses"] += h.server.served - served
    after = sorted(os.listdir(h.base))
    assert after == sorted([*before, folder.name]), "something was written beside the folder"
    shutil.rmtree(folder)


OUTCOMES = ("done", "failed", "canceled", "waiting", "polling")


def test_fuzz_response_counts_are_reported(harness: Harness) -> None:
    """Runs last in this module: every example ended in one of the known outcomes, every
    failure and wait says why, the draws reached each kind of outcome; prints the counts (for
    the long-mode report)."""
    print(f"\nfuzzed responses: {dict(COUNTS)}")
    if not COUNTS:
        pytest.skip("run with the module's fuzz tests: it checks their counts")
    examples = COUNTS["examples"]
    assert examples >= min(EXAMPLES, 10) and COUNTS["documents"] >= min(EXAMPLES, 10), COUNTS
    assert sum(COUNTS[o] for o in OUTCOMES) == examples, COUNTS  # each classified, once
    assert COUNTS["responses"] >= examples, COUNTS  # every example reached the server
    for key, n in COUNTS.items():
        if key in (*OUTCOMES, "examples", "documents", "responses"):
            continue
        outcome, _, title = key.partition(": ")
        assert outcome in OUTCOMES and title and title != "None", (key, n)  # a reason, always
        assert "internal" not in title.lower(), (key, n)
    # The reasons are counted for every failure and every wait.
    for outcome in ("failed", "waiting"):
        reasons = sum(n for k, n in COUNTS.items() if k.startswith(f"{outcome}: "))
        assert reasons == COUNTS[outcome], (outcome, COUNTS)
    if EXAMPLES >= 100:  # enough draws that each way out is taken (p of a miss below 1e-6)
        assert COUNTS["done"] and COUNTS["failed"] and COUNTS["waiting"], COUNTS


def test_numbers_too_big_for_the_database_are_read_as_missing() -> None:
    """Found by the fuzzer: ``size: 18446744073709551616`` crashed ``record_outputs``."""
    job = RemoteJob.from_dict(
        {"id": "J", "output": [{"size": 2**64, "downloads_counter": "1e30"}, {"size": -(2**63)}]}
    )
    assert job.outputs[0].size is None and job.outputs[0].downloads_counter is None
    assert job.outputs[1].size == -(2**63)
    store = Store.open(":memory:")
    try:
        tid = store.add_ticket(
            path="/x/a.job",
            root="/x",
            sha256="0",
            kind="adoption",
            spec={},
            inputs=[],
            idem_prefix="",
            now=0.0,
        ).id
        store.record_outputs(tid, RemoteJob.from_dict({"output": [{"size": 2**64}]}).outputs)
    finally:
        store.close()


async def test_a_job_token_with_a_control_character_fails_the_call_cleanly() -> None:
    """Found by the fuzzer: a token of "\\x1f" from the server crashed deep inside aiohttp."""
    api = ApiClient("http://127.0.0.1:9/v2", KEY, max_retries=0)
    try:
        with pytest.raises(ApiRejected, match="control character"):
            await api.get_job("J1", token="tok\x1f")
        with pytest.raises(ApiRejected, match="control character"):
            async with api.open_download(
                "http://127.0.0.1:9/x", password="pw\r\nX-Evil: 1", encoding=Encoding.BINARY
            ):
                pass
    finally:
        await api.close()


def test_an_output_listed_only_by_a_later_read_is_downloaded_before_done(
    harness: Harness,
) -> None:
    """Found by the long fuzz run: the job's second read named an output the first did not; the
    ticket was marked done with that output never fetched."""
    h = harness
    base = h.server.base

    def doc(n: int, status: str) -> bytes:
        data = payload(n)
        out = {
            "id": f"out-{n}",
            "uri": f"{base}/files/{n}",
            "filename": f"x{n}.png",
            "size": len(data),
            "status": status,
            "checksum": hashlib.md5(data).hexdigest(),
        }
        job = {"id": "J1", "status": {"code": "completed"}, "output": [out]}
        return json.dumps(job).encode()

    h.server.queue = [Response(200, doc(0, "weird")), Response(200, doc(1, "enabled"))]
    folder = h.base / "later-output"
    assert h.loop.run_until_complete(_drive(h, folder, conversion=False)) == "done"
    assert (folder / "x0.png").read_bytes() == payload(0)
    assert (folder / "x1.png").read_bytes() == payload(1)
    shutil.rmtree(folder)
