#!/usr/bin/env bash
# Checks docker/k8s/*.yaml against the Kubernetes OpenAPI schema (strict: unknown fields are
# errors) with kubernetes-validate from PyPI, in a virtual environment under ~/.cache. There is
# no cluster here; this is what a `kubectl apply --dry-run=server` would refuse for its schema.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${XDG_CACHE_HOME:-$HOME/.cache}/sweep-k8s-venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q kubernetes-validate==1.37.0
fi
"$venv/bin/kubernetes-validate" --strict --kubernetes-version 1.33 docker/k8s/*.yaml
