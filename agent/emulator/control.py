"""Control and introspection endpoints under `/_emulator/` (never faulted, no auth):

- `GET  /_emulator/state`  — JSON snapshot (jobs with start counts, uploads, downloads,
  POST /jobs count, Idempotency-Key counts, requests, faults with hit counts, internal errors).
- `GET  /_emulator/faults` — the active faults.
- `POST /_emulator/faults` — `{"faults": [{route, kind, rate?, count?, param?}], "replace": true}`
  or a bare list (replaces); `DELETE /_emulator/faults` clears them.
- `POST /_emulator/clock`  — `{"advance": seconds}` and/or `{"speed": x}`; answers `{"now": …}`.
- `POST /_emulator/config` — switch `patch_started` (`"noop"`/`"conflict"`) and/or
  `ignore_idempotency` (bool) while running; answers the two current values.
- `POST /_emulator/reset`  — forget all jobs, records and faults; credits back to the budget.
- `GET  /_emulator/health` — `{"ok": true}`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from aiohttp import web

from agent.emulator.common import ApiError, json_response, read_json, state_of
from agent.emulator.config import ConfigError, FaultSpec
from agent.emulator.state import fmt_time

#: Settings `POST /_emulator/config` may change while the emulator runs.
SWITCHABLE = ("patch_started", "ignore_idempotency")


async def get_state(request: web.Request) -> web.Response:
    return json_response(state_of(request).snapshot())


async def get_faults(request: web.Request) -> web.Response:
    return json_response(state_of(request).faults.to_json())


async def set_faults(request: web.Request) -> web.Response:
    body: Any = await read_json(request)
    replace = True
    if isinstance(body, dict):
        replace = body.get("replace", True) is not False
        body = body.get("faults", [])
    if not isinstance(body, list):
        raise ApiError(400, 'Send a list of faults or {"faults": [...], "replace": bool}')
    try:
        faults = [FaultSpec.from_json(item) for item in body]
    except ConfigError as exc:
        raise ApiError(400, str(exc)) from exc
    state = state_of(request)
    state.set_faults(faults, replace=replace)
    return json_response(state.faults.to_json())


async def clear_faults(request: web.Request) -> web.Response:
    state_of(request).set_faults([], replace=True)
    return web.Response(status=204)


async def clock(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, 'Send {"advance": seconds} and/or {"speed": multiplier}')
    state = state_of(request)
    advance, speed = body.get("advance"), body.get("speed")
    for name, value in (("advance", advance), ("speed", speed)):
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ApiError(400, f"`{name}` must be a finite number")
    if speed is not None:
        if speed <= 0:
            raise ApiError(400, "`speed` must be positive")
        state.clock.set_speed(float(speed))
    if advance is not None:
        state.clock.advance(float(advance))
    return json_response({"now": fmt_time(state.clock.now()), "speed": state.clock.speed})


async def config(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) - set(SWITCHABLE):
        raise ApiError(400, f"Send an object with some of {', '.join(SWITCHABLE)}")
    ignore = body.get("ignore_idempotency")
    if ignore is not None and not isinstance(ignore, bool):
        raise ApiError(400, "`ignore_idempotency` must be a boolean")
    state = state_of(request)
    try:
        state.config = dataclasses.replace(
            state.config, **{k: v for k, v in body.items() if v is not None}
        )
    except ConfigError as exc:
        raise ApiError(400, str(exc)) from exc
    return json_response({k: getattr(state.config, k) for k in SWITCHABLE})


async def reset(request: web.Request) -> web.Response:
    state = state_of(request)
    state.reset()
    state.set_faults([], replace=True)
    return web.Response(status=204)


async def health(request: web.Request) -> web.Response:
    return json_response({"ok": True})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/_emulator/state", get_state)
    r.add_get("/_emulator/faults", get_faults)
    r.add_post("/_emulator/faults", set_faults)
    r.add_delete("/_emulator/faults", clear_faults)
    r.add_post("/_emulator/clock", clock)
    r.add_post("/_emulator/config", config)
    r.add_post("/_emulator/reset", reset)
    r.add_get("/_emulator/health", health)
