"""Can the marginal likelihood identify the PSMA phantom's blur where the joint fit does not?

Blind deconvolution by joint estimation of image and kernel is drawn to the no-blur solution (Levin et al. 2009); the
remedy Levin et al. (2011) propose is to estimate the kernel with the image integrated out. This script scores
kernels by that marginal likelihood under a stationary power-law Gaussian image model
(``monai_ext.deconvolution.blur_likelihood.WhittleBlurLikelihood``: exact 2x aliasing, the image model's amplitude, exponent and
noise fitted per kernel) in three settings:

1. control: a power-law Gaussian field (the model holds), blurred by a 4-voxel Gaussian: is 4 the most likely width?
2. the bundle's sphere phantom (``configs/evaluate.json``, true PSF 6.5 x 6 x 6 mm FWHM): isotropic Gaussians of
   3-8 mm and the true PSF, the exponent fitted or fixed;
3. the pseudokernel test: each applied ``k*`` on the deblurred phantom ``x0`` scored against all four applied kernels
   and the 4/5/6 mm Gaussians (identified = its own ``k*`` most likely).

Usage:
    python scripts/study_psma_blur_likelihood.py --out bench_results/psma_blur_likelihood.json
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _pseudokernel_study():
    """``scripts/study_psma_pseudokernels.py`` as a module (its bundle settings and cached ``x0``)."""
    spec = importlib.util.spec_from_file_location("study_psma_pseudokernels", ROOT / "scripts" / "study_psma_pseudokernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def score(likelihood, kernels: dict, exponent=None) -> dict:
    out = {}
    for name, kernel in kernels.items():
        value, spectrum = likelihood.fit(torch.as_tensor(np.asarray(kernel, np.float64)), exponent=exponent)
        out[name] = {"nll": value, "exponent": spectrum.exponent}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_results/psma_blur_likelihood.json")
    parser.add_argument("--cache", default="bench_results/psma_deblurred_phantom.nii.gz", help="x0 (fitted once)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from monai_ext.io import save_json
    from monai_ext.deconvolution.blind_deconvolution import blur_and_downsample
    from monai_ext.deconvolution.blur_likelihood import WhittleBlurLikelihood
    from monai_ext.phantoms import blurred_power_law_scan, gaussian_kernel
    evaluation = _pseudokernel_study()._bundle_evaluation()
    PSEUDOKERNELS, skewed_kernel = evaluation.PSEUDOKERNELS, evaluation.skewed_kernel

    start = time.perf_counter()
    study = _pseudokernel_study()
    example, config = study.bundle_settings(args.threads)
    spacing_2x = tuple(s / 2 for s in example.spacing)
    results = {}

    # 1. control: the model holds
    control = WhittleBlurLikelihood(blurred_power_law_scan((1.4, 1.4, 1.4), 4.0, 3.0), (1.4, 1.4, 1.4))
    widths = (2.5, 3.5, 4.0, 4.5, 6.0)
    results["control"] = {"true_fwhm_voxels": 4.0, "true_exponent": 3.0,
                          "scores": score(control, {f"{w}": gaussian_kernel(w, 15) for w in widths})}

    # 2. the phantom measurement, isotropic Gaussians and the true PSF
    phantom = WhittleBlurLikelihood(example.measured, spacing_2x)
    fwhms = {f"{f} mm": (f, f, f) for f in (3.0, 4.0, 5.0, 6.0, 7.0, 8.0)} | {"true PSF 6.5 6 6 mm": (6.5, 6.0, 6.0)}
    gaussians = {name: gaussian_kernel(np.asarray(f) / np.asarray(spacing_2x), 17) for name, f in fwhms.items()}
    results["phantom"] = {"free": score(phantom, gaussians)}
    for p in (2.0, 3.0, 4.0):
        results["phantom"][f"exponent {p}"] = score(phantom, gaussians, exponent=p)

    # 3. pseudokernels on x0
    x0 = study.deblurred_phantom(example, config, Path(args.cache))
    size = config.kernel_sizes[-1]
    applied = {f"k*{i + 1}": skewed_kernel(s["fwhm_mm"], s["skew"], spacing_2x, size) for i, s in enumerate(PSEUDOKERNELS)}
    candidates = applied | {f"{f} mm": gaussian_kernel(np.full(3, f) / np.asarray(spacing_2x), size) for f in (4.0, 5.0, 6.0)}
    rows = {}
    for name, k_star in applied.items():
        measured = blur_and_downsample(torch.as_tensor(x0)[None, None], torch.as_tensor(k_star)[None, None])[0, 0].numpy()
        rows[name] = score(WhittleBlurLikelihood(measured, spacing_2x), candidates)
    results["pseudokernels"] = rows
    results["seconds"] = time.perf_counter() - start

    print("\n1. control (power-law field, exponent 3, blur 4 voxels): -log p per width (fitted exponent)")
    for name, v in results["control"]["scores"].items():
        print(f"   {name:>5s} voxels  {v['nll']:.4f}  ({v['exponent']:.2f})")
    print("\n2. phantom (true PSF 6.5 6 6 mm): -log p, exponent fitted (its value) and fixed at 2 / 3 / 4")
    for name in gaussians:
        fixed = "  ".join(f"{results['phantom'][f'exponent {p}'][name]['nll']:.4f}" for p in (2.0, 3.0, 4.0))
        free = results["phantom"]["free"][name]
        print(f"   {name:>20s}  {free['nll']:.4f} ({free['exponent']:.2f})  {fixed}")
    print("\n3. pseudokernels: -log p of each candidate (rows: applied k*, columns: candidates); most likely marked")
    names = list(candidates)
    print("   " + " ".join(f"{n:>8s}" for n in ["", *names]))
    for row_name, row in rows.items():
        values = [row[n]["nll"] for n in names]
        best = int(np.argmin(values))
        print("   " + f"{row_name:>8s} " + " ".join(f"{v:7.4f}{'*' if j == best else ' '}" for j, v in enumerate(values)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_json(results, out)
    print(f"\nwrote {out} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
