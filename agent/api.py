"""The api2convert REST client: the only importer of the aiohttp client.

One transport (:meth:`ApiClient._call`) owns the auth headers, the request budget, the short
retries of the SDK policy (api-contract.md §5.3) and the mapping of HTTP answers to
:mod:`agent.errors`. The resource calls above it are thin. Downloads are streamed
(:meth:`ApiClient.open_download`); this module never writes a file.

Secrets: the account key goes only to the base URL's origin, an upload carries only the job
token, and the download password only goes to the output uri's origin (it is dropped when a
redirect leaves it). Error messages are built from what the server said (``message`` or the
reason phrase) and never from request bodies or headers; any echo of a secret is masked.
"""

from __future__ import annotations

import asyncio
import binascii
import collections
import contextlib
import email.utils
import functools
import heapq
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from agent import __version__, platform
from agent.errors import (
    AgentError,
    ApiRejected,
    ApiUnavailable,
    AuthError,
    InputRefused,
    OutputUnavailable,
    QuotaExhausted,
    RateLimited,
    RetryableError,
    from_os_error,
)
from agent.models import Encoding, RemoteInput, RemoteJob

KEY_HEADER = "X-Api2convert-Api-Key"
TOKEN_HEADER = "X-Api2convert-Token"
PASSWORD_HEADER = "X-Api2convert-Download-Password"
UPLOAD_UUID_HEADER = "x-oc-upload-uuid"

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_RETRY_AFTER = 120.0
MAX_REDIRECTS = 10
# A download's read buffer: the transport pauses above twice this, so the body keeps flowing
# while the hashing and writing threads catch up (the session default of 64 KiB would pause and
# resume the socket every ~128 KiB).
DOWNLOAD_CHUNK_SIZE = 1024 * 1024
_MIN_CHUNK_SIZE = 256 * 1024
_MAX_MESSAGE_CHARS = 500
_NOFOLLOW = platform.O_NOFOLLOW
_CLOEXEC = platform.O_CLOEXEC
# Values under keys like these in a request body are secrets (api-contract.md §5.5): an error
# message that echoes one has it masked.
_SECRET_KEY_PARTS = (
    "token",
    "password",
    "passwd",
    "secret",
    "key",
    "credential",
    "passphrase",
    "sas",
    "sig",
)

_T = TypeVar("_T")
Sleep = Callable[[float], Awaitable[None]]
_Origin = tuple[str, str, int | None]


@dataclass
class DownloadStream:
    """An open download. ``chunks`` yields the decoded bytes from ``offset`` on.

    ``offset`` is the offset asked for when the server honoured the range (206), else 0: the
    caller must then start its file again. ``total`` is the whole file's size when known (never
    for base64, whose wire length is not the file's). ``validator`` is the strong ETag or the
    Last-Modified date, to be sent back as ``If-Range`` on a later resume.
    """

    status: int
    offset: int
    total: int | None
    validator: str | None
    chunks: AsyncIterator[bytes]


# --------------------------------------------------------------------------- helpers


def _origin(url: str | URL) -> _Origin:
    u = url if isinstance(url, URL) else URL(url, encoded=True)
    return ((u.scheme or "").lower(), (u.host or "").lower(), u.explicit_port or u.port)


def _seg(value: str) -> str:
    return quote(value, safe="")


_JOB_ID = re.compile(r"^/jobs/[^/?]+")
_FILE_ROUTE = re.compile(r"/(upload-file|download-file)/")


def route_label(method: str, path_or_url: str) -> str:
    """A request's route as a template, for metrics: ``GET /jobs/{id}``, never ids or hosts."""
    path = urlsplit(path_or_url).path if "://" in path_or_url else path_or_url.split("?")[0]
    m = _FILE_ROUTE.search(path)
    if m:
        return f"{method} /{m.group(1)}/{{id}}"
    return f"{method} {_JOB_ID.sub('/jobs/{id}', path)}"


def outcome_of(status: int | None) -> str:
    """The outcome label of one HTTP attempt: ok, redirect, 4xx, 429, 5xx or network."""
    if status is None:
        return "network"
    if 200 <= status < 300:
        return "ok"
    if 300 <= status < 400:
        return "redirect"
    if status == 429:
        return "429"
    return "5xx" if status >= 500 else "4xx"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if unusable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return seconds


def _strong_validator(headers: Mapping[str, str]) -> str | None:
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified") or None


_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


def _parse_content_range(value: str | None) -> tuple[int, int | None] | None:
    """``bytes a-b/total`` → (a, total or None)."""
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        return None
    return int(m.group(1)), None if m.group(3) == "*" else int(m.group(3))


def _with_base64(uri: str) -> str:
    base, hash_, fragment = uri.partition("#")
    sep = "&" if "?" in base else "?"
    if base.endswith(("?", "&")):
        sep = ""
    return f"{base}{sep}encoding=base64{hash_}{fragment}"


