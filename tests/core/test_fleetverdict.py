"""The fleet's verdict and the supervisor's shared probes, as the pure health policy takes them.

``HealthPolicy.on_fleet`` (other edges' quorum: ``gslb.core.peers.combine``) and
``HealthPolicy.on_shared`` (the instance's one prober), with an injected clock: what they take
out, what they never bring back, the load peers add, and the log lines and events they cause.
"""

from __future__ import annotations

import logging

import pytest

from gslb.core.healthevents import CORDONED, DOWN, FLEET_DOWN, FLEET_UP, UP
from gslb.core.peers import EndpointVerdict
from tests.core.test_health import Harness, eps, make_config


def harness(nodes: list[str]) -> Harness:
    return Harness(make_config({"us-east": eps("10.0.0", nodes)}))


def down(votes: int = 2, reporters: int = 3, inflight: int = 0) -> EndpointVerdict:
    return EndpointVerdict(True, votes, reporters, inflight)


def busy(inflight: int) -> EndpointVerdict:
    return EndpointVerdict(False, 0, 3, inflight)


def test_a_fleet_verdict_takes_an_endpoint_out_and_its_end_brings_it_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = harness(["a", "b"])
    a, b = h.ep("us-east", 0), h.ep("us-east", 1)
    with caplog.at_level(logging.INFO, logger="gslb.health"):
        h.policy.on_fleet({a.url: down()}, 1.0)
    assert a.fleet_down and not a.available(1.0) and a.state_name(1.0) == "fleet_down"
    assert b.available(1.0) and h.routable("us-east")
    [event] = h.kinds(FLEET_DOWN)
    assert (event.endpoint, event.reason) == (a.url, "2 of 3 edges see it down")
    assert "is down fleet-wide: 2 of 3 edges see it down" in caplog.text

    h.policy.on_fleet({b.url: down()}, 2.0)  # a's verdict is gone, b's arrives
    assert not a.fleet_down and a.available(2.0)
    assert b.fleet_down and not b.available(2.0)
    assert [e.endpoint for e in h.kinds(FLEET_UP)] == [a.url]
    # Its own probes never saw a down: a fleet verdict is no active-check transition.
    assert h.kinds(DOWN) == [] and h.kinds(CORDONED) == []


def test_panic_never_serves_an_endpoint_down_fleet_wide() -> None:
    h = harness(["a", "b"])
    a, b = h.ep("us-east", 0), h.ep("us-east", 1)
    region = h.region("us-east")
    h.fail(a, 3, 1.0)  # ejected by passive checks: a guess
    h.policy.on_fleet({b.url: down()}, 1.0)
    # b is out by a quorum's active checks; a only by a guess: panic serves a.
    assert h.routable("us-east") and region.panic
    h.policy.on_fleet({a.url: down(), b.url: down()}, 2.0)
    assert not h.routable("us-east") and not region.panic
    h.policy.on_fleet({}, 3.0)
    # b is back (the region is healthy again; the router waits out the hold-down).
    assert region.routable and not region.panic and b.available(3.0)


def test_the_fleet_never_brings_up_an_endpoint_this_edge_sees_down() -> None:
    h = harness(["a", "b"])
    a = h.ep("us-east", 0)
    h.probes(a, False, 3, 1.0)
    assert not a.up
    h.policy.on_fleet({a.url: EndpointVerdict(False, 1, 3, 0)}, 2.0)  # the others see it up
    assert not a.available(2.0) and a.state_name(2.0) == "down"


def test_peers_in_flight_adds_to_load_only_without_a_fresh_server_report() -> None:
    h = harness(["a", "b"])
    a, b = h.ep("us-east", 0), h.ep("us-east", 1)
    h.fleet.acquire(a)
    h.policy.on_fleet({a.url: busy(5), b.url: busy(2)}, 1.0)
    assert (a.peer_inflight, b.peer_inflight) == (5, 2)
    assert h.load("us-east") == 1 + 5 + 2
    # The server's own figure includes every edge's traffic: it replaces the sum for ``a``.
    h.policy.on_load_report(a, 4.0, 1.5)
    assert h.load("us-east") == 4 + 2
    h.policy.on_fleet({}, 2.0)  # no word from the others: the local counts alone
    assert h.load("us-east") == 4 + 0


def test_shared_probe_results_flip_like_own_probes_and_cordon_but_not_on_the_first_round() -> None:
    h = harness(["a", "a", "b"])
    a0, a1 = h.ep("us-east", 0), h.ep("us-east", 1)
    h.policy.on_shared(a0, False, 3, 0, 1.0, initial=True)
    assert not a0.up and a0.probe_failures == 3
    assert h.kinds(CORDONED) == []  # the first round never cordons
    h.policy.on_shared(a0, True, 0, 2, 2.0)
    assert a0.up and [e.endpoint for e in h.kinds(UP)] == [a0.url]
    h.policy.on_shared(a0, False, 3, 0, 3.0)
    assert [e.endpoint for e in h.kinds(DOWN)] == [a0.url, a0.url]
    assert a1.cordoned(3.0)  # its node's sibling, as an own probe's "down" would
    # The same state again changes nothing and says nothing.
    events = len(h.events)
    h.policy.on_shared(a0, False, 4, 0, 4.0)
    assert len(h.events) == events and a0.probe_failures == 4


def test_a_load_report_read_elsewhere_keeps_its_own_age() -> None:
    h = harness(["a"])
    a = h.ep("us-east", 0)
    h.policy.on_load_report(a, 7.0, 10.0, read_at=8.0)
    assert a.reported_at == 8.0 and h.load("us-east") == 7.0
