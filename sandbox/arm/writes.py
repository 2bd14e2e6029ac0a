"""Writes to scale sets and their instances (reimage, upgrade, delete, model updates), and how they end."""

from __future__ import annotations

import uuid
from copy import deepcopy
from typing import Any

from sandbox.arm.compute import _ScaleSets
from sandbox.arm.replies import _ApiError, _Ctx, _iso, _Reply
from sandbox.arm.resources import _Instance, _Operation, _ScaleSet
from sandbox.arm.upgrade_policy import _MODEL_UPGRADES, _duration_seconds, _upgrade_policy


class _ScaleSetWrites(_ScaleSets):
    def _instance_ids(self, ss: _ScaleSet, body: Any, *, required: bool) -> list[str]:
        ids = body.get("instanceIds") if isinstance(body, dict) else None
        if ids is None or (required and not ids):
            if required:
                raise _ApiError(
                    400,
                    "InvalidParameter",
                    "Required parameter 'instanceIds' is missing (null).",
                    target="instanceIds",
                )
            return [i.instance_id for i in self._sorted(ss) if i.provisioning_state != "Deleting"]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise _ApiError(
                400,
                "InvalidParameter",
                "The value of parameter instanceIds is invalid.",
                target="instanceIds",
            )
        # Flexible: "the instanceIds parameter refers to ... the instance name"
        # (virtual-machine-scale-sets-perform-manual-upgrades.md), matched as ARM names are.
        by_name = {i.vm_name.lower(): i.instance_id for i in ss.instances.values() if i.vm_name}
        resolved = []
        for iid in ids:
            internal = by_name.get(iid.lower()) if ss.flexible else iid
            if internal is None or internal not in ss.instances:
                raise _ApiError(
                    400,
                    "InvalidParameter",
                    f"The provided instanceId {iid} is not an active "
                    "Virtual Machine Scale Set VM instanceId.",
                    target="instanceIds",
                )
            resolved.append(internal)
        return list(dict.fromkeys(resolved))

    def _check_writable(self, ss: _ScaleSet, inst: _Instance, verb: str) -> None:
        if inst.provisioning_state == "Deleting" and verb != "delete":
            raise _ApiError(
                409,
                "OperationNotAllowed",
                f"Operation '{verb}' is not allowed on VM '{ss.name}_{inst.instance_id}' "
                "since it is marked for deletion. You can only retry the Delete operation "
                "(or wait for an ongoing one to complete).",
            )
        if inst.provisioning_state == "Creating" and verb != "delete":
            raise _ApiError(
                409,
                "OperationNotAllowed",
                f"Operation '{verb}' is not allowed on VM '{ss.name}_{inst.instance_id}' "
                "since the VM is being created. Retry after the create operation completes.",
            )

    def _claim(self, ss: _ScaleSet, inst: _Instance, op: _Operation, kind: str, delay: float) -> None:
        """Give ``inst`` to ``op``; an operation still working on it is preempted."""
        previous = self._operations.get(inst.op_id) if inst.op_id else None
        if previous is not None and previous is not op and inst.instance_id in previous.pending:
            previous.pending.discard(inst.instance_id)
            if previous.status == "InProgress":
                previous.status = "Canceled"
                previous.end_time = _iso()
                previous.error = {
                    "code": "OperationPreempted",
                    "message": "Operation execution has been preempted by a more recent operation.",
                }
            self.world.history.append(
                "operation_preempted",
                resource_group=ss.resource_group,
                scale_set=ss.name,
                instance_id=inst.instance_id,
                operation_id=previous.op_id,
                preempted_by=op.op_id,
            )
            self._maybe_finish_op(previous)
        inst.op_id = op.op_id
        inst.task_seq += 1
        inst.task_kind = kind
        inst.etag += 1
        op.pending.add(inst.instance_id)
        seq, key, iid = inst.task_seq, ss.key, inst.instance_id
        self.world.scheduler.call_later(
            self.world.clock.seconds(delay), lambda: self._finish_instance_task(key, iid, seq)
        )

    def _start_reimage(
        self, ctx: _Ctx, ss: _ScaleSet, ids: list[str], kind: str, headers: dict[str, str]
    ) -> _Reply:
        for iid in ids:
            self._check_writable(
                ss, ss.instances[iid], "reimage" if kind != "manualupgrade" else "manualupgrade"
            )
        op = self._start_op(ctx, ss, kind)
        for iid in ids:
            self._begin_instance_task(ss, ss.instances[iid], op, kind)
        return self._accepted(ctx, op, self.durations.reimage, headers)

    def _begin_instance_task(self, ss: _ScaleSet, inst: _Instance, op: _Operation, kind: str) -> None:
        """Start reimaging ``inst`` (``kind`` reimage / reimage_all), or upgrading it to the
        model (manualupgrade, or an upgrade the scale set's policy started)."""
        if kind in _MODEL_UPGRADES:
            if inst.model_version == ss.model_version and inst.op_id is None:
                return  # already on the latest model: Compute leaves it alone
            target, version = deepcopy(ss.image), ss.model_version
        else:
            # A plain reimage restores what the instance runs (or was being upgraded to).
            target = deepcopy(inst.target_image if inst.target_image is not None else inst.image)
            version = (
                inst.target_model_version if inst.target_model_version is not None else inst.model_version
            )
        if kind not in _MODEL_UPGRADES or target != inst.image:
            # The OS disk is replaced as the operation starts (the node is wiped then
            # too): a new disk from the image, with a new name and id.
            inst.os_disk_guid, inst.os_disks = uuid.uuid4().hex, inst.os_disks + 1
        inst.target_image, inst.target_model_version = target, version
        inst.provisioning_state, inst.power_state, inst.failure = "Updating", "starting", None
        inst.state_time = _iso()
        self._claim(ss, inst, op, kind, self.durations.reimage)
        self._emit(
            "reimage_started",
            ss,
            inst,
            target,
            operation=kind,
            operation_id=op.op_id,
            os_disk=inst.os_disk_name(ss.name),
        )

    def _start_delete(self, ctx: _Ctx, ss: _ScaleSet, ids: list[str], headers: dict[str, str]) -> _Reply:
        op = self._start_op(ctx, ss, "delete")
        for iid in ids:
            inst = ss.instances[iid]
            if inst.provisioning_state == "Deleting":
                continue
            inst.provisioning_state, inst.power_state = "Deleting", "stopping"
            inst.state_time = _iso()
            self._claim(ss, inst, op, "delete", self.durations.delete)
        return self._accepted(ctx, op, self.durations.delete, headers)

    def _api_reimage(self, ctx: _Ctx) -> _Reply:
        return self._batch_reimage(ctx, "reimage", "reimage.POST")

    def _api_reimage_all(self, ctx: _Ctx) -> _Reply:
        return self._batch_reimage(ctx, "reimage_all", "reimageall.POST")

    def _batch_reimage(self, ctx: _Ctx, kind: str, operation: str) -> _Reply:
        """A Uniform scale set's reimage of the listed instances (all of them without a list)."""
        ss = self._lookup(ctx)
        self._uniform_only(ss, operation)
        headers = self._charge_write(ss)
        ids = self._instance_ids(ss, ctx.body, required=False)
        return self._start_reimage(ctx, ss, ids, kind, headers)

    def _api_manualupgrade(self, ctx: _Ctx) -> _Reply:
        ss = self._lookup(ctx)
        headers = self._charge_write(ss)
        ids = self._instance_ids(ss, ctx.body, required=True)
        return self._start_reimage(ctx, ss, ids, "manualupgrade", headers)

    def _api_delete_instances(self, ctx: _Ctx) -> _Reply:
        ss = self._lookup(ctx)
        headers = self._charge_write(ss)
        ids = self._instance_ids(ss, ctx.body, required=True)
        return self._start_delete(ctx, ss, ids, headers)

    def _api_vm_reimage(self, ctx: _Ctx, kind: str = "reimage") -> _Reply:
        ss, inst = self._lookup_vm(ctx)
        headers = self._charge_write(ss)
        return self._start_reimage(ctx, ss, [inst.instance_id], kind, headers)

    def _api_vm_reimage_all(self, ctx: _Ctx) -> _Reply:
        return self._api_vm_reimage(ctx, "reimage_all")

    def _api_delete_vm(self, ctx: _Ctx) -> _Reply:
        ss, inst = self._lookup_vm(ctx)
        headers = self._charge_write(ss)
        return self._start_delete(ctx, ss, [inst.instance_id], headers)

    def _api_update_model(self, ctx: _Ctx, *, patch: bool) -> _Reply:
        ss = self._lookup(ctx)
        if_match = ctx.headers.get("if-match")
        if if_match and if_match not in ("*", f'"{ss.etag}"'):
            raise _ApiError(
                412, "PreconditionFailed", f"The specified precondition 'If-Match = {if_match}' failed."
            )
        body = ctx.body
        if not isinstance(body, dict):
            raise _ApiError(
                400, "InvalidRequestContent", "The request content was invalid and could not be deserialized."
            )
        headers = self._charge_write(ss)
        props = body.get("properties") or {}
        vm_profile = props.get("virtualMachineProfile") or {}
        image = (vm_profile.get("storageProfile") or {}).get("imageReference")
        prefix = (vm_profile.get("osProfile") or {}).get("computerNamePrefix")
        if prefix is not None and prefix != ss.prefix:
            raise _ApiError(
                409,
                "PropertyChangeNotAllowed",
                "Changing property 'computerNamePrefix' is not allowed.",
                target="computerNamePrefix",
            )
        policy = props.get("upgradePolicy")
        if policy is not None:
            policy = _upgrade_policy(policy, base=ss.upgrade_policy if patch else None)
        capacity = (body.get("sku") or {}).get("capacity")
        if capacity is not None and (not isinstance(capacity, int) or capacity < 0):
            raise _ApiError(
                400,
                "InvalidParameter",
                "The value of parameter sku.capacity is invalid.",
                target="sku.capacity",
            )

        op = self._start_op(ctx, ss, "update_model")
        if policy is not None:
            ss.upgrade_policy = policy
        image_changed = False
        if isinstance(image, dict) and image:
            # Compute returns only the fields it knows; drop client-side nulls before comparing.
            new_image = {k: v for k, v in image.items() if v is not None}
            if new_image != ss.image:
                ss.image = new_image
                ss.model_version += 1
                image_changed = True
        if "tags" in body or not patch:
            ss.tags = dict(body.get("tags") or {})
        ss.etag += 1
        ss.provisioning_state = "Updating"
        ss.model_ops_in_flight += 1
        op.model_pending = True
        key, op_id = ss.key, op.op_id
        self.world.scheduler.call_later(
            self.world.clock.seconds(self.durations.model_update),
            lambda: self._finish_model_task(key, op_id, image_changed),
        )
        duration = self.durations.model_update
        if capacity is not None:
            current = self._sorted(ss)
            live = [i for i in current if i.provisioning_state != "Deleting"]
            if capacity > len(live):
                for _ in range(capacity - len(live)):
                    inst = self._new_instance(ss, state="Creating")
                    self._claim(ss, inst, op, "create", self.durations.scale)
                duration = max(duration, self.durations.scale)
            elif capacity < len(live):
                # Default scale-in policy removes the highest instance ids first.
                for inst in sorted(live, key=lambda i: int(i.instance_id), reverse=True)[
                    : len(live) - capacity
                ]:
                    inst.provisioning_state, inst.power_state = "Deleting", "stopping"
                    inst.state_time = _iso()
                    self._claim(ss, inst, op, "delete", self.durations.delete)
                duration = max(duration, self.durations.delete)
        async_url, _ = self._op_urls(ctx, op.op_id)
        headers.update({"Azure-AsyncOperation": async_url, "x-ms-request-id": op.op_id})
        return _Reply(200, self._scale_set_json(ss), headers)

    def _api_put_scale_set(self, ctx: _Ctx) -> _Reply:
        return self._api_update_model(ctx, patch=False)

    def _api_patch_scale_set(self, ctx: _Ctx) -> _Reply:
        return self._api_update_model(ctx, patch=True)

    # ---------------------------------------------------------------- completions (scheduler thread)

    def _finish_instance_task(self, key: tuple[str, str], iid: str, seq: int) -> None:
        with self._transaction():
            ss = self._scale_sets.get(key)
            inst = ss.instances.get(iid) if ss else None
            if ss is None or inst is None or inst.task_seq != seq:
                return  # preempted or gone: a newer task owns this instance
            op = self._operations.get(inst.op_id or "")
            kind = inst.task_kind
            fail_code = op.fail_code if op is not None else None
            inst.op_id, inst.task_kind = None, None
            inst.state_time = _iso()
            if kind == "delete" and fail_code is not None:
                inst.provisioning_state, inst.power_state = "Failed", "running"
                inst.failure = {"code": fail_code, "message": self._error_message(fail_code)}
            elif kind == "delete":
                del ss.instances[iid]
                self._emit("instance_deleted", ss, inst, inst.image, operation_id=op.op_id if op else None)
            elif kind == "create":
                inst.provisioning_state, inst.power_state = "Succeeded", "running"
                self._emit("instance_created", ss, inst, inst.image, operation_id=op.op_id if op else None)
            elif fail_code is not None:
                inst.provisioning_state, inst.power_state = "Failed", "running"
                inst.failure = {"code": fail_code, "message": self._error_message(fail_code)}
                inst.target_image, inst.target_model_version = None, None
                self._emit(
                    "reimage_failed",
                    ss,
                    inst,
                    inst.image,
                    error_code=fail_code,
                    operation_id=op.op_id if op else None,
                )
            else:
                if inst.target_image is not None:
                    inst.image = inst.target_image
                if inst.target_model_version is not None:
                    inst.model_version = inst.target_model_version
                inst.target_image, inst.target_model_version = None, None
                inst.provisioning_state, inst.power_state = "Succeeded", "running"
                inst.etag += 1
                self._emit("reimage_completed", ss, inst, inst.image, operation_id=op.op_id if op else None)
            if op is not None:
                op.pending.discard(iid)
                self._maybe_finish_op(op)

    def _finish_model_task(self, key: tuple[str, str], op_id: str, image_changed: bool) -> None:
        with self._transaction():
            ss = self._scale_sets.get(key)
            op = self._operations.get(op_id)
            if ss is None or op is None:
                return
            op.model_pending = False
            ss.model_ops_in_flight -= 1
            if op.fail_code is not None:
                ss.provisioning_state = "Failed"
            elif ss.model_ops_in_flight == 0:
                ss.provisioning_state = "Succeeded"
            if image_changed and op.fail_code is None:
                self._emit("model_updated", ss, None, ss.image, operation_id=op_id)
                self._upgrade_by_policy(ss)
            self._maybe_finish_op(op)

    # ---------------------------------------------------------------- upgrade policies

    def _upgrade_by_policy(self, ss: _ScaleSet) -> None:
        """What Compute does itself after a model change, by ``upgradePolicy.mode``
        (virtual-machine-scale-sets-upgrade-policy.md): Manual nothing; Automatic upgrades
        every instance at once ("might take down all virtual machines at the same time");
        Rolling in batches of ``maxBatchInstancePercent`` of the instances, one batch after
        the other, ``pauseTimeBetweenBatches`` apart. Nobody cordons or drains anything."""
        mode = ss.upgrade_policy.get("mode")
        if mode == "Automatic":
            self._upgrade_instances(
                ss, self._stale_instances(ss), "automatic_upgrade", "automatic_upgrade_started"
            )
        elif mode == "Rolling":
            self.world.history.append(
                "rolling_upgrade_started", resource_group=ss.resource_group, scale_set=ss.name
            )
            self._rolling_batch(ss.key)

    @staticmethod
    def _stale_instances(ss: _ScaleSet) -> list[_Instance]:
        return [
            i
            for i in _ScaleSets._sorted(ss)
            if i.model_version != ss.model_version and i.provisioning_state not in ("Deleting", "Creating")
        ]

    def _rolling_batch(self, key: tuple[str, str]) -> None:
        with self._transaction():
            ss = self._scale_sets.get(key)
            if ss is None or ss.upgrade_policy.get("mode") != "Rolling":
                return
            stale = self._stale_instances(ss)
            if not stale:
                self.world.history.append(
                    "rolling_upgrade_completed", resource_group=ss.resource_group, scale_set=ss.name
                )
                return
            percent = ss.upgrade_policy["rollingUpgradePolicy"]["maxBatchInstancePercent"]
            size = max(1, ss.capacity() * percent // 100)
            self._upgrade_instances(ss, stale[:size], "rolling_upgrade", "rolling_upgrade_batch")

    def _upgrade_instances(self, ss: _ScaleSet, instances: list[_Instance], kind: str, event: str) -> None:
        """One operation of Compute's own, bringing ``instances`` to the model."""
        op = self._new_operation(ss, kind)
        self.world.history.append(
            event,
            resource_group=ss.resource_group,
            scale_set=ss.name,
            instance_ids=[i.public_id() for i in instances],
            operation_id=op.op_id,
        )
        for inst in instances:
            self._begin_instance_task(ss, inst, op, kind)
        self._maybe_finish_op(op)

    def _operation_finished(self, op: _Operation) -> None:
        if op.kind == "rolling_upgrade":
            self._next_rolling_batch(op)

    def _next_rolling_batch(self, op: _Operation) -> None:
        """A batch is done: the next one after the pause; a failed batch stops the upgrade."""
        ss = self._scale_sets.get(op.key)
        if ss is None or op.status != "Succeeded":
            return
        pause = _duration_seconds(ss.upgrade_policy["rollingUpgradePolicy"]["pauseTimeBetweenBatches"])
        key = op.key
        self.world.scheduler.call_later(self.world.clock.seconds(pause), lambda: self._rolling_batch(key))
