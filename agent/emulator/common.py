"""Shared HTTP helpers: the `{"message"}` error type, JSON replies, auth with both header
families, body parsing. Handlers raise `ApiError`; the middleware turns it into a response.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from agent.emulator.config import FaultSpec
from agent.emulator.processor import Processor
from agent.emulator.state import EmulatorState, Job

STATE_KEY = web.AppKey("emulator_state", EmulatorState)
PROCESSOR_KEY = web.AppKey("emulator_processor", Processor)
#: Faults drawn for the current request, by kind.
FAULTS_KEY = web.RequestKey("emulator_faults", dict[str, FaultSpec])

KEY_HEADERS = ("X-Api2convert-Api-Key", "X-Oc-Api-Key")
TOKEN_HEADERS = ("X-Api2convert-Token", "X-Oc-Token")
PASSWORD_HEADERS = ("X-Api2convert-Download-Password", "X-Oc-Download-Password")
PASSWORD_RE = re.compile(r"^[ -~]{0,65000}$")
INVALID_KEY = "Invalid api key"


class ApiError(Exception):
    """An HTTP error answered as `{"message": …}` (plus `code` when the API has one)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        body: dict[str, Any] = {"message": self.message}
        if self.code is not None:
            body["code"] = self.code
        return json_response(body, status=self.status, headers=self.headers)


def json_response(
    data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(data, ensure_ascii=False).encode("utf-8"),
        status=status,
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


def state_of(request: web.Request) -> EmulatorState:
    return request.app[STATE_KEY]


def processor_of(request: web.Request) -> Processor:
    return request.app[PROCESSOR_KEY]


def origin(request: web.Request) -> str:
    """The public origin the client used (from the Host header), e.g. `http://127.0.0.1:8080`."""
    return f"{request.scheme}://{request.host}"


def _first_header(request: web.Request, names: tuple[str, ...]) -> str | None:
    for name in names:
        value = request.headers.get(name)  # CIMultiDict: any case matches
        if value is not None:
            return value.strip()
    return None


def key_is_valid(request: web.Request) -> bool:
    key = _first_header(request, KEY_HEADERS)
    if not key:
        return False
    expected = state_of(request).config.api_key
    return expected is None or key == expected


def require_key(request: web.Request) -> None:
    if not key_is_valid(request):
        raise ApiError(401, INVALID_KEY)


def token_of(request: web.Request) -> str | None:
    return _first_header(request, TOKEN_HEADERS) or None


def find_job(request: web.Request, job_id: str | None = None) -> Job:
    """The job named in the path, if the key is valid or the token is the job's own."""
    job_id = job_id if job_id is not None else request.match_info["job_id"]
    has_key = key_is_valid(request)
    token = token_of(request)
    if not has_key and token is None:
        raise ApiError(401, INVALID_KEY)
    job = state_of(request).jobs.get(job_id)
    if job is None:
        raise ApiError(404, "The specified job does not exists.")
    if not has_key and token != job.token:
        raise ApiError(401, "Invalid token for this job")
    return job


async def read_json(request: web.Request) -> Any:
    """The JSON body; 400 with the API's code 8 when it is empty, 400 when it is malformed."""
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "The JSON body is empty", code=8)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"Malformed JSON body: {exc}") from exc


def read_object(value: Any, name: str) -> dict[str, Any]:
    """An object field; `[]` is accepted as an empty object (the API's PHP quirk)."""
    if value is None or value == []:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, f"`{name}` must be an object")
    return value


def read_bool(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ApiError(400, f"`{name}` must be a boolean")
    return value


def read_passwords(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(
        isinstance(p, str) and PASSWORD_RE.match(p) for p in value
    ):
        raise ApiError(400, "`download_passwords` must be a list of printable ASCII strings")
    return list(value)


def too_large_message(limit: int) -> str:
    """The 402 message of an input above the contract's size limit (it names the limit)."""
    return f"The file exceeds the input size limit of your contract ({limit} bytes)"


def too_many_inputs_message(limit: int) -> str:
    """The 402 message (and inline input error) of an input past the contract's input count."""
    return (
        f"The number of inputs for this job has been exceeded (your contract allows {limit}); "
        "the file was discarded"
    )


def check_input_count(request: web.Request, job: Job) -> None:
    """402 when the job already holds as many inputs as the contract allows."""
    limit = state_of(request).config.max_inputs
    if len(job.inputs) >= limit:
        raise ApiError(402, too_many_inputs_message(limit))


def too_many_requests(request: web.Request) -> ApiError:
    retry_after = state_of(request).config.retry_after
    headers = {"Retry-After": _seconds(retry_after)} if retry_after is not None else {}
    return ApiError(429, "Too many concurrent requests", headers=headers)


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def check_capacity(request: web.Request) -> None:
    """402 when the credit budget is used up, 429 at the concurrent-job limit."""
    state = state_of(request)
    if state.credits_remaining is not None and state.credits_remaining <= 0:
        raise ApiError(402, "The request exceeded the contract limits. Payment may be required.")
    limit = state.config.max_concurrent_jobs
    if limit is not None and state.active_jobs() >= limit:
        raise too_many_requests(request)
