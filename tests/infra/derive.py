"""What the app's code uses, read from its source, and what infra/ grants, read from the
Bicep files and the Kubernetes manifests. ``test_infra.py`` compares the two.

Nothing here is a hand-kept list of what the code does:

* app settings: ``os.environ`` reads (and reads through a name bound to it, or a parameter
  called ``env``), ``%NAME%`` binding expressions, trigger ``connection=`` arguments;
* Azure operations: attribute chains ``<client>.<operation group>.<method>`` whose group and
  method exist on an installed ``azure.mgmt`` client, calls of the code's own wrappers around
  ``send_request`` (plain ARM requests), and methods of the storage SDK clients;
* Kubernetes requests: methods of the installed ``kubernetes.client`` API classes, turned
  into (apiGroup, resource, verb) with the request path the client itself sends, and the
  namespace argument when it is a literal.

The tables that give these a meaning (SDK method -> ARM action, role -> actions) live in the
test, next to the assertions.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
CODE = ("shared", "functions", "function_app.py")


# ---- the Python sources ----------------------------------------------------------------------


@dataclass(frozen=True)
class Module:
    rel: str  # "shared/adapters/kube.py"
    name: str  # "shared.adapters.kube"
    tree: ast.Module
    parents: dict[ast.AST, ast.AST]
    constants: dict[str, str]  # module-level NAME = "literal"

    def where(self, node: ast.AST) -> str:
        return f"{self.rel}:{getattr(node, 'lineno', '?')} {self.function_of(node) or '<module>'}"

    def function_of(self, node: ast.AST) -> str:
        names = []
        current: ast.AST | None = node
        while current is not None:
            if isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.append(current.name)
            current = self.parents.get(current)
        return ".".join(reversed(names))

    def innermost_function(self, node: ast.AST) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
        current = self.parents.get(node)
        while current is not None and not isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef):
            current = self.parents.get(current)
        return current


@functools.cache
def code_modules(root: Path = ROOT) -> tuple[Module, ...]:
    paths: list[Path] = []
    for entry in CODE:
        p = root / entry
        paths.extend(sorted(p.rglob("*.py")) if p.is_dir() else [p])
    modules = []
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        constants = {}
        for stmt in tree.body:
            targets = (
                stmt.targets
                if isinstance(stmt, ast.Assign)
                else [stmt.target]
                if isinstance(stmt, ast.AnnAssign)
                else []
            )
            value = getattr(stmt, "value", None)
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                for t in targets:
                    if isinstance(t, ast.Name):
                        constants[t.id] = value.value
        rel = path.relative_to(root).as_posix()
        name = rel[:-3].replace("/", ".").removesuffix(".__init__")
        modules.append(Module(rel, name, tree, parents, constants))
    return tuple(modules)


def resolve_str(node: ast.AST | None, module: Module) -> str | None:
    """The string an expression always has, if it can be told from the source alone."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return module.constants.get(node.id)
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            part = resolve_str(value.value if isinstance(value, ast.FormattedValue) else value, module)
            if part is None:
                return None
            parts.append(part)
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = resolve_str(node.left, module), resolve_str(node.right, module)
        return None if left is None or right is None else left + right
    return None


