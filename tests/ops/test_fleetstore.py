"""The fleet store against real ``nats-server`` processes (tests/natsserver.py).

Each test starts its own server with JetStream on a temp store; clients are real nats-py
connections made by ``FleetStore.connect``. Raw nats-py clients stand in for a bad peer or
a hand-made ``nats kv put`` where a test needs a value the store itself would not write.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import nkeys  # type: ignore[import-untyped]
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gslb.ops.fleetstore import (
    MAX_TOKEN_BYTES,
    MAX_VALUE_BYTES,
    ConfigVersion,
    ConflictError,
    Drain,
    FleetError,
    FleetStore,
    FleetUnavailable,
    InvalidValue,
    RevisionNotFound,
    decode_token,
    drain_key,
    encode_token,
)
from tests.loopback import eventually
from tests.natsserver import NatsServer, nats_server
from tests.ports import free_block

# nats-py's own rule for a KV key (nats/js/kv.py), restated so the encoding is held to it.
VALID_KEY = re.compile(r"^[-/_=\.a-zA-Z0-9]+$")
FAST: dict[str, Any] = {"reconnect_wait": 0.05, "timeout": 2.0}


@asynccontextmanager
async def store(server: NatsServer, **kw: Any) -> AsyncIterator[FleetStore]:
    s = await FleetStore.connect(server.url, **{**FAST, **kw})
    try:
        yield s
    finally:
        await s.close()


@asynccontextmanager
async def raw_kv(server: NatsServer, bucket: str = "gslb") -> AsyncIterator[Any]:
    """A plain nats-py handle on the bucket: a peer that writes whatever it likes."""
    nc = await nats.connect(server.url)
    try:
        yield await nc.jetstream().key_value(bucket)
    finally:
        await nc.close()


class Watching:
    """Runs ``watch_config`` in a task and queues what it yields."""

    def __init__(self, fleet: FleetStore) -> None:
        self.seen: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        self.ended = False
        self.task = asyncio.create_task(self._run(fleet))

    async def _run(self, fleet: FleetStore) -> None:
        async for item in fleet.watch_config():
            await self.seen.put(item)
        self.ended = True

    async def next(self, timeout: float = 5.0) -> tuple[int, str]:
        return await asyncio.wait_for(self.seen.get(), timeout)

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


def assert_no_chain(exc: BaseException) -> None:
    """No nats-py exception rides along to be printed under gslb's own."""
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__


async def client_subscriptions(server: NatsServer, name: str) -> int:
    """The server's count of subscriptions held by the connection called ``name``."""
    page = await server.monitor("/connz?subs=1")
    (conn,) = [c for c in page["connections"] if c.get("name") == name]
    return int(conn["subscriptions"])


async def consumers(server: NatsServer) -> int:
    return int((await server.monitor("/jsz"))["consumers"])


# -- config: push, get, compare-and-set --------------------------------------------------


async def test_push_then_get_and_create_only_once(tmp_path: Path) -> None:
    async with nats_server(tmp_path) as server, store(server) as fleet:
        assert await fleet.get_config() is None
        rev = await fleet.push_config("[routing]\nmode = 'geo'\n", None)
        assert await fleet.get_config() == (rev, "[routing]\nmode = 'geo'\n")
        # None means "must not exist yet": a second first push loses, naming the winner.
        with pytest.raises(ConflictError) as err:
            await fleet.push_config("[routing]\n", None)
        assert err.value.current_revision == rev
        assert f"revision {rev}" in str(err.value)
        rev2 = await fleet.push_config("[routing]\nmode = 'latency'\n", rev)
        assert rev2 > rev
        assert await fleet.get_config() == (rev2, "[routing]\nmode = 'latency'\n")
        # A stale expected revision loses too.
        with pytest.raises(ConflictError) as err:
            await fleet.push_config("[routing]\n", rev)
        assert err.value.current_revision == rev2


async def test_two_concurrent_pushes_exactly_one_wins(tmp_path: Path) -> None:
    async with nats_server(tmp_path) as server:
        async with store(server, name="a") as a, store(server, name="b") as b:
            base = await a.push_config("v0\n", None)
            for round_ in range(5):
                read_a, read_b = await a.get_config(), await b.get_config()
                assert read_a is not None and read_a == read_b
                results = await asyncio.gather(
                    a.push_config(f"a{round_}\n", read_a[0]),
                    b.push_config(f"b{round_}\n", read_b[0]),
                    return_exceptions=True,
                )
                wins = [r for r in results if isinstance(r, int)]
                losses = [r for r in results if isinstance(r, ConflictError)]
                assert len(wins) == 1 and len(losses) == 1, results
                assert losses[0].current_revision == wins[0]
                current = await a.get_config()
                assert current is not None and current[0] == wins[0] > base
                winner = "a" if isinstance(results[0], int) else "b"
                assert current[1] == f"{winner}{round_}\n"


