"""Resampling between image grids that share their centre (the rotation axis): a user's grid and a network's
training grid. MONAI does the work (``GaussianSmooth`` against aliasing, then ``SpatialResample``)."""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import MapTransform

__all__ = ["resample_to_grid", "ResampleToGridd"]


def _centred_affine(shape: Sequence[int], spacing: Sequence[float]) -> torch.Tensor:
    """Voxel-to-mm affine (array axis order) of a grid centred on the origin."""
    n = len(shape)
    affine = torch.eye(n + 1, dtype=torch.float64)
    for axis, (count, size) in enumerate(zip(shape, spacing)):
        affine[axis, axis] = float(size)
        affine[axis, n] = -(int(count) - 1) / 2 * float(size)
    return affine


def resample_to_grid(image: torch.Tensor, spacing: Sequence[float], shape: Sequence[int], new_spacing: Sequence[float]) -> torch.Tensor:
    """``image`` (``(1, *grid)``, voxel size ``spacing`` mm) on the grid ``shape`` x ``new_spacing``, same centre.

    Values are interpolated (bilinear/trilinear) after a Gaussian low-pass along each axis that is coarsened
    (sigma ``(ratio - 1) / 2`` input voxels, as anti-aliasing resizers do); space outside the input is zero.

    Raises:
        ValueError: a grid whose dimension differs from the image's, or non-positive sizes.
    """
    from monai.data import MetaTensor
    from monai.transforms import GaussianSmooth, SpatialResample

    ndim = image.ndim - 1
    spacing, new_spacing = [float(s) for s in spacing], [float(s) for s in new_spacing]
    if image.shape[0] != 1 or len(spacing) != ndim or len(new_spacing) != ndim or len(shape) != ndim:
        raise ValueError(f"resample_to_grid: an image of shape {tuple(image.shape)} needs {ndim} spacings and a {ndim}D target grid.")
    if min(spacing + new_spacing) <= 0:
        raise ValueError(f"resample_to_grid: voxel sizes must be positive, got {spacing} and {new_spacing}.")
    data = image.detach().to(torch.float32)
    sigma = [max(0.0, (new / old - 1.0) / 2.0) for old, new in zip(spacing, new_spacing)]
    if max(sigma) > 0:
        data = GaussianSmooth(sigma=sigma)(data)
    data = data.as_tensor() if isinstance(data, MetaTensor) else data
    source = MetaTensor(data, affine=_centred_affine(image.shape[1:], spacing))
    out = SpatialResample(mode="bilinear", padding_mode="zeros", dtype=np.float64)(
        source, dst_affine=_centred_affine(shape, new_spacing), spatial_size=[int(n) for n in shape])
    return torch.as_tensor(out).as_subclass(torch.Tensor).to(image.dtype)


class ResampleToGridd(MapTransform):
    """Resample ``data[key]`` back to the user's grid when the case asks for it (``data[grid_key]``).

    A case that a network trained at one grid reconstructed after resampling (``tomography_cases(...,
    resample=True)``) carries ``grid_key`` = ``{"shape": [...], "spacing": [...]}`` (JSON) and the reconstruction
    geometry under ``geometry_key``; other cases pass unchanged.
    """

    def __init__(self, keys, grid_key: str = "resample_to", geometry_key: str = "geometry", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.grid_key, self.geometry_key = grid_key, geometry_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        target = d.get(self.grid_key)
        if not target:
            return d
        target = json.loads(target)
        spacing = json.loads(d[self.geometry_key])["pixel_size"]
        for key in self.key_iterator(d):
            d[key] = resample_to_grid(torch.as_tensor(d[key]), spacing, target["shape"], target["spacing"])
        return d
