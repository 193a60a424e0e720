"""What goes over the wire: secrets only to the origin they belong to, certificates always
checked, and error messages that never carry a secret back out.

Two loopback servers on two ports are two origins (scheme, host and port all count).
Defences: ``ApiClient._follow`` (manual redirects, the password dropped when the origin
changes), ``ApiClient._headers`` (the key only to the base URL's origin), aiohttp's default
certificate checks (never ``ssl=False``), ``ApiClient._error_for`` (secrets masked).
"""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.api import KEY_HEADER, PASSWORD_HEADER, TOKEN_HEADER, ApiClient
from agent.errors import AgentError, ApiRejected, ApiUnavailable, OutputUnavailable
from agent.models import Encoding, RemoteJob

KEY = "sec-api-key-1234567890abcdef"
PASSWORD = "dl-password-XYZ987"
TOKEN = "job-token-ABC123"
AGENT = Path(__file__).resolve().parents[2] / "agent"

Seen = list[tuple[str, dict[str, str]]]
StartServer = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> str:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        runners.append(runner)
        scheme = "https" if ssl_context else "http"
        return f"{scheme}://127.0.0.1:{runner.addresses[0][1]}"

    yield start  # type: ignore[misc]
    for r in runners:
        await r.cleanup()


def recorder(seen: Seen, handler: Any = None) -> web.Application:
    async def record(request: web.Request) -> web.StreamResponse:
        seen.append((request.path, dict(request.headers)))
        await request.read()
        if handler is not None:
            return await handler(request)  # type: ignore[no-any-return]
        return web.Response(body=b"the output bytes")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    return app


async def no_sleep(_: float) -> None:
    return None


# --------------------------------------------------------------------------- redirects


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_download_redirect_to_another_origin_never_carries_the_password(
    start_server: StartServer, status: int
) -> None:
    other_seen: Seen = []
    other = await start_server(recorder(other_seen))
    first_seen: Seen = []

    async def bounce(request: web.Request) -> web.StreamResponse:
        if request.path == "/out/1":
            return web.Response(status=status, headers={"Location": "/out/2"})  # same origin
        return web.Response(status=status, headers={"Location": f"{other}/storage/x"})

    first = await start_server(recorder(first_seen, bounce))
    api = ApiClient(first + "/v2", KEY, sleep=no_sleep)
    try:
        async with api.open_download(
            f"{first}/out/1", password=PASSWORD, encoding=Encoding.BINARY
        ) as stream:
            data = b"".join([c async for c in stream.chunks])
    finally:
        await api.close()
    assert data == b"the output bytes"
    # Both hops on the first origin carried the password; the other origin got nothing secret.
    assert [h.get(PASSWORD_HEADER) for _, h in first_seen] == [PASSWORD, PASSWORD]
    assert len(other_seen) == 1
    headers = {k.lower(): v for k, v in other_seen[0][1].items()}
    for secret in (PASSWORD, KEY, TOKEN):
        assert secret not in str(headers), headers
    assert not {k for k in headers if "api2convert" in k or k.startswith("x-oc")}


