// The Function App on a Flex Consumption plan (Linux, Python 3.11), with a system-assigned
// identity and nothing secret in its settings: storage is reached with the identity
// (AzureWebJobsStorage__accountName), kubeconfigs and webhook secrets are Key Vault
// references, telemetry is Entra-authenticated. Why Flex Consumption: infra/README.md.

@description('Function app name (globally unique host name).')
param name string

param location string
param tags object = {}

param storageAccountName string

@description('Blob container (in the storage account) Flex Consumption deploys the package to.')
param deploymentContainerName string

param appInsightsName string

@description('The vault URI, with its trailing slash (https://<vault>.vault.azure.net/).')
param vaultUri string

@description('Table of run records; the code defaults to patchruns, set here so the name is in one place.')
param runsTableName string

@description('PATCHER_CONFIG_PATH: the YAML configuration, published with the code (the package is mounted at /home/site/wwwroot).')
param configPath string

@description('PATCHER_CONFIG_BLOB: the configuration as blob configBlobName in container configContainerName, read instead of configPath and re-read when it changes; empty: the packaged file.')
param configBlobName string = ''

@description('The configuration blob\'s container (storage.bicep).')
param configContainerName string = 'patcher-config'

@description('PATCHER_SWEEP_SCHEDULE: NCRONTAB (UTC) of the sweeper timer that resumes stalled work.')
param sweepSchedule string

@description('PATCHER_SCHEDULE: NCRONTAB (UTC) of the scheduled_patch timer that starts runs inside maintenance windows.')
param patchSchedule string

@description('PATCHER_ARM_ENDPOINT, only for sovereign clouds; empty leaves the code default (public cloud).')
param armEndpoint string = ''

@description('PATCHER_ARM_AUDIENCE, only for sovereign clouds; empty leaves the code default (public cloud).')
param armAudience string = ''

@description('One app setting per cluster holding its kubeconfig: [{name: APP_SETTING, secretName: KEY_VAULT_SECRET}]. The YAML configuration names the setting (clusters[].kubeconfig.setting).')
param kubeconfigSettings array = []

@description('GitHub webhook secret settings: [{name: APP_SETTING, secretName: KEY_VAULT_SECRET}], two while rotating. The YAML configuration names them (gitops.secrets[].setting).')
param webhookSecretSettings array = []

@description('Notification webhook URL settings: [{name: APP_SETTING, secretName: KEY_VAULT_SECRET}]. The YAML configuration names them (notifications[].url.setting).')
param notificationSettings array = []

@description('Upper bound on instances. The app\'s own budgets bound concurrent node work; this bounds cost and API-server / ARM load if a queue backs up.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Instance size. 2048 MB is ample: a step is a few API calls.')
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: 'plan-${name}'
  location: location
  tags: tags
  kind: 'functionapp'
  // checkov:skip=CKV_AZURE_225: Zone redundancy for Flex Consumption depends on the region; the app's work survives an instance or zone loss anyway, because every step is resumed from queue and table state.
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

var kubeconfigAppSettings = [for s in kubeconfigSettings: {
  name: s.name
  value: '@Microsoft.KeyVault(SecretUri=${vaultUri}secrets/${s.secretName}/)'
}]

var webhookSecretAppSettings = [for s in webhookSecretSettings: {
  name: s.name
  value: '@Microsoft.KeyVault(SecretUri=${vaultUri}secrets/${s.secretName}/)'
}]

var notificationAppSettings = [for s in notificationSettings: {
  name: s.name
  value: '@Microsoft.KeyVault(SecretUri=${vaultUri}secrets/${s.secretName}/)'
}]

var armAppSettings = concat(empty(armEndpoint) ? [] : [
  {
    name: 'PATCHER_ARM_ENDPOINT'
    value: armEndpoint
  }
], empty(armAudience) ? [] : [
  {
    name: 'PATCHER_ARM_AUDIENCE'
    value: armAudience
  }
])

var configBlobAppSettings = empty(configBlobName) ? [] : [
  {
    name: 'PATCHER_CONFIG_BLOB'
    value: '${configContainerName}/${configBlobName}'
  }
]

// FUNCTIONS_WORKER_RUNTIME and FUNCTIONS_EXTENSION_VERSION are not app settings on Flex
// Consumption (the platform refuses them): the runtime is functionAppConfig.runtime below.
var baseAppSettings = [
  {
    // Identity-based host storage: no connection string, no account key.
    name: 'AzureWebJobsStorage__accountName'
    value: storage.name
  }
  {
    name: 'AzureWebJobsStorage__credential'
    value: 'managedidentity'
  }
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    value: appInsights.properties.ConnectionString
  }
  {
    // The component has local auth disabled: send telemetry with the app's identity.
    name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
    value: 'Authorization=AAD'
  }
  {
    name: 'PATCHER_CONFIG_PATH'
    value: configPath
  }
  {
    name: 'PATCHER_SWEEP_SCHEDULE'
    value: sweepSchedule
  }
  {
    name: 'PATCHER_SCHEDULE'
    value: patchSchedule
  }
  {
    name: 'PATCHER_RUNS_TABLE'
    value: runsTableName
  }
  {
    // Every ARM, storage and identity call: seconds to connect, and to wait for each read
    // of the answer (the SDKs' default is 300 s each, past a step's 120 s lease). The app
    // warns when one call could take more than half the lease.
    name: 'PATCHER_CONNECT_TIMEOUT'
    value: '10'
  }
  {
    name: 'PATCHER_READ_TIMEOUT'
    value: '30'
  }
  {
    // Invocations wait in place on I/O (drain and boot watches, a reimage's last polls).
    // The worker's default, CPUs + 4, is below the queue messages the host holds at once
    // (host.json batchSize + newBatchThreshold), which would then wait for a thread while
    // their visibility timeout runs out.
    name: 'PYTHON_THREADPOOL_THREAD_COUNT'
    value: '16'
  }
]

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales from zero by design; availability comes from the queue (work waits and is retried), not from a minimum instance count.
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    // checkov:skip=CKV_AZURE_17: Client certificates would lock out GitHub's webhook deliveries and the Event Grid handshake, neither of which can present one; operator calls use function keys over TLS.
    clientCertEnabled: false
    // checkov:skip=CKV_AZURE_222: The app must be reachable by GitHub webhooks and Event Grid, which deliver over the public internet.
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      // checkov:skip=CKV_AZURE_213: The work is queue-driven: a message held by a dead instance becomes visible again and another instance takes it. A health-check path only reroutes HTTP traffic, and the app has no health endpoint to point it at.
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: concat(baseAppSettings, armAppSettings, kubeconfigAppSettings, webhookSecretAppSettings, notificationAppSettings, configBlobAppSettings)
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// Publishing only with Entra ID (az / func with a signed-in operator), never with
// FTP or basic-auth SCM credentials.
resource ftpPolicy 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPolicy 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

output id string = site.id
output name string = site.name
output principalId string = site.identity.principalId
output defaultHostName string = site.properties.defaultHostName
