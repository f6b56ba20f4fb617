"""`gslb serve` as a real process: workers, signals, graceful shutdown, reload, TLS, limits."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from gslb.sim.fakeregion import FakeRegion, FakeRegionOptions
from tests.fleet import REGIONS, fleet_toml
from tests.harness import NEW_YORK, stack
from tests.mmdb_fixtures import write_world_mmdb

ROOT = Path(__file__).resolve().parents[2]
CHAT = {"model": "fake-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_http(url: str, timeout: float = 30.0, ssl_ctx: ssl.SSLContext | None = None) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as c:
        while True:
            try:
                async with c.get(url, ssl=ssl_ctx) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not come up")
            await asyncio.sleep(0.1)


@asynccontextmanager
async def served(
    tmp: Path,
    workers: int,
    extra: str = "",
    fakes_opts: dict[str, FakeRegionOptions] | None = None,
    *,
    args: Sequence[str] = (),
    ready_url: str | None = None,
    log: Path | None = None,
) -> AsyncIterator[tuple[subprocess.Popen[bytes], str, str, Path, dict[str, FakeRegion]]]:
    """Fake regions in this process, `gslb serve` in a child process.

    ``args``: more `gslb serve` arguments; ``ready_url``: the admin base URL to wait for
    (default: the config's admin listener); ``log``: a file for the server's stderr.
    """
    mmdb = tmp / "world.mmdb"
    write_world_mmdb(str(mmdb))
    fakes: dict[str, FakeRegion] = {}
    for spec in REGIONS:
        opts = (fakes_opts or {}).get(spec[0]) or FakeRegionOptions(name=spec[0])
        fakes[spec[0]] = FakeRegion(opts)
        await fakes[spec[0]].start()
    port, admin_port = free_port(), free_port()
    cfg = tmp / "gslb.toml"
    cfg.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\nadmin_listen = "127.0.0.1:{admin_port}"\n'
        f"shutdown_grace_s = 10\n"
        f'[admin]\ntoken_env = "GSLB_TEST_TOKEN"\n'
        f'[log]\naccess = "off"\n{extra}\n'
        + fleet_toml(urls={n: [f.url] for n, f in fakes.items()}, geoip=f'database = "{mmdb}"')
    )
    env = {**os.environ, "GSLB_TEST_TOKEN": "tok"}
    stderr = log.open("wb") if log is not None else None
    cmd = ["serve", "--config", str(cfg), "--workers", str(workers), *args]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gslb", *cmd],
        cwd=ROOT,
        env=env,
        stderr=stderr,
    )
    scheme = "https" if "tls_cert" in extra else "http"
    try:
        await wait_http(f"{ready_url or f'http://127.0.0.1:{admin_port}'}/readyz")
        yield proc, f"{scheme}://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}", cfg, fakes
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if stderr is not None:
            stderr.close()
        for f in fakes.values():
            await f.stop()


def worker_pids(parent: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == parent and b"_worker" in cmd:
                out.append(int(entry.name))
    return out


async def test_two_workers_serve_and_metrics_add_up(tmp_path: Path) -> None:
    async with served(tmp_path, 2) as (proc, url, admin, _cfg, fakes):
        assert len(worker_pids(proc.pid)) == 2
        async with aiohttp.ClientSession() as c:
            for _ in range(40):
                # A new connection each time, so the kernel spreads them over both workers.
                async with c.get(
                    url + "/v1/models", headers={"X-Forwarded-For": NEW_YORK, "Connection": "close"}
                ) as r:
                    assert r.status == 200
            async with c.get(admin + "/metrics") as r:
                text = await r.text()
            async with c.get(admin + "/status") as r:
                status = orjson.loads(await r.read())
        total = sum(
            s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name == "gslb_requests_total"
        )
        assert total == 40
        assert status["workers"] == 2 and sum(status["decisions"].values()) == 40
        assert fakes["us-east"].stats.by_path.get("/v1/models") == 40


async def wait_generation(admin: str, generation: int) -> dict:  # type: ignore[type-arg]
    """Poll /status until the workers run config ``generation``; the status document."""
    async with aiohttp.ClientSession() as c:
        deadline = time.monotonic() + 15
        while True:
            async with c.get(admin + "/status") as r:
                doc: dict = orjson.loads(await r.read())  # type: ignore[type-arg]
            if doc["generation"] == generation:
                return doc
            assert time.monotonic() < deadline, "reload did not happen"
            await asyncio.sleep(0.1)


async def kill_a_worker(proc: subprocess.Popen[bytes], admin: str, workers: int = 2) -> None:
    """SIGKILL one worker; return once its replacement is up and every worker is ready."""
    victim = worker_pids(proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while True:
        pids = worker_pids(proc.pid)
        if len(pids) == workers and victim not in pids:
            break
        assert time.monotonic() < deadline, "worker was not restarted"
        await asyncio.sleep(0.1)
    # /readyz asks every worker over its control socket: 200 once the new one serves.
    await wait_http(admin + "/readyz", timeout=15)


async def via_headers(url: str, n: int = 40) -> set[str]:
    """The Via of ``n`` responses, each on a new connection so that every worker answers some
    (SO_REUSEPORT hashes each connection; all 40 on one of two workers: 2**-39)."""
    seen = set()
    async with aiohttp.ClientSession() as c:
        for _ in range(n):
            headers = {"X-Forwarded-For": NEW_YORK, "Connection": "close"}
            async with c.get(url + "/v1/models", headers=headers) as r:
                assert r.status == 200
                seen.add(r.headers["Via"])
    return seen


async def test_sighup_reload_and_worker_restart(tmp_path: Path) -> None:
    async with served(tmp_path, 2) as (proc, url, admin, cfg, _fakes):
        cfg.write_text(cfg.read_text().replace('name = "us-east"', 'name = "us-east-b"', 1))
        proc.send_signal(signal.SIGHUP)
        doc = await wait_generation(admin, 1)
        assert "us-east-b" in [r["name"] for r in doc["regions"]]
        # A worker that dies is replaced.
        await kill_a_worker(proc, admin)
        async with aiohttp.ClientSession() as c:
            for _ in range(10):
                async with c.get(url + "/v1/models", headers={"X-Forwarded-For": NEW_YORK}) as r:
                    assert r.status == 200


async def test_respawned_worker_runs_the_accepted_config_not_a_broken_file(
    tmp_path: Path,
) -> None:
    log = tmp_path / "serve.log"
    async with served(tmp_path, 2, log=log) as (proc, url, admin, cfg, _fakes):
        cfg.write_text("[server\nthis is not TOML")  # no SIGHUP: never accepted
        await kill_a_worker(proc, admin)
        assert await via_headers(url) == {"1.1 gslb"}
        pids = worker_pids(proc.pid)
        await asyncio.sleep(2.5)  # a worker failing at start would be restarted every second
        assert worker_pids(proc.pid) == pids
        assert log.read_text().count("restarting") == 1


async def test_respawned_worker_runs_the_last_reload_not_the_file(tmp_path: Path) -> None:
    extra = '[proxy]\nvia = "edge-one"'
    async with served(tmp_path, 2, extra) as (proc, url, admin, cfg, _fakes):
        assert await via_headers(url, 10) == {"1.1 edge-one"}
        cfg.write_text(cfg.read_text().replace("edge-one", "edge-two"))
        proc.send_signal(signal.SIGHUP)
        await wait_generation(admin, 1)
        cfg.write_text(cfg.read_text().replace("edge-two", "edge-three"))  # not reloaded
        await kill_a_worker(proc, admin)
        assert await via_headers(url) == {"1.1 edge-two"}


async def run_gslb(*args: str, timeout: float = 30) -> tuple[int, str]:
    """`gslb ARGS` to completion (exit status, stderr), off the event loop the fakes run on.

    A `serve` that wrongly starts is killed with its workers (its own process group).
    """
    cmd = [sys.executable, "-m", "gslb", *args]

    def run() -> tuple[int, str]:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"gslb {' '.join(args)} kept running") from None
        return proc.returncode, err

    return await asyncio.get_running_loop().run_in_executor(None, run)


@pytest.mark.parametrize("first_workers", [1, 2])
async def test_a_second_gslb_on_a_served_address_refuses_to_start(
    tmp_path: Path, first_workers: int
) -> None:
    async with served(tmp_path, first_workers) as (_proc, url, admin, cfg, _fakes):
        port, admin_port = url.rsplit(":", 1)[1], admin.rsplit(":", 1)[1]
        text = cfg.read_text()
        same_listen = tmp_path / "same-listen.toml"
        same_listen.write_text(text.replace(f":{admin_port}", f":{free_port()}"))
        same_admin = tmp_path / "same-admin.toml"
        same_admin.write_text(text.replace(f":{port}", f":{free_port()}"))
        cases = [
            (same_listen, "1", f"127.0.0.1:{port}"),
            (same_listen, "3", f"127.0.0.1:{port}"),
            (same_admin, "1", f"127.0.0.1:{admin_port}"),
            (same_admin, "3", f"127.0.0.1:{admin_port}"),
        ]
        for path, workers, address in cases:
            code, err = await run_gslb("serve", "--config", str(path), "--workers", workers)
            assert code == 1, (workers, address, err)
            lines = err.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in err, err
            assert address in lines[0] and "already in use" in lines[0]
        # The first one never noticed.
        assert await via_headers(url, 10) == {"1.1 gslb"}


@pytest.mark.parametrize("workers", [1, 2])
async def test_listen_overrides_hold_across_reloads_and_respawns(
    tmp_path: Path, workers: int
) -> None:
    port, admin_port = free_port(), free_port()
    args = ["--listen", f"127.0.0.1:{port}", "--admin-listen", f"0.0.0.0:{admin_port}"]
    admin = f"http://127.0.0.1:{admin_port}"
    log = tmp_path / "serve.log"
    async with served(tmp_path, workers, args=args, ready_url=admin, log=log) as (
        proc,
        file_url,
        _file_admin,
        cfg,
        _fakes,
    ):
        url = f"http://127.0.0.1:{port}"
        # All interfaces: 127.0.0.2 reaches a 0.0.0.0 listener, never a 127.0.0.1 one.
        await wait_http(f"http://127.0.0.2:{admin_port}/healthz", timeout=5)
        cfg.write_text(cfg.read_text() + '\n[proxy]\nvia = "edge-two"\n')
        proc.send_signal(signal.SIGHUP)
        await wait_generation(admin, 1)
        if workers > 1:
            await kill_a_worker(proc, admin, workers)
        assert await via_headers(url) == {"1.1 edge-two"}
        async with aiohttp.ClientSession() as c:
            with pytest.raises(aiohttp.ClientConnectionError):
                async with c.get(file_url + "/v1/models"):
                    pass  # nothing listens where the file says
    assert "take effect on restart" not in log.read_text()


async def test_sigterm_lets_a_running_stream_finish(tmp_path: Path) -> None:
    slow = {"us-east": FakeRegionOptions(name="us-east", tokens_per_s=10)}
    async with served(tmp_path, 1, fakes_opts=slow) as (proc, url, _admin, _cfg, _fakes):
        async with aiohttp.ClientSession() as c:
            async with c.post(
                url + "/v1/chat/completions",
                json={**CHAT, "stream": True, "max_tokens": 10},
                headers={"X-Forwarded-For": NEW_YORK},
            ) as r:
                first = await r.content.readline()
                assert first.startswith(b"data:")
                proc.send_signal(signal.SIGTERM)
                rest = await r.read()
        assert rest.rstrip().endswith(b"data: [DONE]")
        assert await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30) == 0


def make_ca(tmp: Path, name: str) -> tuple[Path, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, cert, key


def make_leaf(
    tmp: Path, name: str, ca: tuple[Path, x509.Certificate, ec.EllipticCurvePrivateKey]
) -> tuple[Path, Path]:
    _, ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_listener_terminates_tls(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "edge-ca")
    cert, key = make_leaf(tmp_path, "edge", ca)
    mmdb = tmp_path / "world.mmdb"
    write_world_mmdb(str(mmdb))
    fake = FakeRegion(FakeRegionOptions(name="us-east"))
    await fake.start()
    port, admin_port = free_port(), free_port()
    cfg = tmp_path / "tls.toml"
    cfg.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\nadmin_listen = "127.0.0.1:{admin_port}"\n'
        f'tls_cert = "{cert}"\ntls_key = "{key}"\n[log]\naccess = "off"\n'
        + fleet_toml(
            urls={"us-east": [fake.url]}, regions=[REGIONS[0]], geoip=f'database = "{mmdb}"'
        )
    )
    proc = subprocess.Popen([sys.executable, "-m", "gslb", "serve", "--config", str(cfg)], cwd=ROOT)
    try:
        await wait_http(f"http://127.0.0.1:{admin_port}/readyz")
        trusting = ssl.create_default_context(cafile=str(ca[0]))
        async with aiohttp.ClientSession() as c:
            async with c.get(f"https://127.0.0.1:{port}/v1/models", ssl=trusting) as r:
                assert r.status == 200 and r.headers["X-GSLB-Region"] == "us-east"
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with c.get(f"https://127.0.0.1:{port}/v1/models") as r:
                    pass  # an unknown CA is refused by a verifying client
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        await fake.stop()


async def start_tls_upstream(
    tmp: Path,
    ca: tuple[Path, x509.Certificate, ec.EllipticCurvePrivateKey],
    require_client: Path | None,
) -> tuple[FakeRegion, aiohttp.web.AppRunner, int]:
    from aiohttp import web

    cert, key = make_leaf(tmp, "upstream", ca)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if require_client is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(require_client))
    fake = FakeRegion(FakeRegionOptions(name="secure"))
    runner = web.AppRunner(fake.make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return fake, runner, port


async def test_upstream_tls_is_verified_and_mtls_works(tmp_path: Path) -> None:
    server_ca = make_ca(tmp_path, "upstream-ca")
    client_ca = make_ca(tmp_path, "client-ca")
    client_cert, client_key = make_leaf(tmp_path, "gslb-client", client_ca)
    _fake, runner, port = await start_tls_upstream(tmp_path, server_ca, require_client=client_ca[0])
    try:
        url = f"https://127.0.0.1:{port}"
        # 1. Default: verified against the system CAs, which do not know this CA: 502.
        async with stack(tmp_path / "a", regions=[REGIONS[0]], scripted=()) as s:
            s.worker.runtime.fleet.regions[0].endpoints[0].url = url
            async with s.request("GET", "/v1/models", NEW_YORK) as r:
                assert r.status == 502
        # 2. The region's CA bundle and client certificate: verified, mutual TLS.
        tls = (
            f'[regions.tls]\nca_file = "{server_ca[0]}"\n'
            f'cert_file = "{client_cert}"\nkey_file = "{client_key}"\n'
        )
        async with stack(tmp_path / "b", regions=[REGIONS[0]], region_extra={"us-east": tls}) as s:
            s.worker.runtime.fleet.regions[0].endpoints[0].url = url
            async with s.request("GET", "/v1/models", NEW_YORK) as r:
                assert r.status == 200
        # 3. The right CA but no client certificate: the upstream refuses the handshake.
        tls_no_client = f'[regions.tls]\nca_file = "{server_ca[0]}"\n'
        async with stack(
            tmp_path / "c", regions=[REGIONS[0]], region_extra={"us-east": tls_no_client}
        ) as s:
            s.worker.runtime.fleet.regions[0].endpoints[0].url = url
            async with s.request("GET", "/v1/models", NEW_YORK) as r:
                assert r.status == 502
    finally:
        await runner.cleanup()


async def test_slow_headers_and_connection_cap(tmp_path: Path) -> None:
    extra = "[server]\nheader_timeout_s = 0.3\nmax_connections = 3"
    async with stack(tmp_path, extra=extra) as s:
        port = s.worker.port
        # Slowloris: a connection that never finishes its headers is closed.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        await writer.drain()
        t0 = time.monotonic()
        answer = await asyncio.wait_for(reader.read(), 5)  # gslb's 408, then the close
        assert answer.startswith(b"HTTP/1.1 408 ") and b'"error":"slow_request"' in answer
        assert 0.25 < time.monotonic() - t0 < 3
        writer.close()
        # At most 3 connections: a fourth is closed at once.
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        r4, w4 = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(r4.read(), 5) == b""
        w4.close()
        listener = s.worker.listener
        assert listener is not None and listener.refused >= 1 and listener.slow_headers == 1
        for _, w in held:
            w.close()
        await asyncio.sleep(0.1)
        async with s.request("GET", "/v1/models", NEW_YORK) as r:
            assert r.status == 200


async def test_listener_certificate_is_reloaded(tmp_path: Path) -> None:
    ca1, ca2 = make_ca(tmp_path, "ca-one"), make_ca(tmp_path, "ca-two")
    cert1, key1 = make_leaf(tmp_path, "edge-one", ca1)
    cert2, key2 = make_leaf(tmp_path, "edge-two", ca2)
    extra = f'[server]\ntls_cert = "{cert1}"\ntls_key = "{key1}"\n[admin]\ntoken_env = ""\n'
    async with stack(tmp_path / "s", extra=extra, admin_token="tok") as s:
        url = f"https://127.0.0.1:{s.worker.port}/v1/models"
        trust1 = ssl.create_default_context(cafile=str(ca1[0]))
        trust2 = ssl.create_default_context(cafile=str(ca2[0]))
        headers = {"X-Forwarded-For": NEW_YORK}
        async with aiohttp.ClientSession() as c:
            async with c.get(url, ssl=trust1, headers=headers) as r:
                assert r.status == 200
            assert s.config_path is not None
            text = s.config_path.read_text()
            s.config_path.write_text(
                text.replace(str(cert1), str(cert2)).replace(str(key1), str(key2))
            )
            async with c.post(
                s.admin_url + "/reload", headers={"Authorization": "Bearer tok"}
            ) as r:
                assert r.status == 200
        # New handshakes present the new certificate (fresh sessions: no pooled connection).
        async with aiohttp.ClientSession() as c:
            async with c.get(url, ssl=trust2, headers=headers) as r:
                assert r.status == 200
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with c.get(url, ssl=trust1, headers=headers):
                    pass
