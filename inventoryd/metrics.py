"""Prometheus metrics, in a registry of the app's own (not the process-global one).

The hot path counts in plain integers and lists (the event loop is their only writer, so no
locks): a reservation's request counter, latency and outcome cost about 1.3 µs here, against
2.9 µs through prometheus_client's locked values. They become metric families when Prometheus scrapes, as do the
gauges (actors, mailboxes, recovery, readiness), read then from the registry and the journal.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from inventoryd.histogram import Histogram

if TYPE_CHECKING:
    from inventoryd.catalogue import CatalogueFeed
    from inventoryd.cluster import Membership
    from inventoryd.idempotency import IdempotencyStore
    from inventoryd.outbox import Outbox
    from inventoryd.registry import Registry
    from persistence.journal import Journal

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_QUEUE_WAIT_BUCKETS_S = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0)
_COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # (route template, method, status) -> requests answered.
        self.requests: dict[tuple[str, str, int], int] = {}
        # (route template, method) -> time to answer.
        self.request_seconds: dict[tuple[str, str], Histogram] = {}
        # outcome -> reservation requests.
        self.reservations: dict[str, int] = {}
        self.batch_messages = Histogram(_COUNT_BUCKETS)
        self.mailbox_depth = Histogram(_COUNT_BUCKETS)
        self.commit_seconds = Histogram(_LATENCY_BUCKETS_S)
        self.commit_records = Histogram(_COUNT_BUCKETS)
        self.commit_appends = Histogram(_COUNT_BUCKETS)
        self.journal_wait_seconds = Histogram(_LATENCY_BUCKETS_S)
        # From joining a waiting room to being admitted (sale-length waits: seconds to hours).
        self.queue_wait_seconds = Histogram(_QUEUE_WAIT_BUCKETS_S)
        # outcome (relayed, misdirected, unreachable) -> requests forwarded to another node.
        self.forwards: dict[str, int] = {}
        self.forward_seconds = Histogram(_LATENCY_BUCKETS_S)
        self.registry.register(_HotPathCollector(self))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        # Routes are the table's templates, never raw paths: the label space stays bounded.
        key = (route, method, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.request_seconds.get((route, method))
        if histogram is None:
            histogram = self.request_seconds[route, method] = Histogram(_LATENCY_BUCKETS_S)
        histogram.observe(seconds)

    def count_reservation(self, outcome: str) -> None:
        self.reservations[outcome] = self.reservations.get(outcome, 0) + 1

    def observe_batch(self, messages: int, mailbox_depth: int) -> None:
        self.batch_messages.observe(messages)
        self.mailbox_depth.observe(mailbox_depth)

    def observe_commit(self, seconds: float, records: int, appends: int) -> None:
        self.commit_seconds.observe(seconds)
        self.commit_records.observe(records)
        self.commit_appends.observe(appends)

    def observe_journal_wait(self, seconds: float) -> None:
        self.journal_wait_seconds.observe(seconds)

    def observe_queue_waits(self, waits_s: list[float]) -> None:
        for seconds in waits_s:
            self.queue_wait_seconds.observe(seconds)

    def observe_forward(self, outcome: str, seconds: float) -> None:
        """A request forwarded to its event's owner: how it went, and how long it took."""
        self.forwards[outcome] = self.forwards.get(outcome, 0) + 1
        self.forward_seconds.observe(seconds)

    def watch(self, registry: Registry, journal: Journal, idempotency: IdempotencyStore, catalogue: CatalogueFeed) -> None:
        self.registry.register(_StateCollector(registry, journal, idempotency))
        self.registry.register(_ClusterCollector(registry.cluster, journal))
        self.registry.register(_CatalogueCollector(catalogue))

    def watch_outbox(self, outbox: Outbox) -> None:
        self.registry.register(_OutboxCollector(outbox))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _histogram_family(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation)
    family.add_metric([], histogram.cumulative(), histogram.sum)
    return family


