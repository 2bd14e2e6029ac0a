"""Azure RBAC for the simulated ARM: the app's managed identity may do exactly what the
role assignments that ``infra/`` declares allow, as ARM decides it.

The Bicep is parsed with pycep and the few expressions the role modules use are evaluated
for the sandbox's own names (the parameters an operator would put in
``main.parameters.json``), so a grant the code needs and the Bicep lacks fails in the
sandbox as it would on the first real deployment. What ARM does, and this module copies:

* an action is ``{namespace}/{type}[/{child type}...]/{read|write|delete}``, or
  ``.../{name}/action`` for a POST; the scope is the resource id it is performed on;
* role actions and ``notActions`` match case-insensitively, ``*`` matching any run of
  characters (``*/read``, ``Microsoft.Compute/*``); a ``notAction`` removes only from its
  own permission block, never from another role;
* an assignment at a scope covers everything below it (subscription, resource group,
  resource, child resources and extension resources);
* a custom role can only be assigned inside its ``assignableScopes`` (the deployment
  would fail, so loading fails);
* a denial is 403 ``AuthorizationFailed``, or ``LinkedAuthorizationFailed`` when the write
  itself is allowed but a resource it references may not be read.

Only ARM control-plane ``actions`` are evaluated; ``dataActions`` (storage, Key Vault)
are served elsewhere.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INFRA = Path(__file__).resolve().parents[2] / "infra"

# main.bicep passes every role module ``functionApp.outputs.principalId``: the function
# app's system-assigned identity, which is the identity the app runs as.
APP_PRINCIPAL_OUTPUT = ("functionApp", "principalId")


@dataclass(frozen=True)
class Permission:
    actions: tuple[str, ...]
    not_actions: tuple[str, ...] = ()

    def allows(self, action: str) -> bool:
        return any(_matches(p, action) for p in self.actions) and not any(
            _matches(p, action) for p in self.not_actions
        )


@dataclass(frozen=True)
class RoleDefinition:
    id: str  # the role's GUID, as roleDefinitionId's last segment names it
    name: str
    permissions: tuple[Permission, ...]
    assignable_scopes: tuple[str, ...] = ("/",)

    def allows(self, action: str) -> bool:
        return any(p.allows(action) for p in self.permissions)


@dataclass(frozen=True)
class RoleAssignment:
    principal_id: str
    role_definition_id: str
    scope: str
    source: str = ""  # the Bicep file and symbol it came from, for messages


# The built-in roles infra/ references, with their real action lists (built-in roles
# reference: https://learn.microsoft.com/azure/role-based-access-control/built-in-roles).
BUILT_IN_ROLES: dict[str, RoleDefinition] = {
    r.id: r
    for r in (
        RoleDefinition("acdd72a7-3385-48ef-bd42-f606fba81ae7", "Reader", (Permission(("*/read",)),)),
        RoleDefinition(
            "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
            "Storage Blob Data Owner",
            (
                Permission(
                    (
                        "Microsoft.Storage/storageAccounts/blobServices/containers/*",
                        "Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action",
                    )
                ),
            ),
        ),
        RoleDefinition(
            "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
            "Storage Blob Data Reader",
            (
                Permission(
                    (
                        "Microsoft.Storage/storageAccounts/blobServices/containers/read",
                        "Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action",
                    )
                ),
            ),
        ),
        RoleDefinition(
            "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
            "Storage Queue Data Contributor",
            (
                Permission(
                    (
                        "Microsoft.Storage/storageAccounts/queueServices/queues/delete",
                        "Microsoft.Storage/storageAccounts/queueServices/queues/read",
                        "Microsoft.Storage/storageAccounts/queueServices/queues/write",
                    )
                ),
            ),
        ),
        RoleDefinition(
            "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
            "Storage Table Data Contributor",
            (
                Permission(
                    (
                        "Microsoft.Storage/storageAccounts/tableServices/tables/read",
                        "Microsoft.Storage/storageAccounts/tableServices/tables/write",
                        "Microsoft.Storage/storageAccounts/tableServices/tables/delete",
                    )
                ),
            ),
        ),
        # Data actions only.
        RoleDefinition("4633458b-17de-408a-b874-0445c86b69e6", "Key Vault Secrets User", ()),
        RoleDefinition(
            "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
            "Key Vault Secrets Officer",
            (
                Permission(
                    (
                        "Microsoft.Authorization/*/read",
                        "Microsoft.Insights/alertRules/*",
                        "Microsoft.Resources/deployments/*",
                        "Microsoft.Resources/subscriptions/resourceGroups/read",
                        "Microsoft.Support/*",
                        "Microsoft.KeyVault/checkNameAvailability/read",
                        "Microsoft.KeyVault/deletedVaults/read",
                        "Microsoft.KeyVault/locations/*/read",
                        "Microsoft.KeyVault/vaults/*/read",
                        "Microsoft.KeyVault/operations/read",
                    )
                ),
            ),
        ),
        RoleDefinition(
            "3913510d-42f4-4e42-8a64-420c390055eb",
            "Monitoring Metrics Publisher",
            (
                Permission(
                    (
                        "Microsoft.Insights/Register/Action",
                        "Microsoft.Support/*",
                        "Microsoft.Resources/subscriptions/resourceGroups/read",
                    )
                ),
            ),
        ),
    )
}


def _matches(pattern: str, action: str) -> bool:
    rx = "".join(".*" if part == "*" else re.escape(part) for part in re.split(r"(\*)", pattern))
    return re.fullmatch(rx, action, re.IGNORECASE) is not None


def covers(assignment_scope: str, scope: str) -> bool:
    """An assignment's scope covers itself and everything below it."""
    outer = assignment_scope.rstrip("/").lower()
    inner = scope.rstrip("/").lower()
    return outer in ("", inner) or inner.startswith(outer + "/")


