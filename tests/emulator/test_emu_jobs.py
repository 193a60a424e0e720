"""Job lifecycle, auth, errors and real conversions."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from emu_helpers import (
    KEY,
    KEY_HEADERS,
    Client,
    MakeClient,
    animated_gif,
    multipage_tiff,
    png_bytes,
)
from PIL import Image

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")


async def test_created_job_has_documented_fields(client: Client) -> None:
    job = await client.create({"conversion": [{"target": "png"}], "process": False})
    assert job["type"] == "job"
    assert job["status"]["code"] == "incomplete" and job["status"]["info"]
    assert re.fullmatch(r"[a-z0-9]{32}", job["token"])
    assert job["server"] == f"{client.emulator.origin}/v2/dl/web{job['server'][-1]}"
    assert job["conversion"][0]["id"] and job["conversion"][0]["target"] == "png"
    assert job["output"] == [] and job["errors"] == [] and job["spent"] == 0
    assert job["callback"] == "" and job["notify_status"] is False
    assert TIMESTAMP.match(job["created_at"]) and TIMESTAMP.match(job["modified_at"])
    assert "download_passwords" not in job


async def test_status_walks_queued_processing_completed(make_client: MakeClient) -> None:
    client = await make_client(processing_seconds=0.4)
    job = await client.create()
    await client.upload(job, png_bytes())
    started = await client.start(job["id"])
    seen = [started["status"]["code"]]
    while seen[-1] not in ("completed", "failed"):
        await asyncio.sleep(0.02)
        code = (await client.get(job["id"]))["status"]["code"]
        if code != seen[-1]:
            seen.append(code)
    assert seen == ["queued", "processing", "completed"]
    assert [j["starts"] for j in (await client.control("state"))["jobs"]] == [1]


async def test_png_to_jpg_is_a_real_jpeg_with_md5_checksum(client: Client) -> None:
    job = await client.convert(png_bytes((30, 20)), "pic.png", "jpg")
    (output,) = job["output"]
    assert output["filename"] == "pic.jpg" and output["content_type"] == "image/jpeg"
    status, body, headers = await client.download(output["uri"])
    assert status == 200
    assert hashlib.md5(body).hexdigest() == output["checksum"] == headers["ETag"].strip('"')
    assert len(body) == output["size"]
    assert Image.open(io.BytesIO(body)).format == "JPEG"


@pytest.mark.parametrize(
    ("target", "fmt"),
    [("png", "PNG"), ("webp", "WEBP"), ("gif", "GIF"), ("bmp", "BMP"), ("tiff", "TIFF")],
)
async def test_image_targets_are_real(client: Client, target: str, fmt: str) -> None:
    job = await client.convert(png_bytes(), "a.png", target)
    _, body, _ = await client.download(job["output"][0]["uri"])
    assert Image.open(io.BytesIO(body)).format == fmt


async def test_resize_option(client: Client) -> None:
    job = await client.create({"conversion": [{"target": "png", "options": {"width": 12}}]})
    await client.upload(job, png_bytes((24, 16)))
    await client.start(job["id"])
    done = await client.wait(job["id"])
    _, body, _ = await client.download(done["output"][0]["uri"])
    assert Image.open(io.BytesIO(body)).size == (12, 8)


async def test_animated_gif_to_png_yields_one_output_per_frame(client: Client) -> None:
    job = await client.convert(animated_gif(3), "anim.gif", "png")
    names = [o["filename"] for o in job["output"]]
    assert names == ["anim-1.png", "anim-2.png", "anim-3.png"]
    colors = []
    for output in job["output"]:
        _, body, _ = await client.download(output["uri"])
        colors.append(Image.open(io.BytesIO(body)).convert("RGB").getpixel((0, 0)))
    assert len(set(colors)) == 3


async def test_multipage_tiff_to_jpg_splits_pages(client: Client) -> None:
    job = await client.convert(multipage_tiff(2), "scan.tiff", "jpg")
    assert [o["filename"] for o in job["output"]] == ["scan-1.jpg", "scan-2.jpg"]


async def test_text_targets(client: Client) -> None:
    text = b"a < b\r\nline 2\n"
    html_job = await client.convert(text, "notes.txt", "html")
    _, body, _ = await client.download(html_job["output"][0]["uri"])
    assert (
        b"<pre>a &lt; b\nline 2\n</pre>" in body
        and html_job["output"][0]["filename"] == "notes.html"
    )
    txt_job = await client.convert(text, "notes.txt", "txt")
    _, body, _ = await client.download(txt_job["output"][0]["uri"])
    assert body == b"a < b\nline 2\n"
    md_job = await client.convert(text, "notes.txt", "md")
    _, body, _ = await client.download(md_job["output"][0]["uri"])
    assert body.startswith(b"# notes\n\n```\n")


async def test_bin_copies_the_input_byte_for_byte(client: Client) -> None:
    job = await client.convert(b"\x00any bytes\xff", "data.dat", "bin")
    (output,) = job["output"]
    assert output["filename"] == "data.bin"
    assert output["content_type"] == "application/octet-stream"
    _, body, _ = await client.download(output["uri"])
    assert body == b"\x00any bytes\xff"


async def test_unconvertible_input_fails_with_documented_error_shape(client: Client) -> None:
    job = await client.convert(b"not an image", "x.txt", "png")
    assert job["status"]["code"] == "failed" and job["output"] == []
    (error,) = job["errors"]
    assert error["source"] == "conversion" and error["code"] == 6005
    assert error["id_source"] == job["conversion"][0]["id"] and error["message"]


async def test_failed_conversion_becomes_a_warning_when_told_not_to_fail(client: Client) -> None:
    job = await client.create(
        {"conversion": [{"target": "png"}, {"target": "txt"}], "fail_on_conversion_error": False}
    )
    await client.upload(job, b"plain text", "a.txt")
    await client.start(job["id"])
    done = await client.wait(job["id"])
    assert done["status"]["code"] == "completed"
    assert [o["filename"] for o in done["output"]] == ["a.txt"]
    assert done["warnings"][0]["code"] == 6005 and done["errors"] == []


# -- remote inputs ----------------------------------------------------------------------------
@pytest.fixture
async def remote_origin() -> AsyncIterator[str]:
    async def serve(request: web.Request) -> web.Response:
        if request.match_info["name"] == "missing.png":
            return web.Response(status=404)
        return web.Response(body=png_bytes((9, 9)), content_type="image/png")

    app = web.Application()
    app.router.add_get("/files/{name}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_remote_input_is_fetched_over_http(client: Client, remote_origin: str) -> None:
    body = {
        "conversion": [{"target": "gif"}],
        "process": True,
        "input": [{"type": "remote", "source": f"{remote_origin}/files/remote.png"}],
    }
    job = await client.create(body)
    assert job["status"]["code"] in ("downloading", "queued")
    done = await client.wait(job["id"])
    assert done["status"]["code"] == "completed"
    assert done["input"][0]["filename"] == "remote.png" and done["input"][0]["status"] == "ready"
    assert done["output"][0]["filename"] == "remote.gif"


async def test_remote_input_via_post_input_then_start(client: Client, remote_origin: str) -> None:
    job = await client.create()
    url = f"{client.base}/jobs/{job['id']}/input"
    source = f"{remote_origin}/files/x.png"
    async with client.session.post(url, json={"source": source}, headers=KEY_HEADERS) as r:
        assert r.status == 201
        assert (await r.json())["type"] == "remote"
    await client.start(job["id"])
    assert (await client.wait(job["id"]))["status"]["code"] == "completed"


async def test_unreachable_remote_input_fails_the_job(client: Client, remote_origin: str) -> None:
    source = f"{remote_origin}/files/missing.png"
    job = await client.create(
        {"conversion": [{"target": "jpg"}], "process": True, "input": [{"source": source}]}
    )
    done = await client.wait(job["id"])
    assert done["status"]["code"] == "failed"
    (error,) = done["errors"]
    assert (error["source"], error["code"]) == ("input", 404)
    assert error["id_source"] == done["input"][0]["id"] and done["input"][0]["status"] == "failed"


async def test_cloud_input_is_accepted_then_fails_with_code_99(client: Client) -> None:
    descriptor = {"type": "cloud", "source": "amazons3", "credentials": {"secret": "s"}}
    job = await client.create(
        {"conversion": [{"target": "jpg"}], "process": True, "input": [descriptor]}
    )
    assert job["input"][0]["credentials"] == {}
    done = await client.wait(job["id"])
    assert done["status"]["code"] == "failed" and done["errors"][0]["code"] == 99


# -- auth and errors --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [
        {"X-Api2convert-Api-Key": KEY},
        {"x-oc-api-key": KEY},
        {"X-OC-API-KEY": KEY},
        {"x-api2convert-api-key": KEY},
    ],
)
async def test_both_key_header_families_in_any_case(
    make_client: MakeClient, headers: dict[str, str]
) -> None:
    client = await make_client(api_key=KEY)
    async with client.session.get(f"{client.base}/jobs", headers=headers) as r:
        assert r.status == 204


async def test_wrong_key_is_401_with_message(make_client: MakeClient) -> None:
    client = await make_client(api_key=KEY)
    for headers in ({"X-Api2convert-Api-Key": "nope"}, {}):
        async with client.session.post(
            f"{client.base}/jobs", json={"conversion": [{"target": "png"}]}, headers=headers
        ) as r:
            assert r.status == 401
            assert (await r.json())["message"]


async def test_token_grants_its_own_job_only(client: Client) -> None:
    job = await client.create()
    other = await client.create()
    url = f"{client.base}/jobs/{job['id']}"
    for name in ("X-Api2convert-Token", "x-oc-token"):
        async with client.session.get(url, headers={name: job["token"]}) as r:
            assert r.status == 200
    async with client.session.get(url, headers={"X-Api2convert-Token": other["token"]}) as r:
        assert r.status == 401 and (await r.json())["message"]
    async with client.session.get(f"{client.base}/jobs", headers={"x-oc-token": job["token"]}) as r:
        assert [j["id"] for j in await r.json()] == [job["id"]]


async def test_unknown_job_is_404_with_message(client: Client) -> None:
    for method in ("GET", "PATCH", "DELETE"):
        async with client.session.request(
            method, f"{client.base}/jobs/no-such-job", json={}, headers=KEY_HEADERS
        ) as r:
            assert r.status == 404 and (await r.json())["message"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"", 400),
        (b"[1, 2]", 400),
        (b'{"conversion": [{"category": "image"}]}', 400),
        (b'{"conversion": []}', 400),
        (b'{"process": true}', 400),
        (b'{"conversion": [{"target": "../etc"}]}', 422),
        (b'{"conversion": [{"target": "png", "options": {"width": "big"}}]}', 400),
    ],
)
async def test_bad_create_bodies_get_documented_status_and_message(
    client: Client, body: bytes, status: int
) -> None:
    headers = {**KEY_HEADERS, "Content-Type": "application/json"}
    async with client.session.post(f"{client.base}/jobs", data=body, headers=headers) as r:
        assert r.status == status
        assert (await r.json())["message"]
    assert (await client.control("state"))["jobs_created"] == 0


async def test_malformed_patch_is_400(client: Client) -> None:
    job = await client.create()
    async with client.session.patch(
        f"{client.base}/jobs/{job['id']}", data=b"{", headers=KEY_HEADERS
    ) as r:
        assert r.status == 400 and (await r.json())["message"]


# -- start, cancel, list ----------------------------------------------------------------------
async def test_patch_start_twice_counts_one_start(client: Client) -> None:
    job = await client.create()
    await client.upload(job, png_bytes())
    await client.start(job["id"])
    await client.wait(job["id"])
    again = await client.start(job["id"])  # documented choice: 200 no-op
    assert again["status"]["code"] == "completed"
    assert (await client.control("state"))["jobs"][0]["starts"] == 1


async def test_patch_start_on_started_job_can_be_409(make_client: MakeClient) -> None:
    client = await make_client(patch_started="conflict")
    job = await client.create()
    await client.upload(job, png_bytes())
    await client.start(job["id"])
    await client.start(job["id"], expect=409)


async def test_process_true_job_starts_on_first_upload(client: Client) -> None:
    job = await client.create({"conversion": [{"target": "png"}], "process": True})
    assert job["status"]["code"] == "incomplete"
    status, _ = await client.upload(job, png_bytes())
    assert status == 200
    assert (await client.wait(job["id"]))["status"]["code"] == "completed"
    status, body = await client.upload(job, png_bytes())
    assert status == 409 and body["message"]


async def test_delete_cancels_and_then_conflicts(make_client: MakeClient) -> None:
    client = await make_client(processing_seconds=5)
    job = await client.create()
    await client.upload(job, png_bytes())
    await client.start(job["id"])
    url = f"{client.base}/jobs/{job['id']}"
    async with client.session.delete(url, headers=KEY_HEADERS) as r:
        assert r.status == 204
    assert (await client.get(job["id"]))["status"]["code"] == "canceled"
    async with client.session.delete(url, headers=KEY_HEADERS) as r:
        assert r.status == 409 and (await r.json())["message"]


async def test_list_pages_of_50_with_x_count_and_204(client: Client) -> None:
    async with client.session.get(f"{client.base}/jobs", headers=KEY_HEADERS) as r:
        assert r.status == 204 and r.headers["X-Count"] == "0"
    ids = [(await client.create())["id"] for _ in range(55)]
    pages = []
    for page in (1, 2, 3):
        async with client.session.get(
            f"{client.base}/jobs", params={"page": str(page)}, headers=KEY_HEADERS
        ) as r:
            assert r.headers["X-Count"] == "55"
            pages.append([j["id"] for j in await r.json()] if r.status == 200 else [])
    assert [len(p) for p in pages] == [50, 5, 0]
    assert sorted(pages[0] + pages[1]) == sorted(ids)
    async with client.session.get(
        f"{client.base}/jobs", params={"status": "completed"}, headers=KEY_HEADERS
    ) as r:
        assert r.status == 204


async def test_inputs_outputs_history_statuses_conversions(client: Client) -> None:
    job = await client.convert(png_bytes(), "a.png", "webp")
    base = f"{client.base}/jobs/{job['id']}"
    async with client.session.get(f"{base}/input", headers=KEY_HEADERS) as r:
        assert [i["filename"] for i in await r.json()] == ["a.png"]
    async with client.session.get(f"{base}/output", headers=KEY_HEADERS) as r:
        assert [o["filename"] for o in await r.json()] == ["a.webp"]
    async with client.session.get(f"{base}/history", headers=KEY_HEADERS) as r:
        assert [h["status"] for h in await r.json()] == [
            "incomplete",
            "queued",
            "processing",
            "completed",
        ]
    async with client.session.get(f"{client.base}/statuses") as r:
        codes = [s["code"] for s in await r.json()]
        assert {"incomplete", "downloading", "queued", "processing", "completed"} <= set(codes)
    async with client.session.get(f"{client.base}/conversions", params={"target": "png"}) as r:
        assert [c["target"] for c in await r.json()] == ["png"]
