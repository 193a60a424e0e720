"""Runs jobs in the background: fetches remote inputs, walks the status path
`downloading → queued → processing → completed | failed`, converts, applies job-level faults.

Timing: a started job spends `processing_seconds` of wall time queued + processing (half each).
Conversions run in a worker thread so a big image never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import posixpath
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp

from agent.emulator import catalog
from agent.emulator import convert as conv
from agent.emulator.state import EmulatorState, InputFile, Job, OutputFile, WebhookRecord

log = logging.getLogger(__name__)

INPUT_DOWNLOAD_FAILED = (
    404,
    "The file could not be downloaded by our servers. Please verify the link you have provided.",
)
CLOUD_INPUT_FAILED = (99, "The input could not be retrieved from the given source.")
SIGNATURE_HEADER = "X-Oc-Signature"
WEBHOOK_USER_AGENT = "API2Convert API v2 Client (https://api.api2convert.com)"


def webhook_signature(secret: str, body: bytes) -> str:
    """hex(HMAC-SHA256(secret, raw body)): what the official SDKs' verifiers expect."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class Processor:
    """Owns the background tasks (input fetches, job runs) and the client for remote inputs."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self._tasks: set[asyncio.Task[None]] = set()
        self._fetches: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._webhook_locks: dict[str, asyncio.Lock] = {}
        state.status_listener = self._status_changed

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.state.internal_errors.append(f"{task.get_name()}: {exc!r}")
            log.error("emulator task %s crashed", task.get_name(), exc_info=exc)

    # -- inputs -----------------------------------------------------------------------------
    def add_input(self, job: Job, inp: InputFile) -> None:
        """Attach an input; remote and other non-upload inputs are fetched in the background."""
        job.inputs.append(inp)
        if inp.data is None and inp.status == "downloading":
            self._fetches[inp.id] = self._spawn(self._fetch(job, inp), f"fetch-{inp.id}")

    async def _fetch(self, job: Job, inp: InputFile) -> None:
        now = self.state.clock.now
        if inp.type == "base64":
            try:
                data = base64.b64decode(inp.source, validate=True)
            except (binascii.Error, ValueError):
                inp.status, inp.error = "failed", INPUT_DOWNLOAD_FAILED
            else:
                inp.set_data(data, now())
            return
        if inp.type != "remote":
            # cloud, gdrive_picker, input_id, output: accepted, then failed late (contract §2.2).
            inp.status, inp.error, inp.modified_at = "failed", CLOUD_INPUT_FAILED, now()
            return
        try:
            data, name, ctype = await self._download(inp.source)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.info("remote input %s failed: %r", inp.source, exc)
            inp.status, inp.error, inp.modified_at = "failed", INPUT_DOWNLOAD_FAILED, now()
            return
        if not inp.filename:
            inp.filename = name
        elif "." not in inp.filename and "." in name:
            inp.filename += posixpath.splitext(name)[1]
        inp.content_type = ctype or conv.content_type_for(inp.filename)
        inp.set_data(data, now())

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.state.config.remote_timeout)
            )
        return self._session

    async def declared_size(self, url: str) -> int | None:
        """The size a remote source declares (`Content-Length` of a HEAD), or None when it
        declares none or cannot be asked (then the fetch finds out)."""
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            return None
        timeout = aiohttp.ClientTimeout(total=min(5.0, self.state.config.remote_timeout))
        try:
            async with self._client().head(url, timeout=timeout, allow_redirects=True) as resp:
                if resp.status != 200:
                    return None
                return resp.content_length
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def _download(self, url: str) -> tuple[bytes, str, str]:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError("unsupported source URL")
        limit = self.state.config.max_input_bytes
        async with self._client().get(url) as response:
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            data = await response.content.read(limit + 1)
            if len(data) > limit:
                raise ValueError("remote file too large")
            name = response.content_disposition.filename if response.content_disposition else None
            name = name or posixpath.basename(unquote(parts.path)) or "file"
            return data, name, response.content_type if "Content-Type" in response.headers else ""

    # -- webhooks ---------------------------------------------------------------------------
    def _status_changed(self, job: Job) -> None:
        """A job with a `callback` gets a POST when it ends (`completed`/`failed`), or on every
        status change with `notify_status`; the body is the job document at that moment."""
        if not job.callback:
            return
        if not job.notify_status and job.status not in ("completed", "failed"):
            return
        now = self.state.clock.now()
        body = json.dumps(job.to_json(job.origin, now, self.state.config)).encode()
        lock = self._webhook_locks.setdefault(job.id, asyncio.Lock())
        self._spawn(
            self._deliver(job.id, job.callback, job.status, body, lock), f"webhook-{job.id}"
        )

    async def _deliver(
        self, job_id: str, url: str, status: str, body: bytes, lock: asyncio.Lock
    ) -> None:
        """POST one callback: 2xx acks, 4xx is a final refusal, 5xx or no answer is retried up
        to `webhook_retries` times (3 s for the first attempt, 10 s for retries)."""
        config = self.state.config
        headers = {"Content-Type": "application/json", "User-Agent": WEBHOOK_USER_AGENT}
        if config.webhook_secret:
            headers[SIGNATURE_HEADER] = webhook_signature(config.webhook_secret, body)
        async with lock:  # one job's callbacks go out in order
            for attempt in range(1, config.webhook_retries + 2):
                if attempt > 1:
                    await asyncio.sleep(min(10.0, config.webhook_retry_delay * 2 ** (attempt - 2)))
                timeout = aiohttp.ClientTimeout(total=3.0 if attempt == 1 else 10.0)
                record = WebhookRecord(
                    job_id, url, status, attempt, None, None, SIGNATURE_HEADER in headers
                )
                self.state.webhooks.append(record)
                try:
                    if urlsplit(url).scheme.lower() not in ("http", "https"):
                        raise ValueError("the callback is not an http(s) URL")
                    async with self._client().post(
                        url, data=body, headers=headers, timeout=timeout, allow_redirects=False
                    ) as response:
                        record.http_status = response.status
                except ValueError as exc:
                    record.error = str(exc)
                    return
                except (aiohttp.ClientError, TimeoutError) as exc:
                    record.error = repr(exc)
                    continue
                if record.http_status < 500:
                    return  # 2xx: delivered; 3xx/4xx: refused for good

    # -- jobs -------------------------------------------------------------------------------
    def start(self, job: Job) -> None:
        """Start a job that has inputs: one credit, one start, then run in the background."""
        job.starts += 1
        if self.state.credits_remaining is not None:
            self.state.credits_remaining = max(0, self.state.credits_remaining - 1)
        pending = any(i.status == "downloading" for i in job.inputs)
        job.set_status("downloading" if pending else "queued", self.state.clock.now())
        self._spawn(self._run(job), f"job-{job.id}")

    def cancel(self, job: Job) -> None:
        job.set_status("canceled", self.state.clock.now())
        for inp in job.inputs:
            if inp.status == "downloading":
                inp.status = "canceled"
                fetch = self._fetches.pop(inp.id, None)
                if fetch is not None:
                    fetch.cancel()

    async def _run(self, job: Job) -> None:
        clock = self.state.clock
        for inp in list(job.inputs):
            fetch = self._fetches.pop(inp.id, None)
            if fetch is not None:
                await asyncio.gather(fetch, return_exceptions=True)
        if job.status == "canceled":
            return
        for inp in job.inputs:
            if inp.error is not None:
                entry = _problem("input", inp.id, *inp.error)
                (job.errors if job.fail_on_input_error else job.warnings).append(entry)
        usable = [i for i in job.inputs if i.data is not None]
        if job.errors or not usable:
            if not job.errors:
                job.errors.append(_problem("input", "", 404, "The job has no usable input."))
            job.set_status("failed", clock.now())
            return
        job.set_status("queued", clock.now())
        await asyncio.sleep(self.state.config.processing_seconds / 2)
        if job.status == "canceled":
            return
        job.set_status("processing", clock.now())
        produced = await asyncio.to_thread(_convert_all, job, usable)
        await asyncio.sleep(self.state.config.processing_seconds / 2)
        if job.status == "canceled":
            return
        self._finish(job, produced)

    def _finish(self, job: Job, produced: list[tuple[str, list[str], Any]]) -> None:
        now = self.state.clock.now()
        faults = {f.kind for f in self.state.faults.draw_job()}
        outputs: list[OutputFile] = []
        for conversion_id, input_ids, result in produced:
            if isinstance(result, conv.ConversionFailed):
                entry = _problem("conversion", conversion_id, result.code, result.message)
                (job.errors if job.fail_on_conversion_error else job.warnings).append(entry)
                continue
            for item in result:
                outputs.append(
                    OutputFile(
                        id=str(uuid.uuid4()),
                        job_id=job.id,
                        conversion_id=conversion_id,
                        input_ids=input_ids,
                        filename=item.filename,
                        data=item.data,
                        content_type=item.content_type,
                        metadata=dict(item.metadata),
                        created_at=now,
                    )
                )
        if "fail" in faults:
            job.errors.append(
                _problem("conversion", job.conversions[0].id, 6005, "The conversion failed.")
            )
        if "hostile_names" in faults:
            for index, output in enumerate(outputs):
                ext = posixpath.splitext(output.filename)[1].lstrip(".") or "bin"
                output.filename = self.state.faults.hostile_name(job.seq + index, ext)
        if "no_outputs" in faults:
            outputs = []
        if self.state.config.synthetic_output_bytes > 0:
            data, md5 = self.state.synthetic_output()
            for output in outputs:
                output.data, output._md5 = data, (id(data), md5)
        cloud_only = all(c.output_target for c in job.conversions)
        if job.errors or (not outputs and not cloud_only and "no_outputs" not in faults):
            if not job.errors:
                job.errors.append(
                    _problem("conversion", job.conversions[0].id, 6005, "No output was produced.")
                )
            job.set_status("failed", now)
            return
        job.outputs = outputs
        job.spent = 1
        job.set_status("completed", now)


def _convert_all(job: Job, inputs: list[InputFile]) -> list[tuple[str, list[str], Any]]:
    """Every conversion over the inputs (each on its own, or all at once for the catalog's
    combining targets); a conversion with an output target yields no file."""
    sources = [
        conv.Source(
            id=inp.id,
            filename=inp.filename or "file",
            data=inp.data or b"",
            content_type=inp.content_type,
            engine=inp.engine,
            options=inp.options,
        )
        for inp in inputs
    ]
    results: list[tuple[str, list[str], Any]] = []
    for conversion in job.conversions:
        if conversion.output_target:
            for target in conversion.output_target:
                target["status"] = "completed"
            continue
        for input_ids, produced in catalog.run(
            conversion.target, conversion.category, conversion.options, sources
        ):
            results.append((conversion.id, input_ids, produced))
    return results


def _problem(source: str, id_source: str, code: int, message: str) -> dict[str, Any]:
    return {
        "source": source,
        "id_source": id_source,
        "code": code,
        "message": message,
        "details": {},
    }
