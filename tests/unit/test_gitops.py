"""GitOps: URL and ref matching, the path rule, the planner and executor, the sync service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.clock import FakeClock
from shared.errors import NotFoundError, PermanentError, TemporaryError
from shared.gitops.github import PushEvent
from shared.gitops.plan import (
    GIT_REPOSITORY,
    KUSTOMIZATION,
    FluxObjects,
    KubeFluxClient,
    OutOfTime,
    PushFacts,
    consumers_touched,
    execute,
    normalize_path,
    observe,
    plan_cluster,
    ref_matches,
    repository_key,
    requested_at_token,
)
from shared.gitops.service import (
    CLUSTER_KIND,
    SYNC_KIND,
    GitOpsService,
    MemorySyncQueue,
    SyncMessage,
    clusters_for,
)
from tests.fakes_flux import (
    FLEET_URL,
    NS,
    FakeCustomObjects,
    fleet,
    git_repository,
    gitops_config,
    gitops_deps,
    helm_release,
    kustomization,
)

PAYLOADS = Path(__file__).parent.parent / "payloads"
FLEET = "github.com/octocoders/fleet-gitops"


# ---- repository URLs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/Octocoders/fleet-gitops",
        "https://github.com/Octocoders/fleet-gitops.git",
        "https://github.com/octocoders/FLEET-gitops.git/",
        "https://GitHub.com/Octocoders/fleet-gitops/",
        "http://github.com/Octocoders/fleet-gitops",
        "https://x-access-token:secret@github.com/Octocoders/fleet-gitops.git",
        "https://github.com:443/Octocoders/fleet-gitops",
        "ssh://git@github.com/Octocoders/fleet-gitops.git",
        "ssh://git@github.com:22/octocoders/fleet-gitops",
        "git@github.com:Octocoders/fleet-gitops.git",
        "git@github.com:octocoders/fleet-gitops",
        "github.com:Octocoders/fleet-gitops",
        "git://github.com/Octocoders/fleet-gitops.git",
        "  https://github.com/Octocoders/fleet-gitops.git  ",
    ],
)
def test_every_form_of_the_repository_url_normalises_to_one_key(url: str) -> None:
    assert repository_key(url) == FLEET


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://github.com/Octocoders/fleet-gitops-old.git", "github.com/octocoders/fleet-gitops-old"),
        ("https://github.example.com/Octocoders/fleet-gitops", "github.example.com/octocoders/fleet-gitops"),
        ("https://gitlab.com/group/sub/repo.git", "gitlab.com/group/sub/repo"),
        ("", None),
        ("not a url", None),
        ("ftp://github.com/o/r", None),
        ("https://github.com/", None),
        ("https:///o/r", None),
        ("https://github.com/o/../r", None),
        ("git@github.com:/abs/path", None),
        ("https://[::1", None),
    ],
)
def test_other_repositories_and_nonsense_do_not_normalise_to_the_fleet(
    url: str, expected: str | None
) -> None:
    assert repository_key(url) == expected


# ---- refs --------------------------------------------------------------------------------------

SHA = "9c1e3f0a2b4d6e8f0a1b2c3d4e5f60718293a4b5"


@pytest.mark.parametrize(
    ("spec_ref", "pushed", "expected"),
    [
        ({"branch": "main"}, "refs/heads/main", True),
        ({"branch": "main"}, "refs/heads/mainline", False),
        ({"branch": "main"}, "refs/tags/main", False),
        ({"branch": "release/1.x"}, "refs/heads/release/1.x", True),
        (None, "refs/heads/master", True),  # Flux's default is the master branch
        ({}, "refs/heads/main", False),
        ({"tag": "v1.2.0"}, "refs/tags/v1.2.0", True),
        ({"tag": "v1.2.0", "branch": "main"}, "refs/heads/main", False),  # tag takes precedence
        ({"semver": ">=1.0.0 <2.0.0"}, "refs/tags/v1.4.2", True),
        ({"semver": ">=1.0.0 <2.0.0"}, "refs/tags/v2.0.0", True),  # Flux resolves the range
        ({"semver": ">=1.0.0"}, "refs/heads/main", False),
        ({"semver": ">=1.0.0"}, "refs/tags/latest", True),
        ({"semver": "this is not a range"}, "refs/tags/v1.0.0", True),
        ({"semver": "1.x", "tag": "v0.1"}, "refs/tags/v1.9.9", True),  # semver over tag
        ({"name": "refs/pull/420/head"}, "refs/pull/420/head", True),
        ({"name": "refs/heads/main", "branch": "dev"}, "refs/heads/dev", False),
        ({"commit": SHA, "branch": "main"}, "refs/heads/main", True),  # the pinned commit was pushed
        ({"commit": SHA[:10]}, "refs/heads/main", True),
        ({"commit": "0123456789abcdef0123456789abcdef01234567", "branch": "main"}, "refs/heads/main", False),
    ],
)
def test_a_source_matches_the_push_when_its_ref_can_resolve_to_what_was_pushed(
    spec_ref: Any, pushed: str, expected: bool
) -> None:
    assert ref_matches(spec_ref, pushed_ref=pushed, commit_ids={SHA}).matches is expected


# ---- paths --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("./apps", "apps"),
        ("apps/", "apps"),
        ("/apps//web/", "apps/web"),
        ("./", ""),
        ("", ""),
        (None, ""),
        (".", ""),
        ("./apps/../infrastructure", "infrastructure"),
        ("../outside", ""),
    ],
)
def test_paths_are_relative_to_the_repository_root(path: Any, expected: str) -> None:
    assert normalize_path(path) == expected


@pytest.mark.parametrize(
    ("changed", "expected"),
    [
        (["apps/web/deploy.yaml"], {"apps"}),
        (["apps"], {"apps"}),
        (["apps-old/x.yaml"], {"apps", "infra", "chart"}),  # outside every path: a shared base?
        (["infrastructure/cert-manager.yaml", "apps/x.yaml"], {"apps", "infra"}),
        (["charts/web/values.yaml"], {"chart"}),
        (["charts/webber/values.yaml"], {"apps", "infra", "chart"}),
        (["README.md"], {"apps", "infra", "chart"}),
        ([], set()),
        (None, {"apps", "infra", "chart"}),  # the push cannot tell
    ],
)
def test_a_consumer_is_touched_by_files_under_its_path_or_by_files_no_consumer_owns(
    changed: list[str] | None, expected: set[str]
) -> None:
    consumers = {"apps": ["./apps"], "infra": ["./infrastructure"], "chart": ["./charts/web"]}
    assert set(consumers_touched(consumers, changed)) == expected


def test_a_consumer_at_the_repository_root_owns_every_file() -> None:
    consumers = {"root": ["./"], "apps": ["./apps"]}
    assert set(consumers_touched(consumers, ["README.md"])) == {"root"}
    assert set(consumers_touched(consumers, ["apps/x.yaml"])) == {"root", "apps"}


# ---- planning ------------------------------------------------------------------------------------


def facts(paths: set[str] | None, *, ref: str = "refs/heads/main", why: str = "") -> PushFacts:
    return PushFacts(
        frozenset({FLEET}), ref, frozenset({SHA}), None if paths is None else frozenset(paths), why
    )


def plan_for(custom: FakeCustomObjects, push: PushFacts) -> list[str]:
    plan = plan_cluster("prod", FluxObjects.load(KubeFluxClient(custom)), push)
    return [t.key for t in plan.targets]


def test_a_push_reconciles_the_matching_source_then_only_the_consumers_whose_path_it_touched() -> None:
    assert plan_for(fleet(), facts({"apps/web/deploy.yaml"})) == [
        "GitRepository/flux-system/fleet",
        "Kustomization/flux-system/apps",
    ]


def test_more_commits_than_listed_reconciles_every_consumer_of_the_source() -> None:
    push = PushEvent.from_json(
        {
            **json.loads((PAYLOADS / "github-push.json").read_text()),
            "commits": [
                {"id": f"{i:040x}", "added": ["apps/x.yaml"], "removed": [], "modified": []}
                for i in range(20)
            ],
        }
    )
    changes = push.changes
    assert changes.paths is None
    targets = plan_for(fleet(), facts(None, why=changes.reason))
    assert targets == [
        "GitRepository/flux-system/fleet",
        "Kustomization/flux-system/apps",
        "Kustomization/flux-system/infra",
        "HelmRelease/flux-system/web",
    ]
    plan = plan_cluster("prod", FluxObjects.load(KubeFluxClient(fleet())), facts(None, why=changes.reason))
    assert all("at most 20 commits" in t.reason for t in plan.consumers)


def test_a_helm_release_is_touched_by_its_chart_directory_and_its_values_files() -> None:
    custom = fleet()
    custom.add(helm_release("api", "./charts/api", valuesFiles=["./values/api-prod.yaml"]))
    assert "HelmRelease/flux-system/api" in plan_for(custom, facts({"values/api-prod.yaml", "apps/a.yaml"}))
    assert "HelmRelease/flux-system/api" in plan_for(custom, facts({"charts/api/Chart.yaml"}))
    assert "HelmRelease/flux-system/api" not in plan_for(custom, facts({"charts/web/Chart.yaml"}))


def test_a_helm_release_with_a_chart_ref_to_a_helm_chart_from_the_source_is_a_consumer() -> None:
    custom = fleet()
    custom.add(
        {
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "HelmChart",
            "metadata": {"name": "shop", "namespace": NS},
            "spec": {"chart": "./charts/shop", "sourceRef": {"kind": "GitRepository", "name": "fleet"}},
        }
    )
    release = helm_release("shop", "")
    release["spec"].pop("chart")
    release["spec"]["chartRef"] = {"kind": "HelmChart", "name": "shop"}
    custom.add(release)
    assert "HelmRelease/flux-system/shop" in plan_for(custom, facts({"charts/shop/values.yaml"}))
    assert "HelmRelease/flux-system/shop" not in plan_for(custom, facts({"apps/x.yaml"}))


def test_sources_on_another_repository_or_ref_and_their_consumers_are_left_alone() -> None:
    custom = FakeCustomObjects()
    custom.add(git_repository("fleet-release", branch="release"))
    custom.add(kustomization("apps-release", "./apps", "fleet-release"))
    custom.add(git_repository("platform", "https://github.com/Octocoders/platform.git"))
    custom.add(kustomization("platform", "./apps", "platform"))
    plan = plan_cluster("prod", FluxObjects.load(KubeFluxClient(custom)), facts({"apps/x.yaml"}))
    assert plan.targets == []
    assert [u["name"] for u in plan.untouched] == ["fleet-release"]
    assert "tracks branch release" in plan.untouched[0]["reason"]


def test_a_source_ref_without_namespace_means_the_consumers_own_namespace() -> None:
    custom = FakeCustomObjects()
    custom.add(git_repository("fleet", ns="team-a"))
    custom.add(kustomization("team-apps", "./apps", ns="team-a"))
    custom.add(kustomization("lookalike", "./apps", ns="team-b"))  # "fleet" in team-b does not exist
    custom.add(kustomization("cross", "./apps", ns="team-c", source_ns="team-a"))
    assert plan_for(custom, facts({"apps/x.yaml"})) == [
        "GitRepository/team-a/fleet",
        "Kustomization/team-a/team-apps",
        "Kustomization/team-c/cross",
    ]


def test_suspended_objects_are_not_asked_to_reconcile() -> None:
    custom = fleet()
    custom.get("kustomizations", NS, "apps")["spec"]["suspend"] = True
    plan = plan_cluster("prod", FluxObjects.load(KubeFluxClient(custom)), facts({"apps/x.yaml"}))
    assert [t.key for t in plan.targets] == ["GitRepository/flux-system/fleet"]
    assert any("suspended" in u["reason"] for u in plan.untouched)


def test_the_documented_example_objects_are_planned_as_expected() -> None:
    custom = FakeCustomObjects()
    for doc in yaml.safe_load_all((PAYLOADS / "flux-objects.yaml").read_text()):
        if doc and doc["kind"] in ("GitRepository", "Kustomization"):
            custom.add(doc)
    push = PushEvent.from_json(json.loads((PAYLOADS / "github-push.json").read_text()))
    assert push.changes.paths is not None
    targets = plan_for(custom, facts(set(push.changes.paths)))
    assert targets == ["GitRepository/flux-system/fleet-gitops", "Kustomization/flux-system/nodepatch"]


def test_a_cluster_without_flux_has_nothing_to_reconcile() -> None:
    custom = FakeCustomObjects(installed=set())
    assert plan_for(custom, facts(None)) == []


# ---- executing -------------------------------------------------------------------------------------


def test_reconcile_is_requested_with_a_merge_patch_of_the_annotation_only_sources_first() -> None:
    custom = fleet()
    flux = KubeFluxClient(custom)
    plan = plan_cluster("prod", FluxObjects.load(flux), facts(None))
    done = execute(flux, plan, "2026-11-25T10:00:00.5Z")
    assert [d["name"] for d in done] == ["fleet", "apps", "infra", "web"]
    assert all(d["requested"] for d in done)
    assert (custom.patches[0][0], custom.patches[0][2]) == ("gitrepositories", "fleet")
    for _plural, _ns, _name, body, manager in custom.patches:
        assert body == {
            "metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": "2026-11-25T10:00:00.5Z"}}
        }
        assert manager == "flux-client-side-apply"
    assert custom.annotation("kustomizations", NS, "other") is None


def test_running_a_plan_again_patches_nothing_already_carrying_the_token() -> None:
    custom = fleet()
    flux = KubeFluxClient(custom)
    execute(flux, plan_cluster("prod", FluxObjects.load(flux), facts(None)), "t1")
    first = len(custom.patches)
    again = execute(flux, plan_cluster("prod", FluxObjects.load(flux), facts(None)), "t1")
    assert len(custom.patches) == first
    assert not any(d["requested"] for d in again)


def test_execution_stops_before_a_patch_once_the_budget_is_spent() -> None:
    custom = fleet()
    flux = KubeFluxClient(custom)
    plan = plan_cluster("prod", FluxObjects.load(flux), facts(None))
    budget = iter([True, True, False])
    with pytest.raises(OutOfTime):
        execute(flux, plan, "t1", in_time=lambda: next(budget))
    assert len(custom.patches) == 2


@pytest.mark.parametrize(
    ("status", "error"),
    [(403, PermanentError), (422, PermanentError), (429, TemporaryError), (503, TemporaryError)],
)
def test_api_errors_become_the_products_retry_intent(status: int, error: type[Exception]) -> None:
    from tests.fakes_flux import _api_exception

    custom = fleet()
    custom.fail_next.append(_api_exception(status, "boom"))
    with pytest.raises(error):
        KubeFluxClient(custom).request_reconcile(KUSTOMIZATION, NS, "apps", "t")


def test_lists_are_read_page_by_page_and_a_missing_object_is_not_found() -> None:
    custom = FakeCustomObjects()
    for i in range(7):
        custom.add(git_repository(f"repo-{i}"))
    client = KubeFluxClient(custom)
    client.PAGE = 3
    assert len(client.list(GIT_REPOSITORY)) == 7
    assert custom.calls.count("list gitrepositories") == 3
    with pytest.raises(NotFoundError):
        client.get(KUSTOMIZATION, NS, "nope")


def test_the_token_is_rfc3339_nano_in_utc() -> None:
    assert requested_at_token(1_764_064_800.0) == "2025-11-25T10:00:00Z"
    assert requested_at_token(1_764_064_800.25) == "2025-11-25T10:00:00.25Z"


def test_observing_reads_lasthandled_ready_and_revision_as_flux_reconcile_does() -> None:
    obj = git_repository("fleet")
    obj["metadata"]["annotations"] = {"reconcile.fluxcd.io/requestedAt": "t1"}
    assert observe(obj, "t1")["handled"] is False
    assert observe(obj, "t1")["final"] is False
    obj["status"].update(
        lastHandledReconcileAt="t1",
        conditions=[{"type": "Ready", "status": "True", "reason": "Succeeded", "message": "stored"}],
    )
    seen = observe(obj, "t1")
    assert seen["handled"] and seen["final"]
    assert seen["ready"]["status"] == "True"
    assert seen["revision"].startswith("main@sha1:")
    obj["metadata"]["annotations"]["reconcile.fluxcd.io/requestedAt"] = "t2"
    obj["status"]["lastHandledReconcileAt"] = "t2"
    assert observe(obj, "t1")["supersededBy"] == "t2"


# ---- the sync service --------------------------------------------------------------------------------


def push_event(**changes: Any) -> PushEvent:
    data = json.loads((PAYLOADS / "github-push.json").read_text())
    data["commits"][0].update(added=["apps/web/deploy.yaml"], modified=[])
    data.update(changes)
    return PushEvent.from_json(data)


class Ticks:
    """A monotonic clock the fake cluster advances by ``per_call`` seconds on every request."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def service(
    customs: dict[str, FakeCustomObjects], config: dict[str, Any] | None = None, **kwargs: Any
) -> tuple[GitOpsService, MemorySyncQueue, Any]:
    deps = gitops_deps(customs, config)
    queue = MemorySyncQueue()
    return GitOpsService(deps, queue=lambda: queue, **kwargs), queue, deps


