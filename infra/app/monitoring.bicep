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

@description('Action group the alert rules notify (its resource id); empty: the alerts fire in the portal only.')
param actionGroupId string = ''

@description('How often the alert rules look, and over how long (ISO 8601).')
param alertEvaluationFrequency string = 'PT5M'

// The metric names the app emits (shared/rollout/metrics.py; tests/infra checks that they match).
var runsFailedMetric = 'patcher.runs.failed'
var runsStalledMetric = 'patcher.runs.stalled'

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

// Log search alerts over customMetrics, where the app's OpenTelemetry counters land: one
// alert per cluster (a dimension), raised by any increment in the window. A failed run
// or a stalled one wants a person either way, so the rules do not resolve themselves: a
// counter that stops rising says nothing about whether the run was looked at.
var runAlerts = [
  {
    name: 'run-failed'
    metric: runsFailedMetric
    severity: 1
    description: 'A patch run failed (maxFailedNodes reached, or nodes failed): its nodes are left cordoned with their reasons (GET /api/runs/{id}).'
  }
  {
    name: 'run-stalled'
    metric: runsStalledMetric
    severity: 2
    description: 'A patch run has nodes pending and none in flight for stallAfter: its budget is held by nodes that are NotReady or cordoned (GET /api/runs/{id}, stalled).'
  }
]

resource runAlertRules 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [for alert in runAlerts: {
  name: 'alert-${name}-${alert.name}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'vmss-node-patcher: ${alert.name}'
    description: alert.description
    severity: alert.severity
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: alertEvaluationFrequency
    windowSize: alertEvaluationFrequency
    autoMitigate: false
    criteria: {
      allOf: [
        {
          query: 'customMetrics | where name == "${alert.metric}" | extend cluster = tostring(customDimensions.cluster) | summarize runs = sum(valueSum) by cluster'
          timeAggregation: 'Total'
          metricMeasureColumn: 'runs'
          dimensions: [
            {
              name: 'cluster'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: empty(actionGroupId) ? [] : [
        actionGroupId
      ]
    }
  }
}]

output workspaceId string = workspace.id
output appInsightsName string = appInsights.name
