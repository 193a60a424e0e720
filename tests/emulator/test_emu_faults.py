"""Every fault switch does what it says, is deterministic under the seed, and can be set by
config, by the CLI syntax and by the control endpoint."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import aiohttp
import pytest
from emu_helpers import KEY_HEADERS, Client, MakeClient, png_bytes

from agent.emulator import ConfigError, FaultSpec, parse_fault


async def _set(client: Client, *faults: dict[str, Any]) -> None:
    await client.control("faults", {"faults": list(faults)})


async def _done_output(client: Client) -> tuple[dict[str, Any], dict[str, Any]]:
    done = await client.convert(png_bytes((80, 80)), "a.png", "png")
    return done, done["output"][0]


async def test_error_fault_answers_5xx_before_the_handler(client: Client) -> None:
    await _set(client, {"route": "create", "kind": "error", "param": 503, "count": 1})
    body = await client.create(expect=503)
    assert body["message"]
    state = await client.control("state")
    assert state["jobs_created"] == 0
    await client.create()  # count=1: the next one goes through
    faults = await client.control("faults")
    assert faults[0]["hits"] == 1


async def test_error_after_fault_commits_then_fails(client: Client) -> None:
    await _set(client, {"route": "create", "kind": "error_after", "count": 1})
    await client.create(expect=502)
    assert (await client.control("state"))["jobs_created"] == 1


async def test_error_fault_429_carries_retry_after(make_client: MakeClient) -> None:
    client = await make_client(retry_after=3, faults=(parse_fault("get:error=429"),))
    job = await client.create()
    async with client.session.get(f"{client.base}/jobs/{job['id']}", headers=KEY_HEADERS) as r:
        assert r.status == 429 and r.headers["Retry-After"] == "3"


async def test_html_fault_answers_200_html(client: Client) -> None:
    job = await client.create()
    await _set(client, {"route": "get", "kind": "html"})
    async with client.session.get(f"{client.base}/jobs/{job['id']}", headers=KEY_HEADERS) as r:
        assert r.status == 200 and r.content_type == "text/html"


async def test_drop_fault_closes_the_connection(client: Client) -> None:
    job = await client.create()
    # No count: aiohttp itself retries an idempotent request once after a disconnect.
    await _set(client, {"route": "get", "kind": "drop"})
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.get(job["id"])
    await client.control("faults", [])
    assert (await client.get(job["id"]))["id"] == job["id"]


async def test_drop_after_fault_starts_the_job_but_loses_the_answer(client: Client) -> None:
    job = await client.create()
    await client.upload(job, png_bytes())
    await _set(client, {"route": "start", "kind": "drop_after"})
    with pytest.raises(aiohttp.ClientConnectionError):
        await client.start(job["id"])
    assert (await client.wait(job["id"]))["status"]["code"] == "completed"
    assert (await client.control("state"))["jobs"][0]["starts"] == 1


async def test_truncate_fault_sends_fewer_bytes_than_content_length(client: Client) -> None:
    _, output = await _done_output(client)
    await _set(client, {"route": "download", "kind": "truncate", "count": 1})
    async with client.session.get(output["uri"]) as r:
        assert r.status == 200 and int(r.headers["Content-Length"]) == output["size"]
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    status, body, _ = await client.download(output["uri"])
    assert status == 200 and len(body) == output["size"]


async def test_truncate_fault_works_on_json_routes(client: Client) -> None:
    job = await client.create()
    await _set(client, {"route": "get", "kind": "truncate"})
    async with client.session.get(f"{client.base}/jobs/{job['id']}", headers=KEY_HEADERS) as r:
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()


async def test_slow_fault_spreads_the_body_over_time(client: Client) -> None:
    _, output = await _done_output(client)
    await _set(client, {"route": "download", "kind": "slow", "param": 0.3})
    started = time.monotonic()
    status, body, _ = await client.download(output["uri"])
    assert time.monotonic() - started >= 0.25
    assert status == 200 and hashlib.md5(body).hexdigest() == output["checksum"]


async def test_corrupt_fault_keeps_size_checksum_and_etag(client: Client) -> None:
    _, output = await _done_output(client)
    await _set(client, {"route": "download", "kind": "corrupt", "count": 1})
    status, body, headers = await client.download(output["uri"])
    assert status == 200 and len(body) == output["size"]
    assert hashlib.md5(body).hexdigest() != output["checksum"]
    assert headers["ETag"] == f'"{output["checksum"]}"'
    _, clean, _ = await client.download(output["uri"])
    assert hashlib.md5(clean).hexdigest() == output["checksum"]


async def test_unknown_status_fault_for_a_while(client: Client) -> None:
    done, _ = await _done_output(client)
    await _set(client, {"route": "get", "kind": "unknown_status", "count": 2})
    codes = [(await client.get(done["id"]))["status"]["code"] for _ in range(3)]
    assert codes == ["something_new", "something_new", "completed"]


async def test_expire_and_overuse_faults_refuse_downloads(client: Client) -> None:
    done, output = await _done_output(client)
    await _set(client, {"route": "download", "kind": "overuse", "count": 1})
    assert (await client.download(output["uri"]))[0] == 403
    assert (await client.get(done["id"]))["output"][0]["status"] == "overuse"
    done, output = await _done_output(client)
    await _set(client, {"route": "download", "kind": "expire", "count": 1})
    assert (await client.download(output["uri"]))[0] == 410
    assert (await client.get(done["id"]))["output"][0]["status"] == "expired"


async def test_job_fail_fault(client: Client) -> None:
    await _set(client, {"route": "job", "kind": "fail"})
    job = await client.convert(png_bytes(), "a.png", "png")
    assert job["status"]["code"] == "failed" and job["errors"][0]["code"] == 6005


async def test_completed_with_no_outputs_fault(client: Client) -> None:
    await _set(client, {"route": "job", "kind": "no_outputs"})
    job = await client.convert(png_bytes(), "a.png", "png")
    assert job["status"]["code"] == "completed" and job["output"] == []


async def test_hostile_names_fault(make_client: MakeClient) -> None:
    client = await make_client(faults=(FaultSpec("job", "hostile_names"),))
    names = []
    for _ in range(10):
        job = await client.convert(png_bytes(), "a.png", "png")
        output = job["output"][0]
        names.append(output["filename"])
        status, body, _ = await client.download(output["uri"])
        assert status == 200, (output["filename"], output["uri"])
        assert hashlib.md5(body).hexdigest() == output["checksum"]
    assert any(n.startswith("../") for n in names) and any(n.startswith("/") for n in names)
    assert any("\x00" in n for n in names) and any(len(n) > 255 for n in names)
    assert "CON" in names and "" in names


async def test_rate_is_deterministic_under_the_seed(make_client: MakeClient) -> None:
    async def pattern(seed: int) -> list[int]:
        client = await make_client(seed=seed, faults=(parse_fault("create:error=500:0.5"),))
        statuses = []
        for _ in range(30):
            async with client.session.post(
                f"{client.base}/jobs", json={"conversion": [{"target": "png"}]}, headers=KEY_HEADERS
            ) as r:
                statuses.append(r.status)
        return statuses

    first, again, other = await pattern(1), await pattern(1), await pattern(2)
    assert first == again != other
    assert 5 < first.count(500) < 25 and set(first) == {201, 500}


async def test_control_endpoint_lists_adds_and_clears_faults(client: Client) -> None:
    url = f"{client.emulator.origin}/_emulator/faults"
    await _set(client, {"route": "get", "kind": "drop"})
    async with client.session.post(
        url, json={"faults": [{"route": "list", "kind": "html"}], "replace": False}
    ) as r:
        assert [f["kind"] for f in await r.json()] == ["drop", "html"]
    async with client.session.post(url, json=[{"route": "nowhere", "kind": "drop"}]) as r:
        assert r.status == 400 and "route" in (await r.json())["message"]
    async with client.session.delete(url) as r:
        assert r.status == 204
    assert await client.control("faults") == []


def test_fault_cli_syntax() -> None:
    assert parse_fault("download:truncate") == FaultSpec("download", "truncate")
    assert parse_fault("create:error=503:0.25:4") == FaultSpec("create", "error", 0.25, 4, 503.0)
    assert parse_fault("get:unknown_status::3") == FaultSpec("get", "unknown_status", 1.0, 3)
    for bad in ("download", "x:truncate", "get:nope", "get:drop:2", "get:drop:a", "get:slow=-1"):
        with pytest.raises(ConfigError):
            parse_fault(bad)


async def test_control_routes_are_never_faulted(client: Client) -> None:
    await _set(client, {"route": "any", "kind": "drop"})
    assert (await client.control("state"))["faults"][0]["kind"] == "drop"
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.create()
