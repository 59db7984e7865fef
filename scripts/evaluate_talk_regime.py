#!/usr/bin/env python
"""The CBCT benchmark in the talk's regime (issue 21) on held-out test phantoms: ``docs/results/talk_regime.json``.

For each setting (sparse/dense views, noisy/noise-free; ``monai_ext.data.talk_regime``) and each method of a bundle,
the mean PSNR and SSIM over ``--n-test`` textured thoraces of the test split (seeds disjoint from the training and
validation phantoms) and the process CPU seconds per volume:

- ``fdk`` and ``tv`` at the choices ``scripts/study_talk_regime_baselines.py`` made on the validation phantoms
  (``scripts/results/talk_regime_baselines.json``: FDK window; TV weight and iterations to convergence);
- ``lpd`` and ``invertible_lpd`` (primal-dual bundle): the best weights trained with ``configs/talk_regime.json``
  for the setting's views (``outputs/talk_regime/<method>_<views>/models``); the noise-free columns score the same
  weights (trained on noisy scans) on noise-free scans;
- ``naf`` and ``condcbnt`` (neural-field bundle): ``inference.json`` with ``configs/talk_regime.json`` layered on it
  (the per-scan and the conditioned field, fitted to each test scan with the step counts chosen on the validation
  phantoms; the conditioned one on the backbone trained with ``train.json`` and the same file).

A method or setting that cannot be scored (no baseline choice yet, no trained weights) is left out of the scores and
named, with the reason, under ``"missing"``: the JSON never holds a number that was not measured. Results of
settings and methods not run now are kept from an earlier run of the file (``--settings`` and ``--methods`` run a
subset).

Usage:
    python scripts/evaluate_talk_regime.py --bundle cbct_learned_primal_dual [--n-test 8] [--settings sparse_noisy ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai_ext.data import TALK_REGIME, full_sampling_views, talk_regime_geometry, textured_cbct_scans  # noqa: E402
from monai_ext.metrics import psnr, ssim  # noqa: E402

SETTINGS = ("sparse_noisy", "sparse_noise_free", "dense_noisy", "dense_noise_free")
METHODS = {"cbct_learned_primal_dual": ("fdk", "tv", "lpd", "invertible_lpd"), "cbct_neural_field": ("fdk", "tv", "naf", "condcbnt")}
BASELINES = ROOT / "scripts" / "results" / "talk_regime_baselines.json"


FIELD_METHODS = {"naf": "per_scan", "condcbnt": "conditioned"}


def talk_regime_parser(bundle: str, config: str, overrides: dict):
    """``configs/<config>.json`` of ``bundle`` with ``configs/talk_regime.json`` layered on it, on the CPU."""
    from monai.bundle import ConfigParser

    root = ROOT / "bundles" / bundle
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / f"{config}.json"), str(root / "configs" / "talk_regime.json")])
    parser.update({"bundle_root": str(root), "progress": False, "device": "$torch.device('cpu')", **overrides})
    return parser


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def trained_network(bundle: str, method: str, views: str, overrides: dict | None = None, build: bool = True):
    """The network of ``bundle`` for ``method`` in the talk's regime at ``views`` and what identifies it (its
    provenance), or ``None`` and the reason it is missing.

    Primal-dual bundle: the best weights trained with ``configs/talk_regime.json``. Neural-field bundle: the bundle's
    ``NeuralFieldReconstruction`` of ``inference.json`` with ``talk_regime.json`` layered on it (``overrides``, e.g.
    another fit's step count), the conditioned one with the backbone trained with ``train.json`` and the same file.
    ``build=False`` returns the provenance without building the network.
    """
    if bundle == "cbct_neural_field":
        field_method = FIELD_METHODS[method]
        parser = talk_regime_parser(bundle, "inference", {"method": field_method, "talk_setting": views, **(overrides or {})})
        backbone = Path(parser.get_parsed_content("backbone_file"))
        provenance = {"fit": parser.get_parsed_content("fit")[field_method], "field_args": parser.get_parsed_content("field_args")}
        if field_method == "conditioned":
            if not backbone.is_file():
                return None, f"no backbone trained for the {views} setting yet (no {backbone.relative_to(ROOT)})"
            provenance = {"fit": provenance["fit"], "backbone_sha256": _sha256(backbone)}
        return (parser.get_parsed_content("network_def") if build else None), provenance
    parser = talk_regime_parser(bundle, "train", {"method": method, "talk_setting": views})
    weights = Path(parser.get_parsed_content("weights_file"))
    if not weights.is_file():
        return None, f"not trained for the {views} setting yet (no {weights.relative_to(ROOT)})"
    provenance = {"weights_sha256": _sha256(weights)}
    if not build:
        return None, provenance
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return network.eval(), provenance


def reconstructors(bundle: str, setting: str, geometry, baselines: dict, only: list[str] | None = None):
    """``{method: callable(projections (1, 1, ...)) -> volume (1, 1, ...)}`` for the methods of ``only`` (all by
    default), ``{method: reason}`` for the missing ones and ``{method: provenance}`` for every method that can run
    (the baseline's choice, the weights' or backbone's hash, the fit): what a score was measured with."""
    from monai_ext.operators import operator_norm
    from monai_ext.solvers import tv_pdhg
    from monai_ext.tomo import ConeBeamProjector, fdk

    views = setting.split("_", 1)[0]
    wanted = set(METHODS[bundle] if only is None else only)
    methods, missing, provenance = {}, {}, {}
    choice = baselines.get(setting) or {}
    if "fdk" not in choice or "tv" not in choice:
        missing["fdk"] = missing["tv"] = f"no baseline choice for {setting} in {BASELINES.relative_to(ROOT)} (run scripts/study_talk_regime_baselines.py --settings {setting})"
    else:
        provenance["fdk"] = {"window": choice["fdk"]["window"]}
        provenance["tv"] = {"weight": choice["tv"]["weight"], "iterations": choice["tv"]["iterations"]}
        if "fdk" in wanted:
            methods["fdk"] = lambda p, w=choice["fdk"]["window"]: fdk(p, geometry, window=w)
        if "tv" in wanted:
            operator = ConeBeamProjector(geometry)
            norm = operator_norm(operator)
            methods["tv"] = lambda p, c=choice["tv"]: tv_pdhg(operator, p.double(), c["weight"], n_iter=c["iterations"], norm=norm)[0].float()
    for method in METHODS[bundle][2:]:
        overrides = {}
        if method in FIELD_METHODS and "n_steps" in choice.get("fields", {}).get(method, {}):
            # the step count chosen on the validation phantoms of this setting, else the config's
            overrides[f"fit#{FIELD_METHODS[method]}#n_steps"] = int(choice["fields"][method]["n_steps"])
        network, identity = trained_network(bundle, method, views, overrides, build=method in wanted)
        if isinstance(identity, str):
            missing[method] = identity
            continue
        provenance[method] = identity
        if method in FIELD_METHODS:
            provenance[method]["n_steps_chosen_on"] = f"{setting} validation" if overrides else "the config's default (no step-count study for this setting)"
        if method in wanted:
            methods[method] = network
    return methods, missing, provenance


def evaluate(bundle: str, setting: str, n_test: int, baselines: dict, only: list[str] | None = None) -> dict:
    views, noise = setting.split("_", 1)
    geometry = talk_regime_geometry(views)
    methods, missing, provenance = reconstructors(bundle, setting, geometry, baselines, only)
    missing.update({m: "not scored in this run (--methods)" for m in provenance if m not in methods})
    out = {"psnr_db": {}, "ssim": {}, "cpu_seconds_per_volume": {}, "per_case_psnr_db": {}, "missing": missing,
           "provenance": {m: provenance[m] for m in methods}, "current_provenance": provenance}
    if not methods:
        return out
    scans = textured_cbct_scans("test", n_test, geometry, TALK_REGIME["i0"] if noise == "noisy" else None)
    for method, run in methods.items():
        scores, similarities, seconds = [], [], []
        for i in range(n_test):
            start = time.process_time()
            with torch.no_grad():
                volume = run(scans.projections[i : i + 1])
            seconds.append(time.process_time() - start)
            scores.append(psnr(volume[0, 0], scans.volumes[i, 0]))
            similarities.append(ssim(volume[0, 0], scans.volumes[i, 0]))
        out["psnr_db"][method] = round(float(np.mean(scores)), 3)
        out["ssim"][method] = round(float(np.mean(similarities)), 4)
        out["cpu_seconds_per_volume"][method] = round(float(np.mean(seconds)), 2)
        out["per_case_psnr_db"][method] = [round(float(s), 3) for s in scores]
        print(f"{setting} {method}: PSNR {out['psnr_db'][method]:.2f} dB, SSIM {out['ssim'][method]:.3f}, "
              f"{out['cpu_seconds_per_volume'][method]:.1f} CPU s per volume", flush=True)
    for method, reason in missing.items():
        print(f"{setting} {method}: not scored: {reason}", flush=True)
    return out


def _ordered(bundle: str, values: dict) -> dict:
    return {m: values[m] for m in METHODS[bundle] if m in values}


def write(bundle: str, results: dict, n_test: int, path: Path, memory: dict | None = None) -> dict:
    """The issue's shape: per-setting scores, then the CPU seconds per volume of each method (at the sparse noisy
    setting where measured, else the first setting that has it) and the extras, each method either scored or named
    under ``missing``."""
    for setting, result in results.items():
        unaccounted = [m for m in METHODS[bundle] if m not in result["psnr_db"] and m not in result["missing"]]
        if unaccounted:
            raise RuntimeError(f"{setting}: {unaccounted} neither scored nor named as missing")
    sparse, dense = talk_regime_geometry("sparse"), talk_regime_geometry("dense")
    cpu = {}
    for setting in SETTINGS:
        for method, value in results.get(setting, {}).get("cpu_seconds_per_volume", {}).items():
            cpu.setdefault(method, value)
    present = [s for s in SETTINGS if s in results]
    document = {
        "grid": list(sparse.image_shape), "voxel_mm": float(sparse.pixel_size[0]), "panel": list(sparse.det_shape),
        "full_sampling_views": full_sampling_views(sparse), "sparse_views": len(sparse.angles), "dense_views": len(dense.angles),
        "i0": float(TALK_REGIME["i0"]), "n_test_cases": int(n_test), "scan": TALK_REGIME["scan"],
        "psnr_db": {s: _ordered(bundle, results[s]["psnr_db"]) for s in present},
        "ssim": {s: _ordered(bundle, results[s]["ssim"]) for s in present},
        "cpu_seconds_per_volume": _ordered(bundle, cpu),
        "cpu_seconds_per_volume_by_setting": {s: _ordered(bundle, results[s]["cpu_seconds_per_volume"]) for s in present},
        "per_case_psnr_db": {s: _ordered(bundle, results[s]["per_case_psnr_db"]) for s in present},
        "missing": {s: _ordered(bundle, results[s]["missing"]) for s in present if results[s]["missing"]},
        "provenance": {s: _ordered(bundle, results[s]["provenance"]) for s in present},
        "methods": list(METHODS[bundle]),
        **({"training_memory": memory} if memory else {}),
        "command": f"python scripts/evaluate_talk_regime.py --bundle {bundle} --n-test {n_test}",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=4, ensure_ascii=True) + "\n")
    tmp.replace(path)
    return document


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def keep_earlier(bundle: str, setting: str, kept: dict, fresh: dict) -> dict:
    """``fresh`` (this run's result for ``setting``) with the scores of ``kept`` (an earlier run's) for the methods
    not run now, each only where it was measured with what the method is now (its provenance); a stale or
    unidentified earlier score is dropped and named under ``missing``."""
    current = fresh["current_provenance"]
    for method in METHODS[bundle]:
        if method in fresh["psnr_db"] or method not in kept.get("psnr_db", {}):
            continue
        if method in current and _same(kept.get("provenance", {}).get(method), current[method]):
            for key in ("psnr_db", "ssim", "per_case_psnr_db", "cpu_seconds_per_volume", "provenance"):
                fresh[key][method] = kept[key][method]
            fresh["missing"].pop(method, None)
        elif method in current:
            fresh["missing"][method] = "an earlier score was measured with other settings or weights than the current ones; run --methods " + method
    fresh["missing"] = {m: r for m, r in fresh["missing"].items() if m not in fresh["psnr_db"]}
    return fresh


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True, choices=sorted(METHODS))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--n-test", type=int, default=8)
    parser.add_argument("--methods", nargs="+", default=None, help="score only these methods (the others' results are kept)")
    parser.add_argument("--num-threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="default: bundles/<bundle>/docs/results/talk_regime.json")
    parser.add_argument("--memory", default=None, help="JSON of scripts/bench_cbct_lpd_memory.py at this grid, kept as training_memory")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.num_threads)
    path = Path(args.out) if args.out else ROOT / "bundles" / args.bundle / "docs" / "results" / "talk_regime.json"
    baselines = json.loads(BASELINES.read_text()) if BASELINES.is_file() else {}
    previous = json.loads(path.read_text()) if path.is_file() else {}
    memory = previous.get("training_memory")
    if args.memory:
        bench = json.loads(Path(args.memory).read_text())
        memory = {"peak_mib": {f"{r['network']}_{r['n_iter']}_iterations": r["peak_mib"] for r in bench["rows"]},
                  "invertible_to_lpd": bench["ratio_invertible_to_lpd_at_deepest"], "settings": bench["settings"],
                  "hardware": bench["hardware"], "method": bench["method"],
                  "command": "OMP_NUM_THREADS=1 python scripts/bench_cbct_lpd_memory.py --size {size} --views {views} --features {features} --iters 16".format(**bench["settings"])}
    if args.methods and set(args.methods) - set(METHODS[args.bundle]):
        parser.error(f"--methods: {sorted(set(args.methods) - set(METHODS[args.bundle]))} not among {list(METHODS[args.bundle])}")
    earlier = {}
    if previous.get("n_test_cases") == args.n_test:  # the settings and methods not run now are kept where still current
        for setting in previous.get("psnr_db", {}):
            earlier[setting] = {key: previous.get(key, {}).get(setting, {}) for key in ("psnr_db", "ssim", "per_case_psnr_db", "missing", "provenance")}
            earlier[setting]["cpu_seconds_per_volume"] = previous.get("cpu_seconds_per_volume_by_setting", {}).get(setting, {})
    # first what is kept (checked against the current provenance, nothing run), then each setting run now, written
    # after each so that an interrupted run loses nothing measured
    results = {s: keep_earlier(args.bundle, s, earlier[s], evaluate(args.bundle, s, args.n_test, baselines, []))
               for s in SETTINGS if s in earlier and s not in args.settings}
    for setting in args.settings:
        fresh = evaluate(args.bundle, setting, args.n_test, baselines, args.methods)
        results[setting] = keep_earlier(args.bundle, setting, earlier[setting], fresh) if setting in earlier else fresh
        write(args.bundle, {s: results[s] for s in SETTINGS if s in results}, args.n_test, path, memory)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
