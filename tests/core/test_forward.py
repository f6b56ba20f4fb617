"""The forwarding state machine, table-driven and without sockets (h11's way).

Each case is a decision (candidate order, attempts, a replayable body or not), the set of
regions with an available endpoint, and a script of events with the step each must produce.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from gslb.core.forward import (
    RETRY_REASONS,
    Act,
    Exchange,
    Failure,
    ForwardingError,
    Phase,
    status_outcome,
)
from gslb.core.healthevents import Outcome

# (event, args) -> (act, outcome, error code, region tried after the step)
Event = tuple[str, tuple[object, ...]]
Expect = tuple[Act, Outcome | None, str | None, int | None]


@dataclass
class Case:
    name: str
    script: list[tuple[Event, Expect]]
    order: tuple[int, ...] = (0, 1, 2)
    max_attempts: int = 2
    replayable: bool = True
    available: set[int] = field(default_factory=lambda: {0, 1, 2})
    retries: tuple[str, ...] = ()


def ev(name: str, *args: object) -> Event:
    return (name, args)


START = ev("start")
OK_HEAD = ev("head", 200, True)
FIRST = ev("first_bytes")
DONE = ev("finished")

CASES = [
    Case(
        "first candidate streams to the end",
        [
            (START, (Act.TRY, None, None, 0)),
            (OK_HEAD, (Act.READ_FIRST, None, None, 0)),
            (FIRST, (Act.COMMIT, None, None, 0)),
            (DONE, (Act.FINISH, Outcome.SUCCESS, None, 0)),
        ],
    ),
    Case(
        "a 503 is retried on the next candidate",
        [
            (START, (Act.TRY, None, None, 0)),
            (ev("head", 503, True), (Act.TRY, Outcome.HTTP_5XX, None, 1)),
            (OK_HEAD, (Act.READ_FIRST, None, None, 1)),
            (FIRST, (Act.COMMIT, None, None, 1)),
            (DONE, (Act.FINISH, Outcome.SUCCESS, None, 1)),
        ],
        retries=("http_503",),
    ),
    Case(
        "the last candidate's 503 is relayed, not replaced",
        [
            (START, (Act.TRY, None, None, 0)),
            (ev("head", 503, True), (Act.READ_FIRST, None, None, 0)),
            (FIRST, (Act.COMMIT, None, None, 0)),
            (DONE, (Act.FINISH, Outcome.HTTP_5XX, None, 0)),
        ],
        order=(0,),
    ),
    Case(
        "no retry when the other candidates have no endpoint",
        [
            (START, (Act.TRY, None, None, 0)),
            (ev("head", 502, True), (Act.READ_FIRST, None, None, 0)),
        ],
        available={0},
    ),
    Case(
        "an unavailable first candidate is skipped",
        [
            (START, (Act.TRY, None, None, 1)),
            (ev("head", 504, False), (Act.COMMIT, None, None, 1)),  # no later candidate
            (DONE, (Act.FINISH, Outcome.HTTP_5XX, None, 1)),
        ],
        order=(0, 1),
        available={1},
    ),
    Case(
        "max_attempts bounds the retries",
        [
            (START, (Act.TRY, None, None, 0)),
            (ev("failed", Failure.CONNECT_ERROR), (Act.TRY, Outcome.CONNECT_ERROR, None, 1)),
            (ev("head", 503, True), (Act.READ_FIRST, None, None, 1)),  # third is out of reach
        ],
        retries=("connect_error",),
    ),
    Case(
        "connect errors everywhere end in 502",
        [
            (START, (Act.TRY, None, None, 0)),
            (ev("failed", Failure.CONNECT_ERROR), (Act.TRY, Outcome.CONNECT_ERROR, None, 1)),
            (
                ev("failed", Failure.CONNECT_ERROR),
                (Act.ANSWER, Outcome.CONNECT_ERROR, "upstream_unavailable", 1),
            ),
        ],
        retries=("connect_error",),
    ),
    Case(
        "a time-out before the head, then one after it: 504",
        [
            (START, (Act.TRY, None, None, 0)),
            (ev("failed", Failure.TIMEOUT), (Act.TRY, Outcome.TIMEOUT, None, 1)),
            (OK_HEAD, (Act.READ_FIRST, None, None, 1)),
            (ev("failed", Failure.TIMEOUT), (Act.ANSWER, Outcome.TIMEOUT, "upstream_timeout", 1)),
        ],
        retries=("timeout",),
    ),
    Case(
        "no first byte in time is a ttft time-out, retried",
        [
            (START, (Act.TRY, None, None, 0)),
            (OK_HEAD, (Act.READ_FIRST, None, None, 0)),
            (ev("failed", Failure.TIMEOUT), (Act.TRY, Outcome.TIMEOUT, None, 1)),
        ],
        retries=("ttft_timeout",),
    ),
    Case(
        "an abort before commit is retried",
        [
            (START, (Act.TRY, None, None, 0)),
            (OK_HEAD, (Act.READ_FIRST, None, None, 0)),
            (ev("failed", Failure.ABORTED), (Act.TRY, Outcome.ABORT, None, 1)),
        ],
        retries=("upstream_aborted",),
    ),
    Case(
        "a streamed body is never replayed",
        [
            (START, (Act.TRY, None, None, 0)),
            (ev("head", 503, True), (Act.READ_FIRST, None, None, 0)),
        ],
        replayable=False,
    ),
    Case(
        "a streamed body's connect error is not retried",
        [
            (START, (Act.TRY, None, None, 0)),
            (
                ev("failed", Failure.CONNECT_ERROR),
                (Act.ANSWER, Outcome.CONNECT_ERROR, "upstream_unavailable", 0),
            ),
        ],
        replayable=False,
    ),
    Case(
        "after commit a stall is a cut, never a retry",
        [
            (START, (Act.TRY, None, None, 0)),
            (OK_HEAD, (Act.READ_FIRST, None, None, 0)),
            (FIRST, (Act.COMMIT, None, None, 0)),
            (ev("stalled"), (Act.CUT, Outcome.TIMEOUT, None, 0)),
        ],
    ),
    Case(
        "after commit an abort is a cut",
        [
            (START, (Act.TRY, None, None, 0)),
            (OK_HEAD, (Act.READ_FIRST, None, None, 0)),
            (FIRST, (Act.COMMIT, None, None, 0)),
            (ev("aborted"), (Act.CUT, Outcome.ABORT, None, 0)),
        ],
    ),
    Case(
        "a failure reported after commit is a cut too",
        [
            (START, (Act.TRY, None, None, 0)),
            (OK_HEAD, (Act.READ_FIRST, None, None, 0)),
            (FIRST, (Act.COMMIT, None, None, 0)),
            (ev("failed", Failure.TIMEOUT), (Act.CUT, Outcome.TIMEOUT, None, 0)),
        ],
    ),
    Case(
        "no candidate with an endpoint: 503 without trying",
        [(START, (Act.ANSWER, None, "no_eligible_region", None))],
        available=set(),
    ),
    Case(
        "the endpoint vanished between check and pick",
        [
            (START, (Act.TRY, None, None, 0)),
            (ev("no_endpoint"), (Act.TRY, None, None, 1)),
        ],
    ),
    Case(
        "our own descriptor limit: 503 overloaded, no health penalty",
        [
            (START, (Act.TRY, None, None, 0)),
            (ev("failed", Failure.OUT_OF_FILES), (Act.ANSWER, None, "overloaded", 0)),
        ],
    ),
    Case(
        "every connection of the pool stayed busy: the next candidate, no health penalty",
        [
            (START, (Act.TRY, None, None, 0)),
            (ev("failed", Failure.POOL_TIMEOUT), (Act.TRY, None, None, 1)),
        ],
        retries=("pool_timeout",),
    ),
    Case(
        "every pool stayed busy: 503 upstream_busy, no health penalty",
        [
            (START, (Act.TRY, None, None, 0)),
            (ev("failed", Failure.POOL_TIMEOUT), (Act.ANSWER, None, "upstream_busy", 0)),
        ],
        available={0},
    ),
    Case(
        "the client leaves mid-stream: cancelled, not the upstream's fault",
        [
            (START, (Act.TRY, None, None, 0)),
            (OK_HEAD, (Act.READ_FIRST, None, None, 0)),
            (FIRST, (Act.COMMIT, None, None, 0)),
            (ev("client_gone"), (Act.ABANDON, Outcome.CANCELLED, None, 0)),
        ],
    ),
    Case(
        "a 429 is load, and a body-less answer commits at once",
        [
            (START, (Act.TRY, None, None, 0)),
            (ev("head", 429, False), (Act.COMMIT, None, None, 0)),
            (DONE, (Act.FINISH, Outcome.SATURATED, None, 0)),
        ],
    ),
    Case(
        "a websocket upgrade commits on its 101",
        [
            (START, (Act.TRY, None, None, 2)),
            (ev("head", 101, False), (Act.COMMIT, None, None, 2)),
            (DONE, (Act.FINISH, Outcome.SUCCESS, None, 2)),
        ],
        order=(2, 0),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_exchange(case: Case) -> None:
    ex = Exchange(case.order, case.max_attempts, case.replayable)

    def can_pick(region: int) -> bool:
        return region in case.available

    for (name, args), (act, outcome, code, region) in case.script:
        method = getattr(ex, name)
        needs_pick = name in ("start", "no_endpoint", "failed", "head")
        step = method(*args, can_pick) if needs_pick else method(*args)
        assert step.act is act, (name, step)
        assert step.outcome is outcome, (name, step)
        assert (step.error.code if step.error else None) == code, (name, step)
        if region is not None:
            assert ex.region == region, name
    assert ex.retries == case.retries
    assert all(reason in RETRY_REASONS for reason in ex.retries)


def test_errors_carry_what_the_client_needs() -> None:
    ex = Exchange((0,), 2, True)
    step = ex.start(lambda r: False)
    assert step.error is not None
    assert (step.error.status, step.error.retry_after) == (503, "5")
    ex = Exchange((0,), 2, True)
    ex.start(lambda r: True)
    step = ex.failed(Failure.POOL_TIMEOUT, lambda r: False)
    assert step.error is not None
    assert (step.error.status, step.error.retry_after) == (503, "1")
    assert ex.phase is Phase.DONE


@pytest.mark.parametrize(
    ("phase_events", "bad"),
    [
        ([], ("head", 200, True)),  # no attempt yet
        ([("start",)], ("first_bytes",)),  # no head yet
        ([("start",)], ("finished",)),  # not committed
        ([("start",), ("head", 200, True)], ("stalled",)),
    ],
)
def test_events_out_of_order_are_refused(
    phase_events: list[tuple[object, ...]], bad: tuple[object, ...]
) -> None:
    ex = Exchange((0, 1), 2, True)

    def can_pick(region: int) -> bool:
        return True

    for name, *args in phase_events:
        method = getattr(ex, str(name))
        method(*args, can_pick) if name in ("start", "head") else method(*args)
    name, *args = bad
    method = getattr(ex, str(name))
    with pytest.raises(ForwardingError):
        method(*args, can_pick) if name in ("head",) else method(*args)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.SUCCESS),
        (101, Outcome.SUCCESS),
        (404, Outcome.SUCCESS),
        (429, Outcome.SATURATED),
        (500, Outcome.HTTP_5XX),
    ],
)
def test_status_outcome(status: int, outcome: Outcome) -> None:
    assert status_outcome(status) is outcome
