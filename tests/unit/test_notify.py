"""Notifications: who is told what, once, and a lost notice never hurts the run."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from shared.adapters.notify import ConfiguredNotifier, Notice, NoticeKind, Target, understood_by_apprise
from shared.config import NOTICE_KINDS, parse_config
from shared.errors import ConfigError
from shared.rollout.model import RunState
from tests.harness import Harness, config_dict


class Recorder:
    def __init__(self) -> None:
        self.notices: list[Notice] = []

    def __call__(self, notice: Notice) -> None:
        self.notices.append(notice)

    def kinds(self) -> list[str]:
        return [str(n.kind) for n in self.notices]


def test_the_configuration_and_the_code_name_the_same_notices() -> None:
    assert tuple(str(k) for k in NoticeKind) == NOTICE_KINDS


def test_a_successful_run_is_announced_when_it_starts_and_when_it_ends_once() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=3)
    h.duplicate_every_message = True  # every work item delivered twice
    told = Recorder()
    h.deps.notify = told
    run_id = h.start()
    h.pump(run_id)
    assert h.store.get_run(run_id).state == RunState.SUCCEEDED
    assert told.kinds() == ["run-started", "run-succeeded"]
    assert {n.run_id for n in told.notices} == {run_id} and told.notices[0].cluster == "test"


def test_a_failed_node_left_cordoned_and_the_failed_run_are_announced_once_each() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=3, maxFailedNodes=1)
    h.duplicate_every_message = True
    h.compute.fail_lro = 2  # the first node fails both reimage attempts
    told = Recorder()
    h.deps.notify = told
    run_id = h.start()
    h.pump(run_id)
    assert told.kinds() == ["run-started", "node-left-cordoned", "circuit-breaker-opened", "run-failed"]
    cordoned = told.notices[1]
    assert cordoned.node == "linux-0" and "left cordoned" in cordoned.reason
    assert "maxFailedNodes" in told.notices[-1].reason


class _Receiver(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []
    status = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Receiver", (_Receiver,), {"received": [], "status": 200})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hooks/patching?token=s3cret", handler
    finally:
        server.shutdown()
        server.server_close()


def _notifying_config(url_setting: str, events: list[str] | None = None) -> Any:
    data = config_dict({"linux": 1}, maxFailedNodes=1)
    data["notifications"] = [
        {"kind": "webhook", "url": {"setting": url_setting}, **({"events": events} if events else {})}
    ]
    return parse_config(data)


def test_a_failed_run_posts_its_id_and_reason_to_a_webhook(receiver: tuple[str, type[_Receiver]]) -> None:
    url, handler = receiver
    h = Harness({"linux": 1}, nodes_per_pool=2, maxFailedNodes=1)
    h.deps.notify = ConfiguredNotifier.from_config(
        _notifying_config("HOOK_URL", ["run-failed"]), env={"HOOK_URL": url}
    )
    h.compute.fail_lro = 2
    run_id = h.start()
    h.pump(run_id)
    assert [r["event"] for r in handler.received] == ["run-failed"]
    posted = handler.received[0]
    assert posted["runId"] == run_id and posted["cluster"] == "test"
    assert posted["reason"] == h.store.get_run(run_id).state_reason and "maxFailedNodes" in posted["reason"]


def test_a_webhook_that_fails_is_logged_without_its_url_and_the_run_goes_on(
    receiver: tuple[str, type[_Receiver]], caplog: pytest.LogCaptureFixture
) -> None:
    url, handler = receiver
    handler.status = 500
    h = Harness({"linux": 1}, nodes_per_pool=2)
    h.deps.notify = ConfiguredNotifier.from_config(_notifying_config("HOOK_URL"), env={"HOOK_URL": url})
    with caplog.at_level(logging.WARNING, logger="shared.adapters.notify"):
        run_id = h.start()
        h.pump(run_id)
    assert h.store.get_run(run_id).state == RunState.SUCCEEDED
    assert [r["event"] for r in handler.received] == ["run-started", "run-succeeded"]
    failures = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert len(failures) == 2 and all("notifications[0] (webhook)" in m for m in failures)
    assert "s3cret" not in caplog.text and "127.0.0.1" not in caplog.text


def test_an_unreachable_target_costs_the_run_nothing() -> None:
    notifier = ConfiguredNotifier(
        [Target("webhook", "http://127.0.0.1:9/nobody", frozenset(NoticeKind), "t")]
    )
    notifier(Notice(NoticeKind.RUN_FAILED, "x", cluster="c", run_id="r"))  # no exception


def test_a_target_whose_setting_is_empty_is_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="shared.adapters.notify"):
        notifier = ConfiguredNotifier.from_config(_notifying_config("MISSING"), env={})
    assert notifier.targets == []
    assert "app setting MISSING is empty" in caplog.text


def test_an_unknown_notice_name_is_a_configuration_error() -> None:
    data = config_dict({"linux": 1})
    data["notifications"] = [{"kind": "slack", "url": {"setting": "S"}, "events": ["run-exploded"]}]
    with pytest.raises(ConfigError, match=r"notifications\[0\]\.events\[0\]"):
        parse_config(data)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.slack.com/services/T1234ABCD/B1234ABCD/abcdefghijklmnopqrstuvwx",
        # A Teams Workflows webhook ("when a Teams webhook request is received").
        "https://prod-12.westeurope.logic.azure.com:443/workflows/0123456789abcdef0123456789abcdef"
        "/triggers/manual/paths/invoke?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=abcDEF123",
    ],
    ids=["slack", "teams"],
)
def test_teams_and_slack_webhook_urls_as_the_services_hand_them_out_are_understood(url: str) -> None:
    assert understood_by_apprise(url)


def test_a_chat_message_names_the_cluster_run_and_node() -> None:
    notice = Notice(
        NoticeKind.NODE_LEFT_CORDONED, "boot timed out; left cordoned", cluster="c", run_id="r", node="n"
    )
    assert notice.title == "Node left cordoned"
    assert notice.text() == "cluster c, run r, node n: boot timed out; left cordoned"


def test_a_chat_url_apprise_cannot_post_to_is_skipped_at_start_up(caplog: pytest.LogCaptureFixture) -> None:
    data = config_dict({"linux": 1})
    data["notifications"] = [{"kind": "teams", "url": {"setting": "TEAMS"}}]
    retired = (
        "https://contoso.webhook.office.com/webhookb2/x@y/IncomingWebhook/z/w"  # an Office 365 connector
    )
    with caplog.at_level(logging.WARNING, logger="shared.adapters.notify"):
        notifier = ConfiguredNotifier.from_config(parse_config(data), env={"TEAMS": retired})
    assert notifier.targets == []
    assert "not a teams webhook URL apprise can post to" in caplog.text and "contoso" not in caplog.text


def test_an_image_refused_for_its_skew_is_announced_once_per_refusal() -> None:
    from shared.triggers.intake import Intake
    from tests.unit.test_intake import image_event
    from tests.unit.test_triggers import image_harness, publish

    h = image_harness()
    told = Recorder()
    h.deps.notify = told
    version = publish(h, "2026.12.05", "v1.32.1")
    assert Intake(h.deps).handle_event(image_event(version)).action == "refused"
    Intake(h.deps).handle_event(image_event(version, event_id="redelivered-under-another-id"))
    assert told.kinds() == ["image-refused"]
    assert told.notices[0].cluster == "test" and told.notices[0].details["versionId"] == version
    assert "v1.32.1" in told.notices[0].reason


def test_a_stalled_run_is_announced_once_with_what_blocks_it() -> None:
    from shared.rollout.sweeper import sweep
    from tests.unit.test_stuck_runs import blocked_run, stall_harness

    h = stall_harness()
    run_id = blocked_run(h)
    told = Recorder()
    h.deps.notify = told
    stall = h.config.workflow.stall_after.total_seconds()
    sweep(h.deps)
    h.clock.advance(stall + 1)
    sweep(h.deps)
    h.clock.advance(stall)
    sweep(h.deps)
    stalled = [n for n in told.notices if n.kind == NoticeKind.RUN_STALLED]
    assert len(stalled) == 1 and stalled[0].run_id == run_id and "linux-0" in stalled[0].reason
