"""Explanations of routing decisions for operators (``gslb route`` and admin ``/explain``).

Pure: builds a JSON-ready document from a ``Decision`` and renders it as a text table.
"""

from __future__ import annotations

from typing import Any

from gslb.core.geo import Location
from gslb.core.policy import RequestFacts
from gslb.core.router import Decision


def client_document(ip: str | None, location: Location | None) -> dict[str, Any]:
    return {
        "ip": ip,
        "country": location.country if location else None,
        "continent": location.continent if location else None,
        "lat": location.lat if location else None,
        "lon": location.lon if location else None,
    }


def decision_document(
    ip: str | None,
    location: Location | None,
    facts: RequestFacts,
    decision: Decision,
    residency_rules: tuple[str, ...] = (),
) -> dict[str, Any]:
    return {
        "client": client_document(ip, location),
        "region": decision.region,
        "reason": decision.reason,
        "fallbacks": list(decision.fallbacks),
        "budget_ms": facts.budget_ms,
        "residency_rules": list(residency_rules),
        "candidates": [
            {
                "region": c.region,
                "role": c.role,
                "allowed": c.allowed,
                "routable": c.routable,
                "net_ms": c.net_ms,
                "wait_ms": c.wait_ms,
                "util": c.util,
                "why_not": c.why_not,
            }
            for c in decision.candidates
        ],
    }


def render_table(doc: dict[str, Any]) -> str:
    client = doc["client"]
    where = client["country"] or "unknown country"
    if client["lat"] is not None:
        where += f" ({client['lat']:.2f}, {client['lon']:.2f})"
    lines = [
        f"client   {client['ip'] or '-'}  {where}",
        f"region   {doc['region'] or '-'}  ({doc['reason']})",
        f"fallback {', '.join(doc['fallbacks']) or '-'}",
        f"budget   {doc['budget_ms']:.0f} ms"
        + (f"   residency: {', '.join(doc['residency_rules'])}" if doc["residency_rules"] else ""),
        "",
    ]
    header = ("region", "role", "allowed", "routable", "net_ms", "wait_ms", "util", "why not")
    rows = [header]
    for c in doc["candidates"]:
        rows.append(
            (
                ("* " if c["region"] == doc["region"] else "  ") + c["region"],
                c["role"],
                "yes" if c["allowed"] else "no",
                "yes" if c["routable"] else "no",
                f"{c['net_ms']:.1f}",
                f"{c['wait_ms']:.1f}",
                f"{c['util']:.2f}",
                c["why_not"] or "chosen",
            )
        )
    rows[0] = ("  " + header[0], *header[1:])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    for r in rows:
        cells = [r[i].ljust(widths[i]) for i in range(len(widths))]
        lines.append("  ".join(cells) + "  " + r[-1])
    return "\n".join(lines)
