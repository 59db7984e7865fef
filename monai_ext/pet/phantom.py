"""A seeded 2D brain phantom partitioned into about 100 regions, with its attenuation map.

The anatomy is a transaxial slice drawn with ellipses (``monai_ext.phantoms.Ellipsoid``), in mm, anterior at the top
(row 0, ``y < 0``) and the subject's right at ``x > 0`` (columns increasing): scalp, skull, cortex, white matter,
cerebellum (placed in the same slice as the basal ganglia, which a real axial slice would not show, so that a
reference region is present), lateral ventricles, caudate, putamen and thalamus (right and left). The large classes
(cortex, white matter, cerebellum) are split into seeded Voronoi cells to reach ``n_regions``, as in the
region-based piecewise-constant phantoms of Chazottes et al. Each seed also draws a subject: a global scaling
(+-6 %), rotation (+-4 degrees) and shift (+-3 mm) of the anatomy, and the Voronoi cells.

Attenuation: 0.0096/mm (water, 511 keV) for soft tissue, brain and CSF, 0.0172/mm for bone, 0 outside the head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..phantoms import Ellipsoid, EllipsoidPhantom

__all__ = ["TISSUE_CLASSES", "SUBDIVIDED_CLASSES", "MU_WATER", "MU_BONE", "BrainPhantom", "brain_phantom"]

MU_WATER = 0.0096
"""Linear attenuation coefficient of water at 511 keV, 1/mm."""
MU_BONE = 0.0172
"""Linear attenuation coefficient of cortical bone at 511 keV (approximate), 1/mm."""

TISSUE_CLASSES = ("background", "scalp", "skull", "white_matter", "cortex", "cerebellum", "thalamus", "putamen", "caudate", "ventricle")
"""Class index ``i`` of ``TISSUE_CLASSES[i]``; later classes are painted over earlier ones."""

SUBDIVIDED_CLASSES = {"cortex": 0.5, "white_matter": 1.0 / 3.0, "cerebellum": 1.0 / 6.0}
"""Classes split into Voronoi cells, with their share of the cells."""

_HEAD = ((80.0, 100.0), (0.0, 0.0), 0.0)
_SKULL = ((74.0, 94.0), (0.0, 0.0), 0.0)
_BRAIN = ((68.0, 88.0), (0.0, 0.0), 0.0)
_WHITE = ((60.0, 80.0), (0.0, 0.0), 0.0)
_CEREBELLUM = ((38.0, 20.0), (0.0, 60.0), 0.0)
# paired structures: (semi-axes, centre of the right-hand one (x > 0), rotation of the right-hand one in radians)
_PAIRED = {
    "thalamus": ((8.0, 11.0), (10.0, 16.0), 0.0),
    "putamen": ((6.0, 15.0), (27.0, -2.0), -0.2),
    "caudate": ((5.5, 9.0), (15.0, -16.0), -0.3),
    "ventricle": ((4.5, 18.0), (8.0, -12.0), -0.25),
}


def _inside(shape, points: np.ndarray) -> np.ndarray:
    axes, centre, angle = shape
    return EllipsoidPhantom([Ellipsoid(1.0, axes, centre, angle)]).evaluate(points) > 0.5


def _mirror(shape):
    axes, (cx, cy), angle = shape
    return axes, (-cx, cy), -angle


def _classes(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class index and side (0 right, 1 left) of canonical points ``(..., 2)`` in mm."""
    index = np.zeros(points.shape[:-1], dtype=np.int64)
    side = (points[..., 0] < 0).astype(np.int64)
    code = {name: i for i, name in enumerate(TISSUE_CLASSES)}
    index[_inside(_HEAD, points)] = code["scalp"]
    index[_inside(_SKULL, points)] = code["skull"]
    brain = _inside(_BRAIN, points)
    index[brain] = code["cortex"]
    index[_inside(_WHITE, points)] = code["white_matter"]
    index[brain & _inside(_CEREBELLUM, points)] = code["cerebellum"]
    for name, shape in _PAIRED.items():
        index[_inside(shape, points) | _inside(_mirror(shape), points)] = code[name]
    return index, side


