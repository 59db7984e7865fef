"""Ray-driven (Joseph) projectors for parallel, fan and cone beam, as ``torch.nn.Module`` operators.

``forward(x)`` computes line integrals (mm x attenuation units: with ``x`` in 1/mm the result is unitless),
``adjoint(y)`` the exact transpose of the same discrete operator. Both are wired into autograd, so the gradient
of ``forward`` is ``adjoint`` and the gradient of ``adjoint`` is ``forward``.

Two backends compute the same operator: parallel numba kernels on CPU (``joseph_cpu.py``) and ``grid_sample``
on any device (used on CUDA, or on CPU when numba is missing or ``backend="torch"`` is asked for).

Memory: both backends work within ``memory_budget`` bytes beyond their inputs and outputs, whatever the scan's
size. The rays (and, on the ``grid_sample`` path, the sample coordinates) of a scan are kept for reuse only when
they fit in half the budget, as for the small operators that training applies thousands of times; otherwise they
are computed on the fly, chunk by chunk of views and rays, for every call. The numba cone-beam kernels compute
each ray from a few numbers per view, and the adjoint scatters into the output itself (one slab of z planes per
thread), so they hold neither a ray table nor a copy of the volume.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from ..operators import ExplicitAdjointOperator
from ..operators.checks import all_finite, check_finite, exporting
from ..deprecation import renamed_keyword
from .geometry import ConeBeamGeometry, FanBeamGeometry, ParallelBeamGeometry
from .joseph_cpu import HAS_NUMBA, cone_adjoint_cpu, cone_forward_cpu, cone_view_table, joseph_adjoint_cpu, joseph_forward_cpu
from .rays import geometry_rays, joseph_samples
from .streaming import slab_grid, slab_ranges, stream_cone
from .system_matrix import joseph_matrix

__all__ = [
    "JosephProjector",
    "RayProjector",
    "ParallelBeamProjector",
    "FanBeamProjector",
    "ConeBeamProjector",
    "projector_for",
    "check_finite",
    "all_finite",
    "DEFAULT_MEMORY_BUDGET",
]

_BACKENDS = ("auto", "numba", "torch")
DEFAULT_MEMORY_BUDGET = 256 * 2**20  # bytes of working memory beyond inputs and outputs
_RAY_BYTES = 2 * 3 * 8 * 3  # origins and directions in float64, with the temporaries of geometry_rays


class JosephProjector(ExplicitAdjointOperator):
    """Joseph's projector ``A`` of a geometry: what the ray-driven (:class:`RayProjector`) and the stored-matrix
    (:class:`~monai_ext.tomo.SparseMatrixProjector`) backends share.

    ``forward``: image ``(B, C, *image_shape)`` -> projections ``(B, C, n_angles, *detector_shape)``;
    ``adjoint``: the exact transpose. Subclasses implement ``_apply_forward``/``_apply_adjoint`` and
    :meth:`view_subset`.

    Args:
        geometry: a ``ParallelBeamGeometry``, ``FanBeamGeometry`` or ``ConeBeamGeometry``.
    """

    def __init__(self, geometry) -> None:
        if not isinstance(geometry, (ParallelBeamGeometry, FanBeamGeometry, ConeBeamGeometry)):
            raise TypeError(f"geometry must be a ParallelBeamGeometry, FanBeamGeometry or ConeBeamGeometry, got {type(geometry).__name__}.")
        projection = geometry.projection_shape if isinstance(geometry, ConeBeamGeometry) else geometry.sinogram_shape
        super().__init__(tuple(geometry.image_shape), tuple(projection))
        self.geometry = geometry

    @property
    def geom(self):
        """Deprecated name of ``geometry``, kept for one release (no warning: ``torch.jit.trace`` reads every
        attribute of a module it exports)."""
        return self.geometry

    def _describe(self) -> str:
        return "this geometry"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Line integrals ``A x`` of images ``x`` ``(B, C, *image_shape)``."""
        if exporting():  # TorchScript / torch.export: a Python autograd op cannot be saved, tensor ops can
            return self._traced_apply(x, adjoint=False)
        return super().forward(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Exact transpose ``A^T y`` of projections ``y`` ``(B, C, n_angles, *detector_shape)``."""
        if exporting():
            return self._traced_apply(y, adjoint=True)
        return super().adjoint(y)

    @property
    def view_axis(self) -> int:
        """Axis of the views in the projections, counted from the end (the angles come first)."""
        return -len(self.out_shape)

    def view_subset(self, views) -> JosephProjector:
        """The projector of the same kind restricted to the views ``views`` (indices into the angles), as ordered
        subsets use it."""
        raise NotImplementedError(f"{type(self).__name__} has no view_subset.")

    def _subset_geometry(self, views):
        idx = torch.as_tensor(views, dtype=torch.long).reshape(-1)
        if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= self.geometry.n_angles:
            raise ValueError(f"views must be non-empty indices below n_angles={self.geometry.n_angles}, got {views}.")
        return idx, dataclasses.replace(self.geometry, angles=tuple(self.geometry.angles[i] for i in idx.tolist()))

    def sensitivity(self, like: torch.Tensor | None = None) -> torch.Tensor:
        """``A^T 1``: the backprojection of ones, shape ``(1, 1, *image_shape)``."""
        ref = like if like is not None else torch.empty(0)
        ones = torch.ones((1, 1, *self.projection_shape), dtype=ref.dtype, device=ref.device)
        return self.adjoint(ones)

    def extra_repr(self) -> str:
        return f"geometry={type(self.geometry).__name__}, image_shape={self.image_shape}, projection_shape={self.projection_shape}"

    def _traced_apply(self, t: torch.Tensor, adjoint: bool) -> torch.Tensor:
        """``A t`` or ``A^T t`` as a gather and an ``index_add`` over the stored Joseph matrix (2D), so that
        ``torch.jit.trace`` records plain tensor ops with the matrix as constants (used by ``ckpt_export``). A
        cone-beam projector, whose matrix would not fit, records its ``grid_sample`` path instead."""
        if isinstance(self.geometry, ConeBeamGeometry) and hasattr(self, "_torch_forward"):
            b, c = t.shape[:2]
            if adjoint:
                return self._torch_adjoint(t.reshape(b * c, -1)).reshape(b, c, *self.image_shape)
            return self._torch_forward(t.reshape(b * c, *self.image_shape)).reshape(b, c, *self.projection_shape)
        if getattr(self, "_traced_matrix", None) is None:
            state = torch._C._get_tracing_state()
            torch._C._set_tracing_state(None)  # build the matrix untraced: the graph must only hold the products
            try:
                matrix = joseph_matrix(self.geometry)  # NotImplementedError for cone beam: no export of 3D networks
                self._traced_matrix = tuple(t.clone().contiguous() for t in (*matrix.indices(), matrix.values()))
            finally:
                torch._C._set_tracing_state(state)
        rows, cols, values = self._traced_matrix
        rows, cols, values = rows.to(t.device), cols.to(t.device), values.to(t.device, t.dtype)
        b, c = t.shape[:2]
        flat = t.reshape(b * c, -1)
        if adjoint:
            out = flat.new_zeros(b * c, math.prod(self.image_shape)).index_add_(1, cols, flat[:, rows] * values)
            return out.reshape(b, c, *self.image_shape)
        out = flat.new_zeros(b * c, math.prod(self.projection_shape)).index_add_(1, rows, flat[:, cols] * values)
        return out.reshape(b, c, *self.projection_shape)


class RayProjector(JosephProjector):
    """Joseph projector ``A`` of a geometry, computed ray by ray, on batched tensors.

    ``forward``: image ``(B, C, *image_shape)`` -> projections ``(B, C, n_angles, *detector_shape)``.
    ``adjoint``: projections -> image, the exact transpose (``<A x, y> == <x, A^T y>``).

    Args:
        geometry: a ``ParallelBeamGeometry``, ``FanBeamGeometry`` or ``ConeBeamGeometry``.
        backend: ``"auto"`` (numba on CPU when installed, ``grid_sample`` otherwise), ``"numba"`` or ``"torch"``.
        memory_budget: bytes of working memory a call may use beyond its input and output (default 256 MiB).
        stream_device: cone beam only: compute on this device (e.g. ``"cuda"``) for inputs held elsewhere (host
            memory), slab by slab of the volume (``streaming.py``), for scans larger than the device's memory.
            Results return on the input's device. ``None`` (default): compute where the input is.

    Raises:
        ValueError: unknown backend, a budget that is not positive; input of the wrong shape or with non-finite
            values.
    """

    @renamed_keyword("geom", "geometry")
    def __init__(self, geometry, backend: str = "auto", memory_budget: int = DEFAULT_MEMORY_BUDGET, stream_device=None) -> None:
        super().__init__(geometry)
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}.")
        if backend == "numba" and not HAS_NUMBA:
            raise ValueError("backend='numba' needs the numba package, which is not installed.")
        if not isinstance(memory_budget, int) or isinstance(memory_budget, bool) or memory_budget <= 0:
            raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}.")
        if stream_device is not None and not isinstance(geometry, ConeBeamGeometry):
            raise ValueError(f"stream_device is for cone-beam volumes; a {type(geometry).__name__} image is projected where it is.")
        self.backend = backend
        self.memory_budget = memory_budget
        self.stream_device = None if stream_device is None else torch.device(stream_device)
        self._rays_per_view = math.prod(self.projection_shape[1:])
        self._n_rays = self.geometry.n_angles * self._rays_per_view
        self._ray_cache: dict = {}
        self._grid_cache: dict = {}

    def view_subset(self, views) -> RayProjector:
        """This projector (same class, backend and budget) on the angles ``views``."""
        _, geometry = self._subset_geometry(views)
        subset = projector_for(geometry, self.backend, self.memory_budget)
        subset.stream_device = self.stream_device
        return subset

    def with_geometry(self, geometry) -> RayProjector:
        """This projector (same backend, budget and streaming device) for another ``geometry``."""
        other = projector_for(geometry, self.backend, self.memory_budget)
        other.stream_device = self.stream_device
        return other

    # -- backends ------------------------------------------------------------------------------------------
    def _use_numba(self, t: torch.Tensor) -> bool:
        return self.backend != "torch" and HAS_NUMBA and t.device.type == "cpu" and not self._streams(t)

    def _streams(self, t: torch.Tensor) -> bool:
        return self.stream_device is not None and t.device != self.stream_device

    def _view_chunks(self, bytes_per_ray: int):
        """Slices of views whose rays take at most a quarter of the budget at ``bytes_per_ray`` each."""
        per_chunk = max(1, (self.memory_budget // 4) // max(1, bytes_per_ray * self._rays_per_view))
        for start in range(0, self.geometry.n_angles, per_chunk):
            yield slice(start, min(self.geometry.n_angles, start + per_chunk))

    def _rays(self, views: slice, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Flattened float64 ``(origins, directions)`` of the rays of ``views``, on ``device``; the whole scan's
        are kept for the next call when they take at most half the budget."""
        whole = views == slice(0, self.geometry.n_angles)
        if whole and device in self._ray_cache:
            return self._ray_cache[device]
        origins, directions = geometry_rays(self.geometry, torch.float64, views)
        dim = origins.shape[-1]
        rays = (origins.reshape(-1, dim).to(device).contiguous(), directions.reshape(-1, dim).to(device).contiguous())
        if whole and self._n_rays * _RAY_BYTES <= self.memory_budget // 2:
            self._ray_cache = {device: rays}
        return rays

    def _ray_slices(self):
        """``(views, ray_slice)`` for chunks of views whose rays fit the budget, on the numba path."""
        for views in self._view_chunks(_RAY_BYTES):
            yield views, slice(views.start * self._rays_per_view, views.stop * self._rays_per_view)

    def _apply_forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        flat = x.detach().reshape(b * c, *self.image_shape)
        if self._streams(x):
            out = stream_cone(self, flat, adjoint=False, device=self.stream_device)
        elif self._use_numba(x) and isinstance(self.geometry, ConeBeamGeometry):  # rays computed inside the kernel
            out = torch.from_numpy(cone_forward_cpu(flat.contiguous().numpy(), self._cone_table(), self.geometry.pixel_size))
        elif self._use_numba(x):
            image = flat.contiguous().numpy()
            out = torch.empty(b * c, self._n_rays, dtype=x.dtype)
            out_np = out.numpy()
            for views, rays in self._ray_slices():
                origins, directions = self._rays(views, x.device)
                out_np[:, rays] = joseph_forward_cpu(image, origins.numpy(), directions.numpy(), self.geometry.pixel_size)
        else:
            out = self._torch_forward(flat)
        return out.reshape(b, c, *self.projection_shape)

    def _apply_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        b, c = y.shape[:2]
        flat = y.detach().reshape(b * c, -1)
        if self._streams(y):
            out = stream_cone(self, flat, adjoint=True, device=self.stream_device)
        elif self._use_numba(y) and isinstance(self.geometry, ConeBeamGeometry):
            out = torch.from_numpy(cone_adjoint_cpu(flat.contiguous().numpy(), self._cone_table(), self.image_shape, self.geometry.pixel_size))
        elif self._use_numba(y):
            proj = flat.contiguous().numpy()
            out = torch.zeros(b * c, *self.image_shape, dtype=y.dtype)
            for views, rays in self._ray_slices():
                origins, directions = self._rays(views, y.device)
                joseph_adjoint_cpu(
                    np.ascontiguousarray(proj[:, rays]), origins.numpy(), directions.numpy(), self.image_shape,
                    self.geometry.pixel_size, out=out.numpy(),
                )
        else:
            out = self._torch_adjoint(flat)
        return out.reshape(b, c, *self.image_shape)

    def _cone_table(self):
        """Per-view source, panel centre and column axis for the numba cone-beam kernels (a few numbers a view)."""
        if getattr(self, "_cone_views", None) is None:
            self._cone_views = cone_view_table(self.geometry)
        return self._cone_views

    def _sample_bytes(self, n_channels: int, dtype: torch.dtype) -> int:
        """Working bytes per Joseph sample on the ``grid_sample`` path: float64 plane positions, ray parameters
        and points while the coordinates are built, the coordinates in ``dtype``, the sampled values (forward)
        or their gradient (adjoint) for every channel, and the sum's temporary."""
        dim = len(self.image_shape)
        item = torch.finfo(dtype).bits // 8
        return 8 * (3 + 2 * dim) + item * (3 * dim + 2 + 2 * n_channels)  # + the adjoint's slab coordinates

    def _chunks(self, device: torch.device, dtype: torch.dtype, n_channels: int):
        """Yield ``(ray_slice, grid, weights)`` for the torch path, within the memory budget.

        When the coordinates of every sample take at most half the budget they are computed once and kept (per
        device and dtype); otherwise they are computed chunk by chunk, for each call, from the rays of chunks of
        views.
        """
        key = (device, dtype)
        if key in self._grid_cache:
            yield from self._grid_cache[key]
            return
        n_samples, dim = max(self.image_shape), len(self.image_shape)
        item = torch.finfo(dtype).bits // 8
        keep = self._n_rays * n_samples * dim * item <= self.memory_budget // 2
        step = max(1, (self.memory_budget // 2) // (n_samples * self._sample_bytes(n_channels, dtype)))
        kept = []
        for views in self._view_chunks(_RAY_BYTES):
            origins, directions = self._rays(views, device)
            first = views.start * self._rays_per_view
            for start in range(0, origins.shape[0], step):
                sl = slice(start, min(origins.shape[0], start + step))
                grid, weights = joseph_samples(origins[sl], directions[sl], self.image_shape, self.geometry.pixel_size)
                chunk = (slice(first + sl.start, first + sl.stop), grid.to(dtype=dtype), weights.to(dtype=dtype))
                del grid, weights
                if keep:
                    kept.append(chunk)
                yield chunk
        if keep:
            self._grid_cache = {key: kept}  # one device/dtype only

    def _grid_view(self, grid: torch.Tensor) -> torch.Tensor:
        # grid_sample wants (N, H_out, W_out, 2) in 2D and (N, D_out, H_out, W_out, 3) in 3D
        return grid[None] if grid.shape[-1] == 2 else grid[None, None]

    def _torch_forward(self, flat: torch.Tensor) -> torch.Tensor:
        image = flat[None]  # (1, BC, *image_shape): channels share the rays
        out = flat.new_zeros(flat.shape[0], self._n_rays)
        for sl, grid, weights in self._chunks(flat.device, flat.dtype, flat.shape[0]):
            samples = F.grid_sample(image, self._grid_view(grid), mode="bilinear", padding_mode="zeros", align_corners=False)
            out[:, sl] = samples.reshape(flat.shape[0], grid.shape[0], -1).sum(-1) * weights
            del samples
        return out

    def _slabs(self, n_channels: int, dtype: torch.dtype) -> list[tuple[int, int]]:
        """z ranges ``[z0, z1)`` of the 3D adjoint's slabs: ``grid_sample``'s backward returns a gradient of its
        whole input, so the volume is backprojected slab by slab when a copy of it would take more than a
        quarter of the budget (one slab for the small volumes of training)."""
        if len(self.image_shape) != 3:
            return [(0, self.image_shape[0])]
        plane = n_channels * math.prod(self.image_shape[1:]) * (torch.finfo(dtype).bits // 8)
        return slab_ranges(self.image_shape[0], plane, self.memory_budget // 4)

    def _torch_adjoint(self, flat: torch.Tensor) -> torch.Tensor:
        n_ch = flat.shape[0]
        image = flat.new_zeros(1, n_ch, *self.image_shape)
        backward = torch.ops.aten.grid_sampler_2d_backward if len(self.image_shape) == 2 else torch.ops.aten.grid_sampler_3d_backward
        slabs = self._slabs(n_ch, flat.dtype)
        nz = self.image_shape[0]
        for sl, grid, weights in self._chunks(flat.device, flat.dtype, n_ch):
            g = self._grid_view(grid)
            grad_out = (flat[:, sl] * weights)[..., None].expand(n_ch, grid.shape[0], grid.shape[1])
            grad_out = grad_out.reshape(1, n_ch, *g.shape[1:-1]).contiguous()
            if len(slabs) == 1:
                grad_in, _ = backward(grad_out, image, g, 0, 0, False, [True, False])
                image += grad_in
                del grad_in, grad_out
                continue
            for z0, z1 in slabs:  # slab by slab: each sample counted by one slab (streaming.slab_grid)
                top = min(nz, z1 + 1)
                local = slab_grid(g, nz, z0, z1)
                grad_in, _ = backward(grad_out, image[:, :, z0:top], local, 0, 0, False, [True, False])
                image[:, :, z0:top] += grad_in
                del grad_in, local
            del grad_out
        return image[0]


class ParallelBeamProjector(RayProjector):
    """2D parallel-beam projector: ``(B, C, ny, nx)`` -> ``(B, C, n_angles, n_det)``.

    ``(A x)(theta, u) = integral of x along the line {u e_u(theta) + t e_d(theta)}`` (see ``geometry.py``),
    discretised by Joseph's method.

    Example:
        >>> from monai_ext.tomo import ParallelBeamGeometry, uniform_angles
        >>> op = ParallelBeamProjector(ParallelBeamGeometry((64, 64), 1.0, uniform_angles(90), n_det=95))
        >>> op(torch.ones(1, 1, 64, 64)).shape
        torch.Size([1, 1, 90, 95])
    """

    @renamed_keyword("geom", "geometry")
    def __init__(self, geometry: ParallelBeamGeometry, backend: str = "auto", memory_budget: int = DEFAULT_MEMORY_BUDGET) -> None:
        if not isinstance(geometry, ParallelBeamGeometry):
            raise TypeError(f"geometry must be a ParallelBeamGeometry, got {type(geometry).__name__}.")
        super().__init__(geometry, backend, memory_budget)


class FanBeamProjector(RayProjector):
    """2D fan-beam projector with a flat detector: ``(B, C, ny, nx)`` -> ``(B, C, n_angles, n_det)``."""

    @renamed_keyword("geom", "geometry")
    def __init__(self, geometry: FanBeamGeometry, backend: str = "auto", memory_budget: int = DEFAULT_MEMORY_BUDGET) -> None:
        if not isinstance(geometry, FanBeamGeometry):
            raise TypeError(f"geometry must be a FanBeamGeometry, got {type(geometry).__name__}.")
        super().__init__(geometry, backend, memory_budget)


class ConeBeamProjector(RayProjector):
    """3D circular cone-beam projector with a flat panel: ``(B, C, nz, ny, nx)`` -> ``(B, C, n_angles, rows, cols)``."""

    @renamed_keyword("geom", "geometry")
    def __init__(self, geometry: ConeBeamGeometry, backend: str = "auto", memory_budget: int = DEFAULT_MEMORY_BUDGET, stream_device=None) -> None:
        if not isinstance(geometry, ConeBeamGeometry):
            raise TypeError(f"geometry must be a ConeBeamGeometry, got {type(geometry).__name__}.")
        super().__init__(geometry, backend, memory_budget, stream_device)


@renamed_keyword("geom", "geometry")
def projector_for(geometry, backend: str = "auto", memory_budget: int = DEFAULT_MEMORY_BUDGET) -> RayProjector:
    """The projector class that matches ``geometry``."""
    for cls, kind in ((ParallelBeamProjector, ParallelBeamGeometry), (FanBeamProjector, FanBeamGeometry), (ConeBeamProjector, ConeBeamGeometry)):
        if isinstance(geometry, kind):
            return cls(geometry, backend, memory_budget)
    raise TypeError(f"no projector for geometry type {type(geometry).__name__}.")


