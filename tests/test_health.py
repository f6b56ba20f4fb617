"""Health: the pure policy under an injected clock, and the active checker against real servers."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from gslb.config import Config, parse_toml
from gslb.fleet import EndpointState, FleetState, Outcome
from gslb.geo import Location
from gslb.health import (
    CORDONED,
    DOWN,
    EJECTED,
    EJECTION_REFUSED,
    REGION_ROUTABLE,
    REGION_UNROUTABLE,
    UP,
    ActiveChecker,
    HealthEvent,
    HealthPolicy,
)
from gslb.policy import RequestFacts
from gslb.router import Router
from tests.fleet import REGIONS
from tests.loopback import eventually, serve_app

NEW_YORK = Location("US", "NA", 40.71, -74.01)
FAIL = Outcome.HTTP_5XX

# Small, explicit numbers so every expected time below can be read off the config.
HEALTH = """
[health]
rise = 2
fall = 3
consecutive_failures = 3
base_ejection_s = 10
max_ejection_s = 25
max_ejection_percent = 50
saturated_s = 5
cordon_s = 100
standby_hold_down_s = 30
"""


def make_config(
    endpoints: dict[str, list[tuple[str, str]]],
    health: str = HEALTH,
    region_extra: dict[str, str] | None = None,
) -> Config:
    """Regions from ``tests.fleet.REGIONS`` with explicit (url, node) endpoints."""
    parts = [health]
    for name, (lat, lon), provider, tier, jur, role, cap, certs in REGIONS:
        if name not in endpoints:
            continue
        cert_list = ", ".join(f'"{c}"' for c in certs)
        parts.append(
            f"""
