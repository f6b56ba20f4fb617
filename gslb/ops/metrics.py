"""Prometheus metrics of one worker process, and the merge of several workers' pages.

Two kinds of figures:

* Event counters and histograms, updated by the ``Observer`` hooks. The per-request ones
  (requests, TTFB, duration, decision time, spills, retries) are plain integers and bucket
  arrays (``_Counts``, ``_Hists``): a request adds to a dict entry and bisects a bucket, with
  no lock and no label lookup, and ``_EventCollector`` turns them into metric families only
  when Prometheus scrapes (a test holds the page to what prometheus_client itself writes).
  The rare ones (denials, reloads, cordons, ejections, refusals) stay prometheus_client
  counters.
* Live values (in-flight, routability, endpoint states, GeoIP lookup counts), read from the
  fleet at scrape time by ``FleetCollector``: the hot path does no gauge work at all.

Every label value is bounded: region names and endpoint URLs come from the config, codes are
status classes, retry reasons come from a fixed set (anything else is ``other``) and routes
are gslb's own words (capped in number all the same). No IP, path or request id is a label.

Several workers (``--workers N``): each worker keeps its own ``CollectorRegistry`` and the lead
merges their pages with ``merge_expositions`` after fanning out over its control socket.
prometheus_client's multiprocess mode was not used: it needs ``PROMETHEUS_MULTIPROC_DIR`` set
before prometheus_client is imported in every process, keeps mmap'd files on disk per process
(cleaned up by hand when a worker dies), and cannot serve custom collectors' live values; the
control socket fan-out exists anyway for ``/status``, drains and reloads.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Final, Protocol, cast

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from gslb.core.fleet import FleetState
from gslb.core.forward import RETRY_REASONS as FORWARD_RETRY_REASONS
from gslb.core.healthevents import CORDONED, EJECTED
from gslb.core.router import DENIAL_CAUSES
from gslb.core.scoring import REASONS, SPILL
from gslb.edge.geoip import LOOKUP_RESULTS
from gslb.edge.logsafety import REASONS as REFUSAL_REASONS
from gslb.ops.observe import RequestRecord

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
# The "le" label as prometheus_client writes it ("0.005", "+Inf"); the library leaves it untyped.
_le: Final = cast(Callable[[float], str], floatToGoString)

# LLM inference: a first token takes from milliseconds (cached prefix) to tens of seconds
# (long prompt, queued); a whole streamed completion can run for minutes.
TTFB_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)
DURATION_BUCKETS: Final = (*TTFB_BUCKETS, 120, 300, 600)
# The router decides in microseconds; the top buckets exist to catch regressions.
DECISION_BUCKETS: Final = (
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2,
)  # fmt: skip

# fleet_down: up by this edge's probes, but a quorum of the fleet's edges sees it down.
ENDPOINT_STATES: Final = ("up", "down", "fleet_down", "ejected", "cordoned", "draining")

OTHER: Final = "other"
# Retry reasons are the forwarding core's own names (gslb.core.forward); anything else becomes
# OTHER so the label stays bounded.
RETRY_REASONS: Final = FORWARD_RETRY_REASONS | {OTHER}
NO_REGION: Final = "none"  # region label when gslb answered the request itself
# Routes are gslb's decision reasons and error codes; the cap only guards against a future
# bug feeding free text in.
MAX_ROUTES: Final = 64

# Gauges merged with max rather than sum across workers (see ``merge_expositions``).
MAX_MERGED: Final = frozenset({"gslb_region_routable", "gslb_endpoint_state"})


class HealthEventLike(Protocol):
    """What ``Metrics.health_event`` reads from a health transition (``gslb.core.healthevents``)."""

    @property
    def kind(self) -> str: ...

    @property
    def region(self) -> str: ...


def status_class(status: int) -> str:
    """``"2xx"`` .. ``"5xx"`` (499, client closed, is ``"4xx"``; 101 upgrades ``"1xx"``)."""
    if 100 <= status <= 599:
        return f"{status // 100}xx"
    return OTHER


def retry_reason(reason: str) -> str:
    return reason if reason in RETRY_REASONS else OTHER


class ListenerCounts(Protocol):
    """The public listener's plain counters (``gslb.edge.h1server.H1Server``)."""

    open: int
    accepted: int
    refused: int
    slow_headers: int
    slow_bodies: int
    slow_readers: int
    idle_closed: int


