"""The deployment grants the app exactly what its code uses, and nothing is left out.

What the code uses is derived from its source (``derive.py``); what is granted is read from
``infra/``. The small tables below give the derived calls their meaning: which ARM action an
SDK method needs, which actions a built-in role holds (copied from the published role
definitions), which settings may stay unset and why. Each test names the code location of
anything missing, so a new call, setting or trigger fails here until infra/ follows.

Tools: pycep-parser (parses every Bicep file; the Bicep CLI is not available here) and
checkov, which runs from its own virtualenv (``.venv/checkov``, see
infra/requirements-checkov.txt) because its pins conflict with the app's.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from tests.infra import derive
from tests.infra.derive import INFRA, ROOT

# ---- tables -----------------------------------------------------------------------------------

VMSS = "Microsoft.Compute/virtualMachineScaleSets"
VM = "Microsoft.Compute/virtualMachines"
GALLERY = "Microsoft.Compute/galleries"
MAINTENANCE = "Microsoft.Maintenance/maintenanceConfigurations"
STORAGE = "Microsoft.Storage/storageAccounts"
VAULT = "Microsoft.KeyVault/vaults"
APP_INSIGHTS = "Microsoft.Insights/components"

# azure-mgmt operation (group, method) -> (resource type it acts on, ARM action it needs).
# Actions: https://learn.microsoft.com/azure/role-based-access-control/permissions/compute;
# the REST operation each method sends is in the SDK's operations module (e.g.
# begin_update_instances -> POST .../virtualMachineScaleSets/{vmss}/manualupgrade).
SDK_ACTIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("virtual_machine_scale_sets", "get"): (VMSS, f"{VMSS}/read"),
    ("virtual_machine_scale_sets", "begin_update"): (VMSS, f"{VMSS}/write"),
    ("virtual_machine_scale_sets", "begin_reimage"): (VMSS, f"{VMSS}/reimage/action"),
    ("virtual_machine_scale_sets", "begin_reimage_all"): (VMSS, f"{VMSS}/reimageall/action"),
    ("virtual_machine_scale_sets", "begin_update_instances"): (VMSS, f"{VMSS}/manualUpgrade/action"),
    ("virtual_machine_scale_sets", "get_instance_view"): (VMSS, f"{VMSS}/instanceView/read"),
    ("virtual_machine_scale_set_vms", "get"): (VMSS, f"{VMSS}/virtualMachines/read"),
    ("virtual_machine_scale_set_vms", "list"): (VMSS, f"{VMSS}/virtualMachines/read"),
    ("virtual_machine_scale_set_vms", "get_instance_view"): (
        VMSS,
        f"{VMSS}/virtualMachines/instanceView/read",
    ),
    # Flexible scale sets' instances: VMs of their own.
    ("virtual_machines", "get"): (VM, f"{VM}/read"),
    ("virtual_machines", "list"): (VM, f"{VM}/read"),
    ("virtual_machines", "begin_reimage"): (VM, f"{VM}/reimage/action"),
    ("gallery_image_versions", "get"): (GALLERY, f"{GALLERY}/images/versions/read"),
    ("gallery_image_versions", "list_by_gallery_image"): (GALLERY, f"{GALLERY}/images/versions/read"),
}

# A long-running operation is polled at its provider's operation-status URL
# (Azure-AsyncOperation: /subscriptions/{s}/providers/Microsoft.Compute/locations/{l}/operations/{id}).
LRO_POLL_ACTIONS = {"Microsoft.Compute": "Microsoft.Compute/locations/operations/read"}

# Plain ARM requests (no SDK covers them): (module, calling function, HTTP method) ->
# (resource type, action). Cancelling an Update Manager run: "ApplyUpdates - Create Or
# Update Or Cancel", PUT {correlationId} (an applyUpdates resource under the configuration).
REST_ACTIONS: dict[tuple[str, str, str], tuple[str, str]] = {
    ("shared/triggers/intake.py", "_cancel_maintenance", "PUT"): (
        MAINTENANCE,
        "Microsoft.Maintenance/applyUpdates/write",
    ),
}

# Storage data-plane methods -> the data actions of which one is needed (any of), per
# required permission. https://learn.microsoft.com/rest/api/storageservices/authorize-with-azure-active-directory
# ("Permissions for calling data operations"); a write permission includes the matching add.
QUEUE = f"{STORAGE}/queueServices/queues"
TABLE = f"{STORAGE}/tableServices/tables"
DATA_ACTIONS: dict[str, list[tuple[str, ...]]] = {
    "send_message": [(f"{QUEUE}/messages/add/action", f"{QUEUE}/messages/write")],
    "receive_message": [(f"{QUEUE}/messages/process/action", f"{QUEUE}/messages/read")],
    "receive_messages": [(f"{QUEUE}/messages/process/action", f"{QUEUE}/messages/read")],
    "peek_messages": [(f"{QUEUE}/messages/read",)],
    "delete_message": [(f"{QUEUE}/messages/process/action", f"{QUEUE}/messages/delete")],
    "update_message": [(f"{QUEUE}/messages/process/action", f"{QUEUE}/messages/write")],
    "create_queue": [(f"{QUEUE}/write",)],
    "get_queue_properties": [(f"{QUEUE}/read",)],
    "get_blob_properties": [(f"{STORAGE}/blobServices/containers/blobs/read",)],
    "download_blob": [(f"{STORAGE}/blobServices/containers/blobs/read",)],
    "create_table": [(f"{TABLE}/write",)],
    "create_table_if_not_exists": [(f"{TABLE}/write",)],
    "get_entity": [(f"{TABLE}/entities/read",)],
    "query_entities": [(f"{TABLE}/entities/read",)],
    "list_entities": [(f"{TABLE}/entities/read",)],
    "create_entity": [(f"{TABLE}/entities/add/action", f"{TABLE}/entities/write")],
    "upsert_entity": [(f"{TABLE}/entities/write",)],
    "update_entity": [(f"{TABLE}/entities/update/action", f"{TABLE}/entities/write")],
    "delete_entity": [(f"{TABLE}/entities/delete",)],
    # A batch may create, replace and delete entities.
    "submit_transaction": [(f"{TABLE}/entities/write",), (f"{TABLE}/entities/delete",)],
}

# Built-in roles the Bicep assigns: id -> (name, actions and data actions), copied from
# https://learn.microsoft.com/azure/role-based-access-control/built-in-roles (general,
# storage, security and monitor pages).
BUILTIN_ROLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "acdd72a7-3385-48ef-bd42-f606fba81ae7": ("Reader", ("*/read",)),
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": (
        "Storage Blob Data Owner",
        (
            f"{STORAGE}/blobServices/containers/*",
            f"{STORAGE}/blobServices/generateUserDelegationKey/action",
            f"{STORAGE}/blobServices/containers/blobs/*",
        ),
    ),
    "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1": (
        "Storage Blob Data Reader",
        (
            f"{STORAGE}/blobServices/containers/read",
            f"{STORAGE}/blobServices/generateUserDelegationKey/action",
            f"{STORAGE}/blobServices/containers/blobs/read",
        ),
    ),
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": (
        "Storage Queue Data Contributor",
        (
            f"{QUEUE}/delete",
            f"{QUEUE}/read",
            f"{QUEUE}/write",
            f"{QUEUE}/messages/delete",
            f"{QUEUE}/messages/read",
            f"{QUEUE}/messages/write",
            f"{QUEUE}/messages/process/action",
        ),
    ),
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": (
        "Storage Table Data Contributor",
        (
            f"{TABLE}/read",
            f"{TABLE}/write",
            f"{TABLE}/delete",
            f"{TABLE}/entities/read",
            f"{TABLE}/entities/write",
            f"{TABLE}/entities/delete",
            f"{TABLE}/entities/add/action",
            f"{TABLE}/entities/update/action",
        ),
    ),
    "4633458b-17de-408a-b874-0445c86b69e6": (
        "Key Vault Secrets User",
        (f"{VAULT}/secrets/getSecret/action", f"{VAULT}/secrets/readMetadata/action"),
    ),
    "b86a8fe4-44ce-4948-aee5-eccb2c155cd7": (
        "Key Vault Secrets Officer",
        (
            "Microsoft.Authorization/*/read",
            "Microsoft.Insights/alertRules/*",
            "Microsoft.Resources/deployments/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            "Microsoft.Support/*",
            "Microsoft.KeyVault/checkNameAvailability/read",
            "Microsoft.KeyVault/deletedVaults/read",
            "Microsoft.KeyVault/locations/*/read",
            f"{VAULT}/*/read",
            "Microsoft.KeyVault/operations/read",
            f"{VAULT}/secrets/*",
        ),
    ),
    "3913510d-42f4-4e42-8a64-420c390055eb": (
        "Monitoring Metrics Publisher",
        (
            "Microsoft.Insights/Register/Action",
            "Microsoft.Support/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            "Microsoft.Insights/Metrics/Write",
            "Microsoft.Insights/Telemetry/Write",
        ),
    ),
}

# What the Functions host and the platform do with the app's identity, which no line of the
# app's code shows: (resource type, any of these actions, why).
HOST_NEEDS: list[tuple[str, tuple[str, ...], str]] = [
    (STORAGE, (f"{STORAGE}/blobServices/containers/blobs/write",), "host keys, singleton and timer leases"),
    (STORAGE, (f"{STORAGE}/blobServices/containers/blobs/read",), "Flex Consumption reads the app package"),
    (STORAGE, (f"{QUEUE}/messages/process/action",), "queue triggers take and delete messages"),
]

# App settings the code reads that the Bicep may leave unset, and why.
OPTIONAL_SETTINGS = {
    "AzureWebJobsStorage": "the connection-string form, for local runs (Azurite); Azure uses the "
    "identity-based AzureWebJobsStorage__accountName, and a connection string would carry an account key",
    "AzureWebJobsStorage__queueServiceUri": "derived from AzureWebJobsStorage__accountName when unset; "
    "only needed for a custom domain or a sovereign cloud",
    "AzureWebJobsStorage__tableServiceUri": "derived from AzureWebJobsStorage__accountName when unset; "
    "only needed for a custom domain or a sovereign cloud",
    "PATCHER_MAX_DEQUEUE_COUNT": "must equal host.json extensions.queues.maxDequeueCount; the code's "
    "default is checked against host.json below",
    "WEBSITE_SITE_NAME": "set by App Service itself (the app's name): the metrics' service.name",
    "PATCHER_CONFIG_REFRESH": "seconds between looks at the configuration blob; the code's default (60 s) "
    "suits a deployment",
    "AzureWebJobsStorage__blobServiceUri": "derived from AzureWebJobsStorage__accountName when unset; "
    "only needed for a custom domain or a sovereign cloud",
    "OTEL_SERVICE_NAME": "OpenTelemetry's standard setting, to name the metrics' service otherwise",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "metrics over OTLP/HTTP as well (a collector of one's own; the sandbox's "
    "tests); Azure sends them to Application Insights",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "the metrics-only form of OTEL_EXPORTER_OTLP_ENDPOINT",
}

# Settings whose names come from the YAML configuration at run time: the code location ->
# the functionapp.bicep array parameter that turns each entry into a Key Vault reference.
DYNAMIC_SETTINGS = {
    ("shared/app.py", "_ClientCache._build_kube"): "kubeconfigSettings",  # clusters[].kubeconfig.setting
    ("shared/gitops/github.py", "resolve_secrets"): "webhookSecretSettings",  # gitops.secrets[].setting
    # notifications[].url
    ("shared/adapters/notify.py", "ConfiguredNotifier.from_config"): "notificationSettings",
}

# Settings the Bicep sets that no Python line reads: the host and the platform read them.
PLATFORM_SETTINGS = {
    "AzureWebJobsStorage__credential": "the Functions host: use the managed identity for host storage",
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "the Functions host and the Python worker: telemetry target",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "the Functions host: Entra-authenticated telemetry",
    "PYTHON_THREADPOOL_THREAD_COUNT": "the Python worker: threads that run the app's (sync) invocations",
}

# App settings Flex Consumption refuses (the runtime is functionAppConfig.runtime instead).
FLEX_REFUSED_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "FUNCTIONS_WORKER_RUNTIME_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTSHARE",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
}

# Kubernetes access the code can reach in principle but never uses, so not granted.
NOT_NEEDED_K8S: dict[tuple[str, str, str], str] = {
    ("source.toolkit.fluxcd.io", "helmcharts", "get"): "HelmCharts are only listed (to follow a "
    "HelmRelease's spec.chartRef); reconcile targets are GitRepository sources and their Kustomization "
    "and HelmRelease consumers (shared/gitops/plan.py, Target.of), and only targets are read back",
    ("source.toolkit.fluxcd.io", "helmcharts", "patch"): "HelmCharts are never reconcile targets "
    "(shared/gitops/plan.py, Target.of)",
}


# ---- helpers ---------------------------------------------------------------------------------


def _matches(pattern: str, action: str) -> bool:
    regex = re.escape(pattern).replace(r"\*", ".*")
    return re.fullmatch(regex, action, flags=re.IGNORECASE) is not None


def _scope_covers(scope_type: str, resource_type: str) -> bool:
    return scope_type == "resourceGroup" or resource_type.lower().startswith(scope_type.lower())


def _granted_actions(grant: derive.Grant) -> tuple[str, ...]:
    if grant.role_id is None:
        return grant.custom_actions
    assert grant.role_id in BUILTIN_ROLES, (
        f"{grant.file} {grant.assignment} assigns role {grant.role_id}: "
        "add its published definition to BUILTIN_ROLES"
    )
    return BUILTIN_ROLES[grant.role_id][1]


def _covered(resource_type: str, alternatives: Iterable[str], grants: list[derive.Grant]) -> bool:
    return any(
        _scope_covers(g.scope_type, resource_type)
        and any(_matches(p, a) for p in _granted_actions(g) for a in alternatives)
        for g in grants
    )


def _bicep_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in derive.bicep_files())


def _app_settings() -> derive.BicepSettings:
    return derive.function_app_settings()


# ---- Bicep: syntax and wiring -----------------------------------------------------------------


@pytest.mark.parametrize("path", derive.bicep_files(), ids=lambda p: p.relative_to(INFRA).as_posix())
def test_every_bicep_file_parses(path: Path) -> None:
    doc = derive.parse_bicep(path)  # raises on a syntax error
    assert doc.get("resources") or doc.get("modules"), f"{path.name} declares nothing"


def test_main_deploys_every_module_in_infra_app() -> None:
    deployed = derive.deployed_bicep_files()
    orphans = [p.relative_to(INFRA).as_posix() for p in derive.bicep_files() if p.resolve() not in deployed]
    assert not orphans, f"never deployed by main.bicep (their roles would silently not exist): {orphans}"


def test_example_parameters_fit_main_bicep() -> None:
    params = derive.parse_bicep(INFRA / "main.bicep")["parameters"]
    example = json.loads((INFRA / "main.parameters.example.json").read_text(encoding="utf-8"))["parameters"]
    unknown = sorted(set(example) - set(params))
    required = sorted(n for n, p in params.items() if "default" not in p and n not in example)
    assert not unknown, f"main.parameters.example.json sets parameters main.bicep does not declare: {unknown}"
    assert not required, f"main.parameters.example.json lacks required parameters: {required}"


# ---- checkov --------------------------------------------------------------------------------

SKIP_COMMENT = re.compile(r"checkov:skip=([A-Za-z0-9_]+)(?::(.*))?")


def _checkov_executable() -> str | None:
    for candidate in (
        os.environ.get("CHECKOV"),
        ROOT / ".venv" / "checkov" / "bin" / "checkov",
        shutil.which("checkov"),
    ):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _checkov_results(output: str) -> dict[str, Any]:
    data = json.loads(output)
    if isinstance(data, list):
        data = next(d for d in data if d.get("check_type") == "bicep")
    return data


@pytest.fixture(scope="module")
def checkov(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """checkov on infra/ as it is, and on a copy without the skip comments (to tell which
    skips still hide a failure). Both run at once; about 5 s together."""
    exe = _checkov_executable()
    if exe is None:
        message = (
            "checkov is not installed: python3 -m venv .venv/checkov && "
            ".venv/checkov/bin/pip install -r infra/requirements-checkov.txt"
        )
        pytest.fail(message + " (make install does this)")
    bare = tmp_path_factory.mktemp("infra-without-skips")
    for path in derive.bicep_files():
        target = bare / path.relative_to(INFRA)
        target.parent.mkdir(parents=True, exist_ok=True)
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        target.write_text("".join(line for line in lines if not SKIP_COMMENT.search(line)), encoding="utf-8")
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_NO_OUTPUT_FORMAT_WARN": "1"}
    runs = {
        name: subprocess.Popen(
            [exe, "-d", str(directory), "--framework", "bicep", "-o", "json", "--skip-download"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name, directory in (("as_is", INFRA), ("without_skips", bare))
    }
    results = {}
    for name, proc in runs.items():
        out, err = proc.communicate(timeout=180)
        assert out.strip(), f"checkov printed nothing (exit {proc.returncode}): {err[-2000:]}"
        results[name] = _checkov_results(out)
    return results


def _findings(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return list(report.get("results", {}).get(kind, []))


def test_checkov_finds_no_failed_check(checkov: dict[str, dict[str, Any]]) -> None:
    failed = [
        f"{f['check_id']} {f['resource']} ({f['file_path']}:{f['file_line_range'][0]}): {f['check_name']}"
        for f in _findings(checkov["as_is"], "failed_checks")
    ]
    assert not failed, "checkov failures (fix, or skip in the Bicep with a reason):\n" + "\n".join(failed)


def test_checkov_reads_every_bicep_file(checkov: dict[str, dict[str, Any]]) -> None:
    results = checkov["as_is"].get("results", {})
    assert not results.get("parsing_errors"), f"checkov could not parse: {results.get('parsing_errors')}"
    assert checkov["as_is"]["summary"]["resource_count"] > 0


def _skip_comments() -> list[tuple[str, int, str, str]]:
    found = []
    for path in derive.bicep_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            match = SKIP_COMMENT.search(line)
            if match:
                found.append(
                    (
                        "/" + path.relative_to(INFRA).as_posix(),
                        number,
                        match.group(1),
                        (match.group(2) or "").strip(),
                    )
                )
    return found


def test_every_checkov_skip_carries_a_written_reason() -> None:
    thin = [
        f"{file}:{line} {check}" for file, line, check, reason in _skip_comments() if len(reason.split()) < 8
    ]
    assert not thin, f"skips without a real justification (write why, in a sentence): {thin}"


def test_every_checkov_skip_still_hides_a_failure(checkov: dict[str, dict[str, Any]]) -> None:
    skipped = {(f["file_path"], f["check_id"]) for f in _findings(checkov["as_is"], "skipped_checks")}
    fails_without = {
        (f["file_path"], f["check_id"]) for f in _findings(checkov["without_skips"], "failed_checks")
    }
    stale = [
        f"{file}:{line} {check}"
        for file, line, check, _ in _skip_comments()
        if (file, check) not in skipped or (file, check) not in fails_without
    ]
    assert not stale, (
        f"skip comments for checks that do not run or no longer fail there (remove them): {stale}"
    )


# ---- app settings -------------------------------------------------------------------------------


def test_every_app_setting_the_code_reads_is_set_or_documented_optional() -> None:
    bicep = _app_settings().literal
    read = {r.name: r.where for r in derive.setting_reads() if r.name}
    read.update(derive.binding_expression_settings())
    for trigger in derive.triggers():
        connection = trigger.arguments.get("connection")
        if connection:
            # An identity-based connection is the prefix with __accountName / __*ServiceUri.
            read.setdefault(f"{connection}__accountName", trigger.where)
    missing = sorted(
        f"{name} ({where})"
        for name, where in read.items()
        if name not in bicep and name not in OPTIONAL_SETTINGS
    )
    assert not missing, (
        f"app settings the code reads that infra/app/functionapp.bicep does not set: {missing}"
    )


def test_documented_optional_settings_are_still_read_by_the_code() -> None:
    read = {r.name for r in derive.setting_reads() if r.name}
    assert not set(OPTIONAL_SETTINGS) - read, (
        f"stale OPTIONAL_SETTINGS entries: {set(OPTIONAL_SETTINGS) - read}"
    )


def test_unset_dequeue_count_matches_host_json() -> None:
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    expected = str(host["extensions"]["queues"]["maxDequeueCount"])
    defaults = {r.where: r.default for r in derive.setting_reads() if r.name == "PATCHER_MAX_DEQUEUE_COUNT"}
    wrong = {where: d for where, d in defaults.items() if d != expected}
    assert not wrong, f"PATCHER_MAX_DEQUEUE_COUNT is left unset, so its default must be {expected}: {wrong}"


def test_settings_named_in_the_yaml_configuration_become_key_vault_references() -> None:
    settings = _app_settings()
    main = derive.parse_bicep(INFRA / "main.bicep")
    function_app_params = main["modules"]["functionApp"]["config"]["params"]
    problems = []
    for read in derive.setting_reads():
        if read.name is not None:
            continue
        parameter = DYNAMIC_SETTINGS.get((read.module, read.function))
        if parameter is None:
            problems.append(
                f"{read.where}: reads a setting whose name is computed; map it in DYNAMIC_SETTINGS"
            )
        elif parameter not in settings.key_vault_parameters:
            problems.append(
                f"{read.where}: functionapp.bicep does not turn {parameter} into Key Vault references"
            )
        elif function_app_params.get(parameter) != parameter or parameter not in main["parameters"]:
            problems.append(
                f"{read.where}: main.bicep does not pass its {parameter} parameter to the function app"
            )
    assert not problems, "\n".join(problems)


def test_every_setting_the_bicep_sets_is_read_by_the_code_or_the_platform() -> None:
    read = {r.name for r in derive.setting_reads() if r.name} | set(derive.binding_expression_settings())
    connections = {t.arguments["connection"] for t in derive.triggers() if "connection" in t.arguments}
    unread = [
        name
        for name in _app_settings().literal
        if name not in read and name not in PLATFORM_SETTINGS and name.split("__")[0] not in connections
    ]
    assert not unread, f"settings nothing reads (renamed or removed in the code?): {unread}"


def test_every_queue_message_the_host_holds_has_a_thread_to_run_on() -> None:
    from sandbox.stack import DEPLOYED_SETTINGS

    queues = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))["extensions"]["queues"]
    held = queues["batchSize"] + queues.get("newBatchThreshold", queues["batchSize"] // 2)
    threads = int(_app_settings().literal["PYTHON_THREADPOOL_THREAD_COUNT"])
    assert held <= threads <= 32, f"{threads} threads for {held} messages (the worker allows 1-32)"
    assert DEPLOYED_SETTINGS["PYTHON_THREADPOOL_THREAD_COUNT"] == str(threads), "the sandbox runs as deployed"


def test_no_account_key_or_connection_string_reaches_the_app() -> None:
    settings = _app_settings().literal
    text = _bicep_text()
    storage = derive.unwrap(
        derive.parse_bicep(INFRA / "app" / "storage.bicep")["resources"]["storage"]["config"]
    )
    assert "AzureWebJobsStorage" not in settings, "host storage must use the identity-based settings"
    assert "listKeys" not in text and "listkeys" not in text.lower(), (
        "no account key may be read in a deployment"
    )
    assert storage["properties"]["allowSharedKeyAccess"] is False
    assert storage["properties"]["allowBlobPublicAccess"] is False
    assert storage["properties"]["minimumTlsVersion"] == "TLS1_2"
    assert storage["properties"]["supportsHttpsTrafficOnly"] is True
    for name in ("kubeconfigSettings", "webhookSecretSettings"):
        assert name in _app_settings().key_vault_parameters


def test_runtime_is_declared_the_flex_consumption_way() -> None:
    doc = derive.parse_bicep(INFRA / "app" / "functionapp.bicep")
    site = derive.unwrap(doc["resources"]["site"]["config"])
    plan = derive.unwrap(doc["resources"]["plan"]["config"])
    refused = sorted(FLEX_REFUSED_SETTINGS & set(_app_settings().literal))
    assert plan["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    assert not refused, f"Flex Consumption refuses these app settings: {refused}"
    assert site["properties"]["functionAppConfig"]["runtime"] == {"name": "python", "version": "3.11"}
    assert site["identity"]["type"] == "SystemAssigned"
    assert site["properties"]["httpsOnly"] is True
    assert site["properties"]["siteConfig"]["minTlsVersion"] == "1.2"
    policies = {
        derive.unwrap(r["config"])["name"]: derive.unwrap(r["config"])["properties"]["allow"]
        for r in doc["resources"].values()
        if r["type"] == "Microsoft.Web/sites/basicPublishingCredentialsPolicies"
    }
    assert policies == {"ftp": False, "scm": False}


def test_function_timeout_is_allowed_by_the_plan() -> None:
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    hours, minutes, seconds = (int(x) for x in host["functionTimeout"].split(":"))
    timeout = hours * 3600 + minutes * 60 + seconds
    plan = derive.unwrap(
        derive.parse_bicep(INFRA / "app" / "functionapp.bicep")["resources"]["plan"]["config"]
    )
    # functionTimeout maximum: Consumption 10 min; Flex Consumption, Premium, Dedicated unbounded.
    limit = 600 if plan["sku"].get("tier") == "Dynamic" else None
    assert limit is None or timeout <= limit, f"functionTimeout {timeout}s exceeds the plan's {limit}s"


# ---- storage and Event Grid -------------------------------------------------------------------------


def test_queues_and_table_the_code_uses_exist() -> None:
    storage = INFRA / "app" / "storage.bicep"
    queues = set(derive.bicep_default(storage, "queueNames"))
    needed = {name: where for where, name in derive.queue_constants().items()}
    for t in derive.triggers():
        if t.kind == "queue_trigger":
            needed[t.arguments["queue_name"]] = t.where
            needed[f"{t.arguments['queue_name']}-poison"] = f"{t.where} (the host's poison queue)"
    missing = sorted(f"{q} ({where})" for q, where in needed.items() if q not in queues)
    assert not missing, f"queues not created by storage.bicep: {missing}"
    table = derive.bicep_default(storage, "runsTableName")
    code_defaults = {r.default for r in derive.setting_reads() if r.name == "PATCHER_RUNS_TABLE"}
    assert code_defaults == {table}, (
        f"the code's default table {code_defaults} is not the one created ({table})"
    )
    assert _app_settings().literal.get("PATCHER_RUNS_TABLE") == "runsTableName", (
        "the app must be told the table"
    )


def test_event_subscriptions_deliver_to_an_event_grid_function() -> None:
    functions = {t.function for t in derive.triggers() if t.kind == "event_grid_trigger"}
    targets = set(re.findall(r"/functions/([A-Za-z0-9_]+)'", _bicep_text()))
    assert targets, "no Event Grid subscription found in the Bicep"
    assert targets <= functions, (
        f"subscriptions deliver to {targets - functions}, which are not Event Grid triggers ({functions})"
    )


def _string_constants() -> set[str]:
    import ast

    return {
        n.value.lower()
        for m in derive.code_modules()
        for n in ast.walk(m.tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def test_event_filters_name_events_the_code_recognises() -> None:
    known = _string_constants()
    filtered = []
    for path in derive.deployed_bicep_files():
        for res in (derive.parse_bicep(path).get("resources") or {}).values():
            if res["type"] != "Microsoft.EventGrid/systemTopics/eventSubscriptions":
                continue
            flt = derive.unwrap(res["config"])["properties"]["filter"]
            filtered += flt.get("includedEventTypes", [])
            filtered += [v for f in flt.get("advancedFilters", []) for v in f.get("values", [])]
    assert filtered
    unknown = [v for v in filtered if v.lower() not in known]
    assert not unknown, f"Event Grid filters for values the code never compares with: {unknown}"


# ---- Azure RBAC -----------------------------------------------------------------------------------


def _needed_azure_actions() -> tuple[list[tuple[str, tuple[str, ...], str]], list[str]]:
    """(resource type, any-of actions, where) for every operation the code performs, and the
    calls no table maps yet."""
    calls, unknown_packages = derive.azure_calls()
    needed: list[tuple[str, tuple[str, ...], str]] = []
    unmapped = [f"{p} (imported in {where})" for p, where in unknown_packages.items()]
    for call in calls:
        if call.kind == "sdk":
            if call.key not in SDK_ACTIONS:
                unmapped.append(f"{call.where}: {'.'.join(call.key)} -> add it to SDK_ACTIONS")
                continue
            resource_type, action = SDK_ACTIONS[call.key]
            needed.append((resource_type, (action,), call.where))
            if call.key[1].startswith("begin_"):
                provider = action.split("/")[0]
                if provider not in LRO_POLL_ACTIONS:
                    unmapped.append(
                        f"{call.where}: how are {provider} operations polled? add LRO_POLL_ACTIONS"
                    )
                else:
                    needed.append((resource_type, (LRO_POLL_ACTIONS[provider],), f"{call.where} (polling)"))
        elif call.kind == "rest":
            if call.key not in REST_ACTIONS:
                unmapped.append(f"{call.where}: plain ARM {call.key[2]} -> add it to REST_ACTIONS")
                continue
            resource_type, action = REST_ACTIONS[call.key]
            needed.append((resource_type, (action,), call.where))
        else:
            if call.key[0] not in DATA_ACTIONS:
                unmapped.append(f"{call.where}: storage {call.key[0]} -> add it to DATA_ACTIONS")
                continue
            needed += [(STORAGE, alternatives, call.where) for alternatives in DATA_ACTIONS[call.key[0]]]
    return needed, unmapped


def test_every_azure_operation_the_code_performs_is_granted() -> None:
    grants = derive.role_grants()
    needed, unmapped = _needed_azure_actions()
    assert not unmapped, "Azure calls the tables here do not map yet:\n" + "\n".join(unmapped)
    host_needs = list(HOST_NEEDS)
    settings = _app_settings()
    if settings.key_vault_parameters:
        host_needs.append(
            (VAULT, (f"{VAULT}/secrets/getSecret/action",), "Key Vault references in app settings")
        )
    if "APPLICATIONINSIGHTS_AUTHENTICATION_STRING" in settings.literal:
        host_needs.append(
            (APP_INSIGHTS, ("Microsoft.Insights/Telemetry/Write",), "Entra-authenticated telemetry")
        )
    missing = sorted(
        {
            f"{' or '.join(alts)} on {rtype} ({where})"
            for rtype, alts, where in [*needed, *host_needs]
            if not _covered(rtype, alts, grants)
        }
    )
    assert not missing, "not granted by any role assignment in the deployed Bicep:\n" + "\n".join(missing)


def test_custom_roles_grant_only_actions_the_code_performs() -> None:
    needed, _ = _needed_azure_actions()
    used = {a.lower() for _, alternatives, _ in needed for a in alternatives}
    extra = [
        f"{role}: {action}"
        for role, actions in derive.custom_roles().items()
        for action in actions
        if action.lower() not in used
    ]
    assert not extra, f"custom roles grant actions no code performs (remove them): {extra}"


def test_nothing_is_granted_at_subscription_scope() -> None:
    text = _bicep_text()
    assert not re.search(r"targetScope\s*=\s*'(subscription|managementGroup|tenant)'", text)
    assert not re.search(r"scope:\s*(subscription|managementGroup|tenant)\(", text)
    assert "subscription().id" not in text, "custom roles must be assignable below subscription scope"
    wide = [f"{g.file} {g.assignment}" for g in derive.role_grants() if g.scope_type.startswith("unknown")]
    assert not wide, f"role assignments whose scope cannot be told: {wide}"


# Writes that change what a scale set runs: the model (any part of it, not only the image)
# and its instances' disks. Granted on the named scale sets only, never on a whole resource
# group (which would let the app rewrite every scale set there, other clusters' included).
SCALE_SET_WRITES = (f"{VMSS}/write", f"{VMSS}/reimage/action", f"{VMSS}/manualUpgrade/action")


def test_scale_set_writes_are_granted_per_scale_set_never_per_resource_group() -> None:
    grants = derive.role_grants()
    writers = [
        g for g in grants if any(_matches(p, a) for p in _granted_actions(g) for a in SCALE_SET_WRITES)
    ]
    assert writers, "no role assignment grants the scale-set writes the code performs"
    wide = [f"{g.file} {g.assignment} (scope {g.scope_type})" for g in writers if g.scope_type != VMSS]
    assert not wide, f"scale-set writes granted wider than one scale set: {wide}"


# ---- Kubernetes RBAC ------------------------------------------------------------------------------


def _kube_used_and_granted() -> tuple[dict[derive.Permission, list[str]], dict[derive.Permission, str]]:
    used = {p: w for p, w in derive.kube_permissions().items() if p[:3] not in NOT_NEEDED_K8S}
    return used, derive.k8s_grants(derive.k8s_documents())


def test_kubernetes_roles_grant_everything_the_code_uses() -> None:
    used, granted = _kube_used_and_granted()
    cluster_wide = {p[:3] for p in granted if p[3] is None}
    missing = [
        f"{p[:3]} in {p[3] or 'any namespace'} ({where[0]})"
        for p, where in used.items()
        if p[:3] not in cluster_wide and p not in granted
    ]
    assert not missing, f"the code needs, infra/kubernetes does not grant: {missing}"


def test_kubernetes_roles_grant_nothing_the_code_does_not_use() -> None:
    used, granted = _kube_used_and_granted()
    used_anywhere = {p[:3] for p in used}
    extra = [
        f"{p[:3]} {'cluster-wide' if p[3] is None else 'in ' + p[3]} ({role})"
        for p, role in granted.items()
        if p[:3] not in used_anywhere or (p[3] is not None and p not in used)
    ]
    assert not extra, f"infra/kubernetes grants, the code never uses: {extra}"


def test_access_the_code_uses_in_one_namespace_is_granted_only_there() -> None:
    used, granted = _kube_used_and_granted()
    needed_cluster_wide = {p[:3] for p in used if p[3] is None}
    wider = [
        f"{p[:3]} cluster-wide, but the code only uses it in "
        f"{sorted(str(n[3]) for n in used if n[:3] == p[:3])} ({role}): grant it with a Role there"
        for p, role in granted.items()
        if p[3] is None and p[:3] in {n[:3] for n in used} and p[:3] not in needed_cluster_wide
    ]
    assert not wider, "\n".join(wider)


def test_kubernetes_access_left_out_on_purpose_is_still_reachable_in_the_code() -> None:
    reachable = {p[:3] for p in derive.kube_permissions()}
    stale = sorted(set(NOT_NEEDED_K8S) - reachable)
    assert not stale, f"NOT_NEEDED_K8S entries the code can no longer reach (remove them): {stale}"


def test_token_bindings_and_account_are_one_identity() -> None:
    docs = derive.k8s_documents()
    namespace, name = derive.service_account_of_token(docs)
    accounts = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert [(a["metadata"]["namespace"], a["metadata"]["name"]) for a in accounts] == [(namespace, name)]
    assert any(d["kind"] == "Namespace" and d["metadata"]["name"] == namespace for d in docs)
    bindings = [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert bindings and all(
        d["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": namespace}] for d in bindings
    ), "every binding must bind the token's ServiceAccount, and only it"
    assert derive.k8s_grants(docs), "the ServiceAccount is bound to nothing"


# ---- make-kubeconfig.sh ---------------------------------------------------------------------------

STUB_KUBECTL = r"""#!/usr/bin/env bash
printf '%s\n' "$*" >> "$STUB_LOG"
kubeconfig=""
prev=""
for a in "$@"; do [[ "$prev" == --kubeconfig ]] && kubeconfig="$a"; prev="$a"; done
case "$*" in
  *"get secret"*".data.token"*) printf '%s' "$STUB_TOKEN_B64" ;;
  *"get secret"*"ca\.crt"*) printf '%s' "$STUB_CA_B64" ;;
  *"config view"*) printf '%s' "$STUB_SERVER" ;;
  *"auth can-i"*)
    printf '%s\n' "$kubeconfig" >> "$STUB_SEEN"
    if grep -q "token: $STUB_TOKEN\$" "$kubeconfig"; then echo "${STUB_ANSWER:-yes}"; else echo no; fi ;;
  *) echo "unexpected: kubectl $*" >&2; exit 1 ;;
