"""The outside world behind small clients: Kubernetes (``kube``, ``kube_objects``),
Compute (``compute``), the work queue (``workqueue``) and notifications (``notify``).
They import no domain module (rollout, triggers, gitops): the domain calls them."""
