"""The share between a supervisor's prober and its workers, without sockets: one runtime's
snapshot applied to another's, across configs that differ as during a reload."""

from __future__ import annotations

from gslb.core.config import parse_toml
from gslb.core.peers import EndpointVerdict
from gslb.edge.runtime import build_runtime
from gslb.edge.sharedhealth import apply_share, merge_answers, snapshot, worker_share
from tests.fleet import REGIONS, fleet_toml

TWO = [REGIONS[0], REGIONS[2]]
A, B, C = "http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.1.1:8000"
D = "http://10.0.0.3:8000"  # fleet_toml puts A and B on one node, D on the next


def runtime(us_east: list[str]):  # type: ignore[no-untyped-def]
    cfg = parse_toml(fleet_toml(urls={"us-east": us_east}, regions=TWO), "t.toml")
    return build_runtime(cfg)


def test_a_snapshot_carries_state_load_rtt_and_verdicts_to_a_worker() -> None:
    hub, worker = runtime([A, B, D]), runtime([A, B, D])
    a = hub.fleet.by_url[A]
    for _ in range(3):
        hub.health.on_probe(a, False, None, 1.0)
    hub.health.on_probe(hub.fleet.by_url[C], True, 0.020, 1.0)
    hub.health.on_load_report(hub.fleet.by_url[B], 6.0, 1.5)
    doc = snapshot(hub, {C: EndpointVerdict(True, 2, 3, 5)})

    apply_share(worker, doc, 2.0, initial=False)
    wa, wb, wc = (worker.fleet.by_url[u] for u in (A, B, C))
    assert (wa.up, wa.probe_failures) == (False, 3)
    assert (wb.reported_load, wb.reported_at) == (6.0, 1.5)
    assert worker.health.ewma_probe_rtt_ms(1) == 20.0
    assert wc.fleet_down and wc.peer_inflight == 5
    # A shared "down" cordons the node, as an own probe's would (not on the first share).
    assert wb.cordoned(2.0) and wb.cordoned_reason == f"sibling {A} down"

    # An older load report than the worker holds does not replace it.
    worker.health.on_load_report(wb, 9.0, 3.0)
    apply_share(worker, doc, 3.0, initial=False)
    assert wb.reported_load == 9.0


def test_endpoints_one_side_lacks_are_skipped_and_answers_add_up() -> None:
    hub, worker = runtime([A, B]), runtime([A])
    for _ in range(3):
        hub.health.on_probe(hub.fleet.by_url[B], False, None, 1.0)
    for _ in range(3):
        hub.health.on_probe(hub.fleet.by_url[A], False, None, 1.0)
    apply_share(worker, snapshot(hub, None), 2.0, initial=True)
    assert B not in worker.fleet.by_url and not worker.fleet.by_url[A].up

    worker.fleet.acquire(worker.fleet.by_url[A])
    other = runtime([A, B])
    other.fleet.acquire(other.fleet.by_url[A])
    other.fleet.acquire(other.fleet.by_url[B])
    other.health.on_ttfb(0, 0.1)
    inflight, ttfb = merge_answers([worker_share(worker), worker_share(other), {}])
    assert inflight == {A: 2, B: 1}
    assert ttfb == {"us-east": 100.0}
