"""Seeded CT data sets for learned reconstruction: random-ellipse phantoms and real CT slices, with their scans.

Every image is built on a grid ``upsample`` times finer than the bundle's (``image_shape``), projected there with
the Joseph projector onto the bundle's detector, and averaged down to ``image_shape`` for the reference, so the
simulated sinograms are not produced by the operator the reconstructions use (no "inverse crime"). Noise follows
the Beer-Lambert law with Poisson counts (``monai_ext.transforms.BeerLambertCounts``) and the log transform back.

- Random ellipses: Adler and Oktem's training setting, ``monai_ext.phantoms.random_ellipsoids`` with phantom
  ``i`` of a split seeded by ``SPLIT_SEEDS[split] + i``, each scaled so that its maximum is ``mu_max`` (1/mm).
- Real slices: the CT images that ship with pydicom's test data (read offline with ``pydicom``), converted from
  Hounsfield units to linear attenuation ``mu = mu_water (1 + HU / 1000)``, resampled so that the slice's field of
  view fills the bundle's, and restricted to the scanner's field of view (the disc inscribed in the grid, where
  the detector measures).

Results are cached in memory (``functools.lru_cache``): a second call with the same arguments costs nothing.

References:
    J. Adler and O. Oktem, "Learned Primal-Dual Reconstruction", IEEE TMI 37(6), 2018 (random ellipse data).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from monai_ext.phantoms import MU_WATER, hu_to_mu
from monai_ext.tomo.geometry import ParallelBeamGeometry
from monai_ext.tomo.projectors import ParallelBeamProjector

__all__ = [
    "SPLIT_SEEDS",
    "REAL_CT_FILES",
    "CTScans",
    "ellipse_images",
    "real_ct_images",
    "read_ct_slice",
    "simulate_scans",
    "transmission_noise",
    "ellipse_ct_scans",
    "real_ct_scans",
]

SPLIT_SEEDS = {"train": 0, "validation": 1_000_000, "test": 2_000_000}
# the CT slices of pydicom's test data: a thoracic spine crop (128 x 128) and two heads (512 x 512, JPEG 2000)
REAL_CT_FILES = ("CT_small.dcm", "J2K_pixelrep_mismatch.dcm", "693_J2KI.dcm")

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class CTScans:
    """Reference images and the scans simulated from them, as batched tensors (CPU, float32).

    Args:
        names: one name per case.
        images: references on the bundle grid, ``(n, 1, ny, nx)``, 1/mm.
        line_integrals: noise-free line integrals, ``(n, 1, n_views, n_det)`` (unitless).
        projections: measured (noisy) log-transformed projections, same shape; equal to ``line_integrals`` when
            ``i0`` is ``None``.
        i0: photons per detector bin of the simulated scan (``None``: noise-free).
        spacing: pixel size in mm, array order.
    """

    names: tuple[str, ...]
    images: torch.Tensor
    line_integrals: torch.Tensor
    projections: torch.Tensor
    i0: float | None
    spacing: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.names)

    def datalist(self, projections_key: str = "projections", noise_free: bool = False) -> list[dict]:
        """One dict per case for a MONAI ``Dataset``: ``name``, ``reference``, ``projections``, ``spacing``.

        Args:
            projections_key: key under which the sinogram is stored.
            noise_free: store the noise-free line integrals instead of the noisy projections, marked
                ``noise_free: True`` (``monai_ext.transforms.TransmissionNoised`` adds fresh noise in training).
        """
        source = self.line_integrals if noise_free else self.projections
        marks = {"noise_free": True} if noise_free else {}
        return [
            {"name": name, "reference": self.images[i], projections_key: source[i], "spacing": list(self.spacing), **marks}
            for i, name in enumerate(self.names)
        ]


def _check_grid(image_shape, pixel_size, upsample) -> tuple[tuple[int, int], float, int]:
    shape = tuple(int(n) for n in image_shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"image_shape must be two positive integers (ny, nx), got {image_shape}.")
    if not float(pixel_size) > 0:
        raise ValueError(f"pixel_size must be a positive number of mm, got {pixel_size}.")
    if int(upsample) < 1:
        raise ValueError(f"upsample must be a positive integer, got {upsample}.")
    return shape, float(pixel_size), int(upsample)


def _disc_mask(shape: tuple[int, int], radius_fraction: float = 0.98) -> torch.Tensor:
    ny, nx = shape
    y = (torch.arange(ny, dtype=torch.float64) - 0.5 * (ny - 1)) / (0.5 * ny)
    x = (torch.arange(nx, dtype=torch.float64) - 0.5 * (nx - 1)) / (0.5 * nx)
    return ((y[:, None] ** 2 + x[None, :] ** 2) <= radius_fraction**2).float()


def _grid_values(phantom, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """``phantom.evaluate`` on the grid ``ys x xs`` (mm), via each ellipse's quadratic form (separable, fast)."""
    out = torch.zeros((ys.numel(), xs.numel()), dtype=torch.float64)
    for e in phantom.ellipsoids:
        c, s = math.cos(e.angle), math.sin(e.angle)
        (ax, ay), (cx, cy) = e.axes, e.center
        # q = R^T (p - c) / a, |q|^2 = qa dx^2 + qb dx dy + qc dy^2
        qa, qc = (c / ax) ** 2 + (s / ay) ** 2, (s / ax) ** 2 + (c / ay) ** 2
        qb = 2.0 * c * s * (1.0 / ax**2 - 1.0 / ay**2)
        dx, dy = (xs - cx)[None, :], (ys - cy)[:, None]
        out += e.value * ((qa * dx * dx + qb * dx * dy + qc * dy * dy) <= 1.0)
    return out


