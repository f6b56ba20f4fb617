"""The data plane end to end: real upstreams, real mmdb, a real gslb worker, real clients."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import itertools
import json
import resource
import time
from pathlib import Path

import aiohttp
import pytest

from gslb.edge.h1server import RequestCycle
from gslb.sim.fakeregion import FakeRegionOptions
from tests.fakes import mark_down
from tests.harness import (
    FRANKFURT,
    GZIPPED,
    NEW_YORK,
    NOWHERE,
    SAN_FRANCISCO,
    SAO_PAULO,
    SINGAPORE,
    TORONTO,
    stack,
)
from tests.loopback import eventually

CHAT = {"model": "fake-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.mark.parametrize(
    ("ip", "region"),
    [
        (TORONTO, "ca-central"),
        (NEW_YORK, "us-east"),
        (FRANKFURT, "eu-central"),
        (SINGAPORE, "ap-southeast"),
        (SAO_PAULO, "sa-east"),
    ],
)
async def test_clients_reach_their_nearest_region(tmp_path: Path, ip: str, region: str) -> None:
    async with stack(tmp_path) as s:
        async with s.request("POST", "/v1/chat/completions", ip, json=CHAT) as resp:
            assert resp.status == 200
            body = await resp.json()
            assert resp.headers["X-GSLB-Region"] == region
            assert resp.headers["X-GSLB-Route"] == "local"
            assert resp.headers["X-Fake-Region"] == region  # the upstream that really served
            assert resp.headers["X-Request-Id"]
            assert "gslb" in resp.headers["Via"]
            assert body["choices"][0]["message"]["content"]
        rec = s.recorder.records[-1]
        assert (rec.region, rec.route, rec.status, rec.attempts) == (region, "local", 200, 1)


async def test_spill_under_real_load(tmp_path: Path) -> None:
    # us-east takes 2 requests at once; two long streams fill it, the third New Yorker spills.
    slow = FakeRegionOptions(name="us-east", tokens_per_s=5)
    async with stack(
        tmp_path,
        fake_options={"us-east": slow},
        region_extra={"us-east": "capacity = 2"},
    ) as s:
        long = {**CHAT, "max_tokens": 20, "stream": True}
        holders = [
            await s.request("POST", "/v1/chat/completions", NEW_YORK, json=long) for _ in range(2)
        ]
        try:
            for h in holders:
                assert h.headers["X-GSLB-Region"] == "us-east"
            async with s.request("POST", "/v1/chat/completions", NEW_YORK, json=CHAT) as resp:
                assert resp.status == 200
                assert resp.headers["X-GSLB-Route"] == "spill"
                assert resp.headers["X-GSLB-Region"] in {"ca-central", "us-west"}
            assert s.recorder.records[-1].spilled_from == "us-east"
        finally:
            for h in holders:
                h.close()


async def test_canadian_traffic_stays_in_canada_when_saturated_or_down(tmp_path: Path) -> None:
    slow = FakeRegionOptions(name="ca-central", tokens_per_s=5)
    async with stack(
        tmp_path,
        fake_options={"ca-central": slow},
        region_extra={"ca-central": "capacity = 1"},
    ) as s:
        long = {**CHAT, "max_tokens": 20, "stream": True}
        holder = await s.request("POST", "/v1/chat/completions", TORONTO, json=long)
        try:
            async with s.request("POST", "/v1/chat/completions", TORONTO, json=CHAT) as resp:
                assert resp.status == 200
                assert resp.headers["X-GSLB-Route"] == "local-queued"
                assert resp.headers["X-GSLB-Region"] == "ca-central"
        finally:
            holder.close()
        # ca-central dies: the standby in Canada takes over, never the US next door.
        await s.fakes["ca-central"].kill()
        mark_down(s.worker, s.fakes["ca-central"].url)
        async with s.request("POST", "/v1/chat/completions", TORONTO, json=CHAT) as resp:
            assert resp.status == 200
            assert resp.headers["X-GSLB-Region"] == "ca-west"
            assert resp.headers["X-GSLB-Route"] == "standby"
        # All Canadian capacity gone: 503 no_eligible_region, and no other region was asked.
        await s.fakes["ca-west"].kill()
        mark_down(s.worker, s.fakes["ca-west"].url)
        before = {n: f.stats.requests_total for n, f in s.fakes.items()}
        async with s.request("POST", "/v1/chat/completions", TORONTO, json=CHAT) as resp:
            assert resp.status == 503
            doc = await resp.json()
            assert doc["error"] == "no_eligible_region" and doc["request_id"]
            assert resp.headers["Retry-After"]
        after = {n: f.stats.requests_total for n, f in s.fakes.items()}
        assert before == after
        assert s.recorder.denials[-1] == ("residency", ("canada",))


async def test_residency_holds_when_the_pinned_region_fails_mid_decision(tmp_path: Path) -> None:
    # ca-central is killed but the router still believes it routable (no health checks yet):
    # the retry goes to the Canadian standby? No: fallbacks are the active Pool only, and the
    # standby is not in it. The client gets a 502, never a US region.
    async with stack(tmp_path) as s:
        await s.fakes["ca-central"].kill()
        before = {n: f.stats.requests_total for n, f in s.fakes.items()}
        async with s.request("POST", "/v1/chat/completions", TORONTO, json=CHAT) as resp:
            assert resp.status == 502
            assert (await resp.json())["error"] == "upstream_unavailable"
        after = {n: f.stats.requests_total for n, f in s.fakes.items()}
        assert before == after


async def test_retry_before_commit_on_connect_error_and_503(tmp_path: Path) -> None:
    async with stack(tmp_path, scripted=("us-east",)) as s:
        s.upstreams["us-east"].mode = "503"
        async with s.request("GET", "/v1/models", NEW_YORK) as resp:
            assert resp.status == 200
            assert resp.headers["X-GSLB-Region"] != "us-east"
        rec = s.recorder.records[-1]
        assert rec.attempts == 2 and rec.retries == ("http_503",)
        assert s.upstreams["us-east"].hits == 1
        await s.upstreams["us-east"].stop()  # connection refused now
        async with s.request("GET", "/v1/models", NEW_YORK) as resp:
            assert resp.status == 200
        assert s.recorder.records[-1].retries == ("connect_error",)


async def test_stall_before_first_byte_is_retried(tmp_path: Path) -> None:
    async with stack(tmp_path, scripted=("us-east",), extra="[proxy]\nttft_timeout_s = 0.3") as s:
        s.upstreams["us-east"].mode = "hang"
        t0 = time.monotonic()
        async with s.request("GET", "/v1/models", NEW_YORK) as resp:
            assert resp.status == 200
            assert resp.headers["X-GSLB-Region"] != "us-east"
        assert 0.25 < time.monotonic() - t0 < 3
        assert s.recorder.records[-1].retries == ("timeout",)


async def test_last_attempt_timeout_is_504(tmp_path: Path) -> None:
    async with stack(
        tmp_path,
        scripted=("us-east",),
        extra="[routing]\nmax_attempts = 1\n[proxy]\nttft_timeout_s = 0.2",
    ) as s:
        s.upstreams["us-east"].mode = "hang"
        async with s.request("GET", "/x", NEW_YORK) as resp:
            assert resp.status == 504
            assert (await resp.json())["error"] == "upstream_timeout"
        rec = s.recorder.records[-1]
        assert (rec.attempts, rec.retries) == (1, ())  # a failure with no retry after it


async def test_no_retry_after_commit(tmp_path: Path) -> None:
    async with stack(tmp_path, scripted=("us-east", "ca-central", "us-west")) as s:
        for up in s.upstreams.values():
            up.mode = "abort-after-first"
        async with s.request("GET", "/x", NEW_YORK) as resp:
            assert resp.status == 200
            assert resp.headers["X-GSLB-Region"] == "us-east"
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        assert s.upstreams["us-east"].hits == 1
        assert s.upstreams["ca-central"].hits == 0 and s.upstreams["us-west"].hits == 0
        await eventually(lambda: bool(s.recorder.records))
        assert s.recorder.records[-1].attempts == 1


async def test_sse_chunks_arrive_one_by_one_with_upstream_timing(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        arrivals: list[float] = []
        async with s.request("GET", "/sse?events=5&interval_ms=150", NEW_YORK) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            assert "Content-Encoding" not in resp.headers
            buf = b""
            async for chunk in resp.content.iter_any():
                buf += chunk
                while b"\n\n" in buf:
                    _, buf = buf.split(b"\n\n", 1)
                    arrivals.append(time.monotonic())
        assert len(arrivals) >= 5
        gaps = [b - a for a, b in itertools.pairwise(arrivals[:5])]
        # Each event reached the client when the upstream sent it, not all at the end.
        assert all(g > 0.08 for g in gaps), gaps
        assert arrivals[4] - arrivals[0] > 0.45


async def test_slow_client_backpressure_bounds_upstream_reads(tmp_path: Path) -> None:
    async with stack(tmp_path, scripted=("us-east",)) as s:
        up = s.upstreams["us-east"]
        total = 200 * 1024 * 1024
        async with s.request("GET", f"/pump?bytes={total}", NEW_YORK) as resp:
            await resp.content.readexactly(65536)
            await asyncio.sleep(0.5)  # the client stops reading
            stalled_at = up.sent
            await asyncio.sleep(0.5)
            # The upstream is held back by the slow client, far short of the whole body.
            assert up.sent == stalled_at
            assert up.sent < 64 * 1024 * 1024
            resp.close()


async def test_client_disconnect_cancels_the_upstream(tmp_path: Path) -> None:
    slow = FakeRegionOptions(name="us-east", tokens_per_s=5)
    async with stack(tmp_path, fake_options={"us-east": slow}) as s:
        fake = s.fakes["us-east"]
        resp = await s.request(
            "POST",
            "/v1/chat/completions",
            NEW_YORK,
            json={**CHAT, "stream": True, "max_tokens": 50},
        )
        await resp.content.readline()
        assert fake.stats.active == 1
        resp.close()
        await eventually(lambda: fake.stats.cancelled == 1 and fake.stats.active == 0)
        fleet = s.worker.runtime.fleet
        await eventually(lambda: fleet.regions[0].inflight == 0)
        assert s.recorder.records[-1].status == 499


async def test_large_download_and_upload_stream_with_flat_memory(tmp_path: Path) -> None:
    size = 50 * 1024 * 1024
    async with stack(tmp_path, extra="[proxy]\nmax_body_bytes = 67108864") as s:
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        got = 0
        digest = hashlib.sha256()
        async with s.request("GET", f"/download?bytes={size}&chunk=65536", NEW_YORK) as resp:
            assert resp.headers["Content-Length"] == str(size)
            async for chunk in resp.content.iter_chunked(65536):
                got += len(chunk)
                digest.update(chunk)
        assert got == size

        async def body():  # type: ignore[no-untyped-def]
            block = b"u" * 65536
            for _ in range(size // 65536):
                yield block

        async with s.request("POST", "/upload", NEW_YORK, data=body()) as resp:
            assert resp.status == 200
            doc = await resp.json()
        assert doc["bytes"] == size
        expected = hashlib.sha256()
        for _ in range(size // 65536):
            expected.update(b"u" * 65536)
        assert doc["sha256"] == expected.hexdigest()
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
        assert grown_mib < 40, f"peak RSS grew {grown_mib:.0f} MiB moving 2 x 50 MiB"


async def test_hop_by_hop_and_control_headers_are_stripped(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        headers = {
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "1",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic c2VjcmV0",
            "Proxy-Connection": "keep-alive",
            "X-GSLB-Residency": "US",
            "X-GSLB-Anything": "x",
            "X-Request-Id": "abc-123",
            "Authorization": "Bearer upstream-token",
        }
        async with s.request("GET", "/echo?q=1", NEW_YORK, headers=headers) as resp:
            assert resp.status == 200
            doc = await resp.json()
            assert resp.headers["X-Request-Id"] == "abc-123"
        seen = {k.lower(): v for k, v in doc["headers"]}
        for gone in (
            "x-secret-hop",
            "keep-alive",
            "te",
            "proxy-authorization",
            "proxy-connection",
            "x-gslb-residency",
            "x-gslb-anything",
        ):
            assert gone not in seen, gone
        assert seen["authorization"] == "Bearer upstream-token"  # end-to-end, passes through
        assert seen["x-forwarded-for"] == f"{NEW_YORK}, 127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"
        assert seen["via"] == "1.1 gslb"
        assert seen["x-request-id"] == "abc-123"
        assert doc["query_string"] == "q=1"


async def test_spoofed_forwarded_for_from_untrusted_peer_is_ignored(tmp_path: Path) -> None:
    # Nothing on loopback is trusted: 127.0.0.1 itself is the client, and it has no location.
    async with stack(tmp_path, trusted=("10.99.0.0/16",)) as s:
        async with s.request("GET", "/echo", TORONTO) as resp:
            doc = await resp.json()
            # A Canadian address would be pinned to ca-central; the spoof is not believed and
            # the unplaced client is routed from the edge (New York).
            assert resp.headers["X-GSLB-Region"] == "us-east"
        seen = {k.lower(): v for k, v in doc["headers"]}
        assert seen["x-forwarded-for"] == "127.0.0.1"  # the spoofed chain is not passed on
        assert s.recorder.records[-1].country is None


async def test_unknown_location_goes_to_the_edge(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        async with s.request("GET", "/v1/models", NOWHERE) as resp:
            assert resp.status == 200
            assert resp.headers["X-GSLB-Region"] == "us-east"


async def test_openai_client_streams_through_gslb(tmp_path: Path) -> None:
    openai = pytest.importorskip("openai")
    async with stack(tmp_path) as s:
        client = openai.AsyncOpenAI(
            base_url=s.url + "/v1",
            api_key="sk-test",
            default_headers={"X-Forwarded-For": FRANKFURT},
        )
        stream = await client.chat.completions.create(
            model="fake-llm",
            messages=[{"role": "user", "content": "Bonjour"}],
            max_tokens=4,
            stream=True,
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        await client.close()
        text = "".join(parts)
        assert "eu-central" in text
        assert len([p for p in parts if p]) == 4


async def test_head_and_no_body_statuses(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        async with s.request("HEAD", "/echo", NEW_YORK) as resp:
            assert resp.status == 200
            assert await resp.read() == b""
        async with s.request("GET", "/status/204", NEW_YORK) as resp:
            assert resp.status == 204
            assert await resp.read() == b""


async def test_compressed_bodies_pass_through_untouched(tmp_path: Path) -> None:
    async with stack(tmp_path, scripted=("us-west",)) as s:
        # Up: the upstream (which decompresses) gets our gzip bytes intact.
        plain = b"prompt text " * 1000
        async with s.request(
            "POST",
            "/upload",
            NEW_YORK,
            data=gzip.compress(plain),
            headers={"Content-Encoding": "gzip"},
        ) as resp:
            doc = await resp.json()
        assert doc["sha256"] == hashlib.sha256(plain).hexdigest()
        # Down: compressed bytes, Content-Encoding and Content-Length reach the client as sent.
        async with s.request("GET", "/gzip", SAN_FRANCISCO) as resp:
            assert resp.headers["X-GSLB-Region"] == "us-west"
            assert resp.headers["Content-Encoding"] == "gzip"
            assert resp.headers["Content-Length"] == str(len(GZIPPED))
            assert await resp.read() == GZIPPED


async def test_body_limits(tmp_path: Path) -> None:
    async with stack(
        tmp_path, extra="[proxy]\nmax_body_bytes = 100000\nreplay_buffer_bytes = 1000"
    ) as s:
        async with s.request("POST", "/upload", NEW_YORK, data=b"x" * 100001) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"] == "body_too_large"
        async with s.request("POST", "/upload", NEW_YORK, data=b"y" * 50000) as resp:
            assert resp.status == 200  # above the replay buffer: streamed, not buffered
            assert (await resp.json())["bytes"] == 50000

        async def endless():  # type: ignore[no-untyped-def]
            for _ in range(100):
                yield b"z" * 10000

        # No Content-Length: the limit is enforced while streaming.
        async with s.request("POST", "/upload", NEW_YORK, data=endless()) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"] == "body_too_large"


async def test_bad_control_header_is_a_json_400(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        async with s.request(
            "GET", "/v1/models", NEW_YORK, headers={"X-GSLB-Latency-Budget-Ms": "soon"}
        ) as resp:
            assert resp.status == 400
            doc = await resp.json()
            assert doc["error"] == "bad_request" and "Budget" in doc["message"]
            assert resp.headers["Via"] == "1.1 gslb" and resp.headers["X-Request-Id"]


async def test_residency_header_only_narrows(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        async with s.request(
            "GET", "/v1/models", TORONTO, headers={"X-GSLB-Residency": "US"}
        ) as resp:
            assert resp.status == 503  # a Canadian cannot widen to the US
            assert resp.headers["X-GSLB-Route"] == "no-region"
            assert "X-GSLB-Region" not in resp.headers
        async with s.request(
            "GET", "/v1/models", NEW_YORK, headers={"X-GSLB-Residency": "DE"}
        ) as resp:
            assert resp.headers["X-GSLB-Region"] == "eu-central"


async def raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        out = await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()
    return out


async def test_hostile_requests_get_4xx_and_never_reach_another_host(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        port = s.worker.port
        assert port is not None
        cases = [
            b"GARBAGE\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
            b"GET http://evil.example/steal HTTP/1.1\r\nHost: evil.example\r\n\r\n",
            b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
        ]
        for data in cases:
            out = await raw(port, data)
            status = int(out.split(b" ", 2)[1])
            assert 400 <= status < 500, (data[:40], out[:200])
            assert b"Traceback" not in out
        # Host-looking paths and Host headers never pick the upstream: the region's does.
        for path in ("//evil.example/steal", "/@evil.example/x", "/..//evil.example"):
            async with s.request(
                "GET", path, NEW_YORK, headers={"Host": "evil.example:80"}
            ) as resp:
                assert resp.headers["X-Fake-Region"] == "us-east"
        # Still serving afterwards.
        async with s.request("GET", "/v1/models", NEW_YORK) as resp:
            assert resp.status == 200


async def test_websocket_pass_through(tmp_path: Path) -> None:
    async with stack(tmp_path, scripted=("eu-central",)) as s:
        async with s.client.ws_connect(
            s.url + "/ws", headers={"X-Forwarded-For": FRANKFURT}, protocols=("chat",)
        ) as ws:
            assert ws.protocol == "chat"
            await ws.send_str("hello")
            assert (await ws.receive_str()) == "eu-central:hello"
            await ws.send_bytes(b"abc")
            assert (await ws.receive_bytes()) == b"cba"
        fleet = s.worker.runtime.fleet
        await eventually(lambda: all(r.inflight == 0 for r in fleet.regions))


async def test_request_ids_are_created_and_bad_ones_replaced(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        async with s.request("GET", "/echo", NEW_YORK, headers={"X-Request-Id": "not valid!"}) as r:
            rid = r.headers["X-Request-Id"]
            doc = await r.json()
        assert rid and " " not in rid
        assert dict((k.lower(), v) for k, v in doc["headers"])["x-request-id"] == rid
        assert json.dumps(doc)  # well-formed


async def test_no_upstream_connection_leaks_on_error_paths(tmp_path: Path) -> None:
    async with stack(
        tmp_path,
        scripted=("us-east", "ca-central", "us-west"),
        extra="[proxy]\nttft_timeout_s = 0.2",
    ) as s:
        ups = s.upstreams
        scenarios = ["503", "hang", "abort-after-first", "ok"]
        for mode in scenarios:
            for up in ups.values():
                up.mode = mode
            for _ in range(3):
                try:
                    async with s.request("GET", "/x", NEW_YORK) as r:
                        await r.read()
                except aiohttp.ClientPayloadError:
                    pass  # the aborted stream, as designed
        # A client that leaves mid-request, too.
        for up in ups.values():
            up.mode = "hang"
        task = asyncio.create_task(s.request("GET", "/x", NEW_YORK).__aenter__())
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        pools = s.worker.pools
        assert pools is not None
        fleet = s.worker.runtime.fleet
        urls = [ep.url for r in fleet.regions for ep in r.endpoints]

        def released() -> bool:  # no upstream connection is still held by a request
            return all(pools.stats(u).open == pools.stats(u).idle for u in urls)

        await eventually(released)
        assert all(pools.stats(u).waiting == 0 for u in urls)
        assert all(r.inflight == 0 for r in fleet.regions)


async def test_client_hanging_up_mid_stream_is_a_499_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level("INFO")
    async with stack(tmp_path) as s:
        # 1. The usual way: the client's connection drops while gslb waits on the upstream.
        for _ in range(2):
            resp = await s.request("GET", "/download?bytes=50000000&chunk=65536", NEW_YORK)
            await resp.content.readexactly(65536)
            resp.connection.transport.abort()  # type: ignore[union-attr]  # gone, no goodbye
            resp.close()
        await eventually(lambda: len(s.recorder.records) == 2)
        # 2. The race under load: upstream data and the client's reset arrive together, so
        # gslb's write hits the closing transport before the connection's loss is seen.
        original = RequestCycle.write
        calls = {"n": 0}

        def write(self: RequestCycle, data: bytes) -> None:
            calls["n"] += 1
            if calls["n"] == 3:
                transport = self._conn.transport
                assert transport is not None
                transport.abort()  # the reset lands just as gslb writes
            original(self, data)

        monkeypatch.setattr(RequestCycle, "write", write)
        async with s.request("GET", "/sse?events=5&interval_ms=20", NEW_YORK) as resp:
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(resp.read(), 10)
        await eventually(lambda: len(s.recorder.records) == 3)
        assert [r.status for r in s.recorder.records] == [499, 499, 499]
        await eventually(lambda: s.worker.runtime.fleet.regions[0].inflight == 0)
        assert s.worker.runtime.fleet.regions[0].endpoints[0].consecutive_failures == 0
    # gslb's own loggers (the fake upstream may complain about its own broken pipe).
    ours = [r for r in caplog.records if r.name.startswith("gslb.") and "fake" not in r.name]
    assert not [r for r in ours if r.levelname in ("ERROR", "CRITICAL") or r.exc_info]


async def test_stalled_stream_after_commit_is_cut_at_idle_timeout(tmp_path: Path) -> None:
    async with stack(tmp_path, extra="[proxy]\nidle_timeout_s = 0.4\nttft_timeout_s = 5") as s:
        t0 = time.monotonic()
        async with s.request("GET", "/headers-then-hang", NEW_YORK) as resp:
            assert resp.status == 200  # committed: the first chunk arrived
            first = await resp.content.readany()
            assert first
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(resp.read(), 10)  # truncated, not a clean end
        assert 0.35 < time.monotonic() - t0 < 3
        await eventually(lambda: bool(s.recorder.records))
        rec = s.recorder.records[-1]
        assert rec.attempts == 1 and rec.status == 200  # no retry after commit
        ep = s.worker.runtime.fleet.regions[0].endpoints[0]
        assert ep.consecutive_failures == 1  # the stall counts against the upstream


async def test_an_internal_bug_is_a_json_500_never_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="gslb")
    async with stack(tmp_path) as s:

        def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("secret internal detail")

        monkeypatch.setattr(s.worker.runtime.router, "decide", broken)
        async with s.request("GET", "/v1/models", NEW_YORK) as resp:
            assert resp.status == 500
            text = await resp.text()
        doc = json.loads(text)
        assert doc["error"] == "internal_error" and doc["request_id"]
        assert "Traceback" not in text and "secret internal detail" not in text
        assert s.recorder.records[-1].status == 500
        # The log says what broke and where, but not the exception's words (they may quote
        # a client's header or path).
        line = next(r.getMessage() for r in caplog.records if "internal error" in r.getMessage())
        assert doc["request_id"] in line and "RuntimeError at" in line and "broken" in line
        assert "secret internal detail" not in caplog.text
        monkeypatch.undo()
        async with s.request("GET", "/v1/models", NEW_YORK) as resp:
            assert resp.status == 200  # and the worker keeps serving


async def test_long_forwarding_headers_are_placed_but_not_kept(tmp_path: Path) -> None:
    """The per-config cache of client placements keys on the client's own header bytes:
    long, ever-new X-Forwarded-For lines are walked and routed like any, but never kept."""
    async with stack(tmp_path) as s:
        assert s.worker.proxy is not None
        for i in range(20):
            # Made-up hops first, then the address our trusted peer appended: Toronto.
            padding = ", ".join(f"10.{i}.{j // 250}.{j % 250}" for j in range(40))
            async with s.request("GET", "/v1/models", f"{padding}, {TORONTO}") as r:
                assert r.status == 200 and r.headers["X-GSLB-Region"] == "ca-central"
        async with s.request("GET", "/v1/models", TORONTO) as r:
            assert r.headers["X-GSLB-Region"] == "ca-central"
        clients = s.worker.proxy.plan().clients
        assert len(clients) == 1  # only the short line was kept
        assert all(sum(map(len, key[1:])) <= 256 for key in clients)
