"""The router: request facts plus a state view in, a ``Decision`` out.

Pure: it never touches a socket, a file or a clock. Everything that depends only on the config
(placement masks, the scoring kernel's static arrays, per-location round trips) is computed at
config load or cached per distinct input, so a decision costs a few lookups and one kernel call.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Final

from gslb.core import _scoring_py, scoring
from gslb.core.config import Config
from gslb.core.forward import ClientError
from gslb.core.geo import Location
from gslb.core.latency import LatencyModel
from gslb.core.policy import Placement, RequestFacts
from gslb.core.state import LiveView

# Why a request found no region (metric label ``gslb_denied_total{cause}``).
UNPLACEABLE: Final = "unplaceable"  # unknown location and routing.unknown_location = "deny"
NARROWED: Final = "narrowed"  # the request's own control headers excluded every region
RESIDENCY: Final = "residency"  # every region the client's residency rules allow is down
UNAVAILABLE: Final = "unavailable"  # nothing allowed is routable, and no residency rule binds
DENIAL_CAUSES: Final = (UNPLACEABLE, NARROWED, RESIDENCY, UNAVAILABLE)

NET_CACHE_SIZE = 16384
MASK_CACHE_SIZE = 4096
DECISION_CACHE_SIZE = 65536


@dataclass(frozen=True, slots=True)
class Candidate:
    """One region as the router saw it, for explanations (``gslb route``, ``/explain``)."""

    region: str
    role: str
    allowed: bool
    routable: bool
    net_ms: float
    wait_ms: float
    util: float
    why_not: str | None


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a request goes and why.

    ``region`` is ``None`` when no region may take it (reason ``no-region``). ``fallbacks`` are
    the retry candidates in order: on the request path only as many as ``max_attempts`` can
    use, in an explanation all of them. ``order`` holds the same as region indexes (chosen
    first). ``candidates`` is filled only when the caller asked for an explanation.

    Decisions are values from a small set (a reason and a few region indexes), so the router
    hands out shared instances instead of building one per request.
    """

    region: str | None
    reason: str
    fallbacks: tuple[str, ...]
    candidates: tuple[Candidate, ...] = ()
    order: tuple[int, ...] = ()
    # The nearest routable active allowed region: where a spill comes from.
    home: str | None = None


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a request has no region: the cause, the residency rules involved, and the words
    for the client's 503 (never blaming a residency rule for what the client's own headers
    did)."""

    cause: str
    rules: tuple[str, ...]
    message: str

    @property
    def error(self) -> ClientError:
        """The 503 the client gets: its own code when it could not be placed."""
        code = "client_unplaceable" if self.cause == UNPLACEABLE else "no_eligible_region"
        return ClientError(503, code, self.message, retry_after="5")


class Router:
    def __init__(self, cfg: Config, backend: ModuleType | None = None) -> None:
        """``backend`` picks a scoring module (tests and benchmarks compare both)."""
        kernels = backend or scoring
        self.cfg = cfg
        regions = cfg.regions
        self.names: tuple[str, ...] = tuple(r.name for r in regions)
        self.placement = Placement(cfg)
        self.latency = LatencyModel(
            cfg.routing.latency_model,
            self.names,
            [r.location for r in regions],
            cfg.routing.measured_rtt_ms,
        )
        self.kernel = kernels.Kernel(
            [r.active for r in regions],
            [float(r.capacity) for r in regions],
            [r.service_ms for r in regions],
            cfg.routing.spill_utilization,
            cfg.routing.spill_penalty_ms,
        )
        self._keep = cfg.routing.max_attempts  # candidates the proxy can use
        self._decisions: dict[tuple[int, tuple[int, ...], int], Decision] = {}
        self._edge = cfg.geoip.edge_location
        self._net_cache: dict[Location | None, array[float]] = {}
        self._mask_cache: dict[int, bytes] = {}
        self._reasons: tuple[str, ...] = scoring.REASONS  # the names exist once, in the twin
        # Explanations come from the twin, which states why for every region; it is fed the
        # same inputs as the kernel, and tests hold the two to the same decisions.
        self._twin = (
            self.kernel
            if isinstance(self.kernel, _scoring_py.Kernel)
            else _scoring_py.Kernel(
                [r.active for r in regions],
                [float(r.capacity) for r in regions],
                [r.service_ms for r in regions],
                cfg.routing.spill_utilization,
                cfg.routing.spill_penalty_ms,
            )
        )
        # Per-region service time, modeled; the shell may correct it from observed latency.
        self.service_ms = [r.service_ms for r in regions]

    def new_view(self) -> LiveView:
        return LiveView(self.names)

    # -- inputs -----------------------------------------------------------------------------

    def net_ms(self, location: Location | None) -> array[float]:
        """Modeled RTT to every region from a client location (cached per location)."""
        net = self._net_cache.get(location)
        if net is None:
            point = location.point if location is not None else None
            country = location.country if location is not None else None
            net = array("d", self.latency.rtt_ms(point or self._edge, country))
            if len(self._net_cache) >= NET_CACHE_SIZE:
                self._net_cache.clear()  # rare; a full rebuild is cheaper than LRU bookkeeping
            self._net_cache[location] = net
        return net

    def _mask_bytes(self, mask: int) -> bytes:
        b = self._mask_cache.get(mask)
        if b is None:
            b = bytes((mask >> i) & 1 for i in range(len(self.names)))
            if len(self._mask_cache) >= MASK_CACHE_SIZE:
                self._mask_cache.clear()
            self._mask_cache[mask] = b
        return b

    def set_service_ms(self, index: int, value: float) -> None:
        self.service_ms[index] = value
        self.kernel.set_service_ms(index, value)
        if self._twin is not self.kernel:
            self._twin.set_service_ms(index, value)

    # -- the decision ---------------------------------------------------------------------------

    def decide(self, facts: RequestFacts, view: LiveView, explain: bool = False) -> Decision:
        """Where ``facts`` should go given ``view``; ``explain`` adds every candidate."""
        mask = self.allowed_mask(facts)
        # The per-request path: cached inputs, one kernel call, a shared Decision.
        allowed = self._mask_cache.get(mask) or self._mask_bytes(mask)
        net = self._net_cache.get(facts.location) or self.net_ms(facts.location)
        if explain:
            routable = view.routable
            result = self.kernel.decide(allowed, routable, net, view.load, facts.budget_ms)
            if not result[1] and view.last_resort != view.routable:
                routable = view.last_resort
                result = self.kernel.decide(allowed, routable, net, view.load, facts.budget_ms)
            candidates = self._explain(facts, view, mask, allowed, routable, net)
            code, order, home = result
            return self._decision(code, order, home, candidates)
        key = self.kernel.decide(
            allowed, view.routable, net, view.load, facts.budget_ms, self._keep
        )
        if not key[1] and view.last_resort != view.routable:
            # Nothing routable: regions held down after a recovery beat a refusal.
            key = self.kernel.decide(
                allowed, view.last_resort, net, view.load, facts.budget_ms, self._keep
            )
        decision = self._decisions.get(key)
        if decision is None:
            if len(self._decisions) >= DECISION_CACHE_SIZE:
                self._decisions.clear()
            decision = self._decisions[key] = self._decision(key[0], key[1], key[2], ())
        return decision

    def allowed_mask(self, facts: RequestFacts) -> int:
        return self.placement.allowed(facts)

    def denial(self, facts: RequestFacts, view: LiveView) -> Denial:
        """Why ``facts`` got no region (off the hot path: only for refused requests)."""
        if self.placement.unplaceable_denied(facts):
            return Denial(
                UNPLACEABLE,
                (),
                "the client's location is unknown and this edge does not route clients it "
                "cannot place",
            )
        if facts.residency is not None or facts.certifications:
            unnarrowed = replace(facts, residency=None, certifications=frozenset())
            if self.decide(unnarrowed, view).region is not None:
                return Denial(
                    NARROWED,
                    (),
                    "the request's own X-GSLB-Residency or X-GSLB-Require-Certifications "
                    "header excludes every region that could serve it now",
                )
        rules = self.residency_rules(facts)
        if rules:
            where = facts.country or f"this edge's country ({self.placement.edge_country})"
            return Denial(
                RESIDENCY,
                rules,
                f"no region that residency rule {', '.join(rules)} allows for clients in "
                f"{where} is available",
            )
        return Denial(UNAVAILABLE, (), "no region may serve this request now")

    def residency_rules(self, facts: RequestFacts) -> tuple[str, ...]:
        """Names of the residency rules that bind this client (for denial metrics)."""
        return self.placement.residency(facts.country)[1]

    def _decision(
        self, code: int, order: tuple[int, ...], home: int, candidates: tuple[Candidate, ...]
    ) -> Decision:
        names = self.names
        if not order:
            return Decision(None, self._reasons[code], (), candidates, ())
        fallbacks = tuple([names[i] for i in order[1:]])
        return Decision(
            names[order[0]], self._reasons[code], fallbacks, candidates, order, names[home]
        )

    # -- explanations (operator path) -------------------------------------------------------

    def _explain(
        self,
        facts: RequestFacts,
        view: LiveView,
        mask: int,
        allowed: bytes,
        routable: bytes | bytearray,
        net: array[float],
    ) -> tuple[Candidate, ...]:
        """Every region with the twin's verdict on it, for the inputs the decision used."""
        _, _, verdicts = self._twin.explain(allowed, routable, net, view.load, facts.budget_ms)
        regions = self.cfg.regions
        out = []
        for i, region in enumerate(regions):
            load = view.load[i]
            wait = scoring.wait_ms(load, float(region.capacity), self.service_ms[i])
            out.append(
                Candidate(
                    region=region.name,
                    role=region.role,
                    allowed=bool(mask >> i & 1),
                    routable=bool(routable[i]),
                    net_ms=round(net[i], 3),
                    wait_ms=round(wait, 3),
                    util=round(load / region.capacity, 4),
                    why_not=self._why_not(verdicts[i], i, facts, view, net[i] + wait),
                )
            )
        return tuple(out)

    def _why_not(
        self, verdict: int, i: int, facts: RequestFacts, view: LiveView, cost: float
    ) -> str | None:
        """The words for one verdict of the twin."""
        k = _scoring_py
        if verdict == k.CHOSEN:
            return None
        if verdict == k.NOT_ALLOWED:
            return self.placement.why_not(i, facts) or "not allowed"
        if verdict == k.NOT_ROUTABLE:
            if view.last_resort[i]:
                return (
                    "held down after recovering (standby_hold_down_s); used only as a last resort"
                )
            return "not routable (no healthy endpoint)"
        if verdict == k.STANDBY_UNUSED:
            return "standby region; an active region is routable"
        if verdict == k.BUSY:
            util = view.load[i] / self.cfg.regions[i].capacity
            spill = self.cfg.routing.spill_utilization
            return f"utilization {util:.2f} >= spill_utilization {spill:.2f}"
        if verdict == k.OVER_BUDGET:
            return f"net+wait {cost:.1f} ms exceeds budget {facts.budget_ms:.0f} ms"
        return "not the best: farther or slower than the chosen region"
