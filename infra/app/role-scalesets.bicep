// Deployed once per resource group that holds node-pool scale sets (main.bicep scopes it
// there, in any subscription). Grants the app exactly the Compute operations
// shared/compute.py performs, through a custom role: the built-in Virtual Machine
// Contributor would also work but adds VM, disk, NIC, network-join and storage-key
// actions the app never needs. tests/infra/test_infra.py fails if the code calls an
// operation this list lacks, or if this list grants one the code no longer calls.
//
// Resource-group scope, not per scale set: pools come and go with the cluster (node-pool
// upgrades, new pools), and the role holds only these actions.

@description('Object id of the function app\'s system-assigned identity.')
param principalId string

@description('Function app name, to keep role names unique per deployment.')
param appName string

resource computeRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, appName, 'vmss-node-patcher-compute')
  properties: {
    roleName: 'VMSS node patcher compute (${appName}, ${resourceGroup().name})'
    description: 'Reimage or upgrade scale-set instances and read their state; used by the vmss-node-patcher function app.'
    type: 'CustomRole'
    permissions: [
      {
        actions: [
          // virtual_machine_scale_sets.get: the model's image, to know what a reimage installs.
          'Microsoft.Compute/virtualMachineScaleSets/read'
          // virtual_machine_scale_sets.begin_update: point the model at a new gallery image version.
          'Microsoft.Compute/virtualMachineScaleSets/write'
          // virtual_machine_scale_sets.begin_reimage: reimage one drained instance.
          'Microsoft.Compute/virtualMachineScaleSets/reimage/action'
          // virtual_machine_scale_sets.begin_update_instances (REST manualupgrade): apply the latest model.
          'Microsoft.Compute/virtualMachineScaleSets/manualUpgrade/action'
          // virtual_machine_scale_set_vms.get / list: instance view, latestModelApplied, image.
          'Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read'
          // Polling the long-running operations above (Azure-AsyncOperation / Location URLs).
          'Microsoft.Compute/locations/operations/read'
        ]
        notActions: []
      }
    ]
    assignableScopes: [
      resourceGroup().id
    ]
  }
}

resource computeAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, principalId, computeRole.id)
  properties: {
    roleDefinitionId: computeRole.id
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'vmss-node-patcher: cordon/drain/reimage workflow on this resource group\'s scale sets'
  }
}
