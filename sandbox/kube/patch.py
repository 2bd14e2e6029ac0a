"""The four PATCH content types, applied as the apiserver's patch handler applies them.

Strategic merge patch (built-in kinds), RFC 7386 JSON merge patch, RFC 6902 JSON patch,
and server-side apply, which is approximated by a strategic merge (a merge patch for
custom resources, which have no patch merge keys). ``decode_patch`` and ``apply_patch``
are the two halves of ``patchResource`` in ``endpoints/handlers/patch.go``.
"""

from __future__ import annotations

import json
from typing import Any

from sandbox.kube.errors import KubeError, bad_request, unsupported_media_type
from sandbox.kube.objects import Obj, clone, json_equal
from sandbox.kube.resources import ResourceType

APPLY_PATCH = "application/apply-patch+yaml"
# Patch merge keys of the built-in types (the `patchMergeKey` struct tags of k8s.io/api), keyed
# by the list's field name; lists not named here are atomic and replaced as a whole.
_SMP_MERGE_KEYS = {
    "conditions": "type",
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "schedulingGates": "name",
}
_SMP_PRIMITIVE_SETS = {"finalizers"}


def _smp_merge_key(path: tuple[str, ...]) -> str | None:
    field = path[-1]
    if field == "ports":
        # ServiceSpec.Ports merge on "port"; Container.Ports on "containerPort".
        return "port" if path == ("spec", "ports") else "containerPort"
    if field == "addresses":
        return "type" if path == ("status", "addresses") else None
    return _SMP_MERGE_KEYS.get(field)


def strategic_merge(original: Obj, patch: Obj, path: tuple[str, ...] = ()) -> Obj | None:
    """Strategic merge patch for the built-in kinds (k8s.io/apimachinery strategicpatch).

    Maps merge recursively and ``null`` deletes a key; lists with a patch merge key merge
    element-wise (``$patch: delete`` removes one, ``$patch: replace`` replaces the list);
    ``finalizers`` merge as a set with ``$deleteFromPrimitiveList``; other lists are replaced.
    ``$setElementOrder`` is accepted and ignored. Returns ``None`` for ``$patch: delete`` on
    the map itself.
    """
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: clone(v) for k, v in patch.items() if k != "$patch"}
    result = dict(original)
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            target = key.split("/", 1)[1]
            current = result.get(target)
            if isinstance(current, list) and isinstance(value, list):
                result[target] = [x for x in current if x not in value]
            continue
        if value is None:
            result.pop(key, None)
            continue
        current = result.get(key)
        if isinstance(value, dict):
            merged = strategic_merge(current if isinstance(current, dict) else {}, value, (*path, key))
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _smp_list(current if isinstance(current, list) else [], value, (*path, key))
        else:
            result[key] = value
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain or k not in original}
    return result


