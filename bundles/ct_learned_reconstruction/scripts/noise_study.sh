#!/usr/bin/env bash
# Noise-robustness study of the CT bundle: the committed models were trained at I0 = 1e4 photons per bin; this
# trains the methods of NOISE_FREE_METHODS (default: the post-processing U-Net,
# the cheapest to retrain; list all five to compare every method) once more on noise-free data (models/noise_free/,
# skipped when present unless RETRAIN=1), then tests every method on the ellipse test set at I0 from 1e3 to 1e6 and noise-free, and plots PSNR
# against the test noise level (solid: trained with noise; dashed: trained noise-free).
#
# Usage: bash bundles/ct_learned_reconstruction/scripts/noise_study.sh [output_dir]   (from any directory)
set -euo pipefail
BUNDLE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$BUNDLE/outputs/noise_study}"
METHODS="${NOISE_FREE_METHODS:-fbpconvnet}"
for method in $METHODS; do
    if [ "${RETRAIN:-0}" = "1" ] || [ ! -f "$BUNDLE/models/noise_free/$method.pt" ]; then
        python -m monai.bundle run --config_file "$BUNDLE/configs/train.json" --bundle_root "$BUNDLE" \
            --method "$method" --noise_free True --ckpt_dir "$BUNDLE/models/noise_free"
    fi
done
python -m monai.bundle run \
    --config_file "['$BUNDLE/configs/inference.json','$BUNDLE/configs/evaluate.json','$BUNDLE/configs/noise_study.json']" \
    --bundle_root "$BUNDLE" --output_dir "$OUT" --noise_free_methods "$(python -c 'import json, sys; print(json.dumps(sys.argv[1:]))' $METHODS)"
echo "noise study written to $OUT (noise_robustness.json, .md, .png)"
