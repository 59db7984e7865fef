"""Reconstruction by neural fields as a module ``projections -> volume``, and the backbone checkpoint format.

:class:`NeuralFieldReconstruction` fits one field per scan inside ``forward`` (gradients are enabled there even
under ``torch.no_grad``), then samples it on the requested grid:

- ``method="per_scan"``: a new :class:`AttenuationField` from scratch (NAF-style);
- ``method="conditioned"``: a trained :class:`ModulatedAttenuationField` backbone (frozen) and a new modulation
  grid, the only thing fitted (CondCBNT-style).

``last_fits`` keeps, per scan, the fit's seconds, final data loss and the memory of the parameters fitted and held.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from monai_ext.distributed import barrier, is_main_process, rank_and_world_size
from monai_ext.io import atomic_path, save_json
from monai_ext.flags import as_flag
from monai_ext.tomo.geometry import ConeBeamGeometry

from .fields import AttenuationField, ModulatedAttenuationField, box_half_widths, parameter_mebibytes, sample_volume
from .fitting import fit_field, fit_modulation, train_conditioned_field
from .rendering import ConeBeamRays

__all__ = ["METHODS", "NeuralFieldReconstruction", "save_backbone", "load_backbone", "train_backbone"]

METHODS = ("per_scan", "conditioned")


def save_backbone(backbone: ModulatedAttenuationField, path: str, extra: dict | None = None) -> Path:
    """Write ``{"config", "state_dict", "extra"}`` (loadable with ``weights_only=True``), atomically."""
    payload = {"config": backbone.config, "state_dict": backbone.state_dict(), "extra": dict(extra or {})}
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_backbone(path: str, device=None) -> ModulatedAttenuationField:
    """Rebuild a backbone saved by :func:`save_backbone` (frozen: ``requires_grad`` off, eval mode).

    Raises:
        FileNotFoundError: no file at ``path`` (the message says how to train one).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"backbone checkpoint {path} not found; train one with configs/train.json.")
    payload = torch.load(path, map_location=device or "cpu", weights_only=True)
    backbone = ModulatedAttenuationField(**payload["config"])
    backbone.load_state_dict(payload["state_dict"])
    backbone.requires_grad_(False)
    return backbone.to(device or "cpu").eval()


