"""The PET system model ``y ~ Poisson(A x + b)``: resolution modelling, projection, attenuation, normalisation.

``A = diag(m) P G`` with ``G`` an image-space Gaussian PSF, ``P`` the Joseph parallel-beam projector of
``monai_ext.tomo`` (one direct plane at a time) and ``m = scale * attenuation_factors * normalisation`` a
per-bin multiplicative factor. The expected background ``b`` (randoms + scatter) is kept apart from ``A``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from monai.networks.layers.simplelayers import separable_filtering

from ..operators import Diagonal, LinearOperator, PerPlane
from ..operators.checks import check_finite
from ..tomo import JosephProjector, ParallelBeamGeometry, ParallelBeamProjector
from ..units import FWHM_PER_SIGMA
from .scanner import PETScanner

__all__ = ["GaussianPSF", "PETSystemModel", "FWHM_PER_SIGMA"]


class GaussianPSF(LinearOperator):
    """Separable image-space Gaussian blur with zero padding; self-adjoint.

    ``(G x)_i = sum_j g(i - j) x_j`` over the image (zero outside), with ``g`` a product of 1D kernels: the
    Gaussian of the given FWHM integrated over each pixel, truncated at 4 sigma and normalised to sum 1 in float64
    (MONAI's ``gaussian_1d`` works in float32), applied with MONAI's ``separable_filtering``. The kernel is symmetric
    and the padding is zero, so ``G^T = G`` exactly (``adjoint`` is ``forward``); mass is lost only across the border.

    Args:
        fwhm: FWHM in mm, one value or one per spatial axis (array order, e.g. ``(z, y, x)``); 0 leaves an
            axis unblurred.
        pixel_size: pixel size in mm, one value or one per spatial axis.
        spatial_dims: 2 for ``(B, C, H, W)`` images, 3 for ``(B, C, D, H, W)``.

    The operator works on any spatial shape (``in_shape`` is ``None``; pass ``shape=`` to ``norm()``).

    Raises:
        ValueError: a negative FWHM or a non-positive pixel size.

    Example:
        >>> psf = GaussianPSF(4.5, 2.0)
        >>> psf(torch.ones(1, 20, 64, 64)).shape
        torch.Size([1, 20, 64, 64])
    """

    shape_preserving = True

    def __init__(self, fwhm: float | Sequence[float], pixel_size: float | Sequence[float], spatial_dims: int = 2) -> None:
        super().__init__()
        self.fwhm = tuple(float(f) for f in np.broadcast_to(np.asarray(fwhm, dtype=float), (spatial_dims,)))
        self.pixel_size = tuple(float(d) for d in np.broadcast_to(np.asarray(pixel_size, dtype=float), (spatial_dims,)))
        if not all(f >= 0 for f in self.fwhm):
            raise ValueError(f"fwhm must be non-negative (mm), got {fwhm}.")
        if not all(d > 0 for d in self.pixel_size):
            raise ValueError(f"pixel_size must be positive (mm), got {pixel_size}.")
        self.spatial_dims = int(spatial_dims)
        kernels = []
        for f, d in zip(self.fwhm, self.pixel_size):
            sigma = f / FWHM_PER_SIGMA / d
            if sigma < 1e-3:  # narrower than a thousandth of a pixel: identity along this axis
                kernels.append(torch.ones(1, dtype=torch.float64))
            else:
                edges = (torch.arange(-math.ceil(4.0 * sigma), math.ceil(4.0 * sigma) + 2, dtype=torch.float64) - 0.5) / sigma
                k = torch.diff(torch.special.erf(edges / math.sqrt(2.0)))  # the Gaussian integrated over each pixel
                kernels.append(k / k.sum())
        self.kernels = kernels
        self.is_identity = all(k.numel() == 1 for k in kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``G x`` for ``x`` of shape ``(B, C, *spatial)``."""
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"x must have {self.spatial_dims} spatial dimensions (B, C, *spatial), got shape {tuple(x.shape)}.")
        if self.is_identity:
            return x
        return separable_filtering(x, [k.to(device=x.device, dtype=x.dtype) for k in self.kernels], mode="zeros")

    def adjoint(self, x: torch.Tensor) -> torch.Tensor:
        """``G^T x = G x`` (symmetric kernel, zero padding)."""
        return self.forward(x)

    def extra_repr(self) -> str:
        return f"fwhm={self.fwhm} mm, pixel_size={self.pixel_size} mm"


