// Deployed once per resource group that holds node-pool scale sets (main.bicep scopes it
// there, in any subscription). Grants the app exactly the Compute operations
// shared/adapters/compute.py performs, through custom roles: the built-in Virtual Machine
// Contributor would also work but adds VM, disk, NIC, network-join and storage-key
// actions the app never needs. tests/infra/test_infra.py fails if the code calls an
// operation these lists lack, or if they grant one the code no longer calls.
//
// Per scale set, not per resource group: the scale-set actions (a model write in
// particular, which can change any part of the model) are assigned on each scale set the
// configuration patches, so the app cannot touch the other scale sets of the group (another
// cluster's, a system pool kept out of the configuration). A new pool needs its scale set
// added to scaleSetNames and a deployment. Only the polling of long-running operations,
// which ARM serves from the location, not from the scale set, is granted on the group.

@description('Object id of the function app\'s system-assigned identity.')
param principalId string

@description('Function app name, to keep role names unique per deployment.')
param appName string

@description('Names of the scale sets in this resource group that the configuration\'s pools name (pools[].scaleSetId).')
param scaleSetNames array

resource computeRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, appName, 'vmss-node-patcher-compute')
  properties: {
    roleName: 'VMSS node patcher compute (${appName}, ${resourceGroup().name})'
    description: 'Reimage or upgrade scale-set instances and read their state; used by the vmss-node-patcher function app, assigned per scale set.'
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
        ]
        notActions: []
      }
    ]
    // Assignable in this resource group, i.e. on the scale sets below.
    assignableScopes: [
      resourceGroup().id
    ]
  }
}

resource operationsRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, appName, 'vmss-node-patcher-compute-operations')
  properties: {
    roleName: 'VMSS node patcher operations (${appName}, ${resourceGroup().name})'
    description: 'Read the progress of Compute long-running operations; used by the vmss-node-patcher function app.'
    type: 'CustomRole'
    permissions: [
      {
        actions: [
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

resource scaleSets 'Microsoft.Compute/virtualMachineScaleSets@2024-07-01' existing = [for name in scaleSetNames: {
  name: name
}]

resource computeAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (name, i) in scaleSetNames: {
  name: guid(scaleSets[i].id, principalId, computeRole.id)
  scope: scaleSets[i]
  properties: {
    roleDefinitionId: computeRole.id
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'vmss-node-patcher: cordon/drain/reimage workflow on this scale set'
  }
}]

resource operationsAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, principalId, operationsRole.id)
  properties: {
    roleDefinitionId: operationsRole.id
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'vmss-node-patcher: poll the reimage and model-update operations it starts here'
  }
}

// Flexible scale sets: their instances are VMs of their own (Microsoft.Compute/virtualMachines
// in this group, named {scaleSet}_{8 hex}), read and reimaged through the VM API, and a
// role assigned on the scale set does not reach them. The VMs come and go with the scale
// set, so the two VM actions are granted on the group; before any reimage the app checks
// that the VM names the pool's scale set in virtualMachineScaleSet.id. Deployed only for
// groups that hold Flexible pools.
@description('Whether scaleSetNames include Flexible scale sets (their VMs need the VM actions below).')
param flexibleScaleSets bool = false

resource flexibleVmRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = if (flexibleScaleSets) {
  name: guid(resourceGroup().id, appName, 'vmss-node-patcher-flexible-vms')
  properties: {
    roleName: 'VMSS node patcher Flexible VMs (${appName}, ${resourceGroup().name})'
    description: 'Read and reimage the VMs of Flexible scale sets; used by the vmss-node-patcher function app.'
    type: 'CustomRole'
    permissions: [
      {
        actions: [
          // virtual_machines.get / list: a Flexible instance's image, OS disk, instance view, scale set.
          'Microsoft.Compute/virtualMachines/read'
          // virtual_machines.begin_reimage: reimage one drained Flexible instance.
          'Microsoft.Compute/virtualMachines/reimage/action'
        ]
        notActions: []
      }
    ]
    assignableScopes: [
      resourceGroup().id
    ]
  }
}

resource flexibleVmAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (flexibleScaleSets) {
  name: guid(resourceGroup().id, principalId, 'vmss-node-patcher-flexible-vms')
  properties: {
    roleDefinitionId: flexibleVmRole.id
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'vmss-node-patcher: read and reimage the drained VMs of the Flexible scale sets here'
  }
}