# ---- requests -> actions ---------------------------------------------------------------------

_VERBS = {"GET": "read", "HEAD": "read", "PUT": "write", "PATCH": "write", "DELETE": "delete"}
# Compute answers a LRO's Location URL under operationresults; ARM authorizes it as the
# operation read.
_ACTION_ALIASES = {
    "microsoft.compute/locations/operationresults/read": "Microsoft.Compute/locations/operations/read"
}


@dataclass(frozen=True)
class Request:
    """What ARM authorizes one request as."""

    action: str
    scope: str


def request_action(method: str, path: str) -> Request:
    """The action and scope ARM checks for ``method`` on ``path`` (a resource id, a
    collection, or a POST action below a resource)."""
    segments = [s for s in path.split("/") if s]
    # The last /providers/ names the resource provider: extension resources
    # (.../maintenanceConfigurations/x/providers/Microsoft.Maintenance/applyUpdates/y)
    # are actions of their own namespace. Without one: subscriptions and resource groups.
    marks = [i for i, s in enumerate(segments) if s.lower() == "providers"]
    if marks and marks[-1] + 1 < len(segments):
        namespace, below = segments[marks[-1] + 1], segments[marks[-1] + 2 :]
    else:
        namespace, below = "Microsoft.Resources", segments
    # type/name/type/name..., and a trailing unpaired segment: a collection, or the name of
    # a POST operation.
    types = below[0::2]
    rest = types.pop() if len(below) % 2 else ""
    method = method.upper()
    if method == "POST" and rest:
        action = "/".join([namespace, *types, rest, "action"])
        scope = "/" + "/".join(segments[:-1])
    elif rest:  # reading a collection is reading that type, over its parent
        action = "/".join([namespace, *types, rest, _VERBS.get(method, "action")])
        parent = segments[:-1]
        if len(parent) >= 2 and parent[-2].lower() == "providers":
            parent = parent[:-2]
        scope = "/" + "/".join(parent)
    else:
        action = "/".join([namespace, *types, _VERBS.get(method, "action")])
        scope = "/" + "/".join(segments)
    return Request(_ACTION_ALIASES.get(action.lower(), action), scope)


