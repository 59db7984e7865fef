"""Dictionary transforms that turn a training case (files, or tensors of the built-in phantoms) into a network's
input and target: read, simulate the noise-free scan once (deterministic, so MONAI's ``CacheDataset`` keeps it),
then add transmission noise (fresh per epoch for training, seeded per case for validation).

A case whose ``projections`` are noise-free line integrals (simulated) carries ``noise_free: True``; only those
get noise. Measured projections, projections already noisy and unmarked cases pass unchanged.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.transforms import MapTransform, RandomizableTransform, Transform

from monai_ext.tomo.projectors import projector_for

from .transmission import BeerLambertCounts, NegLogTransmission

__all__ = ["LoadTrainingCased", "SimulateLineIntegralsd", "TransmissionNoised", "SeededTransmissionNoised"]


class LoadTrainingCased(Transform):
    """Read the files a training case names (``monai_ext.io.training_set`` items): ``reference`` (NIfTI, to a
    ``(1, *grid)`` tensor) and ``projections`` (with their sidecar, to ``(1, views, [rows,] cols)``). Tensors (the
    built-in phantoms' cases) pass through unchanged.

    Args:
        ndim: the image dimensionality, so that a single slice stored as ``(x, y, 1)`` becomes ``(1, y, x)``.
    """

    def __init__(self, ndim: int) -> None:
        self.ndim = int(ndim)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        from monai_ext.io.files import load_nifti, load_projections

        d = dict(data)
        if isinstance(d.get("reference"), str):
            image, _ = load_nifti(d["reference"])
            if image.ndim == self.ndim + 1 and image.shape[0] == 1:
                image = image[0]
            d["reference"] = torch.from_numpy(np.ascontiguousarray(image))[None]
        if isinstance(d.get("projections"), str):
            d["projections"] = load_projections(d["projections"])[0][None]
            d["noise_free"] = False
        return d


class SimulateLineIntegralsd(Transform):
    """Noise-free line integrals ``A mu`` of ``reference`` into ``projections`` for a case that has none, marking it
    ``noise_free``. Deterministic, so a ``CacheDataset`` computes each case's scan once.

    With ``upsample > 1`` each voxel is split into ``upsample^ndim`` equal ones and projected on that finer grid
    (same detector): the scan of a voxel-basis image rather than the interpolated (Joseph) model the networks
    reconstruct with, so that training data are not made by the reconstruction's own operator.

    Args:
        geometry: the training geometry (every case is on its grid).
        upsample: voxel subdivision for the simulation (1: the training operator itself).
        backend: projector backend (``"auto"``, ``"numba"``, ``"grid_sample"``).
    """

    def __init__(self, geometry, upsample: int = 2, backend: str = "auto") -> None:
        if int(upsample) < 1:
            raise ValueError(f"upsample must be a positive integer, got {upsample}.")
        self.upsample = int(upsample)
        self.image_shape = tuple(geometry.image_shape)
        fine = dataclasses.replace(geometry, image_shape=tuple(n * self.upsample for n in geometry.image_shape),
                                   pixel_size=tuple(d / self.upsample for d in geometry.pixel_size))
        self.projector = projector_for(fine, backend)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if "projections" in d:
            d.setdefault("noise_free", False)
            return d
        image = torch.as_tensor(d["reference"]).float()
        if tuple(image.shape[1:]) != self.image_shape:
            raise ValueError(f"case {d.get('name')}: reference has shape {tuple(image.shape)}; the training geometry expects (1, {', '.join(map(str, self.image_shape))}).")
        fine = image
        for axis in range(1, image.ndim):
            fine = fine.repeat_interleave(self.upsample, dim=axis)
        with torch.no_grad():
            d["projections"] = self.projector(fine[None])[0]
        d["noise_free"] = True
        return d


def _noisy(line_integrals: torch.Tensor, counts: BeerLambertCounts, log: NegLogTransmission, randomize: bool = True) -> torch.Tensor:
    return log(counts(line_integrals, randomize=randomize))


class TransmissionNoised(RandomizableTransform, MapTransform):
    """Beer-Lambert transmission noise on noise-free projections (``N ~ Poisson(i0 exp(-p))``, ``p <- -log(N /
    i0)``), drawn afresh at each call: a training case gets new noise every epoch. Cases marked
    not marked ``noise_free: True`` (measured, already noisy) pass unchanged.

    Args:
        keys: the projections key.
        i0: photons per detector pixel.
        electronic_std: Gaussian electronic noise, photons.
    """

    def __init__(self, keys="projections", i0: float = 1e5, electronic_std: float = 0.0, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.counts = BeerLambertCounts(i0, electronic_std)
        self.log = NegLogTransmission(i0, allow_negative=electronic_std > 0)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> TransmissionNoised:
        super().set_random_state(seed, state)
        self.counts.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if not d.get("noise_free", False):
            return d
        for key in self.key_iterator(d):
            d[key] = _noisy(d[key], self.counts, self.log)
        d["noise_free"] = False
        return d


class SeededTransmissionNoised(MapTransform):
    """Transmission noise seeded by the case's name (and ``noise_seed``): the same noise at every epoch and in every
    run, so validation scores compare across epochs and a ``CacheDataset`` keeps the noisy case.

    Args:
        keys: the projections key.
        i0: photons per detector pixel.
        noise_seed: another realisation of the same cases.
    """

    def __init__(self, keys="projections", i0: float = 1e5, noise_seed: int = 0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.counts = BeerLambertCounts(i0)
        self.log = NegLogTransmission(i0)
        self.noise_seed = int(noise_seed)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if not d.get("noise_free", False):
            return d
        seed = zlib.crc32(f"{d.get('name', '')}:{self.noise_seed}".encode())
        self.counts.set_random_state(seed=seed)
        for key in self.key_iterator(d):
            d[key] = _noisy(d[key], self.counts, self.log)
        d["noise_free"] = False
        return d
