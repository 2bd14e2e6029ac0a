// Deployed once per resource group that holds Compute Galleries the app follows.
//
// * Reader on each gallery: the app reads a new image version (provisioning state, target
//   regions, tags) before rolling it out, and ARM checks read access to an image version
//   when the app points a scale-set model at it (linked access check on begin_update).
// * The resource group's Event Grid system topic and, once the azure_events function is
//   published (deployEventSubscriptions), one subscription per gallery delivering its
//   image-version writes to the app.

@description('Object id of the function app\'s system-assigned identity.')
param principalId string

@description('Names of the galleries in this resource group.')
param galleryNames array

@description('Name of an existing Microsoft.Resources.ResourceGroups system topic on this resource group (there can be only one per source); empty creates one.')
param existingSystemTopicName string = ''

@description('Function app resource id; events go to its azure_events function.')
param functionAppId string

@description('Create the event subscriptions (the azure_events function must already be published).')
param deployEventSubscriptions bool

var readerRoleId = 'acdd72a7-3385-48ef-bd42-f606fba81ae7' // Reader: */read
var topicName = empty(existingSystemTopicName) ? 'evgt-${resourceGroup().name}-resources' : existingSystemTopicName

resource galleries 'Microsoft.Compute/galleries@2023-07-03' existing = [for galleryName in galleryNames: {
  name: galleryName
}]

// gallery_image_versions.get (Microsoft.Compute/galleries/images/versions/read) and the
// linked read check when a scale-set model is pointed at a version.
resource galleryReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (galleryName, i) in galleryNames: {
  name: guid(galleries[i].id, principalId, readerRoleId)
  scope: galleries[i]
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', readerRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'vmss-node-patcher: read image versions before rolling them out'
  }
}]

resource topic 'Microsoft.EventGrid/systemTopics@2022-06-15' = if (empty(existingSystemTopicName)) {
  name: topicName
  location: 'global'
  properties: {
    source: resourceGroup().id
    topicType: 'Microsoft.Resources.ResourceGroups'
  }
}

// Only successful image-version writes in this gallery: ARM emits a ResourceWriteSuccess
// for every PUT/PATCH in the resource group.
resource subscriptions 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = [for galleryName in galleryNames: if (deployEventSubscriptions) {
  name: '${topicName}/vmss-node-patcher-${galleryName}'
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
        'Microsoft.Resources.ResourceWriteSuccess'
      ]
      subjectBeginsWith: '${resourceGroup().id}/providers/Microsoft.Compute/galleries/${galleryName}/images/'
      advancedFilters: [
        {
          operatorType: 'StringIn'
          key: 'data.operationName'
          values: [
            'Microsoft.Compute/galleries/images/versions/write'
          ]
        }
      ]
    }
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
  }
}]