class PoolCounts(Protocol):
    """The upstream pools' counters (``gslb.edge.h1client.UpstreamPools``)."""

    stale_retries: int

    @property
    def waiting(self) -> int: ...


class ConnectionCollector(Collector):
    """The data plane's connection counters, read at scrape time (never per request)."""

    def __init__(self) -> None:
        self.listener: ListenerCounts | None = None
        self.pools: PoolCounts | None = None

    def collect(self) -> Iterator[Metric]:
        listener, pools = self.listener, self.pools
        if listener is not None:
            yield GaugeMetricFamily(
                "gslb_client_connections", "Client connections open.", value=listener.open
            )
            yield CounterMetricFamily(
                "gslb_client_connections_accepted",
                "Client connections accepted.",
                value=listener.accepted,
            )
            yield CounterMetricFamily(
                "gslb_client_connections_refused",
                "Client connections closed at once: server.max_connections were open.",
                value=listener.refused,
            )
            slow = CounterMetricFamily(
                "gslb_slow_clients",
                "Client connections cut for being too slow: sending headers or a body, or reading.",
                labels=["phase"],
            )
            slow.add_metric(["headers"], listener.slow_headers)
            slow.add_metric(["body"], listener.slow_bodies)
            slow.add_metric(["read"], listener.slow_readers)
            yield slow
            yield CounterMetricFamily(
                "gslb_client_keepalive_closed",
                "Kept-alive client connections closed after keepalive_timeout_s idle.",
                value=listener.idle_closed,
            )
        if pools is not None:
            yield GaugeMetricFamily(
                "gslb_upstream_pool_waiting",
                "Requests waiting for a free upstream connection (every endpoint's pool full).",
                value=pools.waiting,
            )
            yield CounterMetricFamily(
                "gslb_upstream_stale_retries",
                "Requests sent again on a fresh connection: the pooled one was closed by "
                "the upstream before any response byte.",
                value=pools.stale_retries,
            )


class FleetCollector(Collector):
    """Reads live figures from the current ``FleetState`` (and GeoIP counts) at scrape time."""

    def __init__(
        self,
        fleet: Callable[[], FleetState],
        geoip_stats: Callable[[], Mapping[str, int]] | None,
        clock: Callable[[], float],
    ) -> None:
        self._fleet = fleet
        self._geoip_stats = geoip_stats
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        # The fleet is swapped on reload: read it once so one scrape sees one config.
        fleet = self._fleet()
        yield self._inflight(fleet)
        yield self._routable(fleet)
        yield self._endpoint_states(fleet, self._clock())
        if self._geoip_stats is not None:
            yield self._geoip(self._geoip_stats())

    @staticmethod
    def _inflight(fleet: FleetState) -> Metric:
        m = GaugeMetricFamily(
            "gslb_inflight", "Requests in flight to a region from this edge.", labels=["region"]
        )
        for r in fleet.regions:
            m.add_metric([r.name], r.inflight)
        return m

    @staticmethod
    def _routable(fleet: FleetState) -> Metric:
        m = GaugeMetricFamily(
            "gslb_region_routable",
            "1 when the router may send new requests to the region (hold-down included).",
            labels=["region"],
        )
        routable = fleet.view.routable
        for r in fleet.regions:
            m.add_metric([r.name], routable[r.index])
        return m

    @staticmethod
    def _endpoint_states(fleet: FleetState, now: float) -> Metric:
        m = GaugeMetricFamily(
            "gslb_endpoint_state",
            "1 for the endpoint's current state, 0 for the others.",
            labels=["region", "endpoint", "state"],
        )
        for r in fleet.regions:
            for ep in r.endpoints:
                current = ep.state_name(now)
                for state in ENDPOINT_STATES:
                    m.add_metric([r.name, ep.url, state], 1 if state == current else 0)
        return m

    @staticmethod
    def _geoip(stats: Mapping[str, int]) -> Metric:
        m = CounterMetricFamily("gslb_geoip_lookups", "GeoIP lookups by result.", labels=["result"])
        # Known results always appear (a zero is a value); unknown keys are bounded by GeoIP.
        for result in (*LOOKUP_RESULTS, *(k for k in stats if k not in LOOKUP_RESULTS)):
            m.add_metric([result], stats.get(result, 0))
        return m


