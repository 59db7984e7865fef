"""monai_ext: physics operators, solvers, networks and data for the monai-recon-bundles MONAI bundles.

Subpackages, grouped by domain:

- ``monai_ext.tomo``: CT/CBCT geometries, projectors (forward/adjoint), FBP and FDK.
- ``monai_ext.pet``: PET system model, Poisson likelihood, MLEM/OSEM, dynamic PET simulator.
- ``monai_ext.deq``: fixed-point solvers and Deep Equilibrium layers with implicit gradients.
- ``monai_ext.solvers``: variational solvers (Tikhonov CG, TV PDHG) for any linear operator.
- ``monai_ext.networks``: reconstruction networks (post-processing, MMSE + CNN, unrolled, Learned Primal-Dual).
- ``monai_ext.fields``: neural attenuation fields for CBCT (encodings, ray rendering, per-scan and conditioned fits).
- ``monai_ext.data``: seeded in-memory data sets (random ellipses, real CT slices, CBCT thoraxes) and their scans.
- ``monai_ext.transforms``: MONAI transforms for measurement physics.
- ``monai_ext.metrics``: image quality metrics.
- ``monai_ext.phantoms``: analytic and random phantoms.
"""

__version__ = "0.2.0"

import importlib as _importlib

_SUBPACKAGES = ("data", "deq", "fields", "flags", "io", "metrics", "networks", "pet", "phantoms", "solvers", "tomo", "transforms", "workflows")


def __getattr__(name: str):
    # subpackages load on first use, so that bundle configs can write ``$import monai_ext`` and then
    # ``monai_ext.tomo.uniform_angles(...)`` without importing every domain up front
    if name in _SUBPACKAGES:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
