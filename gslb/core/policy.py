"""Placement policy: which regions a request may go to at all.

A region is *allowed* for a request when its jurisdiction satisfies every residency rule that
matches the client's country, it holds every required certification, and it serves the model.
Client control headers may only narrow that set, never widen it.

Everything is compiled at config load into per-region bitmasks (bit ``i`` = region ``i`` in
config order), so the per-request work is a few dictionary lookups and integer ANDs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gslb.core import countries
from gslb.core.config import (
    UNKNOWN_DENY,
    UNKNOWN_UNRESTRICTED,
    Config,
    RegionConfig,
    ResidencyRule,
)
from gslb.core.geo import Location

BUDGET_HEADER = "X-GSLB-Latency-Budget-Ms"
CERTS_HEADER = "X-GSLB-Require-Certifications"
RESIDENCY_HEADER = "X-GSLB-Residency"
MAX_LIST_ITEMS = 32  # control headers are client input: bound the work


class BadControlHeader(ValueError):
    """A client control header that cannot be honoured safely (answered with 400)."""

    def __init__(self, header: str, message: str) -> None:
        self.header = header
        super().__init__(f"{header}: {message}")


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the router needs to know about one request."""

    location: Location | None
    budget_ms: float
    certifications: frozenset[str] = frozenset()
    residency: frozenset[str] | None = None  # jurisdictions the client narrowed to
    model: str | None = None

    @property
    def country(self) -> str | None:
        return self.location.country if self.location is not None else None


def _bits(indexes: Iterable[int]) -> int:
    mask = 0
    for i in indexes:
        mask |= 1 << i
    return mask


class Placement:
    """Compiled placement rules for one config."""

    def __init__(self, cfg: Config) -> None:
        self.regions: tuple[RegionConfig, ...] = cfg.regions
        self.rules: tuple[ResidencyRule, ...] = cfg.residency
        self.n = len(cfg.regions)
        self.all_mask = (1 << self.n) - 1
        self.base_certs = frozenset(c.lower() for c in cfg.routing.require_certifications)
        self._region_certs = [frozenset(c.lower() for c in r.certifications) for r in self.regions]
        self._rule_masks = [
            _bits(
                i for i, r in enumerate(self.regions) if r.jurisdiction in rule.allow_jurisdictions
            )
            for rule in self.rules
        ]
        self._by_country: dict[str, tuple[int, tuple[str, ...]]] = {}
        for country in {c for rule in self.rules for c in rule.countries}:
            mask, names = self.all_mask, []
            for rule, rmask in zip(self.rules, self._rule_masks, strict=True):
                if country in rule.countries:
                    mask &= rmask
                    names.append(rule.name)
            self._by_country[country] = (mask, tuple(names))
        # Models: regions with an empty list serve any model.
        self._any_model = _bits(i for i, r in enumerate(self.regions) if not r.models)
        self._model_masks: dict[str, int] = {}
        for model in {m for r in self.regions for m in r.models}:
            self._model_masks[model] = self._any_model | _bits(
                i for i, r in enumerate(self.regions) if model in r.models
            )
        # Clients that cannot be placed (routing.unknown_location): never a way out of
        # residency unless the operator said "unrestricted" (docs/design.md, section 5).
        self.unknown_location = cfg.routing.unknown_location
        self.edge_country: str | None = cfg.geoip.edge_country or None
        self._cert_cache: dict[frozenset[str], int] = {}
        self._jurisdiction_cache: dict[frozenset[str], int] = {}

    # -- the masks ------------------------------------------------------------------------

    def residency(self, country: str | None) -> tuple[int, tuple[str, ...]]:
        """(mask, names of the matching rules) for a client country (``None``: unplaceable)."""
        if country is None:
            if self.unknown_location == UNKNOWN_DENY:
                return 0, ()
            if self.unknown_location == UNKNOWN_UNRESTRICTED or self.edge_country is None:
                # No edge country is only possible without residency rules (config checks).
                return self.all_mask, ()
            country = self.edge_country
        return self._by_country.get(country, (self.all_mask, ()))

    def unplaceable_denied(self, facts: RequestFacts) -> bool:
        """The client cannot be placed and this edge refuses such clients."""
        return facts.country is None and self.unknown_location == UNKNOWN_DENY

    def certifications(self, required: frozenset[str]) -> int:
        mask = self._cert_cache.get(required)
        if mask is None:
            need = self.base_certs | required
            mask = _bits(i for i, have in enumerate(self._region_certs) if need <= have)
            # Keys are normalised sets of cert names; the header parser bounds their size,
            # but an attacker could still vary them: keep the cache bounded.
            if len(self._cert_cache) < 4096:
                self._cert_cache[required] = mask
        return mask

    def model(self, model: str | None) -> int:
        if model is None:
            return self.all_mask
        return self._model_masks.get(model, self._any_model)

    def jurisdictions(self, allowed: frozenset[str] | None) -> int:
        if allowed is None:
            return self.all_mask
        mask = self._jurisdiction_cache.get(allowed)
        if mask is None:
            mask = _bits(i for i, r in enumerate(self.regions) if r.jurisdiction in allowed)
            if len(self._jurisdiction_cache) < 4096:
                self._jurisdiction_cache[allowed] = mask
        return mask

    def allowed(self, facts: RequestFacts) -> int:
        """The allowed-region mask; per request, so each narrowing is skipped when absent."""
        location = facts.location
        mask = self.residency(None if location is None else location.country)[0]
        if facts.certifications or self.base_certs:
            mask &= self.certifications(facts.certifications)
        if facts.model is not None:
            mask &= self.model(facts.model)
        if facts.residency is not None:
            mask &= self.jurisdictions(facts.residency)
        return mask

    # -- explanations (operator path, not per request) --------------------------------------

    def why_not(self, index: int, facts: RequestFacts) -> str | None:
        """Why region ``index`` is not allowed for ``facts``; ``None`` when it is."""
        bit = 1 << index
        region = self.regions[index]
        if self.unplaceable_denied(facts):
            return "client location unknown (routing.unknown_location = deny)"
        mask, rules = self.residency(facts.country)
        if not mask & bit:
            country = facts.country if facts.country is not None else self.edge_country
            blocking = [
                rule.name
                for rule in self.rules
                if country in rule.countries and region.jurisdiction not in rule.allow_jurisdictions
            ]
            names = ", ".join(blocking) or ", ".join(rules)
            if facts.country is None:
                names += f" (client unplaceable: rules of edge country {self.edge_country})"
            return f"residency rule {names} forbids {region.jurisdiction}"
        if not self.certifications(facts.certifications) & bit:
            missing = sorted((self.base_certs | facts.certifications) - self._region_certs[index])
            return f"lacks certification {', '.join(missing)}"
        if not self.model(facts.model) & bit:
            return f"does not serve model {facts.model}"
        if not self.jurisdictions(facts.residency) & bit:
            return f"request narrowed residency to {', '.join(sorted(facts.residency or ()))}"
        return None


