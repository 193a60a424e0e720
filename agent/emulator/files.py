"""The per-job file server: `POST {server}/upload-file/{job_id}` and output downloads at
`GET {server}/download-file/{job_id}/{output_id}/{filename}` (`server` = `{origin}/v2/dl/web{N}`).

Downloads need no auth (the uri is self-contained) except a download password when the job has
some. Every GET answered 200 or 206 counts as a download (HEAD and refusals do not). Refusals:
deleted 404, expired 410, overuse 403, wrong/missing password 403 (statuses configurable).
"""

from __future__ import annotations

import base64
import hashlib
import random
import re
import uuid
from datetime import UTC
from email.utils import format_datetime
from urllib.parse import quote

from aiohttp import BodyPartReader, web

from agent.emulator import convert as conv
from agent.emulator.common import (
    FAULTS_KEY,
    PASSWORD_HEADERS,
    ApiError,
    check_input_count,
    find_job,
    json_response,
    processor_of,
    state_of,
    too_large_message,
)
from agent.emulator.faults import corrupt
from agent.emulator.state import DownloadRecord, InputFile, Job, OutputFile, UploadRecord

UPLOAD_UUID_HEADERS = ("X-Oc-Upload-Uuid", "X-Api2convert-Upload-Uuid")
_RANGE_RE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")
#: Bodies larger than this are sent in pieces of STREAM_PIECE (a whole 1 GiB body handed to
#: aiohttp at once is copied into the transport's buffer and sent about five times slower).
STREAM_ABOVE = 8 << 20
STREAM_PIECE = 1 << 20


class RangeNotSatisfiable(Exception):
    pass


# -- upload -----------------------------------------------------------------------------------
async def upload_file(request: web.Request) -> web.Response:
    state = state_of(request)
    job = find_job(request)
    _check_server(request, job)
    upload_uuid = next(
        (request.headers[h] for h in UPLOAD_UUID_HEADERS if request.headers.get(h)), None
    )
    if upload_uuid is not None:
        job.upload_requests[upload_uuid] = job.upload_requests.get(upload_uuid, 0) + 1
    if upload_uuid is not None and upload_uuid in job.upload_uuids:
        inp = next(i for i in job.inputs if i.id == job.upload_uuids[upload_uuid])
        inp.uploads += 1
        await _read_file_part(request)  # drain the repeated body; it is not stored again
        state.uploads.append(
            UploadRecord(job.id, inp.id, inp.filename, len(inp.data or b""), upload_uuid, True)
        )
        return json_response(inp.to_json())
    if job.started:
        raise ApiError(409, "The job does not accept uploads once it has started")
    check_input_count(request, job)
    filename, content_type, data = await _read_file_part(request)
    if upload_uuid is None:
        job.upload_requests[filename] = job.upload_requests.get(filename, 0) + 1
    now = state.clock.now()
    inp = InputFile(
        id=str(uuid.uuid4()),
        type="upload",
        source=filename or "file",
        status="ready",
        created_at=now,
        modified_at=now,
        filename=filename,
        content_type=content_type,
        data=data,
        uploads=1,
    )
    processor = processor_of(request)
    processor.add_input(job, inp)
    if upload_uuid is not None:
        job.upload_uuids[upload_uuid] = inp.id
    state.uploads.append(UploadRecord(job.id, inp.id, filename, len(data), upload_uuid, False))
    if job.process:
        processor.start(job)
    return json_response(inp.to_json())


async def _read_file_part(request: web.Request) -> tuple[str, str, bytes]:
    if not request.content_type.startswith("multipart/"):
        raise ApiError(400, "Uploads must be multipart/form-data with a field named `file`")
    limit = state_of(request).config.max_input_bytes
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name != "file":
                if isinstance(part, BodyPartReader):
                    await part.release()
                continue
            chunks, size = [], 0
            while chunk := await part.read_chunk(65536):
                size += len(chunk)
                if size > limit:
                    raise ApiError(402, too_large_message(limit))
                chunks.append(chunk)
            filename = part.filename if part.filename is not None else "file"
            declared = part.headers.get("Content-Type", "")
            if not declared or declared == "application/octet-stream":
                declared = conv.content_type_for(filename)
            return filename, declared, b"".join(chunks)
    except (ValueError, AssertionError, LookupError) as exc:
        raise ApiError(400, f"Malformed multipart body: {exc}") from exc
    raise ApiError(400, "No file was uploaded (expected a multipart field named `file`)")


def _check_server(request: web.Request, job: Job) -> None:
    if request.match_info["n"] != str(job.server_n):
        raise ApiError(404, "The job is not handled by this server; use the job's `server`")


