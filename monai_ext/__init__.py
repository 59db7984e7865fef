"""monai_ext: physics operators, solvers, networks and data for the monai-recon-bundles MONAI bundles.

Subpackages, grouped by domain:

- ``monai_ext.tomo``: CT/CBCT geometries, projectors (forward/adjoint), FBP and FDK.
- ``monai_ext.pet``: PET system model, Poisson likelihood, MLEM/OSEM, dynamic PET simulator.
- ``monai_ext.deq``: fixed-point solvers and Deep Equilibrium layers with implicit gradients.
- ``monai_ext.networks``: reconstruction networks.
- ``monai_ext.transforms``: MONAI transforms for measurement physics.
- ``monai_ext.metrics``: image quality metrics.
- ``monai_ext.phantoms``: analytic and random phantoms.
"""

__version__ = "0.1.0"
