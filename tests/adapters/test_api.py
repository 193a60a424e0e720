"""ApiClient against small loopback servers: headers, retries, error mapping, downloads."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.api import (
    KEY_HEADER,
    PASSWORD_HEADER,
    TOKEN_HEADER,
    ApiClient,
    _Base64Decoder,
    parse_retry_after,
)
from agent.errors import (
    ApiRejected,
    ApiUnavailable,
    AuthError,
    InputRefused,
    OutputUnavailable,
    QuotaExhausted,
    RateLimited,
)
from agent.models import Encoding, RemoteJob

KEY = "k" * 32
TOKEN = "t" * 32

ServerFactory = Callable[..., Awaitable[TestServer]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []
        self.now = 1000.0

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.now += seconds

    def clock(self) -> float:  # the time these sleeps have passed (the request budget's clock)
        return self.now


def base_of(server: TestServer) -> str:
    return f"http://{server.host}:{server.port}"


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., ApiClient]]:
    made: list[ApiClient] = []

    def make(base: str, key: str | None = KEY, **kw: Any) -> ApiClient:
        sleep = kw.setdefault("sleep", FakeSleep())
        if isinstance(sleep, FakeSleep):
            kw.setdefault("clock", sleep.clock)
        kw.setdefault("rand", lambda: 0.0)
        c = ApiClient(base, key, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        await c.close()


async def serve(
    aiohttp_server: ServerFactory, routes: list[tuple[str, str, Handler]]
) -> TestServer:
    app = web.Application()
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    return await aiohttp_server(app)


def job_json(server: str = "", **extra: Any) -> dict[str, Any]:
    return {"id": "j1", "token": TOKEN, "server": server, "status": {"code": "incomplete"}, **extra}


# --------------------------------------------------------------------------- headers


async def test_key_goes_to_base_origin_with_accept_and_user_agent(aiohttp_server, clients):
    seen: list[Any] = []

    async def create(request: web.Request) -> web.Response:
        seen.append((dict(request.headers), await request.json()))
        return web.json_response(job_json(), status=201)

    srv = await serve(aiohttp_server, [("POST", "/v2/jobs", create)])
    api = clients(base_of(srv) + "/v2/")
    job = await api.create_job([{"target": "png"}], idempotency_key="idem-1")
    assert job.id == "j1"
    headers, body = seen[0]
    assert headers[KEY_HEADER] == KEY
    assert headers["Accept"] == "application/json"
    assert headers["User-Agent"].startswith("convert-agent/")
    assert headers["Idempotency-Key"] == "idem-1"
    assert body == {"conversion": [{"target": "png"}], "process": False}


async def test_upload_carries_only_the_token_and_upload_uuid(aiohttp_server, clients):
    seen: list[Any] = []

    async def upload(request: web.Request) -> web.Response:
        form = await request.post()
        field = form["file"]
        assert isinstance(field, web.FileField)
        seen.append((dict(request.headers), field.filename, field.file.read(), request.path))
        return web.json_response({"id": "in-1", "type": "upload", "status": "downloaded"})

    files = await serve(aiohttp_server, [("POST", "/dl/web2/upload-file/{id}", upload)])
    api = clients("https://api.example.invalid/v2")
    src = Path(__file__)
    job = RemoteJob.from_dict(job_json(server=base_of(files) + "/dl/web2/"))
    remote = await api.upload_file(job, src, filename="ré sumé.txt", upload_uuid="u-1")
    assert remote.id == "in-1"
    headers, filename, content, path = seen[0]
    assert KEY_HEADER.lower() not in {h.lower() for h in headers}
    assert headers[TOKEN_HEADER] == TOKEN
    assert headers["x-oc-upload-uuid"] == "u-1"
    assert filename == "ré sumé.txt"
    assert content == src.read_bytes()
    assert path == "/dl/web2/upload-file/j1"


async def test_a_402_on_an_input_is_that_input_not_the_quota(aiohttp_server, clients, tmp_path):
    """402 on an upload or a remote input: InputRefused (this ticket fails) naming the file's
    size and the server's words (the limit); 402 on POST /jobs stays QuotaExhausted."""

    async def refuse(request: web.Request) -> web.Response:
        await request.read()
        text = "The file exceeds the input size limit of your contract (1000 bytes)"
        return web.json_response({"message": text}, status=402)

    srv = await serve(
        aiohttp_server,
        [
            ("POST", "/dl/web2/upload-file/{id}", refuse),
            ("POST", "/jobs/{id}/input", refuse),
            ("POST", "/jobs", refuse),
        ],
    )
    api = clients(base_of(srv), max_retries=0)
    src = tmp_path / "big.bin"
    src.write_bytes(b"x" * 5_000)
    job = RemoteJob.from_dict(job_json(server=base_of(srv) + "/dl/web2/"))
    with pytest.raises(InputRefused) as upload:
        await api.upload_file(job, src, filename="big.bin", upload_uuid="u-1")
    message = upload.value.message
    assert "big.bin" in message and "5,000 bytes, 4.9 KiB" in message, message
    assert "(1000 bytes)" in message and "credits" not in message
    with pytest.raises(InputRefused) as remote:
        await api.add_remote_input("j1", "https://files.example/big.bin")
    assert "https://files.example/big.bin" in remote.value.message
    assert "(1000 bytes)" in remote.value.message
    with pytest.raises(QuotaExhausted):
        await api.create_job([{"target": "png"}], idempotency_key="k-1")