@dataclass(frozen=True, eq=False)
class BrainPhantom:
    """A region map of a 2D brain slice and its attenuation map.

    Args:
        labels: ``(ny, nx)`` region index per pixel, 0 outside the head, ``1..n_regions`` inside.
        region_names: name of region ``r`` at index ``r - 1`` (``"putamen_right"``, ``"cortex_07"``, ...).
        region_classes: tissue class (an entry of ``TISSUE_CLASSES``) of each region.
        mu_map: ``(ny, nx)`` linear attenuation at 511 keV, 1/mm.
        pixel_size: ``(dy, dx)`` in mm.

    Regions too small for the grid may have no pixel; they keep their index.
    """

    labels: np.ndarray
    region_names: tuple[str, ...]
    region_classes: tuple[str, ...]
    mu_map: np.ndarray
    pixel_size: tuple[float, float]

    @property
    def n_regions(self) -> int:
        return len(self.region_names)

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.labels.shape)

    def regions_of(self, tissue_class: str) -> np.ndarray:
        """Region indices (1-based) of a tissue class."""
        if tissue_class not in TISSUE_CLASSES:
            raise ValueError(f"tissue_class must be one of {TISSUE_CLASSES}, got {tissue_class!r}.")
        return np.array([r + 1 for r, c in enumerate(self.region_classes) if c == tissue_class], dtype=np.int64)

    def image(self, values: np.ndarray) -> np.ndarray:
        """Piecewise-constant image(s) from per-region values: ``(R,)`` -> ``(ny, nx)``, ``(R, T)`` -> ``(T, ny, nx)``;
        0 outside the head.

        Raises:
            ValueError: when ``values`` does not have ``n_regions`` rows.
        """
        values = np.asarray(values, dtype=float)
        if values.shape[0] != self.n_regions or values.ndim not in (1, 2):
            raise ValueError(f"values must have shape (n_regions={self.n_regions},) or (n_regions, T), got {values.shape}.")
        table = np.concatenate([np.zeros((1, *values.shape[1:])), values], axis=0)
        out = table[self.labels]
        return out if values.ndim == 1 else np.moveaxis(out, -1, 0)


