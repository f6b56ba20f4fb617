"""What the edges of a fleet see of each endpoint, and how one edge combines it (fleet mode).

Every edge publishes an ``Observation`` about once a second on ``<prefix>.obs.<edge>``: its
active-check verdict, consecutive failures and in-flight requests per endpoint, and its probe RTT
and TTFB EWMAs per region. Each edge keeps the latest fresh one of every peer in a ``PeerTable``
and turns them, with its own view, into an ``EndpointVerdict`` per endpoint (``combine``).

The rules (docs/design.md, fleet mode):

- A message is peer input: ``decode`` accepts exactly one shape and nothing else, bounded in
  size, count and value, and an error names the JSON path without echoing more than 64
  characters of what the peer sent (errors end up in logs).
- Observations older than ``max_age_s`` are dropped and counted; so are ones from a peer whose
  clock runs that far ahead.
- An endpoint is down fleet-wide only when a quorum of the edges that report on it see it down.
  Peers can take an endpoint down, never bring one up, and no data from others means this
  edge's own view.

This module is pure: no clock (times come in as arguments), no socket, no NATS.
"""

from __future__ import annotations

import enum
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import orjson

OBS_VERSION: Final = 1
# Room for about 5,000 endpoints with typical URLs, under NATS's default max_payload (1 MiB).
MAX_OBS_BYTES: Final = 512 * 1024

# Bounds on peer input. A peer cannot make this edge hold or loop over more than this.
MAX_REGIONS: Final = 256
MAX_ENDPOINTS: Final = 1024  # per region
MAX_URL: Final = 512
MAX_REGION_NAME: Final = 256
MAX_FAILURES: Final = 10**6
MAX_INFLIGHT: Final = 10**7
MAX_MS: Final = 1e7
# Revisions and sequence numbers stay in a signed 64-bit integer (what JSON parsers agree on).
MAX_COUNTER: Final = 2**63 - 1

# The rule of config's fleet.edge and fleet.site: one NATS subject token.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
# How much of each peer string a path may show: the deepest path (an unknown key of an endpoint
# of a region) shows all three, and together they stay within 64 characters of peer input.
_SHOW_REGION: Final = 16
_SHOW_URL: Final = 32
_SHOW_KEY: Final = 16


class Drop(enum.StrEnum):
    """Why a message or observation was dropped (the metric label)."""

    OVERSIZED = "oversized"
    MALFORMED = "malformed"
    STALE = "stale"
    EXPIRED = "expired"