async def test_a_402_for_one_input_too_many_says_so_not_size(aiohttp_server, clients, tmp_path):
    """The contract caps a job's inputs too (402 on the input that goes over): the message says
    the job has too many inputs and what to do, not that the file is too large."""

    async def refuse(request: web.Request) -> web.Response:
        await request.read()
        text = (
            "The number of inputs for this job has been exceeded (your contract allows 2); "
            "the file was discarded"
        )
        return web.json_response({"message": text}, status=402)

    srv = await serve(aiohttp_server, [("POST", "/dl/web2/upload-file/{id}", refuse)])
    api = clients(base_of(srv), max_retries=0)
    src = tmp_path / "third.png"
    src.write_bytes(b"x" * 10)
    job = RemoteJob.from_dict(job_json(server=base_of(srv) + "/dl/web2/"))
    with pytest.raises(InputRefused) as refused:
        await api.upload_file(job, src, filename="third.png", upload_uuid="u-3")
    message = refused.value.message
    assert "third.png is one input more than the API contract allows in one job" in message
    assert "allows 2" in message and "split its inputs" in message
    assert "larger" not in message, message


async def test_upload_without_server_or_token_fails_before_sending(clients):
    api = clients("http://127.0.0.1:9")
    with pytest.raises(ApiRejected):
        await api.upload_file(RemoteJob(id="j1"), Path(__file__), filename="x", upload_uuid="u")


