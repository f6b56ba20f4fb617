"""Tests for gslb.sim.fakeregion and its parts (gslb.sim.fakesched, gslb.sim.fakestress).

Real servers on 127.0.0.1 and real aiohttp / openai clients; the engine's timing and bodies
also without sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gslb.sim.fakeregion import FakeRegion, FakeRegionOptions, add_arguments, options_from_args
from gslb.sim.fakesched import Engine, FakeRegionStats
from gslb.sim.fakestress import GZIP_BODY

REPO_ROOT = Path(__file__).resolve().parents[2]
# Every client call is bounded, so a regression hangs one test for seconds, not the suite.
TIMEOUT = aiohttp.ClientTimeout(total=5)

Factory = Callable[..., Awaitable[FakeRegion]]


@pytest.fixture
async def make_region() -> AsyncIterator[Factory]:
    regions: list[FakeRegion] = []

    async def make(**kwargs: Any) -> FakeRegion:
        region = FakeRegion(FakeRegionOptions(**kwargs))
        await region.start()
        regions.append(region)
        return region

    yield make
    for region in regions:
        await region.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
        yield s


def chat_body(max_tokens: int = 4, stream: bool = False, content: str = "hello") -> dict[str, Any]:
    return {
        "model": "fake-llm",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


async def post_chat(
    session: aiohttp.ClientSession, region: FakeRegion, **kwargs: Any
) -> tuple[int, Any]:
    async with session.post(f"{region.url}/v1/chat/completions", json=chat_body(**kwargs)) as r:
        return r.status, await r.json()


async def read_sse(resp: aiohttp.ClientResponse) -> list[str]:
    """The ``data:`` payloads of an SSE response, in order."""
    events: list[str] = []
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("data: "):
            events.append(line[len("data: ") :])
    return events


async def wait_until(cond: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def scrape(session: aiohttp.ClientSession, region: FakeRegion) -> dict[str, float]:
    """``/metrics`` parsed by prometheus_client: sample name -> value (one series each)."""
    async with session.get(f"{region.url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert sample.labels == {"model_name": region.options.model, "engine": "0"}
            values[sample.name] = sample.value
    return values


# ---- completions ------------------------------------------------------------------------------


async def test_chat_completion_non_streaming(
    make_region: Factory, session: aiohttp.ClientSession
) -> None:
    region = await make_region(name="us-east", tokens_per_s=1000)
    async with session.post(f"{region.url}/v1/chat/completions", json=chat_body(3)) as resp:
        assert resp.status == 200
        assert resp.headers["X-Fake-Region"] == "us-east"
        body = await resp.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "fake-llm"
    assert "us-east" in body["system_fingerprint"]
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "us-east:tok0 tok1 tok2 "
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + 3
    assert region.stats.completions_total == region.stats.completions_done == 1


async def test_text_completion_non_streaming(
    make_region: Factory, session: aiohttp.ClientSession
) -> None:
    region = await make_region(name="eu", tokens_per_s=1000, max_tokens_default=2)
    async with session.post(f"{region.url}/v1/completions", json={"prompt": "x" * 40}) as resp:
        body = await resp.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "eu:tok0 tok1 "
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}


async def test_chat_completion_streaming_chunks_and_timing(
    make_region: Factory, session: aiohttp.ClientSession
) -> None:
    region = await make_region(name="ap", tokens_per_s=50)
    start = time.monotonic()
    url = f"{region.url}/v1/chat/completions"
    async with session.post(url, json=chat_body(5, stream=True)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = await read_sse(resp)
    elapsed = time.monotonic() - start
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) == 5  # one chunk per token; the last carries finish_reason
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "ap:tok0 "}
    assert "role" not in chunks[1]["choices"][0]["delta"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 4 + ["length"]
    # 5 tokens at 50/s is 100 ms of decode, plus prefill; allow timer slack below.
    assert elapsed >= 0.08


async def test_streaming_usage_chunk_when_requested(
    make_region: Factory, session: aiohttp.ClientSession
) -> None:
    region = await make_region(tokens_per_s=1000)
    body = chat_body(2, stream=True) | {"stream_options": {"include_usage": True}}
    async with session.post(f"{region.url}/v1/chat/completions", json=body) as resp:
        events = await read_sse(resp)
    usage_chunk = json.loads(events[-2])
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/v1/chat/completions", b"{not json"),
        ("/v1/chat/completions", b"[]"),
        ("/v1/chat/completions", b'{"messages": []}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": 5}]}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user"}], "max_tokens": 0}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user"}], "stream": "yes"}'),
        ("/v1/completions", b'{"prompt": 3}'),
    ],
)
async def test_malformed_requests_get_openai_400(
    make_region: Factory, session: aiohttp.ClientSession, path: str, payload: bytes
) -> None:
    region = await make_region()
    async with session.post(region.url + path, data=payload) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] is None
    assert isinstance(body["error"]["message"], str)
    assert region.stats.completions_total == 0


async def test_models_endpoint(make_region: Factory, session: aiohttp.ClientSession) -> None:
    region = await make_region(model="llama-3-8b")
    async with session.get(f"{region.url}/v1/models") as resp:
        body = await resp.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["llama-3-8b"]


# ---- scheduling: slots, queue, metrics --------------------------------------------------------


async def test_one_slot_serves_fifo_and_reports_waiting(
    make_region: Factory, session: aiohttp.ClientSession
) -> None:
    region = await make_region(slots=1, tokens_per_s=50)  # 5 tokens = 100 ms per request
    done: dict[str, float] = {}

    async def request(tag: str) -> None:
        status, _ = await post_chat(session, region, max_tokens=5)
        assert status == 200
        done[tag] = time.monotonic()

    first = asyncio.create_task(request("first"))
    await wait_until(lambda: region.stats.active == 1)
    second = asyncio.create_task(request("second"))
    await wait_until(lambda: region.stats.queued == 1)
    # Scraped while the second request waits: the gauges must show it queued.
    metrics = await scrape(session, region)
    assert metrics["vllm:num_requests_running"] == 1
    assert metrics["vllm:num_requests_waiting"] == 1
    assert metrics["vllm:kv_cache_usage_perc"] == 1.0
    await asyncio.gather(first, second)
    # The second one only started decoding after the first finished.
    assert done["second"] - done["first"] >= 0.09
    assert region.stats.max_active_seen == 1
    assert region.stats.max_queued_seen == 1


async def test_waiting_gauge_seen_by_concurrent_poller(
    make_region: Factory, session: aiohttp.ClientSession
) -> None:
    region = await make_region(slots=1, tokens_per_s=100)
    waiting_seen: list[float] = []
    finished = asyncio.Event()

    async def poll() -> None:
        while not finished.is_set():
            waiting_seen.append((await scrape(session, region))["vllm:num_requests_waiting"])
            await asyncio.sleep(0.01)

    poller = asyncio.create_task(poll())
    await asyncio.gather(*(post_chat(session, region, max_tokens=10) for _ in range(2)))
    finished.set()
    await poller
    assert max(waiting_seen) == 1
    assert waiting_seen[-1] == 0
    assert region.stats.max_active_seen == 1


async def test_queue_full_gets_429(make_region: Factory, session: aiohttp.ClientSession) -> None:
    # A second of decoding each: the queue holds the second request long enough to be seen
    # even on a loaded machine (at 0.1 s it could be done before the check looked).
    region = await make_region(slots=1, max_queue=1, tokens_per_s=100)
    running = asyncio.create_task(post_chat(session, region, max_tokens=100))
    await wait_until(lambda: region.stats.active == 1)
    waiting = asyncio.create_task(post_chat(session, region, max_tokens=100))
    await wait_until(lambda: region.stats.queued == 1)
    status, body = await post_chat(session, region, max_tokens=1)
    assert status == 429
    assert "queue full" in body["error"]["message"]
    assert [s for s, _ in await asyncio.gather(running, waiting)] == [200, 200]
    assert region.stats.rejected == 1


async def test_metrics_format_and_values(
    make_region: Factory, session: aiohttp.ClientSession
) -> None:
    region = await make_region(slots=4, tokens_per_s=50, model="m1")
    async with session.get(f"{region.url}/metrics") as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    assert "# TYPE vllm:num_requests_running gauge" in text
    assert "# HELP vllm:num_requests_waiting " in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["vllm:kv_cache_usage_perc"].type == "gauge"
    assert families["vllm:prompt_tokens"].type == "counter"

    busy = asyncio.create_task(post_chat(session, region, max_tokens=5))
    await wait_until(lambda: region.stats.active == 1)
    metrics = await scrape(session, region)
    assert metrics["vllm:num_requests_running"] == 1
    assert metrics["vllm:num_requests_waiting"] == 0
    assert metrics["vllm:kv_cache_usage_perc"] == 0.25
    await busy
    metrics = await scrape(session, region)
    assert metrics["vllm:num_requests_running"] == 0
    assert metrics["vllm:generation_tokens_total"] == 5
    assert metrics["vllm:prompt_tokens_total"] == 2  # "hello" = 5 chars ~ 2 tokens


async def test_client_disconnect_frees_slot(
    make_region: Factory, session: aiohttp.ClientSession
) -> None:
    region = await make_region(slots=1, tokens_per_s=20)  # 1000 tokens would take 50 s
    url = f"{region.url}/v1/chat/completions"
    resp = await session.post(url, json=chat_body(1000, stream=True))
    assert (await resp.content.readline()).startswith(b"data: ")
    resp.close()  # drops the connection mid-stream
    await wait_until(lambda: region.stats.cancelled == 1 and region.stats.active == 0)
    start = time.monotonic()
    status, _ = await post_chat(session, region, max_tokens=1)
    assert status == 200
    assert time.monotonic() - start < 1.0
    assert region.stats.completions_done == 1


async def test_queued_request_cancelled_leaves_queue(
    make_region: Factory, session: aiohttp.ClientSession
) -> None:
    region = await make_region(slots=1, tokens_per_s=100)
    running = asyncio.create_task(post_chat(session, region, max_tokens=10))
    await wait_until(lambda: region.stats.active == 1)
    queued = asyncio.create_task(post_chat(session, region, max_tokens=10))
    await wait_until(lambda: region.stats.queued == 1)
    queued.cancel()  # the client gives up while waiting: its connection closes
    await wait_until(lambda: region.stats.queued == 0 and region.stats.cancelled == 1)
    assert (await running)[0] == 200
    assert region.stats.active == 0


# ---- fault injection ----------------------------------------------------------------------


async def test_error_rate_one_gives_500(
    make_region: Factory, session: aiohttp.ClientSession
) -> None:
    region = await make_region(error_rate=1.0)
    status, body = await post_chat(session, region)
    assert status == 500
    assert body["error"]["type"] == "server_error"
    region.set_error_rate(0.0)
    assert (await post_chat(session, region))[0] == 200
    assert region.stats.errors_injected == 1


async def test_error_injection_is_deterministic_per_seed(
    make_region: Factory, session: aiohttp.ClientSession
) -> None:
    async def statuses(seed: int) -> list[int]:
        region = await make_region(error_rate=0.5, seed=seed, tokens_per_s=10_000)
        return [(await post_chat(session, region, max_tokens=1))[0] for _ in range(12)]

    first = await statuses(7)
    assert first == await statuses(7)
    assert set(first) == {200, 500}


async def test_hang_rate_never_answers(
    make_region: Factory, session: aiohttp.ClientSession
) -> None:
    region = await make_region()
    region.set_hang_rate(1.0)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(post_chat(session, region), 0.2)
    await wait_until(lambda: region.stats.cancelled == 1)
    assert region.stats.hangs_injected == 1
    region.set_hang_rate(0.0)
    assert (await post_chat(session, region))[0] == 200


async def test_die_after_two_requests(make_region: Factory, session: aiohttp.ClientSession) -> None:
    region = await make_region(die_after=2, tokens_per_s=1000)
    assert (await post_chat(session, region))[0] == 200
    assert (await post_chat(session, region))[0] == 200
    with pytest.raises(aiohttp.ClientConnectionError):
        await post_chat(session, region)
    assert region.dead
    with pytest.raises(aiohttp.ClientConnectionError):
        await session.get(f"{region.url}/health")


async def test_kill_aborts_open_stream_and_stops_listening(
    make_region: Factory, session: aiohttp.ClientSession
) -> None:
    region = await make_region(tokens_per_s=20)
    url = f"{region.url}/v1/chat/completions"
    async with session.post(url, json=chat_body(1000, stream=True)) as resp:
        await resp.content.readline()
        await region.kill()
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
            await resp.content.read()
    with pytest.raises(aiohttp.ClientConnectionError):
        await session.get(f"{region.url}/health")


async def test_stop_cancels_hanging_requests_quickly(
    session: aiohttp.ClientSession,
) -> None:
    region = FakeRegion(FakeRegionOptions(hang_rate=1.0))
    await region.start()
    pending = asyncio.create_task(post_chat(session, region))
    await wait_until(lambda: region.stats.hangs_injected == 1)
    start = time.monotonic()
    await region.stop()
    assert time.monotonic() - start < 0.5
    with pytest.raises(aiohttp.ClientConnectionError):
        await pending
    await region.stop()  # idempotent


async def test_health_status_switch(make_region: Factory, session: aiohttp.ClientSession) -> None:
    region = await make_region()
    async with session.get(f"{region.url}/health") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}
    region.set_health(503)
    async with session.get(f"{region.url}/health") as resp:
        assert resp.status == 503
    async with session.post(f"{region.url}/control", json={"health_status": 200}) as resp:
        assert (await resp.json())["health_status"] == 200
    async with session.get(f"{region.url}/health") as resp:
        assert resp.status == 200


async def test_network_delay_applies(make_region: Factory, session: aiohttp.ClientSession) -> None:
    region = await make_region(network_delay_ms=60)
    start = time.monotonic()
    async with session.get(f"{region.url}/health") as resp:
        assert resp.status == 200
    assert time.monotonic() - start >= 0.05


def test_invalid_options_rejected() -> None:
    with pytest.raises(ValueError):
        FakeRegion(FakeRegionOptions(slots=0))
    with pytest.raises(ValueError):
        FakeRegion(FakeRegionOptions(error_rate=1.5))
    with pytest.raises(ValueError):
        FakeRegion(FakeRegionOptions()).set_health(99)


# ---- proxy test endpoints -------------------------------------------------------------------


async def test_echo_reports_what_arrived(
    make_region: Factory, session: aiohttp.ClientSession
) -> None:
    region = await make_region(name="echo-region")
    headers = {"X-Test": "1", "X-Forwarded-For": "203.0.113.7"}
    async with session.put(f"{region.url}/echo?a=1&b=2", data=b"0123456789", headers=headers) as r:
        assert r.headers["X-Fake-Region"] == "echo-region"
        body = await r.json()
    assert body["method"] == "PUT"
    assert body["path"] == "/echo"
    assert body["query_string"] == "a=1&b=2"
    assert ["X-Test", "1"] in body["headers"]
    assert ["X-Forwarded-For", "203.0.113.7"] in body["headers"]
    assert body["body_length"] == 10


async def test_upload_streams_and_hashes(
    make_region: Factory, session: aiohttp.ClientSession
) -> None:
    region = await make_region()
    block = os.urandom(1 << 20)
    expected = hashlib.sha256(block * 5).hexdigest()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield block

    async with session.post(f"{region.url}/upload", data=body()) as resp:
        assert await resp.json() == {"bytes": 5 << 20, "sha256": expected}


async def test_download_is_deterministic_with_length(
    make_region: Factory, session: aiohttp.ClientSession
) -> None:
    region = await make_region()
    size = 1_000_003
    async with session.get(f"{region.url}/download?bytes={size}&chunk=65536") as resp:
        assert resp.headers["Content-Length"] == str(size)
        data = await resp.read()
    assert data == (bytes(range(256)) * (size // 256 + 1))[:size]


async def test_sse_events_are_paced(make_region: Factory, session: aiohttp.ClientSession) -> None:
    region = await make_region()
    start = time.monotonic()
    async with session.get(f"{region.url}/sse?events=5&interval_ms=20") as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = await read_sse(resp)
    assert [json.loads(e)["seq"] for e in events] == [0, 1, 2, 3, 4]
    assert time.monotonic() - start >= 0.07  # four intervals after the first event


@pytest.mark.parametrize("code", [429, 500, 502, 503, 504])
async def test_status_endpoint(
    make_region: Factory, session: aiohttp.ClientSession, code: int
) -> None:
    region = await make_region()
    async with session.get(f"{region.url}/status/{code}") as resp:
        assert resp.status == code
        assert (await resp.json())["status"] == code


async def test_slow_first_byte(make_region: Factory, session: aiohttp.ClientSession) -> None:
    region = await make_region()
    start = time.monotonic()
    async with session.get(f"{region.url}/slow-first-byte?delay_ms=200") as resp:
        headers_at = time.monotonic() - start
        body = await resp.read()
        body_at = time.monotonic() - start
    assert resp.status == 200
    assert headers_at < 0.15
    assert body_at >= 0.19
    assert body


async def test_headers_then_hang(make_region: Factory, session: aiohttp.ClientSession) -> None:
    region = await make_region()
    async with session.get(f"{region.url}/headers-then-hang") as resp:
        assert resp.status == 200
        assert await resp.content.readline() == b"first chunk\n"
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(resp.content.read(), 0.15)


async def test_abort_mid_stream(make_region: Factory, session: aiohttp.ClientSession) -> None:
    region = await make_region()
    async with session.get(f"{region.url}/abort-mid-stream?after=3") as resp:
        assert await resp.content.readline() == b"chunk 0\n"
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
            await resp.read()


async def test_pump_writes_whole_chunks_and_counts_them(
    make_region: Factory, session: aiohttp.ClientSession
) -> None:
    region = await make_region()
    async with session.get(f"{region.url}/pump?bytes=200000") as resp:
        data = await resp.read()
    # Rounded up to whole 64 KiB chunks: four of them.
    assert data == b"x" * (4 * 65536)
    assert region.sent == 4 * 65536
    async with session.get(f"{region.url}/pump?bytes=lots") as resp:
        assert resp.status == 400
    assert region.sent == 4 * 65536


async def test_gzip_is_served_compressed(make_region: Factory) -> None:
    region = await make_region()
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT, auto_decompress=False) as raw,
        raw.get(f"{region.url}/gzip") as resp,
    ):
        assert resp.headers["Content-Encoding"] == "gzip"
        body = await resp.read()
    assert body == GZIP_BODY
    assert gzip.decompress(body).startswith(b"compressed by the upstream")


async def test_websocket_echoes_with_the_region_name(
    make_region: Factory, session: aiohttp.ClientSession
) -> None:
    region = await make_region(name="ws-region")
    async with session.ws_connect(
        f"{region.url}/ws", protocols=("chat",), headers={"X-Probe": "ws"}
    ) as ws:
        assert ws.protocol == "chat"
        await ws.send_str("hello")
        assert await ws.receive_str() == "ws-region:hello"
        await ws.send_bytes(b"abc")
        assert await ws.receive_bytes() == b"cba"
    assert ("X-Probe", "ws") in region.last_headers  # the handshake is recorded too


# ---- scripted mode ----------------------------------------------------------------------------


async def test_catch_all_is_opt_in_and_known_routes_win(
    make_region: Factory, session: aiohttp.ClientSession
) -> None:
    plain = await make_region(name="plain")
    async with session.get(f"{plain.url}/v1/anything") as resp:
        assert resp.status == 404
    anyhttp = await make_region(name="any", catch_all=True)
    async with session.post(f"{anyhttp.url}/v1/anything", data=b"body") as resp:
        assert resp.status == 200
        assert resp.headers["X-Upstream"] == "any"
        assert await resp.read() == b"first;served-by=any"
    async with session.get(f"{anyhttp.url}/echo") as resp:
        assert (await resp.json())["region"] == "any"


async def test_scripted_modes_override_every_data_plane_request(
    make_region: Factory, session: aiohttp.ClientSession
) -> None:
    region = await make_region(name="scripted", catch_all=True)
    region.mode = "503"
    for method, path in (("GET", "/x"), ("GET", "/v1/models"), ("POST", "/v1/completions")):
        async with session.request(method, f"{region.url}{path}", json={"prompt": "p"}) as r:
            assert r.status == 503, path
            assert r.headers["Retry-After"] == "7"
            assert await r.json() == {"busy": "scripted"}
    assert region.stats.completions_total == 0  # the engine never saw the completion
    # Probes and scrapes are not scripted: a 503 mode is about what a proxy forwards.
    async with session.get(f"{region.url}/health") as r:
        assert r.status == 200
    async with session.get(f"{region.url}/metrics") as r:
        assert r.status == 200

    region.mode = "ok"
    async with session.get(f"{region.url}/x") as r:
        assert r.status == 200


async def test_hang_mode_never_answers(
    make_region: Factory, session: aiohttp.ClientSession
) -> None:
    region = await make_region(catch_all=True, mode="hang")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(session.get(f"{region.url}/x"), 0.2)
    await wait_until(lambda: region.stats.requests_total == 1)
    region.mode = "ok"
    async with session.get(f"{region.url}/x") as resp:
        assert resp.status == 200


async def test_abort_after_first_mode_resets_after_one_chunk(
    make_region: Factory, session: aiohttp.ClientSession
) -> None:
    region = await make_region(name="cut", catch_all=True, mode="abort-after-first")
    async with session.get(f"{region.url}/v1/models") as resp:
        assert resp.status == 200
        assert resp.headers["X-Upstream"] == "cut"
        assert await resp.content.readexactly(6) == b"first;"
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
            await resp.read()


async def test_mode_is_checked_and_switchable_over_control(
    make_region: Factory, session: aiohttp.ClientSession
) -> None:
    region = await make_region(catch_all=True)
    with pytest.raises(ValueError, match="mode must be one of"):
        region.mode = "sometimes"
    assert region.mode == "ok"
    with pytest.raises(ValueError):
        FakeRegion(FakeRegionOptions(mode="sometimes"))
    async with session.post(f"{region.url}/control", json={"mode": "503"}) as resp:
        assert (await resp.json())["mode"] == "503"
    async with session.get(f"{region.url}/x") as resp:
        assert resp.status == 503
    async with session.post(f"{region.url}/control", json={"mode": "later"}) as resp:
        assert resp.status == 400
        assert "mode must be one of" in (await resp.json())["error"]["message"]
    assert region.mode == "503"


async def test_hits_and_last_headers_record_only_data_plane_requests(
    make_region: Factory, session: aiohttp.ClientSession
) -> None:
    region = await make_region(catch_all=True)
    async with session.get(f"{region.url}/health", headers={"X-Probe": "health"}):
        pass
    async with session.get(f"{region.url}/metrics"):
        pass
    async with session.post(f"{region.url}/control", json={}):
        pass
    assert region.hits == 0 and region.last_headers == []
    assert region.stats.requests_total == 3
    for i in range(2):
        async with session.get(f"{region.url}/x", headers={"X-Probe": str(i)}):
            pass
    assert region.hits == 2
    assert ("X-Probe", "1") in region.last_headers


# ---- clients and CLI ------------------------------------------------------------------------


async def test_openai_client_streams(make_region: Factory) -> None:
    region = await make_region(name="us-west", tokens_per_s=500)
    async with openai.AsyncOpenAI(base_url=f"{region.url}/v1", api_key="x") as client:
        stream = await client.chat.completions.create(
            model="fake-llm",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
            stream=True,
        )
        parts: list[str] = []
        finish: list[str | None] = []
        async for chunk in stream:
            parts.append(chunk.choices[0].delta.content or "")
            finish.append(chunk.choices[0].finish_reason)
        whole = await client.chat.completions.create(
            model="fake-llm", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert "".join(parts) == "us-west:tok0 tok1 tok2 tok3 "
    assert finish[-1] == "length"
    assert whole.choices[0].message.content == "us-west:tok0 tok1 "
    assert whole.usage is not None and whole.usage.completion_tokens == 2


async def test_cli_serves_until_sigterm() -> None:
    script = (
        "import argparse, sys\n"
        "from gslb.sim.fakeregion import add_arguments, main_from_args\n"
        "p = argparse.ArgumentParser()\n"
        "add_arguments(p)\n"
        "sys.exit(main_from_args(p.parse_args(sys.argv[1:])))\n"
    )
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        "--port=0",
        "--name=cli-region",
        "--slots=2",
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        assert "cli-region" in line
        url = line.split()[-1]
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as s,
            s.get(f"{url}/health") as resp,
        ):
            assert resp.headers["X-Fake-Region"] == "cli-region"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 5) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_cli_options_carry_mode_and_catch_all() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    opts = options_from_args(parser.parse_args(["--mode=hang", "--catch-all", "--name=n"]))
    assert (opts.mode, opts.catch_all, opts.name) == ("hang", True, "n")
    assert options_from_args(parser.parse_args([])) == FakeRegionOptions()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--mode=sometimes"])  # argparse's usage error
    assert exc.value.code == 2


# ---- the engine, without sockets --------------------------------------------------------------


def _engine(**kw: Any) -> Engine:
    spec: dict[str, Any] = {
        "name": "e",
        "model": "m",
        "slots": 1,
        "max_queue": 0,
        "prefill_ms_per_1k_chars": 20.0,
        "base_prefill_ms": 5.0,
        "tokens_per_s": 100.0,
        "max_tokens_default": 16,
        "stats": FakeRegionStats(),
    }
    return Engine(**(spec | kw))


@pytest.mark.parametrize(
    ("chars", "max_tokens", "usage", "prefill_s"),
    [
        (0, 1, False, 0.005),
        (1000, 3, True, 0.025),
        (4000, 2, False, 0.085),
    ],
)
def test_stream_frames_are_paced_from_prefill(
    chars: int, max_tokens: int, usage: bool, prefill_s: float
) -> None:
    engine = _engine()
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": "x" * chars}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    if usage:
        body["stream_options"] = {"include_usage": True}
    req = engine.parse(json.dumps(body).encode(), "chat")
    assert engine.prefill_s(req) == pytest.approx(prefill_s)
    assert engine.whole_s(req) == pytest.approx(prefill_s + max_tokens / 100)
    frames = list(engine.stream_frames(req, seq=7))
    tokens = frames[:max_tokens]
    assert [f.due_s for f in tokens] == pytest.approx(
        [prefill_s + (i + 1) / 100 for i in range(max_tokens)]
    )
    assert [f.tokens for f in frames] == [1] * max_tokens + [0] * (len(frames) - max_tokens)
    # After the last token, at once: usage when asked for, then [DONE].
    tail = frames[max_tokens:]
    assert len(tail) == (2 if usage else 1)
    assert all(f.due_s == tokens[-1].due_s for f in tail)
    assert tail[-1].data == b"data: [DONE]\n\n"
    first = json.loads(tokens[0].data.removeprefix(b"data: "))
    assert first["id"] == "chatcmpl-e-7" and first["model"] == "m"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "e:tok0 "}
    if usage:
        doc = json.loads(tail[0].data.removeprefix(b"data: "))
        assert doc["usage"]["completion_tokens"] == max_tokens
        assert doc["usage"]["prompt_tokens"] == req.prompt_tokens == max(1, chars // 4)


def test_whole_body_and_metrics_text() -> None:
    stats = FakeRegionStats(active=1, queued=3, prompt_tokens_total=5)
    engine = _engine(slots=4, stats=stats)
    req = engine.parse(b'{"prompt": "abcdefgh", "max_tokens": 2}', "text")
    body = engine.whole_body(req, seq=1)
    assert body["object"] == "text_completion" and body["id"] == "cmpl-e-1"
    assert body["choices"][0]["text"] == "e:tok0 tok1 "
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
    values = {
        s.name: s.value
        for family in text_string_to_metric_families(engine.metrics_text().decode())
        for s in family.samples
    }
    assert values["vllm:num_requests_running"] == 1
    assert values["vllm:num_requests_waiting"] == 3
    assert values["vllm:kv_cache_usage_perc"] == 0.25
    assert values["vllm:prompt_tokens_total"] == 5
