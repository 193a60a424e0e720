"""The emulator counts every start request, every POST /jobs per Idempotency-Key and every upload
per input, so a test can assert "exactly once" rather than "at least once"; and a repeated start
can be answered 409 (option, or switched at run time)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from emu_helpers import Client, MakeClient, png_bytes

from agent.emulator import EmulatorConfig
from agent.emulator.config import ConfigError


def job_row(state: dict[str, Any], job_id: str) -> dict[str, Any]:
    rows = [j for j in state["jobs"] if j["id"] == job_id]
    assert len(rows) == 1
    return rows[0]


async def test_every_start_request_is_counted_not_only_real_starts(client: Client) -> None:
    job = await client.create()
    await client.start(job["id"])  # no input yet: process:true kept, no real start
    await client.upload(job, png_bytes())  # starts now (process is true)
    await client.wait(job["id"])
    await client.start(job["id"])  # repeat on a started job: a silent 200
    await client.start(job["id"])

    row = job_row(await client.control("state"), job["id"])
    assert row["starts"] == 1
    assert row["start_requests"] == 3


async def test_refused_and_process_false_patches(make_client: MakeClient) -> None:
    client = await make_client(processing_seconds=5)
    job = await client.create()
    async with client.session.patch(
        f"{client.base}/jobs/{job['id']}", json={"process": False}, headers=client.key_headers
    ) as r:
        assert r.status == 200
    row = job_row(await client.control("state"), job["id"])
    assert row["start_requests"] == 0  # process:false is not a start request
    async with client.session.delete(
        f"{client.base}/jobs/{job['id']}", headers=client.key_headers
    ) as r:
        assert r.status == 204
    await client.start(job["id"], expect=409)  # canceled: refused, still counted
    assert job_row(await client.control("state"), job["id"])["start_requests"] == 1


async def test_start_request_lost_by_drop_after_is_counted(client: Client) -> None:
    job = await client.create()
    await client.upload(job, png_bytes())
    await client.control("faults", [{"route": "start", "kind": "drop_after", "count": 1}])
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.start(job["id"])
    row = job_row(await client.control("state"), job["id"])
    assert (row["starts"], row["start_requests"]) == (1, 1)


async def test_drop_before_the_handler_is_not_a_start_request(client: Client) -> None:
    job = await client.create()
    await client.control("faults", [{"route": "start", "kind": "drop", "count": 1}])
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.start(job["id"])
    assert job_row(await client.control("state"), job["id"])["start_requests"] == 0


async def test_create_requests_are_counted_per_key_and_without_one(client: Client) -> None:
    first = await client.create(headers={"Idempotency-Key": "k1"})
    again = await client.create(headers={"Idempotency-Key": "k1"})
    other = await client.create(headers={"Idempotency-Key": "k2"})
    bare = await client.create()
    await client.create()

    state = await client.control("state")
    assert first["id"] == again["id"] != other["id"]
    assert state["create_requests_by_key"] == {"k1": 2, "k2": 1}
    assert state["idempotency_keys"] == {"k1": 2, "k2": 1}  # the older name still works
    assert state["create_requests_without_key"] == 2
    assert state["create_requests"] == 5 and state["jobs_created"] == 4
    assert job_row(state, first["id"])["idempotency_key"] == "k1"
    assert job_row(state, other["id"])["idempotency_key"] == "k2"
    assert job_row(state, bare["id"])["idempotency_key"] is None


async def test_ignored_idempotency_shows_one_job_per_request(make_client: MakeClient) -> None:
    client = await make_client(ignore_idempotency=True)
    for _ in range(3):
        await client.create(headers={"Idempotency-Key": "same"})
    state = await client.control("state")
    assert state["create_requests_by_key"] == {"same": 3}
    assert [j["idempotency_key"] for j in state["jobs"]] == ["same"] * 3


async def test_uploads_are_counted_per_input_and_per_uuid_or_name(client: Client) -> None:
    job = await client.create()
    for _ in range(3):  # one input, two repeats de-duplicated by the uuid
        status, _ = await client.upload(job, png_bytes(), "a.png", {"x-oc-upload-uuid": "u-1"})
        assert status == 200
    for _ in range(2):  # no uuid: every request is a new input
        status, _ = await client.upload(job, png_bytes(), "b.png")
        assert status == 200

    row = job_row(await client.control("state"), job["id"])
    assert [(i["filename"], i["uploads"]) for i in row["inputs"]] == [
        ("a.png", 3),
        ("b.png", 1),
        ("b.png", 1),
    ]
    assert row["upload_requests"] == {"u-1": 3, "b.png": 2}


async def test_repeated_start_answers_409_with_a_message_when_configured(
    make_client: MakeClient,
) -> None:
    client = await make_client(patch_started="conflict")
    job = await client.create()
    await client.upload(job, png_bytes())
    await client.start(job["id"])
    body = await client.start(job["id"], expect=409)
    assert isinstance(body["message"], str) and body["message"]
    row = job_row(await client.control("state"), job["id"])
    assert (row["starts"], row["start_requests"]) == (1, 2)


async def test_conflict_on_restart_can_be_switched_at_run_time(client: Client) -> None:
    job = await client.create()
    await client.upload(job, png_bytes())
    await client.start(job["id"])
    await client.start(job["id"])  # default: 200 no-op
    assert await client.control("config", {"patch_started": "conflict"}) == {
        "patch_started": "conflict",
        "ignore_idempotency": False,
    }
    await client.start(job["id"], expect=409)
    await client.control("config", {"patch_started": "noop"})
    await client.start(job["id"])
    assert job_row(await client.control("state"), job["id"])["start_requests"] == 4


@pytest.mark.parametrize(
    "body", [{"patch_started": "maybe"}, {"ignore_idempotency": "yes"}, {"api_key": "x"}, []]
)
async def test_config_endpoint_refuses_bad_values(client: Client, body: Any) -> None:
    async with client.session.post(f"{client.emulator.origin}/_emulator/config", json=body) as r:
        assert r.status == 400 and (await r.json())["message"]


async def test_reset_forgets_the_counts(client: Client) -> None:
    await client.create(headers={"Idempotency-Key": "k"})
    await client.create()
    await client.control("reset", {})
    state = await client.control("state")
    assert state["create_requests_by_key"] == {} and state["create_requests_without_key"] == 0


def test_patch_started_is_validated() -> None:
    with pytest.raises(ConfigError):
        EmulatorConfig(patch_started="always")  # type: ignore[arg-type]
