"""GitHub webhook signatures and the push payload wrapper."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from shared.errors import ValidationError
from shared.gitops.github import PushEvent, resolve_secrets, sign, verify_signature

PAYLOADS = Path(__file__).parent.parent / "payloads"
VECTOR = json.loads((PAYLOADS / "github-push-headers.json").read_text())["_hmac_test_vector"]


def push_payload(**changes: Any) -> dict[str, Any]:
    data = json.loads((PAYLOADS / "github-push.json").read_text())
    data.update(changes)
    return data


# ---- signatures ----------------------------------------------------------------------------------


def test_githubs_published_test_vector_verifies() -> None:
    assert VECTOR["X-Hub-Signature-256"] == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )
    body = VECTOR["payload"].encode()
    assert sign(VECTOR["secret"], body) == VECTOR["X-Hub-Signature-256"]
    assert verify_signature(body, VECTOR["X-Hub-Signature-256"], [VECTOR["secret"]])


def test_either_secret_verifies_during_a_rotation() -> None:
    body = b'{"zen": "x"}'
    old, new = "old-secret", "new-secret"
    assert verify_signature(body, sign(old, body), [new, old])
    assert verify_signature(body, sign(new, body), [new, old])
    assert not verify_signature(body, sign("third", body), [new, old])


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (None, "missing"),
        ("", "empty"),
        ("sha256=", "no digest"),
        ("sha1=7d38cdd689735b008b3c702edd92eea23791c5f6", "legacy sha1 is never accepted"),
        ("757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17", "no prefix"),
        ("sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e18", "one digit off"),
        ("sha256=ünïcödé", "non-ASCII"),
    ],
)
def test_a_missing_or_wrong_signature_does_not_verify(header: str | None, why: str) -> None:
    assert not verify_signature(VECTOR["payload"].encode(), header, [VECTOR["secret"]]), why


def test_a_signature_over_other_bytes_does_not_verify() -> None:
    body = VECTOR["payload"].encode()
    assert not verify_signature(body + b" ", VECTOR["X-Hub-Signature-256"], [VECTOR["secret"]])


def test_no_configured_secret_verifies_nothing() -> None:
    body = b"x"
    assert not verify_signature(body, sign("", body), [])
    assert not verify_signature(body, sign("", body), [""])


def test_secrets_come_from_the_named_settings_and_empty_ones_are_skipped() -> None:
    env = {"GH_SECRET": " s1 ", "GH_SECRET_NEXT": "", "OTHER": "x"}
    assert resolve_secrets(["GH_SECRET", "GH_SECRET_NEXT", "MISSING"], env) == ["s1"]


# ---- the push payload -----------------------------------------------------------------------------


def test_the_sample_push_reads_as_a_branch_push_with_its_changed_files() -> None:
    push = PushEvent.from_json(push_payload())
    assert push.ref == "refs/heads/main"
    assert push.branch == "main" and push.tag is None
    assert push.after == "9c1e3f0a2b4d6e8f0a1b2c3d4e5f60718293a4b5"
    assert not (push.created or push.deleted or push.forced)
    assert push.repository.full_name == "Octocoders/fleet-gitops"
    assert "git@github.com:Octocoders/fleet-gitops.git" in push.repository.urls
    assert push.changes.paths == {
        "clusters/prod/nodepatch/image-1.29.20240601.yaml",
        "clusters/prod/kustomization.yaml",
    }
    assert push.after in push.commit_ids


def commits(n: int) -> list[dict[str, Any]]:
    return [{"id": f"{i:040x}", "added": [f"apps/{i}.yaml"], "removed": [], "modified": []} for i in range(n)]


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"forced": True}, "force push"),
        ({"created": True}, "new ref"),
        ({"commits": []}, "lists no commits"),
        ({"commits": commits(20)}, "at most 20"),
        ({"commits": commits(3), "size": 7}, "has 7 commits but lists 3"),
        ({"commits": commits(3), "distinct_size": 4}, "has 4 commits"),
        ({"commits": [{"id": "a" * 40}]}, "does not list its files"),
        ({"deleted": True, "after": "0" * 40, "commits": []}, "deleted"),
    ],
)
def test_when_the_payload_cannot_tell_what_changed_the_change_set_is_unknown(
    changes: dict[str, Any], needle: str
) -> None:
    result = PushEvent.from_json(push_payload(**changes)).changes
    assert result.paths is None
    assert needle in result.reason


def test_nineteen_listed_commits_are_still_a_complete_change_set() -> None:
    result = PushEvent.from_json(push_payload(commits=commits(19), size=19)).changes
    assert result.paths is not None and len(result.paths) == 19


def test_tags_and_deletions_are_recognised() -> None:
    tag = PushEvent.from_json(push_payload(ref="refs/tags/v1.2.0", created=True, commits=[]))
    assert tag.tag == "v1.2.0" and tag.branch is None
    gone = PushEvent.from_json(push_payload(deleted=True, after="0" * 40, commits=[], head_commit=None))
    assert gone.deleted


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.pop("ref"), "'ref'"),
        (lambda d: d.update(ref="main"), "full ref name"),
        (lambda d: d.update(ref=7), "'ref'"),
        (lambda d: d.update(forced="yes"), "'forced'"),
        (lambda d: d.update(commits={"a": 1}), "'commits'"),
        (lambda d: d.update(commits=[{"id": "x", "added": "apps/x"}]), "'added'"),
        (lambda d: d.update(size=-1), "'size'"),
        (lambda d: d.pop("repository"), "repository"),
        (lambda d: d.update(repository={"full_name": "a/b"}), "no URL"),
        (lambda d: d.update(head_commit=[]), "head_commit"),
    ],
)
def test_a_malformed_push_is_refused_with_the_field_named(mutate: Any, needle: str) -> None:
    data = copy.deepcopy(push_payload())
    mutate(data)
    with pytest.raises(ValidationError, match=needle):
        PushEvent.from_json(data)


@pytest.mark.parametrize("data", [None, [], "push", 3])
def test_a_push_must_be_a_json_object(data: Any) -> None:
    with pytest.raises(ValidationError):
        PushEvent.from_json(data)