# ---- decisions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """Who a token says the caller is: the client (app) id and the object id ARM names."""

    client_id: str
    object_id: str


def authorization_failed(principal: Principal, request: Request) -> dict[str, Any]:
    return {
        "error": {
            "code": "AuthorizationFailed",
            "message": f"The client '{principal.client_id}' with object id '{principal.object_id}' does "
            f"not have authorization to perform action '{request.action}' over scope '{request.scope}' "
            "or the scope is invalid. If access was recently granted, please refresh your credentials.",
        }
    }


def linked_authorization_failed(principal: Principal, request: Request, linked: Request) -> dict[str, Any]:
    return {
        "error": {
            "code": "LinkedAuthorizationFailed",
            "message": f"The client '{principal.client_id}' with object id '{principal.object_id}' has "
            f"permission to perform action '{request.action}' on scope '{request.scope}'; however, it "
            f"does not have permission to perform action '{linked.action}' on the linked scope(s) "
            f"'{linked.scope}' or the linked scope(s) are invalid.",
        }
    }


@dataclass
class AccessControl:
    """Role definitions and assignments, and the one question ARM asks of them."""

    definitions: dict[str, RoleDefinition]
    assignments: list[RoleAssignment] = field(default_factory=list)

    def __post_init__(self) -> None:
        for a in self.assignments:
            role = self.definitions.get(a.role_definition_id.lower())
            if role is None:
                raise ValueError(
                    f"role assignment {a.source or a.scope} names role definition "
                    f"{a.role_definition_id}, which is neither a custom role of infra/ nor a "
                    "built-in role the sandbox knows (add it to sandbox/arm/rbac.BUILT_IN_ROLES)"
                )
            if not any(covers(s, a.scope) for s in role.assignable_scopes):
                raise ValueError(
                    f"role assignment {a.source or a.scope}: role '{role.name}' is not assignable at "
                    f"scope '{a.scope}' (assignableScopes: {', '.join(role.assignable_scopes)}); "
                    "the deployment would fail"
                )

    def allowed(self, principal_id: str, action: str, scope: str) -> bool:
        principal_id = principal_id.lower()
        return any(
            a.principal_id.lower() == principal_id
            and covers(a.scope, scope)
            and self.definitions[a.role_definition_id.lower()].allows(action)
            for a in self.assignments
        )

    @classmethod
    def from_bicep(
        cls,
        parameters: Mapping[str, Any],
        *,
        principal_id: str,
        target: DeploymentTarget,
        main: Path | None = None,
    ) -> AccessControl:
        """The roles and assignments a deployment of ``main`` (infra/main.bicep) with
        ``parameters`` into ``target`` (a resource group) creates, the function app's identity being
        ``principal_id``."""
        deployment = _Deployment(principal_id=principal_id, location=target.location)
        deployment.deploy(main or INFRA / "main.bicep", dict(parameters), target)
        definitions = {**BUILT_IN_ROLES, **deployment.definitions}
        return cls(definitions, deployment.assignments)


# ---- the Bicep the role modules use, evaluated -----------------------------------------------


@dataclass(frozen=True)
class DeploymentTarget:
    """Where a Bicep deployment goes: a resource group of a subscription."""

    subscription_id: str
    resource_group: str
    location: str = "westeurope"

    @property
    def id(self) -> str:
        return f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"

    def json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.resource_group, "location": self.location}


class _Outputs(dict[str, Any]):
    """A module's outputs: only the function app's identity matters here; the rest are
    stand-ins that name where they come from."""

    def __init__(self, symbol: str, principal_id: str) -> None:
        super().__init__()
        self.symbol = symbol
        self.principal_id = principal_id

    def __missing__(self, key: str) -> str:
        if (self.symbol, key) == APP_PRINCIPAL_OUTPUT:
            return self.principal_id
        return f"{self.symbol}.outputs.{key}"


