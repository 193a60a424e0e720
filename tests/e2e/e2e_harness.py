"""Helpers for end-to-end tests: the real agent process against the real emulator, in real folders.

The emulator runs in the test's event loop (so tests can read its state directly); the agent runs
as a child process (`python -m agent`), so it can be killed with SIGKILL like a real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

KEY = "e2e0" * 8


def png_bytes(size: tuple[int, int] = (24, 16), color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def gif_bytes(frames: int = 3) -> bytes:
    images = [Image.new("RGB", (10, 10), c) for c in ("red", "green", "blue", "white")[:frames]]
    out = io.BytesIO()
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=50, loop=0)
    return out.getvalue()


def write_config(
    path: Path,
    base_url: str,
    folders: Iterable[Path | Mapping[str, Any]],
    state: Path,
    **sections: Mapping[str, Any],
) -> Path:
    """A config tuned for tests: short settle and poll times, no log file."""
    cfg: dict[str, Any] = {
        "api": {"base_url": base_url, "key": KEY, "requests_per_second": 1000},
        "folders": [str(f) if isinstance(f, Path) else dict(f) for f in folders],
        "state": {"path": str(state)},
        "tickets": {"settle_seconds": 0.1, "parse_grace_seconds": 1, "cancel_grace_seconds": 0.5},
        "polling": {"min_interval": 0.1, "max_interval": 0.5, "reconcile_interval": 2},
        "log": {"file": False, "level": "info"},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(cfg))
    return path


# The agent under test runs headless: no tray icon, no desktop notifications on a developer's
# desktop, and no key or base URL from the developer's environment.
_NOT_PASSED = ("API2CONVERT_", "DISPLAY", "WAYLAND_DISPLAY", "DBUS_SESSION_BUS_ADDRESS")


def agent_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(_NOT_PASSED)}


def agent_cmd(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "agent", "--config", str(config), *args]


def spawn_agent(config: Path, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start `convert-agent run` (or the given command) as a child process."""
    env = agent_env()
    if log is None:
        return subprocess.Popen(
            agent_cmd(config, *(args or ("run",))),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            agent_cmd(config, *(args or ("run",))),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


async def run_agent(config: Path, *args: str, timeout: float = 120.0) -> tuple[int, str]:
    """Run the agent to completion (e.g. `run --once`) without blocking the test's loop."""
    env = agent_env()
    proc = await asyncio.create_subprocess_exec(
        *agent_cmd(config, *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        raise AssertionError(
            f"agent did not finish in {timeout}s:\n{out.decode()[-4000:]}"
        ) from None
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def stop_agent(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    deadline = time.monotonic() + 10
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    return proc.returncode


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


#: Sidecar phases of a ticket that has finished.
FINISHED = ("done", "failed", "canceled")
#: Files a test's scaffolding keeps directly in the tmp root beside the folder: the config, the
#: state store (with its WAL, shared memory and lock files), logs.
SCAFFOLDING = ("*.yaml", "*.yml", "*.db", "*.db-*", "*.db.*", "*.log")

ExtraStarts = Mapping[str, int] | Callable[[Mapping[str, Any]], int]


def _sidecars(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for p in sorted(folder.rglob("*.status.yaml")):
        try:
            data = yaml.safe_load(p.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict):
            found.append((p, data))
    return found


def invariants(
    folder: Path,
    emulator_state: Mapping[str, Any],
    *,
    allow_extra_starts: ExtraStarts | None = None,
    staged_ok: str | None = None,
    root: Path | None = None,
    allowed: Iterable[Path] = (),
) -> list[str]:
    """What must hold after any run: violations in words (empty = all good).

    - no temp or part files; no `name (1).ext` duplicates;
    - every output a sidecar records as written is in the folder, its bytes' md5 is the
      checksum the sidecar records, and that is the server's checksum of an output of the
      sidecar's job; a file named like a server output that no sidecar claims has that
      output's bytes;
    - one start request per job (`start_requests`, repeats included), none started twice;
      ``allow_extra_starts`` (job id → extra requests, or a function of the emulator's job row)
      lets a caller that knows why (e.g. a start whose answer a fault dropped) allow more;
    - no job the agent created (one with an Idempotency-Key) left staged (never started, not
      canceled) unless its ticket is still unfinished; ``staged_ok`` (a reason) turns this off
      for a test that leaves one on purpose;
    - nothing written outside the folder: under ``root`` (default: the folder's parent, the
      test's tmp dir) only the folder, the test scaffolding (config, state store, logs directly
      in ``root``) and the ``allowed`` paths (files, or directories and all below them).
    """
    problems: list[str] = []
    jobs = {j["id"]: j for j in emulator_state["jobs"]}
    sidecars = _sidecars(folder)
    claimed: set[Path] = set()

    # temp files, duplicates
    for p in sorted(folder.rglob("*")):
        if p.is_dir():
            continue
        name = p.name
        if name.startswith(".") or name.endswith((".part", ".tmp")):
            problems.append(f"temp file left: {p}")
        if " (1)." in name:
            problems.append(f"duplicated output: {p}")

    # (a) every written output has the server's bytes
    for side, data in sidecars:
        job = jobs.get(str(data.get("job_id")))
        server_sums = {o["checksum"] for o in job["outputs"]} if job else set()
        for out in data.get("outputs") or []:
            if out.get("state") != "done" or not out.get("name"):
                continue
            path = side.parent / str(out["name"])
            claimed.add(path)
            if job is None:
                problems.append(f"{path}: its sidecar names job {data.get('job_id')}, unknown")
                continue
            if not path.is_file():
                problems.append(f"output missing: {path} (recorded as written in {side.name})")
                continue
            digest = md5(path)
            if out.get("checksum") and digest != out["checksum"]:
                problems.append(f"{path}: md5 {digest} is not the recorded {out['checksum']}")
            if digest not in server_sums:
                problems.append(f"{path}: md5 {digest} matches no output of job {job['id']}")
    by_name: dict[str, set[str]] = {}
    for j in jobs.values():
        for o in j["outputs"]:
            by_name.setdefault(o["filename"], set()).add(o["checksum"])
    for p in sorted(folder.rglob("*")):
        if p in claimed or not p.is_file() or p.name not in by_name:
            continue
        if md5(p) not in by_name[p.name]:
            problems.append(f"{p}: named like a server output but its bytes differ")

    # (b) one start request per job
    for job in jobs.values():
        extra = 0
        if callable(allow_extra_starts):
            extra = allow_extra_starts(job)
        elif allow_extra_starts is not None:
            extra = allow_extra_starts.get(job["id"], 0)
        if job["starts"] > 1:
            problems.append(f"job {job['id']} started {job['starts']} times")
        if job["start_requests"] > 1 + extra:
            problems.append(
                f"job {job['id']} got {job['start_requests']} start requests (allowed: {1 + extra})"
            )

    # (c) no staged job left behind for a finished ticket
    if staged_ok is None:
        unfinished = [d for _, d in sidecars if d.get("phase") not in FINISHED]
        unfinished_jobs = {d.get("job_id") for d in unfinished}
        unsure = None in unfinished_jobs or any(
            not p.with_name(p.name.removesuffix(".job") + ".status.yaml").exists()
            for p in folder.rglob("*.job")
        )
        for job in jobs.values():
            staged = job["status"] == "incomplete" and job["starts"] == 0
            if not staged or job.get("idempotency_key") is None:
                continue
            if job["id"] in unfinished_jobs or unsure:
                continue
            problems.append(
                f"job {job['id']} (Idempotency-Key {job['idempotency_key']}) was left staged "
                "though no ticket in the folder is still working on it"
            )

    # (d) nothing outside the folder
    base = root if root is not None else folder.parent
    ok = [folder, *allowed]
    for p in sorted(base.rglob("*")):
        if p.is_dir() or any(p == a or a in p.parents for a in ok):
            continue
        if p.parent == base and any(p.match(g) for g in SCAFFOLDING):
            continue
        problems.append(f"file outside the folder: {p}")
    return problems


def outputs_match(folder: Path, emulator_state: Mapping[str, Any], names: Iterable[str]) -> None:
    by_sum = {
        o["checksum"] for j in emulator_state["jobs"] for o in j["outputs"] if o.get("checksum")
    }
    for n in names:
        assert md5(folder / n) in by_sum, f"{n} does not match any server checksum"


# --------------------------------------------------------------------------- more helpers


def txt_bytes(text: str) -> bytes:
    return text.encode()


def jpg_bytes(size: tuple[int, int] = (20, 12), color: str = "blue") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "JPEG")
    return out.getvalue()


def names(folder: Path) -> set[str]:
    """Every file name under ``folder`` (recursive, relative), hidden ones included."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir()}


def sidecar(folder: Path, stem: str) -> dict[str, Any]:
    data = yaml.safe_load((folder / f"{stem}.status.yaml").read_text())
    assert isinstance(data, dict)
    return data


def job_of(emulator_state: Mapping[str, Any], job_id: str) -> dict[str, Any]:
    for j in emulator_state["jobs"]:
        if j["id"] == job_id:
            return dict(j)
    raise AssertionError(f"the emulator has no job {job_id}")


def emulator_outputs(emulator_state: Mapping[str, Any]) -> dict[str, str]:
    """filename → checksum for every output the emulator produced (filenames must be unique)."""
    out: dict[str, str] = {}
    for j in emulator_state["jobs"]:
        for o in j["outputs"]:
            assert o["filename"] not in out, f"two outputs named {o['filename']}"
            out[o["filename"]] = o["checksum"]
    return out


async def wait_for_log(log: Path, text: str, timeout: float = 15.0) -> None:
    """Wait until the agent's log (spawn_agent(log=...)) contains ``text``."""

    def seen() -> bool:
        try:
            return text in log.read_text(errors="replace")
        except FileNotFoundError:
            return False

    await wait_for(seen, timeout, f"{text!r} in {log}")


@contextlib.asynccontextmanager
async def serve_files(files: Mapping[str, bytes]) -> AsyncIterator[str]:
    """A loopback web server for URL inputs: ``files`` maps a path (``/a.png``) to its bytes.

    Yields the origin (``http://127.0.0.1:PORT``)."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        data = files.get(request.path)
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def api_call(
    base_url: str, method: str, path: str, body: Mapping[str, Any] | None = None
) -> Any:
    """One authenticated request to the emulator's API (as another tool or the web site would)."""
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, base_url + path, json=body, headers={"X-Api2convert-Api-Key": KEY}
        ) as resp,
    ):
        assert resp.status < 300, f"{method} {path}: {resp.status} {await resp.text()}"
        return await resp.json() if resp.status != 204 else None


async def create_remote_job(base_url: str, url: str, target: str) -> tuple[str, str]:
    """A job created and started directly through the API (for adoption tickets): (id, token)."""
    job = await api_call(
        base_url,
        "POST",
        "/jobs",
        {
            "process": True,
            "input": [{"type": "remote", "source": url}],
            "conversion": [{"target": target}],
        },
    )
    return job["id"], job["token"]


async def set_faults(base_url: str, faults: list[Mapping[str, Any]] | None) -> None:
    """Set (or with None clear) the emulator's faults through its control endpoint."""
    import aiohttp

    origin = base_url.removesuffix("/v2")
    async with aiohttp.ClientSession() as session:
        if faults is None:
            async with session.delete(origin + "/_emulator/faults") as resp:
                assert resp.status < 300
        else:
            body = {"faults": list(faults), "replace": True}
            async with session.post(origin + "/_emulator/faults", json=body) as resp:
                assert resp.status < 300, await resp.text()


async def outage(emulator: Any, seconds: float) -> None:
    """The server is down (connections refused) for ``seconds``, then back on the same port
    with the same state: the listening sites are stopped and a new one is bound."""
    from aiohttp import web

    runner = emulator.runner
    for site in list(runner.sites):
        await site.stop()
    await runner.server.shutdown(0.1)  # open keep-alive connections go too
    await asyncio.sleep(seconds)
    site = web.TCPSite(runner, emulator.host, emulator.port)
    await site.start()


def fault_hits(emulator_state: Mapping[str, Any]) -> dict[str, int]:
    """`route:kind` → how many times that fault fired."""
    hits: dict[str, int] = {}
    for f in emulator_state["faults"]:
        key = f"{f['route']}:{f['kind']}"
        hits[key] = hits.get(key, 0) + f["hits"]
    return hits
