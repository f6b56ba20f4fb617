"""Country codes and the only hand-kept tables: EU and EEA membership.

ISO 3166-1 alpha-2 codes are validated against pycountry (loaded once, at config time).
"""

from __future__ import annotations

from functools import cache

import pycountry

# EU member states (27, since the UK left on 2020-01-31). ISO codes; Greece is "GR", not "EL".
EU: frozenset[str] = frozenset(
    (
        "AT",
        "BE",
        "BG",
        "HR",
        "CY",
        "CZ",
        "DK",
        "EE",
        "FI",
        "FR",
        "DE",
        "GR",
        "HU",
        "IE",
        "IT",
        "LV",
        "LT",
        "LU",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SK",
        "SI",
        "ES",
        "SE",
    )
)
# The EEA is the EU plus Iceland, Liechtenstein and Norway (not Switzerland).
EEA: frozenset[str] = EU | frozenset({"IS", "LI", "NO"})

GROUPS: dict[str, frozenset[str]] = {"EU": EU, "EEA": EEA}


@cache
def _iso_codes() -> frozenset[str]:
    return frozenset(c.alpha_2 for c in pycountry.countries)


def is_country(code: str) -> bool:
    return code in _iso_codes()


def expand(code: str) -> frozenset[str] | None:
    """A country code or group name as a set of ISO codes; ``None`` when it is neither."""
    if code in GROUPS:
        return GROUPS[code]
    if is_country(code):
        return frozenset({code})
    return None
