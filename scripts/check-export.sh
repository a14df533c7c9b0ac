#!/usr/bin/env bash
# `sweep export` read back by the real TensorBoard and MLflow libraries (issue 17).
# Installs tensorboard and mlflow-skinny from PyPI into a virtual environment
# (~/.cache/sweep-export-venv, once), trains a 2-run sweep on generated data,
# exports it both ways and runs tests/export_check.py on the result.
#   scripts/check-export.sh [path/to/sweep]      (default: target/debug/sweep)
set -euo pipefail
cd "$(dirname "$0")/.."
SWEEP=${1:-target/debug/sweep}
VENV=${SWEEP_EXPORT_VENV:-$HOME/.cache/sweep-export-venv}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import tensorboard, mlflow" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "tensorboard>=2.15" "mlflow-skinny>=2.10"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/export.toml" <<'TOML'
name = "export-check"
dataset = { name = "synthetic", train_size = 128, test_size = 64 }
metric = "test_acc"
[defaults]
model = "smallcnn"
batch_size = 32
epochs = 2
augment = "none"
optimizer = { name = "sgd", lr = 0.05, momentum = 0.9 }
[augment.none]
train = []
test = []
[[grid]]
optimizer.lr = [0.05, 0.1]
TOML
"$SWEEP" --home "$work/home" -q submit "$work/export.toml" >/dev/null
"$SWEEP" --home "$work/home" report --format json > "$work/report.json"
"$SWEEP" --home "$work/home" export --format tensorboard "$work/tb"
"$SWEEP" --home "$work/home" export --format mlflow "$work/mlruns"
# Exporting again refreshes in place: nothing is doubled.
"$SWEEP" --home "$work/home" export --format tensorboard "$work/tb" >/dev/null
"$SWEEP" --home "$work/home" export --format mlflow "$work/mlruns" >/dev/null
# MLflow 3 keeps the file store behind this switch (it reads it; `mlflow migrate-filestore` converts it).
MLFLOW_ALLOW_FILE_STORE=true "$VENV/bin/python" tests/export_check.py "$work/report.json" "$work/tb" "$work/mlruns"
