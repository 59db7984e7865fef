"""Case lists for the CT/CBCT reconstruction bundles: the user's files at their own geometry, or a built-in example.

Each case is a dict for a MONAI ``Dataset``:

- ``name``: the file's name without its extension (outputs are named after it);
- ``image`` and ``reference`` (an attenuation image to simulate a scan from), or ``projections`` (measured);
- ``geometry``: the acquisition geometry to simulate and reconstruct with, as JSON (``geometry_to_dict``), so
  that it passes through MONAI's collation as a string;
- ``spacing`` and ``affine``: the output grid's voxel size (mm, array order) and NIfTI affine (the input's, so
  the output lies on the user's grid with the user's orientation);
- ``input``: ``"image"`` (a scan was simulated from it) or ``"projections"`` (measured data were reconstructed);
- ``resample_to`` (only with ``resample``): the user's grid as JSON, for an image resampled to a network's
  training grid, whose reconstruction is resampled back (``monai_ext.transforms.ResampleToGridd``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from monai_ext.tomo.adaptation import describe_geometry, describe_grid, geometry_for_grid, same_geometry
from .files import geometry_to_dict, load_nifti, load_projections

__all__ = ["tomography_cases", "input_files", "cases_on_output_grid"]

_EXTENSIONS = (".nii.gz", ".nii", ".npz")


def _stem(path: Path) -> str:
    name = path.name
    for ext in _EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _example(geometry, mu_scale: float) -> dict:
    from monai_ext.phantoms import shepp_logan

    fov = min(n * d for n, d in zip(geometry.image_shape[-2:], geometry.pixel_size[-2:]))
    phantom = shepp_logan(geometry.ndim, fov, scale=mu_scale)
    image = phantom.rasterize(tuple(geometry.image_shape), geometry.pixel_size, supersample=4)[None]
    return {"name": "shepp_logan_example", "image": image, "reference": image.clone()}


def input_files(dataset_dir: str | None, list_key: str = "test") -> list[Path]:
    """The input files named by ``dataset_dir``: a folder's ``.nii``/``.nii.gz``/``.npz`` files (sorted), or the
    ``image`` entries of a MONAI datalist JSON (``{"test": [{"image": "scan.nii.gz"}, ...]}``, paths relative to
    the JSON file, as ``monai.data.load_decathlon_datalist`` reads them).

    Raises:
        FileNotFoundError: ``dataset_dir`` or a file the datalist names does not exist.
        ValueError: ``dataset_dir`` is a file other than a datalist JSON, a datalist without ``list_key`` or whose
            items lack ``image``, a folder with no input file, or two inputs with one name.
    """
    root = Path(dataset_dir)
    if root.is_file():
        if root.suffix != ".json":
            raise ValueError(f"dataset_dir {root} is a file; give the folder that holds the cases (NIfTI images, or projections with "
                             "their JSON sidecars) or a MONAI datalist JSON ({\"test\": [{\"image\": ...}, ...]}).")
        files = _datalist_files(root, list_key)
    elif not root.is_dir():
        raise FileNotFoundError(f"dataset_dir does not exist: {root}")
    else:
        files = [p for p in sorted(root.iterdir()) if p.name.endswith(_EXTENSIONS)]
        if not files:
            raise ValueError(f"no .nii, .nii.gz or .npz file in dataset_dir {root}.")
    _refuse_colliding_names(files, root)
    return files


def _datalist_files(path: Path, list_key: str) -> list[Path]:
    from monai.data import load_decathlon_datalist

    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"datalist {path} is not valid JSON: {err}") from err
    if not isinstance(spec, dict) or list_key not in spec:
        keys = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
        raise ValueError(f"datalist {path} has no {list_key!r} list (it has {keys}); expected {{\"{list_key}\": [{{\"image\": ...}}, ...]}}.")
    items = spec[list_key]
    if not isinstance(items, list) or not items or not all(isinstance(i, (dict, str)) for i in items):
        raise ValueError(f"datalist {path}: {list_key!r} must be a non-empty list of {{\"image\": path}} items.")
    missing = [i for i, item in enumerate(items) if isinstance(item, dict) and "image" not in item]
    if missing:
        raise ValueError(f"datalist {path}: item(s) {missing} of {list_key!r} lack the 'image' key.")
    files = [Path(item["image"]) for item in load_decathlon_datalist(str(path), False, list_key, str(path.parent))]
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"datalist {path} names {file}, which does not exist.")
        if not file.name.endswith(_EXTENSIONS):
            raise ValueError(f"datalist {path} names {file.name}; expected .nii, .nii.gz or .npz files.")
    return files


def _refuse_colliding_names(files: list[Path], root: Path) -> None:
    """Outputs (and sidecars) are named after the stem, so two inputs with one stem (``a.nii.gz`` and ``a.npz``)
    would share a sidecar and overwrite each other's results: refuse them, naming the files."""
    seen: dict[str, list[str]] = {}
    for path in files:
        seen.setdefault(_stem(path), []).append(path.name)
    clashes = [files for files in seen.values() if len(files) > 1]
    if clashes:
        listed = "; ".join(" and ".join(files) for files in clashes)
        raise ValueError(f"dataset_dir {root} holds inputs with the same name, whose outputs would overwrite each other: {listed}. Rename one of each.")


