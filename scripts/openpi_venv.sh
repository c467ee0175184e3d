#!/usr/bin/env bash
# The openpi-client venv, project-local in .venv-openpi: openpi-client pins
# numpy < 2, which .venv's tooling does not. `make test` runs this. Prints the
# venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-openpi
stamp="$venv/.reflex-requirements"
wanted=$(cat policies/export/openpi-requirements.txt)
if [ ! -f "$stamp" ] || [ "$wanted" != "$(cat "$stamp")" ]; then
    echo "setup: creating $venv (openpi-client and its numpy < 2)" >&2
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        -r policies/export/openpi-requirements.txt >&2
    printf '%s' "$wanted" > "$stamp"
fi
echo "$PWD/$venv/bin/python"
