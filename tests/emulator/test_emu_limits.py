"""The service's limits: download counter and overuse, expiry, base64, Range, passwords, credits,
concurrency, idempotency and upload de-duplication."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from datetime import datetime
from typing import Any

import pytest
from emu_helpers import KEY_HEADERS, Client, MakeClient, png_bytes


async def _output(client: Client, **job: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    done = await client.convert(png_bytes((64, 64)), "a.png", "png", **job)
    return done, done["output"][0]


async def test_eleventh_download_is_refused_and_status_reads_overuse(client: Client) -> None:
    done, output = await _output(client)
    for n in range(1, 11):
        status, body, _ = await client.download(output["uri"])
        assert status == 200 and hashlib.md5(body).hexdigest() == output["checksum"]
        assert (await client.get(done["id"]))["output"][0]["downloads_counter"] == n
    status, body, _ = await client.download(output["uri"])
    assert status == 403
    assert (await client.get(done["id"]))["output"][0]["status"] == "overuse"
    downloads = (await client.control("state"))["downloads"]
    assert [d["counted"] for d in downloads] == [True] * 10 + [False]


async def test_download_limit_is_configurable(make_client: MakeClient) -> None:
    client = await make_client(download_limit=2, overuse_status=429)
    _, output = await _output(client)
    statuses = [(await client.download(output["uri"]))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]


async def test_base64_encoding_returns_the_file_base64_encoded(client: Client) -> None:
    _, output = await _output(client)
    status, body, _ = await client.download(output["uri"] + "?encoding=base64")
    _, raw, _ = await client.download(output["uri"])
    assert status == 200 and base64.b64decode(body) == raw


async def test_range_returns_206_with_the_right_bytes(client: Client) -> None:
    _, output = await _output(client)
    _, full, headers = await client.download(output["uri"])
    assert headers["Accept-Ranges"] == "bytes"
    size = len(full)
    cases = {"bytes=0-9": full[:10], "bytes=10-": full[10:], "bytes=-5": full[-5:]}
    for spec, expected in cases.items():
        status, body, hdrs = await client.download(output["uri"], {"Range": spec})
        assert status == 206 and body == expected
        assert hdrs["Content-Range"].endswith(f"/{size}")
    status, _, hdrs = await client.download(output["uri"], {"Range": f"bytes={size}-"})
    assert status == 416 and hdrs["Content-Range"] == f"bytes */{size}"
    # Every 200/206 counts as a download; the 416 does not.
    assert (await client.control("state"))["jobs"][0]["outputs"][0]["downloads_counter"] == 4


async def test_if_range_mismatch_serves_the_full_file(client: Client) -> None:
    _, output = await _output(client)
    _, full, headers = await client.download(output["uri"])
    status, body, _ = await client.download(
        output["uri"], {"Range": "bytes=5-", "If-Range": headers["ETag"]}
    )
    assert status == 206 and body == full[5:]
    status, body, _ = await client.download(
        output["uri"], {"Range": "bytes=5-", "If-Range": headers["Last-Modified"]}
    )
    assert status == 206 and body == full[5:]
    status, body, _ = await client.download(
        output["uri"], {"Range": "bytes=5-", "If-Range": '"stale"'}
    )
    assert status == 200 and body == full


async def test_ignore_range_always_serves_200(make_client: MakeClient) -> None:
    client = await make_client(ignore_range=True)
    _, output = await _output(client)
    status, body, headers = await client.download(output["uri"], {"Range": "bytes=0-3"})
    assert status == 200 and len(body) == output["size"] and headers["Accept-Ranges"] == "none"


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Api2convert-Download-Password": "right"},
        {"x-oc-download-password": "wrong,right"},
        {"Cookie": "x-oc-download-password=other,right"},
        {"Cookie": "X-Api2convert-Download-Password=right"},
    ],
)
async def test_download_password_by_header_or_cookie(
    client: Client, headers: dict[str, str]
) -> None:
    _, output = await _output(client, download_passwords=["right"])
    assert (await client.download(output["uri"]))[0] == 403
    assert (await client.download(output["uri"], {"x-oc-download-password": "bad"}))[0] == 403
    assert (await client.download(output["uri"], headers))[0] == 200


async def test_outputs_expire_after_24_hours_of_emulated_time(client: Client) -> None:
    done, output = await _output(client)
    await client.control("clock", {"advance": 23 * 3600})
    assert (await client.download(output["uri"]))[0] == 200
    await client.control("clock", {"advance": 3600})
    assert (await client.download(output["uri"]))[0] == 410
    assert (await client.get(done["id"]))["output"][0]["status"] == "expired"


async def test_clock_speed_compresses_the_day(make_client: MakeClient) -> None:
    client = await make_client(clock_speed=86400 * 50, start_time=datetime(2024, 1, 1))
    job = await client.create()
    assert job["created_at"].startswith("2024-01-01")
    done = await client.convert(png_bytes(), "a.png", "png")
    # 50 emulated days pass per wall second: the next poll already sees the output expired.
    await asyncio.sleep(0.05)
    assert (await client.get(done["id"]))["output"][0]["status"] == "expired"


async def test_credits_run_out_with_402(make_client: MakeClient) -> None:
    client = await make_client(credits=1)
    await client.convert(png_bytes(), "a.png", "png")
    async with client.session.post(
        f"{client.base}/jobs", json={"conversion": [{"target": "png"}]}, headers=KEY_HEADERS
    ) as r:
        assert r.status == 402 and (await r.json())["message"]


async def test_concurrency_limit_is_429_with_retry_after(make_client: MakeClient) -> None:
    client = await make_client(max_concurrent_jobs=1, retry_after=7, processing_seconds=5)
    first = await client.create()
    await client.upload(first, png_bytes())
    await client.start(first["id"])
    second = await client.create(expect=429)
    assert second["message"]
    async with client.session.post(
        f"{client.base}/jobs", json={"conversion": [{"target": "png"}]}, headers=KEY_HEADERS
    ) as r:
        assert r.status == 429 and r.headers["Retry-After"] == "7"


async def test_start_over_the_limit_is_429(make_client: MakeClient) -> None:
    client = await make_client(max_concurrent_jobs=1, processing_seconds=5)
    first, second = await client.create(), await client.create()
    for job in (first, second):
        await client.upload(job, png_bytes())
    await client.start(first["id"])
    await client.start(second["id"], expect=429)
    assert (await client.get(second["id"]))["status"]["code"] == "incomplete"


async def test_idempotency_key_returns_the_original_job(client: Client) -> None:
    first = await client.create(headers={"Idempotency-Key": "abc"})
    again = await client.create(headers={"Idempotency-Key": "abc"})
    other = await client.create(headers={"Idempotency-Key": "xyz"})
    assert again["id"] == first["id"] != other["id"]
    state = await client.control("state")
    assert state["jobs_created"] == 2 and state["create_requests"] == 3
    assert state["idempotency_keys"] == {"abc": 2, "xyz": 1}


async def test_ignore_idempotency_creates_duplicates(make_client: MakeClient) -> None:
    client = await make_client(ignore_idempotency=True)
    first = await client.create(headers={"Idempotency-Key": "abc"})
    again = await client.create(headers={"Idempotency-Key": "abc"})
    assert first["id"] != again["id"]


async def test_upload_uuid_deduplicates_uploads(client: Client) -> None:
    job = await client.create()
    headers = {"x-oc-upload-uuid": "u-1"}
    status, first = await client.upload(job, png_bytes(), "a.png", headers)
    status2, second = await client.upload(job, png_bytes(), "a.png", headers)
    assert status == status2 == 200 and first["id"] == second["id"]
    assert len((await client.get(job["id"]))["input"]) == 1
    uploads = (await client.control("state"))["uploads"]
    assert [(u["uuid"], u["deduplicated"]) for u in uploads] == [("u-1", False), ("u-1", True)]
    assert uploads[0]["size"] == len(png_bytes()) and uploads[0]["filename"] == "a.png"


async def test_upload_accepts_key_and_rejects_wrong_token(client: Client) -> None:
    job = await client.create()
    status, body = await client.upload(job, b"x", "a.txt", {"X-Api2convert-Token": "bad"})
    assert status == 401 and body["message"]
    bare = {**job, "token": ""}
    status, _ = await client.upload(bare, b"x", "a.txt", {"x-oc-api-key": "any"})
    assert status == 200


async def test_upload_to_another_jobs_server_is_404(client: Client) -> None:
    job = await client.create()
    n = int(job["server"].rsplit("web", 1)[1])
    wrong = {**job, "server": job["server"].rsplit("web", 1)[0] + f"web{n % 9 + 1}"}
    status, body = await client.upload(wrong, png_bytes())
    assert status == 404 and body["message"]


async def test_upload_without_file_field_is_400(client: Client) -> None:
    job = await client.create()
    async with client.session.post(
        f"{job['server']}/upload-file/{job['id']}",
        data={"other": "x"},
        headers={"X-Api2convert-Token": job["token"]},
    ) as r:
        assert r.status == 400 and (await r.json())["message"]


async def test_deleted_output_is_disabled_and_404(client: Client) -> None:
    done, output = await _output(client)
    async with client.session.delete(
        f"{client.base}/jobs/{done['id']}/output/{output['id']}", headers=KEY_HEADERS
    ) as r:
        assert r.status == 204
    assert (await client.download(output["uri"]))[0] == 404
    assert (await client.get(done["id"]))["output"][0]["status"] == "disabled"
