#!/usr/bin/env bash
# The MLflow tracking + registry server of the pipelines: SQL backend, object-store artifacts.
#
#   infra/mlflow/server.sh                                   # 127.0.0.1:5000, settings from the environment
#   MLFLOW_HOST=0.0.0.0 MLFLOW_ALLOWED_HOSTS=mlflow.internal infra/mlflow/server.sh   # inside a private network only
#
# Settings (environment, with defaults):
#   MLFLOW_BACKEND_STORE_URI      postgresql://mlflow@127.0.0.1:5432/mlflow  (runs, registry, aliases, tags;
#                                 put the password in ~/.pgpass or PGPASSWORD, never in the URI of a shared shell)
#   MLFLOW_ARTIFACTS_DESTINATION  s3://linearizer-mlflow/artifacts (models, reports; credentials from the usual
#                                 AWS_* variables or an instance role; MLFLOW_S3_ENDPOINT_URL for MinIO)
#   MLFLOW_HOST / MLFLOW_PORT     127.0.0.1 / 5000: loopback unless you mean otherwise
#   MLFLOW_WORKERS                2
#   MLFLOW_ALLOWED_HOSTS          Host headers accepted (DNS-rebinding protection), default: MLflow's own
#
# The server proxies artifacts (--serve-artifacts), so clients and Ray workers need only the
# tracking URI (http://HOST:PORT), not object-store credentials. MLflow's job runner is switched off
# (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false): otherwise it starts worker processes that outlive the
# server. `exec` keeps one process to stop; run it under a supervisor (systemd, a Kubernetes
# Deployment) or in its own process group and stop the group.
set -euo pipefail

: "${MLFLOW_BACKEND_STORE_URI:=postgresql://mlflow@127.0.0.1:5432/mlflow}"
: "${MLFLOW_ARTIFACTS_DESTINATION:=s3://linearizer-mlflow/artifacts}"
: "${MLFLOW_HOST:=127.0.0.1}"
: "${MLFLOW_PORT:=5000}"
: "${MLFLOW_WORKERS:=2}"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true

extra=()
if [[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]]; then
  extra+=(--allowed-hosts "${MLFLOW_ALLOWED_HOSTS}")
fi

exec mlflow server \
  --backend-store-uri "${MLFLOW_BACKEND_STORE_URI}" \
  --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION}" \
  --serve-artifacts \
  --host "${MLFLOW_HOST}" \
  --port "${MLFLOW_PORT}" \
  --workers "${MLFLOW_WORKERS}" \
  "${extra[@]}"
