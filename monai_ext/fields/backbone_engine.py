"""The conditioned-field backbone trained by MONAI engines (``train#trainer`` and ``validate#evaluator`` of the
neural-field bundle's ``train.json``).

- :class:`ConditionedFields`: the trained network, the backbone and one modulation grid per training scan.
- :class:`RandomScanSubsets`: the trainer's batch sampler, ``scans_per_step`` distinct scans per iteration.
- :class:`RayBatchStep`: the trainer's iteration (``iteration_update``): for each drawn scan, ``rays_per_step``
  random rays rendered and compared with the measured line integrals, one Adam step on the mean squared error.
- :class:`ModulationFitStep`: the evaluator's iteration: a held-out scan's modulation grid fitted with the backbone
  frozen (the conditioned method's inference), the field sampled on the scan's grid against its reference.

The sampler and the step draw from one seeded generator, in the order :func:`~monai_ext.fields.train_conditioned_field`
draws: the engine takes the same steps with the same losses as that function (``tests/test_own_data_training.py``).
"""

from __future__ import annotations

import torch

from ..distributed import average_gradients, rank_and_world_size, shard
from .fields import ModulatedAttenuationField, sample_volume
from .fitting import _check_projections, _ray_loss, fit_modulation
from .rendering import ConeBeamRays

__all__ = ["ConditionedFields", "save_conditioned_backbone", "RandomScanSubsets", "RayBatchStep", "ModulationFitStep"]


class ConditionedFields(torch.nn.Module):
    """A backbone and the modulation grids of ``n_scans`` training scans; ``forward(points, scan)`` is scan ``scan``'s
    attenuation (1/mm) at ``points`` (mm).

    Args:
        backbone: the shared field.
        n_scans: training scans.
    """

    def __init__(self, backbone: ModulatedAttenuationField, n_scans: int) -> None:
        super().__init__()
        if not isinstance(backbone, ModulatedAttenuationField):
            raise TypeError(f"backbone must be a ModulatedAttenuationField, got {type(backbone).__name__}.")
        if int(n_scans) < 1:
            raise ValueError(f"n_scans must be at least 1, got {n_scans}.")
        self.backbone = backbone
        self.modulations = torch.nn.Parameter(backbone.new_modulation(int(n_scans)))

    def forward(self, points: torch.Tensor, scan: int) -> torch.Tensor:
        return self.backbone(points, self.modulations[scan : scan + 1])

    def parameter_groups(self, lr: float, modulation_lr: float) -> list[dict]:
        """Adam's groups: the backbone's trainable parameters at ``lr``, the modulation grids at ``modulation_lr``."""
        return [{"params": [p for p in self.backbone.parameters() if p.requires_grad], "lr": float(lr)},
                {"params": [self.modulations], "lr": float(modulation_lr)}]



def save_conditioned_backbone(network: ConditionedFields, path: str):
    """Write ``network``'s backbone as :func:`~monai_ext.fields.save_backbone` does (what the inference loads): the
    ``save`` of ``monai_ext.workflows.SaveBestModel`` in the bundle's ``train.json``."""
    from .reconstruction import save_backbone

    return save_backbone(getattr(network, "module", network).backbone, path)


class RandomScanSubsets(torch.utils.data.Sampler):
    """A batch sampler of ``steps_per_epoch`` batches, each ``scans_per_step`` distinct scans drawn at random.

    Under ``torch.distributed`` rank ``r`` of ``W`` draws among the scans ``r::W`` only (data parallel: each rank
    owns a share of the scans and their modulation grids).

    Args:
        n_scans: scans of the data set.
        scans_per_step: scans per batch (at most the scans a rank owns).
        steps_per_epoch: batches per epoch.
        generator: the draws' generator (shared with :class:`RayBatchStep`).
    """

    def __init__(self, n_scans: int, scans_per_step: int, steps_per_epoch: int, generator: torch.Generator) -> None:
        world = rank_and_world_size()[1]
        self.owned = shard(range(int(n_scans)))
        if not self.owned:
            raise ValueError(f"{n_scans} training scans cannot be shared among {world} ranks: each needs one at least.")
        if int(scans_per_step) < 1 or int(steps_per_epoch) < 1:
            raise ValueError(f"scans_per_step and steps_per_epoch must be at least 1, got {scans_per_step} and {steps_per_epoch}.")
        self.per_step = min(int(scans_per_step), len(self.owned))
        self.steps, self.generator = int(steps_per_epoch), generator

    def __iter__(self):
        for _ in range(self.steps):
            yield [self.owned[i] for i in torch.randperm(len(self.owned), generator=self.generator)[: self.per_step].tolist()]

    def __len__(self) -> int:
        return self.steps


