// Deployed once per Azure Update Manager maintenance configuration whose runs the app
// follows (main.bicep scopes it to the configuration's resource group).
//
// * A custom role with only Microsoft.Maintenance/applyUpdates/write, assigned on the
//   configuration: the pre-maintenance handler cancels a run it cannot make safe
//   (PUT {correlationId} with status Cancel; Update Manager never cancels by itself on a
//   handler failure). No built-in role is that narrow: Scheduled Patching Contributor
//   can also change configurations and their assignments.
// * The configuration's Event Grid system topic and, once the azure_events function is
//   published (deployEventSubscriptions), a subscription for the pre/post events.

@description('Object id of the function app\'s system-assigned identity.')
param principalId string

@description('Function app name, to keep role names unique per deployment.')
param appName string

@description('Name of the maintenance configuration (in this resource group).')
param configurationName string

@description('Region of the maintenance configuration; its system topic must be in the same region.')
param location string

@description('Name of an existing system topic on this configuration (the portal creates one when you add pre/post events; only one may exist); empty creates one.')
param existingSystemTopicName string = ''

@description('Function app resource id; events go to its azure_events function.')
param functionAppId string

@description('Create the event subscription (the azure_events function must already be published).')
param deployEventSubscriptions bool

var topicName = empty(existingSystemTopicName) ? 'evgt-${configurationName}' : existingSystemTopicName

resource configuration 'Microsoft.Maintenance/maintenanceConfigurations@2023-04-01' existing = {
  name: configurationName
}

resource cancelRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, appName, 'vmss-node-patcher-maintenance-cancel', configurationName)
  properties: {
    roleName: 'VMSS node patcher maintenance cancel (${appName}, ${configurationName})'
    description: 'Cancel a scheduled Update Manager run; used by the vmss-node-patcher function app.'
    type: 'CustomRole'
    permissions: [
      {
        actions: [
          // PUT .../maintenanceConfigurations/{mc}/providers/Microsoft.Maintenance/applyUpdates/{run}
          // with {"properties": {"status": "Cancel"}} (api-version 2023-09-01-preview).
          'Microsoft.Maintenance/applyUpdates/write'
        ]
        notActions: []
      }
    ]
    // Custom roles are assignable at resource-group scope at the narrowest; the one
    // assignment below is on the configuration itself.
    assignableScopes: [
      resourceGroup().id
    ]
  }
}

resource cancelAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(configuration.id, principalId, cancelRole.id)
  scope: configuration
  properties: {
    roleDefinitionId: cancelRole.id
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'vmss-node-patcher: cancel a maintenance run the cluster cannot take'
  }
}

resource topic 'Microsoft.EventGrid/systemTopics@2022-06-15' = if (empty(existingSystemTopicName)) {
  name: topicName
  location: location
  properties: {
    source: configuration.id
    topicType: 'Microsoft.Maintenance.MaintenanceConfigurations'
  }
}

resource subscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = if (deployEventSubscriptions) {
  name: '${topicName}/vmss-node-patcher'
  dependsOn: [
    topic
  ]
  properties: {
    eventDeliverySchema: 'EventGridSchema'
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${functionAppId}/functions/azure_events'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    filter: {
      includedEventTypes: [
        'Microsoft.Maintenance.PreMaintenanceEvent'
        'Microsoft.Maintenance.PostMaintenanceEvent'
      ]
    }
    // A pre-event is useless after the run starts (it fires 30-40 minutes before), and
    // if it cannot be delivered at all Update Manager cancels the run itself.
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 60
    }
  }
}
