"""An object store is at times briefly unreachable or throttling, while a missing object or a
wrong key will not change: only the first kind is worth retrying. It is retried a bounded number
of times with a doubling back-off that keeps the final save inside the pod's termination grace
period, and a stop request cuts the wait short, so that a periodic save never delays the final one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from cxg_on_k8s.userdata.errors import UserDataError

log = logging.getLogger("cxg_on_k8s.userdata")

T = TypeVar("T")

# Bounded retries: 1+2+4+8 s of back-off at most, well inside the pod's termination grace period.
DEFAULT_RETRIES = 4
DEFAULT_BACKOFF = 1.0
MAX_BACKOFF = 30.0


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, UserDataError) and exc.transient


def retrying(
    attempt: Callable[[], T],
    *,
    describe: str,
    retries: int,
    backoff: float,
    interrupt: threading.Event | None = None,
) -> T:
    """Run ``attempt``; retry transient failures ``retries`` times, doubling the delay (max 30 s).

    ``interrupt``, once set, ends the wait before a retry by raising the last failure (a stop
    request during a periodic save: the final save, called without it, retries in full).
    """
    failures: list[UserDataError] = []

    def log_retry(state: RetryCallState) -> None:
        # tenacity calls this after an attempt that failed transiently, once it chose the delay.
        assert state.outcome is not None and state.next_action is not None
        failure = state.outcome.exception()
        assert isinstance(failure, UserDataError)
        failures.append(failure)
        log.warning(
            "%s failed (attempt %d of %d), retrying in %.1f s: %s",
            describe,
            state.attempt_number,
            retries + 1,
            state.next_action.sleep,
            failure.message,
        )

    def sleep(seconds: float) -> None:
        if interrupt is None:
            time.sleep(seconds)
        elif interrupt.wait(seconds):
            raise failures[-1]

    retryer = Retrying(
        retry=retry_if_exception(_transient),
        stop=stop_after_attempt(retries + 1),
        wait=wait_exponential(multiplier=backoff, max=MAX_BACKOFF),
        before_sleep=log_retry,
        sleep=sleep,
        reraise=True,
    )
    return retryer(attempt)
