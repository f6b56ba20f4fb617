"""What a supervisor and its workers tell each other about health: one shape, both directions.

Under ``--workers N`` an instance probes and scrapes each endpoint once, in the supervisor
(``gslb.ops.healthhub``), not once per worker. Several times a second the supervisor sends
each worker a *share* (``snapshot``): every endpoint's active-check state and load report, the
probe RTT averages, and in fleet mode the other edges' verdicts. The worker applies it
(``apply_share``) through its own health policy, so transitions log, count and cordon as a
probe of its own would, and answers with what only it knows (``worker_share``): its requests
in flight per endpoint and its TTFB averages, which the supervisor adds up (``merge_answers``)
for what this edge publishes to the fleet.

Endpoints are named by URL, regions by name: during a reload the two sides may briefly run
different configs, and whatever one side has that the other has not is skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gslb.core.peers import EndpointVerdict
from gslb.edge.runtime import Runtime

Share = dict[str, Any]


def snapshot(rt: Runtime, verdicts: Mapping[str, EndpointVerdict] | None) -> Share:
    """The supervisor's health results for its workers."""
    learn = rt.health.latency
    doc: Share = {
        "endpoints": {
            ep.url: {
                "up": ep.up,
                "failures": ep.probe_failures,
                "successes": ep.probe_successes,
                "load": ep.reported_load,
                "load_at": ep.reported_at,
            }
            for ep in rt.fleet.endpoints()
        },
        "rtt_ms": {r.name: learn.ewma_probe_rtt_ms(r.index) for r in rt.fleet.regions},
    }
    if verdicts is not None:
        doc["fleet"] = {
            url: [v.fleet_down, v.down_votes, v.reporters, v.peer_inflight]
            for url, v in verdicts.items()
        }
    return doc


def apply_share(rt: Runtime, doc: Share, now: float, *, initial: bool) -> None:
    """Take a supervisor's share into this worker's runtime (``initial``: its first one,
    which never cordons, like the first probe round)."""
    health = rt.health
    for url, e in doc["endpoints"].items():
        ep = rt.fleet.by_url.get(url)
        if ep is None:
            continue
        health.on_shared(ep, bool(e["up"]), int(e["failures"]), int(e["successes"]), now, initial)
        load = e["load"]
        if load is not None and float(e["load_at"]) > ep.reported_at:
            health.on_load_report(ep, float(load), now, read_at=float(e["load_at"]))
    rtt = doc["rtt_ms"]
    for region in rt.fleet.regions:
        if region.name in rtt:
            health.latency.set_probe_rtt_ms(region.index, rtt[region.name])
    fleet = doc.get("fleet")
    if fleet is not None:
        verdicts = {
            url: EndpointVerdict(bool(down), int(votes), int(reporters), int(inflight))
            for url, (down, votes, reporters, inflight) in fleet.items()
        }
        health.on_fleet(verdicts, now)


def worker_share(rt: Runtime) -> Share:
    """A worker's answer: its requests in flight per endpoint, its TTFB average per region."""
    learn = rt.health.latency
    return {
        "inflight": {ep.url: ep.inflight for ep in rt.fleet.endpoints() if ep.inflight},
        "ttfb_ms": {r.name: learn.ewma_ttfb_ms(r.index) for r in rt.fleet.regions},
    }


def merge_answers(answers: Sequence[Share]) -> tuple[dict[str, int], dict[str, float]]:
    """The instance's in-flight count per endpoint (summed over workers) and TTFB average per
    region (the mean of the workers that have one)."""
    inflight: dict[str, int] = {}
    ttfb: dict[str, list[float]] = {}
    for a in answers:
        for url, n in a.get("inflight", {}).items():
            inflight[url] = inflight.get(url, 0) + int(n)
        for name, v in a.get("ttfb_ms", {}).items():
            if v is not None:
                ttfb.setdefault(name, []).append(float(v))
    return inflight, {name: sum(vs) / len(vs) for name, vs in ttfb.items()}
