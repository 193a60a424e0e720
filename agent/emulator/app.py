"""Builds the aiohttp application and its one middleware: fault injection, `{"message"}` errors,
and the request log. Handlers live in `jobs`, `files` and `control`.

A request is matched to a fault route name (`create`, `get`, `start`, `upload`, `download`, …,
see `config.ROUTES`); the faults drawn for it act before the handler (`error`, `html`, `drop`),
inside it (`unknown_status`, `corrupt`, `expire`, `overuse`) or on its response (`error_after`,
`drop_after`, `truncate`, `slow`). `/_emulator/*` is never faulted.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from agent.emulator import account, control, files, jobs
from agent.emulator.common import FAULTS_KEY, PROCESSOR_KEY, STATE_KEY, ApiError, json_response
from agent.emulator.config import EmulatorConfig, FaultSpec
from agent.emulator.faults import HTML_PAGE, close_connection, send_slow, send_truncated
from agent.emulator.processor import Processor
from agent.emulator.ratelimit import RateLimiter, rate_limit_middleware
from agent.emulator.state import EmulatorState, RequestRecord

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PRE = ("drop", "error", "html")
POST = ("drop_after", "error_after", "truncate", "slow")
JSON_MAX_BYTES = 16 * 1024 * 1024


def build_app(config: EmulatorConfig | None = None) -> web.Application:
    """The emulator as an aiohttp application (serve it with any aiohttp runner or test server)."""
    config = config or EmulatorConfig()
    state = EmulatorState(config)
    # Uploads stream through the multipart reader (capped by max_input_bytes); this caps JSON.
    middlewares: list[Any] = [_middleware]
    if config.rate_limit is not None:  # inside: its 429s are in the request log
        middlewares.append(rate_limit_middleware(RateLimiter(config.rate_limit)))
    app = web.Application(middlewares=middlewares, client_max_size=JSON_MAX_BYTES)
    app[STATE_KEY] = state
    app[PROCESSOR_KEY] = Processor(state)
    jobs.add_routes(app)
    account.add_routes(app)
    files.add_routes(app)
    control.add_routes(app)
    app.cleanup_ctx.append(_lifecycle)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[PROCESSOR_KEY].close()


def _route_of(request: web.Request) -> str | None:
    name = request.match_info.route.name
    if name is not None:
        return name.split(".")[0]
    if request.path.startswith("/_emulator/"):
        return None
    return "any"  # unmatched paths can still be hit by `any` faults


@web.middleware
async def _middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    route = _route_of(request)
    fired: list[FaultSpec] = state.faults.draw(route) if route is not None else []
    request[FAULTS_KEY] = {f.kind: f for f in fired}
    pre = next((f for f in fired if f.kind in PRE), None)
    post = next((f for f in fired if f.kind in POST), None)
    response: web.StreamResponse
    if pre is not None:
        response = await _pre_fault(request, pre)
    else:
        response = await _call(request, handler)
        if state.after_handler is not None and route is not None:
            state.after_handler(route, request.method, request.path, response.status)
        if post is not None:
            response = await _post_fault(request, response, post)
    if route is not None and not response.prepared:
        response.headers["X-Request-Id"] = f"emu-{len(state.requests) + 1}"
    if route is not None:
        acted = pre or post
        fault = acted.kind if acted is not None else (fired[0].kind if fired else None)
        state.requests.append(
            RequestRecord(request.method, request.path, route, response.status, fault)
        )
    return response


async def _call(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:  # router 404/405 and friends
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return json_response({"message": exc.reason}, status=exc.status, headers=headers)
    except ConnectionResetError:  # the client went away mid-request (a killed process): no bug
        return json_response({"message": "Client connection lost"}, status=400)
    except Exception as exc:
        log.exception("emulator handler failed on %s %s", request.method, request.path)
        request.app[STATE_KEY].internal_errors.append(f"{request.method} {request.path}: {exc!r}")
        return json_response({"message": "Internal emulator error"}, status=500)


async def _pre_fault(request: web.Request, fault: FaultSpec) -> web.StreamResponse:
    if fault.kind == "drop":
        close_connection(request)
        return web.Response(status=503)  # never reaches the client
    if fault.kind == "html":
        return web.Response(body=HTML_PAGE, content_type="text/html")
    return _error(request, fault, default=500)


def _error(request: web.Request, fault: FaultSpec, *, default: int) -> web.Response:
    status = int(fault.param) if fault.param is not None else default
    if not 400 <= status <= 599:
        status = default
    headers = {}
    retry_after = request.app[STATE_KEY].config.retry_after
    if status in (429, 503) and retry_after is not None:
        headers["Retry-After"] = f"{retry_after:g}"
    message = "Too many concurrent requests" if status == 429 else "Server not available."
    return json_response({"message": message}, status=status, headers=headers)


async def _post_fault(
    request: web.Request, response: web.StreamResponse, fault: FaultSpec
) -> web.StreamResponse:
    if fault.kind == "drop_after":
        close_connection(request)
        return response
    if fault.kind == "error_after":
        return _error(request, fault, default=502)
    if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return response
    if fault.kind == "truncate":
        return await send_truncated(request, response)
    return await send_slow(request, response, fault.param if fault.param is not None else 2.0)
