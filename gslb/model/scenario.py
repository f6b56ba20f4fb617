"""A simulation scenario: the day's demand, the servers, the failures, the router's staleness.

``parse_scenario(text, source)`` reads a scenario TOML file into frozen dataclasses; every
problem is a ``ConfigError`` that names the key (``demand.total_rps: expected a number > 0``),
as for gslb's own config. The keys and their defaults are in docs/simulate.md; the fleet (the
regions, their providers, jurisdictions and residency rules) comes from gslb's config.
"""

from __future__ import annotations

import datetime
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from gslb.core.config import ConfigError
from gslb.model.demand import Diurnal, TokenDist
from gslb.model.failures import DEFAULT_GPU_FAILURES_PER_HOUR, Outage, PreemptionWave

POLICIES: Final = ("nearest", "least_loaded", "round_robin", "waterfall", "envoy", "gslb")
CAPACITY_TYPES: Final = ("reserved", "on_demand", "spot")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ServerModel:
    """One inference server (a node): how many requests it runs at once, and how fast."""

    gpus: int = 8
    concurrency: int = 16  # continuous batching, as a concurrency limit
    prefill_ms_per_1k_tokens: float = 60.0
    decode_ms_per_token: float = 15.0
    overhead_ms: float = 10.0
    # "exponential": service times drawn exponential with the same mean (for queueing checks)
    service: str = "tokens"

    def prefill_s(self, input_tokens: Any) -> Any:
        return input_tokens * (self.prefill_ms_per_1k_tokens / 1e6)

    def service_s(self, input_tokens: Any, output_tokens: Any) -> Any:
        """Seconds a request holds its slot: overhead, prefill, then one step per token."""
        return (
            self.overhead_ms / 1e3
            + self.prefill_s(input_tokens)
            + output_tokens * (self.decode_ms_per_token / 1e3)
        )


@dataclass(frozen=True, slots=True)
class RegionCapacity:
    """Servers of one region by how they are bought (overrides the config's endpoints)."""

    region: str
    reserved: int = 0
    on_demand: int = 0
    spot: int = 0

    @property
    def servers(self) -> int:
        return self.reserved + self.on_demand + self.spot