class _HotPathCollector(Collector):
    """What the request path and the actors count, as metric families."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        metrics = self._metrics
        requests = CounterMetricFamily("inventoryd_http_requests", "HTTP requests answered", labels=["route", "method", "status"])
        for (route, method, status), count in metrics.requests.items():
            requests.add_metric([route, method, str(status)], count)
        yield requests
        seconds = HistogramMetricFamily(
            "inventoryd_http_request_duration_seconds", "Time to answer an HTTP request", labels=["route", "method"]
        )
        for (route, method), histogram in metrics.request_seconds.items():
            seconds.add_metric([route, method], histogram.cumulative(), histogram.sum)
        yield seconds
        outcomes = CounterMetricFamily("inventoryd_reservations", "Reservation requests by outcome", labels=["outcome"])
        for outcome, count in metrics.reservations.items():
            outcomes.add_metric([outcome], count)
        yield outcomes
        yield _histogram_family("inventoryd_actor_batch_messages", "Messages decided per actor batch", metrics.batch_messages)
        yield _histogram_family(
            "inventoryd_actor_mailbox_depth_messages",
            "Messages waiting in an actor's mailbox when it took a batch",
            metrics.mailbox_depth,
        )
        yield _histogram_family(
            "inventoryd_journal_commit_duration_seconds", "Time to write and commit one journal transaction", metrics.commit_seconds
        )
        yield _histogram_family("inventoryd_journal_commit_records", "Records per journal transaction", metrics.commit_records)
        yield _histogram_family(
            "inventoryd_journal_commit_appends", "Actor appends coalesced into one journal transaction", metrics.commit_appends
        )
        forwards = CounterMetricFamily("inventoryd_forwarded_requests", "Requests forwarded to their event's owner", labels=["outcome"])
        for outcome, count in metrics.forwards.items():
            forwards.add_metric([outcome], count)
        yield forwards
        yield _histogram_family(
            "inventoryd_forward_duration_seconds", "Time to forward a request to its owner and relay the answer", metrics.forward_seconds
        )
        yield _histogram_family(
            "inventoryd_journal_wait_seconds",
            "Time the journal waited for more appends before a transaction (group commit under load)",
            metrics.journal_wait_seconds,
        )
        yield _histogram_family(
            "inventoryd_queue_wait_seconds", "Time from joining a waiting room to being admitted", metrics.queue_wait_seconds
        )


class _StateCollector(Collector):
    """Gauges and counters read from the service's state at scrape time."""

    def __init__(self, registry: Registry, journal: Journal, idempotency: IdempotencyStore) -> None:
        self._registry = registry
        self._journal = journal
        self._idempotency = idempotency

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        registry, stats = self._registry, self._registry.stats
        actors = registry.actors()
        yield GaugeMetricFamily("inventoryd_actors", "Event actors", value=len(actors))
        yield GaugeMetricFamily("inventoryd_actors_running", "Event actors accepting messages", value=registry.actors_running())
        yield GaugeMetricFamily(
            "inventoryd_actor_mailbox_messages", "Messages waiting in all mailboxes", value=sum(a.mailbox_depth() for a in actors)
        )
        rooms = [actor.inventory.queue for actor in actors if actor.inventory.queue.joined]
        waiting = sum(queue.waiting() if queue.shuffled else len(queue.pre) for queue in rooms)
        yield GaugeMetricFamily("inventoryd_queue_waiting", "Buyers waiting in waiting rooms", value=waiting)
        active = sum(queue.active for queue in rooms)
        yield GaugeMetricFamily("inventoryd_queue_active", "Admissions running (what max_active bounds)", value=active)
        yield CounterMetricFamily("inventoryd_queue_joined", "Joins of waiting rooms", value=sum(q.joined for q in rooms))
        yield CounterMetricFamily("inventoryd_queue_admitted", "Admissions let in from waiting rooms", value=sum(q.admitted for q in rooms))
        yield CounterMetricFamily("inventoryd_actor_restarts", "Actors restarted from the log", value=stats.actors_restarted)
        yield CounterMetricFamily(
            "inventoryd_actor_failures", "Actors left down after too many restarts", value=stats.actors_failed
        )
        yield GaugeMetricFamily(
            "inventoryd_actors_cold", "Events whose actor start-up has not rebuilt from the log yet", value=registry.cold
        )
        yield GaugeMetricFamily(
            "inventoryd_ready_duration_seconds", "How long start-up took to be ready (to know every event)", value=stats.ready_seconds
        )
        yield GaugeMetricFamily(
            "inventoryd_recovery_duration_seconds", "How long start-up took to rebuild every actor", value=stats.recovery_seconds
        )
        yield GaugeMetricFamily("inventoryd_recovery_records", "Log records replayed at start-up", value=stats.recovered_records)
        yield CounterMetricFamily("inventoryd_snapshots_written", "Actor snapshots written", value=stats.snapshots_written)
        yield CounterMetricFamily(
            "inventoryd_snapshot_failures", "Actor snapshots that could not be written (retried after as many records again)",
            value=stats.snapshots_failed,
        )
        yield GaugeMetricFamily(
            "inventoryd_ready",
            "1 once start-up knows every event (actors may still be rebuilt) and while not draining",
            value=float(registry.ready),
        )
        journal = self._journal.stats
        yield CounterMetricFamily("inventoryd_journal_commits", "Journal transactions committed", value=journal.commits)
        yield CounterMetricFamily("inventoryd_journal_records", "Log records committed", value=journal.records)
        yield CounterMetricFamily("inventoryd_journal_failures", "Journal transactions that failed", value=journal.failures)
        yield GaugeMetricFamily(
            "inventoryd_journal_pending_appends", "Appends waiting for the journal writer", value=self._journal.pending_appends()
        )
        known = self._idempotency.known_keys()
        yield GaugeMetricFamily(
            "inventoryd_idempotency_known_keys",
            "Idempotency keys known to be stored, held in memory so that a new key skips the database"
            " (-1: too many, every keyed request asks it)",
            value=-1 if known is None else known,
        )


