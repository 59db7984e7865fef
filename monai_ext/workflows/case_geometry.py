"""Reconstructing each case at its own geometry: a user's image on its own grid, projections with their sidecar's.

``tomography_cases`` puts each case's acquisition geometry in the batch (as JSON); :class:`CaseGeometryNetwork`
runs the bundle's method at that geometry. A method that works at any geometry (FBP/FDK, Tikhonov, TV: anything
with ``with_geometry``) is carried over to it; a network trained at one geometry runs only there.
"""

from __future__ import annotations

import json

import torch

from monai_ext.tomo.adaptation import describe_geometry, same_geometry

__all__ = ["CaseGeometryNetwork"]


class CaseGeometryNetwork(torch.nn.Module):
    """``network`` run at each case's geometry (the ``geometry`` keyword, JSON as ``tomography_cases`` gives).

    Args:
        network: the bundle's reconstruction at ``geometry`` (its weights, if any, are loaded into it).
        geometry: the geometry ``network`` was built for (the config's).
        adaptive: the method works at any geometry: for another one it is rebuilt by ``network.with_geometry``
            (kept while consecutive cases share it). ``False``: another geometry is refused.

    Raises:
        TypeError: ``adaptive`` for a network without ``with_geometry``.
        ValueError: (in ``forward``) a geometry other than ``geometry`` for a non-adaptive network, or a batch of
            cases with different geometries.
    """

    def __init__(self, network: torch.nn.Module, geometry, adaptive: bool = True) -> None:
        super().__init__()
        if adaptive and not hasattr(network, "with_geometry"):
            raise TypeError(f"{type(network).__name__} cannot be rebuilt for another geometry (it has no with_geometry); pass adaptive=False.")
        self.network, self.geometry, self.adaptive = network, geometry, bool(adaptive)
        self._built: tuple[str | None, torch.nn.Module | None] = (None, None)

    def forward(self, projections: torch.Tensor, geometry: str | list[str] | None = None) -> torch.Tensor:
        specs = [geometry] if isinstance(geometry, str) else list(geometry or [])
        if not specs:
            return self.network(projections)
        if len(set(specs)) > 1:
            raise ValueError("a batch mixes cases of different geometries; use batch_size 1 for cases at their own geometries.")
        return self.for_geometry(specs[0])(projections)

    def for_geometry(self, spec: str) -> torch.nn.Module:
        """The reconstruction module for the geometry ``spec`` (JSON)."""
        from monai_ext.io.files import geometry_from_dict

        if spec == self._built[0]:
            return self._built[1]
        geometry = geometry_from_dict(json.loads(spec))
        if same_geometry(geometry, self.geometry):
            module = self.network
        elif not self.adaptive:
            raise ValueError(f"{type(self.network).__name__} was trained with {describe_geometry(self.geometry)} and cannot reconstruct a "
                             f"scan with {describe_geometry(geometry)}.")
        else:
            device = next((t.device for t in (*self.network.parameters(), *self.network.buffers())), None)
            module = self.network.with_geometry(geometry)
            module = module.to(device) if device is not None else module
            module.train(self.network.training)
        self._built = (spec, module)
        return module
