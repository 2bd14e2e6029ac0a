// vmss-node-patcher: everything the function app needs in Azure, in one deployment.
//
//   az deployment group create -g <rg> -f infra/main.bicep -p @infra/main.parameters.json
//
// The app's own resources go into the target resource group; the role assignments (and
// Event Grid system topics) for the scale sets, galleries and maintenance configurations
// go where those live, in any resource group or subscription of the tenant. Nothing is granted at subscription scope. Steps and choices: infra/README.md.
targetScope = 'resourceGroup'

@description('Short name the resource names are derived from: lower-case letters and digits only (it is part of the storage account name).')
@minLength(3)
@maxLength(12)
param appName string = 'nodepatcher'

param location string = resourceGroup().location
param tags object = {}

@description('PATCHER_CONFIG_PATH: where the published package holds the YAML configuration.')
param configPath string = '/home/site/wwwroot/patcher.yaml'

@description('PATCHER_SWEEP_SCHEDULE (NCRONTAB, UTC): how often stalled work is looked for.')
param sweepSchedule string = '0 */2 * * * *'

@description('PATCHER_SCHEDULE (NCRONTAB, UTC): how often maintenance windows are checked to start runs.')
param patchSchedule string = '0 */5 * * * *'

@description('PATCHER_ARM_ENDPOINT for sovereign clouds; empty keeps the public cloud.')
param armEndpoint string = ''

@description('PATCHER_ARM_AUDIENCE for sovereign clouds; empty keeps the public cloud.')
param armAudience string = ''

@description('One app setting per cluster holding its kubeconfig, as a Key Vault reference: [{name: "KUBECONFIG_PROD_WEU", secretName: "kubeconfig-prod-weu"}]. The setting name is the one clusters[].kubeconfig.setting names in the YAML configuration.')
param kubeconfigSettings array = []

@description('GitHub webhook secret settings, as Key Vault references: [{name: "GITHUB_WEBHOOK_SECRET", secretName: "github-webhook-secret"}]; two entries while rotating. The YAML configuration lists them under gitops.secrets.')
param webhookSecretSettings array = []

@description('Notification webhook URL settings, as Key Vault references: [{name: "TEAMS_PATCHING_WEBHOOK", secretName: "teams-patching-webhook"}]. The YAML configuration names them (notifications[].url.setting); a webhook URL is a credential.')
param notificationSettings array = []

@description('The node pools\' scale sets, grouped by resource group: [{id: "/subscriptions/<sub>/resourceGroups/<rg>", scaleSets: ["<scale set name>"], flexible: false}]; the app may write only these scale sets. flexible: true when some are Flexible scale sets (their VMs are read and reimaged through the VM API, granted on the group).')
param scaleSetResourceGroups array = []

@description('Compute Galleries whose new image versions trigger rollouts, grouped by resource group: [{id: "/subscriptions/<sub>/resourceGroups/<rg>", galleries: ["<gallery>"], existingSystemTopicName: ""}].')
param galleryResourceGroups array = []

@description('Update Manager maintenance configurations the app follows: [{id: "<configuration resource id>", location: "<its region>", existingSystemTopicName: ""}].')
param maintenanceConfigurations array = []

@description('Object ids of operators (users or groups) allowed to write secrets into the vault.')
param secretsOfficerPrincipalIds array = []

@description('Create the Event Grid subscriptions. Event Grid checks that the azure_events function exists, so deploy once with false, publish the code, then deploy again with true.')
param deployEventSubscriptions bool = false

@description('Storage replication (ZRS where the region offers it).')
param storageSkuName string = 'Standard_ZRS'

@description('Flex Consumption instance ceiling.')
param maximumInstanceCount int = 40

@description('Application (client) id of the operator API\'s app registration (infra/README.md, "Who may do what"): App Service Authentication validates its tokens and the app checks their app roles. Empty: no App Service Authentication, function keys alone.')
param authClientId string = ''

