"""Pseudokernel study of neural blind deconvolution: what keeps the recovered kernel from following the applied one.

The pseudokernel test (Sample et al. 2024) applies skewed anisotropic kernels ``k*`` to a deblurred image ``x0`` and
reruns the deconvolution on ``y* = D(k* * x0)``. This script runs it for several variants of the deconvolution
settings and prints, per variant and pseudokernel, the similarity to its own ``k*``, the best similarity to the other
three (identified = own highest), and the FWHMs (per axis and principal) and skewness of applied and recovered
kernels; everything goes to a JSON file.

Modes:
    joint: the full method (``the bundle's scripts.evaluation.pseudokernel_test``).
    kernel-only: the image frozen at ``x0`` (the true image of ``y*``) and only ``Gk`` fitted (non-blind kernel
        estimation, same kernel network, floor, learning rate, centring penalty and coarse-to-fine stages): it shows
        whether the kernel parametrisation can reach ``k*`` at all within the step budget, apart from the image.

``x0`` is the deblurred phantom of the bundle's ``configs/evaluate.json`` settings (fitted once and cached as NIfTI).

Usage:
    python scripts/study_psma_pseudokernels.py --out bench_results/psma_pseudokernels.json \\
        --variant baseline={} --variant nofloor='{"min_fwhm_mm": null}' [--mode kernel-only] [--only 1,4]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "psma_pet_neural_blind_deconvolution"


def _bundle_evaluation():
    """The PSMA bundle's ``scripts.evaluation`` (pseudokernels and their test)."""
    from monai_ext.workflows import bundle_module

    return bundle_module(Path(__file__).resolve().parents[1] / "bundles" / "psma_pet_neural_blind_deconvolution", "evaluation")


def bundle_settings(threads: int):
    """The evaluation phantom and deconvolution config of ``configs/evaluate.json`` (progress bar off)."""
    import torch
    from monai.bundle import ConfigParser

    torch.set_num_threads(threads)
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "evaluate.json"))
    parser["bundle_root"] = str(BUNDLE)
    parser["deconvolution"]["progress"] = False
    return parser.get_parsed_content("example"), parser.get_parsed_content("deconvolution")


def deblurred_phantom(example, config, cache: Path) -> np.ndarray:
    """``x0``: the deblurred phantom, loaded from ``cache`` or fitted and written there."""
    from monai_ext.io import load_nifti, save_nifti
    from monai_ext.deconvolution.blind_deconvolution import neural_blind_deconvolution

    if cache.is_file():
        return load_nifti(cache)[0]
    result = neural_blind_deconvolution(example.measured, example.spacing, config)
    save_nifti(result.image, cache)
    return result.image


def kernel_only_fit(image_2x: np.ndarray, measured: np.ndarray, spacing, config) -> np.ndarray:
    """Fit ``Gk`` alone so that ``D(k * x0) ~ y*`` (``x0`` frozen), with the method's kernel settings and stages."""
    import torch

    from monai_ext.networks.blind_deconvolution import KernelGenerator
    from monai_ext.deconvolution.blind_deconvolution import DeconvolutionLoss, blur_and_downsample, fit_kernel_to_image, kernel_model

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    x = torch.as_tensor(image_2x / measured.max(), dtype=torch.float32)[None, None]
    target = torch.as_tensor(measured / measured.max(), dtype=torch.float32)[None, None]
    prior = kernel_model(config, spacing)
    previous_raw = prior.initial_raw
    loss_fn = DeconvolutionLoss()
    for size, steps in zip(config.kernel_sizes, config.iterations):
        gk = KernelGenerator(size, config.kernel_input_size, config.kernel_hidden)
        prior.initialise(gk, previous_raw)
        code = torch.rand(config.kernel_input_size, generator=generator)
        kernel_of = prior.kernel_function(gk, code)
        fit_kernel_to_image(kernel_of, gk.parameters(), blur_and_downsample, x, target, loss_fn, steps, config.lr_kernel, config.centre_fraction)
        with torch.no_grad():
            kernel, previous_raw = kernel_of(), gk(code)
    return kernel[0, 0].numpy()


