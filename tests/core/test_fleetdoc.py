"""Fleet mode's config: the [fleet] section, and the split into a fleet document and local files.

Every error names its path; a fleet document and an edge's own file each refuse the other's
sections; composing the two halves gives exactly the Config of one file holding both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import pytest

from gslb.core import fleetdoc
from gslb.core.config import QUORUM_MAJORITY, ConfigError, FleetConfig, parse_toml
from gslb.core.fleetdoc import (
    FLEET_SECTIONS,
    LOCAL_SECTIONS,
    check_fleet_document,
    check_local_file,
    compose,
    document_digest,
    merge,
    parse_local,
    validate_document,
)
from tests.core.test_config import MINIMAL
from tests.fleet import fleet_toml

ROOT = Path(__file__).resolve().parents[2]

REGION = MINIMAL  # one region with one endpoint, as the config tests use it
CANADA_RULE = '[[residency]]\nname = "ca"\ncountries = ["CA"]\nallow_jurisdictions = ["CA"]\n'
# The keys [fleet] cannot do without; a test case overrides or removes them.
REQUIRED = {"servers": '["nats://127.0.0.1:4222"]', "edge": '"nyc-1"', "state_dir": '"{state}"'}


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """Placeholders a [fleet] table may use: real files, a state dir and a missing path."""
    out = {
        "{state}": str(tmp_path / "state"),
        "{missing}": str(tmp_path / "absent.pem"),
        "{dir}": str(tmp_path),
    }
    for name in ("creds", "nkey", "ca", "cert", "key"):
        path = tmp_path / f"{name}.pem"
        path.write_text("not read at load\n")
        out[f"{{{name}}}"] = str(path)
    return out


def fleet_table(files: dict[str, str], **keys: str | None) -> str:
    """A [fleet] table: REQUIRED with ``keys`` on top (None removes one)."""
    merged = {**REQUIRED, **keys}
    text = "[fleet]\n" + "".join(f"{k} = {v}\n" for k, v in merged.items() if v is not None)
    for placeholder, value in files.items():
        text = text.replace(placeholder, value)
    return text


def parse_with_fleet(files: dict[str, str], **keys: str | None) -> FleetConfig:
    cfg = parse_toml(REGION + fleet_table(files, **keys), "edge.toml")
    assert cfg.fleet is not None
    return cfg.fleet


def fleet_error(files: dict[str, str], **keys: str | None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_with_fleet(files, **keys)
    return info.value


# --------------------------------------------------------------------------- [fleet]


def test_no_fleet_section_means_a_standalone_edge() -> None:
    assert parse_toml(REGION).fleet is None
    assert parse_toml(fleet_toml()).fleet is None


def test_fleet_defaults(files: dict[str, str]) -> None:
    fleet = parse_with_fleet(files)
    assert fleet.servers == ("nats://127.0.0.1:4222",)
    assert (fleet.edge, fleet.site, fleet.state_dir) == ("nyc-1", "nyc-1", files["{state}"])
    assert (fleet.bucket, fleet.subject_prefix) == ("gslb", "gslb")
    assert fleet.quorum == QUORUM_MAJORITY
    assert (fleet.max_age_s, fleet.publish_interval_s) == (5.0, 1.0)
    assert (fleet.user, fleet.password_env, fleet.creds_file, fleet.nkey_file) == ("",) * 4


def test_every_fleet_key_is_read(files: dict[str, str]) -> None:
    fleet = parse_with_fleet(
        files,
        servers='["tls://hub-a:4222", "wss://hub-b:443/nats", "ws://hub-c", "nats://[::1]:4222"]',
        site='"new-york"',
        user='"edge-nyc"',
        password_env='"GSLB_NATS_PASSWORD"',
        tls_ca_file='"{ca}"',
        tls_cert_file='"{cert}"',
        tls_key_file='"{key}"',
        bucket='"gslb-prod"',
        subject_prefix='"gslb_prod"',
        quorum="2",
        max_age_s="10",
        publish_interval_s="0.5",
    )
    assert fleet.servers[1] == "wss://hub-b:443/nats" and len(fleet.servers) == 4
    assert (fleet.site, fleet.user, fleet.password_env) == (
        "new-york",
        "edge-nyc",
        "GSLB_NATS_PASSWORD",
    )
    assert (fleet.tls_ca_file, fleet.tls_cert_file, fleet.tls_key_file) == (
        files["{ca}"],
        files["{cert}"],
        files["{key}"],
    )
    assert (fleet.bucket, fleet.subject_prefix, fleet.quorum) == ("gslb-prod", "gslb_prod", 2)
    assert (fleet.max_age_s, fleet.publish_interval_s) == (10.0, 0.5)


@pytest.mark.parametrize(
    ("keys", "path", "words"),
    [
        ({"servers": None}, "fleet.servers", "is required"),
        ({"servers": "[]"}, "fleet.servers", "at least one"),
        ({"servers": '"nats://h:4222"'}, "fleet.servers", "expected an array"),
        ({"servers": '["http://h:4222"]'}, "fleet.servers[0]", "nats://, tls://, ws://"),
        ({"servers": '["nats://"]'}, "fleet.servers[0]", "no host"),
        ({"servers": '["nats://h:99999"]'}, "fleet.servers[0]", "invalid URL"),
        ({"servers": '["nats://h:0"]'}, "fleet.servers[0]", "must not be 0"),
        ({"servers": '["nats://h:4222/x"]'}, "fleet.servers[0]", "no path"),
        ({"servers": '["nats://h:4222?x=1"]'}, "fleet.servers[0]", "query"),
        ({"servers": '["nats://h:1", "tls://g:2", "nats://h:1"]'}, "fleet.servers[2]", "duplicate"),
        ({"servers": "[4222]"}, "fleet.servers[0]", "expected a string"),
        ({"edge": None}, "fleet.edge", "is required"),
        ({"edge": '"nyc 1"'}, "fleet.edge", "NATS-safe name"),
        ({"edge": '""'}, "fleet.edge", "NATS-safe name"),
        ({"edge": '"nyc.1"'}, "fleet.edge", "NATS-safe name"),  # a dot splits a subject
        ({"site": '"a/b"'}, "fleet.site", "NATS-safe name"),
        ({"state_dir": None}, "fleet.state_dir", "is required"),
        ({"state_dir": '""'}, "fleet.state_dir", "must not be empty"),
        ({"state_dir": "1"}, "fleet.state_dir", "expected a string"),
        ({"bucket": '"a.b"'}, "fleet.bucket", "NATS-safe"),
        ({"bucket": '""'}, "fleet.bucket", "NATS-safe"),
        ({"bucket": '"gslb*"'}, "fleet.bucket", "NATS-safe"),
        ({"subject_prefix": '"gslb.>"'}, "fleet.subject_prefix", "NATS-safe"),
        ({"subject_prefix": '"gslb fleet"'}, "fleet.subject_prefix", "NATS-safe"),
        ({"quorum": "0"}, "fleet.quorum", '"majority" or an integer >= 1'),
        ({"quorum": '"most"'}, "fleet.quorum", '"majority" or an integer >= 1'),
        ({"quorum": "true"}, "fleet.quorum", '"majority" or an integer >= 1'),
        ({"quorum": "1.5"}, "fleet.quorum", '"majority" or an integer >= 1'),
        ({"max_age_s": "0"}, "fleet.max_age_s", "> 0"),
        ({"max_age_s": '"5"'}, "fleet.max_age_s", "expected a number"),
        ({"publish_interval_s": "-1"}, "fleet.publish_interval_s", "> 0"),
        ({"publish_interval_s": "5"}, "fleet.publish_interval_s", "< max_age_s"),
        ({"max_age_s": "0.5"}, "fleet.publish_interval_s", "< max_age_s"),
        ({"tls_ca_file": '"{missing}"'}, "fleet.tls_ca_file", "does not exist"),
        ({"tls_ca_file": '"{dir}"'}, "fleet.tls_ca_file", "does not exist"),
        ({"tls_cert_file": '"{cert}"'}, "fleet.tls_cert_file", "set together"),
        ({"tls_key_file": '"{key}"'}, "fleet.tls_cert_file", "set together"),
        (
            {"tls_cert_file": '"{missing}"', "tls_key_file": '"{key}"'},
            "fleet.tls_cert_file",
            "exist",
        ),
        ({"colour": '"red"'}, "fleet.colour", "unknown key"),
    ],
)
def test_fleet_errors_name_their_path(
    files: dict[str, str], keys: dict[str, str | None], path: str, words: str
) -> None:
    err = fleet_error(files, **keys)
    assert (err.path, str(err)) == (path, f"{path}: {err.message}")
    assert words in err.message


def test_fleet_must_be_a_table() -> None:
    with pytest.raises(ConfigError) as info:
        parse_toml('fleet = "nats://h:4222"\n' + REGION)
    assert info.value.path == "fleet" and "expected a table" in info.value.message


# --------------------------------------------------------------------------- credentials


@pytest.mark.parametrize(
    "keys",
    [
        {},
        {"user": '"edge"', "password_env": '"NATS_PASSWORD"'},
        {"creds_file": '"{creds}"'},
        {"nkey_file": '"{nkey}"'},
    ],
)
def test_each_way_to_authenticate_alone_is_accepted(
    files: dict[str, str], keys: dict[str, str]
) -> None:
    fleet = parse_with_fleet(files, **keys)
    chosen = {k for k in ("user", "password_env", "creds_file", "nkey_file") if getattr(fleet, k)}
    assert chosen == set(keys)


@pytest.mark.parametrize(
    ("keys", "path", "words"),
    [
        ({"user": '"edge"'}, "fleet.password_env", "set together"),
        ({"password_env": '"NATS_PASSWORD"'}, "fleet.user", "set together"),
        ({"user": '""', "password_env": '"P"'}, "fleet.user", "must not be empty"),
        ({"user": '"e"', "password_env": '"hunter2!"'}, "fleet.password_env", "NAME"),
        ({"user": '"e"', "password_env": '"9LIVES"'}, "fleet.password_env", "NAME"),
        (
            {"user": '"e"', "password_env": '"P"', "creds_file": '"{creds}"'},
            "fleet.creds_file",
            "one way",
        ),
        ({"creds_file": '"{creds}"', "nkey_file": '"{nkey}"'}, "fleet.nkey_file", "one way"),
        (
            {"user": '"e"', "password_env": '"P"', "nkey_file": '"{nkey}"'},
            "fleet.nkey_file",
            "one way",
        ),
        ({"creds_file": '"{missing}"'}, "fleet.creds_file", "does not exist"),
        ({"nkey_file": '"{missing}"'}, "fleet.nkey_file", "does not exist"),
        ({"creds_file": '""'}, "fleet.creds_file", "must not be empty"),
    ],
)
def test_credential_rules(
    files: dict[str, str], keys: dict[str, str | None], path: str, words: str
) -> None:
    err = fleet_error(files, **keys)
    assert err.path == path and words in err.message


def test_a_password_never_sits_in_the_file_nor_in_an_error(files: dict[str, str]) -> None:
    err = fleet_error(files, user='"e"', password='"s3cret-pw"')
    assert err.path == "fleet.password" and "password_env" in err.message
    assert "s3cret-pw" not in str(err)
    # Credentials in a URL would reach every log line that names the server: refused, and
    # the error does not repeat them, even when the URL is broken in other ways too.
    for url in (
        "nats://edge:s3cret-pw@h:4222",
        "nats://s3cret-pw@h:4222",
        "nats://edge:s3cret-pw@h:99999",
        "http://edge:s3cret-pw@h",
    ):
        err = fleet_error(files, servers=f'["nats://ok:4222", "{url}"]')
        assert err.path == "fleet.servers[1]" and "credentials" in err.message
        assert "s3cret-pw" not in str(err)


def test_votes_needed() -> None:
    majority = FleetConfig(servers=("nats://h",), edge="e", site="e", state_dir="/s")
    assert [majority.votes_needed(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    fixed = dataclasses.replace(majority, quorum=2)
    # A fixed quorum is never lowered: one reporter alone cannot take an endpoint down.
    assert [fixed.votes_needed(n) for n in (1, 2, 7)] == [2, 2, 2]


# --------------------------------------------------------------------------- the split


def fleet_document() -> str:
    """The shared test fleet (8 regions, residency rules) as a fleet document: no [geoip]."""
    doc = fleet_toml().replace('[geoip]\nedge_country = "US"\n', "")
    assert "[geoip]" not in doc and "[[residency]]" in doc
    return doc


LOCAL_PART = """
[server]
listen = "127.0.0.1:18080"
workers = 2