def brain_phantom(
    image_shape: tuple[int, int] = (64, 64), pixel_size: float | tuple[float, float] = 4.0, *, n_regions: int = 100, seed: int = 0
) -> BrainPhantom:
    """Draw a seeded brain phantom on a centred grid.

    Args:
        image_shape: ``(ny, nx)`` pixels; the head spans about 160 x 200 mm, so the grid should span at least 220 mm.
        pixel_size: ``(dy, dx)`` in mm, or one value.
        n_regions: number of regions: 10 fixed (scalp, skull, ventricles, caudate, putamen and thalamus, right and
            left) plus Voronoi cells of cortex, white matter and cerebellum; at least 13.
        seed: draws the subject (size, pose, Voronoi cells); the same seed gives the same phantom on any grid.

    Raises:
        ValueError: ``n_regions`` < 13 or a grid that does not contain the head.

    Example:
        >>> phantom = brain_phantom((64, 64), 4.0, n_regions=100, seed=3)
        >>> phantom.labels.max() <= 100, phantom.mu_map.max()
        (True, 0.0172)
    """
    fixed = ["scalp", "skull"] + [f"{name}_{side}" for name in ("ventricle", "caudate", "putamen", "thalamus") for side in ("right", "left")]
    if int(n_regions) < len(fixed) + len(SUBDIVIDED_CLASSES):
        raise ValueError(f"n_regions must be at least {len(fixed) + len(SUBDIVIDED_CLASSES)}, got {n_regions}.")
    dy, dx = (float(d) for d in np.broadcast_to(np.asarray(pixel_size, dtype=float), (2,)))
    ny, nx = (int(n) for n in image_shape)
    if min(ny * dy, nx * dx) < 220.0:
        raise ValueError(f"the grid {image_shape} x {pixel_size} mm spans {min(ny * dy, nx * dx)} mm; the head needs at least 220 mm.")
    rng = np.random.default_rng(seed)

    # subject pose: pixel centres (x, y) mapped back into the canonical anatomy
    scale = rng.uniform(0.94, 1.06, size=2)
    angle = math.radians(rng.uniform(-4.0, 4.0))
    shift = rng.uniform(-3.0, 3.0, size=2)
    x = (np.arange(nx) - 0.5 * (nx - 1)) * dx
    y = (np.arange(ny) - 0.5 * (ny - 1)) * dy
    points = np.stack(np.meshgrid(x, y, indexing="xy"), axis=-1) - shift
    c, s = math.cos(angle), math.sin(angle)
    canonical = (points @ np.array([[c, -s], [s, c]])) / scale  # rotate by -angle, then unscale
    classes, side = _classes(canonical)

    names, kinds = list(fixed), ["scalp", "skull"] + [n.rsplit("_", 1)[0] for n in fixed[2:]]
    labels = np.zeros((ny, nx), dtype=np.int64)
    code = {name: i for i, name in enumerate(TISSUE_CLASSES)}
    labels[classes == code["scalp"]] = 1
    labels[classes == code["skull"]] = 2
    for r, name in enumerate(fixed[2:], start=3):
        kind, where = name.rsplit("_", 1)
        labels[(classes == code[kind]) & (side == (0 if where == "right" else 1))] = r

    counts = _cell_counts(int(n_regions) - len(fixed))
    for kind, n_cells in counts.items():
        seeds = _voronoi_seeds(kind, n_cells, rng)
        mask = classes == code[kind]
        nearest = ((canonical[mask][:, None, :] - seeds[None, :, :]) ** 2).sum(-1).argmin(-1)
        labels[mask] = len(names) + 1 + nearest
        names += [f"{kind}_{i:02d}" for i in range(n_cells)]
        kinds += [kind] * n_cells

    mu = np.where(classes == code["background"], 0.0, MU_WATER)
    mu = np.where(classes == code["skull"], MU_BONE, mu)
    return BrainPhantom(labels, tuple(names), tuple(kinds), mu, (dy, dx))


def _cell_counts(n_cells: int) -> dict[str, int]:
    """Split ``n_cells`` between the subdivided classes by their shares (largest remainder, at least one each)."""
    shares = np.array(list(SUBDIVIDED_CLASSES.values()))
    raw = shares / shares.sum() * n_cells
    counts = np.maximum(np.floor(raw).astype(int), 1)
    for i in np.argsort(raw - np.floor(raw))[::-1][: max(0, n_cells - counts.sum())]:
        counts[i] += 1
    while counts.sum() > n_cells:
        counts[counts.argmax()] -= 1
    return dict(zip(SUBDIVIDED_CLASSES, (int(c) for c in counts)))


def _voronoi_seeds(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` well-spread points of a class in canonical mm (dart throwing with a shrinking minimum distance)."""
    code = TISSUE_CLASSES.index(kind)
    candidates = rng.uniform([-80.0, -100.0], [80.0, 100.0], size=(20000, 2))
    candidates = candidates[_classes(candidates)[0] == code]
    area = 160.0 * 200.0 * len(candidates) / 20000.0
    spacing = 0.8 * math.sqrt(area / n)
    chosen = candidates[:1]
    while len(chosen) < n:
        for p in candidates:
            if len(chosen) == n:
                break
            if ((chosen - p) ** 2).sum(-1).min() >= spacing**2:
                chosen = np.concatenate([chosen, p[None]])
        spacing *= 0.8
    return chosen
