"""Property-based fuzzing: request bodies and headers of any shape never make the emulator
answer 500 or crash (no fault is configured here)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from emu_helpers import KEY_HEADERS, ThreadedEmulator, png_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.emulator import EmulatorConfig

FIELDS = [
    "conversion",
    "target",
    "category",
    "options",
    "input",
    "type",
    "source",
    "process",
    "callback",
    "download_passwords",
    "fail_on_input_error",
    "notify_status",
    "limits",
    "output_target",
    "engine",
    "filename",
    "width",
    "quality",
    "credentials",
]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(
        ["png", "jpg", "remote", "base64", "cloud", "", "auto", "http://127.0.0.1:9/x"]
    )
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)
job_like = st.fixed_dictionaries(
    {},
    optional={
        "conversion": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "target": json_values,
                    "category": json_values,
                    "options": json_values,
                    "output_target": json_values,
                },
            )
            | json_values,
            max_size=3,
        )
        | json_values,
        "input": st.lists(
            st.fixed_dictionaries(
                {}, optional={"type": json_values, "source": json_values, "engine": json_values}
            ),
            max_size=2,
        )
        | json_values,
        "process": json_values,
        "download_passwords": json_values,
        "callback": json_values,
        "limits": json_values,
        "fail_on_input_error": json_values,
    },
)
bodies = (
    job_like.map(lambda v: json.dumps(v).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=40)
)
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def emulator() -> Iterator[ThreadedEmulator]:
    running = ThreadedEmulator(EmulatorConfig(remote_timeout=1.0, download_limit=10**9))
    yield running
    snapshot = running.snapshot()
    running.close()
    assert snapshot["internal_errors"] == []
    assert all(r["status"] < 500 for r in snapshot["requests"])


@pytest.fixture(scope="module")
def http(emulator: ThreadedEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.emulator.base_url, headers=KEY_HEADERS, timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def job(http: httpx.Client) -> dict[str, Any]:
    response = http.post("/jobs", json={"conversion": [{"target": "png"}], "process": False})
    assert response.status_code == 201
    created: dict[str, Any] = response.json()
    return created


def _assert_sane(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert isinstance(response.json()["message"], str)


@FUZZ
@given(body=bodies)
def test_fuzz_create_job(http: httpx.Client, body: bytes) -> None:
    _assert_sane(http.post("/jobs", content=body, headers={"Content-Type": "application/json"}))


@FUZZ
@given(body=bodies)
def test_fuzz_patch_job(http: httpx.Client, body: bytes) -> None:
    # A fresh staged job each time, so a successful start does not end the fuzzing.
    job = http.post("/jobs", json={"conversion": [{"target": "png"}], "process": False}).json()
    _assert_sane(http.patch(f"/jobs/{job['id']}", content=body))


@FUZZ
@given(body=bodies)
def test_fuzz_post_input(http: httpx.Client, job: dict[str, Any], body: bytes) -> None:
    _assert_sane(http.post(f"/jobs/{job['id']}/input", content=body))


@FUZZ
@given(
    body=st.binary(max_size=200),
    content_type=st.sampled_from(
        ["multipart/form-data; boundary=xyz", "multipart/form-data", "application/json", ""]
    ),
)
def test_fuzz_upload(
    http: httpx.Client, job: dict[str, Any], body: bytes, content_type: str
) -> None:
    url = f"{job['server']}/upload-file/{job['id']}"
    response = http.post(url, content=body, headers={"Content-Type": content_type})
    _assert_sane(response)


@FUZZ
@given(
    range_header=st.text(max_size=30) | st.from_regex(r"bytes=\d{0,4}-\d{0,4}", fullmatch=True),
    if_range=st.none() | st.text(max_size=10),
    query=st.dictionaries(st.sampled_from(["encoding", "page", "x"]), st.text(max_size=8)),
)
def test_fuzz_download_headers(
    http: httpx.Client,
    emulator: ThreadedEmulator,
    range_header: str,
    if_range: str | None,
    query: dict[str, str],
) -> None:
    uri = _sample_output(http)
    headers = {"Range": range_header}
    if if_range is not None:
        headers["If-Range"] = if_range
    try:
        response = http.get(uri, headers=headers, params=query)
    except (httpx.LocalProtocolError, UnicodeEncodeError):
        return  # the client refuses to send that header; nothing reached the server
    assert response.status_code < 500
    listing = http.get("/jobs", params=query)
    assert listing.status_code < 500


_OUTPUT: list[str] = []


def _sample_output(http: httpx.Client) -> str:
    """A completed job's output uri with a huge download limit (made once)."""
    if not _OUTPUT:
        job = http.post("/jobs", json={"conversion": [{"target": "png"}], "process": False}).json()
        files = {"file": ("a.png", png_bytes())}
        http.post(f"{job['server']}/upload-file/{job['id']}", files=files)
        http.patch(f"/jobs/{job['id']}", json={"process": True})
        for _ in range(500):
            done = http.get(f"/jobs/{job['id']}").json()
            if done["status"]["code"] == "completed":
                _OUTPUT.append(done["output"][0]["uri"])
                break
    return _OUTPUT[0]
