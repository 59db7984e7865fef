"""A user's training data for the CT/CBCT bundles: cases read, checked and described before any training starts.

``dataset_dir`` is one of

- a MONAI datalist JSON with ``training`` and ``validation`` lists (``monai.data.load_decathlon_datalist``; paths
  relative to the JSON file). An item is ``{"image": "a.nii.gz"}`` (an attenuation image in 1/mm to simulate a
  scan from; it is also the reference) or ``{"projections": "a.npz", "reference": "a_ref.nii.gz"}`` (measured
  projections with their JSON geometry sidecar, and the reference image to learn from);
- a folder with ``training/`` and ``validation/`` subfolders, each holding cases;
- a folder of cases, split by name: the last ``validation_fraction`` of them (at least one) validate.

In a folder, a ``.nii``/``.nii.gz`` without a sidecar is an image case; a ``.npz``/``.nii(.gz)`` with a
``<stem>.json`` sidecar is a measured case whose reference is ``<stem>_reference.nii.gz`` (or ``.nii``).

The training geometry is the ``geometry_file``'s (a JSON with a ``geometry`` field, the schema of the projection
sidecars and of a trained model's record), else the measured cases' sidecar geometry, else the bundle's geometry
carried over to the images' grid (``monai_ext.tomo.geometry_for_grid``: the bundle's views on the user's grid).
Every case must be on that geometry's grid: one shape and one spacing for all.

Items hold file paths, not arrays, so the data set is not copied into memory beyond MONAI's cache;
``monai_ext.transforms.LoadTrainingCased`` reads them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from monai_ext.tomo.adaptation import describe_geometry, describe_grid, geometry_for_grid, same_geometry
from .datalists import _EXTENSIONS, _grid, _stem
from .files import geometry_from_dict, load_nifti, load_projections

__all__ = ["TrainingSet", "training_set", "read_geometry_file", "training_geometry", "check_geometry_kind"]

_REFERENCE_SUFFIX = "_reference"


@dataclasses.dataclass(frozen=True)
class TrainingSet:
    """Checked training and validation cases at one geometry.

    Args:
        training: items ``{"name", "reference": path}`` (image cases) or ``{"name", "projections": path,
            "reference": path}`` (measured cases).
        validation: the same, for validation.
        geometry: the acquisition geometry every case is at.
        source: where the cases came from (the ``dataset_dir``).
        spacing: voxel size in mm, array order.
    """

    training: list[dict]
    validation: list[dict]
    geometry: object
    source: str
    spacing: tuple[float, ...]

    def summary(self) -> dict:
        """What the model learns from, for its training record."""
        def count(items, measured):
            return sum(("projections" in item) == measured for item in items)

        return {
            "source": self.source,
            "n_training": len(self.training),
            "n_validation": len(self.validation),
            "measured_cases": count(self.training, True) + count(self.validation, True),
            "simulated_cases": count(self.training, False) + count(self.validation, False),
            "shape": list(self.geometry.image_shape),
            "spacing_mm": list(self.spacing),
        }


def read_geometry_file(path: str | Path):
    """The geometry in a JSON file with a ``geometry`` field (a projection sidecar, a training record) or a bare
    geometry description (``monai_ext.io.geometry_to_dict``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, or not a valid geometry (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"geometry_file does not exist: {path}")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"geometry_file {path} is not valid JSON: {err}") from err
    if isinstance(spec, dict) and isinstance(spec.get("geometry"), dict):
        spec = spec["geometry"]
    if not isinstance(spec, dict):
        raise ValueError(f"geometry_file {path} holds a {type(spec).__name__}; expected a geometry object (a 'geometry' field as in a projection sidecar).")
    try:
        return geometry_from_dict(spec)
    except ValueError as err:
        raise ValueError(f"geometry_file {path}: {err}") from err


def training_geometry(dataset: TrainingSet | None, geometry_file: str | None, geometry):
    """The geometry a training run works at: the data set's (which already honours ``geometry_file``), else the
    ``geometry_file``'s (the built-in phantoms simulated at it), else the bundle's ``geometry``."""
    if dataset is not None:
        return dataset.geometry
    if geometry_file:
        return check_geometry_kind(read_geometry_file(geometry_file), geometry, f"geometry_file {geometry_file}")
    return geometry