# --------------------------------------------------------------------------- headers


def _split_list(value: str, header: str) -> list[str]:
    items = [part.strip() for part in value.split(",")]
    items = [i for i in items if i]
    if len(items) > MAX_LIST_ITEMS:
        raise BadControlHeader(header, f"too many items (at most {MAX_LIST_ITEMS})")
    return items


def parse_budget(value: str | None, default: float, lo: float, hi: float) -> float:
    """The request's latency budget in ms: the header clamped into [lo, hi], else the default."""
    if value is None:
        return default
    try:
        ms = float(value.strip())
    except ValueError:
        raise BadControlHeader(BUDGET_HEADER, "expected a number of milliseconds") from None
    if ms != ms:  # NaN
        raise BadControlHeader(BUDGET_HEADER, "expected a number of milliseconds")
    return min(max(ms, lo), hi)


def parse_certifications(value: str | None) -> frozenset[str]:
    if value is None:
        return frozenset()
    return frozenset(c.lower() for c in _split_list(value, CERTS_HEADER))


def parse_residency(value: str | None) -> frozenset[str] | None:
    """Jurisdictions the client allows (ISO codes or EU/EEA), or ``None`` for no narrowing."""
    if value is None:
        return None
    out: set[str] = set()
    for item in _split_list(value, RESIDENCY_HEADER):
        codes = countries.expand(item.upper())
        if codes is None:
            raise BadControlHeader(RESIDENCY_HEADER, f"{item[:16]!r} is not a country code")
        out |= codes
    return frozenset(out)


def facts_from_headers(
    get: Callable[[str], str | None],
    location: Location | None,
    cfg: Config,
    model: str | None = None,
) -> RequestFacts:
    """Build ``RequestFacts`` from a request's control headers (``get`` is ``headers.get``)."""
    r = cfg.routing
    return RequestFacts(
        location=location,
        budget_ms=parse_budget(
            get(BUDGET_HEADER),
            r.latency_budget_ms,
            r.min_latency_budget_ms,
            r.max_latency_budget_ms,
        ),
        certifications=parse_certifications(get(CERTS_HEADER)),
        residency=parse_residency(get(RESIDENCY_HEADER)),
        model=model,
    )
