"""The account routes: `/v2/presets` (list, create, get, PATCH, DELETE), `/v2/stats/{day|month|
year}/{period}/{single|all}` and `/v2/contracts`, in the OpenAPI document's shapes.

Decisions where the contract is [UNDOC] (see docs/emulator.md):
- every route here needs the API key (401 otherwise), as the SDKs send it; OA lists 401 only on
  stats and contracts;
- two public presets are built in (`scope: public`, no `options`: "only available for private
  presets"); a created preset is private and belongs to the one account; GET/PATCH/DELETE of a
  public one is 404 ("only works for personal presets");
- a stats row is `{date, filter, jobs, completed, failed, credits}` per day of the period that
  has jobs (OA's items are free-form `{}`); `single` and `all` count the same jobs (one key);
- `/contracts` lists one contract with the emulator's limits (items are free-form in OA).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

from aiohttp import web

from agent.emulator import catalog
from agent.emulator import convert as conv
from agent.emulator.common import ApiError, json_response, read_json, require_key, state_of
from agent.emulator.state import Preset

SCOPES = ("public", "private")
PERIODS = {
    "day": (re.compile(r"^\d{4}-\d\d-\d\d$"), "%Y-%m-%d", "yyyy-mm-dd"),
    "month": (re.compile(r"^\d{4}-\d\d$"), "%Y-%m", "yyyy-mm"),
    "year": (re.compile(r"^\d{4}$"), "%Y", "yyyy"),
}


def public_presets() -> list[Preset]:
    def make(name: str, target: str) -> Preset:
        ident = str(uuid.uuid5(uuid.NAMESPACE_URL, f"emulator:preset:{name}"))
        return Preset(ident, name, target, catalog.category_for(target), "public")

    return [make("web image (small jpg)", "jpg"), make("lossless png", "png")]


# -- presets ----------------------------------------------------------------------------------
async def list_presets(request: web.Request) -> web.Response:
    require_key(request)
    state = state_of(request)
    rows = [*public_presets(), *state.presets.values()]
    if category := request.query.get("category"):
        rows = [p for p in rows if p.category == category]
    if target := request.query.get("target"):
        rows = [p for p in rows if p.target == target]
    if phrases := [w.strip().lower() for w in request.query.get("filter", "").split(",")]:
        rows = [p for p in rows if all(w in p.name.lower() for w in phrases if w)]
    return json_response([p.to_json() for p in rows])


def _fields(body: Any, *, create: bool) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "The JSON body must be an object")
    out: dict[str, Any] = {}
    for name in ("name", "target", "category", "scope"):
        if name in body:
            value = body[name]
            if not isinstance(value, str) or not value.strip():
                raise ApiError(400, f"`{name}` must be a non-empty string")
            out[name] = value.strip()
    if "options" in body:
        options = body["options"]
        if isinstance(options, list) and not options:
            options = {}  # OA's default is `[]`, an empty PHP array
        if not isinstance(options, dict):
            raise ApiError(400, "`options` must be an object")
        out["options"] = dict(options)
    if "target" in out:
        out["target"] = out["target"].lower()
        if not conv.TARGET_RE.match(out["target"]):
            raise ApiError(400, f"Unknown conversion target {out['target'][:40]!r}")
        try:
            catalog.validate_options(out["target"], out.get("category"), out.get("options", {}))
        except conv.OptionError as exc:
            raise ApiError(400, str(exc)) from exc
    if out.get("scope", "private") not in SCOPES:
        raise ApiError(400, f"`scope` must be one of {', '.join(SCOPES)}")
    if create:
        missing = [n for n in ("name", "target") if n not in out]
        if missing:
            raise ApiError(400, f"A preset needs {' and '.join(f'`{n}`' for n in missing)}")
    return out


async def create_preset(request: web.Request) -> web.Response:
    require_key(request)
    values = _fields(await read_json(request), create=True)
    preset = Preset(
        id=str(uuid.uuid4()),
        name=values["name"],
        target=values["target"],
        category=values.get("category") or catalog.category_for(values["target"]),
        scope="private",  # a preset made through the API is the account's own
        options=values.get("options", {}),
    )
    state_of(request).presets[preset.id] = preset
    return json_response(preset.to_json(), status=201)


def _own_preset(request: web.Request) -> Preset:
    require_key(request)
    preset = state_of(request).presets.get(request.match_info["preset_id"])
    if preset is None:
        raise ApiError(404, "The specified preset does not exists.")
    return preset


async def get_preset(request: web.Request) -> web.Response:
    return json_response(_own_preset(request).to_json())


async def patch_preset(request: web.Request) -> web.Response:
    preset = _own_preset(request)
    values = _fields(await read_json(request), create=False)
    for name in ("name", "target", "options"):  # PresetPatch: target, name, options
        if name in values:
            setattr(preset, name, values[name])
    if "target" in values:
        preset.category = catalog.category_for(preset.target)
    return json_response(preset.to_json())


async def delete_preset(request: web.Request) -> web.Response:
    preset = _own_preset(request)
    del state_of(request).presets[preset.id]
    return web.Response(status=204)


# -- statistics -------------------------------------------------------------------------------
async def stats(request: web.Request) -> web.Response:
    require_key(request)
    unit, period, which = (request.match_info[k] for k in ("unit", "period", "filter"))
    pattern, fmt, spelled = PERIODS[unit]
    try:
        if not pattern.match(period):
            raise ValueError(period)
        datetime.strptime(period, fmt)
    except ValueError as exc:
        raise ApiError(400, f"The {unit} must be in the format {spelled}") from exc
    if which not in ("single", "all"):
        raise ApiError(400, "The filter must be `single` or `all`")
    days: dict[str, dict[str, Any]] = {}
    for job in state_of(request).jobs.values():
        day = job.created_at.strftime("%Y-%m-%d")
        if not day.startswith(period):
            continue
        row = days.setdefault(
            day,
            {"date": day, "filter": which, "jobs": 0, "completed": 0, "failed": 0, "credits": 0},
        )
        row["jobs"] += 1
        row["completed"] += job.status == "completed"
        row["failed"] += job.status == "failed"
        row["credits"] += job.starts
    return json_response([days[d] for d in sorted(days)])


# -- contracts --------------------------------------------------------------------------------
async def contracts(request: web.Request) -> web.Response:
    require_key(request)
    state = state_of(request)
    return json_response(
        [
            {
                "type": "emulator",
                "credits": state.credits_remaining,
                "concurrent_jobs": state.config.max_concurrent_jobs,
                "max_input_bytes": state.config.max_input_bytes,
                "max_inputs": state.config.max_inputs,
            }
        ]
    )


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v2/presets", list_presets, name="meta.presets")
    r.add_post("/v2/presets", create_preset, name="meta.presets.create")
    r.add_get("/v2/presets/{preset_id}", get_preset, name="meta.preset")
    r.add_patch("/v2/presets/{preset_id}", patch_preset, name="meta.preset.patch")
    r.add_delete("/v2/presets/{preset_id}", delete_preset, name="meta.preset.delete")
    r.add_get(r"/v2/stats/{unit:day|month|year}/{period}/{filter}", stats, name="meta.stats")
    r.add_get("/v2/contracts", contracts, name="meta.contracts")
