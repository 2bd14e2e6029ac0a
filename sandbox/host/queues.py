"""The queue trigger: polling with the host's back-off, leases, retries and poison queues."""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import math
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from azure.functions.queue import QueueMessage as FuncQueueMessage

from sandbox.host.config import MIN_POLLING_INTERVAL
from sandbox.host.indexing import IndexedFunction
from sandbox.host.storage import _Storage

if TYPE_CHECKING:
    from sandbox.host.runner import FunctionsRunner


_BASE64_WHITESPACE = re.compile(r"[ \t\r\n]")


def decode_base64_message(text: str) -> bytes:
    """Decode like .NET ``Convert.FromBase64String``: whitespace ignored, strict otherwise.

    Raises ``binascii.Error`` for anything the host would refuse to decode.
    """
    return base64.b64decode(_BASE64_WHITESPACE.sub("", text), validate=True)


class PollBackoff:
    """The host's RandomizedExponentialBackoffStrategy for empty queue polls.

    Delays run ≈ 0.1, 0.2, 0.3, 0.5, 0.9, 1.7 … s up to the maximum, where they stay;
    a message resets them to the minimum.
    """

    def __init__(self, maximum: float, minimum: float = MIN_POLLING_INTERVAL) -> None:
        self.minimum = minimum
        self.maximum = max(maximum, minimum)
        self._exponent = 0
        self._current = minimum

    def reset(self) -> None:
        self._exponent = 0
        self._current = self.minimum

    def next_delay(self) -> float:
        if self._current != self.maximum:
            interval = self.minimum
            if self._exponent > 0:
                interval += random.uniform(0.8, 1.2) * 2 ** (self._exponent - 1) * self.minimum
            if interval < self.maximum:
                self._current = interval
                self._exponent += 1
            else:
                self._current = self.maximum
        return self._current


@dataclass
class _MessageLease:
    message_id: str
    pop_receipt: str
    renewed_at: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: bool = False


