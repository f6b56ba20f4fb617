"""Forwarding one request: the commit window as a state machine without I/O.

The shell (the HTTP proxy, the WebSocket relay) does the I/O and tells an ``Exchange`` what
happened; the exchange answers with the next thing to do. Every rule of forwarding lives
here, once (docs/design.md, section 6):

* which candidate to try next: only the decision's candidates, in order, at most
  ``routing.max_attempts``, and after the first attempt only with a replayable body;
* when a failure may be retried: only before commit, and only while another candidate
  exists, so the last candidate's own 502/503/504 reaches the client as it is;
* how an attempt ended, as an ``Outcome`` for passive health;
* the retry reasons (metric labels: gslb's own names, never a library's class names);
* which error the client gets when nothing more can be tried.

Time, sockets and endpoint picking stay outside: the shell passes ``can_pick`` (is a region's
endpoint available now?) and reports time-outs as events.

Phases::

    IDLE --try--> WAITING_HEAD --head--> WAITING_BODY --first chunk--> COMMITTED --> DONE
                      |  failure, retry ^      | failure, retry             | stall/abort: CUT
                      +----> next candidate or ANSWER (no candidate left)    +-> finished: FINISH
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from gslb.core.healthevents import Outcome

RETRYABLE_STATUS: Final = frozenset({502, 503, 504})


class Phase(enum.Enum):
    IDLE = "idle"  # no attempt in flight: about to try a candidate, or none left
    WAITING_HEAD = "waiting_head"  # request sent (or being sent), no response head yet
    WAITING_BODY = "waiting_body"  # head received; the first body bytes open the commit
    COMMITTED = "committed"  # head sent to the client: no retry from here on
    DONE = "done"


class Failure(enum.Enum):
    """How an attempt failed before commit. The value is the retry reason (a metric label)."""

    CONNECT_ERROR = "connect_error"  # refused, reset, unreachable, TLS failure
    TIMEOUT = "timeout"  # no response head within the commit window
    TTFT_TIMEOUT = "ttft_timeout"  # a head, but no first body byte within the window
    ABORTED = "upstream_aborted"  # the upstream closed or broke the response before commit
    OUT_OF_FILES = "out_of_files"  # our own descriptor limit: not the upstream's fault
    # Every connection of the endpoint's pool stayed busy until the deadline: gslb's own
    # limit. Retried elsewhere like a time-out, but no health penalty: the endpoint is fine.
    POOL_TIMEOUT = "pool_timeout"


# Every retry reason an exchange can produce: bounded, for the retries metric.
RETRY_REASONS: Final = frozenset(
    {
        f.value
        for f in (
            Failure.CONNECT_ERROR,
            Failure.TIMEOUT,
            Failure.TTFT_TIMEOUT,
            Failure.ABORTED,
            Failure.POOL_TIMEOUT,
        )
    }
    | {f"http_{status}" for status in RETRYABLE_STATUS}
)

_FAILURE_OUTCOME: Final = {
    Failure.CONNECT_ERROR: Outcome.CONNECT_ERROR,
    Failure.TIMEOUT: Outcome.TIMEOUT,
    Failure.TTFT_TIMEOUT: Outcome.TIMEOUT,
    Failure.ABORTED: Outcome.ABORT,
}


@dataclass(frozen=True, slots=True)
class ClientError:
    """An answer gslb gives the client itself (as JSON ``{"error": code, "message": ...}``)."""

    status: int
    code: str
    message: str
    retry_after: str | None = None


NO_ENDPOINT: Final = ClientError(
    503, "no_eligible_region", "no healthy endpoint in the allowed regions", "5"
)
OVERLOADED: Final = ClientError(503, "overloaded", "the proxy is at its connection limit", "1")
UPSTREAM_TIMEOUT: Final = ClientError(
    504, "upstream_timeout", "the upstream did not answer in time"
)
UPSTREAM_BUSY: Final = ClientError(
    503, "upstream_busy", "every allowed endpoint's connections stayed busy", "1"
)


class Act(enum.Enum):
    TRY = "try"  # pick an endpoint in region ``Exchange.region`` and send the request
    READ_FIRST = "read_first"  # the head is acceptable: wait for the first body bytes
    COMMIT = "commit"  # send the head (and what arrived of the body), then relay the rest
    FINISH = "finish"  # the response ended normally
    CUT = "cut"  # close the client connection without a clean end: it sees truncation
    ANSWER = "answer"  # answer the client with ``Step.error``
    ABANDON = "abandon"  # the client left; nothing to answer


@dataclass(frozen=True, slots=True)
class Step:
    """What to do next, and how the attempt just ended for passive health (if it ended)."""

    act: Act
    outcome: Outcome | None = None
    error: ClientError | None = None


# Steps are values: the common ones are shared, not built per request.
_TRY: Final = Step(Act.TRY)
_READ_FIRST: Final = Step(Act.READ_FIRST)
_COMMIT: Final = Step(Act.COMMIT)
_ABANDON: Final = Step(Act.ABANDON, Outcome.CANCELLED)
_FINISH: Final = {o: Step(Act.FINISH, o) for o in Outcome}
_CUT: Final = {o: Step(Act.CUT, o) for o in Outcome}


def status_outcome(status: int) -> Outcome:
    """What a final status says about the upstream: 429 is load, 5xx a fault."""
    if status == 429:
        return Outcome.SATURATED
    if status >= 500:
        return Outcome.HTTP_5XX
    return Outcome.SUCCESS


class Exchange:
    """The forwarding state of one request: which candidate, which phase, what failed.

    ``order`` holds the decision's region indexes, the chosen one first.
    ``replayable``: the whole request body is buffered, so it can be sent again.
    """

    __slots__ = (
        "attempts",
        "failure",
        "max_attempts",
        "order",
        "phase",
        "position",
        "replayable",
        "retries",
        "status",
    )

    def __init__(self, order: tuple[int, ...], max_attempts: int, replayable: bool) -> None:
        self.order = order
        self.max_attempts = max_attempts
        self.replayable = replayable
        self.phase = Phase.IDLE
        self.position = -1  # index into order of the candidate being tried
        self.attempts = 0
        self.status = 0
        self.failure: str | None = None  # reason of the last failed attempt
        self.retries: tuple[str, ...] = ()  # reasons of failed attempts that were retried

    @property
    def region(self) -> int:
        """The region index of the candidate being tried."""
        return self.order[self.position]

    # -- choosing candidates -------------------------------------------------------------------

    def start(self, can_pick: Callable[[int], bool]) -> Step:
        """The first attempt: TRY the first candidate with an endpoint, or ANSWER."""
        return self._advance(can_pick)

    def no_endpoint(self, can_pick: Callable[[int], bool]) -> Step:
        """The shell found no endpoint in ``region`` after all (it changed under us)."""
        self._expect(Phase.WAITING_HEAD)
        self.attempts -= 1  # nothing was sent
        self.phase = Phase.IDLE
        return self._advance(can_pick)

    def _advance(self, can_pick: Callable[[int], bool]) -> Step:
        for position in range(self.position + 1, len(self.order)):
            if not self._attempts_left():
                break
            if can_pick(self.order[position]):
                self.position = position
                self.attempts += 1
                self.phase = Phase.WAITING_HEAD
                return _TRY
        self.phase = Phase.DONE
        return Step(Act.ANSWER, error=self._give_up())

    def may_retry(self, can_pick: Callable[[int], bool]) -> bool:
        """Whether a failure of this attempt can go to another candidate: attempts left, a
        replayable body, and a later candidate with an endpoint now. Asked only when an
        attempt fails, so the common path never looks at the other regions."""
        if not self._attempts_left():
            return False
        return any(can_pick(i) for i in self.order[self.position + 1 :])

    def _attempts_left(self) -> bool:
        # After the first attempt part of a streamed body may be upstream already.
        return self.attempts < self.max_attempts and (self.attempts == 0 or self.replayable)

    def _give_up(self) -> ClientError:
        if self.failure is None:
            return NO_ENDPOINT
        if self.failure in (Failure.TIMEOUT.value, Failure.TTFT_TIMEOUT.value):
            return UPSTREAM_TIMEOUT
        if self.failure == Failure.POOL_TIMEOUT.value:
            return UPSTREAM_BUSY
        return ClientError(502, "upstream_unavailable", f"the upstream failed: {self.failure}")

    # -- events of an attempt ------------------------------------------------------------------

    def head(self, status: int, has_body: bool, can_pick: Callable[[int], bool]) -> Step:
        """The upstream's response head arrived (``has_body``: a body may follow)."""
        self._expect(Phase.WAITING_HEAD)
        self.status = status
        if status in RETRYABLE_STATUS and self.may_retry(can_pick):
            return self._failed(f"http_{status}", Outcome.HTTP_5XX, can_pick)
        if not has_body:
            self.phase = Phase.COMMITTED
            return _COMMIT
        self.phase = Phase.WAITING_BODY
        return _READ_FIRST

    def first_bytes(self) -> Step:
        """The first body chunk arrived, or the body ended, within the window: commit."""
        self._expect(Phase.WAITING_BODY)
        self.phase = Phase.COMMITTED
        return _COMMIT

    def failed(self, failure: Failure, can_pick: Callable[[int], bool]) -> Step:
        """The attempt failed before commit (a time-out, a connect error, an abort)."""
        if self.phase is Phase.COMMITTED:
            return self._cut(_FAILURE_OUTCOME.get(failure, Outcome.ABORT))
        self._expect(Phase.WAITING_HEAD, Phase.WAITING_BODY)
        if failure is Failure.TIMEOUT and self.phase is Phase.WAITING_BODY:
            failure = Failure.TTFT_TIMEOUT
        if failure is Failure.OUT_OF_FILES:
            self.phase = Phase.DONE  # our own limit: no health penalty, no retry
            return Step(Act.ANSWER, error=OVERLOADED)
        return self._failed(failure.value, _FAILURE_OUTCOME.get(failure), can_pick)

    def _failed(
        self, reason: str, outcome: Outcome | None, can_pick: Callable[[int], bool]
    ) -> Step:
        self.failure = reason
        if self.may_retry(can_pick):
            self.retries = (*self.retries, reason)
            self.phase = Phase.IDLE
            step = self._advance(can_pick)
            return Step(step.act, outcome, step.error)
        self.phase = Phase.DONE
        return Step(Act.ANSWER, outcome, self._give_up())

    def stalled(self) -> Step:
        """A committed stream went silent for ``idle_timeout_s``."""
        self._expect(Phase.COMMITTED)
        return self._cut(Outcome.TIMEOUT)

    def aborted(self) -> Step:
        """The upstream broke a committed stream."""
        self._expect(Phase.COMMITTED)
        return self._cut(Outcome.ABORT)

    def finished(self) -> Step:
        """The committed response ended normally."""
        self._expect(Phase.COMMITTED)
        self.phase = Phase.DONE
        return _FINISH[status_outcome(self.status)]

    def client_gone(self) -> Step:
        """The client hung up: it says nothing about the upstream (499)."""
        self.phase = Phase.DONE
        return _ABANDON

    def _cut(self, outcome: Outcome) -> Step:
        self.phase = Phase.DONE
        return _CUT[outcome]

    def _expect(self, *phases: Phase) -> None:
        if self.phase not in phases:
            raise ForwardingError(f"event in phase {self.phase.value}")


class ForwardingError(RuntimeError):
    """The shell sent an event that the current phase cannot take (a bug in the shell)."""