@functools.lru_cache(maxsize=16)
def _ellipse_images(n: int, shape: tuple[int, int], pixel_size: float, seed: int, n_ellipses: int, mu_max: float) -> torch.Tensor:
    from monai_ext.phantoms import random_ellipsoids

    supersample = 2
    ny, nx = shape
    fov = min(shape) * pixel_size
    ys = ((torch.arange(ny * supersample, dtype=torch.float64) + 0.5) / supersample - 0.5 * ny) * pixel_size
    xs = ((torch.arange(nx * supersample, dtype=torch.float64) + 0.5) / supersample - 0.5 * nx) * pixel_size
    images = torch.empty((n, 1, ny, nx), dtype=torch.float32)
    for i in range(n):
        phantom = random_ellipsoids(2, fov, n_ellipsoids=n_ellipses, seed=seed + i)
        # clamp: overlapping +v and -v components leave rounding residues of order -1e-17
        values = _grid_values(phantom, xs, ys).reshape(ny, supersample, nx, supersample).mean(dim=(1, 3)).clamp_min(0.0)
        images[i, 0] = (values * (mu_max / max(float(values.max()), 1e-12))).float()
    return images


def ellipse_images(
    n: int,
    image_shape=(64, 64),
    pixel_size: float = 4.0,
    seed: int = 0,
    n_ellipses: int = 10,
    mu_max: float = 2 * MU_WATER,
) -> torch.Tensor:
    """``n`` seeded random-ellipse attenuation images ``(n, 1, ny, nx)`` in 1/mm (pixel averages, 2x2 sub-samples).

    Phantom ``i`` is ``random_ellipsoids(2, fov, n_ellipses, seed=seed + i)`` inside the disc inscribed in the
    grid, scaled so that its maximum is ``mu_max``.

    Args:
        n: number of images.
        image_shape: ``(ny, nx)``.
        pixel_size: mm.
        seed: seed of the first phantom.
        n_ellipses: ellipses per phantom.
        mu_max: maximum attenuation of every phantom, 1/mm (default twice water's: dense bone).

    Raises:
        ValueError: non-positive ``n``, ``pixel_size`` or ``mu_max``; ``image_shape`` not two positive integers.

    Example:
        >>> images = ellipse_images(4, (64, 64), 4.0, seed=0)
        >>> images.shape
        torch.Size([4, 1, 64, 64])
    """
    if int(n) < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    if not mu_max > 0:
        raise ValueError(f"mu_max must be positive, got {mu_max}.")
    shape, size, _ = _check_grid(image_shape, pixel_size, 1)
    return _ellipse_images(int(n), shape, size, int(seed), int(n_ellipses), float(mu_max)).clone()


