"""Compute Gallery: image definitions and versions (a version PUT is a long-running operation)."""

from __future__ import annotations

import re
import time
import uuid
from copy import deepcopy
from typing import Any

from sandbox.arm.lro import _Operations
from sandbox.arm.replies import (
    _ApiError,
    _Ctx,
    _iso,
    _parent_not_found,
    _Reply,
    _require_body,
    _resource_not_found,
    _tracked_resource,
)
from sandbox.arm.resources import _Gallery, _GalleryImage, _ImageVersion, _Operation

IMAGE_VERSION_WRITE = "Microsoft.Compute/galleries/images/versions/write"


def _os_name(os_type: str) -> str:
    os_norm = {"linux": "Linux", "windows": "Windows"}.get(os_type.lower())
    if os_norm is None:
        raise ValueError(f"os_type must be Linux or Windows, got {os_type!r}")
    return os_norm


_REGION_NAMES = {
    "westeurope": "West Europe",
    "northeurope": "North Europe",
    "swedencentral": "Sweden Central",
    "germanywestcentral": "Germany West Central",
    "uksouth": "UK South",
    "eastus": "East US",
    "eastus2": "East US 2",
    "westus": "West US",
    "westus2": "West US 2",
    "westus3": "West US 3",
    "centralus": "Central US",
}


def _region_display_name(name: str) -> str:
    """Compute reports gallery target regions by display name ("West Europe")."""
    return _REGION_NAMES.get(name.replace(" ", "").lower(), name)


_VERSION_NAME = re.compile(r"(\d{1,10})\.(\d{1,10})\.(\d{1,10})")


def _version_key(v: Any) -> tuple[int, ...]:
    return tuple(int(p) for p in v.name.split("."))


