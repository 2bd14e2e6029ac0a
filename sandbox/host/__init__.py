"""A local stand-in for the Azure Functions host, for a Python v2-model app.

The real host (``func start``) cannot be installed here, so this package plays its part:
it imports ``function_app.py``, indexes it once with ``app.get_functions()`` and invokes
the user functions with the *real* ``azure.functions`` binding objects. Everything the
app can observe is meant to match the host and its extensions as described in
``shared/specs/functions-host-facts.md``; where it cannot, the gap is named below.

Behaviours reproduced
---------------------
HTTP trigger
    Route prefix ``api`` (host.json ``extensions.http.routePrefix``), route templates
    with ``{p}``, ``{p?}``, ``{p:constraint}`` and ``{*p}`` (literal segments are
    matched case-insensitively and take precedence over parameters, as in ASP.NET
    routing), method filters, 404 when nothing matches, 500 with an empty body on an
    unhandled exception, 200 when the function sets no response, a 100 MiB body limit
    (``FUNCTIONS_REQUEST_BODY_SIZE_LIMIT``). Keys are not checked, like ``func start``.
    With ``easy_auth``, App Service Authentication stands in front (sandbox/easy_auth.py).
Event Grid trigger
    ``/runtime/webhooks/eventgrid?functionName=NAME`` with the ``aeg-event-type``
    protocol (validation handshake, Notification → one concurrent invocation per event,
    500 if any fails so Event Grid redelivers the batch, else 202; Unsubscribe → 202;
    anything else → 400), the CloudEvents OPTIONS handshake and single-object
    deliveries. CloudEvents are handed to the function the way the worker's *bundled*
    ``azure-functions`` library does on Python ≤ 3.12 (an ``EventGridEvent`` whose
    ``topic``/``event_type``/``event_time``/``data_version`` are None); with the app
    setting ``PYTHON_ISOLATE_WORKER_DEPENDENCIES=1`` the app's own library decides, as
    in Azure (azure-functions ≥ 1.25 then gives a ``func.CloudEvent``).
Queue trigger
    host.json ``extensions.queues`` (``batchSize``, ``newBatchThreshold``,
    ``maxDequeueCount``, ``visibilityTimeout``, ``maxPollingInterval``,
    ``messageEncoding``); the randomized exponential back-off of empty polls; at most
    batchSize + newBatchThreshold messages in flight per function; receive with a fixed
    lease (10 min in Azure, ``queue_lease_seconds`` here) renewed at half-time; delete
    on success; on failure release with ``visibilityTimeout`` or, at
    ``maxDequeueCount``, copy the original text to ``<queue>-poison`` and delete it;
    messages dequeued more often than that are poisoned without running; invalid base64
    goes straight to poison; ``-poison`` queues get no poison queue and a failed message
    there stays invisible until its lease ends. Queue output bindings (``func.Out`` or
    ``$return``) are written only after success, split JSON arrays into one message per
    element, lower-case and create their queue, and wake this host's listener on it.
Timer trigger
    NCRONTAB with six fields (seconds first) or five, or a ``hh:mm:ss`` TimeSpan,
    ``%Setting%`` resolved; day-of-month and day-of-week are ANDed as NCrontab does;
    ``run_on_startup``; ``use_monitor`` (off for schedules more frequent than once a
    minute) with the schedule status blob, so a missed occurrence fires once with
    ``past_due=True`` at start-up; runs never overlap and an overshooting run is
    followed by exactly one catch-up (``past_due=True``); failures are not retried.
    Only one host per host ID runs a timer: a blob lease on
    ``azure-webjobs-hosts/locks/<hostId>/Host.Functions.<name>.Listener`` (15 s, renewed
    every 5 s, released on stop). Hosts without it retry every ``lock_retry_seconds``
    (the host's 1 min, scaled by ``queue_lease_seconds / 600`` by default, at least 1 s).
Admin
    ``POST /admin/functions/NAME`` with ``{"input": ...}`` runs a non-HTTP function at
    once (202), as ``func start`` allows; ``GET /admin/host/status`` answers when serving.
Worker
    Sync functions run on a thread pool of ``PYTHON_THREADPOOL_THREAD_COUNT`` threads
    (default ``min(32, cpu + 4)``), ``async def`` functions on one shared event loop, as
    in the Python worker. A ``context`` parameter receives a ``func.Context``.

Several runner processes may share one storage account, exactly like a scaled-out app:
all coordination goes through queue leases and blob leases, never through this process.

Not reproduced: ``functionTimeout`` (Python threads cannot be killed; a long invocation
simply runs on), retry policies (``@app.retry``), function keys, input bindings and
output bindings other than queue/HTTP (rejected at start-up), ``WEBSITE_TIME_ZONE``.
host.json durations are used as written (only the receive lease and the lock retry are
scaled). In one process an app is imported once, so in-process runners of the same app
share its module state and see the environment of the first one to start.

Layout: :mod:`~sandbox.host.runner` (the host: start, stop, invocation),
:mod:`~sandbox.host.http` (routes and the HTTP server), :mod:`~sandbox.host.eventgrid`,
:mod:`~sandbox.host.queues`, :mod:`~sandbox.host.timers` (one trigger each),
:mod:`~sandbox.host.bindings` (the objects functions get and return),
:mod:`~sandbox.host.indexing`, :mod:`~sandbox.host.config` (host.json, settings),
:mod:`~sandbox.host.storage`; ``python -m sandbox.host`` runs one host process.
"""

from __future__ import annotations

from sandbox.host.config import RunnerConfigError
from sandbox.host.queues import PollBackoff
from sandbox.host.runner import FunctionsRunner
from sandbox.host.timers import Schedule

__all__ = ["FunctionsRunner", "PollBackoff", "RunnerConfigError", "Schedule"]