async def test_push_refuses_values_it_cannot_store(tmp_path: Path) -> None:
    async with nats_server(tmp_path) as server, store(server) as fleet:
        with pytest.raises(InvalidValue) as err:
            await fleet.push_config("x" * (MAX_VALUE_BYTES + 1), None)
        assert err.value.reason == "too_large"
        with pytest.raises(InvalidValue) as err:
            await fleet.push_config("bad \ud800 surrogate", None)
        assert err.value.reason == "not_utf8"
        # The largest value allowed goes through: the limit leaves room for NATS's headers.
        rev = await fleet.push_config("y" * MAX_VALUE_BYTES, None)
        assert await fleet.get_config() == (rev, "y" * MAX_VALUE_BYTES)


# -- history and rollback -----------------------------------------------------------------


async def test_history_and_rollback(tmp_path: Path) -> None:
    docs = ["one\n", "two\n", "three\n"]
    async with nats_server(tmp_path) as server, store(server) as fleet:
        revs: list[int] = []
        for doc in docs:
            revs.append(await fleet.push_config(doc, revs[-1] if revs else None))
            # Other keys write in between: revisions are the stream's, shared by every key.
            await fleet.set_drain("region", f"r{len(revs)}")
        history = await fleet.history()
        assert [h.revision for h in history] == revs
        assert [h.digest for h in history] == [hashlib.sha256(d.encode()).hexdigest() for d in docs]
        now = datetime.now(UTC)
        assert all(isinstance(h, ConfigVersion) for h in history)
        assert all(
            now - timedelta(seconds=30) < h.when <= now + timedelta(seconds=1) for h in history
        )

        new = await fleet.rollback(revs[0])
        assert new > revs[-1]
        assert await fleet.get_config() == (new, "one\n")
        assert [h.revision for h in await fleet.history()] == [*revs, new]

        drain_rev = await fleet.set_drain("region", "elsewhere")
        for missing in (0, -1, drain_rev, drain_rev + 100):  # none of these is a config
            with pytest.raises(RevisionNotFound) as err:
                await fleet.rollback(missing)
            assert err.value.revision == missing
        assert (await fleet.get_config()) == (new, "one\n")


async def test_rollback_is_compare_and_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with nats_server(tmp_path) as server, store(server) as fleet:
        r1 = await fleet.push_config("one\n", None)
        r2 = await fleet.push_config("two\n", r1)
        # Another operator pushes while this rollback is between its read and its write.
        original = fleet.push_config

        async def push_racing(text: str, expected: int | None) -> int:
            async with store(server, name="other") as other:
                await other.push_config("three\n", r2)
            return await original(text, expected)

        monkeypatch.setattr(fleet, "push_config", push_racing)
        with pytest.raises(ConflictError) as err:
            await fleet.rollback(r1)
        current = await fleet.get_config()
        assert current is not None and current[1] == "three\n"
        assert err.value.current_revision == current[0]


# -- watching -----------------------------------------------------------------------------


async def test_watch_starts_with_the_current_value_and_sees_pushes_in_order(
    tmp_path: Path,
) -> None:
    async with nats_server(tmp_path) as server, store(server) as fleet:
        rev = await fleet.push_config("v0\n", None)
        watching = Watching(fleet)
        assert await watching.next() == (rev, "v0\n")
        pushed = []
        for i in range(1, 8):
            rev = await fleet.push_config(f"v{i}\n", rev)
            pushed.append((rev, f"v{i}\n"))
        assert [await watching.next() for _ in pushed] == pushed
        await fleet.close()
        await eventually(lambda: watching.ended, 5.0)  # close ends the iteration
        assert watching.seen.empty()


async def test_watch_waits_for_a_first_document(tmp_path: Path) -> None:
    async with nats_server(tmp_path) as server, store(server) as fleet:
        watching = Watching(fleet)
        await asyncio.sleep(0.1)
        assert watching.seen.empty()
        rev = await fleet.push_config("first\n", None)
        assert await watching.next() == (rev, "first\n")
        await watching.stop()


