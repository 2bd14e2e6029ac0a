"""The simulated ARM's authorizer (sandbox/arm/rbac.py): ARM's matching of actions and
notActions, scope inheritance, assignable scopes, requests as actions, denial bodies, and
the assignments infra/'s Bicep makes for a deployment's parameters."""

from __future__ import annotations

import pytest

from sandbox.arm.rbac import (
    BUILT_IN_ROLES,
    AccessControl,
    DeploymentTarget,
    Permission,
    Principal,
    Request,
    RoleAssignment,
    RoleDefinition,
    authorization_failed,
    covers,
    linked_authorization_failed,
    request_action,
)

SUB = "/subscriptions/s1"
RG = f"{SUB}/resourceGroups/rg1"
VMSS = f"{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/v1"
READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"


@pytest.mark.parametrize(
    ("pattern", "action", "allowed"),
    [
        ("*/read", "Microsoft.Compute/virtualMachineScaleSets/read", True),
        ("*/read", "Microsoft.Compute/virtualMachineScaleSets/write", False),
        ("Microsoft.Compute/*", "Microsoft.Compute/virtualMachineScaleSets/reimage/action", True),
        ("Microsoft.Compute/*", "Microsoft.Network/virtualNetworks/read", False),
        (
            "microsoft.compute/virtualmachinescalesets/MANUALUPGRADE/action",
            "Microsoft.Compute/virtualMachineScaleSets/manualUpgrade/action",
            True,
        ),
        ("Microsoft.KeyVault/locations/*/read", "Microsoft.KeyVault/locations/deletedVaults/read", True),
        (
            "Microsoft.Compute/virtualMachineScaleSets/read",
            "Microsoft.Compute/virtualMachineScaleSets/readx",
            False,
        ),
        ("*", "Microsoft.Anything/at/all/action", True),
    ],
)
def test_actions_match_case_insensitively_with_wildcards(pattern: str, action: str, allowed: bool) -> None:
    assert Permission((pattern,)).allows(action) is allowed


def test_not_actions_remove_from_their_own_block_only() -> None:
    narrowed = RoleDefinition(
        "11111111-0000-0000-0000-000000000001",
        "all but writes",
        (Permission(("Microsoft.Compute/*",), ("*/write",)),),
    )
    writer = RoleDefinition(
        "11111111-0000-0000-0000-000000000002",
        "writer",
        (Permission(("Microsoft.Compute/virtualMachineScaleSets/write",)),),
    )
    write = "Microsoft.Compute/virtualMachineScaleSets/write"
    assert narrowed.allows("Microsoft.Compute/virtualMachineScaleSets/read")
    assert not narrowed.allows(write)
    alone = AccessControl({narrowed.id: narrowed}, [RoleAssignment("p", narrowed.id, RG)])
    assert not alone.allowed("p", write, VMSS)
    # A notAction is no deny: another role's grant still applies.
    both = AccessControl(
        {narrowed.id: narrowed, writer.id: writer},
        [RoleAssignment("p", narrowed.id, RG), RoleAssignment("p", writer.id, VMSS)],
    )
    assert both.allowed("p", write, VMSS)


@pytest.mark.parametrize(
    ("assigned", "scope", "covered"),
    [
        (RG, VMSS, True),
        (RG, f"{VMSS}/virtualMachines/3", True),
        (SUB, VMSS, True),
        (VMSS, VMSS, True),
        (VMSS.upper(), VMSS, True),
        (VMSS, RG, False),
        (f"{SUB}/resourceGroups/rg", VMSS, False),  # rg is not a prefix of rg1
        (f"{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/v", VMSS, False),
        ("/", VMSS, True),
    ],
)
def test_an_assignment_covers_its_scope_and_everything_below(
    assigned: str, scope: str, covered: bool
) -> None:
    assert covers(assigned, scope) is covered


def test_only_the_assigned_principal_is_allowed() -> None:
    control = AccessControl(dict(BUILT_IN_ROLES), [RoleAssignment("app", READER, RG)])
    read = "Microsoft.Compute/virtualMachineScaleSets/read"
    assert control.allowed("APP", read, VMSS)  # object ids compare case-insensitively
    assert not control.allowed("someone-else", read, VMSS)
    assert not control.allowed("app", read, f"{SUB}/resourceGroups/rg2")


def test_a_custom_role_outside_its_assignable_scopes_fails_to_load() -> None:
    role = RoleDefinition("22222222-0000-0000-0000-000000000001", "narrow", (Permission(("*",)),), (RG,))
    AccessControl({role.id: role}, [RoleAssignment("p", role.id, VMSS)])
    with pytest.raises(ValueError, match="not assignable at scope '/subscriptions/s1/resourceGroups/rg2'"):
        AccessControl({role.id: role}, [RoleAssignment("p", role.id, f"{SUB}/resourceGroups/rg2")])


