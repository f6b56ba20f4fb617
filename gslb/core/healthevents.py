"""What health hears and what it says: request outcomes in, health transitions out. Pure.

``Outcome`` is how one upstream attempt ended, as the forwarding core classifies it
(``gslb.core.forward``) and the proxy reports it to ``HealthPolicy.on_outcome``. ``HealthEvent``
is one transition the policy parts announce (metrics, the status page, logs read them).
The policy parts (``outlier``, ``activehealth``, ``cordons``, ``holddown``) emit through an
``Emit`` callback that the facade (``healthpolicy``) turns into ``HealthEvent``s, so none of
them needs to know who listens.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeAlias

if TYPE_CHECKING:
    from gslb.core.fleet import EndpointState, RegionState

# One logger for every health rule, whichever module holds it: operators filter on it.
LOG: Final = logging.getLogger("gslb.health")


class Outcome(enum.Enum):
    """How one upstream attempt ended, as the proxy reports it to health accounting."""

    SUCCESS = "success"
    CONNECT_ERROR = "connect_error"
    TIMEOUT = "timeout"  # connect/ttft/idle time-out: the upstream stalled
    HTTP_5XX = "http_5xx"
    ABORT = "abort"  # the upstream died mid-stream
    SATURATED = "saturated"  # 429 / queue full: a load signal, not a fault
    CANCELLED = "cancelled"  # the client went away: says nothing about the upstream


# Event kinds passed to the ``on_event`` callback (metrics, the status page).
EJECTED: Final = "ejected"
EJECTION_REFUSED: Final = "ejection_refused"
DOWN: Final = "down"
UP: Final = "up"
CORDONED: Final = "cordoned"
CORDON_SKIPPED: Final = "cordon_skipped"
REGION_UNROUTABLE: Final = "region_unroutable"
REGION_ROUTABLE: Final = "region_routable"
FLEET_DOWN: Final = "fleet_down"  # a quorum of other edges sees the endpoint down
FLEET_UP: Final = "fleet_up"  # that quorum is gone


@dataclass(frozen=True, slots=True)
class HealthEvent:
    """One health transition. ``endpoint`` is empty for region events."""

    kind: str
    region: str
    endpoint: str
    reason: str


# (kind, region, endpoint or None for a region event, reason): how a part announces a change.
Emit: TypeAlias = Callable[[str, "RegionState", "EndpointState | None", str], None]
