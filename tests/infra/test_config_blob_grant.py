"""The configuration blob is readable by the app through a grant on its container alone,
and the container the app setting names is the one that grant covers."""

from __future__ import annotations

from tests.infra import derive
from tests.infra.derive import INFRA

BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
CONTAINER_SCOPE = "Microsoft.Storage/storageAccounts/blobServices/containers"


def test_the_app_reads_the_configuration_container_with_a_reader_role_scoped_to_it() -> None:
    grants = [g for g in derive.role_grants() if g.role_id == BLOB_DATA_READER]
    assert [(g.file, g.scope_type) for g in grants] == [("app/roles-app.bicep", CONTAINER_SCOPE)]
    roles = derive.parse_bicep(INFRA / "app" / "roles-app.bicep")
    container = roles["resources"][grants[0].assignment]["config"]["scope"]
    assert container == "configContainer"
    assert roles["resources"]["configContainer"]["existing"] is True
    assert "configContainerName" in str(roles["resources"]["configContainer"]["config"]["name"])


def test_the_setting_names_the_container_storage_creates_and_the_grant_covers() -> None:
    main = derive.parse_bicep(INFRA / "main.bicep")["modules"]
    storage_output = {
        "operator": {
            "type": "property_accessor",
            "operands": {
                "operand_1": "storage",
                "operand_2": {
                    "operator": {
                        "type": "property_accessor",
                        "operands": {"operand_1": "outputs", "operand_2": "configContainerName"},
                    }
                },
            },
        }
    }
    for module in ("functionApp", "appRoles"):
        assert main[module]["config"]["params"]["configContainerName"] == storage_output, module
    app = (INFRA / "app" / "functionapp.bicep").read_text(encoding="utf-8")
    assert "name: 'PATCHER_CONFIG_BLOB'" in app
    assert "value: '${configContainerName}/${configBlobName}'" in app
