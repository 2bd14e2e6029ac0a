"""The API's errors: ``KubeError`` renders the ``kind: Status`` body the apiserver sends,
and the constructors below give it the codes, reasons and messages of the real one,
because client code branches on them."""

from __future__ import annotations

from typing import Any

from sandbox.kube.objects import Obj
from sandbox.kube.resources import ResourceType


class KubeError(Exception):
    """An API error; ``status()`` is the ``kind: Status`` body the apiserver would send."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        name: str = "",
        group: str = "",
        kind: str = "",
        causes: list[dict[str, str]] | None = None,
        retry_after_seconds: int = 0,
        details: bool = True,
    ) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.name = name
        self.group = group
        self.kind = kind
        self.causes = causes or []
        self.retry_after_seconds = retry_after_seconds
        self._details = details

    def status(self) -> Obj:
        body: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
        body["message"] = self.message
        if self.reason:
            body["reason"] = self.reason
        if self._details:
            details: Obj = {}
            for key, value in (("name", self.name), ("group", self.group), ("kind", self.kind)):
                if value:
                    details[key] = value
            if self.causes:
                details["causes"] = self.causes
            if self.retry_after_seconds:
                details["retryAfterSeconds"] = self.retry_after_seconds
            body["details"] = details
        body["code"] = self.code
        return body


def not_found(rt: ResourceType, name: str) -> KubeError:
    return KubeError(
        404, "NotFound", f'{rt.qualified} "{name}" not found', name=name, group=rt.group, kind=rt.plural
    )


def already_exists(rt: ResourceType, name: str) -> KubeError:
    return KubeError(
        409,
        "AlreadyExists",
        f'{rt.qualified} "{name}" already exists',
        name=name,
        group=rt.group,
        kind=rt.plural,
    )


def conflict(rt: ResourceType, name: str, why: str) -> KubeError:
    return KubeError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {rt.qualified} "{name}": {why}',
        name=name,
        group=rt.group,
        kind=rt.plural,
    )


MODIFIED = "the object has been modified; please apply your changes to the latest version and try again"


def invalid(
    rt: ResourceType, name: str, field: str, detail: str, cause: str = "FieldValueInvalid"
) -> KubeError:
    qualified_kind = f"{rt.kind}.{rt.group}" if rt.group else rt.kind
    return KubeError(
        422,
        "Invalid",
        f'{qualified_kind} "{name}" is invalid: {field}: {detail}',
        name=name,
        group=rt.group,
        kind=rt.kind,
        causes=[{"reason": cause, "message": detail, "field": field}],
    )


def bad_request(message: str) -> KubeError:
    return KubeError(400, "BadRequest", message, details=False)


def name_mismatch(in_body: Any, in_url: str) -> KubeError:
    return bad_request(f"the name of the object ({in_body}) does not match the name on the URL ({in_url})")


def version_mismatch(in_body: Any, expected: str) -> KubeError:
    return bad_request(
        f"the API version in the data ({in_body}) does not match the expected API version ({expected})"
    )


def unsupported_media_type(accepted: list[str]) -> KubeError:
    # negotiation.NewUnsupportedMediaTypeError: no details, this exact sentence.
    return KubeError(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: "
        + ", ".join(accepted),
        details=False,
    )


def resource_not_found() -> KubeError:
    return KubeError(404, "NotFound", "the server could not find the requested resource")


def method_not_allowed() -> KubeError:
    return KubeError(
        405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
    )