def test_a_push_is_synced_inline_recorded_and_a_replay_does_nothing() -> None:
    custom = fleet()
    svc, queue, deps = service({"prod": custom})
    answer = svc.handle_push("d-1", push_event())
    assert answer.status == 200, answer.body
    assert answer.body["clusters"]["prod"]["objects"] == [
        "GitRepository/flux-system/fleet",
        "Kustomization/flux-system/apps",
    ]
    token = answer.body["requestedAt"]
    assert custom.annotation("kustomizations", NS, "apps") == token
    assert custom.annotation("kustomizations", NS, "infra") is None
    record = deps.store.get_record(SYNC_KIND, "d-1")
    assert (
        record["state"] == "done"
        and record["commit"] == SHA
        and record["repository"] == "Octocoders/fleet-gitops"
    )
    patches = len(custom.patches)
    replay = svc.handle_push("d-1", push_event())
    assert replay.status == 200 and replay.body["status"] == "duplicate"
    assert len(custom.patches) == patches
    assert queue.sent == []


def test_a_deleted_ref_is_recorded_and_not_acted_on() -> None:
    custom = fleet()
    svc, _queue, deps = service({"prod": custom})
    answer = svc.handle_push("d-del", push_event(deleted=True, after="0" * 40, commits=[], head_commit=None))
    assert answer.status == 202 and answer.body["status"] == "skipped"
    assert custom.patches == []
    assert "deleted" in deps.store.get_record(SYNC_KIND, "d-del")["reason"]