async def test_key_never_sent_to_another_origin_and_token_replaces_it(aiohttp_server, clients):
    seen: list[dict[str, str]] = []

    async def get(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response(job_json())

    srv = await serve(aiohttp_server, [("GET", "/jobs/{id}", get)])
    api = clients(base_of(srv))
    await api.get_job("j1", token=TOKEN)
    assert seen[0][TOKEN_HEADER] == TOKEN
    assert KEY_HEADER not in seen[0]
    # A full URL on another origin (here: the same host under another name) gets no key.
    other = clients(f"http://localhost:{srv.port}")
    assert "X-Api2convert-Api-Key" not in other._headers(base_of(srv) + "/jobs/x", None, None)
    assert other._headers(f"http://localhost:{srv.port}/jobs/x", None, None)[KEY_HEADER] == KEY


async def test_path_segments_are_percent_encoded(aiohttp_server, clients):
    seen: list[str] = []

    async def get(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response(job_json())

    srv = await serve(aiohttp_server, [("GET", "/jobs/{id}", get)])
    await clients(base_of(srv)).get_job("a/b c")
    assert seen == ["/jobs/a%2Fb%20c"]


async def test_list_jobs_204_is_empty_and_cancel_tolerates_404_409(aiohttp_server, clients):
    codes = iter([204, 404, 409, 204])

    async def any_(request: web.Request) -> web.Response:
        return web.Response(status=next(codes))

    srv = await serve(aiohttp_server, [("GET", "/jobs", any_), ("DELETE", "/jobs/{id}", any_)])
    api = clients(base_of(srv))
    assert await api.list_jobs() == []
    for _ in range(3):
        await api.cancel_job("j1")


async def test_list_jobs_parses_and_skips_junk(aiohttp_server, clients):
    async def jobs(request: web.Request) -> web.Response:
        assert request.query["status"] == "completed"
        return web.json_response([job_json(), 3, "x"])

    srv = await serve(aiohttp_server, [("GET", "/jobs", jobs)])
    got = await clients(base_of(srv)).list_jobs("completed")
    assert [j.id for j in got] == ["j1"]


async def test_start_job_sends_process_true(aiohttp_server, clients):
    seen: list[Any] = []

    async def patch(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response(job_json(status={"code": "queued"}))

    srv = await serve(aiohttp_server, [("PATCH", "/jobs/{id}", patch)])
    job = await clients(base_of(srv)).start_job("j1")
    assert seen == [{"process": True}] and job.status_code == "queued"


# --------------------------------------------------------------------------- retries


def counting(status: int, headers: dict[str, str] | None = None, then: Any = None):
    calls: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(1)
        if then is not None and len(calls) > 2:
            return web.json_response(then, status=201)
        return web.json_response({"message": "busy"}, status=status, headers=headers)

    return handler, calls


async def test_post_without_idempotency_key_is_not_retried_on_503(aiohttp_server, clients):
    handler, calls = counting(503)
    srv = await serve(aiohttp_server, [("POST", "/jobs/{id}/input", handler)])
    sleep = FakeSleep()
    with pytest.raises(ApiUnavailable):
        await clients(base_of(srv), sleep=sleep).add_remote_input("j1", "https://x/y")
    assert len(calls) == 1 and sleep.calls == []


async def test_patch_is_not_retried_on_502(aiohttp_server, clients):
    handler, calls = counting(502)
    srv = await serve(aiohttp_server, [("PATCH", "/jobs/{id}", handler)])
    with pytest.raises(ApiUnavailable):
        await clients(base_of(srv)).start_job("j1")
    assert len(calls) == 1


async def test_post_with_idempotency_key_is_retried_on_503(aiohttp_server, clients):
    handler, calls = counting(503, then=job_json())
    srv = await serve(aiohttp_server, [("POST", "/jobs", handler)])
    sleep = FakeSleep()
    job = await clients(base_of(srv), sleep=sleep).create_job([], idempotency_key="k")
    assert job.id == "j1" and len(calls) == 3
    assert sleep.calls == [0.5, 1.0]


async def test_backoff_has_upward_jitter(aiohttp_server, clients):
    handler, _ = counting(500)
    srv = await serve(aiohttp_server, [("GET", "/jobs/{id}", handler)])
    sleep = FakeSleep()
    api = clients(base_of(srv), sleep=sleep, rand=lambda: 1.0, max_retries=5)
    with pytest.raises(ApiUnavailable):
        await api.get_job("j1")
    assert sleep.calls == [0.625, 1.25, 2.5, 5.0, 10.0]


async def test_429_retried_for_post_and_retry_after_slept_exactly(aiohttp_server, clients):
    handler, calls = counting(429, {"Retry-After": "7"})
    srv = await serve(aiohttp_server, [("POST", "/jobs/{id}/input", handler)])
    sleep = FakeSleep()
    with pytest.raises(RateLimited) as info:
        await clients(base_of(srv), sleep=sleep).add_remote_input("j1", "https://x/y")
    assert len(calls) == 3 and sleep.calls == [7.0, 7.0]
    assert info.value.retry_after == 7.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("99999", 120.0),
        (email.utils.formatdate(time.time() + 3600, usegmt=True), 120.0),
        ("0", 0.5),
        ("garbage", 0.5),
        (email.utils.formatdate(time.time() - 3600, usegmt=True), 0.5),
    ],
)
async def test_retry_after_capped_and_fallbacks(aiohttp_server, clients, header, expected):
    handler, _ = counting(429, {"Retry-After": header})
    srv = await serve(aiohttp_server, [("GET", "/jobs/{id}", handler)])
    sleep = FakeSleep()
    with pytest.raises(RateLimited):
        await clients(base_of(srv), sleep=sleep, max_retries=1).get_job("j1")
    assert sleep.calls == [pytest.approx(expected)]


async def test_network_error_retried_for_get_then_api_unavailable(clients, unused_tcp_port):
    sleep = FakeSleep()
    api = clients(f"http://127.0.0.1:{unused_tcp_port}", sleep=sleep)
    with pytest.raises(ApiUnavailable):
        await api.get_job("j1")
    assert len(sleep.calls) == 2


async def test_retry_after_exposed_on_503(aiohttp_server, clients):
    handler, _ = counting(503, {"Retry-After": "3"})
    srv = await serve(aiohttp_server, [("GET", "/jobs/{id}", handler)])
    with pytest.raises(ApiUnavailable) as info:
        await clients(base_of(srv), max_retries=0).get_job("j1")
    assert info.value.retry_after == 3.0


def test_parse_retry_after_forms():
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0) == 0.0


