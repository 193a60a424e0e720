"""The `/v2` control plane: jobs, inputs, outputs, statuses, conversions (the account's routes,
presets, stats and contracts, are in `account`).

Decisions where the contract is [UNDOC] (see docs/emulator.md):
- an empty body on POST/PATCH is 400 `{"code": 8, "message": "The JSON body is empty"}` (OA
  says 204, which cannot carry its own error body);
- a missing target is 400, a target that is not a lowercase word (`^[a-z0-9][a-z0-9-]{0,29}$`)
  422; a well-formed target the catalog lacks (or a category it is not in) fails the job later;
- PATCH `{"process": true}` on a job that already started is a 200 no-op (or 409 with
  `patch_started="conflict"`); on a failed or canceled job it is 409;
- credits are charged when a job starts; 402/429 are checked on POST /jobs and on the start.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from agent.emulator import catalog
from agent.emulator import convert as conv
from agent.emulator.common import (
    FAULTS_KEY,
    ApiError,
    check_capacity,
    check_input_count,
    find_job,
    json_response,
    key_is_valid,
    origin,
    processor_of,
    read_bool,
    read_json,
    read_object,
    read_passwords,
    require_key,
    state_of,
    token_of,
    too_large_message,
    too_many_inputs_message,
)
from agent.emulator.state import EPOCH, STATUS_INFO, Conversion, InputFile, Job

PAGE_SIZE = 50
INPUT_TYPES = ("upload", "remote", "output", "input_id", "gdrive_picker", "base64", "cloud")
ENGINES = ("auto", "video", "file", "website", "screenshot", "screenshot_pdf", "zip")
OUTPUT_TARGETS = ("amazons3", "googlecloud", "azure", "ftp", "youtube", "gdrive")
STATUS_LIST = (
    "incomplete",
    "ready",
    "pending",
    "downloading",
    "queued",
    "processing",
    "completed",
    "failed",
    "canceled",
)


#: Defaults of a fresh job, used to read a create body before the job exists.
NEW_JOB = Job(
    id="", token="", seq=0, server_n=0, created_at=EPOCH, modified_at=EPOCH, conversions=[]
)


def job_json(request: web.Request, job: Job) -> dict[str, Any]:
    state = state_of(request)
    unknown = "unknown_status" in request.get(FAULTS_KEY, {})
    return job.to_json(origin(request), state.clock.now(), state.config, unknown_status=unknown)


# -- parsing ----------------------------------------------------------------------------------
def parse_conversions(raw: Any) -> list[Conversion]:
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "At least one conversion with a target is required")
    conversions = []
    for item in raw:
        if not isinstance(item, dict):
            raise ApiError(400, "Each conversion must be an object")
        target = item.get("target")
        if target is None or target == "":
            raise ApiError(400, "The conversion target is missing")
        if not isinstance(target, str):
            raise ApiError(400, "The conversion target must be a string")
        target = target.strip().lower()
        if not conv.TARGET_RE.match(target):
            raise ApiError(422, f"Unknown conversion target {target[:40]!r}")
        category = item.get("category")
        if category is not None and not isinstance(category, str):
            raise ApiError(400, "The conversion category must be a string")
        options = read_object(item.get("options"), "options")
        try:
            catalog.validate_options(target, category, options)
        except conv.OptionError as exc:
            raise ApiError(400, str(exc)) from exc
        targets = item.get("output_target") or []
        if not isinstance(targets, list) or not all(
            isinstance(t, dict) and t.get("type") in OUTPUT_TARGETS for t in targets
        ):
            raise ApiError(400, f"`output_target` entries need a type among {OUTPUT_TARGETS}")
        conversions.append(
            Conversion(
                id=str(uuid.uuid4()),
                target=target,
                category=category or catalog.category_for(target),
                options=options,
                metadata=read_object(item.get("metadata"), "metadata"),
                output_target=[dict(t) | {"status": "waiting"} for t in targets],
            )
        )
    return conversions


def parse_input(request: web.Request, raw: Any) -> InputFile:
    if not isinstance(raw, dict):
        raise ApiError(400, "An input must be an object")
    kind = raw.get("type", "remote")
    if kind not in INPUT_TYPES or kind == "upload":
        raise ApiError(400, f"Input type must be one of {', '.join(INPUT_TYPES[1:])}")
    source = raw.get("source")
    if not isinstance(source, str) or not source:
        raise ApiError(400, "The input source is missing")
    engine = raw.get("engine")
    if engine is not None and engine not in ENGINES:
        raise ApiError(400, f"Input engine must be one of {', '.join(ENGINES)}")
    filename = raw.get("filename", "")
    if not isinstance(filename, str):
        raise ApiError(400, "The input filename must be a string")
    read_object(raw.get("credentials"), "credentials")  # validated, never stored or echoed
    now = state_of(request).clock.now()
    return InputFile(
        id=str(uuid.uuid4()),
        type=kind,
        source=source,
        status="downloading",
        created_at=now,
        modified_at=now,
        filename=filename,
        engine=engine if isinstance(engine, str) else None,
        options=read_object(raw.get("options"), "options"),
        parameters=read_object(raw.get("parameters"), "parameters"),
        metadata=read_object(raw.get("metadata"), "metadata"),
    )


def read_settings(job: Job, body: dict[str, Any]) -> dict[str, Any]:
    """Validated job settings from a create/PATCH body, as attribute → value (nothing applied)."""
    out: dict[str, Any] = {}
    if not job.started:
        for name in ("fail_on_input_error", "fail_on_conversion_error"):
            out[name] = read_bool(body, name, getattr(job, name))
    out["notify_status"] = read_bool(body, "notify_status", job.notify_status)
    if "callback" in body:
        callback = body["callback"]
        if callback is not None and not isinstance(callback, str):
            raise ApiError(400, "`callback` must be a string")
        out["callback"] = callback or ""
    if "download_passwords" in body:
        out["download_passwords"] = read_passwords(body["download_passwords"])
    if "limits" in body:
        out["limits"] = read_object(body["limits"], "limits")
    return out


def apply_settings(job: Job, settings: dict[str, Any]) -> None:
    for name, value in settings.items():
        setattr(job, name, value)


# -- jobs -------------------------------------------------------------------------------------
async def create_job(request: web.Request) -> web.Response:
    state = state_of(request)
    state.create_requests += 1
    require_key(request)
    key = request.headers.get("Idempotency-Key")
    if key is None:
        state.create_requests_without_key += 1
    else:
        state.idempotency_counts[key] = state.idempotency_counts.get(key, 0) + 1
        known = state.idempotency.get(key)
        if known is not None and not state.config.ignore_idempotency and known in state.jobs:
            return json_response(job_json(request, state.jobs[known]), status=201)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "The JSON body must be an object")
    conversions = parse_conversions(body.get("conversion"))
    process = read_bool(body, "process", True)
    raw_inputs = body.get("input") or []
    if not isinstance(raw_inputs, list):
        raise ApiError(400, "`input` must be a list")
    inputs = [parse_input(request, raw) for raw in raw_inputs]
    settings = read_settings(NEW_JOB, body)
    check_capacity(request)
    job = state.new_job(conversions)
    job.origin = origin(request)
    job.idempotency_key = key
    apply_settings(job, settings)
    job.process = process
    processor = processor_of(request)
    limit = state.config.max_inputs
    for inp in inputs[limit:]:  # past the contract's count: discarded, the job fails
        inp.status, inp.error = "failed", (402, too_many_inputs_message(limit))
    for inp in inputs:
        processor.add_input(job, inp)
    if process and job.inputs:
        processor.start(job)
    if key is not None:
        state.idempotency[key] = job.id
    return json_response(job_json(request, job), status=201)


async def list_jobs(request: web.Request) -> web.Response:
    state = state_of(request)
    status = request.query.get("status")
    try:
        page = int(float(request.query.get("page", "1")))
    except (ValueError, OverflowError) as exc:
        raise ApiError(400, "`page` must be a positive number") from exc
    if page < 1:
        raise ApiError(400, "`page` must be a positive number")
    if key_is_valid(request):
        jobs = list(reversed(state.jobs.values()))
    else:
        token = token_of(request)
        if token is None:
            raise ApiError(401, "Invalid api key")
        jobs = [job for job in state.jobs.values() if job.token == token]
        if not jobs:
            raise ApiError(401, "Invalid token")
    if status:
        jobs = [job for job in jobs if job.status == status]
    headers = {"X-Count": str(len(jobs))}
    chunk = jobs[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    if not chunk:
        return web.Response(status=204, headers=headers)
    return json_response([job_json(request, job) for job in chunk], headers=headers)


async def get_job(request: web.Request) -> web.Response:
    return json_response(job_json(request, find_job(request)))


async def patch_job(request: web.Request) -> web.Response:
    job = find_job(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "The JSON body must be an object")
    process = body.get("process")
    if process is not None and not isinstance(process, bool):
        raise ApiError(400, "`process` must be a boolean")
    if process is True:
        job.start_requests += 1  # every start request, answered or refused
    state = state_of(request)
    if job.status in ("failed", "canceled") and process:
        raise ApiError(
            409, "The status of the job could not be changed since it is in a invalid status."
        )
    if process and job.started and state.config.patch_started == "conflict":
        raise ApiError(
            409, "The status of the job could not be changed since it is in a invalid status."
        )
    settings = read_settings(job, body)
    if process is True and not job.started:
        check_capacity(request)  # before anything changes: a refused start changes nothing
    apply_settings(job, settings)
    if process is True and not job.started:
        job.process = True
        if job.inputs:
            processor_of(request).start(job)
    elif process is False and not job.started:
        job.process = False
    job.modified_at = state.clock.now()
    return json_response(job_json(request, job))


async def delete_job(request: web.Request) -> web.Response:
    job = find_job(request)
    if job.status in ("completed", "failed", "canceled"):
        raise ApiError(409, "The job can not be modified")
    processor_of(request).cancel(job)
    return web.Response(status=204)


# -- inputs and outputs -----------------------------------------------------------------------
async def list_inputs(request: web.Request) -> web.Response:
    job = find_job(request)
    return json_response([i.to_json() for i in job.inputs])


async def get_input(request: web.Request) -> web.Response:
    job = find_job(request)
    for inp in job.inputs:
        if inp.id == request.match_info["file_id"]:
            return json_response(inp.to_json())
    raise ApiError(404, "The specified input does not exists.")


async def add_input(request: web.Request) -> web.Response:
    job = find_job(request)
    body = await read_json(request)
    inp = parse_input(request, body)
    if job.started:
        raise ApiError(409, "The job does not accept new inputs once it has started")
    check_input_count(request, job)
    processor = processor_of(request)
    if inp.type == "remote":  # a declared size above the contract's limit: 402, no input
        limit = state_of(request).config.max_input_bytes
        size = await processor.declared_size(inp.source)
        if size is not None and size > limit:
            raise ApiError(402, too_large_message(limit))
    processor.add_input(job, inp)
    if job.process:
        processor.start(job)
    return json_response(inp.to_json(), status=201)


def _outputs_json(request: web.Request, job: Job) -> list[dict[str, Any]]:
    state = state_of(request)
    server, now = job.server(origin(request)), state.clock.now()
    return [o.to_json(server, now, state.config) for o in job.outputs]


async def list_outputs(request: web.Request) -> web.Response:
    job = find_job(request)
    rows = _outputs_json(request, job)
    if conversion_id := request.query.get("conversion_id"):
        rows = [r for r in rows if r["source"]["conversion"] == conversion_id]
    if input_id := request.query.get("input_id"):
        rows = [r for r in rows if input_id in r["source"]["input"]]
    return json_response(rows)


async def get_output(request: web.Request) -> web.Response:
    job = find_job(request)
    for row in _outputs_json(request, job):
        if row["id"] == request.match_info["file_id"]:
            return json_response(row)
    raise ApiError(404, "The specified output does not exists.")


async def delete_output(request: web.Request) -> web.Response:
    job = find_job(request)
    for output in job.outputs:
        if output.id == request.match_info["file_id"]:
            output.forced_status = "disabled"
            return web.Response(status=204)
    raise ApiError(404, "The specified output does not exists.")


async def job_history(request: web.Request) -> web.Response:
    return json_response([dict(h) for h in find_job(request).history])


async def job_threads(request: web.Request) -> web.Response:
    find_job(request)
    return json_response([])


# -- public catalog ---------------------------------------------------------------------------
async def statuses(request: web.Request) -> web.Response:
    return json_response([{"code": code, "info": STATUS_INFO[code]} for code in STATUS_LIST])


async def conversions(request: web.Request) -> web.Response:
    rows = catalog.catalog()
    if category := request.query.get("category"):
        rows = [r for r in rows if r["category"] == category]
    if target := request.query.get("target"):
        rows = [r for r in rows if r["target"] == target]
    try:
        page = max(1, int(float(request.query.get("page", "1"))))
    except (ValueError, OverflowError) as exc:
        raise ApiError(400, "`page` must be a positive number") from exc
    return json_response(rows[(page - 1) * PAGE_SIZE : page * PAGE_SIZE])


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v2/jobs", create_job, name="create")
    r.add_get("/v2/jobs", list_jobs, name="list")
    r.add_get("/v2/jobs/{job_id}", get_job, name="get")
    r.add_patch("/v2/jobs/{job_id}", patch_job, name="start")
    r.add_delete("/v2/jobs/{job_id}", delete_job, name="delete")
    r.add_get("/v2/jobs/{job_id}/input", list_inputs, name="input.list")
    r.add_post("/v2/jobs/{job_id}/input", add_input, name="input")
    r.add_get("/v2/jobs/{job_id}/input/{file_id}", get_input, name="input.one")
    r.add_get("/v2/jobs/{job_id}/output", list_outputs, name="output")
    r.add_get("/v2/jobs/{job_id}/output/{file_id}", get_output, name="output.one")
    r.add_delete("/v2/jobs/{job_id}/output/{file_id}", delete_output, name="output.delete")
    r.add_get("/v2/jobs/{job_id}/history", job_history, name="meta.history")
    r.add_get("/v2/jobs/{job_id}/threads", job_threads, name="meta.threads")
    r.add_get("/v2/statuses", statuses, name="meta.statuses")
    r.add_get("/v2/conversions", conversions, name="meta.conversions")