def check_geometry_kind(found, geometry, where: str):
    """``found``, if it is the same kind of scan (parallel, fan, cone beam) as ``geometry``; else a ``ValueError``
    naming ``where`` it came from."""
    if type(found) is not type(geometry):
        raise ValueError(f"{where} describes a {describe_geometry(found)} scan; this bundle works on {type(geometry).__name__} scans.")
    return found


def _folder_cases(folder: Path) -> list[dict]:
    items = []
    for path in sorted(folder.iterdir()):
        if not path.name.endswith(_EXTENSIONS) or _stem(path).endswith(_REFERENCE_SUFFIX):
            continue
        stem = _stem(path)
        if path.with_name(f"{stem}.json").is_file():
            refs = [path.with_name(stem + _REFERENCE_SUFFIX + ext) for ext in (".nii.gz", ".nii")]
            found = [r for r in refs if r.is_file()]
            if not found:
                raise FileNotFoundError(f"measured case {path} has no reference image: expected {refs[0].name} beside it "
                                        "(training needs the image each scan should reconstruct to).")
            items.append({"name": stem, "projections": str(path), "reference": str(found[0])})
        elif path.name.endswith(".npz"):
            raise ValueError(f"{path} has no JSON geometry sidecar ({stem}.json).")
        else:
            items.append({"name": stem, "reference": str(path)})
    return items


def _datalist_cases(path: Path) -> tuple[list[dict], list[dict]]:
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"datalist {path} is not valid JSON: {err}") from err
    lists = []
    for key in ("training", "validation"):
        if not isinstance(spec, dict) or key not in spec:
            raise ValueError(f"datalist {path} has no {key!r} list; expected {{\"training\": [...], \"validation\": [...]}} with "
                             "items {\"image\": ...} or {\"projections\": ..., \"reference\": ...}.")
        if not isinstance(spec[key], list):
            raise ValueError(f"datalist {path}: {key!r} must be a list, got {type(spec[key]).__name__}.")
        items = []
        for i, item in enumerate(spec[key]):
            if not isinstance(item, dict) or not ({"image", "projections"} & set(item)):
                raise ValueError(f"datalist {path}: {key}[{i}] must be {{\"image\": path}} or {{\"projections\": path, \"reference\": path}}, got {item!r}.")
            if "projections" in item and "reference" not in item:
                raise ValueError(f"datalist {path}: {key}[{i}] ({item['projections']}) has projections but no 'reference' image to learn from.")
            resolved = {k: str((path.parent / v) if not Path(v).is_absolute() else Path(v)) for k, v in item.items() if k in ("image", "projections", "reference")}
            for k, file in resolved.items():
                if not Path(file).is_file():
                    raise FileNotFoundError(f"datalist {path}: {key}[{i}] names {k} {file}, which does not exist.")
            source = resolved.get("projections", resolved.get("image"))
            case = {"name": _stem(Path(source)), "reference": resolved.get("reference", resolved.get("image"))}
            if "projections" in resolved:
                case["projections"] = resolved["projections"]
            items.append(case)
        lists.append(items)
    return lists[0], lists[1]


def _split(items: list[dict], fraction: float, root: Path) -> tuple[list[dict], list[dict]]:
    if not 0 < fraction < 1:
        raise ValueError(f"validation_fraction must lie in (0, 1), got {fraction}.")
    n_val = max(1, math.ceil(fraction * len(items)))
    if len(items) - n_val < 1:
        raise ValueError(f"dataset_dir {root} holds {len(items)} case(s): too few to keep {n_val} for validation and train on the rest.")
    return items[:-n_val], items[-n_val:]


