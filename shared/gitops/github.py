"""GitHub webhooks: signature verification and a typed view of the push payload.

Why it looks like this:

* The signature is an HMAC-SHA256 of the *exact raw body* with the webhook secret,
  sent as ``X-Hub-Signature-256: sha256=<hex>``. It is checked before anything else
  reads the body, with ``hmac.compare_digest`` against every configured secret (two
  during a rotation) without stopping at the first match, so the time taken says
  nothing about which secret, or how much of a signature, was right. The legacy SHA-1
  header is never accepted.
* ``PushEvent`` is a thin, validated wrapper over the raw dict (as Powertools' data
  classes are): construction checks the fields the product relies on, so a property
  read later can never fail on a hostile payload; everything else stays in ``raw``.
* ``changed_paths`` answers "which files did this push change?" only when the payload
  can tell. GitHub lists at most 20 commits per push, and a force push, a new ref or a
  push without commits says nothing about what the cluster's copy differs from; the
  answer is then ``None`` with the reason, and callers must treat everything as changed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from shared.errors import ValidationError

SIGNATURE_HEADER = "X-Hub-Signature-256"
EVENT_HEADER = "X-GitHub-Event"
DELIVERY_HEADER = "X-GitHub-Delivery"
SIGNATURE_PREFIX = "sha256="
# GitHub puts at most this many commits into a push payload; more were pushed if it is reached.
MAX_LISTED_COMMITS = 20
ZERO_SHA = "0" * 40
BRANCH_PREFIX = "refs/heads/"
TAG_PREFIX = "refs/tags/"
REPOSITORY_URL_FIELDS = ("clone_url", "ssh_url", "git_url", "html_url", "svn_url", "url")


# ---- signatures -------------------------------------------------------------------------------


def sign(secret: str | bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return SIGNATURE_PREFIX + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, secrets: Sequence[str]) -> bool:
    """True if ``header`` is the signature of ``body`` under any of ``secrets``.

    Compared as bytes: ``compare_digest`` refuses non-ASCII ``str``, and a header is
    attacker-controlled text.
    """
    if not header or not secrets:
        return False
    given = header.strip().encode("utf-8", errors="replace")
    matched = False
    for secret in secrets:
        if not secret:
            continue
        # Every secret is checked (no short-circuit), so timing does not tell which one matched.
        matched |= hmac.compare_digest(sign(secret, body).encode("ascii"), given)
    return matched


def resolve_secrets(setting_names: Iterable[str], env: Mapping[str, str]) -> list[str]:
    """The secrets the configured app settings hold; empty settings are skipped (the second
    reference is usually empty outside a rotation)."""
    return [value for name in setting_names if (value := env.get(name, "").strip())]


# ---- the push payload -------------------------------------------------------------------------


def _str(data: Mapping[str, Any], key: str, *, required: bool = False) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise ValidationError(f"push payload field {key!r} must be a string")
    return value


def _bool(data: Mapping[str, Any], key: str) -> bool:
    value = data.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValidationError(f"push payload field {key!r} must be true or false")
    return value


def _paths(commit: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
    value = commit.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise ValidationError(f"commit field {key!r} must be a list of paths")
    return tuple(value)


@dataclass(frozen=True)
class Commit:
    raw: Mapping[str, Any]

    @property
    def id(self) -> str:
        return str(self.raw.get("id") or "")

    @property
    def lists_files(self) -> bool:
        """GitHub always sends added/removed/modified; a payload without them cannot tell."""
        return all(isinstance(self.raw.get(k), list) for k in ("added", "removed", "modified"))

    @property
    def paths(self) -> frozenset[str]:
        return frozenset(
            p for key in ("added", "removed", "modified") for p in (self.raw.get(key) or []) if p
        )


@dataclass(frozen=True)
class Repository:
    raw: Mapping[str, Any]

    @property
    def full_name(self) -> str:
        return str(self.raw.get("full_name") or self.raw.get("name") or "")

    @property
    def urls(self) -> tuple[str, ...]:
        """Every URL the payload gives for the repository (https, ssh, git, web)."""
        return tuple(u for key in REPOSITORY_URL_FIELDS if isinstance(u := self.raw.get(key), str) and u)


@dataclass(frozen=True)
class ChangeSet:
    """The files a push changed, or ``None`` with the reason the payload cannot tell."""

    paths: frozenset[str] | None
    reason: str = ""

    @property
    def known(self) -> bool:
        return self.paths is not None


@dataclass(frozen=True)
class PushEvent:
    """A ``push`` delivery. Build it with ``from_json``, which validates what is read later."""

    raw: Mapping[str, Any]

    @classmethod
    def from_json(cls, data: Any) -> PushEvent:
        if not isinstance(data, dict):
            raise ValidationError("push payload must be a JSON object")
        ref = _str(data, "ref", required=True)
        if not ref.startswith("refs/") or len(ref) <= len("refs/"):
            raise ValidationError("push payload field 'ref' must be a full ref name (refs/...)")
        for key in ("before", "after", "base_ref", "compare"):
            _str(data, key)
        for key in ("created", "deleted", "forced"):
            _bool(data, key)
        for key in ("size", "distinct_size"):
            value = data.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValidationError(f"push payload field {key!r} must be a count")
        commits = data.get("commits")
        if commits is not None:
            if not isinstance(commits, list) or not all(isinstance(c, dict) for c in commits):
                raise ValidationError("push payload field 'commits' must be a list of objects")
            for commit in commits:
                _str(commit, "id")
                for key in ("added", "removed", "modified"):
                    _paths(commit, key)
        head = data.get("head_commit")
        if head is not None and not isinstance(head, dict):
            raise ValidationError("push payload field 'head_commit' must be an object or null")
        repository = data.get("repository")
        if not isinstance(repository, dict):
            raise ValidationError("push payload has no repository object")
        if not Repository(repository).urls:
            raise ValidationError("push payload repository has no URL")
        return cls(data)

    # ---- the ref
    @property
    def ref(self) -> str:
        return str(self.raw["ref"])

    @property
    def branch(self) -> str | None:
        return self.ref[len(BRANCH_PREFIX) :] if self.ref.startswith(BRANCH_PREFIX) else None

    @property
    def tag(self) -> str | None:
        return self.ref[len(TAG_PREFIX) :] if self.ref.startswith(TAG_PREFIX) else None

    @property
    def before(self) -> str:
        return str(self.raw.get("before") or "")

    @property
    def after(self) -> str:
        """The commit the ref points at now (40 zeros when the ref was deleted)."""
        return str(self.raw.get("after") or "")

    @property
    def created(self) -> bool:
        return bool(self.raw.get("created"))

    @property
    def deleted(self) -> bool:
        return bool(self.raw.get("deleted")) or (self.after == ZERO_SHA and not self.commits)

    @property
    def forced(self) -> bool:
        return bool(self.raw.get("forced"))

    # ---- what changed
    @cached_property
    def commits(self) -> tuple[Commit, ...]:
        return tuple(Commit(c) for c in self.raw.get("commits") or [])

    @property
    def commit_ids(self) -> frozenset[str]:
        return frozenset(c.id for c in self.commits if c.id) | ({self.after} if self.after else set())

    @property
    def changes(self) -> ChangeSet:
        listed = len(self.commits)
        sizes = [s for s in (self.raw.get("size"), self.raw.get("distinct_size")) if isinstance(s, int)]
        if self.deleted:
            return ChangeSet(None, "the ref was deleted")
        if self.forced:
            return ChangeSet(None, "force push: the history the cluster has may have been rewritten")
        if self.created:
            return ChangeSet(None, "new ref: nothing to compare the cluster's copy with")
        if listed == 0:
            return ChangeSet(None, "the push lists no commits")
        if listed >= MAX_LISTED_COMMITS:
            return ChangeSet(None, f"GitHub lists at most {MAX_LISTED_COMMITS} commits per push")
        if any(size > listed for size in sizes):
            return ChangeSet(None, f"the push has {max(sizes)} commits but lists {listed}")
        if not all(c.lists_files for c in self.commits):
            return ChangeSet(None, "a commit does not list its files")
        return ChangeSet(frozenset().union(*(c.paths for c in self.commits)))

    # ---- where
    @property
    def repository(self) -> Repository:
        return Repository(self.raw["repository"])
