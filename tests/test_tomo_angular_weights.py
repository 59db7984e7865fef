"""FBP's angular quadrature for any angle set: random, incomplete and repeated angles keep the image's scale."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from monai_ext.tomo import FanBeamGeometry, ParallelBeamGeometry, fbp, projector_for, short_scan_angles, uniform_angles
from monai_ext.tomo.analytic import _angular_weights, _is_short_scan

N, PIXEL = 64, 2.0
_yy, _xx = torch.meshgrid((torch.arange(N) - 31.5) * PIXEL, (torch.arange(N) - 31.5) * PIXEL, indexing="ij")
DISC = (((_xx**2 + _yy**2) < 40.0**2).double() * 0.02)[None, None]
CENTRE = (_xx**2 + _yy**2) < 15.0**2


def _centre_ratio(geometry) -> float:
    """Mean of the FBP image over the disc's centre, over the true value (1.0 when the scale is right)."""
    recon = fbp(projector_for(geometry)(DISC), geometry)
    return float(recon[0, 0][CENTRE].mean() / 0.02)


def _parallel(angles) -> ParallelBeamGeometry:
    return ParallelBeamGeometry((N, N), PIXEL, tuple(angles), n_det=95, det_spacing=PIXEL)


def _fan(angles) -> FanBeamGeometry:
    return FanBeamGeometry((N, N), PIXEL, tuple(angles), 160, PIXEL * 1.6, source_to_center=400.0, source_to_detector=640.0)


@pytest.mark.parametrize("period", [math.pi, 2 * math.pi])
def test_weights_sum_to_the_period_for_any_angle_set(period):
    rng = np.random.default_rng(0)
    for angles in (rng.uniform(0, 3 * math.pi, 30), uniform_angles(36)[1:], (0.1, 0.1, 2.0), (1.0,)):
        w = _angular_weights(tuple(angles), period)
        assert w.shape == (len(angles),) and bool((w >= 0).all())
        assert float(w.sum()) == pytest.approx(period, rel=1e-12)


def test_parallel_weights_treat_theta_and_theta_plus_pi_as_one_line():
    half = uniform_angles(18)
    w_half = _angular_weights(half, math.pi)
    w_full = _angular_weights(uniform_angles(36, 2 * math.pi), math.pi)
    assert torch.allclose(w_full, torch.cat([w_half, w_half]) / 2)


@pytest.mark.parametrize(
    "label, angles",
    [
        ("one view dropped of 36", uniform_angles(36)[1:]),  # 2.8 % low before the periodic weights
        ("30 random angles in [0, pi)", np.random.default_rng(1).uniform(0, math.pi, 30)),  # 14 % low before
        ("30 random angles in [0, 2 pi)", np.random.default_rng(2).uniform(0, 2 * math.pi, 30)),
    ],
)
def test_parallel_fbp_keeps_the_scale_for_incomplete_and_random_angles(label, angles):
    assert _centre_ratio(_parallel(angles)) == pytest.approx(1.0, abs=0.01), label


@pytest.mark.parametrize(
    "label, angles",
    [
        ("uniform full turn", uniform_angles(60, 2 * math.pi)),
        ("one view dropped of 60", uniform_angles(60, 2 * math.pi)[1:]),
        ("60 random angles over the full turn", np.random.default_rng(3).uniform(0, 2 * math.pi, 60)),
    ],
)
def test_fan_fbp_full_turn_keeps_the_scale_and_is_not_taken_for_a_short_scan(label, angles):
    assert not _is_short_scan(tuple(angles)), label
    assert _centre_ratio(_fan(angles)) == pytest.approx(1.0, abs=0.01), label


def test_fan_short_scan_is_detected_logged_and_parker_weighted(caplog):
    geometry = _fan(short_scan_angles(60, _fan(uniform_angles(4, 2 * math.pi)).fan_angle))
    assert _is_short_scan(geometry.angles)
    import monai_ext.tomo.analytic as analytic

    analytic._ANNOUNCED_SHORT_SCANS.discard(geometry.angles)  # announced once per angle set and process
    with caplog.at_level(logging.INFO, logger="monai_ext.tomo.analytic"):
        ratio = _centre_ratio(geometry)
        _centre_ratio(geometry)
    assert sum("short scan, Parker weights applied" in r.getMessage() for r in caplog.records) == 1
    assert ratio == pytest.approx(1.0, abs=0.01)
    # forbidding Parker on a short scan leaves the lines measured twice weighted twice: a worse image
    sino = projector_for(geometry)(DISC)
    inside = (_xx**2 + _yy**2) < 50.0**2
    errors = [float((fbp(sino, geometry, short_scan=s)[0, 0] - DISC[0, 0])[inside].pow(2).mean().sqrt()) for s in (None, False)]
    assert errors[0] < 0.7 * errors[1], errors
