#!/usr/bin/env bash
# Create .venv (if missing) and install the project into it; sourced by run_bundles.sh and run_tests.sh.
# torch goes first by its exact pin (the CPU wheel), so nothing later can pull a CUDA build.
# Usage: source scripts/setup_env.sh [requirements files...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x "$ROOT/.venv/bin/python" ]; then
    echo "[setup] creating $ROOT/.venv with $("$PY" --version)"
    "$PY" -m venv "$ROOT/.venv"
fi
# shellcheck disable=SC1091
source "$ROOT/.venv/bin/activate"
# torch's OpenMP threads spin after each parallel region and starve the numba projector kernels (3x slower
# projections measured); passive waiting costs torch nothing measurable here
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
REQS=("$ROOT/requirements.txt" "$@")
STAMP="$ROOT/.venv/.installed-$(cat "${REQS[@]}" "$ROOT/pyproject.toml" | sha1sum | cut -c1-12)"
pip_install() {
    # quiet, minus the notices some pip configurations print for every missing local index folder
    python -m pip install --quiet --disable-pip-version-check "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    return "${PIPESTATUS[0]}"
}
if [ ! -f "$STAMP" ]; then
    echo "[setup] installing requirements into .venv (first run only)"
    pip_install "torch==2.13.0"
    for r in "${REQS[@]}"; do
        pip_install -r "$r"
    done
    pip_install --no-deps -e "$ROOT"
    if python -m pip list 2>/dev/null | grep -qiE '^(torchvision|torchaudio) '; then
        echo "[setup] torchvision/torchaudio found in .venv: they pull CUDA builds; remove them" >&2
        exit 1
    fi
    touch "$STAMP"
fi