def _read_hounsfield(path: str) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(path)
    return np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)


def read_ct_slice(path: str, mu_water: float = MU_WATER, field_of_view: bool = True) -> tuple[np.ndarray, tuple[float, float]]:
    """One CT slice (DICOM) as an attenuation image in 1/mm on its own grid, and its pixel size ``(dy, dx)`` in mm.

    HU come from the modality LUT (rescale slope/intercept), ``mu`` from :func:`monai_ext.phantoms.hu_to_mu`. With
    ``field_of_view``, pixels outside the inscribed disc (the scanner's reconstructed field of view) are set to 0.

    Raises:
        ValueError: the file has no PixelSpacing, or its pixels cannot be decoded (named).
    """
    import pydicom

    ds = pydicom.dcmread(path)
    if "PixelSpacing" not in ds:
        raise ValueError(f"{path} has no PixelSpacing: its grid is unknown.")
    spacing = (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]))  # (row spacing = dy, column spacing = dx)
    try:
        hu = _read_hounsfield(path)
    except Exception as err:  # a JPEG 2000 slice needs an optional decoder
        raise ValueError(f"cannot decode the pixels of {path}: {err}") from err
    mu = np.asarray(hu_to_mu(hu, mu_water), np.float32)
    if field_of_view:
        mu = mu * _disc_mask(mu.shape).numpy().astype(np.float32)
    return mu, spacing


@functools.lru_cache(maxsize=8)
def _real_ct_images_fine(shape: tuple[int, int], mu_water: float, files: tuple[str, ...]) -> tuple[tuple[str, ...], torch.Tensor]:
    from monai.transforms import Resize
    from pydicom.data import get_testdata_file

    names, images = [], []
    resize = Resize(spatial_size=shape, mode="area")
    mask = _disc_mask(shape)
    for name in files:
        path = get_testdata_file(name)
        if path is None:
            _logger.warning("real CT slice %s is not in this pydicom installation; skipped.", name)
            continue
        try:
            hu = _read_hounsfield(path)
        except Exception as err:  # a JPEG 2000 slice needs an optional decoder (pillow/openjpeg, pylibjpeg)
            _logger.warning("cannot decode real CT slice %s (%s); skipped.", name, err)
            continue
        mu = torch.as_tensor(hu_to_mu(hu, mu_water)).float()
        images.append(torch.as_tensor(resize(mu[None])).float()[0] * mask)
        names.append(name.rsplit(".", 1)[0])
    if not images:
        raise ValueError(f"none of the real CT slices {files} could be read with pydicom.")
    return tuple(names), torch.stack(images)[:, None]


def real_ct_images(image_shape=(64, 64), mu_water: float = MU_WATER, files: tuple[str, ...] = REAL_CT_FILES) -> tuple[tuple[str, ...], torch.Tensor]:
    """The real CT slices shipped with pydicom, as attenuation images ``(n, 1, ny, nx)`` in 1/mm, and their names.

    Each slice is read with pydicom (rescale slope/intercept applied), converted to ``mu`` by
    :func:`monai_ext.phantoms.hu_to_mu`, resampled (area averaging) so that its field of view fills the grid, and
    set to zero outside the inscribed disc (the scanner's field of view). Slices that this installation cannot
    decode (JPEG 2000 needs an optional decoder) are skipped with a warning.

    Args:
        image_shape: ``(ny, nx)``.
        mu_water: water's attenuation, 1/mm.
        files: pydicom test-data file names.

    Raises:
        ValueError: no slice could be read.
    """
    shape, _, _ = _check_grid(image_shape, 1.0, 1)
    names, images = _real_ct_images_fine(shape, float(mu_water), tuple(files))
    return names, images.clone()


def _fine_geometry(geometry: ParallelBeamGeometry, upsample: int) -> ParallelBeamGeometry:
    shape = tuple(n * upsample for n in geometry.image_shape)
    size = tuple(d / upsample for d in geometry.pixel_size)
    return dataclasses.replace(geometry, image_shape=shape, pixel_size=size)


