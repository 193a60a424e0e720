"""A per-second request limit (`--rate-limit N`, `EmulatorConfig.rate_limit`).

Requests are counted in fixed one-second windows of the monotonic clock; past N in a window the
answer is 429 `{"message": "Rate limit exceeded: …"}` with `Retry-After` set to the rest of the
window (fractional seconds), and the handler does not run. Every API, upload and download route
counts, refused requests too (a client that knocks on the limit fills it); `/_emulator/*` never.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web

from agent.emulator.common import json_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RateLimiter:
    """At most ``per_second`` requests in each one-second window of ``clock``."""

    def __init__(self, per_second: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = per_second
        self._clock = clock
        self._window = -1
        self._count = 0
        self.refused = 0

    def admit(self) -> float | None:
        """None when the request may go, else the seconds until the next window."""
        now = self._clock()
        window = math.floor(now)
        if window != self._window:
            self._window, self._count = window, 0
        self._count += 1
        if self._count <= self.per_second:
            return None
        self.refused += 1
        return max(0.001, window + 1 - now)


Middleware = Callable[[web.Request, Handler], Coroutine[Any, Any, web.StreamResponse]]


def rate_limit_middleware(limiter: RateLimiter) -> Middleware:
    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_emulator/"):
            return await handler(request)
        wait = limiter.admit()
        if wait is None:
            return await handler(request)
        return json_response(
            {"message": f"Rate limit exceeded: {limiter.per_second} requests per second"},
            status=429,
            headers={"Retry-After": f"{wait:.3f}"},
        )

    return limit