# --------------------------------------------------------------------------- error mapping


@pytest.mark.parametrize(
    ("status", "error", "status_attr"),
    [
        (400, ApiRejected, 400),
        (422, ApiRejected, 422),
        (404, ApiRejected, 404),
        (409, ApiRejected, 409),
        (401, AuthError, None),
        (403, AuthError, None),
        (402, QuotaExhausted, None),
        (500, ApiUnavailable, None),
        (504, ApiUnavailable, None),
        (302, ApiUnavailable, None),
    ],
)
async def test_status_maps_to_error(aiohttp_server, clients, status, error, status_attr):
    async def handler(request: web.Request) -> web.Response:
        headers = {"X-Request-Id": "req-9"}
        if status == 302:
            headers["Location"] = "/elsewhere"
        return web.json_response({"message": f"said {KEY}"}, status=status, headers=headers)

    srv = await serve(aiohttp_server, [("GET", "/jobs/{id}", handler)])
    with pytest.raises(error) as info:
        await clients(base_of(srv), max_retries=0).get_job("j1")
    if status_attr is not None:
        assert isinstance(info.value, ApiRejected) and info.value.status == status_attr
    assert KEY not in str(info.value) and "[REDACTED]" in info.value.message
    assert "req-9" in info.value.message


async def test_message_falls_back_to_reason_phrase(aiohttp_server, clients):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=422, text="<html>no</html>")

    srv = await serve(aiohttp_server, [("GET", "/jobs/{id}", handler)])
    with pytest.raises(ApiRejected, match="Unprocessable"):
        await clients(base_of(srv)).get_job("j1")


async def test_token_refused_is_rejection_not_auth_pause(aiohttp_server, clients):
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"message": "Invalid token"}, status=401)

    srv = await serve(aiohttp_server, [("GET", "/jobs/{id}", handler)])
    with pytest.raises(ApiRejected) as info:
        await clients(base_of(srv)).get_job("j1", token=TOKEN)
    assert info.value.status == 401


async def test_html_2xx_is_api_unavailable(aiohttp_server, clients):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="<html>maintenance</html>", content_type="text/html")

    srv = await serve(aiohttp_server, [("GET", "/jobs/{id}", handler)])
    with pytest.raises(ApiUnavailable, match="not JSON"):
        await clients(base_of(srv)).get_job("j1")


async def test_body_over_16_mib_is_api_unavailable(aiohttp_server, clients):
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        block = b" " * (1 << 20)
        for _ in range(17):
            await resp.write(block)
        return resp

    srv = await serve(aiohttp_server, [("GET", "/jobs/{id}", handler)])
    with pytest.raises(ApiUnavailable, match="16 MiB"):
        await clients(base_of(srv)).get_job("j1")


