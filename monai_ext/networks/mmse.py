"""The linear minimum-mean-square-error (Wiener) reconstruction estimated from training images."""

from __future__ import annotations

import hashlib
import json
import logging
import math

import torch
from torch import nn

from monai_ext.operators import check_measurements

__all__ = ["LinearMMSE"]

logger = logging.getLogger(__name__)

_PHANTOM_ARGUMENTS = ("n_ellipses", "mu_max", "upsample", "noise_seed")

RECIPE_KEY = "recipe_json"
"""State-dict entry (after the module's prefix) that holds a built-in estimator's recipe instead of ``W`` and ``b``."""


class LinearMMSE(nn.Module):
    """``x = mu_x + Sigma_x A^T (A Sigma_x A^T + Sigma_n)^{-1} (y - A mu_x)``, stored as ``x = W y + b``.

    The best linear estimator of ``x`` from ``y = A x + n`` given the image mean ``mu_x`` and covariance
    ``Sigma_x`` and the noise covariance ``Sigma_n`` (noise uncorrelated with ``x``). :meth:`estimate` computes it
    from training pairs; a module built by the constructor holds zeros until a state dict is loaded into it. ``W``
    (``N x M``, one column per measurement) is stored in ``storage_dtype`` (float16 by default, halving the file:
    its rounding, ~5e-4 relative, is far below the reconstruction error) and used in the input's dtype.

    An estimator made by :meth:`from_builtin_phantoms` is a deterministic function of a few numbers (the geometry,
    the number of built-in training phantoms, ``I0``): its state dict holds that recipe (key ``recipe_json``, the
    JSON text as bytes) instead of ``W`` and ``b``, and loading it estimates them again, bit for bit the same
    (a 64 x 64 image from 5 x 64 measurements: 2.6 MB of ``W`` become 0.3 kB; rebuilding takes about 30 s on 2
    cores, most of it simulating the phantoms).

    Args:
        image_shape: spatial shape of the images (``N = prod(image_shape)``).
        projection_shape: spatial shape of the measurements (``M = prod(projection_shape)``).
        storage_dtype: dtype of the stored ``W`` and ``b``.

    Raises:
        ValueError: at call time, measurements of the wrong shape or with NaN/inf.

    Example:
        >>> from monai_ext.solvers import MatrixOperator
        >>> op = MatrixOperator(torch.eye(4, dtype=torch.float64), (2, 2))
        >>> images = torch.randn(500, 1, 2, 2, dtype=torch.float64)
        >>> mmse = LinearMMSE.estimate(op, images, op(images))  # noise-free and invertible: x = y
        >>> bool(torch.allclose(mmse(op(images[:3]).float()), images[:3].float(), atol=1e-2))
        True

    References:
        S. M. Kay, *Fundamentals of Statistical Signal Processing: Estimation Theory*, Prentice Hall 1993, ch. 12.
        N. Ducros, A. Lorente Mur and F. Peyrin, "A completion network for reconstruction from compressed
        acquisition", IEEE ISBI 2020.
    """

    def __init__(self, image_shape, projection_shape, storage_dtype: torch.dtype = torch.float16) -> None:
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.projection_shape = tuple(int(s) for s in projection_shape)
        n, m = math.prod(self.image_shape), math.prod(self.projection_shape)
        self.register_buffer("weight", torch.zeros((n, m), dtype=storage_dtype))
        self.register_buffer("bias", torch.zeros((n,), dtype=storage_dtype))
        self.recipe: dict | None = None

    @classmethod
    def estimate(
        cls,
        operator,
        images: torch.Tensor,
        projections: torch.Tensor,
        ridge: float = 1e-6,
        storage_dtype: torch.dtype = torch.float16,
        batch_size: int = 256,
    ) -> LinearMMSE:
        """The estimator from training images and their measurements.

        ``mu_x`` and ``Sigma_x`` are the sample mean and covariance of ``images``; ``Sigma_n`` is the sample
        covariance of the residuals ``y - A x`` (measurement noise plus model mismatch); ``A`` is formed column by
        column from ``operator.adjoint``. ``ridge * trace / M`` is added to the diagonal of the ``M x M`` matrix to
        invert, which guards against a rank-deficient covariance (noise-free data).

        Args:
            operator: linear operator ``A`` with ``forward``/``adjoint``.
            images: ``(L, 1, *image_shape)`` training images.
            projections: ``(L, 1, *projection_shape)`` their measurements.
            ridge: relative diagonal loading.
            storage_dtype: dtype in which ``W`` and ``b`` are kept.
            batch_size: images projected per operator call.

        Raises:
            ValueError: fewer than 2 training pairs, or images and projections that do not pair up.
        """
        if images.shape[0] != projections.shape[0] or images.shape[0] < 2:
            raise ValueError(f"need at least 2 paired images and projections, got {images.shape[0]} and {projections.shape[0]}.")
        image_shape, projection_shape = tuple(images.shape[2:]), tuple(projections.shape[2:])
        n, m = math.prod(image_shape), math.prod(projection_shape)
        with torch.no_grad():
            x = images.detach().reshape(images.shape[0], n).double().cpu()
            # A as a dense matrix, one row per measurement: A^T e_j for every unit vector e_j of the measurement space
            rows = []
            for start in range(0, m, batch_size):
                count = min(batch_size, m - start)
                units = torch.zeros((count, m), dtype=torch.float32)
                units[torch.arange(count), start + torch.arange(count)] = 1.0
                rows.append(operator.adjoint(units.reshape(count, 1, *projection_shape)).reshape(count, n).double().cpu())
            a = torch.cat(rows)
            residual = projections.detach().reshape(-1, m).double().cpu() - x @ a.T
            mu = x.mean(0)
            xc = x - mu
            sigma_x_at = xc.T @ (xc @ a.T) / (x.shape[0] - 1)  # Sigma_x A^T, without forming Sigma_x
            rc = residual - residual.mean(0)
            sigma_n = rc.T @ rc / (x.shape[0] - 1)
            k = a @ sigma_x_at + sigma_n
            k = k + ridge * torch.trace(k) / m * torch.eye(m, dtype=k.dtype)
            weight = torch.linalg.solve(k, sigma_x_at.T).T  # Sigma_x A^T K^{-1}, K symmetric
            bias = mu - weight @ (a @ mu + residual.mean(0))
        module = cls(image_shape, projection_shape, storage_dtype)
        module.weight.copy_(weight.to(storage_dtype))
        module.bias.copy_(bias.to(storage_dtype))
        return module

    @classmethod
    def from_builtin_phantoms(
        cls, geometry, n: int, i0: float | None, ridge: float = 1e-6, storage_dtype: torch.dtype = torch.float16
    ) -> LinearMMSE:
        """:meth:`estimate` on the first ``n`` training phantoms of :func:`monai_ext.data.ellipse_ct_scans`.

        The module remembers how it was made, so its state dict stores the recipe, not ``W`` (see the class notes):
        every argument of the phantoms and scans (their defaults written out, so a later change of a default cannot
        change ``W`` unnoticed) and the SHA-256 of the stored ``W`` and ``b``, against which a rebuilt ``W`` is checked.

        Args:
            geometry: a ``monai_ext.tomo.ParallelBeamGeometry``.
            n: number of built-in training phantoms.
            i0: photons per detector bin of their scans (``None``: noise-free).
            ridge: relative diagonal loading (as in :meth:`estimate`).
            storage_dtype: dtype in which ``W`` and ``b`` are kept.
        """
        import inspect

        from monai_ext.data import ellipse_ct_scans
        from monai_ext.io.files import geometry_to_dict

        defaults = {name: p.default for name, p in inspect.signature(ellipse_ct_scans).parameters.items() if name in _PHANTOM_ARGUMENTS}
        recipe = {
            "source": "monai_ext.data.ellipse_ct_scans", "split": "train", "n": int(n), "i0": None if i0 is None else float(i0),
            **defaults, "geometry": geometry_to_dict(geometry), "ridge": float(ridge),
            "storage_dtype": str(storage_dtype).removeprefix("torch."),
        }
        module = cls._from_recipe(recipe)
        module.recipe = {**recipe, "sha256": module._checksum()}
        return module

    @staticmethod
    def _checked_recipe(recipe, key: str) -> dict:
        required = {"source", "split", "n", "i0", "geometry", "ridge", "storage_dtype", *_PHANTOM_ARGUMENTS}
        if not isinstance(recipe, dict) or recipe.get("source") != "monai_ext.data.ellipse_ct_scans" or recipe.get("split") != "train":
            raise ValueError(f"{key}: unknown linear-MMSE recipe {recipe!r}: expected the built-in training phantoms of monai_ext.data.ellipse_ct_scans.")
        lacking = sorted(required - set(recipe))
        if lacking:
            raise ValueError(f"{key}: the linear-MMSE recipe lacks {lacking}.")
        if not isinstance(getattr(torch, str(recipe["storage_dtype"]), None), torch.dtype):
            raise ValueError(f"{key}: storage_dtype {recipe['storage_dtype']!r} of the linear-MMSE recipe is not a torch dtype.")
        return recipe

    @classmethod
    def _from_recipe(cls, recipe: dict) -> LinearMMSE:
        from monai_ext.data import ellipse_ct_scans
        from monai_ext.io.files import geometry_from_dict
        from monai_ext.tomo import ParallelBeamProjector

        geometry = geometry_from_dict(recipe["geometry"])
        scans = ellipse_ct_scans("train", recipe["n"], geometry, recipe["i0"], **{name: recipe[name] for name in _PHANTOM_ARGUMENTS})
        return cls.estimate(
            ParallelBeamProjector(geometry), scans.images, scans.projections, recipe["ridge"], getattr(torch, recipe["storage_dtype"])
        )

    def _checksum(self) -> str:
        digest = hashlib.sha256()
        for tensor in (self.weight, self.bias):
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # the recipe only while W is still the one it makes (a W changed since is stored itself)
        if self.recipe is None or self.recipe.get("sha256") != self._checksum():
            super()._save_to_state_dict(destination, prefix, keep_vars)
        else:
            destination[prefix + RECIPE_KEY] = torch.tensor(list(json.dumps(self.recipe, sort_keys=True).encode()), dtype=torch.uint8)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        key = prefix + RECIPE_KEY
        if key not in state_dict:
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
            if prefix + "weight" in state_dict:
                self.recipe = None  # W given itself
            return
        for hook in self._load_state_dict_pre_hooks.values():
            hook(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        try:
            recipe = self._checked_recipe(json.loads(bytes(state_dict[key].tolist()).decode()), key)
            expected = (tuple(recipe["geometry"]["image_shape"]), (len(recipe["geometry"]["angles"]), recipe["geometry"]["n_det"]))
        except (ValueError, KeyError, TypeError) as err:  # TypeError/KeyError: a geometry of another type
            error_msgs.append(f"{key}: cannot read the linear-MMSE recipe: {err}")
            return
        if expected != (self.image_shape, self.projection_shape):
            error_msgs.append(
                f"{key}: the recipe is for images {expected[0]} from measurements {expected[1]}, this module has images "
                f"{self.image_shape} from measurements {self.projection_shape}."
            )
            return
        if strict:
            unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k != key)
        if self.recipe == recipe and self._checksum() == recipe.get("sha256"):
            return  # this W already
        logger.info(f"estimating the linear MMSE reconstruction again from its recipe ({recipe['n']} built-in training phantoms)")
        rebuilt = self._from_recipe(recipe)
        if recipe.get("sha256") not in (None, rebuilt._checksum()):
            logger.warning(
                f"{key}: the linear MMSE matrix estimated again differs from the one stored when the network was trained "
                "(another BLAS, thread count or library version changes the last bits); reconstructions may differ slightly."
            )
        assign = local_metadata.get("assign_to_params_buffers", False) or self.weight.is_meta
        with torch.no_grad():
            for name in ("weight", "bias"):
                value = getattr(rebuilt, name)
                if assign:
                    setattr(self, name, value.to(self.weight.device if not self.weight.is_meta else "cpu"))
                else:
                    getattr(self, name).copy_(value)
        self.recipe = recipe

    def forward(self, projections: torch.Tensor) -> torch.Tensor:
        """``W y + b`` for ``(B, 1, *projection_shape)`` measurements; returns ``(B, 1, *image_shape)``."""
        check_measurements(self, projections)
        if not bool(self.weight.any()):
            raise ValueError(
                "this LinearMMSE holds no estimator (W is all zero): build it with LinearMMSE.estimate or "
                "from_builtin_phantoms, or load a state dict holding its W or its recipe with load_state_dict "
                "(a loader that copies only the keys both sides share, such as monai.networks.utils.copy_model_state, "
                "skips the recipe)."
            )
        flat = projections.reshape(projections.shape[0], projections.shape[1], -1)
        out = flat @ self.weight.to(flat.dtype).T + self.bias.to(flat.dtype)
        return out.reshape(*projections.shape[:2], *self.image_shape)
