// Deployed once per resource group holding Azure Automation accounts whose Update
// Management pre-scripts call the app's hook (legacy: Automation Update Management is
// retired; Update Manager events are the supported path).
//
// A custom role with only softwareUpdateConfigurations/read, assigned on each account:
// the hook reads the configuration's machine list instead of trusting the run context
// alone (shared/automation.py). Built-in Reader would also expose runbooks, variables'
// metadata and job output; Automation Job Operator cannot read configurations at all.

@description('Object id of the function app\'s system-assigned identity.')
param principalId string

@description('Function app name, to keep role names unique per deployment.')
param appName string

@description('Names of the Automation accounts in this resource group.')
param accountNames array

resource accounts 'Microsoft.Automation/automationAccounts@2023-11-01' existing = [for accountName in accountNames: {
  name: accountName
}]

resource readRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, appName, 'vmss-node-patcher-automation-read')
  properties: {
    roleName: 'VMSS node patcher update configuration reader (${appName}, ${resourceGroup().name})'
    description: 'Read software update configurations; used by the vmss-node-patcher function app.'
    type: 'CustomRole'
    permissions: [
      {
        actions: [
          // software_update_configurations.get_by_name: the configuration's target machines.
          'Microsoft.Automation/automationAccounts/softwareUpdateConfigurations/read'
        ]
        notActions: []
      }
    ]
    assignableScopes: [
      resourceGroup().id
    ]
  }
}

resource readAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (accountName, i) in accountNames: {
  name: guid(accounts[i].id, principalId, readRole.id)
  scope: accounts[i]
  properties: {
    roleDefinitionId: readRole.id
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'vmss-node-patcher: read the machines of a software update configuration'
  }
}]
