"""Counters for ``/metrics``: the only importer of prometheus_client.

The pipeline reports through plain methods on one :class:`Metrics` object that it may or may not
be given (the API client's ``on_request`` hook, the scheduler's ``metrics`` attribute), so nothing
below the daemon knows about Prometheus. Each agent has its own ``CollectorRegistry``: two agents
in one process (tests) never share counts, and nothing lands in the global registry.

Label values are kept few on purpose: routes are templates (``GET /jobs/{id}``), outcomes are
classes (``ok``, ``429``, ``5xx``, …), never ids, paths or messages.

Must not raise into the pipeline, and must not do I/O except reading the store at scrape time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "convert_agent"
OUTCOMES = ("ok", "redirect", "4xx", "429", "5xx", "network")
ERROR_KINDS = ("4xx", "429", "5xx", "network")
VERDICTS = ("verified", "unverified", "mismatch")
POLL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _TicketCollector(Collector):
    """Tickets by phase, read from the store at scrape time (so it is never stale)."""

    def __init__(self, source: Callable[[], Callable[[], Mapping[str, int]] | None]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        counts_of = self._source()
        counts = dict(counts_of()) if counts_of is not None else {}
        waiting = counts.pop("waiting", 0)
        by_phase = GaugeMetricFamily(
            f"{PREFIX}_tickets",
            "Active tickets by phase (from the state database)",
            labels=["phase"],
        )
        for phase, n in sorted(counts.items()):
            by_phase.add_metric([phase], n)
        yield by_phase
        yield GaugeMetricFamily(
            f"{PREFIX}_tickets_waiting",
            "Unfinished tickets waiting before their next attempt (after an error or a gate)",
            value=waiting,
        )


class _TeamCollector(Collector):
    """Team mode: each agent of the team (name, host), whether it runs, seconds since its
    heartbeat and tickets it holds, as last read from the database (by the scrape)."""

    def __init__(self, source: Callable[[], Mapping[str, Any] | None]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        team = self._source()
        if not team:
            return
        labels = ["agent", "host"]
        running = GaugeMetricFamily(
            f"{PREFIX}_team_agent_running", "1 for each running agent of the team", labels=labels
        )
        age = GaugeMetricFamily(
            f"{PREFIX}_team_agent_heartbeat_age_seconds",
            "Seconds since each agent of the team last renewed its leases",
            labels=labels,
        )
        held = GaugeMetricFamily(
            f"{PREFIX}_team_agent_tickets_held",
            "Tickets each agent of the team holds (live claims)",
            labels=labels,
        )
        for a in team.get("agents") or ():
            key = [str(a.get("name")), str(a.get("host"))]
            running.add_metric(key, 0 if a.get("stopped") else 1)
            age.add_metric(key, float(a.get("heartbeat_age") or 0.0))
            held.add_metric(key, int(a.get("held") or 0))
        yield from (running, age, held)


class _RuntimeCollector(Collector):
    """The event loop's live tasks at scrape time (a scrape runs on the agent's loop): a count
    that must come back to its idle level once tickets end (the soak campaign reads it)."""

    def collect(self) -> Iterator[Metric]:
        try:
            tasks = len(asyncio.all_tasks())
        except RuntimeError:  # no running loop in this thread
            return
        yield GaugeMetricFamily(
            f"{PREFIX}_asyncio_tasks", "Tasks alive on the agent's event loop", value=tasks
        )


class Metrics:
    """What the agent counts. Every method is cheap and safe to call from the agent's loop."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.ticket_counts: Callable[[], Mapping[str, int]] | None = None  # set by the daemon
        self.team: Mapping[str, Any] | None = None  # the team view (team mode), at each scrape
        reg = self.registry
        self._requests = Counter(
            f"{PREFIX}_api_requests",
            "HTTP attempts to the api2convert API, file and download servers, by route and outcome",
            ["route", "outcome"],
            registry=reg,
        )
        self._errors = Counter(
            f"{PREFIX}_api_errors",
            "HTTP attempts that failed, by kind (4xx, 429, 5xx, network)",
            ["kind"],
            registry=reg,
        )
        self._latency = Histogram(
            f"{PREFIX}_api_request_seconds",
            "Seconds until the answer's headers arrived (or the attempt failed)",
            ["route"],
            buckets=POLL_BUCKETS,
            registry=reg,
        )
        self._bytes = Counter(
            f"{PREFIX}_downloaded_bytes",
            "Bytes of output files downloaded completely (size of each finished download)",
            registry=reg,
        )
        self._verdicts = Counter(
            f"{PREFIX}_checksum_verdicts",
            "Finished downloads by checksum verdict (verified, unverified, mismatch)",
            ["verdict"],
            registry=reg,
        )
        self._poll = Histogram(
            f"{PREFIX}_poll_latency_seconds",
            "Seconds a job status poll (GET /jobs/{id}, with its short retries) took",
            buckets=POLL_BUCKETS,
            registry=reg,
        )
        for kind in ERROR_KINDS:
            self._errors.labels(kind=kind)
        for verdict in VERDICTS:
            self._verdicts.labels(verdict=verdict)
        reg.register(_TicketCollector(lambda: self.ticket_counts))
        reg.register(_TeamCollector(lambda: self.team))
        reg.register(_RuntimeCollector())

    # ------------------------------------------------------------------ hooks

    def api_request(self, route: str, outcome: str, seconds: float) -> None:
        """One HTTP attempt (the ``ApiClient.on_request`` hook)."""
        self._requests.labels(route=route, outcome=outcome).inc()
        self._latency.labels(route=route).observe(max(0.0, seconds))
        if outcome in ERROR_KINDS:
            self._errors.labels(kind=outcome).inc()

    def downloaded(self, nbytes: int) -> None:
        if nbytes > 0:
            self._bytes.inc(nbytes)

    def verdict(self, verdict: str) -> None:
        if verdict in VERDICTS:
            self._verdicts.labels(verdict=verdict).inc()

    def poll_latency(self, seconds: float) -> None:
        self._poll.observe(max(0.0, seconds))

    # ------------------------------------------------------------------ exposition

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