[admin]
token_env = "EDGE_TOKEN"

[log]
level = "debug"
client_ip = "none"
"""
FLEET_PART = """
[routing]
spill_utilization = 0.7
measured_rtt_ms.CA = { ca-central = 9 }

[proxy]
via = "edge-x"

[health]
fall = 4

[load]
kind = "vllm"
"""


def whole_file(files: dict[str, str]) -> str:
    """One file with every section: the local and the fleet-wide ones interleaved."""
    interleaved = LOCAL_PART.replace("[admin]", FLEET_PART + "\n[admin]")
    return interleaved + fleet_table(files, quorum="3") + fleet_toml(geoip='edge_country = "CA"')


def split(text: str) -> tuple[str, str]:
    """Split a file's lines by the top-level section each table header opens."""
    local: list[str] = []
    fleet: list[str] = []
    bucket = local
    for line in text.splitlines():
        header = re.match(r"\s*\[\[?([A-Za-z_-]+)", line)
        if header:
            bucket = local if header.group(1) in LOCAL_SECTIONS else fleet
        bucket.append(line)
    return "\n".join(local) + "\n", "\n".join(fleet) + "\n"


def test_compose_gives_the_config_of_one_file(files: dict[str, str]) -> None:
    text = whole_file(files)
    local_text, fleet_text = split(text)
    assert "[fleet]" in local_text and "[[regions]]" not in local_text
    assert "[[residency]]" in fleet_text and "[server]" not in fleet_text
    one = parse_toml(text, "one.toml")
    composed = compose(local_text, "edge.toml", fleet_text, "fleet rev 7")
    assert composed.source == "edge.toml + fleet rev 7"
    assert dataclasses.replace(composed, source=one.source) == one
    # Not two copies of the defaults: each half reached the result.
    assert composed.server.workers == 2 and composed.log.client_ip == "none"
    assert composed.proxy.via == "edge-x" and composed.health.fall == 4
    assert composed.routing.measured_rtt_ms == {"CA": {"ca-central": 9.0}}
    assert len(composed.regions) == 8 and composed.geoip.edge_country == "CA"
    assert composed.fleet is not None and composed.fleet.quorum == 3
    assert merge(fleetdoc.read_toml(local_text, "l"), fleetdoc.read_toml(fleet_text, "f")) == (
        fleetdoc.read_toml(text, "one")
    )


