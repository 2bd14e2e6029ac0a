#!/usr/bin/env bash
# Build the kubeconfig vmss-node-patcher uses for one cluster, from the ServiceAccount
# token Secret that `kubectl apply -k infra/kubernetes` created, and store it in Key Vault.
#
#   infra/kubernetes/make-kubeconfig.sh --context prod-weu --cluster prod-weu \
#       --vault kv-nodepatcher-abc123 --secret-name kubeconfig-prod-weu
#
# The kubeconfig holds the API server URL, its CA and the token; nothing else from your
# own kubeconfig (users, other clusters, exec plugins) is copied. It is written to a
# private temporary file and handed to `az keyvault secret set --file`, so the token never
# appears on a command line, in the shell history or on disk after the script ends.
#
# Needs: kubectl (a context with rights to read Secrets in the namespace), az (signed in,
# with Key Vault Secrets Officer on the vault), base64.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: make-kubeconfig.sh --context CONTEXT --cluster NAME (--vault VAULT --secret-name SECRET | --output FILE)
                          [--server URL] [--namespace NS] [--token-secret NAME] [--skip-check]

  --context       kubectl context of the cluster (used to read the token and, by default, the server URL)
  --cluster       cluster name written into the kubeconfig (use the name in the YAML configuration)
  --vault         Key Vault to store the kubeconfig in (the deployment's vaultName output)
  --secret-name   Key Vault secret name (the secretName in the kubeconfigSettings parameter)
  --output        write the kubeconfig to FILE (mode 600) instead of Key Vault
  --server        API server URL the app will use, if not the context's (e.g. a private FQDN)
  --namespace     namespace of the ServiceAccount (default vmss-node-patcher)
  --token-secret  name of the token Secret (default vmss-node-patcher-token)
  --skip-check    do not check the new kubeconfig against the API server before storing it
USAGE
}

context="" cluster="" vault="" secret_name="" output="" server=""
namespace="vmss-node-patcher" token_secret="vmss-node-patcher-token" check=1

while [[ $# -gt 0 ]]; do
  case "$1" in
    --context) context="${2:?}"; shift 2 ;;
    --cluster) cluster="${2:?}"; shift 2 ;;
    --vault) vault="${2:?}"; shift 2 ;;
    --secret-name) secret_name="${2:?}"; shift 2 ;;
    --output) output="${2:?}"; shift 2 ;;
    --server) server="${2:?}"; shift 2 ;;
    --namespace) namespace="${2:?}"; shift 2 ;;
    --token-secret) token_secret="${2:?}"; shift 2 ;;
    --skip-check) check=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "make-kubeconfig.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

fail() { echo "make-kubeconfig.sh: $*" >&2; exit 1; }

[[ -n "$context" && -n "$cluster" ]] || { usage >&2; exit 2; }
if [[ -z "$output" ]]; then
  [[ -n "$vault" && -n "$secret_name" ]] || { usage >&2; exit 2; }
fi
[[ "$cluster" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || fail "--cluster must be a DNS label (as in the YAML configuration): $cluster"

kc=(kubectl --context "$context")

# The token controller fills the Secret shortly after it is created.
token_b64=""
for _ in $(seq 1 30); do
  token_b64="$("${kc[@]}" -n "$namespace" get secret "$token_secret" -o 'jsonpath={.data.token}' 2>/dev/null || true)"
  [[ -n "$token_b64" ]] && break
  sleep 1
done
[[ -n "$token_b64" ]] || fail "secret $namespace/$token_secret has no token after 30 s; was 'kubectl apply -k infra/kubernetes' run against $context?"

ca_b64="$("${kc[@]}" -n "$namespace" get secret "$token_secret" -o 'jsonpath={.data.ca\.crt}')"
[[ -n "$ca_b64" ]] || fail "secret $namespace/$token_secret has no ca.crt"

if [[ -z "$server" ]]; then
  server="$("${kc[@]}" config view --minify --raw -o 'jsonpath={.clusters[0].cluster.server}')"
fi
[[ "$server" == https://* ]] || fail "API server URL must be https://...: '$server'"

token="$(printf '%s' "$token_b64" | base64 --decode)"
[[ -n "$token" ]] || fail "the token does not decode"

umask 077
workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT
file="$workdir/kubeconfig"
user="vmss-node-patcher@$cluster"
cat >"$file" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
  - name: $cluster
    cluster:
      server: $server
      certificate-authority-data: $ca_b64
users:
  - name: $user
    user:
      token: $token
contexts:
  - name: $cluster
    context:
      cluster: $cluster
      user: $user
current-context: $cluster
KUBECONFIG

if [[ "$check" == 1 ]]; then
  # The same questions the app's first steps ask; a wrong token or missing binding fails here.
  for question in "list nodes" "patch nodes" "create pods/eviction"; do
    # shellcheck disable=SC2086  # the question is words on purpose
    answer="$(kubectl --kubeconfig "$file" auth can-i $question 2>/dev/null || true)"
    [[ "$answer" == yes ]] || fail "the new kubeconfig cannot '$question' on $server (answer: '${answer:-no answer}'); check the ClusterRoleBinding, or use --skip-check if the server is not reachable from here"
  done
fi

if [[ -n "$output" ]]; then
  cp "$file" "$output"
  chmod 600 "$output"
  echo "kubeconfig for $cluster written to $output"
  exit 0
fi

az keyvault secret set --vault-name "$vault" --name "$secret_name" --file "$file" --encoding utf-8 --output none
echo "kubeconfig for $cluster stored as secret '$secret_name' in $vault."
echo "Reference it from an app setting (kubeconfigSettings parameter): {\"name\": \"KUBECONFIG_$(echo "$cluster" | tr 'a-z-' 'A-Z_')\", \"secretName\": \"$secret_name\"}"
