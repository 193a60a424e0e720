"""The local dashboard: one live HTML page, a JSON API and Prometheus ``/metrics`` on 127.0.0.1.

It is a front end over the daemon facade (``Agent``), like the CLI and the tray: it reads the
facade's snapshot, asks the facade to pause, resume, retry, cancel, rescan or stop, and reads a
ticket's history from the store. It runs on the agent's own event loop, so it never crosses threads.

Security model (docs/dashboard.md):

* bound to 127.0.0.1 only, never another address;
* a per-run secret token (``secrets.token_urlsafe(24)``) on every request: ``?token=`` in the URL
  the tray opens (answered with a redirect that swaps it for an HttpOnly, SameSite=Strict cookie
  named after the port), the cookie, or ``Authorization: Bearer``. No token → 401, a wrong one →
  403;
* the Host header must be ``127.0.0.1:PORT`` or ``localhost:PORT`` (DNS rebinding);
* no CORS headers at all, so other origins can neither read answers nor send JSON;
* a POST must also carry ``X-Requested-With: convert-agent`` or a JSON content type, and must not
  come from another origin (``Origin``, ``Sec-Fetch-Site``);
* the page has a strict Content-Security-Policy (no external assets, scripts by nonce), builds the
  table with ``textContent`` only (file names are untrusted), and cannot be framed;
* no access log, as the token may be in a URL.

The URL, port, token and pid go to ``STATE.dashboard.json`` (mode 0600) beside the state file for
the CLI, and the file is removed on stop. This module must not write anything else, and must not
bind anything but loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from agent.control import runtime_path
from agent.platform import O_BINARY, O_NOFOLLOW
from agent.store import TicketRecord

if TYPE_CHECKING:
    from agent.daemon import Agent
    from agent.scheduler import ProgressListener

log = logging.getLogger("agent.dashboard")

HOST = "127.0.0.1"
CSRF_HEADER = "X-Requested-With"
CSRF_VALUE = "convert-agent"
HEARTBEAT_SECONDS = 15.0
COALESCE_SECONDS = 0.2  # a burst of changes becomes one push
MAX_BODY_BYTES = 64 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Dashboard:
    """The dashboard server of one running agent. Also a progress listener: it shows the bytes of
    uploads and downloads, and hands every call on to ``forward`` (the terminal's bars)."""

    def __init__(
        self,
        agent: Agent,
        *,
        port: int = 0,
        forward: ProgressListener | None = None,
        runtime_file: Path | None = None,
    ) -> None:
        self.agent = agent
        self.token = secrets.token_urlsafe(24)
        self.port = port
        self.forward = forward
        self.runtime_file = runtime_file or runtime_path(agent.cfg.state.path)
        self.url: str | None = None  # "http://127.0.0.1:PORT/" once listening
        self.transfers: dict[str, dict[str, Any]] = {}
        self._runner: web.AppRunner | None = None
        self._event = asyncio.Event()
        self._closing = False
        self._streams: set[web.StreamResponse] = set()

    @property
    def open_url(self) -> str | None:
        """The URL to open in a browser (it carries the token once; the page swaps it for a
        cookie), or None when the dashboard is not listening."""
        return f"{self.url}?token={self.token}" if self.url else None

    @property
    def _cookie(self) -> str:
        # Cookies do not keep ports apart: two agents on one machine need two names.
        return f"convert_agent_{self.port}"

    # ------------------------------------------------------------------ lifecycle

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/", self._page)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/api/events", self._events)
        app.router.add_get(r"/api/tickets/{id:\d+}", self._ticket)
        app.router.add_post("/api/pause", self._pause)
        app.router.add_post("/api/resume", self._resume)
        app.router.add_post("/api/retry", self._retry)
        app.router.add_post("/api/cancel", self._cancel)
        app.router.add_post("/api/rescan", self._rescan)
        app.router.add_post("/api/stop", self._stop)
        app.router.add_get("/metrics", self._metrics)
        app.on_response_prepare.append(_security_headers)
        return app

    async def start(self) -> bool:
        """Listen on 127.0.0.1 and write the runtime file; False (logged) when it cannot."""
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, HOST, self.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            log.error(
                "the dashboard cannot listen on %s:%s (%s): set dashboard.port to a free port, "
                "or 0 for any; the CLI cannot reach this agent meanwhile",
                HOST,
                self.port,
                exc.strerror or exc,
            )
            return False
        self._runner = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or ()
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        self.url = f"http://{HOST}:{self.port}/"
        self.agent.listeners.append(self._changed)
        try:
            self._write_runtime_file()
        except OSError as exc:
            log.warning("could not write %s: %s", self.runtime_file, exc.strerror or exc)
        log.info("dashboard on %s (open it from the tray, or see %s)", self.url, self.runtime_file)
        return True

    async def stop(self) -> None:
        self._closing = True
        self._bump()
        with contextlib.suppress(ValueError):
            self.agent.listeners.remove(self._changed)
        self._remove_runtime_file()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        self.url = None

    def _write_runtime_file(self) -> None:
        info = {"url": self.url, "port": self.port, "token": self.token, "pid": os.getpid()}
        path = self.runtime_file
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_BINARY, 0o600)
        try:
            os.write(fd, json.dumps(info).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def _remove_runtime_file(self) -> None:
        """Remove the runtime file if it is still ours (a newer agent may have replaced it)."""
        try:
            info = json.loads(self.runtime_file.read_text())
        except (OSError, ValueError):
            return
        if isinstance(info, dict) and info.get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.runtime_file.unlink()

    # ------------------------------------------------------------------ change feed

    def _bump(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    def _changed(self, rec: TicketRecord) -> None:
        self._bump()

    def transfer(self, key: str, label: str, done: int, total: int | None) -> None:
        self.transfers[key] = {"key": key, "label": label, "done": done, "total": total}
        self._bump()
        if self.forward is not None:
            self.forward.transfer(key, label, done, total)

    def transfer_done(self, key: str) -> None:
        if self.transfers.pop(key, None) is not None:
            self._bump()
        if self.forward is not None:
            self.forward.transfer_done(key)

    async def snapshot(self) -> dict[str, Any]:
        snap = await self.agent.snapshot()
        snap["transfers"] = list(self.transfers.values())
        snap["now"] = time.time()
        return snap

    # ------------------------------------------------------------------ guard

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        allowed = {f"{HOST}:{self.port}", f"localhost:{self.port}"}
        if request.host.lower() not in allowed:
            return _error(403, f"refused: this dashboard answers only to http://{HOST}:{self.port}")
        verdict = self._authorized(request)
        if verdict is None:
            return _error(
                401,
                "the dashboard needs its token: open it from the tray menu, or read url and "
                "token from STATE.dashboard.json beside the state database",
                headers={"WWW-Authenticate": 'Bearer realm="convert-agent"'},
            )
        if not verdict:
            return _error(403, "wrong token (the agent makes a new one each time it starts)")
        if request.method not in ("GET", "HEAD"):
            problem = _csrf_problem(request, allowed)
            if problem:
                return _error(403, problem)
        if "token" in request.query and request.method == "GET" and request.path == "/":
            # Swap the token in the address bar for a cookie, so it leaves the history.
            resp = web.Response(status=303, headers={"Location": "/"})
            resp.set_cookie(self._cookie, self.token, httponly=True, samesite="Strict", path="/")
            return resp
        return await handler(request)

    def _authorized(self, request: web.Request) -> bool | None:
        """True, False (a wrong token was offered) or None (none was offered)."""
        offered = []
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            offered.append(auth[7:].strip())
        if "token" in request.query:
            offered.append(request.query["token"])
        if self._cookie in request.cookies:
            offered.append(request.cookies[self._cookie])
        if not offered:
            return None
        mine = self.token.encode()
        return any(hmac.compare_digest(o.encode(), mine) for o in offered)

    # ------------------------------------------------------------------ routes

    async def _page(self, request: web.Request) -> web.StreamResponse:
        nonce = secrets.token_urlsafe(16)
        resp = web.Response(text=PAGE.replace("__NONCE__", nonce), content_type="text/html")
        resp.headers["Content-Security-Policy"] = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'"
        )
        return resp

    async def _status(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await self.snapshot())

    async def _ticket(self, request: web.Request) -> web.StreamResponse:
        store = self.agent.store
        if store is None:
            return _error(503, "the agent is not running")
        tid = int(request.match_info["id"])
        try:
            rec = store.get(tid)
        except KeyError:
            return _error(404, f"no ticket #{tid}")
        d = rec.public()
        d["active"] = rec.active
        d["outputs"] = [o.public() for o in store.outputs(tid)]
        d["inputs"] = [
            {"kind": i.kind, "value": i.value, "sent": i.sent} for i in store.inputs(tid)
        ]
        d["history"] = store.history(tid)
        return web.json_response(d)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: a ``snapshot`` event now, then after every change (coalesced),
        and at least every HEARTBEAT_SECONDS."""
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
        )
        await resp.prepare(request)
        self._streams.add(resp)
        try:
            while not self._closing:
                event = self._event  # taken before the snapshot: no change can slip between
                data = json.dumps(await self.snapshot())
                await resp.write(f"event: snapshot\ndata: {data}\n\n".encode())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), HEARTBEAT_SECONDS)
                    await asyncio.sleep(COALESCE_SECONDS)
        except (ConnectionError, RuntimeError):
            pass  # the browser went away
        finally:
            self._streams.discard(resp)
        return resp

    async def _pause(self, request: web.Request) -> web.StreamResponse:
        await self.agent.pause()
        self._bump()
        return web.json_response({"paused": True})

    async def _resume(self, request: web.Request) -> web.StreamResponse:
        await self.agent.resume()
        self._bump()
        return web.json_response({"paused": False})

    async def _retry(self, request: web.Request) -> web.StreamResponse:
        name = await _name(request, required=False)
        if isinstance(name, web.Response):
            return name
        done = await self.agent.retry(name)
        self._bump()
        return web.json_response({"retried": done})

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        name = await _name(request, required=True)
        if isinstance(name, web.Response):
            return name
        assert name is not None
        done = await self.agent.cancel(name)
        self._bump()
        return web.json_response({"canceled": done})

    async def _rescan(self, request: web.Request) -> web.StreamResponse:
        await self.agent.rescan()
        return web.json_response({"rescanned": True})

    async def _stop(self, request: web.Request) -> web.StreamResponse:
        """Stop the agent the way Quit, Ctrl-C and SIGTERM do (``request_stop``): on Windows,
        where an agent started at login has no console and no signal reaches it, this is how
        `convert-agent stop` stops it. The answer goes out first; the server closes with the
        agent."""
        self.agent.request_stop()
        return web.json_response({"stopping": True})

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        # The team's agents are read from the database here, off the loop (a cold read).
        self.agent.metrics.team = await self.agent.team_now()
        body, content_type = self.agent.metrics.render()
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = content_type
        return resp


# --------------------------------------------------------------------------- helpers


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _csrf_problem(request: web.Request, allowed: set[str]) -> str | None:
    """Why a state-changing request may come from another site (None: it cannot)."""
    if request.headers.get(CSRF_HEADER) != CSRF_VALUE and request.content_type != (
        "application/json"
    ):
        return f"refused: send {CSRF_HEADER}: {CSRF_VALUE} or a JSON body"
    origin = request.headers.get("Origin")
    if origin is not None and origin.lower() not in {f"http://{h}" for h in allowed}:
        return "refused: the request comes from another origin"
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return "refused: the request comes from another site"
    return None


async def _name(request: web.Request, *, required: bool) -> str | web.Response | None:
    """``{"name": …}`` from a POST body; an error response when it is not usable."""
    raw = await request.read()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        return _error(400, "the body is not JSON")
    if not isinstance(body, dict):
        return _error(400, 'the body must be a JSON object such as {"name": "photo.job"}')
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        return _error(400, '"name" must be a ticket file name, stem or path')
    if required and name is None:
        return _error(400, 'give the ticket: {"name": "photo.job"}')
    return name


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for header in list(response.headers):
        if header.lower().startswith("access-control-"):
            del response.headers[header]  # never any CORS
    response.headers.setdefault("Content-Security-Policy", "default-src 'none'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"


PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>convert-agent</title>
<style nonce="__NONCE__">
:root { --fg:#1d2330; --muted:#677086; --line:#e3e6ee; --bg:#f6f7fb; --ok:#1f8a4c;
        --bad:#c0392b; --warn:#b7791f; --acc:#2f6fde; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
       color:var(--fg); background:var(--bg); }
header { display:flex; flex-wrap:wrap; gap:12px; align-items:center; padding:14px 20px;
         background:#fff; border-bottom:1px solid var(--line); }
h1 { font-size:18px; margin:0 12px 0 0; }
.counts { display:flex; gap:8px; flex-wrap:wrap; }
.count { padding:2px 10px; border-radius:12px; background:var(--bg); border:1px solid var(--line); }
.spacer { flex:1; }
#live { font-size:12px; color:var(--muted); }
#live.on::before { content:"● "; color:var(--ok); }
#live.off::before { content:"● "; color:var(--bad); }
button { font:inherit; padding:4px 12px; border:1px solid var(--line); border-radius:6px;
         background:#fff; cursor:pointer; }
button:hover { border-color:var(--acc); color:var(--acc); }
button:disabled { opacity:.5; cursor:default; }
button.danger:hover { border-color:var(--bad); color:var(--bad); }
main { padding:16px 20px; }
.banner { padding:10px 14px; border-radius:8px; margin-bottom:12px; }
.banner.team { background:#eef4fb; border:1px solid #c9dcf0; }
.banner.problem { background:#fdecea; color:var(--bad); border:1px solid #f5c2bc; }
.banner.paused { background:#fff6e0; color:var(--warn); border:1px solid #f3dfb0; }
.banner.gone { background:#fdecea; color:var(--bad); border:1px solid #f5c2bc; }
table { width:100%; border-collapse:collapse; background:#fff; border:1px solid var(--line);
        border-radius:8px; overflow:hidden; }
th, td { text-align:left; padding:8px 10px; border-bottom:1px solid var(--line);
         vertical-align:top; }
th { font-size:12px; text-transform:uppercase; letter-spacing:.04em; color:var(--muted);
     background:#fafbfd; }
tr:last-child td { border-bottom:none; }
.name { font-weight:600; overflow-wrap:anywhere; min-width:140px; }
.folder, .small { font-size:12px; color:var(--muted); overflow-wrap:anywhere; }
.phase { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px;
         background:#eef2fb; color:var(--acc); }
.phase.done { background:#e6f4ec; color:var(--ok); }
.phase.failed { background:#fdecea; color:var(--bad); }
.phase.canceled { background:#eee; color:var(--muted); }
.waiting { display:block; font-size:12px; color:var(--warn); }
progress { width:120px; height:10px; }
.job { font-family:ui-monospace, monospace; font-size:12px; }
.verdict { font-size:11px; padding:0 6px; border-radius:8px; margin-left:4px;
           white-space:nowrap; }
.verdict.verified { background:#e6f4ec; color:var(--ok); }
.verdict.unverified { background:#fff6e0; color:var(--warn); }
.error { color:var(--bad); max-width:360px; }
.error b { display:block; }
.empty { padding:30px; text-align:center; color:var(--muted); }
#transfers { margin-bottom:12px; }
.transfer { display:flex; gap:10px; align-items:center; font-size:12px; }
.transfer progress { width:200px; }
#toast { position:fixed; bottom:16px; right:16px; background:var(--fg); color:#fff;
         padding:8px 14px; border-radius:6px; opacity:0; transition:opacity .3s; }
#toast.show { opacity:.92; }
</style>
</head>
<body>
<header>
  <h1>convert-agent</h1>
  <div class="counts" id="counts"></div>
  <div class="spacer"></div>
  <span id="live" class="off">connecting</span>
  <button id="pause" type="button">Pause intake</button>
  <button id="retry-all" type="button">Retry all failed</button>
  <button id="rescan" type="button">Rescan folders</button>
</header>
<main>
  <div id="banners"></div>
  <div id="transfers"></div>
  <table>
    <thead><tr>
      <th>Ticket</th><th>Phase</th><th>Progress</th><th>Job</th><th>Server status</th>
      <th>Outputs</th><th>Error</th><th></th>
    </tr></thead>
    <tbody id="tickets"><tr><td colspan="8" class="empty">Loading…</td></tr></tbody>
  </table>
</main>
<div id="toast"></div>
<script nonce="__NONCE__">
"use strict";
const STEPS = ["pending", "creating", "uploading", "starting", "processing", "downloading", "done"];
const $ = (id) => document.getElementById(id);
let state = null, polling = null, source = null;

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined)
    node.append(typeof c === "string" ? document.createTextNode(c) : c);
  return node;
}

function toast(msg) {
  const t = $("toast"); t.textContent = msg; t.classList.add("show");
  clearTimeout(toast.timer); toast.timer = setTimeout(() => t.classList.remove("show"), 2500);
}

async function post(path, body) {
  try {
    const r = await fetch(path, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-Requested-With": "convert-agent"},
      body: JSON.stringify(body || {}),
    });
    const data = await r.json().catch(() => ({}));
    if (!r.ok) { toast(data.error || ("HTTP " + r.status)); return null; }
    return data;
  } catch (e) { toast("the agent did not answer"); return null; }
}

function since(seconds) {
  if (seconds < 1) return "now";
  if (seconds < 90) return Math.round(seconds) + " s";
  if (seconds < 5400) return Math.round(seconds / 60) + " min";
  return Math.round(seconds / 3600) + " h";
}

function ticketRow(t, now) {
  const terminal = ["done", "failed", "canceled"].includes(t.phase);
  const step = STEPS.indexOf(t.phase);
  const phase = el("td", {}, el("span", {class: "phase " + t.phase, text: t.phase}));
  if (t.waiting && t.next_attempt_at)
    phase.append(el("span", {class: "waiting", text: "waiting · next try in " +
      since(t.next_attempt_at - now)}));
  const progress = el("td");
  if (step >= 0) {
    progress.append(el("progress", {max: STEPS.length - 1, value: step,
      title: t.phase + " (" + step + " of " + (STEPS.length - 1) + " steps)"}));
  }
  const outputs = el("td");
  for (const o of t.outputs || []) {
    const line = el("div", {class: "small"}, o.name);
    if (o.verdict) line.append(el("span", {class: "verdict " + o.verdict, text: o.verdict}));
    else if (o.state !== "done") line.append(" (" + o.state + ")");
    outputs.append(line);
  }
  const error = el("td", {class: "error"});
  if (t.error && t.error.message) {
    error.append(el("b", {text: t.error.title || "error"}), t.error.message);
  }
  const actions = el("td");
  if (t.phase === "failed" || t.waiting) {
    actions.append(el("button", {type: "button", class: "retry", text: "Retry",
      "data-name": t.ticket}));
  }
  if (!terminal) {
    actions.append(" ", el("button", {type: "button", class: "cancel danger", text: "Cancel",
      "data-name": t.ticket}));
  }
  const folder = t.ticket.slice(0, t.ticket.length - t.name.length);
  const short = folder.split(/[\\/]/).filter(Boolean).pop() || folder;
  const where = el("td", {}, el("div", {class: "name", text: t.name}),
    el("div", {class: "folder", text: "in " + short, title: folder}));
  if (t.holder) where.append(el("div", {class: "folder holder", "data-holder": t.holder,
    text: "held by " + t.holder}));
  return el("tr", {"data-ticket": t.name, "data-id": String(t.id), "data-phase": t.phase},
    where,
    phase, progress,
    el("td", {class: "job", text: t.job_id ? t.job_id.slice(0, 8) + "…" : "—",
      title: t.job_id || ""}),
    el("td", {class: "small",
      text: [t.server_status, t.server_info].filter(Boolean).join(" · ") || "—"}),
    outputs, error, actions);
}

function render(s) {
  state = s;
  const counts = $("counts"); counts.replaceChildren();
  for (const k of ["pending", "creating", "uploading", "starting", "processing", "downloading",
                   "waiting", "done", "failed", "canceled"]) {
    const n = (s.counts || {})[k] || 0;
    if (n || k === "done" || k === "failed")
      counts.append(el("span", {class: "count", "data-count": k, text: k + " " + n}));
  }
  const banners = $("banners"); banners.replaceChildren();
  if (s.problem) banners.append(el("div", {class: "banner problem",
    text: (s.problem.title || "problem") + ": " + s.problem.message}));
  if (s.quota_until && s.quota_until > s.now) banners.append(el("div", {class: "banner problem",
    text: "The conversion quota is used up; new tickets wait " +
          since(s.quota_until - s.now) + "."}));
  if (s.team && (s.team.agents || []).length) banners.append(el("div", {class: "banner team",
    "data-team": "1", text: "Team: " + s.team.agents.filter((a) => !a.stopped).map((a) =>
      a.name + " on " + a.host + " (holds " + a.held + ", seen " +
      Math.round(a.heartbeat_age) + "s ago)").join(" · ")}));
  if (s.paused) banners.append(el("div", {class: "banner paused",
    text: "Intake is paused: tickets already running go on, new ones wait."}));
  $("pause").textContent = s.paused ? "Resume intake" : "Pause intake";
  $("pause").disabled = false;
  const failed = (s.tickets || []).filter((t) => t.phase === "failed").length;
  $("retry-all").disabled = failed === 0;
  const transfers = $("transfers"); transfers.replaceChildren();
  for (const x of s.transfers || []) {
    const bar = el("progress", {max: x.total || 1, value: x.total ? x.done : 0});
    transfers.append(el("div", {class: "transfer"}, bar,
      el("span", {text: x.label + " — " + Math.round(x.done / 1024) + " KiB" +
        (x.total ? " of " + Math.round(x.total / 1024) + " KiB" : "")})));
  }
  const body = $("tickets"); body.replaceChildren();
  const list = (s.tickets || []).slice().reverse();
  if (!list.length) body.append(el("tr", {}, el("td", {colSpan: 8, class: "empty",
    text: "No tickets yet: drop a NAME.job file into a watched folder."})));
  for (const t of list) body.append(ticketRow(t, s.now || Date.now() / 1000));
}

function live(on, text) {
  const l = $("live"); l.className = on ? "on" : "off"; l.textContent = text;
}

async function poll() {
  try {
    const r = await fetch("/api/status", {credentials: "same-origin"});
    if (r.status === 401 || r.status === 403) { gone(); return; }
    render(await r.json()); live(true, "live (polling)");
  } catch (e) { live(false, "the agent does not answer"); }
}

function gone() {
  if (polling) clearInterval(polling);
  polling = null;
  if (source) source.close();
  live(false, "disconnected");
  $("banners").replaceChildren(el("div", {class: "banner gone",
    text: "This page is no longer authorised (the agent restarted or stopped): open the " +
          "dashboard again from the tray menu."}));
}

function startPolling() {
  if (source) { source.close(); source = null; }
  if (!polling) { poll(); polling = setInterval(poll, 1000); }
}

function connect() {
  if (!window.EventSource) { startPolling(); return; }
  source = new EventSource("/api/events");
  source.addEventListener("snapshot", (e) => { render(JSON.parse(e.data)); live(true, "live"); });
  source.onerror = () => {
    live(false, "reconnecting");
    if (source.readyState === EventSource.CLOSED) startPolling();
  };
}

document.addEventListener("click", async (e) => {
  const b = e.target.closest("button");
  if (!b) return;
  if (b.id === "pause") {
    b.disabled = true;
    const paused = state && state.paused;
    if (await post(paused ? "/api/resume" : "/api/pause"))
      toast(paused ? "intake resumed" : "intake paused");
  } else if (b.id === "retry-all") {
    b.disabled = true;
    const r = await post("/api/retry");
    if (r) toast(r.retried.length ? "retrying " + r.retried.length + " ticket(s)"
                                  : "nothing to retry");
  } else if (b.id === "rescan") {
    if (await post("/api/rescan")) toast("rescanning the folders");
  } else if (b.classList.contains("retry")) {
    b.disabled = true;
    const r = await post("/api/retry", {name: b.dataset.name});
    if (r) toast(r.retried.length ? "retrying" : "nothing to retry");
  } else if (b.classList.contains("cancel")) {
    if (!confirm("Cancel this ticket and its remote job?")) return;
    b.disabled = true;
    const r = await post("/api/cancel", {name: b.dataset.name});
    if (r) toast(r.canceled.length ? "canceled" : "nothing to cancel");
  }
});

connect();
</script>
</body>
</html>
"""