def test_merge_refuses_a_section_in_both_halves() -> None:
    with pytest.raises(ConfigError) as info:
        merge({"server": {}, "log": {}}, {"log": {}, "routing": {}})
    assert info.value.path == "log" and "both" in info.value.message


@pytest.mark.parametrize("section", LOCAL_SECTIONS)
def test_a_fleet_document_refuses_local_sections(files: dict[str, str], section: str) -> None:
    doc = f"[{section}]\n" + REGION
    with pytest.raises(ConfigError) as info:
        check_fleet_document(fleetdoc.read_toml(doc, "pushed.toml"), "pushed.toml")
    err = info.value
    assert err.path == section
    assert err.message.startswith(
        "a fleet document holds only routing, regions, residency, proxy, health, load; "
        f"[{section}] belongs in each edge's own file"
    )
    assert "pushed.toml" in err.message
    local = fleet_table(files) + '[geoip]\nedge_country = "CA"\n'
    for run in (
        lambda: validate_document(doc, "pushed.toml"),
        lambda: compose(local, "edge.toml", doc, "pushed.toml"),
    ):
        with pytest.raises(ConfigError) as again:
            run()
        assert again.value.path == section


def test_a_fleet_document_refuses_unknown_sections() -> None:
    with pytest.raises(ConfigError) as info:
        validate_document("[routng]\nx = 1\n" + REGION, "pushed.toml")
    assert info.value.path == "routng" and "unknown key" in info.value.message