class _QueueListener:
    """One polling loop per queue-triggered function, like the host's QueueListener."""

    def __init__(self, runner: FunctionsRunner, fn: IndexedFunction, storage: _Storage) -> None:
        self.runner = runner
        self.fn = fn
        self.storage = storage
        self.queue_name: str = fn.trigger["queueName"]
        self.options = runner.host_config.queues
        self.lease = max(1, math.ceil(runner.queue_lease_seconds))
        self.client = storage.queues.get_queue_client(self.queue_name)
        self.poison_name = None if self.queue_name.endswith("-poison") else f"{self.queue_name}-poison"
        self.log = runner.log
        self._stopping = threading.Event()
        self._closed = threading.Event()
        self._wake = threading.Event()
        self._cond = threading.Condition()
        self._in_flight = 0
        self._leases: dict[int, _MessageLease] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.options.batch_size + self.options.new_batch_threshold,
            thread_name_prefix=f"{runner.name}-{fn.name}-msg",
        )
        self._poller = threading.Thread(
            target=self._poll_loop, name=f"{runner.name}-{fn.name}-poll", daemon=True
        )
        # Leases are renewed until the last invocation ends, through a graceful stop too.
        self._renewer = threading.Thread(
            target=self._renew_loop, name=f"{runner.name}-{fn.name}-renew", daemon=True
        )

    def start(self) -> None:
        self._poller.start()
        self._renewer.start()

    def poke(self) -> None:
        self._wake.set()

    def stop_polling(self) -> None:
        self._stopping.set()
        self._wake.set()
        with self._cond:
            self._cond.notify_all()
        if self._poller.is_alive():
            self._poller.join(timeout=5)

    def wait_idle(self, deadline: float) -> bool:
        with self._cond:
            while self._in_flight and time.monotonic() < deadline:
                self._cond.wait(max(0.0, min(0.2, deadline - time.monotonic())))
            idle = self._in_flight == 0
        self._closed.set()
        if self._renewer.is_alive():
            self._renewer.join(timeout=5)
        self._executor.shutdown(wait=False, cancel_futures=True)
        return idle

    def _poll_loop(self) -> None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        backoff = PollBackoff(self.options.max_polling_interval)
        batch = self.options.batch_size
        missing_logged = False
        while not self._stopping.is_set():
            with self._cond:
                while self._in_flight > self.options.new_batch_threshold and not self._stopping.is_set():
                    self._cond.wait(0.5)
            if self._stopping.is_set():
                return
            messages: list[Any] = []
            try:
                messages = list(
                    self.client.receive_messages(
                        messages_per_page=batch, max_messages=batch, visibility_timeout=self.lease
                    )
                )
                missing_logged = False
            except ResourceNotFoundError:
                if not missing_logged:
                    self.log.info("queue %r does not exist yet; polling with back-off", self.queue_name)
                    missing_logged = True
            except AzureError as exc:
                if not self._stopping.is_set():
                    self.log.warning("polling queue %r failed: %s", self.queue_name, exc)
            except Exception:
                # The host's listener survives anything a poll throws; so does this one.
                self.log.exception("polling queue %r failed", self.queue_name)
            if messages:
                backoff.reset()
                for message in messages:
                    lease = _MessageLease(message.id, message.pop_receipt, time.monotonic())
                    with self._cond:
                        self._in_flight += 1
                        self._leases[id(lease)] = lease
                    try:
                        self._executor.submit(self._process, message, lease)
                    except RuntimeError:  # executor shut down while stopping
                        self._finished(lease)
                continue
            self._wake.wait(backoff.next_delay())
            self._wake.clear()

    def _renew_loop(self) -> None:
        from azure.core.exceptions import AzureError

        # Renewed at half the lease, as the host does after 5 of its 10 minutes.
        half = self.lease / 2
        while not self._closed.wait(min(1.0, half / 2)):
            with self._cond:
                leases = list(self._leases.values())
            for lease in leases:
                if time.monotonic() - lease.renewed_at < half:
                    continue
                with lease.lock:
                    if lease.done:
                        continue
                    try:
                        updated = self.client.update_message(
                            lease.message_id, lease.pop_receipt, visibility_timeout=self.lease
                        )
                        lease.pop_receipt = updated.pop_receipt or lease.pop_receipt
                        lease.renewed_at = time.monotonic()
                    except AzureError as exc:
                        self.log.warning(
                            "renewing message %s on %r failed: %s", lease.message_id, self.queue_name, exc
                        )

    def _finished(self, lease: _MessageLease) -> None:
        with self._cond:
            self._leases.pop(id(lease), None)
            self._in_flight -= 1
            self._cond.notify_all()

    def _process(self, message: Any, lease: _MessageLease) -> None:
        try:
            self._handle(message, lease)
        except Exception:
            self.log.exception("handling message %s from %r failed", message.id, self.queue_name)
        finally:
            self._finished(lease)

    def _handle(self, message: Any, lease: _MessageLease) -> None:
        max_count = self.options.max_dequeue_count
        if self.poison_name and message.dequeue_count > max_count:
            self._poison(message, lease, f"Message has reached MaxDequeueCount of {max_count}.")
            return
        raw: str = message.content or ""
        if self.options.message_encoding == "base64":
            try:
                body_bytes = decode_base64_message(raw)
            except (binascii.Error, ValueError):
                if self.poison_name:
                    self._poison(
                        message, lease, "Message is not valid base64 (host.json messageEncoding is base64)."
                    )
                else:
                    self.log.warning(
                        "message %s on %r is not valid base64; left invisible", message.id, self.queue_name
                    )
                    lease.done = True
                return
            body = body_bytes.decode("utf-8", errors="replace")
        else:
            body = raw
        binding = self._binding_value(message, lease, body)
        outcome = self.runner._invoke(self.fn, binding)
        with lease.lock:
            lease.done = True
        if outcome.ok:
            self._delete(message, lease)
        elif self.poison_name is None:
            # The host leaves a failed message invisible when there is no poison queue, to
            # avoid a fast infinite loop; it comes back when the lease runs out.
            pass
        elif message.dequeue_count >= max_count:
            self._poison(message, lease, f"Message has reached MaxDequeueCount of {max_count}.")
        else:
            self._release(message, lease)

    def _binding_value(self, message: Any, lease: _MessageLease, body: str) -> Any:
        if self.fn.trigger_annotation is str:
            return body
        if self.fn.trigger_annotation is bytes:
            return body.encode("utf-8")
        return FuncQueueMessage(
            id=message.id,
            body=body,
            dequeue_count=message.dequeue_count,
            expiration_time=message.expires_on,
            insertion_time=message.inserted_on,
            time_next_visible=message.next_visible_on,
            pop_receipt=lease.pop_receipt,
        )

    def _delete(self, message: Any, lease: _MessageLease) -> None:
        from azure.core.exceptions import AzureError

        try:
            self.client.delete_message(message.id, lease.pop_receipt)
        except AzureError as exc:
            # Another instance took the message after our lease ran out: it will run again.
            self.log.warning("deleting message %s from %r failed: %s", message.id, self.queue_name, exc)

    def _release(self, message: Any, lease: _MessageLease) -> None:
        from azure.core.exceptions import AzureError

        try:
            self.client.update_message(
                message.id, lease.pop_receipt, visibility_timeout=int(self.options.visibility_timeout)
            )
        except AzureError as exc:
            self.log.warning("releasing message %s on %r failed: %s", message.id, self.queue_name, exc)

    def _poison(self, message: Any, lease: _MessageLease, reason: str) -> None:
        assert self.poison_name
        self.log.warning(
            "%s Moving message %s to queue '%s'. (function %s)",
            reason,
            message.id,
            self.poison_name,
            self.fn.name,
        )
        with lease.lock:
            lease.done = True
        # The original text is copied, so the poison message decodes exactly like the original.
        self.storage.send(self.poison_name, message.content or "")
        self._delete(message, lease)
