#!/usr/bin/env bash
# The MuJoCo arm example's venv, project-local in .venv-mujoco (gymnasium's
# Pusher-v5 model, MuJoCo, eclipse-zenoh). `make test` runs this. Prints the
# venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-mujoco
stamp="$venv/.reflex-requirements"
wanted=$(cat examples/mujoco_arm/requirements.txt)
if [ ! -f "$stamp" ] || [ "$wanted" != "$(cat "$stamp")" ]; then
    echo "setup: creating $venv (MuJoCo and gymnasium's arm model)" >&2
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        -r examples/mujoco_arm/requirements.txt >&2
    printf '%s' "$wanted" > "$stamp"
fi
echo "$PWD/$venv/bin/python"
