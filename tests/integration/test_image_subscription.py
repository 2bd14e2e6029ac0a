"""A central image subscription: the gallery in one subscription, the scale sets in
another, both served by the simulated ARM, which authorizes the app's identity against
infra/'s role assignments. A new image version's event rolls the pool end to end."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from sandbox.cluster import PoolSpec
from sandbox.demo import http_json
from sandbox.stack import GALLERY, KUBERNETES_VERSION, SUBSCRIPTION, Sandbox, SandboxOptions
from tests.integration.sandbox_helpers import Driver

pytestmark = pytest.mark.integration

IMAGE_SUBSCRIPTION = "2e3f4a5b-6c7d-4e8f-9a0b-1c2d3e4f5a6b"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = Sandbox(
        SandboxOptions(
            state_dir=tmp_path_factory.mktemp("image-subscription"),
            pools=PoolSpec.parse_list("alpha:linux:3"),
            runners=2,
            time_scale=0.01,
            image_subscription=IMAGE_SUBSCRIPTION,
        )
    )
    sb.start()
    yield sb
    sb.stop()


def test_an_image_version_in_another_subscription_rolls_the_pool_of_this_one(sandbox: Sandbox) -> None:
    assert sandbox.gallery_compute is not None and sandbox.cluster is not None
    driver = Driver(sandbox)
    version = "2027.02.01"
    since = time.time()
    version_id = sandbox.gallery_compute.publish_image_version(
        sandbox.gallery_resource_group,
        GALLERY,
        "k8s-node-ubuntu",
        version,
        tags={"kubernetesVersion": KUBERNETES_VERSION},
        replicate_seconds=50,
    )
    assert version_id.split("/")[2] == IMAGE_SUBSCRIPTION
    deadline = time.monotonic() + 60
    runs: list[dict[str, object]] = []
    while not runs and time.monotonic() < deadline:
        _, listing = http_json("GET", f"{driver.url}/api/runs")
        runs = [r for r in listing["runs"] if str(r["source"]).lower() == version_id.lower()]
        time.sleep(0.3)
    assert runs, f"no run from {version_id}"
    run = driver.wait(str(runs[0]["id"]))
    assert run["trigger"] == "image" and run["state"] == "succeeded", driver.explain(run)
    assert len(run["nodes"]) == 3
    report = driver.check(run, since=since, image=version)
    assert report.ok, report.violations
    (pool,) = sandbox.options.pools
    vmss = sandbox.compute.scale_set(sandbox.cluster.resource_group, pool.scale_set)  # type: ignore[union-attr]
    assert vmss["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]["id"] == version_id
    # Every call went to the resource's own subscription, and ARM refused none of them.
    arm = [r for r in sandbox.arm_server.request_log if r["t"] >= since]  # type: ignore[union-attr]
    assert not [r for r in arm if r["status"] == 403], [r for r in arm if r["status"] == 403]
    galleries = {r["path"].split("/")[2] for r in arm if "/galleries/" in r["path"].lower()}
    scale_sets = {r["path"].split("/")[2] for r in arm if "/virtualmachinescalesets/" in r["path"].lower()}
    assert galleries == {IMAGE_SUBSCRIPTION} and scale_sets == {SUBSCRIPTION}
