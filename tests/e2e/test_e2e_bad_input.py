"""Bad input, as users drop it: an unknown target, a category that does not fit, a corrupt file,
an unreachable URL, too many inputs. The real agent process against the emulator over real HTTP
in a real folder: each such ticket ends ``NAME.job.failed`` with a sidecar that says in plain
words what went wrong and what to do, the job on the server failed the way the service documents
(its ``errors[]`` code and message), and the good tickets dropped alongside finish.

(An input larger than the contract allows, and the quota's 402 on ``POST /jobs``: see
test_e2e_input_limit.py.)"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e_harness import (
    invariants,
    job_of,
    png_bytes,
    run_agent,
    serve_files,
    sidecar,
    write_config,
)

from agent.emulator import RunningEmulator

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]

#: What the agent adds to every failed job's words: what to do next.
RETRY = "rename the ticket back to .job (or run `convert-agent retry`) to try again"
CHECK_CONVERSION = "Check the ticket's `target` and `category` against the conversions the API"


@dataclass(frozen=True)
class Bad:
    ticket: str  # the .job's text
    files: dict[str, bytes]  # inputs laid beside it
    error: tuple[str, int, str]  # the job's errors[]: source, code, words of its message
    words: tuple[str, ...]  # in the sidecar's error


def _cases(gone: str) -> dict[str, Bad]:
    red, blue, white = (png_bytes((8, 8), c) for c in ("red", "blue", "white"))
    return {
        "unknown-target": Bad(
            "input: u.png\ntarget: xyz\n",
            {"u.png": red},
            ("conversion", 6005, "Unknown conversion target 'xyz'"),
            ("Unknown conversion target 'xyz'", "(code 6005)", CHECK_CONVERSION, RETRY),
        ),
        "wrong-category": Bad(
            "input: w.png\ncategory: audio\ntarget: png\n",
            {"w.png": red},
            ("conversion", 6005, "not in category 'audio'"),
            ("not in category 'audio'; use category image", CHECK_CONVERSION, RETRY),
        ),
        "input-does-not-fit": Bad(
            "input: photo.png\ncategory: audio\ntarget: aac\n",
            {"photo.png": red},
            ("conversion", 6005, "photo.png holds no audio"),
            ("The input photo.png holds no audio", "of a kind the target takes", RETRY),
        ),
        "corrupt": Bad(
            "input: half.png\ntarget: jpg\n",
            {"half.png": png_bytes((40, 30), "teal")[:30]},
            ("conversion", 6005, "not a readable image"),
            ("The input half.png is not a readable image", "each one whole", RETRY),
        ),
        "unreachable-url": Bad(
            f"input: {gone}\ntarget: jpg\n",
            {},
            ("input", 404, "could not be downloaded"),
            (f"the server could not download the input {gone}: ", "opens from the internet", RETRY),
        ),
        "three-to-compare": Bad(
            "input: [c1.png, c2.png, c3.png]\ncategory: operation\ntarget: compare-image\n",
            {"c1.png": red, "c2.png": blue, "c3.png": white},
            ("conversion", 6005, "compare-image compares exactly 2 inputs; this job has 3"),
            ("exactly 2 inputs; this job has 3", "as many as it needs", RETRY),
        ),
    }


def _error_text(side: dict[str, Any]) -> str:
    error = side["error"]
    assert isinstance(error, str), side
    for noise in ("Traceback", "Exception", "Error(", "{'", "None"):
        assert noise not in error, error
    return error


async def test_each_bad_input_fails_its_ticket_in_plain_words_and_the_others_finish(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator(processing_seconds=0.1)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    async with serve_files({}) as origin:
        pass  # its port is free again: nothing listens there
    gone = f"{origin}/gone.png"
    cases = _cases(gone)
    for stem, case in cases.items():
        for name, data in case.files.items():
            (inbox / name).write_bytes(data)
        (inbox / f"{stem}.job").write_text(case.ticket)
    good = ("good1", "good2")
    for stem in good:
        (inbox / f"{stem}.png").write_bytes(png_bytes((20, 12), "green"))
        (inbox / f"{stem}.job").write_text(f"input: {stem}.png\ntarget: jpg\n")
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")

    code, out = await run_agent(cfg, "run", "--once", timeout=90)

    assert code == 1, out[-3000:]
    state = emu.state.snapshot()
    assert state["internal_errors"] == []
    for stem in good:
        assert (inbox / f"{stem}.job.done").exists(), (stem, out[-3000:])
        assert (inbox / f"{stem}.jpg").is_file()
    for stem, case in cases.items():
        assert (inbox / f"{stem}.job.failed").exists(), (stem, out[-3000:])
        side = sidecar(inbox, stem)
        assert side["phase"] == "failed", (stem, side)
        # the service's way: the job failed, with the documented code and message in errors[]
        job = job_of(state, side["job_id"])
        assert job["status"] == "failed" and job["outputs"] == [], (stem, job)
        source, service_code, service_words = case.error
        (problem,) = emu.state.jobs[side["job_id"]].errors
        assert (problem["source"], problem["code"]) == (source, service_code), (stem, problem)
        assert service_words in problem["message"], (stem, problem)
        # the sidecar's way: plain words, what went wrong and what to do
        error = _error_text(side)
        for word in case.words:
            assert word in error, (stem, word, error)
    assert invariants(inbox, state) == []


async def test_an_input_past_the_contracts_input_count_fails_only_its_ticket(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    """The contract's number of inputs per job (here 2): the third input's upload is answered
    402; that ticket fails saying so and what to do, and a ticket within the count finishes."""
    emu = await make_emulator(processing_seconds=0.1, max_inputs=2)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for stem in ("a", "b", "c", "d", "e"):
        (inbox / f"{stem}.png").write_bytes(png_bytes((10, 10), "navy"))
    (inbox / "many.job").write_text("input: [a.png, b.png, c.png]\ntarget: zip\n")
    (inbox / "pair.job").write_text("input: [d.png, e.png]\ntarget: zip\n")
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")

    code, out = await run_agent(cfg, "run", "--once", timeout=60)

    assert code == 1, out[-3000:]
    state = emu.state.snapshot()
    assert state["internal_errors"] == []
    assert (inbox / "pair.job.done").exists(), out[-3000:]
    (archive,) = sidecar(inbox, "pair")["outputs"]
    assert (inbox / archive["name"]).is_file(), archive
    assert (inbox / "many.job.failed").exists(), out[-3000:]
    refused = [r for r in state["requests"] if r["status"] == 402]
    assert [r["route"] for r in refused] == ["upload"], refused
    side = sidecar(inbox, "many")
    assert side["phase"] == "failed"
    error = _error_text(side)
    assert "c.png" in error and "one input more than the API contract allows" in error, error
    assert "allows 2" in error, error  # the API's own words name the limit
    assert "split its inputs over several tickets" in error, error
    assert "credits" not in error and "new tickets wait" not in error, error
    # the job that could not get its third input was never started: nothing converted, no credit
    job = job_of(state, side["job_id"])
    assert job["starts"] == 0 and job["outputs"] == [], job
    assert invariants(inbox, state) == []