def test_a_force_push_reconciles_everything_that_consumes_the_matching_source() -> None:
    custom = fleet()
    svc, _queue, _deps = service({"prod": custom})
    answer = svc.handle_push("d-force", push_event(forced=True))
    assert answer.body["clusters"]["prod"]["objects"] == [
        "GitRepository/flux-system/fleet",
        "Kustomization/flux-system/apps",
        "Kustomization/flux-system/infra",
        "HelmRelease/flux-system/web",
    ]
    assert custom.annotation("kustomizations", NS, "other") is None


def test_only_the_clusters_listed_for_the_repository_are_synced() -> None:
    prod, stage = fleet(), fleet()
    config = gitops_config(
        clusters=("prod", "stage"),
        repositories=[{"url": "git@github.com:octocoders/fleet-gitops", "clusters": ["stage"]}],
    )
    svc, _queue, _deps = service({"prod": prod, "stage": stage}, config)
    answer = svc.handle_push("d-2", push_event())
    assert list(answer.body["clusters"]) == ["stage"]
    assert prod.patches == [] and stage.patches


def test_a_repository_that_is_not_configured_is_ignored() -> None:
    custom = fleet()
    config = gitops_config(repositories=[{"url": "https://github.com/Octocoders/other.git"}])
    svc, _queue, deps = service({"prod": custom}, config)
    answer = svc.handle_push("d-3", push_event())
    assert answer.status == 202 and answer.body["status"] == "ignored"
    assert custom.patches == [] and deps.store.get_record(SYNC_KIND, "d-3")["state"] == "ignored"


