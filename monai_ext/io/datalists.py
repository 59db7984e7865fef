"""Case lists for reconstruction bundles: the user's files, or a built-in example when none are given."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .files import load_nifti, load_projections

__all__ = ["tomography_cases"]


def _example(image_shape: tuple[int, ...], pixel_size, mu_scale: float) -> dict:
    from monai_ext.phantoms import shepp_logan

    size = pixel_size if isinstance(pixel_size, (int, float)) else min(pixel_size)
    fov = min(image_shape[-2:]) * float(size)
    phantom = shepp_logan(len(image_shape), fov, scale=mu_scale)
    image = phantom.rasterize(tuple(image_shape), pixel_size, supersample=4)[None]
    return {"name": "shepp_logan_example", "image": image, "reference": image.clone()}


def _same_geometry(a, b) -> bool:
    if type(a) is not type(b):
        return False
    fa, fb = dataclasses.asdict(a), dataclasses.asdict(b)
    for key in fa:
        va, vb = torch.as_tensor(fa[key], dtype=torch.float64), torch.as_tensor(fb[key], dtype=torch.float64)
        if va.shape != vb.shape or not torch.allclose(va, vb, rtol=1e-6, atol=1e-9):
            return False
    return True


def tomography_cases(dataset_dir: str | None, geometry, mu_scale: float = 0.02) -> list[dict]:
    """Cases for a CT/CBCT reconstruction bundle.

    In ``dataset_dir``: each ``.nii``/``.nii.gz`` without a JSON sidecar is an attenuation image (1/mm) on the
    bundle's grid, to simulate measurements from (and kept as the reference); each ``.npz``/``.nii(.gz)`` with a
    ``<stem>.json`` geometry sidecar is measured projections, whose geometry must equal the bundle's. With no
    ``dataset_dir`` (empty or ``None``), the built-in example: a modified Shepp-Logan phantom scaled to
    ``mu_scale`` /mm.

    Raises:
        FileNotFoundError: ``dataset_dir`` given but missing.
        ValueError: an image of the wrong shape, projections acquired with another geometry, two inputs with one
            name (``a.nii.gz`` and ``a.npz``: their outputs would collide), or a folder with no usable file.
    """
    spacing = list(geometry.pixel_size)
    if not dataset_dir:
        case = _example(geometry.image_shape, geometry.pixel_size, mu_scale)
        return [{**case, "spacing": spacing}]
    root = Path(dataset_dir)
    if root.is_file():
        raise ValueError(f"dataset_dir {root} is a file; give the folder that holds the cases (NIfTI images, or projections with their JSON sidecars).")
    if not root.is_dir():
        raise FileNotFoundError(f"dataset_dir does not exist: {root}")
    _refuse_colliding_names(root)
    cases = []
    for path in sorted(root.iterdir()):
        name = path.name
        stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else path.stem
        if not (name.endswith((".nii", ".nii.gz", ".npz"))):
            continue
        if (root / f"{stem}.json").is_file():
            proj, scan_geometry, _ = load_projections(path)
            if not _same_geometry(scan_geometry, geometry):
                raise ValueError(f"{name} was acquired with a geometry different from the bundle's ({type(geometry).__name__} in the config); "
                                 "reconstruct it with a config whose geometry matches its sidecar.")
            cases.append({"name": stem, "projections": proj[None], "spacing": spacing})
        elif name.endswith(".npz"):
            raise ValueError(f"{name} has no JSON geometry sidecar ({stem}.json).")
        else:
            image, _ = load_nifti(path)
            if tuple(image.shape) != tuple(geometry.image_shape):
                raise ValueError(f"image {name} has shape {image.shape}; the bundle's grid is {tuple(geometry.image_shape)}.")
            tensor = torch.from_numpy(image)[None]
            cases.append({"name": stem, "image": tensor, "reference": tensor.clone(), "spacing": spacing})
    if not cases:
        raise ValueError(f"no .nii, .nii.gz or .npz file in dataset_dir {root}.")
    return cases


def _refuse_colliding_names(root: Path) -> None:
    """Outputs (and sidecars) are named after the stem, so two inputs with one stem (``a.nii.gz`` and ``a.npz``)
    would share a sidecar and overwrite each other's results: refuse them, naming the files."""
    seen: dict[str, list[str]] = {}
    for path in sorted(root.iterdir()):
        name = path.name
        if name.endswith((".nii", ".nii.gz", ".npz")):
            stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else path.stem
            seen.setdefault(stem, []).append(name)
    clashes = {stem: files for stem, files in seen.items() if len(files) > 1}
    if clashes:
        listed = "; ".join(" and ".join(files) for files in clashes.values())
        raise ValueError(f"dataset_dir {root} holds inputs with the same name, whose outputs would overwrite each other: {listed}. Rename one of each.")
