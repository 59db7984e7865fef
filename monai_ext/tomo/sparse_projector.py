"""Joseph's projector stored as an explicit sparse matrix, for small 2D problems solved many times over.

The matrix holds exactly the operator of :class:`~monai_ext.tomo.RayProjector` (Joseph's sampling of ``rays.py``):
ray ``r`` is sampled once per image plane along its driving axis, each sample splits between the two nearest pixels
of that plane by linear interpolation (zero outside the image), and the row is scaled by the ray length per plane,

.. math::

    A_{r, j} = w_r \\sum_{k} \\big[(1 - f_{rk})\\,\\delta_{j, p_{rk}} + f_{rk}\\,\\delta_{j, p_{rk} + 1}\\big].

``forward`` is one CSR sparse-dense product and ``adjoint`` one product with the stored transpose, so the adjoint
is exact. The product runs in a parallel numba kernel on CPU (about twice as fast as ``torch.sparse`` there) and in
``torch.sparse`` on other devices. For a 64 x 64 image and ~13 000 rays (Biograph sinogram, 4 views mashed) a
forward and adjoint pair of 160 images takes ~0.07 s in float32 on 2 CPU cores against ~4 s for the ray-driven
kernels, which matters when the same small operator is applied thousands of times (hyperparameter learning with
a fixed-point solver in the loop); it stores ``~2 n_samples`` entries per ray (13 MB at 64 x 64 in float64).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .geometry import ConeBeamGeometry
from .joseph_cpu import HAS_NUMBA
from .projectors import RayProjector
from .rays import geometry_rays, joseph_samples

__all__ = ["SparseMatrixProjector", "joseph_matrix", "csr_matmul"]

if HAS_NUMBA:
    from numba import njit, prange

    @njit(parallel=True, cache=True, fastmath=True, boundscheck=False)
    def _csr_matmul_kernel(indptr, indices, data, x, out):
        """``out = A x`` for CSR ``A`` ``(m, n)`` and row-major ``x`` ``(n, k)``; one output row per task."""
        m, k = out.shape
        for i in prange(m):
            row = out[i]
            row[:] = 0.0
            for p in range(indptr[i], indptr[i + 1]):
                v = data[p]
                xj = x[indices[p]]
                for c in range(k):
                    row[c] += v * xj[c]


def csr_matmul(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``matrix @ x`` for a sparse CSR ``matrix`` ``(m, n)`` and a dense ``x`` ``(n, k)`` of the same dtype and device.

    On CPU with numba the product runs in a parallel kernel; elsewhere it is ``torch.sparse``'s.
    """
    if HAS_NUMBA and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        xs = np.ascontiguousarray(x.numpy())
        out = np.empty((matrix.shape[0], xs.shape[1]), dtype=xs.dtype)
        _csr_matmul_kernel(matrix.crow_indices().numpy(), matrix.col_indices().numpy(), matrix.values().numpy(), xs, out)
        return torch.from_numpy(out)
    return matrix @ x