# --------------------------------------------------------------------------- budget


async def test_concurrency_limit_holds(aiohttp_server, clients):
    import asyncio

    state = {"now": 0, "max": 0}

    async def handler(request: web.Request) -> web.Response:
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        await asyncio.sleep(0.02)
        state["now"] -= 1
        return web.json_response(job_json())

    srv = await serve(aiohttp_server, [("GET", "/jobs/{id}", handler)])
    api = clients(base_of(srv), max_concurrency=2)
    await asyncio.gather(*(api.get_job(str(i)) for i in range(6)))
    assert state["max"] == 2


# --------------------------------------------------------------------------- downloads

DATA = bytes(range(256)) * 4000  # ~1 MB, not a multiple of anything nice


def file_server_routes(data: bytes = DATA, etag: str = '"v1"') -> list[tuple[str, str, Handler]]:
    seen: list[dict[str, str]] = []

    async def dl(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.headers))
        if request.query.get("encoding") == "base64":
            encoded = base64.encodebytes(data)  # newline every 76 characters
            resp = web.StreamResponse()
            await resp.prepare(request)
            for i in range(0, len(encoded), 7777):  # odd write boundaries
                await resp.write(encoded[i : i + 7777])
            return resp
        rng = request.headers.get("Range")
        if rng and request.headers.get("If-Range", etag) == etag:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                return web.Response(status=416)
            return web.Response(
                status=206,
                body=data[start:],
                headers={
                    "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}",
                    "ETag": etag,
                },
            )
        return web.Response(body=data, headers={"ETag": etag})

    dl.seen = seen  # type: ignore[attr-defined]
    return [("GET", "/dl/{name}", dl)]


async def collect(api: ApiClient, uri: str, **kw: Any) -> tuple[int, int | None, str | None, bytes]:
    kw.setdefault("password", None)
    kw.setdefault("encoding", Encoding.BINARY)
    async with api.open_download(uri, **kw) as stream:
        data = b"".join([c async for c in stream.chunks])
    return stream.offset, stream.total, stream.validator, data


async def test_download_full_with_validator_and_total(aiohttp_server, clients):
    srv = await serve(aiohttp_server, file_server_routes())
    offset, total, validator, data = await collect(clients(base_of(srv)), base_of(srv) + "/dl/a")
    assert (offset, total, validator, data) == (0, len(DATA), '"v1"', DATA)


async def test_download_resumes_with_206(aiohttp_server, clients):
    routes = file_server_routes()
    srv = await serve(aiohttp_server, routes)
    api = clients(base_of(srv))
    offset, total, _, data = await collect(
        api, base_of(srv) + "/dl/a", offset=1000, validator='"v1"'
    )
    assert offset == 1000 and total == len(DATA) and data == DATA[1000:]
    seen = routes[0][2].seen  # type: ignore[attr-defined]
    assert seen[0]["Range"] == "bytes=1000-" and seen[0]["If-Range"] == '"v1"'


async def test_download_resume_falls_back_to_200_when_validator_changed(aiohttp_server, clients):
    srv = await serve(aiohttp_server, file_server_routes(etag='"v2"'))
    api = clients(base_of(srv))
    offset, _, validator, data = await collect(
        api, base_of(srv) + "/dl/a", offset=10, validator='"v1"'
    )
    assert offset == 0 and data == DATA and validator == '"v2"'


async def test_download_416_restarts_from_zero(aiohttp_server, clients):
    srv = await serve(aiohttp_server, file_server_routes())
    api = clients(base_of(srv))
    offset, _, _, data = await collect(api, base_of(srv) + "/dl/a", offset=len(DATA) + 5)
    assert offset == 0 and data == DATA


