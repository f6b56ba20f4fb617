"""Router: the routing contract end to end over the core (placement, latency, kernel)."""

from __future__ import annotations

import random
from types import ModuleType

import pytest

from gslb.core import scoring
from gslb.core.config import ROLE_ACTIVE, ROLE_STANDBY
from gslb.core.geo import Location
from gslb.core.policy import RequestFacts
from gslb.core.router import NARROWED, RESIDENCY, UNAVAILABLE, UNPLACEABLE, Router
from gslb.core.scoring import (
    FAILOVER,
    LOCAL,
    LOCAL_QUEUED,
    NO_REGION,
    REASONS,
    SPILL,
    STANDBY,
)
from gslb.core.state import LiveView
from tests.fleet import fleet_config

TORONTO = Location("CA", "NA", 43.65, -79.38)
NEW_YORK = Location("US", "NA", 40.71, -74.01)
FRANKFURT = Location("DE", "EU", 50.11, 8.68)
SINGAPORE = Location("SG", "AS", 1.29, 103.85)
SAO_PAULO = Location("BR", "SA", -23.55, -46.63)
NO_FACTS = RequestFacts(None, 300)


@pytest.fixture
def router(backend: ModuleType) -> Router:
    return Router(fleet_config(), backend=backend)


def decide(router: Router, loc: Location | None, snap: LiveView | None = None, **kw: object):  # type: ignore[no-untyped-def]
    facts = RequestFacts(loc, float(kw.pop("budget_ms", 300)), **kw)  # type: ignore[arg-type]
    return router.decide(facts, snap or router.new_view(), explain=True)


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
    assert (d.region, d.reason) == (region, REASONS[LOCAL])


def test_saturated_canada_stays_in_canada_while_new_york_spills(router: Router) -> None:
    snap = router.new_view()
    snap.set("ca-central", load=30)  # 3x capacity: deep queue
    snap.set("us-east", load=30)
    ca = decide(router, TORONTO, snap)
    assert (ca.region, ca.reason) == ("ca-central", REASONS[LOCAL_QUEUED])
    assert ca.fallbacks == ()  # the standby is not a fallback while an active region serves
    assert router.residency_rules(RequestFacts(TORONTO, 300)) == ("canada",)
    ny = decide(router, NEW_YORK, snap)
    assert ny.reason == REASONS[SPILL]
    assert ny.region in {"us-west", "ca-central"}


def test_spill_goes_to_nearest_free_region_within_budget(router: Router) -> None:
    snap = router.new_view()
    snap.set("us-east", load=30)
    snap.set("ca-central", load=9)  # util 0.9: not a spill target
    d = decide(router, NEW_YORK, snap)
    assert (d.region, d.reason) == ("us-west", REASONS[SPILL])
    # With a budget too tight for any other region, the request queues at home.
    tight = decide(router, NEW_YORK, snap, budget_ms=20)
    assert (tight.region, tight.reason) == ("us-east", REASONS[LOCAL_QUEUED])
    cand = {c.region: c for c in tight.candidates}
    assert "exceeds budget" in (cand["us-west"].why_not or "")
    assert "spill_utilization" in (cand["ca-central"].why_not or "")


def test_failover_is_forced_and_ignores_budget(router: Router) -> None:
    snap = router.new_view()
    snap.set("us-east", routable=False)
    d = decide(router, NEW_YORK, snap, budget_ms=20)
    assert d.reason == REASONS[FAILOVER]
    assert d.region == "ca-central"  # the nearest routable region
    snap.set("ca-central", routable=False)
    snap.set("us-west", routable=False)
    far = decide(router, NEW_YORK, snap, budget_ms=20)
    assert far.reason == REASONS[FAILOVER]
    net = {c.region: c.net_ms for c in far.candidates}
    assert net[far.region or ""] > 20  # forced move: the budget does not apply


def test_standby_takes_over_only_when_no_active_allowed_region_is_routable(
    router: Router,
) -> None:
    snap = router.new_view()
    snap.set("ca-central", routable=False)
    d = decide(router, TORONTO, snap)
    assert (d.region, d.reason) == ("ca-west", REASONS[STANDBY])
    snap.set("ca-west", routable=False)
    gone = decide(router, TORONTO, snap)
    assert (gone.region, gone.reason, gone.fallbacks) == (None, REASONS[NO_REGION], ())
    # New York still has plenty of regions; the Canadian outage does not involve it.
    assert decide(router, NEW_YORK, snap).region == "us-east"


def test_eu_client_never_leaves_the_eu(router: Router) -> None:
    snap = router.new_view()
    snap.set("eu-central", routable=False)
    snap.set("eu-west", load=100)
    d = decide(router, FRANKFURT, snap)
    # Saturated and farther, eu-west is still the only EU option: queue there, never leave.
    assert (d.region, d.reason, d.fallbacks) == ("eu-west", REASONS[LOCAL_QUEUED], ())
    snap.set("eu-west", load=0)
    assert (decide(router, FRANKFURT, snap).reason) == REASONS[FAILOVER]
    snap.set("eu-west", routable=False)
    assert decide(router, FRANKFURT, snap).reason == REASONS[NO_REGION]