class PETSystemModel(LinearOperator):
    """Linear PET system model on batched images, with the expected background kept separate.

    .. math::

        \\bar y = A x + b, \\qquad A x = s \\cdot a \\cdot n \\cdot P\\,G\\,x, \\qquad
        a = \\exp\\left(-P \\mu\\right)

    - ``x``: activity concentration, e.g. kBq/mL, ``(B, C, ny, nx)`` (2D) or ``(B, C, n_planes, ny, nx)`` (a stack of
      direct planes); ``C`` is free, so the ``T`` frames of a dynamic exam go through in one call as ``(B, T, ...)``.
    - ``G``: image-space Gaussian PSF of FWHM ``psf_fwhm`` (mm).
    - ``P``: Joseph line integrals (mm) of each plane, ``monai_ext.tomo.ParallelBeamProjector``; ``P x`` is in
      ``kBq/mL x mm``.
    - ``a``: attenuation factors in ``(0, 1]`` from a mu-map in 1/mm projected with the same ``P``.
    - ``n``: detector normalisation (efficiency) factors, unitless.
    - ``s``: scale, counts per ``(kBq/mL x mm)``: scanner sensitivity times frame duration, a float or a tensor,
      e.g. ``(1, T, 1, 1)`` for one value per frame.
    - ``b``: expected background counts (randoms + scatter), not part of ``A``; used by ``expected_counts``.

    ``A`` is the composition ``Diagonal(m) @ P @ G`` of :mod:`monai_ext.operators` (``self.operator``), with the
    projector ``P`` injected (``projector=``, e.g. a ``SparseMatrixProjector``; by default a
    ``ParallelBeamProjector``) and applied plane by plane (``PerPlane``) for a stack of planes.

    ``a``, ``n``, ``s`` and ``b`` are buffers broadcast against ``(B, C, *sinogram_shape)`` (size 1 or the full size
    along each axis); they follow ``.to(device)`` and are cast to the input's device and dtype at each call.
    ``adjoint`` is the exact transpose of ``forward`` (``G`` is self-adjoint, ``P^T`` is exact, ``diag(m)`` is
    symmetric), and both are differentiable.

    Args:
        geometry: the ``ParallelBeamGeometry`` of one plane (``PETScanner.sinogram_geometry``).
        n_planes: ``None`` for 2D images; the number of direct planes for ``(B, C, n_planes, ny, nx)`` images.
        plane_spacing: plane distance in mm, needed for an axial PSF on a stack of planes.
        psf_fwhm: PSF FWHM in mm: one value (transaxial) or ``(axial, transaxial)`` for a stack of planes.
        mu_map: attenuation map in 1/mm, image-shaped with ``(B or 1, 1)`` leading axes; gives ``a``.
        attenuation_factors: ``a`` given directly (exclusive with ``mu_map``).
        normalisation: ``n``.
        scale: ``s``.
        background: ``b``.
        projector: the 2D projector ``P`` of ``geometry`` (a ``monai_ext.tomo.JosephProjector``: ray-driven or sparse
            matrix); default ``ParallelBeamProjector(geometry, backend)``.
        backend: backend of the default projector, see ``monai_ext.tomo.RayProjector``.

    Raises:
        ValueError: inputs of the wrong shape or with NaN/inf; negative factors or background; both ``mu_map`` and
            ``attenuation_factors``; an axial PSF without ``plane_spacing``; a projector of another geometry, or
            both ``projector`` and ``backend``.

    Example:
        >>> from monai_ext.pet import DEMO_SCANNER
        >>> geometry = DEMO_SCANNER.sinogram_geometry((32, 32), 8.0)
        >>> model = PETSystemModel(geometry, psf_fwhm=8.0, mu_map=torch.full((32, 32), 0.0096))
        >>> model(torch.ones(2, 20, 32, 32)).shape
        torch.Size([2, 20, 80, 77])
    """

    def __init__(
        self,
        geometry: ParallelBeamGeometry,
        *,
        n_planes: int | None = None,
        plane_spacing: float | None = None,
        psf_fwhm: float | tuple[float, float] = 0.0,
        mu_map: torch.Tensor | None = None,
        attenuation_factors: torch.Tensor | None = None,
        normalisation: torch.Tensor | None = None,
        scale: float | torch.Tensor = 1.0,
        background: torch.Tensor | None = None,
        projector: JosephProjector | None = None,
        backend: str = "auto",
    ) -> None:
        if not isinstance(geometry, ParallelBeamGeometry):
            raise TypeError(f"geometry must be a ParallelBeamGeometry, got {type(geometry).__name__}.")
        if n_planes is not None and int(n_planes) < 1:
            raise ValueError(f"n_planes must be a positive integer or None, got {n_planes}.")
        plane_in, plane_out = tuple(geometry.image_shape), tuple(geometry.sinogram_shape)
        planes = () if n_planes is None else (int(n_planes),)
        super().__init__((*planes, *plane_in), (*planes, *plane_out))
        if projector is None:
            projector = ParallelBeamProjector(geometry, backend=backend)
        elif backend != "auto":
            raise ValueError(f"give either projector or backend, not both (got backend={backend!r}).")
        self.geometry = geometry
        self.n_planes = None if n_planes is None else int(n_planes)
        self.plane_spacing = plane_spacing
        self.psf_fwhm = psf_fwhm
        self.psf = self._build_psf(psf_fwhm, plane_spacing)
        self.factors = Diagonal(self.multiplicative_factor)  # m = s a n, from the buffers at each call
        self.projector = projector  # builds self.operator (see __setattr__)
        self.register_buffer("attenuation_factors", None)
        self.register_buffer("normalisation", None)
        self.register_buffer("scale", None)
        self.register_buffer("background", None)
        if mu_map is not None and attenuation_factors is not None:
            raise ValueError("give either mu_map or attenuation_factors, not both.")
        if mu_map is not None:
            self.set_mu_map(mu_map)
        else:
            self.set_attenuation_factors(attenuation_factors)
        self.set_normalisation(normalisation)
        self.set_scale(scale)
        self.set_background(background)

    @classmethod
    def from_scanner(
        cls, scanner: PETScanner, image_shape: Sequence[int], pixel_size: float | Sequence[float], *, view_mashing: int = 1, **kwargs
    ) -> PETSystemModel:
        """Model of ``scanner`` for images of ``image_shape`` ``(ny, nx)`` or ``(n_planes, ny, nx)``.

        ``pixel_size`` is the transaxial ``(dy, dx)`` or one value; a stack of planes uses ``scanner.plane_spacing``
        and keyword arguments go to the constructor (``psf_fwhm`` defaults to ``scanner.resolution_fwhm``).
        """
        image_shape = tuple(int(n) for n in image_shape)
        if len(image_shape) not in (2, 3):
            raise ValueError(f"image_shape must be (ny, nx) or (n_planes, ny, nx), got {image_shape}.")
        geometry = scanner.sinogram_geometry(image_shape[-2:], pixel_size, view_mashing=view_mashing)
        if len(image_shape) == 3:
            kwargs.setdefault("n_planes", image_shape[0])
            kwargs.setdefault("plane_spacing", scanner.plane_spacing)
            kwargs.setdefault("psf_fwhm", (scanner.resolution_fwhm, scanner.resolution_fwhm))
        kwargs.setdefault("psf_fwhm", scanner.resolution_fwhm)
        return cls(geometry, **kwargs)

    def __setattr__(self, name: str, value) -> None:
        """Setting ``projector`` (at construction, or later to swap it) checks it and rebuilds ``operator``."""
        if name == "projector":
            self._check_projector(value)
            super().__setattr__(name, value)
            plane = value if self.n_planes is None else PerPlane(value, self.n_planes)
            super().__setattr__("operator", self.factors @ plane @ self.psf)
            return
        super().__setattr__(name, value)

    def _check_projector(self, projector) -> None:
        plane_in, plane_out = tuple(self.geometry.image_shape), tuple(self.geometry.sinogram_shape)
        if not isinstance(projector, LinearOperator) or (projector.in_shape, projector.out_shape) != (plane_in, plane_out):
            raise ValueError(
                f"projector must be a LinearOperator from {plane_in} images to {plane_out} sinograms (the geometry's), "
                f"got {type(projector).__name__} {getattr(projector, 'in_shape', None)} -> {getattr(projector, 'out_shape', None)}."
            )
        other = getattr(projector, "geometry", None)
        if other is not None and other != self.geometry:
            raise ValueError(f"the projector's geometry differs from the model's: {other} vs {self.geometry}.")

    # -- shapes --------------------------------------------------------------------------------------------
    @property
    def sinogram_shape(self) -> tuple[int, ...]:
        """``out_shape``, under the PET name."""
        return self.out_shape

    #: axis of the views in a sinogram ``(..., n_views, n_bins)`` (for ordered subsets)
    view_axis = -2

    @property
    def pixel_size(self) -> tuple[float, ...]:
        """Pixel size per spatial axis in mm (array order); a stack of planes uses ``plane_spacing`` (or 1)."""
        plane = tuple(self.geometry.pixel_size)
        return plane if self.n_planes is None else (float(self.plane_spacing or 1.0), *plane)

    def _build_psf(self, fwhm, plane_spacing) -> GaussianPSF:
        values = tuple(float(f) for f in np.atleast_1d(np.asarray(fwhm, dtype=float)))
        dy, dx = self.geometry.pixel_size
        if self.n_planes is None:
            if len(values) != 1:
                raise ValueError(f"psf_fwhm must be one value (transaxial FWHM, mm) for 2D images, got {fwhm}.")
            return GaussianPSF(values[0], (dy, dx), spatial_dims=2)
        axial, transaxial = values if len(values) == 2 else (0.0, values[0])
        if axial > 0 and plane_spacing is None:
            raise ValueError(f"an axial psf_fwhm ({axial} mm) needs plane_spacing (mm).")
        return GaussianPSF((axial, transaxial, transaxial), (plane_spacing or 1.0, dy, dx), spatial_dims=3)

    # -- factors -------------------------------------------------------------------------------------------
    def check_sinogram_factor(self, name: str, value, allow_scalar: bool = False) -> torch.Tensor | None:
        """``value`` as a detached tensor broadcastable to ``(B, C, *sinogram_shape)`` (a bare ``sinogram_shape``
        tensor gains two leading axes), checked finite and non-negative; ``None`` stays ``None``."""
        if value is None:
            return None
        if not isinstance(value, torch.Tensor):
            if not allow_scalar:
                raise TypeError(f"{name} must be a torch.Tensor or None, got {type(value).__name__}.")
            value = torch.tensor(float(value), dtype=torch.float64)
        value = value.detach()
        if value.ndim == 0:
            value = value.reshape((1,) * (2 + len(self.sinogram_shape)))
        elif tuple(value.shape) == self.sinogram_shape:
            value = value[None, None]
        if value.ndim != 2 + len(self.sinogram_shape) or any(
            v not in (1, s) for v, s in zip(value.shape[2:], self.sinogram_shape)
        ):
            raise ValueError(
                f"{name} must broadcast to (B, C, {', '.join(map(str, self.sinogram_shape))}) with size 1 or the full "
                f"size along each axis, got shape {tuple(value.shape)}."
            )
        check_finite(name, value)
        if (value < 0).any():
            raise ValueError(f"{name} must be non-negative, got a minimum of {float(value.min())}.")
        return value

    def set_mu_map(self, mu_map: torch.Tensor) -> None:
        """Attenuation factors ``exp(-P mu)`` of a mu-map in 1/mm (image-shaped, optional ``(B, 1)`` axes)."""
        if not isinstance(mu_map, torch.Tensor):
            raise TypeError(f"mu_map must be a torch.Tensor, got {type(mu_map).__name__}.")
        mu = mu_map.detach()
        if mu.ndim == len(self.image_shape):
            mu = mu[None, None]
        self.check_image("mu_map", mu)
        if mu.shape[1] != 1:
            raise ValueError(f"mu_map must have one channel (B, 1, ...), got shape {tuple(mu_map.shape)}.")
        if (mu < 0).any():
            raise ValueError(f"mu_map must be non-negative (1/mm), got a minimum of {float(mu.min())}.")
        with torch.no_grad():
            factors = torch.exp(-self.operator.outer.inner(mu.to(torch.float64)))  # P mu, plane by plane
        self.attenuation_factors = factors

    def set_attenuation_factors(self, factors: torch.Tensor | None) -> None:
        """Set ``a`` directly (``None`` for no attenuation)."""
        self.attenuation_factors = self.check_sinogram_factor("attenuation_factors", factors)

    def set_normalisation(self, normalisation: torch.Tensor | None) -> None:
        """Set ``n`` (``None`` for ones)."""
        self.normalisation = self.check_sinogram_factor("normalisation", normalisation)

    def set_scale(self, scale: float | torch.Tensor) -> None:
        """Set ``s``: a float or a tensor such as ``(1, T, 1, 1)`` (sensitivity x frame duration)."""
        self.scale = self.check_sinogram_factor("scale", scale, allow_scalar=True)

    def set_background(self, background: torch.Tensor | None) -> None:
        """Set the expected background ``b`` (counts; ``None`` for zero)."""
        self.background = self.check_sinogram_factor("background", background)

    def multiplicative_factor(self) -> torch.Tensor:
        """``m = s * a * n``, broadcastable to ``(B, C, *sinogram_shape)``."""
        m = self.scale
        for f in (self.attenuation_factors, self.normalisation):
            if f is not None:
                m = m * f
        return m

    # -- checks --------------------------------------------------------------------------------------------
    def _describe(self) -> str:
        return "this system model"

    def check_image(self, name: str, x: torch.Tensor) -> None:
        """Raise ``ValueError`` naming ``name`` unless ``x`` is a finite ``(B, C, *image_shape)`` tensor."""
        self.check_input(x, name)

    def check_sinogram(self, name: str, y: torch.Tensor) -> None:
        """Raise ``ValueError`` naming ``name`` unless ``y`` is a finite ``(B, C, *sinogram_shape)`` tensor."""
        self.check_output(y, name)

    def _factor_like(self, factor: torch.Tensor, t: torch.Tensor, name: str) -> torch.Tensor:
        for axis in (0, 1):
            if factor.shape[axis] not in (1, t.shape[axis]):
                raise ValueError(
                    f"the model's {name} has shape {tuple(factor.shape)}, which does not broadcast to the input's "
                    f"batch/channel axes {tuple(t.shape[:2])}."
                )
        return factor.to(device=t.device, dtype=t.dtype)

    def _check_factor_batch(self, t: torch.Tensor) -> None:
        """The factors' batch/channel sizes (of ``m = s a n``, without forming it) broadcast to ``t``'s."""
        shape = torch.broadcast_shapes(*(f.shape for f in (self.scale, self.attenuation_factors, self.normalisation) if f is not None))
        for axis in (0, 1):
            if shape[axis] not in (1, t.shape[axis]):
                raise ValueError(
                    f"the model's factors have shape {tuple(shape)}, which does not broadcast to the input's batch/channel "
                    f"axes {tuple(t.shape[:2])}."
                )

    # -- operators -----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``A x``: expected true counts of images ``x`` ``(B, C, *image_shape)``, shape ``(B, C, *sinogram_shape)``."""
        self.check_image("x", x)
        self._check_factor_batch(x)
        return self.operator(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``A^T y = G P^T (m y)``, the exact transpose of ``forward``."""
        self.check_sinogram("y", y)
        self._check_factor_batch(y)
        return self.operator.adjoint(y)

    def expected_counts(self, x: torch.Tensor, background: torch.Tensor | None = None) -> torch.Tensor:
        """``A x + b`` with ``b`` = ``background`` if given, else the model's ``background`` (zero when unset)."""
        ybar = self.forward(x)
        b = self.background if background is None else self.check_sinogram_factor("background", background)
        return ybar if b is None else ybar + self._factor_like(b, ybar, "background")

    def sensitivity(self) -> torch.Tensor:
        """The sensitivity image ``A^T 1``, shape ``(B_m, C_m, *image_shape)`` with ``B_m, C_m`` the factors' leading
        sizes (1 when the factors are shared), broadcastable against any batch of frames."""
        m = self.multiplicative_factor()
        return self.operator.adjoint(torch.ones((1, 1, *self.sinogram_shape), dtype=m.dtype, device=m.device))

    def view_subset(self, views: Sequence[int] | torch.Tensor) -> PETSystemModel:
        """The model restricted to some views (for ordered subsets): same PSF and factors, projector on the subset's
        angles, factors and background sliced along the view axis."""
        if not hasattr(self.projector, "view_subset"):
            raise TypeError(f"the model's projector ({type(self.projector).__name__}) has no view_subset: ordered subsets need one.")
        projector = self.projector.view_subset(views)
        idx = torch.as_tensor(views, dtype=torch.long).reshape(-1)
        sub = PETSystemModel(
            projector.geometry,
            n_planes=self.n_planes,
            plane_spacing=self.plane_spacing,
            psf_fwhm=self.psf_fwhm,
            attenuation_factors=take_views(self.attenuation_factors, idx),
            normalisation=take_views(self.normalisation, idx),
            scale=take_views(self.scale, idx),
            background=take_views(self.background, idx),
            projector=projector,
        )
        return sub.to(self.scale.device)

    def extra_repr(self) -> str:
        return f"image_shape={self.image_shape}, sinogram_shape={self.sinogram_shape}, psf_fwhm={self.psf_fwhm} mm"


def take_views(t: torch.Tensor | None, views: torch.Tensor, axis: int = -2) -> torch.Tensor | None:
    """``t`` restricted to ``views`` along its view axis ``axis`` (negative; second to last for sinograms) when that
    axis is full, else ``t`` itself (a factor shared by all views)."""
    if t is None or t.ndim < -axis or t.shape[axis] == 1:
        return t
    return t.index_select(axis, views.to(t.device))
