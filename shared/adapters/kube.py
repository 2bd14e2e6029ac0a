"""The Kubernetes side, in kubectl's vocabulary: get, cordon, uncordon, evict, annotate.

Responses are read as raw JSON (``_preload_content=False``) and wrapped in small typed
views: deserialising into the generated models costs more than the rest of a step. API
errors are translated here, once, into the product's retry intent (``errors``).
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from shared import PRODUCT_PREFIX
from shared.adapters.kube_objects import KubeObject, Pod
from shared.clock import iso
from shared.errors import ConcurrencyError, ConfigError, NotFoundError, PermanentError, TemporaryError
from shared.retry import backoff

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT = (5, 30)
# Connections kept per API server. The client's default (5 per CPU) is below the threads a
# worker calls the server from at once (the host's pool, a batch leader's calls and its
# watches); past it, urllib3 discards each connection it cannot keep, and the next request
# opens another with a fresh TLS handshake on both ends.
CONNECTIONS = 32
# A drain looks at its node's pods up to three times within seconds, and a wave drains many
# nodes running the same DaemonSets: a DaemonSet seen this recently is taken to be there
# still. kubectl drain gets it once per drain, and it too can vanish right after that.
DAEMONSET_SEEN_FOR = 10.0
# A watch that ends sooner than asked is established again after a back-off from
# WATCH_BACKOFF_INITIAL, doubling up to WATCH_BACKOFF_MAX (one that lived longer than that
# starts the back-off over). Ending within WATCH_END_SLACK of its deadline is on time.
WATCH_BACKOFF_INITIAL = 0.2
WATCH_BACKOFF_MAX = 2.0
WATCH_END_SLACK = 0.05
ANNOTATION_RUN = f"{PRODUCT_PREFIX}/run"
ANNOTATION_STATE = f"{PRODUCT_PREFIX}/state"
ANNOTATION_CORDONED = f"{PRODUCT_PREFIX}/cordoned-by"
ANNOTATION_PATCHED_AT = f"{PRODUCT_PREFIX}/patched-at"
# On the Nodes a run holds cordoned (value: the run id), so that one label-selected watch
# follows a whole batch of them and `kubectl get nodes -l` shows what is being patched.
LABEL_PATCHING = f"{PRODUCT_PREFIX}/patching"
# The gallery image version a node image says it is, as a label its kubelet sets
# (--node-labels baked into the image). When a Node has it, the boot check compares it
# with the version the instance was reimaged to.
NODE_IMAGE_LABEL = f"{PRODUCT_PREFIX}/image-version"
# Server-side printing, the form kubectl get asks for (meta.k8s.io/v1 Table).
TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io"
# Beyond this many nodes to read whole, one list costs less than a GET each (a GET is a
# round trip; a list of 1,000 Nodes about 60 GETs of CPU, measured on the sandbox).
MAX_SINGLE_READS = 20


@dataclass(frozen=True)
class Node(KubeObject):
    @property
    def unschedulable(self) -> bool:
        return bool((self.raw.get("spec") or {}).get("unschedulable"))

    @property
    def provider_id(self) -> str:
        return str((self.raw.get("spec") or {}).get("providerID", ""))

    @property
    def ready(self) -> bool:
        return self.condition_true("Ready")

    @cached_property
    def node_info(self) -> Mapping[str, Any]:
        return (self.raw.get("status") or {}).get("nodeInfo") or {}

    @property
    def boot_id(self) -> str:
        return str(self.node_info.get("bootID", ""))

    @property
    def kubelet_version(self) -> str:
        return str(self.node_info.get("kubeletVersion", ""))

    @property
    def image_version(self) -> str:
        return str(self.labels.get(NODE_IMAGE_LABEL, ""))

    @property
    def cordoned_by(self) -> str:
        return str(self.annotations.get(ANNOTATION_CORDONED, ""))


def node_status_view(name: str, *, ready: bool, unschedulable: bool) -> Node:
    """A Node that holds only what kubectl's STATUS column says: its name, whether it is
    cordoned and whether it is Ready (no labels, annotations or providerID)."""
    return Node(
        {
            "metadata": {"name": name},
            "spec": {"unschedulable": True} if unschedulable else {},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
        }
    )


def node_statuses(table: Mapping[str, Any]) -> list[tuple[str, bool, bool]]:
    """(name, ready, unschedulable) of each row of a server-side ``Table`` of nodes.

    The apiserver's node printer (pkg/printers/internalversion printNode) writes STATUS
    as "Ready" or "NotReady" from the Ready condition ("Unknown" without one), then
    ",SchedulingDisabled" when spec.unschedulable is set.
    """
    columns = [str(c.get("name", "")).lower() for c in table.get("columnDefinitions") or []]
    name_at, status_at = columns.index("name"), columns.index("status")
    out = []
    for row in table.get("rows") or []:
        cells = row["cells"]
        status = str(cells[status_at]).split(",")
        out.append((str(cells[name_at]), status[0] == "Ready", "SchedulingDisabled" in status))
    return out


@dataclass(frozen=True)
class EvictionResult:
    evicted: bool
    gone: bool = False
    blocked_reason: str = ""
    retry_after: float | None = None


def cordon_patch(run_id: str, state: str) -> dict[str, Any]:
    """The merge patch of a cordon: unschedulable, and the marks that say which run holds
    the node (what the sweeper and a later run read to take it over or release it)."""
    return {
        "metadata": {
            "labels": {LABEL_PATCHING: run_id},
            "annotations": {ANNOTATION_CORDONED: run_id, ANNOTATION_RUN: run_id, ANNOTATION_STATE: state},
        },
        "spec": {"unschedulable": True},
    }


def uncordon_patch(state: str, patched_at: str | None = None) -> dict[str, Any]:
    """The merge patch of an uncordon: the run's hold removed (null deletes a key), its last
    state and, after a reimage, when the node was patched kept for the next run's plan."""
    annotations: dict[str, str | None] = {ANNOTATION_CORDONED: None, ANNOTATION_STATE: state}
    if patched_at:
        annotations[ANNOTATION_PATCHED_AT] = patched_at
    return {
        "metadata": {"labels": {LABEL_PATCHING: None}, "annotations": annotations},
        "spec": {"unschedulable": None},
    }


