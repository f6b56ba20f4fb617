"""Load reports: parsers on realistic pages, the region load they become, and the scrapes.

Scrapes run on the periodic runner: with a scripted ``FakeScraper`` for its rules (what is
logged, what is kept), and with the aiohttp ``HttpScraper`` against a real server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web

from gslb.core.config import Config
from gslb.core.fleet import FleetState
from gslb.core.geo import Location
from gslb.core.healthpolicy import HealthPolicy
from gslb.core.loadreport import (
    LoadReport,
    LoadReportError,
    parse,
    parse_json,
    parse_sglang,
    parse_tgi,
    parse_vllm,
)
from gslb.core.policy import RequestFacts
from gslb.core.router import Router
from gslb.ops.periodic import HttpScraper, PeriodicRunner
from tests.fakes import FakeProber, FakeScraper
from tests.fleet import fleet_config
from tests.loopback import eventually, serve_app

NEW_YORK = Location("US", "NA", 40.71, -74.01)

# vLLM (v1 engine) as served by prometheus_client: two models on one server, data-parallel
# engines, histograms and counters around the gauges we read.
VLLM = """\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 12345.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 5.0
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_waiting{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 1.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.41
vllm:kv_cache_usage_perc{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.63
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 0.12
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 8.128902e+06
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="m"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.005",model_name="m"} 3.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 10.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 10.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 0.25
"""

# vLLM before the v1 engine: the KV figure was called gpu_cache_usage_perc.
VLLM_OLD = """\
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="facebook/opt-125m"} 4.0
# HELP vllm:num_requests_swapped Number of requests swapped to CPU.
# TYPE vllm:num_requests_swapped gauge
vllm:num_requests_swapped{model_name="facebook/opt-125m"} 0.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="facebook/opt-125m"} 6.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="facebook/opt-125m"} 0.9
"""

SGLANG = """\
# HELP sglang:prompt_tokens_total Number of prefill tokens processed.
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{model_name="meta-llama/Llama-3.1-8B-Instruct"} 8.128902e+06
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0"} 28.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0"} 9.0
# HELP sglang:token_usage The token usage
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0"} 0.28
# HELP sglang:cache_hit_rate The cache hit rate
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0"} 0.0075
"""

# TGI's router exports through the Rust metrics-exporter-prometheus: TYPE lines, no labels.
TGI = """\
# TYPE tgi_request_count counter
tgi_request_count 1024
# TYPE tgi_queue_size gauge
tgi_queue_size 12
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 32
# TYPE tgi_batch_current_max_tokens gauge
tgi_batch_current_max_tokens 16384
# TYPE tgi_request_duration histogram
tgi_request_duration_bucket{le="0.5"} 3
tgi_request_duration_bucket{le="+Inf"} 10
tgi_request_duration_sum 12.5
tgi_request_duration_count 10
"""


# --------------------------------------------------------------------------------------------
# parsers


def test_vllm_sums_every_label_set() -> None:
    r = parse_vllm(VLLM)
    assert r == LoadReport(running=14.0, waiting=4.0, kv_cache=0.63)
    assert r.load == 18.0


def test_vllm_older_kv_metric() -> None:
    assert parse_vllm(VLLM_OLD) == LoadReport(4.0, 6.0, 0.9)


def test_vllm_without_kv_metric() -> None:
    text = "\n".join(line for line in VLLM.splitlines() if "kv_cache" not in line)
    assert parse_vllm(text).kv_cache is None


def test_sglang() -> None:
    assert parse_sglang(SGLANG) == LoadReport(28.0, 9.0, 0.28)


def test_tgi() -> None:
    r = parse_tgi(TGI)
    assert (r.running, r.waiting, r.kv_cache, r.load) == (32.0, 12.0, None, 44.0)


def test_json() -> None:
    assert parse_json('{"running": 3, "waiting": 2.5, "kv_cache_usage": 0.4}') == LoadReport(
        3.0, 2.5, 0.4
    )
    assert parse_json('{"running": 0, "waiting": 0, "kv_cache_usage": null, "x": 1}').load == 0


def test_dispatch_by_kind() -> None:
    assert parse("vllm", VLLM).load == 18.0
    assert parse("json", '{"running": 1, "waiting": 1}').load == 2.0
    with pytest.raises(LoadReportError, match="no load report parser"):
        parse("none", "")


@pytest.mark.parametrize(
    ("parser", "text", "message"),
    [
        (parse_vllm, "", "vllm:num_requests_running not found"),
        (parse_vllm, SGLANG, "not found"),  # the wrong kind for this server
        (parse_vllm, VLLM.replace("vllm:num_requests_waiting{", "vllm:other{"), "waiting"),
        (parse_vllm, 'vllm:num_requests_running{model_name="m" 3\n', "malformed"),
        (parse_vllm, "vllm:num_requests_running banana\n", "malformed"),
        (parse_vllm, "vllm:num_requests_running -1\nvllm:num_requests_waiting 0\n", ">= 0"),
        (parse_vllm, "vllm:num_requests_running NaN\nvllm:num_requests_waiting 0\n", "finite"),
        (parse_sglang, VLLM, "sglang:num_running_reqs"),
        (parse_tgi, "tgi_queue_size 1\n", "tgi_batch_current_size"),
        (parse_json, "not json", "invalid JSON"),
        (parse_json, "[1, 2]", "expected an object"),
        (parse_json, '{"running": 1}', "'waiting' is required"),
        (parse_json, '{"running": true, "waiting": 0}', "must be a number"),
        (parse_json, '{"running": "3", "waiting": 0}', "must be a number"),
        (parse_json, '{"running": -2, "waiting": 0}', ">= 0"),
    ],
)
def test_malformed_input(parser: Callable[[str], LoadReport], text: str, message: str) -> None:
    with pytest.raises(LoadReportError, match=message):
        parser(text)
    assert issubclass(LoadReportError, ValueError)


def test_other_metrics_malformed_do_not_matter() -> None:
    # Only the wanted metrics are parsed: a broken line elsewhere on the page is not our problem.
    assert parse_vllm(VLLM + "some_other_metric{{{ oops\n").load == 18.0


# --------------------------------------------------------------------------------------------
# the region load the fleet derives from reports


def load_config(**regions: str) -> Config:
    """``fleet_config`` where each named region gets one endpoint URL and vLLM load reports."""
    urls = {name: [url] for name, url in regions.items()}
    extra = {
        name: 'load = { kind = "vllm", interval_s = 0.05, timeout_s = 0.5, max_age_s = 3.0 }'
        for name in regions
    }
    return fleet_config(urls=urls, region_extra=extra)


def test_stale_reports_are_ignored_by_region_load() -> None:
    fleet = FleetState(load_config(**{"us-east": "http://10.9.9.9:8000"}))
    policy = HealthPolicy(fleet)
    region = fleet.regions[0]
    ep = region.endpoints[0]
    fleet.acquire(ep)
    fleet.acquire(ep)
    policy.on_load_report(ep, 18.0, 100.0)
    assert fleet.view.load[0] == 18.0
    fleet.refresh_region(region, 103.0)  # exactly max_age old: still fresh
    assert fleet.view.load[0] == 18.0
    fleet.refresh_region(region, 103.01)
    assert fleet.view.load[0] == 2.0  # local in-flight counts alone
    # A report below the local count never hides this edge's own requests.
    policy.on_load_report(ep, 1.0, 104.0)
    assert fleet.view.load[0] == 2.0


def test_tick_retires_stale_reports_on_time() -> None:
    fleet = FleetState(load_config(**{"us-east": "http://10.9.9.9:8000"}))
    policy = HealthPolicy(fleet)
    policy.tick(99.0)
    ep = fleet.regions[0].endpoints[0]
    policy.on_load_report(ep, 18.0, 100.0)
    policy.tick(103.0)
    assert fleet.view.load[0] == 18.0
    policy.tick(103.25)
    assert fleet.view.load[0] == 0.0


# --------------------------------------------------------------------------------------------
# scrapes on the runner, scripted


def scripted(**regions: str) -> tuple[FleetState, HealthPolicy, PeriodicRunner, FakeScraper]:
    fleet = FleetState(load_config(**regions))
    policy = HealthPolicy(fleet)
    scraper = FakeScraper()
    return fleet, policy, PeriodicRunner(fleet, policy, FakeProber(), scraper), scraper


async def test_a_scrape_reaches_the_snapshot_and_a_failed_one_keeps_the_report() -> None:
    fleet, _policy, runner, scraper = scripted(**{"us-east": "http://a:1"})
    runner.clock = lambda: 1000.0
    ep = fleet.regions[0].endpoints[0]
    # Regions without load.kind are never scraped.
    assert [e.url for e in runner.load_endpoints()] == [ep.url]
    scraper.pages[ep.url] = VLLM
    report = await runner.scrape_once(ep)
    assert report is not None and (report.load, report.kv_cache) == (18.0, 0.63)
    assert (ep.reported_load, ep.reported_at) == (18.0, 1000.0)
    assert fleet.view.load[0] == 18.0
    # The server stops answering: the report lives until max_age, then local counts stand.
    scraper.pages[ep.url] = ConnectionResetError("gone")
    fleet.acquire(ep)
    assert await runner.scrape_once(ep) is None
    assert ep.reported_load == 18.0 and fleet.view.load[0] == 18.0
    fleet.refresh_region(fleet.regions[0], 1003.5)
    assert fleet.view.load[0] == 1.0


async def test_an_unreadable_page_is_warned_about_once_until_it_reads_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fleet, _policy, runner, scraper = scripted(**{"us-east": "http://a:1"})
    ep = fleet.regions[0].endpoints[0]
    scraper.pages[ep.url] = SGLANG  # wrong kind configured

    async def warnings() -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="gslb.core.loadreport"):
            assert await runner.scrape_once(ep) is None
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    first = await warnings()
    assert len(first) == 1 and "vllm:num_requests_running" in first[0]
    assert "http://a:1/metrics" in first[0]
    assert await warnings() == []  # the same fault again: debug only
    assert ep.reported_load is None
    scraper.pages[ep.url] = ConnectionRefusedError("down")
    assert await warnings() == []  # unreachable is the health checks' business
    scraper.pages[ep.url] = VLLM
    assert await runner.scrape_once(ep) is not None
    scraper.pages[ep.url] = SGLANG
    assert len(await warnings()) == 1  # read once in between: a new fault is news


async def test_a_hanging_scrape_is_cut_at_its_timeout() -> None:
    fleet, _policy, runner, scraper = scripted(**{"us-east": "http://a:1"})
    ep = fleet.regions[0].endpoints[0]
    scraper.hang(ep.url)  # load.timeout_s = 0.5
    started = time.monotonic()
    assert await asyncio.wait_for(runner.scrape_once(ep), 5) is None
    assert 0.4 < time.monotonic() - started < 2.0
    assert scraper.cancelled == [ep.url]


async def test_the_scrape_loop_keeps_going_and_stale_reports_lapse() -> None:
    cfg = fleet_config(
        urls={"us-east": ["http://a:1"]},
        region_extra={
            "us-east": 'load = { kind = "vllm", interval_s = 0.05, max_age_s = 0.3 }',
        },
    )
    fleet = FleetState(cfg)
    policy = HealthPolicy(fleet)
    scraper = FakeScraper()
    runner = PeriodicRunner(fleet, policy, FakeProber(), scraper, tick_interval_s=0.02)
    ep = fleet.regions[0].endpoints[0]
    scraper.pages[ep.url] = VLLM
    fleet.acquire(ep)
    runner.start()
    try:
        await eventually(lambda: fleet.view.load[0] == 18.0)
        await eventually(lambda: scraper.count(ep.url) >= 3)  # it keeps scraping
        scraper.pages[ep.url] = ConnectionRefusedError("down")
        await eventually(lambda: fleet.view.load[0] == 1.0)  # the runner's tick retired it
    finally:
        await runner.stop()


# --------------------------------------------------------------------------------------------
# HttpScraper against real servers


class MetricsServer:
    """Serves ``body`` at /metrics with ``status``; can be stopped to stop answering."""

    def __init__(self, body: str = VLLM) -> None:
        self.body: str | bytes = body
        self.status = 200
        self.hits = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _metrics(self, request: web.Request) -> web.Response:
        self.hits += 1
        body = self.body if isinstance(self.body, bytes) else self.body.encode()
        return web.Response(status=self.status, body=body, content_type="text/plain")

    async def start(self) -> MetricsServer:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner, self.url = await serve_app(app, shutdown_timeout=0.1)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest.fixture
async def server() -> AsyncIterator[MetricsServer]:
    srv = await MetricsServer().start()
    yield srv
    await srv.stop()


async def test_http_scraper_reads_pages_and_refuses_bad_ones(
    server: MetricsServer, session: aiohttp.ClientSession
) -> None:
    fleet = FleetState(load_config(**{"us-east": server.url}))
    ep = fleet.regions[0].endpoints[0]
    load = fleet.regions[0].cfg.load
    scraper = HttpScraper(session, max_body_bytes=len(VLLM) + 100)
    assert await scraper.scrape(ep, load) == VLLM
    server.body = VLLM * 2  # over the size limit
    with pytest.raises(LoadReportError, match="larger than"):
        await scraper.scrape(ep, load)
    server.body = b"vllm:num_requests_running \xff\n"
    with pytest.raises(LoadReportError, match="UTF-8"):
        await scraper.scrape(ep, load)
    server.body = VLLM
    server.status = 503
    with pytest.raises(Exception, match="503") as info:
        await scraper.scrape(ep, load)
    assert not isinstance(info.value, LoadReportError)  # a failed scrape, not a bad page
    await server.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await scraper.scrape(ep, load)


async def test_http_scrapes_on_the_runner_reach_the_snapshot(
    server: MetricsServer, session: aiohttp.ClientSession
) -> None:
    fleet = FleetState(load_config(**{"us-east": server.url}))
    policy = HealthPolicy(fleet)
    runner = PeriodicRunner(fleet, policy, FakeProber(), HttpScraper(session))
    runner.start()
    try:
        await eventually(lambda: fleet.view.load[0] == 18.0)
        await eventually(lambda: server.hits >= 3)
    finally:
        await runner.stop()


async def test_reports_change_router_decisions(session: aiohttp.ClientSession) -> None:
    home = await MetricsServer(VLLM.replace("7.0", "0.0")).start()  # idle: 7 running, not 14
    near = await MetricsServer("vllm:num_requests_running 0\nvllm:num_requests_waiting 0\n").start()
    try:
        cfg = load_config(**{"us-east": home.url, "ca-central": near.url})
        fleet = FleetState(cfg)
        router = Router(cfg)
        runner = PeriodicRunner(fleet, HealthPolicy(fleet), FakeProber(), HttpScraper(session))
        facts = RequestFacts(NEW_YORK, 300.0)

        def decide() -> tuple[str | None, str]:
            d = router.decide(facts, fleet.view)
            return d.region, d.reason

        await runner.scrape_round()
        assert fleet.view.load[0] == 11.0  # util 1.1 with capacity 10: saturated home
        assert decide() == ("ca-central", "spill")
        # Montreal reports a deep queue: it loses the spill traffic to the next region.
        near.body = "vllm:num_requests_running 10\nvllm:num_requests_waiting 25\n"
        await runner.scrape_round()
        assert decide() == ("us-west", "spill")
        # New York's queue drains: it keeps its own traffic again.
        home.body = "vllm:num_requests_running 2\nvllm:num_requests_waiting 0\n"
        await runner.scrape_round()
        assert decide() == ("us-east", "local")
    finally:
        await home.stop()
        await near.stop()
