#!/usr/bin/env bash
# The parity venv: the reference implementations (torch, diffusers, LeRobot) the parity
# tests check reflex against, outside the clone so it is made once per machine:
# ${XDG_CACHE_HOME:-~/.cache}/reflex/parity-venv. `make test` runs this; `make run`
# does not (torch brings ~3 GB of CUDA wheels from PyPI; only its CPU path is used).
# Prints the venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${XDG_CACHE_HOME:-$HOME/.cache}/reflex/parity-venv"
stamp="$venv/.reflex-requirements"
wanted=$(cat policies/export/parity-requirements.txt policies/export/lerobot-requirements.txt)
if [ ! -f "$stamp" ] || [ "$wanted" != "$(cat "$stamp")" ]; then
    echo "setup: creating the parity venv $venv (torch, diffusers, lerobot; a few GB, once)" >&2
    mkdir -p "$(dirname "$venv")"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        -r policies/export/parity-requirements.txt >&2
    # LeRobot without its declared dependencies (see the file's header).
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
        -r policies/export/lerobot-requirements.txt >&2
    printf '%s' "$wanted" > "$stamp"
fi
echo "$venv/bin/python"
