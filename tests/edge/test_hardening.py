"""Trust and residency hardening: no header a client sends lets it leave its jurisdiction.

Every test goes through real sockets: the in-process harness (a real worker, real upstreams)
or, where the default settings matter, a real `gslb serve` process.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gslb.edge.geoip import GeoIP
from gslb.edge.server import Worker
from gslb.ops.control import merge_status
from tests.fleet import fleet_config
from tests.harness import FRANKFURT, NEW_YORK, NOWHERE, PARIS, TORONTO, stack
from tests.mmdb_fixtures import write_world_mmdb
from tests.ops.test_serve import served

CHAT = {"model": "fake-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
CANADA = {"ca-central", "ca-west"}
EU = {"eu-central", "eu-west"}
# Every way a client might claim an address in the US (NEW_YORK) or none at all.
SPOOFS = [
    {"Forwarded": f"for={NEW_YORK}"},
    {"Forwarded": "for=unknown"},
    {"Forwarded": 'for="_hidden"'},
    {"X-Real-IP": NEW_YORK},
    {"True-Client-IP": NEW_YORK},
    {"CF-Connecting-IP": NEW_YORK},
]


async def test_spoofed_address_headers_never_move_a_pinned_client_real_serve(
    tmp_path: Path,
) -> None:
    # Default settings; 127.0.0.1 is the trusted front proxy that appended X-Forwarded-For and
    # passed the client's own other headers through, as nginx, Envoy and cloud LBs do.
    async with served(tmp_path, 1) as (_, url, _admin, _cfg, fakes):
        async with aiohttp.ClientSession() as c:
            for client, allowed in ((TORONTO, CANADA), (FRANKFURT, EU), (PARIS, EU)):
                for spoof in SPOOFS:
                    headers = {**spoof, "X-Forwarded-For": client}
                    async with c.post(
                        url + "/v1/chat/completions", json=CHAT, headers=headers
                    ) as r:
                        assert r.status == 200, (client, spoof)
                        assert r.headers["X-GSLB-Region"] in allowed, (client, spoof)
            # The same spoofs with no X-Forwarded-For at all: the client is the proxy itself
            # (no location), bound by the edge country's rules, never by what it claims.
            before = fakes["us-east"].stats.requests_total
            async with c.get(url + "/v1/models", headers=SPOOFS[0]) as r:
                assert r.status == 200
                assert r.headers["X-GSLB-Region"] == "us-east"  # nearest to the New York edge
            assert fakes["us-east"].stats.requests_total == before + 1


@pytest.mark.parametrize("spoof", SPOOFS)
async def test_residency_holds_under_faults_whatever_the_client_claims(
    tmp_path: Path, spoof: dict[str, str]
) -> None:
    # ca-central answers 503 and the US regions are healthy next door: the retry and the
    # final answer stay in Canada (the standby is not a fallback while an active one serves).
    async with stack(tmp_path, scripted=("ca-central", "us-east", "us-west")) as s:
        s.upstreams["ca-central"].mode = "503"
        async with s.request("GET", "/v1/x", TORONTO, headers=spoof) as r:
            assert r.status == 503
            assert r.headers["X-GSLB-Region"] == "ca-central"
        assert s.upstreams["us-east"].hits == 0 and s.upstreams["us-west"].hits == 0


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("forwarded", f"for={TORONTO}"),
        ("x-real-ip", TORONTO),
        ("true-client-ip", TORONTO),
        ("cf-connecting-ip", TORONTO),
    ],
)
async def test_the_configured_header_alone_decides(tmp_path: Path, header: str, value: str) -> None:
    geoip = f'forwarded_header = "{header}"\n'
    async with stack(tmp_path, geoip=geoip) as s:
        # The configured header places the client in Toronto...
        async with s.request("GET", "/v1/models", headers={header: value}) as r:
            assert r.headers["X-GSLB-Region"] == "ca-central"
        # ...and X-Forwarded-For, not configured, decides nothing even from a trusted peer.
        async with s.request("GET", "/v1/models", FRANKFURT, headers={header: value}) as r:
            assert r.headers["X-GSLB-Region"] == "ca-central"
        async with s.request("GET", "/v1/models", FRANKFURT) as r:
            assert r.headers["X-GSLB-Region"] == "us-east"  # unplaced: the New York edge


async def test_address_headers_from_untrusted_peers_do_not_reach_the_upstream(
    tmp_path: Path,
) -> None:
    claims = {
        "X-Forwarded-For": TORONTO,
        "Forwarded": f"for={TORONTO}",
        "X-Real-IP": TORONTO,
        "True-Client-IP": TORONTO,
        "CF-Connecting-IP": TORONTO,
    }
    async with stack(tmp_path, trusted=("10.99.0.0/16",)) as s:
        async with s.request("GET", "/echo", headers=claims) as r:
            seen = {k.lower(): v for k, v in (await r.json())["headers"]}
        assert seen["x-forwarded-for"] == "127.0.0.1"
        for name in ("forwarded", "x-real-ip", "true-client-ip", "cf-connecting-ip"):
            assert name not in seen, name
    # From a trusted peer they pass through unchanged (the upstream may use them).
    async with stack(tmp_path / "trusted") as s:
        async with s.request("GET", "/echo", headers=claims) as r:
            seen = {k.lower(): v for k, v in (await r.json())["headers"]}
        assert seen["x-real-ip"] == TORONTO and seen["forwarded"] == f"for={TORONTO}"
        assert seen["x-forwarded-for"] == f"{TORONTO}, 127.0.0.1"


# --- clients that cannot be placed ------------------------------------------------------


async def test_unplaceable_client_gets_the_edge_countrys_residency(tmp_path: Path) -> None:
    # A Canadian edge whose coordinates are Frankfurt's: an unplaceable client must stay in
    # Canada although eu-central is nearest to the edge.
    geoip = 'edge_country = "CA"\nedge_location = [50.11, 8.68]\n'
    async with stack(tmp_path, geoip=geoip) as s:
        for headers in ({"X-Forwarded-For": NOWHERE}, {"X-Forwarded-For": "unknown"}, {}):
            async with s.request("GET", "/v1/models", headers=headers) as r:
                assert r.status == 200
                assert r.headers["X-GSLB-Region"] in CANADA, headers


async def test_unplaceable_client_denied_when_the_operator_says_so(tmp_path: Path) -> None:
    async with stack(tmp_path, extra='[routing]\nunknown_location = "deny"\n') as s:
        async with s.request("GET", "/v1/models", NOWHERE) as r:
            assert r.status == 503
            doc = await r.json()
            assert doc["error"] == "client_unplaceable" and doc["request_id"]
        assert s.recorder.denials[-1] == ("unplaceable", ())
        async with s.request("GET", "/v1/models", TORONTO) as r:
            assert r.headers["X-GSLB-Region"] == "ca-central"


async def test_unplaceable_client_unrestricted_only_by_choice(tmp_path: Path) -> None:
    extra = '[routing]\nunknown_location = "unrestricted"\n'
    geoip = 'edge_country = "CA"\nedge_location = [50.11, 8.68]\n'
    async with stack(tmp_path, extra=extra, geoip=geoip) as s:
        async with s.request("GET", "/v1/models", NOWHERE) as r:
            assert r.headers["X-GSLB-Region"] == "eu-central"


# --- denials name the real cause ---------------------------------------------------------


async def test_a_clients_own_narrowing_is_not_blamed_on_residency(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        async with s.request("GET", "/v1/models", TORONTO, headers={"X-GSLB-Residency": "US"}) as r:
            assert r.status == 503
            doc = await r.json()
        assert doc["error"] == "no_eligible_region"
        assert "X-GSLB-Residency" in doc["message"] and "residency rule" not in doc["message"]
        assert s.recorder.denials[-1] == ("narrowed", ())
        async with s.client.get(s.admin_url + "/metrics") as r:
            text = await r.text()
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        assert samples[("gslb_denied_total", (("cause", "narrowed"),))] == 1
        assert samples[("gslb_denied_total", (("cause", "residency"),))] == 0
        assert ("gslb_residency_denied_total", (("rule", "canada"),)) not in samples


# --- retries -----------------------------------------------------------------------------


async def test_the_last_candidates_answer_reaches_the_client(tmp_path: Path) -> None:
    # Toronto's only candidate is ca-central (the standby is not a fallback): its 503, with
    # Retry-After and body, is the answer, not gslb's own 502.
    async with stack(tmp_path, scripted=("ca-central",)) as s:
        s.upstreams["ca-central"].mode = "503"
        async with s.request("GET", "/v1/x", TORONTO) as r:
            assert r.status == 503
            assert r.headers["Retry-After"] == "7"
            assert await r.json() == {"busy": "ca-central"}
        assert s.upstreams["ca-central"].hits == 1
        assert s.recorder.records[-1].retries == ()


async def test_a_retryable_answer_is_retried_while_another_candidate_exists(
    tmp_path: Path,
) -> None:
    async with stack(tmp_path, scripted=("us-east", "us-west", "ca-central")) as s:
        s.upstreams["us-east"].mode = "503"
        async with s.request("GET", "/v1/x", NEW_YORK) as r:
            assert r.status == 200
            second = r.headers["X-GSLB-Region"]
        assert second in {"us-west", "ca-central"}
        assert s.recorder.records[-1].retries == ("http_503",)
        # Both candidates answer 503: the second one's answer is relayed as is.
        for name in ("us-west", "ca-central"):
            s.upstreams[name].mode = "503"
        async with s.request("GET", "/v1/x", NEW_YORK) as r:
            assert r.status == 503 and r.headers["Retry-After"] == "7"
            assert (await r.json())["busy"] in {"us-west", "ca-central"}


# --- WebSocket: the same header rules as HTTP, and an idle bound ------------------------


async def test_websocket_handshake_follows_the_proxy_header_rules(tmp_path: Path) -> None:
    spoofed = {
        "X-Forwarded-For": FRANKFURT,
        "Forwarded": f"for={FRANKFURT}",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
        "X-Real-IP": FRANKFURT,
        "Connection": "Upgrade, X-Secret-Hop",
        "X-Secret-Hop": "1",
        "X-GSLB-Residency": "US",
        "Authorization": "Bearer end-to-end",
    }
    async with stack(tmp_path, scripted=("us-east",), trusted=("10.99.0.0/16",)) as s:
        async with s.client.ws_connect(s.url + "/ws", headers=spoofed) as ws:
            await ws.send_str("hi")
            assert (await ws.receive_str()) == "us-east:hi"
        seen = {k.lower(): v for k, v in s.upstreams["us-east"].last_headers}
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == f"127.0.0.1:{s.worker.port}"
    assert seen["via"] == "1.1 gslb"
    assert seen["x-request-id"]
    assert seen["authorization"] == "Bearer end-to-end"
    for gone in ("forwarded", "x-real-ip", "x-secret-hop", "x-gslb-residency"):
        assert gone not in seen, gone


async def test_idle_websocket_is_closed_and_a_busy_one_is_not(tmp_path: Path) -> None:
    extra = "[proxy]\nidle_timeout_s = 0.4\n"
    async with stack(tmp_path, scripted=("eu-central",), extra=extra) as s:
        headers = {"X-Forwarded-For": FRANKFURT}
        async with s.client.ws_connect(s.url + "/ws", headers=headers) as ws:
            # Talking every 0.15 s for 1 s: never idle for 0.4 s.
            for i in range(7):
                await ws.send_str(str(i))
                assert (await ws.receive_str()) == f"eu-central:{i}"
                await asyncio.sleep(0.15)
            # Then silence: gslb closes it.
            started = time.monotonic()
            msg = await ws.receive(timeout=5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert time.monotonic() - started < 2.0


# --- /status across workers ---------------------------------------------------------------


def test_status_merge_counts_a_reported_load_once_per_edge(tmp_path: Path) -> None:
    mmdb = tmp_path / "world.mmdb"
    write_world_mmdb(str(mmdb))
    cfg = fleet_config(region_extra={"us-east": "capacity = 20"})
    docs = []
    for seed in range(4):  # four workers of one edge, each reading the same server report
        worker = Worker(cfg, geoip=GeoIP(str(mmdb)), rnd=random.Random(seed), clock=lambda: 5.0)
        fleet = worker.runtime.fleet
        us_east = fleet.regions[0]
        ep = us_east.endpoints[0]
        ep.reported_load, ep.reported_at = 10.0, 5.0
        fleet.acquire(ep)  # one request of this worker in flight there
        fleet.refresh_region(us_east, 5.0)
        docs.append(worker.status())
    merged = merge_status(docs, 4)
    region = next(r for r in merged["regions"] if r["name"] == "us-east")
    assert region["inflight"] == 4  # our own requests do add up
    assert region["load"] == 10.0  # the server's report does not: 10, not 40
    assert region["util"] == 0.5
    assert region["endpoints"][0]["reported_load"] == 10.0
    # Five in flight across workers over a report of 4: our count is the floor.
    for doc in docs:
        r = next(r for r in doc["regions"] if r["name"] == "us-east")
        r["endpoints"][0]["reported_load"] = 4.0
        r["endpoints"][0]["inflight"] = 2
    region = next(r for r in merge_status(docs, 4)["regions"] if r["name"] == "us-east")
    assert region["load"] == 8.0
