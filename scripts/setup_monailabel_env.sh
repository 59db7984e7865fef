#!/usr/bin/env bash
# Create .venv-monailabel (if missing) for the MONAI Label server (scripts/monailabel_app/) and install into it:
#   1. torch by its exact pin (the CPU wheel, as in setup_env.sh), so nothing later can pull a CUDA build;
#   2. the main requirements.txt and monai_ext (-e .), so the bundles run exactly as in .venv;
#   3. monailabel==0.8.5 with --no-deps plus the packages its server imports at start, pinned below.
# monailabel's declared dependencies are not installed as declared: they want numpy < 2 and jsonschema < 4
# (through pydicom-seg), torchvision (through monai[torchvision]) and sam2, none of which the server needs to
# serve image-to-image infer tasks written on InferTask (scripts/monailabel_app/lib/infers/); only pydicom is
# moved off the main pin (to 2.4.4, see SERVER_PINS).
# Idempotent: a stamp file records what was installed; a changed pin list or requirements file reinstalls.
# Usage: bash scripts/setup_monailabel_env.sh     (or source it to get the venv activated)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MONAILABEL_VENV:-$ROOT/.venv-monailabel}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
MONAILABEL_PIN="monailabel==0.8.5"
# What the server imports at start (monailabel.main -> monailabel.app -> endpoints -> interfaces.app -> datastores)
# and is not in requirements.txt: from the wheel's Requires-Dist, checked by starting the server. pydicom is
# downgraded to 2.x here because pydicom-seg 0.4.1 (imported at start by monailabel.datastore.utils.convert)
# imports pydicom._storage_sopclass_uids, which pydicom 3 removed; dicomweb-client 0.59 is its last release that
# accepts pydicom 2. monai_ext needs pydicom 3 only for the pydicom test-data CT slices, which serving does not use.
SERVER_PINS=(
    "fastapi==0.165.0"
    "starlette==1.10.0"
    "uvicorn==0.54.0"
    "pydantic==2.14.3"
    "pydantic-settings==2.16.3"
    "python-multipart==0.0.34"
    "python-dotenv==1.2.4"
    "requests==2.34.2"
    "requests-toolbelt==1.0.0"
    "schedule==1.2.2"
    "timeloop==1.0.2"
    "cachetools==8.0.1"
    "watchdog==7.1.0"
    "passlib==1.7.4"
    "pyjwt==2.15.1"
    "bcrypt==5.0.0"
    "psutil==7.2.2"
    "girder-client==5.0.21"
    "pynrrd==1.1.3"
    "SimpleITK==2.5.7"
    "pydicom==2.4.4"
    "dicomweb-client[gcp]==0.59.3"
)
# installed without their declared requirements (numpy < 2, jsonschema < 4, torchvision, sam2, ...)
NO_DEPS_PINS=("$MONAILABEL_PIN" "pydicom-seg==0.4.1")
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup-monailabel] creating $VENV with $("$PY" --version)"
    "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
STAMP="$VENV/.installed-$( (cat "$ROOT/requirements.txt" "$ROOT/pyproject.toml"; echo "${NO_DEPS_PINS[*]} ${SERVER_PINS[*]}") \
    | sha1sum | cut -c1-12)"
pip_install() {
    # quiet, minus the notices some pip configurations print for every missing local index folder
    python -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    return "${PIPESTATUS[0]}"
}
if [ ! -f "$STAMP" ]; then
    echo "[setup-monailabel] installing torch, requirements.txt, monai_ext and $MONAILABEL_PIN into $VENV"
    pip_install "torch==2.13.0"
    pip_install -r "$ROOT/requirements.txt"
    pip_install --no-deps -e "$ROOT"
    pip_install "${SERVER_PINS[@]}"
    pip_install --no-deps "${NO_DEPS_PINS[@]}"
    if python -m pip list 2>/dev/null | grep -qiE '^(torchvision|torchaudio|sam2) '; then
        echo "[setup-monailabel] torchvision/torchaudio/sam2 found in $VENV: they must not be installed" >&2
        exit 1
    fi
    torch_version="$(python -c 'import torch; print(torch.__version__)')"
    case "$torch_version" in
        2.13.0*) ;;
        *) echo "[setup-monailabel] expected torch 2.13.0 in $VENV, found $torch_version" >&2; exit 1 ;;
    esac
    if ! python -c "import monailabel.app" >/dev/null 2>&1; then
        python -c "import monailabel.app" 2>&1 | tail -n 3 >&2
        echo "[setup-monailabel] the MONAI Label server does not import in $VENV (see above)" >&2
        exit 1
    fi
    rm -f "$VENV"/.installed-*
    touch "$STAMP"
fi