async def test_download_base64_decoded_across_chunks_and_query_kept(aiohttp_server, clients):
    seen: list[str] = []

    async def dl(request: web.Request) -> web.StreamResponse:
        seen.append(request.query_string)
        return await file_server_routes()[0][2](request)

    srv = await serve(aiohttp_server, [("GET", "/dl/{name}", dl)])
    api = clients(base_of(srv))
    offset, total, _, data = await collect(
        api, base_of(srv) + "/dl/a?x=1", encoding=Encoding.BASE64, offset=99
    )
    assert data == DATA and offset == 0 and total is None
    assert seen == ["x=1&encoding=base64"]


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(min_value=1, max_value=9), max_size=40))
def test_base64_decoder_any_split(data: bytes, cuts: list[int]) -> None:
    encoded = base64.encodebytes(data)
    decoder, out, i = _Base64Decoder(), b"", 0
    for n in cuts:
        out += decoder.feed(encoded[i : i + n])
        i += n
    out += decoder.feed(encoded[i:]) + decoder.finish()
    assert out == data


def test_base64_decoder_rejects_garbage():
    with pytest.raises(ApiUnavailable):
        _Base64Decoder().feed(b"<html>nope</html>")


async def test_password_dropped_on_cross_origin_redirect(aiohttp_server, clients):
    storage_routes = file_server_routes()
    storage = await serve(aiohttp_server, storage_routes)
    seen: list[dict[str, str]] = []

    async def redirect(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        raise web.HTTPFound(f"{base_of(storage)}/dl/a")  # another port: another origin

    front = await serve(aiohttp_server, [("GET", "/out", redirect)])
    api = clients(base_of(front))
    _, _, _, data = await collect(api, f"{base_of(front)}/out", password="s3cret")
    assert data == DATA
    assert seen[0][PASSWORD_HEADER] == "s3cret"
    storage_seen = storage_routes[0][2].seen  # type: ignore[attr-defined]
    assert PASSWORD_HEADER not in storage_seen[0]
    assert KEY_HEADER not in seen[0] and KEY_HEADER not in storage_seen[0]


async def test_password_kept_on_same_origin_redirect(aiohttp_server, clients):
    routes = file_server_routes()

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/dl/a")

    srv = await serve(aiohttp_server, [*routes, ("GET", "/out", redirect)])
    await collect(clients(base_of(srv)), base_of(srv) + "/out", password="pw")
    assert routes[0][2].seen[0][PASSWORD_HEADER] == "pw"  # type: ignore[attr-defined]


async def test_redirect_loop_gives_up(aiohttp_server, clients):
    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/out")

    srv = await serve(aiohttp_server, [("GET", "/out", loop)])
    with pytest.raises(ApiUnavailable, match="redirected more than"):
        await collect(clients(base_of(srv)), base_of(srv) + "/out")


@pytest.mark.parametrize("status", [401, 403, 404, 410])
async def test_download_refusals_are_output_unavailable(aiohttp_server, clients, status):
    async def dl(request: web.Request) -> web.Response:
        return web.json_response({"message": "expired"}, status=status)

    srv = await serve(aiohttp_server, [("GET", "/dl/{name}", dl)])
    with pytest.raises(OutputUnavailable, match="expired"):
        await collect(clients(base_of(srv)), base_of(srv) + "/dl/a")


async def test_download_open_retried_on_503(aiohttp_server, clients):
    calls: list[int] = []
    ok = file_server_routes()[0][2]

    async def dl(request: web.Request) -> web.StreamResponse:
        calls.append(1)
        if len(calls) == 1:
            return web.Response(status=503)
        return await ok(request)

    srv = await serve(aiohttp_server, [("GET", "/dl/{name}", dl)])
    _, _, _, data = await collect(clients(base_of(srv)), base_of(srv) + "/dl/a")
    assert data == DATA and len(calls) == 2


async def test_connection_dropped_mid_body_raises_from_chunks(aiohttp_server, clients):
    async def dl(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(len(DATA))})
        await resp.prepare(request)
        await resp.write(DATA[:5000])
        assert request.transport is not None
        request.transport.close()
        return resp

    srv = await serve(aiohttp_server, [("GET", "/dl/{name}", dl)])
    api = clients(base_of(srv))
    got = b""
    with pytest.raises(ApiUnavailable, match=r"cut off|ended after"):
        async with api.open_download(
            base_of(srv) + "/dl/a", password=None, encoding=Encoding.BINARY
        ) as stream:
            async for chunk in stream.chunks:
                got += chunk
    assert len(got) < len(DATA)


