"""The ``gslb`` command line, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fleet import fleet_toml
from tests.harness import NEW_YORK, NOWHERE, TORONTO
from tests.mmdb_fixtures import write_world_mmdb

ROOT = Path(__file__).resolve().parents[2]


def gslb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gslb", *args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    mmdb = tmp_path / "world.mmdb"
    write_world_mmdb(str(mmdb))
    cfg = tmp_path / "gslb.toml"
    cfg.write_text(fleet_toml(geoip=f'database = "{mmdb}"'))
    return cfg


def route(config: Path, *args: str) -> dict:  # type: ignore[type-arg]
    res = gslb("route", "--config", str(config), "--json", *args)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def test_route_json_shape_and_toronto_goes_to_canada(config: Path) -> None:
    doc = route(config, "--ip", TORONTO)
    assert doc["client"]["country"] == "CA" and doc["client"]["ip"] == TORONTO
    assert (doc["region"], doc["reason"]) == ("ca-central", "local")
    assert doc["residency_rules"] == ["canada"]
    cands = {c["region"]: c for c in doc["candidates"]}
    assert set(cands["us-east"]) == {
        "region",
        "role",
        "allowed",
        "routable",
        "net_ms",
        "wait_ms",
        "util",
        "why_not",
    }
    assert cands["us-east"]["allowed"] is False and "canada" in cands["us-east"]["why_not"]
    assert cands["ca-central"]["why_not"] is None
    assert cands["ca-central"]["net_ms"] < cands["ca-west"]["net_ms"]


def test_saturated_state_keeps_canada_local_but_new_york_spills(
    config: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    busy = {"inflight": 10, "queued": 20}
    state.write_text(json.dumps({"regions": {"ca-central": busy, "us-east": busy}}))
    ca = route(config, "--ip", TORONTO, "--state", str(state))
    assert (ca["region"], ca["reason"]) == ("ca-central", "local-queued")
    assert ca["fallbacks"] == []
    ny = route(config, "--ip", NEW_YORK, "--state", str(state))
    assert ny["reason"] == "spill" and ny["region"] != "us-east"
    down = tmp_path / "down.json"
    down.write_text(json.dumps({"regions": {"ca-central": {"routable": False}}}))
    assert route(config, "--ip", TORONTO, "--state", str(down))["region"] == "ca-west"


def test_route_options_narrow(config: Path) -> None:
    assert route(config, "--ip", NEW_YORK, "--require", "hipaa")["fallbacks"] == ["ca-central"]
    doc = route(config, "--ip", NEW_YORK, "--residency", "DE")
    assert doc["region"] == "eu-central"
    assert route(config, "--ip", NOWHERE)["client"]["country"] is None


def test_route_table_for_humans(config: Path) -> None:
    res = gslb("route", "--config", str(config), "--ip", TORONTO)
    assert res.returncode == 0, res.stderr
    assert "ca-central  (local)" in res.stdout
    assert "residency: canada" in res.stdout
    line = next(ln for ln in res.stdout.splitlines() if ln.strip().startswith("us-east"))
    assert "forbids US" in line


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--ip", "not-an-ip"], "is not an IP address"),
        (["--ip", TORONTO, "--state", "/nonexistent.json"], "cannot read state"),
        (["--ip", TORONTO, "--residency", "Atlantis"], "--residency"),
    ],
)
def test_route_bad_input_exits_2(config: Path, args: list[str], words: str) -> None:
    res = gslb("route", "--config", str(config), *args)
    assert res.returncode == 2
    assert words in res.stderr and "Traceback" not in res.stderr


def test_bad_state_document_names_the_key(config: Path, tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    state.write_text(json.dumps({"regions": {"ca-central": {"inflight": -1}}}))
    res = gslb("route", "--config", str(config), "--ip", TORONTO, "--state", str(state))
    assert res.returncode == 2 and "regions.ca-central.inflight" in res.stderr


def test_broken_geoip_database_is_a_clear_start_up_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mmdb"
    bad.write_bytes(b"\x00" * 4096)
    cfg = tmp_path / "g.toml"
    cfg.write_text(fleet_toml(geoip=f'database = "{bad}"'))
    for cmd in (["route", "--config", str(cfg), "--ip", TORONTO], ["serve", "--config", str(cfg)]):
        res = gslb(*cmd)
        assert res.returncode == 2, res.stderr
        assert str(bad) in res.stderr and "Traceback" not in res.stderr


def test_example_config_with_the_bundled_database() -> None:
    # The real (2018) GeoLite2 City database shipped by maxminddb-geolite2 places these.
    toronto = route(ROOT / "config" / "example.toml", "--ip", "142.1.0.1")
    assert toronto["client"]["country"] == "CA"
    assert (toronto["region"], toronto["reason"]) == ("ca-central", "local")
    frankfurt = route(ROOT / "config" / "example.toml", "--ip", "80.81.192.1")
    assert frankfurt["region"] == "eu-central"
    assert all(
        c["region"] in {"eu-west", "eu-central"} for c in frankfurt["candidates"] if c["allowed"]
    )


# --------------------------------------------------------------------------- check-config = serve


def start_up_config(tmp: Path, server: str = "", region_tls: str = "", log: str = "off") -> Path:
    """A config for the checks `serve` makes at start (listeners on port 0: should `serve`
    start by mistake, it takes no fixed port)."""
    mmdb = tmp / "world.mmdb"
    if not mmdb.exists():
        write_world_mmdb(str(mmdb))
    cfg = tmp / "start.toml"
    cfg.write_text(
        f'[server]\nlisten = "127.0.0.1:0"\nadmin_listen = "127.0.0.1:0"\n{server}\n'
        f'[log]\naccess = "{log}"\n'
        + fleet_toml(
            geoip=f'database = "{mmdb}"',
            region_extra={"us-east": region_tls} if region_tls else None,
        )
    )
    return cfg


def start_up_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    junk = tmp / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n")
    broken_db = tmp / "broken.mmdb"
    broken_db.write_bytes(b"\x00" * 4096)
    missing = tmp / "missing" / "file.pem"
    cases = {
        "listener cert missing": (
            {"server": f'tls_cert = "{missing}"\ntls_key = "{missing}"'},
            "server.tls_cert: cannot load",
        ),
        "listener cert junk": (
            {"server": f'tls_cert = "{junk}"\ntls_key = "{junk}"'},
            "server.tls_cert: cannot load",
        ),
        "upstream CA missing": (
            {"region_tls": f'[regions.tls]\nca_file = "{missing}"'},
            "regions[0].tls.ca_file: cannot load",
        ),
        "upstream client cert junk": (
            {"region_tls": f'[regions.tls]\ncert_file = "{junk}"\nkey_file = "{junk}"'},
            "regions[0].tls.cert_file: cannot load",
        ),
        "access log directory missing": (
            {"log": str(tmp / "no-such-dir" / "access.log")},
            "log.access: cannot open",
        ),
        "access log is a directory": (
            {"log": str(tmp)},
            "log.access: cannot open",
        ),
    }
    out = {}
    for i, (name, (parts, words)) in enumerate(cases.items()):
        sub = tmp / f"case{i}"
        sub.mkdir()
        out[name] = (start_up_config(sub, **parts), words)
    db = tmp / "db"
    db.mkdir()
    cfg = start_up_config(db)
    cfg.write_text(cfg.read_text().replace(str(db / "world.mmdb"), str(broken_db)))
    out["GeoIP database broken"] = (cfg, "geoip.database: ")
    return out


def test_check_config_refuses_what_serve_refuses(tmp_path: Path) -> None:
    for name, (cfg, words) in start_up_cases(tmp_path).items():
        checked = gslb("check-config", str(cfg))
        served = gslb("serve", "--config", str(cfg))
        for res in (checked, served):
            assert res.returncode == 2, (name, res.stdout, res.stderr)
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1 and words in lines[0], (name, res.stderr)
        assert checked.stderr == served.stderr, name  # one rule, one message


def test_check_config_accepts_good_tls_and_log_files(tmp_path: Path) -> None:
    from tests.ops.test_serve import make_ca, make_leaf

    ca = make_ca(tmp_path, "ca")
    cert, key = make_leaf(tmp_path, "edge", ca)
    log_file = tmp_path / "access.log"
    cfg = start_up_config(
        tmp_path,
        server=f'tls_cert = "{cert}"\ntls_key = "{key}"',
        region_tls=f'[regions.tls]\nca_file = "{ca[0]}"\ncert_file = "{cert}"\nkey_file = "{key}"',
        log=str(log_file),
    )
    res = gslb("check-config", str(cfg))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"{cfg}: ok (")
    assert not log_file.exists()  # checked, not created


def test_check_config_on_an_edges_own_file_in_fleet_mode(tmp_path: Path) -> None:
    """With [fleet], the edge's file holds only local sections (the rest comes from the fleet
    document); a fleet-wide section in it is refused by name, exit 2, never ignored."""
    cfg = start_up_config(tmp_path)
    fleet = f'[fleet]\nservers = ["nats://127.0.0.1:4222"]\nedge = "e1"\nstate_dir = "{tmp_path}"\n'
    cfg.write_text(fleet + cfg.read_text())
    res = gslb("check-config", str(cfg))
    assert res.returncode == 2
    assert "regions: with [fleet], [[regions]] comes from the fleet document" in res.stderr
    assert "Traceback" not in res.stderr
    own = tmp_path / "edge.toml"
    own.write_text(fleet + '[server]\nlisten = "127.0.0.1:0"\n[log]\naccess = "off"\n')
    res = gslb("check-config", str(own))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"{own}: ok (fleet mode: edge e1;")


# --------------------------------------------------------------------------- route


def test_route_into_a_closed_pipe_exits_quietly(config: Path) -> None:
    # `gslb route ... | head -1`: the reader leaves before gslb writes. Closing our end at
    # once (gslb takes far longer to start) makes that deterministic.
    proc = subprocess.Popen(
        [sys.executable, "-m", "gslb", "route", "--config", str(config), "--ip", TORONTO],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 0, err
    assert err == ""


def test_route_head_gets_the_first_line(config: Path) -> None:
    res = subprocess.run(
        f"{sys.executable} -m gslb route --config {config} --ip {TORONTO} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert res.returncode == 0 and res.stderr == ""
    assert len(res.stdout.splitlines()) == 1 and TORONTO in res.stdout


@pytest.mark.parametrize("value", ["nan", "NaN", "-nan", "fast", "", "1e3ms"])
def test_route_refuses_a_budget_the_header_refuses(config: Path, value: str) -> None:
    res = gslb("route", "--config", str(config), "--ip", TORONTO, f"--budget-ms={value}")
    assert res.returncode == 2, res.stdout
    assert res.stderr.startswith("gslb: --budget-ms: ") and "Traceback" not in res.stderr


@pytest.mark.parametrize("value", ["inf", "-inf", "1e9", "5000", "-5", " 250 "])
def test_route_budget_follows_the_header_rule(config: Path, value: str) -> None:
    from gslb.core.config import load_config
    from gslb.core.policy import BUDGET_HEADER, BadControlHeader, facts_from_headers

    res = gslb("route", "--config", str(config), "--json", "--ip", TORONTO, f"--budget-ms={value}")
    try:
        facts = facts_from_headers({BUDGET_HEADER: value}.get, None, load_config(config), None)
    except BadControlHeader:
        assert res.returncode == 2 and res.stderr.startswith("gslb: --budget-ms: ")
        return
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["budget_ms"] == facts.budget_ms


# --------------------------------------------------------------------------- serve flags


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--listen", "8080"], "--listen: expected HOST:PORT"),
        (["--listen", ":8080"], "--listen: expected HOST:PORT"),
        (["--admin-listen", "0.0.0.0:99999"], "--admin-listen: port 99999 out of range"),
        (["--admin-listen", "localhost:http"], "--admin-listen: expected HOST:PORT"),
        (["--workers", "0"], "--workers"),
        (["--workers", "many"], "--workers"),
    ],
)
def test_serve_refuses_bad_flags(config: Path, args: list[str], words: str) -> None:
    res = gslb("serve", "--config", str(config), *args)
    assert res.returncode == 2
    assert words in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--listen", "abc"], "--listen: expected HOST:PORT"),
        (["--admin-listen", "127.0.0.1:70000"], "--admin-listen: port 70000 out of range"),
        (["--region-port-base", "99999"], "--region-port-base"),
    ],
)
def test_demo_refuses_bad_flags(args: list[str], words: str) -> None:
    res = gslb("demo", *args)
    assert res.returncode == 2
    assert words in res.stderr and "Traceback" not in res.stderr


def dockerfile_cmd() -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("CMD "))
    cmd: list[str] = json.loads(line.removeprefix("CMD "))
    return cmd


def test_dockerfile_cmd_binds_both_listeners_on_all_interfaces() -> None:
    from gslb.cli import build_parser, serve_config
    from gslb.core.config import HostPort

    args = build_parser().parse_args(dockerfile_cmd())
    assert args.command == "serve" and args.config == "/etc/gslb/gslb.toml"
    # The image's documented run mounts config/example.toml there (admin on 127.0.0.1).
    args.config = str(ROOT / "config" / "example.toml")
    _text, cfg, _overrides = serve_config(args)
    assert cfg.server.listen == HostPort("0.0.0.0", 8080)
    assert cfg.server.admin_listen == HostPort("0.0.0.0", 9901)
    # ...and the advice stays: publish the admin port on a private host address only.
    assert "-p 127.0.0.1:9901:9901" in (ROOT / "Dockerfile").read_text()