def joseph_matrix(geom, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The Joseph system matrix of a 2D geometry as a sparse COO tensor ``(n_rays, n_pixels)``, coalesced.

    Rows follow the projection layout ``(n_angles, n_det)`` flattened; columns the image ``(ny, nx)`` flattened.

    Args:
        geom: a 2D ``ParallelBeamGeometry`` or ``FanBeamGeometry``.
        dtype: dtype of the entries.

    Raises:
        NotImplementedError: for a 3D (cone-beam) geometry.

    Example:
        >>> from monai_ext.tomo import ParallelBeamGeometry, uniform_angles
        >>> geom = ParallelBeamGeometry((16, 16), 1.0, uniform_angles(8), n_det=23)
        >>> joseph_matrix(geom).shape
        torch.Size([184, 256])
    """
    if isinstance(geom, ConeBeamGeometry) or len(geom.image_shape) != 2:
        raise NotImplementedError(f"joseph_matrix supports 2D geometries only, got {type(geom).__name__}.")
    ny, nx = (int(n) for n in geom.image_shape)
    origins, directions = geometry_rays(geom, torch.float64)
    origins, directions = origins.reshape(-1, 2), directions.reshape(-1, 2)
    grid, weights = joseph_samples(origins, directions, (ny, nx), tuple(geom.pixel_size))
    # grid_sample(align_corners=False) coordinates -> continuous pixel indices (column, row)
    col = ((grid[..., 0] + 1.0) * nx - 1.0) / 2.0
    row = ((grid[..., 1] + 1.0) * ny - 1.0) / 2.0
    c0, r0 = torch.floor(col), torch.floor(row)
    fc, fr = col - c0, row - r0
    n_rays, n_samples = grid.shape[:2]
    ray = torch.arange(n_rays)[:, None].expand(n_rays, n_samples)
    rows, cols, values = [], [], []
    for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        r, c = r0 + dr, c0 + dc
        keep = (r >= 0) & (r < ny) & (c >= 0) & (c < nx) & (w > 1e-12)
        rows.append(ray[keep])
        cols.append((r[keep] * nx + c[keep]).long())
        values.append((w * weights[:, None])[keep])
    with warnings.catch_warnings():  # torch notes that sparse invariant checks are off by default
        warnings.simplefilter("ignore", UserWarning)
        matrix = torch.sparse_coo_tensor(
            torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(values).to(dtype), (n_rays, ny * nx)
        )
        return matrix.coalesce()


class SparseMatrixProjector(RayProjector):
    """A 2D Joseph projector applied as a stored sparse matrix (CSR), same operator as :class:`RayProjector`.

    Drop-in for ``ParallelBeamProjector`` / ``FanBeamProjector`` (same ``forward``, ``adjoint``, shapes and autograd),
    e.g. ``model.projector = SparseMatrixProjector(model.geometry)`` in a ``monai_ext.pet.PETSystemModel``. The matrix
    is built once in float64 on the CPU and cached per device and dtype on first use.

    Args:
        geom: a 2D ``ParallelBeamGeometry`` or ``FanBeamGeometry``.

    Raises:
        NotImplementedError: for a cone-beam geometry.

    Example:
        >>> from monai_ext.tomo import ParallelBeamGeometry, uniform_angles
        >>> op = SparseMatrixProjector(ParallelBeamGeometry((64, 64), 1.0, uniform_angles(90), n_det=95))
        >>> op(torch.ones(1, 1, 64, 64)).shape
        torch.Size([1, 1, 90, 95])
    """

    def __init__(self, geom) -> None:
        super().__init__(geom, backend="torch")
        self.backend = "sparse_matrix"
        coo = joseph_matrix(geom)
        with warnings.catch_warnings():  # torch notes that sparse CSR support is in beta
            warnings.simplefilter("ignore", UserWarning)
            self._matrices = {(torch.device("cpu"), torch.float64): (coo.to_sparse_csr(), coo.t().coalesce().to_sparse_csr())}

    @property
    def nnz(self) -> int:
        """Stored entries of the matrix."""
        return int(self._matrices[(torch.device("cpu"), torch.float64)][0].values().numel())

    def _matrix(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (torch.device(device), dtype)
        if key not in self._matrices:
            a, at = self._matrices[(torch.device("cpu"), torch.float64)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                self._matrices[key] = (a.to(dtype=dtype).to(device), at.to(dtype=dtype).to(device))
        return self._matrices[key]

    def _apply_forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        a, _ = self._matrix(x.device, x.dtype)
        out = csr_matmul(a, x.detach().reshape(b * c, -1).t()).t()
        return out.reshape(b, c, *self.projection_shape)

    def _apply_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        b, c = y.shape[:2]
        _, at = self._matrix(y.device, y.dtype)
        out = csr_matmul(at, y.detach().reshape(b * c, -1).t()).t()
        return out.reshape(b, c, *self.image_shape)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", nnz={self.nnz}"
