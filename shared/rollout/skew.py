"""The Kubernetes version skew policy, applied to node images before they are rolled.

A kubelet must never be newer than the API server, and may be at most three minor
versions older (two when the kubelet is older than 1.25); and, as the control plane,
nodes move up one minor version at a time.
Source: https://kubernetes.io/releases/version-skew-policy/
"""

from __future__ import annotations

import re
from collections.abc import Mapping

VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")


def minor_version(version: str) -> tuple[int, int]:
    match = VERSION_RE.match(version.strip())
    if not match:
        raise ValueError(f"not a Kubernetes version: {version!r}")
    return int(match.group(1)), int(match.group(2))


def skew_problem(*, kubelet: str, apiserver: str, nodes: Mapping[str, str] | None = None) -> str | None:
    """Why a node with this kubelet must not join this control plane, or None if it may.

    ``nodes``: the kubelet each node to be patched runs now (name -> version); the new
    one may be at most one minor above the oldest of them, since nodes, like the control
    plane, move up one minor at a time. A version that cannot be read is a refusal with
    the reason, never an exception: the caller's signal would be redelivered for nothing.
    """
    try:
        k_major, k_minor = minor_version(kubelet)
    except ValueError:
        return f"the image's kubelet version {kubelet!r} is not a Kubernetes version (expected like v1.31.4)"
    try:
        a_major, a_minor = minor_version(apiserver)
    except ValueError:
        return f"the API server reports {apiserver!r}, which is not a Kubernetes version"
    if (k_major, k_minor) > (a_major, a_minor):
        return f"kubelet {kubelet} would be newer than the API server {apiserver}"
    allowed = 3 if (k_major, k_minor) >= (1, 25) else 2
    if k_major == a_major and a_minor - k_minor > allowed:
        return (
            f"kubelet {kubelet} would be {a_minor - k_minor} minor versions older than the API server "
            f"{apiserver}; the skew policy allows {allowed}"
        )
    if k_major != a_major:
        return f"kubelet {kubelet} and API server {apiserver} differ in major version"
    return _jump_problem(kubelet, (k_major, k_minor), nodes or {})


def _jump_problem(kubelet: str, new: tuple[int, int], nodes: Mapping[str, str]) -> str | None:
    current: dict[str, tuple[int, int]] = {}
    for name, version in nodes.items():
        try:
            current[name] = minor_version(version)
        except ValueError:
            continue  # a node that does not say (not registered yet) has nothing to skip
    if not current:
        return None
    oldest = min(current, key=lambda name: current[name])
    major, minor = current[oldest]
    if new[0] != major or new[1] - minor > 1:
        return (
            f"kubelet {kubelet} would skip a minor version: node {oldest} runs {nodes[oldest]}, "
            "and kubelets move up one minor version at a time"
        )
    return None


def same_release(reported: str, expected: str) -> bool:
    """Whether a node's reported kubelet is the release an image's tag names: the numbers
    the tag gives (major.minor, or major.minor.patch) match; a distribution suffix
    (``+k3s1``, ``-eks-...``) is not part of the release."""
    got, want = VERSION_RE.match(reported.strip()), VERSION_RE.match(expected.strip())
    if not got or not want:
        return False
    return all(w is None or g == w for g, w in zip(got.groups(), want.groups(), strict=True))