def test_repositories_config_clusters_default_to_every_cluster() -> None:
    config = gitops_deps(
        {"a": fleet(), "b": fleet()}, gitops_config(clusters=("a", "b"), repositories=[{"url": FLEET_URL}])
    ).config
    assert clusters_for(config, frozenset({FLEET})) == ["a", "b"]


def test_a_plan_larger_than_the_inline_limit_is_handed_to_the_queue_and_finished_there() -> None:
    prod, stage = fleet(), fleet()
    svc, queue, deps = service({"prod": prod, "stage": stage}, max_inline_objects=3)
    answer = svc.handle_push("d-4", push_event(forced=True))  # 4 objects per cluster
    assert answer.status == 202 and answer.body["status"] == "queued"
    assert queue.sent == [SyncMessage("d-4", "prod"), SyncMessage("d-4", "stage")]
    assert prod.patches == [] and stage.patches == []
    for message in queue.sent:
        assert svc.sync_cluster(message) == "done"
    assert len(prod.patches) == len(stage.patches) == 4
    token = deps.store.get_record(SYNC_KIND, "d-4")["token"]
    assert prod.annotation("helmreleases", NS, "web") == token
    assert deps.store.get_record(CLUSTER_KIND, "d-4/prod")["state"] == "done"
    assert svc.get_sync("d-4")["state"] == "done"


