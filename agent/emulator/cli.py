"""`convert-agent emulator`: serve the api2convert emulator until SIGINT/SIGTERM.

Prints one line `emulator listening on http://HOST:PORT/v2` (flushed) once the socket is bound,
so a parent process can read the port when started with `--port 0`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

import click

from agent.emulator.config import ConfigError, EmulatorConfig, FaultSpec, parse_fault
from agent.emulator.runner import start_emulator

FAULT_HELP = (
    "Inject a fault: ROUTE:KIND[=PARAM][:RATE[:COUNT]] (repeatable). ROUTE: create, list, get, "
    "start, delete, input, output, upload, download, meta, job, any. KIND: error[=STATUS], "
    "error_after[=STATUS], html, drop, drop_after, truncate, slow[=SECONDS], corrupt, "
    "unknown_status, expire, overuse; per job (ROUTE job): fail, no_outputs, hostile_names. "
    "RATE 0..1 (default 1), COUNT = at most that many times. "
    "Examples: download:truncate:1:2  create:error=503:0.3  get:unknown_status:1:3  job:fail"
)


def _fault(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> tuple[FaultSpec, ...]:
    try:
        return tuple(parse_fault(v) for v in values)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command("emulator")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port; 0 picks a free one.")
@click.option("--api-key", default=None, help="The only key accepted (default: any non-empty key).")
@click.option(
    "--processing-seconds",
    default=0.0,
    show_default=True,
    type=float,
    help="Seconds a started job spends queued + processing.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for fault draws.")
@click.option(
    "--clock-speed",
    default=1.0,
    show_default=True,
    type=float,
    help="Emulated clock multiplier for timestamps and the 24 h expiry (3600 = 1 h per second).",
)
@click.option(
    "--credits", default=None, type=int, help="Credit budget (1 per started job); 402 when spent."
)
@click.option(
    "--max-concurrent", default=None, type=int, help="Concurrent job limit; 429 above it."
)
@click.option("--retry-after", default=None, type=float, help="Retry-After seconds sent with 429.")
@click.option(
    "--rate-limit",
    default=None,
    type=int,
    help="Requests per second (one-second windows); 429 with Retry-After above it.",
)
@click.option(
    "--download-limit", default=10, show_default=True, type=int, help="Downloads per output."
)
@click.option(
    "--max-input-bytes",
    default=256 * 1024 * 1024,
    show_default=True,
    type=int,
    help="Input size limit of the contract; an upload or remote input above it gets 402.",
)
@click.option(
    "--max-inputs",
    default=20,
    show_default=True,
    type=int,
    help="Inputs per job the contract allows; one more gets 402 (or fails the job if inline).",
)
@click.option(
    "--webhook-secret",
    default=None,
    help="Sign callbacks with X-Oc-Signature (HMAC-SHA256 of the body); unsigned without it.",
)
@click.option(
    "--webhook-retries",
    default=10,
    show_default=True,
    type=int,
    help="Retries of a callback answered 5xx or not at all.",
)
@click.option("--ignore-idempotency", is_flag=True, help="Treat every Idempotency-Key as new.")
@click.option("--ignore-range", is_flag=True, help="Ignore Range/If-Range (always 200).")
@click.option(
    "--patch-started",
    type=click.Choice(["noop", "conflict"]),
    default="noop",
    show_default=True,
    help="PATCH process:true on a started job: 200 no-op or 409.",
)
@click.option("--fault", "faults", multiple=True, callback=_fault, help=FAULT_HELP)
@click.option(
    "--synthetic-output-bytes",
    default=0,
    show_default=True,
    type=int,
    help="Replace every output by this many bytes of a fixed pattern (download benchmarks).",
)
def emulator_command(
    host: str,
    port: int,
    api_key: str | None,
    processing_seconds: float,
    seed: int,
    clock_speed: float,
    credits: int | None,
    max_concurrent: int | None,
    retry_after: float | None,
    rate_limit: int | None,
    download_limit: int,
    max_input_bytes: int,
    max_inputs: int,
    webhook_secret: str | None,
    webhook_retries: int,
    ignore_idempotency: bool,
    ignore_range: bool,
    patch_started: str,
    faults: tuple[FaultSpec, ...],
    synthetic_output_bytes: int,
) -> None:
    """Serve a faithful api2convert REST API v2 emulator (control endpoints under /_emulator/)."""
    try:
        config = EmulatorConfig(
            api_key=api_key,
            processing_seconds=processing_seconds,
            seed=seed,
            clock_speed=clock_speed,
            credits=credits,
            max_concurrent_jobs=max_concurrent,
            retry_after=retry_after,
            rate_limit=rate_limit,
            download_limit=download_limit,
            max_input_bytes=max_input_bytes,
            max_inputs=max_inputs,
            webhook_secret=webhook_secret,
            webhook_retries=webhook_retries,
            ignore_idempotency=ignore_idempotency,
            ignore_range=ignore_range,
            patch_started="conflict" if patch_started == "conflict" else "noop",
            faults=faults,
            synthetic_output_bytes=synthetic_output_bytes,
        )
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    asyncio.run(_serve(config, host, port))


async def _serve(config: EmulatorConfig, host: str, port: int) -> None:
    try:
        emulator = await start_emulator(config, host=host, port=port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from exc
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows has no add_signal_handler
            loop.add_signal_handler(sig, stop.set)
    click.echo(f"emulator listening on {emulator.base_url}")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await emulator.stop()