def _grid(path: Path, affine: np.ndarray, shape: tuple[int, ...]) -> list[float]:
    """Voxel size in mm (array order) from a NIfTI affine (columns in (x, y, z) order)."""
    sizes = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)[: len(shape)][::-1]
    if not np.all(np.isfinite(sizes)) or not np.all(sizes > 0):
        raise ValueError(f"{path.name}: its NIfTI affine gives voxel sizes {sizes.tolist()} mm; expected positive numbers.")
    return [float(v) for v in sizes]


def _image_case(path: Path, geometry, fixed: bool, resample: bool, network: str) -> dict:
    image, affine = load_nifti(path)
    if image.ndim == geometry.ndim + 1 and image.shape[0] == 1:
        image = image[0]  # a single slice stored as (x, y, 1)
    if image.ndim != geometry.ndim:
        raise ValueError(f"image {path.name} has shape {image.shape}; this bundle reconstructs {geometry.ndim}D images.")
    spacing = _grid(path, affine, image.shape)
    if float(image.min()) < 0:
        raise ValueError(f"image {path.name} holds negative attenuation (min {float(image.min()):.3g} /mm); expected mu >= 0 in 1/mm "
                         "(convert Hounsfield units first: mu = mu_water (1 + HU / 1000)).")
    tensor = torch.from_numpy(image)[None]
    case = {"name": _stem(path), "reference": tensor.clone(), "spacing": spacing, "affine": torch.as_tensor(affine, dtype=torch.float64), "input": "image"}
    own = geometry_for_grid(geometry, image.shape, spacing)
    if not fixed or same_geometry(own, geometry):
        return {**case, "image": tensor, "geometry": json.dumps(geometry_to_dict(own))}
    if not resample:
        raise ValueError(f"image {path.name} is {describe_grid(image.shape, spacing)}, but the {network} network was trained on "
                         f"{describe_grid(geometry.image_shape, geometry.pixel_size)}: run with --resample true to resample it to the "
                         "training grid and the result back, or use a method that works at any geometry.")
    from monai_ext.transforms.grids import resample_to_grid

    resampled = resample_to_grid(tensor, spacing, geometry.image_shape, geometry.pixel_size).clamp_min(0)
    target = json.dumps({"shape": list(image.shape), "spacing": spacing})
    return {**case, "image": resampled, "geometry": json.dumps(geometry_to_dict(geometry)), "resample_to": target}


def _projection_case(path: Path, geometry, fixed: bool, network: str) -> dict:
    projections, scan_geometry, _ = load_projections(path)
    if type(scan_geometry) is not type(geometry):
        raise ValueError(f"{path.name} holds a {describe_geometry(scan_geometry)} scan; this bundle reconstructs {type(geometry).__name__} scans.")
    if fixed and not same_geometry(scan_geometry, geometry):
        raise ValueError(f"{path.name} was acquired with a geometry different from the bundle's: its sidecar gives {describe_geometry(scan_geometry)}, "
                         f"the {network} network was trained with {describe_geometry(geometry)}. Measured projections cannot be resampled to "
                         "another acquisition; reconstruct them with a method that works at any geometry, or retrain at theirs.")
    spacing = list(scan_geometry.pixel_size)
    return {"name": _stem(path), "projections": projections[None], "spacing": spacing, "affine": _centred_affine(spacing, scan_geometry.image_shape),
            "geometry": json.dumps(geometry_to_dict(scan_geometry)), "input": "projections"}