def test_when_the_time_budget_runs_out_the_rest_is_queued_and_the_queue_skips_what_is_done() -> None:
    prod, stage = fleet(), fleet()
    ticks = Ticks()

    def slow(what: str) -> None:
        ticks.now += 1.0  # each API call takes a second

    prod.on_call = stage.on_call = slow
    svc, queue, _deps = service({"prod": prod, "stage": stage}, monotonic=ticks, inline_budget=3.5)
    answer = svc.handle_push("d-5", push_event(forced=True))
    assert answer.status == 202
    # prod: 3 lists + 1 patch fit the budget, the second patch would not; stage never started.
    assert len(prod.patches) == 1 and stage.patches == []
    assert [m.cluster for m in queue.sent] == ["prod", "stage"]
    for message in queue.sent:
        svc.sync_cluster(message)
    assert len(prod.patches) == 4  # the source was not patched twice
    assert len(stage.patches) == 4


def test_a_cluster_that_answers_with_a_retryable_error_is_queued_and_retried_by_the_queue() -> None:
    from tests.fakes_flux import _api_exception

    custom = fleet()
    custom.fail_next.append(_api_exception(503, "etcd leader changed"))
    svc, queue, _deps = service({"prod": custom})
    assert svc.handle_push("d-6", push_event()).status == 202
    custom.fail_next.append(_api_exception(503, "still down"))
    with pytest.raises(TemporaryError):
        svc.sync_cluster(queue.sent[0])
    custom.fail_next.append(_api_exception(503, "still down"))
    assert svc.sync_cluster(queue.sent[0], final_attempt=True) == "failed"
    assert svc.sync_cluster(queue.sent[0]) == "done"


