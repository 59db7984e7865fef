#!/usr/bin/env python
"""FDK and TV at their best in the talk's regime (issue 21), chosen on validation phantoms.

For each setting (sparse/dense views, noisy/noise-free; ``monai_ext.data.talk_regime``):

- FDK: the window (ramp, Shepp-Logan, cosine, Hann) of the best mean PSNR on the validation phantoms;
- TV (PDHG): the iterations to convergence, from the objective of one validation phantom at a middle weight (the
  first iteration after which the objective falls by less than ``--flat`` of its value over 50 iterations), then the
  weight of the best mean PSNR at that iteration count (a log grid refined by bisection, ``tune_weight``).

Writes ``--out`` (JSON: the choices, the scores of every candidate, the objective trace) and a figure of the TV
objective beside it.

The neural fields' step counts (``--fields naf condcbnt --steps 150 300 600 ...``): each validation scan fitted
from scratch with each count (the learning-rate schedule follows the count), the mean PSNR and CPU seconds per
volume of each count, and the count of the best mean PSNR, under ``<setting>.fields``. The fits are those of the
neural-field bundle's ``inference.json`` with ``configs/talk_regime.json`` layered on it; the conditioned field
needs the backbone trained with ``train.json`` and that file.

Usage: python scripts/study_talk_regime_baselines.py [--settings sparse_noisy ...] [--n-val 4]
       [--out scripts/results/talk_regime_baselines.json]
       python scripts/study_talk_regime_baselines.py --score lpd --settings sparse_noisy   (trained weights, same scoring)
       python scripts/study_talk_regime_baselines.py --fields naf --steps 300 1000 3000 --settings sparse_noisy
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai_ext.data import TALK_REGIME, talk_regime_geometry, textured_cbct_scans  # noqa: E402
from monai_ext.metrics import psnr  # noqa: E402
from monai_ext.solvers import tune_weight, tv_pdhg, variational_solution  # noqa: E402
from monai_ext.operators import operator_norm  # noqa: E402
from monai_ext.tomo import ConeBeamProjector, fdk  # noqa: E402

WINDOWS = ("ramp", "shepp-logan", "cosine", "hann")
SETTINGS = ("sparse_noisy", "sparse_noise_free", "dense_noisy", "dense_noise_free")


def flat_iteration(objective: list[float], flat: float, window: int = 50) -> int:
    """The first iteration ``k`` after which the objective falls by less than ``flat`` (relative) over ``window``."""
    values = np.asarray(objective)
    for k in range(len(values) - window):
        if values[k] - values[k + window] < flat * abs(values[k + window]):
            return k
    return len(values)


def study(setting: str, n_val: int, max_iter: int, flat: float, grid: list[float]) -> dict:
    views, noise = setting.split("_", 1)
    geometry = talk_regime_geometry(views)
    i0 = TALK_REGIME["i0"] if noise == "noisy" else None
    scans = textured_cbct_scans("validation", n_val, geometry, i0)
    out = {"views": len(geometry.angles), "i0": i0, "n_val": n_val}
    fdk_scores = {}
    for window in WINDOWS:
        rec = fdk(scans.projections, geometry, window=window)
        fdk_scores[window] = float(np.mean([psnr(rec[i, 0], scans.volumes[i, 0]) for i in range(n_val)]))
    best_window = max(fdk_scores, key=fdk_scores.get)
    out["fdk"] = {"window": best_window, "psnr_db": fdk_scores[best_window], "candidates": fdk_scores}
    operator = ConeBeamProjector(geometry)
    norm = operator_norm(operator)
    middle = float(np.sqrt(grid[0] * grid[-1]))
    start = time.process_time()
    _, info = tv_pdhg(operator, scans.projections[:1].double(), middle, n_iter=max_iter, norm=norm, record_objective=True)
    seconds_per_iteration = (time.process_time() - start) / max_iter
    iterations = flat_iteration(info["objective"], flat)
    solve = partial(variational_solution, operator=operator, method="tv", n_iter=iterations, norm=norm, dtype=torch.float64)
    weight, table = tune_weight(solve, scans.projections, scans.volumes, grid, refine=3, batch_size=1)
    best = next(row["mean_psnr_db"] for row in table if row["weight"] == weight)
    out["tv"] = {"weight": weight, "iterations": iterations, "psnr_db": best, "candidates": table,
                 "objective_weight": middle, "objective": [float(v) for v in info["objective"]], "flat": flat,
                 "cpu_seconds_per_iteration": seconds_per_iteration}
    print(f"{setting}: FDK {best_window} {fdk_scores[best_window]:.2f} dB; TV weight {weight:.3g} at {iterations} iterations "
          f"{best:.2f} dB", flush=True)
    return out


def score_trained(method: str, setting: str, n_val: int) -> float:
    """Mean PSNR, as for FDK and TV above, of the CBCT LPD bundle's best ``method`` weights trained with
    ``configs/talk_regime.json`` (``outputs/talk_regime/<method>_<views>/models``) on the validation phantoms."""
    from evaluate_talk_regime import trained_network  # this folder, beside this script

    views, noise = setting.split("_", 1)
    network, missing = trained_network("cbct_learned_primal_dual", method, views)
    if network is None:
        raise SystemExit(f"cannot score {method}: {missing}")
    scans = textured_cbct_scans("validation", n_val, talk_regime_geometry(views), TALK_REGIME["i0"] if noise == "noisy" else None)
    with torch.no_grad():
        return float(np.mean([psnr(network(scans.projections[i : i + 1])[0, 0], scans.volumes[i, 0]) for i in range(n_val)]))


def study_fields(setting: str, n_val: int, methods: list[str], steps: list[int], previous: dict | None = None) -> dict:
    """Mean validation PSNR and CPU seconds per volume of each neural field at each step count (module notes);
    the candidates of ``previous`` (an earlier run's ``fields`` on the same ``n_val`` phantoms) are kept."""
    from evaluate_talk_regime import FIELD_METHODS, _same, trained_network  # this folder, beside this script

    views, noise = setting.split("_", 1)
    scans = textured_cbct_scans("validation", n_val, talk_regime_geometry(views), TALK_REGIME["i0"] if noise == "noisy" else None)
    out = {}
    for method in methods:
        _, identity = trained_network("cbct_neural_field", method, views, build=False)
        if isinstance(identity, str):
            raise SystemExit(f"cannot fit {method}: {identity}")
        fingerprint = {**identity, "fit": {k: v for k, v in identity["fit"].items() if k != "n_steps"}, "n_val": n_val}
        earlier = (previous or {}).get(method, {})
        # an earlier run's candidates count only if measured with the same fit, field or backbone and phantoms
        candidates = dict(earlier.get("candidates", {})) if _same(earlier.get("fingerprint"), fingerprint) else {}
        for n_steps in sorted(steps):
            network, _ = trained_network("cbct_neural_field", method, views, {f"fit#{FIELD_METHODS[method]}#n_steps": n_steps})
            scores, seconds = [], []
            for i in range(n_val):
                start = time.process_time()
                volume = network(scans.projections[i : i + 1])
                seconds.append(time.process_time() - start)
                scores.append(psnr(volume[0, 0], scans.volumes[i, 0]))
            candidates[str(n_steps)] = {"psnr_db": float(np.mean(scores)), "cpu_seconds_per_volume": float(np.mean(seconds))}
            print(f"{setting} {method} {n_steps} steps: {candidates[str(n_steps)]['psnr_db']:.2f} dB, "
                  f"{candidates[str(n_steps)]['cpu_seconds_per_volume']:.1f} CPU s per volume", flush=True)
        candidates = dict(sorted(candidates.items(), key=lambda item: int(item[0])))
        best = max(candidates, key=lambda k: candidates[k]["psnr_db"])
        out[method] = {"n_steps": int(best), "psnr_db": candidates[best]["psnr_db"], "fingerprint": fingerprint, "candidates": candidates}
    return out


def plot_objectives(results: dict, path: Path) -> None:
    """The TV objective's relative distance to its value at the last iteration, per setting, with the stop marked
    (the last 50 iterations, where that distance is not yet measured, are left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for setting, result in results.items():
        if "tv" not in result:  # a setting with only a step-count study of the fields
            continue
        objective = np.asarray(result["tv"]["objective"])
        gap = objective[:-50] / objective[-1] - 1.0
        stop = result["tv"]["iterations"]
        line = ax.semilogy(gap, label=f"{setting}: stop at {stop}")[0]
        ax.plot([stop], [gap[min(stop, len(gap) - 1)]], "o", color=line.get_color())
    ax.set_xlabel("PDHG iteration")
    ax.set_ylabel(f"objective / objective at {len(objective)} - 1")
    ax.set_title("TV in the talk's regime: objective flattening")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _write(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--n-val", type=int, default=4)
    parser.add_argument("--max-iter", type=int, default=1500)
    parser.add_argument("--flat", type=float, default=1e-4)
    parser.add_argument("--grid", type=float, nargs="+", default=[0.3, 1.0, 3.0, 10.0, 30.0])
    parser.add_argument("--out", default="scripts/results/talk_regime_baselines.json")
    parser.add_argument("--plot-only", action="store_true", help="redraw the figure from --out")
    parser.add_argument("--score", default=None, choices=("lpd", "invertible_lpd"),
                        help="only score this method's weights trained with configs/talk_regime.json, as FDK and TV are")
    parser.add_argument("--fields", nargs="+", default=None, choices=("naf", "condcbnt"), help="choose these fields' step counts")
    parser.add_argument("--steps", type=int, nargs="+", default=[150, 300, 600, 1200], help="step counts tried with --fields")
    args = parser.parse_args(argv)
    if args.score:
        for setting in args.settings:
            print(f"{args.score} {setting}: {score_trained(args.score, setting, args.n_val):.2f} dB on {args.n_val} validation phantoms")
        return 0
    if args.plot_only:
        plot_objectives(json.loads(Path(args.out).read_text()), Path(args.out).with_suffix(".png"))
        return 0
    torch.set_num_threads(2)
    path = Path(args.out)
    results = json.loads(path.read_text()) if path.is_file() else {}
    if args.fields:
        for setting in args.settings:
            fields = results.setdefault(setting, {}).setdefault("fields", {})
            fields.update(study_fields(setting, args.n_val, args.fields, args.steps, fields))
            _write(results, path)
        print(f"wrote {path}")
        return 0
    for setting in args.settings:
        fields = results.get(setting, {}).get("fields")
        results[setting] = study(setting, args.n_val, args.max_iter, args.flat, sorted(args.grid))
        if fields:
            results[setting]["fields"] = fields
        _write(results, path)
    plot_objectives(results, path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
