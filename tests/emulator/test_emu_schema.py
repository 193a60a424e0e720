"""Every route's responses validate against the OpenAPI document where it has a schema.

Known places where the OpenAPI document and the documented API disagree (the emulator follows
the contract, and these tests say so instead of bending it):
- `format: date-time` means RFC 3339 with an offset, but the documented timestamps have no
  timezone (`2017-08-15T17:20:55`). Formats are therefore not enforced; the documented shape is
  asserted separately.
- `OutputFile.status` lists only `enabled`/`disabled`; the docs add `expired` and `overuse`,
  which the emulator serves (`test_output_status_enum_is_narrower_than_the_docs`).
- POST /jobs "204 The JSON body is empty" cannot carry its Error body; the emulator answers 400
  with `code: 8`. A target that is not a valid extension is 422 (listed by the issue, not by OA).
- Starting past the credit or concurrency limit by PATCH answers 402/429, a malformed PATCH or
  input body 400, and POST input on a started job 409: statuses OA lists on sibling routes only.
- `/presets` without a valid key is 401, which OA lists for stats and contracts only.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from emu_helpers import KEY_HEADERS, Client, MakeClient, closed_port_url, png_bytes
from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS30Validator

SPEC = json.loads((Path(__file__).parent / "fixtures" / "api2convert.openapi.json").read_text())
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")
#: (method, path, status) the emulator answers although OA does not list them (see docstring).
DEVIATIONS = {
    ("post", "/jobs", 422),
    ("patch", "/jobs/{job_id}", 400),
    ("patch", "/jobs/{job_id}", 402),
    ("patch", "/jobs/{job_id}", 429),
    ("post", "/jobs/{job_id}/input", 400),
    ("post", "/jobs/{job_id}/input", 409),
    # presets need the key like every account route (OA lists no 401 there)
    ("get", "/presets", 401),
    ("post", "/presets", 401),
    ("get", "/presets/{preset_id}", 401),
}


def _validator(schema: dict[str, Any]) -> OAS30Validator:
    return OAS30Validator({"allOf": [schema], "components": SPEC["components"]})


def _schema(method: str, path: str, status: int) -> dict[str, Any] | None:
    response = SPEC["paths"][path][method]["responses"].get(str(status))
    if response is None:
        assert (method, path, status) in DEVIATIONS, f"{method} {path} {status} not in OA"
        return {"$ref": "#/components/schemas/Error"}
    content = response.get("content", {}).get("application/json")
    return content["schema"] if content else None


class Recorder:
    """Calls the emulator and validates each answer against OA's schema for that route."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.seen: set[tuple[str, str, int]] = set()

    async def call(
        self,
        method: str,
        template: str,
        *,
        expect: int,
        ids: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        url = self.client.base + template.format(**(ids or {}))
        async with self.client.session.request(
            method, url, headers=KEY_HEADERS if headers is None else headers, **kwargs
        ) as r:
            raw = await r.read()
            assert r.status == expect, (method, template, r.status, raw[:200])
        self.seen.add((method.lower(), template, expect))
        schema = _schema(method.lower(), template, expect)
        if schema is None:
            assert raw == b""
            return None
        body = json.loads(raw)
        _validator(schema).validate(body)
        _check_timestamps(body)
        return body


def _check_timestamps(value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("created_at", "modified_at"):
                assert TIMESTAMP.match(item), item
            _check_timestamps(item)
    elif isinstance(value, list):
        for item in value:
            _check_timestamps(item)


async def test_every_route_validates(make_client: MakeClient) -> None:
    client = await make_client(api_key="secret", credits=2, max_concurrent_jobs=5)
    rec = Recorder(client)
    key = {"X-Api2convert-Api-Key": "secret"}
    bad = {"X-Api2convert-Api-Key": "wrong"}

    await rec.call("GET", "/jobs", expect=204, headers=key)
    await rec.call("GET", "/jobs", expect=401, headers=bad)
    job = await rec.call(
        "POST",
        "/jobs",
        expect=201,
        headers=key,
        json={"conversion": [{"target": "png"}], "process": False},
    )
    ids = {"job_id": job["id"]}
    await rec.call("POST", "/jobs", expect=400, headers=key, data=b"{oops")
    await rec.call(
        "POST", "/jobs", expect=422, headers=key, json={"conversion": [{"target": "a b"}]}
    )
    await rec.call(
        "POST", "/jobs", expect=401, headers=bad, json={"conversion": [{"target": "png"}]}
    )
    await rec.call("GET", "/jobs", expect=200, headers=key)
    await rec.call("GET", "/jobs/{job_id}", expect=200, ids=ids, headers=key)
    await rec.call("GET", "/jobs/{job_id}", expect=404, ids={"job_id": "nope"}, headers=key)
    await rec.call("GET", "/jobs/{job_id}", expect=401, ids=ids, headers=bad)

    # Inputs: an upload (not in OA, parsed as InputFile by the SDKs) and a remote descriptor.
    client.key_headers = key
    status, uploaded = await client.upload(job, png_bytes(), "a.png")
    assert status == 200
    _validator({"$ref": "#/components/schemas/InputFile"}).validate(uploaded)
    await rec.call("GET", "/jobs/{job_id}/input", expect=200, ids=ids, headers=key)
    await rec.call("GET", "/jobs/{job_id}/input", expect=404, ids={"job_id": "x"}, headers=key)
    await rec.call("GET", "/jobs/{job_id}/input", expect=401, ids=ids, headers=bad)
    await rec.call(
        "GET",
        "/jobs/{job_id}/input/{file_id}",
        expect=200,
        ids={**ids, "file_id": uploaded["id"]},
        headers=key,
    )
    await rec.call(
        "POST",
        "/jobs/{job_id}/input",
        expect=201,
        ids=ids,
        headers=key,
        json={
            "type": "base64",
            "source": base64.b64encode(png_bytes()).decode(),
            "filename": "b.png",
        },
    )
    await rec.call("POST", "/jobs/{job_id}/input", expect=400, ids=ids, headers=key, json=[])
    await rec.call(
        "POST",
        "/jobs/{job_id}/input",
        expect=404,
        ids={"job_id": "x"},
        headers=key,
        json={"source": "s"},
    )

    await rec.call("PATCH", "/jobs/{job_id}", expect=400, ids=ids, headers=key, data=b"[")
    await rec.call("PATCH", "/jobs/{job_id}", expect=401, ids=ids, headers=bad, json={})
    await rec.call("PATCH", "/jobs/{job_id}", expect=404, ids={"job_id": "x"}, headers=key, json={})
    await rec.call(
        "PATCH", "/jobs/{job_id}", expect=200, ids=ids, headers=key, json={"process": True}
    )
    await client.wait(job["id"])
    await rec.call(
        "POST", "/jobs/{job_id}/input", expect=409, ids=ids, headers=key, json={"source": "s"}
    )
    done = await rec.call("GET", "/jobs/{job_id}", expect=200, ids=ids, headers=key)
    assert done["status"]["code"] == "completed" and len(done["output"]) == 2
    outputs = await rec.call("GET", "/jobs/{job_id}/output", expect=200, ids=ids, headers=key)
    await rec.call("GET", "/jobs/{job_id}/output", expect=404, ids={"job_id": "x"}, headers=key)
    out_ids = {**ids, "file_id": outputs[0]["id"]}
    await rec.call("GET", "/jobs/{job_id}/output/{file_id}", expect=200, ids=out_ids, headers=key)
    await rec.call("GET", "/jobs/{job_id}/history", expect=200, ids=ids, headers=key)
    await rec.call("GET", "/jobs/{job_id}/threads", expect=200, ids=ids, headers=key)
    await rec.call(
        "DELETE", "/jobs/{job_id}/output/{file_id}", expect=204, ids=out_ids, headers=key
    )
    await rec.call("DELETE", "/jobs/{job_id}", expect=409, ids=ids, headers=key)
    await rec.call("DELETE", "/jobs/{job_id}", expect=404, ids={"job_id": "x"}, headers=key)
    await rec.call("DELETE", "/jobs/{job_id}", expect=401, ids=ids, headers=bad)
    await rec.call(
        "PATCH", "/jobs/{job_id}", expect=200, ids=ids, headers=key, json={"process": True}
    )

    second = await rec.call(
        "POST", "/jobs", expect=201, headers=key, json={"conversion": [{"target": "jpg"}]}
    )
    await rec.call(
        "DELETE", "/jobs/{job_id}", expect=204, ids={"job_id": second["id"]}, headers=key
    )
    await rec.call(
        "PATCH",
        "/jobs/{job_id}",
        expect=409,
        ids={"job_id": second["id"]},
        headers=key,
        json={"process": True},
    )

    await rec.call("GET", "/statuses", expect=200, headers={})
    await rec.call("GET", "/conversions", expect=200, headers={})
    await rec.call("GET", "/contracts", expect=200, headers=key)
    await rec.call("GET", "/contracts", expect=401, headers=bad)

    # Credits: the budget of 2 is spent by one started job plus one more.
    third = await rec.call(
        "POST",
        "/jobs",
        expect=201,
        headers=key,
        json={"conversion": [{"target": "png"}], "process": False},
    )
    await client.upload(third, png_bytes(), "b.png")
    await rec.call(
        "PATCH",
        "/jobs/{job_id}",
        expect=200,
        ids={"job_id": third["id"]},
        headers=key,
        json={"process": True},
    )
    await rec.call(
        "POST", "/jobs", expect=402, headers=key, json={"conversion": [{"target": "png"}]}
    )

    # The account's routes: presets, statistics, contracts.
    await client.wait(third["id"])
    presets = await rec.call("GET", "/presets", expect=200, headers=key)
    assert {p["scope"] for p in presets} == {"public"}
    await rec.call("GET", "/presets", expect=401, headers=bad)
    made = await rec.call(
        "POST",
        "/presets",
        expect=201,
        headers=key,
        json={"name": "thumbs", "target": "png", "options": {"width": 64}},
    )
    assert made["scope"] == "private" and made["options"] == {"width": 64}
    await rec.call("POST", "/presets", expect=400, headers=key, json={"name": "no target"})
    await rec.call("POST", "/presets", expect=401, headers=bad, json={"name": "x"})
    pid = {"preset_id": made["id"]}
    await rec.call("GET", "/presets/{preset_id}", expect=200, ids=pid, headers=key)
    await rec.call("GET", "/presets/{preset_id}", expect=401, ids=pid, headers=bad)
    public = {"preset_id": presets[0]["id"]}  # "only works for personal presets"
    await rec.call("GET", "/presets/{preset_id}", expect=404, ids=public, headers=key)
    patched = await rec.call(
        "PATCH", "/presets/{preset_id}", expect=200, ids=pid, headers=key, json={"name": "t2"}
    )
    assert patched["name"] == "t2" and patched["target"] == "png"
    await rec.call(
        "PATCH", "/presets/{preset_id}", expect=400, ids=pid, headers=key, json={"options": 3}
    )
    filtered = await rec.call(
        "GET", "/presets", expect=200, headers=key, params={"target": "png", "filter": "t2"}
    )
    assert [p["id"] for p in filtered] == [made["id"]]
    await rec.call("DELETE", "/presets/{preset_id}", expect=204, ids=pid, headers=key)
    await rec.call("DELETE", "/presets/{preset_id}", expect=404, ids=pid, headers=key)
    await rec.call(
        "PATCH", "/presets/{preset_id}", expect=404, ids=pid, headers=key, json={"name": "x"}
    )
    today = job["created_at"][:10]
    for unit, period in (("day", today), ("month", today[:7]), ("year", today[:4])):
        template = f"/stats/{unit}/{{{unit}}}/{{filter}}"
        for which in ("single", "all"):
            rows = await rec.call(
                "GET", template, expect=200, ids={unit: period, "filter": which}, headers=key
            )
            assert rows == [
                {
                    "date": today,
                    "filter": which,
                    "jobs": 3,
                    "completed": 2,
                    "failed": 0,
                    "credits": 2,
                }
            ], rows
        for wrong in ("20x1", {"day": "2026-1-01", "month": "2026-1", "year": "026"}[unit]):
            await rec.call(
                "GET", template, expect=400, ids={unit: wrong, "filter": "all"}, headers=key
            )
        await rec.call(
            "GET", template, expect=400, ids={unit: period, "filter": "some"}, headers=key
        )
        await rec.call(
            "GET", template, expect=401, ids={unit: period, "filter": "all"}, headers=bad
        )
    quiet_day = {"day": "1999-01-01", "filter": "all"}
    quiet = await rec.call(
        "GET", "/stats/day/{day}/{filter}", expect=200, ids=quiet_day, headers=key
    )
    assert quiet == []
    (contract,) = await rec.call("GET", "/contracts", expect=200, headers=key)
    assert contract["credits"] == 0 and contract["max_input_bytes"] == 256 * 1024 * 1024

    # Every OA route this emulator implements was exercised with its success status.
    for route in [
        ("get", "/jobs", 200),
        ("post", "/jobs", 201),
        ("get", "/jobs/{job_id}", 200),
        ("patch", "/jobs/{job_id}", 200),
        ("delete", "/jobs/{job_id}", 204),
        ("get", "/jobs/{job_id}/input", 200),
        ("post", "/jobs/{job_id}/input", 201),
        ("get", "/jobs/{job_id}/output", 200),
        ("get", "/statuses", 200),
        ("get", "/conversions", 200),
        ("get", "/presets", 200),
        ("post", "/presets", 201),
        ("get", "/presets/{preset_id}", 200),
        ("patch", "/presets/{preset_id}", 200),
        ("delete", "/presets/{preset_id}", 204),
        ("get", "/stats/day/{day}/{filter}", 200),
        ("get", "/stats/month/{month}/{filter}", 200),
        ("get", "/stats/year/{year}/{filter}", 200),
        ("get", "/contracts", 200),
    ]:
        assert route in rec.seen


async def test_rate_limit_and_server_errors_validate(make_client: MakeClient) -> None:
    client = await make_client(max_concurrent_jobs=0, retry_after=1)
    rec = Recorder(client)
    body = await rec.call("POST", "/jobs", expect=429, json={"conversion": [{"target": "png"}]})
    assert body["message"] == "Too many concurrent requests"
    await client.control("faults", [{"route": "create", "kind": "error", "param": 500}])
    await rec.call("POST", "/jobs", expect=500, json={"conversion": [{"target": "png"}]})


async def test_output_status_enum_is_narrower_than_the_docs(client: Client) -> None:
    done = await client.convert(png_bytes(), "a.png", "png")
    await client.control("clock", {"advance": 25 * 3600})
    expired = (await client.get(done["id"]))["output"][0]
    assert expired["status"] == "expired"  # documented (api-contract §4), not in OA's enum
    with pytest.raises(ValidationError):
        _validator({"$ref": "#/components/schemas/OutputFile"}).validate(expired)


async def test_catalog_jobs_and_the_input_count_validate(make_client: MakeClient) -> None:
    """Operation jobs (a combined output with metadata, a failed unknown target), the catalog
    with its option schemas, and the 402 of an input past the contract's count."""
    client = await make_client(max_inputs=2)
    rec = Recorder(client)
    rows = await rec.call("GET", "/conversions", expect=200)
    assert any(r["target"] == "compare-image" for r in rows)
    job = await rec.call(
        "POST",
        "/jobs",
        expect=201,
        json={
            "conversion": [{"category": "operation", "target": "compare-image"}],
            "process": False,
        },
    )
    ids = {"job_id": job["id"]}
    for name, colour in (("a.png", "red"), ("b.png", "blue")):
        status, _ = await client.upload(job, png_bytes((6, 6), colour), name)
        assert status == 200
    await rec.call(
        "POST",
        "/jobs/{job_id}/input",
        expect=402,
        ids=ids,
        json={"type": "base64", "source": base64.b64encode(png_bytes()).decode()},
    )
    await rec.call("PATCH", "/jobs/{job_id}", expect=200, ids=ids, json={"process": True})
    await client.wait(job["id"])
    done = await rec.call("GET", "/jobs/{job_id}", expect=200, ids=ids)
    (output,) = done["output"]
    assert len(output["source"]["input"]) == 2 and output["metadata"]["different_pixels"] == 36
    unknown = await rec.call(
        "POST",
        "/jobs",
        expect=201,
        json={"conversion": [{"target": "xyz"}], "input": [{"type": "base64", "source": "AA=="}]},
    )
    failed = await client.wait(unknown["id"])
    await rec.call("GET", "/jobs/{job_id}", expect=200, ids={"job_id": failed["id"]})
    assert failed["status"]["code"] == "failed" and failed["errors"][0]["code"] == 6005
    # an unreachable URL fails its input (status failed) and the job with input code 404
    remote = {"type": "remote", "source": closed_port_url()}
    gone = await rec.call(
        "POST",
        "/jobs",
        expect=201,
        json={"conversion": [{"target": "png"}], "input": [remote], "process": True},
    )
    await client.wait(gone["id"])
    gone_ids = {"job_id": gone["id"]}
    unreachable = await rec.call("GET", "/jobs/{job_id}", expect=200, ids=gone_ids)
    (problem,) = unreachable["errors"]
    assert (problem["source"], problem["code"]) == ("input", 404), problem
    inputs = await rec.call("GET", "/jobs/{job_id}/input", expect=200, ids=gone_ids)
    assert [i["status"] for i in inputs] == ["failed"]
