"""Health policy: each pure part table-driven, and the facade, under an injected clock.

No sockets and no clock reads: every event carries its time. The runner that feeds the policy
(probes, scrapes, the tick) is tested in ``test_periodic.py``.
"""

from __future__ import annotations

import json
import logging

import pytest

from gslb.core.activehealth import ActiveHealth, Transition
from gslb.core.config import Config, parse_toml
from gslb.core.cordons import NodeCordons
from gslb.core.fleet import EndpointState, FleetState
from gslb.core.geo import Location
from gslb.core.healthevents import (
    CORDON_SKIPPED,
    CORDONED,
    DOWN,
    EJECTED,
    EJECTION_REFUSED,
    REGION_ROUTABLE,
    REGION_UNROUTABLE,
    UP,
    HealthEvent,
    Outcome,
)
from gslb.core.healthpolicy import HealthPolicy, report_went_stale
from gslb.core.holddown import HoldDown
from gslb.core.latencylearn import MIN_SERVICE_MS, Ewma, LatencyLearner
from gslb.core.outlier import OutlierDetector, Verdict
from gslb.core.policy import RequestFacts
from gslb.core.router import Router
from tests.fleet import REGIONS

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
        return self.fleet.regions[self.fleet.view.index(name)]

    def ep(self, name: str, i: int) -> EndpointState:
        return self.region(name).endpoints[i]  # type: ignore[no-any-return]

    def routable(self, name: str) -> bool:
        return bool(self.fleet.view.routable[self.fleet.view.index(name)])

    def load(self, name: str) -> float:
        return self.fleet.view.load[self.fleet.view.index(name)]

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
    assert router.decide(facts, h.fleet.view).region == "us-east"
    h.probes(ep, False, 3, 10.0)
    assert not h.routable("us-east")
    assert [e.region for e in h.kinds(REGION_UNROUTABLE)] == ["us-east"]
    assert router.decide(facts, h.fleet.view).region == "us-west"
    h.probes(ep, True, 2, 20.0)
    region = h.region("us-east")
    assert region.routable and region.recovered_at == 20.0
    assert h.kinds(REGION_ROUTABLE)[0].region == "us-east"
    assert h.fleet.view.routable[0] == 0  # healthy, but held down
    status = h.policy.status(25.0)["regions"]["us-east"]  # type: ignore[index]
    assert status["healthy"] is True and status["routable"] is False
    assert status["hold_down_remaining_s"] == 25.0
    h.policy.tick(49.9)
    assert h.fleet.view.routable[0] == 0
    assert router.decide(facts, h.fleet.view).region == "us-west"
    h.policy.tick(50.0)
    assert h.fleet.view.routable[0] == 1
    assert router.decide(facts, h.fleet.view).region == "us-east"


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
    h.policy.on_load_report(a, 4.0, 1.0)
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


def test_a_closed_policy_no_longer_hears_the_fleet() -> None:
    # A reload builds a new fleet and policy and closes the old policy: region flips of the
    # fleet must reach only the policies still open.
    fleet = FleetState(make_config({"us-east": eps("10.0.0", ["a"]), "us-west": eps("x", ["w"])}))
    closed: list[HealthEvent] = []
    old = HealthPolicy(fleet, on_event=closed.append)
    old.close()
    old.close()  # twice is harmless
    heard: list[HealthEvent] = []
    live = HealthPolicy(fleet, on_event=heard.append)
    ep = fleet.regions[0].endpoints[0]
    for _ in range(3):
        live.on_probe(ep, False, None, 1.0)
    assert [e.kind for e in heard] == [DOWN, REGION_UNROUTABLE]
    assert closed == []


# --------------------------------------------------------------------------------------------
# each part on its own, table-driven: (time, input) in, verdict and endpoint fields out

OK, F, SAT, CAN = Outcome.SUCCESS, Outcome.HTTP_5XX, Outcome.SATURATED, Outcome.CANCELLED
NOTHING, SATURATED, EJECT = Verdict.NOTHING, Verdict.SATURATED, Verdict.EJECTED

# (now, endpoint index, outcome, verdict expected)
Step = tuple[float, int, Outcome, Verdict]


