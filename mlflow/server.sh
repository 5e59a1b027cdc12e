#!/usr/bin/env bash
# Local MLflow tracking server + model registry on the store edgeport writes to by default
# ($EDGEPORT_HOME/mlflow/mlflow.db, artifacts in $EDGEPORT_HOME/mlflow/artifacts).
# Bound to 127.0.0.1 only. See mlflow/README.md.
#
#   mlflow/server.sh                 # http://127.0.0.1:5000
#   MLFLOW_PORT=5001 mlflow/server.sh
#   mlflow/server.sh --workers 2     # extra arguments go to `mlflow server`
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"

# Same rule as edgeport.home.edgeport_home(): $EDGEPORT_HOME, else <repo>/.edgeport, else ~/.edgeport.
home="$(cd "$repo" && "$python" -c 'from edgeport.home import edgeport_home; print(edgeport_home())')"
mkdir -p "$home/mlflow/artifacts"

port="${MLFLOW_PORT:-5000}"
echo "edgeport home: $home"
echo "MLflow UI + registry: http://127.0.0.1:$port   (edgeport run ... --tracking-uri http://127.0.0.1:$port)"
exec "$python" -m mlflow server \
  --backend-store-uri "sqlite:///$home/mlflow/mlflow.db" \
  --default-artifact-root "$home/mlflow/artifacts" \
  --host 127.0.0.1 \
  --port "$port" \
  --workers 1 \
  "$@"
