"""Prometheus metrics of one gateway process (``prometheus-client``), served at ``/metrics``.

One ``Metrics`` is made by the composition root and handed to what records: the REST middleware
and the DIMSE handler dispatch (requests and their latency, one hook each), the DIMSE listener
(associations), the event deliverers (delivered, failed, dropped, expired). What is the same for
every process of one worklist — workitems by state and Worklist Label, transitions, events queued
and backlog per subscriber — lives in Redis (counted by the commit) and is read when scraped:
``sources`` are async functions that return ``Sample``s, called by ``refresh`` just before the
registry is rendered. Gauges of this process's own state (open associations, WebSocket
channels) are read from their owners when scraped (``watch``).

Names follow the Prometheus conventions (``upsgw_`` prefix, ``_total`` counters, ``_seconds``);
docs/observability.md lists every metric and its labels.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

log = logging.getLogger("gateway.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST
SOURCE_TIMEOUT_SECONDS = 2.0  # a scrape does not wait longer for Redis
# Request latency buckets (seconds): a create is ≈1 ms, a large C-FIND seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)

SUCCESS, WARNING, FAILURE = "success", "warning", "failure"


@dataclass(frozen=True)
class Sample:
    """One value of a metric read from Redis at scrape time."""

    name: str  # a key of ``SHARED``
    labels: tuple[str, ...]
    value: float


# Metrics read from Redis when scraped: name → (kind, help, label names). The same values from
# every gateway process of one worklist (aggregate them with max, not sum).
SHARED: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "upsgw_workitems": ("gauge", "Workitems stored, by Procedure Step State and Worklist Label",
                        ("state", "worklist_label")),
    "upsgw_transitions": ("counter", "Procedure Step State changes committed, by from and to "
                          "state (from=none: created)", ("from", "to")),
    "upsgw_events_queued": ("counter", "Events queued for a subscriber AE", ("subscriber",)),
    "upsgw_events_backlog": ("gauge", "Events queued for a subscriber AE and not yet delivered "
                             "on its transport", ("subscriber", "transport")),
}


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True):
        self.registry = registry = registry or CollectorRegistry()
        if process:  # process_* (CPU, memory, file descriptors), python_* (GC, version)
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.requests = Counter(
            "upsgw_requests", "UPS requests answered, by protocol (rest, dimse), operation "
            "(the UPS transaction) and outcome (success, warning, failure)",
            ("protocol", "operation", "outcome"), registry=registry)
        self.request_seconds = Histogram(
            "upsgw_request_duration_seconds", "Time from a request's arrival to its answer",
            ("protocol", "operation"), buckets=LATENCY_BUCKETS, registry=registry)
        self.associations_accepted = Counter(
            "upsgw_dimse_associations_accepted", "DIMSE associations accepted",
            registry=registry)
        self.associations_rejected = Counter(
            "upsgw_dimse_associations_rejected", "DIMSE associations rejected (A-ASSOCIATE-RJ), "
            "by reason", ("reason",), registry=registry)
        self.events_delivered = Counter(
            "upsgw_events_delivered", "Events delivered by this process, by transport "
            "(ws, dimse)", ("transport",), registry=registry)
        self.events_failed = Counter(
            "upsgw_events_failed", "Event deliveries that failed and will be retried (DIMSE) "
            "or end the channel (ws)", ("transport",), registry=registry)
        self.events_expired = Counter(
            "upsgw_events_expired", "Events dropped undelivered after "
            "events.delivery_expiry_seconds", ("transport",), registry=registry)
        self.events_dropped = Counter(
            "upsgw_events_dropped", "Events a subscriber never got: dropped by the backlog bound "
            "(reason=backlog) or not encodable (reason=unencodable)", ("transport", "reason"),
            registry=registry)
        self.redis_up = Gauge("upsgw_redis_up", "1 when Redis answered the scrape's reads",
                              registry=registry)
        self.redis_seconds = Gauge("upsgw_redis_roundtrip_seconds",
                                   "Round-trip time of a Redis PING at the last scrape",
                                   registry=registry)
        self._children: dict[tuple[str, str, str], tuple] = {}
        self._watched: dict[str, Gauge] = {}
        self._sources: list[Callable[[], Awaitable[Iterable[Sample]]]] = []
        self._ping: Callable[[], Awaitable[object]] | None = None
        self._shared: list[Sample] = []
        registry.register(_SharedCollector(self))

    # ---- what the edges record ---------------------------------------------------------------

    def request(self, protocol: str, operation: str, outcome: str, seconds: float) -> None:
        key = (protocol, operation, outcome)
        children = self._children.get(key)
        if children is None:  # (``labels()`` looks its child up under a lock: once is enough)
            children = self._children[key] = (self.requests.labels(*key).inc,
                                               self.request_seconds.labels(*key[:2]).observe)
        count, observe = children
        count()
        observe(seconds)

    # ---- what is read when scraped -----------------------------------------------------------

    def watch(self, name: str, help_: str, read: Callable[[], float]) -> None:
        """A gauge whose value ``read()`` gives at each scrape (this process's own state)."""
        gauge = self._watched.get(name)
        if gauge is None:
            gauge = self._watched[name] = Gauge(name, help_, registry=self.registry)
        gauge.set_function(read)

    def source(self, read: Callable[[], Awaitable[Iterable[Sample]]]) -> None:
        """Shared metrics (``SHARED``) from Redis, read by ``refresh``."""
        self._sources.append(read)

    def ping_with(self, ping: Callable[[], Awaitable[object]]) -> None:
        self._ping = ping

    async def refresh(self) -> None:
        """Read Redis: the round trip, then every source. A Redis that does not answer makes
        ``upsgw_redis_up`` 0 and leaves the shared metrics out; the scrape still answers."""
        shared: list[Sample] = []
        try:
            async with asyncio.timeout(SOURCE_TIMEOUT_SECONDS):
                if self._ping is not None:
                    started = time.perf_counter()
                    await self._ping()
                    self.redis_seconds.set(time.perf_counter() - started)
                for read in self._sources:
                    shared.extend(await read())
        except Exception as exc:  # noqa: BLE001 - Redis down, timed out: say so, keep serving
            log.warning("metrics: redis not read", extra={"error": str(exc) or type(exc).__name__})
            self.redis_up.set(0)
            self._shared = []
            return
        self.redis_up.set(1)
        self._shared = shared

    async def render(self) -> bytes:
        await self.refresh()
        return generate_latest(self.registry)


class _SharedCollector:
    """Yields the samples the last ``refresh`` read from Redis, as metric families."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def describe(self):
        return []  # the families are known only when scraped

    def collect(self):
        families = {}
        for name, (kind, help_, labels) in SHARED.items():
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            families[name] = cls(name, help_, labels=list(labels))
        for sample in self.metrics._shared:
            families[sample.name].add_metric(list(sample.labels), sample.value)
        yield from families.values()


def outcome_of_http(status: int, warned: bool) -> str:
    if status >= 400:
        return FAILURE
    return WARNING if warned else SUCCESS
