"""Parametric models of the learned hyperparameters as functions of the dose ``D``, and the dose model file.

Chazottes et al. (MIC 2024) learn ``eta_D`` and ``lambda_{t,D}`` at several doses (150 to 750 million counts) and
fit each against ``D`` with four parametric models; the double exponential fitted best (``R^2 > 0.98``). With
``d = D / dose_unit`` (``dose_unit = 1e6``: ``d`` in millions of counts) the models are

========================  =====================================  ============
name                      ``p(d)``                               coefficients
========================  =====================================  ============
``linear``                ``a + b d``                            2
``power``                 ``a d^b``                              2
``exponential``           ``a exp(b d)``                         2
``double_exponential``    ``a exp(b d) + c exp(e d)``            4
========================  =====================================  ============

Each is fitted by least squares on the parameter values (``scipy.optimize.least_squares``, trust-region reflective
with bounds, at most 1000 evaluations per start), from several starts derived from log-linear regressions, keeping
the lowest residual. Rates are fitted on ``d / d_ref`` (``d_ref`` the median dose) for conditioning and reported per
unit of ``d``. Quality: :math:`R^2 = 1 - SS_{res} / SS_{tot}` and the adjusted
:math:`\\bar R^2 = 1 - (1 - R^2)(n - 1) / (n - k)` for ``k`` coefficients, which penalises the four-coefficient model
on six doses; the model kept for each hyperparameter is the one of highest adjusted :math:`R^2`.

:class:`DoseModel` holds the chosen fits of ``eta`` and of every ``lambda_t`` with the setting they were learned in
(grid, scanner, frame schedule, ``eps``, slice fraction), is saved as JSON, and gives the hyperparameters of a new
exam from its dose.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DOSE_MODELS", "DoseFit", "fit_dose_model", "fit_dose_models", "DoseModel"]

_FORMAT = "monai_ext.pet dose model v1"


def _linear(d, a, b):
    return a + b * d


def _power(d, a, b):
    return a * np.power(d, b)


def _exponential(d, a, b):
    return a * np.exp(b * d)


def _double_exponential(d, a, b, c, e):
    return a * np.exp(b * d) + c * np.exp(e * d)


DOSE_MODELS = {
    "linear": (_linear, ("a", "b")),
    "power": (_power, ("a", "b")),
    "exponential": (_exponential, ("a", "b")),
    "double_exponential": (_double_exponential, ("a", "b", "c", "e")),
}
"""Model name -> (function ``p(d, *coefficients)``, coefficient names)."""

_AMPLITUDES = {"linear": (0, 1), "power": (0,), "exponential": (0,), "double_exponential": (0, 2)}
"""Coefficients proportional to the values (rescaled with them during the fit)."""


@dataclass(frozen=True)
class DoseFit:
    """One parametric fit ``p(d)`` of a hyperparameter against ``d = D / dose_unit``.

    Args:
        model: a key of :data:`DOSE_MODELS`.
        coefficients: the fitted coefficients (rates per unit of ``d``).
        r2: coefficient of determination on the fitted points.
        adjusted_r2: ``1 - (1 - R^2)(n - 1)/(n - k)``; ``nan`` when ``n <= k``.
    """

    model: str
    coefficients: tuple[float, ...]
    r2: float
    adjusted_r2: float

    def __call__(self, d) -> np.ndarray:
        function, _ = DOSE_MODELS[self.model]
        return function(np.asarray(d, dtype=float), *self.coefficients)

    def as_dict(self) -> dict[str, Any]:
        names = DOSE_MODELS[self.model][1]
        return {"model": self.model, "coefficients": dict(zip(names, self.coefficients)), "r2": self.r2, "adjusted_r2": self.adjusted_r2}

    @classmethod
    def from_dict(cls, spec: dict) -> DoseFit:
        model = spec.get("model")
        if model not in DOSE_MODELS:
            raise ValueError(f"unknown dose model {model!r}; expected one of {sorted(DOSE_MODELS)}.")
        names = DOSE_MODELS[model][1]
        coefficients = spec.get("coefficients", {})
        missing = [n for n in names if n not in coefficients]
        if missing:
            raise ValueError(f"dose model {model!r} lacks coefficient(s) {missing}.")
        return cls(model, tuple(float(coefficients[n]) for n in names), float(spec.get("r2", math.nan)), float(spec.get("adjusted_r2", math.nan)))


def _r2(y: np.ndarray, fitted: np.ndarray, k: int) -> tuple[float, float]:
    ss_res = float(np.sum((y - fitted) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    n = len(y)
    adjusted = 1.0 - (1.0 - r2) * (n - 1) / (n - k) if n > k else math.nan
    return r2, adjusted


def _starts(model: str, u: np.ndarray, y: np.ndarray) -> list[list[float]]:
    """Initial coefficients on the normalised dose ``u`` from log-linear regressions."""
    positive = bool(np.all(y > 0))
    slope, intercept = np.polyfit(u, y, 1)
    if model == "linear":
        return [[intercept, slope]]
    log_y = np.log(np.abs(y) + 1e-300)
    sign = 1.0 if positive or y.mean() >= 0 else -1.0
    if model == "power":
        b, log_a = np.polyfit(np.log(u), log_y, 1)
        return [[sign * math.exp(log_a), b]]
    b, log_a = np.polyfit(u, log_y, 1)
    a = sign * math.exp(log_a)
    if model == "exponential":
        return [[a, b]]
    # double exponential: a fast and a slow component, or one component split around the single-exponential rate
    return [
        [0.5 * a, b, 0.5 * a, 0.0],
        [a, b - 1.0, 0.1 * a, b + 1.0],
        [y.max() * math.e, -1.0, y.min(), 0.0],
        [y[0] * math.exp(2.0 * u[0]), -2.0, y[-1], b],
    ]


def fit_dose_model(model: str, doses: Sequence[float], values: Sequence[float], dose_unit: float = 1e6) -> DoseFit:
    """Fit one parametric model ``p(D / dose_unit)`` to ``values`` learned at ``doses``.

    Args:
        model: a key of :data:`DOSE_MODELS`.
        doses: ``D`` (counts), at least as many distinct values as the model has coefficients.
        values: the hyperparameter at each dose.
        dose_unit: unit of ``d``.

    Raises:
        ValueError: an unknown model, mismatched or too short inputs, non-positive doses or non-finite values.

    Example:
        >>> d = np.array([150, 250, 300, 400, 500, 750]) * 1e6
        >>> fit = fit_dose_model("power", d, 3.0 * (d / 1e6) ** 0.5)
        >>> [round(c, 3) for c in fit.coefficients]
        [3.0, 0.5]
    """
    from scipy.optimize import least_squares

    if model not in DOSE_MODELS:
        raise ValueError(f"model must be one of {sorted(DOSE_MODELS)}, got {model!r}.")
    function, names = DOSE_MODELS[model]
    d = np.asarray(doses, dtype=float) / float(dose_unit)
    y = np.asarray(values, dtype=float)
    if d.shape != y.shape or d.ndim != 1:
        raise ValueError(f"doses and values must be 1D of equal length, got {d.shape} and {y.shape}.")
    if len(np.unique(d)) < len(names):
        raise ValueError(f"model {model!r} needs at least {len(names)} distinct doses, got {len(np.unique(d))}.")
    if not (np.all(np.isfinite(d)) and np.all(d > 0) and np.all(np.isfinite(y))):
        raise ValueError("doses must be positive and finite, values finite.")
    if float(np.ptp(y)) <= 1e-12 * max(float(np.max(np.abs(y))), 1e-300):  # constant: every model fits it exactly
        constant = {"linear": (y[0], 0.0), "power": (y[0], 0.0), "exponential": (y[0], 0.0), "double_exponential": (y[0], 0.0, 0.0, 0.0)}
        return DoseFit(model, tuple(float(c) for c in constant[model]), 1.0, 1.0)
    d_ref = float(np.median(d))
    u = d / d_ref
    rate_bound = 20.0  # per unit of d / d_ref
    scale = max(float(np.max(np.abs(y))), 1e-300)
    if model in ("exponential", "double_exponential"):
        lower = [-np.inf, -rate_bound] * (len(names) // 2)
        upper = [np.inf, rate_bound] * (len(names) // 2)
    elif model == "power":
        lower, upper = [-np.inf, -rate_bound], [np.inf, rate_bound]
    else:
        lower, upper = [-np.inf, -np.inf], [np.inf, np.inf]
    unit = np.ones(len(names))
    unit[list(_AMPLITUDES[model])] = scale
    best, best_sse = None, np.inf

    def residual(c):
        return function(u, *c) - y / scale

    for p0 in _starts(model, u, y):
        p0 = np.clip(np.asarray(p0, dtype=float), np.asarray(lower) + 1e-9, np.asarray(upper) - 1e-9)
        p0 = np.where(np.isfinite(p0), p0, 0.0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # least_squares keeps its last iterate when the budget runs out (curve_fit raises and loses it): the
                # near-cancelling double exponentials of some lambda_t need more than the budget to converge fully
                p = least_squares(residual, p0 / unit, bounds=(lower, upper), method="trf", max_nfev=1000).x
        except ValueError:
            continue
        p = p * unit
        sse = float(np.sum((function(u, *p) - y) ** 2))
        if np.isfinite(sse) and sse < best_sse:
            best, best_sse = p, sse
    if best is None:
        raise RuntimeError(f"the {model} fit did not converge from any start.")
    # back to rates per unit of d: exp(b u) = exp((b / d_ref) d); d^b = (u d_ref)^b
    coefficients = list(best)
    if model == "linear":
        coefficients[1] /= d_ref
    elif model == "power":
        coefficients[0] /= d_ref ** coefficients[1]
    else:
        for i in range(1, len(coefficients), 2):
            coefficients[i] /= d_ref
    if model == "double_exponential" and coefficients[1] > coefficients[3]:  # order the components: faster decay first
        coefficients = coefficients[2:] + coefficients[:2]
    fitted = function(d, *coefficients)
    r2, adjusted = _r2(y, fitted, len(names))
    return DoseFit(model, tuple(float(c) for c in coefficients), r2, adjusted)


def fit_dose_models(doses: Sequence[float], values: Sequence[float], dose_unit: float = 1e6, models: Sequence[str] | None = None) -> dict[str, DoseFit]:
    """Fit every model of :data:`DOSE_MODELS` (or ``models``) that has no more coefficients than there are doses;
    a fit that fails is left out."""
    fits = {}
    for name in models or DOSE_MODELS:
        if len(DOSE_MODELS[name][1]) > len(set(float(d) for d in doses)):
            continue
        try:
            fits[name] = fit_dose_model(name, doses, values, dose_unit)
        except RuntimeError:
            continue
    return fits


def best_fit(fits: dict[str, DoseFit]) -> DoseFit:
    """The fit of highest adjusted R^2 (plain R^2 where the adjusted one is undefined)."""
    return max(fits.values(), key=lambda f: f.adjusted_r2 if math.isfinite(f.adjusted_r2) else f.r2 - 1.0)


@dataclass
class DoseModel:
    """Dose-dependent hyperparameters ``eta(D)`` and ``lambda_t(D)`` of the regularised dynamic reconstruction.

    Args:
        eta: the fit of ``eta``.
        lambdas: one fit per frame.
        dose_range: ``(D_min, D_max)`` of the learned doses; other doses are clamped into it.
        dose_unit: unit of ``d = D / dose_unit`` in the fits.
        floors: lower bounds of ``(eta, lambda_1, ...)``: half the smallest learned value, so a fit never yields a
            non-positive weight.
        setting: what the weights were learned for (grid, scanner, schedule, ``eps``, ``slice_fraction``, ...); the
            weights depend on it (units, pixel size, count level).
        learned: the learned values the fits came from (``doses``, ``eta``, ``lambdas``), and all candidate fits.

    Example:
        >>> model = DoseModel.load("models/dose_model.json")
        >>> eta, lambdas = model.hyperparameters(300e6)
    """

    eta: DoseFit
    lambdas: list[DoseFit]
    dose_range: tuple[float, float]
    dose_unit: float = 1e6
    floors: list[float] = field(default_factory=list)
    setting: dict = field(default_factory=dict)
    learned: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return len(self.lambdas)

    @classmethod
    def fit(
        cls, doses: Sequence[float], etas: Sequence[float], lambdas: Sequence[Sequence[float]], *, dose_unit: float = 1e6,
        setting: dict | None = None,
    ) -> DoseModel:
        """Fit the four models to ``eta`` and to each ``lambda_t`` learned at ``doses`` and keep the best of each.

        Args:
            doses: ``D`` of each learning run.
            etas: learned ``eta`` per dose.
            lambdas: learned ``lambda`` per dose, ``(n_doses, T)``.
            dose_unit: unit of ``d``.
            setting: recorded with the model.

        Raises:
            ValueError: fewer than 2 doses, or inconsistent lengths.
        """
        doses = np.asarray(doses, dtype=float)
        etas = np.asarray(etas, dtype=float)
        lam = np.asarray(lambdas, dtype=float)
        if doses.ndim != 1 or len(doses) < 2 or etas.shape != doses.shape or lam.ndim != 2 or lam.shape[0] != len(doses):
            raise ValueError(
                f"need at least 2 doses with one eta and one row of lambdas each, got doses {doses.shape}, etas {etas.shape}, "
                f"lambdas {lam.shape}."
            )
        eta_fits = fit_dose_models(doses, etas, dose_unit)
        lambda_fits = [fit_dose_models(doses, lam[:, t], dose_unit) for t in range(lam.shape[1])]
        learned = {
            "doses": doses.tolist(),
            "eta": etas.tolist(),
            "lambdas": lam.tolist(),
            "fits": {
                "eta": {k: v.as_dict() for k, v in eta_fits.items()},
                "lambdas": [{k: v.as_dict() for k, v in fits.items()} for fits in lambda_fits],
            },
        }
        floors = [0.5 * float(etas.min())] + [0.5 * float(v) for v in lam.min(axis=0)]
        return cls(best_fit(eta_fits), [best_fit(f) for f in lambda_fits], (float(doses.min()), float(doses.max())),
                   float(dose_unit), floors, dict(setting or {}), learned)

    def hyperparameters(self, dose: float) -> tuple[float, list[float]]:
        """``(eta, [lambda_1, ..., lambda_T])`` at dose ``D`` (clamped into ``dose_range``, values floored).

        Raises:
            ValueError: a non-positive or non-finite dose.
        """
        try:
            valid = math.isfinite(float(dose)) and float(dose) > 0
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise ValueError(f"the dose D must be a positive, finite number of counts, got {dose!r}.")
        d = min(max(float(dose), self.dose_range[0]), self.dose_range[1]) / self.dose_unit
        values = [float(self.eta(d))] + [float(f(d)) for f in self.lambdas]
        floors = self.floors or [0.0] * len(values)
        values = [max(v, fl) if math.isfinite(v) else fl for v, fl in zip(values, floors)]
        return values[0], values[1:]

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "dose_unit": self.dose_unit,
            "dose_range": list(self.dose_range),
            "eta": self.eta.as_dict(),
            "lambdas": [f.as_dict() for f in self.lambdas],
            "floors": list(self.floors),
            "setting": self.setting,
            "learned": self.learned,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model as JSON (atomically)."""
        from ..io import save_json

        return save_json(self.as_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DoseModel:
        """Read a model written by :meth:`save`.

        Raises:
            FileNotFoundError: no file at ``path`` (the message says how to make one).
            ValueError: the file is not a dose model.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"dose model file not found: {path}. Run the bundle's dose sweep (configs/dose_sweep.json) to create it, "
                f"or point 'dose_model_file' at an existing one."
            )
        try:
            spec = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"dose model file {path} is not valid JSON: {err}") from err
        if spec.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a {_FORMAT!r} file (format={spec.get('format')!r}).")
        return cls.from_dict(spec)

    @classmethod
    def from_dict(cls, spec: dict) -> DoseModel:
        """A model from :meth:`as_dict` output (as a dose sweep's results hold it)."""
        return cls(
            DoseFit.from_dict(spec["eta"]),
            [DoseFit.from_dict(f) for f in spec["lambdas"]],
            tuple(float(v) for v in spec["dose_range"]),
            float(spec.get("dose_unit", 1e6)),
            [float(v) for v in spec.get("floors", [])],
            dict(spec.get("setting", {})),
            dict(spec.get("learned", {})),
        )
