"""Router: the routing contract end to end over the core (placement, latency, kernel)."""

from __future__ import annotations

import pytest

from gslb import scoring
from gslb.geo import Location
from gslb.policy import RequestFacts
from gslb.router import Router
from gslb.state import Snapshot
from tests.fleet import fleet_config

TORONTO = Location("CA", "NA", 43.65, -79.38)
NEW_YORK = Location("US", "NA", 40.71, -74.01)
FRANKFURT = Location("DE", "EU", 50.11, 8.68)
SINGAPORE = Location("SG", "AS", 1.29, 103.85)
SAO_PAULO = Location("BR", "SA", -23.55, -46.63)


@pytest.fixture
def router() -> Router:
    return Router(fleet_config())


def decide(router: Router, loc: Location | None, snap: Snapshot | None = None, **kw: object):  # type: ignore[no-untyped-def]
    facts = RequestFacts(loc, float(kw.pop("budget_ms", 300)), **kw)  # type: ignore[arg-type]
    return router.decide(facts, snap or router.new_snapshot(), explain=True)


@pytest.mark.parametrize(
    ("loc", "region"),
    [
        (TORONTO, "ca-central"),
        (NEW_YORK, "us-east"),
        (FRANKFURT, "eu-central"),
        (SINGAPORE, "ap-southeast"),
        (SAO_PAULO, "sa-east"),
    ],
)
def test_idle_fleet_keeps_clients_local(router: Router, loc: Location, region: str) -> None:
    d = decide(router, loc)
    assert (d.region, d.reason) == (region, "local")


def test_saturated_canada_stays_in_canada_while_new_york_spills(router: Router) -> None:
    snap = router.new_snapshot()
    snap.set("ca-central", load=30)  # 3x capacity: deep queue
    snap.set("us-east", load=30)
    ca = decide(router, TORONTO, snap)
    assert (ca.region, ca.reason) == ("ca-central", "local-queued")
    assert ca.fallbacks == ()  # the standby is not a fallback while an active region serves
    assert router.residency_rules(RequestFacts(TORONTO, 300)) == ("canada",)
    ny = decide(router, NEW_YORK, snap)
    assert ny.reason == "spill"
    assert ny.region in {"us-west", "ca-central"}


def test_spill_goes_to_nearest_free_region_within_budget(router: Router) -> None:
    snap = router.new_snapshot()
    snap.set("us-east", load=30)
    snap.set("ca-central", load=9)  # util 0.9: not a spill target
    d = decide(router, NEW_YORK, snap)
    assert (d.region, d.reason) == ("us-west", "spill")
    # With a budget too tight for any other region, the request queues at home.
    tight = decide(router, NEW_YORK, snap, budget_ms=20)
    assert (tight.region, tight.reason) == ("us-east", "local-queued")
    cand = {c.region: c for c in tight.candidates}
    assert "exceeds budget" in (cand["us-west"].why_not or "")
    assert "spill_utilization" in (cand["ca-central"].why_not or "")


def test_failover_is_forced_and_ignores_budget(router: Router) -> None:
    snap = router.new_snapshot()
    snap.set("us-east", routable=False)
    d = decide(router, NEW_YORK, snap, budget_ms=20)
    assert d.reason == "failover"
    assert d.region == "ca-central"  # the nearest routable region
    snap.set("ca-central", routable=False)
    snap.set("us-west", routable=False)
    far = decide(router, NEW_YORK, snap, budget_ms=20)
    assert far.reason == "failover"
    net = {c.region: c.net_ms for c in far.candidates}
    assert net[far.region or ""] > 20  # forced move: the budget does not apply


def test_standby_takes_over_only_when_no_active_allowed_region_is_routable(
    router: Router,
) -> None:
    snap = router.new_snapshot()
    snap.set("ca-central", routable=False)
    d = decide(router, TORONTO, snap)
    assert (d.region, d.reason) == ("ca-west", "standby")
    snap.set("ca-west", routable=False)
    gone = decide(router, TORONTO, snap)
    assert (gone.region, gone.reason, gone.fallbacks) == (None, "no-region", ())
    # New York still has plenty of regions; the Canadian outage does not involve it.
    assert decide(router, NEW_YORK, snap).region == "us-east"