def test_fallbacks_stay_in_the_allowed_set(router: Router) -> None:
    d = decide(router, NEW_YORK, certifications=frozenset({"hipaa"}))
    assert d.region == "us-east" and d.fallbacks == ("ca-central",)


def test_unplaceable_client_gets_the_edge_countrys_residency(backend: ModuleType) -> None:
    # The edge stands in Canada but its coordinates are Frankfurt's: an unplaceable client is
    # modeled at the edge point (eu-central is nearest) yet bound by the Canadian rule.
    r = Router(
        fleet_config(geoip='edge_country = "CA"\nedge_location = [50.11, 8.68]'), backend=backend
    )
    d = decide(r, None)
    assert d.region == "ca-central"
    assert set(d.fallbacks) <= {"ca-central", "ca-west"}
    eu = next(c for c in d.candidates if c.region == "eu-central")
    assert not eu.allowed and "canada" in (eu.why_not or "")
    # A country-less GeoIP record is unplaceable too.
    assert decide(r, Location(None, "EU", 50.11, 8.68)).region == "ca-central"
    # A US edge applies US rules (none here): the nearest region to the edge point wins.
    us_edge = Router(fleet_config(geoip="edge_location = [50.11, 8.68]"), backend=backend)
    assert decide(us_edge, None).region == "eu-central"


def test_unplaceable_client_deny_and_unrestricted(backend: ModuleType) -> None:
    deny = Router(fleet_config(extra='[routing]\nunknown_location = "deny"'), backend=backend)
    d = decide(deny, None)
    assert d.reason == REASONS[NO_REGION]
    assert all("unknown" in (c.why_not or "") for c in d.candidates)
    assert deny.denial(NO_FACTS, deny.new_view()).cause == UNPLACEABLE
    # A located client is unaffected by the deny setting.
    assert decide(deny, NEW_YORK).region == "us-east"
    free = Router(
        fleet_config(
            extra='[routing]\nunknown_location = "unrestricted"',
            geoip='edge_country = "CA"\nedge_location = [50.11, 8.68]',
        ),
        backend=backend,
    )
    assert decide(free, None).region == "eu-central"  # the operator said so


def test_country_without_coordinates_uses_the_edge_point_but_keeps_residency(
    backend: ModuleType,
) -> None:
    r = Router(fleet_config(geoip="edge_location = [1.35, 103.82]"), backend=backend)
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
    plain = router.decide(RequestFacts(TORONTO, 300), router.new_view())
    assert plain.candidates == () and plain.region == "ca-central"


def test_service_time_correction_changes_wait(router: Router) -> None:
    snap = router.new_view()
    snap.set("us-east", load=30)
    before = decide(router, NEW_YORK, snap)
    i = router.names.index("us-east")
    router.set_service_ms(i, 1.0)  # observed: requests finish almost at once
    after = decide(router, NEW_YORK, snap)
    assert before.reason == REASONS[SPILL]
    assert (after.region, after.reason) == ("us-east", REASONS[LOCAL_QUEUED])


def test_router_scores_with_the_backend_it_is_given(backend: ModuleType) -> None:
    assert isinstance(Router(fleet_config(), backend=backend).kernel, backend.Kernel)
    # By default, the one gslb.core.scoring selected (the compiled kernel unless refused or off).
    assert isinstance(Router(fleet_config()).kernel, scoring.Kernel)


def test_held_down_regions_are_a_last_resort_not_a_refusal(router: Router) -> None:
    snap = router.new_view()
    i = router.names.index("ca-central")
    # ca-central just recovered (held down); the standby is down too.
    snap.routable[i] = 0
    snap.last_resort[i] = 1
    snap.set("ca-west", routable=False)
    d = decide(router, TORONTO, snap)
    assert (d.region, d.reason) == ("ca-central", REASONS[LOCAL])
    plain = router.decide(RequestFacts(TORONTO, 300), snap)
    assert plain.region == "ca-central"
    # While the standby serves, the held-down region waits out its hold-down.
    snap.set("ca-west", routable=True)
    assert decide(router, TORONTO, snap).region == "ca-west"


# --- denials name their real cause ------------------------------------------------------


def test_denial_blames_the_clients_own_narrowing_not_residency(router: Router) -> None:
    snap = router.new_view()
    # A Toronto client asking for EU processing: its own header emptied the allowed set.
    facts = RequestFacts(TORONTO, 300, residency=frozenset({"DE"}))
    assert router.decide(facts, snap).region is None
    d = router.denial(facts, snap)
    assert (d.cause, d.rules) == (NARROWED, ())
    assert "X-GSLB-Residency" in d.message and "residency rule" not in d.message
    # A certification no allowed region holds, asked for by the request itself.
    facts = RequestFacts(TORONTO, 300, certifications=frozenset({"fedramp"}))
    assert router.denial(facts, snap).cause == NARROWED