@pytest.mark.parametrize("section", FLEET_SECTIONS)
def test_a_local_file_in_fleet_mode_refuses_fleet_sections(
    files: dict[str, str], section: str
) -> None:
    body = REGION if section == "regions" else CANADA_RULE if section == "residency" else ""
    text = fleet_table(files) + (body or f"[{section}]\n")
    with pytest.raises(ConfigError) as info:
        check_local_file(fleetdoc.read_toml(text, "edge.toml"), "edge.toml")
    err = info.value
    heading = f"[[{section}]]" if body else f"[{section}]"
    assert err.path == section and heading in err.message and "edge.toml" in err.message
    with pytest.raises(ConfigError) as again:
        parse_local(text, "edge.toml")
    assert again.value.path == section
    with pytest.raises(ConfigError) as again:
        compose(text, "edge.toml", REGION.replace("r1", "r2"), "fleet")
    assert again.value.path == section


def test_a_local_file_in_fleet_mode_refuses_unknown_sections(files: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_local(fleet_table(files) + "[sever]\nworkers = 2\n", "edge.toml")
    assert info.value.path == "sever" and "unknown key" in info.value.message


def test_a_standalone_file_may_hold_every_section() -> None:
    # Without [fleet] the file is a whole config, judged by parse_config alone.
    data = fleetdoc.read_toml(fleet_toml() + "[server]\nworkers = 2\n", "one.toml")
    check_local_file(data, "one.toml")
    assert parse_toml(fleet_toml()).fleet is None


def test_compose_needs_fleet_in_the_local_file() -> None:
    with pytest.raises(ConfigError) as info:
        compose('[geoip]\nedge_country = "CA"\n', "edge.toml", REGION, "fleet")
    assert info.value.path == "fleet" and "edge.toml" in info.value.message


def test_toml_errors_name_their_source(files: dict[str, str]) -> None:
    local = fleet_table(files)
    with pytest.raises(ConfigError) as info:
        compose(local, "edge.toml", "[routing\n" + REGION, "fleet rev 4")
    assert info.value.path == "fleet rev 4" and "invalid TOML" in info.value.message
    with pytest.raises(ConfigError) as info:
        compose(local + "[server\n", "edge.toml", REGION, "fleet rev 4")
    assert info.value.path == "edge.toml" and "invalid TOML" in info.value.message
    for run in (
        lambda: parse_local("[fleet\n", "edge.toml"),
        lambda: validate_document("regions = [", "pushed.toml"),
    ):
        with pytest.raises(ConfigError) as info:
            run()
        assert "invalid TOML" in info.value.message


# --------------------------------------------------------------------------- merged rules


def test_residency_and_edge_country_rules_apply_to_the_merged_config(
    files: dict[str, str],
) -> None:
    doc = REGION + CANADA_RULE
    no_country = fleet_table(files)
    # Residency comes from the fleet, the edge's country from its own file: joined, checked.
    with pytest.raises(ConfigError) as info:
        compose(no_country, "edge.toml", doc, "fleet")
    assert info.value.path == "geoip.edge_country" and "deny" in info.value.message
    cfg = compose(no_country + '[geoip]\nedge_country = "CA"\n', "edge.toml", doc, "fleet")
    assert cfg.geoip.edge_country == "CA" and cfg.residency[0].allow_jurisdictions == {"CA"}
    deny = '[routing]\nunknown_location = "deny"\n' + doc
    assert compose(no_country, "edge.toml", deny, "fleet").geoip.edge_country == ""
    # Errors inside the fleet document name the key path as in one file.
    cases = [
        (
            doc.replace('allow_jurisdictions = ["CA"]', 'allow_jurisdictions = ["XX"]'),
            "residency[0].allow_jurisdictions[0]",
        ),
        (doc.replace("capacity = 8", "capacity = 0"), "regions[0].capacity"),
        (doc + REGION, "regions[1].name"),
        ("[routing.measured_rtt_ms.CA]\nr9 = 7\n" + doc, "routing.measured_rtt_ms.CA.r9"),
        (CANADA_RULE, "regions"),
    ]
    for bad, path in cases:
        with pytest.raises(ConfigError) as info:
            compose(no_country + '[geoip]\nedge_country = "CA"\n', "edge.toml", bad, "fleet")
        assert info.value.path == path


def test_validate_document_checks_every_fleet_wide_rule() -> None:
    # The edge_country rule needs an edge's own file: each edge checks it when it composes.
    validate_document(REGION + CANADA_RULE, "pushed.toml")
    validate_document(fleet_document(), "pushed.toml")
    for bad, path in [
        (REGION.replace("capacity = 8", "capacity = 0"), "regions[0].capacity"),
        (
            "[proxy]\nreplay_buffer_bytes = 10\nmax_body_bytes = 1\n" + REGION,
            "proxy.replay_buffer_bytes",
        ),
        ("[health]\nfal = 1\n" + REGION, "health.fal"),
        ("", "regions"),
    ]:
        with pytest.raises(ConfigError) as info:
            validate_document(bad, "pushed.toml")
        assert info.value.path == path


# --------------------------------------------------------------------------- parse_local


def test_parse_local_reads_an_edge_file_without_regions(files: dict[str, str]) -> None:
    text = LOCAL_PART + '[geoip]\nedge_country = "CA"\n' + fleet_table(files, site='"yul"')
    local = parse_local(text, "edge.toml")
    assert (local.server.listen.port, local.server.workers) == (18080, 2)
    assert local.admin.token_env == "EDGE_TOKEN" and local.log.level == "debug"
    assert local.geoip.edge_country == "CA"
    assert (local.fleet.edge, local.fleet.site) == ("nyc-1", "yul")
    assert local.source == "edge.toml"
    # The local sections read as the whole config reads them.
    whole = compose(text, "edge.toml", REGION, "fleet")
    assert (whole.server, whole.geoip, whole.admin, whole.log, whole.fleet) == (
        local.server,
        local.geoip,
        local.admin,
        local.log,
        local.fleet,
    )
    bare = parse_local(fleet_table(files), "edge.toml")
    assert bare.server.listen.port == 8080 and bare.geoip.edge_country == ""


def test_parse_local_errors_name_their_path(files: dict[str, str]) -> None:
    for text, path in [
        ('[server]\nlisten = "nope"\n' + fleet_table(files), "server.listen"),
        ('[geoip]\nedge_country = "XX"\n' + fleet_table(files), "geoip.edge_country"),
        ('[log]\nlevel = "loud"\n' + fleet_table(files), "log.level"),
        ("[admin]\ntoken = 1\n" + fleet_table(files), "admin.token"),
        (fleet_table(files, edge=None), "fleet.edge"),
        ("[server]\nworkers = 2\n", "fleet"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_local(text, "edge.toml")
        assert info.value.path == path


# --------------------------------------------------------------------------- digest


def test_document_digest_is_sha256sum_of_the_lf_file(tmp_path: Path) -> None:
    doc = REGION + CANADA_RULE
    path = tmp_path / "fleet.toml"
    path.write_bytes(doc.encode())
    digest = document_digest(doc)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    # Line ends do not change it; any other byte does.
    assert document_digest(doc.replace("\n", "\r\n")) == digest
    assert document_digest(doc.replace("capacity = 8", "capacity = 9")) != digest


# --------------------------------------------------------------------------- docs


def test_config_reference_documents_every_fleet_key() -> None:
    text = (ROOT / "docs" / "config.md").read_text()
    section = text.split("## `[fleet]`", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    documented = {name for cell in rows for name in re.findall(r"`([a-z_]+)`", cell)}
    assert documented == {f.name for f in dataclasses.fields(FleetConfig)}
