"""The Kubernetes version skew policy, applied to node images before they are rolled.

A kubelet must never be newer than the API server, and may be at most three minor
versions older (two when the kubelet is older than 1.25).
Source: https://kubernetes.io/releases/version-skew-policy/
"""

from __future__ import annotations

import re

VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")


def minor_version(version: str) -> tuple[int, int]:
    match = VERSION_RE.match(version.strip())
    if not match:
        raise ValueError(f"not a Kubernetes version: {version!r}")
    return int(match.group(1)), int(match.group(2))


def skew_problem(*, kubelet: str, apiserver: str) -> str | None:
    """Why a node with this kubelet must not join this control plane, or None if it may."""
    k_major, k_minor = minor_version(kubelet)
    a_major, a_minor = minor_version(apiserver)
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
    return None