def watch_backoff(attempt: int) -> float:
    """Seconds before re-establishing a watch after its ``attempt``-th early end in a row,
    with jitter so that many watches cut at once (a proxy restarting) do not come back at
    once."""
    return backoff(attempt, initial=WATCH_BACKOFF_INITIAL, maximum=WATCH_BACKOFF_MAX, jitter=0.5)


def load_kubeconfig(kubeconfig: str, configuration: Any) -> None:
    """Set ``configuration`` from a kubeconfig (its text, or the path of a file holding it).

    A kubeconfig holds credentials, so no error names any part of it: a value pasted whole
    (base64-encoded, say) would otherwise be echoed into logs, the node record and
    ``GET /api/runs``. Errors are ``ConfigError`` saying what is wrong in general terms
    (YAML line and column, the library's complaint with the document's values taken out),
    raised without the original exception chained to them."""
    import yaml
    from kubernetes import config

    text = kubeconfig
    if "\n" not in kubeconfig.strip() and not kubeconfig.lstrip().startswith(("{", "apiVersion")):
        # One line: the path of a file (a kubeconfig's text has several lines).
        try:
            with open(kubeconfig.strip(), encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, ValueError) as exc:
            hint = " (it looks base64-encoded: store the decoded text)" if _looks_base64(kubeconfig) else ""
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ConfigError(
                f"kubeconfig is one line and names no readable file ({reason}); it must be the "
                f"kubeconfig's YAML text or the path of a file holding it{hint}"
            ) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"kubeconfig is not valid YAML{where}") from None
    if not isinstance(document, dict):
        raise ConfigError(
            f"kubeconfig is not a kubeconfig: its YAML is a {type(document).__name__}, not a mapping"
        )
    try:
        config.kube_config.KubeConfigLoader(config_dict=document).load_and_set(configuration)
    except config.ConfigException as exc:
        raise ConfigError(f"kubeconfig is not usable: {_without_values(str(exc), text, document)}") from None
    except Exception as exc:  # a field of the wrong type, undecodable certificate data, ...
        raise ConfigError(f"kubeconfig is not usable ({type(exc).__name__})") from None