def test_a_forbidden_cluster_fails_alone_and_the_others_are_synced() -> None:
    from tests.fakes_flux import _api_exception

    prod, stage = fleet(), fleet()
    prod.fail_next.append(_api_exception(403, "gitrepositories is forbidden"))
    svc, _queue, _deps = service({"prod": prod, "stage": stage})
    answer = svc.handle_push("d-7", push_event())
    assert answer.status == 200 and answer.body["status"] == "partial"
    assert answer.body["clusters"]["prod"]["state"] == "failed"
    assert answer.body["clusters"]["stage"]["state"] == "done"


def test_a_delivery_whose_hand_off_failed_is_processed_again_with_the_same_token() -> None:
    custom = fleet()
    deps = gitops_deps({"prod": custom})

    def broken() -> MemorySyncQueue:
        raise ConnectionError("storage is down")

    first = GitOpsService(deps, queue=broken, max_inline_objects=1).handle_push("d-8", push_event())
    assert first.status == 503
    record = deps.store.get_record(SYNC_KIND, "d-8")
    assert record is not None and record["state"] == "failed"
    token = record["token"]
    deps.clock.advance(5)  # type: ignore[attr-defined]
    second = GitOpsService(deps, queue=MemorySyncQueue).handle_push("d-8", push_event())
    assert second.status == 200 and second.body["requestedAt"] == token