def simulate_scans(
    fine_images: torch.Tensor,
    geometry: ParallelBeamGeometry,
    i0: float | None,
    seed: int = 0,
    upsample: int = 2,
    electronic_std: float = 0.0,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scans of images given on a grid ``upsample`` times finer than ``geometry``'s.

    ``p = A_fine x_fine`` (Joseph projector on the fine grid, the bundle's detector), then with ``i0``:
    ``N ~ Poisson(i0 exp(-p))``, ``y = -log(max(N, 0.5) / i0)``. The reference is ``x_fine`` averaged over
    ``upsample x upsample`` blocks.

    Args:
        fine_images: ``(n, 1, ny * upsample, nx * upsample)`` attenuation, 1/mm.
        geometry: the bundle's parallel-beam geometry.
        i0: photons per detector bin (``None``: noise-free).
        seed: seed of the noise.
        upsample: refinement factor of ``fine_images``.
        electronic_std: Gaussian electronic noise, photons.
        batch_size: images projected per call.

    Returns:
        ``(references, line_integrals, projections)``.

    Raises:
        ValueError: images of the wrong shape, negative or non-finite, or a non-positive ``i0``.
    """
    if not isinstance(geometry, ParallelBeamGeometry):
        raise TypeError(f"geometry must be a ParallelBeamGeometry, got {type(geometry).__name__}.")
    fine = _fine_geometry(geometry, int(upsample))
    if fine_images.ndim != 4 or fine_images.shape[1] != 1 or tuple(fine_images.shape[2:]) != fine.image_shape:
        raise ValueError(f"fine_images must have shape (n, 1, {fine.image_shape[0]}, {fine.image_shape[1]}) for this geometry and upsample={upsample}, got {tuple(fine_images.shape)}.")
    if not torch.isfinite(fine_images).all() or bool((fine_images < 0).any()):
        raise ValueError("fine_images must be finite and non-negative (attenuation in 1/mm).")
    projector = ParallelBeamProjector(fine)
    line_integrals = torch.cat([projector(chunk.float()) for chunk in fine_images.split(int(batch_size))])
    references = F.avg_pool2d(fine_images.float(), int(upsample)) if upsample > 1 else fine_images.float().clone()
    if i0 is None:
        return references, line_integrals, line_integrals.clone()
    return references, line_integrals, transmission_noise(line_integrals, float(i0), int(seed), electronic_std)


def transmission_noise(line_integrals: torch.Tensor, i0: float, seed: int, electronic_std: float = 0.0) -> torch.Tensor:
    """Noisy log-transformed projections of noise-free line integrals (Beer-Lambert law, Poisson counts).

    ``N ~ Poisson(i0 exp(-p)) (+ N(0, electronic_std^2))``, ``y = -log(max(N, 0.5) / i0)``, by
    ``monai_ext.transforms.BeerLambertCounts`` and ``NegLogTransmission``; shared by the CT and CBCT data sets.

    Args:
        line_integrals: noise-free line integrals, any shape.
        i0: photons per detector bin.
        seed: seed of the noise.
        electronic_std: Gaussian electronic noise, photons.

    Raises:
        ValueError: non-positive ``i0``, non-finite line integrals.
    """
    from monai_ext.transforms import BeerLambertCounts, NegLogTransmission

    counts = BeerLambertCounts(float(i0), electronic_std).set_random_state(seed=int(seed))
    log = NegLogTransmission(float(i0), allow_negative=electronic_std > 0)
    return log(counts(line_integrals))


@functools.lru_cache(maxsize=32)
def _ellipse_ct_scans(split, n, geometry, i0, n_ellipses, mu_max, upsample, noise_seed) -> CTScans:
    base = SPLIT_SEEDS[split]
    fine = _ellipse_images(n, tuple(s * upsample for s in geometry.image_shape), geometry.pixel_size[0] / upsample, base, n_ellipses, mu_max)
    refs, lines, proj = simulate_scans(fine, geometry, i0, seed=base + noise_seed, upsample=upsample)
    names = tuple(f"ellipses_{split}_{i:04d}" for i in range(n))
    return CTScans(names, refs, lines, proj, i0, tuple(geometry.pixel_size))


def _check_scan_args(geometry, i0, upsample) -> None:
    if not isinstance(geometry, ParallelBeamGeometry):
        raise TypeError(f"geometry must be a ParallelBeamGeometry, got {type(geometry).__name__}.")
    if len(set(geometry.pixel_size)) != 1:
        raise ValueError(f"the CT data sets need square pixels, got pixel_size={geometry.pixel_size}.")
    if i0 is not None and not i0 > 0:
        raise ValueError(f"i0 (photons per detector bin) must be positive or None (noise-free), got {i0}.")
    if int(upsample) < 1:
        raise ValueError(f"upsample must be a positive integer, got {upsample}.")


def ellipse_ct_scans(
    split: str,
    n: int,
    geometry: ParallelBeamGeometry,
    i0: float | None = 1e4,
    n_ellipses: int = 10,
    mu_max: float = 2 * MU_WATER,
    upsample: int = 2,
    noise_seed: int = 0,
) -> CTScans:
    """Random-ellipse phantoms of a split and their simulated sparse-view, low-dose scans (cached in memory).

    Phantom ``i`` of ``split`` has seed ``SPLIT_SEEDS[split] + i``, so splits never share a phantom and the first
    ``n`` phantoms of a split are the same whatever ``n``. The noise is seeded by ``SPLIT_SEEDS[split] +
    noise_seed``.

    Args:
        split: ``"train"``, ``"validation"`` or ``"test"``.
        n: number of cases.
        geometry: the bundle's parallel-beam geometry (square pixels).
        i0: photons per detector bin (``None``: noise-free).
        n_ellipses: ellipses per phantom.
        mu_max: maximum attenuation of each phantom, 1/mm.
        upsample: the phantoms are rasterised and projected on a grid this many times finer.
        noise_seed: offset of the noise seed (another noise realisation of the same phantoms).

    Raises:
        ValueError: unknown split, non-positive ``n`` or ``i0``, non-square pixels.

    Example:
        >>> from monai_ext.tomo import ParallelBeamGeometry, uniform_angles
        >>> geometry = ParallelBeamGeometry((64, 64), 4.0, uniform_angles(5), n_det=64, det_spacing=4.0)
        >>> scans = ellipse_ct_scans("test", 8, geometry, i0=1e4)
        >>> scans.projections.shape
        torch.Size([8, 1, 5, 64])
    """
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_SEEDS)}, got {split!r}.")
    if int(n) < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    _check_scan_args(geometry, i0, upsample)
    i0 = None if i0 is None else float(i0)
    return _ellipse_ct_scans(split, int(n), geometry, i0, int(n_ellipses), float(mu_max), int(upsample), int(noise_seed))


@functools.lru_cache(maxsize=8)
def _real_ct_scans(geometry, i0, mu_water, upsample, noise_seed, files) -> CTScans:
    fine_shape = tuple(s * upsample for s in geometry.image_shape)
    names, fine = _real_ct_images_fine(fine_shape, mu_water, files)
    refs, lines, proj = simulate_scans(fine, geometry, i0, seed=noise_seed, upsample=upsample)
    return CTScans(names, refs, lines, proj, i0, tuple(geometry.pixel_size))


def real_ct_scans(
    geometry: ParallelBeamGeometry,
    i0: float | None = 1e4,
    mu_water: float = MU_WATER,
    upsample: int = 2,
    noise_seed: int = 0,
    files: tuple[str, ...] = REAL_CT_FILES,
) -> CTScans:
    """The real CT slices of :func:`real_ct_images` and their simulated scans (an out-of-distribution test set).

    Args:
        geometry: the bundle's parallel-beam geometry (square pixels).
        i0: photons per detector bin (``None``: noise-free).
        mu_water: water's attenuation, 1/mm.
        upsample: the slices are resampled to, and projected on, a grid this many times finer.
        noise_seed: seed of the noise.
        files: pydicom test-data file names.

    Raises:
        ValueError: non-positive ``i0``, non-square pixels, no readable slice.
    """
    _check_scan_args(geometry, i0, upsample)
    i0 = None if i0 is None else float(i0)
    return _real_ct_scans(geometry, i0, float(mu_water), int(upsample), int(noise_seed), tuple(files))
