"""The dashboard's security model: token on every request, Host check, no CORS, CSRF header on
POSTs, loopback only, a private runtime file that goes away with the agent."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from dash_helpers import JSON_POST, dash, running_agent

from agent.control import Control, runtime_path
from agent.emulator import RunningEmulator

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]

ROUTES = [
    ("GET", "/"),
    ("GET", "/api/status"),
    ("GET", "/api/events"),
    ("GET", "/api/tickets/1"),
    ("GET", "/metrics"),
    ("POST", "/api/pause"),
    ("POST", "/api/resume"),
    ("POST", "/api/retry"),
    ("POST", "/api/cancel"),
    ("POST", "/api/rescan"),
    ("POST", "/api/stop"),
    ("GET", "/no/such/page"),
]


def _no_cors(resp: aiohttp.ClientResponse) -> None:
    cors = [h for h in resp.headers if h.lower().startswith("access-control-")]
    assert cors == [], f"{resp.method} {resp.url.path} sent CORS headers {cors}"


async def test_every_route_refuses_a_request_without_the_token(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    async with running_agent(tmp_path, emu.base_url) as agent, aiohttp.ClientSession() as s:
        base = dash(agent).url.rstrip("/")  # type: ignore[union-attr]
        for method, path in ROUTES:
            async with s.request(method, base + path, headers=JSON_POST) as r:
                assert r.status == 401, (method, path, r.status)
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
                _no_cors(r)
        assert agent.scheduler is not None and not agent.scheduler.paused


async def test_a_wrong_token_is_refused_in_every_form(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    async with running_agent(tmp_path, emu.base_url) as agent, aiohttp.ClientSession() as s:
        d = dash(agent)
        base = d.url.rstrip("/")  # type: ignore[union-attr]
        wrong = "x" + d.token[1:]
        tries = [
            {"headers": {"Authorization": f"Bearer {wrong}"}},
            {"params": {"token": wrong}},
            {"headers": {"Cookie": f"convert_agent_{d.port}={wrong}"}},
        ]
        for kwargs in tries:
            async with s.get(base + "/api/status", **kwargs) as r:  # type: ignore[arg-type]
                assert r.status == 403, kwargs
                assert "token" not in await r.text() or wrong not in await r.text()
        async with s.post(
            base + "/api/pause", headers={"Authorization": f"Bearer {wrong}", **JSON_POST}
        ) as r:
            assert r.status == 403
        assert agent.scheduler is not None and not agent.scheduler.paused


async def test_the_url_token_becomes_an_httponly_samesite_cookie(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    async with running_agent(tmp_path, emu.base_url) as agent:
        d = dash(agent)
        jar = aiohttp.CookieJar(unsafe=True)  # cookies for an IP address host
        async with aiohttp.ClientSession(cookie_jar=jar) as s:
            async with s.get(d.open_url, allow_redirects=False) as r:  # type: ignore[arg-type]
                assert r.status == 303 and r.headers["Location"] == "/"
                cookie = r.headers["Set-Cookie"]
                assert f"convert_agent_{d.port}={d.token}" in cookie
                assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
                assert "Path=/" in cookie
            # The cookie alone now opens the page and the API.
            async with s.get(d.url) as r:  # type: ignore[arg-type]
                assert r.status == 200 and r.content_type == "text/html"
                page = await r.text()
                assert d.token not in page
                csp = r.headers["Content-Security-Policy"]
                assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
                assert r.headers["X-Frame-Options"] == "DENY"
                assert r.headers["Referrer-Policy"] == "no-referrer"
                _no_cors(r)
            async with s.get(d.url + "api/status") as r:  # type: ignore[operator]
                assert r.status == 200


async def test_a_foreign_host_header_is_refused_even_with_the_token(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    """DNS rebinding: evil.example resolving to 127.0.0.1 must not reach the API."""
    emu = await make_emulator()
    async with running_agent(tmp_path, emu.base_url) as agent, aiohttp.ClientSession() as s:
        d = dash(agent)
        base = d.url.rstrip("/")  # type: ignore[union-attr]
        auth = {"Authorization": f"Bearer {d.token}"}
        for host in (f"evil.example:{d.port}", "127.0.0.1", f"127.0.0.1:{d.port + 1}"):
            async with s.get(base + "/api/status", headers={**auth, "Host": host}) as r:
                assert r.status == 403, host
                _no_cors(r)
        async with s.post(
            base + "/api/pause", headers={**auth, **JSON_POST, "Host": f"evil.example:{d.port}"}
        ) as r:
            assert r.status == 403
        for host in (f"127.0.0.1:{d.port}", f"localhost:{d.port}"):
            async with s.get(base + "/api/status", headers={**auth, "Host": host}) as r:
                assert r.status == 200, host
        assert agent.scheduler is not None and not agent.scheduler.paused


async def test_no_cors_headers_even_for_a_preflight_or_a_foreign_origin(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    async with running_agent(tmp_path, emu.base_url) as agent, aiohttp.ClientSession() as s:
        d = dash(agent)
        base = d.url.rstrip("/")  # type: ignore[union-attr]
        auth = {"Authorization": f"Bearer {d.token}"}
        evil = {"Origin": "http://evil.example"}
        async with s.options(
            base + "/api/pause",
            headers={
                **evil,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        ) as r:
            assert r.status in (401, 403, 405)
            _no_cors(r)
        async with s.get(base + "/api/status", headers={**auth, **evil}) as r:
            assert r.status == 200
            _no_cors(r)
        async with s.get(base + "/metrics", headers={**auth, **evil}) as r:
            _no_cors(r)


async def test_a_post_without_the_csrf_header_or_from_another_site_is_refused(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    async with running_agent(tmp_path, emu.base_url) as agent, aiohttp.ClientSession() as s:
        d = dash(agent)
        base = d.url.rstrip("/")  # type: ignore[union-attr]
        auth = {"Authorization": f"Bearer {d.token}"}
        refused = [
            {**auth},  # no header, no body
            {**auth, "Content-Type": "application/x-www-form-urlencoded"},  # a plain <form>
            {**auth, "Content-Type": "text/plain", "X-Requested-With": "XMLHttpRequest"},
            {**auth, **JSON_POST, "Origin": "http://evil.example"},
            {**auth, **JSON_POST, "Sec-Fetch-Site": "cross-site"},
        ]
        for headers in refused:
            async with s.post(base + "/api/pause", headers=headers, data=b"name=x") as r:
                assert r.status == 403, headers
                assert "refused" in (await r.json())["error"]
        assert agent.scheduler is not None and not agent.scheduler.paused
        # Either of the two marks is enough.
        async with s.post(
            base + "/api/pause", headers={**auth, "X-Requested-With": "convert-agent"}
        ) as r:
            assert r.status == 200
        async with s.post(base + "/api/resume", headers=auth, json={}) as r:
            assert r.status == 200
        async with s.post(
            base + "/api/pause",
            headers={**auth, **JSON_POST, "Origin": f"http://127.0.0.1:{d.port}"},
        ) as r:
            assert r.status == 200
        assert agent.scheduler.paused


async def test_it_listens_on_loopback_only_on_the_configured_port(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with running_agent(tmp_path, emu.base_url, dashboard={"port": port}) as agent:
        d = dash(agent)
        assert d.url == f"http://127.0.0.1:{port}/"
        runner = d._runner
        assert runner is not None
        addresses = {a for a in runner.addresses}
        assert addresses == {("127.0.0.1", port)}


async def test_a_taken_port_leaves_the_agent_running_without_a_dashboard(
    tmp_path: Path, make_emulator: MakeEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    emu = await make_emulator()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with running_agent(tmp_path, emu.base_url, dashboard={"port": port}) as agent:
            assert agent.dashboard is None
            assert not runtime_path(agent.cfg.state.path).exists()
    assert "dashboard.port" in caplog.text


async def test_dashboard_disabled_means_no_server_and_no_runtime_file(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    async with running_agent(tmp_path, emu.base_url, dashboard={"enabled": False}) as agent:
        assert agent.dashboard is None
        assert not runtime_path(agent.cfg.state.path).exists()


async def test_runtime_file_is_private_and_removed_on_stop(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    async with running_agent(tmp_path, emu.base_url) as agent:
        d = dash(agent)
        path = runtime_path(agent.cfg.state.path)
        assert path.parent == tmp_path / "state" and path.name.endswith(".dashboard.json")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        info = json.loads(path.read_text())
        assert info == {"url": d.url, "port": d.port, "token": d.token, "pid": os.getpid()}
        assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
        found = Control.find(agent.cfg.state.path)
        assert found is not None and found.token == d.token
        status = await asyncio.to_thread(found.call, "GET", "/api/status")  # the CLI's way in
        assert status["paused"] is False
    assert not path.exists()


async def test_stop_leaves_a_runtime_file_another_agent_wrote(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    async with running_agent(tmp_path, emu.base_url) as agent:
        path = runtime_path(agent.cfg.state.path)
        other = {"url": "http://127.0.0.1:1/", "port": 1, "token": "someone-else", "pid": 1}
        path.write_text(json.dumps(other))
    assert json.loads(path.read_text()) == other