def steps(now: float, i: int, outcome: Outcome, n: int, last: Verdict = NOTHING) -> list[Step]:
    """``n`` outcomes at ``now``; every verdict NOTHING but the last, which is ``last``."""
    return [(now, i, outcome, NOTHING)] * (n - 1) + [(now, i, outcome, last)]


# name: (steps, {endpoint index: (consecutive_failures, ejections, ejected_until,
#                                 saturated_until)}, ejections refused)
OUTLIER_CASES: dict[str, tuple[list[Step], dict[int, tuple[int, int, float, float]], int]] = {
    "threshold ejects": (steps(1.0, 0, F, 3, EJECT), {0: (0, 1, 11.0, 0.0)}, 0),
    "success resets the count": (
        [*steps(1.0, 0, F, 2), (1.0, 0, OK, NOTHING), *steps(1.0, 0, F, 2)],
        {0: (2, 0, 0.0, 0.0)},
        0,
    ),
    "cancelled says nothing": (
        [*steps(1.0, 0, F, 2), *steps(1.0, 0, CAN, 5)],
        {0: (2, 0, 0.0, 0.0)},
        0,
    ),
    "429 saturates and resets the count": (
        [*steps(1.0, 0, F, 2), (1.0, 0, SAT, SATURATED), *steps(1.0, 0, F, 2)],
        {0: (2, 0, 0.0, 6.0)},
        0,
    ),
    "saturation keeps the later deadline": (
        [(3.0, 0, SAT, SATURATED), (2.0, 0, SAT, SATURATED)],
        {0: (0, 0, 0.0, 8.0)},
        0,
    ),
    "failures while ejected count but never extend": (
        [*steps(0.0, 0, F, 3, EJECT), *steps(5.0, 0, F, 10)],
        {0: (10, 1, 10.0, 0.0)},
        0,
    ),
    "ejection time grows and is capped": (
        [*steps(0.0, 0, F, 3, EJECT), *steps(11.0, 0, F, 3, EJECT), *steps(32.0, 0, F, 3, EJECT)],
        {0: (0, 3, 57.0, 0.0)},
        0,
    ),
    "the multiplier decays after a healthy max_ejection_s": (
        [*steps(0.0, 0, F, 3, EJECT), *steps(11.0, 0, F, 3, EJECT), *steps(56.0, 0, F, 3, EJECT)],
        {0: (0, 1, 66.0, 0.0)},
        0,
    ),
    "max_ejection_percent refuses the third of four": (
        [*steps(1.0, 0, F, 3, EJECT), *steps(1.0, 1, F, 3, EJECT), *steps(1.0, 2, F, 3)],
        {0: (0, 1, 11.0, 0.0), 1: (0, 1, 11.0, 0.0), 2: (3, 0, 0.0, 0.0)},
        1,
    ),
    "a readmission makes room for the next ejection": (
        [
            *steps(1.0, 0, F, 3, EJECT),
            *steps(1.0, 1, F, 3, EJECT),
            *steps(1.0, 2, F, 3),
            (11.0, 2, F, EJECT),
        ],
        {2: (0, 1, 21.0, 0.0)},
        1,
    ),
}


@pytest.mark.parametrize("case", OUTLIER_CASES, ids=str)
def test_outlier_detector(case: str) -> None:
    script, want, refused = OUTLIER_CASES[case]
    fleet = FleetState(make_config({"us-east": eps("10.0.0", ["a", "b", "c", "d"])}))
    events: list[str] = []
    detector = OutlierDetector(fleet, logging.getLogger("test"), lambda k, *_: events.append(k))
    eps_ = fleet.regions[0].endpoints
    got = [detector.on_outcome(eps_[i], outcome, now) for now, i, outcome, _ in script]
    assert got == [verdict for *_, verdict in script]
    for i, fields in want.items():
        ep = eps_[i]
        assert (
            ep.consecutive_failures,
            ep.ejections,
            ep.ejected_until,
            ep.saturated_until,
        ) == fields, i
    assert detector.ejections_refused_total["us-east"] == refused
    assert events.count(EJECTION_REFUSED) == refused
    assert events.count(EJECTED) == got.count(EJECT) == detector.ejections_total["us-east"]


