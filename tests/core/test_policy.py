"""Placement policy: residency, certifications, models, and narrowing-only control headers."""

from __future__ import annotations

import pytest

from gslb.core.geo import Location
from gslb.core.policy import (
    BUDGET_HEADER,
    CERTS_HEADER,
    RESIDENCY_HEADER,
    BadControlHeader,
    Placement,
    RequestFacts,
    facts_from_headers,
)
from tests.fleet import fleet_config

TORONTO = Location("CA", "NA", 43.65, -79.38)
NEW_YORK = Location("US", "NA", 40.71, -74.01)
OSLO = Location("NO", "EU", 59.91, 10.75)


def allowed_names(p: Placement, facts: RequestFacts) -> set[str]:
    mask = p.allowed(facts)
    return {r.name for i, r in enumerate(p.regions) if mask >> i & 1}


@pytest.fixture
def placement() -> Placement:
    return Placement(fleet_config())


def test_canadian_clients_are_pinned_to_canada(placement: Placement) -> None:
    assert allowed_names(placement, RequestFacts(TORONTO, 300)) == {"ca-central", "ca-west"}
    assert placement.residency("CA")[1] == ("canada",)


def test_eea_clients_are_pinned_to_eu_jurisdictions(placement: Placement) -> None:
    # Norway is in the EEA rule's countries but is not an EU jurisdiction itself.
    assert allowed_names(placement, RequestFacts(OSLO, 300)) == {"eu-central", "eu-west"}


def test_unmatched_and_unknown_countries_may_go_anywhere(placement: Placement) -> None:
    assert len(allowed_names(placement, RequestFacts(NEW_YORK, 300))) == 8
    assert len(allowed_names(placement, RequestFacts(None, 300))) == 8


def test_certifications_and_headers_only_narrow(placement: Placement) -> None:
    hipaa = RequestFacts(NEW_YORK, 300, certifications=frozenset({"hipaa"}))
    assert allowed_names(placement, hipaa) == {"us-east", "ca-central"}
    # A Canadian asking to be processed in the US gets nothing: narrowing never widens.
    ca_to_us = RequestFacts(TORONTO, 300, residency=frozenset({"US"}))
    assert allowed_names(placement, ca_to_us) == set()
    us_to_eu = RequestFacts(NEW_YORK, 300, residency=frozenset({"DE"}))
    assert allowed_names(placement, us_to_eu) == {"eu-central"}
    unknown_cert = RequestFacts(NEW_YORK, 300, certifications=frozenset({"fedramp"}))
    assert allowed_names(placement, unknown_cert) == set()


def test_fleet_wide_required_certifications() -> None:
    p = Placement(fleet_config(extra='[routing]\nrequire_certifications = ["SOC2"]'))
    names = allowed_names(p, RequestFacts(NEW_YORK, 300))
    assert names == {"us-east", "us-west", "ca-central", "ca-west", "eu-central"}


def test_models_restrict_regions() -> None:
    cfg = fleet_config(
        region_extra={"us-west": 'models = ["llama-70b"]', "eu-west": 'models = ["mistral"]'}
    )
    p = Placement(cfg)
    llama = allowed_names(p, RequestFacts(NEW_YORK, 300, model="llama-70b"))
    assert "us-west" in llama and "eu-west" not in llama and "us-east" in llama
    other = allowed_names(p, RequestFacts(NEW_YORK, 300, model="gpt-unknown"))
    assert "us-west" not in other and "eu-west" not in other and len(other) == 6


def test_why_not_explains(placement: Placement) -> None:
    facts = RequestFacts(TORONTO, 300)
    us_east = [r.name for r in placement.regions].index("us-east")
    assert "canada" in (placement.why_not(us_east, facts) or "")
    ca = [r.name for r in placement.regions].index("ca-central")
    assert placement.why_not(ca, facts) is None
    hipaa = RequestFacts(NEW_YORK, 300, certifications=frozenset({"hipaa"}))
    eu = [r.name for r in placement.regions].index("eu-west")
    assert placement.why_not(eu, hipaa) == "lacks certification hipaa"


def test_facts_from_headers() -> None:
    cfg = fleet_config()
    h = {
        BUDGET_HEADER: " 99999 ",
        CERTS_HEADER: "HIPAA, soc2,,",
        RESIDENCY_HEADER: "ca, EU",
    }
    facts = facts_from_headers(h.get, TORONTO, cfg, model="m")
    assert facts.budget_ms == cfg.routing.max_latency_budget_ms  # clamped
    assert facts.certifications == {"hipaa", "soc2"}
    assert facts.residency is not None and "CA" in facts.residency and "FR" in facts.residency
    assert facts.model == "m" and facts.country == "CA"
    low = facts_from_headers({BUDGET_HEADER: "1"}.get, None, cfg)
    assert low.budget_ms == cfg.routing.min_latency_budget_ms
    default = facts_from_headers({}.get, None, cfg)
    assert default.budget_ms == cfg.routing.latency_budget_ms and default.residency is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (BUDGET_HEADER, "fast"),
        (BUDGET_HEADER, "nan"),
        (RESIDENCY_HEADER, "Narnia"),
        (CERTS_HEADER, ",".join(f"c{i}" for i in range(100))),
    ],
)
def test_bad_control_headers_are_refused(name: str, value: str) -> None:
    with pytest.raises(BadControlHeader) as info:
        facts_from_headers({name: value}.get, None, fleet_config())
    assert info.value.header == name
