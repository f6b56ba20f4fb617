"""Config parsing: every error names its path; the example config is valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gslb.core.config import ConfigError, load_config, parse_toml
from tests.fleet import fleet_toml

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """
[[regions]]
name = "r1"
location = [45.5, -73.57]
provider = "aws"
jurisdiction = "CA"
capacity = 8
  [[regions.endpoints]]
  url = "http://127.0.0.1:9000"
"""


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_toml(text, "t.toml")
    return info.value


def test_minimal_config_gets_defaults() -> None:
    cfg = parse_toml(MINIMAL)
    r = cfg.regions[0]
    assert r.role == "active" and r.tier == "hyperscaler" and r.service_ms == 800
    assert r.endpoints[0].node == "r1-node-0"
    assert r.health.fall == 3 and r.load.kind == "none"
    assert cfg.routing.spill_utilization == 0.85
    assert cfg.server.listen.port == 8080


def test_example_config_is_a_realistic_world_fleet() -> None:
    cfg = load_config(ROOT / "config" / "example.toml")
    assert len(cfg.regions) >= 8
    assert len({r.provider for r in cfg.regions}) >= 3
    assert {r.tier for r in cfg.regions} == {"hyperscaler", "neocloud", "reseller"}
    assert any(not r.active for r in cfg.regions)
    rules = {rule.name: rule for rule in cfg.residency}
    assert rules["canada"].allow_jurisdictions == {"CA"}
    assert "DE" in rules["eu-gdpr"].countries and "NO" in rules["eu-gdpr"].countries
    assert "NO" not in rules["eu-gdpr"].allow_jurisdictions  # EEA clients, EU processing


@pytest.mark.parametrize(
    ("edit", "path", "words"),
    [
        (("capacity = 8", "capacity = 8\ncolour = 'red'"), "regions[0].colour", "unknown key"),
        (("capacity = 8", "capacity = 0"), "regions[0].capacity", ">= 1"),
        (("capacity = 8", 'capacity = "8"'), "regions[0].capacity", "integer"),
        (("http://127.0.0.1:9000", "ftp://x"), "regions[0].endpoints[0].url", "http://"),
        (("http://127.0.0.1:9000", "http://"), "regions[0].endpoints[0].url", "no host"),
        (
            ("http://127.0.0.1:9000", "http://u:p@h:1"),
            "regions[0].endpoints[0].url",
            "credentials",
        ),
        (("http://127.0.0.1:9000", "http://h:99999"), "regions[0].endpoints[0].url", "invalid"),
        (('jurisdiction = "CA"', 'jurisdiction = "XX"'), "regions[0].jurisdiction", "ISO 3166"),
        (('jurisdiction = "CA"', 'jurisdiction = "EU"'), "regions[0].jurisdiction", "ISO 3166"),
        (("[45.5, -73.57]", "[95.5, -73.57]"), "regions[0].location[0]", "<= 90"),
        (("[45.5, -73.57]", "[45.5]"), "regions[0].location", "latitude"),
        (('provider = "aws"', 'provider = "aws"\nrole = "primary"'), "regions[0].role", "one of"),
        (('name = "r1"', 'name = "r 1"'), "regions[0].name", "valid name"),
        (('provider = "aws"', ""), "regions[0].provider", "required"),
    ],
)
def test_region_errors_name_their_path(edit: tuple[str, str], path: str, words: str) -> None:
    err = error_of(MINIMAL.replace(*edit))
    assert err.path == path
    assert words in err.message
    assert str(err).startswith(f"{path}: ")


def test_duplicate_region_names() -> None:
    err = error_of(MINIMAL + MINIMAL.replace("9000", "9001"))
    assert err.path == "regions[1].name" and "duplicate" in err.message


def test_duplicate_endpoint_urls_across_regions() -> None:
    err = error_of(MINIMAL + MINIMAL.replace('"r1"', '"r2"'))
    assert err.path == "regions[1].endpoints[0].url" and "r1" in err.message


def test_unknown_top_level_section() -> None:
    assert error_of("[routng]\nx = 1\n" + MINIMAL).path == "routng"


def test_unknown_key_in_section() -> None:
    assert error_of("[routing]\nspill_utilisation = 0.5\n" + MINIMAL).path == (
        "routing.spill_utilisation"
    )


def test_out_of_range_numbers() -> None:
    assert error_of("[routing]\nspill_utilization = 0\n" + MINIMAL).path == (
        "routing.spill_utilization"
    )
    assert error_of("[routing]\nmax_attempts = 0\n" + MINIMAL).path == "routing.max_attempts"
    err = error_of("[routing]\nlatency_budget_ms = 10\n" + MINIMAL)
    assert err.path == "routing.latency_budget_ms" and "[20, 5000]" in err.message
    assert error_of("[server]\nlisten = 'nope'\n" + MINIMAL).path == "server.listen"


def test_residency_groups_and_unknown_codes() -> None:
    ok = parse_toml(
        '[geoip]\nedge_country = "DE"\n'
        + MINIMAL
        + '[[residency]]\nname = "eu"\ncountries = ["EEA"]\nallow_jurisdictions = ["EU"]\n'
    )
    assert len(ok.residency[0].countries) == 30 and len(ok.residency[0].allow_jurisdictions) == 27
    err = error_of(
        MINIMAL + '[[residency]]\nname = "x"\ncountries = ["ZZ"]\nallow_jurisdictions = ["CA"]\n'
    )
    assert err.path == "residency[0].countries[0]" and "group" in err.message
    err = error_of(
        MINIMAL + '[[residency]]\nname = "x"\ncountries = ["CA"]\nallow_jurisdictions = ["ASIA"]\n'
    )
    assert err.path == "residency[0].allow_jurisdictions[0]"


def test_region_health_overrides_fleet_defaults() -> None:
    text = "[health]\nfall = 5\ninterval_s = 4.0\n" + MINIMAL + "  [regions.health]\n  fall = 1\n"
    r = parse_toml(text).regions[0]
    assert r.health.fall == 1 and r.health.interval_s == 4.0
    err = error_of(MINIMAL + "  [regions.health]\n  fal = 1\n")
    assert err.path == "regions[0].health.fal"


def test_measured_rtt_must_name_real_regions_and_countries() -> None:
    good = parse_toml("[routing.measured_rtt_ms.CA]\nr1 = 7\n" + MINIMAL)
    assert good.routing.measured_rtt_ms == {"CA": {"r1": 7.0}}
    assert error_of("[routing.measured_rtt_ms.CA]\nr9 = 7\n" + MINIMAL).path == (
        "routing.measured_rtt_ms.CA.r9"
    )
    assert error_of("[routing.measured_rtt_ms.QQ]\nr1 = 7\n" + MINIMAL).path == (
        "routing.measured_rtt_ms.QQ"
    )


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert str(bad) in str(info.value) and "invalid TOML" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.toml")
    assert "cannot read" in str(info.value)


def test_fleet_builder_parses() -> None:
    # The shared test fleet must itself be a valid config.
    assert len(parse_toml(fleet_toml()).regions) == 8


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gslb", *args], capture_output=True, text=True, cwd=ROOT
    )


def test_check_config_exit_codes(tmp_path: Path) -> None:
    ok = run_cli("check-config", "config/example.toml")
    assert ok.returncode == 0, ok.stderr
    assert "ok (10 regions" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL.replace("capacity = 8", "capacity = -1"))
    res = run_cli("check-config", str(bad))
    assert res.returncode == 2
    assert "regions[0].capacity: must be >= 1" in res.stderr
    assert "Traceback" not in res.stderr


EU_RULE = '[[residency]]\nname = "eu"\ncountries = ["EEA"]\nallow_jurisdictions = ["EU"]\n'


def test_unplaceable_clients_need_an_explicit_choice() -> None:
    # Residency rules and the default policy: the edge must say which country it stands in.
    err = error_of(MINIMAL + EU_RULE)
    assert err.path == "geoip.edge_country" and "deny" in err.message
    # The old "edge" value routed unplaceable clients with no residency rule: refused.
    err = error_of('[routing]\nunknown_location = "edge"\n' + MINIMAL + EU_RULE)
    assert err.path == "routing.unknown_location" and "unrestricted" in err.message
    for choice in ("deny", "unrestricted"):
        cfg = parse_toml(f'[routing]\nunknown_location = "{choice}"\n' + MINIMAL + EU_RULE)
        assert cfg.routing.unknown_location == choice and cfg.geoip.edge_country == ""
    cfg = parse_toml('[geoip]\nedge_country = "FR"\n' + MINIMAL + EU_RULE)
    assert (cfg.routing.unknown_location, cfg.geoip.edge_country) == ("edge_country", "FR")
    assert error_of('[geoip]\nedge_country = "XX"\n' + MINIMAL).path == "geoip.edge_country"
    # Without residency rules there is nothing to escape: no edge country needed.
    assert parse_toml(MINIMAL).geoip.edge_country == ""


def test_forwarded_header_names_exactly_one_header() -> None:
    err = error_of('[geoip]\nforwarded_header = "auto"\n' + MINIMAL)
    assert err.path == "geoip.forwarded_header" and "x-forwarded-for" in err.message
    assert parse_toml(MINIMAL).geoip.forwarded_header == "x-forwarded-for"
    for name in ("forwarded", "X-Real-IP", "true-client-ip", "cf-connecting-ip"):
        cfg = parse_toml(f'[geoip]\nforwarded_header = "{name}"\n' + MINIMAL)
        assert cfg.geoip.forwarded_header == name.lower()
    assert error_of('[geoip]\nforwarded_header = "via"\n' + MINIMAL).path == (
        "geoip.forwarded_header"
    )
