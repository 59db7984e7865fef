"""monai_ext: physics operators, solvers, networks and data for the monai-recon-bundles MONAI bundles.

Subpackages, grouped by domain:

- ``monai_ext.operators``: the ``LinearOperator`` base, composition, diagonal, stacking, finite differences.
- ``monai_ext.tomo``: CT/CBCT geometries, projectors (forward/adjoint), FBP and FDK.
- ``monai_ext.pet``: PET physics: system model, Poisson likelihood, MLEM/OSEM, kinetics, dynamic PET simulator.
- ``monai_ext.dynamic_pet``: dynamic PET reconstruction with DEQ-learned regularisation weights.
- ``monai_ext.deconvolution``: neural blind deconvolution with 2x supersampling (PSMA PET).
- ``monai_ext.deq``: fixed-point solvers and Deep Equilibrium layers with implicit gradients.
- ``monai_ext.solvers``: variational solvers (Tikhonov CG, TV PDHG) for any linear operator.
- ``monai_ext.networks``: reconstruction networks (post-processing, MMSE + CNN, unrolled, Learned Primal-Dual).
- ``monai_ext.fields``: neural attenuation fields for CBCT (encodings, ray rendering, per-scan and conditioned fits).
- ``monai_ext.data``: seeded in-memory data sets (random ellipses, real CT slices, CBCT thoraxes) and their scans.
- ``monai_ext.transforms``: MONAI transforms for measurement physics.
- ``monai_ext.metrics``: image quality metrics.
- ``monai_ext.phantoms``: analytic and random phantoms.
"""

__version__ = "0.7.0"

import importlib as _importlib

_SUBPACKAGES = (
    "data", "deconvolution", "deprecation", "deq", "dynamic_pet", "fields", "flags", "io", "metrics", "networks", "operators", "pet",
    "phantoms", "solvers", "tomo", "transforms", "units", "workflows",
)


def __getattr__(name: str):
    # subpackages load on first use, so that bundle configs can write ``$import monai_ext`` and then
    # ``monai_ext.tomo.uniform_angles(...)`` without importing every domain up front
    if name in _SUBPACKAGES:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
