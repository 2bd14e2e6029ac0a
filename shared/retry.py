"""Retrying: the pause before the next attempt, and optimistic writes that lost.

``backoff`` is the one exponential back-off with jitter (tenacity's strategies) for every
wait the app computes itself: a step's next look through the queue, a watch established
again.

Optimistic writes that lost (an ETag or resourceVersion conflict): look again and retry.

client-go's ``RetryOnConflict`` is the model: the caller's function reads fresh state,
decides and writes; a ``ConcurrencyError`` means somebody wrote first, so it runs again
after a short random pause, a bounded number of times. Exhausting the attempts raises
the last conflict: a caller that falls out of its loop silently would leave its work
half done with nobody told (a cancelled run whose pending nodes stay pending).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TypeVar

from shared.errors import ConcurrencyError

T = TypeVar("T")

DEFAULT_ATTEMPTS = 5


def backoff(attempt: int, *, initial: float, maximum: float, jitter: float = 0.25) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1):
    ``initial`` doubling up to ``maximum``, plus up to ``jitter`` x ``initial`` at random,
    so that waiters that failed together do not come back together.

    The loop these waits belong to is the queue (each attempt is a new delivery) or a
    watch being re-established, so no in-process retrier can own it; this is the delay
    tenacity's ``wait_exponential + wait_random`` would give, without forging its call
    state."""
    exponential = initial * 2 ** min(max(1, attempt) - 1, 62)
    return min(maximum, max(initial, exponential) + random.uniform(0, initial * jitter))


def retry_on_conflict(
    fn: Callable[[], T],
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    sleep: Callable[[float], None] | None = None,
    max_pause: float = 0.2,
) -> T:
    """Run ``fn`` until it returns without a ``ConcurrencyError``; after ``attempts``
    conflicts, raise the last one. ``sleep``: the injected clock's (no pause if None)."""
    import tenacity

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(ConcurrencyError),
        stop=tenacity.stop_after_attempt(attempts),
        # Spread at random: writers that collided once would collide again in step.
        wait=tenacity.wait_random_exponential(multiplier=max_pause / 10, max=max_pause),
        sleep=sleep if sleep is not None else (lambda _s: None),
        reraise=True,
    )
    return retrying(fn)