def train_backbone(
    geometry: ConeBeamGeometry,
    projections: torch.Tensor,
    output_file: str,
    backbone_args: dict | None = None,
    train_args: dict | None = None,
    device=None,
    progress: bool = True,
    backbone: ModulatedAttenuationField | None = None,
    record: dict | None = None,
) -> dict:
    """Train a conditioned-field backbone on the scans ``projections`` of ``geometry`` and save it.

    Writes ``output_file`` (:func:`save_backbone`) and its training record ``<output_file stem>.training.json``
    (``monai_ext.workflows.record_path``): the geometry, settings, seconds, loss trace every 10 steps, and
    ``record`` (e.g. ``i0`` and the data set's summary).

    Under ``torch.distributed`` the training is data parallel (see :func:`train_conditioned_field`: each rank owns a
    share of the scans, the backbone's gradients are averaged every step); rank 0 alone writes the files and shows
    the progress bar, and every rank returns once they are written.

    Args:
        geometry: the scans' geometry (its box is the backbone's).
        projections: ``(n_scans, 1, n_views, rows, cols)`` training scans (projections only, no reference).
        output_file: checkpoint path.
        backbone_args: :class:`ModulatedAttenuationField` keyword arguments (the box comes from ``geometry``).
        train_args: :func:`train_conditioned_field` keyword arguments.
        device: where to train.
        progress: tqdm bar with the data loss.
        backbone: a backbone to train further in place (e.g. a trained one, to fine-tune it); ``backbone_args`` must
            then be ``None``.
        record: more entries for the training record.

    The bundle's ``train.json`` trains with MONAI engines instead (validation, checkpoints, resumption):
    :mod:`monai_ext.fields.backbone_engine`.

    Returns:
        the training record written to the JSON file.

    Raises:
        ValueError: both ``backbone`` and ``backbone_args``, or a backbone of another box than the geometry's.
    """
    device = torch.device(device or "cpu")
    box = box_half_widths(geometry.image_shape, geometry.pixel_size)
    if backbone is None:
        backbone = ModulatedAttenuationField(box, **dict(backbone_args or {}))
    elif backbone_args is not None:
        raise ValueError("give either backbone_args (a new backbone) or backbone (one to train further), not both.")
    elif any(abs(a - b) > 1e-6 for a, b in zip(backbone.config["half_widths"], box)):
        raise ValueError(f"the backbone's box has half-widths {backbone.config['half_widths']} mm, the geometry's is {list(box)}.")
    backbone = backbone.to(device)
    rays = ConeBeamRays(geometry, device=device)
    args = dict(train_args or {})
    _, info = train_conditioned_field(backbone, projections.to(device), rays, progress=progress, **args)
    from monai_ext.io.files import geometry_to_dict
    from monai_ext.workflows.training_runs import record_path

    extra = dict(record or {})
    record = {
        "weights": Path(output_file).name,
        "geometry": geometry_to_dict(geometry),
        **extra,
        "n_scans": int(projections.shape[0]),
        "world_size": rank_and_world_size()[1],
        "projection_shape": list(projections.shape[2:]),
        "backbone": backbone.config,
        "training": args,
        "seconds": round(info["seconds"], 1),
        "device": str(device),
        "final_loss": info["final_loss"],
        "loss_every_10_steps": [round(v, 6) for v in info["loss_trace"][::10]],
        "backbone_parameters_mib": round(parameter_mebibytes(backbone), 4),
    }
    if is_main_process():
        save_backbone(backbone.cpu(), output_file, {"seconds": record["seconds"], "n_scans": record["n_scans"]})
        save_json(record, record_path(output_file))
    barrier()
    return record


