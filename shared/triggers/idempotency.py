"""Handle a signal once, even when its twin arrives at the same moment.

Event Grid delivers at least once and redelivers whatever it did not see acknowledged,
so two copies of one event can be handled at once. Looking for a record and writing it when done
leaves a gap in which two deliveries both look, both find nothing and both act: the
second then finds the cluster held by the run the first just planned, and a
pre-maintenance event that "cannot proceed" cancels the maintenance run. So the first
thing a delivery does is *claim* its key: one create-if-absent write (Table storage
answers 409 for an existing row), the way Powertools' idempotency utility records
``INPROGRESS``. Whoever loses the create:

* finds the finished record: a duplicate, answered from it;
* finds the claim in progress within its lease: told to come back later
  (``InProgressError``, a ``TemporaryError``, so Event Grid redelivers it and then finds
  the outcome);
* finds a claim whose lease has passed (its holder died mid-way): takes it over with a
  write conditional on the claim's ETag, so only one taker wins.

A claim whose create lost its answer (the SDK retried it into a 409) is recognised as
its own by the token it carries. A delivery that fails with a transient error gives its
claim back, so that the redelivery is handled rather than taken for a duplicate.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from shared.clock import iso
from shared.errors import TemporaryError
from shared.rollout.store.base import RunStore

logger = logging.getLogger(__name__)

IN_PROGRESS = "in-progress"
# Longer than any handling of one signal takes (a few ARM and API server calls, each
# with its own timeouts); a redelivery of a signal whose handler died waits this long.
CLAIM_LEASE_SECONDS = 600.0
# When a redelivery that found the signal in progress should come back.
RETRY_AFTER_SECONDS = 30.0
TAKE_ATTEMPTS = 3


class InProgressError(TemporaryError):
    """Another delivery of the same signal is being handled right now."""


@dataclass(frozen=True)
class Claim:
    kind: str
    key: str
    token: str


def claim(store: RunStore, kind: str, key: str, *, now: float) -> Claim | dict[str, Any]:
    """Claim ``kind``/``key`` for this delivery: the claim, or the finished record of an
    earlier delivery (a duplicate). Raises ``InProgressError`` while another delivery
    holds the claim."""
    token = uuid.uuid4().hex
    data = {"outcome": IN_PROGRESS, "at": iso(now), "token": token, "leaseUntil": now + CLAIM_LEASE_SECONDS}
    for _ in range(TAKE_ATTEMPTS):
        if store.create_record(kind, key, data):
            return Claim(kind, key, token)
        found = store.get_record_entry(kind, key)
        if found is None:
            continue  # given back in between: create again
        record, etag = found
        if record.get("token") == token:
            return Claim(kind, key, token)  # our own create, retried into a 409
        if record.get("outcome") != IN_PROGRESS:
            return record
        if float(record.get("leaseUntil") or 0.0) > now:
            raise InProgressError(
                f"{kind} {key} is being handled by another delivery since {record.get('at')}",
                delay=RETRY_AFTER_SECONDS,
            )
        if store.replace_record(kind, key, data, etag=etag) is not None:
            logger.warning(
                "%s %s: the delivery claimed at %s did not finish; taken over", kind, key, record.get("at")
            )
            return Claim(kind, key, token)
    raise TemporaryError(f"{kind} {key}: the claim kept changing", delay=RETRY_AFTER_SECONDS)


def finish(store: RunStore, held: Claim, record: dict[str, Any]) -> None:
    """Replace the claim with the outcome, for every later delivery to find."""
    store.put_record(held.kind, held.key, record)


def give_back(store: RunStore, held: Claim) -> None:
    """Delete the claim if it is still this delivery's, so that a redelivery is handled.
    Best effort: a claim left behind is taken over once its lease has passed."""
    try:
        found = store.get_record_entry(held.kind, held.key)
        if found is not None and found[0].get("token") == held.token:
            store.delete_record(held.kind, held.key, etag=found[1])
    except Exception:
        logger.exception(
            "%s %s: could not give the claim back; it lapses with its lease", held.kind, held.key
        )