def test_an_attempt_that_died_midway_is_taken_over_only_once_it_is_stale() -> None:
    custom = fleet()
    clock = FakeClock()
    deps = gitops_deps({"prod": custom}, clock=clock)
    deps.store.create_record("delivery", "d-9", {"receivedAt": "2023-11-14T22:13:20.000Z"})
    clock.advance(1)
    svc = GitOpsService(deps, queue=MemorySyncQueue)
    assert svc.handle_push("d-9", push_event()).body["status"] == "duplicate"  # maybe still running
    clock.advance(120)
    assert svc.handle_push("d-9", push_event()).body["status"] == "done"
    assert custom.patches


def test_the_status_shows_what_flux_made_of_the_requests_and_keeps_final_answers() -> None:
    custom = fleet()
    svc, _queue, deps = service({"prod": custom})
    token = svc.handle_push("d-10", push_event()).body["requestedAt"]
    before = svc.get_sync("d-10")
    objects = before["results"]["prod"]["objects"]
    assert [o["flux"]["handled"] for o in objects] == [False, False]
    custom.reconcile_all()
    after = svc.get_sync("d-10")
    objects = after["results"]["prod"]["objects"]
    assert all(o["flux"]["lastHandledReconcileAt"] == token and o["flux"]["final"] for o in objects)
    assert deps.store.get_record(SYNC_KIND, "d-10")["results"]["prod"]["observed"] is True
    reads = len(custom.calls)
    svc.get_sync("d-10")
    assert len(custom.calls) == reads  # kept: the cluster is not asked again
    listed = svc.list_syncs()["syncs"]
    assert listed[0]["delivery"] == "d-10" and listed[0]["state"] == "done"
    with pytest.raises(NotFoundError):
        svc.get_sync("nope")


def test_syncs_are_listed_newest_first() -> None:
    clock = FakeClock()
    deps = gitops_deps({"prod": fleet()}, clock=clock)
    svc = GitOpsService(deps, queue=MemorySyncQueue)
    for i in range(3):
        svc.handle_push(f"d-{i}", push_event())
        clock.advance(10)
    assert [s["delivery"] for s in svc.list_syncs()["syncs"]] == ["d-2", "d-1", "d-0"]


@pytest.mark.parametrize("body", [b"", b"nope", b"[]", b'{"v": 2}', b'{"v": 1, "delivery": "d"}'])
def test_a_malformed_sync_message_is_refused(body: bytes) -> None:
    from shared.errors import ValidationError

    with pytest.raises(ValidationError):
        SyncMessage.parse(body)


def test_a_sync_message_for_an_unknown_delivery_is_dropped() -> None:
    svc, _queue, _deps = service({"prod": fleet()})
    assert svc.sync_cluster(SyncMessage("ghost", "prod")) == "unknown delivery"


def test_a_cluster_without_a_source_on_the_pushed_repository_is_asked_for_nothing_more() -> None:
    custom = FakeCustomObjects()
    custom.add(git_repository("platform", "https://github.com/Octocoders/platform.git"))
    custom.add(kustomization("platform", "./", "platform"))
    svc, _queue, _deps = service({"prod": custom})
    answer = svc.handle_push("d-none", push_event())
    assert answer.status == 200 and answer.body["clusters"]["prod"]["objects"] == []
    assert custom.calls == ["list gitrepositories"]


def test_a_failed_cluster_sync_is_announced_with_its_error_inline_and_from_the_queue() -> None:
    from shared.adapters.notify import Notice
    from tests.fakes_flux import _api_exception

    told: list[Notice] = []
    prod, stage = fleet(), fleet()
    prod.fail_next.append(_api_exception(403, "gitrepositories is forbidden"))
    svc, _queue, deps = service({"prod": prod, "stage": stage})
    deps.notify = told.append
    svc.handle_push("d-8", push_event())
    assert [(str(n.kind), n.cluster) for n in told] == [("gitops-sync-failed", "prod")]
    assert "forbidden" in told[0].reason and told[0].details["delivery"] == "d-8"

    custom = fleet()
    custom.fail_next.append(_api_exception(503, "etcd leader changed"))
    svc, queue, deps = service({"prod": custom})
    deps.notify = told.append
    svc.handle_push("d-9", push_event())
    custom.fail_next.append(_api_exception(503, "still down"))
    assert svc.sync_cluster(queue.sent[0], final_attempt=True) == "failed"
    assert [n.details["delivery"] for n in told] == ["d-8", "d-9"] and "gave up" in told[-1].reason
