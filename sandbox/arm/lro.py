"""Long-running operations: the async-operation URLs, their polling, and how they end."""

from __future__ import annotations

import math
import uuid
from urllib.parse import quote

from sandbox.arm.replies import _KNOWN_ERROR_MESSAGES, _ApiError, _Ctx, _iso, _Reply
from sandbox.arm.resources import _Operation, _ScaleSet
from sandbox.arm.store import _Store


class _Operations(_Store):
    def _api_poll(self, ctx: _Ctx) -> _Reply:
        self._check_subscription(ctx)
        op = self._operations.get(ctx.match["op"])
        headers = {"x-ms-ratelimit-remaining-resource": "Microsoft.Compute/GetOperation3Min;14999"}
        if op is None:
            raise _ApiError(404, "NotFound", "The entity was not found in this Azure location.")
        monitor = (
            ctx.match["kind"].lower() == "operationresults" or ctx.query.get("monitor", "").lower() == "true"
        )
        if not monitor:
            return _Reply(200, op.json(), headers)
        # Location-header semantics: 202 until done, then the (empty) result or the error.
        if op.status == "InProgress":
            loc = self._op_urls(ctx, op.op_id)[1]
            headers.update({"Location": loc, "Retry-After": "1"})
            return _Reply(202, None, headers)
        if op.status == "Succeeded":
            return _Reply(200, None, headers)
        return _Reply(409 if op.status == "Canceled" else 500, {"error": dict(op.error or {})}, headers)

    # ---------------------------------------------------------------- operations the writes start

    def _op_urls(self, ctx: _Ctx, op_id: str) -> tuple[str, str]:
        base = (
            f"{ctx.base_url}/subscriptions/{self.subscription_id}/providers/Microsoft.Compute"
            f"/locations/{self.location}/operations/{op_id}"
        )
        v = quote(ctx.api_version, safe="")
        return f"{base}?api-version={v}", f"{base}?monitor=true&api-version={v}"

    def _start_op(self, ctx: _Ctx, ss: _ScaleSet, kind: str) -> _Operation:
        return self._new_operation(ss, kind)

    def _new_operation(self, ss: _ScaleSet, kind: str) -> _Operation:
        op = _Operation(
            op_id=str(uuid.uuid4()),
            kind=kind,
            key=ss.key,
            start_time=_iso(),
            fail_code=self.faults._take_lro_fault(kind),
        )
        self._operations[op.op_id] = op
        return op

    def _accepted(self, ctx: _Ctx, op: _Operation, duration: float, headers: dict[str, str]) -> _Reply:
        async_url, location_url = self._op_urls(ctx, op.op_id)
        # Integer seconds, as the SDK parses it with int(); never 0 so clients do not spin.
        retry_after = max(1, math.ceil(self.world.clock.seconds(min(duration, 10.0))))
        headers = {
            **headers,
            "Azure-AsyncOperation": async_url,
            "Location": location_url,
            "Retry-After": str(retry_after),
            "x-ms-request-id": op.op_id,
        }
        self._maybe_finish_op(op)
        return _Reply(202, None, headers)

    def _finished_op(self, kind: str, resource_id: str) -> _Operation:
        """An async operation that is already done (for writes Compute finishes at once)."""
        now = _iso()
        op = _Operation(
            op_id=str(uuid.uuid4()),
            kind=kind,
            key=("resource", resource_id.lower()),
            start_time=now,
            fail_code=None,
            status="Succeeded",
            end_time=now,
        )
        self._operations[op.op_id] = op
        return op

    def _maybe_finish_op(self, op: _Operation) -> None:
        if op.pending or op.model_pending or op.status != "InProgress":
            return
        op.end_time = _iso()
        if op.fail_code is not None:
            op.status = "Failed"
            op.error = {"code": op.fail_code, "message": self._error_message(op.fail_code)}
        else:
            op.status = "Succeeded"
        self.world.history.append(
            "operation_finished", operation_id=op.op_id, operation=op.kind, status=op.status, error=op.error
        )
        self._operation_finished(op)

    def _operation_finished(self, op: _Operation) -> None:
        """Called as ``op`` ends, inside its transaction: the layer whose operations
        start others (a Rolling upgrade's next batch) overrides it."""

    @staticmethod
    def _error_message(code: str) -> str:
        return _KNOWN_ERROR_MESSAGES.get(code, f"The operation failed with error code '{code}'.")