@description('The configuration as this blob in the storage account\'s patcher-config container (PATCHER_CONFIG_BLOB), instead of configPath; empty: the packaged file.')
param configBlobName string = ''

@description('Action group (resource id) the failed-run and stalled-run alerts notify; empty: none.')
param alertActionGroupId string = ''

var suffix = take(uniqueString(resourceGroup().id, appName), 8)
var functionAppName = 'func-${appName}-${suffix}'
var deploymentContainerName = 'app-package'

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    name: '${appName}-${suffix}'
    location: location
    tags: tags
    actionGroupId: alertActionGroupId
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  params: {
    name: 'st${toLower(appName)}${suffix}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    skuName: storageSkuName
  }
}

module vault 'app/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    name: 'kv-${take(appName, 12)}-${suffix}'
    location: location
    tags: tags
    workspaceId: monitoring.outputs.workspaceId
  }
}

module functionApp 'app/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    name: functionAppName
    location: location
    tags: tags
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    appInsightsName: monitoring.outputs.appInsightsName
    vaultUri: vault.outputs.uri
    runsTableName: storage.outputs.runsTableName
    configPath: configPath
    configBlobName: configBlobName
    configContainerName: storage.outputs.configContainerName
    sweepSchedule: sweepSchedule
    patchSchedule: patchSchedule
    armEndpoint: armEndpoint
    armAudience: armAudience
    kubeconfigSettings: kubeconfigSettings
    webhookSecretSettings: webhookSecretSettings
    notificationSettings: notificationSettings
    maximumInstanceCount: maximumInstanceCount
  }
}

module auth 'app/auth.bicep' = if (!empty(authClientId)) {
  name: 'auth'
  params: {
    functionAppName: functionApp.outputs.name
    clientId: authClientId
  }
}

module appRoles 'app/roles-app.bicep' = {
  name: 'roles-app'
  params: {
    principalId: functionApp.outputs.principalId
    storageAccountName: storage.outputs.name
    vaultName: vault.outputs.name
    appInsightsName: monitoring.outputs.appInsightsName
    configContainerName: storage.outputs.configContainerName
    secretsOfficerPrincipalIds: secretsOfficerPrincipalIds
  }
}

module scaleSetRoles 'app/role-scalesets.bicep' = [for (group, i) in scaleSetResourceGroups: {
  name: 'roles-scalesets-${i}'
  scope: resourceGroup(split(group.id, '/')[2], split(group.id, '/')[4])
  params: {
    principalId: functionApp.outputs.principalId
    appName: functionAppName
    scaleSetNames: group.scaleSets
    flexibleScaleSets: group.?flexible ?? false
  }
}]

module galleries 'app/role-gallery.bicep' = [for (group, i) in galleryResourceGroups: {
  name: 'galleries-${i}'
  scope: resourceGroup(split(group.id, '/')[2], split(group.id, '/')[4])
  params: {
    principalId: functionApp.outputs.principalId
    galleryNames: group.galleries
    existingSystemTopicName: contains(group, 'existingSystemTopicName') ? group.existingSystemTopicName : ''
    functionAppId: functionApp.outputs.id
    deployEventSubscriptions: deployEventSubscriptions
  }
}]

module maintenance 'app/maintenance.bicep' = [for (mc, i) in maintenanceConfigurations: {
  name: 'maintenance-${i}'
  scope: resourceGroup(split(mc.id, '/')[2], split(mc.id, '/')[4])
  params: {
    principalId: functionApp.outputs.principalId
    appName: functionAppName
    configurationName: last(split(mc.id, '/'))
    location: mc.location
    existingSystemTopicName: contains(mc, 'existingSystemTopicName') ? mc.existingSystemTopicName : ''
    functionAppId: functionApp.outputs.id
    deployEventSubscriptions: deployEventSubscriptions
  }
}]

output functionAppName string = functionApp.outputs.name
output functionAppHostName string = functionApp.outputs.defaultHostName
output principalId string = functionApp.outputs.principalId
output vaultName string = vault.outputs.name
output storageAccountName string = storage.outputs.name