async def test_malformed_download_uri_fails_before_sending(clients):
    with pytest.raises(OutputUnavailable):
        await collect(clients("http://127.0.0.1:9"), "ftp://host/x")


async def test_json_bodies_are_never_in_error_text(aiohttp_server, clients):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=400, text=json.dumps({"message": "bad target"}))

    srv = await serve(aiohttp_server, [("POST", "/jobs", handler)])
    with pytest.raises(ApiRejected) as info:
        await clients(base_of(srv)).create_job([{"target": "secret-ish"}], idempotency_key="k")
    assert "secret-ish" not in info.value.message and "bad target" in info.value.message
    assert hashlib.md5(b"").hexdigest() not in info.value.message


# --------------------------------------------------------------------------- against the emulator


@pytest.fixture
async def emulator() -> AsyncIterator[Any]:
    from agent.emulator import EmulatorConfig, FaultSpec, start_emulator

    running = await start_emulator(
        EmulatorConfig(faults=(FaultSpec("download", "truncate", rate=1.0, count=1),))
    )
    yield running
    await running.stop()


async def wait_completed(api: ApiClient, job_id: str) -> RemoteJob:
    import asyncio

    async with asyncio.timeout(5):
        while True:
            job = await api.get_job(job_id)
            if job.terminal:
                return job
            await asyncio.sleep(0.02)


async def test_emulator_staged_flow_resumed_download_and_base64(emulator, clients, tmp_path):
    from agent.downloader import fetch_to_part, place
    from agent.models import ConflictPolicy, VerifyMode

    api = clients(emulator.base_url)
    src = tmp_path / "notes.txt"
    src.write_text("hello from the agent\n" * 20000)
    job = await api.create_job([{"target": "txt"}], idempotency_key="ticket-1")
    again = await api.create_job([{"target": "txt"}], idempotency_key="ticket-1")
    assert again.id == job.id and job.status_code == "incomplete"
    await api.upload_file(job, src, filename=src.name, upload_uuid="u-1")
    await api.start_job(job.id)
    done = await wait_completed(api, job.id)
    assert done.status_code == "completed"
    out = done.outputs[0]

    def opener(offset: int, validator: str | None, encoding: Encoding = Encoding.BINARY):
        return api.open_download(
            out.uri, password=None, encoding=encoding, offset=offset, validator=validator
        )

    part = tmp_path / ".notes.part"
    validators: list[str | None] = []
    # The emulator truncates the first download: the part keeps what arrived ...
    with pytest.raises(ApiUnavailable):
        await fetch_to_part(
            opener,
            part,
            expected_checksum=out.checksum,
            expected_size=out.size,
            verify=VerifyMode.REQUIRED,
            resume=True,
            on_validator=validators.append,
        )
    kept = part.stat().st_size
    assert 0 < kept < (out.size or 0)
    # ... and the next attempt asks only for the rest.
    result = await fetch_to_part(
        opener,
        part,
        expected_checksum=out.checksum,
        expected_size=out.size,
        verify=VerifyMode.REQUIRED,
        resume=True,
        validator=validators[0],
    )
    assert result.verdict == "verified" and result.size == out.size
    dest = place(part, tmp_path, out.filename, ConflictPolicy.RENAME)
    assert dest is not None and dest.read_bytes() == src.read_bytes()
    ranges = [d.get("range") for d in emulator.state.snapshot()["downloads"]]
    assert ranges[-1]

    # base64: decoded while streaming, verified against the binary checksum.
    b64_part = tmp_path / ".notes.b64.part"
    result = await fetch_to_part(
        lambda o, v: opener(o, v, Encoding.BASE64),
        b64_part,
        expected_checksum=out.checksum,
        expected_size=out.size,
        verify=VerifyMode.IF_PRESENT,
        resume=False,
    )
    assert result.verdict == "verified"
    await api.cancel_job(job.id)  # completed: 409, which is not an error