class _Base64Decoder:
    """Decodes a base64 body that arrives in arbitrary chunks, ignoring whitespace."""

    _WS = b" \t\r\n\v\f"

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> bytes:
        data = self._rest + data.translate(None, self._WS)
        cut = len(data) - len(data) % 4
        self._rest = data[cut:]
        return self._decode(data[:cut])

    def finish(self) -> bytes:
        rest, self._rest = self._rest, b""
        if not rest:
            return b""
        if len(rest) % 4 == 1:
            raise ApiUnavailable("the base64 download ended in the middle of a character group")
        return self._decode(rest + b"=" * (-len(rest) % 4))

    @staticmethod
    def _decode(data: bytes) -> bytes:
        if not data:
            return b""
        try:
            return binascii.a2b_base64(data, strict_mode=True)
        except binascii.Error as exc:
            raise ApiUnavailable(
                "the download is not valid base64 (truncated or not what was asked for)"
            ) from exc


# Request classes, most urgent first: when the budget (or the concurrency limit) makes requests
# wait, the ones that finish work go before those that add work (docs/decisions.md, Request
# budget). A waiting request moves up one class every AGING_SECONDS, so none waits forever.
FINISH = 0  # downloads, starts of uploaded jobs, re-reads of outputs, cancels
PROGRESS = 1  # uploads and inputs of created jobs, reads before a step
POLL = 2  # status polls and job-list pages
ADD = 3  # creating jobs for new tickets
AGING_SECONDS = 2.0

# The adaptive budget (docs/decisions.md, Request budget).
BUDGET_BETA = 0.7  # a push-back (429, 503, Retry-After) cuts the rate to this share ...
BUDGET_CUT_GAP = 1.0  # ... at most once a second (answers to one burst are one signal)
BUDGET_QUIET = 2.0  # seconds without push-back before the rate grows again
BUDGET_GROWTH = 0.05  # then it grows by this share of the rate at the last cut, per second
BUDGET_MIN_STEP = 0.25  # but by at least this many requests/s per second
BUDGET_FLOOR = 1.0  # requests/s it never goes below (unless the ceiling is lower)
BUDGET_BURST = 0.1  # seconds of requests that may go at once
BUDGET_MEASURE = 2.0  # the send rate is measured over this many seconds


class AdaptiveBudget:
    """The client's request rate: a ceiling, cut on push-back, grown back while all is quiet.

    Pure (no I/O, no sleeping, every call is given ``now``), so it is tested with a fake clock:

    - ``rate`` starts at the ceiling (``None`` or 0: no ceiling) and never exceeds it;
    - a push-back (``push_back``: a 429 or 503) cuts it to ``BUDGET_BETA`` × the lower of the
      rate and the rate actually sent over the last ``BUDGET_MEASURE`` s (a rate far above what
      is sent would take many cuts to matter), at most once per ``BUDGET_CUT_GAP``, never below
      the floor; a ``Retry-After`` holds every request until it ends (capped at 120 s);
    - after ``BUDGET_QUIET`` s without push-back it grows by ``BUDGET_GROWTH`` × the rate at the
      last cut per second (at least ``BUDGET_MIN_STEP``), up to the ceiling;
    - requests are spaced ``1/rate`` apart, with a burst of ``BUDGET_BURST`` s of them.
    """

    def __init__(self, ceiling: float | None, *, now: float = 0.0) -> None:
        self.ceiling = float(ceiling) if ceiling and ceiling > 0 else math.inf
        self.floor = min(BUDGET_FLOOR, self.ceiling)
        self.rate = self.ceiling
        self.hold_until = -math.inf
        self.cuts = 0
        self.version = 0  # changes with every hold or cut
        self._tat = -math.inf  # theoretical arrival time of the next request
        self._sent: collections.deque[float] = collections.deque()
        self._last_cut = -math.inf
        self._peak = self.ceiling  # the rate at the last cut
        self._grown_at = now

    def set_ceiling(self, ceiling: float | None) -> None:
        """A new ceiling (a team's agents share the account's: each takes its part)."""
        self.ceiling = float(ceiling) if ceiling and ceiling > 0 else math.inf
        self.floor = min(BUDGET_FLOOR, self.ceiling)
        self.rate = min(self.rate, self.ceiling)
        self._peak = min(self._peak, self.ceiling)
        self.version += 1

    def delay(self, now: float) -> float:
        """Seconds until a request may go (0: now)."""
        self._grow(now)
        wait = self.hold_until - now
        if self.rate < math.inf:
            tolerance = max(0.0, self.rate * BUDGET_BURST - 1.0) / self.rate
            wait = max(wait, self._tat - tolerance - now)
        return max(0.0, wait)

    def reserve(self, now: float) -> float:
        """Take the next slot; returns how long the request must wait for it."""
        wait = self.delay(now)
        at = now + wait
        if self.rate < math.inf:
            self._tat = max(self._tat, at) + 1.0 / self.rate
        self._sent.append(at)
        self._forget(now)
        return wait

    def measured(self, now: float) -> float:
        """Requests/s sent over the last ``BUDGET_MEASURE`` seconds."""
        self._forget(now)
        return len(self._sent) / BUDGET_MEASURE

    def _forget(self, now: float) -> None:
        """Drop the send times older than the measuring window: at every request, not only when
        the rate is measured (a push-back), or a budget that is never pushed back keeps every
        send time of the agent's life (issue 13's slow RSS growth)."""
        while self._sent and self._sent[0] < now - BUDGET_MEASURE:
            self._sent.popleft()

    def hold(self, now: float, retry_after: float | None) -> None:
        """No request before ``retry_after`` seconds from now have passed (capped at 120 s)."""
        if retry_after is not None and retry_after > 0:
            self.hold_until = max(self.hold_until, now + min(retry_after, MAX_RETRY_AFTER))
            self.version += 1

    def push_back(self, now: float, retry_after: float | None = None) -> None:
        """The service said slow down (429, 503; ``retry_after`` seconds if it said so)."""
        self.hold(now, retry_after)
        if now - self._last_cut < BUDGET_CUT_GAP:
            return
        sent = self.measured(now)
        base = min(self.rate, sent) if sent > 0 else self.rate
        if base == math.inf:
            base = self.floor / BUDGET_BETA
        self._peak = base
        self.rate = max(self.floor, base * BUDGET_BETA)
        self._tat = min(self._tat, now + 1.0 / self.rate)
        self._last_cut = self._grown_at = now
        self.cuts += 1
        self.version += 1

    def _grow(self, now: float) -> None:
        if self.rate >= self.ceiling:
            return
        start = max(self._grown_at, self._last_cut + BUDGET_QUIET)
        if now <= start:
            return
        step = max(BUDGET_MIN_STEP, BUDGET_GROWTH * self._peak)
        self.rate = min(self.ceiling, self.rate + step * (now - start))
        self._grown_at = now


