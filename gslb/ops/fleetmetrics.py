"""The fleet as Prometheus metrics: built from ``FleetAgent.status()`` at scrape time.

``Admin`` merges this page after the workers' own (``merge_expositions``). Every figure is read
from the status dict when Prometheus scrapes, so an edge that goes quiet simply stops appearing
in ``gslb_fleet_edge_age_seconds``: nothing lingers in a registry.

The status dict is read leniently: before the first health beat (or without a vantage) only
the agent's own keys are there, and anything missing or of the wrong type reads as 0 (a
region or edge that is not a mapping is left out). Labels stay bounded: regions come from this
edge's config (capped all the same), drop reasons from a fixed set, and edge and site names,
which are peers' choice (validated NATS tokens), at most ``MAX_EDGES`` of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any, Final

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gslb.core.peers import MAX_REGIONS, Drop

# Edges heard from are peers' choice: a fleet bigger than this shows its first edges by name.
MAX_EDGES: Final = 256
# Edge and site names are NATS tokens of at most 64 characters; the cut only guards the label.
MAX_NAME: Final = 64


def fleet_exposition(status: Mapping[str, Any]) -> bytes:
    """The fleet families in the Prometheus text format, from one ``FleetAgent.status()``."""
    return generate_latest(FleetStatusCollector(status))


class FleetStatusCollector(Collector):
    """The fleet families of one status dict (a fresh collector per scrape)."""

    def __init__(self, status: Mapping[str, Any]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        st = self._status
        yield GaugeMetricFamily(
            "gslb_fleet_connected",
            "1 while this edge is connected to the fleet's NATS.",
            value=_flag(st.get("connected")),
        )
        yield GaugeMetricFamily(
            "gslb_fleet_revision",
            "Fleet document revision this edge runs (0: none yet).",
            value=_count(st.get("revision")),
        )
        yield GaugeMetricFamily(
            "gslb_fleet_peers",
            "Other edges heard from within fleet.max_age_s.",
            value=_count(st.get("peers")),
        )
        yield CounterMetricFamily(
            "gslb_fleet_observations_received",
            "Observations from other edges taken in.",
            value=_count(st.get("received_total")),
        )
        yield self._dropped(st.get("dropped_total"))
        yield CounterMetricFamily(
            "gslb_fleet_observations_published",
            "Observations this edge published.",
            value=_count(st.get("published_total")),
        )
        yield from self._regions(st.get("regions"))
        yield self._edges(st.get("edges"))

    @staticmethod
    def _dropped(dropped: object) -> Metric:
        m = CounterMetricFamily(
            "gslb_fleet_observations_dropped",
            "Messages from other edges dropped: oversized, malformed, stale (sent too long "
            "ago) or expired (not renewed within fleet.max_age_s).",
            labels=["reason"],
        )
        counts = dropped if isinstance(dropped, Mapping) else {}
        for reason in Drop:  # every reason, always: a zero is a value
            m.add_metric([reason.value], _count(counts.get(reason.value)))
        return m

    @staticmethod
    def _regions(regions: object) -> Iterator[Metric]:
        families = {
            key: GaugeMetricFamily(f"gslb_fleet_region_{key}", doc, labels=["region"])
            for key, doc in (
                ("reporters", "Edges, this one included, with a fresh view of the region."),
                ("see_up", "Edges that see at least one of the region's endpoints up."),
                ("agree", "1 when every reporting edge sees the region the same way."),
                (
                    "fleet_down_endpoints",
                    "Endpoints of the region out here because a quorum of edges sees them down.",
                ),
                ("peer_inflight", "Other edges' requests in flight to the region."),
            )
        }
        items = list(regions.items())[:MAX_REGIONS] if isinstance(regions, Mapping) else []
        for name, region in items:
            if not isinstance(name, str) or not isinstance(region, Mapping):
                continue
            for key, family in families.items():
                value = _flag(region.get(key)) if key == "agree" else _count(region.get(key))
                family.add_metric([name], value)
        yield from families.values()

    @staticmethod
    def _edges(edges: object) -> Metric:
        m = GaugeMetricFamily(
            "gslb_fleet_edge_age_seconds",
            f"Seconds since this edge last heard each edge (0: itself); at most {MAX_EDGES}.",
            labels=["edge", "site"],
        )
        seen: set[str] = set()
        for e in edges if isinstance(edges, list) else []:
            if len(seen) >= MAX_EDGES:
                break
            if not isinstance(e, Mapping):
                continue
            edge, site = e.get("edge"), e.get("site")
            if not isinstance(edge, str) or not edge or edge[:MAX_NAME] in seen:
                continue  # one series per edge: a duplicate label set breaks the whole page
            seen.add(edge[:MAX_NAME])
            site = site[:MAX_NAME] if isinstance(site, str) else ""
            m.add_metric([edge[:MAX_NAME], site], _count(e.get("age_s")))
        return m


def _flag(value: object) -> float:
    return 1.0 if value is True else 0.0


def _count(value: object) -> float:
    """A non-negative finite number, else 0 (absent, ``None``, a bool or junk)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    v = float(value)
    return v if math.isfinite(v) and v > 0 else 0.0
