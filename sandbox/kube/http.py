"""The HTTP layer of the simulated API server: routing, authentication, authorization and
the responses clients expect.

A stdlib ``ThreadingHTTPServer`` speaking HTTP/1.1 keep-alive routes ``/api`` and ``/apis``
paths to the store and renders discovery documents, typed lists, ``Table`` output for
kubectl, chunked watch streams and ``kind: Status`` errors whose codes, reasons and
messages follow the real apiserver's, because client code branches on them.
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import ssl
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from sandbox.kube.discovery import REVIEW_KINDS, SERVER_VERSION, discovery_document
from sandbox.kube.errors import (
    KubeError,
    bad_request,
    method_not_allowed,
    resource_not_found,
    unsupported_media_type,
    version_mismatch,
)
from sandbox.kube.eviction import parse_eviction
from sandbox.kube.objects import Obj
from sandbox.kube.patch import patch_types
from sandbox.kube.rbac import ADMIN, Authorizer, User, forbidden_message, verb_for
from sandbox.kube.rbac import Request as RbacRequest
from sandbox.kube.resources import BY_GVR, PODS, ResourceType
from sandbox.kube.selectors import FieldSelector, LabelSelector, parse_field_selector, parse_label_selector
from sandbox.kube.tables import partial_metadata, render_table, table_include_object

if TYPE_CHECKING:
    from sandbox.kube.server import KubeAPIServer

logger = logging.getLogger(__name__)

_DEFAULT_WATCH_TIMEOUT_S = 1800.0


@dataclass
class _Route:
    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None
    watch_path: bool


def _media_types(header: str) -> list[tuple[str, dict[str, str]]]:
    result = []
    for part in header.split(","):
        pieces = [p.strip() for p in part.split(";")]
        params = {}
        for p in pieces[1:]:
            if "=" in p:
                k, v = p.split("=", 1)
                params[k.strip()] = v.strip()
        result.append((pieces[0].lower(), params))
    return result


def _negotiate(accept: str) -> tuple[str, str]:
    """Returns (as, version): as is "" for the object itself, else Table / PartialObjectMetadata[List]."""
    for media, params in _media_types(accept or "application/json"):
        if media not in ("application/json", "*/*", "application/*", "application/yaml"):
            continue
        shape = params.get("as", "")
        if not shape:
            return "", ""
        if params.get("g") == "meta.k8s.io" and shape in (
            "Table",
            "PartialObjectMetadata",
            "PartialObjectMetadataList",
        ):
            return shape, params.get("v", "v1")
    return "", ""


class APIRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Idle keep-alive connections are dropped after this long, like Go's IdleTimeout.
    timeout = 120
    server_version = "kube-apiserver-sandbox"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        return

    @property
    def api(self) -> KubeAPIServer:
        return cast(APIHTTPServer, self.server).api

    def _serve_command(self) -> None:
        self._handle(self.command)

    # http.server looks up do_<METHOD>; the method is in self.command, so one entry serves all.
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve_command  # noqa: N815

    # ---- plumbing

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunk = self.rfile.read(size)
                if len(chunk) < size:
                    raise ConnectionError("the client went away inside a chunked body")
                chunks.append(chunk)
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if len(raw) < length:
            # Half a request is never acted on (an apiserver waits for the rest, then drops it).
            raise ConnectionError(f"the client went away after {len(raw)} of {length} body bytes")
        return raw

    def _send_json(self, code: int, body: Any, *, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-cache, private")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _send_text(self, code: int, text: str) -> None:
        payload = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _send_error(self, err: KubeError) -> None:
        headers = {}
        if err.retry_after_seconds:
            headers["Retry-After"] = str(err.retry_after_seconds)
        self._send_json(err.code, err.status(), headers=headers)

    def _handle(self, method: str) -> None:
        self._status = 0
        self._logged = False
        self._url = urlsplit(self.path)
        # Always consume the body first: answering early would leave its bytes in the
        # keep-alive stream, where they would be parsed as the next request.
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        path = unquote(self._url.path).rstrip("/") or "/"
        query = {k: v[0] for k, v in parse_qs(self._url.query, keep_blank_values=True).items()}
        try:
            self._dispatch(method, path, query, body)
        except KubeError as err:
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, TimeoutError):
            self.close_connection = True
        except Exception as exc:
            logger.exception("sandbox kube-apiserver failed on %s %s", method, self.path)
            error = KubeError(
                500, "InternalError", f"Internal error occurred: {exc}", causes=[{"message": str(exc)}]
            )
            with suppress(OSError):
                self._send_error(error)
        finally:
            if not self._logged:
                self._log(self._status)

    def _log(self, status: int) -> None:
        self._logged = True
        self.api._log_request(
            self.command, self._url.path, self._url.query, status, self.headers.get("User-Agent", "")
        )

    def send_response(self, code: int, message: str | None = None) -> None:
        # Logged before the first byte goes out, so the entry exists once the client has its answer.
        self._status = code
        if not self._logged:
            self._log(code)
        super().send_response(code, message)

    def _authenticated(self) -> User | None:
        """The user behind the request's bearer token; None if it has none we know."""
        api = self.api
        if api.token is None and not api.identities:
            return ADMIN  # a server started without credentials trusts everyone
        header = self.headers.get("Authorization") or ""
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        for token, user in api.tokens():
            if hmac.compare_digest(presented.strip().encode(), token.encode()):
                return user
        return None

    def _dispatch(self, method: str, path: str, query: dict[str, str], body: bytes) -> None:
        if path in ("/healthz", "/readyz", "/livez") or path.startswith(("/healthz/", "/readyz/", "/livez/")):
            self._send_text(200, "ok")
            return
        if path == "/version":
            # Public info (system:public-info-viewer): the kubectl dispatcher asks before it has credentials.
            self._send_json(200, SERVER_VERSION)
            return
        user = self._authenticated()
        if user is None:
            self._send_error(KubeError(401, "Unauthorized", "Unauthorized", details=False))
            return
        if method in ("HEAD", "OPTIONS"):
            raise method_not_allowed()
        fault = self.api.faults.take(method, path)
        if fault is not None:
            raise fault
        # Discovery is every authenticated user's (system:discovery, system:basic-user).
        if self._discovery(method, path):
            return
        if self._access_review(method, path, body, user):
            return
        route = self._route(path)
        if route is None:
            raise resource_not_found()
        self._authorize(user, method, route, query)
        self._serve_resource(method, route, query, body)

    def _authorize(self, user: User, method: str, route: _Route, query: dict[str, str]) -> None:
        authorizer = self.api.authorizer
        if authorizer is None:
            return
        watch = route.watch_path or query.get("watch", "").lower() in ("true", "1")
        request = RbacRequest(
            verb=verb_for(method, named=route.name is not None, watch=watch),
            api_group=route.rt.group,
            resource=route.rt.plural,
            subresource=route.subresource or "",
            namespace=route.namespace or "",
            name=route.name or "",
        )
        if not authorizer.allowed(user, request):
            raise KubeError(
                403,
                "Forbidden",
                forbidden_message(user, request),
                name=route.name or "",
                group=route.rt.group,
                kind=route.rt.plural,
            )

    def _access_review(self, method: str, path: str, body: bytes, user: User) -> bool:
        """SelfSubjectAccessReview and SelfSubjectRulesReview: what ``kubectl auth can-i``
        (and ``--list``) asks, answered from the same rules that authorize requests."""
        prefix = "/apis/authorization.k8s.io/v1/"
        if not path.startswith(prefix) or path[len(prefix) :] not in REVIEW_KINDS:
            return False
        if method != "POST":
            raise method_not_allowed()
        try:
            review = json.loads(body or b"{}")
        except ValueError:
            raise bad_request("the review is not valid JSON") from None
        if not isinstance(review, dict):
            raise bad_request("the review must be an object")
        spec = review.get("spec") or {}
        authorizer = self.api.authorizer
        who = ADMIN if authorizer is None else user
        authorizer = authorizer or Authorizer()
        status: Obj
        if path.endswith("selfsubjectaccessreviews"):
            attrs = spec.get("resourceAttributes")
            if attrs is not None:
                request = RbacRequest(
                    verb=attrs.get("verb", ""),
                    api_group=attrs.get("group", ""),
                    resource=attrs.get("resource", ""),
                    subresource=attrs.get("subresource", ""),
                    namespace=attrs.get("namespace", ""),
                    name=attrs.get("name", ""),
                )
            else:
                plain = spec.get("nonResourceAttributes") or {}
                request = RbacRequest(
                    verb=plain.get("verb", ""), resource_request=False, path=plain.get("path", "")
                )
            allowed = authorizer.allowed(who, request)
            status = {"allowed": allowed}
            if allowed:
                status["reason"] = "RBAC: allowed by the roles bound to this user"
        else:
            resource_rules, non_resource_rules = authorizer.rules_for(who, spec.get("namespace", ""))
            status = {
                "resourceRules": resource_rules,
                "nonResourceRules": non_resource_rules,
                "incomplete": False,
            }
        answer = {
            "kind": REVIEW_KINDS[path[len(prefix) :]],
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": status,
        }
        self._send_json(201, answer)
        return True

    def _discovery(self, method: str, path: str) -> bool:
        document = discovery_document(path, server_address=f"{self.api.host}:{self.api.port}")
        if document is None:
            return False
        if method != "GET":
            raise method_not_allowed()
        self._send_json(200, document)
        return True

    @staticmethod
    def _route(path: str) -> _Route | None:
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        watch_path = bool(rest) and rest[0] == "watch"
        if watch_path:
            rest = rest[1:]
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            return None
        rt = BY_GVR.get((group, version, rest[0]))
        if rt is None or (rt.namespaced is False and namespace is not None):
            return None
        name = rest[1] if len(rest) >= 2 else None
        sub = rest[2] if len(rest) == 3 else None
        if sub is not None and not (
            (sub == "status" and rt.has_status) or (sub == "eviction" and rt is PODS)
        ):
            return None
        return _Route(rt, namespace, name, sub, watch_path)

    # ---- resources

    def _decode(self, body: bytes) -> Any:
        content_type = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip().lower()
        if content_type == "application/vnd.kubernetes.protobuf":
            raise unsupported_media_type(["application/json", "application/yaml"])
        try:
            if content_type == "application/yaml":
                import yaml

                return yaml.safe_load(body.decode() or "null")
            return json.loads(body or b"null")
        except Exception as exc:
            raise bad_request(f"the body of the request could not be decoded: {exc}") from None

    def _check_type(self, rt: ResourceType, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise bad_request("the body of the request must be a JSON object")
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if api_version and api_version != rt.api_version:
            raise version_mismatch(api_version, rt.api_version)
        if kind and kind != rt.kind:
            raise bad_request(f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})")
        return body

    def _render_one(self, rt: ResourceType, obj: Obj, query: dict[str, str]) -> Obj:
        shape, version = _negotiate(self.headers.get("Accept", ""))
        if shape == "Table":
            meta = {"resourceVersion": obj["metadata"].get("resourceVersion", "")}
            return render_table(
                rt,
                [obj],
                version=version,
                include_object=table_include_object(query),
                list_meta=meta,
            )
        if shape == "PartialObjectMetadata":
            return partial_metadata(obj, version)
        return obj

    def _serve_resource(self, method: str, route: _Route, query: dict[str, str], body: bytes) -> None:
        store = self.api.store
        rt, ns, name = route.rt, route.namespace, route.name
        dry_run = bool(query.get("dryRun"))
        if method == "GET" and name is None:
            self._serve_list(route, query)
            return
        if route.watch_path or (route.subresource == "eviction" and method != "POST"):
            raise method_not_allowed()
        if rt.namespaced and ns is None:
            # Only lists and watches span namespaces; everything else goes through one.
            raise method_not_allowed() if name is None else resource_not_found()
        if method == "GET" and name is not None:
            obj = store.api_get(rt, ns, name)
            self._send_json(200, self._render_one(rt, obj, query))
        elif method == "POST" and name is None:
            obj = store.api_create(rt, ns, self._check_type(rt, self._decode(body)), dry_run=dry_run)
            self._send_json(201, self._render_one(rt, obj, query))
        elif method == "POST" and route.subresource == "eviction" and name is not None and ns is not None:
            self._serve_eviction(ns, name, self._decode(body), dry_run)
        elif method == "PUT" and name is not None:
            obj, created = store.api_update(
                rt,
                ns,
                name,
                self._check_type(rt, self._decode(body)),
                subresource=route.subresource,
                dry_run=dry_run,
            )
            self._send_json(201 if created else 200, self._render_one(rt, obj, query))
        elif method == "PATCH" and name is not None and route.subresource != "eviction":
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if content_type not in patch_types(rt):
                raise unsupported_media_type(patch_types(rt))
            obj, created = store.api_patch(
                rt,
                ns,
                name,
                subresource=route.subresource,
                content_type=content_type,
                raw=body,
                dry_run=dry_run,
                field_manager=query.get("fieldManager"),
            )
            self._send_json(201 if created else 200, self._render_one(rt, obj, query))
        elif method == "DELETE" and route.subresource is None:
            options = self._delete_options(body, query)
            dry_run = dry_run or bool(options.get("dryRun"))
            if name is None:
                labels = parse_label_selector(query.get("labelSelector"))
                fields = parse_field_selector(query.get("fieldSelector"), rt)
                items = store.api_delete_collection(rt, ns, labels, fields, options, dry_run=dry_run)
                self._send_json(
                    200,
                    {"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": {}, "items": items},
                )
                return
            obj, gone = store.api_delete(rt, ns, name, options, dry_run=dry_run)
            if gone and not rt.return_deleted_object:
                self._send_json(
                    200,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Success",
                        "details": {
                            "name": name,
                            "group": rt.group,
                            "kind": rt.plural,
                            "uid": obj["metadata"]["uid"],
                        },
                    },
                )
            else:
                self._send_json(200, obj)
        else:
            raise method_not_allowed()

    def _delete_options(self, body: bytes, query: dict[str, str]) -> Obj:
        options: Obj = {}
        if body.strip():
            decoded = self._decode(body)
            if decoded is not None and not isinstance(decoded, dict):
                raise bad_request("DeleteOptions must be a JSON object")
            options = decoded or {}
        if "gracePeriodSeconds" in query:
            try:
                options["gracePeriodSeconds"] = int(query["gracePeriodSeconds"])
            except ValueError:
                raise bad_request(f"invalid gracePeriodSeconds: {query['gracePeriodSeconds']}") from None
        if "propagationPolicy" in query:
            options["propagationPolicy"] = query["propagationPolicy"]
        return options

    def _serve_eviction(self, namespace: str, name: str, body: Any, dry_run: bool) -> None:
        request = parse_eviction(body, namespace=namespace, name=name, dry_run=dry_run)
        result = self.api.store.evict(
            namespace,
            name,
            grace_period_seconds=request.grace_period_seconds,
            dry_run=request.dry_run,
            preconditions=request.preconditions,
        )
        self._send_json(201, result)

    def _serve_list(self, route: _Route, query: dict[str, str]) -> None:
        rt = route.rt
        labels = parse_label_selector(query.get("labelSelector"))
        fields = parse_field_selector(query.get("fieldSelector"), rt)
        if route.watch_path or query.get("watch", "").lower() in ("1", "true"):
            self._serve_watch(route, query, labels, fields)
            return
        try:
            limit = int(query.get("limit") or 0)
        except ValueError:
            raise bad_request(f"invalid limit: {query.get('limit')}") from None
        items, rv, token, remaining = self.api.store.api_list(
            rt, route.namespace, labels, fields, limit=limit, continue_token=query.get("continue") or None
        )
        list_meta: Obj = {"resourceVersion": rv}
        if token:
            list_meta["continue"] = token
            list_meta["remainingItemCount"] = remaining
        shape, version = _negotiate(self.headers.get("Accept", ""))
        if shape == "Table":
            body = render_table(
                rt,
                items,
                version=version,
                include_object=table_include_object(query),
                list_meta=list_meta,
            )
        elif shape in ("PartialObjectMetadataList", "PartialObjectMetadata"):
            body = {
                "kind": "PartialObjectMetadataList",
                "apiVersion": f"meta.k8s.io/{version}",
                "metadata": list_meta,
                "items": [partial_metadata(o, version) for o in items],
            }
        else:
            body = {
                "kind": f"{rt.kind}List",
                "apiVersion": rt.api_version,
                "metadata": list_meta,
                "items": items,
            }
        self._send_json(200, body)

    def _serve_watch(
        self, route: _Route, query: dict[str, str], labels: LabelSelector, fields: FieldSelector
    ) -> None:
        rt = route.rt
        timeout = _DEFAULT_WATCH_TIMEOUT_S
        if query.get("timeoutSeconds"):
            try:
                timeout = float(query["timeoutSeconds"])
            except ValueError:
                raise bad_request(f"invalid timeoutSeconds: {query['timeoutSeconds']}") from None
        if self.api.watch_max_seconds is not None:
            timeout = min(timeout, self.api.watch_max_seconds)
        since = query.get("resourceVersion")
        if since and not since.isdigit():
            raise bad_request(f"invalid resource version: {since}")
        shape, version = _negotiate(self.headers.get("Accept", ""))
        include_object = table_include_object(query) if shape == "Table" else ""
        events = self.api.store.watch(
            rt,
            route.namespace,
            labels,
            fields,
            since=since,
            deadline=time.monotonic() + timeout,
            stopped=self.api._stopping,
            send_initial_events=query.get("sendInitialEvents", "").lower() == "true",
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        first_table = True
        for batch in events:
            lines = []
            for event in batch:
                if shape == "Table" and event["type"] != "ERROR":
                    table = render_table(
                        rt,
                        [event["object"]],
                        version=version,
                        include_object=include_object,
                        list_meta={"resourceVersion": event["object"]["metadata"].get("resourceVersion", "")},
                        with_columns=first_table,
                    )
                    first_table = False
                    lines.append(json.dumps({"type": event["type"], "object": table}, separators=(",", ":")))
                else:
                    lines.append(json.dumps(event, separators=(",", ":")))
            chunk = ("\n".join(lines) + "\n").encode()
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")


class APIHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    api: KubeAPIServer

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        # Without this, Nagle + delayed ACK add ~40 ms to every small keep-alive request.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the connection's own thread, so that a slow or
        # broken client cannot stall the accept loop.
        conn = request
        context = self.api._ssl_context
        if context is not None:
            try:
                request.settimeout(10)
                conn = context.wrap_socket(request, server_side=True)
                conn.settimeout(None)
            except (OSError, ssl.SSLError):
                return
        self.api._track(conn, add=True)
        try:
            handler = cast(Callable[[Any, Any, APIHTTPServer], object], self.RequestHandlerClass)
            handler(conn, client_address, self)
        finally:
            self.api._track(conn, add=False)
            if conn is not request:
                with suppress(OSError):
                    conn.close()