def test_an_unknown_role_definition_fails_to_load_with_its_source() -> None:
    with pytest.raises(ValueError, match=r"app/x\.bicep:a names role definition 0000"):
        AccessControl({}, [RoleAssignment("p", "0000", RG, "app/x.bicep:a")])


@pytest.mark.parametrize(
    ("method", "path", "action", "scope"),
    [
        ("GET", VMSS, "Microsoft.Compute/virtualMachineScaleSets/read", VMSS),
        ("PATCH", VMSS, "Microsoft.Compute/virtualMachineScaleSets/write", VMSS),
        ("PUT", VMSS, "Microsoft.Compute/virtualMachineScaleSets/write", VMSS),
        ("POST", f"{VMSS}/reimage", "Microsoft.Compute/virtualMachineScaleSets/reimage/action", VMSS),
        (
            "POST",
            f"{VMSS}/manualupgrade",
            "Microsoft.Compute/virtualMachineScaleSets/manualupgrade/action",
            VMSS,
        ),
        ("POST", f"{VMSS}/delete", "Microsoft.Compute/virtualMachineScaleSets/delete/action", VMSS),
        (
            "GET",
            f"{VMSS}/virtualMachines",
            "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read",
            VMSS,
        ),
        (
            "GET",
            f"{VMSS}/virtualMachines/3",
            "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read",
            f"{VMSS}/virtualMachines/3",
        ),
        (
            "DELETE",
            f"{VMSS}/virtualMachines/3",
            "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/delete",
            f"{VMSS}/virtualMachines/3",
        ),
        (
            "GET",
            f"{RG}/providers/Microsoft.Compute/virtualMachineScaleSets",
            "Microsoft.Compute/virtualMachineScaleSets/read",
            RG,
        ),
        (
            "GET",
            f"{SUB}/providers/Microsoft.Compute/locations/westeurope/operations/op1",
            "Microsoft.Compute/locations/operations/read",
            f"{SUB}/providers/Microsoft.Compute/locations/westeurope/operations/op1",
        ),
        (
            "GET",
            f"{SUB}/providers/Microsoft.Compute/locations/westeurope/operationresults/op1",
            "Microsoft.Compute/locations/operations/read",
            f"{SUB}/providers/Microsoft.Compute/locations/westeurope/operationresults/op1",
        ),
        (
            "PUT",
            f"{RG}/providers/Microsoft.Maintenance/maintenanceConfigurations/mc/providers"
            "/Microsoft.Maintenance/applyUpdates/run1",
            "Microsoft.Maintenance/applyUpdates/write",
            f"{RG}/providers/Microsoft.Maintenance/maintenanceConfigurations/mc/providers"
            "/Microsoft.Maintenance/applyUpdates/run1",
        ),
        (
            "GET",
            f"{RG}/providers/Microsoft.Compute/galleries/g/images/i/versions/1.0.0",
            "Microsoft.Compute/galleries/images/versions/read",
            f"{RG}/providers/Microsoft.Compute/galleries/g/images/i/versions/1.0.0",
        ),
        ("GET", RG, "Microsoft.Resources/subscriptions/resourceGroups/read", RG),
    ],
)
def test_requests_are_authorized_as_their_arm_action_over_their_resource(
    method: str, path: str, action: str, scope: str
) -> None:
    assert request_action(method, path) == Request(action, scope)


def test_denials_have_arms_bodies() -> None:
    who = Principal("client-1", "object-1")
    request = Request("Microsoft.Compute/virtualMachineScaleSets/read", VMSS)
    assert authorization_failed(who, request) == {
        "error": {
            "code": "AuthorizationFailed",
            "message": "The client 'client-1' with object id 'object-1' does not have authorization to "
            f"perform action 'Microsoft.Compute/virtualMachineScaleSets/read' over scope '{VMSS}' or the "
            "scope is invalid. If access was recently granted, please refresh your credentials.",
        }
    }
    image = f"{RG}/providers/Microsoft.Compute/galleries/g/images/i/versions/1.0.0"
    linked = linked_authorization_failed(
        who,
        Request("Microsoft.Compute/virtualMachineScaleSets/write", VMSS),
        Request("Microsoft.Compute/galleries/images/versions/read", image),
    )
    assert linked["error"]["code"] == "LinkedAuthorizationFailed"
    assert linked["error"]["message"] == (
        "The client 'client-1' with object id 'object-1' has permission to perform action "
        f"'Microsoft.Compute/virtualMachineScaleSets/write' on scope '{VMSS}'; however, it does not have "
        "permission to perform action 'Microsoft.Compute/galleries/images/versions/read' on the linked "
        f"scope(s) '{image}' or the linked scope(s) are invalid."
    )


# ---- what infra/ grants -------------------------------------------------------------------------

NODES = "/subscriptions/s-nodes/resourceGroups/rg-nodes"
IMAGES = "/subscriptions/s-images/resourceGroups/rg-images"
MC = f"{NODES}/providers/Microsoft.Maintenance/maintenanceConfigurations/weekly"
ACCOUNTS = f"{NODES}/providers/Microsoft.Automation/automationAccounts"