def _looks_base64(value: str) -> bool:
    import base64
    import binascii

    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return b"apiVersion" in decoded or b"clusters" in decoded


def _without_values(message: str, text: str, document: Any) -> str:
    """``message`` with every scalar value of ``document`` (and the text itself) taken out:
    kubernetes' complaints name objects ("Expected object with name X in contexts list")."""
    values: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif node is not None and not isinstance(node, bool):
            values.add(str(node))

    walk(document)
    for value in sorted(values | {text.strip()}, key=len, reverse=True):
        if len(value) >= 3:
            message = message.replace(value, "…")
    return message


def _set_proxy(configuration: Any, proxy: str | None, no_proxy: Sequence[str]) -> None:
    if proxy:
        configuration.proxy = proxy
        configuration.no_proxy = ",".join(no_proxy) or None


def _retry_after(exc: Any) -> float | None:
    headers = getattr(exc, "headers", None) or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _status_message(exc: Any) -> str:
    try:
        body = json.loads(exc.body)
        return str(body.get("message") or exc.reason)
    except (TypeError, ValueError):
        return str(getattr(exc, "reason", exc))


def translate(exc: Exception, what: str) -> Exception:
    """ApiException / connection errors -> the product's error types (one place)."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        status = exc.status or 0
        message = f"{what}: {status} {_status_message(exc)}"
        if status == 404:
            return NotFoundError(message)
        if status == 409:
            return ConcurrencyError(message)
        if status == 429 or status >= 500 or status == 0:
            return TemporaryError(message, delay=_retry_after(exc))
        return PermanentError(message)
    # urllib3 connection errors, timeouts, TLS hiccups: the API server may be restarting.
    return TemporaryError(f"{what}: {exc.__class__.__name__}: {exc}")


def _api_client(configuration: Any) -> Any:
    from kubernetes import client
    from urllib3.util.retry import Retry

    configuration.connection_pool_maxsize = CONNECTIONS
    # urllib3's default (3 retries, reads included) would send a GET whose answer timed out
    # three more times: 4 x the read timeout, a whole lease. As for the Azure SDKs: one
    # retry of a connection that failed, none of a read.
    configuration.retries = Retry(total=1, connect=1, read=0, status=0, other=0)
    return client.ApiClient(configuration)


class KubeClient:
    """A cluster, as the workflow needs it. Built from a kubeconfig (text or path)."""

    def __init__(self, api_client: Any, *, timeout: tuple[float, float] = REQUEST_TIMEOUT) -> None:
        from kubernetes import client

        self._api_client = api_client
        # (connect, read) seconds of every request; a watch reads for its own duration.
        self._timeout = timeout
        # Watches that ended before their time and were established again (see _watch).
        self.watch_early_ends = 0
        self._daemonsets_seen: dict[tuple[str, str], float] = {}
        self._core = client.CoreV1Api(api_client)
        self._apps = client.AppsV1Api(api_client)
        self._policy = client.PolicyV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)

    @classmethod
    def from_kubeconfig(
        cls,
        kubeconfig: str,
        *,
        proxy: str | None = None,
        no_proxy: Sequence[str] = (),
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> KubeClient:
        from kubernetes import client

        configuration = client.Configuration()
        load_kubeconfig(kubeconfig, configuration)
        _set_proxy(configuration, proxy, no_proxy)
        return cls(_api_client(configuration), timeout=timeout)

    @classmethod
    def from_azure_ad(
        cls,
        server: str,
        *,
        credential: Any,
        audience: str,
        ca_pem: str | None = None,
        proxy: str | None = None,
        no_proxy: Sequence[str] = (),
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> KubeClient:
        """An API server that accepts Entra ID tokens: a token of the app's identity for the
        server's Entra application, refreshed before it expires, instead of a kubeconfig."""
        import tempfile

        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = server.rstrip("/")
        if ca_pem:
            with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as fh:
                fh.write(ca_pem)
            configuration.ssl_ca_cert = fh.name
        scope = f"{audience}/.default"
        expires = [0.0]

        def refresh(conf: Any) -> None:
            import time

            # Renew five minutes early: a request must never carry a token that expires in flight.
            if time.time() < expires[0] - 300:
                return
            token = credential.get_token(scope)
            conf.api_key["authorization"] = token.token
            expires[0] = float(token.expires_on)

        configuration.api_key_prefix["authorization"] = "Bearer"
        configuration.refresh_api_key_hook = refresh  # type: ignore[assignment]
        _set_proxy(configuration, proxy, no_proxy)
        return cls(_api_client(configuration), timeout=timeout)

    @property
    def custom(self) -> Any:
        return self._custom

    def _json(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            resp = fn(*args, _preload_content=False, _request_timeout=self._timeout, **kwargs)
        except Exception as exc:
            raise translate(exc, what) from exc
        data = resp.data
        return json.loads(data) if data else {}

    def server_version(self) -> str:
        """The API server's gitVersion (``GET /version``)."""
        from kubernetes import client

        data = self._json("get version", client.VersionApi(self._api_client).get_code)
        return str(data.get("gitVersion", ""))

    # ---- nodes ------------------------------------------------------------------------
    def get_node(self, name: str) -> Node:
        return Node(self._json(f"get node {name}", self._core.read_node, name))

    def list_nodes(self, *, label_selector: str | None = None) -> list[Node]:
        kwargs = {"label_selector": label_selector} if label_selector else {}
        data = self._json("list nodes", self._core.list_node, **kwargs)
        return [Node(item) for item in data.get("items", [])]

    def unavailable_nodes(
        self, label_selector: str | None = None, *, ignore: Collection[str] = (), whole: bool = False
    ) -> list[Node]:
        """The nodes (matching ``label_selector``) that are cordoned or not Ready, except
        those named in ``ignore``.

        One list request for the ``Table`` form without objects: a row per node with its
        name and kubectl's STATUS, a tenth of the bytes of the Node objects and far less to
        decode. The answer is views (``node_status_view``); with ``whole``, the nodes found
        are read whole (for annotations and providerID): one by one when few, else by one
        plain list.
        """
        query: list[tuple[str, str]] = [("includeObject", "None")]
        if label_selector:
            query.append(("labelSelector", label_selector))
        data = self._get_json("list nodes", "/api/v1/nodes", query, accept=TABLE_ACCEPT)
        ignored = set(ignore)
        if data.get("kind") != "Table":  # a server that ignored the Accept header: whole objects
            nodes = (Node(item) for item in data.get("items") or [])
            return [n for n in nodes if n.name not in ignored and (n.unschedulable or not n.ready)]
        # Views only for the few rows that matter: building one per node would cost more
        # than the request.
        found = [
            node_status_view(name, ready=ready, unschedulable=cordoned)
            for name, ready, cordoned in node_statuses(data)
            if name not in ignored and (cordoned or not ready)
        ]
        if not whole or not found:
            return found
        if len(found) > MAX_SINGLE_READS:
            names = {n.name for n in found}
            candidates = [n for n in self.list_nodes(label_selector=label_selector) if n.name in names]
        else:
            candidates = []
            for n in found:
                try:
                    candidates.append(self.get_node(n.name))
                except NotFoundError:
                    continue  # deleted since it was listed
        # The whole objects are newer than the rows: they decide.
        return [n for n in candidates if n.unschedulable or not n.ready]

    def _get_json(self, what: str, path: str, query: Sequence[tuple[str, str]], *, accept: str) -> Any:
        """A GET with query parameters the generated API methods do not take (includeObject)."""
        from kubernetes.client.exceptions import ApiException

        try:
            request = self._api_client.param_serialize(
                method="GET",
                resource_path=path,
                query_params=list(query),
                header_params={"Accept": accept},
                auth_settings=["BearerToken"],
            )
            resp = self._api_client.call_api(*request, _request_timeout=self._timeout)
            resp.read()
            if not 200 <= resp.status <= 299:
                raise ApiException.from_response(http_resp=resp, body=None, data=None)
        except Exception as exc:
            raise translate(exc, what) from exc
        return json.loads(resp.data) if resp.data else {}

    def patch_node(self, name: str, patch: Mapping[str, Any]) -> Node:
        # The client sends a dict body as a strategic merge patch, as kubectl cordon does.
        return Node(self._json(f"patch node {name}", self._core.patch_node, name, dict(patch)))

    def cordon(self, name: str, *, run_id: str, state: str) -> Node:
        return self.patch_node(name, cordon_patch(run_id, state))

    def uncordon(self, name: str, *, state: str, patched_at: str | None = None) -> Node:
        return self.patch_node(name, uncordon_patch(state, patched_at))

    def annotate_node(self, name: str, annotations: Mapping[str, str | None]) -> Node:
        return self.patch_node(name, {"metadata": {"annotations": dict(annotations)}})

    # ---- pods -------------------------------------------------------------------------
    def list_pods_on_node(self, node: str) -> list[Pod]:
        data = self._json(
            f"list pods on {node}",
            self._core.list_pod_for_all_namespaces,
            field_selector=f"spec.nodeName={node}",
        )
        return [Pod(item) for item in data.get("items", [])]

    def list_pods_on_nodes(self, nodes: Collection[str]) -> dict[str, list[Pod]]:
        """The pods on each of ``nodes``: one list per node when few, else one list of every
        pod in the cluster (a plan of a whole pool would otherwise be a request per node)."""
        wanted = set(nodes)
        if len(wanted) <= MAX_SINGLE_READS:
            return {name: self.list_pods_on_node(name) for name in sorted(wanted)}
        data = self._json("list pods", self._core.list_pod_for_all_namespaces)
        out: dict[str, list[Pod]] = {name: [] for name in wanted}
        for item in data.get("items", []):
            node = (item.get("spec") or {}).get("nodeName")
            if node in wanted:
                out[node].append(Pod(item))
        return out

    def list_pods_in_namespaces(
        self, namespaces: Collection[str], nodes: Collection[str]
    ) -> dict[str, list[Pod]]:
        """The pods of ``namespaces`` on each of ``nodes``: one list per namespace, for reads
        that only care about some namespaces (those with budgets) across many nodes, where a
        list of every pod in the cluster would carry far more than is needed."""
        wanted = set(nodes)
        out: dict[str, list[Pod]] = {name: [] for name in wanted}
        for namespace in sorted(set(namespaces)):
            data = self._json(f"list pods in {namespace}", self._core.list_namespaced_pod, namespace)
            for item in data.get("items", []):
                node = (item.get("spec") or {}).get("nodeName")
                if node in wanted:
                    out[node].append(Pod(item))
        return out

    def replica_set_owner(self, namespace: str, name: str) -> str | None:
        """The workload owning a ReplicaSet ("Deployment/web"), or None for a bare one:
        operators know their Deployments, not the hashed ReplicaSet names."""
        data = self._json(
            f"get replicaset {namespace}/{name}", self._apps.read_namespaced_replica_set, name, namespace
        )
        for ref in (data.get("metadata") or {}).get("ownerReferences") or []:
            if ref.get("controller"):
                return f"{ref['kind']}/{ref['name']}"
        return None

    def wait_for_pods_gone(self, node: str, uids: Collection[str], *, timeout: float) -> bool:
        """Watch the node's pods until none of ``uids`` is left, at most ``timeout`` seconds.

        One list and one watch request, instead of listing again every few seconds: the
        step learns that the last pod went the moment it goes.
        """
        selector = f"spec.nodeName={node}"
        left = set(uids)

        def look() -> str | None:
            """List the node's pods: the resourceVersion to watch from, None if none is left."""
            data = self._json(
                f"list pods on {node}", self._core.list_pod_for_all_namespaces, field_selector=selector
            )
            left.intersection_update(str(item["metadata"].get("uid", "")) for item in data.get("items", []))
            return str(data.get("metadata", {}).get("resourceVersion", "")) if left else None

        version = look()
        if version is None:
            return True
        for event in self._watch(
            f"watch pods on {node}",
            self._core.list_pod_for_all_namespaces,
            version,
            timeout,
            relist=look,
            field_selector=selector,
        ):
            if event.get("type") == "DELETED":
                left.discard(str(event.get("object", {}).get("metadata", {}).get("uid", "")))
                if not left:
                    return True
        return not left

    def wait_for_node(self, name: str, done: Callable[[Node], bool], *, timeout: float) -> Node:
        """Watch one Node until ``done`` says so, at most ``timeout`` seconds; returns the
        last version seen (check ``done`` again: it may have timed out)."""
        node = self.get_node(name)
        if done(node):
            return node
        for event in self._watch(
            f"watch node {name}",
            self._core.list_node,
            node.resource_version,
            timeout,
            # Too old to resume: a watch without a resourceVersion starts with the Node as
            # it is now (a synthetic ADDED event).
            relist=lambda: "",
            field_selector=f"metadata.name={name}",
        ):
            if event.get("type") in ("ADDED", "MODIFIED"):
                node = Node(event["object"])
                if done(node):
                    break
        return node

    def wait_for_nodes(
        self, names: Collection[str], done: Callable[[Node], bool], *, label_selector: str, timeout: float
    ) -> Iterator[Node]:
        """Each of the Nodes ``names`` (all carrying ``label_selector``) as soon as ``done``
        says so, for at most ``timeout`` seconds: those done already from one list of the
        selector, the others as one watch from that list sees them."""
        left = set(names)
        data = self._json("list nodes", self._core.list_node, label_selector=label_selector)
        for item in data.get("items") or []:
            node = Node(item)
            if node.name in left and done(node):
                left.discard(node.name)
                yield node
        if not left:
            return
        for event in self._watch(
            f"watch nodes {label_selector}",
            self._core.list_node,
            str((data.get("metadata") or {}).get("resourceVersion") or ""),
            timeout,
            relist=lambda: "",  # as in wait_for_node: the Nodes as they are now, as ADDED events
            label_selector=label_selector,
        ):
            if event.get("type") in ("ADDED", "MODIFIED"):
                node = Node(event["object"])
                if node.name in left and done(node):
                    left.discard(node.name)
                    yield node
                    if not left:
                        return

    def _watch(
        self,
        what: str,
        fn: Any,
        resource_version: str,
        timeout: float,
        *,
        relist: Callable[[], str | None] | None = None,
        **kwargs: Any,
    ) -> Iterator[dict[str, Any]]:
        """Watch events from ``resource_version`` for ``timeout`` seconds.

        A watch that ends sooner (the API server closing it, a proxy's idle timeout, a
        dropped connection) is established again from the last resourceVersion seen, after
        a back-off (tenacity's exponential strategy with jitter), and counted in
        ``watch_early_ends``: an early end must neither end the wait (its caller would look
        again at once, over and over) nor be retried without a pause. A watch whose
        resourceVersion is too old (``ERROR``, 410 Gone) starts again from ``relist()``,
        the caller's fresh list (None: the caller is done); without one the wait ends, and
        the caller looks again on its own. Only the first request's failure raises."""
        from kubernetes.watch.watch import iter_resp_lines

        if timeout <= 0:
            return
        deadline = time.monotonic() + timeout
        version = resource_version
        early = 0  # early ends in a row
        first = True
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            started, expired = time.monotonic(), False
            try:
                resp = fn(
                    watch=True,
                    resource_version=version,
                    # The server wants whole seconds; the read timeout ends sub-second waits.
                    timeout_seconds=max(1, math.ceil(remaining)),
                    allow_watch_bookmarks=True,
                    _preload_content=False,
                    _request_timeout=(self._timeout[0], remaining),
                    **kwargs,
                )
            except Exception as exc:
                if first:
                    raise translate(exc, what) from exc
                logger.info("%s could not be established again: %s", what, exc)
                resp = None
            first = False
            if resp is not None:
                try:
                    for line in iter_resp_lines(resp):
                        event = json.loads(line)
                        if event.get("type") == "ERROR":
                            expired = True
                            break
                        seen = ((event.get("object") or {}).get("metadata") or {}).get("resourceVersion")
                        if seen:
                            version = str(seen)
                        yield event
                        if time.monotonic() >= deadline:
                            return
                except Exception as exc:  # the read timeout (the wait is over), or the stream broke
                    logger.debug("%s ended: %s", what, exc)
                finally:
                    resp.release_conn()
            now = time.monotonic()
            if deadline - now <= WATCH_END_SLACK:
                return  # it ran its course
            if expired:
                if relist is None:
                    return
                fresh = relist()
                if fresh is None:
                    return
                version = fresh
            early = early + 1 if now - started < WATCH_BACKOFF_MAX else 1
            self.watch_early_ends += 1
            pause = min(watch_backoff(early), deadline - now)
            logger.info(
                "%s ended early, after %.1f s with %.1f s to go (%d early ends by this client); "
                "watching again in %.2f s",
                what,
                now - started,
                deadline - now,
                self.watch_early_ends,
                pause,
            )
            time.sleep(pause)

    def daemonset_exists(self, namespace: str, name: str) -> bool:
        seen = self._daemonsets_seen.get((namespace, name))
        if seen is not None and time.monotonic() - seen < DAEMONSET_SEEN_FOR:
            return True
        try:
            self._json(
                f"get daemonset {namespace}/{name}", self._apps.read_namespaced_daemon_set, name, namespace
            )
        except NotFoundError:
            self._daemonsets_seen.pop((namespace, name), None)
            return False
        self._daemonsets_seen[(namespace, name)] = time.monotonic()
        return True

    def list_pdbs(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """The PodDisruptionBudgets of ``namespace``, or of every namespace (one request)."""
        if namespace is None:
            data = self._json("list pdbs", self._policy.list_pod_disruption_budget_for_all_namespaces)
        else:
            data = self._json(
                f"list pdbs in {namespace}", self._policy.list_namespaced_pod_disruption_budget, namespace
            )
        return list(data.get("items", []))

    def evict(self, pod: Pod, *, grace_period_seconds: int | None = None) -> EvictionResult:
        from kubernetes.client.exceptions import ApiException

        body: dict[str, Any] = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": pod.name, "namespace": pod.namespace},
        }
        if grace_period_seconds is not None:
            body["deleteOptions"] = {"gracePeriodSeconds": grace_period_seconds}
        try:
            self._core.create_namespaced_pod_eviction(
                pod.name,
                pod.namespace,
                body,  # type: ignore[arg-type]  # a dict body is sent as-is, like the models
                _preload_content=False,
                _request_timeout=self._timeout,
            )
            return EvictionResult(evicted=True)
        except ApiException as exc:
            if exc.status == 404:
                return EvictionResult(evicted=False, gone=True)
            if exc.status == 429:
                return EvictionResult(
                    evicted=False, blocked_reason=_status_message(exc), retry_after=_retry_after(exc)
                )
            raise translate(exc, f"evict {pod.key}") from exc
        except Exception as exc:
            raise translate(exc, f"evict {pod.key}") from exc

    # ---- events -----------------------------------------------------------------------
    def record_event(
        self, node: str, *, reason: str, message: str, warning: bool = False, now: float
    ) -> bool:
        """A core/v1 Event on the Node, so ``kubectl describe node`` tells the story.
        Returns whether the API server took it."""
        stamp = iso(now)
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{node}.{uuid.uuid4().hex[:16]}", "namespace": "default"},
            "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node},
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": "vmss-node-patcher"},
            "reportingComponent": "vmss-node-patcher",
            "reportingInstance": "vmss-node-patcher",
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self._json(f"event on {node}", self._core.create_namespaced_event, "default", body)
        except (TemporaryError, PermanentError) as exc:
            # Events are for people; losing one must not stop a node's maintenance.
            logger.warning("could not record event %s on node %s: %s", reason, node, exc)
            return False
        return True


def record_events(
    kube: KubeClient, messages: Mapping[str, str], *, reason: str, warning: bool = False, now: float
) -> None:
    """One Event per node (node -> message), for a transition many nodes make at once.
    The first the API server does not take ends it: each of the rest would wait as long,
    in the request of whoever is recording them, for the same answer."""
    for i, (node, message) in enumerate(messages.items()):
        if not kube.record_event(node, reason=reason, message=message, warning=warning, now=now):
            if len(messages) > i + 1:
                logger.warning("event %s not recorded on %d more nodes", reason, len(messages) - i - 1)
            return
