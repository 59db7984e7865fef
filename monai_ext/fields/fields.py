"""Neural attenuation fields ``f(x, y, z) -> mu >= 0`` (1/mm) over the volume box of a cone-beam geometry.

- :class:`AttenuationField`: a per-scan field (NAF-style): encoding (multiresolution grid or Fourier features)
  followed by a small MLP and a softplus, ``mu(x) = s softplus(MLP(enc(x)))``.
- :class:`ModulatedAttenuationField`: a backbone shared across scans (CondCBNT / neural modulation fields style):
  the same encoder and MLP, with every hidden layer modulated by FiLM from a per-scan *modulation field*, a
  low-resolution grid of latent vectors interpolated at ``x``:
  ``h_{k+1} = relu((W_k h_k + b_k) (1 + gamma_k(z(x))) + beta_k(z(x)))``.
  :class:`ModulatedScan` binds the backbone to one scan's modulation grid, so it is queried like any field.
- :class:`VoxelField`: the trilinear interpolation of a voxel image with zero padding, i.e. exactly the function the
  Joseph projector integrates (used to check rendering against the projector).

Points are in millimetres, ordered ``(x, y, z)`` as in ``monai_ext.tomo.rays``; the box is centred on the rotation
axis with half-widths ``n d / 2`` per axis (see ``monai_ext.tomo.geometry``).

References:
    R. Zha, Y. Zhang, H. Li, "NAF: Neural attenuation fields for sparse-view CBCT reconstruction", MICCAI 2022.
    S. Papa, D. M. Knigge, R. Valperga, N. Moriakov, M. Kofler, J.-J. Sonke, E. Gavves, "Neural modulation
    fields for conditional cone beam neural tomography", arXiv:2307.08351 (CondCBNT).
    E. Perez et al., "FiLM: Visual reasoning with a general conditioning layer", AAAI 2018.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .encodings import make_encoding, sample_grid

__all__ = [
    "box_half_widths",
    "voxel_centres",
    "AttenuationField",
    "ModulatedAttenuationField",
    "ModulatedScan",
    "VoxelField",
    "sample_volume",
    "parameter_mebibytes",
]


def box_half_widths(image_shape: Sequence[int], pixel_size: Sequence[float] | float) -> tuple[float, float, float]:
    """Half-widths ``(hx, hy, hz)`` in mm of the box of a ``(nz, ny, nx)`` grid with voxel size ``(dz, dy, dx)``.

    Raises:
        ValueError: not three positive sizes and spacings.
    """
    shape = tuple(int(n) for n in image_shape)
    spacing = (float(pixel_size),) * 3 if isinstance(pixel_size, (int, float)) else tuple(float(d) for d in pixel_size)
    if len(shape) != 3 or len(spacing) != 3 or min(shape) < 1 or min(spacing) <= 0:
        raise ValueError(f"need a 3D shape and voxel size, both positive, got {image_shape} and {pixel_size}.")
    return tuple(0.5 * n * d for n, d in zip(shape[::-1], spacing[::-1]))


def voxel_centres(shape: Sequence[int], spacing: Sequence[float] | float, dtype=torch.float32, device=None) -> torch.Tensor:
    """Centres ``(nz, ny, nx, 3)`` (mm, ``(x, y, z)``) of a grid centred on the axis, as in ``monai_ext.tomo``."""
    shape = tuple(int(n) for n in shape)
    spacing = (float(spacing),) * 3 if isinstance(spacing, (int, float)) else tuple(float(d) for d in spacing)
    if len(shape) != 3 or len(spacing) != 3 or min(shape) < 1 or min(spacing) <= 0:
        raise ValueError(f"need a 3D shape and voxel size, both positive, got {shape} and {spacing}.")
    axes = [(torch.arange(n, dtype=dtype, device=device) - 0.5 * (n - 1)) * d for n, d in zip(shape, spacing)]
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([x, y, z], dim=-1)


class _BoxField(torch.nn.Module):
    """A field over a centred box; ``forward(points_mm (N, 3)) -> mu (N,)``."""

    def __init__(self, half_widths: Sequence[float]) -> None:
        super().__init__()
        half = torch.as_tensor([float(h) for h in half_widths], dtype=torch.float32)
        if half.shape != (3,) or not bool((half > 0).all()):
            raise ValueError(f"half_widths must be three positive lengths (mm), got {half_widths}.")
        self.register_buffer("half_widths", half)

    def normalise(self, points: torch.Tensor) -> torch.Tensor:
        """mm -> box coordinates in ``[-1, 1]`` (``grid_sample``'s ``align_corners=False`` convention)."""
        if points.ndim != 2 or points.shape[-1] != 3:
            raise ValueError(f"points must have shape (N, 3) in mm, got {tuple(points.shape)}.")
        return points / self.half_widths.to(points.dtype)

    def sample_volume(self, shape: Sequence[int], spacing: Sequence[float] | float, chunk: int = 2**16) -> torch.Tensor:
        """The field on a centred grid ``shape`` (``(nz, ny, nx)``) of voxel size ``spacing`` mm; ``(1, 1, *shape)``."""
        return sample_volume(self, shape, spacing, chunk)


class AttenuationField(_BoxField):
    """Per-scan neural attenuation field ``mu(x) = s softplus_b(MLP(enc(x / h)))`` (1/mm).

    Args:
        half_widths: box half-widths ``(hx, hy, hz)`` in mm (see :func:`box_half_widths`).
        encoding: ``"grid"`` (dense multiresolution grid) or ``"fourier"``.
        encoding_args: keyword arguments of the encoding (``MultiResolutionGrid`` / ``FourierFeatures``).
        hidden: MLP width.
        n_hidden: number of hidden layers.
        scale: attenuation scale ``s`` in 1/mm.
        beta: sharpness of the softplus ``softplus_b(r) = log(1 + exp(b r)) / b``: a large ``b`` lets the field
            reach (near) zero in air at a moderate pre-activation (``mu(x) = s softplus_b(MLP(enc(x)))``).
        seed: seed of the initial weights (fits are reproducible).

    Example:
        >>> field = AttenuationField((64.0, 64.0, 64.0), encoding_args={"finest_resolution": 16})
        >>> field.sample_volume((8, 8, 8), 16.0).shape
        torch.Size([1, 1, 8, 8, 8])
    """

    def __init__(
        self,
        half_widths: Sequence[float],
        encoding: str = "grid",
        encoding_args: dict | None = None,
        hidden: int = 64,
        n_hidden: int = 2,
        scale: float = 0.02,
        beta: float = 10.0,
        seed: int = 0,
    ) -> None:
        super().__init__(half_widths)
        if int(hidden) < 1 or int(n_hidden) < 1:
            raise ValueError(f"hidden and n_hidden must be at least 1, got {hidden} and {n_hidden}.")
        if not scale > 0:
            raise ValueError(f"scale must be positive (1/mm), got {scale}.")
        gen = torch.Generator().manual_seed(int(seed))
        args = dict(encoding_args or {})
        if encoding == "grid":
            args.setdefault("generator", gen)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.encoding = make_encoding(encoding, **args)
            widths = [self.encoding.out_features] + [int(hidden)] * int(n_hidden)
            layers: list[torch.nn.Module] = []
            for a, b in zip(widths[:-1], widths[1:]):
                layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
            self.mlp = torch.nn.Sequential(*layers, torch.nn.Linear(widths[-1], 1))
        self.scale, self.beta = float(scale), float(beta)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Attenuation ``(N,)`` (1/mm) at points ``(N, 3)`` (mm, ``(x, y, z)``)."""
        return self.scale * F.softplus(self.mlp(self.encoding(self.normalise(points)))[:, 0], beta=self.beta)


class ModulatedAttenuationField(_BoxField):
    """Backbone of a conditioned field: encoder + MLP whose hidden layers are FiLM-modulated by a latent field.

    The per-scan modulation is a grid ``(1, C, R, R, R)`` of latent vectors (a neural modulation field), interpolated
    trilinearly at each point; zero modulation gives the backbone's own field (the FiLM maps have zero bias).

    Args:
        half_widths: box half-widths in mm.
        latent_channels: ``C``.
        modulation_resolution: ``R``, cells per axis of a modulation grid.
        encoding, encoding_args, hidden, n_hidden, scale, beta, seed: as :class:`AttenuationField`.
    """

    def __init__(
        self,
        half_widths: Sequence[float],
        latent_channels: int = 8,
        modulation_resolution: int = 8,
        encoding: str = "grid",
        encoding_args: dict | None = None,
        hidden: int = 64,
        n_hidden: int = 2,
        scale: float = 0.02,
        beta: float = 10.0,
        seed: int = 0,
    ) -> None:
        super().__init__(half_widths)
        if int(latent_channels) < 1 or int(modulation_resolution) < 2:
            raise ValueError(f"need latent_channels >= 1 and modulation_resolution >= 2, got {latent_channels} and {modulation_resolution}.")
        if int(hidden) < 1 or int(n_hidden) < 1:
            raise ValueError(f"hidden and n_hidden must be at least 1, got {hidden} and {n_hidden}.")
        self.latent_channels, self.modulation_resolution = int(latent_channels), int(modulation_resolution)
        self.config = {
            "half_widths": [float(h) for h in half_widths],
            "latent_channels": self.latent_channels,
            "modulation_resolution": self.modulation_resolution,
            "encoding": encoding,
            "encoding_args": {k: v for k, v in (encoding_args or {}).items() if k != "generator"},
            "hidden": int(hidden),
            "n_hidden": int(n_hidden),
            "scale": float(scale),
            "beta": float(beta),
            "seed": int(seed),
        }  # the constructor's arguments, saved with trained weights
        gen = torch.Generator().manual_seed(int(seed))
        args = dict(encoding_args or {})
        if encoding == "grid":
            args.setdefault("generator", gen)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.encoding = make_encoding(encoding, **args)
            widths = [self.encoding.out_features] + [int(hidden)] * int(n_hidden)
            self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
            self.film = torch.nn.ModuleList(torch.nn.Linear(self.latent_channels, 2 * int(hidden)) for _ in range(int(n_hidden)))
            self.head = torch.nn.Linear(int(hidden), 1)
        for film in self.film:  # zero bias: a zero modulation is the plain backbone; random weights keep z's gradient alive
            torch.nn.init.zeros_(film.bias)
        self.scale, self.beta = float(scale), float(beta)

    def new_modulation(self, n_scans: int = 1) -> torch.Tensor:
        """Zero modulation grids ``(n_scans, C, R, R, R)`` (the backbone's own field), on the backbone's device."""
        r = self.modulation_resolution
        return torch.zeros((int(n_scans), self.latent_channels, r, r, r), device=self.half_widths.device)

    def forward(self, points: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
        """Attenuation ``(N,)`` at points ``(N, 3)`` (mm) for one scan's modulation grid ``(1, C, R, R, R)``."""
        expected = (1, self.latent_channels, *(self.modulation_resolution,) * 3)
        if tuple(modulation.shape) != expected:
            raise ValueError(f"modulation must have shape {expected}, got {tuple(modulation.shape)}.")
        x = self.normalise(points)
        latent = sample_grid(modulation, x)
        h = self.encoding(x)
        for layer, film in zip(self.layers, self.film):
            gamma, beta = film(latent).chunk(2, dim=-1)
            h = torch.relu(layer(h) * (1.0 + gamma) + beta)
        return self.scale * F.softplus(self.head(h)[:, 0], beta=self.beta)


class ModulatedScan(_BoxField):
    """One scan's field: a (shared) backbone and this scan's modulation grid (the only parameter of its own).

    Args:
        backbone: a :class:`ModulatedAttenuationField`.
        modulation: ``(1, C, R, R, R)`` starting modulation (default zeros).
    """

    def __init__(self, backbone: ModulatedAttenuationField, modulation: torch.Tensor | None = None) -> None:
        super().__init__(backbone.half_widths.tolist())
        self.backbone = backbone
        start = backbone.new_modulation(1) if modulation is None else modulation.detach().clone()
        self.modulation = torch.nn.Parameter(start)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.backbone(points, self.modulation)


class VoxelField(_BoxField):
    """The trilinear interpolation (zero outside) of a voxel image: the function Joseph's projector integrates.

    Args:
        volume: ``(nz, ny, nx)`` or ``(1, 1, nz, ny, nx)`` attenuation (a learnable parameter).
        pixel_size: voxel size (mm), scalar or ``(dz, dy, dx)``.
    """

    def __init__(self, volume: torch.Tensor, pixel_size: Sequence[float] | float) -> None:
        vol = volume.reshape(1, 1, *volume.shape[-3:])
        super().__init__(box_half_widths(vol.shape[-3:], pixel_size))
        self.volume = torch.nn.Parameter(vol.detach().clone())

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return sample_grid(self.volume, self.normalise(points), padding_mode="zeros")[:, 0]


def sample_volume(field, shape: Sequence[int], spacing: Sequence[float] | float, chunk: int = 2**16, device=None) -> torch.Tensor:
    """Evaluate ``field(points_mm)`` at the voxel centres of a centred grid; returns ``(1, 1, *shape)``.

    The grid may differ from the scan's (finer, coarser, a sub-box): the field is continuous.

    Args:
        field: module or callable mapping ``(N, 3)`` mm points to ``(N,)`` values.
        shape: ``(nz, ny, nx)``.
        spacing: voxel size in mm.
        chunk: points per call.
        device: where the points go when ``field`` is not a module with buffers (default CPU).
    """
    ref = next(iter(field.buffers()), None) if isinstance(field, torch.nn.Module) else None
    device = ref.device if ref is not None else device
    points = voxel_centres(shape, spacing, device=device).reshape(-1, 3)
    with torch.no_grad():
        values = torch.cat([field(part) for part in points.split(int(chunk))])
    return values.reshape(1, 1, *(int(n) for n in shape))


def parameter_mebibytes(*modules_or_tensors) -> float:
    """Memory (MiB) of the parameters of modules and of plain tensors, counted once each."""
    seen, total = set(), 0
    for item in modules_or_tensors:
        tensors = [item] if isinstance(item, torch.Tensor) else list(item.parameters())
        for t in tensors:
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total / 2**20