def run_variant(name: str, overrides: dict, mode: str, only, threads: int, cache: Path, kernels_dir: Path | None = None) -> dict:
    from monai_ext.metrics.deconvolution import kernel_shape, kernel_similarity_matrix
    from monai_ext.deconvolution.blind_deconvolution import blur_and_downsample
    evaluation = _bundle_evaluation()
    PSEUDOKERNELS, pseudokernel_test, skewed_kernel = evaluation.PSEUDOKERNELS, evaluation.pseudokernel_test, evaluation.skewed_kernel

    import torch

    example, config = bundle_settings(threads)
    x0 = deblurred_phantom(example, config, cache)
    variant = replace(config, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    pseudokernels = [PSEUDOKERNELS[i - 1] for i in only] if only else list(PSEUDOKERNELS)
    start = time.perf_counter()
    if mode == "joint":
        out = pseudokernel_test(x0, example.spacing, variant, pseudokernels, output_dir=kernels_dir / name if kernels_dir else None)
    else:
        spacing_2x = tuple(s / 2 for s in example.spacing)
        applied, recovered = [], []
        for spec in pseudokernels:
            k_star = skewed_kernel(spec["fwhm_mm"], spec["skew"], spacing_2x, variant.kernel_sizes[-1])
            measured = blur_and_downsample(torch.as_tensor(x0)[None, None], torch.as_tensor(k_star)[None, None])[0, 0].numpy()
            applied.append(k_star)
            recovered.append(kernel_only_fit(x0, measured, example.spacing, variant))
        matrix = kernel_similarity_matrix(recovered, applied)
        rows = []
        for i, spec in enumerate(pseudokernels):
            others = np.delete(matrix[i], i)
            rows.append({**spec, "applied_shape": kernel_shape(applied[i], spacing_2x), "recovered_shape": kernel_shape(recovered[i], spacing_2x),
                         "similarity": float(matrix[i, i]), "best_other_similarity": float(others.max()) if others.size else None,
                         "identified": bool(others.size == 0 or matrix[i, i] > others.max())})
        out = {"rows": rows, "similarity_matrix": matrix.tolist()}
    numbers = list(only) if only else list(range(1, len(PSEUDOKERNELS) + 1))
    return {"variant": name, "overrides": overrides, "mode": mode, "pseudokernel_numbers": numbers, "seconds": time.perf_counter() - start, **out}


def print_table(result: dict) -> None:
    print(f"\n{result['variant']} ({result['mode']}, {result['seconds']:.0f} s): {json.dumps(result['overrides'])}")
    print(f"{'k*':>3s} {'own':>6s} {'other':>6s} {'id':>3s}  {'applied FWHM z y x':>18s}  {'recovered FWHM z y x':>20s}  {'rec. principal':>15s}  {'applied skew':>17s}  {'recovered skew':>17s}")
    numbers = result.get("pseudokernel_numbers") or range(1, len(result["rows"]) + 1)
    for i, r in zip([n - 1 for n in numbers], result["rows"]):
        a, k = r["applied_shape"], r["recovered_shape"]
        other = r["best_other_similarity"]
        print(f"{i + 1:3d} {r['similarity']:6.3f} {other if other is None else f'{other:6.3f}'} {'yes' if r['identified'] else 'no':>3s}  "
              f"{' '.join(f'{v:5.1f}' for v in a['fwhm_mm']):>18s}  {' '.join(f'{v:5.1f}' for v in k['fwhm_mm']):>20s}  "
              f"{' '.join(f'{v:4.1f}' for v in k['principal_fwhm_mm']):>15s}  {' '.join(f'{v:5.2f}' for v in a['skewness']):>17s}  "
              f"{' '.join(f'{v:5.2f}' for v in k['skewness']):>17s}")


def markdown_report(results: list[dict]) -> str:
    """One markdown table of every stored variant: similarity to own / best other, widths, skewness, trajectory."""
    lines = ["| variant | mode | k* | own | best other | identified | recovered FWHM (mm, z y x) | recovered skewness | kernel FWHM z/y/x (mm) after joint steps 1, 20, 40, 81, 140 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        numbers = r.get("pseudokernel_numbers") or range(1, len(r["rows"]) + 1)
        for n, row in zip(numbers, r["rows"]):
            other = row["best_other_similarity"]
            complete = len(r["rows"]) == 4  # identification is only meaningful against all four applied kernels
            trace = ""
            if row.get("kernel_history"):
                spacing_2x = (1.4, 1.365, 1.365)
                marks = {1, 20, 40, 81, 140}
                trace = ", ".join("/".join(f"{v * s:.1f}" for v, s in zip(h[1:], spacing_2x)) for h in row["kernel_history"] if h[0] in marks)
            lines.append(f"| {r['variant']} | {r['mode']} | {n} | {row['similarity']:.3f} | {f'{other:.3f}' if complete else 'n/a'} | "
                         f"{('yes' if row['identified'] else 'no') if complete else 'n/a'} | {' '.join(f'{v:.1f}' for v in row['recovered_shape']['fwhm_mm'])} | "
                         f"{' '.join(f'{v:.2f}' for v in row['recovered_shape']['skewness'])} | {trace} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_results/psma_pseudokernels.json")
    parser.add_argument("--variant", action="append", default=[], help="name=JSON overrides of BlindDeconvolutionConfig")
    parser.add_argument("--mode", choices=("joint", "kernel-only"), default="joint")
    parser.add_argument("--only", default="", help="pseudokernels to run, e.g. 1,4 (default all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", action="store_true", help="print the stored results as one markdown table and exit")
    parser.add_argument("--kernels_dir", default=None, help="joint mode: write applied/recovered kernels (NIfTI) and PNGs under <dir>/<variant>")
    parser.add_argument("--cache", default="bench_results/psma_deblurred_phantom.nii.gz", help="x0 (fitted once)")
    args = parser.parse_args()
    only = [int(v) for v in args.only.split(",") if v]
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.is_file() else {"results": []}
    if args.report:
        print(markdown_report(previous["results"]))
        return
    for spec in args.variant or ["baseline={}"]:
        name, _, overrides = spec.partition("=")
        result = run_variant(name, json.loads(overrides or "{}"), args.mode, only, args.threads, Path(args.cache),
                             Path(args.kernels_dir) if args.kernels_dir else None)
        print_table(result)
        previous["results"] = [r for r in previous["results"] if (r["variant"], r["mode"]) != (name, args.mode)] + [result]
        from monai_ext.io import save_json

        out.parent.mkdir(parents=True, exist_ok=True)
        save_json(previous, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
