"""Prometheus metrics, in a registry of the app's own (not the process-global one).

The hot path only increments counters and observes histograms through cached label children; the
gauges (actors, mailboxes, recovery, readiness) are read from the registry and journal when
Prometheus scrapes, so keeping them costs nothing between scrapes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from inventoryd.registry import Registry
    from persistence.journal import Journal

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "inventoryd_http_requests", "HTTP requests answered", ["route", "method", "status"], registry=self.registry
        )
        self.request_seconds = Histogram(
            "inventoryd_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.reservations = Counter(
            "inventoryd_reservations", "Reservation requests by outcome", ["outcome"], registry=self.registry
        )
        self.batch_messages = Histogram(
            "inventoryd_actor_batch_messages", "Messages decided per actor batch", buckets=_COUNT_BUCKETS, registry=self.registry
        )
        self.mailbox_depth = Histogram(
            "inventoryd_actor_mailbox_depth_messages",
            "Messages waiting in an actor's mailbox when it took a batch",
            buckets=_COUNT_BUCKETS,
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "inventoryd_journal_commit_duration_seconds",
            "Time to write and commit one journal transaction",
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.commit_records = Histogram(
            "inventoryd_journal_commit_records", "Records per journal transaction", buckets=_COUNT_BUCKETS, registry=self.registry
        )
        self.commit_appends = Histogram(
            "inventoryd_journal_commit_appends",
            "Actor appends coalesced into one journal transaction",
            buckets=_COUNT_BUCKETS,
            registry=self.registry,
        )
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._outcome_children: dict[str, Counter] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            # Routes are the table's templates, never raw paths: the label space stays bounded.
            children = (self.requests.labels(route, method, str(status)), self.request_seconds.labels(route, method))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def count_reservation(self, outcome: str) -> None:
        child = self._outcome_children.get(outcome)
        if child is None:
            child = self._outcome_children[outcome] = self.reservations.labels(outcome)
        child.inc()

    def observe_batch(self, messages: int, mailbox_depth: int) -> None:
        self.batch_messages.observe(messages)
        self.mailbox_depth.observe(mailbox_depth)

    def observe_commit(self, seconds: float, records: int, appends: int) -> None:
        self.commit_seconds.observe(seconds)
        self.commit_records.observe(records)
        self.commit_appends.observe(appends)

    def watch(self, registry: Registry, journal: Journal) -> None:
        self.registry.register(_StateCollector(registry, journal))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Gauges and counters read from the service's state at scrape time."""

    def __init__(self, registry: Registry, journal: Journal) -> None:
        self._registry = registry
        self._journal = journal

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        registry, stats = self._registry, self._registry.stats
        actors = registry.actors()
        yield GaugeMetricFamily("inventoryd_actors", "Event actors", value=len(actors))
        yield GaugeMetricFamily("inventoryd_actors_running", "Event actors accepting messages", value=registry.actors_running())
        yield GaugeMetricFamily(
            "inventoryd_actor_mailbox_messages", "Messages waiting in all mailboxes", value=sum(a.mailbox_depth() for a in actors)
        )
        yield CounterMetricFamily("inventoryd_actor_restarts", "Actors restarted from the log", value=stats.actors_restarted)
        yield CounterMetricFamily(
            "inventoryd_actor_failures", "Actors left down after too many restarts", value=stats.actors_failed
        )
        yield GaugeMetricFamily("inventoryd_recovery_duration_seconds", "How long start-up recovery took", value=stats.recovery_seconds)
        yield GaugeMetricFamily("inventoryd_recovery_records", "Log records replayed at start-up", value=stats.recovered_records)
        yield GaugeMetricFamily("inventoryd_ready", "1 once recovery is done and while not draining", value=float(registry.ready))
        journal = self._journal.stats
        yield CounterMetricFamily("inventoryd_journal_commits", "Journal transactions committed", value=journal.commits)
        yield CounterMetricFamily("inventoryd_journal_records", "Log records committed", value=journal.records)
        yield CounterMetricFamily("inventoryd_journal_failures", "Journal transactions that failed", value=journal.failures)
        yield GaugeMetricFamily(
            "inventoryd_journal_pending_appends", "Appends waiting for the journal writer", value=self._journal.pending_appends()
        )
