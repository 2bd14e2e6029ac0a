"""Typed, read-only views over Kubernetes objects as the API server returns them (JSON)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KubeObject:
    raw: Mapping[str, Any]

    @property
    def name(self) -> str:
        return str(self.raw["metadata"]["name"])

    @property
    def uid(self) -> str:
        return str(self.raw["metadata"].get("uid", ""))

    @property
    def resource_version(self) -> str:
        return str(self.raw["metadata"].get("resourceVersion", ""))

    @property
    def labels(self) -> Mapping[str, str]:
        return self.raw["metadata"].get("labels") or {}

    @property
    def annotations(self) -> Mapping[str, str]:
        return self.raw["metadata"].get("annotations") or {}

    def condition_true(self, kind: str) -> bool:
        for cond in (self.raw.get("status") or {}).get("conditions") or []:
            if cond.get("type") == kind:
                return cond.get("status") == "True"
        return False


MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


@dataclass(frozen=True)
class Pod(KubeObject):
    """A typed view over a Pod as the API server returned it."""

    @property
    def namespace(self) -> str:
        return str(self.raw["metadata"].get("namespace", "default"))

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def phase(self) -> str:
        return str((self.raw.get("status") or {}).get("phase", ""))

    @property
    def terminating(self) -> bool:
        return bool(self.raw["metadata"].get("deletionTimestamp"))

    @property
    def controller(self) -> Mapping[str, Any] | None:
        for ref in self.raw["metadata"].get("ownerReferences") or []:
            if ref.get("controller"):
                return ref
        return None

    @property
    def owner_text(self) -> str:
        ref = self.controller
        return f"{ref['kind']}/{ref['name']}" if ref else "no controller"

    @property
    def is_mirror(self) -> bool:
        return MIRROR_ANNOTATION in (self.raw["metadata"].get("annotations") or {})

    @property
    def has_local_storage(self) -> bool:
        return any("emptyDir" in v for v in (self.raw.get("spec") or {}).get("volumes") or [])

    @property
    def ready(self) -> bool:
        return self.condition_true("Ready")
