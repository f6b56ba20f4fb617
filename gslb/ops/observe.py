"""What the data plane tells the rest of the shell: one record per finished request.

The proxy builds a ``RequestRecord`` when a request ends; observers (metrics, access log) turn
it into counters and log lines. The record holds no user data by construction: no body, no
query string, no credentials, and the client address only as the configured truncation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


# Not frozen, though nothing changes it after it is built: one is built per request, and a
# frozen dataclass's __init__ costs four times as much (measured: 2.4 us against 0.6 us).
@dataclass(slots=True)
class RequestRecord:
    request_id: str
    method: str
    path: str  # without query string
    status: int
    region: str | None
    route: str  # decision reason, or an error code when no region was tried
    attempts: int
    ttfb_s: float | None
    duration_s: float
    bytes_in: int
    bytes_out: int
    country: str | None
    client: str | None  # already truncated per log.client_ip
    error: str | None = None  # gslb's error code when gslb answered itself
    retries: tuple[str, ...] = ()  # reason of each retry
    spilled_from: str | None = None  # the home region when the route is a spill


class Observer(Protocol):
    def request_done(self, record: RequestRecord) -> None: ...

    def decision_made(self, seconds: float) -> None: ...

    def denied(self, cause: str, rules: tuple[str, ...]) -> None:
        """A request found no region: ``cause`` from ``router.DENIAL_CAUSES``; ``rules`` are
        the residency rules to blame (only when the cause is residency)."""


class NullObserver:
    def request_done(self, record: RequestRecord) -> None:
        pass

    def decision_made(self, seconds: float) -> None:
        pass

    def denied(self, cause: str, rules: tuple[str, ...]) -> None:
        pass


class Observers:
    """Fan a record out to several observers."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = list(observers)

    def request_done(self, record: RequestRecord) -> None:
        for o in self.observers:
            o.request_done(record)

    def decision_made(self, seconds: float) -> None:
        for o in self.observers:
            o.decision_made(seconds)

    def denied(self, cause: str, rules: tuple[str, ...]) -> None:
        for o in self.observers:
            o.denied(cause, rules)
