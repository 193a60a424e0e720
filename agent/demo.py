"""``convert-agent demo``: the built-in emulator and the agent, on a demo folder, end to end.

It lays out sample inputs and one ticket of every kind (local image, text, URL input, several
outputs from one input, adoption of a job created elsewhere), plus a few examples from the ticket
gallery (``docs/examples``: several inputs into one archive, a watermark, a comparison, …) each
in its own watched folder, runs the agent until nothing is left in flight, and prints what
happened and where the outputs are. Everything stays on 127.0.0.1.

A gallery example goes in only when the emulator's catalog (``GET /conversions``) lists every
conversion it needs; the others are named with what they wait for.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from PIL import Image, ImageDraw

from agent.api import ApiClient
from agent.config import load_config
from agent.daemon import Agent
from agent.emulator import EmulatorConfig, start_emulator
from agent.errors import ConfigError
from agent.gallery import default_root, load
from agent.models import Phase
from agent.store import Store

MARKER = ".convert-agent-demo"
#: Gallery examples the demo shows when the emulator offers what they need (in this order).
GALLERY = (
    "convert-files",
    "presets",
    "create-archives",
    "add-watermark",
    "compare-files",
    "create-hashes",
)
DEMO_KEY = "demo0000000000000000000000000000"


def _picture(size: tuple[int, int], colour: str, label: str) -> Image.Image:
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.ellipse((10, 10, size[0] - 10, size[1] - 10), fill=colour)
    draw.text((20, size[1] // 2 - 5), label, fill="black")
    return img


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def prepare(directory: Path) -> Path:
    """Create (or reset) the demo folder with inputs and tickets; returns the inbox."""
    if directory.exists():
        if not (directory / MARKER).exists():
            raise ConfigError(
                f"{directory} exists and is not a demo folder: choose another with --dir"
            )
        shutil.rmtree(directory)
    inbox = directory / "inbox"
    inbox.mkdir(parents=True)
    (directory / MARKER).write_text("created by convert-agent demo; safe to delete\n")
    _picture((240, 160), "orange", "photo").save(inbox / "photo.png")
    (inbox / "notes.txt").write_text("Shopping list\n- bread <fresh>\n- milk & honey\n")
    frames = [_picture((120, 120), c, str(i + 1)) for i, c in enumerate(("red", "green", "blue"))]
    frames[0].save(inbox / "spinner.gif", save_all=True, append_images=frames[1:], duration=200)
    tickets = {
        "photo.job": "input: photo.png\ntarget: jpg\noptions: {quality: 85}\n",
        "notes.job": "input: notes.txt\ntarget: html\n",
        "frames.job": (
            "# one output per frame of the animated GIF\n"
            "input: spinner.gif\ntarget: png\n"
            'output: {name: "spinner-frame{suffix}.{ext}"}\n'
        ),
        "both.job": "input: photo.png\nconversion:\n  - target: webp\n  - target: bmp\n",
    }
    for name, text in tickets.items():
        (inbox / name).write_text(text)
    return inbox


def prepare_gallery(
    directory: Path, catalog: Iterable[tuple[str, str]], root: Path | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Copy the ``GALLERY`` examples the catalog can run into ``directory/gallery/<guide>/``.

    Returns their folder entries for the configuration (path and the example's folder settings)
    and, for the others, why they are left out.
    """
    root = root if root is not None else default_root()
    if root is None:
        return [], ["the ticket gallery (docs/examples) is not in this installation"]
    have = set(catalog)
    folders: list[dict[str, Any]] = []
    left_out: list[str] = []
    for name in GALLERY:
        example = load(root / name)
        missing = example.missing(have) + [f"engine/{e}" for e in example.engine_needs()]
        missing += [f"decode/{f}" for f in example.decode_needs()]
        if missing:
            left_out.append(f"{name}: the emulator has no {', '.join(missing)} yet")
            continue
        target = directory / "gallery" / name
        target.mkdir(parents=True)
        for src in example.files():
            shutil.copyfile(src, target / src.name)
        folders.append({"path": str(target), **dict(example.folder)})
    return folders, left_out