def test_denial_counts_residency_only_when_the_rule_is_the_cause(router: Router) -> None:
    snap = router.new_view()
    snap.set("ca-central", routable=False)
    snap.set("ca-west", routable=False)
    facts = RequestFacts(TORONTO, 300)
    assert router.decide(facts, snap).region is None
    d = router.denial(facts, snap)
    assert (d.cause, d.rules) == (RESIDENCY, ("canada",))
    assert "canada" in d.message and "CA" in d.message
    # Narrowing to Canada while Canada is down: the rule binds anyway, so it is residency.
    narrowed = RequestFacts(TORONTO, 300, residency=frozenset({"CA"}))
    assert router.denial(narrowed, snap).cause == RESIDENCY
    # A US client with every region down: no rule involved.
    for name in router.names:
        snap.set(name, routable=False)
    assert router.denial(RequestFacts(NEW_YORK, 300), snap).cause == UNAVAILABLE


# --- explanations agree with the decision --------------------------------------------


def test_held_down_region_chosen_as_last_resort_is_explained_as_chosen(router: Router) -> None:
    snap = router.new_view()
    ca = snap.index("ca-central")
    snap.routable[ca] = 0  # held down after recovering: last resort only
    snap.routable[snap.index("ca-west")] = snap.last_resort[snap.index("ca-west")] = 0
    d = decide(router, TORONTO, snap)
    assert d.region == "ca-central"
    chosen = [c for c in d.candidates if c.why_not is None]
    assert [c.region for c in chosen] == ["ca-central"]
    # With another region up, the held-down one is explained as held down, not as broken.
    snap.routable[snap.index("ca-west")] = snap.last_resort[snap.index("ca-west")] = 1
    d = decide(router, TORONTO, snap)
    assert d.region == "ca-west"
    held = next(c for c in d.candidates if c.region == "ca-central")
    assert "held down" in (held.why_not or "")


def _random_fleet(rnd: random.Random, backend: ModuleType) -> tuple[Router, LiveView, RequestFacts]:
    regions = []
    for i in range(rnd.randint(1, 9)):
        regions.append(
            (
                f"r{i}",
                (rnd.uniform(-60, 60), rnd.uniform(-170, 170)),
                rnd.choice(["aws", "gcp"]),
                "hyperscaler",
                rnd.choice(["US", "CA", "DE", "FR", "SG"]),
                rnd.choice([ROLE_ACTIVE, ROLE_ACTIVE, ROLE_STANDBY]),
                rnd.randint(1, 12),
                rnd.sample(["soc2", "hipaa"], rnd.randint(0, 2)),
            )
        )
    extra = (
        f"[routing]\nspill_utilization = {rnd.choice([0.5, 0.85, 1.0])}\n"
        f"spill_penalty_ms = {rnd.choice([0, 10, 40])}\n"
    )
    router = Router(fleet_config(regions=regions, extra=extra), backend=backend)
    snap = router.new_view()
    for i in range(len(regions)):
        snap.load[i] = rnd.choice([0.0, rnd.uniform(0, 30)])
        snap.last_resort[i] = 1 if rnd.random() < 0.8 else 0
        snap.routable[i] = snap.last_resort[i] if rnd.random() < 0.8 else 0
    loc = rnd.choice([TORONTO, NEW_YORK, FRANKFURT, SINGAPORE, None])
    facts = RequestFacts(
        loc,
        rnd.choice([20.0, 150.0, 300.0, 5000.0]),
        certifications=frozenset(rnd.sample(["soc2", "hipaa"], rnd.randint(0, 1))),
        residency=rnd.choice([None, frozenset({"US", "CA"}), frozenset({"SG"})]),
    )
    return router, snap, facts


def test_explanations_agree_with_the_kernel_over_random_fleets(backend: ModuleType) -> None:
    """The request path's kernel (compiled or twin) and the twin's explanation tell one story."""
    rnd = random.Random(20261129)
    for _ in range(1500):
        router, snap, facts = _random_fleet(rnd, backend)
        fast = router.decide(facts, snap)  # the request path: the kernel, cut to max_attempts
        full = router.decide(facts, snap, explain=True)
        assert full.region == fast.region and full.reason == fast.reason
        assert full.order[: len(fast.order)] == fast.order
        chosen = [c.region for c in full.candidates if c.why_not is None]
        assert chosen == ([full.region] if full.region else [])
        for c, i in zip(full.candidates, range(len(router.names)), strict=True):
            if not c.allowed:
                assert c.why_not and i not in full.order
            elif i in full.order[1:]:
                assert c.why_not and "not allowed" not in c.why_not