@pytest.mark.parametrize(
    ("ejected_until", "saturated_until", "last", "now", "lapsed"),
    [
        (10.0, 0.0, 9.0, 10.0, True),  # ran out at the tick's instant
        (10.0, 0.0, 10.0, 11.0, False),  # ran out at the previous tick: already refreshed
        (10.0, 0.0, 8.0, 9.9, False),  # still running
        (0.0, 6.0, 5.0, 6.5, True),  # saturation ran out
        (0.0, 0.0, 0.5, 1.0, False),  # never ejected nor saturated
        (0.0, 0.0, float("-inf"), 1.0, True),  # the first tick refreshes everything
    ],
)
def test_outlier_lapsed(
    ejected_until: float, saturated_until: float, last: float, now: float, lapsed: bool
) -> None:
    fleet = FleetState(make_config({"us-east": eps("10.0.0", ["a"])}))
    ep = fleet.regions[0].endpoints[0]
    ep.ejected_until, ep.saturated_until = ejected_until, saturated_until
    detector = OutlierDetector(fleet, logging.getLogger("test"), lambda *_: None)
    assert detector.lapsed(ep, last, now) is lapsed


# name: (failed first-round probes, later probe results, transitions expected, up at the end,
#        failures in a row at the end)
ACTIVE_CASES: dict[str, tuple[int, list[bool], list[Transition], bool, int]] = {
    "fall at the third failure in a row": (
        0,
        [False, False, False],
        [Transition.NONE, Transition.NONE, Transition.DOWN],
        False,
        3,
    ),
    "a success breaks the run": (
        0,
        [False, False, True, False, False],
        [Transition.NONE] * 5,
        True,
        2,
    ),
    "rise counts successes in a row": (
        0,
        [False, False, False, True, False, True, True],
        [*[Transition.NONE] * 2, Transition.DOWN, *[Transition.NONE] * 3, Transition.UP],
        True,
        0,
    ),
    "one success is not enough": (
        0,
        [False] * 3 + [True],
        [*[Transition.NONE] * 2, Transition.DOWN, Transition.NONE],
        False,
        0,
    ),
    "a failed first round is decisive": (1, [], [Transition.DOWN], False, 3),
    "a failed first round on a down endpoint changes nothing": (
        2,
        [],
        [Transition.DOWN, Transition.NONE],
        False,
        4,
    ),
    "back up after a failed first round": (
        1,
        [True, True],
        [Transition.DOWN, Transition.NONE, Transition.UP],
        True,
        0,
    ),
}


@pytest.mark.parametrize("case", ACTIVE_CASES, ids=str)
def test_active_health(case: str) -> None:
    initial, later, want, up, failures = ACTIVE_CASES[case]
    fleet = FleetState(make_config({"us-east": eps("10.0.0", ["a"])}))
    events: list[str] = []
    active = ActiveHealth(fleet, logging.getLogger("test"), lambda k, *_: events.append(k))
    ep = fleet.regions[0].endpoints[0]
    got = [active.on_initial_failure(ep) for _ in range(initial)]
    got += [active.on_probe(ep, ok) for ok in later]
    assert got == want
    assert (ep.up, ep.probe_failures) == (up, failures)
    assert events == [t.value for t in got if t is not Transition.NONE]


# name: (nodes, endpoints already down, draining source, cordon_s, cordoned expected, skipped)
CORDON_CASES: dict[str, tuple[list[str], set[int], bool, float, set[int], bool]] = {
    "siblings on the node": (["n1", "n1", "n2", "n2"], {0}, False, 100.0, {1}, False),
    "every sibling": (["n1", "n1", "n1", "n2"], {0}, False, 100.0, {1, 2}, False),
    "no sibling": (["n1", "n2"], {0}, False, 100.0, set(), False),
    "cordon_s = 0 turns it off": (["n1", "n1", "n2"], {0}, False, 0.0, set(), False),
    "a draining source predicts nothing": (["n1", "n1", "n2"], {0}, True, 100.0, set(), False),
    "never the region's last endpoints": (["n1", "n1"], {0}, False, 100.0, set(), True),
    "siblings already out: nothing to spare": (
        ["n1", "n1", "n2"],
        {0, 1, 2},
        False,
        100.0,
        {1},
        False,
    ),
}