class NeuralFieldReconstruction(torch.nn.Module):
    """Fit a neural field to each scan and return it sampled on a grid: ``(B, 1, V, rows, cols) -> (B, 1, *shape)``.

    Args:
        geometry: the scans' ``ConeBeamGeometry`` (its image grid is the field's box).
        method: ``"per_scan"`` or ``"conditioned"``.
        field_args: :class:`AttenuationField` keyword arguments (per-scan method; the box comes from ``geometry``).
        backbone_file: trained backbone checkpoint (conditioned method).
        n_steps: Adam steps per scan.
        rays_per_step: rays per step.
        n_samples: stratified samples per ray.
        lr: learning rate (of the field, or of the modulation grid).
        seed: seed of the field's initialisation and of the ray batches.
        output_shape: ``(nz, ny, nx)`` of the output grid (default: the geometry's).
        output_spacing: its voxel size in mm (default: the geometry's voxel size scaled so the grid spans the box).
        progress: tqdm bar with the data loss.

    Raises:
        ValueError: unknown method, a conditioned method without a backbone, a backbone of another box.
    """

    def __init__(
        self,
        geometry: ConeBeamGeometry,
        method: str = "conditioned",
        field_args: dict | None = None,
        backbone_file: str | None = None,
        n_steps: int = 300,
        rays_per_step: int = 1024,
        n_samples: int = 32,
        lr: float | None = None,
        seed: int = 0,
        output_shape: Sequence[int] | None = None,
        output_spacing: Sequence[float] | float | None = None,
        progress: bool = True,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
        if not isinstance(geometry, ConeBeamGeometry):
            raise TypeError(f"geometry must be a ConeBeamGeometry, got {type(geometry).__name__}.")
        self.geometry, self.method = geometry, method
        self._explicit_grid = output_shape is not None or output_spacing is not None
        self.half_widths = box_half_widths(geometry.image_shape, geometry.pixel_size)
        self.field_args = dict(field_args or {})
        self.n_steps, self.rays_per_step, self.n_samples, self.seed = int(n_steps), int(rays_per_step), int(n_samples), int(seed)
        self.lr = float(lr) if lr is not None else (1e-2 if method == "per_scan" else 1e-1)
        self.output_shape = tuple(int(n) for n in (output_shape or geometry.image_shape))
        if output_spacing is None:
            output_spacing = [2.0 * h / n for h, n in zip(self.half_widths[::-1], self.output_shape)]
        self.output_spacing = (float(output_spacing),) * 3 if isinstance(output_spacing, (int, float)) else tuple(float(d) for d in output_spacing)
        self.progress = as_flag(progress, "progress")
        self.backbone = None
        if method == "conditioned":
            if not backbone_file:
                raise ValueError("method 'conditioned' needs backbone_file, a checkpoint written by configs/train.json.")
            self.backbone = load_backbone(backbone_file)
            if any(abs(a - b) > 1e-6 for a, b in zip(self.backbone.config["half_widths"], self.half_widths)):
                raise ValueError(f"the backbone was trained on a box of half-widths {self.backbone.config['half_widths']} mm, the geometry's is {self.half_widths}.")
        self._rays: dict = {}
        self.last_fits: list[dict] = []

    def with_geometry(self, geometry: ConeBeamGeometry) -> NeuralFieldReconstruction:
        """The per-scan method (same field, fit and seed) for scans of another ``geometry``, output on its grid.

        Raises:
            ValueError: the conditioned method (its backbone is trained on one box) or an output grid set explicitly
                (it belongs to the bundle's geometry).
        """
        if self.method != "per_scan":
            raise ValueError(f"the {self.method} method's backbone was trained on one geometry; only per_scan fits scans of any geometry.")
        if self._explicit_grid:
            raise ValueError("output_shape/output_spacing are set for the bundle's geometry; leave them unset to reconstruct scans of other geometries on their own grid.")
        return type(self)(geometry, self.method, self.field_args, None, self.n_steps, self.rays_per_step, self.n_samples, self.lr, self.seed,
                          progress=self.progress)

    def _rays_on(self, device: torch.device) -> ConeBeamRays:
        if device not in self._rays:
            self._rays = {device: ConeBeamRays(self.geometry, device=device)}
        return self._rays[device]

    def fit(self, projections: torch.Tensor) -> tuple[torch.nn.Module, dict]:
        """Fit one scan ``(1, 1, V, rows, cols)``; returns ``(field, info)`` (``info``: seconds, loss, MiB)."""
        device = projections.device
        rays = self._rays_on(device)
        start = time.perf_counter()
        with torch.enable_grad():
            if self.method == "per_scan":
                field = AttenuationField(self.half_widths, seed=self.seed, **self.field_args).to(device)
                info = fit_field(field, projections, rays, self.n_steps, self.rays_per_step, self.n_samples, self.lr, seed=self.seed, progress=self.progress)
                fitted, held = parameter_mebibytes(field), parameter_mebibytes(field)
            else:
                backbone = self.backbone.to(device)
                field, info = fit_modulation(backbone, projections, rays, self.n_steps, self.rays_per_step, self.n_samples, self.lr, seed=self.seed, progress=self.progress)
                fitted, held = parameter_mebibytes(field.modulation), parameter_mebibytes(field)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        summary = {
            "seconds": time.perf_counter() - start,
            "final_loss": info["final_loss"],
            "steps": info["steps"],
            "fitted_parameters_mib": fitted,
            "field_parameters_mib": held,
        }
        return field, summary

    def forward(self, projections: torch.Tensor) -> torch.Tensor:
        shape = tuple(self.geometry.projection_shape)
        if projections.ndim != 5 or projections.shape[1] != 1 or tuple(projections.shape[2:]) != shape:
            raise ValueError(f"projections must have shape (B, 1, {', '.join(map(str, shape))}), got {tuple(projections.shape)}.")
        volumes, self.last_fits = [], []
        for scan in projections.float():
            field, summary = self.fit(scan[None])
            volumes.append(sample_volume(field, self.output_shape, self.output_spacing))
            self.last_fits.append(summary)
        return torch.cat(volumes)

    def extra_repr(self) -> str:
        return f"method={self.method}, n_steps={self.n_steps}, output_shape={self.output_shape}"
