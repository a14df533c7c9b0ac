#!/usr/bin/env bash
# sweep's TPE (examples/tpe_quadratic.rs) beside Optuna's (scripts/tpe-vs-optuna.py) on the
# same 2-D quadratic, each against its random search over 20 seeds of 30 trials. Installs
# optuna from PyPI into ~/.cache/sweep-optuna-venv once. Fails when either TPE does not beat
# random search on most (11+) seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${HOME}/.cache/sweep-optuna-venv"
if ! "$venv/bin/python" -c "import optuna" >/dev/null 2>&1; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q optuna==4.6.0
fi
optuna_line=$("$venv/bin/python" scripts/tpe-vs-optuna.py)
sweep_line=$(cargo run -q --locked --example tpe_quadratic)
echo "$optuna_line"
echo "$sweep_line"
for line in "$optuna_line" "$sweep_line"; do
    wins=$(echo "$line" | sed -E 's/.* on ([0-9]+) of 20 seeds.*/\1/')
    if [ "$wins" -lt 11 ]; then
        echo "tpe-vs-optuna: TPE beat random search on only $wins of 20 seeds: $line" >&2
        exit 1
    fi
done