def _centred_affine(spacing, shape) -> torch.Tensor:
    """A NIfTI affine (x, y, z columns) with voxel size ``spacing`` (array order) centred on the rotation axis."""
    sizes = list(spacing)[::-1] + [1.0] * (3 - len(spacing))
    counts = list(shape)[::-1] + [1] * (3 - len(shape))
    affine = np.diag([*sizes, 1.0])
    affine[:3, 3] = [-(n - 1) / 2 * d for n, d in zip(counts, sizes)]
    return torch.as_tensor(affine, dtype=torch.float64)


def tomography_cases(dataset_dir: str | None, geometry, mu_scale: float = 0.02, *, fixed_geometry: bool = True,
                     resample: bool = False, network: str = "bundle's") -> list[dict]:
    """Cases for a CT/CBCT reconstruction bundle, read and checked before any computation.

    ``dataset_dir`` is a folder or a MONAI datalist JSON (see :func:`input_files`). Each ``.nii``/``.nii.gz``
    without a JSON sidecar is an attenuation image (1/mm) to simulate a scan from (kept as the reference); its
    grid (shape and the NIfTI affine's voxel size) is the grid it is reconstructed on. Each ``.npz``/``.nii(.gz)``
    with a ``<stem>.json`` sidecar is measured projections with the geometry the sidecar gives. With no
    ``dataset_dir`` (empty or ``None``), the built-in example: a modified Shepp-Logan phantom scaled to
    ``mu_scale`` /mm, on the bundle's grid.

    Args:
        dataset_dir: the user's cases, or empty for the example.
        geometry: the bundle's geometry (from its config).
        mu_scale: attenuation scale of the example phantom.
        fixed_geometry: the method reconstructs only at ``geometry`` (a network trained there). ``False``: the
            method works at any geometry, and each image gets :func:`geometry_for_grid` on its own grid.
        resample: with ``fixed_geometry``, an image on another grid is resampled to the training grid (MONAI's
            ``SpatialResample``), and its result is to be resampled back (``resample_to``).
        network: the method's name, for messages.

    Raises:
        FileNotFoundError: ``dataset_dir`` or a named file is missing.
        ValueError: a file that cannot be read or is not what it should be (named), negative attenuation, an image
            on another grid than a fixed-geometry method's (without ``resample``), projections of another
            geometry than a fixed-geometry method's, or two inputs with one name.
    """
    if not dataset_dir:
        case = _example(geometry, mu_scale)
        return [{**case, "spacing": list(geometry.pixel_size), "affine": _centred_affine(geometry.pixel_size, geometry.image_shape),
                 "geometry": json.dumps(geometry_to_dict(geometry)), "input": "image"}]
    cases = []
    for path in input_files(dataset_dir):
        if path.with_name(f"{_stem(path)}.json").is_file():
            cases.append(_projection_case(path, geometry, fixed_geometry, network))
        elif path.name.endswith(".npz"):
            raise ValueError(f"{path.name} has no JSON geometry sidecar ({_stem(path)}.json).")
        else:
            cases.append(_image_case(path, geometry, fixed_geometry, resample, network))
    return cases


def cases_on_output_grid(cases: list[dict], geometry, output_shape, output_spacing) -> list[dict]:
    """``cases`` to be written on an output grid of their reconstruction (a neural field sampled at any grid).

    With no ``output_shape`` (or the bundle's own), each case keeps its own grid (``spacing`` defaults to
    ``output_spacing``). With another ``output_shape``, every case must be at the bundle's ``geometry``: its
    ``spacing`` becomes ``output_spacing`` and its input affine is dropped (the output lies on another grid).

    Raises:
        ValueError: an output grid of its own asked for a case at another geometry than the bundle's.
    """
    spacing = [float(v) for v in output_spacing]
    if output_shape is None or [int(n) for n in output_shape] == list(geometry.image_shape):
        return [{"spacing": spacing, **case} for case in cases]
    from .files import geometry_from_dict

    bundle = json.dumps(geometry_to_dict(geometry))
    for case in cases:
        spec = case.get("geometry")
        if spec and spec != bundle and not same_geometry(geometry_from_dict(json.loads(spec)), geometry):
            raise ValueError(f"output_shape {list(output_shape)} is a grid for scans at the bundle's geometry, and {case.get('name')} is at "
                             f"{describe_geometry(geometry_from_dict(json.loads(spec)))}: leave output_shape unset to reconstruct it on its own grid.")
    return [{**{k: v for k, v in case.items() if k != "affine"}, "spacing": spacing} for case in cases]
