#!/usr/bin/env bash
# Foreground MLflow tracking server + model registry on the store edgeport writes to by default
# ($EDGEPORT_HOME/mlflow/mlflow.db, artifacts in $EDGEPORT_HOME/mlflow/artifacts), to browse the
# results of `edgeport run` without servers. Bound to 127.0.0.1 only. See mlflow/README.md.
# (`edgeport servers up` runs MLflow + Prefect in the background on their own store.)
#
#   mlflow/server.sh                 # http://127.0.0.1:5000
#   MLFLOW_PORT=5001 mlflow/server.sh
#   mlflow/server.sh --workers 2     # extra arguments go to `mlflow server`
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"
port="${MLFLOW_PORT:-5000}"

# Same home rule as edgeport.home.edgeport_home() and the same flags as `edgeport servers up`
# (edgeport.servers.mlflow_server_command), plus --default-artifact-root: experiments of the
# embedded store keep local artifact paths, which `edgeport run` on the sqlite URI writes to.
home="$(cd "$repo" && "$python" -c 'from edgeport.home import edgeport_home; print(edgeport_home())')"
mkdir -p "$home/mlflow/artifacts"
mapfile -d '' cmd < <(cd "$repo" && "$python" -c '
import sys
from edgeport.servers import mlflow_server_command
home, port = sys.argv[1], int(sys.argv[2])
argv = mlflow_server_command(f"sqlite:///{home}/mlflow/mlflow.db", f"{home}/mlflow/artifacts", "127.0.0.1", port,
                             default_artifact_root=f"{home}/mlflow/artifacts")
sys.stdout.write("\0".join(argv) + "\0")
' "$home" "$port")

echo "edgeport home: $home"
echo "MLflow UI + registry: http://127.0.0.1:$port   (edgeport run ... --tracking-uri http://127.0.0.1:$port)"
cd "$home/mlflow"
exec "${cmd[@]}" "$@"
