"""Telling people: a run started or ended, a node was left cordoned, a run cannot go on.

Targets are configured in the YAML (``notifications``), their URLs in app settings (a
webhook URL is a credential: whoever holds it can post to the channel). Teams and Slack
messages are formatted and sent by apprise, the maintained notification library that
knows both services' webhook formats; a generic webhook gets the notice itself as JSON.

A notice is sent after the state change it reports has been stored, by the one writer
whose write won, so a redelivered message does not announce the same failure twice. A
notification that cannot be delivered is logged and dropped: being told is never worth
failing, or even delaying for long, the run it is about.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

logger = logging.getLogger(__name__)

# One delivery may not hold a step for longer than this (connect, then read).
DELIVERY_TIMEOUT = (3.0, 5.0)


class NoticeKind(enum.StrEnum):
    RUN_STARTED = "run-started"
    RUN_SUCCEEDED = "run-succeeded"
    RUN_FAILED = "run-failed"
    CIRCUIT_BREAKER_OPENED = "circuit-breaker-opened"
    NODE_LEFT_CORDONED = "node-left-cordoned"
    RUN_STALLED = "run-stalled"
    MAINTENANCE_RUN_CANCELLED = "maintenance-run-cancelled"
    IMAGE_REFUSED = "image-refused"
    GITOPS_SYNC_FAILED = "gitops-sync-failed"


# How each kind reads in a chat message, and apprise's notification type for it.
_TITLES: dict[NoticeKind, tuple[str, str]] = {
    NoticeKind.RUN_STARTED: ("Patch run started", "info"),
    NoticeKind.RUN_SUCCEEDED: ("Patch run succeeded", "success"),
    NoticeKind.RUN_FAILED: ("Patch run failed", "failure"),
    NoticeKind.CIRCUIT_BREAKER_OPENED: ("Patch run stopped starting nodes", "failure"),
    NoticeKind.NODE_LEFT_CORDONED: ("Node left cordoned", "warning"),
    NoticeKind.RUN_STALLED: ("Patch run stalled", "warning"),
    NoticeKind.MAINTENANCE_RUN_CANCELLED: ("Update Manager maintenance run cancelled", "warning"),
    NoticeKind.IMAGE_REFUSED: ("Node image refused", "warning"),
    NoticeKind.GITOPS_SYNC_FAILED: ("GitOps sync failed", "failure"),
}


@dataclass(frozen=True)
class Notice:
    kind: NoticeKind
    reason: str
    cluster: str = ""
    run_id: str = ""
    node: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return _TITLES[self.kind][0]

    def text(self) -> str:
        where = ", ".join(
            part
            for part in (
                f"cluster {self.cluster}" if self.cluster else "",
                f"run {self.run_id}" if self.run_id else "",
                f"node {self.node}" if self.node else "",
            )
            if part
        )
        return f"{where}: {self.reason}" if where else self.reason

    def to_json(self) -> dict[str, Any]:
        return {
            "event": str(self.kind),
            "title": self.title,
            "cluster": self.cluster or None,
            "runId": self.run_id or None,
            "node": self.node or None,
            "reason": self.reason,
            **({"details": dict(self.details)} if self.details else {}),
        }


class Notifier(Protocol):
    def __call__(self, notice: Notice) -> None: ...


def no_notifications(notice: Notice) -> None:
    """The notifier of collaborators that were given none (unit tests, tools)."""


@dataclass(frozen=True)
class Target:
    """A resolved destination: its kind, its URL, and the notices it wants."""

    kind: str  # teams | slack | webhook
    url: str
    kinds: frozenset[NoticeKind]
    name: str


class ConfiguredNotifier:
    """Sends each notice to every configured target that wants its kind."""

    def __init__(
        self,
        targets: Sequence[Target],
        *,
        post: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.targets = list(targets)
        self._post = post or _post_json

    @classmethod
    def from_config(cls, config: Any, env: Mapping[str, str] | None = None) -> ConfiguredNotifier:
        env = os.environ if env is None else env
        targets = []
        for i, spec in enumerate(config.notifications):
            url = env.get(spec.url.setting, "").strip()
            if not url:
                # Said once at start-up, not on every notice: the rest still get theirs.
                logger.warning(
                    "notifications[%d] (%s): app setting %s is empty; skipped", i, spec.kind, spec.url.setting
                )
                continue
            if spec.kind != "webhook" and not understood_by_apprise(url):
                logger.warning(
                    "notifications[%d]: app setting %s is not a %s webhook URL apprise can post to; skipped",
                    i,
                    spec.url.setting,
                    spec.kind,
                )
                continue
            kinds = frozenset(NoticeKind(k) for k in spec.events) if spec.events else frozenset(NoticeKind)
            targets.append(Target(spec.kind, url, kinds, f"notifications[{i}] ({spec.kind})"))
        return cls(targets)

    def __call__(self, notice: Notice) -> None:
        for target in self.targets:
            if notice.kind not in target.kinds:
                continue
            try:
                if target.kind == "webhook":
                    self._post(target.url, notice.to_json())
                else:
                    _send_with_apprise(target.url, notice)
            except Exception as exc:  # a lost notice never fails the run
                # The URL is a credential: name the target, never the URL.
                logger.warning("%s: %s not delivered: %s", target.name, notice.kind, type(exc).__name__)


def _post_json(url: str, body: dict[str, Any]) -> None:
    import requests

    response = requests.post(url, json=body, timeout=DELIVERY_TIMEOUT)
    response.raise_for_status()


class DeliveryError(Exception):
    pass


def _send_with_apprise(url: str, notice: Notice) -> None:
    import apprise

    sender = apprise.Apprise()
    if not sender.add(url):
        raise DeliveryError("apprise does not recognise the webhook URL")
    if not sender.notify(title=notice.title, body=notice.text(), notify_type=_TITLES[notice.kind][1]):
        raise DeliveryError("the service refused the message")


def understood_by_apprise(url: str) -> bool:
    """Whether apprise reads ``url`` as a service it can post to (checked at start-up)."""
    import apprise

    return bool(apprise.Apprise().add(url))
