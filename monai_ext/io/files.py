"""Reading and writing reconstruction inputs and outputs: NIfTI volumes, PNG previews, projection files.

Every writer is atomic: it writes a temporary file in the destination folder and renames it over the target, so
an interrupted run never leaves a half-written file and never destroys a file that was there before.

Projection data are stored as ``.npz`` (array ``projections``) or NIfTI, each with a JSON sidecar
(``<stem>.json``) that holds the acquisition geometry (``geometry_to_dict``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from monai_ext.tomo.geometry import ConeBeamGeometry, FanBeamGeometry, ParallelBeamGeometry
from ..deprecation import renamed_keyword

__all__ = [
    "prepare_output_dir",
    "atomic_path",
    "save_nifti",
    "load_nifti",
    "save_png",
    "save_figure",
    "save_json",
    "save_run_summary",
    "geometry_to_dict",
    "geometry_from_dict",
    "save_projections",
    "load_projections",
]

_GEOMETRIES = {cls.__name__: cls for cls in (ParallelBeamGeometry, FanBeamGeometry, ConeBeamGeometry)}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600 files: give the result the permissions a plain open() would (0666 less the umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def prepare_output_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (with its parents) and check that files can be written in it, before any computation: a
    run that cannot write its results fails at once, not after the fit.

    Raises:
        ValueError: ``path`` is an existing file, cannot be created, or is not writable (the message names it).
    """
    import tempfile

    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"output_dir {folder} is a file, not a folder: give a folder for the outputs.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise ValueError(f"output_dir {folder} cannot be written: {err.strerror or err}.") from err
    return folder


def _numpy(data) -> np.ndarray:
    if isinstance(data, torch.Tensor):
        return data.detach().cpu().numpy()
    return np.asarray(data)


def save_nifti(data, path: str | os.PathLike, spacing=None, affine=None, time_step: float | None = None) -> Path:
    """Write ``data`` (array order ``(z, y, x)``, ``(y, x)`` or with a trailing time axis) as NIfTI, atomically.

    NIfTI stores ``(x, y, z[, t])``, so spatial axes are reversed on the way out (and back in ``load_nifti``).

    Args:
        data: array or tensor; 2D ``(y, x)``, 3D ``(z, y, x)``; with ``time_step`` the first axis is time.
        path: destination (``.nii`` or ``.nii.gz``).
        spacing: voxel size in mm, array order (ignored when ``affine`` is given).
        affine: 4x4 voxel-to-world matrix for the NIfTI (x, y, z) axes.
        time_step: seconds between frames; sets the 4th pixdim and the time units.
    """
    import nibabel as nib

    arr = _numpy(data).astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"refusing to write {path}: the data contain non-finite values.")
    n_spatial = arr.ndim - (1 if time_step is not None else 0)
    if n_spatial not in (2, 3):
        raise ValueError(f"save_nifti expects 2 or 3 spatial axes, got array of shape {arr.shape}.")
    if time_step is not None:
        spatial = np.moveaxis(arr, 0, -1)  # (..., t)
        out = np.transpose(spatial, tuple(range(n_spatial - 1, -1, -1)) + (n_spatial,))
        if n_spatial == 2:  # NIfTI keeps time on the 4th axis: (x, y, 1, t)
            out = out[:, :, None, :]
    else:
        out = np.transpose(arr, tuple(range(n_spatial - 1, -1, -1)))
    if affine is None:
        sp = np.broadcast_to(np.asarray(spacing if spacing is not None else 1.0, float), (n_spatial,))[::-1]
        affine = np.diag([*sp, *([1.0] * (3 - n_spatial)), 1.0])
    img = nib.Nifti1Image(out, np.asarray(affine, float))
    if time_step is not None:
        zooms = list(img.header.get_zooms())
        zooms[-1] = float(time_step)
        img.header.set_zooms(zooms)
        img.header.set_xyzt_units("mm", "sec")
    else:
        img.header.set_xyzt_units("mm")
    suffix = ".nii.gz" if str(path).endswith(".nii.gz") else ".nii"
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def load_nifti(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file; returns ``(array in (z, y, x) / (y, x) order, or (t, z, y, x), affine)``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable NIfTI (corrupt or truncated) or holds non-finite values.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NIfTI file not found: {path}")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # nibabel raises several types for corrupt files
        raise ValueError(f"cannot read NIfTI file {path}: {err}") from err
    if not np.all(np.isfinite(data)):
        raise ValueError(f"NIfTI file {path} contains non-finite values.")
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 4:  # (x, y, z, t) -> (t, z, y, x), or (t, y, x) for a single slice
        series = np.transpose(data, (3, 2, 1, 0))
        return np.ascontiguousarray(series[:, 0] if series.shape[1] == 1 else series), img.affine
    if data.ndim > 4:
        raise ValueError(f"NIfTI file {path} has {data.ndim} dimensions; expected 2 to 4.")
    return np.ascontiguousarray(np.transpose(data, tuple(range(data.ndim - 1, -1, -1)))), img.affine


def save_figure(fig, path: str | os.PathLike, dpi: int = 110, **savefig_kwargs) -> Path:
    """Write a matplotlib figure as PNG, atomically, and close it; returns the path."""
    import matplotlib.pyplot as plt

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", **savefig_kwargs)
    plt.close(fig)
    return Path(path)


def save_png(image, path: str | os.PathLike, title: str | None = None, cmap: str = "gray", vmin=None, vmax=None, aspect=None) -> Path:
    """Write a 2D image, or a list of ``(title, image)`` panels side by side, as PNG, atomically.

    ``aspect``: height / width of a pixel (``dy / dx``), so that anisotropic pixels show their true proportions.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = image if isinstance(image, (list, tuple)) else [(title or "", image)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (name, panel) in zip(axes[0], panels):
        arr = _numpy(panel)
        shown = ax.imshow(arr, cmap=cmap, vmin=vmin, vmax=vmax, aspect=aspect)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def save_json(obj, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON, atomically (4 spaces, ASCII: as the Model Zoo's ``pretty-format-json`` hook
    wants the JSON files a bundle ships, such as tuned weights and training records)."""
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=4, ensure_ascii=True, default=float) + "\n")
    return Path(path)