@pytest.mark.parametrize("outage", ["stop", "kill"])
async def test_watch_survives_a_server_restart(tmp_path: Path, outage: str) -> None:
    async with nats_server(tmp_path) as server:
        async with store(server, name="edge") as fleet, store(server, name="op") as op:
            r1 = await op.push_config("before\n", None)
            watching = Watching(fleet)
            assert await watching.next() == (r1, "before\n")
            await (server.stop() if outage == "stop" else server.kill())
            # Serving never waits on NATS: a call during the outage fails at once.
            with pytest.raises(FleetUnavailable):
                await asyncio.wait_for(fleet.get_config(), 0.5)
            await server.start()  # same port, same store: the bucket is still there
            await eventually(lambda: op.connected and fleet.connected, 5.0)
            r2 = await op.push_config("after\n", r1)
            assert await watching.next() == (r2, "after\n")
            assert watching.seen.empty()  # the re-opened watch did not replay "before"
            await watching.stop()


async def test_twenty_restarts_do_not_pile_up_subscriptions_or_consumers(
    tmp_path: Path,
) -> None:
    async with nats_server(tmp_path) as server:
        async with store(server, name="edge") as fleet, store(server, name="op") as op:
            rev = await op.push_config("v0\n", None)
            watching = Watching(fleet)
            assert (await watching.next())[0] == rev
            heard: list[bytes] = []

            async def hear(subject: str, data: bytes) -> None:
                heard.append(data)

            await fleet.subscribe("gslb.obs.*", hear)  # fleet health's subject, once
            # The request inbox, one watch and the observations; one consumer, the watch's.
            base_subs = await client_subscriptions(server, "edge")
            assert base_subs == 3
            assert await consumers(server) == 1
            for i in range(1, 21):
                await server.stop()
                await server.start()
                await eventually(lambda: op.connected and fleet.connected, 5.0)
                rev = await op.push_config(f"v{i}\n", rev)
                assert await watching.next() == (rev, f"v{i}\n")
                assert await client_subscriptions(server, "edge") == base_subs
                assert await consumers(server) == 1
                # Hearing resumes after each restart, on the one subscription (published
                # until heard: the edge's subscription may reach the new server after op).
                for _ in range(100):
                    assert await op.publish("gslb.obs.op", b"%d" % i)
                    await asyncio.sleep(0.05)
                    if heard[-1:] == [b"%d" % i]:
                        break
                assert heard[-1:] == [b"%d" % i]
            await watching.stop()
            await eventually(lambda: not fleet._watches, 1.0)


# -- drains -------------------------------------------------------------------------------

TARGETS = [
    ("region", "us-east"),
    ("region", "eu_west.2"),
    ("endpoint", "http://10.0.0.1:8000"),
    ("endpoint", "https://gpu-3.example.com:8443/v1/chat?x=1&y=2"),
    ("endpoint", "http://[fd00::1]:8000/"),
    ("endpoint", "http://münchen.example/=3D"),
]


async def test_watch_drains_yields_the_set_on_each_change_on_one_consumer(
    tmp_path: Path,
) -> None:
    async with nats_server(tmp_path) as server:
        async with store(server, name="edge") as fleet, store(server, name="op") as op:
            await op.set_drain("region", "us-east")
            drains = fleet.watch_drains()
            assert await anext(drains) == {Drain("region", "us-east")}
            await op.set_drain("endpoint", "http://10.0.0.1:8000")
            assert await anext(drains) == {
                Drain("region", "us-east"),
                Drain("endpoint", "http://10.0.0.1:8000"),
            }
            assert await op.clear_drain("region", "us-east")
            assert await anext(drains) == {Drain("endpoint", "http://10.0.0.1:8000")}
            assert await consumers(server) == 1  # however often it was read
            # A restart replaces the watch, and the whole set comes again.
            await server.stop()
            await server.start()
            await eventually(lambda: op.connected and fleet.connected, 5.0)
            assert await asyncio.wait_for(anext(drains), 10) == {
                Drain("endpoint", "http://10.0.0.1:8000")
            }
            assert await op.clear_drain("endpoint", "http://10.0.0.1:8000")
            assert await asyncio.wait_for(anext(drains), 10) == frozenset()
            assert await consumers(server) == 1
            await drains.aclose()  # type: ignore[attr-defined]