_ROLE_TYPES = ("Microsoft.Authorization/roleDefinitions", "Microsoft.Authorization/roleAssignments")


@functools.cache
def _parser() -> Any:
    from pycep import BicepParser

    return BicepParser()  # building the grammar is the slow part


@functools.cache
def _parse(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = _parser().parse(file_path=path)
    return result


class _Deployment:
    def __init__(self, *, principal_id: str, location: str) -> None:
        self.principal_id = principal_id
        self.location = location
        self.definitions: dict[str, RoleDefinition] = {}
        self.assignments: list[RoleAssignment] = []

    def deploy(self, path: Path, params: dict[str, Any], target: DeploymentTarget) -> None:
        doc = _parse(path)
        env = _Env(self, doc, target, path)
        unknown = sorted(set(params) - set(doc.get("parameters") or {}))
        if unknown:
            # As ARM refuses such a deployment (InvalidTemplate).
            raise ValueError(f"{path.name} declares no parameter {', '.join(unknown)}")
        for name, spec in (doc.get("parameters") or {}).items():
            if name in params:
                env.values[name] = params[name]
            elif spec.get("default") is not None:
                env.values[name] = env.eval(spec["default"])
        for name in doc.get("modules") or {}:
            env.values[name] = {"outputs": _Outputs(name, self.principal_id)}
        for symbol, res in (doc.get("resources") or {}).items():
            if res["type"] not in _ROLE_TYPES or res.get("existing"):
                continue
            for bound, body in env.expand(res["config"]):
                self._collect(path, symbol, res, bound, body)
        for module in (doc.get("modules") or {}).values():
            child = (path.parent / module["detail"]["path"]).resolve()
            for bound, body in env.expand(module["config"]):
                scope = bound.eval(body["scope"]) if "scope" in body else target.json()
                sub, rg = scope["id"].split("/")[2], scope["id"].split("/")[4]
                child_params = {k: bound.eval(v) for k, v in (body.get("params") or {}).items()}
                self.deploy(child, child_params, DeploymentTarget(sub, rg, self.location))

    def _collect(self, path: Path, symbol: str, res: dict[str, Any], env: _Env, body: dict[str, Any]) -> None:
        source = f"{path.relative_to(INFRA).as_posix()}:{symbol}"
        props = body.get("properties") or {}
        if res["type"] == "Microsoft.Authorization/roleDefinitions" and not res.get("existing"):
            guid = str(env.eval(body["name"])).lower()
            self.definitions[guid] = RoleDefinition(
                guid,
                str(env.eval(props.get("roleName", guid))),
                tuple(
                    Permission(
                        tuple(env.eval(p.get("actions") or [])),
                        tuple(env.eval(p.get("notActions") or [])),
                    )
                    for p in props.get("permissions") or []
                ),
                tuple(env.eval(props.get("assignableScopes") or [])),
            )
        elif res["type"] == "Microsoft.Authorization/roleAssignments" and not res.get("existing"):
            scope = env.eval(body["scope"])["id"] if "scope" in body else env.target.id
            role = str(env.eval(props["roleDefinitionId"])).rstrip("/").rsplit("/", 1)[-1]
            self.assignments.append(
                RoleAssignment(str(env.eval(props["principalId"])), role.lower(), scope, source)
            )


class _Env:
    """Names in scope while evaluating one Bicep file, and the evaluator."""

    def __init__(
        self, deployment: _Deployment, doc: dict[str, Any], target: DeploymentTarget, path: Path
    ) -> None:
        self.deployment = deployment
        self.doc = doc
        self.target = target
        self.path = path
        self.values: dict[str, Any] = {}
        self._resources: dict[str, Any] = {}
        # Variables are evaluated when used: the role modules need few of them, and other
        # modules' variables use functions the sandbox does not evaluate.
        self._variables: dict[str, Any] = {}

    def bind(self, **names: Any) -> _Env:
        child = _Env(self.deployment, self.doc, self.target, self.path)
        child.values = {**self.values, **names}
        child._resources = self._resources
        child._variables = self._variables
        return child

    def expand(self, config: dict[str, Any]) -> Iterator[tuple[_Env, dict[str, Any]]]:
        """One (environment, body) per instance of a resource or module: its loop expanded,
        its condition applied."""
        loop = config.get("loop_type") if isinstance(config, dict) else None
        if loop is not None:
            detail = loop["detail"]
            for i, item in enumerate(self.eval(detail["array_name"])):
                names = {detail["item_name"]: item}
                if "index_name" in detail:
                    names[detail["index_name"]] = i
                bound = self.bind(**names)
                inner = config["config"]
                if isinstance(inner, dict) and "condition" in inner and "config" in inner:
                    if inner["condition"] is not None and not bound.eval(inner["condition"]):
                        continue
                    inner = inner["config"]
                yield bound, inner
            return
        if isinstance(config, dict) and "condition" in config and "config" in config:
            if config["condition"] is not None and not self.eval(config["condition"]):
                return
            config = config["config"]
        yield self, config

    def resource(self, symbol: str) -> Any:
        """A resource symbol as Bicep sees it: an object with id and name (a list of them
        for a resource loop)."""
        if symbol not in self._resources:
            res = self.doc["resources"][symbol]
            found = [self._resource_json(res, body, env) for env, body in self.expand(res["config"])]
            loops = isinstance(res["config"], dict) and res["config"].get("loop_type") is not None
            self._resources[symbol] = found if loops else found[0]
        return self._resources[symbol]

    def _resource_json(self, res: dict[str, Any], body: dict[str, Any], env: _Env) -> dict[str, Any]:
        name = str(env.eval(body["name"]))
        rtype = res["type"]
        if rtype == "Microsoft.Authorization/roleDefinitions":
            # ARM answers a custom role's id at subscription level, whatever scope created it.
            rid = f"/subscriptions/{self.target.subscription_id}/providers/{rtype}/{name}"
        else:
            namespace, *types = rtype.split("/")
            names = name.split("/")
            tail = "/".join(f"{t}/{n}" for t, n in zip(types, names, strict=False))
            parent = env.eval(body["scope"])["id"] if "scope" in body else self.target.id
            rid = f"{parent}/providers/{namespace}/{tail}"
        return {"id": rid, "name": name, "type": rtype}

    # -- expressions
    def eval(self, node: Any) -> Any:
        if isinstance(node, str):
            return self._name_or_text(node)
        if isinstance(node, list):
            return [self.eval(v) for v in node]
        if not isinstance(node, dict):
            return node
        if "function" in node and isinstance(node["function"], dict):
            return self._function(node["function"])
        if "operator" in node and isinstance(node["operator"], dict):
            return self._operator(node["operator"])
        return {k: self.eval(v) for k, v in node.items()}

    def _name_or_text(self, text: str) -> Any:
        # pycep gives identifiers and string literals alike as strings.
        if text in self.values:
            return self.values[text]
        variables = self.doc.get("variables") or {}
        if text in variables:
            if text not in self._variables:
                self._variables[text] = self.eval(variables[text]["value"])
            return self._variables[text]
        if text in (self.doc.get("resources") or {}):
            return self.resource(text)
        if "${" not in text:
            return text
        return re.sub(r"\$\{([^}]*)\}", lambda m: str(self._interpolated(m.group(1).strip())), text)

    def _interpolated(self, expr: str) -> Any:
        call = re.fullmatch(r"resourceGroup\(\)\.(\w+)", expr)
        if call:
            return self.target.json()[call.group(1)]
        dotted = expr.split(".")
        value = self._name_or_text(dotted[0])
        for key in dotted[1:]:
            value = value[key]
        return value

    def _function(self, fn: dict[str, Any]) -> Any:
        kind = fn["type"]
        p = fn.get("parameters") or {}
        value: Any
        if kind == "resource_group":
            if p.get("resource_group_name") is None:
                value = self.target.json()
            else:
                rg = self.eval(p["resource_group_name"])
                sub = self._subscription(p)
                value = DeploymentTarget(sub, rg, self.target.location).json()
        elif kind == "subscription":
            sub = self._subscription(p)
            value = {"id": f"/subscriptions/{sub}", "subscriptionId": sub}
        elif kind == "subscription_resource_id":
            sub = self._subscription(p)
            names = [self.eval(p[k]) for k in ("resource_name_1", "resource_name_2") if p.get(k) is not None]
            namespace, *types = str(self.eval(p["resource_type"])).split("/")
            tail = "/".join(f"{t}/{n}" for t, n in zip(types, names, strict=False))
            value = f"/subscriptions/{sub}/providers/{namespace}/{tail}"
        elif kind == "split":
            value = str(self.eval(p["input_string"])).split(str(self.eval(p["delimiter"])))
        elif kind == "last":
            value = self.eval(p["arg_1"])[-1]
        elif kind == "take":
            value = self.eval(p["original_value"])[: int(self.eval(p["number_to_take"]))]
        elif kind == "contains":
            value = self.eval(p["item_to_find"]) in self.eval(p["container"])
        elif kind == "empty":
            value = not self.eval(p["item_to_test"])
        elif kind == "concat":
            parts = [self.eval(p[k]) for k in sorted(p)]
            if all(isinstance(x, list) for x in parts):
                value = [item for part in parts for item in part]
            else:
                value = "".join(map(str, parts))
        elif kind in ("guid", "unique_string"):
            parts = [str(self.eval(p[k])) for k in p if p[k] is not None]
            digest = hashlib.sha256("|".join(parts).encode()).digest()
            # Deterministic like ARM's; the real algorithms differ, and nothing here
            # depends on the exact values.
            if kind == "guid":
                value = str(uuid.UUID(bytes=digest[:16]))
            else:
                value = base64.b32encode(digest).decode().lower()[:13]
        else:
            raise ValueError(f"{self.path.name}: Bicep function {kind!r} is not evaluated by the sandbox")
        if "index" in fn:
            value = value[int(fn["index"])]
        if fn.get("property_name"):
            value = value[fn["property_name"]]
        return value

    def _subscription(self, parameters: dict[str, Any]) -> str:
        given = parameters.get("subscription_id")
        return str(self.eval(given)) if given is not None else self.target.subscription_id

    def _operator(self, op: dict[str, Any]) -> Any:
        kind, operands = op["type"], op["operands"]
        if kind == "conditional":
            chosen = operands["true_value"] if self.eval(operands["condition"]) else operands["false_value"]
            return self.eval(chosen)
        if kind == "index_accessor":
            return self.eval(operands["operand_1"])[self.eval(operands["operand_2"])]
        if kind == "not":
            return not self.eval(operands["bool_value"])
        if kind == "property_accessor":
            return self._access(self.eval(operands["operand_1"]), operands["operand_2"])
        raise ValueError(f"{self.path.name}: Bicep operator {kind!r} is not evaluated by the sandbox")

    def _access(self, value: Any, node: Any) -> Any:
        """``value`` followed by the property path pycep gives after the first operand
        (it nests ``a.b.c`` as a.(b.c), and ``a.?b ?? c`` as a.(b ?? c))."""
        if isinstance(node, str):
            return value[node]
        kind, operands = node["operator"]["type"], node["operator"]["operands"]
        if kind == "property_accessor":
            return self._access(self._access(value, operands["operand_1"]), operands["operand_2"])
        if kind == "coalesce":
            try:
                found = self._access(value, operands["operand_1"])
            except (KeyError, TypeError):
                found = None  # the safe dereference: a missing property is null
            return found if found is not None else self.eval(operands["operand_2"])
        raise ValueError(f"{self.path.name}: Bicep operator {kind!r} in a property path is not evaluated")