class _Gate:
    """Admission of every HTTP exchange: at most ``limit`` in flight, paced by the budget.

    Requests that must wait are served by deadline: arrival + class × ``AGING_SECONDS`` (a
    download before a poll before a create, and none waits behind requests that came more than
    three classes later). One dispatcher task hands out the slots; ``sleep`` is only awaited for
    a wait the budget asked for, so an injected no-op sleep cannot make it spin."""

    def __init__(
        self, limit: int, budget: AdaptiveBudget, *, clock: Callable[[], float], sleep: Sleep
    ) -> None:
        self._limit = max(1, limit)
        self.budget = budget
        self._clock = clock
        self._sleep = sleep
        self._in_flight = 0
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0
        self._freed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def acquire(self, priority: int) -> None:
        now = self._clock()
        if not self._heap and self._in_flight < self._limit and self.budget.delay(now) <= 0:
            self.budget.reserve(now)
            self._in_flight += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._heap, (now + priority * AGING_SECONDS, self._seq, fut))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._dispatch())
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # given a slot just as it was cancelled
            raise

    def release(self) -> None:
        self._in_flight -= 1
        self._freed.set()

    async def _dispatch(self) -> None:
        try:
            while self._heap:
                if self._in_flight >= self._limit:
                    self._freed.clear()
                    await self._freed.wait()
                    continue
                wait = self.budget.delay(self._clock())
                if wait > 0:
                    version = self.budget.version
                    await self._sleep(wait)
                    if self.budget.version != version:
                        continue  # a push-back meanwhile: look again
                while self._heap and self._heap[0][2].done():
                    heapq.heappop(self._heap)  # cancelled while waiting
                if not self._heap:
                    break
                fut = heapq.heappop(self._heap)[2]
                self.budget.reserve(self._clock())
                self._in_flight += 1
                fut.set_result(None)
        finally:
            self._task = None


@dataclass
class _Answer:
    status: int
    body: Any
    headers: Mapping[str, str]


