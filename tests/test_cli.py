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

ROOT = Path(__file__).resolve().parent.parent


def gslb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gslb", *args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    mmdb = tmp_path / "world.mmdb"
    write_world_mmdb(str(mmdb))
    cfg = tmp_path / "gslb.toml"
    cfg.write_text(f'[geoip]\ndatabase = "{mmdb}"\n' + fleet_toml())
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
    cfg.write_text(f'[geoip]\ndatabase = "{bad}"\n' + fleet_toml())
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
