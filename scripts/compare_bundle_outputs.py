"""Compare two trees of bundle outputs (e.g. ``outputs/`` before and after a refactor), file by file.

Prints the largest relative difference of every NIfTI image, and every number of the JSON files (timings aside)
that differs by more than 1e-6 relative.

Usage: ``python scripts/compare_bundle_outputs.py OLD_OUTPUTS NEW_OUTPUTS``
"""

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

if len(sys.argv) != 3:
    sys.exit("usage: python scripts/compare_bundle_outputs.py OLD_OUTPUTS NEW_OUTPUTS")
a, b = Path(sys.argv[1]), Path(sys.argv[2])
worst = {}
for f in sorted(a.rglob("*")):
    rel = f.relative_to(a); g = b / rel
    if f.is_dir() or rel.name == "run.log": continue
    if not g.exists(): print("MISSING", rel); continue
    if f.name.endswith((".nii", ".nii.gz")):
        x, y = np.asarray(nib.load(f).dataobj, float), np.asarray(nib.load(g).dataobj, float)
        d = float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-30)) if x.shape == y.shape else float("inf")
        worst[str(rel)] = d
    elif f.suffix == ".json":
        ja, jb = json.loads(f.read_text()), json.loads(g.read_text())
        def nums(o, p=""):
            if isinstance(o, dict):
                for k, v in o.items(): yield from nums(v, p + "/" + k)
            elif isinstance(o, list):
                for i, v in enumerate(o): yield from nums(v, p + f"[{i}]")
            elif isinstance(o, (int, float)) and not isinstance(o, bool): yield p, float(o)
        na, nb = dict(nums(ja)), dict(nums(jb))
        for k in na:
            if k in nb and "second" not in k and "time" not in k and "elapsed" not in k:
                d = abs(na[k] - nb[k]) / max(abs(na[k]), 1e-12)
                if d > 1e-6: print("JSON", rel, k, na[k], nb[k])
for k, v in worst.items():
    print(f"{v:.3e} {k}")