@dataclass(frozen=True, slots=True)
class Prices:
    """USD per GPU-hour, by how the capacity is bought."""

    reserved: float = 2.0
    on_demand: float = 4.0
    spot: float = 1.6

    def of(self, capacity_type: str) -> float:
        return float(getattr(self, capacity_type))


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str = "scenario"
    hours: float = 24.0
    seed: int = 1
    date: datetime.date = datetime.date(2026, 3, 18)
    start_utc_hour: float = 0.0
    # demand
    total_rps: float = 200.0
    cells: int = 300
    min_city_population: int = 15000
    diurnal: Diurnal = field(default_factory=Diurnal)
    input_tokens: TokenDist = field(default_factory=lambda: TokenDist(mean=1024.0, sigma=1.0))
    output_tokens: TokenDist = field(default_factory=lambda: TokenDist(mean=256.0, sigma=0.8))
    budget_ms: float | None = None  # None: the config's routing.latency_budget_ms
    slo_ttft_ms: float = 1000.0
    # network and router
    jitter_ms: float = 5.0
    staleness_s: float = 1.0
    connect_fail_ms: float = 0.0  # what a refused connection to a dead region costs a retry
    # supply
    server: ServerModel = field(default_factory=ServerModel)
    capacity: tuple[RegionCapacity, ...] = ()
    prices: Prices = field(default_factory=Prices)
    # failures
    gpu_failures_per_hour: float = DEFAULT_GPU_FAILURES_PER_HOUR
    repair_h: float = 4.0
    outages: tuple[Outage, ...] = ()
    preemptions: tuple[PreemptionWave, ...] = ()
    policies: tuple[str, ...] = POLICIES
    source: str = field(default="", compare=False)


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    """The scenario in ``text``; raises ``ConfigError`` naming the first bad key."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, f"not valid TOML: {exc}") from None
    r = _Reader(doc, "")
    d = Scenario()
    sc = r.table("scenario")
    dm = r.table("demand")
    rq = r.table("requests")
    nw = r.table("network")
    rt = r.table("router")
    sv = r.table("servers")
    fl = r.table("failures")
    pr = r.table("prices")
    scenario = Scenario(
        name=sc.get("name", _str, d.name),
        hours=sc.get("hours", _between(0.0, 24.0 * 366, open_low=True), d.hours),
        seed=sc.get("seed", _int(0), d.seed),
        date=sc.get("date", _date, d.date),
        start_utc_hour=sc.get("start_utc_hour", _between(0.0, 24.0), d.start_utc_hour),
        total_rps=dm.get("total_rps", _between(0.0, 1e6, open_low=True), d.total_rps),
        cells=dm.get("cells", _int(1), d.cells),
        min_city_population=dm.get("min_city_population", _int(15000), d.min_city_population),
        diurnal=Diurnal(
            peak_hour=dm.get("peak_hour", _between(0.0, 24.0), d.diurnal.peak_hour),
            trough_ratio=dm.get(
                "trough_ratio", _between(0.0, 1.0, open_low=True), d.diurnal.trough_ratio
            ),
        ),
        input_tokens=rq.get("input_tokens", _tokens, d.input_tokens),
        output_tokens=rq.get("output_tokens", _tokens, d.output_tokens),
        budget_ms=rq.get("budget_ms", _between(1.0, 1e6), d.budget_ms),
        slo_ttft_ms=rq.get("slo_ttft_ms", _between(1.0, 1e7), d.slo_ttft_ms),
        jitter_ms=nw.get("jitter_ms", _between(0.0, 1e4), d.jitter_ms),
        staleness_s=rt.get("staleness_s", _between(0.0, 3600.0, open_low=True), d.staleness_s),
        connect_fail_ms=rt.get("connect_fail_ms", _between(0.0, 1e5), d.connect_fail_ms),
        server=ServerModel(
            gpus=sv.get("gpus", _int(1), d.server.gpus),
            concurrency=sv.get("concurrency", _int(1), d.server.concurrency),
            prefill_ms_per_1k_tokens=sv.get(
                "prefill_ms_per_1k_tokens", _between(0.0, 1e6), d.server.prefill_ms_per_1k_tokens
            ),
            decode_ms_per_token=sv.get(
                "decode_ms_per_token", _between(0.0, 1e5), d.server.decode_ms_per_token
            ),
            overhead_ms=sv.get("overhead_ms", _between(0.0, 1e6), d.server.overhead_ms),
            service=sv.get("service", _choice(("tokens", "exponential")), d.server.service),
        ),
        capacity=r.get("capacity", _list_of(_capacity), d.capacity),
        prices=Prices(
            reserved=pr.get("reserved", _between(0.0, 1e4), d.prices.reserved),
            on_demand=pr.get("on_demand", _between(0.0, 1e4), d.prices.on_demand),
            spot=pr.get("spot", _between(0.0, 1e4), d.prices.spot),
        ),
        gpu_failures_per_hour=fl.get(
            "gpu_failures_per_hour", _between(0.0, 1.0), d.gpu_failures_per_hour
        ),
        repair_h=fl.get("repair_h", _between(0.0, 24.0 * 366), d.repair_h),
        outages=fl.get("outages", _list_of(_outage), d.outages),
        preemptions=fl.get("preemptions", _list_of(_wave), d.preemptions),
        policies=r.get("policies", _policies, d.policies),
        source=source,
    )
    for t in (sc, dm, rq, nw, rt, sv, fl, pr, r):
        t.done()
    return scenario


# -- readers ---------------------------------------------------------------------------------

Parse = Callable[[Any, str], T]


class _Reader:
    """One table: ``get`` each key once, then ``done`` refuses the keys nobody asked for."""

    def __init__(self, table: Mapping[str, Any], path: str) -> None:
        self.table_ = table
        self.path = path
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, parse: Parse[T], default: T) -> T:
        self.seen.add(name)
        if name not in self.table_:
            return default
        return parse(self.table_[name], self.key(name))

    def table(self, name: str) -> _Reader:
        self.seen.add(name)
        v = self.table_.get(name, {})
        if not isinstance(v, Mapping):
            raise ConfigError(self.key(name), "expected a table")
        return _Reader(v, self.key(name))

    def done(self) -> None:
        extra = sorted(set(self.table_) - self.seen)
        if extra:
            raise ConfigError(self.key(extra[0]), "unknown key")


def _str(v: Any, path: str) -> str:
    if not isinstance(v, str) or not v or len(v) > 256:
        raise ConfigError(path, "expected a non-empty string")
    return v


def _number(v: Any, path: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ConfigError(path, "expected a number")
    return float(v)


def _between(lo: float, hi: float, open_low: bool = False) -> Parse[float]:
    def parse(v: Any, path: str) -> float:
        x = _number(v, path)
        if x < lo or x > hi or (open_low and x == lo):
            low = f"> {lo:g}" if open_low else f">= {lo:g}"
            raise ConfigError(path, f"expected a number {low} and <= {hi:g}")
        return x

    return parse


def _int(lo: int) -> Parse[int]:
    def parse(v: Any, path: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or v > 10**9:
            raise ConfigError(path, f"expected a whole number >= {lo}")
        return v

    return parse


def _choice(options: tuple[str, ...]) -> Parse[str]:
    def parse(v: Any, path: str) -> str:
        if v not in options:
            raise ConfigError(path, f"expected one of {', '.join(options)}")
        return str(v)

    return parse


def _date(v: Any, path: str) -> datetime.date:
    if isinstance(v, datetime.date) and not isinstance(v, datetime.datetime):
        return v
    if isinstance(v, str):
        try:
            return datetime.date.fromisoformat(v)
        except ValueError:
            pass
    raise ConfigError(path, "expected a date such as 2026-03-18")


def _list_of(parse: Parse[T]) -> Parse[tuple[T, ...]]:
    def parse_list(v: Any, path: str) -> tuple[T, ...]:
        if not isinstance(v, list):
            raise ConfigError(path, "expected a list")
        return tuple(parse(item, f"{path}[{i}]") for i, item in enumerate(v))

    return parse_list


def _tokens(v: Any, path: str) -> TokenDist:
    if not isinstance(v, Mapping):
        raise ConfigError(path, 'expected a table such as { kind = "lognormal", mean = 512 }')
    t = _Reader(v, path)
    d = TokenDist()
    dist = TokenDist(
        kind=t.get("kind", _choice(("lognormal", "fixed", "uniform")), d.kind),
        mean=t.get("mean", _between(1.0, 1e6), d.mean),
        sigma=t.get("sigma", _between(0.0, 5.0), d.sigma),
        low=t.get("low", _int(1), d.low),
        high=t.get("high", _int(1), d.high),
    )
    t.done()
    if dist.low > dist.high:
        raise ConfigError(f"{path}.low", "must not exceed high")
    return dist


def _capacity(v: Any, path: str) -> RegionCapacity:
    t = _table(v, path)
    c = RegionCapacity(
        region=t.get("region", _str, ""),
        reserved=t.get("reserved", _int(0), 0),
        on_demand=t.get("on_demand", _int(0), 0),
        spot=t.get("spot", _int(0), 0),
    )
    t.done()
    if not c.region:
        raise ConfigError(f"{path}.region", "required")
    return c


def _where(t: _Reader, path: str) -> tuple[str, str]:
    region = t.get("region", _str, "")
    provider = t.get("provider", _str, "")
    if bool(region) == bool(provider):
        raise ConfigError(path, "name exactly one of region or provider")
    return region, provider


def _outage(v: Any, path: str) -> Outage:
    t = _table(v, path)
    region, provider = _where(t, path)
    o = Outage(
        start_h=t.get("start_h", _between(0.0, 24.0 * 366), 0.0),
        duration_h=t.get("duration_h", _between(0.0, 24.0 * 366, open_low=True), 1.0),
        region=region,
        provider=provider,
    )
    t.done()
    return o


def _wave(v: Any, path: str) -> PreemptionWave:
    t = _table(v, path)
    region, provider = _where(t, path)
    w = PreemptionWave(
        start_h=t.get("start_h", _between(0.0, 24.0 * 366), 0.0),
        fraction=t.get("fraction", _between(0.0, 1.0), 1.0),
        duration_h=t.get("duration_h", _between(0.0, 24.0 * 366, open_low=True), 1.0),
        region=region,
        provider=provider,
        notice_s=t.get("notice_s", _between(0.0, 3600.0), 120.0),
    )
    t.done()
    return w


def _table(v: Any, path: str) -> _Reader:
    if not isinstance(v, Mapping):
        raise ConfigError(path, "expected a table")
    return _Reader(v, path)


def _policies(v: Any, path: str) -> tuple[str, ...]:
    names = _list_of(_choice(POLICIES))(v, path)
    if not names or len(set(names)) != len(names):
        raise ConfigError(path, "expected distinct policies, at least one")
    return names