# -- download ---------------------------------------------------------------------------------
async def download_file(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    config = state.config
    found = state.find_output(request.match_info["job_id"], request.match_info["output_id"])
    if found is None:
        raise ApiError(404, "The file does not exist")
    job, output = found
    _check_server(request, job)
    faults = request.get(FAULTS_KEY, {})
    if "expire" in faults:
        output.forced_status = "expired"
    if "overuse" in faults:
        output.downloads_counter = max(output.downloads_counter, config.download_limit)
    status = output.status(state.clock.now(), config)
    record = DownloadRecord(job.id, output.id, 0, request.headers.get("Range"), None, 0, False)
    record.if_range = request.headers.get("If-Range")
    record.fault = next((k for k in faults if k in ("corrupt", "truncate", "slow")), None)
    state.downloads.append(record)
    refusals = {
        "disabled": (404, "The file has been deleted"),
        "expired": (config.expired_status, "The file has expired"),
        "overuse": (config.overuse_status, "The file has been downloaded too many times"),
    }
    if status in refusals:
        record.status = refusals[status][0]
        raise ApiError(*refusals[status])
    if job.download_passwords and not _password_ok(request, job.download_passwords):
        record.status = config.password_status
        raise ApiError(config.password_status, "A valid download password is required")
    response = _file_response(request, output, record, state.corrupt_rng if faults else None)
    if request.method == "GET" and response.status in (200, 206):
        output.downloads_counter += 1
        record.counted = True
    return response


def _file_response(
    request: web.Request, output: OutputFile, record: DownloadRecord, rng: random.Random | None
) -> web.StreamResponse:
    config = state_of(request).config
    data, etag = output.data, f'"{output.checksum}"'
    content_type = output.content_type
    encoding = request.query.get("encoding")
    if encoding:
        if encoding.lower() != "base64":
            raise ApiError(400, "The only supported encoding is base64")
        data, etag, content_type, record.encoding = (
            base64.b64encode(data),
            f'"{hashlib.md5(base64.b64encode(data)).hexdigest()}-b64"',
            "text/plain",
            "base64",
        )
    if "corrupt" in request.get(FAULTS_KEY, {}) and rng is not None:
        data = corrupt(data, rng)
    last_modified = format_datetime(output.created_at.replace(tzinfo=UTC), usegmt=True)
    name = quote(output.filename, safe="") or "file"
    headers = {
        "ETag": etag,
        "Last-Modified": last_modified,
        "Accept-Ranges": "none" if config.ignore_range else "bytes",
        "Content-Disposition": f"attachment; filename*=UTF-8''{name}",
    }
    status, body = 200, data
    range_header = request.headers.get("Range")
    if range_header and not config.ignore_range and _if_range_ok(request, etag, last_modified):
        try:
            span = parse_range(range_header, len(data))
        except RangeNotSatisfiable:
            record.status = 416
            headers["Content-Range"] = f"bytes */{len(data)}"
            raise ApiError(416, "Requested range not satisfiable", headers=headers) from None
        if span is not None:
            start, end = span
            status, body = 206, data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
    record.status, record.bytes = status, len(body)
    if len(body) > STREAM_ABOVE and request.method == "GET" and not request.get(FAULTS_KEY):
        return _Streamed(body, status=status, headers=headers, content_type=content_type)
    return web.Response(body=body, status=status, headers=headers, content_type=content_type)


class _Streamed(web.StreamResponse):
    """A large body sent in pieces once aiohttp finishes the response (faulted downloads are
    never streamed: their faults act on a whole `web.Response`)."""

    def __init__(
        self, body: bytes, *, status: int, headers: dict[str, str], content_type: str
    ) -> None:
        super().__init__(status=status, headers=headers)
        self.content_type = content_type
        self.content_length = len(body)
        self._pieces: memoryview | None = memoryview(body)

    async def write_eof(self, data: bytes = b"") -> None:
        view, self._pieces = self._pieces, None
        if view is not None:
            for start in range(0, len(view), STREAM_PIECE):
                await self.write(view[start : start + STREAM_PIECE])
        await super().write_eof(data)


def _if_range_ok(request: web.Request, etag: str, last_modified: str) -> bool:
    validator = request.headers.get("If-Range")
    return validator is None or validator.strip() in (etag, last_modified)


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One `bytes=` range → inclusive (start, end); None = ignore the header (serve 200)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    match = _RANGE_RE.match(spec)
    if match is None or match.group(0).strip() == "-":
        return None
    first, last = match.groups()
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - suffix), size - 1
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable
    return start, min(int(last), size - 1) if last else size - 1


def _password_ok(request: web.Request, passwords: list[str]) -> bool:
    supplied: list[str] = []
    for name in PASSWORD_HEADERS:
        for value in request.headers.getall(name, []):
            supplied += [value, *value.split(",")]
        for cookie in (name, name.lower()):
            if cookie in request.cookies:
                value = request.cookies[cookie]
                supplied += [value, *value.split(",")]
    return any(c in passwords or c.strip() in passwords for c in supplied if c.strip())


def add_routes(app: web.Application) -> None:
    app.router.add_post(r"/v2/dl/web{n:\d+}/upload-file/{job_id}", upload_file, name="upload")
    app.router.add_get(
        r"/v2/dl/web{n:\d+}/download-file/{job_id}/{output_id}/{filename:[\s\S]*}",
        download_file,
        name="download",
    )
