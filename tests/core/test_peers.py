"""Fleet health observations (gslb.core.peers): the wire format, the peer table and the quorum.

Pure code, so no servers: bytes in, observations and verdicts out, with times passed in.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gslb.core.config import FleetConfig
from gslb.core.peers import (
    MAX_OBS_BYTES,
    OBS_VERSION,
    Drop,
    EndpointObs,
    EndpointVerdict,
    ObsError,
    Observation,
    PeerTable,
    RegionObs,
    combine,
    decode,
    encode,
)

A = "http://10.0.0.1:8000"
B = "http://10.0.0.2:8000"
C = "http://10.0.1.1:8000"


def obs(
    edge: str = "fra",
    regions: dict[str, RegionObs] | None = None,
    *,
    sent_at: float = 1000.0,
    seq: int = 0,
    site: str = "fra-1",
    revision: int = 3,
) -> Observation:
    return Observation(
        edge=edge, site=site, revision=revision, seq=seq, sent_at=sent_at, regions=regions or {}
    )


def region(
    endpoints: dict[str, EndpointObs], rtt_ms: float | None = 12.5, ttfb_ms: float | None = 300.0
) -> RegionObs:
    return RegionObs(rtt_ms=rtt_ms, ttfb_ms=ttfb_ms, endpoints=endpoints)


def ep(up: bool = True, failures: int = 0, inflight: int = 0) -> EndpointObs:
    return EndpointObs(up=up, failures=failures, inflight=inflight)


# --------------------------------------------------------------------------------------------
# Wire format: round trips

SAMPLES = [
    obs(),
    obs(
        "nyc",
        {
            "us-east": region({A: ep(True, 0, 7), B: ep(False, 4, 0)}),
            "eu-central": region({C: ep(True, 1, 2)}, rtt_ms=None, ttfb_ms=None),
            "empty": region({}, rtt_ms=0.0, ttfb_ms=1e7),
        },
        sent_at=1_700_000_000.123456,
        seq=2**63 - 1,
        revision=0,
    ),
    # Names and URLs beyond ASCII are fine where the rules allow them.
    obs("sgp_2", {"são-paulo.1": region({"http://[::1]:8000/v1/é": ep(False, 10**6, 10**7)})}),
]


@pytest.mark.parametrize("observation", SAMPLES)
def test_round_trip(observation: Observation) -> None:
    assert decode(encode(observation)) == observation
    assert decode(encode(observation), subject_edge=observation.edge) == observation


def test_encode_is_the_documented_compact_shape() -> None:
    data = encode(obs("nyc", {"us-east": region({A: ep(False, 2, 5)}, ttfb_ms=None)}, seq=9))
    assert orjson.loads(data) == {
        "v": 1,
        "edge": "nyc",
        "site": "fra-1",
        "rev": 3,
        "seq": 9,
        "at": 1000.0,
        "regions": {
            "us-east": {
                "rtt_ms": 12.5,
                "ttfb_ms": None,
                "endpoints": {A: {"up": False, "fail": 2, "inflight": 5}},
            }
        },
    }
    assert b" " not in data  # compact: every byte counts against MAX_OBS_BYTES


_token = st.text("abcXYZ019_-", min_size=1, max_size=64)
_ms = st.none() | st.floats(0, 1e7, allow_nan=False, allow_infinity=False)
_endpoint = st.builds(
    EndpointObs, up=st.booleans(), failures=st.integers(0, 10**6), inflight=st.integers(0, 10**7)
)
_url = st.text(st.characters(categories=("L", "N", "P", "S")), min_size=1, max_size=512)
_region = st.builds(
    RegionObs,
    rtt_ms=_ms,
    ttfb_ms=_ms,
    endpoints=st.dictionaries(_url, _endpoint, max_size=4),
)
_region_name = st.text(
    st.characters(categories=("L", "N")) | st.sampled_from("-_."), min_size=1, max_size=20
)
_observation = st.builds(
    Observation,
    edge=_token,
    site=_token,
    revision=st.integers(0, 2**63 - 1),
    seq=st.integers(0, 2**63 - 1),
    sent_at=st.floats(allow_nan=False, allow_infinity=False),
    regions=st.dictionaries(_region_name, _region, max_size=4),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_observation)
def test_round_trip_property(observation: Observation) -> None:
    assert decode(encode(observation), subject_edge=observation.edge) == observation


# --------------------------------------------------------------------------------------------
# Wire format: what is refused


def valid() -> dict[str, Any]:
    return {
        "v": OBS_VERSION,
        "edge": "fra",
        "site": "fra-1",
        "rev": 3,
        "seq": 1,
        "at": 1000.5,
        "regions": {
            "us-east": {
                "rtt_ms": 12.0,
                "ttfb_ms": None,
                "endpoints": {A: {"up": True, "fail": 0, "inflight": 2}},
            }
        },
    }


def changed(change: Callable[[dict[str, Any]], object]) -> bytes:
    doc = copy.deepcopy(valid())
    change(doc)
    return orjson.dumps(doc)


def at_endpoint(key: str, value: object) -> Callable[[dict[str, Any]], object]:
    return lambda d: d["regions"]["us-east"]["endpoints"][A].__setitem__(key, value)


def at_region(key: str, value: object) -> Callable[[dict[str, Any]], object]:
    return lambda d: d["regions"]["us-east"].__setitem__(key, value)


def at_top(key: str, value: object) -> Callable[[dict[str, Any]], object]:
    return lambda d: d.__setitem__(key, value)


def many_endpoints(n: int) -> dict[str, object]:
    return {f"http://10.0.0.{i}:1": {"up": True, "fail": 0, "inflight": 0} for i in range(n)}


EP = f"regions.us-east.endpoints[{A}]"
VALID = orjson.dumps(valid())

MALFORMED: list[tuple[str, bytes, str]] = [
    ("not JSON", b"hello", "message: not valid JSON"),
    ("truncated", VALID[:-1], "message: not valid JSON"),
    ("not UTF-8", b'{"edge": "\xff"}', "message: not valid JSON"),
    ("JSON array", b"[1, 2]", "message: expected an object, got an array"),
    ("JSON string", b'"v"', "message: expected an object, got a string"),
    ("version 2", changed(at_top("v", 2)), "v: expected 1"),
    ("version true", changed(at_top("v", True)), "v: expected 1"),
    ("version 1.0", changed(at_top("v", 1.0)), "v: expected 1"),
    ("missing key", changed(lambda d: d.pop("seq")), "seq: missing"),
    (
        "missing endpoint key",
        changed(lambda d: d["regions"]["us-east"]["endpoints"][A].pop("up")),
        f"{EP}.up: missing",
    ),
    ("unknown key", changed(at_top("weight", 1)), "weight: unknown key"),
    ("unknown region key", changed(at_region("load", 1)), "regions.us-east.load: unknown key"),
    ("unknown endpoint key", changed(at_endpoint("region", "x")), f"{EP}.region: unknown key"),
    (
        "bool for int",
        changed(at_endpoint("fail", True)),
        f"{EP}.fail: expected an integer, got a boolean",
    ),
    (
        "float for int",
        changed(at_endpoint("inflight", 3.0)),
        f"{EP}.inflight: expected an integer, got a number with a fraction",
    ),
    ("string for int", changed(at_top("rev", "3")), "rev: expected an integer, got a string"),
    (
        "int for bool",
        changed(at_endpoint("up", 1)),
        f"{EP}.up: expected true or false, got an integer",
    ),
    (
        "null for bool",
        changed(at_endpoint("up", None)),
        f"{EP}.up: expected true or false, got null",
    ),
    ("NaN", VALID.replace(b'"rtt_ms":12.0', b'"rtt_ms":NaN'), "message: not valid JSON"),
    (
        "overflowing number",
        VALID.replace(b'"rtt_ms":12.0', b'"rtt_ms":1e400'),
        "message: not valid JSON",
    ),
    (
        "huge rtt",
        changed(at_region("rtt_ms", 1e300)),
        "regions.us-east.rtt_ms: expected a number 0 to 1e+07",
    ),
    (
        "ttfb over the bound",
        changed(at_region("ttfb_ms", 1e7 + 1)),
        "regions.us-east.ttfb_ms: expected",
    ),
    (
        "negative rtt",
        changed(at_region("rtt_ms", -0.5)),
        "regions.us-east.rtt_ms: expected a number",
    ),
    (
        "string rtt",
        changed(at_region("rtt_ms", "12")),
        "regions.us-east.rtt_ms: expected a number, got a string",
    ),
    (
        "negative inflight",
        changed(at_endpoint("inflight", -1)),
        f"{EP}.inflight: expected 0 to 10000000, got -1",
    ),
    (
        "inflight over the bound",
        changed(at_endpoint("inflight", 10**7 + 1)),
        f"{EP}.inflight: expected 0",
    ),
    (
        "failures over the bound",
        changed(at_endpoint("fail", 10**6 + 1)),
        f"{EP}.fail: expected 0 to 1000000",
    ),
    ("negative revision", changed(at_top("rev", -1)), "rev: expected 0"),
    ("seq past 63 bits", changed(at_top("seq", 2**63)), "seq: expected 0 to 9223372036854775807"),
    ("time as a string", changed(at_top("at", "now")), "at: expected a number, got a string"),
    ("time as null", changed(at_top("at", None)), "at: expected a number, got null"),
    ("edge with a dot", changed(at_top("edge", "fra.1")), "edge: not a NATS-safe name"),
    ("edge with >", changed(at_top("edge", "fra>")), "edge: not a NATS-safe name"),
    ("edge with *", changed(at_top("edge", "*")), "edge: not a NATS-safe name"),
    ("edge with a space", changed(at_top("edge", "fra 1")), "edge: not a NATS-safe name"),
    ("empty edge", changed(at_top("edge", "")), "edge: not a NATS-safe name"),
    ("edge of 65", changed(at_top("edge", "e" * 65)), "edge: not a NATS-safe name"),
    ("edge not a string", changed(at_top("edge", 7)), "edge: expected a string, got an integer"),
    ("site with a dot", changed(at_top("site", "fra.1")), "site: not a NATS-safe name"),
    (
        "regions as an array",
        changed(at_top("regions", [])),
        "regions: expected an object, got an array",
    ),
    (
        "region as null",
        changed(lambda d: d["regions"].__setitem__("us-east", None)),
        "regions.us-east: expected an object, got null",
    ),
    (
        "region name with a space",
        changed(lambda d: d["regions"].__setitem__("us east", d["regions"].pop("us-east"))),
        "regions.us east: not a region name",
    ),
    (
        "empty region name",
        changed(lambda d: d["regions"].__setitem__("", d["regions"].pop("us-east"))),
        "regions.: not a region name",
    ),
    (
        "endpoints as null",
        changed(at_region("endpoints", None)),
        "regions.us-east.endpoints: expected an object, got null",
    ),
    (
        "URL too long",
        changed(
            at_region(
                "endpoints", {"http://h/" + "p" * 504: {"up": True, "fail": 0, "inflight": 0}}
            )
        ),
        "regions.us-east.endpoints[http://h/" + "p" * 22 + "…]: not an endpoint URL (1 to 512",
    ),
    (
        "empty URL",
        changed(at_region("endpoints", {"": {"up": True, "fail": 0, "inflight": 0}})),
        "regions.us-east.endpoints[]: not an endpoint URL",
    ),
    (
        "URL with a newline",
        changed(at_region("endpoints", {"http://h\n": {"up": True, "fail": 0, "inflight": 0}})),
        "regions.us-east.endpoints[http://h\\n]: not an endpoint URL",
    ),
    (
        "too many endpoints",
        changed(at_region("endpoints", many_endpoints(1025))),
        "regions.us-east.endpoints: 1025 entries, more than 1024",
    ),
    (
        "too many regions",
        changed(
            at_top(
                "regions",
                {f"r{i}": {"rtt_ms": None, "ttfb_ms": None, "endpoints": {}} for i in range(257)},
            )
        ),
        "regions: 257 entries, more than 256",
    ),
]


@pytest.mark.parametrize(
    ("data", "fragment"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed(data: bytes, fragment: str) -> None:
    assert len(data) <= MAX_OBS_BYTES  # each case is refused for its shape, not its size
    with pytest.raises(ObsError) as caught:
        decode(data)
    assert caught.value.reason is Drop.MALFORMED
    assert fragment in caught.value.detail
    assert str(caught.value) == caught.value.detail
    assert "\n" not in caught.value.detail


def test_the_limits_themselves_are_accepted() -> None:
    doc = valid()
    doc["regions"] = {
        f"r{i}": {"rtt_ms": None, "ttfb_ms": None, "endpoints": {}} for i in range(256)
    }
    # Short URLs, so that every limit fits in one message at once.
    doc["regions"]["r0"]["endpoints"] = {
        str(i): {"up": True, "fail": 0, "inflight": 0} for i in range(1024)
    }
    doc["regions"]["r1"]["endpoints"] = {"u" * 512: {"up": False, "fail": 10**6, "inflight": 10**7}}
    got = decode(orjson.dumps({**doc, "edge": "e" * 64}))
    assert len(got.regions) == 256
    assert len(got.regions["r0"].endpoints) == 1024
    assert got.regions["r1"].endpoints["u" * 512] == EndpointObs(False, 10**6, 10**7)


def test_a_peer_cannot_speak_for_another_subject() -> None:
    with pytest.raises(ObsError) as caught:
        decode(VALID, subject_edge="nyc")
    assert caught.value.reason is Drop.MALFORMED
    assert caught.value.detail.startswith("edge: 'fra' is not the edge of the subject")
    assert decode(VALID, subject_edge="fra").edge == "fra"


def padded(size: int) -> bytes:
    """A valid message padded with JSON whitespace to exactly ``size`` bytes."""
    return VALID + b" " * (size - len(VALID))


def test_oversized_is_refused_before_parsing() -> None:
    assert decode(padded(MAX_OBS_BYTES)).edge == "fra"
    with pytest.raises(ObsError) as caught:
        decode(padded(MAX_OBS_BYTES + 1))
    assert caught.value.reason is Drop.OVERSIZED
    assert str(MAX_OBS_BYTES + 1) in caught.value.detail
    # Not parsed at all: even bytes that are not JSON are only "oversized".
    with pytest.raises(ObsError) as caught:
        decode(b"\xff" * (MAX_OBS_BYTES + 1))
    assert caught.value.reason is Drop.OVERSIZED


# Letters that no detail text uses on its own, so every one in a detail came from the peer.
PEER = "жюёЖ"


def peer_chars(detail: str) -> int:
    return sum(detail.count(c) for c in PEER)


DEEP_NAME = "ж" * 256  # the longest valid region name
DEEP_URL = "http://" + "ю" * 505  # the longest valid URL
LONG = 10_000

ECHO_CASES: list[tuple[str, bytes]] = [
    ("10 KB edge", changed(at_top("edge", "Ж" * LONG))),
    ("10 KB site", changed(at_top("site", "Ж" * LONG))),
    (
        "10 KB region name",
        changed(lambda d: d["regions"].__setitem__("ж" * LONG, d["regions"].pop("us-east"))),
    ),
    (
        "10 KB URL",
        changed(at_region("endpoints", {"ю" * LONG: {"up": True, "fail": 0, "inflight": 0}})),
    ),
    ("10 KB unknown key", changed(at_top("ё" * LONG, 1))),
    (
        "deepest path",
        changed(
            at_top(
                "regions",
                {
                    DEEP_NAME: {
                        "rtt_ms": None,
                        "ttfb_ms": None,
                        "endpoints": {
                            DEEP_URL: {"up": True, "fail": 0, "inflight": 0, "ё" * LONG: 1}
                        },
                    }
                },
            )
        ),
    ),
    (
        "deepest bad value",
        changed(
            at_top(
                "regions",
                {
                    DEEP_NAME: {
                        "rtt_ms": None,
                        "ttfb_ms": None,
                        "endpoints": {DEEP_URL: {"up": "ЖЖЖ" * 100, "fail": 0, "inflight": 0}},
                    }
                },
            )
        ),
    ),
    ("10 KB garbage", ("Ж" * LONG).encode()),
]


@pytest.mark.parametrize("data", [c[1] for c in ECHO_CASES], ids=[c[0] for c in ECHO_CASES])
def test_detail_never_echoes_more_than_64_chars_of_peer_input(data: bytes) -> None:
    with pytest.raises(ObsError) as caught:
        decode(data)
    assert peer_chars(caught.value.detail) <= 64, caught.value.detail
    assert len(caught.value.detail) < 200


def test_detail_shows_enough_of_the_path_to_find_the_entry() -> None:
    data = ECHO_CASES[5][1]
    with pytest.raises(ObsError) as caught:
        decode(data)
    assert caught.value.detail.startswith("regions." + "ж" * 15 + "….endpoints[http://")
    assert caught.value.detail.endswith("…]." + "ё" * 15 + "…: unknown key")


# --------------------------------------------------------------------------------------------
# Observation


def test_inflight_sums_a_region() -> None:
    o = obs(regions={"us-east": region({A: ep(inflight=3), B: ep(False, 2, 4)}), "x": region({})})
    assert o.inflight("us-east") == 7
    assert o.inflight("x") == 0
    assert o.inflight("absent") == 0


# --------------------------------------------------------------------------------------------
# PeerTable

MAX_AGE = 5.0
WALL = 1000.0


def table() -> PeerTable:
    return PeerTable("nyc", MAX_AGE)


def test_own_messages_are_ignored_and_not_counted() -> None:
    t = table()
    assert t.offer(obs("nyc", sent_at=WALL), now=1.0, wall=WALL) is None
    # Even a stale one of our own is none of the table's business.
    assert t.offer(obs("nyc", sent_at=WALL - 60), now=1.0, wall=WALL) is None
    assert t.fresh() == []
    assert t.received == 0
    assert not t.dropped


@pytest.mark.parametrize(
    ("sent_at", "expected"),
    [
        (WALL, None),
        (WALL - MAX_AGE, None),  # exactly max_age_s old is still fresh
        (WALL + MAX_AGE, None),
        (WALL - MAX_AGE - 0.01, Drop.STALE),  # late: queued during a NATS outage
        (WALL - 3600, Drop.STALE),
        (WALL + MAX_AGE + 0.01, Drop.STALE),  # the peer's clock far ahead
    ],
)
def test_staleness_both_ways(sent_at: float, expected: Drop | None) -> None:
    t = table()
    assert t.offer(obs("fra", sent_at=sent_at), now=1.0, wall=WALL) is expected
    if expected is None:
        assert [o.sent_at for o in t.fresh()] == [sent_at]
        assert t.received == 1
        assert not t.dropped
    else:
        assert t.fresh() == []
        assert t.received == 0
        assert t.dropped == {"stale": 1}


def test_duplicates_and_older_messages_are_ignored_not_counted() -> None:
    t = table()
    assert t.offer(obs("fra", sent_at=WALL, seq=5), now=1.0, wall=WALL) is None
    assert t.offer(obs("fra", sent_at=WALL, seq=5), now=1.1, wall=WALL) is None  # duplicate
    assert t.offer(obs("fra", sent_at=WALL, seq=4), now=1.2, wall=WALL) is None  # same tick, older
    assert t.offer(obs("fra", sent_at=WALL - 1, seq=9), now=1.3, wall=WALL) is None  # reordered
    assert [(o.sent_at, o.seq) for o in t.fresh()] == [(WALL, 5)]
    assert t.age("fra", now=2.0) == pytest.approx(1.0)  # the first one's receive time
    assert t.received == 1
    assert not t.dropped
    # Newer: same clock tick and a higher seq, then a later tick with seq reset (a restart).
    assert t.offer(obs("fra", sent_at=WALL, seq=6), now=1.4, wall=WALL) is None
    assert t.offer(obs("fra", sent_at=WALL + 1, seq=0), now=1.5, wall=WALL) is None
    assert [(o.sent_at, o.seq) for o in t.fresh()] == [(WALL + 1, 0)]
    assert t.age("fra", now=2.0) == pytest.approx(0.5)
    assert t.received == 3


def test_expire_counts_and_forgets() -> None:
    t = table()
    t.offer(obs("fra", sent_at=WALL), now=10.0, wall=WALL)
    t.offer(obs("sgp", sent_at=WALL), now=12.0, wall=WALL)
    assert t.expire(15.0) == 0  # fra is exactly max_age_s old: kept
    assert t.expire(15.5) == 1
    assert [o.edge for o in t.fresh()] == ["sgp"]
    assert t.age("fra", now=15.5) is None
    assert t.dropped == {"expired": 1}
    assert t.expire(100.0) == 1
    assert t.fresh() == []
    assert t.dropped == {"expired": 2}


def test_a_peer_clock_stepped_back_is_heard_again_once_its_old_word_expires() -> None:
    t = table()
    t.offer(obs("fra", sent_at=WALL + 3), now=10.0, wall=WALL)
    # The peer's clock steps back 3 s: its messages are "older" than the kept one...
    assert t.offer(obs("fra", sent_at=WALL + 1), now=11.0, wall=WALL + 1) is None
    assert [o.sent_at for o in t.fresh()] == [WALL + 3]
    # ...until that one expires, after which the peer's current word is taken.
    assert t.expire(15.1) == 1
    assert t.offer(obs("fra", sent_at=WALL + 5.1), now=15.1, wall=WALL + 5.1) is None
    assert [o.sent_at for o in t.fresh()] == [WALL + 5.1]


def test_fresh_is_sorted_by_edge_and_age_is_per_edge() -> None:
    t = table()
    for i, edge in enumerate(["sgp", "fra", "lon", "ams"]):
        t.offer(obs(edge, sent_at=WALL), now=float(i), wall=WALL)
    assert [o.edge for o in t.fresh()] == ["ams", "fra", "lon", "sgp"]
    assert t.age("sgp", now=4.0) == 4.0
    assert t.age("ams", now=4.0) == 1.0
    assert t.age("nyc", now=4.0) is None
    assert t.received == 4


def test_count_adds_decode_errors_to_the_same_counter() -> None:
    t = table()
    for data in (b"nope", padded(MAX_OBS_BYTES + 1)):
        with pytest.raises(ObsError) as caught:
            decode(data)
        t.count(caught.value.reason)
    t.offer(obs("fra", sent_at=0.0), now=1.0, wall=WALL)
    assert t.dropped == {"malformed": 1, "oversized": 1, "stale": 1}


# --------------------------------------------------------------------------------------------
# combine


def quorum(q: int | str) -> Callable[[int], int]:
    return FleetConfig(
        servers=("nats://h",), edge="nyc", site="nyc", state_dir="/s", quorum=q
    ).votes_needed


MAJORITY = quorum("majority")


def sees(
    edge: str, up: dict[str, bool], inflight: int = 0, region_name: str = "us-east"
) -> Observation:
    return obs(
        edge, {region_name: region({u: ep(v, 0 if v else 3, inflight) for u, v in up.items()})}
    )


def v(fleet_down: bool, down_votes: int, reporters: int, peer_inflight: int = 0) -> EndpointVerdict:
    return EndpointVerdict(fleet_down, down_votes, reporters, peer_inflight)


COMBINE: list[tuple[str, bool, list[Observation], Callable[[int], int], EndpointVerdict]] = [
    # No data from others never means "down", whatever the quorum.
    ("alone, up", True, [], MAJORITY, v(False, 0, 1)),
    ("alone, down", False, [], MAJORITY, v(False, 1, 1)),
    ("alone, down, quorum 1", False, [], quorum(1), v(False, 1, 1)),
    # A quorum of 0 is never configurable; even so, peers all up never mean "down".
    ("quorum 0, peers up", True, [sees("fra", {A: True})], lambda n: 0, v(False, 0, 2)),
    # Three edges, majority (2 of 3).
    (
        "3: one peer down",
        True,
        [sees("fra", {A: False}), sees("sgp", {A: True})],
        MAJORITY,
        v(False, 1, 3),
    ),
    (
        "3: two peers down",
        True,
        [sees("fra", {A: False}), sees("sgp", {A: False})],
        MAJORITY,
        v(True, 2, 3),
    ),
    # Own down takes it out already; the verdict counts peers as if this edge saw it up.
    (
        "3: own + one peer down",
        False,
        [sees("fra", {A: False}), sees("sgp", {A: True})],
        MAJORITY,
        v(False, 2, 3),
    ),
    (
        "3: own + two peers down",
        False,
        [sees("fra", {A: False}), sees("sgp", {A: False})],
        MAJORITY,
        v(True, 3, 3),
    ),
    # A fixed quorum is not lowered when fewer edges report.
    ("quorum 2, one peer down", True, [sees("fra", {A: False})], quorum(2), v(False, 1, 2)),
    ("quorum 2, own + one peer down", False, [sees("fra", {A: False})], quorum(2), v(False, 2, 2)),
    (
        "quorum 2, two peers down",
        True,
        [sees("fra", {A: False}), sees("sgp", {A: False})],
        quorum(2),
        v(True, 2, 3),
    ),
    (
        "quorum 1, one peer of two down",
        True,
        [sees("fra", {A: False}), sees("sgp", {A: True})],
        quorum(1),
        v(True, 1, 3),
    ),
    # Five edges, majority (3 of 5).
    (
        "5: two peers down",
        True,
        [sees(e, {A: e in "fra sgp"}) for e in ("fra", "sgp", "lon", "ams")],
        MAJORITY,
        v(False, 2, 5),
    ),
    (
        "5: three peers down",
        True,
        [sees(e, {A: e == "ams"}) for e in ("fra", "sgp", "lon", "ams")],
        MAJORITY,
        v(True, 3, 5),
    ),
    (
        "5: own + two peers down",
        False,
        [sees(e, {A: e in "fra sgp"}) for e in ("fra", "sgp", "lon", "ams")],
        MAJORITY,
        v(False, 3, 5),
    ),
    # Peers never bring an endpoint up: nothing in the verdict says "up".
    ("peer up, own down", False, [sees("fra", {A: True})], MAJORITY, v(False, 1, 2)),
    (
        "all peers up, own down",
        False,
        [sees(e, {A: True}) for e in ("fra", "sgp", "lon")],
        quorum(1),
        v(False, 1, 4),
    ),
    # Only the peers that report on the endpoint count: silent ones shrink the majority.
    (
        "2 of 3 reporters down",
        True,
        [
            sees("fra", {A: False}),
            sees("sgp", {A: False}),
            sees("lon", {B: True}),
            sees("ams", {B: True}),
        ],
        MAJORITY,
        v(True, 2, 3),
    ),
    (
        "in-flight sums",
        True,
        [sees("fra", {A: True}, inflight=3), sees("sgp", {A: False}, inflight=4)],
        MAJORITY,
        v(False, 1, 3, 7),
    ),
]


@pytest.mark.parametrize(
    ("own", "peers", "votes_needed", "expected"),
    [c[1:] for c in COMBINE],
    ids=[c[0] for c in COMBINE],
)
def test_combine(
    own: bool,
    peers: list[Observation],
    votes_needed: Callable[[int], int],
    expected: EndpointVerdict,
) -> None:
    assert combine({A: own}, peers, votes_needed) == {A: expected}


def test_combine_is_keyed_by_own_endpoints_only() -> None:
    peers = [
        obs("fra", {"us-east": region({A: ep(False, 3, 1), C: ep(False, 9, 50)})}),
        # Another region key for the same URL (a peer on another revision): matched by URL.
        obs(
            "sgp", {"us-east-renamed": region({A: ep(False, 1, 2), "http://unknown:1": ep(False)})}
        ),
    ]
    got = combine({A: True, B: True}, peers, MAJORITY)
    assert got == {A: v(True, 2, 3, 3), B: v(False, 0, 1, 0)}


def test_a_url_under_two_regions_of_one_peer_is_one_report() -> None:
    up, down = region({A: ep(True, 0, 2)}), region({A: ep(False, 4, 5)})
    for twice in (obs("fra", {"r1": up, "r2": down}), obs("fra", {"r1": down, "r2": up})):
        # Down if either entry says so, in whichever order they come.
        assert combine({A: True}, [twice], quorum(1)) == {A: v(True, 1, 2, 7)}
        assert combine({A: True}, [twice, sees("sgp", {A: True})], MAJORITY) == {
            A: v(False, 1, 3, 7)
        }


def test_combine_with_the_table_of_a_live_fleet() -> None:
    """The table feeds combine: a peer that goes quiet stops counting once it expires."""
    t = PeerTable("nyc", MAX_AGE)
    t.offer(sees("fra", {A: False}), now=0.0, wall=WALL)
    t.offer(sees("sgp", {A: False}), now=3.0, wall=WALL)
    assert combine({A: True}, t.fresh(), MAJORITY)[A].fleet_down
    t.expire(5.5)  # fra heard last 5.5 s ago
    assert combine({A: True}, t.fresh(), MAJORITY) == {A: v(False, 1, 2)}
