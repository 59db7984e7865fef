"""Transmission (CT/CBCT) measurement physics as MONAI transforms: Beer-Lambert counts and the log transform back.

``BeerLambertCounts``: line integrals ``p`` to detected photon counts ``N ~ Poisson(I0 exp(-p)) (+ N(0, sigma_e^2))``.
``NegLogTransmission``: counts back to line integrals ``p = -log(max(N, clip) / I0)``.
Both have dictionary twins (``...d``) for MONAI data pipelines.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils.type_conversion import convert_to_dst_type, convert_to_tensor

__all__ = ["BeerLambertCounts", "BeerLambertCountsd", "NegLogTransmission", "NegLogTransmissiond"]


def _as_float_tensor(name: str, data) -> torch.Tensor:
    t = convert_to_tensor(data, track_meta=False)
    if not torch.is_floating_point(t):
        t = t.float()
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf).")
    return t


class BeerLambertCounts(RandomizableTransform):
    """Simulate detected photon counts from line integrals (Beer-Lambert law, Poisson + electronic noise).

    ``N = Poisson(I0 * exp(-p)) + e``, ``e ~ N(0, electronic_std^2)`` (counts may then be negative or zero; the
    log transform clips them). With ``noise=False`` the expected counts ``I0 exp(-p)`` are returned.

    Args:
        i0: incident photons per detector pixel (e.g. ``1e5`` for low-dose CBCT, ``1e4`` for very low dose).
        electronic_std: standard deviation of additive Gaussian electronic noise, in photons (0 disables it).
        noise: draw noise (True) or return expected counts (False).

    Raises:
        ValueError: non-positive ``i0``, negative ``electronic_std``, non-finite line integrals.

    Example:
        >>> t = BeerLambertCounts(i0=1e5).set_random_state(seed=0)
        >>> counts = t(torch.full((1, 90, 64), 0.5))
    """

    def __init__(self, i0: float = 1e5, electronic_std: float = 0.0, noise: bool = True) -> None:
        RandomizableTransform.__init__(self, prob=1.0)
        if not i0 > 0:
            raise ValueError(f"i0 (photons per detector pixel) must be positive, got {i0}.")
        if electronic_std < 0:
            raise ValueError(f"electronic_std must be non-negative, got {electronic_std}.")
        self.i0, self.electronic_std, self.noise = float(i0), float(electronic_std), bool(noise)

    def __call__(self, line_integrals, randomize: bool = True):
        p = _as_float_tensor("line_integrals", line_integrals)
        expected = self.i0 * torch.exp(-p)
        if not self.noise:
            return convert_to_dst_type(expected, line_integrals)[0]
        seed = int(self.R.randint(0, 2**31 - 1)) if randomize else 0
        gen = torch.Generator(device=p.device).manual_seed(seed)
        counts = torch.poisson(expected, generator=gen)
        if self.electronic_std > 0:
            counts = counts + self.electronic_std * torch.randn(counts.shape, generator=gen, device=p.device, dtype=p.dtype)
        return convert_to_dst_type(counts, line_integrals)[0]


class NegLogTransmission(Transform):
    """Line integrals from counts: ``p = -log(max(N, clip) / I0)``.

    Args:
        i0: incident photons per detector pixel (the same as used for the counts).
        clip: counts below this (zero or negative after electronic noise) are raised to it before the log, so that
            photon starvation gives a large finite line integral instead of ``inf``.
        allow_negative: accept negative counts (Gaussian electronic noise); otherwise they are an error.

    Raises:
        ValueError: non-positive ``i0`` or ``clip``; counts containing NaN/inf; negative counts unless
            ``allow_negative`` (data with electronic noise) is set.
    """

    def __init__(self, i0: float = 1e5, clip: float = 0.5, allow_negative: bool = False) -> None:
        if not i0 > 0:
            raise ValueError(f"i0 (photons per detector pixel) must be positive, got {i0}.")
        if not clip > 0:
            raise ValueError(f"clip must be positive, got {clip}.")
        self.i0, self.clip, self.allow_negative = float(i0), float(clip), bool(allow_negative)

    def __call__(self, counts):
        n = _as_float_tensor("counts", counts)
        if not self.allow_negative and bool((n < 0).any()):
            raise ValueError(
                f"counts contain negative values (min {float(n.min()):.3g}); detected photon counts must be >= 0 "
                "(pass allow_negative=True for data with electronic noise)."
            )
        p = -torch.log(n.clamp_min(self.clip) / self.i0)
        return convert_to_dst_type(p, counts)[0]


class BeerLambertCountsd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`BeerLambertCounts`: replaces ``keys`` (line integrals) by counts."""

    def __init__(
        self, keys: KeysCollection, i0: float = 1e5, electronic_std: float = 0.0, noise: bool = True, allow_missing_keys: bool = False
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.transform = BeerLambertCounts(i0, electronic_std, noise)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> BeerLambertCountsd:
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class NegLogTransmissiond(MapTransform):
    """Dictionary version of :class:`NegLogTransmission`."""

    def __init__(
        self, keys: KeysCollection, i0: float = 1e5, clip: float = 0.5, allow_negative: bool = False, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = NegLogTransmission(i0, clip, allow_negative)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d

