// The Key Vault holding each cluster's kubeconfig and the GitHub webhook secrets.
//
// The Bicep creates no secrets (no secret value ever passes through a deployment, its
// parameters or its history): infra/kubernetes/make-kubeconfig.sh and
// `az keyvault secret set` put them there, and the app settings reference them by URI.
// RBAC mode, so access is granted per identity and role (roles-app.bicep), not by
// vault access policies; purge protection so a deleted secret can always be recovered
// within the retention period.

@description('Key Vault name (3-24 letters, digits and hyphens, globally unique).')
@minLength(3)
@maxLength(24)
param name string

param location string
param tags object = {}

@description('Log Analytics workspace receiving the vault audit log (who read which secret).')
param workspaceId string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  // checkov:skip=CKV_AZURE_109: Key Vault references are resolved by the App Service platform from the app's public outbound addresses (no VNet integration in this deployment), and operators set secrets from their workstations; a deny-by-default firewall would break both. Access is RBAC-only and audited.
  // checkov:skip=CKV_AZURE_189: Same reason as CKV_AZURE_109: the platform and operators reach the vault over its public endpoint until private endpoints are added.
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

// Every secret read is logged: a kubeconfig grants node and eviction rights in a cluster.
resource audit 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'audit'
  scope: vault
  properties: {
    workspaceId: workspaceId
    logs: [
      {
        categoryGroup: 'audit'
        enabled: true
      }
    ]
  }
}

output name string = vault.name
output uri string = vault.properties.vaultUri
