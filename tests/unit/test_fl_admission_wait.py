"""The admission's wait for re-attestation answers (issue 11, ``LiveTrust.before_round``):
handles that can block are waited on (woken when they complete, no polling delay), and the
answer of a client that never replies is reported missing when the bound passes."""

from __future__ import annotations

import threading
from typing import Any

from teeflow.fl.liveness import _wait_answers


class Blocking:
    """A handle completed by another thread (as TaskHandle is by the transport)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.waited = 0

    def done(self) -> bool:
        return self.event.is_set()

    def wait(self, timeout: float) -> bool:
        self.waited += 1
        return self.event.wait(timeout)


class Polled:
    """A handle without ``wait`` (test doubles): polled."""

    def __init__(self, done: bool) -> None:
        self._done = done

    def done(self) -> bool:
        return self._done


def test_answers_completed_by_another_thread_are_waited_for() -> None:
    answered = Blocking()
    timer = threading.Timer(0.01, answered.event.set)
    timer.start()
    asked: dict[str, Any] = {"alice": answered, "carol": Polled(True)}
    try:
        late = _wait_answers(asked, 60.0)  # a bound never reached: alice answers
    finally:
        timer.cancel()
    assert late == set()
    assert answered.done() and answered.waited == 1


def test_a_missing_answer_is_reported_when_the_bound_passes() -> None:
    silent = Blocking()
    asked: dict[str, Any] = {"bob": silent, "carol": Polled(True)}
    assert _wait_answers(asked, 0.05) == {"bob"}
    assert silent.waited == 1


def test_no_answers_asked_returns_at_once_with_nothing_missing() -> None:
    assert _wait_answers({}, 5.0) == set()
    assert _wait_answers({"dave": Polled(False)}, 0.0) == {"dave"}