class _RetryLater(Exception):
    """Internal: one attempt failed with ``error``; retry it if the policy allows."""

    def __init__(self, error: RetryableError, *, transport: bool, raw_after: float | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.transport = transport  # a network error rather than an HTTP status
        self.raw_after = raw_after


# --------------------------------------------------------------------------- the client


class ApiClient:
    """The api2convert v2 client. One ``aiohttp.ClientSession``, created inside the running loop."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float = 30.0,
        max_concurrency: int = 8,
        requests_per_second: float | None = None,
        max_retries: int = 2,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
        user_agent: str = f"convert-agent/{__version__}",
        on_request: Callable[[str, str, float], None] | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an http(s) URL")
        self._base = base_url.rstrip("/")
        self._base_origin = _origin(self._base)
        self._key = api_key or None
        self._timeout = max(1.0, timeout)
        self._max_retries = max(0, max_retries)
        self._sleep = sleep
        self._rand = rand
        self._user_agent = user_agent
        self._clock = clock
        # ``requests_per_second`` is the budget's ceiling (None or 0: none); it adapts below it.
        self.budget = AdaptiveBudget(requests_per_second, now=clock())
        self._gate = _Gate(max_concurrency, self.budget, clock=clock, sleep=sleep)
        self._refused_elsewhere = -math.inf  # last 429/503 not on POST /jobs or a start
        self._session: aiohttp.ClientSession | None = None
        # Told (route template, outcome, seconds) once per HTTP attempt: the /metrics counters.
        self._on_request = on_request

    def __repr__(self) -> str:
        return f"ApiClient({self._base!r}, key={'set' if self._key else 'none'})"

    # ------------------------------------------------------------------ resources

    async def create_job(
        self,
        conversions: Sequence[Mapping[str, Any]],
        *,
        idempotency_key: str,
        settings: Mapping[str, Any] | None = None,
    ) -> RemoteJob:
        """``POST /jobs`` with ``process: false`` (staged); retried on 5xx thanks to the key.
        ``settings`` are job-level keys such as ``callback`` and ``notify_status``."""
        body = {
            **(settings or {}),
            "conversion": [dict(c) for c in conversions],
            "process": False,
        }
        try:
            answer = await self._call(
                "POST",
                "/jobs",
                json_body=body,
                ok=(200, 201),
                idempotency_key=idempotency_key,
                priority=ADD,
                retry_429=False,
            )
        except ApiRejected as err:
            if err.status not in (400, 422):
                raise
            raise ApiRejected(_conversion_refused(err.message), status=err.status) from err
        return self._job(answer, "POST /jobs")

    async def get_job(
        self, job_id: str, *, token: str | None = None, priority: int = POLL
    ) -> RemoteJob:
        """``GET /jobs/{id}``; with ``token`` the job token is sent instead of the account key."""
        answer = await self._call(
            "GET", f"/jobs/{_seg(job_id)}", ok=(200,), token=token, priority=priority
        )
        return self._job(answer, "GET /jobs/{id}")

    async def list_jobs(self, status: str | None = None, page: int = 1) -> list[RemoteJob]:
        """``GET /jobs``; a 204 (no jobs) is an empty list."""
        jobs, _ = await self.list_page(page, status=status)
        return jobs

    async def list_page(
        self, page: int, *, status: str | None = None
    ) -> tuple[list[RemoteJob], int | None]:
        """One page of ``GET /jobs`` (50 jobs) and the total from ``X-Count`` (None if absent)."""
        params = {"page": str(page)}
        if status:
            params["status"] = status
        answer = await self._call("GET", "/jobs", params=params, ok=(200, 204), priority=POLL)
        raw_count = answer.headers.get("X-Count", "")
        count = int(raw_count) if raw_count.strip().isdigit() else None
        if answer.status == 204 or answer.body is None:
            return [], count
        body = answer.body
        items = list(body.values()) if isinstance(body, dict) else body
        if not isinstance(items, list):
            raise ApiUnavailable("GET /jobs answered with something that is not a list of jobs")
        jobs = [RemoteJob.from_dict(i) for i in items if isinstance(i, dict)]
        return [j for j in jobs if j.id], count

    async def server_time(self) -> float | None:
        """``GET /statuses`` (public, no key): proves the base URL answers as the API, and returns
        the server's ``Date`` as a Unix time when it sent one (``doctor`` checks the clock)."""
        answer = await self._call("GET", "/statuses", ok=(200,))
        date = answer.headers.get("Date")
        if not date:
            return None
        try:
            return email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            return None

    async def upload_file(
        self, job: RemoteJob, path: Path, *, filename: str, upload_uuid: str
    ) -> RemoteInput:
        """``POST {job.server}/upload-file/{job.id}`` carrying only the job token."""
        server = job.server.rstrip("/")
        if not server or not job.token or not job.id:
            raise ApiRejected("the job has no upload server or token; it cannot take uploads")
        if urlsplit(server).scheme not in ("http", "https"):
            raise ApiRejected("the job's upload server is not an http(s) URL")
        url = f"{server}/upload-file/{_seg(job.id)}"
        part_name = "".join(c if c.isprintable() else "_" for c in filename)

        def form() -> tuple[aiohttp.FormData, Callable[[], None]]:
            try:
                # The path was resolved (and confined) when the ticket was read: a symlink
                # there now was swapped in since, and is never followed.
                platform.check_in_use(path)  # the stand-in for a sharing violation (tests)
                fh = os.fdopen(os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC), "rb")
            except OSError as exc:
                raise from_os_error(exc, path) from exc
            # Raw UTF-8 filename as browsers send it (aiohttp would percent-encode it, and the
            # server would keep the %XX literally); control characters cannot reach the header.
            data = aiohttp.FormData(quote_fields=False)
            data.add_field("file", fh, filename=part_name, content_type="application/octet-stream")
            return data, fh.close

        answer = await self._call(
            "POST",
            url,
            form=form,
            ok=(200, 201),
            token=job.token,
            extra_headers={UPLOAD_UUID_HEADER: upload_uuid},
            what="upload",
            streaming=True,
            priority=PROGRESS,
            on_402=functools.partial(_input_refused, f"the input {filename}", _size_of(path)),
        )
        if not isinstance(answer.body, dict):
            raise ApiUnavailable("the upload server answered with something that is not an input")
        return RemoteInput.from_dict(answer.body)

    async def add_remote_input(
        self, job_id: str, url: str, *, settings: Mapping[str, Any] | None = None
    ) -> RemoteInput:
        """``POST /jobs/{id}/input`` with a ``remote`` input (not retried on 5xx). ``settings``
        are the input's own keys beside ``type``/``source``: ``engine``, ``options``,
        ``parameters``, ``filename`` (api-contract §2.2)."""
        body: dict[str, Any] = {**(settings or {}), "type": "remote", "source": url}
        answer = await self._call(
            "POST",
            f"/jobs/{_seg(job_id)}/input",
            json_body=body,
            ok=(200, 201),
            what="POST /jobs/{id}/input",
            priority=PROGRESS,
            on_402=functools.partial(_input_refused, f"the remote input {url}", None),
        )
        if not isinstance(answer.body, dict):
            raise ApiUnavailable(
                "POST /jobs/{id}/input answered with something that is not an input"
            )
        return RemoteInput.from_dict(answer.body)

    async def start_job(self, job_id: str) -> RemoteJob:
        """``PATCH /jobs/{id}`` with exactly ``{"process": true}`` (not retried on 5xx; a 429
        is raised at once: the scheduler holds starts at the account's concurrency limit)."""
        answer = await self._call(
            "PATCH",
            f"/jobs/{_seg(job_id)}",
            json_body={"process": True},
            ok=(200,),
            what="PATCH /jobs/{id}",
            priority=FINISH,
            retry_429=False,
        )
        return self._job(answer, "PATCH /jobs/{id}")

    async def cancel_job(self, job_id: str) -> None:
        """``DELETE /jobs/{id}``; 404 (gone) and 409 (cannot be modified) are not errors."""
        await self._call(
            "DELETE",
            f"/jobs/{_seg(job_id)}",
            ok=(200, 202, 204, 404, 409),
            what="DELETE /jobs/{id}",
            expect_json=False,
            priority=FINISH,
        )

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # ------------------------------------------------------------------ download

    @contextlib.asynccontextmanager
    async def open_download(
        self,
        uri: str,
        *,
        password: str | None,
        encoding: Encoding,
        offset: int = 0,
        validator: str | None = None,
        chunk_size: int = DOWNLOAD_CHUNK_SIZE,
    ) -> AsyncIterator[DownloadStream]:
        """Open ``GET uri`` as a stream of decoded bytes.

        - ``offset > 0`` (binary only) sends ``Range: bytes=offset-`` and, when a validator is
          known, ``If-Range``; without one the Range is still sent (outputs do not change on the
          server, and the caller's checksum catches the rest). A 206 whose Content-Range starts at
          ``offset`` gives ``stream.offset == offset``; a 200 gives 0 (start the file again).
          A 416, or a 206 for another range, is answered by asking once more without Range, so
          the caller sees an ordinary full download (offset 0).
        - base64 (``?encoding=base64`` added, the query kept) is decoded while streaming and is
          never resumed: the offset is ignored and the whole file comes again.
        - Redirects are followed by hand (up to 10 hops); the password header is dropped for
          good once a hop leaves the uri's origin.
        - Opening is retried like a GET (429/5xx/network); reading the body is never retried:
          a dropped connection raises ApiUnavailable from ``chunks``.
        - ``chunks`` yields the body as the socket delivered it (each piece its own ``bytes``,
          never joined into bigger ones: that would copy every byte); ``chunk_size`` is the read
          buffer, above twice which the socket stops being read until the caller catches up.
        """
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OutputUnavailable("the output's download address is not an http(s) URL")
        base64 = encoding == Encoding.BASE64
        if base64:
            uri, offset = _with_base64(uri), 0
        offset = max(0, offset)
        chunk_size = max(_MIN_CHUNK_SIZE, chunk_size)

        resp, offset, total = await self._open_stream(
            uri, password, offset, validator, base64, chunk_size
        )
        try:
            stream = DownloadStream(
                status=resp.status,
                offset=offset,
                total=total,
                validator=_strong_validator(resp.headers),
                chunks=self._body_chunks(resp, base64, total, offset),
            )
            yield stream
        finally:
            resp.release()

    async def _open_stream(
        self,
        uri: str,
        password: str | None,
        offset: int,
        validator: str | None,
        base64: bool,
        bufsize: int,
    ) -> tuple[aiohttp.ClientResponse, int, int | None]:
        resp = await self._retrying(
            lambda: self._follow(uri, password, offset, validator, bufsize), idempotent=True
        )
        if offset > 0 and resp.status == 206:
            rng = _parse_content_range(resp.headers.get("Content-Range"))
            if rng is not None and rng[0] == offset:
                return resp, offset, rng[1]
        if offset > 0 and resp.status in (206, 416):
            # The server did not give the range asked for: start from zero, like a 200.
            resp.close()
            offset = 0
            resp = await self._retrying(
                lambda: self._follow(uri, password, 0, None, bufsize), idempotent=True
            )
        if resp.status == 206:
            rng = _parse_content_range(resp.headers.get("Content-Range"))
            if rng is None or rng[0] != 0:
                resp.close()
                raise ApiUnavailable("the download server sent a part of the file nobody asked for")
            return resp, 0, rng[1]
        total = None if base64 else resp.content_length
        return resp, 0, total

    async def _follow(
        self, uri: str, password: str | None, offset: int, validator: str | None, bufsize: int
    ) -> aiohttp.ClientResponse:
        """One attempt: GET with manual redirects; returns a 200/206/416 response (open)."""
        session = self._get_session()
        origin = _origin(uri)
        url = URL(uri, encoded=True)
        send_password = password is not None
        headers = {
            "Accept": "*/*",
            "Accept-Encoding": "identity",
            "User-Agent": self._user_agent,
        }
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
            if validator:
                headers["If-Range"] = validator
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._timeout, sock_read=self._timeout
        )
        for _hop in range(MAX_REDIRECTS + 1):
            send_password = send_password and _origin(url) == origin
            hop_headers = dict(headers)
            if send_password and password is not None:
                hop_headers[PASSWORD_HEADER] = _header_value(password, "the download password")
            resp = await self._send(
                functools.partial(
                    session.get,
                    url,
                    headers=hop_headers,
                    allow_redirects=False,
                    timeout=timeout,
                    read_bufsize=bufsize,
                ),
                "GET download",
                FINISH,
            )
            if 200 <= resp.status < 300 or resp.status == 416:
                return resp
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.headers.get("Location")
                resp.close()
                if not location:
                    raise ApiUnavailable("the download server redirected without a Location")
                nxt = url.join(URL(location, encoded=True))
                if nxt.scheme not in ("http", "https") or not nxt.host:
                    raise OutputUnavailable("the download was redirected to a non-http(s) address")
                url = nxt
                continue
            try:
                body = await self._read_limited(resp)
            except (ApiUnavailable, _RetryLater):
                body = b""
            finally:
                resp.release()
            error = self._error_for(
                resp,
                body,
                what="download",
                download=True,
                secrets=[password or "", self._key or ""],
            )
            self._raise_or_retry(error, resp)
        raise ApiUnavailable(f"the download was redirected more than {MAX_REDIRECTS} times")

    async def _body_chunks(
        self,
        resp: aiohttp.ClientResponse,
        base64: bool,
        total: int | None,
        offset: int,
    ) -> AsyncIterator[bytes]:
        decoder = _Base64Decoder() if base64 else None
        expected = None if total is None or base64 else total - offset
        received = 0
        try:
            # Chunks as the transport delivered them (~256 KiB): iter_chunked/readany would
            # join what is buffered into new bytes, a copy of every byte for nothing.
            async for chunk, _end in resp.content.iter_chunks():
                if not chunk:
                    continue
                received += len(chunk)
                data = decoder.feed(chunk) if decoder else chunk
                if data:
                    yield data
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ApiUnavailable(
                "the download was cut off part-way; it will be tried again"
            ) from exc
        if decoder is not None:
            tail = decoder.finish()
            if tail:
                yield tail
        if expected is not None and received != expected:
            raise ApiUnavailable(
                f"the download ended after {received} of {expected} bytes; it will be tried again"
            )

    # ------------------------------------------------------------------ transport

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                trust_env=False,
            )
        return self._session

    def _headers(
        self, url: str, token: str | None, extra: Mapping[str, str] | None
    ) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": self._user_agent}
        if token is not None:
            headers[TOKEN_HEADER] = _header_value(token, "the job token")
        elif self._key is not None and _origin(url) == self._base_origin:
            headers[KEY_HEADER] = self._key
        if extra:
            headers.update(extra)
        return headers

    async def _call(
        self,
        method: str,
        path_or_url: str,
        *,
        ok: Collection[int],
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        form: Callable[[], tuple[aiohttp.FormData, Callable[[], None]]] | None = None,
        token: str | None = None,
        idempotency_key: str | None = None,
        extra_headers: Mapping[str, str] | None = None,
        what: str | None = None,
        expect_json: bool = True,
        streaming: bool = False,
        priority: int = PROGRESS,
        retry_429: bool = True,
        on_402: Callable[[str], AgentError] | None = None,
    ) -> _Answer:
        """One API request. ``on_402`` turns a 402's text into the error to raise (an input's
        402 is about that input, not the account's credits)."""
        url = path_or_url if "://" in path_or_url else f"{self._base}{path_or_url}"
        what = what or f"{method} {path_or_url}"
        extra = dict(extra_headers or {})
        if idempotency_key:
            extra["Idempotency-Key"] = idempotency_key
        headers = self._headers(url, token, extra)
        route = route_label(method, path_or_url)
        idempotent = method in IDEMPOTENT_METHODS or bool(idempotency_key)
        secrets = [s for s in (self._key, token, *_secret_values(json_body)) if s]
        timeout = (
            aiohttp.ClientTimeout(total=None, sock_connect=self._timeout, sock_read=self._timeout)
            if streaming
            else aiohttp.ClientTimeout(total=self._timeout)
        )

        async def attempt() -> _Answer:
            session = self._get_session()
            closer: Callable[[], None] | None = None
            kwargs: dict[str, Any] = {
                "headers": headers,
                "allow_redirects": False,
                "timeout": timeout,
            }
            if params:
                kwargs["params"] = params
            if form is not None:
                kwargs["data"], closer = form()
            elif json_body is not None:
                kwargs["json"] = json_body
            try:
                resp = await self._send(
                    lambda: session.request(method, url, **kwargs), route, priority
                )
                try:
                    body = await self._read_limited(resp)
                finally:
                    resp.release()
            finally:
                if closer is not None:
                    closer()
            if resp.status in ok:
                parsed: Any = None
                if expect_json and resp.status != 204 and 200 <= resp.status < 300:
                    parsed = self._parse_json(body, what)
                return _Answer(resp.status, parsed, resp.headers)
            error = self._error_for(resp, body, what=what, secrets=secrets, token_auth=bool(token))
            if resp.status == 402 and on_402 is not None:
                raise on_402(error.message)
            self._raise_or_retry(error, resp)
            raise AssertionError("unreachable")  # pragma: no cover

        return await self._retrying(attempt, idempotent=idempotent, retry_429=retry_429)

    def refused_elsewhere(self, within: float) -> bool:
        """Whether a request other than a create or a start was answered 429 (or any 503) in
        the last ``within`` seconds: then a 429 on a start is the request rate, not the
        concurrency limit."""
        return self._clock() - self._refused_elsewhere <= within

    async def _send(
        self, make: Callable[[], Any], route: str, priority: int = PROGRESS
    ) -> aiohttp.ClientResponse:
        """One HTTP exchange under the concurrency limit and the request budget."""
        await self._gate.acquire(priority)
        try:
            started = time.monotonic()
            try:
                resp: aiohttp.ClientResponse = await make()
            except aiohttp.InvalidURL as exc:
                raise ApiRejected("the request address is not a valid URL") from exc
            except aiohttp.ClientSSLError as exc:
                # Certificates are always checked (never ssl=False): say so, and why it failed.
                why = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", exc)
                raise _RetryLater(
                    ApiUnavailable(
                        f"the TLS certificate of {getattr(exc, 'host', 'the server')} was not "
                        f"accepted ({why}); the agent never turns certificate checks off: give "
                        "the server a valid certificate or add its CA to the system's trust store",
                        title="TLS certificate refused",
                    ),
                    transport=True,
                    raw_after=None,
                ) from exc
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self._observe(route, None, started)
                raise _RetryLater(
                    ApiUnavailable(f"the API could not be reached ({type(exc).__name__})"),
                    transport=True,
                    raw_after=None,
                ) from exc
            self._observe(route, resp.status, started)
            if resp.status in RETRY_STATUSES:
                now = self._clock()
                after = parse_retry_after(resp.headers.get("Retry-After"))
                # A 429 on a create or a start is the account's concurrency limit (api-contract
                # §5.2; the scheduler learns it): honoured, but no reason to send less.
                slot = resp.status == 429 and route in ("POST /jobs", "PATCH /jobs/{id}")
                if resp.status in (429, 503) and not slot:
                    self.budget.push_back(now, after)
                    self._refused_elsewhere = now
                else:
                    self.budget.hold(now, after)
            return resp
        finally:
            self._gate.release()

    def _observe(self, route: str, status: int | None, started: float) -> None:
        if self._on_request is None:
            return
        try:
            self._on_request(route, outcome_of(status), time.monotonic() - started)
        except Exception:  # counting must never break a request
            logging.getLogger("agent.api").exception("the on_request hook failed")

    async def _read_limited(self, resp: aiohttp.ClientResponse) -> bytes:
        if resp.content_length is not None and resp.content_length > MAX_BODY_BYTES:
            raise ApiUnavailable("the API answer is larger than 16 MiB")
        buf = bytearray()
        try:
            async for chunk in resp.content.iter_chunked(256 * 1024):
                buf += chunk
                if len(buf) > MAX_BODY_BYTES:
                    raise ApiUnavailable("the API answer is larger than 16 MiB")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _RetryLater(
                ApiUnavailable("the connection to the API dropped while reading an answer"),
                transport=True,
                raw_after=None,
            ) from exc
        return bytes(buf)

    @staticmethod
    def _parse_json(body: bytes, what: str) -> Any:
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiUnavailable(
                f"{what}: the API answered with something that is not JSON "
                "(a maintenance page?); it will be tried again"
            ) from exc

    @staticmethod
    def _job(answer: _Answer, what: str) -> RemoteJob:
        if not isinstance(answer.body, dict):
            raise ApiUnavailable(f"{what}: the API answered with something that is not a job")
        job = RemoteJob.from_dict(answer.body)
        if not job.id:
            raise ApiUnavailable(f"{what}: the API answered with a job without an id")
        return job

    def _error_for(
        self,
        resp: aiohttp.ClientResponse,
        body: bytes,
        *,
        what: str,
        secrets: Sequence[str] = (),
        download: bool = False,
        token_auth: bool = False,
    ) -> AgentError:
        status = resp.status
        message = ""
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            parsed = json.loads(body) if body else None
            if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
                message = parsed["message"].strip()
        message = message or (resp.reason or "").strip() or "no message"
        # Lone surrogates (valid JSON) cannot be logged or stored: they become "?".
        message = message[:_MAX_MESSAGE_CHARS].encode("utf-8", "replace").decode("utf-8")
        for secret in secrets:
            if secret:
                message = message.replace(secret, "[REDACTED]")
        request_id = resp.headers.get("X-Request-Id")
        suffix = f" (request id {request_id})" if request_id else ""
        text = f"{what}: HTTP {status} {message}{suffix}"
        raw_after = parse_retry_after(resp.headers.get("Retry-After"))
        after = raw_after if raw_after is not None and raw_after > 0 else None

        if status == 429:
            return RateLimited(f"{text}; waiting before trying again", retry_after=after)
        if status >= 500:
            return ApiUnavailable(f"{text}; it will be tried again", retry_after=after)
        if 300 <= status < 400:
            return ApiUnavailable(f"{text}: unexpected redirect from the API", retry_after=after)
        if status == 402:
            return QuotaExhausted(
                f"{text}{_QUOTA_WORDS}",
                retry_after=after,
            )
        if download:
            return OutputUnavailable(
                f"{text}: the output cannot be downloaded (expired, overused, disabled "
                "or a wrong download password)"
            )
        if status in (401, 403):
            if token_auth:
                return ApiRejected(f"{text}: the job token was refused", status=status)
            return AuthError(f"{text}: check the API key (API2CONVERT_API_KEY or api.key)")
        if 400 <= status < 500:
            return ApiRejected(text, status=status)
        return ApiUnavailable(f"{text}: unexpected answer from the API")

    @staticmethod
    def _raise_or_retry(error: AgentError, resp: aiohttp.ClientResponse) -> None:
        if isinstance(error, RetryableError) and resp.status in RETRY_STATUSES:
            raw = parse_retry_after(resp.headers.get("Retry-After"))
            raise _RetryLater(error, transport=False, raw_after=raw)
        raise error

    async def _retrying(
        self, attempt: Callable[[], Awaitable[_T]], *, idempotent: bool, retry_429: bool = True
    ) -> _T:
        tries = 0
        while True:
            try:
                return await attempt()
            except _RetryLater as exc:
                status_429 = isinstance(exc.error, RateLimited)
                allowed = (status_429 and retry_429) or idempotent
                if not allowed or tries >= self._max_retries or (status_429 and not retry_429):
                    raise exc.error from exc.__cause__
                if exc.raw_after is None or exc.raw_after <= 0:
                    await self._sleep(self._delay(tries, exc.raw_after))
                # else the budget holds every request (this one too) until Retry-After ends
                tries += 1

    def _delay(self, attempt: int, raw_after: float | None) -> float:
        if raw_after is not None and raw_after > 0:
            return min(raw_after, MAX_RETRY_AFTER)
        return min(8.0, 0.5 * 2.0**attempt) * (1 + 0.25 * self._rand())