def _is_os_environ(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def _contains_os_environ(node: ast.AST) -> bool:
    return any(_is_os_environ(n) for n in ast.walk(node))


def defined_function_names() -> set[str]:
    return {
        n.name
        for m in code_modules()
        for n in ast.walk(m.tree)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
    }


# ---- app settings -------------------------------------------------------------------------------

ENV_PARAMETER_NAMES = {"env", "environ", "environment"}


@dataclass(frozen=True)
class SettingRead:
    name: str | None  # None: computed at run time (a name taken from the YAML configuration)
    default: str | None
    where: str
    module: str
    function: str


def _env_aliases(module: Module, function: ast.AST | None) -> set[str]:
    """Names that hold the environment inside ``function``: bound from os.environ, or a
    parameter named like it (the code passes os.environ to such functions)."""
    if function is None:
        return set()
    names = {
        a.arg
        for a in (*function.args.args, *function.args.kwonlyargs)  # type: ignore[attr-defined]
        if a.arg in ENV_PARAMETER_NAMES
    }
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and _contains_os_environ(node.value):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def setting_reads() -> list[SettingRead]:
    reads: list[SettingRead] = []
    for m in code_modules():
        for node in ast.walk(m.tree):
            key: ast.AST | None = None
            default: ast.AST | None = None
            receiver: ast.AST | None = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr == "get" and node.args:
                    receiver, key = node.func.value, node.args[0]
                    default = node.args[1] if len(node.args) > 1 else None
                elif (
                    node.func.attr == "getenv"
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "os"
                    and node.args
                ):
                    receiver, key = ast.Attribute(ast.Name("os"), "environ"), node.args[0]
                    default = node.args[1] if len(node.args) > 1 else None
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
                receiver, key = node.value, node.slice
            if receiver is None:
                continue
            function = m.innermost_function(node)
            is_env = _is_os_environ(receiver) or (
                isinstance(receiver, ast.Name) and receiver.id in _env_aliases(m, function)
            )
            if not is_env:
                continue
            reads.append(
                SettingRead(
                    name=resolve_str(key, m),
                    default=resolve_str(default, m),
                    where=m.where(node),
                    module=m.rel,
                    function=m.function_of(node),
                )
            )
    return reads


BINDING_EXPRESSION = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)%")


