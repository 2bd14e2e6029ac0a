"""The Kubernetes version-skew guard for node images."""

from __future__ import annotations

import pytest

from shared.rollout.skew import same_release, skew_problem


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


@pytest.mark.parametrize(
    ("kubelet", "apiserver", "needle"),
    [
        ("latest", "v1.31.0", "'latest' is not a Kubernetes version"),
        ("", "v1.31.0", "'' is not a Kubernetes version"),
        ("v1.31.0", "unknown", "API server reports 'unknown'"),
    ],
)
def test_an_unreadable_version_is_a_refusal_with_the_reason(
    kubelet: str, apiserver: str, needle: str
) -> None:
    # Never an exception: the event that brought the image would be redelivered for a day.
    found = skew_problem(kubelet=kubelet, apiserver=apiserver)
    assert found is not None and needle in found


@pytest.mark.parametrize(
    ("kubelet", "nodes", "problem"),
    [
        ("v1.31.4", {"n1": "v1.30.9", "n2": "v1.31.0"}, None),  # one minor above the oldest
        ("v1.31.4", {"n1": "v1.31.4"}, None),
        ("v1.31.4", {"n1": "v1.29.7", "n2": "v1.30.1"}, "node n1 runs v1.29.7"),  # skips 1.30
        ("v1.31.4", {"n1": "", "n2": "v1.30.2"}, None),  # a node that does not say is no bar
        ("v1.31.4", {}, None),
    ],
)
def test_the_new_kubelet_is_at_most_one_minor_above_the_nodes(
    kubelet: str, nodes: dict[str, str], problem: str | None
) -> None:
    found = skew_problem(kubelet=kubelet, apiserver="v1.31.9", nodes=nodes)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found and "one minor version at a time" in found


@pytest.mark.parametrize(
    ("reported", "tag", "same"),
    [
        ("v1.31.4", "1.31.4", True),
        ("v1.31.4+k3s1", "v1.31.4", True),
        ("v1.31.4", "1.31", True),
        ("v1.31.3", "1.31.4", False),
        ("v1.30.4", "1.31", False),
        ("", "1.31.4", False),
    ],
)
def test_a_reported_kubelet_is_the_release_a_tag_names(reported: str, tag: str, same: bool) -> None:
    assert same_release(reported, tag) is same
