"""Metrics: values read back through prometheus_client's own parser."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gslb.core.fleet import FleetState
from gslb.ops.metrics import (
    CONTENT_TYPE,
    ENDPOINT_STATES,
    MAX_ROUTES,
    Metrics,
    merge_expositions,
    status_class,
)
from gslb.ops.observe import RequestRecord
from tests.fleet import fleet_config

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: bytes | str) -> Samples:
    raw = text.decode() if isinstance(text, bytes) else text
    out: Samples = {}
    for family in text_string_to_metric_families(raw):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: bytes | str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


def types(text: bytes) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text.decode())}


def rec(**kw: object) -> RequestRecord:
    base = RequestRecord(
        request_id="req-1",
        method="POST",
        path="/v1/chat/completions",
        status=200,
        region="us-east",
        route="local",
        attempts=1,
        ttfb_s=0.2,
        duration_s=3.0,
        bytes_in=100,
        bytes_out=2000,
        country="US",
        client="203.0.113.0",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fleet() -> FleetState:
    return FleetState(fleet_config(urls={"us-east": ["http://a:8000", "http://b:8000"]}))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics(fleet: FleetState, clock: Clock) -> Metrics:
    return Metrics(lambda: fleet, lambda: {"hit": 5, "found": 2, "private": 1}, clock=clock)


def test_status_class() -> None:
    assert [status_class(s) for s in (101, 200, 302, 404, 499, 503, 0)] == [
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "4xx",
        "5xx",
        "other",
    ]


def test_requests_counted_per_label_set(metrics: Metrics) -> None:
    for _ in range(3):
        metrics.request_done(rec())
    metrics.request_done(rec(status=503, route="failover"))
    metrics.request_done(rec(status=499, error="client_closed"))
    metrics.request_done(
        rec(status=503, region=None, route="no_eligible_region", ttfb_s=None, attempts=0)
    )
    text = metrics.exposition()
    assert value(text, "gslb_requests_total", region="us-east", route="local", code="2xx") == 3
    assert value(text, "gslb_requests_total", region="us-east", route="failover", code="5xx") == 1
    assert value(text, "gslb_requests_total", region="us-east", route="local", code="4xx") == 1
    assert (
        value(text, "gslb_requests_total", region="none", route="no_eligible_region", code="5xx")
        == 1
    )
    assert types(text)["gslb_requests"] == "counter"


def test_latency_histograms(metrics: Metrics) -> None:
    metrics.request_done(rec(ttfb_s=0.004, duration_s=0.5))
    metrics.request_done(rec(ttfb_s=12.0, duration_s=400.0))
    metrics.request_done(rec(ttfb_s=None, duration_s=0.01, region=None, route="bad_request"))
    text = metrics.exposition()
    t = "gslb_ttfb_seconds"
    assert value(text, f"{t}_count", region="us-east") == 2
    assert value(text, f"{t}_sum", region="us-east") == pytest.approx(12.004)
    assert value(text, f"{t}_bucket", region="us-east", le="0.005") == 1
    assert value(text, f"{t}_bucket", region="us-east", le="10.0") == 1
    assert value(text, f"{t}_bucket", region="us-east", le="60.0") == 2
    assert value(text, f"{t}_bucket", region="us-east", le="+Inf") == 2
    # No ttfb for a request gslb answered itself, but a duration.
    assert samples(text).get((f"{t}_count", (("region", "none"),)), 0) == 0
    d = "gslb_request_duration_seconds"
    assert value(text, f"{d}_count", region="us-east") == 2
    assert value(text, f"{d}_sum", region="us-east") == pytest.approx(400.5)
    assert value(text, f"{d}_bucket", region="us-east", le="300.0") == 1
    assert value(text, f"{d}_bucket", region="us-east", le="600.0") == 2
    assert value(text, f"{d}_count", region="none") == 1
    assert types(text)[t] == "histogram"


def test_spills_from_home_to_served_region(metrics: Metrics) -> None:
    metrics.request_done(rec(route="spill", region="us-west", spilled_from="us-east"))
    metrics.request_done(rec(route="spill", region="us-west", spilled_from="us-east"))
    metrics.request_done(rec(route="spill", region="ca-central", spilled_from="us-east"))
    metrics.request_done(rec(route="local", spilled_from=None))
    text = metrics.exposition()
    name = "gslb_spills_total"
    assert value(text, name, from_region="us-east", to_region="us-west") == 2
    assert value(text, name, from_region="us-east", to_region="ca-central") == 1
    assert sum(v for (n, _), v in samples(text).items() if n == name) == 3


def test_retries_bounded(metrics: Metrics) -> None:
    metrics.request_done(rec(retries=("http_503", "timeout")))
    metrics.request_done(rec(retries=("http_503", "upstream_aborted")))
    # Library class names are not gslb's reasons (gslb.core.forward.RETRY_REASONS): "other".
    metrics.request_done(rec(retries=("ServerDisconnectedError", "ClientOSError")))
    metrics.request_done(rec(retries=("something /v1/secret?x=1", "http_418", "\x00")))
    text = metrics.exposition()
    name = "gslb_retries_total"
    assert value(text, name, reason="http_503") == 2
    assert value(text, name, reason="timeout") == 1
    assert value(text, name, reason="upstream_aborted") == 1
    assert value(text, name, reason="other") == 5
    reasons = {dict(labels)["reason"] for (n, labels) in samples(text) if n == name}
    assert reasons == {"http_503", "timeout", "upstream_aborted", "other"}


def test_routes_capped(metrics: Metrics) -> None:
    for i in range(MAX_ROUTES + 5):
        metrics.request_done(rec(route=f"r{i}"))
    text = metrics.exposition()
    routes = [dict(lb)["route"] for (n, lb) in samples(text) if n == "gslb_requests_total"]
    assert len(routes) == MAX_ROUTES + 1
    assert value(text, "gslb_requests_total", region="us-east", route="other", code="2xx") == 5


def test_no_request_data_in_labels(metrics: Metrics) -> None:
    metrics.request_done(rec(request_id="secret-id", path="/v1/private", client="198.51.100.0"))
    text = metrics.exposition().decode()
    for leaked in ("secret-id", "/v1/private", "198.51.100.0"):
        assert leaked not in text


def test_residency_decisions_reloads_health(metrics: Metrics) -> None:
    metrics.denied("residency", ("canada",))
    metrics.denied("residency", ("canada", "eu"))
    metrics.denied("narrowed", ())
    for s in (2e-6, 4e-6, 2e-3):
        metrics.decision_made(s)
    metrics.reload_result(True)
    metrics.reload_result(True)
    metrics.cordoned("us-east")
    metrics.ejected("us-west")
    metrics.ejected("us-west")

    class Event:
        kind = "cordoned"
        region = "us-east"

    metrics.health_event(Event())
    text = metrics.exposition()
    assert value(text, "gslb_residency_denied_total", rule="canada") == 2
    assert value(text, "gslb_residency_denied_total", rule="eu") == 1
    assert value(text, "gslb_denied_total", cause="residency") == 2
    assert value(text, "gslb_denied_total", cause="narrowed") == 1
    assert value(text, "gslb_denied_total", cause="unplaceable") == 0
    assert value(text, "gslb_decision_seconds_count") == 3
    assert value(text, "gslb_decision_seconds_sum") == pytest.approx(2.006e-3)
    assert value(text, "gslb_decision_seconds_bucket", le="5e-06") == 2
    assert value(text, "gslb_decision_seconds_bucket", le="0.0025") == 3
    assert value(text, "gslb_config_reloads_total", result="ok") == 2
    assert value(text, "gslb_config_reloads_total", result="error") == 0
    assert value(text, "gslb_cordons_total", region="us-east") == 2
    assert value(text, "gslb_ejections_total", region="us-west") == 2


def test_live_values_read_at_scrape(metrics: Metrics, fleet: FleetState, clock: Clock) -> None:
    text = metrics.exposition()
    assert value(text, "gslb_inflight", region="us-east") == 0
    assert value(text, "gslb_region_routable", region="us-east") == 1
    a, b = fleet.regions[0].endpoints
    for state in ENDPOINT_STATES:
        got = value(text, "gslb_endpoint_state", region="us-east", endpoint=a.url, state=state)
        assert got == (1 if state == "up" else 0)

    fleet.acquire(a)
    fleet.acquire(b)
    fleet.acquire(b)
    a.up = False
    b.draining = True
    fleet.refresh(clock())
    text = metrics.exposition()
    assert value(text, "gslb_inflight", region="us-east") == 3
    assert value(text, "gslb_region_routable", region="us-east") == 0
    assert value(text, "gslb_region_routable", region="us-west") == 1

    def states(url: str) -> dict[str, float]:
        return {
            s: value(text, "gslb_endpoint_state", region="us-east", endpoint=url, state=s)
            for s in ENDPOINT_STATES
        }

    zero = dict.fromkeys(ENDPOINT_STATES, 0)
    assert states(a.url) == {**zero, "down": 1}
    assert states(b.url) == {**zero, "draining": 1}

    # Ejection is time-bound: the collector uses the injected clock.
    b.draining = False
    b.ejected_until = clock() + 10
    text = metrics.exposition()
    assert states(b.url)["ejected"] == 1
    clock.now += 11
    text = metrics.exposition()
    assert states(b.url)["up"] == 1

    # Fleet mode: a quorum of other edges sees it down (it is up by this edge's own probes).
    b.fleet_down = True
    text = metrics.exposition()
    assert states(b.url) == {**zero, "fleet_down": 1}


def test_fleet_swapped_on_reload(clock: Clock) -> None:
    current = [FleetState(fleet_config())]
    m = Metrics(lambda: current[0], clock=clock)
    assert ("gslb_inflight", (("region", "us-east"),)) in samples(m.exposition())
    current[0] = FleetState(
        fleet_config(regions=[("solo", (0.0, 0.0), "aws", "hyperscaler", "US", "active", 5, [])])
    )
    regions = {dict(lb)["region"] for (n, lb) in samples(m.exposition()) if n == "gslb_inflight"}
    assert regions == {"solo"}
    # No geoip callable: no geoip family.
    assert "gslb_geoip_lookups" not in types(m.exposition())


def test_geoip_lookups(metrics: Metrics) -> None:
    text = metrics.exposition()
    assert types(text)["gslb_geoip_lookups"] == "counter"
    assert value(text, "gslb_geoip_lookups_total", result="hit") == 5
    assert value(text, "gslb_geoip_lookups_total", result="found") == 2
    assert value(text, "gslb_geoip_lookups_total", result="private") == 1
    assert value(text, "gslb_geoip_lookups_total", result="not_found") == 0
    assert value(text, "gslb_geoip_lookups_total", result="error") == 0


def test_own_registry_per_instance(fleet: FleetState) -> None:
    one, two = Metrics(lambda: fleet), Metrics(lambda: fleet)
    one.request_done(rec())
    key = ("gslb_requests_total", (("code", "2xx"), ("region", "us-east"), ("route", "local")))
    assert samples(one.exposition())[key] == 1
    assert not [n for (n, _) in samples(two.exposition()) if n == "gslb_requests_total"]
    assert CONTENT_TYPE.startswith("text/plain")


# --------------------------------------------------------------------------- merging workers


def test_merge_expositions(clock: Clock) -> None:
    cfg = fleet_config(urls={"us-east": ["http://a:8000", "http://b:8000"]})
    f1, f2 = FleetState(cfg), FleetState(cfg)
    w1 = Metrics(lambda: f1, lambda: {"hit": 1, "found": 1}, clock=clock)
    w2 = Metrics(lambda: f2, lambda: {"hit": 2, "not_found": 3}, clock=clock)
    w1.request_done(rec(ttfb_s=0.1, duration_s=1.0))
    w1.request_done(rec(retries=("timeout",)))
    w2.request_done(rec(ttfb_s=0.3, duration_s=2.0, retries=("timeout", "weird")))
    w2.request_done(rec(route="spill", region="us-west", spilled_from="us-east"))
    w1.decision_made(1e-5)
    w2.decision_made(2e-5)
    w2.reload_result(False)
    f1.acquire(f1.regions[0].endpoints[0])
    f2.acquire(f2.regions[0].endpoints[1])
    f2.acquire(f2.regions[0].endpoints[1])
    # Worker 2 lost us-east (its health checks say down); worker 1 still routes there.
    for ep in f2.regions[0].endpoints:
        ep.up = False
    f2.refresh(clock())

    merged = merge_expositions([w1.exposition(), w2.exposition().decode()])
    req = "gslb_requests_total"
    assert value(merged, req, region="us-east", route="local", code="2xx") == 3
    assert value(merged, req, region="us-west", route="spill", code="2xx") == 1
    assert value(merged, "gslb_spills_total", from_region="us-east", to_region="us-west") == 1
    assert value(merged, "gslb_retries_total", reason="timeout") == 2
    assert value(merged, "gslb_retries_total", reason="other") == 1
    assert value(merged, "gslb_config_reloads_total", result="error") == 1
    assert value(merged, "gslb_config_reloads_total", result="ok") == 0
    assert value(merged, "gslb_ttfb_seconds_count", region="us-east") == 3
    assert value(merged, "gslb_ttfb_seconds_sum", region="us-east") == pytest.approx(0.6)
    assert value(merged, "gslb_ttfb_seconds_bucket", region="us-east", le="0.25") == 2
    assert value(merged, "gslb_ttfb_seconds_bucket", region="us-east", le="+Inf") == 3
    assert value(merged, "gslb_request_duration_seconds_sum", region="us-east") == pytest.approx(
        6.0
    )
    assert value(merged, "gslb_decision_seconds_count") == 2
    assert value(merged, "gslb_geoip_lookups_total", result="hit") == 3
    assert value(merged, "gslb_geoip_lookups_total", result="not_found") == 3
    # In-flight sums; routability and endpoint states take the max ("some worker sees it").
    assert value(merged, "gslb_inflight", region="us-east") == 3
    assert value(merged, "gslb_region_routable", region="us-east") == 1
    a = "http://a:8000"
    assert value(merged, "gslb_endpoint_state", region="us-east", endpoint=a, state="up") == 1
    assert value(merged, "gslb_endpoint_state", region="us-east", endpoint=a, state="down") == 1
    assert value(merged, "gslb_endpoint_state", region="us-east", endpoint=a, state="ejected") == 0

    # Names and types survive: it parses again, with _total/_bucket where they belong.
    t = types(merged)
    assert t["gslb_requests"] == "counter"
    assert t["gslb_ttfb_seconds"] == "histogram"
    assert t["gslb_inflight"] == "gauge"
    assert t["gslb_geoip_lookups"] == "counter"
    text = merged.decode()
    assert "# TYPE gslb_requests_total counter" in text
    assert "# HELP gslb_inflight " in text
    assert 'gslb_ttfb_seconds_bucket{le="+Inf",region="us-east"} 3.0' in text
    # Re-merging a merged page with nothing else is the identity.
    assert samples(merge_expositions([merged])) == samples(merged)


def test_merge_created_takes_min_and_all_down_is_unroutable(clock: Clock) -> None:
    cfg = fleet_config()
    f1, f2 = FleetState(cfg), FleetState(cfg)
    for f in (f1, f2):
        for ep in f.regions[1].endpoints:
            ep.up = False
        f.refresh(clock())
    w1, w2 = Metrics(lambda: f1), Metrics(lambda: f2)
    w1.request_done(rec())
    w2.request_done(rec())
    p1, p2 = w1.exposition(), w2.exposition()
    merged = merge_expositions([p1, p2])
    assert value(merged, "gslb_region_routable", region="us-west") == 0
    key = dict(region="us-east", route="local", code="2xx")
    created = [value(p, "gslb_requests_created", **key) for p in (p1, p2)]
    assert value(merged, "gslb_requests_created", **key) == min(created)


def test_merge_nan_does_not_poison_sum() -> None:
    a = "# TYPE x gauge\nx 1\n"
    b = "# TYPE x gauge\nx NaN\n"
    assert value(merge_expositions([a, b]), "x") == 1
    assert math.isnan(value(merge_expositions([b]), "x"))


def test_merge_empty() -> None:
    assert merge_expositions([]) == b""


def test_plain_per_request_figures_match_prometheus_clients_own(metrics: Metrics) -> None:
    # The request path keeps plain integers (no lock, no child lookup); the page at scrape time
    # must read exactly as prometheus_client's own Histogram and Counter would have written it.
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from gslb.ops.metrics import TTFB_BUCKETS

    reference = CollectorRegistry(auto_describe=False)
    ttfb = Histogram("gslb_ttfb_seconds", "x", ["region"], buckets=TTFB_BUCKETS, registry=reference)
    requests = Counter("gslb_requests", "x", ["region", "route", "code"], registry=reference)
    edges = [0.005, 0.0050001, 0.01, 59.9, 60, 61, 1e9, 0.0]  # on, just past and beyond bounds
    for seconds in edges:
        metrics.request_done(rec(ttfb_s=seconds))
        ttfb.labels("us-east").observe(seconds)
        requests.labels("us-east", "local", "2xx").inc()
    ours, theirs = samples(metrics.exposition()), samples(generate_latest(reference))
    for name in ("gslb_ttfb_seconds_bucket", "gslb_ttfb_seconds_count", "gslb_ttfb_seconds_sum"):
        mine = {k: v for k, v in ours.items() if k[0] == name}
        ref = {k: v for k, v in theirs.items() if k[0] == name}
        assert mine == ref and mine, name
    key = ("gslb_requests_total", (("code", "2xx"), ("region", "us-east"), ("route", "local")))
    assert ours[key] == theirs[key] == len(edges)
    assert types(metrics.exposition())["gslb_ttfb_seconds"] == "histogram"