@pytest.mark.parametrize("case", CORDON_CASES, ids=str)
def test_node_cordons(case: str) -> None:
    nodes, down, draining, cordon_s, want, skipped = CORDON_CASES[case]
    health = HEALTH.replace("cordon_s = 100", f"cordon_s = {cordon_s}")
    fleet = FleetState(make_config({"us-east": eps("10.0.0", nodes)}, health=health))
    events: list[tuple[str, str]] = []
    cordons = NodeCordons(logging.getLogger("test"), lambda k, r, e, _: events.append((k, e.url)))
    region = fleet.regions[0]
    for i in down:
        region.endpoints[i].up = False
    src = region.endpoints[0]
    src.draining = draining
    cordons.cordon_siblings(region, src, "down", 5.0)
    got = {i for i, e in enumerate(region.endpoints) if e.cordoned(5.0)}
    assert got == want
    for i in want:
        ep = region.endpoints[i]
        assert ep.cordoned_until == 5.0 + cordon_s
        assert ep.cordoned_reason == f"sibling {src.url} down"
    assert cordons.cordons_total["us-east"] == len(want)
    kinds = [CORDON_SKIPPED] if skipped else [CORDONED] * len(want)
    assert [k for k, _ in events] == kinds


def test_a_cordon_keeps_the_later_deadline_and_lapses_once() -> None:
    fleet = FleetState(make_config({"us-east": eps("10.0.0", ["n1", "n1", "n2"])}))
    cordons = NodeCordons(logging.getLogger("test"), lambda *_: None)
    region = fleet.regions[0]
    a, b, _ = region.endpoints
    cordons.cordon_siblings(region, a, "down", 50.0)  # b until 150
    cordons.cordon_siblings(region, a, "ejected", 10.0)  # an older event: 110 < 150
    assert b.cordoned_until == 150.0 and b.cordoned_reason.endswith("ejected")
    # (last, now] windows of consecutive ticks: the lapse is seen exactly once.
    assert [
        cordons.lapsed(b, last, now) for last, now in [(0, 149.9), (149.9, 150), (150, 151)]
    ] == [
        False,
        True,
        False,
    ]
    assert b.cordoned_reason == ""


# name: ([(now, draining region, routable)] flips told to the hold-down, observe at the end,
#        recovered_at expected, events expected)
HOLD_CASES: dict[str, tuple[list[tuple[float, bool, bool]], bool, float | None, list[str]]] = {
    "never down: serves at once": ([(5.0, False, True)], False, None, []),
    "down for health, then back": (
        [(5.0, False, False), (20.0, False, True)],
        False,
        20.0,
        [REGION_UNROUTABLE, REGION_ROUTABLE],
    ),
    "drained, then undrained: no hold-down": (
        [(5.0, True, False), (20.0, False, True)],
        False,
        None,
        [],
    ),
    "drained while down, undrained down: the tick notices": (
        [(5.0, True, False)],
        True,
        30.0,
        [REGION_ROUTABLE],
    ),
}


@pytest.mark.parametrize("case", HOLD_CASES, ids=str)
def test_hold_down(case: str) -> None:
    flips, observe, recovered_at, want = HOLD_CASES[case]
    fleet = FleetState(make_config({"us-east": eps("10.0.0", ["a"])}))
    region = fleet.regions[0]
    events: list[str] = []
    hold = HoldDown(logging.getLogger("test"), lambda k, *_: events.append(k))
    for now, draining, routable in flips:
        region.draining, region.routable = draining, routable
        hold.on_region_change(region, routable, now)
    if observe:
        region.draining, region.routable = False, False
        hold.observe(region)
        region.routable = True
        hold.on_region_change(region, True, 30.0)
    assert region.recovered_at == recovered_at
    assert events == want