def _smp_list(original: list[Any], patch: list[Any], path: tuple[str, ...]) -> list[Any]:
    if any(isinstance(x, dict) and x.get("$patch") == "replace" for x in patch):
        return [clone(x) for x in patch if not (isinstance(x, dict) and x.get("$patch") == "replace")]
    if path[-1] in _SMP_PRIMITIVE_SETS:
        return list(original) + [clone(x) for x in patch if x not in original]
    key = _smp_merge_key(path)
    if key is None or not all(isinstance(x, dict) for x in patch):
        return [clone(x) for x in patch]
    result = list(original)
    for item in patch:
        idx = next(
            (
                i
                for i, e in enumerate(result)
                if isinstance(e, dict) and key in item and e.get(key) == item[key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if idx is not None:
                del result[idx]
            continue
        merged = strategic_merge(result[idx] if idx is not None else {}, item, path)
        if merged is None:
            continue
        if idx is None:
            result.append(merged)
        else:
            result[idx] = merged
    return result


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return clone(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class _JSONPatchError(Exception):
    pass


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise _JSONPatchError(f"invalid JSON pointer {path!r}")
    if path == "":
        return []
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve_parent(doc: Any, parts: list[str], op: str) -> tuple[Any, str]:
    cur = doc
    for part in parts[:-1]:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise _JSONPatchError(f"{op} operation does not apply: doc is missing path: /{'/'.join(parts)}")
    return cur, parts[-1]


def _jp_get(doc: Any, parts: list[str], op: str) -> Any:
    if not parts:
        return doc
    parent, last = _resolve_parent(doc, parts, op)
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise _JSONPatchError(f"{op} operation does not apply: doc is missing key: /{'/'.join(parts)}")


def _jp_remove(doc: Any, parts: list[str], op: str) -> Any:
    parent, last = _resolve_parent(doc, parts, op)
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise _JSONPatchError(f"{op} operation does not apply: doc is missing key: /{'/'.join(parts)}")


def _jp_add(doc: Any, parts: list[str], value: Any, op: str) -> Any:
    if not parts:
        return value
    parent, last = _resolve_parent(doc, parts, op)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise _JSONPatchError(f"{op} operation does not apply: index out of bounds: /{'/'.join(parts)}")
    else:
        raise _JSONPatchError(f"{op} operation does not apply: doc is missing path: /{'/'.join(parts)}")
    return doc


def json_patch(document: Any, operations: list[Any]) -> Any:
    """RFC 6902 JSON patch; raises ``_JSONPatchError`` where evanphx/json-patch's Apply fails."""
    doc = clone(document)
    for raw in operations:
        if not isinstance(raw, dict):
            raise _JSONPatchError("invalid operation")
        op = raw.get("op")
        parts = _pointer(raw.get("path"))
        if op in ("add", "replace", "test") and "value" not in raw:
            raise _JSONPatchError(f"{op} operation does not apply: missing value")
        if op == "add":
            doc = _jp_add(doc, parts, clone(raw["value"]), "add")
        elif op == "remove":
            _jp_remove(doc, parts, "remove")
        elif op == "replace":
            if not parts:
                doc = clone(raw["value"])
            else:
                _jp_get(doc, parts, "replace")
                parent, last = _resolve_parent(doc, parts, "replace")
                parent[int(last) if isinstance(parent, list) else last] = clone(raw["value"])
        elif op == "move":
            value = _jp_remove(doc, _pointer(raw.get("from")), "move")
            doc = _jp_add(doc, parts, value, "move")
        elif op == "copy":
            value = clone(_jp_get(doc, _pointer(raw.get("from")), "copy"))
            doc = _jp_add(doc, parts, value, "copy")
        elif op == "test":
            try:
                have = _jp_get(doc, parts, "test")
            except _JSONPatchError:
                have = None
            if not json_equal(have, raw["value"]):
                raise _JSONPatchError(f"testing value {raw.get('path')} failed: test failed")
        else:
            raise _JSONPatchError(f"Unexpected kind: {op}")
    return doc


def patch_types(rt: ResourceType) -> list[str]:
    types = ["application/json-patch+json", "application/merge-patch+json"]
    if not rt.custom:
        types.append("application/strategic-merge-patch+json")
    types.append("application/apply-patch+yaml")
    return types


def decode_patch(content_type: str, raw: bytes, *, field_manager: str | None) -> Any:
    """The patch document of a PATCH request, or the apiserver's 400 for one it cannot read."""
    patch: Any
    if content_type == APPLY_PATCH:
        if not field_manager:
            raise bad_request("PATCH, fieldManager is required for apply requests")
        import yaml

        try:
            patch = yaml.safe_load(raw.decode() or "{}")
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise bad_request(f"error decoding YAML: {exc}") from None
        if not isinstance(patch, dict):
            raise bad_request("error decoding YAML: the apply patch must be an object")
    else:
        try:
            patch = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad_request(f"error decoding patch: {exc}") from None
    return patch


def apply_patch(rt: ResourceType, current: Obj, content_type: str, patch: Any) -> Obj:
    """``current`` with ``patch`` applied; raises the apiserver's error where it fails."""
    if content_type == "application/json-patch+json":
        if not isinstance(patch, list):
            raise bad_request(
                "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
                if isinstance(patch, dict)
                else "invalid JSON patch"
            )
        try:
            patched = json_patch(current, patch)
        except _JSONPatchError:
            # patch.go: errors.NewGenericServerResponse(422, ...) drops Apply's own message.
            raise KubeError(
                422, "Invalid", "the server rejected our request due to an error in our request"
            ) from None
    elif content_type == "application/merge-patch+json":
        if not isinstance(patch, dict):
            raise bad_request("invalid JSON merge patch: the patch must be an object")
        patched = merge_patch(current, patch)
    elif content_type in ("application/strategic-merge-patch+json", APPLY_PATCH):
        if not isinstance(patch, dict):
            raise bad_request("the patch must be a JSON object")
        # Custom resources have no patch merge keys: their apply is approximated as a merge patch.
        patched = merge_patch(current, patch) if rt.custom else strategic_merge(current, patch) or {}
    else:
        raise unsupported_media_type(patch_types(rt))
    if not isinstance(patched, dict):
        raise KubeError(422, "Invalid", "the server rejected our request due to an error in our request")
    return patched
