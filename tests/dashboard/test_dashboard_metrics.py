"""``/metrics`` parses as Prometheus text and its counters match a real run: the emulator's request
log, its download records and the state database."""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from dash_helpers import Client, dash, drop_ticket, running_agent, wait_for
from prometheus_client.parser import text_string_to_metric_families

from agent.api import ApiClient, outcome_of, route_label
from agent.emulator import FaultSpec, RunningEmulator
from agent.errors import ApiUnavailable
from agent.metrics import Metrics

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]

# The emulator's route names → the agent's route labels.
ROUTES = {
    "create": "POST /jobs",
    "get": "GET /jobs/{id}",
    "start": "PATCH /jobs/{id}",
    "upload": "POST /upload-file/{id}",
    "download": "GET download",
    "delete": "DELETE /jobs/{id}",
    "list": "GET /jobs",
    "input": "POST /jobs/{id}/input",
    "meta": "GET /statuses",
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def total(samples: Samples, name: str, **match: str) -> float:
    return sum(
        v
        for (n, labels), v in samples.items()
        if n == name and all(dict(labels).get(k) == want for k, want in match.items())
    )


async def test_metrics_match_the_emulator_log_and_the_store(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator(
        faults=(
            FaultSpec("job", "fail", count=1),  # the first job to finish fails
            FaultSpec("get", "error", count=2, param=503),  # retried inside the client
            FaultSpec("create", "error", count=1, param=502),  # retried (Idempotency-Key)
        )
    )
    async with running_agent(tmp_path, emu.base_url) as agent, aiohttp.ClientSession() as s:
        assert agent.store is not None
        c = Client(s, dash(agent))
        inbox = tmp_path / "inbox"
        drop_ticket(inbox, "first")
        await c.wait_phase("first.job", {"failed"})
        for i in range(4):
            drop_ticket(inbox, f"t{i}", target=("jpg", "webp", "gif", "bmp")[i])
        store = agent.store
        done = [inbox / f"t{i}.job.done" for i in range(4)]
        await wait_for(lambda: all(p.exists() for p in done), 30, "every ticket to be done")
        await wait_for(lambda: not store.unfinished(), 10, "every ticket to be filed")
        samples = parse(await c.text("/metrics"))
        emu_state = emu.state

        # API requests by route and outcome = the emulator's request log.
        log = collections.Counter(
            (ROUTES[r.route], outcome_of(r.status)) for r in emu_state.requests
        )
        ours = {
            (dict(labels)["route"], dict(labels)["outcome"]): v
            for (n, labels), v in samples.items()
            if n == "convert_agent_api_requests_total"
        }
        assert ours == dict(log)
        assert log[("GET /jobs/{id}", "5xx")] == 2 and log[("POST /jobs", "5xx")] == 1
        assert total(samples, "convert_agent_api_errors_total", kind="5xx") == 3
        assert total(samples, "convert_agent_api_errors_total", kind="network") == 0
        assert total(samples, "convert_agent_api_request_seconds_count") == len(emu_state.requests)

        # Bytes and verdicts = what was served and what the store recorded.
        served = sum(d.bytes for d in emu_state.downloads if d.status in (200, 206))
        outputs = [o for t in store.tickets() for o in store.outputs(t.id)]
        assert served == sum(o.size or 0 for o in outputs) > 0
        assert total(samples, "convert_agent_downloaded_bytes_total") == served
        verdicts = collections.Counter(o.verdict for o in outputs)
        assert (
            total(samples, "convert_agent_checksum_verdicts_total", verdict="verified")
            == (verdicts["verified"])
        )
        assert verdicts["verified"] == 4
        assert total(samples, "convert_agent_checksum_verdicts_total", verdict="mismatch") == 0

        # Tickets by phase = the store's counts.
        counts = store.counts()
        for phase in ("done", "failed", "pending", "processing"):
            assert total(samples, "convert_agent_tickets", phase=phase) == counts[phase]
        assert total(samples, "convert_agent_tickets", phase="done") == 4
        assert total(samples, "convert_agent_tickets", phase="failed") == 1
        assert total(samples, "convert_agent_tickets_waiting") == 0

        # Poll latency: one observation per status poll that got an answer.
        polls = total(samples, "convert_agent_poll_latency_seconds_count")
        gets = log[("GET /jobs/{id}", "ok")]
        assert 5 <= polls <= gets
        assert total(samples, "convert_agent_poll_latency_seconds_sum") > 0


def test_route_labels_never_carry_ids_or_hosts() -> None:
    assert route_label("GET", "/jobs/4f1c-99") == "GET /jobs/{id}"
    assert route_label("POST", "/jobs/4f1c-99/input") == "POST /jobs/{id}/input"
    assert route_label("GET", "/jobs?page=2") == "GET /jobs"
    assert route_label("POST", "/jobs") == "POST /jobs"
    assert (
        route_label("POST", "https://www13.api2convert.com/v2/dl/web2/upload-file/abc")
        == "POST /upload-file/{id}"
    )
    assert [outcome_of(s) for s in (None, 200, 206, 302, 404, 429, 503)] == [
        "network",
        "ok",
        "ok",
        "redirect",
        "4xx",
        "429",
        "5xx",
    ]


async def test_a_network_failure_is_counted_once_per_attempt() -> None:
    metrics = Metrics()
    seen: list[tuple[str, str]] = []

    def hook(route: str, outcome: str, seconds: float) -> None:
        seen.append((route, outcome))
        metrics.api_request(route, outcome, seconds)

    async def no_sleep(_: float) -> None:
        return None

    api = ApiClient("http://127.0.0.1:9/v2", "k" * 32, on_request=hook, sleep=no_sleep)
    try:
        with pytest.raises(ApiUnavailable):
            await api.get_job("abc")
    finally:
        await api.close()
    assert seen == [("GET /jobs/{id}", "network")] * 3  # the first try and two short retries
    samples = parse(metrics.render()[0].decode())
    assert total(samples, "convert_agent_api_errors_total", kind="network") == 3


def test_a_broken_hook_does_not_break_metrics_rendering() -> None:
    metrics = Metrics()
    metrics.verdict("something-else")  # ignored, not a new label value
    metrics.downloaded(-5)
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    samples = parse(body.decode())
    assert total(samples, "convert_agent_checksum_verdicts_total") == 0
    assert total(samples, "convert_agent_tickets_waiting") == 0  # no store: zeros, not an error