@pytest.fixture(scope="module")
def infra() -> AccessControl:
    return AccessControl.from_bicep(
        {
            "scaleSetResourceGroups": [{"id": NODES, "scaleSets": ["vmss-a", "vmss-b"]}],
            "galleryResourceGroups": [{"id": IMAGES, "galleries": ["gal"]}],
            "maintenanceConfigurations": [{"id": MC, "location": "westeurope"}],
        },
        principal_id="app",
        target=DeploymentTarget("s-app", "rg-app"),
    )


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", f"{NODES}/providers/Microsoft.Compute/virtualMachineScaleSets/vmss-a", True),
        ("PATCH", f"{NODES}/providers/Microsoft.Compute/virtualMachineScaleSets/vmss-b", True),
        ("POST", f"{NODES}/providers/Microsoft.Compute/virtualMachineScaleSets/vmss-a/reimage", True),
        ("POST", f"{NODES}/providers/Microsoft.Compute/virtualMachineScaleSets/vmss-a/manualupgrade", True),
        ("GET", f"{NODES}/providers/Microsoft.Compute/virtualMachineScaleSets/vmss-a/virtualMachines", True),
        (
            "GET",
            f"{NODES}/providers/Microsoft.Compute/virtualMachineScaleSets/vmss-a/virtualMachines/0",
            True,
        ),
        # Per scale set: another scale set of the same group is not the app's.
        ("GET", f"{NODES}/providers/Microsoft.Compute/virtualMachineScaleSets/vmss-c", False),
        ("PATCH", f"{NODES}/providers/Microsoft.Compute/virtualMachineScaleSets/vmss-c", False),
        ("POST", f"{NODES}/providers/Microsoft.Compute/virtualMachineScaleSets/vmss-a/delete", False),
        ("GET", f"{IMAGES}/providers/Microsoft.Compute/galleries/gal/images/i/versions/1.0.0", True),
        ("PUT", f"{IMAGES}/providers/Microsoft.Compute/galleries/gal/images/i/versions/1.0.0", False),
        ("GET", f"{IMAGES}/providers/Microsoft.Compute/galleries/other/images/i/versions/1.0.0", False),
        ("PUT", f"{MC}/providers/Microsoft.Maintenance/applyUpdates/run1", True),
        ("GET", f"{MC}/providers/Microsoft.Maintenance/applyUpdates/run1", False),
        # The Automation hook is retired: nothing of an account is granted.
        ("GET", f"{ACCOUNTS}/ops/softwareUpdateConfigurations/weekly", False),
        ("GET", f"{ACCOUNTS}/ops/softwareUpdateConfigurationRuns/r1", False),
        ("GET", f"{ACCOUNTS}/other/softwareUpdateConfigurations/weekly", False),
    ],
)
def test_the_bicep_grants_exactly_the_operations_of_the_configured_resources(
    infra: AccessControl, method: str, path: str, allowed: bool
) -> None:
    request = request_action(method, path)
    assert infra.allowed("app", request.action, request.scope) is allowed


def test_operation_polls_are_granted_on_the_scale_sets_group_not_the_subscription(
    infra: AccessControl,
) -> None:
    poll = "Microsoft.Compute/locations/operations/read"
    assert infra.allowed("app", poll, NODES)
    assert not infra.allowed("app", poll, "/subscriptions/s-nodes")
    assert not infra.allowed("app", poll, IMAGES)


def test_a_parameter_main_bicep_does_not_declare_is_refused() -> None:
    with pytest.raises(ValueError, match=r"main\.bicep declares no parameter automationAccountGroups"):
        AccessControl.from_bicep(
            {"automationAccountGroups": []}, principal_id="app", target=DeploymentTarget("s", "rg")
        )


def test_nothing_is_granted_to_anyone_else_or_at_subscription_scope(infra: AccessControl) -> None:
    assert {a.principal_id for a in infra.assignments} == {"app"}
    assert all("/resourceGroups/" in a.scope for a in infra.assignments)


@pytest.mark.parametrize("flexible", [True, False])
def test_flexible_groups_get_the_vm_actions_on_the_group_and_others_do_not(flexible: bool) -> None:
    group = {"id": NODES, "scaleSets": ["vmss-f"], **({"flexible": True} if flexible else {})}
    control = AccessControl.from_bicep(
        {"scaleSetResourceGroups": [group]},
        principal_id="app",
        target=DeploymentTarget("s-app", "rg-app"),
    )
    vm = f"{NODES}/providers/Microsoft.Compute/virtualMachines/vmss-f_0a1b2c3d"
    for method, path in (
        ("GET", vm),
        ("POST", f"{vm}/reimage"),
        ("GET", f"{NODES}/providers/Microsoft.Compute/virtualMachines"),
    ):
        request = request_action(method, path)
        assert control.allowed("app", request.action, request.scope) is flexible
    assert not control.allowed("app", "Microsoft.Compute/virtualMachines/write", vm)
