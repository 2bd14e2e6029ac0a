"""A simulated kube-apiserver that real clients cannot tell from the real one (for what we use).

No real kube-apiserver can be installed on the machines this project runs on, and the
PyPI mocks ignore exactly what the patcher depends on (resourceVersions, selectors,
evictions and PodDisruptionBudgets). So the sandbox serves the Kubernetes REST API itself,
over HTTPS with a bearer token, and the production code talks to it through the unmodified
``kubernetes`` client, and the tests through the real ``kubectl``.

The layers, from the wire down:

* ``server`` (``KubeAPIServer``): the server, its credentials, request log and kubeconfigs;
  ``http``: routing, authentication, RBAC (``rbac``), content negotiation, watch streams,
  ``Status`` bodies; ``discovery`` and ``tables`` (what kubectl reads); ``faults``.
* ``registry`` (``KubeStore``): what each verb does to objects, with the controllers whose
  effects the patcher observes folded in; the per-kind rules are ``strategy``, the patch
  formats ``patch``, the eviction subresource ``eviction``, the disruption controller
  ``controllers``.
* ``store`` (``ObjectStore``): objects, resourceVersions, indexes, the watch log.
* ``resources``, ``errors``, ``objects``, ``selectors``: the vocabulary the layers share.

Beside the API server, the rest of the cluster: the scheduler and kubelets (``kubelet``)
and Flux's controllers (``flux``).

Where the real apiserver's behaviour was looked up (patch handler, eviction REST, disruption
controller, generic server responses), the comments name the Go function being mirrored.
"""
