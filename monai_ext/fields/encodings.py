"""Positional encodings of 3D points for neural fields: a dense multiresolution feature grid and Fourier features.

Points are given in normalised box coordinates ``(x, y, z)`` in ``[-1, 1]`` (the convention of ``grid_sample`` with
``align_corners=False``: ``-1`` and ``1`` are the outer faces of the volume box, so a level of resolution ``n``
has its cell centres where an ``n``-voxel grid of the box has its voxel centres).

References:
    T. Mueller, A. Evans, C. Schied, A. Keller, "Instant neural graphics primitives with a multiresolution hash
    encoding", ACM TOG 41(4), 2022 (multiresolution grids; a dense grid is the hash grid without collisions).
    M. Tancik et al., "Fourier features let networks learn high frequency functions in low dimensional domains",
    NeurIPS 2020.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["MultiResolutionGrid", "FourierFeatures", "sample_grid", "level_resolutions", "make_encoding"]


def level_resolutions(n_levels: int, base_resolution: int, finest_resolution: int) -> tuple[int, ...]:
    """Resolutions growing geometrically from ``base_resolution`` to ``finest_resolution`` (Mueller et al. eq. 2-3).

    Raises:
        ValueError: ``n_levels`` < 1 or resolutions not ``2 <= base <= finest``.
    """
    if int(n_levels) < 1:
        raise ValueError(f"n_levels must be at least 1, got {n_levels}.")
    if not 2 <= int(base_resolution) <= int(finest_resolution):
        raise ValueError(f"need 2 <= base_resolution <= finest_resolution, got {base_resolution} and {finest_resolution}.")
    if n_levels == 1:
        return (int(finest_resolution),)
    growth = (finest_resolution / base_resolution) ** (1.0 / (n_levels - 1))
    return tuple(int(round(base_resolution * growth**level)) for level in range(n_levels))


def sample_grid(grid: torch.Tensor, points: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Trilinear interpolation of a feature grid at points.

    Args:
        grid: ``(B, C, D, H, W)`` features (array order ``z, y, x``).
        points: ``(B, N, 3)`` or, with ``B == 1``, ``(N, 3)`` normalised ``(x, y, z)`` coordinates.
        padding_mode: ``grid_sample`` padding (``"border"``: constant extension; ``"zeros"``: zero outside,
            Joseph's convention for voxel images).

    Returns:
        ``(B, N, C)`` (or ``(N, C)`` for ``(N, 3)`` points).
    """
    flat = points.ndim == 2
    pts = points[None] if flat else points
    out = F.grid_sample(grid, pts[:, None, None].to(grid.dtype), mode="bilinear", padding_mode=padding_mode, align_corners=False)
    out = out[:, :, 0, 0].transpose(1, 2)  # (B, N, C)
    return out[0] if flat else out


class MultiResolutionGrid(torch.nn.Module):
    """Dense multiresolution feature grid: ``L`` cubic grids of ``F`` features, trilinearly interpolated, concatenated.

    Args:
        n_levels: number of levels ``L``.
        features_per_level: features ``F`` per level.
        base_resolution: cells per axis of the coarsest level.
        finest_resolution: cells per axis of the finest level (match the voxel grid to resolve voxel detail).
        init_scale: features start uniform in ``[-init_scale, init_scale]`` (Mueller et al.: ``1e-4``).
        generator: random generator for the initial features.

    Example:
        >>> enc = MultiResolutionGrid(4, 2, 4, 32)
        >>> enc(torch.zeros(10, 3)).shape
        torch.Size([10, 8])
    """

    def __init__(
        self,
        n_levels: int = 4,
        features_per_level: int = 4,
        base_resolution: int = 4,
        finest_resolution: int = 32,
        init_scale: float = 1e-4,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if int(features_per_level) < 1:
            raise ValueError(f"features_per_level must be at least 1, got {features_per_level}.")
        self.resolutions = level_resolutions(n_levels, base_resolution, finest_resolution)
        self.levels = torch.nn.ParameterList(
            torch.nn.Parameter((torch.rand((1, int(features_per_level), r, r, r), generator=generator) * 2 - 1) * init_scale)
            for r in self.resolutions
        )
        self.out_features = len(self.resolutions) * int(features_per_level)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Features ``(N, L F)`` of points ``(N, 3)`` in ``[-1, 1]``."""
        return torch.cat([sample_grid(level, points) for level in self.levels], dim=-1)

    def extra_repr(self) -> str:
        return f"resolutions={self.resolutions}, out_features={self.out_features}"


class FourierFeatures(torch.nn.Module):
    """Axis-aligned Fourier features ``[x, sin(2^k pi x), cos(2^k pi x)]_{k < K}`` (NeRF positional encoding).

    Args:
        n_frequencies: number of octaves ``K`` (the finest period is ``2^{2-K}`` box half-widths).

    Example:
        >>> FourierFeatures(6)(torch.zeros(5, 3)).shape
        torch.Size([5, 39])
    """

    def __init__(self, n_frequencies: int = 6) -> None:
        super().__init__()
        if int(n_frequencies) < 1:
            raise ValueError(f"n_frequencies must be at least 1, got {n_frequencies}.")
        self.register_buffer("frequencies", math.pi * 2.0 ** torch.arange(int(n_frequencies), dtype=torch.float32), persistent=False)
        self.out_features = 3 + 6 * int(n_frequencies)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Features ``(N, 3 + 6 K)`` of points ``(N, 3)``."""
        angles = (points[..., None] * self.frequencies.to(points.dtype)).flatten(-2)
        return torch.cat([points, torch.sin(angles), torch.cos(angles)], dim=-1)


def make_encoding(kind: str, **kwargs) -> torch.nn.Module:
    """``"grid"`` -> :class:`MultiResolutionGrid`, ``"fourier"`` -> :class:`FourierFeatures` (kwargs passed on)."""
    if kind == "grid":
        return MultiResolutionGrid(**kwargs)
    if kind == "fourier":
        return FourierFeatures(**kwargs)
    raise ValueError(f"encoding must be 'grid' or 'fourier', got {kind!r}.")

