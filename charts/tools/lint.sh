#!/usr/bin/env bash
# Lints the chart and validates every rendered manifest against the Kubernetes JSON schemas.
#
#   charts/tools/lint.sh          (what `make chart-lint` runs)
#
# For the default values and each ci/*-values.yaml: `helm lint --strict`, then `helm template` twice
# (without and with the monitoring.coreos.com/v1 API, so the Prometheus Operator objects are rendered
# too) and `kubernetes-validate --strict` for the oldest and newest Kubernetes versions the chart
# supports. Custom resources (ServiceMonitor, PodMonitor, PrometheusRule) have no schema there; their
# contents are checked by tests/chart/test_chart.py.
set -euo pipefail
cd "$(dirname "$0")/../.."

CHART=charts/coredump-shipper
KUBE_VERSIONS=${KUBE_VERSIONS:-1.25.0 1.37.0}
VENV_BIN=${VENV_BIN:-.venv/bin}
HELM=$(PYTHON=$VENV_BIN/python charts/tools/fetch-helm.sh)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
started=$(date +%s)

values_files=("" "$CHART"/ci/*-values.yaml)
for values in "${values_files[@]}"; do
  name=$(basename "${values:-default}" .yaml)
  args=()
  [[ -n $values ]] && args=(--values "$values")
  "$HELM" lint --strict --quiet "$CHART" "${args[@]}" | grep -v '^\[INFO\]' || true
  # helm lint prints but does not fail on some template errors; template fails loudly.
  "$HELM" template ci "$CHART" --namespace coredumps "${args[@]}" >"$out/$name.yaml"
  "$HELM" template ci "$CHART" --namespace coredumps "${args[@]}" \
    --api-versions monitoring.coreos.com/v1 >"$out/$name-monitoring.yaml"
  for version in $KUBE_VERSIONS; do
    for manifest in "$out/$name.yaml" "$out/$name-monitoring.yaml"; do
      "$VENV_BIN/kubernetes-validate" --strict --quiet --kubernetes-version "$version" "$manifest" \
        | { grep -v "Couldn't find schema for kind \(ServiceMonitor\|PodMonitor\|PrometheusRule\)" || true; }
      # kubernetes-validate's exit status is that of the pipeline's first command.
      [[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "invalid: $manifest (Kubernetes $version)" >&2; exit 1; }
    done
  done
  rules="PrometheusRule rendered only with the monitoring API"
  grep -q '^kind: PrometheusRule' "$out/$name-monitoring.yaml" \
    || rules="no alert rules: metrics.prometheusRule.enabled is false"
  echo "chart-lint: ${values:-default values}: ok ($(grep -c '^kind:' "$out/$name-monitoring.yaml") objects with the monitoring API; $rules)"
done
echo "chart-lint: $((${#values_files[@]})) values files, Kubernetes $KUBE_VERSIONS, $(($(date +%s) - started)) s"