class ObsError(Exception):
    """A message that is not an observation; ``detail`` names the JSON path and the problem."""

    def __init__(self, reason: Drop, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class EndpointObs:
    up: bool  # the active-check verdict of the sender
    failures: int  # consecutive failed probes
    inflight: int  # the sender's requests in flight on it


@dataclass(frozen=True, slots=True)
class RegionObs:
    rtt_ms: float | None  # probe RTT EWMA, None before the first probe answers
    ttfb_ms: float | None  # TTFB EWMA, None before the first response
    endpoints: Mapping[str, EndpointObs]  # by endpoint URL


@dataclass(frozen=True, slots=True)
class Observation:
    edge: str
    site: str
    revision: int  # the fleet document revision the sender runs
    seq: int  # the sender's counter, orders messages sent within one clock tick
    sent_at: float  # the sender's wall clock, seconds since the epoch
    regions: Mapping[str, RegionObs]  # by region name

    def inflight(self, region: str) -> int:
        r = self.regions.get(region)
        return 0 if r is None else sum(e.inflight for e in r.endpoints.values())


# --------------------------------------------------------------------------------------------
# Wire format


def encode(obs: Observation) -> bytes:
    """Compact JSON; the inverse of ``decode`` for every observation ``decode`` accepts."""
    return orjson.dumps(
        {
            "v": OBS_VERSION,
            "edge": obs.edge,
            "site": obs.site,
            "rev": obs.revision,
            "seq": obs.seq,
            "at": obs.sent_at,
            "regions": {
                name: {
                    "rtt_ms": r.rtt_ms,
                    "ttfb_ms": r.ttfb_ms,
                    "endpoints": {
                        url: {"up": e.up, "fail": e.failures, "inflight": e.inflight}
                        for url, e in r.endpoints.items()
                    },
                }
                for name, r in obs.regions.items()
            },
        }
    )


_TOP_KEYS = frozenset({"v", "edge", "site", "rev", "seq", "at", "regions"})
_REGION_KEYS = frozenset({"rtt_ms", "ttfb_ms", "endpoints"})
_ENDPOINT_KEYS = frozenset({"up", "fail", "inflight"})
_ROOT = "message"


def decode(data: bytes, subject_edge: str | None = None) -> Observation:
    """The observation in ``data``, or ``ObsError``.

    ``subject_edge`` is the last token of the subject the message came on: a peer may only
    speak for itself, so a message naming another edge is malformed.
    """
    if len(data) > MAX_OBS_BYTES:
        raise ObsError(
            Drop.OVERSIZED, f"{_ROOT}: {len(data)} bytes, more than {MAX_OBS_BYTES} bytes"
        )
    try:
        doc: object = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        # orjson's own words say what broke and where, never what the bytes were.
        raise _bad(_ROOT, f"not valid JSON ({_clip(exc.msg, 80)}, char {exc.pos})") from None
    top = _object(doc, _ROOT, _TOP_KEYS)
    version = top["v"]
    if type(version) is not int or version != OBS_VERSION:
        raise _bad("v", f"expected {OBS_VERSION}, the only version this edge reads")
    edge = _token(top["edge"], "edge")
    if subject_edge is not None and edge != subject_edge:
        raise _bad("edge", f"{edge!r} is not the edge of the subject the message came on")
    return Observation(
        edge=edge,
        site=_token(top["site"], "site"),
        revision=_int(top["rev"], "rev", MAX_COUNTER),
        seq=_int(top["seq"], "seq", MAX_COUNTER),
        sent_at=_number(top["at"], "at", -math.inf, math.inf),
        regions=_regions(top["regions"]),
    )


def _regions(v: object) -> dict[str, RegionObs]:
    raw = _mapping(v, "regions", MAX_REGIONS)
    out: dict[str, RegionObs] = {}
    for name, region in raw.items():
        path = f"regions.{_clip(name, _SHOW_REGION)}"
        if not _region_name_ok(name):
            raise _bad(
                path,
                f"not a region name (letters, digits, '-', '_', '.'; 1 to {MAX_REGION_NAME})",
            )
        out[name] = _region(region, path)
    return out


def _region(v: object, path: str) -> RegionObs:
    r = _object(v, path, _REGION_KEYS)
    return RegionObs(
        rtt_ms=_optional_ms(r["rtt_ms"], f"{path}.rtt_ms"),
        ttfb_ms=_optional_ms(r["ttfb_ms"], f"{path}.ttfb_ms"),
        endpoints=_endpoints(r["endpoints"], f"{path}.endpoints"),
    )


def _endpoints(v: object, path: str) -> dict[str, EndpointObs]:
    raw = _mapping(v, path, MAX_ENDPOINTS)
    out: dict[str, EndpointObs] = {}
    for url, e in raw.items():
        at = f"{path}[{_clip(url, _SHOW_URL)}]"
        if not url or len(url) > MAX_URL or not url.isprintable():
            raise _bad(at, f"not an endpoint URL (1 to {MAX_URL} printable characters)")
        fields = _object(e, at, _ENDPOINT_KEYS)
        up = fields["up"]
        if not isinstance(up, bool):
            raise _bad(f"{at}.up", f"expected true or false, got {_kind(up)}")
        out[url] = EndpointObs(
            up=up,
            failures=_int(fields["fail"], f"{at}.fail", MAX_FAILURES),
            inflight=_int(fields["inflight"], f"{at}.inflight", MAX_INFLIGHT),
        )
    return out


# --------------------------------------------------------------------------------------------
# Readers: each checks one value and names its path


def _bad(path: str, problem: str) -> ObsError:
    return ObsError(Drop.MALFORMED, f"{path}: {problem}")


def _clip(s: str, n: int) -> str:
    """At most ``n`` characters of a peer's string, escaped so a log line stays one line."""
    shown = s if len(s) <= n else s[: n - 1] + "…"
    return shown if shown.isprintable() else repr(shown)[1:-1]


def _kind(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number with a fraction"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    return "an object"


def _mapping(v: object, path: str, most: int) -> dict[str, object]:
    if not isinstance(v, dict):
        raise _bad(path, f"expected an object, got {_kind(v)}")
    if len(v) > most:
        raise _bad(path, f"{len(v)} entries, more than {most}")
    return v


def _object(v: object, path: str, keys: frozenset[str]) -> dict[str, object]:
    """A JSON object with exactly ``keys``: an unknown key is an error, not something to skip,
    so a newer sender's message is refused whole rather than half understood."""
    if not isinstance(v, dict):
        raise _bad(path, f"expected an object, got {_kind(v)}")
    unknown = sorted(v.keys() - keys)
    if unknown:
        raise _bad(_key_path(path, _clip(unknown[0], _SHOW_KEY)), "unknown key")
    missing = sorted(keys - v.keys())
    if missing:
        raise _bad(_key_path(path, missing[0]), "missing")
    return v


def _key_path(path: str, key: str) -> str:
    # Top-level keys are named bare ("seq"), as every other error names them.
    return key if path == _ROOT else f"{path}.{key}"


def _token(v: object, path: str) -> str:
    if not isinstance(v, str):
        raise _bad(path, f"expected a string, got {_kind(v)}")
    if not _TOKEN.fullmatch(v):
        raise _bad(path, "not a NATS-safe name (1 to 64 letters, digits, '-', '_')")
    return v


def _region_name_ok(name: str) -> bool:
    # config's rule for region names, plus a length bound that config does not need.
    return 0 < len(name) <= MAX_REGION_NAME and all(c.isalnum() or c in "-_." for c in name)


def _int(v: object, path: str, most: int) -> int:
    # type() rather than isinstance: true and false are ints to Python, never to this format.
    if type(v) is not int:
        raise _bad(path, f"expected an integer, got {_kind(v)}")
    if not 0 <= v <= most:
        raise _bad(path, f"expected 0 to {most}, got {v}")
    return v


def _number(v: object, path: str, least: float, most: float) -> float:
    if type(v) is not int and type(v) is not float:
        raise _bad(path, f"expected a number, got {_kind(v)}")
    f = float(v)
    if not math.isfinite(f) or not least <= f <= most:
        bounds = "a finite number" if math.isinf(most) else f"a number {least:g} to {most:g}"
        raise _bad(path, f"expected {bounds}")
    return f


def _optional_ms(v: object, path: str) -> float | None:
    return None if v is None else _number(v, path, 0.0, MAX_MS)


# --------------------------------------------------------------------------------------------
# The table of peers


@dataclass(frozen=True, slots=True)
class _Kept:
    obs: Observation
    received_at: float  # the receiver's monotonic clock


class PeerTable:
    """The latest fresh observation of each peer. Time comes in: ``now`` is the receiver's
    monotonic clock, ``wall`` its wall clock."""

    def __init__(self, edge: str, max_age_s: float) -> None:
        self.edge = edge
        self.max_age_s = max_age_s
        self.dropped: Counter[str] = Counter()
        self.received = 0
        self._kept: dict[str, _Kept] = {}

    def count(self, reason: Drop) -> None:
        self.dropped[reason.value] += 1

    def offer(self, obs: Observation, now: float, wall: float) -> Drop | None:
        """Keep ``obs`` if it is a fresh, newer word from a peer; the reason when it is dropped.

        Age is judged on the sender's clock against ours at receipt, so a message queued during
        a NATS outage is stale on arrival. A peer clock far ahead is stale too: kept, it would
        outrank every honest message from that peer until our clock caught up.
        """
        if obs.edge == self.edge:
            return None  # our own message, echoed back by the subscription on the wildcard
        if abs(wall - obs.sent_at) > self.max_age_s:
            self.count(Drop.STALE)
            return Drop.STALE
        kept = self._kept.get(obs.edge)
        if kept is not None and (obs.sent_at, obs.seq) <= (kept.obs.sent_at, kept.obs.seq):
            # A duplicate or a reordered delivery: the newer word is already here. If the peer's
            # clock stepped back, its older kept message expires within max_age_s and its new
            # messages are taken from then on.
            return None
        self._kept[obs.edge] = _Kept(obs, now)
        self.received += 1
        return None

    def expire(self, now: float) -> int:
        """Forget observations received more than ``max_age_s`` ago; how many went."""
        old = [edge for edge, k in self._kept.items() if now - k.received_at > self.max_age_s]
        for edge in old:
            del self._kept[edge]
            self.count(Drop.EXPIRED)
        return len(old)

    def fresh(self) -> list[Observation]:
        return [self._kept[edge].obs for edge in sorted(self._kept)]

    def age(self, edge: str, now: float) -> float | None:
        kept = self._kept.get(edge)
        return None if kept is None else now - kept.received_at


# --------------------------------------------------------------------------------------------
# Combining


@dataclass(frozen=True, slots=True)
class EndpointVerdict:
    fleet_down: bool  # peers alone make a quorum: see combine()
    down_votes: int  # edges that see it down, this edge included
    reporters: int  # edges that report on it, this edge included
    peer_inflight: int  # sum of fresh peers' in-flight on it


def combine(
    own_up: Mapping[str, bool],
    peers: Sequence[Observation],
    votes_needed: Callable[[int], int],
) -> dict[str, EndpointVerdict]:
    """Each of this edge's endpoints (``own_up``: its active-check verdict by URL) judged with
    what ``peers`` (fresh ones, this edge not among them) see of it.

    ``fleet_down`` counts the quorum as if this edge saw the endpoint up. Its own "down" takes
    the endpoint out anyway, so the verdict needs no refresh when its own view flips; and peers
    can only take an endpoint down, never bring one up. At least one peer must see it down: no
    data from others never means "down", whatever ``votes_needed`` says.
    """
    views = [_peer_view(p, own_up) for p in peers]
    out: dict[str, EndpointVerdict] = {}
    for url, up in own_up.items():
        reports = down = inflight = 0
        for view in views:
            seen = view.get(url)
            if seen is None:
                continue
            reports += 1
            sees_down, peer_inflight = seen
            down += 1 if sees_down else 0
            inflight += peer_inflight
        reporters = reports + 1
        out[url] = EndpointVerdict(
            fleet_down=down >= 1 and down >= votes_needed(reporters),
            down_votes=down + (0 if up else 1),
            reporters=reporters,
            peer_inflight=inflight,
        )
    return out


def _peer_view(obs: Observation, wanted: Mapping[str, bool]) -> dict[str, tuple[bool, int]]:
    """One peer's (sees it down, its in-flight) by URL, for the URLs this edge has.

    Built once per peer so combining costs what the peers sent plus this edge's endpoints, not
    their product. A URL under two regions (a peer on another revision) is one report: down if
    either says so, in-flight summed.
    """
    view: dict[str, tuple[bool, int]] = {}
    for region in obs.regions.values():
        for url, e in region.endpoints.items():
            if url not in wanted:
                continue
            was_down, was_inflight = view.get(url, (False, 0))
            view[url] = (was_down or not e.up, was_inflight + e.inflight)
    return view