async def test_key_goes_only_to_the_base_origin_and_api_redirects_are_not_followed(
    start_server: StartServer,
) -> None:
    other_seen: Seen = []
    other = await start_server(recorder(other_seen))
    seen: Seen = []

    async def api_answer(request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/v2/jobs/"):
            return web.Response(status=302, headers={"Location": f"{other}/steal"})
        return web.json_response({"id": "in-1"})

    base = await start_server(recorder(seen, api_answer))
    api = ApiClient(base + "/v2", KEY, sleep=no_sleep, max_retries=0)
    try:
        with pytest.raises(ApiUnavailable):
            await api.get_job("J1")
        # An upload to a job server on another origin carries the job token, never the key.
        upload_seen: Seen = []

        async def input_ok(request: web.Request) -> web.StreamResponse:
            return web.json_response({"id": "in-1"})

        upload_server = await start_server(recorder(upload_seen, input_ok))
        # Whatever the call, an absolute URL on another origin never gets the key.
        await api._call("GET", f"{other}/probe", ok=(200,), expect_json=False)
        src = Path(__file__)
        job = RemoteJob(id="J1", token=TOKEN, server=upload_server)
        await api.upload_file(job, src, filename=src.name, upload_uuid="u-1")
    finally:
        await api.close()
    assert [p for p, _ in other_seen] == ["/probe"]  # the 302 on an API call was not followed
    assert KEY not in str(other_seen[0][1])
    assert seen[0][1].get(KEY_HEADER) == KEY
    _, headers = upload_seen[0]
    assert headers.get(TOKEN_HEADER) == TOKEN
    assert KEY not in str(headers)


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


async def test_https_server_with_an_untrusted_certificate_is_refused_and_says_why(
    start_server: Any, self_signed: ssl.SSLContext
) -> None:
    seen: Seen = []
    base = await start_server(recorder(seen), self_signed)
    assert base.startswith("https://")
    api = ApiClient(base + "/v2", KEY, sleep=no_sleep)
    try:
        with pytest.raises(ApiUnavailable) as info:
            await api.get_job("J1")
        with pytest.raises(AgentError) as dl:
            async with api.open_download(
                f"{base}/out", password=PASSWORD, encoding=Encoding.BINARY
            ) as stream:
                [c async for c in stream.chunks]
    finally:
        await api.close()
    assert seen == []  # no request got through: the key never left
    for err in (info.value, dl.value):
        assert "certificate" in err.message.lower(), err.message
        assert "never turns certificate checks off" in err.message
        assert KEY not in err.message and PASSWORD not in err.message


def test_no_code_turns_certificate_checks_off() -> None:
    """A grep over agent/: none of the ways to disable TLS verification appear anywhere."""
    forbidden = re.compile(
        r"ssl\s*=\s*False|verify_ssl\s*=\s*False|CERT_NONE|check_hostname\s*=\s*False"
        r"|_create_unverified_context|verify\s*=\s*False|PYTHONHTTPSVERIFY"
    )
    hits = [
        f"{p.relative_to(AGENT.parent)}:{n}: {line.strip()}"
        for p in AGENT.rglob("*.py")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if forbidden.search(line) and not line.lstrip().startswith("#")
    ]
    assert hits == []


# --------------------------------------------------------------------------- error messages


async def test_error_messages_never_echo_secrets_or_the_request_body(
    start_server: StartServer,
) -> None:
    """A server whose error ``message`` echoes what it was sent (headers, body) does not get
    the key, the job token, the download password or secret options into the agent's words."""

    async def echo(request: web.Request) -> web.StreamResponse:
        body = (await request.read()).decode(errors="replace")
        text = f"rejected {body} headers={dict(request.headers)}"
        status = 403 if request.path.startswith("/out") else 422
        return web.json_response({"message": text}, status=status)

    seen: Seen = []
    base = await start_server(recorder(seen, echo))
    api = ApiClient(base + "/v2", KEY, sleep=no_sleep, max_retries=0)
    option_secret = "s3-secret-access-key-000"
    errors: list[AgentError] = []
    try:
        with pytest.raises(ApiRejected) as create:
            await api.create_job(
                [
                    {
                        "target": "pdf",
                        "options": {"upload": {"secretAccessKey": option_secret, "n": [1]}},
                    }
                ],
                idempotency_key="idem-1",
            )
        errors.append(create.value)
        with pytest.raises(ApiRejected) as get:
            await api.get_job("J1", token=TOKEN)
        errors.append(get.value)
        with pytest.raises(OutputUnavailable) as dl:
            async with api.open_download(
                f"{base}/out/1", password=PASSWORD, encoding=Encoding.BINARY
            ):
                pass
        errors.append(dl.value)
    finally:
        await api.close()
    for err in errors:
        text = f"{err.message} {err!r} {err.to_dict()}"
        for secret in (KEY, TOKEN, PASSWORD, option_secret):
            assert secret not in text, (secret, text)