def binding_expression_settings() -> dict[str, str]:
    """``%NAME%`` app-setting expressions in binding arguments (timer schedules and the like)."""
    found = {}
    for m in code_modules():
        for node in ast.walk(m.tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                match = BINDING_EXPRESSION.fullmatch(node.value)
                if match:
                    found[match.group(1)] = m.where(node)
    return found


@dataclass(frozen=True)
class Trigger:
    function: str  # the function name the host knows (function_name(...) or the def name)
    kind: str  # "queue_trigger", "event_grid_trigger", ...
    arguments: dict[str, str]  # literal keyword arguments
    where: str


def triggers() -> list[Trigger]:
    found = []
    for m in code_modules():
        for node in ast.walk(m.tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            name, kinds = node.name, list[tuple[str, dict[str, str]]]()
            for dec in node.decorator_list:
                if not (isinstance(dec, ast.Call) and isinstance(dec.func, ast.Attribute)):
                    continue
                if dec.func.attr == "function_name":
                    name = resolve_str(dec.args[0] if dec.args else dec.keywords[0].value, m) or name
                elif dec.func.attr.endswith("_trigger") or dec.func.attr == "route":
                    raw = {k.arg: resolve_str(k.value, m) for k in dec.keywords if k.arg}
                    kinds.append((dec.func.attr, {k: v for k, v in raw.items() if v is not None}))
            for kind, args in kinds:
                found.append(Trigger(name, kind, args, m.where(node)))
    return found


def queue_constants() -> dict[str, str]:
    """Module-level ``*_QUEUE = "name"`` constants: queue names the code sends to."""
    return {f"{m.rel}:{k}": v for m in code_modules() for k, v in m.constants.items() if k.endswith("_QUEUE")}


# ---- Azure operations ------------------------------------------------------------------------


@dataclass(frozen=True)
class AzureCall:
    kind: str  # "sdk" (azure-mgmt operation group method), "rest" (plain ARM request), "data"
    key: tuple[str, ...]
    where: str


def _mgmt_packages() -> dict[str, str]:
    """azure.mgmt packages the code imports -> the module that imports them."""
    found = {}
    for m in code_modules():
        for node in ast.walk(m.tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("azure.mgmt."):
                    found[".".join(name.split(".")[:3])] = m.rel
    return found


@functools.cache
def mgmt_operation_groups(package: str) -> dict[str, set[str]]:
    """operation group attribute -> its public methods, for every client in ``package``,
    read from the client's own ``:ivar name:`` / ``:vartype name: dotted.Class`` docs."""
    mod = importlib.import_module(package)
    groups: dict[str, set[str]] = {}
    for _, cls in inspect.getmembers(mod, inspect.isclass):
        if not cls.__name__.endswith("Client"):
            continue
        for name, dotted in re.findall(r":vartype (\w+):\s+([\w.]+)", cls.__doc__ or ""):
            mod_name, _, cls_name = dotted.rpartition(".")
            try:
                ops_cls = getattr(importlib.import_module(mod_name), cls_name)
            except (ImportError, AttributeError):
                continue
            groups[name] = {
                n for n, _ in inspect.getmembers(ops_cls, inspect.isfunction) if not n.startswith("_")
            }
    return groups


MGMT_PIPELINE_PACKAGES = {"azure.mgmt.core"}  # ARM pipeline and polling, no operations of its own

DATA_PLANE_CLIENTS = {
    "azure.storage.queue": ("QueueClient", "QueueServiceClient"),
    "azure.data.tables": ("TableClient", "TableServiceClient"),
    "azure.storage.blob": ("BlobClient", "BlobServiceClient"),
}
# Constructors, connection handling and client navigation: no request of their own.
DATA_PLANE_NON_OPERATIONS = {
    "close",
    "from_connection_string",
    "from_blob_url",
    "from_queue_url",
    "from_table_url",
    "get_queue_client",
    "get_table_client",
}


def azure_calls() -> tuple[list[AzureCall], dict[str, str]]:
    """The Azure operations the code performs, and azure.mgmt packages it imports that this
    derivation does not know (each must be taught to it)."""
    packages = _mgmt_packages()
    unknown = {p: where for p, where in packages.items() if p not in MGMT_PIPELINE_PACKAGES}
    groups: dict[str, set[str]] = {}
    for package in list(unknown):
        try:
            found = mgmt_operation_groups(package)
        except ImportError:
            continue
        if found:
            groups.update(found)
            unknown.pop(package)

    data_methods: dict[str, set[str]] = {}
    for package, class_names in DATA_PLANE_CLIENTS.items():
        mod = importlib.import_module(package)
        for class_name in class_names:
            cls = getattr(mod, class_name)
            for name, value in inspect.getmembers(cls):
                if name.startswith("_") or name in DATA_PLANE_NON_OPERATIONS or not callable(value):
                    continue
                if isinstance(inspect.getattr_static(cls, name), property):
                    continue
                data_methods.setdefault(name, set()).add(class_name)

    # Functions that send a plain ARM request: their callers perform REST operations.
    rest_wrappers = set()
    for m in code_modules():
        for node in ast.walk(m.tree):
            if isinstance(node, ast.Attribute) and node.attr == "send_request":
                function = m.innermost_function(node)
                if function is not None:
                    rest_wrappers.add(function.name)

    calls: list[AzureCall] = []
    for m in code_modules():
        imports_data_plane = any(
            isinstance(n, ast.ImportFrom) and n.module in DATA_PLANE_CLIENTS for n in ast.walk(m.tree)
        )
        for node in ast.walk(m.tree):
            if not isinstance(node, ast.Attribute):
                continue
            inner = node.value
            if isinstance(inner, ast.Attribute) and inner.attr in groups and node.attr in groups[inner.attr]:
                calls.append(AzureCall("sdk", (inner.attr, node.attr), m.where(node)))
            elif node.attr in rest_wrappers and isinstance(m.parents.get(node), ast.Call):
                call = m.parents[node]
                assert isinstance(call, ast.Call)
                caller = m.innermost_function(node)
                if call.func is node and caller is not None:
                    method = resolve_str(call.args[0], m) if call.args else None
                    calls.append(AzureCall("rest", (m.rel, caller.name, method or "?"), m.where(node)))
            elif imports_data_plane and node.attr in data_methods:
                calls.append(AzureCall("data", (node.attr,), m.where(node)))
    return calls, unknown


# ---- Kubernetes requests -------------------------------------------------------------------------


@functools.cache
def _k8s_api_classes() -> dict[str, type]:
    from kubernetes.client import api  # loads its classes lazily: go through __all__

    return {name: getattr(api, name) for name in api.__all__ if name.endswith("Api")}


@functools.cache
def _k8s_source(api: str) -> str:
    # The module's text, not inspect.getsource(class): that re-parses the (huge) module each time.
    return Path(inspect.getfile(_k8s_api_classes()[api])).read_text(encoding="utf-8")


@functools.cache
def k8s_request(api: str, method: str) -> tuple[str, str]:
    """(HTTP method, path template) the kubernetes client sends for ``api.method``."""
    source = _k8s_source(api)
    start = source.index(f"def _{method}_serialize(")
    end = source.find("\n    def ", start + 1)
    body = source[start : end if end > 0 else None]
    http = re.search(r"method='(\w+)'", body)
    path = re.search(r"resource_path='([^']+)'", body)
    assert http and path, f"cannot read the request of {api}.{method}"
    return http.group(1), path.group(1)


@functools.cache
def _k8s_methods(api: str) -> set[str]:
    cls = _k8s_api_classes()[api]
    return {
        n
        for n, _ in inspect.getmembers(cls, inspect.isfunction)
        if not n.startswith("_") and not n.endswith(("_with_http_info", "_without_preload_content"))
    }


@dataclass(frozen=True)
class KubeCall:
    api: str
    method: str
    arguments: dict[str, ast.AST]  # the method's parameters -> the expressions passed
    module: Module
    where: str


def _api_receivers() -> dict[str, str]:
    """Attribute or variable names the code binds to a kubernetes API object -> its class."""
    receivers = {}
    for m in code_modules():
        for node in ast.walk(m.tree):
            if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
                continue
            func = node.value.func
            cls = (
                func.attr
                if isinstance(func, ast.Attribute)
                else func.id
                if isinstance(func, ast.Name)
                else ""
            )
            if cls in _k8s_api_classes():
                for t in node.targets:
                    if isinstance(t, ast.Attribute | ast.Name):
                        receivers[t.attr if isinstance(t, ast.Attribute) else t.id] = cls
    return receivers


def _receiver_class(node: ast.AST, receivers: dict[str, str]) -> str | None:
    if isinstance(node, ast.Attribute | ast.Name):
        return receivers.get(node.attr if isinstance(node, ast.Attribute) else node.id)
    if isinstance(node, ast.Call):  # client.VersionApi(api_client).get_code
        func = node.func
        cls = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        return cls if cls in _k8s_api_classes() else None
    return None


def kube_calls() -> tuple[list[KubeCall], list[str]]:
    """Every kubernetes API method the code calls or hands to a helper that calls it, and
    references that look like API calls but whose receiver could not be told (to fix)."""
    receivers = _api_receivers()
    all_methods = set().union(*(_k8s_methods(a) for a in _k8s_api_classes()))
    own = defined_function_names()
    calls, unresolved = [], []
    for m in code_modules():
        for node in ast.walk(m.tree):
            if not isinstance(node, ast.Attribute):
                continue
            api = _receiver_class(node.value, receivers)
            if api is None or node.attr not in _k8s_methods(api):
                if (
                    node.attr in all_methods
                    and node.attr not in own
                    and isinstance(node.value, ast.Attribute | ast.Name)
                ):
                    unresolved.append(f"{m.where(node)}: .{node.attr}")
                continue
            parent = m.parents.get(node)
            if isinstance(parent, ast.Call) and parent.func is node:
                args, keywords = parent.args, parent.keywords
            elif isinstance(parent, ast.Call) and node in parent.args:
                # Passed to a helper as fn(*args): the arguments after it are the method's,
                # with whatever the helper adds itself (a watch helper's watch=True).
                args = parent.args[parent.args.index(node) + 1 :]
                keywords = parent.keywords + _helper_keywords(m, parent.func)
            else:
                args, keywords = [], []
            params = [
                p
                for p in inspect.signature(getattr(_k8s_api_classes()[api], node.attr)).parameters
                if p != "self"
            ]
            bound: dict[str, ast.AST] = {}
            for p, a in zip(params, args, strict=False):
                if not isinstance(a, ast.Starred):
                    bound[p] = a
            for k in keywords:
                if k.arg and not k.arg.startswith("_"):
                    bound[k.arg] = k.value
            calls.append(KubeCall(api, node.attr, bound, m, m.where(node)))
    return calls, unresolved


def _helper_keywords(module: Module, func: ast.AST) -> list[ast.keyword]:
    """Literal keywords a helper of the module passes on every call it makes, such as
    ``watch=True`` in a watch helper: they change the request's verb."""
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    found: list[ast.keyword] = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            for inner in ast.walk(node):
                if isinstance(inner, ast.Call):
                    found.extend(
                        k for k in inner.keywords if k.arg == "watch" and isinstance(k.value, ast.Constant)
                    )
    return found


def _kind_objects(module: Module) -> list[Any]:
    """Module-level objects with ``group`` and ``plural`` strings (the custom resource kinds
    a module works with), for calls that take the kind as a variable."""
    mod = importlib.import_module(module.name)
    return [
        v
        for v in vars(mod).values()
        if isinstance(getattr(v, "group", None), str) and isinstance(getattr(v, "plural", None), str)
    ]


Permission = tuple[str, str, str, str | None]  # (apiGroup, resource, verb, namespace or None = any)
NON_RESOURCE = "nonResourceURL"


def kube_permissions() -> dict[Permission, list[str]]:
    """(apiGroup, resource, verb, namespace) -> where the code needs it. Non-resource URLs
    are (NON_RESOURCE, url, verb, None)."""
    calls, unresolved = kube_calls()
    assert not unresolved, f"kubernetes calls whose API object could not be told: {unresolved}"
    needed: dict[Permission, list[str]] = {}
    for call in calls:
        http, path = k8s_request(call.api, call.method)
        path = path.rstrip("/") or "/"
        if not path.startswith(("/api/", "/apis/")):
            verb = {"GET": "get", "POST": "post", "PUT": "put", "PATCH": "patch", "DELETE": "delete"}[http]
            needed.setdefault((NON_RESOURCE, path, verb, None), []).append(call.where)
            continue
        segments = path.split("/")[1:]
        if segments[0] == "api":
            group, rest = "", segments[2:]
        else:
            group, rest = segments[1], segments[3:]
        namespace: str | None = None
        namespaced = rest[:2] == ["namespaces", "{namespace}"]
        if namespaced:
            rest = rest[2:]
            namespace = resolve_str(call.arguments.get("namespace"), call.module)
        if not rest:
            continue  # discovery (/apis/{group}/{version}): allowed to every authenticated user
        resource, named = rest[0], len(rest) > 1 and rest[1] == "{name}"
        sub = rest[2] if len(rest) > 2 else None
        watching = call.arguments.get("watch")
        verb = {
            "GET": "watch"
            if isinstance(watching, ast.Constant) and watching.value is True
            else "get"
            if named
            else "list",
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if named else "deletecollection",
        }[http]
        kinds: list[tuple[str, str]]
        if "{" in group or "{" in resource:
            literal_group = resolve_str(call.arguments.get("group"), call.module)
            literal_plural = resolve_str(call.arguments.get("plural"), call.module)
            if literal_group and literal_plural:
                kinds = [(literal_group, literal_plural)]
            else:
                kinds = [(k.group, k.plural) for k in _kind_objects(call.module)]
                assert kinds, f"{call.where}: cannot tell which custom resources {call.method} touches"
        else:
            kinds = [(group, resource)]
        for g, r in kinds:
            name = f"{r}/{sub}" if sub else r
            needed.setdefault((g, name, verb, namespace), []).append(call.where)
    return needed


# ---- Kubernetes manifests ----------------------------------------------------------------------


def k8s_documents(directory: Path | None = None) -> list[dict[str, Any]]:
    """The objects ``kubectl apply -k infra/kubernetes`` creates (the kustomization's resources)."""
    directory = directory or INFRA / "kubernetes"
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    docs: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        docs.extend(d for d in yaml.safe_load_all((directory / name).read_text(encoding="utf-8")) if d)
    return docs


def service_account_of_token(docs: list[dict[str, Any]]) -> tuple[str, str]:
    """(namespace, name) of the ServiceAccount whose token make-kubeconfig.sh stores."""
    tokens = [
        d for d in docs if d["kind"] == "Secret" and d.get("type") == "kubernetes.io/service-account-token"
    ]
    assert len(tokens) == 1, "expected exactly one service-account-token Secret"
    meta = tokens[0]["metadata"]
    return meta["namespace"], meta["annotations"]["kubernetes.io/service-account.name"]


def _expand(rule: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    if "nonResourceURLs" in rule:
        for url in rule["nonResourceURLs"]:
            for verb in rule["verbs"]:
                yield NON_RESOURCE, url, verb
        return
    for group in rule.get("apiGroups", []):
        for resource in rule.get("resources", []):
            for verb in rule["verbs"]:
                yield group, resource, verb


def k8s_grants(docs: list[dict[str, Any]]) -> dict[Permission, str]:
    """What the token's ServiceAccount may do: (apiGroup, resource, verb, namespace or None
    for cluster-wide) -> the role granting it."""
    sa_ns, sa_name = service_account_of_token(docs)

    def binds_sa(binding: dict[str, Any]) -> bool:
        return any(
            s.get("kind") == "ServiceAccount" and s.get("name") == sa_name and s.get("namespace") == sa_ns
            for s in binding.get("subjects") or []
        )

    roles = {
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
    }
    grants: dict[Permission, str] = {}
    for b in docs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding") or not binds_sa(b):
            continue
        ref = b["roleRef"]
        namespace = b["metadata"].get("namespace") if b["kind"] == "RoleBinding" else None
        role = roles.get((ref["kind"], namespace if ref["kind"] == "Role" else None, ref["name"]))
        assert role is not None, (
            f"{b['kind']} {b['metadata']['name']} refers to a missing {ref['kind']} {ref['name']}"
        )
        for rule in role.get("rules") or []:
            for g, r, v in _expand(rule):
                grants[(g, r, v, namespace)] = f"{role['kind']} {role['metadata']['name']}"
    return grants


# ---- Bicep -------------------------------------------------------------------------------


def bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


@functools.cache
def _bicep_parser() -> Any:
    from pycep import BicepParser

    return BicepParser()  # building the grammar is the slow part: once per session


@functools.cache
def parse_bicep(path: Path) -> dict[str, Any]:
    """pycep's JSON form of a Bicep file; raises on a syntax error."""
    return _bicep_parser().parse(file_path=path)


def deployed_bicep_files() -> set[Path]:
    """main.bicep and every module it deploys, transitively."""
    seen: set[Path] = set()
    todo = [INFRA / "main.bicep"]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in (parse_bicep(path).get("modules") or {}).values():
            todo.append((path.parent / module["detail"]["path"]).resolve())
    return seen


def unwrap(config: Any) -> dict[str, Any]:
    """A resource's body without its loop / condition wrappers."""
    while (
        isinstance(config, dict) and "config" in config and ("loop_type" in config or "condition" in config)
    ):
        config = config["config"]
    return config


def _accessor(value: Any) -> tuple[Any, Any] | None:
    if (
        isinstance(value, dict)
        and "operator" in value
        and value["operator"]["type"] in ("property_accessor", "index_accessor")
    ):
        ops = value["operator"]["operands"]
        return ops["operand_1"], ops["operand_2"]
    return None


@dataclass(frozen=True)
class Grant:
    file: str
    assignment: str
    scope_type: str  # a resource type, or "resourceGroup" for the module's resource group
    role_id: str | None  # a built-in role's id
    custom_actions: tuple[str, ...]  # a custom role's actions (when role_id is None)
    custom_role: str | None


def role_grants() -> list[Grant]:
    grants = []
    for path in sorted(deployed_bicep_files()):
        doc = parse_bicep(path)
        resources = doc.get("resources") or {}
        variables = {k: v["value"] for k, v in (doc.get("variables") or {}).items()}
        for symbol, res in resources.items():
            if res["type"] != "Microsoft.Authorization/roleAssignments":
                continue
            body = unwrap(res["config"])
            scope = body.get("scope")
            scope_accessor = _accessor(scope)
            scope_symbol = scope_accessor[0] if scope_accessor else scope
            if scope is None:
                scope_type = "resourceGroup"
            elif isinstance(scope_symbol, str) and scope_symbol in resources:
                scope_type = resources[scope_symbol]["type"]
            else:
                scope_type = f"unknown scope {scope!r}"
            role = body["properties"]["roleDefinitionId"]
            role_id, actions, custom = None, (), None
            acc = _accessor(role)
            if acc and acc[1] == "id" and acc[0] in resources:
                custom = acc[0]
                definition = unwrap(resources[custom]["config"])
                actions = tuple(
                    a for p in definition["properties"]["permissions"] for a in p.get("actions", [])
                )
            elif (
                isinstance(role, dict) and role.get("function", {}).get("type") == "subscription_resource_id"
            ):
                ref = role["function"]["parameters"]["resource_name_1"]
                acc = _accessor(ref)
                if acc and acc[0] in variables:
                    role_id = variables[acc[0]][acc[1]]
                elif isinstance(ref, str):
                    role_id = variables.get(ref, ref)
            grants.append(
                Grant(path.relative_to(INFRA).as_posix(), symbol, scope_type, role_id, actions, custom)
            )
    return grants


def custom_roles() -> dict[str, tuple[str, ...]]:
    """'file:symbol' -> actions, for every custom role definition in the deployed Bicep."""
    found = {}
    for path in sorted(deployed_bicep_files()):
        for symbol, res in (parse_bicep(path).get("resources") or {}).items():
            if res["type"] == "Microsoft.Authorization/roleDefinitions":
                body = unwrap(res["config"])
                found[f"{path.relative_to(INFRA).as_posix()}:{symbol}"] = tuple(
                    a
                    for p in body["properties"]["permissions"]
                    for a in (*p.get("actions", []), *p.get("dataActions", []))
                )
    return found


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class BicepSettings:
    literal: dict[str, Any]  # app setting name -> its value expression
    key_vault_parameters: set[str]  # parameters turned into one Key Vault reference setting per item


def function_app_settings(path: Path | None = None) -> BicepSettings:
    """The app settings the function app module sets: literal {name, value} pairs, and
    array parameters expanded into Key Vault reference settings with a for-loop."""
    path = path or INFRA / "app" / "functionapp.bicep"
    doc = parse_bicep(path)
    declared = set(doc.get("parameters") or {}) | set(doc.get("variables") or {})
    literal: dict[str, Any] = {}
    kv_params: set[str] = set()
    for variable in (doc.get("variables") or {}).values():
        value = variable["value"]
        if isinstance(value, dict) and "loop_type" in value:
            body = value["config"]
            if isinstance(body.get("value"), str) and body["value"].startswith(
                "@Microsoft.KeyVault(SecretUri="
            ):
                kv_params.add(value["loop_type"]["detail"]["array_name"])
            continue
        for node in _walk(value):
            if (
                isinstance(node, dict)
                and set(node) == {"name", "value"}
                and isinstance(node["name"], str)
                and SETTING_NAME.match(node["name"])
                and node["name"] not in declared
            ):
                literal[node["name"]] = node["value"]
    return BicepSettings(literal, kv_params)


def bicep_default(path: Path, parameter: str) -> Any:
    return parse_bicep(path)["parameters"][parameter].get("default")