class _Galleries(_Operations):
    # ================================================================ Compute Gallery

    def add_gallery_image(
        self,
        resource_group: str,
        gallery: str,
        image: str,
        *,
        os_type: str,
        hyper_v_generation: str = "V2",
        identifier: dict[str, str] | None = None,
    ) -> str:
        """Create an image definition (and its gallery if needed); returns its resource id.

        Adding a definition that exists with the same OS type is a no-op.
        """
        os_norm = _os_name(os_type)
        with self._transaction():
            g = self._galleries.get((resource_group.lower(), gallery.lower()))
            if g is None:
                g = _Gallery(resource_group=resource_group, name=gallery, location=self.location)
                self._galleries[(resource_group.lower(), gallery.lower())] = g
                self.world.history.append("gallery_added", resource_group=resource_group, gallery=gallery)
            img = g.images.get(image.lower())
            if img is not None:
                if img.os_type != os_norm:
                    raise ValueError(f"image definition {gallery}/{image} exists with osType {img.os_type}")
                return self._image_id(g, img)
            img = _GalleryImage(
                name=image,
                location=self.location,
                os_type=os_norm,
                os_state="Generalized",
                hyper_v_generation=hyper_v_generation,
                identifier=dict(identifier or {"publisher": "sandbox", "offer": gallery, "sku": image}),
                tags={},
            )
            g.images[image.lower()] = img
            self.world.history.append(
                "gallery_image_added",
                resource_id=self._image_id(g, img),
                os_type=os_norm,
            )
            return self._image_id(g, img)

    def publish_image_version(
        self,
        resource_group: str,
        gallery: str,
        image: str,
        version: str,
        *,
        tags: dict[str, str] | None = None,
        replicate_seconds: float = 60.0,
        target_regions: list[str] | None = None,
    ) -> str:
        """What a ``PUT .../versions/{version}`` does, without HTTP; returns the version id.

        The version is ``Creating`` for ``replicate_seconds`` cloud seconds, then
        ``Succeeded`` (0 or less: at once). Its completion is announced as
        ``resource_write``, like a PUT through the API.
        """
        with self._transaction():
            g = self._galleries.get((resource_group.lower(), gallery.lower()))
            img = g.images.get(image.lower()) if g else None
            if g is None or img is None:
                raise KeyError(f"no image definition {resource_group}/{gallery}/{image}")
            if not _VERSION_NAME.fullmatch(version):
                raise ValueError(f"gallery image version names are Major.Minor.Patch, got {version!r}")
            current = img.versions.get(version)
            if current is not None and current.provisioning_state in ("Creating", "Updating"):
                raise ValueError(f"image version {version} is still {current.provisioning_state}")
            body: dict[str, Any] = {"location": self.location, "tags": dict(tags or {})}
            if target_regions:
                body["properties"] = {
                    "publishingProfile": {"targetRegions": [{"name": r} for r in target_regions]}
                }
            v, _ = self._write_version(
                g,
                img,
                version,
                body,
                correlation_id=str(uuid.uuid4()),
                api_version=None,
                replicate_seconds=replicate_seconds,
                op=None,
            )
            return self._version_id(g, img, v)

    # ---------------------------------------------------------------- gallery ids and JSON

    def _gallery_id(self, g: _Gallery) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{g.resource_group}"
            f"/providers/Microsoft.Compute/galleries/{g.name}"
        )

    def _image_id(self, g: _Gallery, img: _GalleryImage) -> str:
        return f"{self._gallery_id(g)}/images/{img.name}"

    def _version_id(self, g: _Gallery, img: _GalleryImage, v: _ImageVersion) -> str:
        return f"{self._image_id(g, img)}/versions/{v.name}"

    def _gallery_json(self, g: _Gallery) -> dict[str, Any]:
        props = {
            "identifier": {"uniqueName": f"{self.subscription_id}-{g.name.upper()}"},
            "provisioningState": "Succeeded",
        }
        return _tracked_resource(
            self._gallery_id(g),
            "Microsoft.Compute/galleries",
            name=g.name,
            location=g.location,
            tags={},
            properties=props,
        )

    def _gallery_image_json(self, g: _Gallery, img: _GalleryImage) -> dict[str, Any]:
        props: dict[str, Any] = {
            "osType": img.os_type,
            "osState": img.os_state,
            "hyperVGeneration": img.hyper_v_generation,
            "identifier": dict(img.identifier),
            "architecture": img.architecture,
            "provisioningState": "Succeeded",
        }
        if img.description is not None:
            props["description"] = img.description
        return _tracked_resource(
            self._image_id(g, img),
            "Microsoft.Compute/galleries/images",
            name=img.name,
            location=img.location,
            tags=img.tags,
            properties=props,
        )

    def _image_version_json(
        self, g: _Gallery, img: _GalleryImage, v: _ImageVersion, *, replication: bool = False
    ) -> dict[str, Any]:
        publishing: dict[str, Any] = {
            "targetRegions": deepcopy(v.target_regions),
            "replicaCount": 1,
            "excludeFromLatest": v.exclude_from_latest,
            "publishedDate": v.published_date,
            "storageAccountType": "Standard_LRS",
            "replicationMode": "Full",
        }
        if v.end_of_life_date is not None:
            publishing["endOfLifeDate"] = v.end_of_life_date
        props: dict[str, Any] = {
            "publishingProfile": publishing,
            "storageProfile": deepcopy(v.storage_profile),
            "safetyProfile": {
                "allowDeletionOfReplicatedLocations": True,
                "reportedForPolicyViolation": False,
            },
            "provisioningState": v.provisioning_state,
        }
        if replication:
            props["replicationStatus"] = self._replication_status(v)
        return _tracked_resource(
            self._version_id(g, img, v),
            "Microsoft.Compute/galleries/images/versions",
            name=v.name,
            location=v.location,
            tags=v.tags,
            properties=props,
        )

    @staticmethod
    def _replication_status(v: _ImageVersion) -> dict[str, Any]:
        if v.provisioning_state == "Succeeded":
            aggregated, state, progress, details = "Completed", "Completed", 100, ""
        elif v.provisioning_state == "Failed":
            failure = v.failure or {}
            aggregated, state, progress = "Failed", "Failed", 0
            details = failure.get("message", "")
        else:
            elapsed = time.monotonic() - v.replicating_since
            fraction = 1.0 if v.replicating_for <= 0 else min(1.0, elapsed / v.replicating_for)
            aggregated, state, progress, details = (
                "InProgress",
                "Replicating",
                min(99, int(fraction * 100)),
                "",
            )
        return {
            "aggregatedState": aggregated,
            "summary": [
                {"region": r["name"], "state": state, "details": details, "progress": progress}
                for r in v.target_regions
            ],
        }

    def _target_region(self, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise _ApiError(
                400,
                "InvalidParameter",
                "The value of parameter publishingProfile.targetRegions is invalid.",
                target="publishingProfile.targetRegions",
            )
        region: dict[str, Any] = {
            "name": _region_display_name(raw["name"]),
            "regionalReplicaCount": int(raw.get("regionalReplicaCount") or 1),
            "storageAccountType": raw.get("storageAccountType") or "Standard_LRS",
        }
        if raw.get("excludeFromLatest") is not None:
            region["excludeFromLatest"] = bool(raw["excludeFromLatest"])
        return region

    # ---------------------------------------------------------------- gallery writes

    def _write_version(
        self,
        g: _Gallery,
        img: _GalleryImage,
        name: str,
        body: dict[str, Any],
        *,
        correlation_id: str,
        api_version: str | None,
        replicate_seconds: float,
        op: _Operation | None,
    ) -> tuple[_ImageVersion, bool]:
        props = body.get("properties") or {}
        publishing = props.get("publishingProfile") or {}
        location = str(body.get("location") or self.location)
        regions = [self._target_region(r) for r in publishing.get("targetRegions") or [{"name": location}]]
        storage = deepcopy(props.get("storageProfile") or {})
        storage.setdefault("osDiskImage", {"sizeInGB": 30, "hostCaching": "ReadOnly"})
        storage.setdefault("dataDiskImages", [])
        v = img.versions.get(name)
        created = v is None
        if v is None:
            v = _ImageVersion(
                name=name,
                location=location,
                tags={},
                target_regions=regions,
                storage_profile=storage,
                published_date=_iso(),
            )
            img.versions[name] = v
        else:
            v.provisioning_state = "Updating"
        v.tags = {str(k): str(val) for k, val in (body.get("tags") or {}).items()}
        v.target_regions, v.storage_profile = regions, storage
        v.exclude_from_latest = bool(publishing.get("excludeFromLatest") or False)
        v.end_of_life_date = publishing.get("endOfLifeDate")
        v.failure = None
        v.op_id = op.op_id if op else None
        v.task_seq += 1
        delay = self.world.clock.seconds(max(0.0, replicate_seconds))
        v.replicating_since, v.replicating_for = time.monotonic(), delay
        fail_code = self.faults._take_lro_fault("image_version")
        version_id = self._version_id(g, img, v)
        self._version_history("image_version_write_started", version_id, v, correlation_id, created=created)
        key = (g.resource_group.lower(), g.name.lower(), img.name.lower(), name)
        seq = v.task_seq

        def finish() -> None:
            self._finish_version(key, seq, fail_code, correlation_id, api_version)

        if delay <= 0:
            finish()
        else:
            self.world.scheduler.call_later(delay, finish)
        return v, created

    def _version_history(
        self, kind: str, version_id: str, v: _ImageVersion, correlation_id: str, **extra: Any
    ) -> None:
        self.world.history.append(
            kind, resource_id=version_id, **extra, correlation_id=correlation_id, tags=dict(v.tags)
        )

    def _finish_version(
        self,
        key: tuple[str, str, str, str],
        seq: int,
        fail_code: str | None,
        correlation_id: str,
        api_version: str | None,
    ) -> None:
        with self._transaction():
            g = self._galleries.get(key[:2])
            img = g.images.get(key[2]) if g else None
            v = img.versions.get(key[3]) if img else None
            if g is None or img is None or v is None or v.task_seq != seq:
                return
            op = self._operations.get(v.op_id or "")
            v.op_id = None
            if fail_code is not None:
                v.provisioning_state = "Failed"
                v.failure = {"code": fail_code, "message": self._error_message(fail_code)}
            else:
                v.provisioning_state = "Succeeded"
            if op is not None:
                op.fail_code, op.model_pending = fail_code, False
                self._maybe_finish_op(op)
            version_id = self._version_id(g, img, v)
            status = v.provisioning_state
            self._version_history("image_version_published", version_id, v, correlation_id, status=status)
            url = f"https://management.azure.com{version_id}"
            if api_version:
                url += f"?api-version={api_version}"
            self._pending_events.append(
                (
                    "resource_write",
                    {
                        "resource_id": version_id,
                        "operation_name": IMAGE_VERSION_WRITE,
                        "status": status,
                        "resource_provider": "Microsoft.Compute",
                        "subscription_id": self.subscription_id,
                        "resource_group": g.resource_group,
                        "correlation_id": correlation_id,
                        "http_method": "PUT",
                        "http_url": url,
                        "tags": dict(v.tags),
                    },
                )
            )

    # ---------------------------------------------------------------- gallery API

    def _lookup_gallery(self, ctx: _Ctx, *, parent: bool = False) -> _Gallery:
        return self._find(ctx, self._galleries, "gallery", "Microsoft.Compute/galleries", parent=parent)

    def _lookup_gallery_image(self, ctx: _Ctx, *, parent: bool = False) -> tuple[_Gallery, _GalleryImage]:
        g = self._lookup_gallery(ctx, parent=True)
        name = ctx.match["image"]
        img = g.images.get(name.lower())
        if img is None:
            if parent:
                raise _parent_not_found(f"{g.name}/{name}")
            raise _resource_not_found(f"Microsoft.Compute/galleries/{g.name}/images/{name}", g.resource_group)
        return g, img

    def _api_get_gallery(self, ctx: _Ctx) -> _Reply:
        return _Reply(200, self._gallery_json(self._lookup_gallery(ctx)))

    def _api_list_gallery_images(self, ctx: _Ctx) -> _Reply:
        g = self._lookup_gallery(ctx, parent=True)
        items = [self._gallery_image_json(g, img) for _, img in sorted(g.images.items())]
        return _Reply(200, {"value": items})

    def _api_get_gallery_image(self, ctx: _Ctx) -> _Reply:
        g, img = self._lookup_gallery_image(ctx)
        return _Reply(200, self._gallery_image_json(g, img))

    def _api_put_gallery_image(self, ctx: _Ctx) -> _Reply:
        g = self._lookup_gallery(ctx, parent=True)
        body = _require_body(ctx)
        if not body.get("location"):
            raise _ApiError(400, "LocationRequired", "The location property is required for this definition.")
        props = body.get("properties") or {}
        os_type = props.get("osType")
        identifier = props.get("identifier")
        if os_type not in ("Linux", "Windows"):
            raise _ApiError(
                400,
                "InvalidParameter",
                "The value of parameter galleryImage.properties.osType is invalid.",
                target="galleryImage.properties.osType",
            )
        if not isinstance(identifier, dict) or not all(
            identifier.get(k) for k in ("publisher", "offer", "sku")
        ):
            raise _ApiError(
                400,
                "InvalidParameter",
                "Required parameter 'galleryImage.properties.identifier' is missing (null).",
                target="galleryImage.properties.identifier",
            )
        name = ctx.match["image"]
        img = g.images.get(name.lower())
        created = img is None
        if img is None:
            img = _GalleryImage(
                name=name,
                location=str(body["location"]),
                os_type=os_type,
                os_state=str(props.get("osState") or "Generalized"),
                hyper_v_generation=str(props.get("hyperVGeneration") or "V1"),
                identifier={k: str(identifier[k]) for k in ("publisher", "offer", "sku")},
                tags={},
            )
            g.images[name.lower()] = img
        elif img.os_type != os_type:
            raise _ApiError(
                409,
                "PropertyChangeNotAllowed",
                "Changing property 'galleryImage.properties.osType' is not allowed.",
                target="galleryImage.properties.osType",
            )
        img.tags = {str(k): str(v) for k, v in (body.get("tags") or {}).items()}
        img.description = props.get("description")
        if props.get("architecture"):
            img.architecture = str(props["architecture"])
        self.world.history.append(
            "gallery_image_added" if created else "gallery_image_updated",
            resource_id=self._image_id(g, img),
            os_type=img.os_type,
        )
        op = self._finished_op("gallery_image", self._image_id(g, img))
        headers = {"Azure-AsyncOperation": self._op_urls(ctx, op.op_id)[0], "x-ms-request-id": op.op_id}
        return _Reply(201 if created else 200, self._gallery_image_json(g, img), headers)

    def _api_list_gallery_image_versions(self, ctx: _Ctx) -> _Reply:
        g, img = self._lookup_gallery_image(ctx, parent=True)
        items = [self._image_version_json(g, img, v) for v in sorted(img.versions.values(), key=_version_key)]
        return _Reply(200, {"value": items})

    def _api_get_gallery_image_version(self, ctx: _Ctx) -> _Reply:
        g, img = self._lookup_gallery_image(ctx, parent=True)
        name = ctx.match["version"]
        v = img.versions.get(name)
        if v is None:
            raise _resource_not_found(
                f"Microsoft.Compute/galleries/{g.name}/images/{img.name}/versions/{name}", g.resource_group
            )
        expand = ctx.query.get("$expand", "").lower()
        if expand and expand not in ("replicationstatus", "uefisettings"):
            raise _ApiError(
                400,
                "InvalidParameter",
                f"The value '{ctx.query['$expand']}' of parameter '$expand' is invalid.",
                target="$expand",
            )
        return _Reply(200, self._image_version_json(g, img, v, replication=expand == "replicationstatus"))

    def _api_put_gallery_image_version(self, ctx: _Ctx) -> _Reply:
        g, img = self._lookup_gallery_image(ctx, parent=True)
        name = ctx.match["version"]
        if not _VERSION_NAME.fullmatch(name):
            raise _ApiError(
                400,
                "InvalidParameter",
                f"The gallery image version name '{name}' is invalid. It must follow the "
                "Major(int32).Minor(int32).Patch(int32) format.",
                target="galleryImageVersionName",
            )
        body = _require_body(ctx)
        if not body.get("location"):
            raise _ApiError(400, "LocationRequired", "The location property is required for this definition.")
        current = img.versions.get(name)
        if current is not None and current.provisioning_state in ("Creating", "Updating"):
            raise _ApiError(
                409,
                "OperationNotAllowed",
                f"Operation 'Update' is not allowed on gallery image version '{name}' since a previous "
                "operation on it is still in progress. Please retry after it completes.",
            )
        version_id = f"{self._image_id(g, img)}/versions/{name}"  # the op's key: the resource it writes
        op = _Operation(
            op_id=str(uuid.uuid4()),
            kind="image_version",
            key=("gallery", version_id.lower()),
            start_time=_iso(),
            fail_code=None,
            model_pending=True,
        )
        self._operations[op.op_id] = op
        v, created = self._write_version(
            g,
            img,
            name,
            body,
            correlation_id=ctx.headers.get("x-ms-correlation-request-id") or str(uuid.uuid4()),
            api_version=ctx.api_version,
            replicate_seconds=self.durations.image_replication,
            op=op,
        )
        headers = {"Azure-AsyncOperation": self._op_urls(ctx, op.op_id)[0], "x-ms-request-id": op.op_id}
        # A zero replication time finishes inside _write_version: answer what the resource is now.
        return _Reply(201 if created else 200, self._image_version_json(g, img, v), headers)
