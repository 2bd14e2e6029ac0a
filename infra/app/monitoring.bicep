// Log Analytics workspace and the workspace-based Application Insights component the
// Functions host and the Python worker send telemetry to.
//
// Local (instrumentation-key) authentication is disabled on both: telemetry is accepted
// only from Entra-authenticated senders, so a leaked connection string cannot be used to
// write or forge telemetry. The app authenticates with its managed identity
// (APPLICATIONINSIGHTS_AUTHENTICATION_STRING=Authorization=AAD) and holds Monitoring
// Metrics Publisher on the component (roles-app.bicep).

@description('Base name; the resources are log-<name> and appi-<name>.')
param name string

param location string
param tags object = {}

@description('Days to keep logs. Runs are short; the run records in Table storage are the durable history.')
@minValue(30)
@maxValue(730)
param retentionInDays int = 30

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${name}'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
    features: {
      disableLocalAuth: true
    }
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${name}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    IngestionMode: 'LogAnalytics'
    DisableLocalAuth: true
  }
}

output workspaceId string = workspace.id
output appInsightsName string = appInsights.name
