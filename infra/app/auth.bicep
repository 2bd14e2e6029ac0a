// App Service Authentication (Easy Auth v2) in front of the function app, with Entra ID.
//
// Callers may present an Entra ID access token for the app registration; the platform
// validates it and hands the app the caller's principal (X-MS-CLIENT-PRINCIPAL), whose
// app roles (Patcher.Read, Patcher.Operate: infra/app-roles.json) the app checks per
// route (shared/principal.py). Unauthenticated requests are let through on purpose
// (AllowAnonymous rather than Return401): automation calls with function keys alone, and
// the webhooks (Event Grid with its system key and handshake, GitHub with its HMAC
// signature) cannot present an Entra ID token. Every route still needs its function key;
// a token that is presented and invalid is refused with 401 by the platform itself.
// excludedPaths is therefore not needed: it only exempts paths from a redirect or a 401
// that AllowAnonymous never sends.
//
// The checkov skips below are in two places because pycep, which tests/infra and checkov
// parse Bicep with, fails on more than four comment lines in a row inside a resource.

@description('The function app to put behind App Service Authentication.')
param functionAppName string

@description('Application (client) id of the app registration operators get tokens for (api://CLIENT_ID).')
param clientId string

@description('The tenant whose Entra ID issues those tokens.')
param tenantId string = tenant().tenantId

resource site 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

resource authSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'authsettingsV2'
  // checkov:skip=CKV_AZURE_13: checkov reads only the retired v1 authsettings (properties.enabled); this is authsettingsV2, enabled in properties.platform.enabled, which tests/infra/test_auth_infra.py checks.
  // checkov:skip=CKV_AZURE_63: Written for the site's web configuration (HTTP logging); this config resource holds only the authentication settings, which have no such field.
  // checkov:skip=CKV_AZURE_65: Written for the site's web configuration (detailed errors); this config resource holds only the authentication settings, which have no such field.
  // checkov:skip=CKV_AZURE_66: Written for the site's web configuration (failed request tracing); this config resource holds only the authentication settings, which have no such field.
  properties: {
    // checkov:skip=CKV_AZURE_80: Written for the site's web configuration (the .NET Framework version); this config resource holds only the authentication settings, and the app runs Python.
    // checkov:skip=CKV_AZURE_88: Written for the site's web configuration (Azure Files mounts); this config resource holds only the authentication settings, which have no such field.
    // checkov:skip=CKV_AZURE_222: The app must be reachable by GitHub webhooks and Event Grid, which deliver over the public internet (as on the site in functionapp.bicep).
    platform: {
      enabled: true
    }
    globalValidation: {
      requireAuthentication: false
      unauthenticatedClientAction: 'AllowAnonymous'
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: clientId
          openIdIssuer: '${environment().authentication.loginEndpoint}${tenantId}/v2.0'
        }
        validation: {
          // A v2 access token's aud is the client id; a v1 token's is the Application ID URI.
          allowedAudiences: [
            clientId
            'api://${clientId}'
          ]
        }
      }
    }
    login: {
      // Bearer tokens only, no sign-in sessions: nothing to store, and no stored tokens to leak.
      tokenStore: {
        enabled: false
      }
    }
    httpSettings: {
      requireHttps: true
    }
  }
}

output enabled bool = authSettings.properties.platform.enabled