def test_eu_client_never_leaves_the_eu(router: Router) -> None:
    snap = router.new_snapshot()
    snap.set("eu-central", routable=False)
    snap.set("eu-west", load=100)
    d = decide(router, FRANKFURT, snap)
    # Saturated and farther, eu-west is still the only EU option: queue there, never leave.
    assert (d.region, d.reason, d.fallbacks) == ("eu-west", "local-queued", ())
    snap.set("eu-west", load=0)
    assert (decide(router, FRANKFURT, snap).reason) == "failover"
    snap.set("eu-west", routable=False)
    assert decide(router, FRANKFURT, snap).reason == "no-region"


def test_fallbacks_stay_in_the_allowed_set(router: Router) -> None:
    d = decide(router, NEW_YORK, certifications=frozenset({"hipaa"}))
    assert d.region == "us-east" and d.fallbacks == ("ca-central",)


def test_unknown_location_edge_and_deny() -> None:
    edge = Router(fleet_config(extra="[geoip]\nedge_location = [50.11, 8.68]"))
    assert decide(edge, None).region == "eu-central"
    deny = Router(fleet_config(extra='[routing]\nunknown_location = "deny"'))
    d = decide(deny, None)
    assert d.reason == "no-region"
    assert all("unknown" in (c.why_not or "") for c in d.candidates)
    # A located client is unaffected by the deny setting.
    assert decide(deny, NEW_YORK).region == "us-east"


def test_country_without_coordinates_uses_the_edge_point_but_keeps_residency() -> None:
    r = Router(fleet_config(extra="[geoip]\nedge_location = [1.35, 103.82]"))
    d = decide(r, Location("CA", "NA"))
    assert d.region == "ca-central"  # residency still pins it; distance came from the edge


def test_explanation_candidates_cover_every_region(router: Router) -> None:
    d = decide(router, TORONTO)
    assert [c.region for c in d.candidates] == list(router.names)
    chosen = [c for c in d.candidates if c.why_not is None]
    assert [c.region for c in chosen] == ["ca-central"]
    us = next(c for c in d.candidates if c.region == "us-east")
    assert not us.allowed and "canada" in (us.why_not or "")
    assert decide(router, TORONTO).candidates  # explain=True in helper
    plain = router.decide(RequestFacts(TORONTO, 300), router.new_snapshot())
    assert plain.candidates == () and plain.region == "ca-central"


def test_service_time_correction_changes_wait(router: Router) -> None:
    snap = router.new_snapshot()
    snap.set("us-east", load=30)
    before = decide(router, NEW_YORK, snap)
    i = router.names.index("us-east")
    router.set_service_ms(i, 1.0)  # observed: requests finish almost at once
    after = decide(router, NEW_YORK, snap)
    assert before.reason == "spill"
    assert (after.region, after.reason) == ("us-east", "local-queued")


def test_router_uses_active_backend() -> None:
    assert scoring.BACKEND in {"cython", "python"}


def test_held_down_regions_are_a_last_resort_not_a_refusal(router: Router) -> None:
    snap = router.new_snapshot()
    i = router.names.index("ca-central")
    # ca-central just recovered (held down); the standby is down too.
    snap.routable[i] = 0
    snap.last_resort[i] = 1
    snap.set("ca-west", routable=False)
    d = decide(router, TORONTO, snap)
    assert (d.region, d.reason) == ("ca-central", "local")
    plain = router.decide(RequestFacts(TORONTO, 300), snap)
    assert plain.region == "ca-central"
    # While the standby serves, the held-down region waits out its hold-down.
    snap.set("ca-west", routable=True)
    assert decide(router, TORONTO, snap).region == "ca-west"