def _cases(root: Path, fraction: float) -> tuple[list[dict], list[dict]]:
    if root.is_file():
        if root.suffix != ".json":
            raise ValueError(f"dataset_dir {root} is a file; give a folder of cases or a MONAI datalist JSON with 'training' and 'validation' lists.")
        return _datalist_cases(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset_dir does not exist: {root}")
    if (root / "training").is_dir() or (root / "validation").is_dir():
        for sub in ("training", "validation"):
            if not (root / sub).is_dir():
                raise ValueError(f"dataset_dir {root} has a training/ or validation/ subfolder but not {sub}/: give both, or a flat folder of cases.")
        return _folder_cases(root / "training"), _folder_cases(root / "validation")
    return _split(_folder_cases(root), fraction, root)


def _read_case(item: dict) -> tuple[tuple[int, ...], list[float], object | None]:
    """Read a case once to check it; returns its reference's shape and spacing, and its projections' geometry."""
    ref_path = Path(item["reference"])
    image, affine = load_nifti(ref_path)  # names the file if it cannot be read or holds NaN/inf
    if float(image.min()) < 0:
        raise ValueError(f"reference image {ref_path} holds negative attenuation (min {float(image.min()):.3g} /mm); expected mu >= 0 in 1/mm "
                         "(convert Hounsfield units first: mu = mu_water (1 + HU / 1000)).")
    shape = tuple(image.shape)
    spacing = _grid(ref_path, affine, shape)
    scan_geometry = None
    if "projections" in item:
        _, scan_geometry, _ = load_projections(item["projections"])  # checks shape against its sidecar and finiteness
    return shape, spacing, scan_geometry


def _squeeze_slice(shape: tuple[int, ...], spacing: list[float], ndim: int) -> tuple[tuple[int, ...], list[float]]:
    if len(shape) == ndim + 1 and shape[0] == 1:  # a single slice stored as (x, y, 1)
        return shape[1:], spacing[1:]
    return shape, spacing


def training_set(dataset_dir: str, geometry, geometry_file: str | None = "", validation_fraction: float = 0.2) -> TrainingSet:
    """Read and check a user's training data (see the module's docstring for the layouts).

    Every file is read once here, so that a bad case stops the run before the first step.

    Args:
        dataset_dir: a folder of cases, a folder with ``training/`` and ``validation/``, or a datalist JSON.
        geometry: the bundle's geometry (its kind, and its views when the images set the grid).
        geometry_file: a JSON geometry to train at (see :func:`read_geometry_file`), or empty.
        validation_fraction: share of a flat folder's cases (the last by name) kept for validation.

    Raises:
        FileNotFoundError: ``dataset_dir``, ``geometry_file``, a named file or a reference is missing.
        ValueError: an empty training or validation list, a file that cannot be read, NaN or negative
            attenuation in a case, cases of different shapes, a case whose spacing or scan geometry disagrees
            with the training geometry (each names the file).
    """
    root = Path(dataset_dir)
    training, validation = _cases(root, float(validation_fraction))
    for name, items in (("training", training), ("validation", validation)):
        if not items:
            raise ValueError(f"dataset_dir {root}: the {name} list is empty; training needs at least one {name} case.")
    chosen = check_geometry_kind(read_geometry_file(geometry_file), geometry, f"geometry_file {geometry_file}") if geometry_file else None
    first = None
    for item in training + validation:
        shape, spacing, scan_geometry = _read_case(item)
        shape, spacing = _squeeze_slice(shape, spacing, geometry.ndim)
        where = item.get("projections", item["reference"])
        if len(shape) != geometry.ndim:
            raise ValueError(f"reference image {item['reference']} has shape {shape}; this bundle trains on {geometry.ndim}D images.")
        if scan_geometry is not None:
            check_geometry_kind(scan_geometry, geometry, f"{where}'s sidecar")
            if chosen is None:
                chosen = scan_geometry
            elif not same_geometry(scan_geometry, chosen):
                raise ValueError(f"{where} was acquired at {describe_geometry(scan_geometry)}, but the training geometry is "
                                 f"{describe_geometry(chosen)}: every case of a training set must share one geometry.")
        if first is None:
            first = (where, shape, spacing)
            if chosen is None:
                chosen = geometry_for_grid(geometry, shape, spacing)
        if shape != tuple(chosen.image_shape):
            origin = f"the first case ({first[0]}) is {describe_grid(first[1], first[2])}" if first[0] != where else ""
            raise ValueError(f"{item['reference']} is {describe_grid(shape, spacing)}, but the training geometry's grid is "
                             f"{describe_grid(chosen.image_shape, chosen.pixel_size)}{'; ' + origin if origin else ''}: all cases "
                             "must have one shape (resample them to one grid first).")
        if not np.allclose(spacing, chosen.pixel_size, rtol=1e-3):
            raise ValueError(f"{item['reference']} has a voxel size of {describe_grid(shape, spacing)}, which disagrees with the training "
                             f"geometry's {describe_grid(chosen.image_shape, chosen.pixel_size)} (from "
                             f"{'geometry_file ' + str(geometry_file) if geometry_file else 'the first case'}).")
    return TrainingSet(training, validation, chosen, str(root), tuple(float(v) for v in chosen.pixel_size))