[[regions]]
name = "{name}"
location = [{lat}, {lon}]
provider = "{provider}"
tier = "{tier}"
jurisdiction = "{jur}"
role = "{role}"
capacity = {cap}
service_ms = 1000
certifications = [{cert_list}]
{(region_extra or {}).get(name, "")}
"""
        )
        for url, node in endpoints[name]:
            parts.append(f'[[regions.endpoints]]\nurl = "{url}"\nnode = "{node}"\n')
    return parse_toml("\n".join(parts), "test.toml")


def eps(prefix: str, nodes: list[str]) -> list[tuple[str, str]]:
    return [(f"http://{prefix}.{i}:8000", node) for i, node in enumerate(nodes)]


class Harness:
    """A fleet, its policy and the events it emitted."""

    def __init__(self, cfg: Config) -> None:
        self.fleet = FleetState(cfg)
        self.events: list[HealthEvent] = []
        self.policy = HealthPolicy(self.fleet, on_event=self.events.append)
        self.policy.tick(0.0)

    def region(self, name: str):  # type: ignore[no-untyped-def]
        return self.fleet.regions[self.fleet.snapshot.index(name)]

    def ep(self, name: str, i: int) -> EndpointState:
        return self.region(name).endpoints[i]  # type: ignore[no-any-return]

    def routable(self, name: str) -> bool:
        return bool(self.fleet.snapshot.routable[self.fleet.snapshot.index(name)])

    def load(self, name: str) -> float:
        return self.fleet.snapshot.load[self.fleet.snapshot.index(name)]

    def fail(self, ep: EndpointState, n: int, now: float, outcome: Outcome = FAIL) -> None:
        for _ in range(n):
            self.policy.on_outcome(ep, outcome, now)

    def probes(self, ep: EndpointState, ok: bool, n: int, now: float) -> None:
        for _ in range(n):
            self.policy.on_probe(ep, ok, 0.01 if ok else None, now)

    def kinds(self, kind: str) -> list[HealthEvent]:
        return [e for e in self.events if e.kind == kind]


def four_nodes() -> Harness:
    return Harness(make_config({"us-east": eps("10.0.0", ["a", "b", "c", "d"])}))


# --------------------------------------------------------------------------------------------
# passive outlier detection


@pytest.mark.parametrize(
    "outcome", [Outcome.CONNECT_ERROR, Outcome.TIMEOUT, Outcome.HTTP_5XX, Outcome.ABORT]
)
def test_consecutive_failures_eject(outcome: Outcome) -> None:
    h = four_nodes()
    ep = h.ep("us-east", 0)
    h.fail(ep, 2, 1.0, outcome)
    assert ep.consecutive_failures == 2 and not ep.ejected(1.0)
    h.fail(ep, 1, 1.0, outcome)
    assert ep.ejected(1.0) and ep.ejected_until == 11.0
    assert ep.state_name(1.0) == "ejected"
    assert ep.consecutive_failures == 0 and ep.ejections == 1
    assert h.policy.ejections_total["us-east"] == 1
    assert [(e.region, e.endpoint) for e in h.kinds(EJECTED)] == [("us-east", ep.url)]


def test_ejected_endpoint_is_never_picked() -> None:
    h = four_nodes()
    ep = h.ep("us-east", 0)
    h.fail(ep, 3, 1.0)
    picks = {h.fleet.pick(0, 2.0) for _ in range(200)}
    assert ep not in picks and None not in picks


def test_success_resets_the_count() -> None:
    h = four_nodes()
    ep = h.ep("us-east", 0)
    h.fail(ep, 2, 1.0)
    h.policy.on_outcome(ep, Outcome.SUCCESS, 1.0)
    assert ep.consecutive_failures == 0
    h.fail(ep, 2, 1.0)
    assert not ep.ejected(1.0)


def test_cancelled_says_nothing() -> None:
    h = four_nodes()
    ep = h.ep("us-east", 0)
    h.fail(ep, 2, 1.0)
    h.fail(ep, 10, 1.0, Outcome.CANCELLED)
    assert ep.consecutive_failures == 2 and not ep.ejected(1.0)


def test_ejection_time_grows_and_is_capped() -> None:
    h = four_nodes()
    ep = h.ep("us-east", 0)
    durations = []
    now = 0.0
    for _ in range(4):
        h.fail(ep, 3, now)
        durations.append(ep.ejected_until - now)
        now = ep.ejected_until + 1.0  # readmitted, then fails again soon after
    assert durations == [10.0, 20.0, 25.0, 25.0]
    assert ep.ejections == 4


def test_ejection_multiplier_decays_after_a_healthy_max_ejection_s() -> None:
    h = four_nodes()
    ep = h.ep("us-east", 0)
    h.fail(ep, 3, 0.0)  # ejected until 10
    h.fail(ep, 3, 11.0)  # second ejection: 20 s, until 31
    assert ep.ejected_until == 31.0
    # Healthy for max_ejection_s (25) after the last ejection ended: back to the base time.
    h.fail(ep, 3, 31.0 + 25.0)
    assert ep.ejections == 1
    assert ep.ejected_until == 56.0 + 10.0


def test_failures_while_ejected_do_not_extend_the_ejection() -> None:
    h = four_nodes()
    ep = h.ep("us-east", 0)
    h.fail(ep, 3, 0.0)
    h.fail(ep, 10, 5.0)  # requests that were already in flight
    assert ep.ejected_until == 10.0 and ep.ejections == 1


def test_readmission_after_the_ejection_time() -> None:
    h = Harness(make_config({"us-east": eps("10.0.0", ["a"]), "us-west": eps("10.0.1", ["b"])}))
    ep = h.ep("us-east", 0)
    h.fail(ep, 3, 0.0)
    assert ep.ejected(9.9)
    h.policy.tick(9.9)
    assert ep.state_name(9.9) == "ejected"
    h.policy.tick(10.0)
    assert ep.available(10.0) and ep.state_name(10.0) == "up"
    assert not h.region("us-east").panic
    assert h.fleet.pick(0, 10.0) is ep


def test_max_ejection_percent_is_honoured() -> None:
    h = four_nodes()
    a, b, c, _ = h.region("us-east").endpoints
    h.fail(a, 3, 1.0)
    h.fail(b, 3, 1.0)
    assert a.ejected(1.0) and b.ejected(1.0)
    h.fail(c, 3, 1.0)  # a third of four would exceed 50%
    assert not c.ejected(1.0)
    assert h.policy.ejections_refused_total["us-east"] == 1
    assert [e.endpoint for e in h.kinds(EJECTION_REFUSED)] == [c.url]
    # Once one is readmitted, the next failure of c may eject it.
    h.policy.tick(11.0)
    h.fail(c, 1, 11.0)
    assert c.ejected(11.0)


def test_one_ejection_is_always_allowed_but_zero_percent_disables_ejection() -> None:
    low = HEALTH.replace("max_ejection_percent = 50", "max_ejection_percent = 10")
    h = Harness(make_config({"us-east": eps("10.0.0", ["a", "b"])}, health=low))
    a, b = h.region("us-east").endpoints
    h.fail(a, 3, 1.0)
    assert a.ejected(1.0)  # 10% of 2 rounds down to 0; one is allowed anyway
    h.fail(b, 3, 1.0)
    assert not b.ejected(1.0)
    off = HEALTH.replace("max_ejection_percent = 50", "max_ejection_percent = 0")
    h = Harness(make_config({"us-east": eps("10.0.0", ["a", "b"])}, health=off))
    a = h.ep("us-east", 0)
    h.fail(a, 30, 1.0)
    assert not a.ejected(1.0)


def test_panic_keeps_a_single_endpoint_region_routable_while_probes_pass() -> None:
    h = Harness(make_config({"us-east": eps("10.0.0", ["a"]), "us-west": eps("10.0.1", ["b"])}))
    ep = h.ep("us-east", 0)
    h.fail(ep, 3, 1.0)
    assert ep.ejected(1.0)  # the ejection is recorded (status shows it) ...
    region = h.region("us-east")
    assert region.panic and region.routable and h.routable("us-east")  # ... but ignored
    assert h.fleet.pick(0, 1.0) is ep
    assert region.recovered_at is None  # never unroutable: no hold-down
    # Active checks fail too: now it really is out.
    h.probes(ep, False, 3, 2.0)
    assert not h.routable("us-east") and h.fleet.pick(0, 2.0) is None


def test_panic_when_passive_ejection_empties_a_region() -> None:
    all_out = HEALTH.replace("max_ejection_percent = 50", "max_ejection_percent = 100")
    h = Harness(make_config({"us-east": eps("10.0.0", ["a", "b", "c"])}, health=all_out))
    for ep in h.region("us-east").endpoints:
        h.fail(ep, 3, 1.0)
        assert ep.ejected(1.0)
    assert h.region("us-east").panic and h.routable("us-east")
    assert h.fleet.pick(0, 1.0) is not None
    status = h.policy.status(1.0)["regions"]["us-east"]  # type: ignore[index]
    assert status["panic"] is True


def test_429_raises_load_but_never_ejects() -> None:
    h = four_nodes()
    ep = h.ep("us-east", 0)
    before = h.load("us-east")
    h.fail(ep, 20, 1.0, Outcome.SATURATED)
    assert not ep.ejected(1.0) and ep.consecutive_failures == 0
    assert ep.saturated_until == 6.0
    assert h.load("us-east") == before + h.fleet.saturation_load[0]
    assert ep.available(1.0)
    h.policy.tick(5.9)
    assert h.load("us-east") > before
    h.policy.tick(6.0)
    assert h.load("us-east") == before


def test_429_resets_the_failure_count() -> None:
    h = four_nodes()
    ep = h.ep("us-east", 0)
    h.fail(ep, 2, 1.0)
    h.fail(ep, 1, 1.0, Outcome.SATURATED)
    h.fail(ep, 2, 1.0)
    assert not ep.ejected(1.0)


# --------------------------------------------------------------------------------------------
# node cordon


def test_ejection_cordons_the_node_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(make_config({"us-east": eps("10.0.0", ["n1", "n1", "n2", "n2"])}))
    a, b, c, d = h.region("us-east").endpoints
    with caplog.at_level(logging.WARNING, logger="gslb.health"):
        h.fail(a, 3, 1.0)
    assert b.cordoned(1.0) and b.cordoned_until == 101.0
    assert b.cordoned_reason == f"sibling {a.url} ejected"
    assert b.state_name(1.0) == "cordoned"
    assert not c.cordoned(1.0) and not d.cordoned(1.0)
    assert h.policy.cordons_total["us-east"] == 1
    assert [e.endpoint for e in h.kinds(CORDONED)] == [b.url]
    lines = [r.getMessage() for r in caplog.records if "cordoning" in r.getMessage()]
    assert len(lines) == 1 and "n1" in lines[0] and b.url in lines[0] and "ejected" in lines[0]
    picks = {h.fleet.pick(0, 2.0) for _ in range(100)}
    assert picks == {c, d}


def test_down_cordons_the_node_and_cordon_expires() -> None:
    h = Harness(make_config({"us-east": eps("10.0.0", ["n1", "n1", "n2"])}))
    a, b, _c = h.region("us-east").endpoints
    h.probes(a, False, 3, 5.0)
    assert not a.up and a.state_name(5.0) == "down"
    assert b.cordoned_reason == f"sibling {a.url} down"
    assert [e.endpoint for e in h.kinds(DOWN)] == [a.url]
    h.policy.tick(104.9)
    assert not b.available(104.9)
    h.policy.tick(105.0)
    assert b.available(105.0) and b.cordoned_reason == ""
    status = h.policy.status(105.0)["regions"]["us-east"]  # type: ignore[index]
    assert status["endpoints"][1]["state"] == "up"


def test_cordon_never_empties_a_region(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(make_config({"us-east": eps("10.0.0", ["n1", "n1"]), "us-west": eps("x", ["w"])}))
    a, b = h.region("us-east").endpoints
    with caplog.at_level(logging.WARNING, logger="gslb.health"):
        h.probes(a, False, 3, 1.0)
    assert not b.cordoned(1.0) and h.routable("us-east")
    assert any("not cordoning" in r.getMessage() for r in caplog.records)


def test_a_draining_endpoint_going_down_does_not_cordon() -> None:
    h = Harness(make_config({"us-east": eps("10.0.0", ["n1", "n1", "n2"])}))
    a, b, _ = h.region("us-east").endpoints
    h.fleet.set_draining(True, 1.0, endpoint=a.url)
    h.probes(a, False, 3, 2.0)  # maintenance on a drained endpoint
    assert not a.up and not b.cordoned(2.0)


# --------------------------------------------------------------------------------------------
# active checks


def test_rise_and_fall() -> None:
    h = four_nodes()
    ep = h.ep("us-east", 0)
    h.probes(ep, False, 2, 1.0)
    h.probes(ep, True, 1, 1.0)
    h.probes(ep, False, 2, 1.0)
    assert ep.up  # never three failures in a row
    h.probes(ep, False, 1, 1.0)
    assert not ep.up and ep.probe_failures == 3
    h.probes(ep, True, 1, 2.0)
    assert not ep.up
    h.probes(ep, False, 1, 2.0)
    h.probes(ep, True, 1, 2.0)
    assert not ep.up  # rise counts successes in a row
    h.probes(ep, True, 1, 3.0)
    assert ep.up and ep.state_name(3.0) == "up"
    assert [e.kind for e in h.events if e.kind in (UP, DOWN)] == [DOWN, UP]


def test_initial_probe_failure_is_decisive_and_does_not_cordon() -> None:
    h = Harness(make_config({"us-east": eps("10.0.0", ["n1", "n1", "n2"])}))
    a, b, _c = h.region("us-east").endpoints
    h.policy.on_initial_probe(a, False, None, 0.0)
    h.policy.on_initial_probe(b, True, 0.002, 0.0)
    assert not a.up and b.up and not b.cordoned(0.0)
    h.probes(a, True, 2, 1.0)
    assert a.up


def test_probe_rtt_ewma() -> None:
    h = four_nodes()
    ep = h.ep("us-east", 0)
    assert h.policy.ewma_probe_rtt_ms(0) is None
    h.policy.on_probe(ep, True, 0.010, 1.0)
    h.policy.on_probe(ep, True, 0.020, 1.0)
    h.policy.on_probe(ep, False, None, 1.0)  # failures carry no RTT
    assert h.policy.ewma_probe_rtt_ms(0) == pytest.approx(12.0)  # 10 + 0.2 * (20 - 10)
    assert h.policy.ewma_probe_rtt_ms(h.region("us-east")) == pytest.approx(12.0)


# --------------------------------------------------------------------------------------------
# region recovery: hold-down


def two_regions() -> Harness:
    return Harness(make_config({"us-east": eps("10.0.0", ["a"]), "us-west": eps("10.0.1", ["b"])}))


def test_fresh_start_serves_immediately() -> None:
    h = two_regions()
    assert all(r.recovered_at is None for r in h.fleet.regions)
    assert h.routable("us-east") and h.routable("us-west")


def test_hold_down_after_recovery() -> None:
    h = two_regions()
    router = Router(h.fleet.cfg)
    ep = h.ep("us-east", 0)
    facts = RequestFacts(NEW_YORK, 300.0)
    assert router.decide(facts, h.fleet.snapshot).region == "us-east"
    h.probes(ep, False, 3, 10.0)
    assert not h.routable("us-east")
    assert [e.region for e in h.kinds(REGION_UNROUTABLE)] == ["us-east"]
    assert router.decide(facts, h.fleet.snapshot).region == "us-west"
    h.probes(ep, True, 2, 20.0)
    region = h.region("us-east")
    assert region.routable and region.recovered_at == 20.0
    assert h.kinds(REGION_ROUTABLE)[0].region == "us-east"
    assert h.fleet.snapshot.routable[0] == 0  # healthy, but held down
    status = h.policy.status(25.0)["regions"]["us-east"]  # type: ignore[index]
    assert status["healthy"] is True and status["routable"] is False
    assert status["hold_down_remaining_s"] == 25.0
    h.policy.tick(49.9)
    assert h.fleet.snapshot.routable[0] == 0
    assert router.decide(facts, h.fleet.snapshot).region == "us-west"
    h.policy.tick(50.0)
    assert h.fleet.snapshot.routable[0] == 1
    assert router.decide(facts, h.fleet.snapshot).region == "us-east"


def test_cordoned_siblings_keep_a_region_serving_in_panic() -> None:
    # A cordon is a guess (siblings of a failed GPU often fail next); when it is all a region
    # has left, the panic rule serves from the cordoned endpoint rather than refuse.
    h = Harness(
        make_config({"us-east": eps("10.0.0", ["n1", "n2", "n2"]), "us-west": eps("w", ["w"])})
    )
    a, b, c = h.region("us-east").endpoints
    h.probes(c, False, 3, 1.0)  # c down: b, on the same node, cordoned until 101
    h.probes(a, False, 3, 2.0)  # a down: only the cordoned b is left
    region = h.region("us-east")
    assert b.cordoned(2.0) and region.panic and h.routable("us-east")
    assert h.fleet.pick(region.index, 2.0) is b
    h.probes(b, False, 3, 3.0)  # now really nothing is left
    assert not region.routable and not h.routable("us-east")
    h.probes(b, True, 2, 10.0)  # b comes back: held down from then
    assert region.routable and region.recovered_at == 10.0
    assert not h.routable("us-east")
    h.policy.tick(39.9)
    assert not h.routable("us-east")
    h.policy.tick(40.0)
    assert h.routable("us-east")


def test_undrain_is_not_held_down() -> None:
    h = two_regions()
    h.fleet.set_draining(True, 1.0, region="us-east")
    assert not h.routable("us-east")
    h.policy.tick(2.0)
    h.fleet.set_draining(False, 3.0, region="us-east")
    assert h.routable("us-east") and h.region("us-east").recovered_at is None


def test_drain_every_endpoint_then_undrain_is_not_held_down() -> None:
    h = two_regions()
    h.fleet.set_draining(True, 1.0, node="a")
    assert not h.routable("us-east")
    h.policy.tick(2.0)
    h.fleet.set_draining(False, 3.0, node="a")
    assert h.routable("us-east")


# --------------------------------------------------------------------------------------------
# drains


def test_drain_endpoint_node_region_and_drained() -> None:
    h = Harness(make_config({"us-east": eps("10.0.0", ["n1", "n1", "n2"])}))
    a, b, c = h.region("us-east").endpoints
    h.fleet.acquire(a)
    h.fleet.acquire(a)
    drained = h.fleet.set_draining(True, 1.0, endpoint=a.url)
    assert drained == [a] and a.state_name(1.0) == "draining"
    assert a not in {h.fleet.pick(0, 1.0) for _ in range(100)}
    status = h.policy.drain_status(drained)
    assert status == {
        "endpoints": [{"url": a.url, "node": "n1", "draining": True, "inflight": 2}],
        "inflight": 2,
        "drained": False,
    }
    h.fleet.release(a)
    assert not h.fleet.drained(drained)
    h.fleet.release(a)
    assert h.fleet.drained(drained) and h.policy.drain_status(drained)["drained"] is True

    node = h.fleet.set_draining(True, 1.0, node="n1")
    assert set(node) == {a, b}
    assert {h.fleet.pick(0, 1.0) for _ in range(50)} == {c}

    h.fleet.acquire(c)
    region = h.fleet.set_draining(True, 1.0, region="us-east")
    assert h.fleet.pick(0, 1.0) is None and not h.routable("us-east")
    assert not h.fleet.drained(region)
    h.fleet.release(c)
    assert h.fleet.drained(region)
    assert h.policy.status(1.0)["regions"]["us-east"]["draining"] is True  # type: ignore[index]


# --------------------------------------------------------------------------------------------
# latency learning, status, events


def test_latency_ewmas_and_service_correction() -> None:
    h = two_regions()
    p = h.policy
    assert p.ewma_ttfb_ms(0) is None and p.service_ms_correction(0) is None
    p.on_ttfb(0, 0.100)
    p.on_ttfb(0, 0.200)
    assert p.ewma_ttfb_ms(0) == pytest.approx(120.0)
    p.on_ttfb(0, float("nan"))  # ignored
    assert p.ewma_ttfb_ms(0) == pytest.approx(120.0)
    p.on_probe(h.ep("us-east", 0), True, 0.020, 1.0)
    for _ in range(4):
        p.on_duration(0, 2.0)
    assert p.service_ms_correction(0) is None  # too few samples to trust
    p.on_duration(0, 2.0)
    assert p.service_ms_correction(0) == pytest.approx(2000.0 - 20.0)
    assert p.service_ms_correction(1) is None
    for _ in range(5):
        p.on_duration(1, 0.0)
    assert p.service_ms_correction(1) == 1.0  # floored


def test_status_is_json_ready() -> None:
    h = Harness(make_config({"us-east": eps("10.0.0", ["n1", "n1", "n2"])}))
    a = h.ep("us-east", 0)
    h.fail(a, 3, 1.0)
    a.reported_load = 4.0
    a.reported_at = 1.0
    h.policy.on_ttfb(0, 0.05)
    doc = h.policy.status(2.0)
    json.dumps(doc)
    region = doc["regions"]["us-east"]  # type: ignore[index]
    assert region["routable"] is True and region["ewma_ttfb_ms"] == 50.0
    first, second = region["endpoints"][:2]
    assert first["state"] == "ejected" and first["ejected_remaining_s"] == 9.0
    assert first["reported_load"] == 4.0 and first["report_age_s"] == 1.0
    assert second["state"] == "cordoned" and second["cordon_reason"].startswith("sibling")
    stale = h.policy.status(10.0)["regions"]["us-east"]["endpoints"][0]  # type: ignore[index]
    assert stale["reported_load"] is None


def test_a_failing_event_callback_does_not_break_health(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fleet = FleetState(make_config({"us-east": eps("10.0.0", ["a", "b"])}))

    def boom(event: HealthEvent) -> None:
        raise RuntimeError("metrics broke")

    policy = HealthPolicy(fleet, on_event=boom)
    ep = fleet.regions[0].endpoints[0]
    with caplog.at_level(logging.ERROR, logger="gslb.health"):
        for _ in range(3):
            policy.on_outcome(ep, FAIL, 1.0)
    assert ep.ejected(1.0)
    assert any("callback failed" in r.getMessage() for r in caplog.records)
    policy.close()
    assert policy._on_region_change not in fleet.on_region_change


# --------------------------------------------------------------------------------------------
# ActiveChecker against real servers


class Upstream:
    """A tiny server whose /health status can be flipped, or made to hang."""

    def __init__(self) -> None:
        self.status = 200
        self.hang = False
        self.hits = 0
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _health(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.hang:
            await self._release.wait()
        return web.Response(status=self.status, text="ok")

    async def start(self) -> Upstream:
        app = web.Application()
        app.router.add_get("/health", self._health)
        self._runner, self.url = await serve_app(app, shutdown_timeout=0.1)
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


FAST = """
[health]
interval_s = 0.05
timeout_s = 0.5
jitter = 0.2
rise = 2
fall = 3
base_ejection_s = 0.2
max_ejection_s = 1
max_ejection_percent = 100
cordon_s = 100
standby_hold_down_s = 0
"""


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await Upstream().start()
    yield up
    await up.stop()


def checker_for(
    urls: list[str], session: aiohttp.ClientSession, health: str = FAST
) -> tuple[FleetState, HealthPolicy, ActiveChecker]:
    cfg = make_config({"us-east": [(u, f"n{i}") for i, u in enumerate(urls)]}, health=health)
    fleet = FleetState(cfg)
    policy = HealthPolicy(fleet)
    return fleet, policy, ActiveChecker(fleet, policy, session, rnd=random.Random(7))


async def test_checker_marks_down_after_fall_and_up_after_rise(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    fleet, policy, checker = checker_for([upstream.url], session)
    ep = fleet.regions[0].endpoints[0]
    # The counts at each flip, recorded when it happens (a loaded machine may probe again
    # before the test looks).
    flips: list[tuple[str, int, int]] = []
    policy.on_event = lambda e: flips.append((e.kind, ep.probe_failures, ep.probe_successes))
    checker.start()
    try:
        await eventually(lambda: ep.probe_successes >= 2)
        assert ep.up
        assert policy.ewma_probe_rtt_ms(0) is not None
        upstream.status = 503
        await eventually(lambda: not ep.up)
        upstream.status = 200
        await eventually(lambda: ep.up)
    finally:
        await checker.stop()
    hits = upstream.hits
    await asyncio.sleep(0.15)
    assert upstream.hits == hits  # stopped means stopped
    # Down exactly at the fall-th failure, up exactly at the rise-th success.
    assert [f for f in flips if f[0] in (DOWN, UP)] == [(DOWN, 3, 0), (UP, 0, 2)]


async def test_a_hanging_health_endpoint_fails_by_timeout(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    fleet, _policy, checker = checker_for(
        [upstream.url], session, FAST.replace("timeout_s = 0.5", "timeout_s = 0.05")
    )
    ep = fleet.regions[0].endpoints[0]
    upstream.hang = True
    started = time.monotonic()
    assert await checker.probe_once(ep) is False
    assert time.monotonic() - started < 1.0
    assert ep.probe_failures == 1
    checker.start()
    try:
        await eventually(lambda: not ep.up)
    finally:
        await checker.stop()


async def test_probe_once_expected_status_and_unreachable(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    health = FAST.replace("[health]", "[health]\nexpected_status = [200, 204]")
    fleet, _policy, checker = checker_for([upstream.url, closed_port_url()], session, health)
    good, dead = fleet.regions[0].endpoints
    upstream.status = 204
    assert await checker.probe_once(good) is True
    upstream.status = 500
    assert await checker.probe_once(good) is False
    assert await checker.probe_once(dead) is False


async def test_first_round_marks_dead_endpoints_down_at_once(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    fleet, _policy, checker = checker_for([upstream.url, closed_port_url()], session)
    good, dead = fleet.regions[0].endpoints
    await checker.run_round(initial=True)
    assert good.up and not dead.up
    assert fleet.snapshot.routable[0] == 1


async def test_checker_ticker_readmits_ejected_endpoints(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    fleet, policy, checker = checker_for([upstream.url, closed_port_url()], session)
    checker.tick_interval_s = 0.02
    good = fleet.regions[0].endpoints[0]
    for _ in range(5):
        policy.on_outcome(good, FAIL, checker.clock())
    assert good.ejected(checker.clock())
    checker.start()
    try:
        await eventually(lambda: good.state_name(checker.clock()) == "up")
    finally:
        await checker.stop()