async def test_drains_round_trip_with_encoded_keys(tmp_path: Path) -> None:
    async with nats_server(tmp_path) as server, store(server) as fleet:
        assert await fleet.drains() == frozenset()
        for kind, target in TARGETS:
            await fleet.set_drain(kind, target)  # type: ignore[arg-type]
        await fleet.set_drain("region", "us-east")  # again: still one drain
        assert await fleet.drains() == {Drain(k, t) for k, t in TARGETS}  # type: ignore[arg-type]
        # What a peer with plain nats-py sees: one valid key per drain, one token each.
        async with raw_kv(server) as kv:
            keys = set(await kv.keys())
        drain_keys = {k for k in keys if k.startswith("drain.")}
        assert drain_keys == {drain_key(k, t) for k, t in TARGETS}
        assert all(VALID_KEY.match(k) and k.count(".") == 2 for k in drain_keys)
        assert "drain.region.us-east" in drain_keys  # region names read as themselves

        assert await fleet.clear_drain("endpoint", "http://10.0.0.1:8000") is True
        assert await fleet.clear_drain("endpoint", "http://10.0.0.1:8000") is False
        assert await fleet.clear_drain("region", "never-drained") is False
        left = {Drain(k, t) for k, t in TARGETS if t != "http://10.0.0.1:8000"}  # type: ignore[arg-type]
        assert await fleet.drains() == left
        with pytest.raises(InvalidValue):
            await fleet.set_drain("zone", "x")  # type: ignore[arg-type]
        with pytest.raises(InvalidValue):
            await fleet.set_drain("region", "")


# 40 characters escape to at most 40 * 4 * 3 bytes, under MAX_TOKEN_BYTES.
@given(st.text(min_size=1, max_size=40))
def test_token_encoding_round_trips_into_one_valid_key_token(text: str) -> None:
    token = encode_token(text)
    assert VALID_KEY.match(token) and "." not in token
    assert decode_token(token) == text


