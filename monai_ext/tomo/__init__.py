"""CT/CBCT geometries, Joseph projectors (forward and exact adjoint; ray-driven or as a stored sparse matrix), FBP and FDK."""

from .adaptation import describe_geometry, describe_grid, geometry_for_grid, same_geometry
from .analytic import FBP, FILTERS, fbp, fdk, filter_projections, parker_weights, ramp_filter
from .geometry import ConeBeamGeometry, FanBeamGeometry, ParallelBeamGeometry, short_scan_angles, uniform_angles
from .projectors import ConeBeamProjector, FanBeamProjector, JosephProjector, ParallelBeamProjector, RayProjector, projector_for
from .sparse_projector import SparseMatrixProjector
from .system_matrix import joseph_matrix

__all__ = [
    "FBP",
    "FILTERS",
    "fbp",
    "fdk",
    "filter_projections",
    "parker_weights",
    "ramp_filter",
    "ParallelBeamGeometry",
    "FanBeamGeometry",
    "ConeBeamGeometry",
    "uniform_angles",
    "short_scan_angles",
    "JosephProjector",
    "RayProjector",
    "ParallelBeamProjector",
    "FanBeamProjector",
    "ConeBeamProjector",
    "projector_for",
    "SparseMatrixProjector",
    "joseph_matrix",
    "geometry_for_grid",
    "same_geometry",
    "describe_geometry",
    "describe_grid",
]