def save_run_summary(summary: dict, output_dir: str | os.PathLike) -> Path:
    """Write a run's ``summary`` as ``output_dir/summary.json`` (the latest run) and ``summary_<method>.json``.

    Runs of different methods into one ``output_dir`` write different output files (named after the method), but
    share ``summary.json``: the per-method copy keeps each run's summary, and a ``summary.json`` left by a run of
    another bundle or method (written before per-method copies existed) is kept as its ``summary_<method>.json``
    with a WARNING, never silently replaced. Returns the path of ``summary.json``.
    """
    import logging
    import re

    folder = Path(output_dir)
    current = folder / "summary.json"

    def _own_name(record: dict) -> str:
        return "summary_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", str(record.get("method") or record.get("bundle") or "run")) + ".json"

    if current.is_file():
        try:
            previous = json.loads(current.read_text())
        except (OSError, ValueError):
            previous = None
        if isinstance(previous, dict) and (previous.get("bundle"), previous.get("method")) != (summary.get("bundle"), summary.get("method")):
            kept = folder / _own_name(previous)
            if not kept.exists():
                save_json(previous, kept)
            logging.getLogger(str(summary.get("bundle") or __name__)).warning(
                f"{current} held the summary of a {previous.get('method') or previous.get('bundle')} run; this "
                f"{summary.get('method')} run replaces it there, and the earlier one stays in {kept.name}.")
    save_json(summary, folder / _own_name(summary))
    return save_json(summary, current)


@renamed_keyword("geom", "geometry")
def geometry_to_dict(geometry) -> dict:
    """A JSON-ready description of a ``monai_ext.tomo`` geometry (``type`` plus its fields)."""
    if type(geometry).__name__ not in _GEOMETRIES:
        raise TypeError(f"not a monai_ext.tomo geometry: {type(geometry).__name__}.")
    fields = {f.name: getattr(geometry, f.name) for f in dataclasses.fields(geometry)}
    return {"type": type(geometry).__name__, **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}}


