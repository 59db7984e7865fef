"""Fitting neural fields to cone-beam projections by stochastic ray batches and Adam.

- :func:`fit_field`: a per-scan field from scratch (NAF-style), all of its parameters.
- :func:`train_conditioned_field`: a backbone shared across scans and one modulation grid per scan, jointly
  (auto-decoding; CondCBNT-style training from projections only).
- :func:`fit_field_to_volume`: a field regressed onto a voxel volume (its trilinear interpolation), e.g. to
  check that rendering a field matches projecting the volume.
- :func:`fit_modulation`: a new scan with a trained backbone: only its modulation grid is optimised.

Every step draws ``rays_per_step`` rays uniformly (per scan) and minimises the mean squared error between rendered
and measured line integrals, ``1/R sum_r (integral_r mu - p_r)^2``. The learning rate decays exponentially from
``lr`` to ``lr * final_lr_fraction``. Ray choice and stratified offsets come from one seeded CPU generator, so a fit
is reproducible for a given seed (on CPU; CUDA's ``grid_sample`` backward accumulates atomically).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..distributed import average_gradients, broadcast_parameters, rank_and_world_size, shard
from .fields import ModulatedAttenuationField, ModulatedScan, VoxelField
from .rendering import ConeBeamRays, render_line_integrals

__all__ = ["fit_field", "fit_modulation", "train_conditioned_field", "fit_field_to_volume"]


def _check_projections(projections: torch.Tensor, rays: ConeBeamRays, name: str = "projections") -> torch.Tensor:
    shape = tuple(rays.projection_shape)
    if not isinstance(projections, torch.Tensor) or tuple(projections.shape[-3:]) != shape or projections.numel() != len(rays):
        got = tuple(projections.shape) if isinstance(projections, torch.Tensor) else type(projections).__name__
        raise ValueError(f"{name} must hold one scan of shape (1, 1, {', '.join(map(str, shape))}), got {got}.")
    if not torch.isfinite(projections).all():
        raise ValueError(f"{name} contains non-finite values.")
    return projections.reshape(-1).to(device=rays.origins.device, dtype=rays.origins.dtype)


def _check_schedule(n_steps: int, rays_per_step: int, n_samples: int, lr: float, final_lr_fraction: float) -> None:
    if int(n_steps) < 1 or int(rays_per_step) < 1 or int(n_samples) < 1:
        raise ValueError(f"n_steps, rays_per_step and n_samples must be at least 1, got {n_steps}, {rays_per_step}, {n_samples}.")
    if not lr > 0 or not 0 < final_lr_fraction <= 1:
        raise ValueError(f"need lr > 0 and 0 < final_lr_fraction <= 1, got {lr} and {final_lr_fraction}.")


def _ray_loss(field, rays: ConeBeamRays, target: torch.Tensor, rays_per_step: int, n_samples: int, gen: torch.Generator) -> torch.Tensor:
    index = torch.randint(len(rays), (int(rays_per_step),), generator=gen)
    rendered = render_line_integrals(field, *rays.select(index), n_samples, generator=gen)
    return (rendered - target[index.to(target.device)]).square().mean()


def fit_field(
    field: torch.nn.Module,
    projections: torch.Tensor,
    rays: ConeBeamRays,
    n_steps: int = 600,
    rays_per_step: int = 1024,
    n_samples: int = 48,
    lr: float = 1e-2,
    final_lr_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    parameters: Sequence[torch.nn.Parameter] | None = None,
) -> dict:
    """Fit ``field`` (in place) to one scan's line integrals.

    Args:
        field: module ``(N, 3) mm -> (N,) 1/mm`` on the rays' device.
        projections: ``(1, 1, n_views, rows, cols)`` measured line integrals.
        rays: the scan's rays.
        n_steps: Adam steps.
        rays_per_step: rays per step.
        n_samples: stratified samples per ray.
        lr: initial learning rate.
        final_lr_fraction: last learning rate over ``lr``.
        seed: seed of the ray batches and stratified offsets.
        progress: show a tqdm bar with the data loss.
        parameters: the parameters to optimise (default: all trainable parameters of ``field``).

    Returns:
        ``{"loss_trace", "final_loss", "seconds", "steps"}``.

    Raises:
        ValueError: projections that do not match the rays, non-positive schedule values, nothing to optimise.
    """
    _check_schedule(n_steps, rays_per_step, n_samples, lr, final_lr_fraction)
    target = _check_projections(projections, rays)
    params = list(parameters) if parameters is not None else [p for p in field.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to optimise: the field has no trainable parameters.")
    gen = torch.Generator().manual_seed(int(seed))
    field.train()
    return _optimise(
        [{"params": params, "lr": lr}],
        lambda: _ray_loss(field, rays, target, rays_per_step, n_samples, gen),
        n_steps, final_lr_fraction, progress, "field fit",
    )


def fit_modulation(
    backbone: ModulatedAttenuationField,
    projections: torch.Tensor,
    rays: ConeBeamRays,
    n_steps: int = 300,
    rays_per_step: int = 1024,
    n_samples: int = 48,
    lr: float = 1e-1,
    final_lr_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> tuple[ModulatedScan, dict]:
    """Fit a new scan's modulation grid with the backbone frozen (its parameters keep ``requires_grad`` as they were).

    Returns:
        ``(scan_field, info)``: the fitted :class:`ModulatedScan` and :func:`fit_field`'s info.
    """
    if not isinstance(backbone, ModulatedAttenuationField):
        raise TypeError(f"backbone must be a ModulatedAttenuationField, got {type(backbone).__name__}.")
    scan = ModulatedScan(backbone)
    flags = [p.requires_grad for p in backbone.parameters()]
    for p in backbone.parameters():
        p.requires_grad_(False)
    try:
        info = fit_field(scan, projections, rays, n_steps, rays_per_step, n_samples, lr, final_lr_fraction, seed, progress, [scan.modulation])
    finally:
        for p, flag in zip(backbone.parameters(), flags):
            p.requires_grad_(flag)
    return scan, info


def train_conditioned_field(
    backbone: ModulatedAttenuationField,
    projections: torch.Tensor,
    rays: ConeBeamRays,
    n_steps: int = 2000,
    scans_per_step: int = 4,
    rays_per_step: int = 512,
    n_samples: int = 48,
    lr: float = 5e-3,
    modulation_lr: float = 1e-1,
    final_lr_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> tuple[torch.Tensor, dict]:
    """Train the backbone and one modulation grid per training scan jointly, from projections only.

    Args:
        backbone: the shared field (trained in place).
        projections: ``(n_scans, 1, n_views, rows, cols)`` training scans of one geometry.
        rays: that geometry's rays.
        n_steps: Adam steps.
        scans_per_step: scans drawn per step (without replacement).
        rays_per_step: rays per drawn scan.
        n_samples, final_lr_fraction, seed, progress: as :func:`fit_field`.
        lr: backbone learning rate.
        modulation_lr: learning rate of the modulation grids.

    The neural-field bundle's ``train.json`` runs these steps as MONAI engines (checkpoints, resumption,
    validation): :mod:`monai_ext.fields.backbone_engine`.

    Under ``torch.distributed`` (a process group is initialised) the training is data parallel: rank ``r`` of ``W``
    owns the scans ``r::W`` and their modulation grids only, draws ``scans_per_step`` of them per step (a per-rank
    batch, as a per-GPU batch size: ``W * scans_per_step`` scans per step in all) with ray seed ``seed + r``, and
    the backbone's gradients are averaged across ranks after each backward pass
    (:func:`monai_ext.distributed.average_gradients`, weighted by the scans drawn), after rank 0's initial backbone
    is broadcast, so that the backbone stays identical on every rank. The loss trace is the mean over all ranks'
    scans; the tqdm bar shows on rank 0 only. Without a process group this is the single-process training.

    Returns:
        ``(modulations, info)``: the grids ``(n, C, R, R, R)`` of this rank's scans (all ``n_scans`` of them in a
        single process) and the loss trace; ``info["scan_indices"]`` lists which scans the grids belong to.

    Raises:
        ValueError: projections not ``(n_scans, 1, views, rows, cols)`` of the rays' geometry, non-positive schedule
            values, fewer scans than ranks.
    """
    _check_schedule(n_steps, rays_per_step, n_samples, lr, final_lr_fraction)
    if projections.ndim != 5 or projections.shape[1] != 1:
        raise ValueError(f"projections must be (n_scans, 1, n_views, rows, cols), got {tuple(projections.shape)}.")
    rank, world = rank_and_world_size()
    owned = shard(range(projections.shape[0]))
    if not owned:
        raise ValueError(f"{projections.shape[0]} training scans cannot be shared among {world} ranks: each needs one at least.")
    targets = [_check_projections(projections[i][None], rays, f"projections[{i}]") for i in owned]
    n_scans = len(targets)
    per_step = min(int(scans_per_step), n_scans)
    if per_step < 1:
        raise ValueError(f"scans_per_step must be at least 1, got {scans_per_step}.")
    modulations = torch.nn.Parameter(backbone.new_modulation(n_scans))
    gen = torch.Generator().manual_seed(int(seed) + rank)
    shared = [p for p in backbone.parameters() if p.requires_grad]
    broadcast_parameters(shared)
    backbone.train()

    def step_loss() -> torch.Tensor:
        chosen = torch.randperm(n_scans, generator=gen)[:per_step].tolist()
        losses = []
        for i in chosen:
            field = lambda pts, i=i: backbone(pts, modulations[i : i + 1])  # noqa: E731
            losses.append(_ray_loss(field, rays, targets[i], rays_per_step, n_samples, gen))
        return torch.stack(losses).mean()

    optimiser_groups = [{"params": shared, "lr": lr}, {"params": [modulations], "lr": modulation_lr}]
    synchronise = None if world == 1 else lambda loss: average_gradients(shared, per_step, [loss])[0]
    info = _optimise(optimiser_groups, step_loss, n_steps, final_lr_fraction, progress and rank == 0, "backbone training", synchronise)
    info["scan_indices"] = owned
    return modulations.detach(), info


def _optimise(
    groups: list[dict],
    step_loss: Callable[[], torch.Tensor],
    n_steps: int,
    final_lr_fraction: float,
    progress: bool,
    description: str,
    after_backward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """Adam on parameter groups (each with its ``lr``), exponential decay to ``final_lr_fraction``, tqdm bar of the loss.

    ``after_backward(loss)`` runs between the backward pass and the step (e.g. to average gradients across ranks)
    and returns the loss to record."""
    optimiser = torch.optim.Adam(groups)
    decay = final_lr_fraction ** (1.0 / max(1, n_steps - 1))
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimiser, decay)
    trace: list[float] = []
    start = time.perf_counter()
    bar = tqdm(range(int(n_steps)), desc=description, disable=not progress, leave=False, mininterval=0.5)
    for step in bar:
        optimiser.zero_grad(set_to_none=True)
        loss = step_loss()
        loss.backward()
        if after_backward is not None:
            loss = after_backward(loss.detach())
        optimiser.step()
        scheduler.step()
        trace.append(float(loss.detach()))
        if step % 10 == 0 or step == n_steps - 1:
            bar.set_postfix(data_loss=f"{trace[-1]:.3e}")
    bar.close()
    return {"loss_trace": trace, "final_loss": trace[-1], "seconds": time.perf_counter() - start, "steps": int(n_steps)}


def fit_field_to_volume(
    field: torch.nn.Module,
    volume: torch.Tensor,
    pixel_size,
    n_steps: int = 1000,
    points_per_step: int = 8192,
    lr: float = 1e-2,
    final_lr_fraction: float = 0.05,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Regress ``field`` onto the trilinear interpolation of ``volume`` at uniform random points of its box.

    Minimises ``mean (f(x) - V(x))^2`` with ``V`` the :class:`VoxelField` of ``volume``.

    Args:
        field: module ``(N, 3) mm -> (N,)``.
        volume: ``(nz, ny, nx)`` or ``(1, 1, nz, ny, nx)``.
        pixel_size: voxel size (mm).
        n_steps, lr, final_lr_fraction, seed, progress: as :func:`fit_field`.
        points_per_step: random points per step.
    """
    _check_schedule(n_steps, points_per_step, 1, lr, final_lr_fraction)
    device = next(iter(field.buffers())).device
    target = VoxelField(volume, pixel_size).to(device)
    target.requires_grad_(False)
    half = target.half_widths
    gen = torch.Generator().manual_seed(int(seed))

    def step_loss() -> torch.Tensor:
        points = ((torch.rand((int(points_per_step), 3), generator=gen) * 2 - 1).to(device) * half)
        return (field(points) - target(points)).square().mean()

    params = [p for p in field.parameters() if p.requires_grad]
    field.train()
    return _optimise([{"params": params, "lr": lr}], step_loss, n_steps, final_lr_fraction, progress, "volume fit")
