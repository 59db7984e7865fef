#!/usr/bin/env bash
# Main job: set up .venv, then run every bundle's inference on its built-in example case and print one line each.
# Outputs go to outputs/<bundle>/ (reconstructions as NIfTI + PNG, summary.json, run.log).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
status=0
for bundle in bundles/*/; do
    name="$(basename "$bundle")"
    out="$ROOT/outputs/$name"
    mkdir -p "$out"
    start=$(date +%s)
    if python -m monai.bundle run --config_file "$bundle/configs/inference.json" --bundle_root "$ROOT/$bundle" \
        --output_dir "$out" --logging_file "$bundle/configs/logging.conf" >"$out/run.log" 2>&1; then
        python - "$out/summary.json" "$name" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
path, name, secs = sys.argv[1], sys.argv[2], sys.argv[3]
s = json.load(open(path))
parts = [f"PSNR {s['mean_psnr_db']:.2f} dB" if "mean_psnr_db" in s else "", f"SSIM {s['mean_ssim']:.3f}" if "mean_ssim" in s else ""]
score = ", ".join(p for p in parts if p) or "no reference"
print(f"{name}: OK  {s['method']} on {len(s['cases'])} case(s), {score}, {secs} s -> {path.rsplit('/', 1)[0]}")
PY
    else
        echo "$name: FAILED (see $out/run.log)"; tail -n 5 "$out/run.log"; status=1
    fi
done
exit $status