class _CatalogueCollector(Collector):
    """The catalogue in memory: its size, whether it is current, and its lag when it is not."""

    def __init__(self, feed: CatalogueFeed) -> None:
        self._feed = feed

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        feed = self._feed
        yield GaugeMetricFamily("inventoryd_catalogue_events", "Events in the catalogue in memory", value=len(feed.catalogue))
        yield GaugeMetricFamily(
            "inventoryd_catalogue_current", "1 while the catalogue is known current (its notifications are heard)", value=int(feed.current)
        )
        yield GaugeMetricFamily(
            "inventoryd_catalogue_lag_seconds", "How long the catalogue has not been known current (0 while it is)", value=feed.lag_s()
        )
        yield CounterMetricFamily(
            "inventoryd_catalogue_reads", "Whole reads of the catalogue (at start, after a lost connection)", value=feed.resyncs
        )


class _OutboxCollector(Collector):
    """Deliveries of the change feed: webhooks and confirmation emails."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        outbox = self._outbox
        deliveries = CounterMetricFamily(
            "inventoryd_outbox_deliveries",
            "Delivery attempts, by sink and outcome (delivered, retrying, failed)",
            labels=["sink", "outcome"],
        )
        for (sink, outcome), count in sorted(outbox.stats.deliveries.items()):
            deliveries.add_metric([sink, outcome], count)
        yield deliveries
        yield _histogram_family(
            "inventoryd_outbox_delivery_lag_seconds", "From a change's commit to its delivery (webhooks and emails)", outbox.stats.lag
        )
        endpoints, failed = outbox.endpoints()
        yield GaugeMetricFamily("inventoryd_webhook_endpoints", "Webhook endpoints", value=endpoints)
        yield GaugeMetricFamily(
            "inventoryd_webhook_endpoints_failed", "Webhook endpoints failed (out of attempts; a retry sets one going)", value=failed
        )
        yield GaugeMetricFamily(
            "inventoryd_outbox_backlog", "Log positions committed, not past a sink's cursor (over streams)", value=outbox.backlog()
        )
        email = outbox.email
        yield CounterMetricFamily("inventoryd_emails_sent", "Confirmation emails sent", value=email.sent if email else 0)
        yield CounterMetricFamily(
            "inventoryd_emails_failed", "Confirmation email attempts that failed", value=email.failed if email else 0
        )


class _ClusterCollector(Collector):
    """This node's place in the cluster, read at scrape time."""

    def __init__(self, cluster: Membership, journal: Journal) -> None:
        self._cluster = cluster
        self._journal = journal

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        cluster, stats = self._cluster, self._cluster.stats
        yield GaugeMetricFamily("inventoryd_cluster_shards_owned", "Shards this node holds", value=len(cluster.held()))
        yield CounterMetricFamily("inventoryd_shards_acquired", "Shards this node took (free, expired, handed over)", value=stats.acquired)
        yield CounterMetricFamily("inventoryd_shards_released", "Shards this node handed over", value=stats.released)
        yield CounterMetricFamily("inventoryd_shards_lost", "Shards this node found taken over (renewal or fence)", value=stats.lost)
        yield CounterMetricFamily(
            "inventoryd_appends_fenced", "Journal transactions the fence refused (a shard no longer held)", value=self._journal.stats.fenced
        )
        yield CounterMetricFamily("inventoryd_lease_renewal_failures", "Lease renewals that failed", value=stats.renewal_failures)
        yield GaugeMetricFamily("inventoryd_lease_renewal_seconds", "The last lease renewal's round trip", value=stats.renewal_seconds)
