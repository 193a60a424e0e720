"""Fault injection: which fault fires on a request (deterministic under the seed), and the
transport tricks that carry them out (drop, truncate, slow, corrupt).

Every fault owns its own `random.Random(seed, index)`, so adding a fault never changes when
another one fires. A fault with `count` fires at most `count` times, then stays quiet.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from agent.emulator.config import JOB_KINDS, FaultSpec

HOSTILE_NAMES = (
    "../../x.{ext}",
    "/etc/x.{ext}",
    "C:\\Windows\\x.{ext}",
    "a\x00b\n\x1b[31m.{ext}",
    "{long}.{ext}",
    "CON",
    "..",
    "",
    " .{ext} ",
    "..\\..\\evil.{ext}",
)

HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>Maintenance</title></head>"
    b"<body><h1>We'll be back soon</h1></body></html>"
)


@dataclass
class _Active:
    spec: FaultSpec
    rng: random.Random
    hits: int = 0

    def draw(self) -> bool:
        if self.spec.count is not None and self.hits >= self.spec.count:
            return False
        # Always draw, so rate=1 faults still advance their stream the same way as others.
        fire = self.rng.random() < self.spec.rate
        if fire:
            self.hits += 1
        return fire


class FaultPlan:
    """The active faults and their hit counts."""

    def __init__(self, faults: Iterable[FaultSpec], seed: int) -> None:
        self._seed = seed
        self._active: list[_Active] = []
        self.set(list(faults), replace=True)

    def set(self, faults: list[FaultSpec], *, replace: bool) -> None:
        if replace:
            self._active = []
        start = len(self._active)
        for index, spec in enumerate(faults, start=start):
            self._active.append(_Active(spec, random.Random(f"{self._seed}:{index}")))

    def draw(self, route: str) -> list[FaultSpec]:
        """Faults that fire on one request to `route` (request-level kinds only)."""
        return [
            a.spec
            for a in self._active
            if a.spec.kind not in JOB_KINDS and a.spec.route in (route, "any") and a.draw()
        ]

    def draw_job(self) -> list[FaultSpec]:
        """Job-level faults that fire for one job finishing its processing."""
        return [
            a.spec
            for a in self._active
            if a.spec.kind in JOB_KINDS and a.spec.route in ("job", "any") and a.draw()
        ]

    def hostile_name(self, index: int, ext: str) -> str:
        template = HOSTILE_NAMES[index % len(HOSTILE_NAMES)]
        return template.format(ext=ext, long="n" * 300)

    def to_json(self) -> list[dict[str, Any]]:
        return [a.spec.to_json() | {"hits": a.hits} for a in self._active]


def close_connection(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


def corrupt(data: bytes, rng: random.Random) -> bytes:
    """Flip one byte in every 64 KiB (at least one), keeping the length."""
    if not data:
        return data
    out = bytearray(data)
    for block in range(0, len(out), 65536):
        pos = block + rng.randrange(min(65536, len(out) - block))
        out[pos] ^= 0xFF
    return bytes(out)


async def send_truncated(request: web.Request, response: web.Response) -> web.StreamResponse:
    """Send `response`'s headers with its full Content-Length, about half the body, then close."""
    body = response.body if isinstance(response.body, bytes) else b""
    stream = _stream_like(response, len(body))
    await stream.prepare(request)
    if len(body) > 1:
        await stream.write(body[: len(body) // 2])
    close_connection(request)
    return stream


async def send_slow(
    request: web.Request, response: web.Response, seconds: float
) -> web.StreamResponse:
    """Send `response`'s body in up to 20 pieces spread evenly over `seconds`."""
    body = response.body if isinstance(response.body, bytes) else b""
    stream = _stream_like(response, len(body))
    await stream.prepare(request)
    pieces = max(1, min(20, len(body)))
    size = -(-len(body) // pieces) if body else 0
    for index in range(pieces):
        await asyncio.sleep(seconds / pieces)
        chunk = body[index * size : (index + 1) * size]
        if chunk:
            await stream.write(chunk)
    await stream.write_eof()
    return stream


def _stream_like(response: web.Response, length: int) -> web.StreamResponse:
    stream = web.StreamResponse(status=response.status, reason=response.reason)
    for name, value in response.headers.items():
        if name.lower() not in ("content-length", "transfer-encoding"):
            stream.headers.add(name, value)
    stream.content_length = length
    return stream
