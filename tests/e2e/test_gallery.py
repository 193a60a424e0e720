"""The ticket gallery (docs/examples/*/): every example folder, run by the real agent process
against the emulator over real HTTP in a real folder, and its outputs checked by kind.

Folders are discovered, not listed: a new `docs/examples/<guide>/` is tested as soon as it exists.
An example whose `needs` (catalog entries `category/target`, or input engines `engine/name`) the
emulator does not offer is **waiting for the emulator target**: under CI=true that fails the run
(it is not skipped); elsewhere it is reported as skipped with that reason. Once the emulator lists
the target in `GET /conversions` (or honours the engine), the example simply runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import json
import mimetypes
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml
from e2e_harness import KEY, invariants, run_agent, sidecar, write_config
from PIL import Image

from agent.emulator import RunningEmulator
from agent.gallery import GUIDES, Example, default_root, discover, load

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]
ROOT = default_root()
assert ROOT is not None, "docs/examples is missing from this checkout"
EXAMPLES = discover(ROOT)


def in_ci() -> bool:
    """CI=true, as tests/conftest.py reads it (there a skip fails the run too)."""
    return os.environ.get("CI", "").strip().lower() == "true"


# --------------------------------------------------------------------------- the gallery itself


def test_every_sdk_guide_has_an_example_folder() -> None:
    assert sorted(p.name for p in EXAMPLES) == sorted(GUIDES)


def test_the_committed_inputs_are_what_make_inputs_writes() -> None:
    script = ROOT / "make_inputs.py"
    done = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_each_example_is_complete(path: Path) -> None:
    """example.yaml reads, there is a README, every ticket has checks and every check a ticket."""
    example = load(path)
    assert (path / "README.md").is_file()
    stems = {p.name.removesuffix(".job") for p in example.tickets()}
    assert stems, f"{path.name}: no ticket"
    assert set(example.expect) == stems, f"{path.name}: expect names {sorted(example.expect)}"


# --------------------------------------------------------------------------- running an example


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
async def test_gallery_example(path: Path, tmp_path: Path, make_emulator: MakeEmulator) -> None:
    example = load(path)
    emu = await make_emulator(processing_seconds=0.2, **dict(example.emulator))
    catalog = await _catalog(emu.base_url)
    _check_needs_are_declared(example, catalog)
    waiting = example.missing(catalog)
    async with _serve(example) as served, _receive(example) as (receivers, received):
        served = {**served, **receivers}
        for engine in example.engine_needs():
            if not await _engine_works(emu.base_url, engine, served):
                waiting.append(f"engine/{engine}")
        for name in example.decode_needs():
            if not await _decodes(emu.base_url, (path / name).read_bytes(), name):
                waiting.append(f"decode/{name}")
        if waiting:
            reason = (
                f"{example.name}: waiting for the emulator target(s) {', '.join(waiting)} "
                "(not in its GET /conversions catalog, or an input engine it does not honour, "
                "or an input it cannot read)"
            )
            if in_ci():
                pytest.fail(reason)
            pytest.skip(reason)
        inbox = tmp_path / "inbox"
        inbox.mkdir()
        for src in example.files():
            data = src.read_bytes()
            if src.suffix == ".job":
                data = _rewrite_urls(data.decode("utf-8"), served).encode("utf-8")
            (inbox / src.name).write_bytes(data)
        folder: dict[str, Any] = {"path": str(inbox), **dict(example.folder)}
        cfg = write_config(
            tmp_path / "c.yaml",
            emu.base_url,
            [folder],
            tmp_path / "state.db",
            **{k: dict(v) for k, v in example.config.items()},
        )
        code, out = await run_agent(cfg, "run", "--once", timeout=120)
        assert code == 0, out[-4000:]
        if example.receive:  # while the receiver still listens: a callback may come late
            await _check_callbacks(example, received, inbox)
    for stem, spec in example.expect.items():
        side = sidecar(inbox, stem)
        assert side["phase"] == "done", f"{stem}: {side.get('error')}\n{out[-3000:]}"
        assert (inbox / f"{stem}.job.done").exists()
        written = [o for o in side.get("outputs") or [] if o.get("state") == "done"]
        assert all(o.get("verdict") == "verified" for o in written), written  # checksums matched
        names = [o["name"] for o in written]
        outputs = {n: (inbox / n).read_bytes() for n in names}
        problems = match_outputs(spec, outputs, path)
        assert not problems, f"{example.name}/{stem}: " + "; ".join(problems)
    state = emu.state.snapshot()
    # An input the server names its output after (document.pdf → document.pdf) is "named like a
    # server output": fine while it is the example's own file, unchanged.
    inputs = {
        inbox / p.name
        for p in example.files()
        if (inbox / p.name).is_file() and (inbox / p.name).read_bytes() == p.read_bytes()
    }
    problems = [
        p
        for p in invariants(inbox, state)
        if not any(p == f"{i}: named like a server output but its bytes differ" for i in inputs)
    ]
    assert problems == []
    if "rate_limit" in example.emulator:  # the limit was met, and waited out (all done above)
        assert any(r["status"] == 429 for r in state["requests"]), "no request was refused"


async def _catalog(base_url: str) -> set[tuple[str, str]]:
    """Every (category, target) the emulator lists in ``GET /conversions``, all pages."""
    found: set[tuple[str, str]] = set()
    async with aiohttp.ClientSession() as session:
        for page in range(1, 100):
            async with session.get(f"{base_url}/conversions", params={"page": page}) as resp:
                assert resp.status == 200, await resp.text()
                rows = await resp.json()
            if not rows:
                break
            found.update((str(r["category"]), str(r["target"])) for r in rows)
    assert found, "the emulator's catalog is empty"
    return found


def _ticket_conversions(example: Example) -> list[tuple[str | None, str]]:
    pairs: list[tuple[str | None, str]] = []
    for ticket in example.tickets():
        data = yaml.safe_load(ticket.read_text())
        for conv in data.get("conversion") or [data]:
            if "target" in conv:
                pairs.append((conv.get("category"), str(conv["target"])))
    return pairs


def _check_needs_are_declared(example: Example, catalog: set[tuple[str, str]]) -> None:
    """A ticket's target the emulator does not list must be in `needs` (else the example is
    mislabelled: it would run, fail, and look like an agent bug)."""
    targets = {t for _, t in catalog}
    needs = set(example.needs)
    for category, target in _ticket_conversions(example):
        listed = (category, target) in catalog if category else target in targets
        if not listed:
            need = f"{category}/{target}" if category else target
            assert need in needs, (
                f"{example.name}: a ticket converts to {need}, which the emulator does not list; "
                "name it in example.yaml `needs`"
            )


@contextlib.asynccontextmanager
async def _serve(example: Example) -> AsyncIterator[dict[str, str]]:
    """Serve the example's `serve` files on loopback; yields ticket URL → loopback URL."""
    from aiohttp import web

    files: dict[str, Path] = {}
    for url, name in example.serve.items():
        files[urlsplit(url).path or "/"] = example.path / name

    async def handler(request: web.Request) -> web.Response:
        src = files.get(request.path)
        if src is None:
            raise web.HTTPNotFound()
        kind = mimetypes.guess_type(src.name)[0] or "application/octet-stream"
        return web.Response(body=src.read_bytes(), content_type=kind)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    origin = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield {url: origin + (urlsplit(url).path or "/") for url in example.serve}
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def _receive(
    example: Example,
) -> AsyncIterator[tuple[dict[str, str], list[tuple[dict[str, str], bytes]]]]:
    """A callback receiver on loopback for the example's `receive` URLs: yields ticket URL →
    loopback URL, and the list every POST (headers, raw body) is appended to."""
    from aiohttp import web

    got: list[tuple[dict[str, str], bytes]] = []

    async def handler(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    origin = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield {url: origin + (urlsplit(url).path or "/") for url in example.receive}, got
    finally:
        await runner.cleanup()


async def _check_callbacks(
    example: Example, received: list[tuple[dict[str, str], bytes]], inbox: Path
) -> None:
    """Each ticket's job was POSTed to the receiver when it completed, signed as the SDKs check
    (hex HMAC-SHA256 of the raw body with the secret), when the emulator has a secret."""
    jobs = {sidecar(inbox, stem)["job_id"] for stem in example.expect}
    for _ in range(100):  # the callback may land just after the agent's last poll
        if jobs <= {json.loads(body)["id"] for _, body in received}:
            break
        await asyncio.sleep(0.05)
    secret = example.emulator.get("webhook_secret")
    done = set()
    for headers, body in received:
        job = json.loads(body)
        if secret:
            want = hmac.new(str(secret).encode(), body, hashlib.sha256).hexdigest()
            assert headers.get("X-Oc-Signature") == want, "a callback's signature does not match"
        if job["status"]["code"] == "completed":
            done.add(job["id"])
    assert jobs <= done, f"no completed callback for {sorted(jobs - done)}"


def _rewrite_urls(text: str, served: Mapping[str, str]) -> str:
    for url, local in served.items():
        text = text.replace(url, local)
    return text


async def _finished(session: aiohttp.ClientSession, base_url: str, job: Any) -> Any:
    for _ in range(200):
        async with session.get(f"{base_url}/jobs/{job['id']}") as resp:
            job = await resp.json()
        if job["status"]["code"] in ("completed", "failed", "canceled"):
            break
        await asyncio.sleep(0.05)
    return job


async def _decodes(base_url: str, data: bytes, name: str) -> bool:
    """Does the emulator read this input? Uploaded through the API (not the agent), to PNG."""
    async with aiohttp.ClientSession(headers={"X-Api2convert-Api-Key": KEY}) as session:
        body = {"process": False, "conversion": [{"category": "image", "target": "png"}]}
        async with session.post(f"{base_url}/jobs", json=body) as resp:
            assert resp.status == 201, await resp.text()
            job = await resp.json()
        form = aiohttp.FormData()
        form.add_field("file", data, filename=name, content_type="application/octet-stream")
        upload = f"{job['server'].rstrip('/')}/upload-file/{job['id']}"
        async with session.post(upload, data=form) as resp:
            assert resp.status < 300, await resp.text()
        async with session.patch(f"{base_url}/jobs/{job['id']}", json={"process": True}) as resp:
            assert resp.status < 300, await resp.text()
        job = await _finished(session, base_url, job)
    return bool(job["status"]["code"] == "completed")


async def _engine_works(base_url: str, engine: str, served: Mapping[str, str]) -> bool:
    """Does the emulator honour this input engine? A job through the API (not the agent) with a
    served page as a remote input; `screenshot` must give a PNG."""
    if engine != "screenshot" or not served:
        raise AssertionError(f"the gallery test cannot probe input engine {engine!r}")
    page = next(iter(served.values()))
    headers = {"X-Api2convert-Api-Key": KEY}
    async with aiohttp.ClientSession(headers=headers) as session:
        body = {
            "process": True,
            "input": [{"type": "remote", "source": page, "engine": engine}],
            "conversion": [{"category": "image", "target": "png"}],
        }
        async with session.post(f"{base_url}/jobs", json=body) as resp:
            if resp.status >= 300:
                return False
            job = await resp.json()
        job = await _finished(session, base_url, job)
        if job["status"]["code"] != "completed" or not job["output"]:
            return False
        async with session.get(job["output"][0]["uri"]) as resp:
            data = await resp.read()
    return data.startswith(b"\x89PNG\r\n\x1a\n")


# --------------------------------------------------------------------------- output checks


def match_outputs(spec: Any, outputs: Mapping[str, bytes], folder: Path) -> list[str]:
    """Problems (empty = fine) matching the written outputs to the checks, one output each.

    ``spec`` is a list of checks (exactly that many outputs) or ``{at_least: N, checks: [...]}``.
    """
    if isinstance(spec, dict):
        checks, at_least = list(spec["checks"]), int(spec.get("at_least", 1))
        if len(outputs) < at_least:
            return [f"{len(outputs)} outputs, expected at least {at_least}"]
    else:
        checks = list(spec)
        if len(outputs) != len(checks):
            return [f"{len(outputs)} outputs {sorted(outputs)}, expected {len(checks)}"]
    problems: list[str] = []
    unused = dict(outputs)
    for check in checks:
        why: list[str] = []
        for name, data in unused.items():
            reason = check_output(check, data, folder)
            if reason is None:
                del unused[name]
                break
            why.append(f"{name}: {reason}")
        else:
            problems.append(f"no output passes {check} ({'; '.join(why) or 'no outputs left'})")
    return problems


def check_output(check: Mapping[str, Any], data: bytes, folder: Path) -> str | None:
    """None when ``data`` passes ``check``; else why not."""
    kind = check["kind"]
    if kind == "image":
        return _image_problem(check, data, folder)
    if kind == "text":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return "not UTF-8 text"
        missing = [s for s in check.get("contains", []) if s not in text]
        return f"does not contain {missing}" if missing else None
    if kind == "json":
        try:
            value = json.loads(data)
        except ValueError as exc:
            return f"not JSON ({exc})"
        return None if isinstance(value, dict | list) and value else "empty JSON"
    if kind == "sha256":
        want = hashlib.sha256((folder / check["of"]).read_bytes()).hexdigest()
        digests = re.findall(rb"\b[0-9a-fA-F]{64}\b", data)
        if [d.decode().lower() for d in digests] != [want]:
            return f"holds {digests[:3]!r}, not the sha256 {want} of {check['of']}"
        return None
    if kind == "zip":
        return _zip_problem(check, data, folder)
    if kind == "holds_image":
        if any(data == p.read_bytes() for p in folder.iterdir() if p.is_file()):
            return "is an input of the example, unchanged"
        if _image_problem(check, data, folder) is None:
            return None
        if zipfile.is_zipfile(io.BytesIO(data)):
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                for member in zf.namelist():
                    if _image_problem(check, zf.read(member), folder) is None:
                        return None
        return f"neither is nor holds an image of {check.get('width')}x{check.get('height')}"
    if kind == "pdf":
        return _pdf_problem(check, data)
    if kind == "aac":
        return _aac_problem(data)
    raise AssertionError(f"unknown check kind {kind!r} in example.yaml")


def _image_problem(check: Mapping[str, Any], data: bytes, folder: Path) -> str | None:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            fmt, (width, height) = img.format, img.size
    except Exception as exc:  # Pillow raises many kinds for bytes that are not an image
        return f"not an image ({type(exc).__name__})"
    if "format" in check and fmt != check["format"]:
        return f"{fmt}, not {check['format']}"
    if "width" in check and width != check["width"]:
        return f"{width} px wide, not {check['width']}"
    if "height" in check and height != check["height"]:
        return f"{height} px high, not {check['height']}"
    if "smaller_than" in check:
        size = (folder / check["smaller_than"]).stat().st_size
        if len(data) >= size:
            return f"{len(data)} bytes, not smaller than {check['smaller_than']} ({size})"
    return None


def _zip_problem(check: Mapping[str, Any], data: bytes, folder: Path) -> str | None:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        return "not a zip archive"
    with zf:
        members = {Path(n).name: n for n in zf.namelist() if not n.endswith("/")}
        want = list(check["members"])
        if sorted(members) != sorted(want):
            return f"lists {sorted(members)}, not {sorted(want)}"
        for name in want:
            if zf.read(members[name]) != (folder / name).read_bytes():
                return f"{name} in the archive differs from the input"
    return None


def _pdf_problem(check: Mapping[str, Any], data: bytes) -> str | None:
    if not data.startswith(b"%PDF-"):
        return "not a PDF"
    try:
        import pypdf
    except ImportError:
        pypdf = None
    if pypdf is None:  # without a PDF reader: count page objects, look for an image XObject
        pages = len(re.findall(rb"/Type\s*/Page(?!s)", data))
        has_image = re.search(rb"/Subtype\s*/Image", data) is not None
    else:
        reader = pypdf.PdfReader(io.BytesIO(data))
        pages = len(reader.pages)
        has_image = bool(reader.pages[0].images) if pages else False
    if "pages" in check and pages != check["pages"]:
        return f"{pages} pages, not {check['pages']}"
    if check.get("image_on_page_1") and not has_image:
        return "no image on page 1"
    return None


def _aac_problem(data: bytes) -> str | None:
    adts = len(data) > 7 and data[0] == 0xFF and (data[1] & 0xF6) == 0xF0
    mp4 = data[4:8] == b"ftyp"
    if not (adts or mp4):
        return "neither an ADTS AAC stream nor an MP4/M4A container"
    try:
        import av
    except ImportError:
        return None  # the container check above is all there is without a decoder
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.audio[0]
            if stream.codec_context.name != "aac":
                return f"audio codec {stream.codec_context.name}, not aac"
            frames = sum(1 for _ in container.decode(stream))
    except Exception as exc:  # PyAV raises its own error family for undecodable data
        return f"does not decode ({type(exc).__name__}: {exc})"
    return None if frames else "decodes to no audio frames"


# --------------------------------------------------------------------------- the checks can fail


def _zip_of(members: Mapping[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue()


def test_the_output_checks_tell_right_from_wrong() -> None:
    archives = ROOT / "create-archives"
    names = ["photo.jpg", "notes.txt", "data.csv"]
    inputs = {n: (archives / n).read_bytes() for n in names}
    zip_check = {"kind": "zip", "members": names}
    assert check_output(zip_check, _zip_of(inputs), archives) is None
    assert (
        check_output(zip_check, _zip_of({f"in/{n}": d for n, d in inputs.items()}), archives)
        is None
    )
    assert "lists" in str(
        check_output(zip_check, _zip_of({"photo.jpg": inputs["photo.jpg"]}), archives)
    )
    changed = {**inputs, "notes.txt": b"other"}
    assert "differs" in str(check_output(zip_check, _zip_of(changed), archives))
    assert check_output(zip_check, b"PK nothing", archives) == "not a zip archive"

    hashes = ROOT / "create-hashes"
    digest = hashlib.sha256((hashes / "document.pdf").read_bytes()).hexdigest()
    sha_check = {"kind": "sha256", "of": "document.pdf"}
    assert check_output(sha_check, f"{digest}  document.pdf\n".encode(), hashes) is None
    assert check_output(sha_check, hashlib.sha256(b"x").hexdigest().encode(), hashes) is not None

    photo = ROOT / "quickstart"
    png = io.BytesIO()
    Image.new("RGB", (160, 120)).save(png, "PNG")
    image_check = {"kind": "image", "format": "PNG", "width": 160, "height": 120}
    assert check_output(image_check, png.getvalue(), photo) is None
    assert "not PNG" in str(check_output(image_check, (photo / "photo.jpg").read_bytes(), photo))
    assert "smaller" in str(
        check_output(
            {"kind": "image", "smaller_than": "photo.jpg"},
            (photo / "photo.jpg").read_bytes(),  # the input itself is not smaller
            photo,
        )
    )

    assets = ROOT / "extract-assets"
    logo = io.BytesIO()
    Image.new("RGB", (48, 48)).save(logo, "PNG")
    holds = {"kind": "holds_image", "width": 48, "height": 48}
    assert check_output(holds, logo.getvalue(), assets) is None
    assert check_output(holds, _zip_of({"media/logo.png": logo.getvalue()}), assets) is None
    docx = (assets / "document.docx").read_bytes()
    assert check_output(holds, docx, assets) == "is an input of the example, unchanged"

    stamped = io.BytesIO()
    Image.new("RGB", (30, 40), "red").save(stamped, "PDF")
    pdf_check = {"kind": "pdf", "pages": 1, "image_on_page_1": True}
    assert check_output(pdf_check, stamped.getvalue(), assets) is None
    plain = (ROOT / "add-watermark" / "document.pdf").read_bytes()
    assert check_output(pdf_check, plain, assets) == "no image on page 1"

    assert check_output({"kind": "json"}, b'{"width": 1}', assets) is None
    assert check_output({"kind": "json"}, b"width=1", assets) is not None
    assert check_output(
        {"kind": "aac"}, (ROOT / "audio-operations" / "tone.wav").read_bytes(), assets
    )
    text_check = {"kind": "text", "contains": ["<html"]}
    assert check_output(text_check, b"<html>", assets) is None
    assert check_output(text_check, b"plain", assets) is not None


def test_outputs_are_matched_one_to_one_and_counted() -> None:
    folder = ROOT / "convert-files"
    gif, webp = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (160, 120)).save(gif, "GIF")
    Image.new("RGB", (160, 120)).save(webp, "WEBP")
    spec = [{"kind": "image", "format": "WEBP"}, {"kind": "image", "format": "GIF"}]
    assert match_outputs(spec, {"a.gif": gif.getvalue(), "a.webp": webp.getvalue()}, folder) == []
    assert match_outputs(spec, {"a.gif": gif.getvalue(), "b.gif": gif.getvalue()}, folder)
    assert match_outputs(spec, {"a.gif": gif.getvalue()}, folder) == [
        "1 outputs ['a.gif'], expected 2"
    ]
    at_least = {"at_least": 1, "checks": [{"kind": "image", "format": "GIF"}]}
    assert match_outputs(at_least, {}, folder) == ["0 outputs, expected at least 1"]
    assert match_outputs(at_least, {"a.gif": gif.getvalue(), "x": b"?"}, folder) == []