class _Counts:
    """A labelled counter as plain integers: the request path only adds to a dict entry.

    prometheus_client's ``inc`` takes a lock and its child lookups cost microseconds; the
    figures are turned into a metric family only when Prometheus scrapes.
    """

    __slots__ = ("created", "doc", "labels", "name", "values")

    def __init__(self, name: str, doc: str, labels: Sequence[str]) -> None:
        self.name, self.doc, self.labels = name, doc, list(labels)
        self.values: dict[tuple[str, ...], int] = {}
        self.created: dict[tuple[str, ...], float] = {}

    def add(self, key: tuple[str, ...]) -> None:
        values = self.values
        if key in values:
            values[key] += 1
        else:  # a new series: once per label set, so a wall-clock read is fine here
            values[key] = 1
            self.created[key] = time.time()

    def family(self) -> Metric:
        m = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for key, value in self.values.items():
            m.add_metric(list(key), value, created=self.created[key])
        return m


class _Hist:
    """One histogram series as plain numbers: a bucket index by bisection, a count, a sum."""

    __slots__ = ("bounds", "counts", "created", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = (*bounds, math.inf)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


class _Hists:
    """A labelled histogram of ``_Hist`` series, exposed as one family at scrape time."""

    __slots__ = ("bounds", "doc", "labels", "name", "series")

    def __init__(self, name: str, doc: str, labels: Sequence[str], bounds: Sequence[float]):
        self.name, self.doc, self.labels = name, doc, list(labels)
        self.bounds = tuple(float(b) for b in bounds)
        self.series: dict[tuple[str, ...], _Hist] = {}

    def get(self, key: tuple[str, ...]) -> _Hist:
        hist = self.series.get(key)
        if hist is None:
            hist = self.series[key] = _Hist(self.bounds)
        return hist

    def family(self) -> Metric:
        m = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for key, hist in self.series.items():
            cumulative, buckets = 0, []
            for bound, count in zip(hist.bounds, hist.counts, strict=True):
                cumulative += count
                buckets.append((_le(bound), cumulative))
            m.add_metric(list(key), buckets, hist.total)
        return m


class _EventCollector(Collector):
    """The per-request families (``_Counts``, ``_Hists``), built at scrape time."""

    def __init__(self, *families: _Counts | _Hists) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.family()


class Metrics:
    """One worker's metrics: an ``Observer`` plus health/reload hooks, on its own registry."""

    CONTENT_TYPE: Final = CONTENT_TYPE

    def __init__(
        self,
        fleet: Callable[[], FleetState],
        geoip_stats: Callable[[], Mapping[str, int]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Never the global registry: tests and several Metrics in one process must not clash.
        self.registry = CollectorRegistry(auto_describe=False)
        reg = self.registry
        # Per request: plain integers, turned into families at scrape time (_EventCollector).
        self._requests = _Counts(
            "gslb_requests",
            "Requests answered, by region served (none: gslb answered), route and status class.",
            ["region", "route", "code"],
        )
        self._ttfb = _Hists(
            "gslb_ttfb_seconds",
            "Time from sending upstream to the first response byte.",
            ["region"],
            TTFB_BUCKETS,
        )
        self._duration = _Hists(
            "gslb_request_duration_seconds",
            "Whole request time, as gslb saw it.",
            ["region"],
            DURATION_BUCKETS,
        )
        self._spills = _Counts(
            "gslb_spills",
            "Requests spilled from their home region to another.",
            ["from_region", "to_region"],
        )
        self._retries = _Counts("gslb_retries", "Upstream attempts retried, by reason.", ["reason"])
        self._decision = _Hists(
            "gslb_decision_seconds", "Time the router took to decide.", [], DECISION_BUCKETS
        )
        reg.register(
            _EventCollector(
                self._requests, self._ttfb, self._duration, self._spills, self._retries,
                self._decision,
            )
        )  # fmt: skip
        self._residency = Counter(
            "gslb_residency_denied",
            "Requests refused because every region a residency rule allows was unavailable.",
            ["rule"],
            registry=reg,
        )
        denied = Counter(
            "gslb_denied",
            "Requests that found no region, by cause (unplaceable, narrowed, residency, "
            "unavailable).",
            ["cause"],
            registry=reg,
        )
        # Every cause exists from the start: a rate() alert sees 0, not a missing series.
        self._denied_children = {cause: denied.labels(cause) for cause in DENIAL_CAUSES}
        self._reloads = Counter(
            "gslb_config_reloads", "Config reloads, by result.", ["result"], registry=reg
        )
        self._cordons = Counter(
            "gslb_cordons", "Endpoints cordoned, by region.", ["region"], registry=reg
        )
        self._ejections = Counter(
            "gslb_ejections",
            "Endpoints ejected by passive health checks, by region.",
            ["region"],
            registry=reg,
        )
        refused = Counter(
            "gslb_refused_requests",
            "Requests the listener answered itself, by reason: malformed or over a size "
            "limit (4xx), or a request handler failure (5xx).",
            ["reason"],
            registry=reg,
        )
        # Reasons are gslb's own codes (gslb.edge.logsafety.REASONS); each exists from the start.
        self._refused_children = {r: refused.labels(r) for r in sorted(REFUSAL_REASONS)}
        # Both results exist from the start so a rate() alert sees 0, not a missing series.
        self._reload_children = {
            True: self._reloads.labels("ok"),
            False: self._reloads.labels("error"),
        }
        reg.register(FleetCollector(fleet, geoip_stats, clock))
        self.connections = ConnectionCollector()  # the worker plugs its listener and pools in
        reg.register(self.connections)
        self._observe_decision = self._decision.get(()).observe
        # The route label of each (region, route, code) seen, capped (see _route_label).
        self._request_keys: dict[tuple[str, str, str], tuple[str, str, str]] = {}
        self._latency_series: dict[str, tuple[_Hist, _Hist]] = {}
        self._rule_children: dict[str, Counter] = {}
        self._routes: set[str] = set()

    # -- Observer ------------------------------------------------------------------------------

    def request_done(self, record: RequestRecord) -> None:
        region = record.region or NO_REGION
        key = (region, record.route, status_class(record.status))
        label = self._request_keys.get(key)
        if label is None:
            label = self._request_keys[key] = self._request_label(key)
        self._requests.add(label)
        series = self._latency_series.get(region)
        if series is None:
            series = self._latency_series[region] = (
                self._ttfb.get((region,)),
                self._duration.get((region,)),
            )
        if record.ttfb_s is not None:
            series[0].observe(record.ttfb_s)
        series[1].observe(record.duration_s)
        if record.route == REASONS[SPILL] and record.spilled_from:
            self._spills.add((record.spilled_from, region))
        for reason in record.retries:
            self._retries.add((retry_reason(reason),))

    def decision_made(self, seconds: float) -> None:
        self._observe_decision(seconds)

    def denied(self, cause: str, rules: tuple[str, ...]) -> None:
        self._denied_children[cause].inc()
        for rule in rules:
            child = self._rule_children.get(rule)
            if child is None:
                # Rule names come from the config: bounded.
                child = self._rule_children[rule] = self._residency.labels(rule)
            child.inc()

    # -- other hooks ---------------------------------------------------------------------------

    def reload_result(self, ok: bool) -> None:
        self._reload_children[ok].inc()

    def cordoned(self, region: str) -> None:
        self._cordons.labels(region).inc()

    def ejected(self, region: str) -> None:
        self._ejections.labels(region).inc()

    def refused(self, reason: str) -> None:
        """The listener refused a request (``gslb.edge.logsafety``): by reason code."""
        child = self._refused_children.get(reason)
        if child is None:  # not a code gslb.edge.logsafety hands out: keep the label bounded
            child = self._refused_children["bad_request"]
        child.inc()

    def health_event(self, event: HealthEventLike) -> None:
        """Adapter for the health policy's ``on_event`` callback: counts cordons and ejections."""
        if event.kind == CORDONED:
            self.cordoned(event.region)
        elif event.kind == EJECTED:
            self.ejected(event.region)

    # -- exposition ----------------------------------------------------------------------------

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # -- label children ------------------------------------------------------------------------

    def _request_label(self, key: tuple[str, str, str]) -> tuple[str, str, str]:
        """The label set for a request key; routes past MAX_ROUTES become ``other``."""
        region, route, code = key
        if route not in self._routes:
            if len(self._routes) >= MAX_ROUTES:
                route = OTHER
            else:
                self._routes.add(route)
        return (region, route, code)


# --------------------------------------------------------------------------- merging workers


def merge_expositions(texts: Sequence[bytes | str]) -> bytes:
    """One exposition from several workers' ``Metrics.exposition()`` pages.

    * Counters, histogram buckets/sums/counts, summaries and gauges such as ``gslb_inflight``
      are summed: each worker counts its own traffic and its own in-flight requests.
    * ``gslb_region_routable`` and ``gslb_endpoint_state`` take the max. Each worker runs its
      own health checks, so they can briefly disagree; the merged value reads "some worker
      sees it": a region is routable when at least one worker may route to it (so 0 means the
      whole edge has lost it, which is what an alert wants), and an endpoint's state is 1 for
      every state any worker puts it in (both ``up`` and ``down`` at 1 shows disagreement,
      rather than a sum of 2 or a min of 0 that hides it).
    * ``*_created`` samples take the min: the merged series exists since the earliest worker's.

    HELP and TYPE come from the first page that has the family; sample order is first seen.
    """
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], _Merged]] = {}
    for text in texts:
        raw = text.decode("utf-8") if isinstance(text, bytes) else text
        for family in text_string_to_metric_families(raw):
            _fold(family, families, values)
    return generate_latest(_Families(_rebuild(families, values)))