esac
"""

STUB_AZ = r"""#!/usr/bin/env bash
printf '%s\n' "$*" >> "$STUB_LOG"
while [[ $# -gt 0 ]]; do [[ "$1" == --file ]] && cp "$2" "$STUB_STORED"; shift; done
"""


def _run_make_kubeconfig(
    tmp_path: Path, *, answer: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("kubectl", STUB_KUBECTL), ("az", STUB_AZ)):
        (bin_dir / name).write_text(body, encoding="utf-8")
        (bin_dir / name).chmod(0o755)
    token = "eyJhbGciOiJSUzI1NiJ9.c3ViamVjdA.c2lnbmF0dXJl"
    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").decode()
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "STUB_LOG": str(tmp_path / "calls.log"),
        "STUB_SEEN": str(tmp_path / "seen.log"),
        "STUB_STORED": str(tmp_path / "stored.yaml"),
        "STUB_TOKEN": token,
        "STUB_TOKEN_B64": base64.b64encode(token.encode()).decode(),
        "STUB_CA_B64": ca,
        "STUB_SERVER": "https://k8s-prod-weu.contoso.example:6443",
        "STUB_ANSWER": answer,
    }
    result = subprocess.run(
        [
            "bash",
            str(INFRA / "kubernetes" / "make-kubeconfig.sh"),
            "--context",
            "prod-weu-admin",
            "--cluster",
            "prod-weu",
            "--vault",
            "kv-nodepatcher-x",
            "--secret-name",
            "kubeconfig-prod-weu",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result, env


def test_make_kubeconfig_stores_a_kubeconfig_the_app_loads(tmp_path: Path) -> None:
    from shared.adapters.kube import KubeClient

    result, env = _run_make_kubeconfig(tmp_path, answer="yes")
    assert result.returncode == 0, result.stderr
    calls = Path(env["STUB_LOG"]).read_text(encoding="utf-8")
    az = [line for line in calls.splitlines() if line.startswith("keyvault secret set")]
    assert len(az) == 1 and "--vault-name kv-nodepatcher-x --name kubeconfig-prod-weu --file" in az[0]
    assert "--value" not in calls and env["STUB_TOKEN"] not in calls, (
        "the token must never be on a command line"
    )
    stored = Path(env["STUB_STORED"]).read_text(encoding="utf-8")
    client = KubeClient.from_kubeconfig(stored)  # exactly how the app reads the setting
    configuration = client._api_client.configuration
    assert configuration.host == env["STUB_SERVER"]
    assert configuration.api_key["BearerToken"] == f"Bearer {env['STUB_TOKEN']}"
    seen = Path(env["STUB_SEEN"]).read_text(encoding="utf-8").split()
    assert seen and not any(Path(p).exists() for p in seen), "the temporary kubeconfig must be removed"


def test_make_kubeconfig_stores_nothing_when_the_cluster_refuses_the_token(tmp_path: Path) -> None:
    result, env = _run_make_kubeconfig(tmp_path, answer="no")
    assert result.returncode != 0
    assert "cannot 'list nodes'" in result.stderr
    assert not Path(env["STUB_STORED"]).exists()
    assert "keyvault" not in Path(env["STUB_LOG"]).read_text(encoding="utf-8")
