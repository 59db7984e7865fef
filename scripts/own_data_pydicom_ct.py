"""The three real CT slices that pydicom ships, reconstructed by the CT bundle at their own grid, as a user would.

Each slice (``CT_small.dcm``: 128 x 128 at 0.66 mm; ``J2K_pixelrep_mismatch.dcm``: 512 x 512 at 0.43 mm;
``693_J2KI.dcm``: 512 x 512 at 0.48 mm) is converted to attenuation (1/mm, ``monai_ext.data.read_ct_slice``: HU
from the modality LUT, outside the scanner's field of view set to 0) and written as NIfTI with its own pixel
spacing. The bundle then runs on that folder through ``python -m monai.bundle run``, exactly as a user would:

- ``fbp`` and ``tv`` reconstruct a scan simulated on each slice's own grid (the bundle's 5-view, 1e4-photon scan
  carried over to it);
- ``lpd`` (trained at 64 x 64 / 4 mm) runs with ``--resample true``: the slice is resampled to the training grid,
  scanned and reconstructed there, and the result resampled back to the slice's grid.

Prints a table (PSNR/SSIM against the slice, on its own grid) and writes
``bundles/ct_learned_reconstruction/docs/own_data_pydicom_ct.json`` (``--out``).

Usage:
    python scripts/own_data_pydicom_ct.py [--work /tmp/own_data_pydicom_ct] [--out ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "ct_learned_reconstruction"
RUNS = {"fbp": [], "tv": [], "lpd": ["--resample", "true"]}


def write_slices(folder: Path) -> dict[str, dict]:
    """Each readable pydicom CT slice as ``folder/<name>.nii.gz`` at its own spacing; returns their grids."""
    from pydicom.data import get_testdata_file

    from monai_ext.data import read_ct_slice
    from monai_ext.data.ct_datasets import REAL_CT_FILES
    from monai_ext.io import save_nifti

    grids = {}
    for file in REAL_CT_FILES:
        path = get_testdata_file(file)
        if path is None:
            print(f"{file}: not in this pydicom installation; skipped", file=sys.stderr)
            continue
        try:
            mu, spacing = read_ct_slice(path)
        except ValueError as err:
            print(f"{file}: {err}; skipped", file=sys.stderr)
            continue
        name = file.rsplit(".", 1)[0]
        save_nifti(mu, folder / f"{name}.nii.gz", spacing=list(spacing))
        grids[name] = {"shape": list(mu.shape), "spacing_mm": [round(s, 6) for s in spacing]}
    if not grids:
        raise SystemExit("none of pydicom's CT slices could be read")
    return grids


def run_bundle(method: str, extra: list[str], data: Path, output: Path) -> dict:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "inference.json"),
           "--bundle_root", str(BUNDLE), "--dataset_dir", str(data), "--output_dir", str(output), "--method", method, *extra]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{method} failed:\n{result.stderr[-3000:]}")
    return json.loads((output / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="folder for the NIfTI slices and the bundle outputs (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=BUNDLE / "docs" / "own_data_pydicom_ct.json")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="own_data_pydicom_ct."))
    grids = write_slices(work / "data")
    rows = []
    for method, extra in RUNS.items():
        summary = run_bundle(method, extra, work / "data", work / method)
        for case in summary["cases"]:
            rows.append({"slice": case["name"], **grids[case["name"]], "method": method, "command_options": " ".join(extra),
                         "psnr_db": case["psnr_db"], "ssim": case["ssim"], "relative_error": case["relative_error"],
                         "output_shape": case["shape"], "output_spacing_mm": case["spacing_mm"]})
    print(f"{'slice':28s} {'grid':>22s} {'method':>6s} {'PSNR dB':>8s} {'SSIM':>6s}")
    for row in rows:
        grid = f"{row['shape'][0]}x{row['shape'][1]} @ {row['spacing_mm'][0]:.3g} mm"
        print(f"{row['slice']:28s} {grid:>22s} {row['method']:>6s} {row['psnr_db']:8.2f} {row['ssim']:6.3f}")
    from monai_ext.io import save_json

    save_json({"command": "python scripts/own_data_pydicom_ct.py", "bundle_config": "inference.json (5 views, i0 1e4)", "rows": rows}, args.out)
    print(f"-> {args.out}; outputs in {work}")


if __name__ == "__main__":
    main()