_QUOTA_WORDS = ": the credits or contract budget are used up; new tickets wait"


def _size_of(path: Path) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


_CALL_PREFIX = re.compile(r"^POST /jobs: HTTP (\d{3}) ")


def _conversion_refused(text: str) -> str:
    """A 400/422 on ``POST /jobs`` in plain words: the API's reason and what to do. (What the
    ticket asked is not repeated: request bodies never go into error text.)"""
    match = _CALL_PREFIX.match(text)
    reason = text[match.end() :] if match else text
    status = f"HTTP {match.group(1)}" if match else "refused"
    return (
        f"the API refused the conversion: {reason} (POST /jobs, {status}) — check the "
        "ticket's `target`, `category` and `options` against the conversions the API offers "
        "(GET /v2/conversions), fix the ticket and rename it back to .job"
    )


def _input_refused(what: str, size: int | None, text: str) -> InputRefused:
    """A 402 on an input: the contract limits an input's size and a job's number of inputs
    (api-contract §8); the API's text (which names the limit) says which, with the input's own
    size for the first."""
    text = text.removesuffix(_QUOTA_WORDS)
    if re.search(r"number of inputs|too many inputs|inputs per job", text, re.IGNORECASE):
        return InputRefused(
            f"{what} is one input more than the API contract allows in one job ({text}); "
            "this ticket fails, the others go on: split its inputs over several tickets",
            status=402,
        )
    sized = f" ({_human_size(size)})" if size is not None else ""
    return InputRefused(
        f"{what}{sized} is larger than the API contract allows for an input ({text}); "
        "this ticket fails, the others go on: make the file smaller (or ask for a contract with "
        "a larger input limit), then rename the ticket back to .job",
        status=402,
    )


def _human_size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    value, units = size / 1024, ["KiB", "MiB", "GiB", "TiB"]
    while value >= 1024 and len(units) > 1:
        value, units = value / 1024, units[1:]
    return f"{size:,} bytes, {value:.1f} {units[0]}"


def _header_value(value: str, what: str) -> str:
    """``value`` if it can go into an HTTP header; a control character (a job token the server
    made up, say) would otherwise be refused deep inside aiohttp as header injection."""
    if any(ch < " " or ch == "\x7f" for ch in value):
        raise ApiRejected(f"{what} contains a control character and cannot be sent")
    return value


def _secret_values(body: Any) -> list[str]:
    """String values under secret-looking keys anywhere in a JSON request body."""
    found: list[str] = []
    stack = [body]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            for k, v in item.items():
                if isinstance(v, str) and len(v) >= 4:
                    if any(part in str(k).lower() for part in _SECRET_KEY_PARTS):
                        found.append(v)
                else:
                    stack.append(v)
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return found
