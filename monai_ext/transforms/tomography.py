"""Dictionary transforms that turn an attenuation image into the measurements a CT/CBCT scanner would record."""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.transforms import MapTransform, RandomizableTransform

from monai_ext.tomo.projectors import projector_for

from .transmission import BeerLambertCounts, NegLogTransmission

__all__ = ["SimulateProjectionsd"]


class SimulateProjectionsd(RandomizableTransform, MapTransform):
    """Project ``data[key]`` (``(1, *image_shape)``, 1/mm) and optionally add transmission noise.

    ``p = A mu``; with ``i0``: ``p <- -log(max(Poisson(i0 exp(-p)) + e, clip) / i0)``. The result is stored under
    ``projections_key`` with shape ``(1, n_angles, *detector_shape)``.

    Args:
        keys: the image key (one key).
        geometry: a ``monai_ext.tomo`` geometry matching the image grid.
        projections_key: output key.
        i0: photons per detector pixel; ``None`` gives noise-free line integrals.
        electronic_std: Gaussian electronic noise in photons.
        geometry_key: a case that holds this key (a geometry as JSON, as ``tomography_cases`` gives) is
            projected with that geometry instead of ``geometry``: a user's image on its own grid.

    Raises:
        ValueError: image of the wrong shape for the geometry, negative attenuation, non-finite values.
    """

    def __init__(
        self,
        keys,
        geometry,
        projections_key: str = "projections",
        i0: float | None = None,
        electronic_std: float = 0.0,
        allow_missing_keys: bool = False,
        geometry_key: str | None = "geometry",
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.projector = projector_for(geometry)
        self.geometry_key = geometry_key
        self._case_projectors: dict[str, object] = {}
        self.projections_key = projections_key
        self.counts = BeerLambertCounts(i0, electronic_std) if i0 is not None else None
        self.log = NegLogTransmission(i0, allow_negative=electronic_std > 0) if i0 is not None else None

    def _projector(self, spec: str | None):
        """The configured projector, or one for the case's own geometry (kept for the cases that share it)."""
        if not spec:
            return self.projector
        if spec not in self._case_projectors:
            from monai_ext.io.files import geometry_from_dict

            self._case_projectors = {spec: self.projector.with_geometry(geometry_from_dict(json.loads(spec)))}
        return self._case_projectors[spec]

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> SimulateProjectionsd:
        super().set_random_state(seed, state)
        if self.counts is not None:
            self.counts.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        projector = self._projector(d.get(self.geometry_key) if self.geometry_key else None)
        for key in self.key_iterator(d):
            image = torch.as_tensor(d[key]).float()
            if image.ndim != len(projector.image_shape) + 1 or image.shape[0] != 1:
                raise ValueError(f"{key} must have shape (1, {', '.join(map(str, projector.image_shape))}), got {tuple(image.shape)}.")
            if bool((image < 0).any()):
                raise ValueError(f"{key} holds negative attenuation (min {float(image.min()):.3g} /mm); expected mu >= 0.")
            p = projector(image[None].to(torch.float32).cpu())[0]
            if self.counts is not None:
                p = self.log(self.counts(p))
            d[self.projections_key] = p
        return d