def test_token_encoding_is_the_one_spelling() -> None:
    assert encode_token("us-east_1") == "us-east_1"
    assert encode_token("http://a.b:80") == "http=3A=2F=2Fa=2Eb=3A80"
    assert encode_token("é") == "=C3=A9"
    assert encode_token("a=b") == "a=3Db"
    # Every other spelling of a text is refused, so one text has one key.
    for bad in ["", "a.b", "=2e", "=41", "=4", "=ZZ", "a b", "=C3", "x*", ">"]:
        with pytest.raises(ValueError):
            decode_token(bad)
    for bad_name in ["", "x" * (MAX_TOKEN_BYTES + 1), "é" * (MAX_TOKEN_BYTES // 6 + 1)]:
        with pytest.raises(InvalidValue) as err:
            encode_token(bad_name)
        assert err.value.reason == "bad_name"


# -- edges --------------------------------------------------------------------------------


async def test_edge_reports_round_trip(tmp_path: Path) -> None:
    async with nats_server(tmp_path) as server, store(server) as fleet:
        assert await fleet.edges() == {}
        doc = {"revision": 7, "error": None, "regions": {"us-east": "up"}}
        rev = await fleet.report_edge("edge-fra.1", doc)
        await fleet.report_edge("edge-nyc", {"revision": 7, "error": "bad [routing]"})
        rev2 = await fleet.report_edge("edge-fra.1", {**doc, "revision": 8})
        edges = await fleet.edges()
        assert set(edges) == {"edge-fra.1", "edge-nyc"}
        fra = edges["edge-fra.1"]
        assert fra.doc == {**doc, "revision": 8} and fra.revision == rev2 > rev
        assert abs(datetime.now(UTC) - fra.seen) < timedelta(seconds=30)
        assert edges["edge-nyc"].doc["error"] == "bad [routing]"
        with pytest.raises(InvalidValue) as err:
            await fleet.report_edge("edge-x", {"when": object()})
        assert err.value.reason == "not_json"


# -- bad values from peers ------------------------------------------------------------------


async def test_malformed_and_oversized_values_are_dropped_and_counted(tmp_path: Path) -> None:
    async with nats_server(tmp_path) as server, raw_kv_after_bucket(server) as kv:
        async with store(server, max_value_bytes=1000) as fleet:
            good = await fleet.push_config("good\n", None)
            watching = Watching(fleet)
            assert await watching.next() == (good, "good\n")

            dropped = fleet.dropped
            await kv.put("config", b"\xff\xfe not utf-8")
            await kv.put("config", b"z" * 1001)  # over this store's limit
            assert await fleet.get_config() is None  # the current value is unreadable
            # The watch skipped both, without raising, and goes on with the next good one.
            latest = await kv.put("config", b"good again\n")
            assert await watching.next() == (latest, "good again\n")
            assert fleet.dropped == dropped + 3  # the two the watch saw, one get_config

            # Drains: a value that names another target, a key that is no token, not UTF-8.
            await kv.put(drain_key("region", "a"), b"b")
            await kv.put("drain.region.a=zz", b"a=zz")
            await kv.put("drain.zone.a", b"a")
            await kv.put(drain_key("region", "c"), b"\xff")
            await fleet.set_drain("region", "ok")
            before = fleet.dropped
            assert await fleet.drains() == {Drain("region", "ok")}
            assert fleet.dropped == before + 4

            # Edge reports: not JSON, not an object.
            await kv.put("edge.bad-json", b"{")
            await kv.put("edge.a-list", b"[1, 2]")
            await fleet.report_edge("fine", {"revision": latest})
            before = fleet.dropped
            assert set(await fleet.edges()) == {"fine"}
            assert fleet.dropped == before + 2

            # History leaves the unreadable revisions out.
            assert [h.revision for h in await fleet.history()] == [good, latest]
            await watching.stop()


@asynccontextmanager
async def raw_kv_after_bucket(server: NatsServer) -> AsyncIterator[Any]:
    """``raw_kv`` once a store has created the bucket (with its default limits)."""
    async with store(server):
        pass
    async with raw_kv(server) as kv:
        yield kv


# -- connecting and credentials -----------------------------------------------------------


async def test_user_password_auth(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "s3cret-Pa55"
    async with nats_server(tmp_path, user="gslb", password=secret) as server:
        async with store(server, user="gslb", password=secret) as fleet:
            rev = await fleet.push_config("doc-body-text\n", None)
            assert await fleet.get_config() == (rev, "doc-body-text\n")
        for user, password in [("gslb", "wrong"), ("nobody", secret), (None, None)]:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(FleetUnavailable) as err:
                await FleetStore.connect(server.url, user=user, password=password)
            assert loop.time() - started < 1.0  # refused at once, not at the deadline
            assert err.value.reason == "credentials"
            assert str(err.value) == "fleet store unavailable: NATS refused the credentials"
            assert_no_chain(err.value)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "refused the credentials" in logged
    assert secret not in logged and "wrong" not in logged and "doc-body-text" not in logged


async def test_nkey_auth(tmp_path: Path) -> None:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    seed_file = tmp_path / "edge.nk"
    seed_file.write_bytes(seed)
    other = tmp_path / "other.nk"
    other.write_bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    async with nats_server(tmp_path, nkey=public) as server:
        async with store(server, nkey_file=seed_file) as fleet:
            assert await fleet.push_config("x\n", None) > 0
        with pytest.raises(FleetUnavailable) as err:
            await FleetStore.connect(server.url, nkey_file=other)
        assert err.value.reason == "credentials"
    with pytest.raises(FleetError) as ferr:
        await FleetStore.connect("nats://127.0.0.1:1", creds_file=tmp_path / "missing.creds")
    assert "missing.creds" in str(ferr.value)


async def test_unreachable_nats_is_fleet_unavailable(tmp_path: Path) -> None:
    nowhere = f"nats://127.0.0.1:{free_block(1)}"  # nothing listens there
    with pytest.raises(FleetUnavailable) as err:
        await FleetStore.connect(nowhere, connect_deadline=0.3, reconnect_wait=0.05)
    assert err.value.reason == "unreachable"
    assert_no_chain(err.value)
    # A server without JetStream: connected, but no bucket to be had.
    async with nats_server(tmp_path, jetstream=False) as server:
        with pytest.raises(FleetUnavailable) as err:
            await FleetStore.connect(server.url, timeout=0.5)
        assert err.value.reason == "no_jetstream"


async def test_a_closed_store_refuses_calls(tmp_path: Path) -> None:
    async with nats_server(tmp_path) as server:
        fleet = await FleetStore.connect(server.url, **FAST)
        await fleet.close()
        for call in (fleet.get_config(), fleet.drains(), fleet.push_config("x", None)):
            with pytest.raises(FleetUnavailable) as err:
                await call
            assert err.value.reason == "closed"
        assert [item async for item in fleet.watch_config()] == []
