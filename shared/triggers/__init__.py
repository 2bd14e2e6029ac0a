"""What starts a run: maintenance events, image versions, the timer (``intake``), read
through typed payload views (``events``) and de-duplicated atomically (``idempotency``)."""
