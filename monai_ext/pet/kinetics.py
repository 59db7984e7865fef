"""Tracer kinetics for dynamic PET: frame schedule, Feng plasma input, two-tissue compartment model, decay.

Times: the frame schedule is in seconds (as in DICOM/BIDS), kinetic time axes in minutes and rate constants in
1/min (as in the kinetic-modelling literature). Concentrations are in kBq/mL.

The reversible two-tissue compartment model (2TCM)

.. math::

    \\dot C_1 = K_1 C_p - (k_2 + k_3) C_1 + k_4 C_2, \\qquad \\dot C_2 = k_3 C_1 - k_4 C_2,

has the solution :math:`C_T = C_1 + C_2 = h * C_p` with the impulse response
:math:`h(t) = \\sum_{i=1,2} w_i e^{-\\alpha_i t}`,
:math:`\\alpha_{1,2} = (k_2 + k_3 + k_4 \\mp \\sqrt{(k_2 + k_3 + k_4)^2 - 4 k_2 k_4}) / 2`,
:math:`w_1 = K_1 (k_3 + k_4 - \\alpha_1) / (\\alpha_2 - \\alpha_1)`, :math:`w_2 = K_1 (\\alpha_2 - k_3 - k_4) / (\\alpha_2 - \\alpha_1)`,
and the PET signal is :math:`C_{PET} = (1 - v_B) C_T + v_B C_B` (whole blood :math:`C_B`, taken equal to the plasma
input unless given). Each convolution with an exponential is computed on a fine uniform grid by the exact recursion
for a piecewise-linear input, so a constant input is reproduced to rounding and a smooth one to ``O(dt^2)``.
Physical decay :math:`e^{-\\lambda t}` (:math:`\\lambda = \\ln 2 / T_{1/2}`) is applied to the decay-corrected TAC,
which is then averaged over each frame.

References:
    D. Feng, S.-C. Huang and X. Wang, "Models for computer simulation studies of input functions for tracer kinetic
    modeling with positron emission tomography", Int. J. Biomed. Comput. 32(2), 1993.
    R. N. Gunn, S. R. Gunn and V. J. Cunningham, "Positron emission tomography compartmental models", JCBFM 21(6),
    2001.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

__all__ = [
    "C11_HALF_LIFE_MIN",
    "FrameSchedule",
    "FengInput",
    "PE2I_LIKE_INPUT",
    "TwoTissueParameters",
    "convolve_exponential",
    "two_tissue_tac",
    "decay_factor",
    "frame_average",
    "frame_decay_factors",
    "frame_tacs",
]

C11_HALF_LIFE_MIN = 20.4
"""Half-life of carbon-11 in minutes (20.36-20.4 min in nuclear data tables)."""


@dataclass(frozen=True)
class FrameSchedule:
    """Frame timing of a dynamic acquisition, in seconds from injection.

    Args:
        starts: frame start times (s), non-negative and increasing.
        durations: frame durations (s), positive; a frame must end before the next one starts.

    Raises:
        ValueError: empty or mismatched lists, a negative or non-finite time, a non-positive duration, or frames
            that do not increase (a start before the previous frame's end).

    Example:
        >>> schedule = FrameSchedule.pe2i_protocol()  # 5 x 60 s, 5 x 120 s, 2 x 150 s, 8 x 300 s
        >>> schedule.n_frames, schedule.total_duration
        (20, 3600.0)
    """

    starts: tuple[float, ...]
    durations: tuple[float, ...]

    def __post_init__(self) -> None:
        starts = tuple(float(s) for s in np.asarray(self.starts, dtype=float).reshape(-1))
        durations = tuple(float(d) for d in np.asarray(self.durations, dtype=float).reshape(-1))
        object.__setattr__(self, "starts", starts)
        object.__setattr__(self, "durations", durations)
        if not starts or len(starts) != len(durations):
            raise ValueError(f"starts and durations must be non-empty and of equal length, got {len(starts)} and {len(durations)}.")
        if not all(math.isfinite(s) and s >= 0 for s in starts):
            raise ValueError(f"starts must be finite and non-negative (s), got {starts}.")
        if not all(math.isfinite(d) and d > 0 for d in durations):
            raise ValueError(f"durations must be finite and positive (s), got {durations}.")
        for i in range(1, len(starts)):
            if starts[i] < starts[i - 1] + durations[i - 1] - 1e-9:
                raise ValueError(
                    f"starts must increase with frames that do not overlap: frame {i} starts at {starts[i]} s, before "
                    f"frame {i - 1} ends at {starts[i - 1] + durations[i - 1]} s."
                )

    @classmethod
    def from_durations(cls, durations: Sequence[float], start: float = 0.0) -> FrameSchedule:
        """Contiguous frames of the given durations (s), the first starting at ``start`` (s)."""
        durations = np.asarray(durations, dtype=float).reshape(-1)
        starts = start + np.concatenate([[0.0], np.cumsum(durations)[:-1]])
        return cls(tuple(starts), tuple(durations))

    @classmethod
    def from_blocks(cls, blocks: Sequence[tuple[int, float]], start: float = 0.0) -> FrameSchedule:
        """Contiguous frames from ``(count, duration_s)`` blocks, e.g. ``[(5, 60), (8, 300)]``."""
        durations = [float(d) for n, d in blocks for _ in range(int(n))]
        return cls.from_durations(durations, start)

    @classmethod
    def pe2i_protocol(cls) -> FrameSchedule:
        """The 1-hour 11C-PE2I protocol of Chazottes et al.: 5 x 60 s, 5 x 120 s, 2 x 150 s, 8 x 300 s (20 frames)."""
        return cls.from_blocks([(5, 60.0), (5, 120.0), (2, 150.0), (8, 300.0)])

    @property
    def n_frames(self) -> int:
        return len(self.starts)

    @property
    def ends(self) -> tuple[float, ...]:
        return tuple(s + d for s, d in zip(self.starts, self.durations))

    @property
    def mid_times(self) -> tuple[float, ...]:
        return tuple(s + 0.5 * d for s, d in zip(self.starts, self.durations))

    @property
    def total_duration(self) -> float:
        """End of the last frame (s)."""
        return self.ends[-1]

    def as_dict(self) -> dict[str, list[float]]:
        """BIDS-PET style timing: ``FrameTimesStart`` and ``FrameDuration`` in seconds."""
        return {"FrameTimesStart": list(self.starts), "FrameDuration": list(self.durations)}


@dataclass(frozen=True)
class FengInput:
    """Feng et al. (1993) model of an arterial plasma input function, zero before ``delay``.

    .. math::

        C_p(t) = (A_1 \\tau - A_2 - A_3) e^{-\\lambda_1 \\tau} + A_2 e^{-\\lambda_2 \\tau} + A_3 e^{-\\lambda_3 \\tau},
        \\quad \\tau = t - t_0 \\ge 0.

    Args:
        a1: kBq/mL/min.
        a2, a3: kBq/mL.
        lambda1, lambda2, lambda3: clearance rates, 1/min (positive).
        delay: ``t_0``, min.

    The defaults are Feng's FDG values (model 2), read as kBq/mL; ``PE2I_LIKE_INPUT`` is a faster-clearing variant.
    """

    a1: float = 851.1225
    a2: float = 21.8798
    a3: float = 20.8113
    lambda1: float = 4.133859
    lambda2: float = 0.01043449
    lambda3: float = 0.1190996
    delay: float = 0.0

    def __post_init__(self) -> None:
        for name in ("lambda1", "lambda2", "lambda3"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive (1/min), got {getattr(self, name)}.")
        if not self.delay >= 0:
            raise ValueError(f"delay must be non-negative (min), got {self.delay}.")

    def __call__(self, t: np.ndarray) -> np.ndarray:
        """``C_p`` (kBq/mL) at times ``t`` (min)."""
        tau = np.asarray(t, dtype=float) - self.delay
        tp = np.maximum(tau, 0.0)
        value = (self.a1 * tp - self.a2 - self.a3) * np.exp(-self.lambda1 * tp)
        value = value + self.a2 * np.exp(-self.lambda2 * tp) + self.a3 * np.exp(-self.lambda3 * tp)
        return np.where(tau >= 0, value, 0.0)


PE2I_LIKE_INPUT = FengInput(a1=300.0, a2=2.0, a3=10.0, lambda1=4.0, lambda2=0.03, lambda3=0.35, delay=0.25)
"""An 11C-PE2I-like parent-plasma input in the Feng form: a sharp bolus and fast clearance (the tracer is rapidly
metabolised). Illustrative values chosen for plausible brain TACs, not fitted to measured data."""


def _as_rates(name: str, value) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must be finite and non-negative, got {value}.")
    return arr


@dataclass(frozen=True, eq=False)
class TwoTissueParameters:
    """Rate constants of the reversible 2TCM, one entry per region (arrays broadcast to a common shape ``(R,)``).

    Args:
        K1: plasma to tissue influx, mL/min/mL.
        k2: efflux, 1/min.
        k3: association (specific binding), 1/min; 0 gives a one-tissue model.
        k4: dissociation, 1/min.
        vB: blood volume fraction in ``[0, 1]``.

    Raises:
        ValueError: a negative or non-finite rate, or ``vB`` outside ``[0, 1]``.
    """

    K1: np.ndarray
    k2: np.ndarray
    k3: np.ndarray
    k4: np.ndarray
    vB: np.ndarray

    def __post_init__(self) -> None:
        names = ("K1", "k2", "k3", "k4", "vB")
        arrays = np.broadcast_arrays(*(np.atleast_1d(_as_rates(n, getattr(self, n))) for n in names))
        for n, a in zip(names, arrays):
            object.__setattr__(self, n, np.array(a, dtype=float))
        if np.any(self.vB > 1):
            raise ValueError(f"vB must lie in [0, 1], got a maximum of {self.vB.max()}.")

    @property
    def n_regions(self) -> int:
        return int(self.K1.size)

    @property
    def binding_potential(self) -> np.ndarray:
        """``BP_ND = k3 / k4`` (0 where ``k3 = 0``; inf for irreversible binding)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.k3 > 0, self.k3 / self.k4, 0.0)

    def impulse_response(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rates, weights)`` of shape ``(R, 2)`` with ``h(t) = sum_i weights_i exp(-rates_i t)`` (t in min)."""
        K1, k2, k3, k4 = self.K1, self.k2, self.k3, self.k4
        s = k2 + k3 + k4
        disc = np.sqrt(np.maximum(s * s - 4.0 * k2 * k4, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            a1 = np.where(s + disc > 0, 2.0 * k2 * k4 / (s + disc), 0.0)  # stable form of (s - disc) / 2
            a2 = 0.5 * (s + disc)
            w1 = K1 * (k3 + k4 - a1) / (a2 - a1)
            w2 = K1 * (a2 - k3 - k4) / (a2 - a1)
        one_tissue = k3 <= 0  # C2 unreachable: h = K1 exp(-k2 t), even when k2 = k4
        rates = np.stack([np.where(one_tissue, k2, a1), np.where(one_tissue, k4, a2)], axis=-1)
        weights = np.stack([np.where(one_tissue, K1, w1), np.where(one_tissue, 0.0, w2)], axis=-1)
        return rates, weights


def convolve_exponential(signal: np.ndarray, rate: np.ndarray, dt: float) -> np.ndarray:
    """``(f * e^{-rate t})(t_n) = integral_0^{t_n} f(u) exp(-rate (t_n - u)) du`` on a uniform grid ``t_n = n dt``.

    Exact for ``f`` linear between grid points: ``c_{n+1} = E c_n + w_0 f_n + w_1 f_{n+1}`` with ``E = exp(-rate dt)``.

    Args:
        signal: ``(..., N)`` samples of ``f`` at ``t_n``.
        rate: broadcastable to ``signal.shape[:-1]``, 1/(time unit of ``dt``), non-negative.
        dt: grid step.
    """
    signal = np.asarray(signal, dtype=float)
    rates = np.broadcast_to(np.asarray(rate, dtype=float), signal.shape[:-1]).reshape(-1)
    flat = signal.reshape(-1, signal.shape[-1])
    out = np.zeros_like(flat)
    for i, r in enumerate(rates):
        x = r * dt
        if x < 1e-3:  # series of the weights below, free of cancellation (and valid at rate 0)
            w1 = dt * (0.5 - x / 6.0 + x * x / 24.0 - x**3 / 120.0)
            w0 = dt * (0.5 - x / 3.0 + x * x / 8.0 - x**3 / 30.0)
        else:
            one_minus_e = -math.expm1(-x)
            w1 = 1.0 / r - one_minus_e / (r * x)
            w0 = one_minus_e / r - w1
        drive = w0 * flat[i, :-1] + w1 * flat[i, 1:]  # integral over [t_n, t_{n+1}] of the interpolated input
        out[i, 1:] = lfilter([1.0], [1.0, -math.exp(-x)], drive)
    return out.reshape(signal.shape)


def two_tissue_tac(t: np.ndarray, parameters: TwoTissueParameters, plasma: np.ndarray, blood: np.ndarray | None = None) -> np.ndarray:
    """Decay-corrected PET TACs ``(1 - vB) (h * C_p) + vB C_B`` of each region on a uniform grid.

    Args:
        t: ``(N,)`` uniform times in minutes starting at 0 (injection).
        parameters: 2TCM rates of ``R`` regions.
        plasma: ``(N,)`` plasma input ``C_p(t)`` (kBq/mL).
        blood: ``(N,)`` whole-blood activity; default ``plasma``.

    Returns:
        ``(R, N)`` activity concentration (kBq/mL).
    """
    t = np.asarray(t, dtype=float)
    dt = _uniform_step(t)
    plasma = np.asarray(plasma, dtype=float)
    blood = plasma if blood is None else np.asarray(blood, dtype=float)
    if plasma.shape != t.shape or blood.shape != t.shape:
        raise ValueError(f"plasma and blood must have the shape of t {t.shape}, got {plasma.shape} and {blood.shape}.")
    rates, weights = parameters.impulse_response()
    conv = convolve_exponential(np.broadcast_to(plasma, (*rates.shape, t.size)), rates, dt)
    tissue = (weights[..., None] * conv).sum(axis=1)
    vb = parameters.vB[:, None]
    return (1.0 - vb) * tissue + vb * blood[None, :]


def _uniform_step(t: np.ndarray) -> float:
    if t.ndim != 1 or t.size < 2 or abs(t[0]) > 1e-12:
        first = t.flat[0] if t.size else None
        raise ValueError(f"t must be a 1D grid of at least 2 times starting at 0, got shape {t.shape} starting at {first}.")
    steps = np.diff(t)
    if not np.all(steps > 0) or np.ptp(steps) > 1e-9 * steps[0]:
        raise ValueError("t must be uniformly spaced and increasing.")
    return float(steps.mean())


def decay_factor(t: np.ndarray, half_life_min: float = C11_HALF_LIFE_MIN) -> np.ndarray:
    """``exp(-ln 2 t / T_half)`` at times ``t`` (min)."""
    if not half_life_min > 0:
        raise ValueError(f"half_life_min must be positive, got {half_life_min}.")
    return np.exp(-math.log(2.0) * np.asarray(t, dtype=float) / half_life_min)


def frame_decay_factors(schedule: FrameSchedule, half_life_min: float = C11_HALF_LIFE_MIN) -> np.ndarray:
    """Mean decay factor over each frame, ``(1 / D) integral e^{-lambda t} dt`` (exact); ``(T,)``."""
    lam = math.log(2.0) / (half_life_min * 60.0)  # 1/s
    starts, durations = np.asarray(schedule.starts), np.asarray(schedule.durations)
    return np.exp(-lam * starts) * -np.expm1(-lam * durations) / (lam * durations)


def frame_average(t: np.ndarray, values: np.ndarray, schedule: FrameSchedule) -> np.ndarray:
    """Average of ``values`` ``(..., N)`` sampled on ``t`` (min) over each frame: trapezoidal cumulative integral
    interpolated linearly at the frame edges; ``(..., T)``.

    Raises:
        ValueError: when the schedule ends after ``t[-1]``.
    """
    t = np.asarray(t, dtype=float)
    if schedule.total_duration / 60.0 > t[-1] * (1 + 1e-12):
        raise ValueError(f"the schedule ends at {schedule.total_duration} s, after the time grid ({t[-1] * 60.0} s).")
    values = np.asarray(values, dtype=float)
    steps = 0.5 * (values[..., 1:] + values[..., :-1]) * np.diff(t)
    cumulative = np.concatenate([np.zeros((*values.shape[:-1], 1)), np.cumsum(steps, axis=-1)], axis=-1)
    edges = np.concatenate([np.asarray(schedule.starts), np.asarray(schedule.ends)]) / 60.0
    at_edges = np.stack([np.interp(edges, t, row) for row in cumulative.reshape(-1, t.size)]).reshape(*values.shape[:-1], -1)
    n = schedule.n_frames
    return (at_edges[..., n:] - at_edges[..., :n]) / (np.asarray(schedule.durations) / 60.0)


def frame_tacs(
    parameters: TwoTissueParameters,
    input_function,
    schedule: FrameSchedule,
    *,
    half_life_min: float | None = C11_HALF_LIFE_MIN,
    dt_s: float = 1.0,
) -> np.ndarray:
    """Frame-average activity ``(R, T)`` (kBq/mL) of each region: the 2TCM driven by ``input_function`` (a callable of
    time in min, e.g. ``FengInput``), with physical decay applied (``half_life_min=None``: decay-corrected).

    Args:
        parameters: 2TCM rates of ``R`` regions.
        input_function: plasma input ``C_p(t)``, ``t`` in minutes; also used as whole-blood activity.
        schedule: frame timing.
        half_life_min: tracer half-life (min); ``None`` for decay-corrected TACs.
        dt_s: step of the fine time grid (s).
    """
    if not dt_s > 0:
        raise ValueError(f"dt_s must be positive, got {dt_s}.")
    n = int(math.ceil(schedule.total_duration / dt_s - 1e-9)) + 1
    t = np.arange(n) * (dt_s / 60.0)
    tac = two_tissue_tac(t, parameters, input_function(t))
    if half_life_min is not None:
        tac = tac * decay_factor(t, half_life_min)
    return frame_average(t, tac, schedule)
