"""Operating gslb: metrics after real traffic, the admin API, drains, hot reload, no user data."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gslb.sim.fakeregion import FakeRegionOptions
from tests.fakes import report_load
from tests.harness import FRANKFURT, NEW_YORK, TORONTO, Stack, stack

CHAT = {"model": "fake-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
TOKEN = "s3cret-admin-token"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape(s: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with s.client.get(s.admin_url + "/metrics") as resp:
        assert resp.status == 200
        return samples(await resp.text())


async def admin(s: Stack, method: str, path: str, token: str | None = TOKEN, **kw: object):  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with s.client.request(method, s.admin_url + path, headers=headers, **kw) as resp:  # type: ignore[arg-type]
        return resp.status, orjson.loads(await resp.read())


async def test_metrics_count_real_traffic(tmp_path: Path) -> None:
    async with stack(tmp_path, region_extra={"us-east": "capacity = 1"}) as s:
        for ip in (TORONTO, TORONTO, NEW_YORK, FRANKFURT):
            async with s.request("POST", "/v1/chat/completions", ip, json=CHAT) as r:
                assert r.status == 200
        async with s.request("GET", "/v1/models", TORONTO, headers={"X-GSLB-Residency": "US"}):
            pass  # a Canadian asking for the US: its own header emptied its allowed set
        m = await scrape(s)
        req = "gslb_requests_total"
        assert m[(req, (("code", "2xx"), ("region", "ca-central"), ("route", "local")))] == 2
        assert m[(req, (("code", "2xx"), ("region", "us-east"), ("route", "local")))] == 1
        assert m[(req, (("code", "2xx"), ("region", "eu-central"), ("route", "local")))] == 1
        assert m[(req, (("code", "5xx"), ("region", "none"), ("route", "no-region")))] == 1
        # Counted as narrowed, not against the canada rule (the request did it to itself).
        assert m[("gslb_denied_total", (("cause", "narrowed"),))] == 1
        assert ("gslb_residency_denied_total", (("rule", "canada"),)) not in m
        assert m[("gslb_ttfb_seconds_count", (("region", "ca-central"),))] == 2
        assert m[("gslb_request_duration_seconds_count", (("region", "eu-central"),))] == 1
        assert m[("gslb_decision_seconds_count", ())] == 5
        assert m[("gslb_inflight", (("region", "ca-central"),))] == 0
        assert m[("gslb_region_routable", (("region", "ca-central"),))] == 1
        state = next(k for k in m if k[0] == "gslb_endpoint_state" and ("state", "up") in k[1])
        assert m[state] == 1
        assert m[("gslb_geoip_lookups_total", (("result", "found"),))] >= 3


async def test_status_and_explain_reflect_live_state(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        code, doc = await admin(s, "GET", "/status", token=None)
        assert code == 200 and doc["ready"] is True and doc["workers"] == 1
        names = [r["name"] for r in doc["regions"]]
        assert "ca-central" in names
        ca = doc["regions"][names.index("ca-central")]
        assert ca["location"] == [45.5, -73.57] and ca["endpoints"][0]["state"] == "up"
        report_load(s.worker, s.fakes["ca-central"].url, 100.0)  # a deep queue at the server
        code, doc = await admin(s, "GET", f"/explain?ip={TORONTO}&budget_ms=50", token=None)
        assert code == 200
        assert (doc["region"], doc["reason"]) == ("ca-central", "local-queued")
        assert doc["budget_ms"] == 50
        code, doc = await admin(s, "GET", "/explain?ip=nope", token=None)
        assert code == 400 and doc["error"] == "bad_request"
        async with s.client.get(s.admin_url + "/healthz") as r:
            assert r.status == 200
        async with s.client.get(s.admin_url + "/readyz") as r:
            assert r.status == 200


async def test_mutations_need_the_token(tmp_path: Path) -> None:
    async with stack(tmp_path, admin_token=TOKEN) as s:
        body = {"json": {"region": "us-east"}}
        assert (await admin(s, "POST", "/drain", token=None, **body))[0] == 401
        assert (await admin(s, "POST", "/drain", token="wrong", **body))[0] == 401
        assert (await admin(s, "POST", "/reload", token="wrong"))[0] == 401
        assert not s.worker.runtime.fleet.regions[0].draining
        code, doc = await admin(s, "POST", "/drain", **body)
        assert code == 200 and doc["draining"] is True
        assert s.worker.runtime.fleet.regions[0].draining
        code, doc = await admin(s, "POST", "/drain", json={"region": "mars"})
        assert code == 404
        code, doc = await admin(s, "POST", "/drain", json={"region": "a", "node": "b"})
        assert code == 400
    async with stack(tmp_path / "b", admin_token=None) as s:
        code, doc = await admin(s, "POST", "/drain", json={"region": "us-east"})
        assert code == 403 and doc["error"] == "forbidden"


async def test_drain_stops_new_requests_and_lets_streams_finish(tmp_path: Path) -> None:
    slow = FakeRegionOptions(name="us-east", tokens_per_s=20)
    async with stack(tmp_path, admin_token=TOKEN, fake_options={"us-east": slow}) as s:
        stream = await s.request(
            "POST",
            "/v1/chat/completions",
            NEW_YORK,
            json={**CHAT, "stream": True, "max_tokens": 10},
        )
        assert stream.headers["X-GSLB-Region"] == "us-east"
        code, doc = await admin(s, "POST", "/drain", json={"region": "us-east"})
        assert code == 200 and doc["inflight"] == 1 and doc["drained"] is False
        async with s.request("POST", "/v1/chat/completions", NEW_YORK, json=CHAT) as r:
            assert r.headers["X-GSLB-Region"] != "us-east"
        body = await stream.read()
        assert body.rstrip().endswith(b"data: [DONE]")  # the running stream finished whole
        stream.close()
        code, doc = await admin(s, "POST", "/drain", json={"region": "us-east"})
        assert doc["inflight"] == 0 and doc["drained"] is True
        await admin(s, "POST", "/undrain", json={"region": "us-east"})
        async with s.request("POST", "/v1/chat/completions", NEW_YORK, json=CHAT) as r:
            assert r.headers["X-GSLB-Region"] == "us-east"


async def test_bad_reload_keeps_serving_the_old_config(tmp_path: Path) -> None:
    async with stack(tmp_path, admin_token=TOKEN) as s:
        assert s.config_path is not None
        good = s.config_path.read_text()
        s.config_path.write_text(good.replace("capacity = 10", "capacity = -3", 1))
        code, doc = await admin(s, "POST", "/reload")
        assert code == 422 and doc["ok"] is False
        assert "regions[0].capacity" in doc["error"] and doc["generation"] == 0
        async with s.request("GET", "/v1/models", NEW_YORK) as r:
            assert r.status == 200
        m = await scrape(s)
        assert m[("gslb_config_reloads_total", (("result", "error"),))] == 1


async def test_good_reload_under_load_drops_nothing(tmp_path: Path) -> None:
    slow = FakeRegionOptions(name="us-east", tokens_per_s=40)
    async with stack(tmp_path, admin_token=TOKEN, fake_options={"us-east": slow}) as s:
        assert s.config_path is not None
        results: list[int] = []
        streams_ok: list[bool] = []
        stop = asyncio.Event()

        async def steady() -> None:
            while not stop.is_set():
                async with s.request("GET", "/v1/models", NEW_YORK) as r:
                    results.append(r.status)

        async def one_stream() -> None:
            async with s.request(
                "POST",
                "/v1/chat/completions",
                NEW_YORK,
                json={**CHAT, "stream": True, "max_tokens": 12},
            ) as r:
                body = await r.read()
                streams_ok.append(r.status == 200 and body.rstrip().endswith(b"[DONE]"))

        loaders = [asyncio.create_task(steady()) for _ in range(4)]
        streams = [asyncio.create_task(one_stream()) for _ in range(3)]
        await asyncio.sleep(0.1)
        # The new config moves New York's traffic: us-east loses its only endpoint's role.
        new = s.config_path.read_text().replace('name = "us-east"', 'name = "us-east2"', 1)
        s.config_path.write_text(new)
        code, doc = await admin(s, "POST", "/reload")
        assert code == 200 and doc == {"ok": True, "generation": 1}
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*loaders, *streams)
        assert results and all(c == 200 for c in results)
        assert streams_ok == [True, True, True]  # streams begun on generation 0 ended whole
        async with s.request("GET", "/v1/models", NEW_YORK) as r:
            assert r.headers["X-GSLB-Region"] == "us-east2"


async def test_health_state_carries_over_a_reload(tmp_path: Path) -> None:
    async with stack(tmp_path, admin_token=TOKEN) as s:
        assert s.config_path is not None
        fleet = s.worker.runtime.fleet
        ep = fleet.regions[0].endpoints[0]
        ep.ejected_until = time.monotonic() + 300
        ep.ejections = 2
        s.config_path.write_text(s.config_path.read_text() + "\n")
        assert (await admin(s, "POST", "/reload"))[0] == 200
        new_ep = s.worker.runtime.fleet.regions[0].endpoints[0]
        assert new_ep is not ep and new_ep.url == ep.url
        assert new_ep.ejections == 2 and new_ep.ejected_until == ep.ejected_until


async def test_secrets_never_reach_logs_metrics_or_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "SECRET-7f3a9c"
    log_path = tmp_path / "access.log"
    caplog.set_level("DEBUG")
    async with stack(tmp_path, access_log=str(log_path), scripted=("us-west",)) as s:
        async with s.request(
            "POST",
            f"/v1/chat/completions?api_key={secret}",
            NEW_YORK,
            json={**CHAT, "messages": [{"role": "user", "content": secret}]},
            headers={"Authorization": f"Bearer {secret}", "Cookie": f"session={secret}"},
        ) as r:
            assert r.status == 200
        s.upstreams["us-west"].mode = "503"  # errors and retries are logged too
        async with s.request(
            "GET", f"/x?token={secret}", "1.0.4.10", headers={"Authorization": secret}
        ) as r:
            await r.read()
        metrics = (await scrape(s)).__repr__()
        _, status = await admin(s, "GET", "/status", token=None)
        s.worker.access_log.flush(5)
    written = log_path.read_text()
    assert written.count("\n") == 2
    lines = [orjson.loads(line) for line in written.splitlines()]
    assert lines[0]["path"] == "/v1/chat/completions" and lines[0]["client"] == "1.0.3.0/24"
    for blob in (written, metrics, orjson.dumps(status).decode(), caplog.text):
        assert secret not in blob
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix != ".mmdb":
            assert secret.encode() not in path.read_bytes(), path
