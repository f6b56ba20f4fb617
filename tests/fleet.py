"""Small config builders shared by tests (TOML text, so tests exercise the real parser)."""

from __future__ import annotations

from gslb.core.config import Config, parse_toml

# name, (lat, lon), provider, tier, jurisdiction, role, capacity, certifications
REGIONS = [
    ("us-east", (38.95, -77.45), "aws", "hyperscaler", "US", "active", 10, ["soc2", "hipaa"]),
    ("us-west", (45.60, -121.18), "gcp", "hyperscaler", "US", "active", 10, ["soc2"]),
    ("ca-central", (45.50, -73.57), "aws", "hyperscaler", "CA", "active", 10, ["soc2", "hipaa"]),
    ("ca-west", (51.05, -114.07), "azure", "hyperscaler", "CA", "standby", 4, ["soc2"]),
    ("eu-central", (50.11, 8.68), "coreweave", "neocloud", "DE", "active", 10, ["soc2"]),
    ("eu-west", (53.35, -6.26), "gcp", "hyperscaler", "IE", "active", 10, []),
    ("ap-southeast", (1.35, 103.82), "nebius", "neocloud", "SG", "active", 10, []),
    ("sa-east", (-23.55, -46.63), "sfcompute", "reseller", "BR", "active", 10, []),
]


def fleet_toml(
    urls: dict[str, list[str]] | None = None,
    extra: str = "",
    regions: list[tuple] | None = None,  # type: ignore[type-arg]
    region_extra: dict[str, str] | None = None,
    geoip: str = "",
) -> str:
    """A TOML config for ``regions`` (default ``REGIONS``); ``urls``: region -> endpoint URLs.

    ``geoip`` holds extra lines of the ``[geoip]`` table, which this always writes: the fleet
    has residency rules, so the edge must say which country it stands in (New York, the
    default ``edge_location``).
    """
    if "edge_country" not in geoip:
        geoip = f'edge_country = "US"\n{geoip}'
    parts = [extra, f"[geoip]\n{geoip}\n"]
    for i, (name, (lat, lon), provider, tier, jur, role, cap, certs) in enumerate(
        regions or REGIONS
    ):
        eps = (urls or {}).get(name) or [f"http://10.0.{i}.1:8000"]
        cert_list = ", ".join(f'"{c}"' for c in certs)
        keys = {
            "name": f'"{name}"',
            "location": f"[{lat}, {lon}]",
            "provider": f'"{provider}"',
            "tier": f'"{tier}"',
            "jurisdiction": f'"{jur}"',
            "role": f'"{role}"',
            "capacity": str(cap),
            "service_ms": "1000",
            "certifications": f"[{cert_list}]",
        }
        # Lines in region_extra override the defaults above (and may add keys or tables).
        plain, tables = [], []
        for line in (region_extra or {}).get(name, "").splitlines():
            (tables if tables or line.strip().startswith("[") else plain).append(line)
        for line in plain:
            if "=" in line:
                keys[line.split("=", 1)[0].strip()] = line.split("=", 1)[1].strip()
        body = "\n".join(f"{k} = {v}" for k, v in keys.items())
        parts.append(f"\n[[regions]]\n{body}\n" + "\n".join(tables) + "\n")
        for j, url in enumerate(eps):
            parts.append(
                f"""
  [[regions.endpoints]]
  url = "{url}"
  node = "{name}-node-{j // 2}"
"""
            )
    parts.append(
        """
[[residency]]
name = "canada"
countries = ["CA"]
allow_jurisdictions = ["CA"]

[[residency]]
name = "eu"
countries = ["EEA"]
allow_jurisdictions = ["EU"]
"""
    )
    return "\n".join(parts)


def fleet_config(**kw: object) -> Config:
    return parse_toml(fleet_toml(**kw), "test.toml")  # type: ignore[arg-type]