async def _catalog(base_url: str) -> set[tuple[str, str]]:
    """Every (category, target) in the API's ``GET /conversions`` (public: no key)."""
    found: set[tuple[str, str]] = set()
    async with aiohttp.ClientSession() as session:
        for page in range(1, 100):
            async with session.get(f"{base_url}/conversions", params={"page": page}) as resp:
                resp.raise_for_status()
                rows = await resp.json()
            if not rows:
                break
            found.update((str(r.get("category")), str(r.get("target"))) for r in rows)
    return found


@contextlib.asynccontextmanager
async def _sample_site(data: bytes) -> AsyncIterator[str]:
    """A tiny loopback web server for the URL-input ticket."""

    async def handler(_: web.Request) -> web.Response:
        return web.Response(body=data, content_type="image/png")

    app = web.Application()
    app.router.add_get("/samples/landscape.png", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/samples/landscape.png"
    finally:
        await runner.cleanup()


async def run_demo(directory: Path) -> int:
    directory = directory.resolve()
    inbox = prepare(directory)
    print(f"demo folder: {inbox}")
    emu = await start_emulator(EmulatorConfig(api_key=DEMO_KEY, processing_seconds=1.0))
    print(f"emulator:    {emu.base_url}")
    try:
        async with _sample_site(_png_bytes(_picture((320, 200), "skyblue", "url"))) as url:
            (inbox / "remote.job").write_text(f"input: {url}\ntarget: gif\n")
            # A job created elsewhere (as the web site would), adopted by its id and token.
            other = ApiClient(emu.base_url, DEMO_KEY)
            try:
                job = await other.create_job([{"target": "jpg"}], idempotency_key="demo-adopt")
                await other.add_remote_input(job.id, url)
                await other.start_job(job.id)
            finally:
                await other.close()
            (inbox / "adopted.job").write_text(f"job: {job.id}\ntoken: {job.token}\n")
            gallery, left_out = prepare_gallery(directory, await _catalog(emu.base_url))
            print(f"gallery:     {len(gallery)} examples from docs/examples")
            for why in left_out:
                print(f"             not shown: {why}")
            config = directory / "config.yaml"
            config.write_text(
                "# written by convert-agent demo: the emulator's address and demo key\n"
                f"api: {{base_url: '{emu.base_url}', key: {DEMO_KEY}}}\n"
                + yaml.safe_dump({"folders": [str(inbox), *gallery]}, default_flow_style=False)
                + "state: {path: state.db}\n"
                "tickets: {settle_seconds: 0.3}\n"
                "polling: {min_interval: 0.5, max_interval: 2}\n"
                "log: {file: false}\n"
            )
            cfg = load_config(config, {})
            print("running the agent until every ticket is finished …\n")
            code = await Agent(cfg).run(once=True)
    finally:
        await emu.stop()
    _report(directory / "state.db")
    return code


def _report(state: Path) -> None:
    store = Store.open_readonly(state)
    try:
        for rec in store.tickets():
            mark = "ok  " if rec.phase is Phase.DONE else "FAIL"
            name = _shown(rec.path, state.parent)
            print(f"{mark} {name:<12} {rec.phase:<8} job {rec.job_id or '-'}")
            for o in store.outputs(rec.id):
                size = f"{o.size} bytes" if o.size is not None else "? bytes"
                print(f"       → {o.dest_name or o.filename}  ({size}, {o.verdict or o.state})")
            if rec.error:
                print(f"       {rec.error.get('message')}")
    finally:
        store.close()
    for folder in sorted((state.parent / "gallery").glob("*")):
        outputs = [p.name for p in sorted(folder.iterdir()) if ".job" not in p.name]
        print(f"\n{folder.relative_to(state.parent)}: {', '.join(outputs)}")
    folder = state.parent / "inbox"
    print(f"\nfiles in {folder}:")
    for p in sorted(folder.iterdir()):
        if not p.name.startswith("."):
            print(f"  {p.name}")
    print(
        f"\nTry: .venv/bin/convert-agent --config {state.parent / 'config.yaml'} why photo"
        "   (or: list, status, --json)"
    )


def _shown(path: str, directory: Path) -> str:
    """A ticket's name for the report: ``inbox`` tickets by name, gallery ones with their folder."""
    p = Path(path)
    try:
        rel = p.relative_to(directory)
    except ValueError:
        return p.name
    return p.name if rel.parts[0] == "inbox" else str(rel.relative_to("gallery"))