class RayBatchStep:
    """A trainer's ``iteration_update``: one Adam step on the rendered-minus-measured squared error of random rays
    of the batch's scans (indices into ``projections``).

    Under ``torch.distributed`` the backbone's gradients are averaged across ranks after the backward pass, weighted
    by the scans each drew (``monai_ext.distributed.average_gradients``); the output's loss is the mean of all ranks.

    Args:
        geometry: the scans' geometry.
        projections: ``(n_scans, 1, V, rows, cols)`` measured line integrals.
        rays_per_step: rays per scan per step.
        n_samples: stratified samples per ray.
        generator: the draws' generator (shared with :class:`RandomScanSubsets`; its state is checkpointed by
            ``monai_ext.workflows.RunState``).
    """

    def __init__(self, geometry, projections: torch.Tensor, rays_per_step: int, n_samples: int, generator: torch.Generator, device=None) -> None:
        if projections.ndim != 5 or projections.shape[1] != 1:
            raise ValueError(f"projections must be (n_scans, 1, n_views, rows, cols), got {tuple(projections.shape)}.")
        if int(rays_per_step) < 1 or int(n_samples) < 1:
            raise ValueError(f"rays_per_step and n_samples must be at least 1, got {rays_per_step} and {n_samples}.")
        self.rays = ConeBeamRays(geometry, device=torch.device(device or "cpu"))
        self.targets = [_check_projections(projections[i][None], self.rays, f"projections[{i}]") for i in range(projections.shape[0])]
        self.rays_per_step, self.n_samples, self.generator = int(rays_per_step), int(n_samples), generator

    def __call__(self, engine, batch) -> dict:
        network = engine.network
        chosen = [int(i) for i in (batch.tolist() if isinstance(batch, torch.Tensor) else batch)]
        network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        losses = [_ray_loss(lambda p, i=i: network(p, i), self.rays, self.targets[i], self.rays_per_step, self.n_samples, self.generator)
                  for i in chosen]
        loss = torch.stack(losses).mean()
        loss.backward()
        if rank_and_world_size()[1] > 1:
            shared = [p for p in getattr(network, "module", network).backbone.parameters() if p.requires_grad]
            loss = average_gradients(shared, len(chosen), [loss.detach()])[0]
        engine.optimizer.step()
        return {"loss": loss.detach()}


class ModulationFitStep:
    """An evaluator's ``iteration_update``: each held-out scan's modulation grid fitted with the trainer's backbone
    frozen (as the bundle's inference does), the field sampled on the geometry's grid.

    Returns ``{"pred": (B, 1, *grid), "label": (B, 1, *grid)}`` for MONAI's metric handlers.

    Args:
        geometry: the scans' geometry (its grid is the reference's).
        network: the trainer's :class:`ConditionedFields`.
        n_steps, rays_per_step, n_samples, lr, seed: the modulation fit (as the inference's ``fit#conditioned``).
        projections_key, reference_key: the batch's keys.
    """

    def __init__(self, geometry, network: ConditionedFields, n_steps: int = 300, rays_per_step: int = 256, n_samples: int = 32,
                 lr: float = 0.1, seed: int = 0, projections_key: str = "projections", reference_key: str = "reference") -> None:
        self.geometry, self.network = geometry, network
        self.fit = {"n_steps": int(n_steps), "rays_per_step": int(rays_per_step), "n_samples": int(n_samples), "lr": float(lr), "seed": int(seed)}
        self.keys = (projections_key, reference_key)
        self._rays: dict = {}

    def __call__(self, engine, batch: dict) -> dict:
        backbone = getattr(self.network, "module", self.network).backbone
        device = next(backbone.parameters()).device
        if device not in self._rays:
            self._rays = {device: ConeBeamRays(self.geometry, device=device)}
        projections = torch.as_tensor(batch[self.keys[0]]).to(device=device, dtype=torch.float32)
        shape, spacing = self.geometry.image_shape, self.geometry.pixel_size
        volumes = []
        was_training = backbone.training
        with torch.enable_grad():
            for scan in projections:
                field, _ = fit_modulation(backbone, scan[None], self._rays[device], progress=False, **self.fit)
                volumes.append(sample_volume(field, shape, tuple(spacing)))
        backbone.train(was_training)
        return {"pred": torch.cat(volumes), "label": torch.as_tensor(batch[self.keys[1]]).to(device=device, dtype=torch.float32)}