@pytest.mark.parametrize(
    ("recovered_at", "routable", "last", "now", "lapsed", "remaining"),
    [
        (20.0, True, 40.0, 49.9, False, 0.1),  # standby_hold_down_s = 30
        (20.0, True, 49.9, 50.0, True, 0.0),
        (20.0, True, 50.0, 60.0, False, 0.0),
        (20.0, False, 10.0, 25.0, False, 0.0),  # down again: nothing to wait for
        (None, True, 0.0, 100.0, False, 0.0),
    ],
)
def test_hold_down_deadline(
    recovered_at: float | None,
    routable: bool,
    last: float,
    now: float,
    lapsed: bool,
    remaining: float,
) -> None:
    fleet = FleetState(make_config({"us-east": eps("10.0.0", ["a"])}))
    region = fleet.regions[0]
    region.recovered_at, region.routable = recovered_at, routable
    assert HoldDown.lapsed(region, last, now) is lapsed
    assert HoldDown.remaining(region, now) == pytest.approx(remaining)


# name: (samples as (what, region, seconds), ttfb, duration, rtt, service correction) for
# region 0, with alpha 0.5 and min_samples 2 so each figure is easy to check by hand.
LEARN_CASES: dict[
    str,
    tuple[list[tuple[str, int, float]], float | None, float | None, float | None, float | None],
] = {
    "no data": ([], None, None, None, None),
    "the first sample seeds the average": ([("ttfb", 0, 0.1)], 100.0, None, None, None),
    "then it moves by alpha": ([("ttfb", 0, 0.1), ("ttfb", 0, 0.3)], 200.0, None, None, None),
    "bogus samples are ignored": (
        [("ttfb", 0, 0.1), ("ttfb", 0, float("nan")), ("ttfb", 0, -1.0), ("ttfb", 0, float("inf"))],
        100.0,
        None,
        None,
        None,
    ),
    "too few durations to trust": ([("duration", 0, 2.0)], None, 2000.0, None, None),
    "duration minus probe rtt": (
        [("rtt", 0, 0.02), ("duration", 0, 2.0), ("duration", 0, 2.0)],
        None,
        2000.0,
        20.0,
        1980.0,
    ),
    "floored at MIN_SERVICE_MS": (
        [("rtt", 0, 0.5), ("duration", 0, 0.1), ("duration", 0, 0.1)],
        None,
        100.0,
        500.0,
        MIN_SERVICE_MS,
    ),
    "regions apart": ([("duration", 1, 2.0), ("duration", 1, 2.0)], None, None, None, None),
}


@pytest.mark.parametrize("case", LEARN_CASES, ids=str)
def test_latency_learner(case: str) -> None:
    samples, ttfb, duration, rtt, service = LEARN_CASES[case]
    learn = LatencyLearner(2, alpha=0.5, min_samples=2)
    feed = {"ttfb": learn.on_ttfb, "duration": learn.on_duration, "rtt": learn.on_probe_rtt}
    for what, region, seconds in samples:
        feed[what](region, seconds)
    assert learn.ewma_ttfb_ms(0) == (None if ttfb is None else pytest.approx(ttfb))
    assert learn.ewma_duration_ms(0) == (None if duration is None else pytest.approx(duration))
    assert learn.ewma_probe_rtt_ms(0) == (None if rtt is None else pytest.approx(rtt))
    assert learn.service_ms_correction(0) == (None if service is None else pytest.approx(service))


def test_ewma_refuses_a_bad_alpha() -> None:
    for alpha in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            Ewma(alpha)
    assert Ewma(1.0).alpha == 1.0


# name: (report (load, at) or None, last tick, now, stale in (last, now]); max_age_s = 3
STALE_CASES: dict[str, tuple[tuple[float, float] | None, float, float, bool]] = {
    "fresh at exactly max_age": ((18.0, 100.0), 102.0, 103.0, False),
    "stale just after": ((18.0, 100.0), 103.0, 103.25, True),
    "went stale before the last tick": ((18.0, 100.0), 104.0, 105.0, False),
    "no report": (None, 0.0, 1000.0, False),
}


@pytest.mark.parametrize("case", STALE_CASES, ids=str)
def test_report_went_stale(case: str) -> None:
    report, last, now, stale = STALE_CASES[case]
    fleet = FleetState(make_config({"us-east": eps("10.0.0", ["a"])}))
    policy = HealthPolicy(fleet)
    ep = fleet.regions[0].endpoints[0]
    if report is not None:
        policy.on_load_report(ep, *report)
    assert report_went_stale(ep, 3.0, last, now) is stale
