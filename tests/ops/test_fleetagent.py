"""The edge's side of fleet mode without NATS: taking a document, and a state_dir that fails."""

from __future__ import annotations

from pathlib import Path

from gslb.core.fleetdoc import parse_local
from gslb.ops.fleetagent import FleetAgent
from tests.fleet import REGIONS, fleet_toml

LOCAL = """
[server]
listen = "127.0.0.1:0"
[log]
access = "off"
[geoip]
edge_country = "US"
[fleet]
servers = ["nats://127.0.0.1:4222"]
edge = "e1"
state_dir = "{state}"
"""


def document(via: str) -> str:
    whole = fleet_toml(regions=[REGIONS[0]], extra=f'[proxy]\nvia = "{via}"\n')
    return whole.replace('[geoip]\nedge_country = "US"\n\n', "", 1)


def agent(state: Path) -> tuple[FleetAgent, list[str]]:
    text = LOCAL.format(state=state)
    fleet = FleetAgent(text, "edge.toml", parse_local(text, "edge.toml").fleet)
    applied: list[str] = []

    async def apply(whole: str) -> str | None:
        applied.append(whole)
        return None

    fleet.apply = apply
    return fleet, applied


async def test_a_document_is_applied_kept_and_booted_from(tmp_path: Path) -> None:
    fleet, applied = agent(tmp_path / "state")
    assert await fleet.take(3, document("v3"))
    assert len(applied) == 1 and 'via = "v3"' in applied[0] and "[fleet]" in applied[0]
    assert (fleet.revision, fleet.error) == (3, None)
    again, _ = agent(tmp_path / "state")
    assert again.saved() == (3, document("v3"))  # a boot without NATS starts from it


async def test_a_document_the_edge_cannot_run_is_refused_and_the_old_one_stays(
    tmp_path: Path,
) -> None:
    fleet, applied = agent(tmp_path / "state")
    assert await fleet.take(1, document("v1"))
    local_section = document("v2") + '\n[server]\nlisten = "0.0.0.0:1"\n'
    assert not await fleet.take(2, local_section)
    assert len(applied) == 1 and fleet.revision == 1
    assert fleet.error is not None and fleet.error.startswith("r2: ")


async def test_a_state_dir_that_cannot_be_written_does_not_stop_the_edge(
    tmp_path: Path,
) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the state_dir should be")
    fleet, applied = agent(blocked)
    assert await fleet.take(5, document("v5"))  # it runs ...
    assert fleet.revision == 5 and len(applied) == 1
    assert fleet.error is not None and "not kept in state_dir" in fleet.error  # ... and says so
    assert await fleet.take(6, document("v6"))  # and goes on following the fleet
    assert fleet.revision == 6