def geometry_from_dict(spec: dict):
    """Rebuild a geometry from :func:`geometry_to_dict` output.

    Raises:
        ValueError: unknown ``type``, a missing field or one that does not hold numbers (named in the message), or
            values the geometry refuses.
    """
    if "type" not in spec:
        raise ValueError(f"geometry description lacks the 'type' field (one of {sorted(_GEOMETRIES)}).")
    cls = _GEOMETRIES.get(spec["type"])
    if cls is None:
        raise ValueError(f"unknown geometry type {spec['type']!r}; expected one of {sorted(_GEOMETRIES)}.")
    required = [f.name for f in dataclasses.fields(cls)]
    missing = [name for name in required if name not in spec]
    if missing:
        raise ValueError(f"geometry description for {spec['type']} lacks field(s): {', '.join(missing)}.")
    for name in required:
        values = spec[name] if isinstance(spec[name], (list, tuple)) else [spec[name]]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ValueError(f"geometry field {name!r} of {spec['type']} must hold numbers, got {spec[name]!r} (numbers as JSON numbers, not strings).")
    try:
        return cls(**{name: spec[name] for name in required})
    except (TypeError, ValueError) as err:
        raise ValueError(f"invalid geometry description for {spec['type']}: {err}") from err


def _sidecar(path: Path) -> Path:
    name = path.name
    for ext in (".nii.gz", ".nii", ".npz"):
        if name.endswith(ext):
            return path.with_name(name[: -len(ext)] + ".json")
    raise ValueError(f"projection files must end in .npz, .nii or .nii.gz, got {path.name}.")


def projection_sidecar(path: str | os.PathLike) -> Path | None:
    """The JSON geometry sidecar (``<stem>.json``) beside a projections file (``.npz``, ``.nii``, ``.nii.gz``), or
    ``None`` when the file has another extension or no sidecar (an image, not projections)."""
    path = Path(path)
    if not path.name.endswith((".nii.gz", ".nii", ".npz")):
        return None
    sidecar = _sidecar(path)
    return sidecar if sidecar.is_file() else None


@renamed_keyword("geom", "geometry")
def save_projections(projections, geometry, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write projections ``(views, [rows,] cols)`` with a JSON geometry sidecar, both atomically."""
    path = Path(path)
    arr = _numpy(projections).astype(np.float32)
    sidecar = _sidecar(path)
    if path.name.endswith(".npz"):
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, projections=arr)
    else:
        save_nifti(arr, path)
    save_json({"geometry": geometry_to_dict(geometry), **(extra or {})}, sidecar)
    return path


def load_projections(path: str | os.PathLike) -> tuple[torch.Tensor, object, dict]:
    """Read projections and their geometry; returns ``(tensor (views, [rows,] cols), geometry, sidecar dict)``.

    Raises:
        FileNotFoundError: the data file or its JSON sidecar is missing.
        ValueError: corrupt file, a sidecar without a valid geometry, or data whose shape does not match it.
    """
    path = Path(path)
    sidecar = _sidecar(path)
    if not path.is_file():
        raise FileNotFoundError(f"projection file not found: {path}")
    if not sidecar.is_file():
        raise FileNotFoundError(f"geometry sidecar not found: {sidecar} (expected beside {path.name})")
    try:
        meta = json.loads(sidecar.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"geometry sidecar {sidecar} is not valid JSON: {err}") from err
    if "geometry" not in meta:
        raise ValueError(f"geometry sidecar {sidecar} lacks the 'geometry' field.")
    geometry = geometry_from_dict(meta["geometry"])
    if path.name.endswith(".npz"):
        try:
            with np.load(path) as npz:
                if "projections" not in npz:
                    raise ValueError(f"{path} has no array named 'projections' (found {list(npz.keys())}).")
                arr = npz["projections"].astype(np.float32)
        except (OSError, EOFError, zipfile.BadZipFile) as err:  # a truncated or corrupt .npz
            raise ValueError(f"cannot read projection file {path} (truncated or not an .npz?): {err}") from err
    else:
        arr, _ = load_nifti(path)
    expected = geometry.projection_shape if isinstance(geometry, ConeBeamGeometry) else geometry.sinogram_shape
    if tuple(arr.shape) != tuple(expected):
        raise ValueError(f"projections in {path} have shape {arr.shape}, but the geometry in {sidecar.name} expects {tuple(expected)}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"projections in {path} contain non-finite values.")
    return torch.from_numpy(arr), geometry, meta
