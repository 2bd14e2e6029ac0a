// Role assignments on the app's own resources (its resource group). Each is scoped to the
// one resource it is for, never to the resource group or the subscription.
// Role ids: https://learn.microsoft.com/azure/role-based-access-control/built-in-roles

@description('Object id of the function app\'s system-assigned identity.')
param principalId string

param storageAccountName string
param vaultName string
param appInsightsName string

@description('The configuration blob\'s container (storage.bicep).')
param configContainerName string

@description('Object ids of the operators (users or groups) who store kubeconfigs and webhook secrets with make-kubeconfig.sh / az keyvault secret set.')
param secretsOfficerPrincipalIds array = []

var roles = {
  // Microsoft.Storage/storageAccounts/blobServices/containers/* and .../blobs/* (data).
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  // .../queueServices/queues/{read,write,delete} and .../queues/messages/* (data).
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  // .../tableServices/tables/{read,write,delete} and .../tables/entities/* (data).
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  // Microsoft.KeyVault/vaults/secrets/getSecret/action and readMetadata/action (data).
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  // Microsoft.KeyVault/vaults/secrets/* (data).
  keyVaultSecretsOfficer: 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
  // .../blobServices/containers/read and .../containers/blobs/read (data).
  storageBlobDataReader: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
  // Microsoft.Insights/Telemetry/Write and Metrics/Write (data).
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource configContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  name: '${storageAccountName}/default/${configContainerName}'
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

// The Functions host keeps its state in blobs (host keys, singleton and timer-schedule
// leases, the listener's lock) and Flex Consumption reads the deployment package from a
// container, both with the app identity. Owner (not Contributor) because the host sets
// blob leases and container metadata it creates itself.
resource blobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, roles.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Functions host state and the Flex Consumption deployment package'
  }
}

// The queue trigger reads, updates and deletes node-work messages and moves failures to
// node-work-poison; shared/adapters/workqueue.py sends work items (with visibility delays) and
// dead-letters malformed ones, creating a queue if it is missing.
resource queueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, roles.storageQueueDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Queue trigger and work-item producer (node-work, node-work-poison, gitops-sync)'
  }
}

// shared/rollout/store/table.py reads and writes run and node records with ETag-conditioned
// entity-group transactions, and creates the table if it is missing.
resource tableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, roles.storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Run state (patchruns table)'
  }
}

// shared/config_source.py reads the YAML configuration from this container
// (PATCHER_CONFIG_BLOB): its ETag and the version with that ETag, nothing else. Read only,
// and on this container only, so that the grant stays right if the host's account-wide
// Owner (above) is ever narrowed to the host's own containers.
resource configReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(configContainer.id, principalId, roles.storageBlobDataReader)
  scope: configContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataReader)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'The configuration blob (PATCHER_CONFIG_BLOB)'
  }
}

// The platform resolves the @Microsoft.KeyVault(...) app settings (kubeconfigs, webhook
// secrets) with the app identity: read secrets, nothing else.
resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId, roles.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Key Vault references in app settings'
  }
}

// Application Insights has local auth disabled; telemetry is accepted only from an
// identity with this role on the component.
resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, principalId, roles.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Entra-authenticated telemetry'
  }
}

// Operators write kubeconfigs and webhook secrets into the vault (RBAC mode: being owner
// of the resource group does not by itself allow reading or writing secrets).
resource secretsOfficers 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for officer in secretsOfficerPrincipalIds: {
  name: guid(vault.id, officer, roles.keyVaultSecretsOfficer)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsOfficer)
    principalId: officer
    description: 'Operators storing kubeconfigs and webhook secrets'
  }
}]
