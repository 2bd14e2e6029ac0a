"""Every ARM call goes through a client of the resource's own subscription: a central
image subscription holds the gallery, never the scale sets."""

from __future__ import annotations

import dataclasses

from shared.triggers.events import CaseInsensitive, EventEnvelope
from shared.triggers.intake import Intake
from tests.fakes import SUB, FakeCompute
from tests.harness import Harness

IMAGES_SUB = "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
DEF = (
    f"/subscriptions/{IMAGES_SUB}/resourceGroups/rg-img/providers/Microsoft.Compute/galleries/g/images/ubuntu"
)


def test_an_image_from_another_subscription_updates_the_scale_sets_through_their_own_client() -> None:
    h = Harness(
        {"linux": 1},
        nodes_per_pool=2,
        extra_config={"events": {"galleryImages": [{"imageDefinitionId": DEF, "pools": ["test/linux"]}]}},
    )
    gallery = FakeCompute()  # the image subscription: a gallery, no scale sets
    version = f"{DEF}/versions/2026.12.01"
    gallery.image_versions[version.lower()] = {"state": "Succeeded", "tags": {}}
    asked: list[str] = []

    def compute(subscription: str) -> FakeCompute:
        asked.append(subscription)
        return gallery if subscription == IMAGES_SUB else h.compute

    deps = dataclasses.replace(h.deps, compute=compute)  # type: ignore[arg-type]
    event = EventEnvelope(
        id="e1",
        type="Microsoft.Resources.ResourceWriteSuccess",
        source="",
        subject="",
        data=CaseInsensitive(
            {
                "operationName": "Microsoft.Compute/galleries/images/versions/write",
                "resourceUri": version,
                "status": "Succeeded",
            }
        ),
    )
    outcome = Intake(deps).handle_event(event)
    assert outcome.action == "started", outcome.detail
    assert h.compute.model_image == version.lower()
    assert gallery.model_image != version.lower()
    assert set(asked) == {IMAGES_SUB, SUB}