class _Merged:
    __slots__ = ("labels", "value")

    def __init__(self, labels: dict[str, str], value: float) -> None:
        self.labels = labels
        self.value = value


def _fold(
    family: Metric,
    families: dict[str, Metric],
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], _Merged]],
) -> None:
    if family.name not in families:
        families[family.name] = Metric(family.name, family.documentation, family.type)
        values[family.name] = {}
    merged = values[family.name]
    use_max = family.name in MAX_MERGED
    for s in family.samples:
        key = (s.name, tuple(sorted(s.labels.items())))
        have = merged.get(key)
        if have is None:
            merged[key] = _Merged(dict(s.labels), s.value)
        else:
            have.value = _combine(s.name, have.value, s.value, use_max)


def _combine(name: str, a: float, b: float, use_max: bool) -> float:
    if name.endswith("_created"):
        return min(a, b)
    if use_max:
        return max(a, b)
    if math.isnan(a):  # a NaN from one worker must not poison the others' sum
        return b
    if math.isnan(b):
        return a
    return a + b


def _rebuild(
    families: dict[str, Metric],
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], _Merged]],
) -> list[Metric]:
    out = []
    for name, family in families.items():
        for (sample_name, _), m in values[name].items():
            family.add_sample(sample_name, m.labels, m.value)
        out.append(family)
    return out


class _Families(Collector):
    """A fixed list of families, so ``generate_latest`` can write them."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
