"""The fleet on ``/metrics``: families built from ``FleetAgent.status()`` at scrape time.

Unit tests read the page back through prometheus_client's own parser; the end-to-end test runs
two real ``gslb serve`` edges (one worker, and two workers behind the supervisor) on a real
nats-server and reads what an operator sees: ``/metrics``, ``/status`` and ``gslb fleet status``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gslb.core.fleet import FleetState
from gslb.ops.fleetmetrics import MAX_EDGES, fleet_exposition
from gslb.ops.metrics import Metrics, merge_expositions
from tests.fleet import fleet_config
from tests.ops.test_fleetcli import fleet as fleet_cli
from tests.ops.test_fleetserve import document, edge_file, push, ready, until, world

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
DROP_REASONS = ("oversized", "malformed", "stale", "expired")

STATUS: dict[str, Any] = {
    "edge": "nyc",
    "site": "new-york",
    "revision": 3,
    "digest": "ab" * 32,
    "error": None,
    "connected": True,
    "quorum": "majority",
    "max_age_s": 5.0,
    "peers": 2,
    "edges": [
        {"edge": "fra", "site": "frankfurt", "revision": 3, "age_s": 0.41, "self": False},
        {"edge": "nyc", "site": "new-york", "revision": 3, "age_s": 0.0, "self": True},
        {"edge": "sgp", "site": "singapore", "revision": 2, "age_s": 1.5, "self": False},
    ],
    "received_total": 120,
    "dropped_total": {"oversized": 0, "malformed": 1, "stale": 4, "expired": 2},
    "published_total": 60,
    "regions": {
        "us-east": {
            "reporters": 3,
            "see_up": 3,
            "agree": True,
            "fleet_down_endpoints": 0,
            "peer_inflight": 4,
        },
        "ca-central": {
            "reporters": 3,
            "see_up": 1,
            "agree": False,
            "fleet_down_endpoints": 1,
            "peer_inflight": 0,
        },
    },
}


def samples(text: bytes) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def named(got: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in got.items() if n == name}


def region(got: Samples, family: str, name: str) -> float:
    return got[(f"gslb_fleet_region_{family}", (("region", name),))]


def test_every_family_from_a_full_status() -> None:
    text = fleet_exposition(STATUS)
    got = samples(text)
    assert got[("gslb_fleet_connected", ())] == 1
    assert got[("gslb_fleet_revision", ())] == 3
    assert got[("gslb_fleet_peers", ())] == 2
    assert got[("gslb_fleet_observations_received_total", ())] == 120
    assert got[("gslb_fleet_observations_published_total", ())] == 60
    assert named(got, "gslb_fleet_observations_dropped_total") == {
        (("reason", "oversized"),): 0,
        (("reason", "malformed"),): 1,
        (("reason", "stale"),): 4,
        (("reason", "expired"),): 2,
    }
    assert region(got, "reporters", "us-east") == 3
    assert region(got, "see_up", "ca-central") == 1
    assert region(got, "agree", "us-east") == 1
    assert region(got, "agree", "ca-central") == 0
    assert region(got, "fleet_down_endpoints", "ca-central") == 1
    assert region(got, "peer_inflight", "us-east") == 4
    assert named(got, "gslb_fleet_edge_age_seconds") == {
        (("edge", "fra"), ("site", "frankfurt")): 0.41,
        (("edge", "nyc"), ("site", "new-york")): 0.0,
        (("edge", "sgp"), ("site", "singapore")): 1.5,
    }
    types = {f.name: f.type for f in text_string_to_metric_families(text.decode())}
    assert types["gslb_fleet_observations_dropped"] == "counter"
    assert types["gslb_fleet_observations_received"] == "counter"
    assert types["gslb_fleet_peers"] == "gauge"
    assert types["gslb_fleet_edge_age_seconds"] == "gauge"
    # No digest, no error text, no quorum setting: figures only.
    assert b"ab" * 32 not in text and b"majority" not in text


def test_before_the_first_beat_only_the_agents_keys() -> None:
    # FleetAgent.status() without a vantage, or before the health beat: no peers' keys at all.
    got = samples(
        fleet_exposition(
            {"edge": "nyc", "site": "nyc", "revision": None, "error": None, "connected": False}
        )
    )
    assert got[("gslb_fleet_connected", ())] == 0
    assert got[("gslb_fleet_revision", ())] == 0
    assert got[("gslb_fleet_peers", ())] == 0
    assert got[("gslb_fleet_observations_received_total", ())] == 0
    assert named(got, "gslb_fleet_observations_dropped_total") == {
        (("reason", r),): 0 for r in DROP_REASONS
    }
    assert not named(got, "gslb_fleet_region_reporters")
    assert not named(got, "gslb_fleet_edge_age_seconds")


def test_wrong_types_read_as_zero_or_are_left_out() -> None:
    status = copy.deepcopy(STATUS)
    status.update(
        connected="yes",
        revision=True,
        peers=math.nan,
        received_total=-5,
        published_total="60",
        dropped_total={"malformed": 2.0, "stale": None, "bogus": 9},
    )
    status["regions"]["us-east"]["agree"] = 1  # not True
    status["regions"]["us-east"]["see_up"] = math.inf
    status["regions"]["bad"] = ["not", "a", "mapping"]
    status["edges"] += [
        "junk",
        {"edge": 7, "site": "x"},
        {"edge": "", "site": "x"},
        {"edge": "fra", "site": "elsewhere", "age_s": 9.0},  # the same edge twice: once
        {"edge": "lis", "age_s": "old"},
    ]
    got = samples(fleet_exposition(status))
    for name in ("connected", "revision", "peers"):
        assert got[(f"gslb_fleet_{name}", ())] == 0, name
    assert got[("gslb_fleet_observations_received_total", ())] == 0
    assert got[("gslb_fleet_observations_published_total", ())] == 0
    assert named(got, "gslb_fleet_observations_dropped_total") == {
        (("reason", "oversized"),): 0,
        (("reason", "malformed"),): 2,
        (("reason", "stale"),): 0,
        (("reason", "expired"),): 0,
    }
    assert region(got, "agree", "us-east") == 0 and region(got, "see_up", "us-east") == 0
    assert set(named(got, "gslb_fleet_region_reporters")) == {
        (("region", "us-east"),),
        (("region", "ca-central"),),
    }
    assert named(got, "gslb_fleet_edge_age_seconds") == {
        (("edge", "fra"), ("site", "frankfurt")): 0.41,
        (("edge", "nyc"), ("site", "new-york")): 0.0,
        (("edge", "sgp"), ("site", "singapore")): 1.5,
        (("edge", "lis"), ("site", "")): 0.0,
    }
    # Not even a mapping where one belongs: the families are there, empty or zero.
    got = samples(fleet_exposition({"regions": [1, 2], "edges": {"a": 1}, "dropped_total": 3}))
    assert not named(got, "gslb_fleet_region_agree")
    assert not named(got, "gslb_fleet_edge_age_seconds")
    assert sum(named(got, "gslb_fleet_observations_dropped_total").values()) == 0


def test_edges_are_capped_and_nothing_lingers() -> None:
    status = copy.deepcopy(STATUS)
    status["edges"] = [
        {"edge": f"e{i:04}", "site": f"s{i}", "age_s": i / 100} for i in range(MAX_EDGES + 50)
    ]
    ages = named(samples(fleet_exposition(status)), "gslb_fleet_edge_age_seconds")
    assert len(ages) == MAX_EDGES == 256
    assert (("edge", "e0000"), ("site", "s0")) in ages
    assert (("edge", "e0256"), ("site", "s256")) not in ages
    # A scrape reads the status of its moment: an edge gone from it is gone from the page.
    status["edges"] = status["edges"][:1]
    ages = named(samples(fleet_exposition(status)), "gslb_fleet_edge_age_seconds")
    assert list(ages) == [(("edge", "e0000"), ("site", "s0"))]


def test_merged_with_the_workers_page_both_stay() -> None:
    worker = Metrics(lambda: FleetState(fleet_config(urls={"us-east": ["http://a:8000"]})))
    page = worker.exposition()
    merged = samples(merge_expositions([page, fleet_exposition(STATUS)]))
    for key, v in samples(page).items():
        assert merged[key] == v, key
    for key, v in samples(fleet_exposition(STATUS)).items():
        assert merged[key] == v, key
    state = ("region", "us-east"), ("endpoint", "http://a:8000")
    assert merged[("gslb_endpoint_state", (state[1], state[0], ("state", "fleet_down")))] == 0
    assert merged[("gslb_endpoint_state", (state[1], state[0], ("state", "up")))] == 1


# -- end to end -----------------------------------------------------------------------------


async def scrape(c: aiohttp.ClientSession, base: str) -> Samples:
    async with c.get(base + "/metrics") as r:
        assert r.status == 200
        return samples(await r.read())


async def status_of(c: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with c.get(base + "/status") as r:
        assert r.status == 200
        doc: dict[str, Any] = await r.json()
        return doc


async def test_two_edges_see_each_other_on_metrics_status_and_the_cli(tmp_path: Path) -> None:
    async with world(tmp_path) as (nats, urls, mmdb), aiohttp.ClientSession() as c:
        edges = [edge_file(tmp_path, name, mmdb, nats) for name in ("nyc", "fra")]
        edges[1].workers = 2  # the supervisor's wiring as well as a lone worker's
        for edge in edges:
            # A fast beat, so that peers are heard and forgotten within the test's seconds.
            with edge.config.open("a") as f:
                f.write(f'site = "{edge.name}-site"\npublish_interval_s = 0.2\nmax_age_s = 1.0\n')
        rev = await push(nats, document(urls))
        try:
            await asyncio.gather(*(asyncio.to_thread(e.start) for e in edges))
            for edge in edges:
                await until(partial(ready, c, edge), 30, 0.1)

            async def each_hears_the_other() -> bool:
                pages = [await scrape(c, e.admin) for e in edges]
                return all(p.get(("gslb_fleet_peers", ())) == 1 for p in pages)

            await until(each_hears_the_other, 30, 0.1)
            for edge, other in (edges, edges[::-1]):
                got = await scrape(c, edge.admin)
                assert got[("gslb_fleet_connected", ())] == 1
                assert got[("gslb_fleet_revision", ())] == rev
                assert got[("gslb_fleet_observations_received_total", ())] >= 1
                assert got[("gslb_fleet_observations_published_total", ())] >= 1
                assert len(named(got, "gslb_fleet_observations_dropped_total")) == 4
                ages = named(got, "gslb_fleet_edge_age_seconds")
                mine = (("edge", edge.name), ("site", f"{edge.name}-site"))
                theirs = (("edge", other.name), ("site", f"{other.name}-site"))
                assert ages[mine] == 0 and 0 <= ages[theirs] <= 1.0
                for name in ("us-east", "ca-central"):
                    assert region(got, "reporters", name) == 2
                    assert region(got, "see_up", name) == 2
                    assert region(got, "agree", name) == 1
                    assert region(got, "fleet_down_endpoints", name) == 0
                # The workers' own families are still on the page, fleet_down among the states.
                states = named(got, "gslb_endpoint_state")
                assert {dict(k)["state"] for k in states} >= {"up", "fleet_down"}
                assert sum(v for k, v in states.items() if dict(k)["state"] == "up") == 2

                fleet = (await status_of(c, edge.admin))["fleet"]
                assert (fleet["edge"], fleet["site"], fleet["revision"]) == (
                    edge.name,
                    f"{edge.name}-site",
                    rev,
                )
                assert {e["edge"] for e in fleet["edges"]} == {"nyc", "fra"}
                assert fleet["regions"]["us-east"]["agree"] is True

            # Each edge's own view of each region, as `gslb fleet status` shows it.
            async def both_report_regions() -> bool:
                run = await fleet_cli(nats, "status", "--json")
                doc = json.loads(run.out)
                return all(e["regions"] for e in doc["edges"]) and len(doc["edges"]) == 2

            await until(both_report_regions, 30, 0.2)
            as_json, table = await asyncio.gather(
                fleet_cli(nats, "status", "--json"), fleet_cli(nats, "status")
            )
            one = {"endpoints": 1, "up": 1, "fleet_down": 0}
            for e in json.loads(as_json.out)["edges"]:
                assert e["regions"] == {"us-east": one, "ca-central": one}, e
            rows = table.out.splitlines()[2:]
            assert len(rows) == 2 and all("us-east 1/1 ca-central 1/1" in r for r in rows)

            # An edge that goes away leaves no series behind on the other.
            edges[1].stop()

            async def forgotten() -> bool:
                got = await scrape(c, edges[0].admin)
                ages = named(got, "gslb_fleet_edge_age_seconds")
                return got[("gslb_fleet_peers", ())] == 0 and len(ages) == 1

            await until(forgotten, 30, 0.1)
        finally:
            for edge in edges:
                edge.stop()
        for edge in edges:
            assert "Traceback" not in edge.log_text(), edge.log_text()[-3000:]
