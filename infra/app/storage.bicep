// The app's storage account: the Functions host's own state (blob leases, timer
// schedules, keys), the Flex Consumption deployment package, the work queues and the
// run-state table.
//
// Shared-key access is disabled: every client (the host, the Python code, Event Grid's
// trigger plumbing, operators) authenticates with Entra ID, and the function app's
// identity holds data-plane roles (roles-app.bicep) instead of account keys in settings.

@description('Storage account name (3-24 lower-case letters and digits, globally unique).')
@minLength(3)
@maxLength(24)
param name string

param location string
param tags object = {}

@description('Blob container Flex Consumption deploys the app package to.')
param deploymentContainerName string

@description('Blob container for the YAML configuration read from a blob (PATCHER_CONFIG_BLOB).')
param configContainerName string = 'patcher-config'

@description('Queues the app uses: the node work queue and the GitOps sync queue, each with the poison queue the host moves a message to after maxDequeueCount failed deliveries.')
param queueNames array = [
  'node-work'
  'node-work-poison'
  'gitops-sync'
  'gitops-sync-poison'
]

@description('Table holding run and node records (shared/rollout/store/table.py).')
param runsTableName string = 'patchruns'

@description('ZRS keeps the run state available through a zone outage; choose Standard_LRS where ZRS is not offered.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param skuName string = 'Standard_ZRS'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  // checkov:skip=CKV_AZURE_206: Replication is a parameter (skuName, default Standard_ZRS). The account holds transient run state and queues that the sweeper rebuilds from, not data that needs a second region.
  sku: {
    name: skuName
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    // checkov:skip=CKV_AZURE_59: Same reason as CKV_AZURE_35: public network access is needed by the app's host and by operators until VNet integration and private endpoints are added; anonymous and key access are both off.
    publicNetworkAccess: 'Enabled'
    // checkov:skip=CKV_AZURE_35: The app runs on Flex Consumption without VNet integration, so its traffic does not come from a trusted network; access is controlled by Entra ID alone (shared keys off, RBAC data roles). infra/README.md says how to add VNet integration and private endpoints.
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        queue: {
          enabled: true
          keyType: 'Account'
        }
        table: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

// The configuration can live here instead of in the package, so that a change needs no
// republish (README, "The configuration as a blob"); the app only reads it.
resource configContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: configContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for queueName in queueNames: {
  parent: queueService
  name: queueName
}]

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource runsTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: runsTableName
}

output name string = storage.name
output id string = storage.id
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output runsTableName string = runsTable.name
output configContainerName string = configContainer.name
