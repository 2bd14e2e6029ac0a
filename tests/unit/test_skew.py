"""The Kubernetes version-skew guard for node images."""

from __future__ import annotations

import pytest

from shared.skew import skew_problem


@pytest.mark.parametrize(
    ("kubelet", "apiserver", "problem"),
    [
        ("v1.31.4", "v1.31.9", None),
        ("1.28.0", "v1.31.2", None),  # three minors older: allowed
        ("v1.27.3", "v1.31.0", "4 minor versions older"),
        ("v1.32.0", "v1.31.5", "newer than the API server"),
        ("v1.23.0", "v1.25.0", None),  # two minors below 1.25: allowed
        ("v1.22.0", "v1.25.0", "allows 2"),
        ("v2.0.0", "v1.31.0", "newer"),
    ],
)
def test_skew_policy(kubelet: str, apiserver: str, problem: str | None) -> None:
    found = skew_problem(kubelet=kubelet, apiserver=apiserver)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_unparseable_versions_are_rejected() -> None:
    with pytest.raises(ValueError, match="not a Kubernetes version"):
        skew_problem(kubelet="latest", apiserver="v1.31.0")
